"""The coordinator's persisted state: snapshots and the decisions ledger.

A snapshot is the whole state at one instant: the global model and version, the strategy's
buffer and round state, the service's books (recent update ids, counters, agents, control)
and the journal sequence number it contains. It is written atomically (temp file, fsync,
rename, fsync of the directory) with a SHA-256 of its body in its header, so a torn or
corrupted file is detected and the previous one used. The last ``KEEP`` are kept.

The ledger (``decisions.jsonl``) is the audit trail of every journaled update's fate
(accepted, or the rejection reason): a snapshot carries the decisions taken since the
previous one, and they are appended to the ledger once the snapshot is durable. On start
the ledger is reconciled with the snapshot loaded, so it holds each decision exactly once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.files import append_durably, atomic_write
from coordinator.errors import StateError
from coordinator.strategies.base import Weights

log = logging.getLogger("fedmq.coordinator.state")

MAGIC = b"FEDMQ-STATE 1\n"
KEEP = 3
LEDGER = "decisions.jsonl"


@dataclass
class Snapshot:
    number: int  # increases by one per snapshot written
    applied_seq: int  # the last journal record reflected in it
    version: int
    weights: Weights
    strategy_fields: dict[str, Any] = field(default_factory=dict)
    strategy_arrays: Weights = field(default_factory=dict)
    books: dict[str, Any] = field(default_factory=dict)  # the service's bookkeeping (JSON)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # since the previous one


def _encode(snapshot: Snapshot) -> bytes:
    meta = {
        "number": snapshot.number,
        "applied_seq": snapshot.applied_seq,
        "version": snapshot.version,
        "names": list(snapshot.weights),
        "strategy_names": list(snapshot.strategy_arrays),
        "strategy": snapshot.strategy_fields,
        "books": snapshot.books,
        "decisions": snapshot.decisions,
    }
    arrays: dict[str, Any] = {f"w{i}": v for i, v in enumerate(snapshot.weights.values())}
    arrays |= {f"s{i}": v for i, v in enumerate(snapshot.strategy_arrays.values())}
    arrays["meta"] = np.frombuffer(json.dumps(meta, separators=(",", ":")).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    body = buffer.getvalue()
    return MAGIC + hashlib.sha256(body).digest() + body


def _decode(data: bytes) -> Snapshot:
    if not data.startswith(MAGIC):
        raise ValueError("not a fedmq state file")
    digest, body = data[len(MAGIC) : len(MAGIC) + 32], data[len(MAGIC) + 32 :]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("checksum mismatch (torn or corrupted)")
    with np.load(io.BytesIO(body), allow_pickle=False) as stored:
        meta = json.loads(stored["meta"].tobytes())
        weights = {n: stored[f"w{i}"] for i, n in enumerate(meta["names"])}
        buffers = {n: stored[f"s{i}"] for i, n in enumerate(meta["strategy_names"])}
    return Snapshot(
        number=int(meta["number"]),
        applied_seq=int(meta["applied_seq"]),
        version=int(meta["version"]),
        weights=weights,
        strategy_fields=dict(meta["strategy"]),
        strategy_arrays=buffers,
        books=dict(meta["books"]),
        decisions=list(meta["decisions"]),
    )


def _snapshot_files(state_dir: Path) -> list[Path]:
    return sorted(state_dir.glob("snapshot-*.state"), reverse=True)


def save(state_dir: Path, snapshot: Snapshot) -> Path:
    """Write a snapshot durably, then record its decisions in the ledger."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"snapshot-{snapshot.number:010d}.state"
    atomic_write(path, _encode(snapshot))
    for old in _snapshot_files(state_dir)[KEEP:]:
        old.unlink(missing_ok=True)
    Ledger(state_dir / LEDGER).append(snapshot.number, snapshot.decisions)
    return path


def load(state_dir: Path, shapes: Mapping[str, tuple[int, ...]]) -> Snapshot | None:
    """The newest intact snapshot (each damaged one skipped with a log line saying why),
    or None if the directory holds none. StateError if snapshots exist but none is intact,
    or the newest intact one is of another model: starting afresh would silently throw a
    job's progress away, so that is the operator's call."""
    files = _snapshot_files(state_dir)
    damaged: list[str] = []
    for path in files:
        try:
            snapshot = _decode(path.read_bytes())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            log.error("state file %s is damaged (%s): falling back to an older one", path, error)
            damaged.append(path.name)
            continue
        found = {name: tuple(value.shape) for name, value in snapshot.weights.items()}
        if found != dict(shapes):
            raise StateError(
                f"{path} holds a model with other tensors than this task's "
                f"({sorted(found)} vs {sorted(shapes)}): point state_dir elsewhere or move it away"
            )
        snapshot.weights = {n: v.astype(np.float32) for n, v in snapshot.weights.items()}
        if damaged:
            log.warning("resuming from %s; damaged and skipped: %s", path.name, damaged)
        Ledger(state_dir / LEDGER).reconcile(snapshot)
        return snapshot
    if damaged:
        raise StateError(
            f"no intact state in {state_dir} ({len(damaged)} damaged files): move the "
            "directory away to start the job afresh"
        )
    return None


class Ledger:
    """Append-only JSON lines, one per decision, tagged with the snapshot that holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict[str, Any]]:
        """Every whole line (a torn last line, from a crash mid-append, is left out)."""
        if not self.path.exists():
            return []
        result = []
        for line in self.path.read_bytes().splitlines():
            try:
                result.append(json.loads(line))
            except ValueError:
                continue
        return result

    def append(self, snapshot_number: int, decisions: list[dict[str, Any]]) -> None:
        if not decisions:
            return
        lines = b"".join(
            json.dumps({"snapshot": snapshot_number, **d}, separators=(",", ":")).encode() + b"\n"
            for d in decisions
        )
        append_durably(self.path, lines)

    def reconcile(self, snapshot: Snapshot) -> None:
        """Make the ledger hold exactly the decisions of snapshots up to this one: drop
        entries of later (lost) snapshots and a torn tail; add this one's if the crash came
        between the snapshot and its ledger append."""
        entries = self.entries()
        kept = [e for e in entries if int(e.get("snapshot", 0)) < snapshot.number]
        own = [e for e in entries if int(e.get("snapshot", 0)) == snapshot.number]
        # an append cut short holds only some of this snapshot's lines: write them all again
        complete = own == [{"snapshot": snapshot.number, **d} for d in snapshot.decisions]
        if complete:
            kept += own
        raw = self.path.read_bytes() if self.path.exists() else b""
        if len(kept) != len(entries) or (raw and not raw.endswith(b"\n")):
            data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in kept)
            atomic_write(self.path, data)
            log.warning(
                "ledger %s: %d entries after snapshot %d or cut short dropped (written again)",
                self.path,
                len(entries) - len(kept),
                snapshot.number,
            )
        if not complete:
            self.append(snapshot.number, snapshot.decisions)
