"""Does a recipe train on every seed? Trains each config for its first few epochs on many seeds
(the config's own schedule, stopped by ``train.max_steps``) and writes a table of validation CER by
epoch, seed by seed, with the runs whose last validation CER is above a bar marked.

    python scripts/speech_seeds.py configs/an4-dense.yaml configs/an4-narang90.yaml --seeds 8 \\
        --epochs 4 --out docs/results/an4-frontier/seeds --jobs 2

Each run trains into ``OUT/runs/NAME-seedS`` as ``sparsernn train`` does (``finished.json`` marks a
finished one, which a second call skips, so the table can be built over several sittings); the
table goes to ``OUT/table.md`` with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sparsernn.config import load_config
from sparsernn.train import distributed
from sparsernn.train.tasks import make_task


def records(directory: Path) -> list[dict]:
    return [r for r in map(json.loads, (directory / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "eval"]


def train(config: Path, seed: int, steps: int, directory: Path, extra: list[str]) -> None:
    if (directory / "finished.json").exists():
        return
    command = [sys.executable, "-m", "sparsernn", "train", str(config), "--out", str(directory),
               "--set", f"train.seed={seed}", "--set", f"train.max_steps={steps}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "train.log").open("w") as log:  # not committed (.gitignore)
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    (directory / "finished.json").write_text(json.dumps({"command": command[1:], "steps": steps}) + "\n")


def table(runs: dict[str, list[Path]], epochs: int, bar: float, command: str) -> str:
    lines = [f"Validation CER (greedy) after each of the first {epochs} epochs, one row per seed; "
             f"a run above {bar:.0%} at epoch {epochs} is marked **above**.", "",
             f"    {command}", ""]
    for name, directories in runs.items():
        lines += [f"**{name}**", "", "| seed | " + " | ".join(f"epoch {e + 1}" for e in range(epochs))
                  + " | |", "|---" * (epochs + 2) + "|"]
        above = 0
        for seed, directory in enumerate(directories):
            if not (directory / "finished.json").exists():
                lines.append(f"| {seed} | " + " | ".join("" for _ in range(epochs)) + " | not trained |")
                continue
            cer = [r["valid_cer"] for r in records(directory)][:epochs]
            bad = cer[-1] > bar
            above += bad
            lines.append(f"| {seed} | " + " | ".join(f"{c:.1%}" for c in cer)
                         + f" | {'**above**' if bad else ''} |")
        passed = len(directories) - above
        lines += ["", f"{passed} of {len(directories)} below {bar:.0%} at epoch {epochs}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0 .. N-1")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--bar", type=float, default=0.65, help="validation CER a run must end below")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = [item for pair in (("--set", s) for s in args.set) for item in pair]

    runs, jobs = {}, []
    for config_path in args.configs:
        config = load_config(config_path, args.set)
        steps = args.epochs * make_task(config, distributed.setup(), None).steps_per_epoch
        name = config_path.stem
        runs[name] = [args.out / "runs" / f"{name}-seed{seed}" for seed in range(args.seeds)]
        jobs += [(config_path, seed, steps, directory, extra) for seed, directory in enumerate(runs[name])]
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in [pool.submit(train, *job) for job in jobs]:
            future.result()
    command = " ".join(["python scripts/speech_seeds.py", *map(str, args.configs), f"--seeds {args.seeds}",
                        f"--epochs {args.epochs}", f"--bar {args.bar:g}", f"--out {args.out}",
                        f"--jobs {args.jobs}",
                        *(f"--set {s}" for s in args.set)])
    (args.out / "table.md").write_text(table(runs, args.epochs, args.bar, command))
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
