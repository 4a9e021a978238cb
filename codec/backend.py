"""Chooses the codec's kernel backend once, at import.

``FEDMQ_CODEC_BACKEND`` = ``auto`` (default: compiled if built, else numpy), ``cython``
(fail if the extension is missing: CI uses it to prove the compiled path ran) or ``numpy``
(force the pure-numpy fallback). Both backends produce bit-identical bytes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

_log = logging.getLogger("fedmq.codec")

ENVIRONMENT_VARIABLE = "FEDMQ_CODEC_BACKEND"


def _load() -> ModuleType:
    choice = os.environ.get(ENVIRONMENT_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in {"auto", "cython", "numpy"}:
        raise ImportError(f"{ENVIRONMENT_VARIABLE}={choice!r}: expected auto, cython or numpy")
    if choice != "numpy" and sys.byteorder == "little":
        try:
            from codec import _kernels  # type: ignore[attr-defined]
        except ImportError as error:
            if choice == "cython":
                raise ImportError(
                    f"{ENVIRONMENT_VARIABLE}=cython but the compiled codec is not built: {error}"
                ) from error
        else:
            compiled: ModuleType = _kernels
            return compiled
    elif choice == "cython":
        raise ImportError("the compiled codec assumes a little-endian host")
    from codec import _kernels_numpy

    return _kernels_numpy


kernels: ModuleType = _load()
BACKEND: str = kernels.BACKEND
_log.info("fedmq codec backend: %s", BACKEND)


def available() -> dict[str, ModuleType]:
    """Every backend importable here, by name (the compiled one only if it was built)."""
    from codec import _kernels_numpy

    found: dict[str, ModuleType] = {"numpy": _kernels_numpy}
    try:
        from codec import _kernels  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:
        found["cython"] = _kernels
    return found


@contextmanager
def use(name: str) -> Iterator[None]:
    """Run the codec on another backend for a while: for tests that compare backends in
    one process. Not thread-safe; production code never switches."""
    global kernels
    previous = kernels
    kernels = available()[name]
    try:
        yield
    finally:
        kernels = previous
