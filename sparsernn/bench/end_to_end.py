"""End to end: an exported language model at batch 1, our engine against the dense PyTorch model."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sparsernn.config import ModelConfig
from sparsernn.engine import LanguageModelEngine
from sparsernn.export import lm_architecture, load_exported, save_sparse
from sparsernn.models.lm import LanguageModel
from sparsernn.prune import OneShotSchedule, Pruner

#: The default model: a GRU LM of the size where the paper's speed-ups matter (~26 M parameters).
SHAPE = {"cell": "gru", "embedding_size": 512, "hidden_size": 1024, "layers": 2, "vocab": 10000}
QUICK_SHAPE = {"cell": "gru", "embedding_size": 64, "hidden_size": 128, "layers": 1, "vocab": 1000}


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


def _dense_from_export(path: str) -> tuple[LanguageModel, str]:
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
    return model, Path(path).name


def _tokens_per_second(step, tokens: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return tokens / best


def _time_torch(model, tokens: torch.Tensor) -> dict[str, float]:
    def streaming():
        hidden = None
        for t in range(tokens.shape[0]):
            _, hidden = model(tokens[t:t + 1], hidden)

    with torch.no_grad():
        return {"streaming": _tokens_per_second(streaming, tokens.shape[0]),
                "sequence": _tokens_per_second(lambda: model(tokens), tokens.shape[0])}


def _time_engine(engine: LanguageModelEngine, tokens: np.ndarray) -> dict[str, float]:
    def streaming():
        engine.reset()
        for t in range(tokens.shape[0]):
            engine(tokens[t:t + 1])

    def sequence():
        engine.reset()
        engine(tokens)

    return {"streaming": _tokens_per_second(streaming, tokens.shape[0]),
            "sequence": _tokens_per_second(sequence, tokens.shape[0])}


def end_to_end_rows(model_path: str | None, block: tuple[int, int], *, quick: bool = False,
                    steps: int = 200, progress=print) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if model_path:
            dense_model, name = _dense_from_export(model_path)
            variants = {"file": model_path}
        else:
            shape = QUICK_SHAPE if quick else SHAPE
            name = (f"{shape['cell']} LM {shape['layers']}x{shape['hidden_size']}, embedding "
                    f"{shape['embedding_size']}, vocabulary {shape['vocab']}, 90% sparse")
            variants = {}
            for structure, shape_of_block in (("unstructured", (1, 1)), ("blocks", block)):
                model, architecture = _pruned_model(shape, shape_of_block)
                path = str(Path(tmp) / f"{structure}.safetensors")
                save_sparse(model, path, extra={"architecture": architecture,
                                                "vocabulary": [str(i) for i in range(shape["vocab"])]})
                variants[structure] = path
            dense_model = model  # run densely: PyTorch's speed does not depend on the zeros
        vocab = dense_model.decoder.out_features
        tokens = torch.randint(0, vocab, (steps, 1), generator=torch.Generator().manual_seed(0))
        dense = _time_torch(dense_model, tokens)
        for mode, rate in dense.items():
            rows.append({"model": name, "mode": mode, "method": "pytorch_dense", "tokens_per_s": rate,
                         "speedup_vs_dense": 1.0})
        for structure, path in variants.items():
            engine = LanguageModelEngine(path, threads=1)
            for mode, rate in _time_engine(engine, tokens.numpy()).items():
                rows.append({"model": name, "mode": mode, "method": f"sparsernn_{structure}",
                             "tokens_per_s": rate, "speedup_vs_dense": rate / dense[mode]})
            progress(f"end to end {structure}: " + ", ".join(
                f"{r['mode']} {r['tokens_per_s']:,.0f} tokens/s ({r['speedup_vs_dense']:.2f}x)"
                for r in rows[-2:]))
    return rows
