"""LAQ's lazy-upload rule (Sun et al., NeurIPS 2019), adapted to model deltas.

Upload only if ||Q(u_k) - Q(u_last)||^2 >= scale * (weight / D) * sum_{d<=D} ||theta_d -
theta_{d-1}||^2 + 3 (e_k + e_last), where theta are the last D global versions this device
saw, Q(u) the quantized update, e the quantization errors ||Q(u) - u||^2; or if the device
skipped ``max_skips`` times in a row (forced upload). A skipped update is not lost: error
feedback carries it into the next round."""

from __future__ import annotations

from collections import deque

import numpy as np

from common.messages import LazyUpload
from common.tasks.models import Weights


def squared_norm(weights: Weights) -> float:
    return float(sum(np.dot(v.ravel().astype(np.float64), v.ravel()) for v in weights.values()))


def difference(a: Weights, b: Weights) -> Weights:
    return {name: a[name] - b[name] for name in a}


class LazyUploader:
    def __init__(self) -> None:
        self.movements: deque[float] = deque(maxlen=100)
        self._previous_model: Weights | None = None
        self._last_sent: Weights | None = None
        self._last_error = 0.0
        self.skips = 0

    def observe_model(self, weights: Weights) -> None:
        if self._previous_model is not None and set(weights) == set(self._previous_model):
            self.movements.append(squared_norm(difference(weights, self._previous_model)))
        self._previous_model = weights

    def should_upload(self, settings: LazyUpload, sent: Weights, error: float) -> bool:
        """Decide for this round's quantized update ``sent`` (error = ||Q(u) - u||^2)."""
        if not settings.enabled or self._last_sent is None or self.skips >= settings.max_skips:
            return self._uploaded(sent, error)
        recent = list(self.movements)[-settings.history :]
        movement = settings.weight / settings.history * sum(recent)
        threshold = settings.scale * movement + 3.0 * (error + self._last_error)
        if squared_norm(difference(sent, self._last_sent)) >= threshold:
            return self._uploaded(sent, error)
        self.skips += 1
        return False

    def _uploaded(self, sent: Weights, error: float) -> bool:
        self._last_sent = sent
        self._last_error = error
        self.skips = 0
        return True
