"""Command line: thin argparse subcommands over library functions."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from sparsernn.demo import DemoConfig, run_demo

    run_demo(DemoConfig(steps=args.steps, hidden_size=args.hidden, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsernn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a small GRU LM dense and 90%% pruned, compare")
    demo.add_argument("--steps", type=int, default=600, help="training steps per model")
    demo.add_argument("--hidden", type=int, default=256, help="GRU hidden size")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "hidden"):
        if getattr(args, name, 1) < 1:
            print(f"sparsernn: error: --{name} must be >= 1", file=sys.stderr)
            return 2
    return args.handler(args)
