"""The MQTT session both services run: connect, subscribe, hand every message over, and on
any loss reconnect with exponential backoff and jitter (aiomqtt's documented pattern: a new
client for each attempt, subscriptions renewed on every connect).

With ``manual_ack`` a QoS 1 message is acknowledged (PUBACK) only when the receiver calls
the ``ack`` it is handed, e.g. once the message is durable. Until then the broker counts it
in flight: after a crash it redelivers it (persistent session), and it sends no more than
its in-flight limit ahead, which bounds what the receiver holds in memory. aiomqtt does not
expose paho's manual acks, so this switches them on in the paho client it wraps (pinned
aiomqtt < 3; tests/integration cover it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypedDict

import aiomqtt

from configs.broker import BrokerConnection

BACKOFF_START, BACKOFF_MAX = 0.5, 30.0

Ack = Callable[[], None]


def _no_ack() -> None:
    """Automatic acknowledgement: paho sent PUBACK when it queued the message."""


def _manual_acks(client: aiomqtt.Client) -> Callable[[aiomqtt.Message], Ack]:
    """Per connection: an ``ack`` for each message. PUBACKs go out in the order the
    messages arrived (MQTT 3.1.1, 4.6): an ack waits for the earlier ones. On a dead
    connection they go nowhere, and the broker redelivers."""
    paho = client._client
    paho.manual_ack_set(True)
    pending: deque[list[Any]] = deque()  # [mid, qos, acked] in arrival order

    def ack_for(message: aiomqtt.Message) -> Ack:
        if message.qos == 0:
            return _no_ack
        entry = [message.mid, message.qos, False]
        pending.append(entry)

        def ack() -> None:
            entry[2] = True
            while pending and pending[0][2]:
                mid, qos, _ = pending.popleft()
                paho.ack(mid, qos)

        return ack

    return ack_for


class ClientOptions(TypedDict):
    hostname: str
    port: int
    username: str | None
    password: str | None
    tls_params: aiomqtt.TLSParameters | None
    socket_options: list[tuple[int, int, int]]


# Nagle's algorithm held each small publish behind the previous one's PUBACK until the
# peer's delayed ACK (~40 ms): a coordinator decided 25 updates a second at most.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def client_options(connection: BrokerConnection, *, username: str | None = None) -> ClientOptions:
    """The ``aiomqtt.Client`` arguments saying where the broker is and who we are, one place
    for every client. ``username`` is used when the connection names none (an agent's id).
    With a client certificate on an identity listener the broker takes the username from the
    certificate's CN and ignores these two; the broker's own certificate is always checked
    against ``tls.ca_file`` and the host name."""
    tls = connection.tls
    return {
        "hostname": connection.host,
        "port": connection.port,
        "username": connection.username or username,
        "password": connection.password.get_secret_value() if connection.password else None,
        "tls_params": None
        if tls is None
        else aiomqtt.TLSParameters(
            ca_certs=str(tls.ca_file),
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
        ),
        "socket_options": NO_DELAY,
    }


class Session:
    """``run()`` until ``stop`` is set; ``publish`` while connected (False otherwise)."""

    def __init__(
        self,
        connect: Callable[[], aiomqtt.Client],
        subscriptions: Sequence[str],
        on_message: Callable[[str, bytes, Ack], Awaitable[None]],
        on_connect: Callable[[], Awaitable[None]],
        stop: asyncio.Event,
        log: logging.Logger,
        bytes_per_second: float,
        manual_ack: bool = False,
    ) -> None:
        self._manual_ack = manual_ack
        self._connect = connect
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connect = on_connect
        self._stop = stop
        self._log = log
        self._rate = bytes_per_second
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()

    def publish_timeout(self, size: int) -> float:
        """10 s plus the payload at a pessimistic rate: large payloads need longer."""
        return 10.0 + size / self._rate

    async def run(self) -> None:
        backoff = BACKOFF_START
        while not self._stop.is_set():
            try:
                client = self._connect()
                # before connecting: a persistent session's queue arrives right after CONNACK
                ack_for = _manual_acks(client) if self._manual_ack else None
                async with client:
                    self._client = client

                    for topic in self._subscriptions:
                        await client.subscribe(topic, qos=1)
                    self.connected.set()
                    backoff = BACKOFF_START
                    self._log.info("connected to the broker")
                    await self._on_connect()
                    async for message in client.messages:
                        payload = message.payload
                        await self._on_message(
                            str(message.topic),
                            payload if isinstance(payload, bytes) else b"",
                            _no_ack if ack_for is None else ack_for(message),
                        )

            except aiomqtt.MqttError as error:
                self._log.warning(
                    "broker connection lost (%s); retrying in ~%.1f s", error, backoff
                )
            finally:
                self.connected.clear()
                self._client = None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(
                topic, payload, qos=1, retain=retain, timeout=self.publish_timeout(len(payload))
            )
        except aiomqtt.MqttError as error:
            self._log.warning("publish to %s failed: %s", topic, error)
            return False
        return True
