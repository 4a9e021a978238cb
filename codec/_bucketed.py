"""Shared layout of the bucketed quantizers (``uniform``, ``qsgd``).

Bytes: ``ceil(n / bucket)`` float32 scales (little-endian), then the ``n`` signed codes packed
``bits`` wide, element 0 in the lowest bits of byte 0, two's complement. An element decodes
to ``code * (scale / levels)`` (float32; for scales below ~1e-36 the step is subnormal and
loses precision, irrelevant for model updates).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from codec import backend
from codec.base import (
    Codec,
    Float32Array,
    check_padding,
    check_scales,
    refuse_large_scales,
    zero_scale_codes_are_zero,
)
from codec.errors import CorruptDataError


class BucketedQuantizer(Codec):
    """A symmetric quantizer with one float32 scale per bucket of consecutive elements."""

    bits: int
    levels: int
    bucket_size: int
    scale_mode: int

    def bucket_count(self, size: int) -> int:
        return -(-size // self.bucket_size)

    def encoded_size(self, size: int) -> int:
        return 4 * self.bucket_count(size) + (size * self.bits + 7) // 8

    def _encode(self, values: Float32Array, key: int) -> bytes | None:
        encoded: bytes | None = backend.kernels.quantize(
            values,
            self.bucket_size,
            self.levels,
            self.bits,
            self.scale_mode,
            self.stochastic,
            key,
        )
        if encoded is not None:
            cut = 4 * self.bucket_count(values.shape[0])
            refuse_large_scales(self.codec_id, np.frombuffer(encoded, "<f4", cut // 4))
        return encoded

    def _split(
        self, data: npt.NDArray[np.uint8], size: int
    ) -> tuple[Float32Array, npt.NDArray[np.uint8]]:
        cut = 4 * self.bucket_count(size)
        return data[:cut].view("<f4").astype(np.float32), data[cut:]  # aligned copy

    def _validate(self, data: npt.NDArray[np.uint8], size: int) -> None:
        scales, codes = self._split(data, size)
        check_scales(self.codec_id, scales)
        check_padding(self.codec_id, codes, size, self.bits)
        if not zero_scale_codes_are_zero(codes, scales, size, self.bucket_size, self.bits):
            raise CorruptDataError(f"codec {self.codec_id!r}: non-zero codes in a zero bucket")
        largest = backend.kernels.max_abs_code(codes, size, self.bits)
        if largest > self.levels:
            raise CorruptDataError(
                f"codec {self.codec_id!r}: code magnitude {largest} exceeds {self.levels} levels"
            )

    def _decode_into(
        self, data: npt.NDArray[np.uint8], out: Float32Array, weight: float, accumulate: bool
    ) -> None:
        scales, codes = self._split(data, out.shape[0])
        backend.kernels.dequantize(
            scales,
            codes,
            self.bucket_size,
            self.levels,
            self.bits,
            out,
            weight,
            accumulate,
        )

    def get_config(self) -> dict[str, Any]:  # pragma: no cover - schemes override
        raise NotImplementedError
