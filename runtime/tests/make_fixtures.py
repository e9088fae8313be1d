"""Writes the C runtime's test fixtures: small pruned models saved with their program, an input for each,
and PyTorch's output for it (the oracle the C tests compare against; for int8 values, whose products
PyTorch does not compute, the Python engine's). Run from the repository root:

    python runtime/tests/make_fixtures.py [DIRECTORY]

The models are the ones tests/engine/test_program.py checks the Python engine with; the files are
committed so that `make runtime-test` needs a C compiler and make alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sparsernn import Pruner, load_sparse, save_sparse  # noqa: E402
from sparsernn.prune import OneShotSchedule  # noqa: E402
from tests.engine.test_program import Mixer, PackedTagger, RNNModel, Tagger, WordLM, pruned  # noqa: E402

OUT = Path(__file__).parent / "fixtures"
STEPS = 24
LONG = 1000


def _blocks(model: nn.Module, block: tuple[int, int]) -> nn.Module:
    """Every matrix pruned 90% in ``block`` blocks (one shot)."""
    Pruner(model, dict.fromkeys(("recurrent", "linear", "embedding"), OneShotSchedule(at=1, sparsity=0.9)),
           block=block).step()
    return model


def cases():
    """(name, model, example inputs, the test input, values)."""
    torch.manual_seed(0)
    tokens = torch.randint(0, 40, (STEPS, 1))
    long = torch.randint(0, 40, (LONG, 1))  # aarch64 equal to x86 (both to PyTorch) over a long stream
    yield "lstm", pruned(WordLM(nn.LSTM)), (tokens[:5],), long, "fp32"
    yield "gru", pruned(WordLM(nn.GRU)), (tokens[:5],), tokens, "fp32"
    yield "rnn_relu", pruned(WordLM(nn.RNN, nonlinearity="relu")), (tokens[:5],), tokens, "fp32"
    yield "lstm_proj", pruned(WordLM(nn.LSTM, proj_size=6)), (tokens[:5],), tokens, "fp32"
    yield "gru_8x1", _blocks(WordLM(nn.GRU), (8, 1)), (tokens[:5],), tokens, "fp32"
    yield "gru_bf16", pruned(WordLM(nn.GRU)), (tokens[:5],), tokens, "bf16"
    hidden = (torch.zeros(2, 1, 16), torch.zeros(2, 1, 16))
    yield "rnnmodel", pruned(RNNModel()), (tokens[:5], hidden), (tokens, hidden), "fp32"
    yield "tagger", pruned(Tagger()), (tokens[:7].T,), tokens.T, "fp32"
    yield "mixer", Mixer(), (torch.randn(1, 5, 8),), torch.randn(1, STEPS, 8), "fp32"
    yield "lstm_int8", pruned(WordLM(nn.LSTM)), (tokens[:5],), long, "int8"
    one = torch.tensor([STEPS])  # packed sequences, one at a time: its length all of its steps
    yield "packed", pruned(PackedTagger()), (tokens[:7].T, torch.tensor([7])), (tokens.T, one), "fp32"


def main(out: Path = OUT) -> None:
    out.mkdir(exist_ok=True)
    for name, model, example, inputs, values in cases():
        model.eval()
        save_sparse(model, out / f"{name}.safetensors", values=values, example_inputs=example)
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        with torch.no_grad():
            output = torch.utils._pytree.tree_leaves(model(*inputs))[0]
            if values == "int8":  # products in int8 as the engine computes them: its output is the oracle
                program = load_sparse(model, out / f"{name}.safetensors")
                output = torch.cat([program(token[None])[0] for token in inputs[0]])
        first = inputs[0]
        ids = first.dtype == torch.long
        np.save(out / f"{name}.in.npy", first.reshape(-1).numpy() if ids else first[0].numpy())
        steps = first.numel() if ids else first.shape[1]
        np.save(out / f"{name}.expected.npy", output.reshape(steps, -1).numpy().astype(np.float32))
        print(name, (out / f"{name}.safetensors").stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
