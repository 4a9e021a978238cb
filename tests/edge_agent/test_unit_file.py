"""The shipped systemd unit: notify type with a watchdog, no restart loop on a config error,
hardening; and systemd's own verifier finds nothing to say about it."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from configs.errors import ConfigError

UNIT = Path(__file__).resolve().parents[2] / "edge_agent" / "systemd" / "fedmq-agent.service"


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(UNIT)
    return parser["Service"]


def test_unit_is_notify_with_a_watchdog_and_restarts_on_failure():
    section = service()
    assert section["Type"] == "notify"
    assert int(section["WatchdogSec"]) > 0
    assert section["Restart"] == "on-failure"


def test_a_config_error_does_not_restart_loop():
    assert service()["RestartPreventExitStatus"] == str(ConfigError.EXIT_CODE)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("StateDirectory", "fedmq-agent"),
    ],
)
def test_unit_is_hardened(key: str, value: str):
    assert service()[key] == value


def test_systemd_analyze_verify_is_clean(tmp_path: Path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    text = UNIT.read_text()
    # point ExecStart at an executable that exists here: verify checks it
    lines = [
        f"ExecStart={sys.executable} -m edge_agent --config /etc/fedmq/agent.yaml"
        if line.startswith("ExecStart=")
        else line
        for line in text.splitlines()
    ]
    copy = tmp_path / UNIT.name
    copy.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for unparsable values: any output is a finding
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )
