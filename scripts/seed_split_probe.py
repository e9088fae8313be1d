"""Which part of ``train.seed`` decides a speech run: its held-out validation speakers, or the model's
initialisation and batch order? Trains a config with the split drawn from one seed and the rest from
another, and prints validation CER by epoch.

    python scripts/seed_split_probe.py configs/an4-dense.yaml --init-seed 2 --split-seed 0 \\
        --out /tmp/init2-split0 --set train.epochs=4

The split seed picks the speakers held out for validation (``data.valid_fraction``); the init seed is
``train.seed`` for everything else. With equal seeds this is ``sparsernn train``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparsernn.config import load_config
from sparsernn.data import speech
from sparsernn.train.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--init-seed", type=int, required=True)
    parser.add_argument("--split-seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    load_speech = speech.load_speech  # the task reads the split through this module attribute
    speech.load_speech = lambda config, seed=0, **kwargs: load_speech(config, args.split_seed, **kwargs)
    train(load_config(args.config, [*args.set, f"train.seed={args.init_seed}"]), args.out)
    records = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    print(f"init seed {args.init_seed}, split seed {args.split_seed}: validation CER by epoch",
          " ".join(f"{r['valid_cer']:.1%}" for r in records if r["kind"] == "eval"))


if __name__ == "__main__":
    main()
