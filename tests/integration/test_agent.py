"""The agent as a process: clean shutdown on SIGTERM, clear errors for bad data or config."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from broker.dev import DevBroker
from common.topics import Topics
from tests.integration.conftest import Listener, environment, start_coordinator, stop
from tests.integration.test_metrics import metrics_port, sample, scrape

TOPICS = Topics("fedmq", "agenttest")


def start_agent(
    broker: DevBroker, directory: Path, name: str, **settings: Any
) -> subprocess.Popen[bytes]:
    config = {
        "agent_id": name,
        "job": "agenttest",
        "broker": {
            "host": "127.0.0.1",
            "port": broker.port,
            "username": name,
            "password": broker.provision(name),
        },
        "heartbeat_seconds": 0.5,
        "state_dir": str(directory / "state" / name),
        **settings,
    }
    path = directory / f"{name}.yaml"

    path.write_text(yaml.safe_dump(config))
    with open(directory / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "--config", str(path)],
            env=environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def statuses(broker: DevBroker, name: str, until: Any, timeout: float = 90) -> list[dict[str, Any]]:
    async def watch() -> list[dict[str, Any]]:
        async with Listener(broker, "monitor", TOPICS.agent_status(name)) as seen:
            await seen.wait_for(lambda: until(seen.json("/status")), timeout)
            return seen.json("/status")

    return asyncio.run(watch())


def test_sigterm_publishes_offline_and_exits_0(broker: DevBroker, tmp_path: Path):
    process = start_agent(broker, tmp_path, "agent-term")
    seen = statuses(broker, "agent-term", lambda s: any(x["state"] == "online" for x in s))
    assert any(s["state"] == "online" for s in seen), (tmp_path / "agent-term.log").read_text()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    final = statuses(broker, "agent-term", lambda s: bool(s), timeout=10)  # retained
    assert final[-1]["state"] == "offline"


def test_missing_data_is_an_error_status_with_its_reason(broker: DevBroker, tmp_path: Path):
    missing = tmp_path / "nowhere.npz"
    process = start_agent(
        broker, tmp_path, "agent-nodata", task={"data": {"kind": "npz", "path": str(missing)}}
    )
    assert process.wait(90) == 2  # no restart loop under systemd (RestartPreventExitStatus)
    final = statuses(broker, "agent-nodata", lambda s: bool(s), timeout=10)
    assert final[-1]["state"] == "error"
    assert "nowhere.npz" in final[-1]["error"]
    assert "nowhere.npz" in (tmp_path / "agent-nodata.log").read_text()


def test_sigterm_during_training_is_bounded(broker: DevBroker, tmp_path: Path):
    """A long fit (many epochs) stops at the end of its current batch."""
    coordinator = start_coordinator(
        broker,
        tmp_path,
        job="agenttest",
        evaluate_every=0,
        training={"epochs": 1000, "batch_size": 1},
    )
    try:
        process = start_agent(broker, tmp_path, "agent-busy")
        statuses(broker, "agent-busy", lambda s: any(x["state"] == "training" for x in s))
        process.send_signal(signal.SIGTERM)
        # uninterrupted, this fit would run for minutes: the wait bounds the shutdown
        assert process.wait(30) == 0

    finally:
        stop(coordinator)


def fake_jetson(root: Path) -> None:
    """An Orin's GPU load (devfreq) and one INA3221 with the module's input rail."""
    (root / "class/devfreq/17000000.gpu/device").mkdir(parents=True)
    (root / "class/devfreq/17000000.gpu/device/load").write_text("420\n")
    hwmon = root / "class/hwmon/hwmon1"
    hwmon.mkdir(parents=True)
    readings = {
        "name": "ina3221",
        "in1_label": "VDD_IN",
        "in1_input": "19000",
        "curr1_input": "600",
    }
    for name, text in readings.items():
        (hwmon / name).write_text(text + "\n")


def test_a_hot_device_reports_its_temperature_and_defers_training(
    broker: DevBroker, tmp_path: Path
):
    """Also: Jetson telemetry in the status, and the agent's metrics endpoint."""
    sysfs = tmp_path / "thermal"
    (sysfs / "thermal_zone0").mkdir(parents=True)
    (sysfs / "thermal_zone0" / "type").write_text("GPU-therm\n")
    (sysfs / "thermal_zone0" / "temp").write_text("91500\n")
    fake_jetson(tmp_path / "sys")
    coordinator = start_coordinator(broker, tmp_path, job="agenttest", evaluate_every=0)
    try:
        agent = start_agent(
            broker,
            tmp_path,
            "agent-hot",
            thermal_root=str(sysfs),
            defer_training_above_c=85.0,
            resume_training_below_c=75.0,
            sysfs_root=str(tmp_path / "sys"),
            metrics_port=0,
        )
        seen = statuses(broker, "agent-hot", lambda s: any(x.get("deferred") for x in s))
        assert any(s.get("deferred") == "too hot" for s in seen), seen
        assert all(s["state"] != "training" for s in seen)
        assert seen[-1]["temperature_c"] == 91.5
        assert (seen[-1]["gpu_load"], seen[-1]["power_mw"]) == (0.42, 11400)
        assert seen[-1]["power_rails_mw"] == {"VDD_IN": 11400}
        port = metrics_port(tmp_path / "agent-hot.log", agent)
        deferred = scrape(port)
        assert sample(deferred, "fedmq_agent_temperature_celsius") == 91.5
        assert sample(deferred, "fedmq_agent_gpu_load_ratio") == 0.42
        assert sample(deferred, "fedmq_agent_power_watts") == 11.4
        assert sample(deferred, "fedmq_agent_training_seconds_count") == 0
        (sysfs / "thermal_zone0" / "temp").write_text("60000\n")  # cooled down
        seen = statuses(broker, "agent-hot", lambda s: any(x["updates_sent"] > 0 for x in s))
        assert any(s["state"] == "training" for s in seen)
        trained = scrape(port)
        assert sample(trained, "fedmq_agent_training_seconds_count") >= 1
        assert sample(trained, "fedmq_agent_updates_sent_total") >= 1
        assert sample(trained, "fedmq_agent_sent_bytes_total") > 0
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    finally:
        stop(coordinator)


def test_bad_config_exits_2_with_one_line(broker: DevBroker, tmp_path: Path):

    process = start_agent(broker, tmp_path, "agent-bad", slowdown=0.5)
    assert process.wait(60) == 2
    lines = [line for line in (tmp_path / "agent-bad.log").read_text().splitlines() if line]
    assert len(lines) == 1 and "slowdown" in lines[0]


def test_training_that_diverges_is_an_error_and_nothing_is_published(
    broker: DevBroker, tmp_path: Path
):
    """Finite but absurd data blows the weights up to NaN: the agent reports it and sends
    nothing (the coordinator neither accepts nor rejects anything from it)."""
    import numpy as np

    data = tmp_path / "absurd.npz"
    labels = np.arange(64) % 10
    np.savez(data, x=np.full((64, 64), 1e30, np.float32), y=labels.astype(np.int64))
    coordinator = start_coordinator(broker, tmp_path, job="agenttest", evaluate_every=0)
    agent = None
    try:
        agent = start_agent(
            broker, tmp_path, "agent-nan", task={"data": {"kind": "npz", "path": str(data)}}
        )
        seen = statuses(broker, "agent-nan", lambda s: any(x["state"] == "error" for x in s))
        errors = [s["error"] for s in seen if s["state"] == "error"]
        assert errors and "diverged" in errors[0], seen
        assert all(s["updates_sent"] == 0 for s in seen)
        assert "diverged" in (tmp_path / "agent-nan.log").read_text()
    finally:
        if agent is not None:
            stop(agent)
        stop(coordinator)


def test_a_model_that_fails_validation_is_an_error_and_is_not_used(
    broker: DevBroker, tmp_path: Path
):
    """Garbage, then a well-formed model of another task, on the model topic: each is an
    error status naming the problem; the agent keeps running and never trains on them."""
    from codec import encode_model

    topics = Topics("fedmq", "badmodel")
    agent = start_agent(broker, tmp_path, "agent-bad", job="badmodel")

    async def scenario() -> list[dict[str, Any]]:
        async with Listener(broker, "monitor", topics.agent_status("agent-bad")) as seen:
            assert await seen.wait_for(lambda: bool(seen.json("/status")), 90)
            import aiomqtt

            from tests.integration.conftest import credentials

            async with aiomqtt.Client(**credentials(broker, "coordinator")) as coordinator:
                await coordinator.publish(topics.model, b"\x93not a model", qos=1, retain=True)
                assert await seen.wait_for(
                    lambda: any(s.get("error") for s in seen.json("/status")), 30
                )
                other = encode_model(
                    {"x": np.zeros(3, np.float32)},
                    job_id="badmodel",
                    sender_id="coordinator",
                    version=1,
                )
                await coordinator.publish(topics.model, other, qos=1, retain=True)
                assert await seen.wait_for(
                    lambda: any(
                        "does not match" in (s.get("error") or "") for s in seen.json("/status")
                    ),
                    30,
                )
                await coordinator.publish(topics.model, b"", qos=1, retain=True)  # clear it
            return seen.json("/status")

    try:
        seen = asyncio.run(scenario())
        errors = [s["error"] for s in seen if s.get("error")]
        assert errors[0].startswith("invalid model"), errors
        assert any("does not match the local task" in e for e in errors), errors
        assert all(s["state"] != "training" for s in seen)
        assert agent.poll() is None  # still running
        assert "ignoring the model" in (tmp_path / "agent-bad.log").read_text()
    finally:
        stop(agent)
