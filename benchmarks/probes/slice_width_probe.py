"""The sliced one-column layout with slices of 32, 64 and 128 columns (`SparseMatrix.sliced_copy`), timed
by benchmarks/probes/slice_width_probe.c (compiled here with gcc; an AVX-512 machine needed) on random
matrices of the shapes the models use, each alone and then each model's matrices one after another (as a
streamed token runs them), one thread. Prints the padding (slots over non-zeros) and microseconds per call
of each kernel variant and of a 4-row dense GEMV, and the slots a segment holds with slices of 64.

    python benchmarks/probes/slice_width_probe.py        # about two minutes; pause other work first
"""

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from sparsernn.kernels import SparseMatrix

#: (rows, columns, sparsity): the n = 1760 kernel benchmark, the GRU 2x1024 model's matrices, the PTB
#: shape's (LSTM 2x200 and its 10,000-word decoder) and a sparser one.
SHAPES = [(1760, 1760, 0.9), (3072, 1024, 0.9), (3072, 512, 0.9), (10000, 1024, 0.9), (800, 200, 0.9),
          (10000, 200, 0.9), (1760, 1760, 0.95)]
#: The products of a streamed token of the two language models of `sparsernn bench --end-to-end` (90%):
#: each layer's input and recurrent matrices, then the decoder.
MODELS = {"GRU LM 2x1024 (embedding 512)": [(3072, 512, 0.9), (3072, 1024, 0.9), (3072, 1024, 0.9),
                                            (3072, 1024, 0.9), (10000, 1024, 0.9)],
          "LSTM LM 2x200": [(800, 200, 0.9)] * 4 + [(10000, 200, 0.9)]}
WIDTHS = (32, 64, 128)


def write_layouts(path: Path, rows: int, cols: int, sparsity: float) -> tuple[list[float], float]:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((rows, cols)).astype(np.float32)
    dense[rng.random((rows, cols)) < sparsity] = 0
    matrix = SparseMatrix.from_dense(dense)
    x = rng.standard_normal(cols).astype(np.float32)
    padding, per_segment = [], 0.0
    with open(path, "wb") as f:
        f.write(np.array([rows, cols], np.int32).tobytes())
        for width in WIDTHS:
            layout = matrix.sliced_copy(width)
            padding.append(layout.values.size / np.count_nonzero(dense))
            if width == 64:
                per_segment = layout.values.shape[0] / (len(layout.ptr) - 1)
            f.write(np.array([len(layout.ptr) - 1, layout.values.shape[0]], np.int32).tobytes())
            for array in (layout.ptr, layout.order, layout.index, layout.values):
                f.write(np.ascontiguousarray(array).tobytes())
        f.write(x.tobytes())
        f.write((dense.astype(np.float64) @ x).astype(np.float32).tobytes())
    return padding, per_segment


def main() -> None:
    print("| shape | sparsity | slots per non-zero (32 / 64 / 128) | 32, unrolled by 4 | 32, by 2 "
          "| 64, by 2 | 128, by 2 | dense 4-row GEMV | slots a segment (64) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "probe"
        subprocess.run(["gcc", "-O2", "-march=native", str(Path(__file__).with_suffix(".c")), "-o",
                        str(program), "-lm"], check=True)
        files = {}
        for k, shape in enumerate(dict.fromkeys(SHAPES + [s for m in MODELS.values() for s in m])):
            files[shape] = Path(tmp) / f"m{k}.bin"
            padding, per_segment = write_layouts(files[shape], *shape)
            if shape not in SHAPES:
                continue
            times = subprocess.run([str(program), str(files[shape])], check=True, capture_output=True,
                                   text=True).stdout.split()
            rows, cols, sparsity = shape
            print(f"| {rows}x{cols} | {sparsity:.0%} | {' / '.join(f'{p:.2f}' for p in padding)} | "
                  + " | ".join(f"{t} us" for t in times) + f" | {per_segment:.1f} |")
        for name, shapes in MODELS.items():
            times = subprocess.run([str(program), *(str(files[shape]) for shape in shapes)], check=True,
                                   capture_output=True, text=True).stdout.split()
            print(f"| {name}: its {len(shapes)} products in turn | 90% | | "
                  + " | ".join(f"{t} us" for t in times) + " | |")


if __name__ == "__main__":
    main()
