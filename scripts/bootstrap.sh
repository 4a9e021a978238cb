#!/usr/bin/env bash
# Installs what fedmq needs on a fresh Debian/Ubuntu machine, idempotently: system packages
# (compiler, Python headers, venv), then .venv with fedmq, its Cython codec and test tools.
# Re-running is cheap: the install is redone only when the build inputs change.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${FEDMQ_VENV:-.venv}
APT_PACKAGES=(gcc python3-dev python3-venv)

missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
"$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null || missing+=(python3-dev)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
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
inputs=$(cat pyproject.toml setup.py codec/*.pyx codec/*.h | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$inputs" ] \
    || ! "$VENV/bin/python" -c 'import codec' >/dev/null 2>&1; then
    echo "bootstrap: installing fedmq into $VENV (builds the Cython codec)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    echo "$inputs" > "$stamp"
fi
echo "bootstrap: ready ($("$VENV/bin/python" -c 'import codec; print("codec backend:", codec.BACKEND)'))"
