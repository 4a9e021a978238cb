"""Read-only views of a running job for operators, from any machine with broker credentials:
the retained status and control topics (``status``, ``agents``), the retained model
(``export``) and the events as they happen (``events``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from common.errors import ProtocolError
from common.messages import AgentStatus, Control, CoordinatorStatus, Event, parse
from common.mqtt import client_options
from common.topics import Topics
from configs.broker import BrokerConnection
from coordinator.errors import CoordinatorError

QUIET_SECONDS = 0.5  # retained messages arrive at once: stop after this much silence


class InspectError(CoordinatorError):
    """The broker could not be reached, refused the credentials, or dropped the connection."""


def client(broker: BrokerConnection, timeout: float) -> aiomqtt.Client:
    """A short-lived client with a random id: it never disturbs a service's session."""
    return aiomqtt.Client(**client_options(broker), timeout=timeout)


def broker_error(broker: BrokerConnection, error: aiomqtt.MqttError) -> InspectError:
    return InspectError(f"broker {broker.host}:{broker.port}: {error}")


@dataclass
class Snapshot:
    coordinator: CoordinatorStatus | None = None
    control: Control | None = None
    agents: dict[str, AgentStatus] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def _payload(message: aiomqtt.Message) -> bytes:
    return message.payload if isinstance(message.payload, bytes) else b""


async def _collect(broker: BrokerConnection, topics: Topics, timeout: float) -> Snapshot:
    snapshot = Snapshot()
    try:
        async with client(broker, timeout) as connection:
            await connection.subscribe(topics.coordinator_status, qos=1)
            await connection.subscribe(topics.control, qos=1)
            await connection.subscribe(topics.all_agent_statuses, qos=1)
            deadline = time.monotonic() + timeout
            messages = connection.messages.__aiter__()
            while time.monotonic() < deadline:
                wait = min(QUIET_SECONDS, max(0.0, deadline - time.monotonic()))
                try:
                    message = await asyncio.wait_for(messages.__anext__(), wait)
                except asyncio.TimeoutError:
                    break
                payload, topic = _payload(message), str(message.topic)
                with contextlib.suppress(ProtocolError):
                    if topic == topics.coordinator_status:
                        snapshot.coordinator = parse(CoordinatorStatus, payload)
                        continue
                    if topic == topics.control:
                        snapshot.control = parse(Control, payload)
                        continue
                    agent = topics.agent_of_status(topic)
                    if agent is not None and payload:
                        snapshot.agents[agent] = parse(AgentStatus, payload)
                        continue
                snapshot.unreadable.append(topic)
    except aiomqtt.MqttError as error:
        raise broker_error(broker, error) from error
    return snapshot


def read_snapshot(broker: BrokerConnection, topics: Topics, timeout: float = 5.0) -> Snapshot:
    return asyncio.run(_collect(broker, topics, timeout))


async def _retained(broker: BrokerConnection, topic: str, timeout: float) -> bytes | None:
    """The retained message of ``topic``, or None if none arrives within ``timeout``."""
    try:
        async with client(broker, timeout) as connection:
            await connection.subscribe(topic, qos=1)
            messages = connection.messages.__aiter__()
            try:
                message = await asyncio.wait_for(messages.__anext__(), timeout)
            except asyncio.TimeoutError:
                return None
            return _payload(message) or None  # an empty retained message deletes it
    except aiomqtt.MqttError as error:
        raise broker_error(broker, error) from error


def read_model(broker: BrokerConnection, topics: Topics, timeout: float = 5.0) -> bytes | None:
    """The retained model envelope (undecoded), or None when the job has none."""
    return asyncio.run(_retained(broker, topics.model, timeout))


async def follow_events(
    broker: BrokerConnection,
    topics: Topics,
    timeout: float,
    on_subscribed: Callable[[], None] = lambda: None,
) -> AsyncIterator[tuple[Event, dict[str, Any]] | ProtocolError]:
    """Each event as it is published: the validated event and its JSON as sent (unknown
    fields kept), or the ProtocolError of one that cannot be read. Events are not retained:
    nothing from before the subscription arrives."""
    try:
        async with client(broker, timeout) as connection:
            await connection.subscribe(topics.events, qos=1)
            on_subscribed()
            async for message in connection.messages:
                payload = _payload(message)
                try:
                    event = parse(Event, payload)
                except ProtocolError as error:
                    yield error
                    continue
                yield event, json.loads(payload)
    except aiomqtt.MqttError as error:
        raise broker_error(broker, error) from error
