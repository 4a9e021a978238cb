"""Checkpoints of the global model, one per version, written atomically to the state
directory (temp file, fsync, rename; then the ``latest.json`` pointer the same way), with a
SHA-256 so that a torn or corrupted file is detected and the previous good one used."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.strategies import GlobalModel

log = logging.getLogger("fedmq.coordinator.checkpoint")
KEEP = 3


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save(state_dir: Path, model: GlobalModel, meta: dict[str, Any]) -> Path:
    import io

    state_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {f"t{i}": v for i, v in enumerate(model.weights.values())}
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    path = state_dir / f"model-{model.version:08d}.npz"
    _atomic_write(path, data)
    pointer = {
        "version": model.version,
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "names": list(model.weights),
        **meta,
    }
    _atomic_write(state_dir / "latest.json", json.dumps(pointer, indent=1).encode())
    for old in sorted(state_dir.glob("model-*.npz"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_latest(state_dir: Path, names: list[str]) -> tuple[GlobalModel, dict[str, Any]] | None:
    """The newest intact checkpoint whose tensor names match, or None (with a log line
    saying why each candidate was skipped)."""
    pointer_path = state_dir / "latest.json"
    candidates: list[tuple[Path, str | None]] = []
    try:
        pointer = json.loads(pointer_path.read_text())
        candidates.append((state_dir / pointer["file"], pointer["sha256"]))
    except FileNotFoundError:
        pointer = {}
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning(
            "checkpoint pointer %s unreadable (%s): trying older files", pointer_path, error
        )
        pointer = {}
    candidates += [(p, None) for p in sorted(state_dir.glob("model-*.npz"), reverse=True)]
    failed: set[Path] = set()
    for path, digest in candidates:
        if path in failed:
            continue
        try:
            data = path.read_bytes()
            if digest is not None and hashlib.sha256(data).hexdigest() != digest:
                raise ValueError("checksum mismatch")
            import io

            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                tensors = [stored[f"t{i}"].astype(np.float32) for i in range(len(names))]
                if len(stored.files) != len(names):
                    raise ValueError(f"{len(stored.files)} tensors, model has {len(names)}")
            version = int(path.stem.split("-")[1])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            log.warning("checkpoint %s skipped: %s", path.name, error)
            failed.add(path)
            continue

        meta = pointer if pointer.get("file") == path.name else {"version": version}
        return GlobalModel(version, dict(zip(names, tensors, strict=True))), meta
    return None
