"""Builds the n = 1760, 90% matrix in the sliced one-column layout of 32-column slices and its
non-zeros-only variant (values packed, a 16-bit lane mask per slot), then compiles and runs
benchmarks/probes/sliced_expand_probe.c on it (an AVX-512 machine and gcc needed). It prints each method's
largest difference from the dense product, then microseconds per call.

    python benchmarks/probes/sliced_expand_probe.py        # about half a minute; pause other work first
"""

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from sparsernn.kernels import SparseMatrix


def main() -> None:
    rng = np.random.default_rng(0)
    n = 1760
    dense = rng.standard_normal((n, n)).astype(np.float32)
    dense[rng.random((n, n)) < 0.9] = 0
    layout = SparseMatrix.from_dense(dense).sliced_copy(32)  # slices of 32 columns, as the C file reads them
    values = layout.values
    mask = values != 0
    bits = (mask * (1 << np.arange(16))).sum(axis=1).astype(np.uint16)
    x = rng.standard_normal(n).astype(np.float32)
    header = np.array([n, n, layout.sigma, len(layout.ptr) - 1, values.shape[0], int(mask.sum())], np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        data, program = Path(tmp) / "m.bin", Path(tmp) / "probe"
        data.write_bytes(b"".join(np.ascontiguousarray(a).tobytes() for a in (
            header, layout.ptr.astype(np.int32), layout.order.astype(np.int32), layout.index, values, bits,
            values[mask], x, dense @ x)))
        source = Path(__file__).with_suffix(".c")
        subprocess.run(["gcc", "-O2", "-march=native", str(source), "-o", str(program), "-lm"], check=True)
        print(f"slots over non-zeros: {values.size / mask.sum():.2f}")
        subprocess.run([str(program), str(data)], check=True)


if __name__ == "__main__":
    main()
