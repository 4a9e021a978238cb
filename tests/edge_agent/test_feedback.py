"""Error feedback (Karimireddy et al. 2019): p = update + e, e = p - decompress(C(p)).

With feedback, what was sent over many rounds adds up to what was learned (minus one bounded
residual), even through a biased compressor; without it, the compressor's bias accumulates."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from codec import encode_tensors
from edge_agent.feedback import ErrorFeedback

Weights = dict[str, npt.NDArray[np.float32]]

SIGN: dict[str, Any] = {"id": "sign"}
TOPK: dict[str, Any] = {"id": "topk", "fraction": 0.1, "values": {"id": "fp32"}}


def weights(seed: int, scale: float = 1.0) -> Weights:
    rng = np.random.default_rng(seed)
    return {
        "dense/kernel": (scale * rng.standard_normal((3, 4))).astype(np.float32),
        "dense/bias": (scale * rng.standard_normal(4)).astype(np.float32),
    }


def assert_same(actual: Weights, expected: Weights) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].dtype == np.float32, name
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def compress(values: Weights, codec: dict[str, Any], seed: int) -> Weights:
    """What the coordinator decodes of what the agent sends (the agent's own path)."""
    return {t.name: t.decode() for t in encode_tensors(values, codec, seed=seed)}


# --- one round ---------------------------------------------------------------------------


def test_residual_starts_at_zero():
    feedback = ErrorFeedback()
    update = weights(1)
    assert feedback.residual == {}
    assert_same(feedback.corrected(update), update)


def test_corrected_update_adds_the_residual():
    feedback = ErrorFeedback()
    first, sent = weights(1), weights(2, scale=0.5)
    feedback.record(first, sent)
    second = weights(3)
    expected = {name: second[name] + (first[name] - sent[name]) for name in second}
    assert_same(feedback.corrected(second), expected)


def test_residual_after_a_round_is_what_was_not_sent():
    feedback = ErrorFeedback()
    corrected = feedback.corrected(weights(1))
    sent = compress(corrected, SIGN, seed=0)
    feedback.record(corrected, sent)
    assert_same(feedback.residual, {n: corrected[n] - sent[n] for n in corrected})


def test_a_tensor_new_this_round_starts_with_zero_residual():
    feedback = ErrorFeedback()
    feedback.record({"a": np.ones(3, np.float32)}, {"a": np.zeros(3, np.float32)})
    update = {"a": np.ones(3, np.float32), "b": np.full(2, 5.0, np.float32)}
    assert_same(
        feedback.corrected(update),
        {"a": np.full(3, 2.0, np.float32), "b": np.full(2, 5.0, np.float32)},
    )


def test_skipped_upload_keeps_the_whole_corrected_update():
    feedback = ErrorFeedback()
    feedback.record(weights(1), weights(2))
    corrected = feedback.corrected(weights(3))
    feedback.record(corrected, None)
    assert_same(feedback.residual, corrected)
    # a copy: the caller may reuse its arrays
    kept = {n: v.copy() for n, v in corrected.items()}
    for value in corrected.values():
        value[...] = 0
    assert_same(feedback.residual, kept)
    # the next round carries the skipped update in full
    update = weights(4)
    assert_same(feedback.corrected(update), {n: update[n] + kept[n] for n in update})


def test_disabled_feedback_passes_updates_through_and_keeps_nothing():
    feedback = ErrorFeedback(enabled=False)
    update = weights(1)
    assert feedback.corrected(update) is update
    feedback.record(update, weights(2))
    feedback.record(update, None)
    assert feedback.residual == {}
    assert feedback.corrected(update) is update


# --- many rounds through a biased compressor ---------------------------------------------

ROUNDS = 200
DIM = 256
BOUND_FACTOR = 5.0
"""Residual bound as a multiple of the largest update norm. For a compressor with
||C(p) - p||^2 <= (1 - d)||p||^2 the residual stays below q / (1 - q) max||u||, q = sqrt(1 - d);
these workloads stay well inside 5 (observed: ~1.5 for sign, ~3.2 for top-10%)."""


def run(codec: dict[str, Any], enabled: bool) -> tuple[list[float], list[float], float, float]:
    """Per round: the gap ||sum sent - sum updates|| and the residual norm; then the largest
    update norm and ||sum updates||. Updates share a drift (what training learns) whose
    magnitudes differ across coordinates, which a sign or top-k compressor does not respect."""
    rng = np.random.default_rng(7)
    drift = rng.choice([-1.0, 1.0], DIM) * np.linspace(0.1, 1.0, DIM)
    feedback = ErrorFeedback(enabled)
    total_updates, total_sent = np.zeros(DIM), np.zeros(DIM)
    gaps, residuals, largest = [], [], 0.0
    for round_ in range(ROUNDS):
        update = {"w": (drift + 0.5 * rng.standard_normal(DIM)).astype(np.float32)}
        corrected = feedback.corrected(update)
        sent = compress(corrected, codec, seed=round_)
        feedback.record(corrected, sent)
        total_updates += update["w"]
        total_sent += sent["w"]
        largest = max(largest, float(np.linalg.norm(update["w"])))
        gaps.append(float(np.linalg.norm(total_sent - total_updates)))
        residuals.append(float(np.linalg.norm(feedback.residual["w"])) if enabled else 0.0)
    return gaps, residuals, largest, float(np.linalg.norm(total_updates))


@pytest.mark.parametrize("codec", [SIGN, TOPK], ids=["sign", "topk"])
def test_with_feedback_the_sent_sum_tracks_the_update_sum(codec):
    gaps, residuals, largest, total = run(codec, enabled=True)
    bound = BOUND_FACTOR * largest
    assert max(residuals) < bound
    # sum sent = sum updates - final residual (the residual telescopes)
    assert gaps[-1] == pytest.approx(residuals[-1], rel=1e-3, abs=1e-3)
    assert max(gaps) < bound
    assert total > 20 * bound  # while the learned total keeps growing


@pytest.mark.parametrize("codec", [SIGN, TOPK], ids=["sign", "topk"])
def test_without_feedback_the_compressor_bias_accumulates(codec):
    with_gaps, _, largest, _ = run(codec, enabled=True)
    gaps, residuals, _, total = run(codec, enabled=False)
    assert residuals == [0.0] * ROUNDS
    bound = BOUND_FACTOR * largest
    # the gap grows with the number of rounds (about linearly), far past the feedback bound
    assert gaps[-1] > 1.8 * gaps[ROUNDS // 2 - 1]
    assert gaps[-1] > 5 * bound
    assert gaps[-1] > 0.1 * total
    assert gaps[-1] > 10 * with_gaps[-1]
