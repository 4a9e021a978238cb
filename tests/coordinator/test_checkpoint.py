"""Checkpoints are atomic and verified: the newest intact one is resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from coordinator import checkpoint
from coordinator.strategies import GlobalModel


def model(version: int) -> GlobalModel:
    return GlobalModel(
        version,
        {"w": np.full((3, 2), version, np.float32), "b": np.arange(2, dtype=np.float32) + version},
    )


def test_latest_checkpoint_is_resumed(tmp_path: Path):
    for version in range(5):
        checkpoint.save(tmp_path, model(version), {"accuracy": version / 10})
    resumed = checkpoint.load_latest(tmp_path, ["w", "b"])
    assert resumed is not None
    restored, meta = resumed
    assert restored.version == 4 and meta["accuracy"] == 0.4
    assert np.array_equal(restored.weights["w"], model(4).weights["w"])
    assert len(list(tmp_path.glob("model-*.npz"))) == checkpoint.KEEP
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_corrupted_checkpoint_falls_back_to_the_previous(tmp_path: Path, caplog):
    for version in range(3):
        checkpoint.save(tmp_path, model(version), {})
    newest = tmp_path / "model-00000002.npz"
    newest.write_bytes(newest.read_bytes()[:-20])  # torn write
    restored, _ = checkpoint.load_latest(tmp_path, ["w", "b"]) or (None, None)
    assert restored is not None and restored.version == 1
    assert "checksum mismatch" in caplog.text


def test_an_unreadable_pointer_still_finds_a_checkpoint(tmp_path: Path):
    checkpoint.save(tmp_path, model(7), {})
    (tmp_path / "latest.json").write_text("{not json")
    restored, _ = checkpoint.load_latest(tmp_path, ["w", "b"]) or (None, None)
    assert restored is not None and restored.version == 7


def test_nothing_to_resume(tmp_path: Path):
    assert checkpoint.load_latest(tmp_path, ["w"]) is None
    checkpoint.save(tmp_path, model(1), {})
    assert checkpoint.load_latest(tmp_path, ["w", "b", "extra"]) is None  # another model
    assert json.loads((tmp_path / "latest.json").read_text())["version"] == 1
