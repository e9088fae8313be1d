"""Train every preset of a task in order (resuming unfinished ones) and print its results table.

Usage: python scripts/presets.py {ptb,an4,mt} [--runs runs] [--only PRESET ...] [--set KEY=VALUE]
       [--table-only]

Each preset trains into RUNS/<preset> in its own process; the table evaluates each run's best.pt
(PTB: perplexity on the validation and test splits; AN4: CER and WER on the test split, greedy and
prefix beam search; MT: BLEU and chrF on the test split, greedy). Wall time is the training steps'
time recorded in metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from sparsernn.train.evaluate import evaluate_checkpoint, load_trained
from sparsernn.train.recognize import evaluate_speech
from sparsernn.train.translate import evaluate_translation

# Order matters: later presets read earlier runs (sizing to the 90% model's non-zeros, the teacher).
PRESETS = {
    "ptb": ["ptb-dense", "ptb-narang90", "ptb-agp90", "ptb-oneshot90", "ptb-small-dense", "ptb-distill"],
    "an4": ["an4-dense", "an4-narang90", "an4-oneshot90", "an4-small-dense", "an4-narang-wide"],
    "mt": ["mt-dense", "mt-narang90", "mt-agp90", "mt-oneshot90", "mt-small-dense", "mt-distill"],
}
# Presets that read another run, and the flag that points them at this --runs directory.
READS = {
    "ptb-small-dense": {"prune.match_checkpoint": "ptb-narang90"},
    "ptb-distill": {"prune.match_checkpoint": "ptb-narang90", "prune.teacher": "ptb-dense"},
    "an4-small-dense": {"prune.match_checkpoint": "an4-narang90"},
    "mt-small-dense": {"prune.match_checkpoint": "mt-narang90"},
    "mt-distill": {"prune.match_checkpoint": "mt-narang90", "prune.teacher": "mt-dense"},
}


def train(preset: str, runs: Path, overrides: list[str]) -> None:
    out = runs / preset
    command = [sys.executable, "-m", "sparsernn", "train", f"configs/{preset}.yaml", "--out", str(out)]
    for key, run in READS.get(preset, {}).items():
        command.append(f"--set={key}={runs / run / 'checkpoints/best.pt'}")
    command += [f"--set={item}" for item in overrides]
    if (out / "checkpoints" / "last.pt").exists():
        command.append("--resume")
    print(" ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"{preset}: training failed (see above)")


def _minutes(run: Path) -> float:
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    return evals[-1]["train_seconds"] / 60


def ptb_row(preset: str, runs: Path) -> str:
    best = runs / preset / "checkpoints" / "best.pt"
    model, config, _, _ = load_trained(best)
    valid, test = evaluate_checkpoint(best, "valid"), evaluate_checkpoint(best, "test")
    return (f"| {preset} | {config.prune.method} | {model.config.hidden_size} | "
            f"{test['nonzero_parameters']:,} | {test['sparsity']:.1%} | {valid['perplexity']:.2f} | "
            f"{test['perplexity']:.2f} | {_minutes(runs / preset):.1f} |")


def an4_row(preset: str, runs: Path) -> str:
    best = runs / preset / "checkpoints" / "best.pt"
    model, config, _, _ = load_trained(best)
    test = evaluate_speech(best, "test", beam=16)
    shape = model.config
    shape = f"{shape.cell} {'bi' if shape.bidirectional else 'uni'} {shape.layers}x{shape.hidden_size}"
    return (f"| {preset} | {config.prune.method} | {shape} | {test['nonzero_parameters']:,} | "
            f"{test['sparsity']:.1%} | {test['cer_greedy']:.1%} | {test['wer_greedy']:.1%} | "
            f"{test['cer_beam']:.1%} | {test['wer_beam']:.1%} | {_minutes(runs / preset):.1f} |")


def mt_row(preset: str, runs: Path) -> str:
    best = runs / preset / "checkpoints" / "best.pt"
    model, config, _, _ = load_trained(best)
    test = evaluate_translation(best, "test")
    return (f"| {preset} | {config.prune.method} | {model.config.hidden_size} | "
            f"{test['nonzero_parameters']:,} | {test['sparsity']:.1%} | {test['bleu']:.2f} | "
            f"{test['chrf']:.2f} | {_minutes(runs / preset):.1f} |")


HEADERS = {
    "ptb": "| preset | method | hidden | non-zero parameters | pruned-tensor sparsity | valid ppl | test ppl "
           "| train minutes |\n|---|---|---|---|---|---|---|---|",
    "an4": "| preset | method | recurrent layers | non-zero parameters | pruned-tensor sparsity "
           "| test CER greedy | test WER greedy | test CER beam 16 | test WER beam 16 | train minutes |"
           "\n|---|---|---|---|---|---|---|---|---|---|",
    "mt": "| preset | method | hidden | non-zero parameters | pruned-tensor sparsity | test BLEU greedy "
          "| test chrF greedy | train minutes |\n|---|---|---|---|---|---|---|---|",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(PRESETS))
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--only", nargs="+")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override for every preset, e.g. train.max_steps=50")
    args = parser.parse_args()
    presets = args.only or PRESETS[args.task]
    unknown = set(presets) - set(PRESETS[args.task])
    if unknown:
        parser.error(f"unknown presets {sorted(unknown)}; {args.task} has {', '.join(PRESETS[args.task])}")
    if not args.table_only:
        for preset in presets:
            train(preset, args.runs, args.set)
    print(HEADERS[args.task])
    row = {"ptb": ptb_row, "an4": an4_row, "mt": mt_row}[args.task]
    for preset in presets:
        print(row(preset, args.runs))


if __name__ == "__main__":
    main()
