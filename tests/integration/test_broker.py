"""The broker's own configuration enforces identity and access (real Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from broker.dev import DevBroker
from broker.passwords import hash_password, read_password_file, verify_password
from common.messages import AgentState, AgentStatus, parse
from common.topics import Topics
from tests.integration.conftest import Listener, credentials

TOPICS = Topics("fedmq", "acl")


def test_password_hashes_are_interchangeable_with_mosquitto_passwd(tmp_path: Path):
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "alice", "s3cret"], check=True)
    theirs = read_password_file(path)["alice"]
    assert verify_password("s3cret", theirs)
    assert not verify_password("wrong", theirs)
    assert verify_password("s3cret", hash_password("s3cret"))


@pytest.mark.parametrize(
    "login",
    [{}, {"username": "agent-x", "password": "wrong"}, {"username": "nobody", "password": "x"}],
    ids=["anonymous", "wrong-password", "unknown-user"],
)
def test_unauthenticated_clients_are_refused(broker: DevBroker, login: dict[str, str]):
    async def connect() -> None:
        username, password = login.get("username"), login.get("password")
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username=username, password=password, timeout=5
        ):
            pass

    broker.provision("agent-x")
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(connect())


async def publish_as(
    broker: DevBroker, account: str, messages: list[tuple[str, bytes]], *, retain: bool = False
) -> None:
    async with aiomqtt.Client(**credentials(broker, account)) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=retain)


def test_agent_writes_only_its_own_topics(broker: DevBroker):
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
        async with Listener(broker, "coordinator", "fedmq/acl/#") as seen:
            await publish_as(broker, "agent-a", forbidden + allowed)
            # one client's QoS 1 messages arrive in order: once the last allowed one is in,
            # every forbidden one would have been too
            await seen.wait_for(lambda: any(p == b'{"own": true}' for _, p in seen.messages), 10)
            return list(seen.messages)

    received = asyncio.run(scenario())
    assert set(received) == set(allowed)


def test_agent_cannot_read_other_agents_updates(broker: DevBroker):
    async def scenario() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        async with (
            Listener(broker, "agent-a", TOPICS.all_updates) as spy,
            Listener(broker, "coordinator", TOPICS.all_updates) as coordinator,
        ):
            await publish_as(broker, "agent-b", [(TOPICS.update("agent-b"), b"private")])
            await coordinator.wait_for(lambda: coordinator.messages, 10)
            await asyncio.sleep(0.5)
            return spy.messages, coordinator.messages

    spied, delivered = asyncio.run(scenario())
    assert delivered == [(TOPICS.update("agent-b"), b"private")]
    assert spied == []


def test_monitor_reads_status_with_the_real_mosquitto_sub(broker: DevBroker):
    status = AgentStatus(agent="agent-s", state=AgentState.TRAINING, base_version=7)
    message = (TOPICS.agent_status("agent-s"), status.to_json())
    asyncio.run(publish_as(broker, "agent-s", [message], retain=True))
    # retained: a later reader still gets it
    result = subprocess.run(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-u",
            "monitor",
            "-P",
            broker.provision("monitor"),
            "-t",
            TOPICS.all_agent_statuses,
            "-v",
            "-C",
            "1",
            "-W",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    topic, _, payload = result.stdout.strip().partition(" ")
    assert topic == TOPICS.agent_status("agent-s")
    seen = parse(AgentStatus, payload)
    assert (seen.agent, seen.state, seen.base_version) == ("agent-s", AgentState.TRAINING, 7)
    assert json.loads(payload)["state"] == "training"


def test_monitor_cannot_write_agent_or_coordinator_topics(broker: DevBroker):
    """(The pattern ACL lets every account write its *own* agent topics, so the monitor could
    write agents/monitor/status: the coordinator ignores service accounts' agent topics.)"""
    forged = [
        (TOPICS.agent_status("agent-m"), b"forged"),
        (TOPICS.model, b"forged"),
        (TOPICS.control, b"forged"),
        (TOPICS.events, b"forged"),
        (TOPICS.update("agent-m"), b"forged"),
    ]

    async def scenario() -> list[tuple[str, bytes]]:
        async with Listener(broker, "coordinator", "fedmq/acl/#") as seen:
            await publish_as(broker, "monitor", forged)
            await publish_as(broker, "agent-m", [(TOPICS.agent_status("agent-m"), b"ok")])
            await seen.wait_for(lambda: any(p == b"ok" for _, p in seen.messages), 10)
            return [(t, p) for t, p in seen.messages if p in (b"forged", b"ok")]

    assert asyncio.run(scenario()) == [(TOPICS.agent_status("agent-m"), b"ok")]
