"""The whole model as one program, streamed one token per call at batch 1 on one thread, with the AVX-512
kernels and with the AVX2 ones only: the Python engine (`sparsify(model, example_inputs=...)`) and the C
runtime (`sparsernn-run --time`, the steps' own time), in turns, on the two language models of
`sparsernn bench --end-to-end` (GRU 2x1024 and LSTM 2x200, vocabulary 10,000, 90% pruned at random).
Then the C runtime's peak memory (`/usr/bin/time -f %M`, the tokens streamed) against the file's size,
for float32 values, 8x1 blocks and int8 values.

    make runtime && python benchmarks/runtime_isa.py [--rounds 5] [--tokens 1000] [--out DIR]

The C runtime takes the instruction set from SPARSERNN_ISA (avx2: AVX-512 off), the Python engine from
sparsernn.kernels.set_isa.
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sparsernn import kernels, sparsify
from sparsernn.bench.end_to_end import C_RUNTIME, SHAPES, _pruned_model
from sparsernn.export import save_sparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="keep the files here (gru-8x1.safetensors, ..., ids.npy)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    levels = [level for level in ("avx512", "avx2") if level in kernels.isa_levels()]
    print("| model | structure | instruction set | Python program tokens/s | C runtime tokens/s "
          "| C / Python |\n|---|---|---|---|---|---|")
    memory = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.out or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        ids = np.random.default_rng(0).integers(0, 10000, args.tokens)
        np.save(directory / "ids.npy", ids)
        tokens = torch.from_numpy(ids).view(-1, 1)
        for shape in SHAPES.values():
            for structure, block in (("unstructured", (1, 1)), ("8x1 blocks", (8, 1))):
                model, _ = _pruned_model(shape, block)
                model_name = f"{shape['cell']} {shape['layers']}x{shape['hidden_size']}"
                path = directory / f"{shape['cell']}-{block[0]}x{block[1]}.safetensors"
                example = (torch.zeros(5, 1, dtype=torch.long),)
                save_sparse(model, path, example_inputs=example)
                for level in levels:
                    kernels.set_isa(level)
                    program = sparsify(model, example_inputs=example)
                    python, c = [], []
                    for _ in range(args.rounds):  # in turns
                        program.reset()
                        start = time.perf_counter()
                        with torch.no_grad():
                            for t in range(args.tokens):
                                program(tokens[t:t + 1])
                        python.append((time.perf_counter() - start) / args.tokens)
                        command = [str(C_RUNTIME), str(path), "--input", str(directory / "ids.npy"), "--time"]
                        report = subprocess.run(command, check=True, capture_output=True, text=True,
                                                env=os.environ | {"SPARSERNN_ISA": level}).stdout
                        c.append(float(report.split(",")[-1].split()[0]) * 1e-6)
                    rate = 1 / statistics.median(python), 1 / statistics.median(c)
                    print(f"| {model_name} | {structure} | {level} | {rate[0]:,.0f} | {rate[1]:,.0f} "
                          f"| {rate[1] / rate[0]:.2f}x |", flush=True)
                kernels.set_isa(None)
                for values in ("fp32", "int8") if block == (1, 1) else ("fp32",):
                    if values == "int8":
                        path = path.with_name(f"{shape['cell']}-int8.safetensors")
                        save_sparse(model, path, example_inputs=example, values=values)
                    memory.append((model_name, structure if values == "fp32" else "int8 values",
                                   path.stat().st_size, peak_bytes(path, directory / "ids.npy")))
    print("\n| model | structure | file MB | C runtime peak MB | peak / file |\n|---|---|---|---|---|")
    for model_name, structure, size, peak in memory:
        print(f"| {model_name} | {structure} | {size / 1e6:.1f} | {peak / 1e6:.1f} | {peak / size:.1f}x |")


def peak_bytes(path: Path, ids: Path) -> int:
    """The C runtime's peak resident memory streaming ``ids`` through the model at ``path``."""
    command = ["/usr/bin/time", "-f", "%M", str(C_RUNTIME), str(path), "--input", str(ids), "--time"]
    report = subprocess.run(command, check=True, capture_output=True, text=True).stderr
    return int(report.split()[-1]) * 1024


if __name__ == "__main__":
    main()
