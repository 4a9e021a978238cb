# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled hot loops of the codec.

Every function here has a numpy twin in ``_kernels_numpy.py`` with the same signature and
the same floating-point operations in the same order, so both backends produce identical
bytes. The extension is compiled with ``-ffp-contract=off``: a fused multiply-add would round
differently from numpy (GCC fuses by default on aarch64, i.e. on a Jetson).

Callers (the scheme modules) validate sizes first; the checks here only keep memory safe.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy, memset

import numpy as np

cdef extern from "_simd.h" nogil:
    uint64_t fedmq_mix64(uint64_t z)
    uint32_t fedmq_max_abs_bits(const float* x, int64_t count)
    void fedmq_quantize_run(const float* x, float* y, int64_t start, int64_t count,
                            float scale, int levels, int bits, int stochastic, uint64_t key,
                            uint8_t* codes)
    float fedmq_half_to_float(uint16_t h)
    float fabsf(float y)
    double sqrt(double y)
    float FLT_MAX

BACKEND = "cython"

cdef enum:
    _MAX_ABS = 0
    _L2 = 1

SCALE_MAX_ABS = _MAX_ABS
SCALE_L2 = _L2


def mix64(uint64_t z):
    """The SplitMix64 finaliser (exposed so Python derives keys with the same function)."""
    return fedmq_mix64(z)


cdef inline Py_ssize_t packed_length(Py_ssize_t n, int bits) noexcept nogil:
    return (n * bits + 7) // 8


cdef inline int code_at(const uint8_t[::1] codes, Py_ssize_t i, int bits) noexcept nogil:
    cdef int raw
    if bits == 8:
        return <int>(<signed char>codes[i])
    if bits == 4:
        raw = (codes[i >> 1] >> ((i & 1) << 2)) & 0xF
        return (raw ^ 0x8) - 0x8
    raw = (codes[i >> 2] >> ((i & 3) << 1)) & 0x3
    return (raw ^ 0x2) - 0x2


def quantize(const float[::1] x, Py_ssize_t bucket, int levels, int bits, int scale_mode,
             bint stochastic, uint64_t key):
    """Bucketed symmetric quantization, straight into the encoded bytes: the bucket scales
    (float32, little-endian) then the packed codes. None if ``x`` holds NaN or Inf."""
    cdef Py_ssize_t n = x.shape[0]
    if bucket <= 0 or bits not in (2, 4, 8) or levels < 1 or levels > (1 << (bits - 1)) - 1:
        raise ValueError("invalid quantizer parameters")
    cdef Py_ssize_t nbuckets = (n + bucket - 1) // bucket
    cdef Py_ssize_t ncodes = packed_length(n, bits)
    encoded = PyBytes_FromStringAndSize(NULL, 4 * nbuckets + ncodes)
    cdef uint8_t* buffer = <uint8_t*>PyBytes_AS_STRING(encoded)
    cdef uint8_t* codes = buffer + 4 * nbuckets
    if n == 0:
        return encoded
    scratch = np.empty(min(bucket, n), dtype=np.float32)
    cdef float[::1] y = scratch
    cdef Py_ssize_t b, i, start, end
    cdef float scale, a
    cdef uint32_t scale_bits
    cdef double acc
    cdef int bad = 0
    with nogil:
        memset(codes, 0, ncodes)
        for b in range(nbuckets):
            start = b * bucket
            end = start + bucket if start + bucket < n else n
            if scale_mode == _MAX_ABS:
                scale_bits = fedmq_max_abs_bits(&x[start], end - start)
                bad = scale_bits >= 0x7f800000
                memcpy(&scale, &scale_bits, 4)
            else:
                acc = 0.0
                for i in range(start, end):
                    a = fabsf(x[i])
                    bad |= not (a <= FLT_MAX)
                    acc = acc + <double>a * <double>a
                scale = <float>sqrt(acc)
            if bad:
                break
            memcpy(buffer + 4 * b, &scale, 4)
            if scale != 0.0:
                fedmq_quantize_run(&x[start], &y[0], start, end - start, scale, levels, bits,
                                   stochastic, key, codes)
    return None if bad else encoded


def dequantize(const float[::1] scales, const uint8_t[::1] codes, Py_ssize_t bucket,
               int levels, int bits, float[::1] out, float weight, bint accumulate):
    """``out (+)= weight * scale / levels * code`` for every element, one pass per bucket."""
    cdef Py_ssize_t n = out.shape[0]
    cdef Py_ssize_t nbuckets = (n + bucket - 1) // bucket if bucket > 0 else 0
    if bucket <= 0 or bits not in (2, 4, 8) or levels < 1:
        raise ValueError("invalid quantizer parameters")
    if scales.shape[0] != nbuckets or codes.shape[0] != packed_length(n, bits):
        raise ValueError("input buffers have the wrong size")
    cdef Py_ssize_t b, i, start, end
    cdef float step
    cdef float flevels = <float>levels
    with nogil:
        for b in range(nbuckets):
            start = b * bucket
            end = start + bucket if start + bucket < n else n
            step = weight * (scales[b] / flevels)
            if bits == 8:
                if accumulate:
                    for i in range(start, end):
                        out[i] = out[i] + step * <float>(<signed char>codes[i])
                else:
                    for i in range(start, end):
                        out[i] = step * <float>(<signed char>codes[i])
            else:
                if accumulate:
                    for i in range(start, end):
                        out[i] = out[i] + step * <float>code_at(codes, i, bits)
                else:
                    for i in range(start, end):
                        out[i] = step * <float>code_at(codes, i, bits)


def max_abs_code(const uint8_t[::1] codes, Py_ssize_t n, int bits):
    """Largest |code| among the packed codes (validation of untrusted data). Unused padding
    fields must be zero (checked by the caller), so they never raise the maximum."""
    if bits not in (2, 4, 8) or codes.shape[0] != packed_length(n, bits):
        raise ValueError("invalid code buffer")
    cdef uint8_t table[256]
    cdef int byte, slot, field, largest = 0
    cdef int mask = (1 << bits) - 1, sign = 1 << (bits - 1)
    for byte in range(256):
        table[byte] = 0
        for slot in range(0, 8, bits):
            field = (((byte >> slot) & mask) ^ sign) - sign
            field = -field if field < 0 else field
            table[byte] = field if field > table[byte] else table[byte]
    cdef Py_ssize_t i
    cdef int value
    with nogil:
        if bits == 8:  # vectorises: max |int8|
            for i in range(codes.shape[0]):
                value = <signed char>codes[i]
                value = -value if value < 0 else value
                largest = value if value > largest else largest
        else:
            for i in range(codes.shape[0]):
                largest = table[codes[i]] if table[codes[i]] > largest else largest
    return largest


def quantize_sign(const float[::1] x, Py_ssize_t bucket):
    """Scaled sign, straight into the encoded bytes: float32 mean |x| per bucket, then one
    bit per element (1 = negative). None if ``x`` holds NaN or Inf."""
    cdef Py_ssize_t n = x.shape[0]
    if bucket <= 0:
        raise ValueError("invalid bucket size")
    cdef Py_ssize_t nbuckets = (n + bucket - 1) // bucket
    cdef Py_ssize_t nsigns = packed_length(n, 1)
    encoded = PyBytes_FromStringAndSize(NULL, 4 * nbuckets + nsigns)
    cdef uint8_t* buffer = <uint8_t*>PyBytes_AS_STRING(encoded)
    cdef uint8_t* signs = buffer + 4 * nbuckets
    cdef Py_ssize_t b, i, start, end
    cdef float a, scale
    cdef double acc
    cdef int bad = 0
    with nogil:
        memset(signs, 0, nsigns)
        for b in range(nbuckets):
            start = b * bucket
            end = start + bucket if start + bucket < n else n
            acc = 0.0
            for i in range(start, end):
                a = fabsf(x[i])
                bad |= not (a <= FLT_MAX)
                acc = acc + <double>a
            if bad:
                break
            scale = <float>(acc / <double>(end - start))
            memcpy(buffer + 4 * b, &scale, 4)
            if scale == 0.0:
                continue  # a zero bucket decodes to zeros: its sign bits stay clear
            for i in range(start, end):
                if x[i] < 0.0:
                    signs[i >> 3] |= <uint8_t>(1 << (i & 7))
    return None if bad else encoded


def dequantize_sign(const float[::1] scales, const uint8_t[::1] signs, Py_ssize_t bucket,
                    float[::1] out, float weight, bint accumulate):
    cdef Py_ssize_t n = out.shape[0]
    cdef Py_ssize_t nbuckets = (n + bucket - 1) // bucket if bucket > 0 else 0
    if bucket <= 0:
        raise ValueError("invalid bucket size")
    if scales.shape[0] != nbuckets or signs.shape[0] != packed_length(n, 1):
        raise ValueError("input buffers have the wrong size")
    cdef Py_ssize_t b, i, start, end
    cdef float step, value
    with nogil:
        for b in range(nbuckets):
            start = b * bucket
            end = start + bucket if start + bucket < n else n
            step = weight * scales[b]
            for i in range(start, end):
                value = -step if (signs[i >> 3] >> (i & 7)) & 1 else step
                out[i] = out[i] + value if accumulate else value


def float32_bytes(const float[::1] x):
    """The little-endian bytes of ``x``, or None if it holds NaN or Inf (one copy, and a
    vectorised finiteness scan instead of a temporary boolean array)."""
    cdef Py_ssize_t n = x.shape[0]
    encoded = PyBytes_FromStringAndSize(NULL, 4 * n)
    if n == 0:
        return encoded
    cdef uint8_t* buffer = <uint8_t*>PyBytes_AS_STRING(encoded)
    cdef uint32_t largest
    with nogil:
        memcpy(buffer, &x[0], 4 * n)
        largest = fedmq_max_abs_bits(&x[0], n)
    return None if largest >= 0x7f800000 else encoded


def accumulate_float(const uint8_t[::1] data, int itemsize, float[::1] out, float weight,
                     bint accumulate):
    """``out (+)= weight * value`` for little-endian float32 (itemsize 4) or float16 (2)."""
    cdef Py_ssize_t n = out.shape[0]
    if itemsize not in (2, 4) or data.shape[0] != n * itemsize:
        raise ValueError("invalid float buffer")
    cdef Py_ssize_t i
    cdef float value
    cdef uint16_t half
    with nogil:
        if itemsize == 4:
            for i in range(n):
                memcpy(&value, &data[4 * i], 4)
                value = weight * value
                out[i] = out[i] + value if accumulate else value
        else:
            for i in range(n):
                memcpy(&half, &data[2 * i], 2)
                value = weight * fedmq_half_to_float(half)
                out[i] = out[i] + value if accumulate else value


def encode_varints(const int64_t[::1] values):
    """LEB128 of non-negative integers, concatenated."""
    cdef Py_ssize_t k = values.shape[0]
    cdef Py_ssize_t i, size = 0
    cdef uint64_t v
    for i in range(k):
        if values[i] < 0:
            raise ValueError("varints must be non-negative")
    with nogil:
        for i in range(k):
            v = <uint64_t>values[i]
            size += 1
            while v >= 0x80:
                v >>= 7
                size += 1
    out = bytearray(size)
    cdef uint8_t[::1] buf = out
    cdef Py_ssize_t pos = 0
    with nogil:
        for i in range(k):
            v = <uint64_t>values[i]
            while v >= 0x80:
                buf[pos] = <uint8_t>((v & 0x7F) | 0x80)
                v >>= 7
                pos += 1
            buf[pos] = <uint8_t>v
            pos += 1
    return bytes(out)


def decode_varints(const uint8_t[::1] data, int64_t[::1] out, int max_bytes):
    """Parse exactly ``len(out)`` canonical varints of at most ``max_bytes`` bytes each.

    Returns None on success or a message naming what is wrong with the data.
    """
    cdef Py_ssize_t size = data.shape[0]
    cdef Py_ssize_t k = out.shape[0]
    cdef Py_ssize_t pos = 0, i
    cdef int length, shift
    cdef uint64_t value
    cdef uint8_t byte
    cdef int error = 0
    with nogil:
        for i in range(k):
            value = 0
            shift = 0
            length = 0
            while True:
                if pos >= size:
                    error = 1
                    break
                byte = data[pos]
                pos += 1
                length += 1
                if length > max_bytes:
                    error = 2
                    break
                value |= (<uint64_t>(byte & 0x7F)) << shift
                shift += 7
                if not (byte & 0x80):
                    if byte == 0 and length > 1:
                        error = 3
                    break
            if error:
                break
            out[i] = <int64_t>value
        if not error and pos != size:
            error = 4
    if error == 1:
        return "index data ends inside a varint"
    if error == 2:
        return "index varint longer than %d bytes" % max_bytes
    if error == 3:
        return "index varint is not in canonical form"
    if error == 4:
        return "index data has trailing bytes"
    return None
