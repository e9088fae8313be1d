"""Where a streamed token's time goes when a model runs as one program from Python: the compiled step
alone, the step as the extension runs it with the copies in and out, the whole `SparseProgram` call (and
that of a forward returning the logits alone), and the family engine on the same file; the PTB-shaped LSTM LM
(2x200, vocabulary 10,000, 90% pruned at random) or the GRU LM 2x1024 of `sparsernn bench --end-to-end`,
unstructured or in 8x1 blocks, batch 1, one thread, best of five runs of 3,000 calls; then per token in the
loop `sparsernn bench --end-to-end` times (a slice of a token stream per call).

    python benchmarks/probes/program_overhead.py [--model gru] [--block 8x1]
"""

import argparse
import tempfile
import timeit
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparsernn import load_sparse, save_sparse, sparsify
from sparsernn.bench.end_to_end import SHAPES, _pruned_model
from sparsernn.config import ModelConfig
from sparsernn.engine import LanguageModelEngine
from sparsernn.models.lm import LanguageModel


class LogitsOnly(nn.Module):
    """The same model with a forward that returns the logits alone, as a generating user's may."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(tokens)[0]


def microseconds(call, number=3000) -> float:
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("ptb", "gru"), default="ptb", help="LSTM 2x200 or GRU 2x1024")
    parser.add_argument("--block", default="1x1", help="1x1 (unstructured) or 8x1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = SHAPES[args.model]
    model, architecture = _pruned_model(shape, tuple(int(n) for n in args.block.split("x")))
    token = torch.zeros(1, 1, dtype=torch.long)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lm.safetensors"
        vocabulary = [str(i) for i in range(shape["vocab"])]
        save_sparse(model, path, example_inputs=(torch.zeros(5, 1, dtype=torch.long),),
                    extra={"architecture": architecture, "vocabulary": vocabulary})
        config = ModelConfig(cell=shape["cell"], embedding_size=shape["embedding_size"],
                             hidden_size=shape["hidden_size"], layers=shape["layers"], dropout=0.0)
        program = load_sparse(LanguageModel(shape["vocab"], config), path)
        engine = LanguageModelEngine(path)
    logits_only = sparsify(LogitsOnly(model), example_inputs=(torch.zeros(5, 1, dtype=torch.long),))
    with torch.no_grad():
        program(token)
        plan = program._plans[((token.shape, token.dtype),)]  # the compiled step and its buffers
        step, buffers = plan.step[0], plan.direct
        sources = [(np.ascontiguousarray(token.numpy()), buffers[0])]
        rows = {
            "the compiled step alone": microseconds(step),
            "the extension's step(): token in, step, copies of the outputs": microseconds(
                lambda: plan.call(sources)),
            "SparseProgram called (what a user calls)": microseconds(lambda: program(token)),
            "the same for a forward returning the logits alone": microseconds(lambda: logits_only(token)),
            "LanguageModelEngine on the same file (logits only)": microseconds(lambda: engine(token.numpy())),
        }
        # the bench's loop (sparsernn bench --end-to-end): a slice of a token stream per call
        stream = torch.zeros(200, 1, dtype=torch.long)

        def floor():  # the least a Python call can do: the slice in, the step, the outputs' tensors out
            for t in range(200):
                arrays = plan.call([(stream[t:t + 1].numpy(), buffers[0])])
                [torch.from_numpy(array) for array in arrays]

        def called():
            for t in range(200):
                program(stream[t:t + 1])

        rows["in the bench's loop: the extension's step, the slice in and the outputs' tensors out"] = \
            microseconds(floor, 15) / 200
        rows["in the bench's loop: SparseProgram called"] = microseconds(called, 15) / 200
    title = f"{shape['cell'].upper()} {shape['layers']}x{shape['hidden_size']} LM, {args.block}"
    print(f"| one streamed token, {title} | us |\n|---|---|")
    for name, us in rows.items():
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
