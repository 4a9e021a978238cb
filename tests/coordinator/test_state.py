"""Snapshots and the decisions ledger: what is saved loads back exactly; a damaged newest
snapshot falls back to an older one with an ERROR line naming it; nothing intact (or another
model) is a StateError, never a silent fresh start; the ledger holds each decision once
whatever instant the crash came at."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.files import atomic_write
from coordinator import state
from coordinator.errors import StateError
from coordinator.state import KEEP, LEDGER, Ledger, Snapshot

SHAPES = {"dense/kernel:0": (3, 4), "dense/bias:0": (4,)}


def weights(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def decisions(number: int, count: int = 3) -> list[dict[str, Any]]:
    """``count`` distinct decisions for snapshot ``number`` (journal seqs never repeat)."""
    return [
        {
            "seq": number * 100 + i,
            "agent": f"agent-{i}",
            "update_id": f"u{number}-{i}",
            "base_version": number,
            "decision": "accepted" if i % 2 == 0 else "stale",
            "version": number,
        }
        for i in range(count)
    ]


def snapshot(number: int, count: int = 3) -> Snapshot:
    return Snapshot(
        number=number,
        applied_seq=number * 100 + count - 1,
        version=number * 2,
        weights=weights(number),
        strategy_fields={"samples": 40 * number, "count": 2, "agents": ["a", "b"]},
        strategy_arrays=weights(1000 + number),
        books={"recent": [f"u{number}-0"], "counters": {"accepted": number}, "control": None},
        decisions=decisions(number, count),
    )


def files(state_dir: Path) -> list[str]:
    return sorted(p.name for p in state_dir.glob("snapshot-*.state"))


def ledger_seqs(state_dir: Path) -> list[int]:
    return [int(e["seq"]) for e in Ledger(state_dir / LEDGER).entries()]


def expected_seqs(*numbers: int, count: int = 3) -> list[int]:
    return [d["seq"] for n in numbers for d in decisions(n, count)]


def assert_same(loaded: Snapshot, saved: Snapshot) -> None:
    assert (loaded.number, loaded.applied_seq, loaded.version) == (
        saved.number,
        saved.applied_seq,
        saved.version,
    )
    assert list(loaded.weights) == list(saved.weights)  # order: the model's tensor order
    for name, value in saved.weights.items():
        assert loaded.weights[name].dtype == np.float32
        assert loaded.weights[name].tobytes() == value.tobytes()
    assert list(loaded.strategy_arrays) == list(saved.strategy_arrays)
    for name, value in saved.strategy_arrays.items():
        assert loaded.strategy_arrays[name].tobytes() == value.tobytes()
    assert loaded.strategy_fields == saved.strategy_fields
    assert loaded.books == saved.books
    assert loaded.decisions == saved.decisions


# --- round trip and retention --------------------------------------------------------------


def test_a_saved_snapshot_loads_back_bit_for_bit(tmp_path: Path):
    saved = snapshot(1)
    saved.weights["dense/bias:0"][0] = np.float32(np.nextafter(np.float32(1), np.float32(2)))
    path = state.save(tmp_path, saved)
    assert path.name == "snapshot-0000000001.state"
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place
    loaded = state.load(tmp_path, SHAPES)
    assert loaded is not None
    assert_same(loaded, saved)
    assert ledger_seqs(tmp_path) == expected_seqs(1)


def test_an_empty_state_directory_means_a_fresh_start(tmp_path: Path):
    assert state.load(tmp_path, SHAPES) is None
    assert state.load(tmp_path / "missing", SHAPES) is None


def test_only_the_newest_snapshots_are_kept(tmp_path: Path):
    for number in range(1, 6):
        state.save(tmp_path, snapshot(number))
    assert files(tmp_path) == [f"snapshot-{n:010d}.state" for n in range(6 - KEEP, 6)]
    loaded = state.load(tmp_path, SHAPES)
    assert loaded is not None and loaded.number == 5
    assert ledger_seqs(tmp_path) == expected_seqs(1, 2, 3, 4, 5)  # the ledger is not pruned


# --- damage --------------------------------------------------------------------------------


def flip_byte(data: bytes) -> bytes:
    middle = bytearray(data)
    middle[len(data) // 2] ^= 0x01
    return bytes(middle)


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "flipped byte in the body": flip_byte,
    "flipped byte in the digest": lambda d: d[:20] + bytes([d[20] ^ 0xFF]) + d[21:],
    "truncated": lambda d: d[: len(d) * 2 // 3],
    "truncated to the header": lambda d: d[: len(state.MAGIC) + 32],
    "empty": lambda d: b"",
    "garbage": lambda d: bytes(range(256)) * 8,
    "another magic": lambda d: b"FEDMQ-STATE 9\n" + d[len(state.MAGIC) :],
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
):
    for number in (1, 2, 3):
        state.save(tmp_path, snapshot(number))
    newest = tmp_path / "snapshot-0000000003.state"
    newest.write_bytes(DAMAGE[damage](newest.read_bytes()))

    with caplog.at_level(logging.INFO, logger="fedmq.coordinator.state"):
        loaded = state.load(tmp_path, SHAPES)
    assert loaded is not None
    assert_same(loaded, snapshot(2))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(newest) in errors[0], errors
    # the ledger forgets snapshot 3's decisions: the journal replays them
    assert ledger_seqs(tmp_path) == expected_seqs(1, 2)


def test_two_damaged_snapshots_fall_back_to_the_oldest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    for number in (1, 2, 3):
        state.save(tmp_path, snapshot(number))
    for number in (2, 3):
        path = tmp_path / f"snapshot-{number:010d}.state"
        path.write_bytes(flip_byte(path.read_bytes()))
    with caplog.at_level(logging.ERROR, logger="fedmq.coordinator.state"):
        loaded = state.load(tmp_path, SHAPES)
    assert loaded is not None and loaded.number == 1
    named = " ".join(r.getMessage() for r in caplog.records)
    assert "snapshot-0000000002.state" in named and "snapshot-0000000003.state" in named
    assert ledger_seqs(tmp_path) == expected_seqs(1)


@pytest.mark.parametrize("damage", ["flipped byte in the body", "empty", "truncated"])
def test_no_intact_snapshot_is_a_state_error_not_a_fresh_start(tmp_path: Path, damage: str):
    for number in (1, 2):
        state.save(tmp_path, snapshot(number))
    for path in tmp_path.glob("snapshot-*.state"):
        path.write_bytes(DAMAGE[damage](path.read_bytes()))
    with pytest.raises(StateError, match="no intact state") as raised:
        state.load(tmp_path, SHAPES)
    assert str(tmp_path) in str(raised.value)


def test_a_snapshot_of_another_model_is_a_state_error(tmp_path: Path):
    state.save(tmp_path, snapshot(1))
    other = {**SHAPES, "dense/bias:0": (5,)}
    with pytest.raises(StateError, match="other tensors"):
        state.load(tmp_path, other)
    with pytest.raises(StateError, match="other tensors"):
        state.load(tmp_path, {**SHAPES, "extra": (2,)})


def test_a_leftover_temporary_file_is_not_a_snapshot(tmp_path: Path):
    """A crash mid-write leaves only the temporary file: the previous snapshot stands."""
    state.save(tmp_path, snapshot(1))
    (tmp_path / ".snapshot-0000000002.state.tmp").write_bytes(b"half a snap")
    loaded = state.load(tmp_path, SHAPES)
    assert loaded is not None and loaded.number == 1


# --- the ledger ----------------------------------------------------------------------------


def write_without_ledger(state_dir: Path, saved: Snapshot) -> None:
    """What a crash between the snapshot's rename and its ledger append leaves."""
    atomic_write(state_dir / f"snapshot-{saved.number:010d}.state", state._encode(saved))


def test_reconcile_adds_the_decisions_of_a_snapshot_whose_ledger_append_was_lost(
    tmp_path: Path,
):
    state.save(tmp_path, snapshot(1))
    write_without_ledger(tmp_path, snapshot(2))
    assert ledger_seqs(tmp_path) == expected_seqs(1)
    state.load(tmp_path, SHAPES)
    assert ledger_seqs(tmp_path) == expected_seqs(1, 2)
    state.load(tmp_path, SHAPES)  # a second restart adds nothing
    assert ledger_seqs(tmp_path) == expected_seqs(1, 2)


def test_reconcile_creates_the_ledger_when_the_first_append_was_lost(tmp_path: Path):
    write_without_ledger(tmp_path, snapshot(1))
    state.load(tmp_path, SHAPES)
    assert ledger_seqs(tmp_path) == expected_seqs(1)


def test_reconcile_drops_entries_of_snapshots_newer_than_the_one_loaded(tmp_path: Path):
    for number in (1, 2, 3):
        state.save(tmp_path, snapshot(number))
    (tmp_path / "snapshot-0000000003.state").unlink()  # lost (or damaged and skipped)
    state.load(tmp_path, SHAPES)
    assert ledger_seqs(tmp_path) == expected_seqs(1, 2)
    # the resumed service writes snapshot 3 again, with what the journal replays
    state.save(tmp_path, snapshot(3))
    assert ledger_seqs(tmp_path) == expected_seqs(1, 2, 3)


@pytest.mark.parametrize("cut", [1, 10, -1])
def test_reconcile_ignores_a_torn_last_line(tmp_path: Path, cut: int):
    for number in (1, 2):
        state.save(tmp_path, snapshot(number))
    ledger = tmp_path / LEDGER
    torn = json.dumps({"snapshot": 3, **decisions(3)[0]}).encode()[:cut]
    with open(ledger, "ab") as handle:
        handle.write(torn)
    state.load(tmp_path, SHAPES)
    assert ledger.read_bytes().endswith(b"\n")
    assert ledger_seqs(tmp_path) == expected_seqs(1, 2)
    state.save(tmp_path, snapshot(3))  # the next append starts on a line of its own
    assert ledger_seqs(tmp_path) == expected_seqs(1, 2, 3)


@pytest.mark.parametrize("whole_lines", [0, 1, 2, 3])
@pytest.mark.parametrize("torn", [True, False])
def test_a_crash_mid_append_leaves_each_decision_exactly_once(
    tmp_path: Path, whole_lines: int, torn: bool
):
    """The ledger append of the loaded snapshot was cut short (some of its lines written,
    maybe a part of the next): after the restart every decision is there exactly once."""
    state.save(tmp_path, snapshot(1))
    write_without_ledger(tmp_path, snapshot(2, count=4))
    lines = [
        json.dumps({"snapshot": 2, **d}, separators=(",", ":")).encode() + b"\n"
        for d in decisions(2, count=4)
    ]
    with open(tmp_path / LEDGER, "ab") as handle:
        handle.write(b"".join(lines[:whole_lines]))
        if torn:
            handle.write(lines[whole_lines][:-5])
    state.load(tmp_path, SHAPES)
    assert ledger_seqs(tmp_path) == expected_seqs(1) + expected_seqs(2, count=4)
    state.load(tmp_path, SHAPES)
    assert ledger_seqs(tmp_path) == expected_seqs(1) + expected_seqs(2, count=4)


def test_a_snapshot_without_decisions_adds_nothing_to_the_ledger(tmp_path: Path):
    state.save(tmp_path, snapshot(1))
    state.save(tmp_path, snapshot(2, count=0))
    state.load(tmp_path, SHAPES)
    assert ledger_seqs(tmp_path) == expected_seqs(1)
    assert all(e["snapshot"] == 1 for e in Ledger(tmp_path / LEDGER).entries())
