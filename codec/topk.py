"""``topk``: keep the k = round(fraction * n) largest |x| (at least 1), encode their values
with a nested value codec (default: 8-bit stochastic uniform), and their positions compactly.

Bytes: one mode byte (0: bitmap of n bits, element 0 in the lowest bit; 1: LEB128 varints of
the gaps between ascending indices, the first gap being the first index), the index bytes,
then the k values encoded by the value codec. The varint form is used exactly when it is
shorter than the bitmap; a decoder refuses the other form, so every tensor has one encoding.
Ties in |x| at the threshold keep the lower indices, so the selection is deterministic.
||x - topk(x)||^2 <= (1 - k/n) ||x||^2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from codec import _params, backend
from codec.base import Codec, Float32Array, check_padding
from codec.errors import CodecConfigError, CorruptDataError

BITMAP = 0
VARINT = 1
MAX_VARINT_BYTES = 5  # gaps are below 2^32


def select_topk(values: Float32Array, k: int) -> npt.NDArray[np.int64]:
    """Ascending indices of the k largest |values|, ties broken towards lower indices."""
    size = values.shape[0]
    if k >= size:
        return np.arange(size, dtype=np.int64)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    magnitude = np.abs(values)
    threshold = np.partition(magnitude, size - k)[size - k]
    above = np.flatnonzero(magnitude > threshold)
    ties = np.flatnonzero(magnitude == threshold)[: k - above.shape[0]]
    return np.sort(np.concatenate((above, ties))).astype(np.int64)


def _varints(indices: npt.NDArray[np.int64]) -> bytes:
    """The varint index form: LEB128 of the gaps (first gap = first index)."""
    gaps = np.diff(indices, prepend=-1) - 1
    encoded: bytes = backend.kernels.encode_varints(np.ascontiguousarray(gaps, dtype=np.int64))
    return encoded


class TopKCodec(Codec):
    codec_id = "topk"

    def __init__(self, fraction: float = 0.01, values: Codec | Mapping[str, Any] | None = None):
        self.fraction = _params.number(self.codec_id, "fraction", fraction, above=0.0, maximum=1.0)
        if values is None:
            from codec.uniform import UniformCodec

            values = UniformCodec(bits=8)
        elif not isinstance(values, Codec):
            from codec.registry import get_codec

            if isinstance(values, Mapping) and values.get("id") == self.codec_id:
                # refused before building it: nesting must not recurse without bound
                raise CodecConfigError(f"codec {self.codec_id!r}: values cannot be topk")
            values = get_codec(values)
        if values.encoded_size(1) is None:
            raise CodecConfigError(
                f"codec {self.codec_id!r}: values must be a fixed-size codec, "
                f"not {values.codec_id!r}"
            )
        self.values = values
        self.stochastic = values.stochastic

    @classmethod
    def from_config(cls, config: Any) -> TopKCodec:
        _params.check_keys(cls.codec_id, config, {"id", "fraction", "values"})
        codec = super().from_config(config)
        assert isinstance(codec, TopKCodec)
        return codec

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "fraction": self.fraction, "values": self.values.get_config()}

    def kept(self, size: int) -> int:
        """k for ``size`` elements: fraction * size (binary64) rounded half to even, clamped
        to [1, size]. Rounding, not ceil: 0.07 * 100 is 7.000000000000001 in binary64."""
        return 0 if size == 0 else min(size, max(1, round(self.fraction * size)))

    def _values_size(self, size: int) -> int:
        exact = self.values.encoded_size(self.kept(size))
        assert exact is not None
        return exact

    def max_encoded_size(self, size: int) -> int:
        return 1 + (size + 7) // 8 + self._values_size(size)

    # --- encode --------------------------------------------------------------------------

    def _encode(self, values: Float32Array, key: int) -> bytes | None:
        if not np.isfinite(values).all():
            return None
        size = values.shape[0]
        indices = select_topk(values, self.kept(size))
        varints = _varints(indices)
        bitmap_length = (size + 7) // 8
        if len(varints) < bitmap_length:
            index_bytes = bytes([VARINT]) + varints
        else:
            mask = np.zeros(size, dtype=bool)
            mask[indices] = True
            index_bytes = bytes([BITMAP]) + np.packbits(mask, bitorder="little").tobytes()
        kept_values = np.ascontiguousarray(values[indices])
        encoded = self.values._encode(kept_values, key)
        assert encoded is not None  # finite input
        return index_bytes + encoded

    # --- decode --------------------------------------------------------------------------

    def _parse(
        self, data: npt.NDArray[np.uint8], size: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """Indices and value bytes of validated-length data (raises CorruptDataError)."""
        k = self.kept(size)
        values_size = self._values_size(size)
        if data.shape[0] < 1 + values_size:
            raise CorruptDataError(
                f"codec {self.codec_id!r}: {data.shape[0]} bytes cannot hold {k} values"
            )
        mode = int(data[0])
        index_bytes = data[1 : data.shape[0] - values_size]
        value_bytes = data[data.shape[0] - values_size :]
        if mode == BITMAP:
            if index_bytes.shape[0] != (size + 7) // 8:
                raise CorruptDataError(
                    f"codec {self.codec_id!r}: bitmap of {index_bytes.shape[0]} bytes "
                    f"for {size} elements"
                )
            check_padding(self.codec_id, index_bytes, size, 1)
            indices = np.flatnonzero(
                np.unpackbits(index_bytes, bitorder="little", count=size)
            ).astype(np.int64)
            if indices.shape[0] != k:
                raise CorruptDataError(
                    f"codec {self.codec_id!r}: bitmap marks {indices.shape[0]} elements, "
                    f"expected {k}"
                )
            if len(_varints(indices)) < index_bytes.shape[0]:
                raise CorruptDataError(
                    f"codec {self.codec_id!r}: a bitmap where varint indices are smaller"
                )
        elif mode == VARINT:
            gaps = np.empty(k, dtype=np.int64)
            problem = backend.kernels.decode_varints(
                np.ascontiguousarray(index_bytes), gaps, MAX_VARINT_BYTES
            )
            if problem is not None:
                raise CorruptDataError(f"codec {self.codec_id!r}: {problem}")
            indices = np.cumsum(gaps + 1) - 1
            if k and indices[-1] >= size:
                raise CorruptDataError(
                    f"codec {self.codec_id!r}: index {int(indices[-1])} out of range for "
                    f"{size} elements"
                )
            if index_bytes.shape[0] >= (size + 7) // 8:
                raise CorruptDataError(
                    f"codec {self.codec_id!r}: varint indices where the bitmap is smaller"
                )
        else:
            raise CorruptDataError(f"codec {self.codec_id!r}: unknown index mode {mode}")
        return indices, value_bytes

    def _validate(self, data: npt.NDArray[np.uint8], size: int) -> None:
        if data.shape[0] > self.max_encoded_size(size):
            raise CorruptDataError(
                f"codec {self.codec_id!r}: {data.shape[0]} bytes exceed the maximum "
                f"{self.max_encoded_size(size)} for {size} elements"
            )
        _, value_bytes = self._parse(data, size)
        self.values.validate(value_bytes.tobytes(), self.kept(size))

    def _decode_into(
        self, data: npt.NDArray[np.uint8], out: Float32Array, weight: float, accumulate: bool
    ) -> None:
        indices, value_bytes = self._parse(data, out.shape[0])
        kept = np.empty(indices.shape[0], dtype=np.float32)
        self.values._decode_into(value_bytes, kept, weight, False)
        if accumulate:
            out[indices] += kept
        else:
            out[:] = 0
            out[indices] = kept  # assignment keeps a kept -0.0 negative
