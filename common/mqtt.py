"""The MQTT session both services run: connect, subscribe, hand every message over, and on
any loss reconnect with exponential backoff and jitter (aiomqtt's documented pattern: a new
client for each attempt, subscriptions renewed on every connect)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt

BACKOFF_START, BACKOFF_MAX = 0.5, 30.0


class Session:
    """``run()`` until ``stop`` is set; ``publish`` while connected (False otherwise)."""

    def __init__(
        self,
        connect: Callable[[], aiomqtt.Client],
        subscriptions: Sequence[str],
        on_message: Callable[[str, bytes], Awaitable[None]],
        on_connect: Callable[[], Awaitable[None]],
        stop: asyncio.Event,
        log: logging.Logger,
        bytes_per_second: float,
    ) -> None:
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
                async with self._connect() as client:
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
                            str(message.topic), payload if isinstance(payload, bytes) else b""
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
