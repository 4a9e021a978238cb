"""Durable file writes shared by the coordinator's state and the agent's outbox."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import BinaryIO


def fsync_directory(path: Path) -> None:
    """Make a rename or a new file in ``path`` survive a power loss."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a mix, even across a power loss."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def append_durably(path: Path, data: bytes) -> None:
    """Append and fsync (a crash can leave at most a torn last line, which readers skip)."""
    with open(path, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def lock_directory(directory: Path) -> BinaryIO:
    """An exclusive lock on ``directory``, held while the returned file stays open (until the
    process exits). Two processes on one state directory would interleave their journals
    and outboxes; the second is refused (BlockingIOError, an OSError)."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".lock", "a+b")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise
    return handle
