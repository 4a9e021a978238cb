"""SIGKILL of a live coordinator process while updates flow through the real broker, then a
restart on the same state directory: the published version never goes backwards, and the
ledger holds every update the agents sent accepted exactly once (journaled ones replayed,
unacknowledged or queued ones redelivered by the broker, none applied twice)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

import codec
from broker.dev import DevBroker
from common.topics import Topics
from tests.integration.conftest import Listener, credentials, start_coordinator, stop

TOPICS = Topics("fedmq", "crash")
UPDATES = 150
SETTINGS: dict[str, Any] = {
    "job": "crash",
    "strategy": {"name": "fedbuff", "buffer_size": 5, "max_staleness": 1000},
    "evaluate_every": 0,
    "rate_limit": {"updates_per_minute": 1e6, "burst": 1_000_000},
}


def versions_seen(listener: Listener) -> list[int]:
    """Every version the coordinator announced, in arrival order: version events, statuses
    of a running coordinator and retained models. (The last will, fixed when the
    connection was made, may name an older version: it says the process vanished.)"""
    seen = []
    for topic, payload in listener.messages:
        if not payload:
            continue
        if topic == TOPICS.model:
            seen.append(codec.decode_model(payload).version)
            continue
        message = json.loads(payload)
        running = topic == TOPICS.coordinator_status and message["state"] != "stopped"
        if running or (topic == TOPICS.events and message["type"] == "version"):
            seen.append(message["version"])
    return seen


def decided(listener: Listener) -> int:
    return sum(
        1
        for topic, payload in listener.messages
        if topic == TOPICS.events and json.loads(payload)["type"].startswith("update_")
    )


def test_sigkill_while_updates_flow_then_restart_loses_and_repeats_nothing(
    broker: DevBroker, tmp_path: Path
):
    processes = [start_coordinator(broker, tmp_path, **SETTINGS)]

    async def scenario() -> None:
        process = processes[0]
        async with Listener(
            broker, "monitor", TOPICS.events, TOPICS.coordinator_status, TOPICS.model
        ) as listener:
            assert await listener.wait_for(lambda: versions_seen(listener), 90)
            model = codec.decode_model(
                next(p for t, p in reversed(listener.messages) if t == TOPICS.model)
            )
            zeros = {t.name: np.zeros(t.shape, np.float32) for t in model.tensors}

            async def send() -> None:
                async with (
                    aiomqtt.Client(**credentials(broker, "crash-1")) as first,
                    aiomqtt.Client(**credentials(broker, "crash-2")) as second,
                ):
                    for index in range(UPDATES):
                        client, agent = (first, "crash-1") if index % 2 else (second, "crash-2")
                        payload = codec.encode_update(
                            {n: np.full(v.shape, 1e-3, np.float32) for n, v in zeros.items()},
                            codec="int8",
                            job_id="crash",
                            sender_id=agent,
                            base_version=model.version,
                            num_samples=10,
                            update_id=f"crash{index:04d}",
                        )
                        await client.publish(TOPICS.update(agent), payload, qos=1)
                        await asyncio.sleep(0.002)  # faster than the coordinator decides

            sender = asyncio.create_task(send())
            assert await listener.wait_for(lambda: decided(listener) >= 40, 60)
            process.kill()  # SIGKILL, mid-flow
            await asyncio.to_thread(process.wait)
            before = versions_seen(listener)
            shutil.copy(tmp_path / "coordinator.log", tmp_path / "killed.log")

            process = start_coordinator(broker, tmp_path, **SETTINGS)
            processes.append(process)
            await sender  # the rest waits in the broker for the coordinator's session
            assert await listener.wait_for(lambda: versions_seen(listener)[len(before) :], 90), (
                "no version announced after the restart"
            )

            def all_accepted() -> bool:
                statuses = [
                    json.loads(p)
                    for t, p in listener.messages
                    if t == TOPICS.coordinator_status and p
                ]
                return bool(statuses) and statuses[-1]["accepted"] >= UPDATES

            assert await listener.wait_for(all_accepted, 60), "not every update accepted"
            seen = versions_seen(listener)
        assert seen == sorted(seen), f"a version went backwards: {seen}"
        assert seen[-1] >= max(before), (before, seen)

    try:
        asyncio.run(scenario())
    finally:
        codes = [stop(process) for process in processes]
    log = (tmp_path / "coordinator.log").read_text()
    assert codes[-1] == 0, log[-3000:]
    assert "resumed from snapshot" in log, log[-3000:]

    ledger = [
        json.loads(line)
        for line in (tmp_path / "state" / "decisions.jsonl").read_text().splitlines()
        if line.strip()
    ]
    accepted = Counter(e["update_id"] for e in ledger if e["decision"] == "accepted")
    repeated = {update_id: n for update_id, n in accepted.items() if n > 1}
    assert not repeated, f"accepted more than once: {repeated}"
    missing = {f"crash{i:04d}" for i in range(UPDATES)} - set(accepted)
    assert not missing, f"updates lost: {sorted(missing)}"
    seqs = [e["seq"] for e in ledger]
    assert len(seqs) == len(set(seqs)), "a journal record decided twice"
    assert {e["decision"] for e in ledger} <= {"accepted", "duplicate"}
