"""Each scheme keeps its promise: exact, within its error bound, unbiased, or exactly top-k."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import codec
from codec import backend, get_codec
from codec.qsgd import QSGDCodec
from codec.sign import ScaledSignCodec
from codec.topk import TopKCodec
from codec.uniform import UniformCodec
from tests.codec.strategies import smooth_tensors, tensors

# Slack for float32 arithmetic in the codec: relative to the bucket scale, plus an absolute
# term for subnormal scales where step = scale / levels itself rounds.
RELATIVE_SLACK = 1e-6
ABSOLUTE_SLACK = 1e-40


def bucket_scales(values: np.ndarray, bucket: int, kind: str) -> np.ndarray:
    """Per-element scale of the element's bucket, computed independently in float64."""
    wide = values.astype(np.float64)
    scales = np.empty_like(wide)
    for start in range(0, wide.size, bucket):
        chunk = np.abs(wide[start : start + bucket])
        if kind == "max":
            scale = chunk.max()
        elif kind == "l2":
            scale = np.sqrt(np.sum(chunk * chunk))
        else:
            scale = chunk.mean()
        scales[start : start + bucket] = scale
    return scales


@given(tensors())
def test_fp32_round_trip_is_exact_for_float32_input(array):
    expected = np.ascontiguousarray(array, dtype=np.float32)
    fp32 = get_codec("fp32")
    decoded = fp32.decode(fp32.encode(array), array.shape)
    assert decoded.shape == array.shape
    assert decoded.tobytes() == expected.tobytes()


@given(tensors(dtypes=(np.float16, np.float32)))
def test_fp16_round_trip_equals_a_float16_cast(array):
    values = np.asarray(array, dtype=np.float32)
    if np.any(np.abs(values) > 65504):
        return  # refused: covered by test_fp16_refuses_values_beyond_its_range
    fp16 = get_codec("fp16")
    decoded = fp16.decode(fp16.encode(array), array.shape)
    assert np.array_equal(decoded, values.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("bucket", [1, 7, 128, 512])
@settings(max_examples=30)
@given(values=smooth_tensors(), seed=st.integers(0, 2**64 - 1))
def test_uniform_error_is_within_the_bound_of_every_bucket(bits, rounding, bucket, values, seed):
    quantizer = UniformCodec(bits=bits, bucket_size=bucket, rounding=rounding)
    decoded = quantizer.decode(quantizer.encode(values, seed=seed), values.shape)
    levels = 2 ** (bits - 1) - 1
    scale = bucket_scales(values, bucket, "max")
    bound = scale / levels if rounding == "stochastic" else scale / (2 * levels)
    error = np.abs(decoded.astype(np.float64) - values)
    assert np.all(error <= bound + RELATIVE_SLACK * scale + ABSOLUTE_SLACK)


@pytest.mark.parametrize("levels", [1, 3, 7, 100, 127])
@settings(max_examples=30)
@given(values=smooth_tensors(), seed=st.integers(0, 2**64 - 1))
def test_qsgd_error_is_within_norm_over_levels(levels, values, seed):
    quantizer = QSGDCodec(levels=levels, bucket_size=256)
    decoded = quantizer.decode(quantizer.encode(values, seed=seed), values.shape)
    norm = bucket_scales(values, 256, "l2")
    error = np.abs(decoded.astype(np.float64) - values)
    assert np.all(error <= norm / levels + RELATIVE_SLACK * norm + ABSOLUTE_SLACK)


def rounding_bias_z_scores(quantizer, values: np.ndarray, trials: int) -> np.ndarray:
    """z-score of the mean decoded value against the input, per element, over ``trials``
    seeds. For an unbiased quantizer each is ~N(0, 1)."""
    total = np.zeros(values.size)
    for seed in range(trials):
        total += quantizer.decode(quantizer.encode(values, seed=seed), values.shape)
    mean = total / trials
    levels = quantizer.levels
    scale = bucket_scales(
        values, quantizer.bucket_size, "l2" if isinstance(quantizer, QSGDCodec) else "max"
    )
    step = scale / levels
    fraction = values / step - np.floor(values / step)
    spread = step * np.sqrt(fraction * (1 - fraction) / trials)
    exact = spread < 1e-12 * step
    assert np.allclose(mean[exact], values[exact], rtol=1e-6, atol=0)
    return np.abs(mean - values)[~exact] / spread[~exact]


# Fractions of a quantization step spread over (0, 1), plus the bucket maximum (exact).
UNBIASED_PROBE = np.concatenate([np.linspace(-0.93, 0.95, 47), [1.0, 0.0, -0.5]]).astype(np.float32)
Z_LIMIT = 5.5  # P(|z| > 5.5) = 4e-8 per element: a false failure is practically impossible


@pytest.mark.parametrize(
    "quantizer",
    [
        UniformCodec(bits=8, bucket_size=64),
        UniformCodec(bits=4, bucket_size=64),
        UniformCodec(bits=2, bucket_size=64),
        QSGDCodec(levels=4, bucket_size=64),
    ],
    ids=repr,
)
def test_stochastic_rounding_is_unbiased(quantizer):
    z = rounding_bias_z_scores(quantizer, UNBIASED_PROBE, trials=3000)
    assert z.size >= 40
    assert z.max() < Z_LIMIT


def test_the_unbiasedness_test_detects_a_biased_quantizer():
    """The same statistic on nearest rounding (biased per element) must fail loudly, so the
    unbiasedness test above cannot pass by accident."""
    z = rounding_bias_z_scores(
        UniformCodec(bits=4, bucket_size=64, rounding="nearest"), UNBIASED_PROBE, trials=3000
    )
    assert (z > Z_LIMIT).mean() > 0.8


@settings(max_examples=40)
@given(values=smooth_tensors(), bucket=st.sampled_from([1, 5, 64, 512]))
def test_scaled_sign_is_mean_absolute_value_with_the_input_sign(values, bucket):
    sign = ScaledSignCodec(bucket_size=bucket)
    decoded = sign.decode(sign.encode(values), values.shape)
    mean_abs = bucket_scales(values, bucket, "mean")
    assert np.allclose(np.abs(decoded), mean_abs, rtol=1e-6, atol=0)
    assert np.array_equal(decoded < 0, values < 0)


def reference_topk(values: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-np.abs(values.astype(np.float64)), kind="stable")
    return np.sort(order[:k])


@settings(max_examples=60)
@given(values=smooth_tensors(), fraction=st.sampled_from([1e-4, 0.01, 0.1, 0.5, 1.0]))
def test_topk_keeps_exactly_the_k_largest(values, fraction):
    topk = TopKCodec(fraction=fraction, values={"id": "fp32"})
    decoded = topk.decode(topk.encode(values), values.shape)
    k = topk.kept(values.size)
    kept = reference_topk(values, k)
    mask = np.zeros(values.size, dtype=bool)
    mask[kept] = True
    assert np.array_equal(decoded[mask], values[mask])
    assert not decoded[~mask].any()
    residual = float(np.sum((values.astype(np.float64) - decoded) ** 2))
    assert (
        residual
        <= (1 - k / max(values.size, 1)) * float(np.sum(values.astype(np.float64) ** 2)) + 1e-30
    )


def test_topk_breaks_ties_towards_lower_indices():
    values = np.array([1, -3, 3, 2, 3, -3], dtype=np.float32)
    topk = TopKCodec(fraction=0.5)
    assert np.array_equal(topk.decode(topk.encode(values), (6,)), [0, -3, 3, 0, 3, 0])


@pytest.mark.parametrize(("fraction", "mode"), [(0.001, 1), (0.5, 0)])
def test_topk_picks_the_smaller_index_encoding(fraction, mode):
    values = np.random.default_rng(3).standard_normal(100_000).astype(np.float32)
    topk = TopKCodec(fraction=fraction, values={"id": "uniform", "bits": 8})
    data = topk.encode(values, seed=1)
    assert data[0] == mode
    decoded = topk.decode(data, values.shape)
    assert np.count_nonzero(decoded) == topk.kept(values.size)


@pytest.mark.parametrize("preset", sorted(codec.PRESETS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_naming_the_index(preset, bad):
    values = np.ones(1000, dtype=np.float32)
    values[700] = bad
    with pytest.raises(codec.InvalidTensorError, match="non-finite value at flat index 700"):
        get_codec(preset).encode(values)


@pytest.mark.parametrize("preset", sorted(codec.PRESETS))
def test_float64_beyond_float32_range_is_refused(preset):
    values = np.array([1.0, 1e39], dtype=np.float64)
    with pytest.raises(codec.InvalidTensorError, match="flat index 1"):
        get_codec(preset).encode(values)


def test_fp16_refuses_values_beyond_its_range():
    with pytest.raises(codec.InvalidTensorError, match="beyond float16 range"):
        get_codec("fp16").encode(np.array([1.0, 70000.0], dtype=np.float32))


@pytest.mark.parametrize(
    "array", [np.arange(4), np.array([True]), np.array(["x"])], ids=["int", "bool", "str"]
)
def test_non_float_input_is_refused(array):
    with pytest.raises(codec.InvalidTensorError, match="floating-point"):
        get_codec("int8").encode(array)


@pytest.mark.parametrize("preset", sorted(codec.PRESETS))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (5, 1)])
def test_empty_and_scalar_tensors_round_trip(preset, shape):
    values = np.full(shape, 0.75, dtype=np.float32)
    quantizer = get_codec(preset)
    decoded = quantizer.decode(quantizer.encode(values, seed=0), shape)
    assert decoded.shape == shape
    if values.size and preset != "topk":
        assert np.allclose(decoded, values, rtol=0.34)


@pytest.mark.parametrize("preset", sorted(codec.PRESETS))
def test_non_contiguous_input_encodes_like_its_contiguous_copy(preset):
    base = np.random.default_rng(0).standard_normal((40, 30)).astype(np.float64)
    view = base[::3, 1::2].T
    quantizer = get_codec(preset)
    assert quantizer.encode(view, seed=9) == quantizer.encode(np.ascontiguousarray(view), seed=9)


@pytest.mark.parametrize("preset", sorted(codec.PRESETS))
def test_decode_into_adds_the_weighted_update(preset):
    values = np.random.default_rng(1).standard_normal((33, 17)).astype(np.float32)
    quantizer = get_codec(preset)
    data = quantizer.encode(values, seed=4)
    decoded = quantizer.decode(data, values.shape)
    out = np.full(values.shape, 2.0, dtype=np.float32)
    quantizer.decode_into(data, out, weight=1.0)
    assert np.array_equal(out, np.float32(2.0) + decoded)
    quantizer.decode_into(data, out, weight=-0.5)
    assert np.allclose(out, 2.0 + 0.5 * decoded, rtol=1e-6, atol=1e-6)
    quantizer.decode_into(data, out, weight=1.0, accumulate=False)
    assert np.array_equal(out, decoded)


@pytest.mark.parametrize(
    "out",
    [
        np.zeros(10, dtype=np.float64),
        np.zeros(20, dtype=np.float32)[::2],
        np.zeros(11, dtype=np.float32),
    ],
    ids=["float64", "strided", "wrong-size"],
)
def test_decode_into_refuses_an_unusable_buffer(out):
    data = get_codec("int8").encode(np.ones(10, dtype=np.float32))
    with pytest.raises(codec.CodecError):
        get_codec("int8").decode_into(data, out)


def test_stochastic_encoding_depends_on_the_seed_only():
    values = np.random.default_rng(2).standard_normal(5000).astype(np.float32)
    int8 = get_codec("int8")
    assert int8.encode(values, seed=1) == int8.encode(values, seed=1)
    assert int8.encode(values, seed=1) != int8.encode(values, seed=2)


def test_numpy_results_do_not_depend_on_chunk_size(monkeypatch):
    from codec import _kernels_numpy

    values = np.random.default_rng(5).standard_normal(200_003).astype(np.float32)
    quantizers = [get_codec(p) for p in ("int8", "int4", "int2", "qsgd", "sign")]
    with backend.use("numpy"):
        default = [q.encode(values, seed=11) for q in quantizers]
        monkeypatch.setattr(_kernels_numpy, "_CHUNK_ELEMENTS", 1536)
        small_chunks = [q.encode(values, seed=11) for q in quantizers]
    assert default == small_chunks
