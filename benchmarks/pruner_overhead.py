"""Cost of pruning inside a training step: `pruner.step()` and the gradient hooks.

Trains a language model (embedding -> GRU/LSTM/RNN -> linear decoder) with Adam on random tokens, in
one process, alternating blocks of dense steps (no pruner) and pruned steps (Pruner with a Narang
schedule), and reports medians:

- the training step with pruning off and on, and their ratio;
- `pruner.step()` on ordinary steps and on mask-update steps, and its share of a training step
  amortized over the paper's freq = 100 (99 ordinary steps, 1 update).

Usage: python benchmarks/pruner_overhead.py [--cell gru] [--layers 1] [--hidden 1024] [--vocab 1000]
       [--batch 32] [--seq-len 35] [--repeats 5]
The PTB presets' shape: --cell lstm --layers 2 --hidden 200 --vocab 10000 --batch 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from sparsernn.prune import NarangSchedule, Pruner


class RecurrentLM(nn.Module):
    def __init__(self, vocab: int, hidden: int, cell: str, layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cell](hidden, hidden, layers)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens):  # (T, B) -> (T, B, vocab)
        return self.decoder(self.rnn(self.embedding(tokens))[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=("gru", "lstm", "rnn"), default="gru")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=35)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="blocks of each kind")
    parser.add_argument("--block", type=int, default=10, help="steps per block")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()

    torch.manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.seq_len + 1, args.batch))
    models = {}
    for kind in ("dense", "pruned"):
        model = RecurrentLM(args.vocab, args.hidden, args.cell, args.layers)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        # An update every `block` steps so each pruned block holds one mask update.
        schedule = NarangSchedule(start=0, ramp=10**6, end=10**7, freq=args.block, sparsity=0.9,
                                  q_from="update")
        pruner = Pruner(model, schedule, optimizer) if kind == "pruned" else None
        models[kind] = (model, optimizer, pruner)

    step_times = {"dense": [], "pruned": []}
    pruner_times = {"ordinary": [], "update": []}

    def train_step(kind: str) -> None:
        model, optimizer, pruner = models[kind]
        started = time.perf_counter()
        logits = model(tokens[:-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, args.vocab), tokens[1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if pruner is not None:
            before = time.perf_counter()
            pruner.step()
            after = time.perf_counter()
            is_update = pruner.schedules["recurrent"].is_update_step(pruner.current_step)
            pruner_times["update" if is_update else "ordinary"].append(after - before)
        step_times[kind].append(time.perf_counter() - started)

    for kind in ("dense", "pruned"):  # warm-up
        for _ in range(3):
            train_step(kind)
    step_times = {"dense": [], "pruned": []}
    pruner_times = {"ordinary": [], "update": []}
    for _ in range(args.repeats):
        for kind in ("dense", "pruned"):
            for _ in range(args.block):
                train_step(kind)

    dense = statistics.median(step_times["dense"])
    pruned = statistics.median(step_times["pruned"])
    ordinary = statistics.median(pruner_times["ordinary"])
    update = statistics.median(pruner_times["update"])
    amortized = (99 * ordinary + update) / 100
    pruned_params = sum(w.param.numel() for w in models["pruned"][2].weights)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": f"{args.cell.upper()} LM: embedding {args.vocab}x{args.hidden}, {args.layers} x "
                 f"{args.cell.upper()} {args.hidden}, decoder, "
                 f"batch {args.batch}, seq_len {args.seq_len}, Adam",
        "pruned_parameters": pruned_params,
        "steps_per_kind": len(step_times["dense"]),
        "step_ms_dense": 1e3 * dense,
        "step_ms_pruned": 1e3 * pruned,
        "pruned_over_dense": pruned / dense,
        "pruner_step_ms_ordinary": 1e3 * ordinary,
        "pruner_step_ms_update": 1e3 * update,
        "pruner_step_share_freq100": amortized / pruned,
    }
    print(json.dumps(result, indent=2))
    print(f"\npruner.step(): {1e3 * ordinary:.2f} ms ordinary, {1e3 * update:.1f} ms at a mask update; "
          f"amortized over freq=100: {amortized / pruned:.2%} of a {1e3 * pruned:.0f} ms training step")
    print(f"training step, pruning on / off: {pruned / dense:.3f} (medians of {len(step_times['dense'])})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
