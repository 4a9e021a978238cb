"""Datasets: the bundled digits, the seeded stratified split, the Dirichlet label-skew
partition over devices, and a device's own ``.npz`` file (refused with a reason)."""

from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from common.errors import TaskError
from common.tasks.data import (
    Dataset,
    DigitsFederation,
    dirichlet_partition,
    load_digits,
    load_npz,
    train_test_split,
)

Indices = npt.NDArray[np.int64]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


def indexed(data: Dataset) -> Dataset:
    """The same labels with each sample's row number as its only feature, so a split can be
    traced back to the rows it took."""
    return Dataset(np.arange(data.size, dtype=np.float32).reshape(-1, 1), data.y)


def rows(data: Dataset) -> Indices:
    return data.x[:, 0].astype(np.int64)


def label_entropy(labels: Indices) -> float:
    counts = np.bincount(labels)
    share = counts[counts > 0] / labels.size
    return float(-(share * np.log(share)).sum())


# --- digits ------------------------------------------------------------------------------


def test_digits_are_1797_images_of_64_values_in_unit_range(digits):
    assert digits.x.shape == (1797, 64)
    assert digits.x.dtype == np.float32
    assert digits.x.min() == 0.0
    assert digits.x.max() == 1.0
    assert digits.y.shape == (1797,)
    assert digits.y.dtype == np.int64
    assert digits.size == 1797
    assert digits.num_classes == 10
    assert set(np.unique(digits.y).tolist()) == set(range(10))


# --- train/test split --------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_split_is_stratified_and_covers_every_sample_once(digits, fraction):
    data = indexed(digits)
    train, test = train_test_split(data, fraction, seed=0)
    taken = np.concatenate((rows(train), rows(test)))
    assert np.array_equal(np.sort(taken), np.arange(data.size))
    np.testing.assert_array_equal(digits.y[rows(train)], train.y)
    np.testing.assert_array_equal(digits.y[rows(test)], test.y)
    for label in range(10):
        members = int(np.sum(digits.y == label))
        in_test = int(np.sum(test.y == label))
        assert in_test > 0, label
        assert in_test == round(fraction * members), label


def test_split_is_seeded(digits):
    data = indexed(digits)
    first = rows(train_test_split(data, 0.2, seed=1)[1])
    again = rows(train_test_split(data, 0.2, seed=1)[1])
    other = rows(train_test_split(data, 0.2, seed=2)[1])
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


# --- Dirichlet partition -----------------------------------------------------------------

LABELS = np.repeat(np.arange(10, dtype=np.int64), 100)


@pytest.mark.parametrize(
    ("parts", "alpha", "min_size"), [(1, 0.5, 10), (8, 0.1, 10), (8, 100.0, 50)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partition_is_disjoint_complete_and_large_enough(parts, alpha, min_size, seed):
    shards = dirichlet_partition(LABELS, parts, alpha, seed, min_size=min_size)
    assert len(shards) == parts
    for shard in shards:
        assert shard.dtype == np.int64
        assert shard.size >= min_size
        assert np.all(np.diff(shard) > 0)  # sorted, no repeats
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(LABELS.size))


def test_partition_is_seeded():
    first = dirichlet_partition(LABELS, 5, 0.5, seed=3)
    again = dirichlet_partition(LABELS, 5, 0.5, seed=3)
    other = dirichlet_partition(LABELS, 5, 0.5, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_smaller_alpha_gives_more_label_skew():
    def mean_entropy(alpha: float) -> float:
        return float(
            np.mean(
                [
                    label_entropy(LABELS[shard])
                    for seed in range(5)
                    for shard in dirichlet_partition(LABELS, 8, alpha, seed)
                ]
            )
        )

    skewed, moderate, iid = mean_entropy(0.1), mean_entropy(0.5), mean_entropy(100.0)
    assert skewed < moderate < iid
    assert iid > 0.95 * np.log(10)  # nearly every shard holds nearly every class evenly
    assert skewed < 0.6 * np.log(10)


@pytest.mark.parametrize(
    ("labels", "parts", "alpha", "min_size", "message"),
    [
        (LABELS, 0, 0.5, 10, "parts >= 1"),
        (LABELS, 4, 0.0, 10, "alpha > 0"),
        (LABELS, 4, -1.0, 10, "alpha > 0"),
        (LABELS, 101, 0.5, 10, "cannot give 101 shards of 10"),
        (np.zeros(30, np.int64), 3, 0.001, 10, "no Dirichlet"),  # only 10/10/10 would do
    ],
    ids=["no parts", "zero alpha", "negative alpha", "too few samples", "no draw fits"],
)
def test_impossible_partitions_are_refused(labels, parts, alpha, min_size, message):
    with pytest.raises(TaskError, match=message):
        dirichlet_partition(labels, parts, alpha, seed=0, min_size=min_size)


# --- the bundled federation --------------------------------------------------------------


@pytest.mark.parametrize("agents", [1, 8])
def test_federation_shards_partition_the_training_set(agents):
    federation = DigitsFederation(num_agents=agents, alpha=0.5, seed=0)
    train, test = federation.split()
    shards = [federation.shard(i) for i in range(agents)]
    assert sum(s.size for s in shards) == train.size
    assert train.size + test.size == 1797
    assert federation.test_set().size == test.size
    assert np.array_equal(np.sort(np.concatenate([s.y for s in shards])), np.sort(train.y))


@pytest.mark.parametrize("index", [-1, 3])
def test_federation_refuses_a_shard_out_of_range(index):
    with pytest.raises(TaskError, match=f"shard {index} out of range"):
        DigitsFederation(num_agents=3).shard(index)


# --- a device's .npz file ----------------------------------------------------------------


def save(tmp_path: Path, **arrays: Any) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_valid_npz_loads_as_float32_and_int64(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([0, 2, 1, 2], dtype=np.int32)
    data = load_npz(save(tmp_path, x=x, y=y, extra=np.ones(2)))
    assert data.x.dtype == np.float32
    assert data.y.dtype == np.int64
    np.testing.assert_array_equal(data.x, x.astype(np.float32))
    np.testing.assert_array_equal(data.y, y)
    assert data.size == 4
    assert data.num_classes == 3


def test_integer_images_load(tmp_path):
    x = np.full((2, 8, 8), 255, dtype=np.uint8)
    data = load_npz(save(tmp_path, x=x, y=np.array([1, 0], dtype=np.uint8)))
    assert data.x.shape == (2, 8, 8)
    assert data.x.dtype == np.float32


X = np.zeros((3, 2), np.float32)
Y = np.array([0, 1, 2], np.int64)
BAD_ARRAYS: dict[str, tuple[dict[str, Any], str]] = {
    "missing y": ({"x": X}, "missing array 'y'"),
    "missing x": ({"y": Y}, "missing array 'x'"),
    "text x": ({"x": np.array([["a", "b"]] * 3), "y": Y}, "x must be numeric"),
    "boolean x": ({"x": X > 0, "y": Y}, "x must be numeric"),
    "float y": ({"x": X, "y": Y.astype(np.float32)}, "y integer"),
    "NaN in x": ({"x": np.where(np.eye(3, 2) > 0, np.nan, 0.0), "y": Y}, "NaN or Inf"),
    "Inf in x": ({"x": np.full((3, 2), np.inf), "y": Y}, "NaN or Inf"),
    "fewer labels": ({"x": X, "y": Y[:2]}, r"y has shape \(2,\)"),
    "2-d y": ({"x": X, "y": Y.reshape(3, 1)}, "y has shape"),
    "no samples": ({"x": X[:0], "y": Y[:0]}, r"x has\b.*\b0\b"),
    "negative label": ({"x": X, "y": np.array([0, -3, 1])}, "negative label -3"),
    "scalar x": ({"x": np.float32(1.0), "y": Y}, "x has"),
    "scalar y": ({"x": X, "y": np.int64(1)}, "y has shape"),
    "pickled objects": (
        {"x": np.array([np.zeros(2), np.zeros(3)], dtype=object), "y": Y[:2]},
        "cannot read",
    ),
}


@pytest.mark.parametrize(("arrays", "message"), BAD_ARRAYS.values(), ids=BAD_ARRAYS.keys())
def test_bad_npz_is_refused_naming_the_problem(tmp_path, arrays, message):
    path = save(tmp_path, **arrays)
    with pytest.raises(TaskError, match=message) as raised:
        load_npz(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("content", "name"),
    [(b"x,y\n1,0\n", "data.csv"), (b"PK\x03\x04 truncated zip", "data.npz"), (b"", "empty.npz")],
    ids=["csv", "broken zip", "empty file"],
)
def test_a_file_that_is_not_npz_is_refused(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    refuse_and_release(path, "cannot read as .npz")


def test_a_lone_npy_array_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, X)
    refuse_and_release(path, "cannot read as .npz|missing array")


def refuse_and_release(path: Path, message: str) -> None:
    """Refused with a TaskError, and the file handle closed. Only the exception's type and
    text are kept, and garbage is collected here, so that a leaked handle's ResourceWarning
    fails this test rather than the end of the session."""
    kind: type[Exception] | None
    try:
        load_npz(path)
    except Exception as error:
        kind, text = type(error), f"{type(error).__name__}: {error}"
    else:
        kind, text = None, "nothing raised"
    gc.collect()
    assert kind is TaskError, text
    assert re.search(message, text), text


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(TaskError, match="cannot read"):
        load_npz(tmp_path / "absent.npz")
