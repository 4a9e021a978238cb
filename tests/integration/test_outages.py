"""Outages against a real Mosquitto of each test's own (persistence on, so it can be
restarted): the acknowledgement point, what survives a broker restart, and an agent that
trains while the broker is away and is killed before it could send."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from broker.dev import DevBroker
from common.mqtt import Ack, Session
from common.topics import Topics
from tests.integration.conftest import credentials, start_coordinator, stop
from tests.integration.test_agent import start_agent, statuses

TOPICS = Topics("fedmq", "agenttest")


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[DevBroker]:
    instance = DevBroker(tmp_path / "broker")
    instance.start()
    yield instance
    instance.stop()


def persistent(broker: DevBroker, account: str, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        **credentials(broker, account), identifier=identifier, clean_session=False
    )


async def publish(broker: DevBroker, account: str, topic: str, *payloads: bytes) -> None:
    async with aiomqtt.Client(**credentials(broker, account)) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1, timeout=10)


async def receive_with_session(
    broker: DevBroker, count: int, ack_when: dict[bytes, bool]
) -> list[bytes]:
    """Run a manual-ack Session as the coordinator until ``count`` updates arrived; ack the
    ones ``ack_when`` says, then disconnect."""
    received: list[bytes] = []
    done = asyncio.Event()

    async def on_message(topic: str, payload: bytes, ack: Ack) -> None:
        received.append(payload)
        if ack_when.get(payload, False):
            ack()
        if len(received) >= count:
            done.set()

    stop_event = asyncio.Event()
    session = Session(
        lambda: persistent(broker, "coordinator", "fedmq-coordinator-outage"),
        [TOPICS.all_updates],
        on_message=on_message,
        on_connect=_nothing,
        stop=stop_event,
        log=logging.getLogger("test"),
        bytes_per_second=1e6,
        manual_ack=True,
    )
    task = asyncio.create_task(session.run())
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(done.wait(), 10)
    await asyncio.sleep(0.3)  # let the PUBACKs that were released go out
    stop_event.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return received


async def _nothing() -> None:
    return None


def test_only_acknowledged_updates_are_forgotten_by_the_broker(own_broker: DevBroker):
    """The coordinator's acknowledgement point: what it did not ack (not yet journaled when
    it died) comes back; acks go out in arrival order, so an ack waits for earlier ones."""

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        async with persistent(own_broker, "coordinator", "fedmq-coordinator-outage") as c:
            await c.subscribe(TOPICS.all_updates, qos=1)  # the session exists from now on
        await publish(own_broker, "agent-a", TOPICS.update("agent-a"), b"u1", b"u2", b"u3")
        first = await receive_with_session(own_broker, 3, {b"u1": True, b"u3": True})
        second = await receive_with_session(own_broker, 2, {b"u2": True, b"u3": True})
        third = await receive_with_session(own_broker, 1, {})
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert first == [b"u1", b"u2", b"u3"]
    # u1 was acknowledged; u3's ack waited behind the unacknowledged u2, so both return
    assert second == [b"u2", b"u3"]
    assert third == []  # everything acknowledged now: nothing is redelivered


def test_retained_model_and_queued_updates_survive_a_broker_restart(own_broker: DevBroker):
    async def before() -> None:
        async with persistent(own_broker, "coordinator", "fedmq-coordinator-outage") as c:
            await c.subscribe(TOPICS.all_updates, qos=1)
            await c.publish(TOPICS.model, b"model v7", qos=1, retain=True, timeout=10)
        # the coordinator is away: the broker queues the update for its session
        await publish(own_broker, "agent-a", TOPICS.update("agent-a"), b"trained offline")

    async def first_message(account: str, topic: str | None, identifier: str = "") -> bytes:
        client = (
            persistent(own_broker, account, identifier)
            if identifier
            else aiomqtt.Client(**credentials(own_broker, account))
        )
        async with client:
            if topic is not None:
                await client.subscribe(topic, qos=1)
            async for message in client.messages:
                return bytes(message.payload)
        raise AssertionError("no message")

    async def after() -> tuple[bytes, bytes]:
        # the coordinator's session comes back from the broker's disk, queue included
        update = await first_message("coordinator", None, "fedmq-coordinator-outage")
        model = await first_message("agent-b", TOPICS.model)
        return update, model

    asyncio.run(before())
    own_broker.restart()
    update, model = asyncio.run(asyncio.wait_for(after(), 20))
    assert update == b"trained offline"
    assert model == b"model v7"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_an_update_trained_offline_survives_an_agent_kill_and_is_delivered(
    own_broker: DevBroker, tmp_path: Path
):
    """The broker goes away mid-round; the agent finishes, keeps the update in its outbox,
    and is SIGKILLed. Back with the broker, the restarted agent sends that very update
    (and restores its error-feedback residual); the coordinator decides it."""
    coordinator = start_coordinator(
        own_broker,
        tmp_path,
        job="agenttest",
        evaluate_every=0,
        strategy={"name": "fedbuff", "buffer_size": 1},
    )
    agent_dir = tmp_path / "agent-state"
    agent = start_agent(own_broker, tmp_path, "agent-x", slowdown=30.0, state_dir=str(agent_dir))
    try:
        statuses(own_broker, "agent-x", lambda s: any(x["state"] == "training" for x in s))
        own_broker.stop()  # mid-round (slowdown stretches it): the update cannot go out
        wait_until(lambda: any((agent_dir / "outbox").glob("*.upd")), 90, "an update in the outbox")
        (kept,) = (agent_dir / "outbox").glob("*.upd")
        update_id = kept.stem.partition("-")[2]
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        assert (agent_dir / "feedback.npz").exists()

        own_broker.start()
        agent = start_agent(own_broker, tmp_path, "agent-x", state_dir=str(agent_dir))
        sent_log = agent_dir / "sent.jsonl"
        wait_until(
            lambda: sent_log.exists() and update_id in sent_log.read_text(), 90, "the delivery"
        )
        assert not (agent_dir / "outbox" / kept.name).exists()
        ledger = tmp_path / "state" / "decisions.jsonl"  # the coordinator's
        wait_until(lambda: ledger.exists() and update_id in ledger.read_text(), 60, "a decision")
        decisions = [json.loads(line) for line in ledger.read_text().splitlines()]
        assert [d["decision"] for d in decisions if d["update_id"] == update_id] == ["accepted"]
        assert "residual restored" in (tmp_path / "agent-x.log").read_text()
    finally:
        stop(agent)
        stop(coordinator)


def test_agents_wait_while_the_coordinator_is_away_and_resume_when_it_is_back(
    broker: DevBroker, tmp_path: Path
):
    """SIGKILL the coordinator: its last will says stopped, and the agent stops training
    (updates would only queue and come back stale) until a coordinator is back."""
    coordinator = start_coordinator(broker, tmp_path, job="agenttest", evaluate_every=0)
    agent = start_agent(broker, tmp_path, "agent-w", state_dir=str(tmp_path / "agent-state"))
    try:
        statuses(broker, "agent-w", lambda s: any(x["state"] == "training" for x in s))
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait()
        seen = statuses(
            broker, "agent-w", lambda s: any(x.get("deferred") == "coordinator away" for x in s)
        )
        assert any(x.get("deferred") == "coordinator away" for x in seen), seen
        time.sleep(3)  # it stays idle: nothing trains while the coordinator is away
        later = statuses(broker, "agent-w", lambda s: bool(s), timeout=10)
        assert later[-1]["state"] == "idle" and later[-1]["deferred"] == "coordinator away"
        coordinator = start_coordinator(broker, tmp_path, job="agenttest", evaluate_every=0)
        back = statuses(broker, "agent-w", lambda s: any(x["state"] == "training" for x in s))
        assert any(x["state"] == "training" for x in back)
    finally:
        stop(agent)
        stop(coordinator)


def test_a_second_coordinator_on_the_same_state_is_refused(broker: DevBroker, tmp_path: Path):
    """Two coordinators on one state_dir would interleave their journals: the second exits 2
    at once (before TensorFlow), naming the directory."""
    shared = tmp_path / "shared-state"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = start_coordinator(
        broker, tmp_path / "one", job="locktest", evaluate_every=0, state_dir=str(shared)
    )
    try:
        wait_until(lambda: any(shared.glob("snapshot-*.state")), 120, "the first coordinator")
        second = start_coordinator(
            broker, tmp_path / "two", job="locktest", evaluate_every=0, state_dir=str(shared)
        )
        assert second.wait(30) == 2
        assert "in use by another coordinator" in (tmp_path / "two" / "coordinator.log").read_text()
        assert first.poll() is None
    finally:
        stop(first)
