"""Error feedback (Karimireddy et al. 2019): what compression dropped is added to the next
update, so biased compressors (sign, top-k) still converge.

p = update + e; sent = C(p); e = p - decompress(sent). The residual stays on the device
across rounds (and, with issue 4, across restarts)."""

from __future__ import annotations

import numpy as np

from common.tasks.models import Weights


class ErrorFeedback:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.residual: Weights = {}

    def corrected(self, update: Weights) -> Weights:
        """update + residual (the residual of a tensor not seen before is zero)."""
        if not self.enabled:
            return update
        return {
            name: value + self.residual[name] if name in self.residual else value
            for name, value in update.items()
        }

    def record(self, corrected: Weights, sent: Weights | None) -> None:
        """After a round: keep what was not sent (all of it if the upload was skipped)."""
        if not self.enabled:
            return
        if sent is None:
            self.residual = {name: value.copy() for name, value in corrected.items()}
            return
        self.residual = {
            name: (corrected[name] - sent[name]).astype(np.float32) for name in corrected
        }
