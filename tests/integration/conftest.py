"""A real Mosquitto for the integration tests: started by the suite on a free port with the
project's own configuration (no anonymous access, password file, pattern ACL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
import pytest
import yaml

from broker.dev import DevBroker, mosquitto_binary
from broker.embedded import EmbeddedBroker
from common.topics import Topics

ROOT = Path(__file__).resolve().parents[2]


class BrokerLike(Protocol):
    """What the helpers need of a test broker (Mosquitto's DevBroker, or EmbeddedBroker)."""

    port: int

    def provision(self, name: str) -> str: ...


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBroker]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: scripts/bootstrap.sh installs it")
    instance = DevBroker(tmp_path_factory.mktemp("broker"))
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The amqtt fallback, with the same accounts and ACL."""
    instance = EmbeddedBroker(tmp_path_factory.mktemp("embedded"))
    instance.start()
    yield instance
    instance.stop()


def credentials(broker: BrokerLike, name: str) -> dict[str, Any]:
    return {
        "hostname": "127.0.0.1",
        "port": broker.port,
        "username": name,
        "password": broker.provision(name),
    }


def environment() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


class Listener:
    """Collects messages on some topics in the background (a real MQTT client)."""

    def __init__(self, broker: BrokerLike, account: str, *topics: str) -> None:
        self.broker, self.account, self.topics = broker, account, topics
        self.messages: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Listener:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _listen(self) -> None:
        async with aiomqtt.Client(**credentials(self.broker, self.account)) as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            self._ready.set()
            async for message in client.messages:
                payload = message.payload
                self.messages.append(
                    (str(message.topic), payload if isinstance(payload, bytes) else b"")
                )

    def json(self, topic_suffix: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.messages if t.endswith(topic_suffix) and p]

    async def wait_for(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.1)
        return bool(predicate())


async def publish_updates(
    broker: BrokerLike, topics: Topics, agent: str, payloads: list[bytes], count: int
) -> list[dict[str, Any]]:
    """Publish ``payloads`` as ``agent``; the coordinator's next ``count`` update events
    (accepted or rejected), in order, as the monitor sees them."""
    async with Listener(broker, "monitor", topics.events) as events:
        async with aiomqtt.Client(**credentials(broker, agent)) as client:
            for payload in payloads:
                await client.publish(topics.update(agent), payload, qos=1)

        def decided() -> list[dict[str, Any]]:
            return [e for e in events.json("/events") if e["type"].startswith("update_")]

        await events.wait_for(lambda: len(decided()) >= count, 30)
        return decided()


def start_coordinator(
    broker: DevBroker, directory: Path, **settings: Any
) -> subprocess.Popen[bytes]:
    config = {
        "job": "itest",
        "broker": {
            "host": "127.0.0.1",
            "port": broker.port,
            "username": "coordinator",
            "password": broker.provision("coordinator"),
        },
        "state_dir": str(directory / "state"),
        "heartbeat_seconds": 0.5,
        **settings,
    }
    path = directory / "coordinator.yaml"
    path.write_text(yaml.safe_dump(config))
    with open(directory / "coordinator.log", "wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "coordinator", "run", "--config", str(path)],
            env=environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
