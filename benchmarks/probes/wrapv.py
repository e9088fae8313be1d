"""Why setup.py passes -fno-wrapv: the compiled kernels built with Python's own CFLAGS (which carry -fwrapv)
and with -fno-wrapv added, each loaded as a module, timed in turns on a 1760 x 1760 matrix at 90% times
one column (the interleaved kernel) and times 16 columns (the 16-column kernel). Needs a C compiler.

Usage: python benchmarks/probes/wrapv.py
"""

from __future__ import annotations

import importlib.util
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

from sparsernn.bench import measure_in_turns, random_pruned
from sparsernn.kernels import SparseMatrix, _matrix_args

ROOT = Path(__file__).resolve().parents[2]
#: The extension's sources as setup.py builds them: the binding and the compute core.
SOURCES = [ROOT / "sparsernn" / "kernels" / "_kernels.c",
           *(ROOT / "runtime" / "src" / f"{name}.c"
             for name in ("kernels", "kernels_avx2", "kernels_avx512", "kernels_neon", "ops", "layouts"))]


def build(directory: Path, extra: list[str]):
    """The extension compiled as setuptools would, plus ``extra`` flags; returns the loaded module."""
    directory.mkdir()
    target = directory / f"_kernels{sysconfig.get_config_var('EXT_SUFFIX')}"
    flags = [*sysconfig.get_config_var("CFLAGS").split(), "-fPIC", "-O3", "-march=native", "-fopenmp",
             "-std=c11"]
    subprocess.run(["gcc", *flags, *extra, "-shared", f"-I{sysconfig.get_paths()['include']}",
                    f"-I{ROOT / 'runtime' / 'src'}", *map(str, SOURCES), "-o", str(target), "-lm"],
                   check=True)
    spec = importlib.util.spec_from_file_location("_kernels", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    rng = np.random.default_rng(0)
    matrix = SparseMatrix.from_dense(random_pruned(rng, 1760, 0.9, (1, 1)))
    print("| build | one column (us) | 16 columns (us) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        builds = {"Python's CFLAGS (-fwrapv)": build(Path(tmp) / "wrapv", []),
                  "with -fno-wrapv": build(Path(tmp) / "nowrapv", ["-fno-wrapv"])}
        calls = {}
        for name, module in builds.items():
            for columns in (1, 16):
                x = rng.standard_normal((1760, columns)).astype(np.float32)
                out = np.empty((1760, columns), np.float32)
                args = (module.matrix(*_matrix_args(matrix, columns == 1)), x, out, b"", columns, 1)
                calls[name, columns] = (lambda f=module.spmm, a=args: f(*a))
        timed = measure_in_turns(calls, 0.5)
        for name in builds:
            print(f"| {name} | {timed[name, 1]:.1f} | {timed[name, 16]:.1f} |")


if __name__ == "__main__":
    main()
