"""The write-ahead journal: what was appended reads back in order across segments, a torn
tail or a corrupted record is cut off (never trusted, never fatal), and sequence numbers
continue where the intact records end."""

from __future__ import annotations

import logging
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.journal import CLOSE, HEADER, ONLINE, UPDATE, Journal, Record

QUICK = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


OPENED: list[Journal] = []


def journal(directory: Path) -> Journal:
    """A journal closed after the test (its segment handle stays open across appends)."""
    opened = Journal(directory, fsync=False)  # durability is the OS's part; the format ours
    OPENED.append(opened)
    return opened


@pytest.fixture(autouse=True)
def _close_journals() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def fill(target: Journal, count: int, start: int = 0) -> list[Record]:
    """``count`` update records with distinct payloads and agents."""
    return [
        target.append(UPDATE, 1000.0 + i, agent=f"agent-{i % 3}", payload=bytes([i % 256]) * i)
        for i in range(start, start + count)
    ]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def record_offsets(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each record in a segment file."""
    data = path.read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        length, _ = HEADER.unpack_from(data, offset)
        offsets.append((offset, offset + HEADER.size + length))
        offset += HEADER.size + length
    return offsets


def test_appended_records_read_back_in_order_with_their_fields(tmp_path: Path):
    target = journal(tmp_path)
    written = [
        target.append(UPDATE, 1.5, agent="edge-1", payload=b"\x00\x01payload"),
        target.append(CLOSE, 2.5),
        target.append(ONLINE, 3.5, count=7),
    ]
    assert [r.seq for r in written] == [1, 2, 3]
    assert target.last_seq == 3
    read = list(target.records_after(0))
    assert read == written
    assert (read[0].agent, read[0].payload) == ("edge-1", b"\x00\x01payload")
    assert read[1].kind == CLOSE and read[1].time == 2.5
    assert read[2].count == 7
    assert list(target.records_after(2)) == written[2:]
    assert list(target.records_after(3)) == []


def test_reopening_after_close_finds_the_last_sequence_number(tmp_path: Path):
    target = journal(tmp_path)
    fill(target, 5)
    target.close()
    reopened = journal(tmp_path)
    assert reopened.last_seq == 5
    assert reopened.append(CLOSE, 9.0).seq == 6
    assert [r.seq for r in journal(tmp_path).records_after(0)] == [1, 2, 3, 4, 5, 6]


def test_an_empty_directory_starts_at_sequence_one(tmp_path: Path):
    target = journal(tmp_path / "fresh")
    assert target.last_seq == 0
    assert list(target.records_after(0)) == []
    assert target.append(CLOSE, 0.0).seq == 1


def test_sequence_numbers_continue_across_rotations(tmp_path: Path):
    target = journal(tmp_path)
    fill(target, 3)
    target.rotate()
    fill(target, 2, start=3)
    target.rotate()
    target.rotate()  # twice with nothing in between: still one segment for seq 6
    fill(target, 4, start=5)
    assert [p.name for p in segment_files(tmp_path)] == [
        "000000000001.log",
        "000000000004.log",
        "000000000006.log",
    ]
    target.close()
    reopened = journal(tmp_path)
    assert reopened.last_seq == 9
    assert [r.seq for r in reopened.records_after(0)] == list(range(1, 10))
    assert [r.seq for r in reopened.records_after(4)] == [5, 6, 7, 8, 9]
    assert [r.payload for r in reopened.records_after(0)] == [bytes([i]) * i for i in range(9)]


def test_compact_deletes_only_segments_wholly_covered(tmp_path: Path):
    target = journal(tmp_path)
    fill(target, 3)  # 1-3
    target.rotate()
    fill(target, 3, start=3)  # 4-6
    target.rotate()
    fill(target, 3, start=6)  # 7-9

    target.compact(4)  # segment 4-6 still holds 5 and 6
    assert [p.name for p in segment_files(tmp_path)] == ["000000000004.log", "000000000007.log"]
    assert [r.seq for r in target.records_after(4)] == [5, 6, 7, 8, 9]

    target.compact(9)  # the newest segment stays: appends go there
    assert [p.name for p in segment_files(tmp_path)] == ["000000000007.log"]
    assert target.append(CLOSE, 0.0).seq == 10
    target.close()
    assert [r.seq for r in journal(tmp_path).records_after(6)] == [7, 8, 9, 10]


def test_compact_at_a_segment_boundary_keeps_the_next_one(tmp_path: Path):
    target = journal(tmp_path)
    fill(target, 3)
    target.rotate()
    fill(target, 3, start=3)
    target.compact(3)
    assert [p.name for p in segment_files(tmp_path)] == ["000000000004.log"]
    assert [r.seq for r in target.records_after(3)] == [4, 5, 6]


def test_compaction_down_to_an_empty_segment_never_reuses_sequence_numbers(tmp_path: Path):
    """Rotate after a snapshot, compact everything it covers, restart: the next record is
    still numbered after the last one (a reused number would be skipped by a replay that
    starts after the snapshot's sequence number)."""
    target = journal(tmp_path)
    fill(target, 3)
    target.rotate()
    target.compact(3)
    assert [p.name for p in segment_files(tmp_path)] == ["000000000004.log"]
    target.close()
    reopened = journal(tmp_path)
    assert reopened.last_seq == 3
    assert reopened.append(CLOSE, 0.0).seq == 4
    assert [r.seq for r in reopened.records_after(3)] == [4]


def test_a_torn_tail_is_cut_at_every_offset_inside_the_last_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    original = tmp_path / "original"
    target = journal(original)
    fill(target, 4)
    target.append(UPDATE, 5.0, agent="edge-9", payload=b"p" * 40)
    target.close()
    (segment,) = segment_files(original)
    start, end = record_offsets(segment)[-1]
    assert end == segment.stat().st_size

    for cut in range(start + 1, end):  # start itself is a clean end: nothing torn
        copy = tmp_path / f"cut-{cut}"
        shutil.copytree(original, copy)
        with open(copy / segment.name, "r+b") as handle:
            handle.truncate(cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fedmq.coordinator.journal"):
            reopened = journal(copy)
        assert reopened.last_seq == 4, cut
        assert (copy / segment.name).stat().st_size == start, cut
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(segment.name in w and "torn" in w for w in warnings), (cut, warnings)

        appended = reopened.append(CLOSE, 6.0)
        assert appended.seq == 5
        reopened.close()
        again = journal(copy)
        assert [r.seq for r in again.records_after(0)] == [1, 2, 3, 4, 5]
        assert list(again.records_after(4)) == [appended]
        shutil.rmtree(copy)


@pytest.mark.parametrize("where", ["length", "checksum", "body-first", "body-last"])
def test_a_flipped_byte_cuts_the_segment_at_that_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
):
    target = journal(tmp_path)
    fill(target, 6)
    target.close()
    (segment,) = segment_files(tmp_path)
    start, end = record_offsets(segment)[3]  # record 4
    position = {
        "length": start,
        "checksum": start + 4,
        "body-first": start + HEADER.size,
        "body-last": end - 1,
    }[where]
    data = bytearray(segment.read_bytes())
    data[position] ^= 0x20
    segment.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="fedmq.coordinator.journal"):
        reopened = journal(tmp_path)
    assert reopened.last_seq == 3
    assert [r.seq for r in reopened.records_after(0)] == [1, 2, 3]
    assert segment.stat().st_size == start  # nothing after the bad record is trusted
    assert any(segment.name in r.getMessage() for r in caplog.records)
    if where.startswith("body") or where == "checksum":
        assert any("bad checksum" in r.getMessage() for r in caplog.records)
    assert reopened.append(CLOSE, 0.0).seq == 4


def test_a_record_out_of_sequence_ends_the_segment(tmp_path: Path):
    """A record whose checksum holds but whose number is not the next one (a segment
    spliced from elsewhere) is not trusted either."""
    target = journal(tmp_path)
    fill(target, 2)
    stray = Record(seq=7, kind=CLOSE, time=0.0).body()
    target.close()
    (segment,) = segment_files(tmp_path)
    with open(segment, "ab") as handle:
        handle.write(HEADER.pack(len(stray), zlib.crc32(stray)) + stray)
    reopened = journal(tmp_path)
    assert reopened.last_seq == 2
    assert reopened.append(CLOSE, 0.0).seq == 3


def test_files_that_are_not_segments_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    target = journal(tmp_path)
    fill(target, 2)
    target.close()
    (tmp_path / "notes.log").write_text("not a segment")
    with caplog.at_level(logging.WARNING, logger="fedmq.coordinator.journal"):
        reopened = journal(tmp_path)
    assert reopened.last_seq == 2
    assert any("notes.log" in r.getMessage() for r in caplog.records)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(max_size=64)),
        st.tuples(st.just("rotate"), st.none()),
        st.tuples(st.just("reopen"), st.none()),
        st.tuples(st.just("compact"), st.integers(0, 40)),
    ),
    max_size=40,
)


@QUICK
@given(plan=operations)
def test_any_sequence_of_operations_keeps_every_needed_record(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[str, object]]
):
    """Against a model: records_after(s) is exactly the appended records above s, for
    any s at or above the last compaction point."""
    directory = tmp_path_factory.mktemp("journal")
    target = journal(directory)
    appended: list[Record] = []
    compacted = 0
    for operation, argument in plan:
        if operation == "append":
            assert isinstance(argument, bytes)
            appended.append(target.append(UPDATE, 0.0, agent="a", payload=argument))
        elif operation == "rotate":
            target.rotate()
        elif operation == "reopen":
            target.close()
            target = journal(directory)
        else:
            assert isinstance(argument, int)
            seq = min(argument, len(appended))
            target.compact(seq)
            compacted = max(compacted, seq)
        assert target.last_seq == len(appended)
    assert [r.seq for r in appended] == list(range(1, len(appended) + 1))
    for after in range(compacted, len(appended) + 1):
        assert list(target.records_after(after)) == appended[after:]
    target.close()
    assert journal(directory).last_seq == len(appended)


def test_records_lost_in_the_middle_of_the_journal_are_reported(tmp_path: Path, caplog):
    """Damage inside an older segment (the disk, not a crash: appends are fsynced) cuts it
    there; the records up to the next segment are gone, and the log says which."""
    journal = Journal(tmp_path)
    for _ in range(3):
        journal.append(UPDATE, 1.0, agent="a", payload=b"x" * 10)
    journal.rotate()
    journal.append(UPDATE, 2.0, agent="a", payload=b"y")
    journal.close()
    (first, _) = sorted(tmp_path.glob("*.log"))
    data = bytearray(first.read_bytes())
    data[-3] ^= 0xFF  # the third record's body
    first.write_bytes(bytes(data))
    with caplog.at_level("ERROR", logger="fedmq.coordinator.journal"):
        seqs = [r.seq for r in Journal(tmp_path).records_after(0)]
    assert seqs == [1, 2, 4]
    assert "records 3 to 3 are missing" in caplog.text
