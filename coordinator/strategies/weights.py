"""The pure maths of aggregation: staleness weights and weighted averages.

Formulas from the papers (see ../shared notes): FedBuff (Nguyen et al. 2022) weighs an
update by (1 + s)^-1/2; FedAsync (Xie et al. 2019) mixes with a * s(t - tau) for constant,
polynomial and hinge s.
"""

from __future__ import annotations

import math


def fedbuff_staleness_weight(staleness: int) -> float:
    """(1 + s)^-1/2."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return 1.0 / math.sqrt(1.0 + staleness)


def fedasync_staleness_weight(
    staleness: int, function: str, *, exponent: float = 0.5, a: float = 10.0, b: int = 4
) -> float:
    """s(t - tau): constant 1; polynomial (s + 1)^-p; hinge 1 if s <= b else
    1 / (a (s - b) + 1)."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if function == "constant":
        return 1.0
    if function == "polynomial":
        return float((staleness + 1.0) ** -exponent)
    if function == "hinge":
        return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)
    raise ValueError(f"unknown staleness function {function!r}")


def sample_weight(num_samples: int, staleness_weight: float) -> float:
    """What one update contributes to a buffered sum: its sample count, discounted.

    The sum is normalised by the buffered sample counts alone (``sum n_i``), so a stale
    update really moves the model less, and two updates from one device never count as two
    devices' worth (the NVFlare #4899 pitfall: weigh by samples, not by update)."""
    return num_samples * staleness_weight
