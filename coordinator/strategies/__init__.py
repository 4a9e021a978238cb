"""Aggregation strategies, one file each, behind ``Strategy`` (``base``); their pure maths
(staleness weights, weighted averages) is in ``weights``."""

from __future__ import annotations

from configs.coordinator import (
    FedAsyncSettings,
    FedAvgSettings,
    FedBuffSettings,
    StrategySettings,
)
from coordinator.strategies.base import Contribution, GlobalModel, Outcome, Strategy
from coordinator.strategies.fedasync import FedAsync
from coordinator.strategies.fedavg import FedAvg
from coordinator.strategies.fedbuff import FedBuff


def make_strategy(settings: StrategySettings, model: GlobalModel) -> Strategy:
    if isinstance(settings, FedBuffSettings):
        return FedBuff(settings, model)
    if isinstance(settings, FedAsyncSettings):
        return FedAsync(settings, model)
    if isinstance(settings, FedAvgSettings):
        return FedAvg(settings, model)
    raise TypeError(f"no strategy for {settings!r}")  # pragma: no cover - pydantic guards


__all__ = ["Contribution", "GlobalModel", "Outcome", "Strategy", "make_strategy"]
