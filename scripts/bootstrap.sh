#!/usr/bin/env bash
# Installs what fedmq needs on a fresh Debian/Ubuntu machine, idempotently: system packages
# (compiler, Python headers, venv, Mosquitto and its clients), then .venv with fedmq, its
# Cython codec, TensorFlow (the CPU wheel on x86-64) and the test tools.
# Re-running is cheap: the install is redone only when the build inputs change.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${FEDMQ_VENV:-.venv}
APT_PACKAGES=(gcc python3-dev python3-venv mosquitto mosquitto-clients)

missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
"$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null || missing+=(python3-dev)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
if ((${#missing[@]})); then
    echo "bootstrap: installing system packages: ${APT_PACKAGES[*]}"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"fedmq needs Python >= 3.10, found {sys.version.split()[0]}")
PY

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

stamp="$VENV/.fedmq-installed"
inputs=$( (cat pyproject.toml setup.py codec/*.pyx codec/*.h; ls -d */__init__.py) | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$inputs" ] \
    || ! "$VENV/bin/python" -c 'import codec' >/dev/null 2>&1; then
    echo "bootstrap: installing fedmq into $VENV (builds the Cython codec)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[dev,local]"
    # JetPack ships NVIDIA's TensorFlow; on x86-64 the CPU wheel is a third of the size.
    if [ "$(uname -m)" = x86_64 ]; then tf=tensorflow-cpu; else tf=tensorflow; fi
    "$VENV/bin/python" -c 'import tensorflow' >/dev/null 2>&1 \
        || "$VENV/bin/python" -m pip install -q "$tf>=2.15"
    echo "$inputs" > "$stamp"
fi
echo "bootstrap: ready ($("$VENV/bin/python" -c 'import codec; print("codec backend:", codec.BACKEND)'))"
