"""``fedmq-coordinator`` as an operator uses it: real Mosquitto, one real coordinator process
for the module (job ``cli``), the CLI run as a separate process. The test plays the agents.

The last test stops the module's coordinator (``stop``): keep it last."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
import yaml

from broker.dev import DevBroker
from broker.process import free_port
from codec import GlobalModel, decode_model, encode_update
from common.messages import (
    AgentState,
    AgentStatus,
    Command,
    CommandAction,
    CoordinatorStatus,
    Event,
    EventType,
    parse,
)
from common.topics import Topics
from coordinator import state
from tests.integration.conftest import Listener, credentials, environment, start_coordinator, stop

TOPICS = Topics("fedmq", "cli")
NOBODY = Topics("fedmq", "nobody")  # a job no coordinator serves


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    directory: Path


@pytest.fixture(scope="module")
def coordinator(broker: DevBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("cli-coordinator")
    # K = 1: every accepted update makes a version; no evaluation (faster versions)
    process = start_coordinator(
        broker,
        directory,
        job=TOPICS.job,
        strategy={"name": "fedbuff", "buffer_size": 1, "max_staleness": 1000},
        evaluate_every=0,
    )
    yield Served(process, directory)
    assert stop(process) == 0, (directory / "coordinator.log").read_text()[-3000:]


# --- helpers ----------------------------------------------------------------------------


def cli(
    broker: DevBroker, *args: str, account: str = "monitor", password: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI with the given account's password (its username is the command's default)."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args, *login(broker, account, password)],
        capture_output=True,
        text=True,
        timeout=180,
        env=environment(),
    )


def login(broker: DevBroker, account: str, password: str | None = None) -> list[str]:
    return ["--port", str(broker.port), "--password", password or broker.provision(account)]


def retained(broker: DevBroker, topic: str, timeout: float = 120) -> bytes:
    async def read() -> bytes:
        async with Listener(broker, "monitor", topic) as seen:
            await seen.wait_for(lambda: seen.messages, timeout)
        assert seen.messages, f"nothing retained on {topic}"
        return seen.messages[-1][1]

    return asyncio.run(read())


def current_model(broker: DevBroker) -> GlobalModel:
    return decode_model(retained(broker, TOPICS.model))


def update_from(agent: str, model: GlobalModel, update_id: str | None = None) -> bytes:
    return encode_update(
        {t.name: np.zeros(t.shape, np.float32) for t in model.tensors},
        codec="int8",
        job_id=TOPICS.job,
        sender_id=agent,
        base_version=model.version,
        num_samples=10,
        update_id=update_id,
    )


async def publish(broker: DevBroker, account: str, *messages: tuple[str, bytes]) -> None:
    async with aiomqtt.Client(**credentials(broker, account)) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def decision(broker: DevBroker, agent: str, payload: bytes) -> dict[str, Any]:
    """Send one update as ``agent``; the coordinator's event about it."""

    async def scenario() -> dict[str, Any]:
        async with Listener(broker, "monitor", TOPICS.events) as events:
            await publish(broker, agent, (TOPICS.update(agent), payload))

            def decided() -> list[dict[str, Any]]:
                return [e for e in events.json("/events") if e.get("agent") == agent]

            await events.wait_for(decided, 30)
            assert decided(), "no decision within 30 s"
            return decided()[0]

    return asyncio.run(scenario())


def wait_for_line(path: Path, text: str, process: subprocess.Popen[Any], timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        assert process.poll() is None, path.read_text() if path.exists() else "exited"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s")


def follow(broker: DevBroker, directory: Path, *args: str) -> subprocess.Popen[bytes]:
    """``events`` in the background, its output in files (read while it runs)."""
    with (
        open(directory / "out", "wb") as out,
        open(directory / "err", "wb") as err,
    ):
        process = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "events", *args, *login(broker, "monitor")],
            stdout=out,
            stderr=err,
            env=environment(),
        )
    wait_for_line(directory / "err", "following", process)
    return process


# --- status and agents -------------------------------------------------------------------


def test_status_and_agents_commands_read_the_retained_topics(
    broker: DevBroker, coordinator: Served, tmp_path: Path
):
    current_model(broker)  # the coordinator is up
    status = AgentStatus(
        agent="agent-cli",
        state=AgentState.IDLE,
        base_version=0,
        uplink_bytes=1234,
        temperature_c=48.5,
    )

    async def publish_status() -> None:
        async with aiomqtt.Client(**credentials(broker, "agent-cli")) as client:
            await client.publish(
                TOPICS.agent_status("agent-cli"), status.to_json(), qos=1, retain=True
            )

    asyncio.run(publish_status())
    result = cli(broker, "status", "--job", "cli", "--format", "json")
    assert result.returncode == 0, result.stderr
    coordinator_status = json.loads(result.stdout)
    assert coordinator_status["job"] == "cli" and coordinator_status["strategy"] == "fedbuff"
    assert coordinator_status["control"] == "run"
    result = cli(broker, "agents", "--job", "cli", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = {row["agent"]: row for row in json.loads(result.stdout)}
    row = rows["agent-cli"]
    assert (row["state"], row["uplink_bytes"], row["temperature_c"]) == ("idle", 1234, 48.5)
    assert row["staleness"] == coordinator_status["version"]
    table = cli(broker, "agents", "--job", "cli")
    assert table.returncode == 0 and "agent-cli" in table.stdout

    # the connection from a file, as another machine would keep it
    connection = {"host": "127.0.0.1", "port": broker.port, "username": "monitor"}
    connection["password"] = broker.provision("monitor")
    (tmp_path / "broker.yaml").write_text(yaml.safe_dump(connection))
    command = ["status", "--job", "cli", "--broker", str(tmp_path / "broker.yaml")]
    from_file = subprocess.run(
        [sys.executable, "-m", "coordinator", *command, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout)["job"] == "cli"


def test_status_command_exit_codes(broker: DevBroker, coordinator: Served):
    assert cli(broker, "status", "--job", "no-such-job").returncode == 3
    assert cli(broker, "status", "--job", "cli", password="wrong").returncode == 4
    assert cli(broker, "status", "--job", "a/b").returncode == 2
    assert cli(broker, "status", "--job", "cli", "--format", "yaml").returncode == 2
    unreachable = subprocess.run(
        [sys.executable, "-m", "coordinator", "status", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )
    assert unreachable.returncode == 4 and "error: broker" in unreachable.stderr


# --- events ------------------------------------------------------------------------------


def test_events_count_prints_that_many_json_lines_of_the_chosen_type(
    broker: DevBroker, coordinator: Served, tmp_path: Path
):
    process = follow(
        broker,
        tmp_path,
        *("--job", "cli", "--count", "3", "--type", "update_rejected", "--format", "json"),
    )
    online = AgentStatus(agent="agent-ev", state=AgentState.ONLINE).to_json()
    offline = AgentStatus(agent="agent-ev", state=AgentState.OFFLINE).to_json()
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        # three types of event; only update_rejected may be printed
        asyncio.run(
            publish(
                broker,
                "agent-ev",
                (TOPICS.agent_status("agent-ev"), online),
                (TOPICS.update("agent-ev"), b"\x93not an envelope"),
                (TOPICS.agent_status("agent-ev"), offline),
            )
        )
        time.sleep(0.5)
    assert process.wait(30) == 0, (tmp_path / "err").read_text()
    lines = (tmp_path / "out").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        event = parse(Event, line)
        assert (event.type, event.agent, event.reason) == (
            EventType.UPDATE_REJECTED,
            "agent-ev",
            "malformed",
        )


def test_events_prints_lines_for_people_and_ctrl_c_exits_0(
    broker: DevBroker, coordinator: Served, tmp_path: Path
):
    process = follow(broker, tmp_path, "--job", "cli")
    try:
        deadline = time.monotonic() + 60
        while "update_rejected" not in (tmp_path / "out").read_text():
            assert time.monotonic() < deadline, (tmp_path / "err").read_text()
            asyncio.run(publish(broker, "agent-ev", (TOPICS.update("agent-ev"), b"junk")))
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0, (tmp_path / "err").read_text()
    line = next(x for x in (tmp_path / "out").read_text().splitlines() if "update_rejected" in x)
    assert "agent=agent-ev" in line and "reason=malformed" in line
    assert "\x1b[" not in line  # no colour codes when not on a terminal


def test_events_exit_codes(broker: DevBroker, coordinator: Served):
    too_few = cli(broker, "events", "--job", NOBODY.job, "--count", "1", "--seconds", "1")
    assert too_few.returncode == 5 and "0 of 1 events" in too_few.stderr
    quiet = cli(broker, "events", "--job", NOBODY.job, "--seconds", "1")
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert cli(broker, "events", "--type", "bogus").returncode == 2
    assert cli(broker, "events", "--job", "cli", password="wrong").returncode == 4


# --- pause and resume ---------------------------------------------------------------------


def test_pause_refuses_updates_durably_and_resume_runs_again(
    broker: DevBroker, coordinator: Served, tmp_path: Path
):
    model = current_model(broker)

    async def paused() -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
        async with Listener(broker, "monitor", TOPICS.events) as events:
            result = await asyncio.to_thread(
                cli,
                broker,
                *("pause", "--job", "cli", "--reason", "maintenance", "--by", "tester"),
                *("--format", "json"),
                account="operator",
            )
            await events.wait_for(lambda: events.json("/events"), 10)
            return result, events.json("/events")

    result, events = asyncio.run(paused())
    assert result.returncode == 0, result.stderr
    control = json.loads(result.stdout)
    assert control["state"] == "pause" and control["command_id"]
    retained_control = json.loads(retained(broker, TOPICS.control))
    assert (retained_control["state"], retained_control["command_id"]) == (
        "pause",
        control["command_id"],
    )
    [event] = [e for e in events if e["type"] == "state"]
    assert (event["detail"], event["reason"], event["by"], event["command_id"]) == (
        "pause",
        "maintenance",
        "tester",
        control["command_id"],
    )

    assert decision(broker, "agent-p", update_from("agent-p", model))["reason"] == "paused"
    status = json.loads(cli(broker, "status", "--job", "cli", "--format", "json").stdout)
    assert status["control"] == "pause"

    # durable: the newest snapshot holds the paused control (read from a copy: loading
    # reconciles the ledger, which belongs to the running coordinator)
    shutil.copytree(coordinator.directory / "state", tmp_path / "state")
    snapshot = state.load(tmp_path / "state", {t.name: t.shape for t in model.tensors})
    assert snapshot is not None and snapshot.books["control"]["state"] == "pause"

    result = cli(broker, "resume", "--job", "cli", account="operator")
    assert result.returncode == 0, result.stderr
    assert "control is now run" in result.stdout
    assert json.loads(retained(broker, TOPICS.control))["state"] == "run"
    assert decision(broker, "agent-p", update_from("agent-p", model))["type"] == "update_accepted"


def test_a_bad_command_is_answered_and_the_coordinator_keeps_serving(
    broker: DevBroker, coordinator: Served
):
    async def scenario() -> list[dict[str, Any]]:
        async with Listener(broker, "monitor", TOPICS.events) as events:
            await publish(
                broker,
                "operator",
                (TOPICS.command, b"not json"),
                (TOPICS.command, b'{"action": "explode", "id": "cmd-1"}'),
            )

            def refused() -> list[dict[str, Any]]:
                return [e for e in events.json("/events") if e["type"] == "command_rejected"]

            await events.wait_for(lambda: len(refused()) >= 2, 20)
            return refused()

    refused = asyncio.run(scenario())
    assert [e["reason"] for e in refused] == ["malformed", "malformed"]
    assert "command_id" not in refused[0] and refused[1]["command_id"] == "cmd-1"
    assert "action" in refused[1]["detail"]
    assert coordinator.process.poll() is None
    assert json.loads(retained(broker, TOPICS.control))["state"] == "run"


def test_commands_nobody_confirms_exit_5_and_refused_ones_6(broker: DevBroker):
    result = cli(broker, "pause", "--job", NOBODY.job, "--timeout", "1", account="operator")
    assert result.returncode == 5
    assert "no coordinator of job 'nobody' confirmed pause" in result.stderr

    refusing = Topics("fedmq", "refusing")

    async def scenario() -> tuple[int | None, bytes]:
        """The test plays a coordinator that refuses every command."""
        async with aiomqtt.Client(**credentials(broker, "coordinator")) as fake:
            await fake.subscribe(refusing.command, qos=1)
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "coordinator", "stop", "--job", refusing.job),
                *login(broker, "operator"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=environment(),
            )
            messages = fake.messages.__aiter__()
            message = await asyncio.wait_for(messages.__anext__(), 60)
            assert isinstance(message.payload, bytes)
            command = parse(Command, message.payload)
            assert command.action == CommandAction.STOP and command.by
            answer = Event(
                type=EventType.COMMAND_REJECTED,
                reason="stopping",
                detail="not now",
                command_id=command.id,
            )
            await fake.publish(refusing.events, answer.to_json(), qos=1)
            _, err = await asyncio.wait_for(process.communicate(), 60)
            return process.returncode, err

    code, err = asyncio.run(scenario())
    assert code == 6 and b"stopping (not now)" in err


def test_commands_bad_options_and_broker_errors(broker: DevBroker):
    assert cli(broker, "pause", "--job", "a/b", account="operator").returncode == 2
    too_long = cli(broker, "pause", "--reason", "x" * 501, account="operator")
    assert too_long.returncode == 2 and "reason" in too_long.stderr
    assert cli(broker, "resume", "--job", "cli", password="wrong").returncode == 4


# --- export ------------------------------------------------------------------------------


def test_export_writes_npz_and_keras_equal_to_the_retained_model(
    broker: DevBroker, coordinator: Served, tmp_path: Path
):
    model = current_model(broker)
    expected = model.arrays()
    config = coordinator.directory / "coordinator.yaml"  # its task (mlp) and job (cli)
    result = cli(
        broker,
        *("export", "--config", str(config), "--output", str(tmp_path / "m")),
        *("--format", "json"),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["job"], summary["version"]) == ("cli", model.version)
    assert summary["npz"] == str(tmp_path / "m.npz")
    assert summary["keras"] == str(tmp_path / "m.keras")

    with np.load(tmp_path / "m.npz") as npz:
        assert sorted(npz.files) == sorted(expected)
        for name, array in expected.items():
            np.testing.assert_array_equal(npz[name], array)

    # the .keras file loads in a fresh process with the same weights, in the same order.
    # (A loaded model's variable paths lack the model-name level: "hidden/kernel" for the
    # "mlp/hidden/kernel" of a model built in code.)
    script = (
        "import json, sys, numpy as np, keras; m = keras.models.load_model(sys.argv[1]); "
        "np.savez(sys.argv[2], *[w.numpy() for w in m.weights]); "
        "print(json.dumps([w.path for w in m.weights]))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m.keras"), str(tmp_path / "loaded.npz")],
        capture_output=True,
        text=True,
        timeout=180,
        env=environment(),
    )
    assert loaded.returncode == 0, loaded.stderr
    paths = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert len(paths) == len(expected)
    with np.load(tmp_path / "loaded.npz") as weights:
        for index, (name, array) in enumerate(expected.items()):
            assert name.endswith(paths[index]), (name, paths[index])
            np.testing.assert_array_equal(weights[f"arr_{index}"], array)

    # never replaced without --force
    before = (tmp_path / "m.npz").stat().st_mtime_ns
    again = cli(broker, "export", "--job", "cli", "--output", str(tmp_path / "m.npz"))
    assert again.returncode == 2 and "--force" in again.stderr
    assert (tmp_path / "m.npz").stat().st_mtime_ns == before
    forced = cli(broker, "export", "--job", "cli", "--output", str(tmp_path / "m"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "npz only" in forced.stderr


def test_export_exit_codes(broker: DevBroker, tmp_path: Path):
    nothing = cli(
        broker, "export", "--job", NOBODY.job, "--timeout", "1", "-o", str(tmp_path / "x")
    )
    assert nothing.returncode == 3 and "no model retained for job 'nobody'" in nothing.stderr
    assert not list(tmp_path.iterdir())
    bad_shape = cli(broker, "export", "--model", "mlp", "--input-shape", "8x8")
    assert bad_shape.returncode == 2 and "--input-shape" in bad_shape.stderr
    assert cli(broker, "export", "--job", "cli", password="wrong").returncode == 4


# --- stop: the module's coordinator ends here (keep this test last) ----------------------


def test_stop_ends_the_coordinator_with_exit_0(broker: DevBroker, coordinator: Served):
    current_model(broker)
    result = cli(
        broker,
        *("stop", "--job", "cli", "--reason", "end of test", "--format", "json"),
        account="operator",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "stop"
    log = coordinator.directory / "coordinator.log"
    assert coordinator.process.wait(60) == 0, log.read_text()[-3000:]
    final = parse(CoordinatorStatus, retained(broker, TOPICS.coordinator_status))
    assert final.state.value == "stopped"
    assert json.loads(retained(broker, TOPICS.control))["state"] == "stop"
