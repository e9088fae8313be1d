"""The probe behind BENCHMARKS.md's "Values on a cache line": the same n = 1760, 90% matrix times one
column with its values on a cache line (as `SparseMatrix` keeps them) against a copy 16 bytes off (numpy's
usual alignment), in turns, one thread, median microseconds per call: unstructured on each instruction
set the machine has (fp32 and bf16 values), and 8x1 blocks.

    python benchmarks/probes/aligned_values.py        # about half a minute; pause other work first
"""

import dataclasses

import numpy as np

from sparsernn import kernels
from sparsernn.bench import measure_in_turns
from sparsernn.kernels import SparseMatrix, spmm


def off_line(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` starting 16 bytes past a cache line."""
    buffer = np.empty(array.nbytes + 64, np.uint8)
    start = (16 - buffer.ctypes.data) % 64
    copy = buffer[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


def misaligned(matrix: SparseMatrix, copy: str | None) -> SparseMatrix:
    """``matrix`` whose one-column ``copy`` (or, for None, whose block values) start 16 bytes off."""
    other = dataclasses.replace(matrix)
    if copy is None:
        object.__setattr__(other, "values", off_line(matrix.values))  # past __post_init__'s alignment
    else:
        layout = getattr(matrix, copy)
        other.__dict__[copy] = layout._replace(values=off_line(layout.values))  # the cached layout
    return other


def main() -> None:
    rng = np.random.default_rng(0)
    n = 1760
    x = rng.standard_normal((n, 1)).astype(np.float32)
    unstructured = rng.standard_normal((n, n)).astype(np.float32) * (rng.random((n, n)) < 0.1)
    keep = np.repeat(rng.random((n // 8, n)) < 0.1, 8, axis=0)
    blocks = rng.standard_normal((n, n)).astype(np.float32) * keep
    cases = []
    for level in kernels.isa_levels():
        copy = {"avx512": "sliced", "avx2": "interleaved"}.get(level)
        for values in ("fp32", "bf16"):
            matrix = SparseMatrix.from_dense(unstructured)
            cases.append((f"unstructured {level} {values}", level, copy, matrix.to_bf16() if values == "bf16"
                          else matrix))
    cases.append(("8x1 blocks fp32", kernels.isa(), None, SparseMatrix.from_dense(blocks, (8, 1))))
    for name, level, copy, matrix in cases:
        kernels.set_isa(level)
        other = misaligned(matrix, copy)
        np.testing.assert_allclose(spmm(other, x), spmm(matrix, x), rtol=1e-5, atol=1e-5)
        timed = measure_in_turns({"aligned": lambda m=matrix: spmm(m, x),
                                  "16 bytes off": lambda m=other: spmm(m, x)}, 3.0, rounds=15)
        print(f"{name}: aligned {timed['aligned']:.1f} us, 16 bytes off {timed['16 bytes off']:.1f} us")
    kernels.set_isa(None)


if __name__ == "__main__":
    main()
