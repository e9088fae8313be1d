"""``sparsernn bench``: our kernels against the best dense and sparse libraries, side by side in one run.

Kernel sweep: an n x n matrix times (n, batch) at each sparsity, unstructured and block-sparse, with 1
or more threads. Methods: ``numpy`` (OpenBLAS) and ``torch`` dense, ``scipy`` (CSR / BSR, one thread),
``torch_csr`` (MKL through ``torch.sparse_csr_tensor`` with int32 indices) and ``sparsernn``, with
bfloat16 values (``sparsernn_bf16``) and, unstructured, with int8 values (``sparsernn_int8``: products in
int8), each unstructured one also limited to each narrower instruction set the machine has
(``sparsernn_avx2``, ``sparsernn_int8_avx2`` on an AVX-512 machine). Each row:
``n, sparsity, batch, threads, structure, method, us_per_call, gbytes_per_s, speedup_vs_dense`` (against
the fastest dense method at the same n, batch and threads) and ``bound_speedup`` (dense bytes over the
bytes of our format: what memory traffic alone would allow). All methods for one n, batch and thread
count are timed in turns (:func:`measure_in_turns`).

End to end (:mod:`sparsernn.bench.end_to_end`): language models 90% sparse, fed one token at a time
(batch 1, state carried) and as a whole sequence, our engine against the dense model in PyTorch, ONNX
Runtime and OpenVINO (where installed), and in dense int8, in turns.

With a CUDA device, also the paper's comparison there: torch's CSR (cuSPARSE) against dense (cuBLAS).
"""

from __future__ import annotations

import itertools
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from sparsernn.bench.report import markdown_table, plot_rows


def measure_in_turns(functions: dict, seconds: float, rounds: int = 10) -> dict:
    """Median microseconds per call of each function, timed in turns.

    Each function gets a batch size of calls that lasts about ``seconds / rounds``; then in each of
    ``rounds`` rounds every function runs one batch, so a busy spell on a shared machine slows all of
    them alike instead of whichever happened to be running. An untimed call before each batch brings
    the function's data back into the caches the other functions used, as repeated use would.
    """
    calls = {}
    for name, function in functions.items():
        function()
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / rounds or count < 1:
            function()
            count += 1
        calls[name] = count
    samples = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            function()
            start = time.perf_counter()
            for _ in range(calls[name]):
                function()
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(times) * 1e6 for name, times in samples.items()}


def random_pruned(rng, n: int, sparsity: float, block: tuple[int, int]) -> np.ndarray:
    """An n x n float32 matrix with exactly round(sparsity * blocks) blocks zeroed, at random places."""
    r, c = block
    blocks = (n // r) * (n // c)
    keep = np.ones(blocks, bool)
    keep[rng.choice(blocks, size=round(sparsity * blocks), replace=False)] = False
    dense = rng.standard_normal((n, n)).astype(np.float32)
    return dense * np.kron(keep.reshape(n // r, n // c), np.ones(block, np.float32))


def _dense_methods(dense: np.ndarray, x: np.ndarray) -> dict:
    import torch

    dense_torch, x_torch = torch.from_numpy(dense), torch.from_numpy(x)
    return {"numpy": (lambda: dense @ x, dense.nbytes),
            "torch": (lambda: dense_torch @ x_torch, dense.nbytes)}


def _torch_csr(weights: np.ndarray, device: str):
    """torch's CSR with int32 indices (MKL on the CPU, cuSPARSE on CUDA)."""
    import torch

    with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"
        warnings.simplefilter("ignore", UserWarning)
        csr = torch.from_numpy(weights).to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(),
                                       csr.shape, device=device)


def _csr_bytes(csr) -> int:
    return csr.values().numel() * 8 + csr.crow_indices().numel() * 4


def _with_isa(level: str, call):
    """``call`` run with the compiled kernels limited to instruction set ``level``."""
    from sparsernn import kernels

    def run():
        kernels.set_isa(level)
        try:
            return call()
        finally:
            kernels.set_isa(None)

    return run


def _sparse_methods(weights: np.ndarray, block: tuple[int, int], x: np.ndarray, threads: int) -> dict:
    """Each sparse method's call and the bytes of its matrix format."""
    import scipy.sparse
    import torch

    from sparsernn import kernels
    from sparsernn.kernels import SparseMatrix, spmm

    matrix = SparseMatrix.from_dense(weights, block)
    out = np.empty((weights.shape[0], x.shape[1]), np.float32)
    x_torch = torch.from_numpy(x)
    csr = _torch_csr(weights, "cpu")
    methods = {"sparsernn": (lambda: spmm(matrix, x, threads=threads, out=out), matrix.nbytes),
               "torch_csr": (lambda: csr @ x_torch, _csr_bytes(csr))}
    half = matrix.to_bf16()  # bfloat16 values
    methods["sparsernn_bf16"] = (lambda: spmm(half, x, threads=threads, out=out), half.nbytes)
    if block == (1, 1):  # int8 values (products in int8), and the narrower instruction sets too
        quantized = matrix.to_int8()
        methods["sparsernn_int8"] = (lambda: spmm(quantized, x, threads=threads, out=out), quantized.nbytes)
        for level in kernels.isa_levels()[:-1]:
            methods[f"sparsernn_{level}"] = (_with_isa(level, methods["sparsernn"][0]), matrix.nbytes)
            methods[f"sparsernn_int8_{level}"] = (_with_isa(level, methods["sparsernn_int8"][0]),
                                                   quantized.nbytes)
    if threads == 1:  # scipy.sparse runs on one thread
        sp = (scipy.sparse.csr_array(weights) if block == (1, 1)
              else scipy.sparse.bsr_array(weights, blocksize=block))
        methods["scipy"] = (lambda: sp @ x, sp.data.nbytes + sp.indices.nbytes + sp.indptr.nbytes)
    return methods


def kernel_rows(sizes, sparsities, batches, thread_counts, block, seconds, progress=print) -> list[dict]:
    import torch
    from threadpoolctl import threadpool_limits

    from sparsernn.kernels import backend

    if backend() != "c":
        raise RuntimeError("the compiled kernels are not built; nothing to benchmark")
    rng = np.random.default_rng(0)
    structures = {"unstructured": (1, 1), "blocks": block}
    rows = []
    for n, batch, threads in itertools.product(sizes, batches, thread_counts):
        x = rng.standard_normal((n, batch)).astype(np.float32)
        torch.set_num_threads(threads)
        with threadpool_limits(threads):
            dense = rng.standard_normal((n, n)).astype(np.float32)
            methods = {("dense", 0.0, method): call for method, call in _dense_methods(dense, x).items()}
            for sparsity, (structure, shape) in itertools.product(sparsities, structures.items()):
                weights = random_pruned(rng, n, sparsity, shape)
                methods |= {(structure, sparsity, method): call
                            for method, call in _sparse_methods(weights, shape, x, threads).items()}
            timed = measure_in_turns({key: call for key, (call, _) in methods.items()}, seconds)
        best_dense = min(us for (structure, _, _), us in timed.items() if structure == "dense")
        for (structure, sparsity, method), us in timed.items():
            nbytes = methods[structure, sparsity, method][1]
            ours = n * n * 4 / methods[structure, sparsity, "sparsernn"][1] if structure != "dense" else 1.0
            rows.append(_row(n, sparsity, batch, threads, structure, method, us, nbytes, ours,
                             best_dense / us))
        at_90 = [r for r in rows
                 if (r["n"], r["batch"], r["threads"], r["sparsity"]) == (n, batch, threads, 0.9)]
        progress(f"n={n} batch={batch} threads={threads}: best dense {best_dense:.1f} us; at 90%: "
                 + ", ".join(f"{r['structure']}/{r['method']} {r['speedup_vs_dense']:.2f}x" for r in at_90))
    return rows


def device_rows(device: str, sizes, sparsities, batches, block, seconds, progress=print) -> list[dict]:
    """The paper's comparison on a torch device: dense ``W @ x`` (cuBLAS on CUDA) against torch's CSR
    (cuSPARSE on CUDA), unstructured and in ``block`` blocks, timed in turns, every call waiting for
    the device to finish. Rows as :func:`kernel_rows` gives, methods ``torch_dense_<device>`` and
    ``torch_csr_<device>``, speed-ups against dense on the same device."""
    import torch

    wait = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    structures = {"unstructured": (1, 1), "blocks": block}
    rows = []
    for n, batch in itertools.product(sizes, batches):
        x = torch.from_numpy(rng.standard_normal((n, batch)).astype(np.float32)).to(device)
        dense = torch.from_numpy(rng.standard_normal((n, n)).astype(np.float32)).to(device)
        matrices = {("dense", 0.0): (dense, n * n * 4)}
        for sparsity, (structure, shape) in itertools.product(sparsities, structures.items()):
            csr = _torch_csr(random_pruned(rng, n, sparsity, shape), device)
            matrices[structure, sparsity] = (csr, _csr_bytes(csr))

        def call(matrix, x):
            def run():
                matrix @ x
                wait()
            return run

        timed = measure_in_turns({key: call(matrix, x) for key, (matrix, _) in matrices.items()}, seconds)
        for (structure, sparsity), us in timed.items():
            method = "torch_dense" if structure == "dense" else "torch_csr"
            nbytes = matrices[structure, sparsity][1]
            rows.append(_row(n, sparsity, batch, 1, structure, f"{method}_{device}", us, nbytes,
                             n * n * 4 / nbytes, timed["dense", 0.0] / us))
        progress(f"{device} n={n} batch={batch}: dense {timed['dense', 0.0]:.1f} us; "
                 + ", ".join(f"{key[0]} {key[1]:.2f} {timed['dense', 0.0] / us:.2f}x"
                             for key, us in timed.items() if key[0] != "dense"))
    return rows


def _row(n, sparsity, batch, threads, structure, method, us, nbytes, bound, speedup=1.0) -> dict:
    return {"n": n, "sparsity": sparsity, "batch": batch, "threads": threads, "structure": structure,
            "method": method, "us_per_call": round(us, 2), "gbytes_per_s": round(nbytes / us / 1e3, 2),
            "speedup_vs_dense": round(speedup, 3), "bound_speedup": round(bound, 2)}


def machine() -> dict:
    import os

    import torch

    from sparsernn.kernels import _compiled

    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    compiled = _compiled()
    return {"cpu": names[0] if names else platform.processor(), "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "avx2": bool(compiled and compiled.avx2), "avx512": bool(compiled and compiled.avx512),
            "openmp": bool(compiled and compiled.openmp)}


def run_bench(args) -> None:
    from sparsernn.bench.end_to_end import end_to_end_rows

    parse = lambda text, kind: [kind(v) for v in text.split(",")]  # noqa: E731
    if args.quick:
        sizes, sparsities, batches, thread_counts = [512], [0.9], [1], [1]
    else:
        sizes, sparsities = parse(args.sizes, int), parse(args.sparsities, float)
        batches, thread_counts = parse(args.batches, int), parse(args.threads, int)
    block = tuple(int(v) for v in args.block.lower().split("x"))
    result = {"machine": machine(), "block": list(block),
              "rows": kernel_rows(sizes, sparsities, batches, thread_counts, block, args.seconds)}
    if args.end_to_end or args.model:
        result["end_to_end"] = end_to_end_rows(args.model, block, quick=args.quick,
                                               threads=tuple(thread_counts), progress=print)
    import torch

    if torch.cuda.is_available():
        result["cuda"] = {"device": torch.cuda.get_device_name(0),
                          "rows": device_rows("cuda", sizes, sparsities, batches, block, args.seconds)}
    else:
        print("no CUDA device: the cuSPARSE against cuBLAS comparison is skipped")
    table = markdown_table(result)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.plot:
        plot_rows(result["rows"], args.plot)
        print(f"plot: {args.plot}")
