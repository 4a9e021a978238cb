"""The ``Codec`` interface: one tensor in, compact bytes out, and back.

Modelled on numcodecs' ``Codec`` (``codec_id``, ``encode``, ``decode``, ``get_config``,
``from_config``). Unlike numcodecs the bytes carry no header: shape and codec config travel in
the envelope, so ``decode`` takes the shape. Encoded bytes are little-endian and identical on
the compiled and the numpy backend.
"""

from __future__ import annotations

import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from codec import backend
from codec.errors import CodecConfigError, CorruptDataError, InvalidTensorError

Float32Array = npt.NDArray[np.float32]

MAX_TENSOR_ELEMENTS = 2**32 - 1
"""Element indices feed a 32-bit counter-based generator; larger tensors must be split."""

_MASK64 = 2**64 - 1

MAX_SCALE = 2.0**64
"""Largest bucket scale a quantizer encodes or accepts. Keeps every decoded value (and its
weighted sum) far from float32 overflow; a model update this large has diverged anyway."""


def tensor_key(seed: int) -> int:
    """The 64-bit generator key of a tensor encoded with ``seed``."""
    return int(backend.kernels.mix64(seed & _MASK64))


def as_float32_vector(array: npt.ArrayLike) -> Float32Array:
    """Flatten (C order) to a contiguous float32 vector, refusing what cannot be encoded."""
    values = np.asarray(array)
    if values.dtype.kind != "f":
        raise InvalidTensorError(f"expected a floating-point tensor, got dtype {values.dtype}")
    if values.size > MAX_TENSOR_ELEMENTS:
        raise InvalidTensorError(
            f"tensor has {values.size} elements; the codec takes at most {MAX_TENSOR_ELEMENTS}"
        )
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes Inf: refused below
        return np.ascontiguousarray(values, dtype=np.float32).reshape(-1)


def refuse_non_finite(values: Float32Array, original: npt.ArrayLike) -> None:
    """Raise naming the first NaN/Inf (or value beyond float32 range)."""
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        index = int(bad[0])
        found = np.asarray(original).reshape(-1)[index]
        raise InvalidTensorError(
            f"tensor holds a non-finite value at flat index {index} ({found!r}); "
            "NaN, Inf and values beyond float32 range are never encoded"
        )


def element_count(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


class Codec(ABC):
    """A compressor for one float tensor. Two codecs are equal when their configs are."""

    codec_id: ClassVar[str]
    lossless: bool = False
    """Decoding returns float32 input bit for bit."""
    stochastic: bool = False
    """Encoding draws random numbers (keyed by the seed)."""

    # --- the public interface ------------------------------------------------------------

    def encode(self, array: npt.ArrayLike, *, seed: int | None = None) -> bytes:
        """Encode a float tensor of any shape (flattened in C order).

        ``seed`` keys stochastic rounding: the same input and seed give the same bytes on
        every backend. ``None`` draws a fresh seed.
        """
        values = as_float32_vector(array)
        if seed is None:
            seed = secrets.randbits(64)
        data = self._encode(values, tensor_key(seed))
        if data is None:
            refuse_non_finite(values, array)
            raise AssertionError("kernel refused a finite tensor")  # pragma: no cover
        return data

    def decode(self, data: bytes, shape: Sequence[int]) -> Float32Array:
        """Decode to a new float32 array of ``shape``, validating the bytes first."""
        size = element_count(shape)
        view = self.validate(data, size)
        out = np.empty(size, dtype=np.float32)
        self._decode_into(view, out, 1.0, False)
        return out.reshape(tuple(shape))

    def decode_into(
        self, data: bytes, out: Float32Array, *, weight: float = 1.0, accumulate: bool = True
    ) -> None:
        """``out += weight * decoded`` (or ``=`` without ``accumulate``) in one pass.

        ``out`` is a caller-owned C-contiguous float32 array; no float copy of the update is
        made on the compiled backend, and the GIL is released while the kernel runs.
        """
        flat = writable_float32_view(out)
        view = self.validate(data, flat.shape[0])
        self._decode_into(view, flat, float(weight), accumulate)

    def validate(self, data: bytes, size: int) -> npt.NDArray[np.uint8]:
        """Check untrusted bytes against ``size`` elements; return them as a uint8 view."""
        view = np.frombuffer(data, dtype=np.uint8)
        expected = self.encoded_size(size)
        if expected is not None and view.shape[0] != expected:
            raise CorruptDataError(
                f"codec {self.codec_id!r}: {view.shape[0]} bytes for {size} elements, "
                f"expected {expected}"
            )
        self._validate(view, size)
        return view

    def encoded_size(self, size: int) -> int | None:
        """Exact byte length for ``size`` elements, or None when it depends on the data."""
        return None

    def max_encoded_size(self, size: int) -> int:
        """Upper bound of the byte length for ``size`` elements."""
        exact = self.encoded_size(size)
        assert exact is not None, "variable-size codecs override max_encoded_size"
        return exact

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """JSON-safe parameters, including ``"id"``."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Codec:
        params = dict(config)
        codec_id = params.pop("id", cls.codec_id)
        if codec_id != cls.codec_id:
            raise CodecConfigError(f"config id {codec_id!r} given to codec {cls.codec_id!r}")
        return cls(**params)

    # --- what a scheme implements --------------------------------------------------------

    @abstractmethod
    def _encode(self, values: Float32Array, key: int) -> bytes | None:
        """Encode a contiguous float32 vector; None if it holds NaN or Inf."""

    @abstractmethod
    def _validate(self, data: npt.NDArray[np.uint8], size: int) -> None:
        """Content checks beyond the length (scales finite, codes in range, ...)."""

    @abstractmethod
    def _decode_into(
        self, data: npt.NDArray[np.uint8], out: Float32Array, weight: float, accumulate: bool
    ) -> None:
        """Decode validated bytes into a float32 vector of the right size."""

    # --- equality and display ------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.get_config().items())))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({params})"


def writable_float32_view(out: np.ndarray) -> Float32Array:
    """A flat view of a caller-owned accumulation buffer, which must be float32, contiguous
    and writable (a copy would silently discard the result)."""
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise InvalidTensorError("the output buffer must be a float32 numpy array")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise InvalidTensorError("the output buffer must be C-contiguous and writable")
    return out.reshape(-1)


def check_scales(codec_id: str, scales: Float32Array) -> None:
    """Scales decoded from untrusted bytes must be in [+0, MAX_SCALE] (no -0.0, no NaN)."""
    if not (((scales >= 0) & (scales <= MAX_SCALE)) & ~np.signbit(scales)).all():
        raise CorruptDataError(
            f"codec {codec_id!r}: a bucket scale is negative, not finite or above {MAX_SCALE:g}"
        )


def zero_scale_codes_are_zero(
    codes: npt.NDArray[np.uint8], scales: Float32Array, size: int, bucket: int, bits: int
) -> bool:
    """Whether every bucket whose scale is 0 has all-zero codes, as the encoder writes them
    (so each tensor has exactly one valid encoding). Free when no bucket is zero."""
    zero = scales == 0
    if not zero.any():
        return True
    # one byte per element, whatever the bucket size
    in_zero_bucket = np.repeat(zero, bucket)[:size] if bucket <= size else np.full(size, zero[0])

    if bits == 8:
        return not codes[in_zero_bucket].any()
    fields = np.unpackbits(codes, bitorder="little")[: size * bits].reshape(size, bits)
    return not fields[in_zero_bucket].any()


def refuse_large_scales(codec_id: str, scales: Float32Array) -> None:
    """Encoder side of MAX_SCALE: refuse, naming the bucket, rather than emit garbage."""
    too_large = np.flatnonzero(~(scales <= MAX_SCALE))
    if too_large.size:
        bucket = int(too_large[0])
        raise InvalidTensorError(
            f"codec {codec_id!r}: bucket {bucket} has scale {float(scales[bucket]):g}, beyond "
            f"the quantizer's range of {MAX_SCALE:g}; encode such a tensor with fp32"
        )


def check_padding(codec_id: str, packed: npt.NDArray[np.uint8], size: int, bits: int) -> None:
    """Unused bits of the last packed byte must be zero: one valid encoding per tensor."""
    used = (size * bits) % 8
    if used and packed.shape[0] and packed[-1] >> used:
        raise CorruptDataError(f"codec {codec_id!r}: padding bits of the last byte are not zero")
