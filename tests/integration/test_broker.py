"""The broker's own configuration enforces identity and access (real Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from broker.dev import DevBroker
from broker.embedded import EmbeddedBroker
from broker.passwords import hash_password, read_password_file, verify_password
from common.messages import AgentState, AgentStatus, parse
from common.topics import Topics
from tests.integration.conftest import BrokerLike, Listener, credentials

TOPICS = Topics("fedmq", "acl")
EVERYTHING = TOPICS.every_filter


@pytest.fixture(params=["mosquitto", "amqtt"])
def any_broker(
    request: pytest.FixtureRequest, broker: DevBroker, embedded_broker: EmbeddedBroker
) -> BrokerLike:
    """The same access contract holds on Mosquitto and on the embedded fallback."""
    return broker if request.param == "mosquitto" else embedded_broker


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
def test_unauthenticated_clients_are_refused(any_broker: BrokerLike, login: dict[str, str]):
    async def connect() -> None:
        username, password = login.get("username"), login.get("password")
        async with aiomqtt.Client(
            "127.0.0.1", any_broker.port, username=username, password=password, timeout=5
        ):
            pass

    any_broker.provision("agent-x")
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(connect())


async def publish_as(
    any_broker: BrokerLike, account: str, messages: list[tuple[str, bytes]], *, retain: bool = False
) -> None:
    async with aiomqtt.Client(**credentials(any_broker, account)) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=retain)


def test_agent_writes_only_its_own_topics(any_broker: BrokerLike):
    forbidden = [
        (TOPICS.update("agent-b"), b"forged update"),
        (TOPICS.agent_status("agent-b"), b'{"forged": true}'),
        (TOPICS.model, b"forged model"),
        (TOPICS.control, b'{"state": "stop"}'),
        (TOPICS.coordinator_status, b'{"forged": true}'),
        (TOPICS.events, b'{"forged": true}'),
        (TOPICS.command, b'{"action": "stop"}'),  # an agent cannot stop the job
    ]
    allowed = [
        (TOPICS.update("agent-a"), b"own update"),
        (TOPICS.agent_status("agent-a"), b'{"own": true}'),
    ]

    async def scenario() -> list[tuple[str, bytes]]:
        async with Listener(any_broker, "coordinator", *EVERYTHING) as seen:
            await publish_as(any_broker, "agent-a", forbidden + allowed)
            # one client's QoS 1 messages arrive in order: once the last allowed one is in,
            # every forbidden one would have been too
            await seen.wait_for(lambda: any(p == b'{"own": true}' for _, p in seen.messages), 10)
            return list(seen.messages)

    received = asyncio.run(scenario())
    assert set(received) == set(allowed)


def test_agent_cannot_read_other_agents_updates(any_broker: BrokerLike):
    async def scenario() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        async with (
            Listener(any_broker, "agent-a", TOPICS.all_updates) as spy,
            Listener(any_broker, "coordinator", TOPICS.all_updates) as coordinator,
        ):
            await publish_as(any_broker, "agent-b", [(TOPICS.update("agent-b"), b"private")])
            await coordinator.wait_for(lambda: coordinator.messages, 10)
            await asyncio.sleep(0.5)
            return spy.messages, coordinator.messages

    spied, delivered = asyncio.run(scenario())
    assert delivered == [(TOPICS.update("agent-b"), b"private")]
    assert spied == []


def test_monitor_reads_status_with_the_real_mosquitto_sub(any_broker: BrokerLike):
    status = AgentStatus(agent="agent-s", state=AgentState.TRAINING, base_version=7)
    message = (TOPICS.agent_status("agent-s"), status.to_json())
    asyncio.run(publish_as(any_broker, "agent-s", [message], retain=True))
    # retained: a later reader still gets it
    result = subprocess.run(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(any_broker.port),
            "-u",
            "monitor",
            "-P",
            any_broker.provision("monitor"),
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


def test_monitor_cannot_write_agent_or_coordinator_topics(any_broker: BrokerLike):
    """(The pattern ACL lets every account write its *own* agent topics, so the monitor could
    write agents/monitor/status: the coordinator ignores service accounts' agent topics.)"""
    forged = [
        (TOPICS.agent_status("agent-m"), b"forged"),
        (TOPICS.model, b"forged"),
        (TOPICS.control, b"forged"),
        (TOPICS.events, b"forged"),
        (TOPICS.update("agent-m"), b"forged"),
        (TOPICS.command, b"forged"),  # read-only: no commands either
    ]

    async def scenario() -> list[tuple[str, bytes]]:
        async with Listener(any_broker, "coordinator", *EVERYTHING) as seen:
            await publish_as(any_broker, "monitor", forged)
            await publish_as(any_broker, "agent-m", [(TOPICS.agent_status("agent-m"), b"ok")])
            await seen.wait_for(lambda: any(p == b"ok" for _, p in seen.messages), 10)
            return [(t, p) for t, p in seen.messages if p in (b"forged", b"ok")]

    assert asyncio.run(scenario()) == [(TOPICS.agent_status("agent-m"), b"ok")]


def test_operator_writes_commands_only_and_reads_what_monitor_reads(any_broker: BrokerLike):
    forged = [
        (TOPICS.model, b"forged"),
        (TOPICS.control, b"forged"),
        (TOPICS.coordinator_status, b"forged"),
        (TOPICS.events, b"forged"),
        (TOPICS.update("agent-o"), b"forged"),
        (TOPICS.agent_status("agent-o"), b"forged"),
    ]
    observed = [
        (TOPICS.control, b"control"),
        (TOPICS.coordinator_status, b"status"),
        (TOPICS.events, b"event"),
    ]

    async def scenario() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        async with (
            Listener(any_broker, "coordinator", *EVERYTHING) as seen,
            Listener(any_broker, "operator", *EVERYTHING) as operator,
        ):
            await publish_as(any_broker, "operator", [*forged, (TOPICS.command, b"ok")])
            await seen.wait_for(lambda: any(p == b"ok" for _, p in seen.messages), 10)
            await publish_as(any_broker, "coordinator", observed)
            await publish_as(any_broker, "agent-o", [(TOPICS.agent_status("agent-o"), b"own")])
            await publish_as(any_broker, "agent-o", [(TOPICS.update("agent-o"), b"update")])
            await seen.wait_for(lambda: any(p == b"update" for _, p in seen.messages), 10)
            expected = {*observed, (TOPICS.agent_status("agent-o"), b"own")}
            await operator.wait_for(lambda: expected <= set(operator.messages), 10)
            await asyncio.sleep(0.5)  # an update would have reached the operator by now
            return (
                [(t, p) for t, p in seen.messages if p in (b"forged", b"ok")],
                list(operator.messages),
            )

    written, read = asyncio.run(scenario())
    assert written == [(TOPICS.command, b"ok")]
    assert {*observed, (TOPICS.agent_status("agent-o"), b"own")} <= set(read)
    assert (TOPICS.update("agent-o"), b"update") not in read  # devices' deltas stay private
    assert not [p for _, p in read if p in (b"forged", b"ok")]  # wrote nothing, read no command
