"""The embedded amqtt broker (the pip-only fallback for machines without Mosquitto) enforces
fedmq's identity and access rules (broker/embedded.py; the same checks as test_broker.py,
whose wildcard subscriptions amqtt refuses, so listeners here subscribe topic by topic)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import aiomqtt
import pytest

from broker.dev import DevBroker
from broker.embedded import EmbeddedBroker, access_rules
from common.messages import AgentState, AgentStatus, parse
from common.topics import Topics
from tests.integration.conftest import Listener, credentials, environment

TOPICS = Topics("fedmq", "emb")
EVERYTHING = (  # all a coordinator may read: test_broker.py's fedmq/acl/# topic by topic
    TOPICS.all_updates,
    TOPICS.all_agent_statuses,
    TOPICS.model,
    TOPICS.control,
    TOPICS.coordinator_status,
    TOPICS.events,
)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    instance = EmbeddedBroker(tmp_path_factory.mktemp("embedded"))
    instance.start()
    yield instance
    instance.stop()


def dev(broker: EmbeddedBroker) -> DevBroker:
    """conftest's helpers are annotated with DevBroker but use only .port and .provision()."""
    return cast(DevBroker, broker)


async def publish_as(
    broker: EmbeddedBroker, account: str, messages: list[tuple[str, bytes]], *, retain: bool = False
) -> None:
    async with aiomqtt.Client(**credentials(dev(broker), account)) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=retain)


def test_access_rules_expand_render_acl_per_account():
    rules = access_rules("fedmq", ["coordinator", "monitor", "agent-a"])
    assert rules["publish-acl"]["agent-a"] == [
        "fedmq/+/update/agent-a",
        "fedmq/+/agents/agent-a/status",
    ]
    assert rules["subscribe-acl"]["agent-a"] == rules["receive-acl"]["agent-a"]
    assert set(rules["receive-acl"]["agent-a"]) == {
        "fedmq/+/agents/agent-a/status",
        "fedmq/+/model",
        "fedmq/+/control",
    }
    assert "fedmq/+/update/+" in rules["receive-acl"]["coordinator"]
    assert "fedmq/+/model" in rules["publish-acl"]["coordinator"]
    assert not any("update/+" in topic for topic in rules["receive-acl"]["monitor"])
    # the patterns apply to every account, as in Mosquitto: the monitor's own agent topics
    assert rules["publish-acl"]["monitor"] == [
        "fedmq/+/update/monitor",
        "fedmq/+/agents/monitor/status",
    ]


@pytest.mark.parametrize(
    "login",
    [{}, {"username": "agent-x", "password": "wrong"}, {"username": "nobody", "password": "x"}],
    ids=["anonymous", "wrong-password", "unknown-user"],
)
def test_unauthenticated_clients_are_refused(embedded: EmbeddedBroker, login: dict[str, str]):
    async def connect() -> None:
        username, password = login.get("username"), login.get("password")
        async with aiomqtt.Client(
            "127.0.0.1", embedded.port, username=username, password=password, timeout=5
        ):
            pass

    embedded.provision("agent-x")
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(connect())


def test_agent_writes_only_its_own_topics(embedded: EmbeddedBroker):
    forbidden = [
        (TOPICS.update("agent-b"), b"forged update"),
        (TOPICS.agent_status("agent-b"), b'{"forged": true}'),
        (TOPICS.model, b"forged model"),
        (TOPICS.control, b'{"state": "stop"}'),
        (TOPICS.coordinator_status, b'{"forged": true}'),
        (TOPICS.events, b'{"forged": true}'),
    ]
    allowed = [
        (TOPICS.update("agent-a"), b"own update"),
        (TOPICS.agent_status("agent-a"), b'{"own": true}'),
    ]

    async def scenario() -> list[tuple[str, bytes]]:
        async with Listener(dev(embedded), "coordinator", *EVERYTHING) as seen:
            await publish_as(embedded, "agent-a", forbidden + allowed)
            await seen.wait_for(lambda: len(seen.messages) >= len(allowed), 10)
            await asyncio.sleep(0.3)  # room for anything forbidden to arrive
            return list(seen.messages)

    received = asyncio.run(scenario())
    assert sorted(received) == sorted(allowed)


def test_coordinator_receives_updates_and_agents_do_not(embedded: EmbeddedBroker):
    """(agent-b is provisioned only now, with the broker running: it works at once.)"""

    async def scenario() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]], list[int]]:
        async with aiomqtt.Client(**credentials(dev(embedded), "agent-a")) as client:
            codes = await client.subscribe(TOPICS.all_updates, qos=1)
        async with (
            Listener(dev(embedded), "agent-a", TOPICS.all_updates, TOPICS.model) as spy,
            Listener(dev(embedded), "coordinator", TOPICS.all_updates) as coordinator,
        ):
            await publish_as(embedded, "agent-b", [(TOPICS.update("agent-b"), b"private")])
            await coordinator.wait_for(lambda: coordinator.messages, 10)
            await asyncio.sleep(0.5)
            values = [c if isinstance(c, int) else c.value for c in codes]
            return spy.messages, coordinator.messages, values

    spied, delivered, codes = asyncio.run(scenario())
    assert codes == [0x80]  # the subscription is refused outright
    assert delivered == [(TOPICS.update("agent-b"), b"private")]
    assert spied == []


def test_monitor_reads_retained_status(embedded: EmbeddedBroker):
    status = AgentStatus(agent="agent-s", state=AgentState.TRAINING, base_version=7)
    message = (TOPICS.agent_status("agent-s"), status.to_json())

    async def scenario() -> list[tuple[str, bytes]]:
        await publish_as(embedded, "agent-s", [message], retain=True)
        # retained: a later reader still gets it
        async with Listener(dev(embedded), "monitor", TOPICS.all_agent_statuses) as monitor:
            await monitor.wait_for(lambda: monitor.messages, 10)
            return monitor.messages

    [(topic, payload)] = asyncio.run(scenario())
    assert topic == TOPICS.agent_status("agent-s")
    seen = parse(AgentStatus, payload)
    assert (seen.agent, seen.state, seen.base_version) == ("agent-s", AgentState.TRAINING, 7)


def test_retained_messages_reach_only_their_readers(embedded: EmbeddedBroker):
    """amqtt 0.12.1 itself sends a connecting client the retained messages of every filter
    anyone holds (here the monitor's agent statuses); agent-c must get the model only."""
    status = (TOPICS.agent_status("agent-r"), b'{"retained": true}')
    model = (TOPICS.model, b"model v1")

    async def scenario() -> list[tuple[str, bytes]]:
        await publish_as(embedded, "agent-r", [status], retain=True)
        async with Listener(dev(embedded), "monitor", TOPICS.all_agent_statuses) as monitor:
            await monitor.wait_for(lambda: status in monitor.messages, 10)
            async with Listener(dev(embedded), "agent-c", TOPICS.model) as agent:
                await publish_as(embedded, "coordinator", [model], retain=True)
                await agent.wait_for(lambda: agent.messages, 10)
                await asyncio.sleep(0.5)
                return agent.messages

    assert asyncio.run(scenario()) == [model]


def test_last_will_must_be_on_a_topic_the_account_may_publish(embedded: EmbeddedBroker):
    async def connect(will_topic: str) -> None:
        will = aiomqtt.Will(will_topic, b"offline", qos=1, retain=True)
        async with aiomqtt.Client(**credentials(dev(embedded), "agent-w"), will=will, timeout=5):
            pass

    asyncio.run(connect(TOPICS.agent_status("agent-w")))
    for forged in (TOPICS.model, TOPICS.agent_status("agent-a")):
        with pytest.raises(aiomqtt.MqttError):
            asyncio.run(connect(forged))


def test_a_client_id_stays_with_its_account(embedded: EmbeddedBroker):
    async def connect(account: str) -> None:
        async with aiomqtt.Client(
            **credentials(dev(embedded), account),
            identifier="fedmq-coordinator-emb",
            clean_session=False,
            timeout=5,
        ):
            pass

    asyncio.run(connect("coordinator"))
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(connect("agent-a"))
    asyncio.run(connect("coordinator"))


@pytest.mark.parametrize("persistence", [True, False], ids=["persistence", "in-memory"])
def test_retained_messages_and_restarts(tmp_path: Path, persistence: bool):
    message = (TOPICS.agent_status("agent-p"), b'{"kept": true}')

    async def read_statuses(broker: EmbeddedBroker) -> list[tuple[str, bytes]]:
        async with Listener(dev(broker), "monitor", TOPICS.all_agent_statuses) as monitor:
            await monitor.wait_for(lambda: monitor.messages, 1 if not persistence else 10)
            return monitor.messages

    with EmbeddedBroker(tmp_path, persistence=persistence) as broker:
        asyncio.run(publish_as(broker, "agent-p", [message], retain=True))
        broker.restart()
        assert asyncio.run(read_statuses(broker)) == ([message] if persistence else [])


def test_child_exits_cleanly_on_sigterm(tmp_path: Path):
    broker = EmbeddedBroker(tmp_path)  # writes the configuration; not started
    ready = tmp_path / "ready"
    command = [sys.executable, "-m", "broker.embedded", "--config", str(broker.config_file)]
    with open(tmp_path / "child.log", "wb") as log:
        child = subprocess.Popen(
            [*command, "--ready", str(ready)], env=environment(), stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), (tmp_path / "child.log").read_text()
        child.terminate()
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_local_run_falls_back_to_the_embedded_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import broker.dev

    assert isinstance(broker.dev.local_broker(tmp_path / "a"), broker.dev.DevBroker)
    monkeypatch.setattr(broker.dev, "mosquitto_binary", lambda: None)
    assert isinstance(broker.dev.local_broker(tmp_path / "b"), EmbeddedBroker)
