"""Builds the codec's Cython extension; everything else lives in pyproject.toml.

Set FEDMQ_SKIP_EXTENSIONS=1 to install without a compiler: the codec then runs its
bit-identical numpy fallback.
"""

import os

from setuptools import setup


def _extensions() -> list:
    if os.environ.get("FEDMQ_SKIP_EXTENSIONS", "").strip().lower() in {"1", "true", "yes"}:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    # -ffp-contract=off: fused multiply-adds would round differently from the numpy fallback.
    # -fno-math-errno lets lrintf compile to one instruction.
    flags = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-strict-aliasing"]
    kernels = Extension(
        "codec._kernels",
        ["codec/_kernels.pyx"],
        include_dirs=[numpy.get_include(), "codec"],
        extra_compile_args=flags,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    return cythonize([kernels], compiler_directives={"language_level": "3"})


setup(ext_modules=_extensions())
