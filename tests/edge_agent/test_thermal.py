"""Thermal zones from a fake sysfs tree, and the defer/resume hysteresis."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs.agent import AgentSettings
from configs.errors import ConfigError
from configs.loading import load_settings
from edge_agent.thermal import ThermalGate, read_temperatures


def zone(root: Path, index: int, kind: str, millidegrees: str) -> None:
    path = root / f"thermal_zone{index}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "type").write_text(kind + "\n")
    (path / "temp").write_text(millidegrees + "\n")


def test_zones_are_read_in_celsius(tmp_path: Path):
    zone(tmp_path, 0, "CPU-therm", "45500")
    zone(tmp_path, 1, "GPU-therm", "51000")
    assert read_temperatures(tmp_path) == {"CPU-therm": 45.5, "GPU-therm": 51.0}


def test_unreadable_zones_and_missing_trees_are_unknown_not_errors(tmp_path: Path):
    zone(tmp_path, 0, "CPU-therm", "not a number")
    (tmp_path / "thermal_zone1").mkdir()  # no files (a driver that is off)
    zone(tmp_path, 2, "AO-therm", "38000")
    assert read_temperatures(tmp_path) == {"AO-therm": 38.0}
    assert read_temperatures(tmp_path / "missing") == {}
    assert ThermalGate(tmp_path / "missing", 80.0, 70.0).may_train()


def test_training_is_deferred_above_and_resumes_below(tmp_path: Path):
    gate = ThermalGate(tmp_path, defer_above=80.0, resume_below=70.0)
    for temperature, allowed in [
        ("60000", True),
        ("85000", False),
        ("75000", False),
        ("69000", True),
        ("79000", True),
        ("81000", False),
    ]:
        zone(tmp_path, 0, "GPU-therm", temperature)
        assert gate.may_train() is allowed, temperature


def test_no_threshold_never_defers(tmp_path: Path):
    zone(tmp_path, 0, "GPU-therm", "120000")
    assert ThermalGate(tmp_path, None, 70.0).may_train()


def test_resume_must_be_below_defer():
    with pytest.raises(ConfigError, match="resume_training_below_c"):
        load_settings(
            AgentSettings, overrides={"defer_training_above_c": 70, "resume_training_below_c": 75}
        )


def test_the_jetson_pmic_die_zone_is_ignored_so_training_is_not_deferred_for_ever(
    tmp_path: Path,
):
    zone(tmp_path, 0, "PMIC-Die", "100000")  # a constant, not a temperature
    zone(tmp_path, 1, "GPU-therm", "52000")
    gate = ThermalGate(tmp_path, defer_above=80.0, resume_below=70.0)
    assert gate.hottest() == 52.0
    assert gate.may_train()
    assert read_temperatures(tmp_path) == {"PMIC-Die": 100.0, "GPU-therm": 52.0}
    everything = ThermalGate(tmp_path, 80.0, 70.0, ignore=frozenset())
    assert not everything.may_train()
