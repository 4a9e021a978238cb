"""Synchronous FedAvg rounds with a deadline and a quorum.

A round collects updates trained from the current version. It closes when every expected
agent has answered, or, with a deadline, when the deadline has passed and at least
``min_quorum`` have answered (short of a quorum it waits on). The model then moves by
server_lr x sum(n_i delta_i) / sum(n_i). An update from an earlier round is dropped with
reason "late", or, with ``late_updates: apply``, added to the current round as stale
(discounted by (1 + s)^-1/2, within ``max_staleness``). One update per agent per round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from configs.coordinator import FedAvgSettings
from coordinator.strategies.base import (
    Contribution,
    GlobalModel,
    Outcome,
    Strategy,
    Weights,
    restore_sums,
)
from coordinator.strategies.weights import fedbuff_staleness_weight, sample_weight


class FedAvg(Strategy):
    name = "fedavg"

    def __init__(self, settings: FedAvgSettings, model: GlobalModel) -> None:
        super().__init__(model)
        self.settings = settings
        self._expected = settings.expected_agents or 1
        self._deadline: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._sums = self.model.zeros_like()
        self._samples = 0
        self._agents: set[str] = set()

    @property
    def buffered(self) -> int:
        return len(self._agents)

    @property
    def deadline(self) -> float | None:
        return self._deadline

    def start_round(self, now: float, agents_online: int) -> None:
        self._expected = self.settings.expected_agents or max(1, agents_online)
        deadline = self.settings.deadline_seconds
        self._deadline = None if deadline is None else now + deadline

    def agents_online_changed(self, agents_online: int) -> None:
        """Without a configured count, a round expects the agents online now (a round
        started before anyone connected must not close on the first update)."""
        if self.settings.expected_agents is None:
            self._expected = max(1, agents_online)

    def apply(self, contribution: Contribution, now: float) -> Outcome:
        staleness = self.staleness(contribution)
        if staleness > 0 and self.settings.late_updates == "drop":
            return Outcome(False, staleness, "late")
        if staleness > self.settings.max_staleness:
            return Outcome(False, staleness, "stale")
        if contribution.agent in self._agents:
            return Outcome(False, staleness, "already_in_round")
        weight = sample_weight(contribution.num_samples, fedbuff_staleness_weight(staleness))
        contribution.add_to(self._sums, weight)
        self._samples += contribution.num_samples
        self._agents.add(contribution.agent)
        closed = self._close_if_due(now)
        return Outcome(True, staleness, new_version=closed)

    def export_state(self) -> tuple[dict[str, Any], Weights]:
        fields = {
            "expected": self._expected,
            "deadline": self._deadline,
            "samples": self._samples,
            "agents": sorted(self._agents),
        }
        return fields, self._sums

    def restore_state(self, fields: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
        self._expected = int(fields["expected"])
        deadline = fields["deadline"]
        self._deadline = None if deadline is None else float(deadline)
        self._samples = int(fields["samples"])
        self._agents = {str(agent) for agent in fields["agents"]}
        self._sums = restore_sums(self.model, arrays)

    def due(self, now: float) -> bool:
        answered = len(self._agents)
        everyone = answered >= self._expected
        past_deadline = self._deadline is not None and now >= self._deadline
        return bool(answered) and (
            everyone or (past_deadline and answered >= self.settings.min_quorum)
        )

    def tick(self, now: float) -> bool:
        return self._close_if_due(now)

    def _close_if_due(self, now: float) -> bool:
        if not self.due(now):
            return False

        self._step(self._sums, self._samples, self.settings.server_learning_rate)
        self._reset()
        self._deadline = None  # the service starts the next round when it publishes
        return True
