"""FedAsync (Xie et al., 2019): every update makes a new version at once.

x_t = (1 - a_t) x_{t-1} + a_t x_new with a_t = a s(t - tau). With deltas, x_new is taken as
x_{t-1} + delta (the update applied to the current model), which gives x_t = x_{t-1} +
a_t delta and needs no history of old versions.
"""

from __future__ import annotations

from configs.coordinator import FedAsyncSettings
from coordinator.strategies.base import Contribution, GlobalModel, Outcome, Strategy
from coordinator.strategies.weights import fedasync_staleness_weight


class FedAsync(Strategy):
    name = "fedasync"

    def __init__(self, settings: FedAsyncSettings, model: GlobalModel) -> None:
        super().__init__(model)
        self.settings = settings

    def apply(self, contribution: Contribution, now: float) -> Outcome:
        staleness = self.staleness(contribution)
        if staleness > self.settings.max_staleness:
            return Outcome(False, staleness, "stale")
        s = self.settings
        mixing = s.mixing * fedasync_staleness_weight(
            staleness, s.staleness_function, exponent=s.exponent, a=s.hinge_a, b=s.hinge_b
        )
        sums = self.model.zeros_like()
        contribution.add_to(sums, 1.0)
        self._step(sums, 1.0, mixing)
        return Outcome(True, staleness, new_version=True, detail={"mixing": mixing})
