"""The coordinator refuses bad updates with a reason on the events topic (real broker,
real coordinator process; the test plays the agents)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker.dev import DevBroker
from codec import decode_model, encode_update
from common.messages import CoordinatorStatus, parse
from common.topics import Topics
from tests.integration.conftest import (
    Listener,
    publish_updates,
    start_coordinator,
    stop,
)

TOPICS = Topics("fedmq", "itest")


@pytest.fixture(scope="module")
def coordinator(broker: DevBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    directory = tmp_path_factory.mktemp("coordinator")
    # K = 1 and no staleness allowed: every accepted update makes a version, and an update
    # trained from an older version is stale.
    process = start_coordinator(
        broker,
        directory,
        strategy={"name": "fedbuff", "buffer_size": 1, "max_staleness": 0},
        evaluate_every=0,
    )
    yield
    assert stop(process) == 0, (directory / "coordinator.log").read_text()[-3000:]


async def current_model(broker: DevBroker, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    async with Listener(broker, "agent-1", TOPICS.model) as models:
        await models.wait_for(lambda: models.messages, timeout)
    model = decode_model(models.messages[-1][1])
    return model.version, {t.name: np.zeros(t.shape, np.float32) for t in model.tensors}


def envelope(sender: str, base: int, zeros: dict[str, Any], update_id: str | None = None) -> bytes:
    return encode_update(
        zeros,
        codec="int8",
        job_id="itest",
        sender_id=sender,
        base_version=base,
        num_samples=10,
        update_id=update_id,
    )


async def send_and_watch(
    broker: DevBroker, agent: str, payloads: list[bytes], count: int
) -> list[dict[str, Any]]:
    """Publish as ``agent``; return the coordinator's next ``count`` update events."""
    return await publish_updates(broker, TOPICS, agent, payloads, count)


def test_rejections_name_their_reason(broker: DevBroker, coordinator: None):
    version, zeros = asyncio.run(current_model(broker))
    good = envelope("agent-1", version, zeros, update_id="1" * 32)
    payloads = [
        envelope("agent-2", version, zeros),  # sender differs from the topic's agent
        b"\x93not an envelope",
        envelope("agent-1", version + 5, zeros),  # a version never published
        good,  # accepted: version + 1
        good,  # the same update id again
        envelope("agent-1", version, zeros),  # now one version behind, max staleness 0
    ]
    decided = asyncio.run(send_and_watch(broker, "agent-1", payloads, len(payloads)))
    reasons = [e.get("reason", "accepted") for e in decided]
    assert reasons == [
        "sender_mismatch",
        "malformed",
        "future_version",
        "accepted",
        "duplicate",
        "stale",
    ]
    stale = decided[-1]
    assert stale["staleness"] == 1 and stale["agent"] == "agent-1"
    assert all(e["agent"] == "agent-1" for e in decided)


def test_update_with_wrong_tensors_is_rejected(broker: DevBroker, coordinator: None):
    version, zeros = asyncio.run(current_model(broker))
    name = next(iter(zeros))
    wrong = {**zeros, name: np.zeros((3, 3), np.float32)}
    decided = asyncio.run(
        send_and_watch(broker, "agent-3", [envelope("agent-3", version, wrong)], 1)
    )
    assert decided[0]["reason"] == "tensor_mismatch"
    assert name in decided[0]["detail"]


def test_coordinator_status_is_a_heartbeat(broker: DevBroker, coordinator: None):
    async def statuses() -> list[dict[str, Any]]:
        async with Listener(broker, "monitor", TOPICS.coordinator_status) as seen:
            await seen.wait_for(lambda: len(seen.messages) >= 3, 10)
            return seen.json("/status")

    received = asyncio.run(statuses())
    assert received[0]["job"] == "itest" and received[0]["state"] == "running"
    assert received[-1]["heartbeat"] > received[0]["heartbeat"]
    assert received[-1]["heartbeat"] == pytest.approx(time.time(), abs=30)


def test_bad_config_exits_2_naming_the_field(tmp_path: Path, broker: DevBroker):
    process = start_coordinator(broker, tmp_path, strategy={"name": "fedbuff", "buffer_size": 0})
    assert process.wait(60) == 2
    log = (tmp_path / "coordinator.log").read_text()
    assert "strategy.fedbuff.buffer_size" in log or "buffer_size" in log
    assert len([line for line in log.splitlines() if line.strip()]) == 1


def test_a_person_reads_the_coordinator_status_with_mosquitto_sub(
    broker: DevBroker, coordinator: None
):
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
            "-v",
            "-C",
            "1",
            "-W",
            "20",
            "-t",
            TOPICS.coordinator_status,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    topic, _, payload = result.stdout.strip().partition(" ")
    assert topic == TOPICS.coordinator_status
    status = parse(CoordinatorStatus, payload)
    assert status.job == "itest" and status.strategy == "fedbuff"
    assert status.state.value == "running"
