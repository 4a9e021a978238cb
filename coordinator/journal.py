"""The coordinator's write-ahead journal: every input that can change the strategy's state
(an update that decoded, a deadline that closed a round, a change in the number of agents
online) is appended and fsynced *before* it is applied, and an update is acknowledged to
the broker only after that. A snapshot (coordinator/state.py) records the last sequence
number it contains; after a crash the records past it are replayed through the same code.

On disk: segment files ``journal/<first seq>.log``, each a run of records

    u32 length | u32 crc32(body) | body (msgpack map: seq, kind, time, ...)

A torn tail (a crash mid-append) is cut off at the last whole record, with a log line; a
record whose checksum fails ends the segment the same way (nothing after it is trusted).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from common.files import fsync_directory
from coordinator.errors import StateError

log = logging.getLogger("fedmq.coordinator.journal")

HEADER = struct.Struct("<II")
MAX_RECORD = 1 << 31

UPDATE, CLOSE, ONLINE = "update", "close", "online"
KINDS = (UPDATE, CLOSE, ONLINE)


@dataclass(frozen=True)
class Record:
    """One journaled input. ``agent`` and ``payload`` for updates, ``count`` for online."""

    seq: int
    kind: str
    time: float
    agent: str = ""
    payload: bytes = b""
    count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        fields: dict[str, Any] = {"seq": self.seq, "kind": self.kind, "time": self.time}
        if self.kind == UPDATE:
            fields.update(agent=self.agent, payload=self.payload)
        elif self.kind == ONLINE:
            fields["count"] = self.count
        return bytes(msgpack.packb(fields, use_bin_type=True))

    @classmethod
    def from_body(cls, body: bytes) -> Record:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=True)
        if not isinstance(fields, dict) or fields.get("kind") not in KINDS:
            raise ValueError("not a journal record")
        return cls(
            seq=int(fields["seq"]),
            kind=str(fields["kind"]),
            time=float(fields["time"]),
            agent=str(fields.get("agent", "")),
            payload=bytes(fields.get("payload", b"")),
            count=int(fields.get("count", 0)),
        )


class Journal:
    """Append-only, segmented. Not thread-safe: the coordinator appends from one worker at a
    time (under its strategy lock)."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._handle: BinaryIO | None = None
        self.last_seq = 0
        for _ in self.records_after(0):
            pass  # also repairs a torn tail and finds the last sequence number

    def _segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.glob("*.log"):
            try:
                found.append((int(path.stem), path))
            except ValueError:
                log.warning("ignoring %s: not a journal segment name", path)
        return sorted(found)

    def records_after(self, seq: int) -> Iterator[Record]:
        """Every intact record with a sequence number above ``seq``, in order."""
        segments = self._segments()
        for index, (first, path) in enumerate(segments):
            # a segment's name says seq first - 1 was used: compaction may have left only an
            # empty newest segment, and numbers must never be reused
            self.last_seq = max(self.last_seq, first - 1)
            following = segments[index + 1][0] if index + 1 < len(segments) else None
            if following is not None and following <= seq + 1:
                continue  # wholly before seq
            last = first - 1
            for record in self._read_segment(path, first):
                last = record.seq
                self.last_seq = max(self.last_seq, record.seq)
                if record.seq > seq:
                    yield record
            if following is not None and last + 1 < following and following > seq + 1:
                log.error(
                    "journal records %d to %d are missing (segment %s damaged): updates "
                    "acknowledged in them cannot be replayed",
                    max(last + 1, seq + 1),
                    following - 1,
                    path.name,
                )

    def _read_segment(self, path: Path, first: int) -> Iterator[Record]:
        data = path.read_bytes()
        offset, expected = 0, first
        while offset < len(data):
            problem = None
            if len(data) - offset < HEADER.size:
                problem = "a torn record header"
            else:
                length, crc = HEADER.unpack_from(data, offset)
                body = data[offset + HEADER.size : offset + HEADER.size + length]
                if len(body) < length:
                    problem = "a torn record"
                elif zlib.crc32(body) != crc:
                    problem = "a record with a bad checksum"
                else:
                    try:
                        record = Record.from_body(body)
                    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as error:
                        problem = f"an unreadable record ({error})"
                    else:
                        if record.seq != expected:
                            problem = f"sequence {record.seq} where {expected} was due"
            if problem is not None:
                log.warning(
                    "journal %s: %s at byte %d; %d bytes after it dropped",
                    path.name,
                    problem,
                    offset,
                    len(data) - offset,
                )
                self._truncate(path, offset)
                return
            yield record
            offset += HEADER.size + length
            expected += 1

    def _truncate(self, path: Path, size: int) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        with open(path, "r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, kind: str, time: float, **fields: Any) -> Record:
        """Write one record and make it durable; returns it with its sequence number."""
        record = Record(seq=self.last_seq + 1, kind=kind, time=time, **fields)
        body = record.body()
        if len(body) >= MAX_RECORD:
            raise StateError(f"journal record of {len(body)} bytes is too large")
        if self._handle is None:
            self.rotate()
        assert self._handle is not None
        self._handle.write(HEADER.pack(len(body), zlib.crc32(body)) + body)
        self._handle.flush()
        if self._fsync:
            os.fsync(self._handle.fileno())
        self.last_seq = record.seq
        return record

    def rotate(self) -> None:
        """Start a new segment at the next sequence number (after a snapshot, so that old
        segments can be deleted whole)."""
        self.close()
        path = self.directory / f"{self.last_seq + 1:012d}.log"
        self._handle = open(path, "ab")  # noqa: SIM115 - kept open across appends
        if self._fsync:
            fsync_directory(self.directory)

    def compact(self, seq: int) -> None:
        """Delete segments holding only records up to ``seq`` (all in a kept snapshot)."""
        segments = self._segments()
        for index, (_, path) in enumerate(segments[:-1]):
            if segments[index + 1][0] <= seq + 1:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
