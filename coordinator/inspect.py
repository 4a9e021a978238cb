"""Read-only views of a running job for operators, from any machine with broker credentials:
the coordinator's and the agents' retained status topics (``fedmq-coordinator status`` and
``fedmq-coordinator agents``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import aiomqtt

from common.errors import ProtocolError
from common.messages import AgentStatus, CoordinatorStatus, parse
from common.mqtt import client_options
from common.topics import Topics
from configs.broker import BrokerConnection

QUIET_SECONDS = 0.5  # retained messages arrive at once: stop after this much silence


class InspectError(Exception):
    """The broker could not be reached or refused the credentials."""


@dataclass
class Snapshot:
    coordinator: CoordinatorStatus | None = None
    agents: dict[str, AgentStatus] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


async def _collect(broker: BrokerConnection, topics: Topics, timeout: float) -> Snapshot:
    snapshot = Snapshot()
    try:
        async with aiomqtt.Client(**client_options(broker), timeout=timeout) as client:
            await client.subscribe(topics.coordinator_status, qos=1)
            await client.subscribe(topics.all_agent_statuses, qos=1)
            deadline = time.monotonic() + timeout
            messages = client.messages.__aiter__()
            while time.monotonic() < deadline:
                wait = min(QUIET_SECONDS, max(0.0, deadline - time.monotonic()))
                try:
                    message = await asyncio.wait_for(messages.__anext__(), wait)
                except asyncio.TimeoutError:
                    break
                payload = message.payload if isinstance(message.payload, bytes) else b""
                topic = str(message.topic)
                with contextlib.suppress(ProtocolError):
                    if topic == topics.coordinator_status:
                        snapshot.coordinator = parse(CoordinatorStatus, payload)
                        continue
                    agent = topics.agent_of_status(topic)
                    if agent is not None and payload:
                        snapshot.agents[agent] = parse(AgentStatus, payload)
                        continue
                snapshot.unreadable.append(topic)
    except aiomqtt.MqttError as error:
        raise InspectError(f"broker {broker.host}:{broker.port}: {error}") from error
    return snapshot


def read_snapshot(broker: BrokerConnection, topics: Topics, timeout: float = 5.0) -> Snapshot:
    return asyncio.run(_collect(broker, topics, timeout))
