"""Datasets: the bundled ``digits`` set (scikit-learn's ``load_digits``, shipped as
``digits.npz``: nothing is downloaded) split into a held-out test set and N non-IID device
shards, or one ``.npz`` file (``x``, ``y``) per device."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from common.errors import TaskError

DIGITS = Path(__file__).with_name("digits.npz")
MAX_NPZ_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Dataset:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]

    @property
    def size(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if self.size else 0


def load_digits() -> Dataset:
    """1,797 8x8 images as 64 floats in [0, 1], labels 0-9."""
    with np.load(DIGITS, allow_pickle=False) as stored:
        return Dataset(stored["x"].astype(np.float32) / 16.0, stored["y"].astype(np.int64))


def train_test_split(data: Dataset, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded, stratified split: every class keeps the same test share."""
    rng = np.random.default_rng(seed)
    test = np.zeros(data.size, dtype=bool)
    for label in np.unique(data.y):
        members = np.flatnonzero(data.y == label)
        rng.shuffle(members)
        test[members[: round(test_fraction * members.size)]] = True
    return Dataset(data.x[~test], data.y[~test]), Dataset(data.x[test], data.y[test])


def dirichlet_partition(
    labels: npt.NDArray[np.int64], parts: int, alpha: float, seed: int, min_size: int = 10
) -> list[npt.NDArray[np.int64]]:
    """Indices of ``parts`` label-skewed shards: for each class, shares ~ Dir(alpha) over the
    parts (smaller alpha, more skew). Redrawn until every shard has ``min_size`` samples."""
    if parts < 1 or alpha <= 0:
        raise TaskError(f"partition needs parts >= 1 and alpha > 0, got {parts} and {alpha}")
    if labels.size < parts * min_size:
        raise TaskError(f"{labels.size} samples cannot give {parts} shards of {min_size}")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        shards: list[list[int]] = [[] for _ in range(parts)]
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            rng.shuffle(members)
            shares = rng.dirichlet(np.full(parts, alpha))
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(int)
            for shard, piece in zip(shards, np.split(members, cuts), strict=True):
                shard.extend(piece.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.array(s, dtype=np.int64)) for s in shards]
    raise TaskError(f"no Dirichlet({alpha}) partition into {parts} shards of >= {min_size}")


@dataclass(frozen=True)
class DigitsFederation:
    """The bundled federation: one seeded test split and N device shards."""

    num_agents: int
    alpha: float = 0.5
    seed: int = 0
    test_fraction: float = 0.2

    def split(self) -> tuple[Dataset, Dataset]:
        return train_test_split(load_digits(), self.test_fraction, self.seed)

    def test_set(self) -> Dataset:
        return self.split()[1]

    def shard(self, index: int) -> Dataset:
        if not 0 <= index < self.num_agents:
            raise TaskError(f"shard {index} out of range for {self.num_agents} agents")
        train, _ = self.split()
        parts = dirichlet_partition(train.y, self.num_agents, self.alpha, self.seed)
        chosen = parts[index]
        return Dataset(train.x[chosen], train.y[chosen])


def load_npz(path: Path) -> Dataset:
    """A device's own data: ``x`` (samples first, float) and ``y`` (integer labels)."""
    try:
        if path.stat().st_size > MAX_NPZ_BYTES:
            raise TaskError(f"{path}: larger than {MAX_NPZ_BYTES} bytes")
        with open(path, "rb") as handle:  # our handle: closed even when numpy gives up
            stored = np.load(handle, allow_pickle=False)
            if not isinstance(stored, np.lib.npyio.NpzFile):
                raise TaskError(f"{path}: cannot read as .npz (a single array, not x and y)")
            with stored:
                missing = {"x", "y"} - set(stored.files)
                if missing:
                    raise TaskError(f"{path}: missing array {sorted(missing)[0]!r} (needs x, y)")
                x, y = stored["x"], stored["y"]
    except TaskError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise TaskError(f"{path}: cannot read as .npz ({error})") from error
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        raise TaskError(f"{path}: x must be numeric and y integer, got {x.dtype} and {y.dtype}")
    if x.ndim < 1:
        raise TaskError(f"{path}: x has shape {x.shape}: it needs a sample axis")
    if y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise TaskError(f"{path}: x has {x.shape[0]} samples, y has shape {y.shape}")

    if not np.isfinite(x).all():
        raise TaskError(f"{path}: x holds NaN or Inf")
    if y.min() < 0:
        raise TaskError(f"{path}: negative label {int(y.min())}")
    return Dataset(x.astype(np.float32), y.astype(np.int64))
