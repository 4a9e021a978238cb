"""Shared fixtures for the codec tests: they run on whichever backend ``FEDMQ_CODEC_BACKEND``
selected (CI runs the suite once compiled, once with the numpy fallback)."""

from __future__ import annotations

from types import ModuleType

import pytest

import codec
from codec import backend


@pytest.fixture(scope="session", autouse=True)
def _report_backend() -> None:
    print(f"\ncodec backend under test: {codec.BACKEND}")


@pytest.fixture(scope="session")
def both_backends() -> dict[str, ModuleType]:
    """The compiled and numpy kernels, or a skip where the extension was not built."""
    found = backend.available()
    if "cython" not in found:
        pytest.skip("compiled codec not built (FEDMQ_SKIP_EXTENSIONS); nothing to compare")
    return found
