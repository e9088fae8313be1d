"""Probes behind BENCHMARKS.md's bf16 and window figures: one-column products, in turns, one thread.

1. fp32 against bf16 values, on each instruction set the machine has, for the n = 1760 matrix and the
   PTB decoder shape (10,000 x 200), 90% random pattern: microseconds per call.
2. The decoder's one-column windows: dividing gcd(rows, cols) (40 rows) against dividing all its rows
   (`rows_unit`, 16-row groups), bf16 values.
3. Python around a call: `kernels.spmm` against the bare compiled call, 800 x 200 at 90%.

    python benchmarks/probes/one_column_probe.py        # about a minute; pause other work first
"""

import dataclasses
import timeit

import numpy as np

from sparsernn import kernels
from sparsernn.bench import measure_in_turns
from sparsernn.kernels import SparseMatrix, spmm


def pruned(rng, rows, cols):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    return SparseMatrix.from_dense(w)


def calls(matrix, level):
    x = np.ones((matrix.shape[1], 1), np.float32)
    out = np.empty((matrix.shape[0], 1), np.float32)

    def call():
        kernels.set_isa(level)
        spmm(matrix, x, out=out)
    return call


rng = np.random.default_rng(0)
for rows, cols in ((1760, 1760), (10000, 200)):
    fp32 = dataclasses.replace(pruned(rng, rows, cols), rows_unit=rows)
    methods = {f"{level} {name}": calls(m, level) for level in kernels.isa_levels()
               for name, m in (("fp32", fp32), ("bf16", fp32.to_bf16()))}
    timed = measure_in_turns(methods, 0.05)
    print(f"{rows} x {cols}:", ", ".join(f"{k} {us:.1f} us" for k, us in timed.items()))
kernels.set_isa(None)

decoder = pruned(rng, 10000, 200).to_bf16()
windows = {"gcd windows": decoder, "rows_unit windows": dataclasses.replace(decoder, rows_unit=10000)}
timed = measure_in_turns({k: calls(m, kernels.isa()) for k, m in windows.items()}, 0.05)
print("decoder, bf16:", ", ".join(f"{k} (sigma {windows[k]._window(16)}) {us:.1f} us"
                                  for k, us in timed.items()))
kernels.set_isa(None)

small = pruned(rng, 800, 200)
x, out, bias = np.ones((200, 1), np.float32), np.empty((800, 1), np.float32), np.zeros(800, np.float32)
compiled = kernels._compiled_matrix(small, 1)
wrapped = min(timeit.repeat(lambda: spmm(small, x, bias, out=out), number=20000, repeat=5)) / 20000 * 1e6
bare = min(timeit.repeat(lambda: kernels._compiled().spmm(compiled, x, out, bias, 1, 1), number=20000,
                         repeat=5)) / 20000 * 1e6
print(f"800 x 200: kernels.spmm {wrapped:.2f} us, bare compiled call {bare:.2f} us: "
      f"{wrapped - bare:.2f} us of Python around it")
