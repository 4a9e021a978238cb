"""The pure aggregation maths: staleness weights as published, and the per-update sample
weight (FedBuff: Nguyen et al. 2022; FedAsync: Xie et al. 2019)."""

from __future__ import annotations

import itertools
import math

import pytest

from coordinator.strategies.weights import (
    fedasync_staleness_weight,
    fedbuff_staleness_weight,
    sample_weight,
)


@pytest.mark.parametrize(
    ("staleness", "expected"),
    [(0, 1.0), (1, 1 / math.sqrt(2)), (3, 0.5), (8, 1 / 3), (15, 0.25), (99, 0.1)],
)
def test_fedbuff_weight_is_inverse_square_root_of_one_plus_staleness(staleness, expected):
    assert fedbuff_staleness_weight(staleness) == pytest.approx(expected, rel=1e-12)


def test_fedbuff_weight_strictly_decreases_with_staleness():
    weights = [fedbuff_staleness_weight(s) for s in range(50)]
    assert all(later < earlier for earlier, later in itertools.pairwise(weights))
    assert all(0 < w <= 1 for w in weights)


@pytest.mark.parametrize("staleness", [0, 1, 4, 5, 1000])
def test_fedasync_constant_is_one_at_any_staleness(staleness):
    assert fedasync_staleness_weight(staleness, "constant") == 1.0


@pytest.mark.parametrize(
    ("staleness", "exponent", "expected"),
    [
        (0, 0.5, 1.0),
        (3, 0.5, 0.5),
        (8, 0.5, 1 / 3),
        (3, 1.0, 0.25),
        (1, 2.0, 0.25),
        (7, 0.0, 1.0),  # p = 0: no discount
    ],
)
def test_fedasync_polynomial_is_staleness_plus_one_to_minus_p(staleness, exponent, expected):
    weight = fedasync_staleness_weight(staleness, "polynomial", exponent=exponent)
    assert weight == pytest.approx(expected, rel=1e-12)


def test_fedasync_polynomial_default_exponent_is_one_half():
    assert fedasync_staleness_weight(3, "polynomial") == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize(
    ("staleness", "a", "b", "expected"),
    [
        (0, 10.0, 4, 1.0),
        (3, 10.0, 4, 1.0),  # below the hinge
        (4, 10.0, 4, 1.0),  # at the hinge: still 1 (s <= b)
        (5, 10.0, 4, 1 / 11),  # just past: 1 / (a * 1 + 1)
        (6, 10.0, 4, 1 / 21),
        (0, 2.0, 0, 1.0),  # b = 0: only fresh updates are undiscounted
        (1, 2.0, 0, 1 / 3),
        (10, 0.5, 2, 1 / 5),
        (9, 0.0, 2, 1.0),  # a = 0: flat after the hinge too
    ],
)
def test_fedasync_hinge_is_flat_up_to_b_then_decays(staleness, a, b, expected):
    weight = fedasync_staleness_weight(staleness, "hinge", a=a, b=b)
    assert weight == pytest.approx(expected, rel=1e-12)


def test_fedasync_hinge_defaults_are_a10_b4():
    assert fedasync_staleness_weight(4, "hinge") == 1.0
    assert fedasync_staleness_weight(5, "hinge") == pytest.approx(1 / 11, rel=1e-12)


@pytest.mark.parametrize(
    "weigh",
    [
        fedbuff_staleness_weight,
        lambda s: fedasync_staleness_weight(s, "constant"),
        lambda s: fedasync_staleness_weight(s, "polynomial"),
        lambda s: fedasync_staleness_weight(s, "hinge"),
    ],
    ids=["fedbuff", "constant", "polynomial", "hinge"],
)
@pytest.mark.parametrize("staleness", [-1, -7])
def test_negative_staleness_raises(weigh, staleness):
    with pytest.raises(ValueError, match="staleness"):
        weigh(staleness)


def test_unknown_fedasync_function_raises():
    with pytest.raises(ValueError, match="exponential"):
        fedasync_staleness_weight(1, "exponential")


@pytest.mark.parametrize(
    ("num_samples", "staleness_weight", "expected"),
    [(100, 1.0, 100.0), (100, 0.5, 50.0), (7, 0.25, 1.75), (0, 0.9, 0.0), (1, 1.0, 1.0)],
)
def test_sample_weight_is_samples_times_staleness_weight(num_samples, staleness_weight, expected):
    assert sample_weight(num_samples, staleness_weight) == pytest.approx(expected, rel=1e-12)


def test_sample_weight_scales_with_samples_not_per_update():
    # Two updates of 10 samples weigh the same as one of 20 (NVFlare #4899).
    assert sample_weight(10, 0.5) * 2 == pytest.approx(sample_weight(20, 0.5))
