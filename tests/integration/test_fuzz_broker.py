"""Hostile input through the real broker to a live coordinator process: over 10,000 random,
truncated, bit-flipped and structurally hostile payloads on update topics are each refused
with a reason (events and counters agree), the status heartbeat keeps coming, the process's
memory stays bounded, and training goes on afterwards. And a flood from one agent is cut by
its rate limit without delaying another agent."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import msgpack
import numpy as np
import pytest

import codec
from broker.dev import DevBroker
from common.topics import Topics
from tests.codec.test_fuzz import TRAILER, reseal, seal_body, seal_map
from tests.integration.conftest import Listener, credentials, start_coordinator, stop

FUZZ = Topics("fedmq", "fuzz")
FLOOD = Topics("fedmq", "flood")
MIB = 1 << 20
QUIET = logging.getLogger("tests.fuzz.publisher")  # paho warns of every pending publish
QUIET.setLevel(logging.ERROR)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def fuzz_coordinator(broker: DevBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A coordinator whose rate limit lets everything reach the decoder; K = 1, so every
    accepted update makes a version. Yields its process id."""
    directory = tmp_path_factory.mktemp("fuzz")
    process = start_coordinator(
        broker,
        directory,
        job="fuzz",
        strategy={"name": "fedbuff", "buffer_size": 1, "max_staleness": 1000},
        evaluate_every=0,
        rate_limit={"updates_per_minute": 1e6, "burst": 1_000_000},
    )
    yield process.pid
    assert stop(process) == 0, (directory / "coordinator.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def flood_coordinator(
    broker: DevBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A coordinator with the default rate limit (a burst of 30, then 10 a second)."""
    directory = tmp_path_factory.mktemp("flood")
    process = start_coordinator(
        broker,
        directory,
        job="flood",
        strategy={"name": "fedbuff", "buffer_size": 1000, "max_staleness": 1000},
        evaluate_every=0,
    )
    yield
    assert stop(process) == 0, (directory / "coordinator.log").read_text()[-3000:]


async def current_model(broker: DevBroker, topics: Topics) -> tuple[int, dict[str, Any]]:
    """The retained global model (waits for the coordinator to publish it)."""
    async with Listener(broker, "monitor-model", topics.model) as models:
        await models.wait_for(lambda: models.messages, 90)
    assert models.messages, "the coordinator never published its model"
    model = codec.decode_model(models.messages[-1][1])
    return model.version, {t.name: np.zeros(t.shape, np.float32) for t in model.tensors}


class Events:
    """The update decisions and statuses the coordinator publishes, parsed as they come."""

    def __init__(self, listener: Listener, topics: Topics) -> None:
        self.listener, self.topics = listener, topics
        self.decisions: list[dict[str, Any]] = []
        self.versions: list[int] = []
        self.statuses: list[dict[str, Any]] = []
        self._seen = 0

    def refresh(self) -> None:
        messages = self.listener.messages
        while self._seen < len(messages):
            topic, payload = messages[self._seen]
            self._seen += 1
            if not payload:
                continue
            message = json.loads(payload)
            if topic == self.topics.coordinator_status:
                self.statuses.append(message)
            elif message["type"].startswith("update_"):
                self.decisions.append(message)
            elif message["type"] == "version":
                self.versions.append(message["version"])

    async def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            if predicate() or time.monotonic() > deadline:
                return predicate()
            await asyncio.sleep(0.05)


def listen(broker: DevBroker, topics: Topics) -> Listener:
    return Listener(broker, "monitor", topics.events, topics.coordinator_status)


def update(
    zeros: dict[str, Any], sender: str, base: int, update_id: str | None = None, **fields: Any
) -> bytes:
    rng = np.random.default_rng(zlib.crc32((update_id or "").encode()))
    deltas = {n: (0.01 * rng.standard_normal(v.shape)).astype(np.float32) for n, v in zeros.items()}
    options: dict[str, Any] = {"codec": "int8", "job_id": "fuzz", "num_samples": 10, **fields}
    return codec.encode_update(
        deltas, sender_id=sender, base_version=base, update_id=update_id, **options
    )


# --- the hostile corpus --------------------------------------------------------------------


def fields_of(envelope: bytes) -> dict[str, Any]:
    """An envelope's map without its crc32 entry (to edit and seal again)."""
    message = msgpack.unpackb(envelope, raw=False)
    del message["crc32"]
    return dict(message)


def hostile_corpus(good: bytes, zeros: dict[str, Any], version: int) -> list[tuple[str, bytes]]:
    """(kind, payload) pairs, none of which may be accepted once ``good`` has been."""
    rng = np.random.default_rng(20240501)
    good_id = codec.decode_update(good).update_id
    payloads: list[tuple[str, bytes]] = []

    def add(kind: str, payload: bytes) -> None:
        payloads.append((kind, payload))

    for _ in range(3900):
        add("random bytes", rng.bytes(int(rng.integers(0, 600))))
    for _ in range(1000):
        add("random sealed", seal_body(rng.bytes(int(rng.integers(0, 300)))))
    for cut in rng.integers(0, len(good), 1500):
        add("truncated", good[: int(cut)])
    for _ in range(2000):
        mutated = bytearray(good)
        for position in rng.integers(0, len(good), int(rng.integers(1, 4))):
            mutated[int(position)] ^= int(rng.integers(1, 256))
        add("bit flips", bytes(mutated))
    body = len(good) - TRAILER
    resealed = 0
    while resealed < 600:
        mutated = bytearray(good)
        mutated[int(rng.integers(0, body))] ^= 1 << int(rng.integers(0, 8))
        candidate = reseal(bytes(mutated))
        try:
            decoded = codec.decode_update(candidate)
        except codec.CodecError:
            pass
        else:
            if decoded.update_id != good_id:
                continue  # a new, valid update: it may rightly be accepted; not hostile
        add("bit flips resealed", candidate)
        resealed += 1

    template = fields_of(good)
    for index in range(300):
        message = fields_of(good)
        size = [2**31 - 1, 2**31 - 1] if index % 3 else [2**62]
        message["tensors"][index % len(message["tensors"])]["shape"] = size
        add("absurd declared size", seal_map(message))
    for index in range(100):
        add("absurd msgpack header", seal_body(b"\x8a\xdb\xff\xff\xff\xff" + rng.bytes(index)))
    for version_number in range(2, 202):
        add("unknown format", seal_map({**template, "format": version_number}))
    fp32 = fields_of(update(zeros, "fuzzer-1", version, "f" * 32, codec="fp32"))
    for index in range(100):
        message = copy.deepcopy(fp32)
        tensor = fp32["tensors"][index % len(fp32["tensors"])]
        values = np.zeros(int(np.prod(tensor["shape"])), np.float32)
        values[index % values.size] = [np.nan, np.inf, -np.inf][index % 3]
        message["tensors"][index % len(fp32["tensors"])]["data"] = values.tobytes()
        message["update_id"] = f"nan{index:04d}"
        add("nan or inf", seal_map(message))
    name = next(iter(zeros))
    for index in range(100):
        wrong = {**zeros, name: np.zeros((3, index + 1), np.float32)}
        add("wrong shape", update(wrong, "fuzzer-1", version, f"shape{index:04d}"))
    for index in range(100):
        renamed = {f"x{index}" if n == name else n: v for n, v in zeros.items()}
        add("wrong name", update(renamed, "fuzzer-1", version, f"name{index:04d}"))
    for index in range(100):
        add("wrong job", update(zeros, "fuzzer-1", version, f"job{index:04d}", job_id="other"))
    for index in range(100):
        add("future version", update(zeros, "fuzzer-1", version + 1000 + index, f"fut{index:04d}"))
    for index in range(100):
        add("sender mismatch", update(zeros, "someone-else", version, f"snd{index:04d}"))
    for _ in range(200):
        add("replay", good)
    order = rng.permutation(len(payloads))
    return [payloads[int(i)] for i in order]


async def publish_paced(
    broker: DevBroker,
    topics: Topics,
    payloads: list[tuple[str, bytes]],
    events: Events,
    decided_before: int,
    window: int = 1500,
) -> None:
    """Publish at QoS 1 in concurrent batches, never more than ``window`` ahead of the
    decisions seen (Mosquitto queues at most max_queued_messages for a slow client)."""

    def agent(index: int) -> str:
        return "fuzzer-2" if index % 10 == 0 else "fuzzer-1"  # one in ten from another agent

    async with (
        aiomqtt.Client(**credentials(broker, "fuzzer-1"), logger=QUIET) as first,
        aiomqtt.Client(**credentials(broker, "fuzzer-2"), logger=QUIET) as second,
    ):
        clients = {"fuzzer-1": first, "fuzzer-2": second}
        for start in range(0, len(payloads), 200):

            def caught_up(start: int = start) -> bool:
                return start - (len(events.decisions) - decided_before) <= window

            # a stalled coordinator (or one slower than 25 payloads a second) fails here
            assert await events.until(caught_up, 60), "the coordinator stopped deciding"
            await asyncio.gather(
                *(
                    clients[agent(index)].publish(topics.update(agent(index)), payload, qos=1)
                    for index, (_, payload) in enumerate(payloads[start : start + 200], start)
                )
            )


def test_ten_thousand_hostile_payloads_are_each_refused_and_training_continues(
    broker: DevBroker, fuzz_coordinator: int
):
    pid = fuzz_coordinator
    version, zeros = asyncio.run(current_model(broker, FUZZ))

    async def scenario() -> dict[str, Any]:
        async with listen(broker, FUZZ) as listener:
            events = Events(listener, FUZZ)
            good = update(zeros, "fuzzer-1", version, "a" * 32)
            async with aiomqtt.Client(**credentials(broker, "fuzzer-1")) as client:
                await client.publish(FUZZ.update("fuzzer-1"), good, qos=1)
            assert await events.until(lambda: bool(events.decisions), 30), "no decision"
            assert events.decisions[0]["type"] == "update_accepted", events.decisions[0]

            def counted(accepted: int) -> bool:
                return bool(events.statuses) and events.statuses[-1]["accepted"] >= accepted

            assert await events.until(lambda: counted(1), 10)
            before_status = events.statuses[-1]
            before_rss = rss_bytes(pid)

            corpus = hostile_corpus(good, zeros, version)
            assert len(corpus) >= 10_000
            flood_started = time.time()
            peak_rss = before_rss

            async def sample_memory() -> None:
                nonlocal peak_rss
                while True:
                    peak_rss = max(peak_rss, rss_bytes(pid))
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample_memory())
            await publish_paced(broker, FUZZ, corpus, events, decided_before=1)
            complete = await events.until(lambda: len(events.decisions) >= 1 + len(corpus), 120)
            flood_ended = time.time()
            sampler.cancel()
            assert complete, f"{len(events.decisions) - 1} of {len(corpus)} payloads decided"

            # afterwards, training goes on: a new valid update makes a new version
            newest = max([version, *events.versions])
            fresh = update(zeros, "fuzzer-1", newest, "b" * 32)
            async with aiomqtt.Client(**credentials(broker, "fuzzer-1")) as client:
                await client.publish(FUZZ.update("fuzzer-1"), fresh, qos=1)
            assert await events.until(lambda: newest + 1 in events.versions, 30)
            await events.until(lambda: counted(2), 10)
            return {
                "corpus": corpus,
                "decisions": events.decisions,
                "statuses": events.statuses,
                "before": before_status,
                "after": events.statuses[-1],
                "flood": (flood_started, flood_ended),
                "rss": (before_rss, peak_rss, rss_bytes(pid)),
            }

    result = asyncio.run(scenario())
    corpus, decisions = result["corpus"], result["decisions"]
    flood = decisions[1 : 1 + len(corpus)]
    let_through = [d for d in flood if d["type"] != "update_rejected"]
    assert not let_through, f"{len(let_through)} hostile payloads accepted: {let_through[:5]}"
    assert decisions[-1]["type"] == "update_accepted" and decisions[-1]["update_id"] == "b" * 32
    reasons = Counter(d["reason"] for d in flood)
    assert {"malformed", "duplicate", "wrong_job", "tensor_mismatch", "future_version"} <= set(
        reasons
    ), reasons
    assert {"sender_mismatch", "duplicate"} & set(reasons)
    # the counters agree with the events
    before, after = result["before"], result["after"]
    assert after["rejected"] - before["rejected"] == len(corpus)
    assert after["accepted"] - before["accepted"] == 1

    # the heartbeat kept coming while the flood was decided
    start, end = result["flood"]
    beats = sorted(s["heartbeat"] for s in result["statuses"] if start - 1 <= s["heartbeat"] <= end)
    gaps = np.diff([start, *beats, end])
    assert gaps.max() < 3.0, f"status heartbeat gap of {gaps.max():.2f} s during the flood"

    before_rss, peak_rss, after_rss = result["rss"]
    assert peak_rss - before_rss < 50 * MIB, result["rss"]
    print(
        f"\n{len(corpus)} payloads decided in {end - start:.1f} s; reasons {dict(reasons)}; "
        f"heartbeat gap max {gaps.max():.2f} s; RSS {before_rss / MIB:.0f} MiB before, "
        f"{peak_rss / MIB:.0f} peak, {after_rss / MIB:.0f} after"
    )


def test_one_agents_flood_is_rate_limited_and_another_agent_is_served(
    broker: DevBroker, flood_coordinator: None
):
    version, zeros = asyncio.run(current_model(broker, FLOOD))

    async def scenario() -> tuple[list[dict[str, Any]], float, float]:
        async with listen(broker, FLOOD) as listener:
            events = Events(listener, FLOOD)
            flood = [
                update(zeros, "flooder", version, f"flood{i:04d}", job_id="flood")
                for i in range(200)
            ]
            other = update(zeros, "bystander", version, "c" * 32, job_id="flood")
            async with (
                aiomqtt.Client(**credentials(broker, "flooder"), logger=QUIET) as flooder,
                aiomqtt.Client(**credentials(broker, "bystander")) as bystander,
            ):
                started = time.monotonic()
                await asyncio.gather(
                    *(flooder.publish(FLOOD.update("flooder"), p, qos=1) for p in flood)
                )
                sent = time.monotonic()
                await bystander.publish(FLOOD.update("bystander"), other, qos=1)

                def served() -> bool:
                    return any(d["agent"] == "bystander" for d in events.decisions)

                assert await events.until(served, 30), "the other agent's update was not decided"
                waited = time.monotonic() - sent
                assert await events.until(lambda: len(events.decisions) >= 201, 30)
                lasted = time.monotonic() - started  # the buckets refill while it lasts
            return events.decisions, lasted, waited

    decisions, lasted, waited = asyncio.run(scenario())
    mine = [d for d in decisions if d["agent"] == "flooder"]
    assert len(mine) == 200
    fates = Counter(d["type"] if d["type"] == "update_accepted" else d["reason"] for d in mine)
    assert set(fates) == {"update_accepted", "rate_limited"}, fates
    # a burst of 30, then 10 a second until the last was decided
    assert 30 <= fates["update_accepted"] <= 30 + 10 * lasted, (fates, lasted)
    print(f"\nflood of 200 decided in {lasted:.2f} s: {dict(fates)}; other agent {waited:.2f} s")
    (bystander,) = [d for d in decisions if d["agent"] == "bystander"]
    assert bystander["type"] == "update_accepted", bystander
    assert waited < 5.0, f"the other agent waited {waited:.1f} s"
