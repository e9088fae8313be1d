"""End to end: a language model at batch 1, our engine on the pruned model against the dense model in
PyTorch, ONNX Runtime and OpenVINO, and in dense int8 by PyTorch's and ONNX Runtime's dynamic
quantization (the peers: :mod:`sparsernn.bench.peers`), all timed in turns.

Two modes: streaming (one token per call, state carried, as a deployed model serves) and the whole
sequence in one call. Every row gives tokens per second, the speed-up against dense PyTorch and against
the best dense runtime measured in the same run and mode (the fastest of all of them, int8 included),
and the bytes of the file it runs from.

Each exported file runs three ways: the built-in family's engine (``sparsernn_*``), the file's program
loaded into the user's own module class with :func:`~sparsernn.load_sparse` (``program_*``: what
``sparsify(model, example_inputs=...)`` gives any model), and the C runtime's ``sparsernn-run`` (``c_*``,
where ``make runtime`` has built it), by the time it reports for the steps (:func:`_c_calls`).
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from sparsernn.bench.peers import (
    BF16_PEERS,
    INT8_PEERS,
    PEERS,
    PeerLanguageModel,
    export_language_model,
    missing,
    pytorch_int8,
    quantized_onnx,
)
from sparsernn.config import ModelConfig
from sparsernn.engine import LanguageModelEngine, load_sparse
from sparsernn.export import lm_architecture, load_exported, save_sparse
from sparsernn.models.lm import LanguageModel
from sparsernn.prune import OneShotSchedule, Pruner

#: The default models: a GRU LM of the size where the paper's speed-ups matter (~26 M parameters), and
#: the shape of the PTB presets (LSTM 2x200).
SHAPES = {
    "gru": {"cell": "gru", "embedding_size": 512, "hidden_size": 1024, "layers": 2, "vocab": 10000},
    "ptb": {"cell": "lstm", "embedding_size": 200, "hidden_size": 200, "layers": 2, "vocab": 10000},
}
QUICK_SHAPE = {"cell": "gru", "embedding_size": 64, "hidden_size": 128, "layers": 1, "vocab": 1000}
DENSE_METHODS = ("pytorch", "pytorch_int8", *PEERS, *INT8_PEERS, *BF16_PEERS)
#: How far a peer's logits may be from dense PyTorch's (max difference over the largest logit) before it
#: is not timed: its own rounding, bf16's and int8's.
PEER_TOLERANCE = {"bf16": 1e-2, "int8": 5e-2}


def _pruned_model(shape: dict, block: tuple[int, int], sparsity: float = 0.9):
    torch.manual_seed(0)
    config = ModelConfig(cell=shape["cell"], embedding_size=shape["embedding_size"],
                         hidden_size=shape["hidden_size"], layers=shape["layers"], dropout=0.0)
    model = LanguageModel(shape["vocab"], config).eval()
    for p in model.parameters():  # trained-looking magnitudes; the engine's speed does not depend on them
        torch.nn.init.normal_(p, std=0.05)
    schedules = dict.fromkeys(("recurrent", "linear", "embedding"), OneShotSchedule(at=1, sparsity=sparsity))
    pruner = Pruner(model, schedules, block=block)
    pruner.step()
    return model, lm_architecture(config.model_dump(), shape["vocab"])


def _dense_from_export(path: str) -> LanguageModel:
    exported = load_exported(path)
    arch = exported.architecture
    config = ModelConfig(**{k: arch[k] for k in ("cell", "embedding_size", "hidden_size", "layers",
                                                 "tie_weights")}, dropout=0.0)
    model = LanguageModel(arch["vocab_size"], config).eval()
    state = {name: torch.from_numpy(t.to_dense() if hasattr(t, "to_dense") else t)
             for name, t in exported.tensors.items()}
    if arch["tie_weights"]:
        state["decoder.weight"] = state["embedding.weight"]
    model.load_state_dict(state)
    return model


def _torch_calls(model: LanguageModel, tokens: dict[str, np.ndarray]) -> dict:
    stream, whole = (torch.from_numpy(tokens[mode]) for mode in ("streaming", "sequence"))

    def streaming():
        hidden = None
        for t in range(stream.shape[0]):
            _, hidden = model(stream[t:t + 1], hidden)

    def sequence():
        model(whole)

    return {"streaming": torch.no_grad()(streaming), "sequence": torch.no_grad()(sequence)}


@torch.no_grad()
def _torch_logits(model: LanguageModel, tokens: np.ndarray, streamed: bool) -> np.ndarray:
    """``model``'s logits for ``tokens``: one token per call with the state carried, or all at once."""
    tokens = torch.from_numpy(tokens)
    if not streamed:
        return model(tokens)[0].numpy()
    hidden, logits = None, []
    for t in range(tokens.shape[0]):
        output, hidden = model(tokens[t:t + 1], hidden)
        logits.append(output)
    return torch.cat(logits).numpy()


def _saved_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``torch.save`` of the model's state dict (what a PyTorch deployment loads)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _peer_calls(name: str, paths: dict[str, Path], model: LanguageModel, tokens: dict[str, np.ndarray],
                threads: int) -> dict:
    """The two modes on peer ``name`` (``tokens`` per mode), after checking its logits against
    PyTorch's (:data:`PEER_TOLERANCE`)."""
    peer = PeerLanguageModel(name, paths, model, threads)
    calls = {"streaming": lambda: peer.stream(tokens["streaming"]),
             "sequence": lambda: peer.sequence(tokens["sequence"])}
    for mode, call in calls.items():
        _check_logits(name, mode, call(), model, tokens[mode])
    return calls


def _check_logits(name: str, mode: str, got: np.ndarray, model: LanguageModel, tokens: np.ndarray) -> None:
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens))[0].numpy()
    difference = float(np.abs(got - expected).max() / np.abs(expected).max())
    if difference > PEER_TOLERANCE.get(name.rsplit("_", 1)[-1], 1e-3):
        raise RuntimeError(f"{name} ({mode}) computes other logits than PyTorch (max difference "
                           f"{difference:.3g} of the largest); not timing it")


def _engine_calls(engine: LanguageModelEngine, tokens: dict[str, np.ndarray]) -> dict:
    def streaming():
        engine.reset()
        for t in range(tokens["streaming"].shape[0]):
            engine(tokens["streaming"][t:t + 1])

    def sequence():
        engine.reset()
        engine(tokens["sequence"])

    return {"streaming": streaming, "sequence": sequence}


#: The C runtime's command-line tool, as `make runtime` builds it in the repository.
C_RUNTIME = Path(__file__).resolve().parents[2] / "build" / "runtime" / "sparsernn-run"


def _program_calls(module, tokens: dict[str, np.ndarray]) -> dict:
    """The file's program in the user's module (:class:`~sparsernn.engine.SparseProgram`), as the user
    calls it: one token per call, then the whole sequence."""
    stream, whole = (torch.from_numpy(tokens[mode]) for mode in ("streaming", "sequence"))

    def streaming():
        module.reset()
        for t in range(stream.shape[0]):
            module(stream[t:t + 1])

    def sequence():
        module.reset()
        module(whole)

    return {"streaming": torch.no_grad()(streaming), "sequence": torch.no_grad()(sequence)}


def _c_calls(path: str, tokens: dict[str, np.ndarray], directory: Path, timings: dict) -> dict:
    """``sparsernn-run --time`` on each mode's tokens (streamed; the sequence with --whole), each call's
    reported microseconds a token appended to ``timings[mode]``: the steps alone, as a C program that
    loads the model once and consumes each output would see them (not the process start, the loading or
    writing every step's logits to a file, which the command's wall time includes)."""
    def command(mode: str):
        np.save(directory / f"{mode}.npy", tokens[mode].reshape(-1))
        arguments = [str(C_RUNTIME), path, "--input", str(directory / f"{mode}.npy"), "--time",
                     *(["--whole"] if mode == "sequence" else [])]

        def run():
            report = subprocess.run(arguments, check=True, capture_output=True, text=True).stdout
            timings.setdefault(mode, []).append(float(report.split(",")[-1].split()[0]))
        return run

    return {mode: command(mode) for mode in ("streaming", "sequence")}


def time_model(name: str, dense_model: LanguageModel, variants: dict[str, str], *, threads: int = 1,
               steps: tuple[int, int] = (200, 2000), rounds: int = 5, progress=print) -> list[dict]:
    """Rows for one model: the dense model in PyTorch and the peers, and each exported ``variants``
    file in our engine, streaming ``steps[0]`` tokens and a whole sequence of ``steps[1]``, timed in
    turns (``rounds`` rounds), torch on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _time_model(name, dense_model, variants, threads, steps, rounds, progress)
    finally:
        torch.set_num_threads(previous)


def _time_model(name, dense_model, variants, threads, steps, rounds, progress) -> list[dict]:
    from sparsernn.bench import measure_in_turns

    vocab = dense_model.decoder.out_features
    random = torch.randint(0, vocab, (max(steps), 1), generator=torch.Generator().manual_seed(0)).numpy()
    tokens = {"streaming": random[:steps[0]], "sequence": random[:steps[1]]}
    quantized = pytorch_int8(dense_model)
    calls = {"pytorch": _torch_calls(dense_model, tokens), "pytorch_int8": _torch_calls(quantized, tokens)}
    skipped = {}
    nbytes = {"pytorch": _saved_bytes(dense_model), "pytorch_int8": _saved_bytes(quantized)}
    for mode in ("streaming", "sequence"):
        got = _torch_logits(quantized, tokens[mode], streamed=mode == "streaming")
        _check_logits("pytorch_int8", mode, got, dense_model, tokens[mode])
    notes = {}
    if dense_model.config.cell == "gru":
        notes["onnxruntime_int8"] = "ONNX Runtime has no quantized GRU: the GRU runs in float32"
    with tempfile.TemporaryDirectory() as tmp:
        paths = None
        for peer in (*PEERS, *INT8_PEERS, *BF16_PEERS):
            skipped[peer] = missing(peer)
            if not skipped[peer]:
                paths = paths or export_language_model(dense_model, Path(tmp), steps[1])
                calls[peer] = _peer_calls(peer, paths, dense_model, tokens, threads)
                graph = quantized_onnx(paths["streaming"]) if peer in INT8_PEERS else paths["streaming"]
                nbytes[peer] = graph.stat().st_size
        c_timings = {}
        for structure, path in variants.items():
            engine = LanguageModelEngine(path, threads=threads)
            calls[f"sparsernn_{structure}"] = _engine_calls(engine, tokens)
            for method in ("sparsernn", "program", "c"):
                nbytes[f"{method}_{structure}"] = Path(path).stat().st_size
            if "program" in load_exported(path).metadata:
                user_module = load_sparse(LanguageModel(vocab, dense_model.config), path, threads=threads)
                calls[f"program_{structure}"] = _program_calls(user_module, tokens)
                if C_RUNTIME.is_file() and threads == 1:
                    c_timings[f"c_{structure}"] = {}
                    calls[f"c_{structure}"] = _c_calls(path, tokens, Path(tmp), c_timings[f"c_{structure}"])
                else:
                    skipped[f"c_{structure}"] = (f"{C_RUNTIME} not built (make runtime)" if threads == 1 else
                                                 "one thread only (built without OpenMP)")
        rows = []
        for mode in ("streaming", "sequence"):
            timed = measure_in_turns({method: modes[mode] for method, modes in calls.items()}, 0.0, rounds)
            length = tokens[mode].shape[0]
            rate = {method: length / (us * 1e-6) for method, us in timed.items()}
            for method, timings in c_timings.items():  # the C runtime: the steps' own time, timed rounds only
                rate[method] = 1e6 / statistics.median(timings[mode][-rounds:])
            best = max(rate[method] for method in DENSE_METHODS if method in rate)
            ours = [m for m in [*calls, *skipped] if m.startswith(("sparsernn", "program_", "c_"))]
            for method in (*DENSE_METHODS, *dict.fromkeys(ours)):
                row = {"model": name, "mode": mode, "tokens": length, "threads": threads, "method": method,
                       **({"bytes": nbytes[method]} if method in nbytes else {}),
                       **({"note": notes[method]} if method in notes else {})}
                if method in rate:
                    row |= {"tokens_per_s": rate[method],
                            "speedup_vs_pytorch": rate[method] / rate["pytorch"],
                            "speedup_vs_best_dense": rate[method] / best}
                else:
                    row |= {"skipped": skipped[method]}
                rows.append(row)
            progress(f"{name}, {mode}, {threads} thread(s): " + ", ".join(
                f"{method} {rate[method]:,.0f} tokens/s" for method in rate))
    return rows


def end_to_end_rows(model_path: str | None, block: tuple[int, int], *, quick: bool = False,
                    threads: tuple[int, ...] = (1,), steps: tuple[int, int] | None = None,
                    progress=print) -> list[dict]:
    """Rows for an exported model file (``model_path``), or else for each of :data:`SHAPES` (the quick
    shape with ``quick``) pruned 90% at random, unstructured and in ``block`` blocks, each with float32
    and with bfloat16 values, and unstructured with int8 values. ``steps``: tokens streamed and tokens in
    the whole sequence (default 200 and 2,000; 20 and 50 with ``quick``)."""
    steps = steps or ((20, 50) if quick else (200, 2000))
    rows = []
    if model_path:
        for count in threads:
            rows += time_model(Path(model_path).name, _dense_from_export(model_path), {"file": model_path},
                               threads=count, steps=steps, progress=progress)
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        for shape in [QUICK_SHAPE] if quick else SHAPES.values():
            name = (f"{shape['cell']} LM {shape['layers']}x{shape['hidden_size']}, embedding "
                    f"{shape['embedding_size']}, vocabulary {shape['vocab']}, 90% sparse")
            variants = {}
            for structure, shape_of_block, values in (("unstructured", (1, 1), "fp32"),
                                                      ("unstructured_bf16", (1, 1), "bf16"),
                                                      ("unstructured_int8", (1, 1), "int8"),
                                                      ("blocks", block, "fp32"),
                                                      ("blocks_bf16", block, "bf16")):
                model, architecture = _pruned_model(shape, shape_of_block)
                path = str(Path(tmp) / f"{structure}.safetensors")
                save_sparse(model, path, values=values, example_inputs=(torch.zeros(5, 1, dtype=torch.long),),
                            extra={"architecture": architecture,
                                   "vocabulary": [str(i) for i in range(shape["vocab"])]})
                variants[structure] = path
            # the last pruned model, run densely: a dense runtime's speed does not depend on the zeros
            for count in threads:
                rows += time_model(name, model, variants, threads=count, steps=steps, progress=progress)
    return rows
