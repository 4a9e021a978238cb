#!/usr/bin/env bash
# The main job. Until the federation lands (issue 3) it installs fedmq and runs the codec
# benchmark; it will then start a complete local federation on the bundled data.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec "${FEDMQ_VENV:-.venv}/bin/python" -m benchmarks.codec_throughput "$@"
