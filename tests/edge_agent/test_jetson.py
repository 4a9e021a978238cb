"""Jetson GPU load and power rails from fake sysfs trees laid out as on each board family."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from common.messages import AgentState, AgentStatus, parse
from edge_agent.jetson import JetsonTelemetry, Telemetry, read_gpu_load, read_power


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def devfreq(root: Path, node: str, of_name: str | None, load: str | None) -> None:
    """``class/devfreq/<node>/device``: a directory here, a symlink on a board."""
    device = f"class/devfreq/{node}/device"
    (root / device).mkdir(parents=True, exist_ok=True)
    if of_name is not None:
        write(root, f"{device}/of_node/name", of_name + "\x00")  # device-tree strings end in NUL
    if load is not None:
        write(root, f"{device}/load", load + "\n")


def ina3221_hwmon(root: Path, hwmon: str, channels: dict[int, tuple[str, int, int]]) -> None:
    """A JetPack >= 5 INA3221: channel -> (label, mV, mA), plus the sum-of-shunts channel."""
    base = f"class/hwmon/{hwmon}"
    write(root, f"{base}/name", "ina3221\n")
    for channel, (label, millivolts, milliamps) in channels.items():
        write(root, f"{base}/in{channel}_label", label + "\n")
        write(root, f"{base}/in{channel}_input", f"{millivolts}\n")
        write(root, f"{base}/curr{channel}_input", f"{milliamps}\n")
        write(root, f"{base}/in{channel + 3}_input", "1200\n")  # shunt voltage, no label
    write(root, f"{base}/in7_label", "sum of shunt voltages\n")
    write(root, f"{base}/in7_input", "3600\n")


def orin(root: Path) -> None:
    """AGX Orin on JetPack 6: GPU found through devfreq, rails on hwmon."""
    devfreq(root, "17000000.gpu", "gpu", "523")
    devfreq(root, "15340000.vic", "vic", "999")  # another engine with a load file
    ina3221_hwmon(
        root,
        "hwmon1",
        {
            1: ("VDD_GPU_SOC", 5000, 1200),
            2: ("VDD_CPU_CV", 5000, 400),
            3: ("VIN_SYS_5V0", 5000, 600),
        },
    )
    ina3221_hwmon(root, "hwmon2", {1: ("VDDQ_VDD2_1V8AO", 5000, 100), 2: ("VDD_IN", 19000, 600)})
    write(root, "class/hwmon/hwmon0/name", "cpu_thermal\n")  # another hwmon device


def test_orin_gpu_load_and_module_power(tmp_path: Path):
    orin(tmp_path)
    telemetry = JetsonTelemetry(tmp_path).read()
    assert telemetry.gpu_load == pytest.approx(0.523)
    assert telemetry.power_mw == 11400  # VDD_IN: 19 V x 0.6 A, the module's input
    assert telemetry.rails_mw == {
        "VDD_GPU_SOC": 6000,
        "VDD_CPU_CV": 2000,
        "VIN_SYS_5V0": 3000,
        "VDDQ_VDD2_1V8AO": 500,
        "VDD_IN": 11400,
    }


def test_without_an_input_rail_the_total_is_the_sum(tmp_path: Path):
    """AGX Xavier measures no module input: the rails add up."""
    devfreq(tmp_path, "17000000.gv11b", "gv11b", "0")
    ina3221_hwmon(tmp_path, "hwmon3", {1: ("GPU", 1000, 500), 2: ("CPU", 1000, 250)})
    telemetry = JetsonTelemetry(tmp_path).read()
    assert (telemetry.gpu_load, telemetry.power_mw) == (0.0, 750)


def test_nano_on_jetpack_4_reads_the_iio_driver_and_the_fixed_gpu_path(tmp_path: Path):
    write(tmp_path, "devices/gpu.0/load", "1000\n")
    iio = "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for channel, (rail, milliwatts) in enumerate(
        [("POM_5V_IN", "4321"), ("POM_5V_GPU", "1100"), ("POM_5V_CPU", "900")]
    ):
        write(tmp_path, f"{iio}/rail_name_{channel}", rail + "\n")
        write(tmp_path, f"{iio}/in_power{channel}_input", milliwatts + "\n")
    telemetry = JetsonTelemetry(tmp_path).read()
    assert telemetry.gpu_load == 1.0
    assert telemetry.power_mw == 4321
    assert set(telemetry.rails_mw) == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}


def test_orin_platform_gpu_path_without_devfreq(tmp_path: Path):
    write(tmp_path, "devices/platform/gpu.0/load", "250\n")
    assert read_gpu_load(tmp_path) == 0.25


def test_not_connected_and_disabled_channels_are_skipped(tmp_path: Path):
    ina3221_hwmon(
        tmp_path,
        "hwmon1",
        {1: ("VDD_IN", 5000, 1000), 2: ("NC", 5000, 10), 3: ("VDD_SOC", 5000, 200)},
    )
    write(tmp_path, "class/hwmon/hwmon1/in3_enable", "0\n")
    assert read_power(tmp_path) == (5000, {"VDD_IN": 5000})


def test_a_machine_without_jetson_telemetry_reports_none(tmp_path: Path):
    assert JetsonTelemetry(tmp_path / "no-sysfs").read() == Telemetry()
    devfreq(tmp_path, "15340000.vic", "vic", "500")  # no GPU among the devfreq nodes
    write(tmp_path, "class/hwmon/hwmon0/name", "nvme\n")
    assert JetsonTelemetry(tmp_path).read() == Telemetry()


@pytest.mark.parametrize("load", ["", "busy", "1001", "-5"])
def test_garbage_gpu_load_is_none_with_a_debug_log(
    tmp_path: Path, load: str, caplog: pytest.LogCaptureFixture
):
    devfreq(tmp_path, "17000000.gpu", "gpu", load)
    with caplog.at_level(logging.DEBUG, logger="fedmq.agent.jetson"):
        assert read_gpu_load(tmp_path) is None
    assert "17000000.gpu" in caplog.text


def test_a_garbage_rail_is_left_out_and_never_faked_by_a_sum(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    ina3221_hwmon(tmp_path, "hwmon1", {1: ("VDD_IN", 5000, 1000), 2: ("VDD_CPU", 5000, 100)})
    write(tmp_path, "class/hwmon/hwmon1/curr1_input", "n/a\n")
    with caplog.at_level(logging.DEBUG, logger="fedmq.agent.jetson"):
        assert read_power(tmp_path) == (None, {"VDD_CPU": 500})  # the input rail is unknown
    assert "curr1_input" in caplog.text
    write(tmp_path, "class/hwmon/hwmon1/in1_label", "GPU\n")  # no input rail: a sum...
    assert read_power(tmp_path) == (None, {"VDD_CPU": 500})  # ...of every rail, or nothing
    write(tmp_path, "class/hwmon/hwmon1/curr1_input", "200\n")
    assert read_power(tmp_path) == (1500, {"GPU": 1000, "VDD_CPU": 500})


def test_unreadable_file_is_none_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    devfreq(tmp_path, "17000000.gpu", "gpu", None)
    (tmp_path / "class/devfreq/17000000.gpu/device/load").mkdir()  # reading it fails (EISDIR)
    with caplog.at_level(logging.DEBUG, logger="fedmq.agent.jetson"):
        assert read_gpu_load(tmp_path) is None
    assert "cannot read" in caplog.text


def test_telemetry_travels_in_the_agent_status(tmp_path: Path):
    orin(tmp_path)
    telemetry = JetsonTelemetry(tmp_path).read()
    status = AgentStatus(agent="jetson-07", state=AgentState.IDLE, **telemetry.status_fields())
    received = parse(AgentStatus, status.to_json())
    assert received.gpu_load == pytest.approx(0.523)
    assert received.power_mw == 11400 and received.power_rails_mw == telemetry.rails_mw
    # a device without telemetry leaves the fields out of the JSON (never null)
    bare = AgentStatus(agent="pc", state=AgentState.IDLE, **Telemetry().status_fields())
    assert not {"gpu_load", "power_mw", "power_rails_mw"} & set(json.loads(bare.to_json()))


def test_a_load_above_one_is_refused_on_receipt():
    payload = b'{"agent": "a", "state": "idle", "gpu_load": 52.3}'
    with pytest.raises(Exception, match="gpu_load"):
        parse(AgentStatus, payload)
