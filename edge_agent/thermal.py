"""Jetson awareness: temperatures from the thermal zones in sysfs, and a hysteresis rule
that defers training while the device is hot.

``/sys/class/thermal/thermal_zone*/{type,temp}`` (millidegrees Celsius) exists on Jetson and
most Linux boards; a missing or unreadable tree means "unknown", never an error. Some zones
are not temperatures of anything that heats up: Jetson's ``PMIC-Die`` reads a constant 100 C,
and would keep training deferred for ever; such zones are ignored (``ignore_thermal_zones``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fedmq.agent.thermal")


IGNORED_BY_DEFAULT = ("PMIC-Die",)


def read_temperatures(root: Path, ignore: frozenset[str] = frozenset()) -> dict[str, float]:
    """Zone type -> degrees Celsius, for every readable zone under ``root`` not ignored."""
    temperatures: dict[str, float] = {}
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            millidegrees = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue  # a zone that cannot be read (driver off, permissions) is skipped
        if kind not in ignore:
            temperatures[kind] = millidegrees / 1000.0
    return temperatures


@dataclass
class ThermalGate:
    """Defer training above ``defer_above`` degrees, resume below ``resume_below``."""

    root: Path
    defer_above: float | None
    resume_below: float
    ignore: frozenset[str] = frozenset(IGNORED_BY_DEFAULT)
    deferring: bool = False

    def hottest(self) -> float | None:
        values = read_temperatures(self.root, self.ignore).values()
        return max(values) if values else None

    def may_train(self) -> bool:
        if self.defer_above is None:
            return True
        hottest = self.hottest()
        if hottest is None:
            return True
        if self.deferring and hottest < self.resume_below:
            self.deferring = False
            log.info("cooled to %.1f C: training resumes", hottest)
        elif not self.deferring and hottest > self.defer_above:
            self.deferring = True
            log.warning("%.1f C is above %.1f C: training deferred", hottest, self.defer_above)
        return not self.deferring
