/* Inner loops of the codec that must vectorise: plain C so that x86-64 builds can carry an
 * AVX2 clone beside the baseline one (chosen by the loader at run time), while aarch64
 * (Jetson) vectorises with NEON as it is. Every loop performs the same IEEE float32
 * operations in the same order as the numpy fallback; the build turns FMA contraction off. */
#ifndef FEDMQ_SIMD_H
#define FEDMQ_SIMD_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(FEDMQ_NO_CLONES)
#define FEDMQ_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FEDMQ_CLONES
#endif

/* SplitMix64's finaliser: derives a tensor's 64-bit key from a seed. */
static inline uint64_t fedmq_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* lowbias32 (C. Wellons): a 32-bit bijection with low avalanche bias. One keyed round is the
 * counter-based generator for stochastic rounding: element i's draw depends on (key, i)
 * alone, whatever the chunking or thread count, and 32-bit lanes vectorise. (A second round
 * cost 40% of int8 encode throughput; the statistical tests pass with one.) */
static inline uint32_t fedmq_hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* A uniform float32 in [0, 1) from 24 random bits: exact in float32 on every backend.
 * Element indices are 32-bit: the codec refuses tensors of 2^32 elements or more. */
static inline float fedmq_uniform(uint64_t key, uint32_t index) {
    uint32_t h = fedmq_hash32((index ^ (uint32_t)key) + (uint32_t)(key >> 32));
    return (float)(int32_t)(h >> 8) * 5.9604644775390625e-08f;
}

/* Round half to even for |y| < 2^22, as rint() does, in two vectorisable additions. */
static inline float fedmq_round_even(float y) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    return (y + magic) - magic; /* exact for -2^22 < y < 2^22 */
}

/* max |x| over a run, as the bit pattern of a non-negative float: for those, integer order
 * is value order, so the reduction is exact in any lane order, and a result of at least
 * 0x7f800000 means the run holds an Inf or a NaN. */
FEDMQ_CLONES
static uint32_t fedmq_max_abs_bits(const float *x, int64_t count) {
    uint32_t largest = 0;
    for (int64_t i = 0; i < count; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], sizeof bits);
        bits &= 0x7fffffffU;
        largest = bits > largest ? bits : largest;
    }
    return largest;
}

static inline int fedmq_clamp(int q, int levels) {
    q = q > levels ? levels : q;
    return q < -levels ? -levels : q;
}

/* The code of one scaled value y = x / scale * levels: stochastic rounding draws element
 * `index`'s uniform u and rounds up when u < y - floor(y); nearest rounds half to even. */
static inline int fedmq_code(float y, int levels, int stochastic, uint64_t key,
                             uint32_t index) {
    int q;
    if (stochastic) {
        int t = (int)y;
        int f = t - (y < (float)t); /* floor without libm */
        q = f + (fedmq_uniform(key, index) < y - (float)f);
    } else {
        q = (int)fedmq_round_even(y);
    }
    return fedmq_clamp(q, levels);
}

/* Quantize one bucket whose scale is known and non-zero, in one pass per element (the
 * 8-bit loops vectorise). y is scratch of `count` floats, codes the whole tensor's
 * zero-initialised packed codes, start the bucket's first element. */
FEDMQ_CLONES
static void fedmq_quantize_run(const float *x, float *y, int64_t start, int64_t count,
                               float scale, int levels, int bits, int stochastic,
                               uint64_t key, uint8_t *codes) {
    const float flevels = (float)levels;
    const float *source = x;
    float factor = flevels / scale;
    if (!(factor <= FLT_MAX)) {
        /* levels / scale overflows for a subnormal scale: divide, exactly, instead;
         * multiplying by 1 below is exact, so both paths share the rounding loops. */
        for (int64_t j = 0; j < count; j++) y[j] = (x[j] / scale) * flevels;
        source = y;
        factor = 1.0f;
    }
    const uint32_t first = (uint32_t)start; /* indices are 32-bit, see fedmq_uniform */
    const int32_t n = (int32_t)count;
    if (bits == 8 && stochastic) {
        for (int32_t j = 0; j < n; j++)
            codes[start + j] =
                (uint8_t)(int8_t)fedmq_code(source[j] * factor, levels, 1, key, first + j);
    } else if (bits == 8) {
        for (int32_t j = 0; j < n; j++)
            codes[start + j] =
                (uint8_t)(int8_t)fedmq_code(source[j] * factor, levels, 0, key, first + j);
    } else {
        /* 4 and 2 bits: codes into scratch first (vectorises), then pack whole bytes where
         * the bucket is byte-aligned, field by field at the unaligned edges. */
        const int per_byte = 8 / bits;
        const uint32_t mask = (1u << bits) - 1u;
        for (int32_t j = 0; j < n; j++)
            y[j] = (float)fedmq_code(source[j] * factor, levels, stochastic, key, first + j);
        int32_t j = 0;
        for (; j < n && ((first + (uint32_t)j) % (uint32_t)per_byte) != 0; j++) {
            uint32_t i = first + (uint32_t)j;
            codes[i / per_byte] |= (uint8_t)(((uint32_t)(int)y[j] & mask) << ((i % per_byte) * bits));
        }
        uint8_t *out = codes + (first + (uint32_t)j) / per_byte;
        if (bits == 4) {
            for (; j + 2 <= n; j += 2, out++)
                *out = (uint8_t)(((uint32_t)(int)y[j] & 0xFu) |
                                 (((uint32_t)(int)y[j + 1] & 0xFu) << 4));
        } else {
            for (; j + 4 <= n; j += 4, out++)
                *out = (uint8_t)(((uint32_t)(int)y[j] & 0x3u) |
                                 (((uint32_t)(int)y[j + 1] & 0x3u) << 2) |
                                 (((uint32_t)(int)y[j + 2] & 0x3u) << 4) |
                                 (((uint32_t)(int)y[j + 3] & 0x3u) << 6));
        }
        for (; j < n; j++) {
            uint32_t i = first + (uint32_t)j;
            codes[i / per_byte] |= (uint8_t)(((uint32_t)(int)y[j] & mask) << ((i % per_byte) * bits));
        }
    }
}

/* Half to single precision, exactly (the conversion never rounds). */
static inline float fedmq_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    float result;
    if (exponent == 0x1fu) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {
        result = (float)mantissa * 5.9604644775390625e-08f; /* subnormal: m * 2^-24 */
        return sign ? -result : result;
    }
    memcpy(&result, &bits, sizeof result);
    return result;
}

#endif
