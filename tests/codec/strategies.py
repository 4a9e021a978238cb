"""hypothesis strategies for codec inputs: odd shapes, empty and 0-d tensors, non-contiguous
views, every float dtype, values from subnormal to the top of the float32 range."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def finite_floats(dtype: type) -> st.SearchStrategy[float]:
    if dtype is np.float16:
        return st.floats(allow_nan=False, allow_infinity=False, width=16)
    if dtype is np.float32:
        return st.floats(allow_nan=False, allow_infinity=False, width=32)
    # float64 beyond float32 range is refused by the codec: stay inside it here.
    return st.floats(min_value=-FLOAT32_MAX, max_value=FLOAT32_MAX)


@st.composite
def tensors(draw: st.DrawFn, *, max_side: int = 40, dtypes=FLOAT_DTYPES) -> np.ndarray:
    """A float tensor of 0-3 dimensions, sometimes a strided (non-contiguous) view."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_side))
    array = draw(hnp.arrays(dtype, shape, elements=finite_floats(dtype)))
    if array.ndim >= 1 and array.shape[0] >= 2 and draw(st.booleans()):
        array = array[::2]
    return array


@st.composite
def smooth_tensors(draw: st.DrawFn, max_size: int = 3000) -> np.ndarray:
    """float32 vectors like model updates: normal values of some scale, some exact zeros."""
    size = draw(st.integers(0, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-30, 1e-8, 1e-3, 1.0, 50.0]))
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(size).astype(np.float32) * np.float32(scale)
    if size and draw(st.booleans()):
        values[rng.integers(0, size, size=max(1, size // 10))] = 0.0
    if size > 600 and draw(st.booleans()):
        values[512:600] = 0.0  # a bucket that is entirely zero
    return values
