"""The agent's durable outbox and error-feedback residual.

An update is written to disk before it is published and removed only once the broker has
acknowledged it (PUBACK), so an update trained while the broker was away, or just before a
crash or a reboot, is still sent when the agent is back. The residual it leaves behind is
saved first: a crash between the two loses that round's training (as any crash mid-round
does), never counts the residual twice. Bounded: beyond ``max_items`` the oldest update is
dropped with a log line (one that old would be refused as stale anyway).

Each acknowledged update is appended to ``sent.jsonl`` (id, bytes, time): the device's own
record of what it delivered, for audits and the chaos test. It rotates at 1 MiB.
"""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.files import append_durably, atomic_write
from common.tasks.models import Weights

log = logging.getLogger("fedmq.agent.outbox")

SUFFIX = ".upd"
SENT_LOG = "sent.jsonl"
SENT_LOG_MAX = 1 << 20
RESIDUAL = "feedback.npz"


@dataclass(frozen=True)
class Pending:
    update_id: str
    path: Path

    def read(self) -> bytes:
        return self.path.read_bytes()


class Outbox:
    def __init__(self, state_dir: Path, max_items: int) -> None:
        self.state_dir = state_dir
        self.directory = state_dir / "outbox"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_items = max_items
        self.dropped = 0

    def pending(self) -> list[Pending]:
        """Oldest first (file names start with a nanosecond timestamp)."""
        items = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            _, _, update_id = path.stem.partition("-")
            items.append(Pending(update_id, path))
        return items

    def put(self, update_id: str, payload: bytes) -> None:
        atomic_write(self.directory / f"{time.time_ns():020d}-{update_id}{SUFFIX}", payload)
        items = self.pending()
        for item in items[: max(0, len(items) - self.max_items)]:
            item.path.unlink(missing_ok=True)
            self.dropped += 1
            log.warning(
                "outbox full (%d): oldest update %s dropped unsent", self.max_items, item.update_id
            )

    def delivered(self, item: Pending, size: int) -> None:
        """The broker acknowledged it: forget the payload, log the delivery."""
        sent_log = self.state_dir / SENT_LOG
        if sent_log.exists() and sent_log.stat().st_size > SENT_LOG_MAX:
            sent_log.replace(sent_log.with_name(SENT_LOG + ".1"))
        line = {"update_id": item.update_id, "bytes": size, "at": time.time()}
        append_durably(sent_log, json.dumps(line).encode() + b"\n")
        item.path.unlink(missing_ok=True)


def save_residual(state_dir: Path, residual: Weights) -> None:
    buffer = io.BytesIO()
    names = list(residual)
    arrays: dict[str, Any] = {f"t{i}": residual[name] for i, name in enumerate(names)}
    arrays["names"] = np.array(names)
    np.savez(buffer, **arrays)

    atomic_write(state_dir / RESIDUAL, buffer.getvalue())


def load_residual(state_dir: Path, shapes: dict[str, tuple[int, ...]]) -> Weights:
    """The saved residual if it fits this model; otherwise none (with a log line why)."""
    path = state_dir / RESIDUAL
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as stored:
            names = [str(n) for n in stored["names"]]
            residual = {n: stored[f"t{i}"].astype(np.float32) for i, n in enumerate(names)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        log.warning("error-feedback residual %s unreadable (%s): starting from zero", path, error)
        return {}
    if {n: v.shape for n, v in residual.items()} != shapes:
        log.warning("error-feedback residual %s is for another model: starting from zero", path)
        return {}
    return residual
