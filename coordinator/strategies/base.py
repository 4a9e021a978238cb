"""What every strategy works on: the global model, a validated contribution, the outcome.

A strategy is plain in-memory code, called from a worker thread (never the event loop):
``apply`` one validated contribution, ``tick`` for time-based decisions (deadlines).
The loop, the transport and the validation live elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from codec import EncodedTensor

Weights = dict[str, npt.NDArray[np.float32]]


@dataclass
class GlobalModel:
    version: int
    weights: Weights

    def zeros_like(self) -> Weights:
        return {name: np.zeros_like(value) for name, value in self.weights.items()}


def restore_sums(model: GlobalModel, arrays: Mapping[str, Any]) -> Weights:
    """A persisted buffer, checked against the model's tensors (ValueError if it differs)."""
    sums: Weights = {}
    for name, value in model.weights.items():
        stored = arrays.get(name)
        if stored is None or stored.shape != value.shape:
            raise ValueError(f"buffer tensor {name!r} missing or of another shape")
        sums[name] = np.array(stored, dtype=np.float32)
    if set(arrays) - set(model.weights):
        raise ValueError(
            f"buffer has tensors the model lacks: {sorted(set(arrays) - set(model.weights))}"
        )
    return sums


@dataclass(frozen=True)
class Contribution:
    """A validated update: names and shapes match the model, base version known."""

    agent: str
    update_id: str
    base_version: int
    num_samples: int
    tensors: Mapping[str, EncodedTensor]
    scale: float = 1.0  # < 1 when the coordinator clipped the update's norm

    def add_to(self, sums: Weights, weight: float) -> None:
        """sums += weight * delta, tensor by tensor, decoding straight into the buffers."""
        for name, tensor in self.tensors.items():
            tensor.accumulate_into(sums[name], weight * self.scale)


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    staleness: int
    reason: str | None = None
    new_version: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    name: ClassVar[str]

    def __init__(self, model: GlobalModel) -> None:
        self.model = model

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def buffered(self) -> int:
        """Updates held for the next version."""
        return 0

    def staleness(self, contribution: Contribution) -> int:
        return self.model.version - contribution.base_version

    @abstractmethod
    def apply(self, contribution: Contribution, now: float) -> Outcome:
        """Take one contribution; may produce a new version."""

    def due(self, now: float) -> bool:
        """Would ``tick(now)`` make a new version? (Pure: the service journals the tick
        before it lets it happen.)"""
        return False

    def tick(self, now: float) -> bool:
        """Time passes; True if that produced a new version."""
        return False

    def export_state(self) -> tuple[dict[str, Any], Weights]:
        """Everything but the model that the next version depends on (buffers, round
        state), as JSON-able fields and arrays: persisted with the coordinator's state."""
        return {}, {}

    def restore_state(self, fields: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:  # noqa: B027
        """The inverse of ``export_state`` (on a restart)."""

    def start_round(self, now: float, agents_online: int) -> None:  # noqa: B027
        """A new version was published (sync strategies start a round; others need not)."""

    def agents_online_changed(self, agents_online: int) -> None:  # noqa: B027
        """Agents joined or left (a sync round may expect a different number)."""

    def _step(self, sums: Weights, normaliser: float, learning_rate: float) -> None:
        """weights += learning_rate * sums / normaliser; a new version."""
        factor = np.float32(learning_rate / normaliser)
        for name, total in sums.items():
            self.model.weights[name] += factor * total
        self.model.version += 1
