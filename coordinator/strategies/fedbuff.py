"""FedBuff (Nguyen et al., AISTATS 2022): buffer K updates, then take one server step.

Each update adds num_samples x (1 + staleness)^-1/2 times its delta into the buffer; after K
updates the model moves by server_lr x buffer / (sum of their num_samples).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from configs.coordinator import FedBuffSettings
from coordinator.strategies.base import (
    Contribution,
    GlobalModel,
    Outcome,
    Strategy,
    Weights,
    restore_sums,
)
from coordinator.strategies.weights import fedbuff_staleness_weight, sample_weight


class FedBuff(Strategy):
    name = "fedbuff"

    def __init__(self, settings: FedBuffSettings, model: GlobalModel) -> None:
        super().__init__(model)
        self.settings = settings
        self._sums = model.zeros_like()
        self._samples = 0
        self._count = 0

    @property
    def buffered(self) -> int:
        return self._count

    def export_state(self) -> tuple[dict[str, Any], Weights]:
        return {"samples": self._samples, "count": self._count}, self._sums

    def restore_state(self, fields: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
        self._samples, self._count = int(fields["samples"]), int(fields["count"])
        self._sums = restore_sums(self.model, arrays)

    def apply(self, contribution: Contribution, now: float) -> Outcome:
        staleness = self.staleness(contribution)
        if staleness > self.settings.max_staleness:
            return Outcome(False, staleness, "stale")
        weight = sample_weight(contribution.num_samples, fedbuff_staleness_weight(staleness))
        contribution.add_to(self._sums, weight)
        self._samples += contribution.num_samples
        self._count += 1
        if self._count < self.settings.buffer_size:
            return Outcome(True, staleness)
        self._step(self._sums, self._samples, self.settings.server_learning_rate)
        self._sums = self.model.zeros_like()
        self._samples = self._count = 0
        return Outcome(True, staleness, new_version=True)
