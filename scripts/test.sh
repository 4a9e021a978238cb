#!/usr/bin/env bash
# The test suite, as CI runs it: install, lint, type-check, then pytest with the compiled
# codec, then the codec tests again on the pure-numpy fallback (the backends must agree).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
PY=${FEDMQ_VENV:-.venv}/bin/python

"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy

echo "== pytest: compiled codec =="
FEDMQ_CODEC_BACKEND=cython "$PY" -m pytest "$@"
echo "== pytest: codec on the numpy fallback =="
FEDMQ_CODEC_BACKEND=numpy "$PY" -m pytest tests/codec "$@"
