"""Durable writes and the state-directory lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.files import atomic_write, lock_directory


def test_atomic_write_replaces_the_whole_file(tmp_path: Path):
    target = tmp_path / "f"
    atomic_write(target, b"old")
    atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary left behind


def test_a_state_directory_is_locked_by_one_process_at_a_time(tmp_path: Path):
    held = lock_directory(tmp_path / "state")
    with pytest.raises(BlockingIOError):
        lock_directory(tmp_path / "state")  # a second holder (another open file) is refused
    held.close()
    lock_directory(tmp_path / "state").close()  # released with its file
