"""Which layout the engine should give a dense or nearly dense matrix: CSR or dense 8x1 / 16x1 blocks.

Behind ``sparsernn.engine.DENSE_ENOUGH``: times ``kernels.spmm`` at batch 1 on one thread for random
matrices of several densities, each stored as CSR (1x1), 8x1 and 16x1 blocks, the layouts taking turns
in one process (``sparsernn.bench.measure_in_turns``); prints the median microseconds per call as a
markdown table.

Usage: python benchmarks/probes/dense_layout.py [--shapes 576x192 3072x1024] [--repeats 9] [--seconds 0.2]
"""

from __future__ import annotations

import argparse

import numpy as np

from sparsernn import kernels
from sparsernn.bench import measure_in_turns
from sparsernn.kernels import SparseMatrix

DENSITIES = (1.0, 0.6, 0.4, 0.3, 0.2, 0.1)
LAYOUTS = ((1, 1), (8, 1), (16, 1))


def product(matrix: SparseMatrix, x: np.ndarray):
    return lambda: kernels.spmm(matrix, x, threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["576x192", "3072x1024"])
    parser.add_argument("--repeats", type=int, default=9, help="rounds of turns")
    parser.add_argument("--seconds", type=float, default=0.2, help="timing per layout")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| shape | density | CSR (1x1) us | 8x1 blocks us | 16x1 blocks us |")
    print("|---|---|---|---|---|")
    for shape in args.shapes:
        rows, cols = map(int, shape.split("x"))
        x = rng.standard_normal((cols, 1)).astype(np.float32)
        for density in DENSITIES:
            mask = rng.random((rows, cols)) < density
            weight = rng.standard_normal((rows, cols)).astype(np.float32) * mask
            matrices = {layout: SparseMatrix.from_dense(weight, layout) for layout in LAYOUTS}
            timed = measure_in_turns({layout: product(matrix, x) for layout, matrix in matrices.items()},
                                     args.seconds, rounds=args.repeats)
            print(f"| {rows}x{cols} | {density:.0%} | "
                  + " | ".join(f"{timed[layout]:.1f}" for layout in LAYOUTS) + " |")


if __name__ == "__main__":
    main()
