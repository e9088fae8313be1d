"""Which layout the engine should give a dense or nearly dense matrix: CSR or dense 8x1 / 16x1 blocks.

Behind ``sparsernn.engine.DENSE_ENOUGH``: times ``kernels.spmm`` at batch 1 on one thread for random
matrices of several densities, each stored as CSR (1x1), 8x1 and 16x1 blocks, the layouts taking turns
in one process; prints the median microseconds per call as a markdown table.

Usage: python benchmarks/dense_layout.py [--shapes 576x192 3072x1024] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from sparsernn import kernels
from sparsernn.kernels import SparseMatrix

DENSITIES = (1.0, 0.6, 0.4, 0.3, 0.2, 0.1)
LAYOUTS = ((1, 1), (8, 1), (16, 1))


def per_call_us(function, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["576x192", "3072x1024"])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| shape | density | CSR (1x1) us | 8x1 blocks us | 16x1 blocks us |")
    print("|---|---|---|---|---|")
    for shape in args.shapes:
        rows, cols = map(int, shape.split("x"))
        x = rng.standard_normal((cols, 1)).astype(np.float32)
        calls = max(10, 2_000_000 // (rows * cols))
        for density in DENSITIES:
            mask = rng.random((rows, cols)) < density
            weight = rng.standard_normal((rows, cols)).astype(np.float32) * mask
            matrices = [SparseMatrix.from_dense(weight, layout) for layout in LAYOUTS]
            times: list[list[float]] = [[] for _ in LAYOUTS]
            for _ in range(args.repeats):
                for matrix, measured in zip(matrices, times, strict=True):
                    measured.append(per_call_us(lambda m=matrix, v=x: kernels.spmm(m, v, threads=1), calls))
            medians = " | ".join(f"{statistics.median(t):.1f}" for t in times)
            print(f"| {rows}x{cols} | {density:.0%} | {medians} |")


if __name__ == "__main__":
    main()
