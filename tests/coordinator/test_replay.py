"""The service's crash safety without a broker: a Coordinator fed updates the way its worker
feeds them, killed at various instants (nothing but what is on disk survives), resumed
from ``state.load`` and its journal, then fed the rest, ends exactly where a run that never
crashed ends: same version, same weights bit for bit, same buffer, same recent ids, same
ledger, and no update applied twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import codec
from configs.coordinator import CoordinatorSettings
from coordinator import state
from coordinator.journal import UPDATE
from coordinator.service import Coordinator
from coordinator.state import LEDGER, Ledger
from coordinator.strategies import GlobalModel

SHAPES = {"dense/kernel:0": (3, 4), "dense/bias:0": (4,)}
JOB = "replay"
START = 1_000.0  # the inputs' clock: deterministic, so both runs see the same times

Item = tuple[str, bytes, float]  # (agent, payload, time received)


def initial() -> GlobalModel:
    rng = np.random.default_rng(0)
    return GlobalModel(0, {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()})


def make_settings(state_dir: Path, strategy: dict[str, Any]) -> CoordinatorSettings:
    return CoordinatorSettings.model_validate(
        {
            "job": JOB,
            "state_dir": str(state_dir),
            "strategy": strategy,
            "evaluate_every": 0,
            "snapshot_every": 2,  # snapshots between versions too: replays start mid-buffer
            "rate_limit": {"updates_per_minute": 1e6, "burst": 1_000_000},
        }
    )


def update(agent: str, index: int, base: int = 0, **overrides: Any) -> bytes:
    rng = np.random.default_rng(100 + index)
    fields: dict[str, Any] = {
        "job_id": JOB,
        "sender_id": agent,
        "base_version": base,
        "num_samples": 10 + index,
        "update_id": f"update-{index:04d}",
        **overrides,
    }
    deltas = {n: (0.1 * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}
    return codec.encode_update(deltas, codec="fp32", **fields)


def traffic() -> list[Item]:
    """Mostly good updates from three agents, with one of every kind of refusal that is
    journaled (it decoded) and one that is not (malformed)."""
    items: list[Item] = []
    for index in range(24):
        agent = f"agent-{index % 3}"
        if index == 5:
            payload = update(agent, index, job_id="another-job")
        elif index == 9:
            payload = update(agent, 3)  # update 3 again: a replay of an accepted id
        elif index == 13:
            payload = b"\x81\xa4junk"  # refused before the journal
        elif index == 17:
            payload = update(agent, index, base=99)  # a version never published
        else:
            payload = update(agent, index, base=index // 8)
        items.append((agent, payload, START + index))
    return items


STRATEGIES = {
    "fedbuff": {"name": "fedbuff", "buffer_size": 3, "max_staleness": 20},
    "fedavg": {
        "name": "fedavg",
        "expected_agents": 3,
        "late_updates": "apply",
        "max_staleness": 20,
    },
}


# --- driving a Coordinator the way its tasks do ---------------------------------------------


async def start(settings: CoordinatorSettings) -> Coordinator:
    """What ``main.serve`` and ``Coordinator.run`` do before serving: load, resume, replay
    (or publish version 0 on a fresh start)."""
    resume = state.load(settings.state_dir, SHAPES)
    coordinator = Coordinator(settings, initial(), resume=resume)
    if resume is not None:
        await coordinator.prepare()
    else:  # as prepare(), at a fixed time so that runs compare bit for bit
        async with coordinator._strategy_lock:
            coordinator._set_aside_orphan_journal()
            await coordinator._new_version_published(START)
    return coordinator


async def feed(coordinator: Coordinator, items: Sequence[Item]) -> None:
    """As the update worker: one at a time, decode/journal/apply in a thread, then publish
    and snapshot what it led to."""
    for agent, payload, now in items:
        async with coordinator._strategy_lock:
            handled = await asyncio.to_thread(coordinator._receive_update, agent, payload, now)
            await coordinator._after(handled)


async def finish(coordinator: Coordinator) -> None:
    """A clean stop: the final snapshot (its decisions reach the ledger)."""
    async with coordinator._strategy_lock:
        if coordinator._decisions or coordinator._since_snapshot:
            await coordinator._save_snapshot()
    coordinator.journal.close()


def crash(coordinator: Coordinator) -> None:
    """SIGKILL: memory is gone; the journal's appends were already flushed and fsynced."""
    coordinator.journal.close()


async def crash_in(coordinator: Coordinator, item: Item, instant: str) -> None:
    """Take ``item`` only part of the way before the crash."""
    agent, payload, now = item
    async with coordinator._strategy_lock:
        if instant == "journaled, not applied":
            coordinator.journal.append(UPDATE, now, agent=agent, payload=payload)
        elif instant == "applied, not snapshotted":
            await asyncio.to_thread(coordinator._receive_update, agent, payload, now)
        else:
            raise AssertionError(instant)
    crash(coordinator)


def outcome(coordinator: Coordinator) -> dict[str, Any]:
    """Everything that must not differ between a crashed run and a clean one."""
    fields, buffers = coordinator.strategy.export_state()
    return {
        "version": coordinator.strategy.version,
        "published": coordinator.published_version,
        "weights": {n: v.tobytes() for n, v in coordinator.strategy.model.weights.items()},
        "buffered": coordinator.strategy.buffered,
        "strategy": json.loads(json.dumps(fields)),
        "buffers": {n: v.tobytes() for n, v in buffers.items()},
        "recent": coordinator.recent.to_json(),
        # Refusals before the journal (malformed bytes) are counted in memory only: a crash
        # before the next snapshot forgets them. Everything journaled is exact.
        "accepted": coordinator.counters.accepted,
        "rejected": {
            reason: count
            for reason, count in coordinator.counters.rejected.items()
            if reason != "malformed"
        },
        "books": {
            agent: (book.accepted, book.last_update_at, book.last_staleness)
            for agent, book in coordinator.books.items()
        },
    }


def decisions(state_dir: Path) -> list[dict[str, Any]]:
    """The ledger without the snapshot numbers (a crashed run snapshots at other points)."""
    return [
        {k: v for k, v in entry.items() if k != "snapshot"}
        for entry in Ledger(state_dir / LEDGER).entries()
    ]


async def clean_run(state_dir: Path, strategy: dict[str, Any]) -> dict[str, Any]:
    coordinator = await start(make_settings(state_dir, strategy))
    await feed(coordinator, traffic())
    await finish(coordinator)
    return outcome(coordinator)


def assert_ledger_once_each(entries: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(set(seqs)), "a journal record decided twice or out of order"
    accepted = [e["update_id"] for e in entries if e["decision"] == "accepted"]
    assert len(accepted) == len(set(accepted)), "an update accepted twice"


# --- the tests --------------------------------------------------------------------------------


def test_the_clean_run_exercises_versions_buffers_and_refusals(tmp_path: Path):
    """The reference the crashed runs are compared with makes versions, holds a partial
    buffer at the end and refuses something of every journaled kind."""
    result = asyncio.run(clean_run(tmp_path, STRATEGIES["fedbuff"]))
    assert result["version"] >= 5
    assert result["buffered"] == 2
    assert set(result["rejected"]) == {"wrong_job", "duplicate", "future_version"}
    entries = decisions(tmp_path)
    assert_ledger_once_each(entries)
    assert len(entries) == len(traffic()) - 1  # all but the malformed one were journaled


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "instant", ["between inputs", "journaled, not applied", "applied, not snapshotted"]
)
def test_a_crash_and_resume_ends_where_a_clean_run_ends(
    tmp_path: Path, strategy: str, instant: str
):
    expected = asyncio.run(clean_run(tmp_path / "clean", STRATEGIES[strategy]))
    expected_ledger = decisions(tmp_path / "clean")
    items = traffic()
    settings = make_settings(tmp_path / "crashed", STRATEGIES[strategy])

    async def crashing_run() -> dict[str, Any]:
        position = 0
        for crash_at in (2, 3, 7, 8, 12, 14, 18, 23):  # mid-buffer, at versions, twice in a row
            coordinator = await start(settings)
            await feed(coordinator, items[position:crash_at])
            if instant == "between inputs":
                crash(coordinator)
                position = crash_at
            else:
                await crash_in(coordinator, items[crash_at], instant)
                position = crash_at + 1  # journaled: the broker had its acknowledgement
        coordinator = await start(settings)
        await feed(coordinator, items[position:])
        await finish(coordinator)
        return outcome(coordinator)

    assert asyncio.run(crashing_run()) == expected
    entries = decisions(tmp_path / "crashed")
    assert_ledger_once_each(entries)
    assert entries == expected_ledger


def test_an_update_redelivered_after_the_crash_is_not_applied_twice(tmp_path: Path):
    """Journaled, then killed before the PUBACK went out: the broker delivers it again
    after the restart; the replay applied it already, so the redelivery is a duplicate."""
    items = traffic()[:6]
    settings = make_settings(tmp_path / "crashed", STRATEGIES["fedbuff"])

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        coordinator = await start(settings)
        await feed(coordinator, items[:4])
        await crash_in(coordinator, items[4], "applied, not snapshotted")
        coordinator = await start(settings)
        after_replay = outcome(coordinator)
        await feed(coordinator, [items[4]])  # the redelivery
        redelivered = outcome(coordinator)
        await finish(coordinator)
        assert redelivered["weights"] == after_replay["weights"]
        assert redelivered["buffered"] == after_replay["buffered"]
        return redelivered, decisions(settings.state_dir)

    result, entries = asyncio.run(scenario())
    update_id = codec.decode_update(items[4][1]).update_id
    fates = [e["decision"] for e in entries if e["update_id"] == update_id]
    assert fates == ["accepted", "duplicate"]
    assert_ledger_once_each(entries)

    async def reference() -> dict[str, Any]:
        coordinator = await start(make_settings(tmp_path / "clean", STRATEGIES["fedbuff"]))
        await feed(coordinator, items[:5])
        await finish(coordinator)
        return outcome(coordinator)

    expected = asyncio.run(reference())
    for key in ("version", "weights", "buffers", "buffered", "recent", "accepted"):
        assert result[key] == expected[key], key


@pytest.mark.parametrize("damage", [1, 2])
@pytest.mark.parametrize("crashes", [(11,), (11, 13), (6, 9, 10)])
def test_damaged_snapshots_are_made_good_from_the_journal(
    tmp_path: Path, damage: int, crashes: tuple[int, ...]
):
    """The newest snapshot (or two) unreadable after a crash: the service resumes from an
    older one and the journal, which compaction kept for it (also across earlier
    restarts), replays the difference."""
    expected = asyncio.run(clean_run(tmp_path / "clean", STRATEGIES["fedbuff"]))
    items = traffic()
    settings = make_settings(tmp_path / "crashed", STRATEGIES["fedbuff"])

    async def scenario() -> dict[str, Any]:
        position = 0
        for crash_at in crashes:
            coordinator = await start(settings)
            await feed(coordinator, items[position:crash_at])
            crash(coordinator)
            position = crash_at
        snapshots = sorted(settings.state_dir.glob("snapshot-*.state"))
        assert len(snapshots) == state.KEEP
        for path in snapshots[-damage:]:
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        coordinator = await start(settings)
        await feed(coordinator, items[position:])
        await finish(coordinator)
        return outcome(coordinator)

    assert asyncio.run(scenario()) == expected
    assert decisions(settings.state_dir) == decisions(tmp_path / "clean")


def test_the_journal_is_compacted_as_snapshots_are_written(tmp_path: Path):
    """Crash safety must not cost unbounded disk: old segments go once KEEP newer
    snapshots cover them."""
    asyncio.run(clean_run(tmp_path, STRATEGIES["fedbuff"]))
    snapshots = max(int(e["snapshot"]) for e in Ledger(tmp_path / LEDGER).entries())
    segments = sorted((tmp_path / "journal").glob("*.log"))
    assert snapshots > 2 * state.KEEP
    assert len(segments) <= state.KEEP + 1, [p.name for p in segments]


def test_metrics_of_a_resumed_coordinator_show_the_resumed_version(tmp_path: Path):
    """A restart must not leave the version gauge at 0 (a 'stalled' alert would misfire)."""
    settings = make_settings(tmp_path, STRATEGIES["fedbuff"])

    async def scenario() -> tuple[int, str]:
        coordinator = await start(settings)
        await feed(coordinator, traffic()[:8])
        await finish(coordinator)
        version = coordinator.strategy.version
        resumed = await start(settings)  # nothing left to replay: no version is made
        assert resumed.strategy.version == version
        text = resumed.metrics.render().decode()
        resumed.journal.close()
        return version, text

    version, text = asyncio.run(scenario())
    assert version > 0
    assert f"fedmq_model_version {float(version)}" in text
    assert "fedmq_versions_published_total 1.0" in text
