"""``sign``: scaled sign, 1 bit per element (EF-SGD's compressor).

C(p) = (||p||_1 / d) sign(p) per bucket of d elements. Biased: use it with error feedback.
Bytes: float32 scales (mean |x| of each bucket), then one bit per element, element 0 in the
lowest bit of byte 0, 1 meaning negative.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from codec import _params, backend
from codec.base import (
    Codec,
    Float32Array,
    check_padding,
    check_scales,
    refuse_large_scales,
    zero_scale_codes_are_zero,
)
from codec.errors import CorruptDataError


class ScaledSignCodec(Codec):
    codec_id = "sign"

    def __init__(self, bucket_size: int = 512) -> None:
        self.bucket_size = _params.integer(
            self.codec_id, "bucket_size", bucket_size, minimum=1, maximum=1 << 24
        )

    @classmethod
    def from_config(cls, config: Any) -> ScaledSignCodec:
        _params.check_keys(cls.codec_id, config, {"id", "bucket_size"})
        codec = super().from_config(config)
        assert isinstance(codec, ScaledSignCodec)
        return codec

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "bucket_size": self.bucket_size}

    def bucket_count(self, size: int) -> int:
        return -(-size // self.bucket_size)

    def encoded_size(self, size: int) -> int:
        return 4 * self.bucket_count(size) + (size + 7) // 8

    def _encode(self, values: Float32Array, key: int) -> bytes | None:
        encoded: bytes | None = backend.kernels.quantize_sign(values, self.bucket_size)
        if encoded is not None:
            scales = np.frombuffer(encoded, "<f4", self.bucket_count(values.shape[0]))
            refuse_large_scales(self.codec_id, scales)
        return encoded

    def _split(
        self, data: npt.NDArray[np.uint8], size: int
    ) -> tuple[Float32Array, npt.NDArray[np.uint8]]:
        cut = 4 * self.bucket_count(size)
        return data[:cut].view("<f4").astype(np.float32), data[cut:]  # aligned copy

    def _validate(self, data: npt.NDArray[np.uint8], size: int) -> None:
        scales, signs = self._split(data, size)
        check_scales(self.codec_id, scales)
        check_padding(self.codec_id, signs, size, 1)
        if not zero_scale_codes_are_zero(signs, scales, size, self.bucket_size, 1):
            raise CorruptDataError(f"codec {self.codec_id!r}: sign bits set in a zero bucket")

    def _decode_into(
        self, data: npt.NDArray[np.uint8], out: Float32Array, weight: float, accumulate: bool
    ) -> None:
        scales, signs = self._split(data, out.shape[0])
        backend.kernels.dequantize_sign(
            scales,
            signs,
            self.bucket_size,
            out,
            weight,
            accumulate,
        )
