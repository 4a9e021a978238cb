"""Plain float codecs: ``fp32`` (lossless for float32 input) and ``fp16`` (half the size)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from codec import _params, backend
from codec.base import Codec, Float32Array
from codec.errors import CorruptDataError, InvalidTensorError

FLOAT16_MAX = 65504.0


class _FloatCodec(Codec):
    itemsize: int
    wire_dtype: np.dtype[Any]

    def __init__(self) -> None:
        pass

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id}

    @classmethod
    def from_config(cls, config: Any) -> Codec:
        _params.check_keys(cls.codec_id, config, {"id"})
        return super().from_config(config)

    def encoded_size(self, size: int) -> int:
        return size * self.itemsize

    def _validate(self, data: npt.NDArray[np.uint8], size: int) -> None:
        if not np.isfinite(data.view(self.wire_dtype)).all():
            raise CorruptDataError(f"codec {self.codec_id!r}: data holds NaN or Inf")

    def _decode_into(
        self, data: npt.NDArray[np.uint8], out: Float32Array, weight: float, accumulate: bool
    ) -> None:
        backend.kernels.accumulate_float(data, self.itemsize, out, weight, accumulate)


class Float32Codec(_FloatCodec):
    """IEEE float32, little-endian: bit-exact for float32 input."""

    codec_id = "fp32"
    lossless = True
    itemsize = 4
    wire_dtype = np.dtype("<f4")

    def _encode(self, values: Float32Array, key: int) -> bytes | None:
        encoded: bytes | None = backend.kernels.float32_bytes(values)
        return encoded


class Float16Codec(_FloatCodec):
    """IEEE float16, little-endian, round to nearest even; a value that rounds beyond the
    largest half (+-65504, i.e. |x| >= 65520) is refused rather than sent as Inf."""

    codec_id = "fp16"
    itemsize = 2
    wire_dtype = np.dtype("<f2")

    def _encode(self, values: Float32Array, key: int) -> bytes | None:
        if not np.isfinite(values).all():
            return None
        with np.errstate(over="ignore"):
            half = values.astype(self.wire_dtype)
        if not np.isfinite(half).all():
            index = int(np.flatnonzero(~np.isfinite(half))[0])
            raise InvalidTensorError(
                f"value {values[index]!r} at flat index {index} is beyond float16 range "
                f"(+-{FLOAT16_MAX:g}); use fp32 or a quantizer"
            )
        return half.tobytes()
