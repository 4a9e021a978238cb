"""The compiled kernels and the numpy fallback agree bit for bit, for every scheme."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import codec
from codec import backend, get_codec
from tests.codec.strategies import smooth_tensors, tensors

CONFIGS = [
    {"id": "fp32"},
    {"id": "fp16"},
    *(
        {"id": "uniform", "bits": b, "bucket_size": s, "rounding": r}
        for b in (8, 4, 2)
        for s in (1, 3, 512)
        for r in ("stochastic", "nearest")
    ),
    {"id": "qsgd", "levels": 1, "bucket_size": 7},
    {"id": "qsgd", "levels": 5, "bucket_size": 512},
    {"id": "qsgd", "levels": 127, "bucket_size": 100},
    {"id": "sign", "bucket_size": 1},
    {"id": "sign", "bucket_size": 512},
    {"id": "topk", "fraction": 0.05, "values": {"id": "uniform", "bits": 4}},
    {"id": "topk", "fraction": 0.7, "values": {"id": "fp16"}},
]


def run_on(name: str, config: dict, values: np.ndarray, seed: int):
    quantizer = get_codec(config)
    with backend.use(name):
        try:
            data = quantizer.encode(values, seed=seed)
        except codec.InvalidTensorError as error:  # e.g. fp16 overflow: must match too
            return ("refused", str(error))
        decoded = quantizer.decode(data, values.shape)
        out = np.linspace(-1, 1, values.size, dtype=np.float32).reshape(values.shape)
        quantizer.decode_into(data, out, weight=0.37)
    return data, decoded.tobytes(), out.tobytes()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
@settings(max_examples=25, deadline=None)
@given(values=st.one_of(tensors(), smooth_tensors()), seed=st.integers(0, 2**64 - 1))
def test_backends_are_bit_identical(both_backends, config, values, seed):
    assert run_on("cython", config, values, seed) == run_on("numpy", config, values, seed)


@pytest.mark.parametrize("config", CONFIGS[:8], ids=lambda c: "-".join(map(str, c.values())))
def test_backends_agree_on_a_large_tensor(both_backends, config):
    values = np.random.default_rng(0).standard_normal(300_001).astype(np.float32)
    values[1000:1600] = 0.0
    values[5000] = 3e-41  # a subnormal bucket maximum takes the division path
    values[4608:5000] = 0.0
    values[5001:5120] = 0.0
    assert run_on("cython", config, values, 42) == run_on("numpy", config, values, 42)


def test_backend_is_reported():
    assert codec.BACKEND in {"cython", "numpy"}
    assert codec.BACKEND == backend.kernels.BACKEND


@pytest.mark.parametrize(
    "data", [b"", b"\x00", b"\x80", b"\x81\x00", b"\x80\x80\x80\x80\x80\x01", b"\x05\x05\x07"]
)
def test_varint_parsers_agree_on_malformed_index_data(both_backends, data):
    results = []
    for kernels in both_backends.values():
        out = np.zeros(2, dtype=np.int64)
        problem = kernels.decode_varints(np.frombuffer(data, np.uint8), out, 5)
        results.append((problem is None, out.tolist() if problem is None else None))
    assert results[0] == results[1]
