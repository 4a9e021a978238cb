"""The numpy twin of ``_kernels.pyx``: same signatures, same float operations, same bytes.

Used where the extension is not built (a device without a compiler) or when
``FEDMQ_CODEC_BACKEND=numpy`` forces it. Work proceeds in bucket-aligned chunks so temporary
arrays stay small; results do not depend on the chunk size because every random draw is
keyed by the element's global index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

BACKEND = "numpy"

SCALE_MAX_ABS = 0
SCALE_L2 = 1

_MASK64 = (1 << 64) - 1
_HASH1 = np.uint32(0x7FEB352D)
_HASH2 = np.uint32(0x846CA68B)
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_TWO_POW_MINUS_24 = np.float32(2.0**-24)
_CHUNK_ELEMENTS = 1 << 16

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


def mix64(z: int) -> int:
    """The SplitMix64 finaliser on a Python int (wrapping at 64 bits)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _hash32(x: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """lowbias32, in place (see the C twin for why this generator)."""
    x ^= x >> np.uint32(16)
    x *= _HASH1
    x ^= x >> np.uint32(15)
    x *= _HASH2
    x ^= x >> np.uint32(16)
    return x


def _uniform(key: int, start: int, stop: int) -> F32:
    """24-bit uniforms in [0, 1) for global element indices start..stop-1."""
    low = np.arange(start, stop, dtype=np.uint32) ^ np.uint32(key & 0xFFFFFFFF)
    h = _hash32(low + np.uint32(key >> 32))
    uniform: F32 = (h >> np.uint32(8)).astype(np.float32) * _TWO_POW_MINUS_24
    return uniform


def _packed_length(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def _chunks(n: int, bucket: int) -> range:
    step = max(bucket, (_CHUNK_ELEMENTS // bucket) * bucket)
    return range(0, n, step)


def _padded_rows(x: F32, bucket: int) -> F32:
    """Rows of ``bucket`` values, the last one zero-padded (zeros change no sum or max). A
    single partial bucket is one row of its own length: memory follows the data, never a
    huge ``bucket_size``."""
    width = min(bucket, x.shape[0])
    rows = -(-x.shape[0] // width) if width else 0
    padded = np.zeros(rows * width, dtype=np.float32)
    padded[: x.shape[0]] = x
    return padded.reshape(rows, width)


def _per_element(per_bucket: npt.NDArray[np.generic], start: int, stop: int, bucket: int) -> Any:
    """Each element's bucket value for elements start..stop-1 (memory of the elements only)."""
    return per_bucket[np.arange(start, stop, dtype=np.int64) // bucket]


def _pack(q: npt.NDArray[np.int32], bits: int) -> U8:
    if bits == 8:
        return q.astype(np.int8).view(np.uint8)
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    padded = np.zeros(-(-q.shape[0] // per_byte) * per_byte, dtype=np.uint8)
    padded[: q.shape[0]] = (q & mask).astype(np.uint8)
    fields = padded.reshape(-1, per_byte)
    packed = np.zeros(fields.shape[0], dtype=np.uint8)
    for slot in range(per_byte):
        packed |= fields[:, slot] << np.uint8(slot * bits)
    return packed


def _unpack(codes: U8, n: int, bits: int) -> npt.NDArray[np.int32]:
    if bits == 8:
        return codes[:n].view(np.int8).astype(np.int32)
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    fields = np.empty((codes.shape[0], per_byte), dtype=np.int32)
    for slot in range(per_byte):
        fields[:, slot] = (codes >> np.uint8(slot * bits)) & np.uint8(mask)
    raw = fields.reshape(-1)[:n]
    return (raw ^ sign) - sign


def _check_params(bucket: int, bits: int, levels: int) -> None:
    if bucket <= 0 or bits not in (2, 4, 8) or levels < 1 or levels > (1 << (bits - 1)) - 1:
        raise ValueError("invalid quantizer parameters")


def quantize(
    x: F32,
    bucket: int,
    levels: int,
    bits: int,
    scale_mode: int,
    stochastic: bool,
    key: int,
) -> bytes | None:
    n = x.shape[0]
    _check_params(bucket, bits, levels)
    if not np.isfinite(x).all():
        return None
    scales = np.zeros(-(-n // bucket), dtype=np.float32)
    flevels = np.float32(levels)
    q_all = np.zeros(n, dtype=np.int32)
    for start in _chunks(n, bucket):
        stop = min(start + _chunks(n, bucket).step, n)
        rows = _padded_rows(x[start:stop], bucket)
        if scale_mode == SCALE_MAX_ABS:
            scale = np.abs(rows).max(axis=1)
        else:
            wide = np.abs(rows).astype(np.float64)
            with np.errstate(over="ignore"):  # an Inf norm is refused by the caller
                scale = np.sqrt(np.cumsum(wide * wide, axis=1)[:, -1]).astype(np.float32)
        scales[start // bucket : start // bucket + rows.shape[0]] = scale
        safe = np.where(scale == 0, np.float32(1), scale)[:, None]
        # levels / scale overflows for a subnormal scale: divide, exactly, instead (both
        # branches are computed, so silence the overflow of the one np.where discards).
        with np.errstate(over="ignore", invalid="ignore"):
            inverse = flevels / safe
            y = np.where(inverse <= _FLT_MAX, rows * inverse, (rows / safe) * flevels)
        y = y.reshape(-1)[: stop - start]
        if stochastic:
            floor = np.floor(y)
            q = floor.astype(np.int32) + (_uniform(key, start, stop) < (y - floor))
        else:
            q = np.rint(y).astype(np.int32)
        q = np.clip(q, -levels, levels)  # a zero bucket holds only zeros: its codes are 0
        q_all[start:stop] = q
    return scales.astype("<f4").tobytes() + _pack(q_all, bits).tobytes()


def dequantize(
    scales: F32,
    codes: U8,
    bucket: int,
    levels: int,
    bits: int,
    out: F32,
    weight: float,
    accumulate: bool,
) -> None:
    n = out.shape[0]
    if bucket <= 0 or bits not in (2, 4, 8) or levels < 1:
        raise ValueError("invalid quantizer parameters")
    if scales.shape[0] != -(-n // bucket) or codes.shape[0] != _packed_length(n, bits):
        raise ValueError("input buffers have the wrong size")
    step_all = np.float32(weight) * (scales / np.float32(levels))
    chunk = _chunks(n, bucket).step
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        q = _unpack(codes[start * bits // 8 : _packed_length(stop, bits)], stop - start, bits)
        steps = _per_element(step_all, start, stop, bucket)
        with np.errstate(over="ignore"):  # as the C kernel: a huge weight gives Inf, no warning
            values = steps * q.astype(np.float32)
        if accumulate:
            out[start:stop] += values
        else:
            out[start:stop] = values


def max_abs_code(codes: U8, n: int, bits: int) -> int:
    if bits not in (2, 4, 8) or codes.shape[0] != _packed_length(n, bits):
        raise ValueError("invalid code buffer")
    if n == 0:
        return 0
    return int(np.abs(_unpack(codes, n, bits)).max())


def quantize_sign(x: F32, bucket: int) -> bytes | None:
    n = x.shape[0]
    if bucket <= 0:
        raise ValueError("invalid bucket size")
    if not np.isfinite(x).all():
        return None
    if n == 0:
        return b""
    rows = _padded_rows(x, bucket).astype(np.float64)
    sums = np.cumsum(np.abs(rows), axis=1)[:, -1]
    counts = np.full(rows.shape[0], bucket, dtype=np.float64)
    counts[-1] = n - (rows.shape[0] - 1) * bucket
    scales = (sums / counts).astype("<f4")
    negative = (x < 0) & _per_element(scales != 0, 0, n, bucket)  # zero buckets: bits clear
    return scales.tobytes() + np.packbits(negative, bitorder="little").tobytes()


def dequantize_sign(
    scales: F32, signs: U8, bucket: int, out: F32, weight: float, accumulate: bool
) -> None:
    n = out.shape[0]
    if bucket <= 0:
        raise ValueError("invalid bucket size")
    if scales.shape[0] != -(-n // bucket) or signs.shape[0] != _packed_length(n, 1):
        raise ValueError("input buffers have the wrong size")
    steps = _per_element(np.float32(weight) * scales, 0, n, bucket)
    negative = np.unpackbits(signs, bitorder="little", count=n).astype(bool)
    values = np.where(negative, -steps, steps)
    if accumulate:
        out += values
    else:
        out[:] = values


def float32_bytes(x: F32) -> bytes | None:
    if not np.isfinite(x).all():
        return None
    return x.astype("<f4", copy=False).tobytes()


def accumulate_float(data: U8, itemsize: int, out: F32, weight: float, accumulate: bool) -> None:
    n = out.shape[0]
    if itemsize not in (2, 4) or data.shape[0] != n * itemsize:
        raise ValueError("invalid float buffer")
    dtype = np.dtype("<f4") if itemsize == 4 else np.dtype("<f2")
    values = np.float32(weight) * data.view(dtype).astype(np.float32)
    if accumulate:
        out += values
    else:
        out[:] = values


def encode_varints(values: I64) -> bytes:
    if values.shape[0] == 0:
        return b""
    if (values < 0).any():
        raise ValueError("varints must be non-negative")
    v = values.astype(np.uint64)
    lengths = np.ones(v.shape[0], dtype=np.int64)
    for shift in range(7, 64, 7):
        lengths += v >= np.uint64(1 << shift)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for byte in range(int(lengths.max())):
        present = lengths > byte
        chunk = (v[present] >> np.uint64(7 * byte)) & np.uint64(0x7F)
        more = (lengths[present] > byte + 1).astype(np.uint64) << np.uint64(7)
        out[offsets[present] + byte] = (chunk | more).astype(np.uint8)
    return out.tobytes()


def decode_varints(data: U8, out: I64, max_bytes: int) -> str | None:
    k = out.shape[0]
    terminal = np.flatnonzero((data & 0x80) == 0)
    if terminal.shape[0] < k:
        return "index data ends inside a varint"
    if k == 0:
        return None if data.shape[0] == 0 else "index data has trailing bytes"
    ends = terminal[:k]
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > max_bytes:
        return f"index varint longer than {max_bytes} bytes"
    if ((data[ends] == 0) & (lengths > 1)).any():
        return "index varint is not in canonical form"
    if ends[-1] + 1 != data.shape[0]:
        return "index data has trailing bytes"
    values = np.zeros(k, dtype=np.uint64)
    for byte in range(int(lengths.max())):
        present = lengths > byte
        chunk = (data[starts[present] + byte] & 0x7F).astype(np.uint64)
        values[present] |= chunk << np.uint64(7 * byte)
    out[:] = values.astype(np.int64)
    return None
