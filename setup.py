"""Builds the C kernels (sparsernn.kernels._kernels: the binding in sparsernn/kernels over the compute core
in runtime/src, which the C runtime builds too); everything else is in pyproject.toml.

Compiled for the machine that installs (-march=native: AVX2/FMA where present), with OpenMP threads.
SPARSERNN_PORTABLE=1 drops -march=native for a wheel that runs on other CPUs. The extension is
optional: without a C compiler the install still succeeds and sparsernn uses its numpy/scipy
reference path, with a warning.
"""

import os

from setuptools import Extension, setup

# Python's own CFLAGS carry -fwrapv, which makes gcc keep 32-bit signed loop counters wrapping; the
# one-column unstructured kernel runs 8% to 24% slower with it (benchmarks/probes/wrapv.py, BENCHMARKS.md).
# Nothing here relies on wrapping.
flags = ["-O3", "-fno-wrapv", "-fopenmp", "-std=c11"]
if not os.environ.get("SPARSERNN_PORTABLE"):
    flags.append("-march=native")

CORE = [f"runtime/src/{name}.c"
        for name in ("kernels", "kernels_avx2", "kernels_avx512", "kernels_neon", "ops", "layouts")]
HEADERS = [f"runtime/src/{name}.h" for name in ("kernels", "simd", "layouts")]

setup(ext_modules=[Extension("sparsernn.kernels._kernels", ["sparsernn/kernels/_kernels.c", *CORE],
                             include_dirs=["runtime/src"], depends=HEADERS, extra_compile_args=flags,
                             extra_link_args=["-fopenmp"], optional=True)])
