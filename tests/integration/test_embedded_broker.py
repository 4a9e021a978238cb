"""The embedded amqtt broker (the pip-only fallback for machines without Mosquitto) enforces
fedmq's identity and access rules (broker/embedded.py; the same checks as test_broker.py,
whose wildcard subscriptions amqtt refuses, so listeners here subscribe topic by topic)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from broker.embedded import EmbeddedBroker, access_rules
from common.topics import Topics
from tests.integration.conftest import Listener, credentials, environment

TOPICS = Topics("fedmq", "emb")
EVERYTHING = TOPICS.every_filter


@pytest.fixture
def embedded(embedded_broker: EmbeddedBroker) -> EmbeddedBroker:
    return embedded_broker


async def publish_as(
    broker: EmbeddedBroker, account: str, messages: list[tuple[str, bytes]], *, retain: bool = False
) -> None:
    async with aiomqtt.Client(**credentials(broker, account)) as client:
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
        "fedmq/+/coordinator/status",
    }
    assert "fedmq/+/update/+" in rules["receive-acl"]["coordinator"]
    assert "fedmq/+/model" in rules["publish-acl"]["coordinator"]
    assert not any("update/+" in topic for topic in rules["receive-acl"]["monitor"])
    # the patterns apply to every account, as in Mosquitto: the monitor's own agent topics
    assert rules["publish-acl"]["monitor"] == [
        "fedmq/+/update/monitor",
        "fedmq/+/agents/monitor/status",
    ]


def test_retained_messages_reach_only_their_readers(embedded: EmbeddedBroker):
    """amqtt 0.12.1 itself sends a connecting client the retained messages of every filter
    anyone holds (here the monitor's agent statuses); agent-c must get the model only."""
    status = (TOPICS.agent_status("agent-r"), b'{"retained": true}')
    model = (TOPICS.model, b"model v1")

    async def scenario() -> list[tuple[str, bytes]]:
        await publish_as(embedded, "agent-r", [status], retain=True)
        async with Listener(embedded, "monitor", TOPICS.all_agent_statuses) as monitor:
            await monitor.wait_for(lambda: status in monitor.messages, 10)
            async with Listener(embedded, "agent-c", TOPICS.model) as agent:
                await publish_as(embedded, "coordinator", [model], retain=True)
                await agent.wait_for(lambda: agent.messages, 10)
                await asyncio.sleep(0.5)
                return agent.messages

    assert asyncio.run(scenario()) == [model]


def test_last_will_must_be_on_a_topic_the_account_may_publish(embedded: EmbeddedBroker):
    async def connect(will_topic: str) -> None:
        will = aiomqtt.Will(will_topic, b"offline", qos=1, retain=True)
        async with aiomqtt.Client(**credentials(embedded, "agent-w"), will=will, timeout=5):
            pass

    asyncio.run(connect(TOPICS.agent_status("agent-w")))
    for forged in (TOPICS.model, TOPICS.agent_status("agent-a")):
        with pytest.raises(aiomqtt.MqttError):
            asyncio.run(connect(forged))


def test_a_client_id_stays_with_its_account(embedded: EmbeddedBroker):
    async def connect(account: str) -> None:
        async with aiomqtt.Client(
            **credentials(embedded, account),
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
        async with Listener(broker, "monitor", TOPICS.all_agent_statuses) as monitor:
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
