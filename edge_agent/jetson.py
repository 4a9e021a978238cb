"""Jetson telemetry from sysfs: GPU load and power rails, what ``tegrastats`` prints, read
without running it (it is Jetson-only, and wants root for some fields).

GPU load, per mille, is the ``load`` file of the integrated GPU: found through its devfreq
node (``class/devfreq/<id>/device/load``, the GPU known by its device-tree name: gm20b,
gp10b, gv11b, ga10b, gpu), else at ``devices/platform/gpu.0/load`` (Orin, Xavier NX) or
``devices/gpu.0/load`` (Nano, TX2, AGX Xavier).

Power comes from the boards' INA3221 monitors. JetPack >= 5 has the hwmon driver:
``class/hwmon/hwmon*`` whose ``name`` is ``ina3221``, ``in<N>_label`` the rail,
``in<N>_input`` mV and ``curr<N>_input`` mA. JetPack 4 has the ``ina3221x`` IIO driver:
``bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_<N>`` and ``in_power<N>_input`` mW.
The total is the module's input rail (VDD_IN, POM_5V_IN) when the board has one, else the sum.

Missing files mean "not a Jetson" (None, silently); unreadable or garbage values mean None
too, with a debug log: telemetry never stops training.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("fedmq.agent.jetson")

GPU_NAMES = frozenset({"gm20b", "gp10b", "gv11b", "ga10b", "gpu"})
FIXED_GPU_LOADS = ("devices/platform/gpu.0/load", "devices/gpu.0/load")
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # the whole module's input, where measured
_HWMON_LABEL = re.compile(r"in(\d+)_label")
_IIO_RAIL = re.compile(r"rail_name_(\d+)")


@dataclass(frozen=True)
class Telemetry:
    gpu_load: float | None = None  # 0..1
    power_mw: int | None = None  # the module's total
    rails_mw: dict[str, int] = field(default_factory=dict)

    def status_fields(self) -> dict[str, object]:
        """The AgentStatus fields (absent ones None, so the status leaves them out)."""
        return {
            "gpu_load": self.gpu_load,
            "power_mw": self.power_mw,
            "power_rails_mw": self.rails_mw or None,
        }


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:  # permissions, an I2C read that failed
        log.debug("cannot read %s: %s", path, error)
        return None


def _number(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        log.debug("not a number in %s: %r", path, text[:40])
        return None


def _gpu_load_files(root: Path) -> list[Path]:
    files = []
    for node in sorted((root / "class" / "devfreq").glob("*")):
        name = _read(node / "device" / "of_node" / "name") or node.name.rsplit(".", 1)[-1]
        if name.rstrip("\x00") in GPU_NAMES:
            files.append(node / "device" / "load")
    return files + [root / relative for relative in FIXED_GPU_LOADS]


def read_gpu_load(root: Path) -> float | None:
    """The integrated GPU's load in 0..1, or None where there is none."""
    for path in _gpu_load_files(root):
        if not path.exists():
            continue
        permille = _number(path)
        if permille is None:
            return None
        if not 0 <= permille <= 1000:
            log.debug("GPU load %d per mille out of range in %s", permille, path)
            return None
        return permille / 1000
    return None


def _hwmon_rails(root: Path) -> dict[str, int | None]:
    rails: dict[str, int | None] = {}
    for device in sorted((root / "class" / "hwmon").glob("hwmon*")):
        if not (_read(device / "name") or "").startswith("ina3221"):
            continue
        for label_file in sorted(device.glob("in*_label")):
            match = _HWMON_LABEL.fullmatch(label_file.name)
            label = _read(label_file)
            if match is None or not label or label.upper() == "NC":  # NC: not connected
                continue
            channel = match.group(1)
            if _number(device / f"in{channel}_enable") == 0:
                continue
            if not (device / f"curr{channel}_input").exists():
                continue  # in7: the sum of shunt voltages, no rail
            millivolts = _number(device / f"in{channel}_input")
            milliamps = _number(device / f"curr{channel}_input")
            power = None if millivolts is None or milliamps is None else millivolts * milliamps
            rails.setdefault(label, None if power is None else round(power / 1000))
    return rails


def _iio_rails(root: Path) -> dict[str, int | None]:
    rails: dict[str, int | None] = {}
    for device in sorted((root / "bus" / "i2c" / "drivers").glob("ina3221x/*/iio:device*")):
        for name_file in sorted(device.glob("rail_name_*")):
            match = _IIO_RAIL.fullmatch(name_file.name)
            label = _read(name_file)
            if match is None or not label or label.upper() == "NC":
                continue
            rails.setdefault(label, _number(device / f"in_power{match.group(1)}_input"))
    return rails


def read_power(root: Path) -> tuple[int | None, dict[str, int]]:
    """(total mW, rail -> mW) from the INA3221 monitors under ``root``. A rail that cannot
    be read is left out; the total is None when it would be wrong without it."""
    found = _hwmon_rails(root) or _iio_rails(root)
    rails = {name: value for name, value in found.items() if value is not None and value >= 0}
    for name in INPUT_RAILS:
        if name in found:
            return rails.get(name), rails
    if not rails or len(rails) < len(found):
        return None, rails
    return sum(rails.values()), rails


@dataclass
class JetsonTelemetry:
    """Reads afresh each time: the devfreq node can appear late in boot."""

    root: Path

    def read(self) -> Telemetry:
        power, rails = read_power(self.root)
        return Telemetry(gpu_load=read_gpu_load(self.root), power_mw=power, rails_mw=rails)
