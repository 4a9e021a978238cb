"""The agent's install script, without root: under a fake root it places the unit and the
config (never overwriting an operator's), and a dry run on the real system only plans."""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import yaml

from configs.agent import AgentSettings
from configs.loading import load_settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "edge_agent" / "systemd" / "install.sh"
UNIT = ROOT / "edge_agent" / "systemd" / "fedmq-agent.service"
EXAMPLE = ROOT / "configs" / "examples" / "agent.yaml"
# Stand-ins on PATH for every command that could change this machine: they record the
# call and fail, so even a broken script cannot add a user or write outside the test's
# directory; `install` and the venv's python work only there.
REFUSE = ("groupadd", "useradd", "usermod", "chown", "systemctl")
INSTALL_GUARD = """#!/bin/sh
for arg in "$@"; do
    case $arg in
        "{allowed}"/* | "{source}"/*) ;;
        /*) echo "install $*" >> "{calls}"; exit 99 ;;
    esac
done
exec {real} "$@"
"""
PYTHON_GUARD = """#!/bin/sh
case "$1 $2" in
    "-m venv") for arg in "$@"; do :; done
        case $arg in "{allowed}"/*) exec {real} "$@" ;; esac ;;
    "-c "*) exec {real} "$@" ;;
esac
echo "python $*" >> "{calls}"
exit 99
"""


@dataclass
class Sandbox:
    directory: Path
    bin_dir: Path
    calls: Path

    def run(self, *args: str, env: dict[str, str] | None = None) -> CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
        environ |= {
            "PATH": f"{self.bin_dir}{os.pathsep}{environ['PATH']}",
            "PYTHON": str(self.bin_dir / "python-guard"),
            "TMPDIR": str(self.directory),
            **(env or {}),
        }
        return subprocess.run(
            ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=60
        )

    def refused(self) -> str:
        return self.calls.read_text() if self.calls.exists() else ""


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name in REFUSE:
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 99\n')
    guards = {
        "install": INSTALL_GUARD.format(
            allowed=tmp_path, source=ROOT, calls=calls, real=shutil.which("install")
        ),
        "python-guard": PYTHON_GUARD.format(allowed=tmp_path, calls=calls, real=sys.executable),
    }
    for name, text in guards.items():
        (bin_dir / name).write_text(text)
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    return Sandbox(tmp_path, bin_dir, calls)


def unit_service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(UNIT)
    return parser["Service"]


def script_value(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", SCRIPT.read_text(), re.MULTILINE)
    assert match, name
    return match.group(1)


def exists(lookup: Callable[[str], object], name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def test_the_unit_runs_what_the_script_installs():
    venv, state = script_value("VENV"), script_value("STATE_DIR")
    section = unit_service()
    assert section["ExecStart"].split()[0] == f"{venv}/bin/fedmq-agent"
    assert "--config /etc/fedmq/agent.yaml" in section["ExecStart"]
    assert state == f"/var/lib/{section['StateDirectory']}"
    assert section["User"] == "fedmq" and section["SupplementaryGroups"] == "video"


@pytest.mark.parametrize("how", ["--root", "DESTDIR"])
def test_fake_root_gets_the_unit_and_a_config_kept_on_reinstall(sandbox: Sandbox, how: str):
    fake = sandbox.directory / "root"
    fake.mkdir()
    args, env = (["--root", str(fake)], None) if how == "--root" else ([], {"DESTDIR": str(fake)})
    first = sandbox.run("--no-venv", *args, env=env)
    assert first.returncode == 0, first.stderr + sandbox.refused()
    assert "systemctl enable --now fedmq-agent" in first.stdout

    unit = fake / "etc/systemd/system/fedmq-agent.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    config = fake / "etc/fedmq/agent.yaml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o750
    installed = load_settings(AgentSettings, config)
    # the example, with state_dir moved to the unit's writable StateDirectory
    assert installed.state_dir == Path(f"/var/lib/{unit_service()['StateDirectory']}")
    example = load_settings(AgentSettings, EXAMPLE)
    assert installed.model_copy(update={"state_dir": example.state_dir}) == example

    edited = yaml.safe_load(config.read_text()) | {"agent_id": "jetson-42"}
    config.write_text(yaml.safe_dump(edited))
    unit.write_text("[Unit]\n")  # an old unit is brought up to date
    second = sandbox.run("--no-venv", *args, env=env)
    assert second.returncode == 0, second.stderr
    assert "kept /etc/fedmq/agent.yaml" in second.stdout
    assert load_settings(AgentSettings, config).agent_id == "jetson-42"
    assert unit.read_bytes() == UNIT.read_bytes()
    assert sandbox.refused() == ""


def test_dry_run_under_a_fake_root_writes_nothing(sandbox: Sandbox):
    fake = sandbox.directory / "root"
    fake.mkdir()
    result = sandbox.run("--dry-run", "--root", str(fake), "--no-venv")
    assert result.returncode == 0, result.stderr
    assert list(fake.iterdir()) == []
    assert f"{fake}/etc/fedmq/agent.yaml" in result.stdout
    assert sandbox.refused() == ""


def test_dry_run_on_this_machine_plans_every_step_and_runs_none(sandbox: Sandbox):
    package = sandbox.directory / "fedmq-0.1.0-py3-none-any.whl"
    package.write_bytes(b"")
    result = sandbox.run("--dry-run", str(package))
    assert result.returncode == 0, result.stderr
    assert sandbox.refused() == ""  # nothing that changes the machine was executed
    text = "\n".join(line for line in result.stdout.splitlines() if line.startswith("would run:"))
    if not exists(pwd.getpwnam, "fedmq"):
        assert "useradd --system --gid fedmq" in text
    if exists(grp.getgrnam, "video") and "fedmq" not in grp.getgrnam("video").gr_mem:
        assert "usermod --append --groups video fedmq" in text
    venv = script_value("VENV")
    if not Path(venv, "bin/python").exists():
        assert f"-m venv --system-site-packages {venv}" in text
    assert f"{venv}/bin/python -m pip install --upgrade {package}" in text
    assert f"--force-reinstall --no-deps {package}" in text
    assert "/etc/systemd/system/fedmq-agent.service" in text
    if not Path("/etc/fedmq/agent.yaml").exists():
        assert re.search(r"install -m 0640 \S+ /etc/fedmq/agent.yaml", text)
        assert "chown root:fedmq /etc/fedmq/agent.yaml" in text


@pytest.mark.parametrize(
    ("args", "code", "named"),
    [
        (["--bogus"], 2, "--bogus"),
        (["--root"], 2, "--root"),
        (["a.whl", "b.whl"], 2, "b.whl"),
        (["--root", "/nonexistent-fedmq-root"], 1, "/nonexistent-fedmq-root"),
        (["--dry-run", "/nonexistent/fedmq.tar.gz"], 1, "/nonexistent/fedmq.tar.gz"),
    ],
)
def test_bad_arguments_fail_naming_them(sandbox: Sandbox, args: list[str], code: int, named: str):
    result = sandbox.run(*args)
    assert result.returncode == code
    assert named in result.stderr
    assert sandbox.refused() == ""
