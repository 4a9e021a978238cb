"""``qsgd``: QSGD (Alistarh et al. 2017) with s levels and an L2-norm scale per bucket.

Q(v_i) = ||v|| sgn(v_i) xi_i, xi_i in {l/s, (l+1)/s}, rounded up with probability
|v_i| s / ||v|| - l: unbiased, variance <= min(n/s^2, sqrt(n)/s) ||v||^2 per bucket of n.
Codes are packed 2, 4 or 8 bits wide, the narrowest that holds +-s.
"""

from __future__ import annotations

from typing import Any

from codec import _params, backend
from codec._bucketed import BucketedQuantizer


def code_bits(levels: int) -> int:
    """The narrowest supported width whose signed range holds +-levels."""
    return next(bits for bits in (2, 4, 8) if levels <= (1 << (bits - 1)) - 1)


class QSGDCodec(BucketedQuantizer):
    codec_id = "qsgd"
    stochastic = True

    def __init__(self, levels: int = 127, bucket_size: int = 512) -> None:
        self.levels = _params.integer(self.codec_id, "levels", levels, minimum=1, maximum=127)
        self.bucket_size = _params.integer(
            self.codec_id, "bucket_size", bucket_size, minimum=1, maximum=1 << 24
        )
        self.bits = code_bits(self.levels)
        self.scale_mode = backend.kernels.SCALE_L2

    @classmethod
    def from_config(cls, config: Any) -> QSGDCodec:
        _params.check_keys(cls.codec_id, config, {"id", "levels", "bucket_size"})
        codec = super().from_config(config)
        assert isinstance(codec, QSGDCodec)
        return codec

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "levels": self.levels, "bucket_size": self.bucket_size}
