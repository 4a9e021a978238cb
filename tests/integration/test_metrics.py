"""A real coordinator process serves Prometheus metrics over HTTP, and they move when updates
arrive through the real broker (the test plays the agent)."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.dev import DevBroker
from codec import decode_model, encode_update
from common.messages import AgentState, AgentStatus
from common.topics import Topics
from tests.integration.conftest import (
    Listener,
    credentials,
    publish_updates,
    start_coordinator,
    stop,
)

TOPICS = Topics("fedmq", "metricstest")
BOUND = re.compile(r"metrics on http://[^ ]+:(\d+)/metrics")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_port(log: Path, process: Any, timeout: float = 90) -> int:
    """The port a process (started with port 0) logged for its metrics endpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = BOUND.search(log.read_text(errors="replace")) if log.exists() else None
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"no metrics endpoint logged in {log}:\n{log.read_text()[-3000:]}")


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, by name and labels, parsed as Prometheus parses it."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def coordinator(
    broker: DevBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, Path]]:
    directory = tmp_path_factory.mktemp("metrics")
    process = start_coordinator(
        broker,
        directory,
        job=TOPICS.job,
        strategy={"name": "fedbuff", "buffer_size": 1},  # every accepted update: a version
        evaluate_every=0,
        metrics={"host": "127.0.0.1", "port": 0},
    )
    log = directory / "coordinator.log"
    try:
        yield metrics_port(log, process), log
    finally:
        assert stop(process) == 0, log.read_text()[-3000:]


async def current_model(broker: DevBroker) -> tuple[int, dict[str, Any]]:
    async with Listener(broker, "agent-m1", TOPICS.model) as models:
        await models.wait_for(lambda: models.messages, 60)
    model = decode_model(models.messages[-1][1])
    return model.version, {t.name: np.zeros(t.shape, np.float32) for t in model.tensors}


async def send(broker: DevBroker, agent: str, payloads: list[bytes]) -> list[dict[str, Any]]:
    """Publish updates as ``agent``; the coordinator's decisions on them, in order."""
    return await publish_updates(broker, TOPICS, agent, payloads, len(payloads))


def test_metrics_move_when_updates_arrive(broker: DevBroker, coordinator: tuple[int, Path]):
    port, _ = coordinator
    version, zeros = asyncio.run(current_model(broker))
    good = encode_update(
        zeros,
        codec="int8",
        job_id=TOPICS.job,
        sender_id="agent-m1",
        base_version=version,
        num_samples=10,
    )
    bad = b"\x93not an envelope"
    before = scrape(port)
    assert sample(before, "fedmq_model_version") == version
    assert sample(before, "target_info", fedmq_job=TOPICS.job, strategy="fedbuff") == 1

    decided = asyncio.run(send(broker, "agent-m1", [good, bad]))
    assert [e.get("reason", "accepted") for e in decided] == ["accepted", "malformed"]
    after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("fedmq_updates_accepted_total") == 1
    assert moved("fedmq_updates_rejected_total", reason="malformed") == 1
    assert moved("fedmq_updates_rejected_total", reason="stale") == 0
    assert moved("fedmq_update_received_bytes_total") == len(good) + len(bad)
    assert moved("fedmq_versions_published_total") == 1
    assert sample(after, "fedmq_model_version") == version + 1
    assert moved("fedmq_update_decode_seconds_count") == 2  # the malformed one too
    assert moved("fedmq_aggregation_seconds_count") == 1
    assert moved("fedmq_update_staleness_bucket", le="0.0") == 1
    assert ("fedmq_last_accuracy", ()) not in after  # evaluate_every 0: never measured


def test_agents_online_follows_their_status(broker: DevBroker, coordinator: tuple[int, Path]):
    port, _ = coordinator

    async def publish(state: AgentState) -> None:
        status = AgentStatus(agent="agent-m2", state=state)
        async with aiomqtt.Client(**credentials(broker, "agent-m2")) as client:
            await client.publish(TOPICS.agent_status("agent-m2"), status.to_json(), qos=1)

    def online_becomes(count: float) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if sample(scrape(port), "fedmq_agents_online") == count:
                return True
            time.sleep(0.1)
        return False

    start = sample(scrape(port), "fedmq_agents_online")
    asyncio.run(publish(AgentState.IDLE))
    assert online_becomes(start + 1)
    asyncio.run(publish(AgentState.OFFLINE))
    assert online_becomes(start)
