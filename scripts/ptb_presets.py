"""Train every PTB preset in order (resuming unfinished ones) and print the results table.

Usage: python scripts/ptb_presets.py [--runs runs] [--only ptb-dense ...] [--set KEY=VALUE] [--table-only]

Each preset trains into RUNS/<preset> in its own process; the table evaluates each run's best.pt on
the validation and test splits. Wall time is the training steps' time recorded in metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from sparsernn.train.evaluate import evaluate_checkpoint, load_trained

# Order matters: small-dense and distill read the dense and narang runs.
PRESETS = ["ptb-dense", "ptb-narang90", "ptb-agp90", "ptb-oneshot90", "ptb-small-dense", "ptb-distill"]


def train(preset: str, runs: Path, overrides: list[str]) -> None:
    out = runs / preset
    command = [sys.executable, "-m", "sparsernn", "train", f"configs/{preset}.yaml", "--out", str(out)]
    # The presets name runs/...; point them at this --runs directory.
    if preset in ("ptb-small-dense", "ptb-distill"):
        command.append(f"--set=prune.match_checkpoint={runs / 'ptb-narang90/checkpoints/best.pt'}")
    if preset == "ptb-distill":
        command.append(f"--set=prune.teacher={runs / 'ptb-dense/checkpoints/best.pt'}")
    command += [f"--set={item}" for item in overrides]
    if (out / "checkpoints" / "last.pt").exists():
        command.append("--resume")
    print(" ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"{preset}: training failed (see above)")


def row(preset: str, runs: Path) -> str:
    run = runs / preset
    best = run / "checkpoints" / "best.pt"
    model, config, _, _ = load_trained(best)
    valid, test = evaluate_checkpoint(best, "valid"), evaluate_checkpoint(best, "test")
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    minutes = evals[-1]["train_seconds"] / 60
    return (f"| {preset} | {config.prune.method} | {model.config.hidden_size} | "
            f"{test['nonzero_parameters']:,} | {test['sparsity']:.1%} | {valid['perplexity']:.2f} | "
            f"{test['perplexity']:.2f} | {minutes:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--only", nargs="+", choices=PRESETS, default=PRESETS)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override for every preset, e.g. train.max_steps=50")
    args = parser.parse_args()
    if not args.table_only:
        for preset in args.only:
            train(preset, args.runs, args.set)
    print("| preset | method | hidden | non-zero parameters | pruned-tensor sparsity | valid ppl | test ppl "
          "| train minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.only:
        print(row(preset, args.runs))


if __name__ == "__main__":
    main()
