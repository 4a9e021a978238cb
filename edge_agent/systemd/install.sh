#!/usr/bin/env bash
# Installs the fedmq edge agent as a systemd service (a Jetson, or any systemd Linux),
# idempotently: a `fedmq` system user (in group `video` for the GPU), a venv in
# /opt/fedmq/.venv with fedmq, the unit in /etc/systemd/system, and /etc/fedmq/agent.yaml from
# configs/examples/agent.yaml only if it is absent: an operator's config is never overwritten.
# See docs/deploy-jetson.md.
#
#   sudo bash edge_agent/systemd/install.sh [OPTIONS] [PACKAGE]
#
# PACKAGE is a fedmq wheel or source directory (default: the checkout this script is in).
#   --dry-run          print every change instead of making it
#   --root DIR         install under DIR instead of / (an image or chroot tree; DESTDIR=DIR
#                      works too): no user, no ownership, no systemctl
#   --no-venv          leave the venv alone: user, unit and config only
#   --tensorflow SPEC  also pip-install SPEC into the venv (NVIDIA's JetPack wheel, or
#                      tensorflow-cpu on x86-64); without it a system-wide TensorFlow is used
#   PYTHON=python3.10  the interpreter the venv is made from (>= 3.10)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
checkout=$(cd "$here/../.." && pwd)
unit_source="$here/fedmq-agent.service"
example="$checkout/configs/examples/agent.yaml"
PYTHON=${PYTHON:-python3}

USER_NAME=fedmq
VENV=/opt/fedmq/.venv                      # the unit's ExecStart runs $VENV/bin/fedmq-agent
UNIT=/etc/systemd/system/fedmq-agent.service
CONFIG_DIR=/etc/fedmq
CONFIG=$CONFIG_DIR/agent.yaml
STATE_DIR=/var/lib/fedmq-agent             # the unit's StateDirectory=fedmq-agent

staged=
die() {
    echo "install.sh: error: $1" >&2
    exit "${2:-1}"
}
say() { echo "install.sh: $*"; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

root=${DESTDIR:-/}
dry_run=0
with_venv=1
tensorflow=
package=
while (($#)); do
    case $1 in
        --dry-run) dry_run=1 ;;
        --no-venv) with_venv=0 ;;
        --root) (($# > 1)) || die "--root needs a directory" 2; root=$2; shift ;;
        --root=*) root=${1#*=} ;;
        --tensorflow) (($# > 1)) || die "--tensorflow needs a requirement or wheel" 2; tensorflow=$2; shift ;;
        --tensorflow=*) tensorflow=${1#*=} ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" 2 ;;
        *) [ -z "$package" ] || die "one PACKAGE only, got '$package' and '$1'" 2; package=$1 ;;
    esac
    shift
done

prefix=${root%/}                # "" for the real system
system=0
[ -n "$prefix" ] || system=1
if ((system && !dry_run)) && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo), or try --dry-run or --root DIR first"
fi
if ((!system)) && [ ! -d "$prefix" ]; then
    die "--root $root: no such directory"
fi

# Every change goes through run: printed under --dry-run, executed otherwise.
run() {
    if ((dry_run)); then
        printf 'would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

ensure_user() {
    if ((!system)); then
        say "skipped under --root: user $USER_NAME, group video, file ownership"
        return
    fi
    getent group "$USER_NAME" >/dev/null || run groupadd --system "$USER_NAME"
    id -u "$USER_NAME" >/dev/null 2>&1 || run useradd --system --gid "$USER_NAME" \
        --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
        --comment "fedmq edge agent" "$USER_NAME"
    if ! getent group video >/dev/null; then
        say "warning: no group 'video' here (not a Jetson?): the agent gets no GPU device access"
    elif ! id -nG "$USER_NAME" 2>/dev/null | tr ' ' '\n' | grep -qx video; then
        run usermod --append --groups video "$USER_NAME"
    fi
}

ensure_venv() {
    local venv=$prefix$VENV
    if ((!with_venv)); then
        say "skipped (--no-venv): $VENV"
        return
    fi
    package=${package:-$checkout}
    if [ -d "$package" ]; then
        [ -f "$package/pyproject.toml" ] || die "$package: not a fedmq source directory (no pyproject.toml)"
    elif [[ "$package" != *.whl ]] || [ ! -f "$package" ]; then
        die "$package: neither a wheel (.whl) nor a source directory"
    fi
    if [ ! -x "$venv/bin/python" ]; then
        command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=python3.10 or newer)"
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            || die "fedmq needs Python >= 3.10; $PYTHON is $("$PYTHON" -V 2>&1) (set PYTHON=...)"
        # system site packages: JetPack's TensorFlow is often installed system-wide
        run "$PYTHON" -m venv --system-site-packages "$venv"
    fi
    # a source directory builds the Cython codec (gcc, python3-dev); FEDMQ_SKIP_EXTENSIONS=1
    # installs the numpy fallback instead
    run "$venv/bin/python" -m pip install --upgrade "$package"
    if [ -f "$package" ]; then
        # pip keeps an installed fedmq of the same version: a rebuilt wheel must replace it
        run "$venv/bin/python" -m pip install --force-reinstall --no-deps "$package"
    fi
    if [ -n "$tensorflow" ]; then
        run "$venv/bin/python" -m pip install "$tensorflow"
    elif ((!dry_run)) && ! "$venv/bin/python" -c 'import tensorflow' >/dev/null 2>&1; then
        say "warning: TensorFlow is not importable in $VENV: install NVIDIA's JetPack wheel" \
            "(docs/deploy-jetson.md) or rerun with --tensorflow SPEC"
    fi
}

install_unit() {
    # The unit is ours: always brought up to date.
    run install -D -m 0644 "$unit_source" "$prefix$UNIT"
}

install_config() {
    local target=$prefix$CONFIG
    if [ -e "$target" ]; then
        say "kept $CONFIG (it exists: an operator's config is never overwritten)"
        return
    fi
    [ -f "$example" ] || die "$example is missing"
    run install -d -m 0750 "$prefix$CONFIG_DIR"
    ((!system)) || run chown "root:$USER_NAME" "$prefix$CONFIG_DIR"
    # The example's state_dir is not writable under the unit's ProtectSystem=strict: point
    # it at the StateDirectory. The password stays a placeholder for the operator.
    staged=$(mktemp)
    trap 'rm -f "$staged"' EXIT
    sed "s|^state_dir:.*|state_dir: $STATE_DIR   # the unit's StateDirectory (writable)|" \
        "$example" >"$staged"
    grep -q "^state_dir: $STATE_DIR" "$staged" || die "$example has no top-level state_dir line"
    run install -m 0640 "$staged" "$target"
    ((!system)) || run chown "root:$USER_NAME" "$target"
}

reload_systemd() {
    if ((system)) && [ -d /run/systemd/system ]; then
        run systemctl daemon-reload
    else
        say "systemd is not running here: no daemon-reload"
    fi
}

ensure_user
ensure_venv
install_unit
install_config
reload_systemd

if ((dry_run)); then
    say "dry run: nothing was changed"
fi
cat <<EOF

Next steps:
  1. Edit $CONFIG: agent_id, broker host and port, username (= agent_id), password
     (\`fedmq-broker provision <agent_id>\` on the broker host prints it), task and data shard.
  2. sudo systemctl enable --now fedmq-agent
  3. journalctl -u fedmq-agent -f      # and: systemctl status fedmq-agent
EOF
