# syntax=docker/dockerfile:1
# The fedmq image for compose.yaml: the coordinator, the agents and the broker tools
# (fedmq-coordinator, fedmq-agent, fedmq-broker on PATH), with the compiled codec and
# TensorFlow's CPU wheel. Python 3.10: the oldest fedmq supports, and JetPack 6's.
#   docker build -t fedmq:local .

FROM python:3.10-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY codec codec
COPY common common
COPY configs configs
COPY coordinator coordinator
COPY edge_agent edge_agent
COPY broker broker
# A wheel without the compiled codec would run the numpy fallback silently: refuse it.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -c "import glob, sys, zipfile; names = zipfile.ZipFile(glob.glob('/wheels/fedmq-*.whl')[0]).namelist(); sys.exit(not any(n.startswith('codec/_kernels') and n.endswith('.so') for n in names))"

FROM python:3.10-slim
ARG TENSORFLOW="tensorflow-cpu>=2.15"
# A fixed uid/gid so that volume ownership is the same on every host.
RUN groupadd --system --gid 10001 fedmq \
    && useradd --system --uid 10001 --gid fedmq --home-dir /var/lib/fedmq --no-create-home \
        --shell /usr/sbin/nologin fedmq \
    && install -d -o fedmq -g fedmq /var/lib/fedmq /var/lib/fedmq/coordinator /var/lib/fedmq/agent
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/fedmq-*.whl "$TENSORFLOW" \
    && rm -rf /tmp/wheels
ENV PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    FEDMQ_CODEC_BACKEND=cython
RUN python -c "import codec; assert codec.BACKEND == 'cython', codec.BACKEND"
USER fedmq
WORKDIR /var/lib/fedmq
# compose.yaml gives each service its command (the local federation's: python -m ...).
CMD ["fedmq-coordinator", "--help"]
