"""Every received update is checked before it can touch the model. Each refusal has a short
machine-readable reason (counted, and published on the events topic) and a detail for
people."""

from __future__ import annotations

import math

import numpy as np

from codec import Update
from coordinator.strategies import Contribution, GlobalModel

REASONS = (
    "malformed",  # not a valid envelope (codec refused it)
    "wrong_job",  # envelope for another job
    "sender_mismatch",  # envelope sender is not the agent whose topic carried it
    "reserved_sender",  # an update from a service account
    "future_version",  # trained from a version this coordinator never published
    "stale",  # staleness beyond the strategy's limit
    "late",  # a synchronous round already closed
    "already_in_round",  # a second update from one agent in one synchronous round
    "tensor_mismatch",  # tensor names or shapes differ from the model
    "norm",  # norm not finite; or beyond clip_norm with norm_policy "reject" (else scaled)
    "duplicate",  # an update id seen before (a redelivery or a replay)
    "paused",  # the job is paused or stopped
    "rate_limited",  # the agent sent more than its rate allows (refused before decoding)
)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def update_norm(update: Update) -> float:
    total = 0.0
    for tensor in update.tensors:
        values = tensor.decode().astype(np.float64)
        total += float(np.dot(values.ravel(), values.ravel()))
    return math.sqrt(total)


def validate(
    update: Update,
    *,
    topic_agent: str,
    job: str,
    model: GlobalModel,
    reserved: frozenset[str],
    clip_norm: float | None,
    norm_policy: str = "clip",
) -> Contribution:
    """A Contribution ready for the strategy, or Rejected with its reason."""
    if update.job_id != job:
        raise Rejected("wrong_job", f"update for job {update.job_id!r}, this is {job!r}")
    if update.sender_id != topic_agent:
        raise Rejected(
            "sender_mismatch",
            f"envelope sender {update.sender_id!r} arrived on {topic_agent!r}'s topic",
        )
    if topic_agent in reserved:
        raise Rejected("reserved_sender", f"{topic_agent!r} is a service account")
    if update.base_version > model.version:
        raise Rejected(
            "future_version",
            f"base version {update.base_version} > current version {model.version}",
        )
    shapes = {t.name: (t.shape, t.dtype) for t in update.tensors}
    expected = {name: (value.shape, value.dtype.name) for name, value in model.weights.items()}

    if shapes != expected:
        missing = sorted(set(expected) - set(shapes))
        extra = sorted(set(shapes) - set(expected))
        wrong = sorted(n for n in set(shapes) & set(expected) if shapes[n] != expected[n])
        raise Rejected(
            "tensor_mismatch",
            f"missing {missing}, unexpected {extra}, wrong shape or dtype {wrong}",
        )

    scale = 1.0
    norm = update_norm(update)  # always: NaN or Inf never reaches the model
    if not math.isfinite(norm):
        raise Rejected("norm", "update norm is not finite (NaN or Inf)")
    if clip_norm is not None and norm > clip_norm:
        if norm_policy == "reject":
            raise Rejected("norm", f"update norm {norm:.4g} exceeds {clip_norm:.4g}")
        scale = clip_norm / norm

    return Contribution(
        agent=topic_agent,
        update_id=update.update_id,
        base_version=update.base_version,
        num_samples=update.num_samples,
        tensors={t.name: t for t in update.tensors},
        scale=scale,
    )
