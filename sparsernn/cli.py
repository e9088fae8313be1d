"""Command line: thin argparse subcommands over library functions.

A user's mistake (bad config key, missing data, unreadable checkpoint) exits with status 2 and one
message naming the file or key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sparsernn.errors import UserError


def _train(args: argparse.Namespace) -> int:
    from sparsernn.config import dump_config, load_config
    from sparsernn.train.loop import TrainingDiverged, train
    from sparsernn.train.tasks import task_class

    overrides = list(args.set)
    if args.on_bad_audio is not None:
        overrides.append(f"data.on_bad_audio={args.on_bad_audio}")
    config = load_config(args.config, overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    if args.out is None:
        raise UserError("--out DIR is required to train")
    try:
        record = train(config, args.out, resume=args.resume)
    except TrainingDiverged as error:
        print(f"sparsernn: training stopped: {error}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        summary = task_class(config).summary(record)
        print(f"step {record['step']}: {summary}, sparsity {record['sparsity']:.1%}; "
              f"run directory {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from sparsernn.checkpoint import load_checkpoint
    from sparsernn.config import RunConfig
    from sparsernn.train.evaluate import evaluate_checkpoint

    if args.beam is not None and args.beam < 0:
        raise UserError(f"--beam must be >= 0, got {args.beam}")
    if args.lexicon and args.lm is None:
        raise UserError("--lexicon keeps transcripts to the words of --lm: give --lm")
    config = RunConfig.model_validate(load_checkpoint(args.checkpoint)["config"])
    if config.translation:
        from sparsernn.train.translate import evaluate_translation

        result = evaluate_translation(args.checkpoint, args.split, args.beam or 0)
        search = f"beam {args.beam}" if args.beam else "greedy"
        print(f"{args.checkpoint} ({args.split}, {result['pairs']} pairs, step {result['step']}, {search}): "
              f"BLEU {result['bleu']:.2f} ({result['bleu_signature']}), chrF {result['chrf']:.2f} "
              f"({result['chrf_signature']}), perplexity {result['perplexity']:.2f}; "
              f"{result['nonzero_parameters']:,} non-zero of {result['parameters']:,} parameters")
        return 0
    if config.speech:
        from sparsernn.train.recognize import evaluate_speech

        width = 16 if args.beam is None else args.beam
        if args.lm is not None and width == 0:
            raise UserError("--lm needs a beam search: --beam must be > 0")
        result = evaluate_speech(args.checkpoint, args.split, width, args.lm, args.alpha, args.beta,
                                 args.lexicon)
        beam = (f"; beam {width}: CER {result['cer_beam']:.2%}, WER {result['wer_beam']:.2%}"
                if width else "")
        if args.lm is not None:
            words = ", its words only" if args.lexicon else ""
            beam += (f"; beam {width} + {result['lm_order']}-gram LM (alpha {args.alpha:g}, beta "
                     f"{args.beta:g}{words}): CER {result['cer_lm']:.2%}, WER {result['wer_lm']:.2%} "
                     f"(search RTF {result['rtf_lm']:.3f})")
        print(f"{args.checkpoint} ({args.split}, {result['utterances']} utterances, step {result['step']}): "
              f"greedy CER {result['cer_greedy']:.2%}, WER {result['wer_greedy']:.2%}{beam}; "
              f"{result['nonzero_parameters']:,} non-zero of {result['parameters']:,} parameters")
        return 0
    if args.lm is not None:
        raise UserError("--lm is for speech models; this checkpoint holds a "
                        f"{'translation' if config.translation else 'language'} model")
    result = evaluate_checkpoint(args.checkpoint, args.split)
    print(f"{args.checkpoint} ({args.split}, step {result['step']}): perplexity "
          f"{result['perplexity']:.2f}, {result['nonzero_parameters']:,} non-zero of "
          f"{result['parameters']:,} parameters, pruned tensors {result['sparsity']:.1%} sparse")
    return 0


def _translate(args: argparse.Namespace) -> int:
    from sparsernn.data.translation import read_lines
    from sparsernn.train.translate import load_translator, translate_lines

    if args.beam < 0:
        raise UserError(f"--beam must be >= 0, got {args.beam}")
    model, config, tokenizer, _ = load_translator(args.checkpoint)
    for name in args.files:
        lines = sys.stdin.read().splitlines() if name == "-" else read_lines(Path(name))
        for translation in translate_lines(model, tokenizer, lines, args.beam, config.data.max_output):
            print(translation)
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from sparsernn.train.recognize import transcribe

    if args.beam < 0:
        raise UserError(f"--beam must be >= 0, got {args.beam}")
    if args.lm is not None and args.beam == 0:
        raise UserError("--lm needs a beam search: --beam must be > 0")
    if args.lexicon and args.lm is None:
        raise UserError("--lexicon keeps transcripts to the words of --lm: give --lm")
    texts = transcribe(args.checkpoint, args.files, args.beam, args.lm, args.alpha, args.beta, args.lexicon)
    for path, text in zip(args.files, texts, strict=True):
        print(f"{path}\t{text}")
    return 0


def _lm_build(args: argparse.Namespace) -> int:
    from sparsernn import ngram

    if args.order < 1:
        raise UserError(f"--order must be >= 1, got {args.order}")
    if bool(args.text) == bool(args.config):
        raise UserError("give the text files, or --config CONFIG for a speech config's training transcripts")
    if args.config:
        from sparsernn.config import load_config
        from sparsernn.train.recognize import transcripts_lm

        config = load_config(args.config)
        if not config.speech:
            raise UserError(f"{args.config}: not a speech config (data.kind {config.data.kind})")
        if args.upper:
            raise UserError("--upper is for text files; a speech config's transcripts are upper case already")
        model = transcripts_lm(config.data, args.order)
        source = f"the training transcripts of {args.config} (validation speakers left out)"
    else:
        from sparsernn.data.text import read_text

        lines = [line for path in args.text for line in read_text(Path(path)).splitlines()]
        model = ngram.build(ngram.tokenize([line.upper() for line in lines] if args.upper else lines),
                            args.order)
        source = ", ".join(args.text)
    ngram.write_arpa(model, args.output)
    sizes = ", ".join(f"{len(grams):,} {n}-grams" for n, grams in enumerate(model.probabilities, start=1))
    print(f"{args.output}: {args.order}-gram modified Kneser-Ney model of {model.sentences:,} sentences from "
          f"{source}: {sizes}")
    for n, (values, fallback) in enumerate(zip(model.discounts, model.fallback, strict=True), start=1):
        if fallback:
            print(f"sparsernn: warning: order {n}: its counts of n-grams seen 1-4 times give no valid "
                  f"discounts (a small corpus); used {values[0]:g}, {values[1]:g}, {values[2]:g}, as lmplz "
                  "--discount_fallback does", file=sys.stderr)
    return 0


def _lm_tune(args: argparse.Namespace) -> int:
    from sparsernn.train.recognize import ALPHAS, BETAS, tune_lm

    if args.beam < 1:
        raise UserError(f"--beam must be >= 1, got {args.beam}")

    def grid(text: str | None, default, name: str) -> tuple[float, ...]:
        if text is None:
            return default
        try:
            return tuple(float(value) for value in text.split(","))
        except ValueError:
            raise UserError(f"--{name}: expected numbers separated by commas, got {text!r}") from None

    def show(point: dict) -> None:
        print(f"alpha {point['alpha']:g}, beta {point['beta']:g}: validation WER {point['wer']:.2%}, "
              f"CER {point['cer']:.2%}", flush=True)

    result = tune_lm(args.checkpoint, args.lm, args.beam, grid(args.alphas, ALPHAS, "alphas"),
                     grid(args.betas, BETAS, "betas"), progress=show, lexicon=args.lexicon)
    print(f"best on the validation split ({result['utterances']} utterances, beam {args.beam}): alpha "
          f"{result['alpha']:g}, beta {result['beta']:g} (WER {result['wer']:.2%}, CER {result['cer']:.2%}); "
          f"use --lm {args.lm} --alpha {result['alpha']:g} --beta {result['beta']:g}"
          f"{' --lexicon' if args.lexicon else ''}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from sparsernn.train.evaluate import score_file

    for path in args.files:
        result = score_file(args.checkpoint, path)
        print(f"{path}: perplexity {result['perplexity']:.2f} over {result['tokens']:,} tokens")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from sparsernn.train.evaluate import generate

    print(generate(args.checkpoint, args.prompt, args.tokens, args.temperature, args.seed))
    return 0


def _export(args: argparse.Namespace) -> int:
    from sparsernn.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.output, args.values)
    sparse = sum(1 for m in result["matrices"].values() if m["storage"] != "dense")
    print(f"{result['path']}: {result['bytes']:,} bytes, {result['bytes'] / result['dense_fp32_bytes']:.1%} "
          f"of dense fp32 ({result['dense_fp32_bytes']:,} bytes); {sparse} sparse matrices, "
          f"values {args.values}")
    return 0


def _study(args: argparse.Namespace) -> int:
    import shlex

    from sparsernn.study import run_study

    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    jobs = [f"--jobs={args.jobs}"] if args.jobs > 1 else []
    command = shlex.join(["sparsernn", "study", args.config, "--out", args.out, *jobs])
    print(f"report: {run_study(args.config, args.out, command, args.jobs)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from sparsernn.study import rebuild_report

    print(f"report: {rebuild_report(args.directory)}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from sparsernn.bench import run_bench

    run_bench(args)
    return 0


def _lm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lm", help="speech: an ARPA word language model fused into the beam search")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="with --lm: weight of the LM's log-probability (sparsernn lm tune finds one)")
    parser.add_argument("--beta", type=float, default=1.0, help="with --lm: bonus per word")
    _lexicon_option(parser)


def _lexicon_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lexicon", action="store_true",
                        help="with --lm: spell transcripts from the LM's words only (as a lexicon decoder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsernn", description="Sparse recurrent networks.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a language, speech or translation model from a YAML "
                                "config")
    train.add_argument("config", nargs="?", help="YAML file with data, model, prune, train sections")
    train.add_argument("--out", help="run directory")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config key (repeatable)")
    train.add_argument("--on-bad-audio", choices=("error", "skip"),
                       help="speech: stop at, or skip and count, unusable utterances (data.on_bad_audio)")
    train.add_argument("--print-config", action="store_true", help="show the resolved config and exit")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="perplexity, CER and WER, or BLEU and chrF of a "
                                   "checkpoint on a split")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--split", choices=("train", "valid", "test"), default="test")
    evaluate.add_argument("--beam", type=int, default=None, help="speech: prefix beam width (default 16; 0: "
                          "greedy only); translation: beam search width (default 0: greedy)")
    _lm_options(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    translate = commands.add_parser("translate", help="translate text files (- for standard input), one line "
                                    "of output per input line")
    translate.add_argument("checkpoint")
    translate.add_argument("files", nargs="+")
    translate.add_argument("--beam", type=int, default=0, help="beam search width (0: greedy)")
    translate.set_defaults(handler=_translate)

    transcribe = commands.add_parser("transcribe", help="transcribe audio files (WAV, FLAC, OGG, MP3, ...) "
                                     "with a speech checkpoint")
    transcribe.add_argument("checkpoint")
    transcribe.add_argument("files", nargs="+")
    transcribe.add_argument("--beam", type=int, default=16, help="prefix beam width (0: greedy)")
    _lm_options(transcribe)
    transcribe.set_defaults(handler=_transcribe)

    lm = commands.add_parser("lm", help="word n-gram language models for speech decoding: build, tune")
    lm_commands = lm.add_subparsers(dest="lm_command", required=True)
    build = lm_commands.add_parser("build", help="estimate a modified Kneser-Ney model and write it as ARPA")
    build.add_argument("text", nargs="*", help="text files, one sentence per line, words split on spaces")
    build.add_argument("--config", help="instead: a speech config, whose training transcripts are the text")
    build.add_argument("-o", "--output", required=True, help="ARPA file to write")
    build.add_argument("--order", type=int, default=3)
    build.add_argument("--upper", action="store_true", help="upper-case the text (AN4's alphabet)")
    build.set_defaults(handler=_lm_build)
    tune = lm_commands.add_parser("tune", help="choose the LM weight alpha and word bonus beta on the "
                                  "validation split of a speech checkpoint's data")
    tune.add_argument("checkpoint")
    tune.add_argument("--lm", required=True, help="ARPA file")
    tune.add_argument("--beam", type=int, default=16)
    tune.add_argument("--alphas", help="comma-separated (default 0,0.25,0.5,0.75,1,1.5,2)")
    tune.add_argument("--betas", help="comma-separated (default 0,0.5,1,2,3,4,5)")
    _lexicon_option(tune)
    tune.set_defaults(handler=_lm_tune)

    score = commands.add_parser("score", help="perplexity of a checkpoint on text files")
    score.add_argument("checkpoint")
    score.add_argument("files", nargs="+")
    score.set_defaults(handler=_score)

    generate = commands.add_parser("generate", help="sample text from a checkpoint")
    generate.add_argument("checkpoint")
    generate.add_argument("--prompt", default="")
    generate.add_argument("--tokens", type=int, default=50)
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(handler=_generate)

    export = commands.add_parser("export", help="write a checkpoint as a compact sparse safetensors file")
    export.add_argument("checkpoint")
    export.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    export.add_argument("--values", choices=("fp32", "fp16", "bf16", "int8"), default="fp32")
    export.set_defaults(handler=_export)

    study = commands.add_parser("study", help="train, evaluate, export and time runs; write a report")
    study.add_argument("config", help="study YAML: title, baseline, runs (name, config, set)")
    study.add_argument("--out", required=True, help="study directory (finished runs are skipped, "
                       "an interrupted one resumed)")
    study.add_argument("--jobs", type=int, default=1, help="train this many runs side by side, each in "
                       "its own process on its share of the cores")
    study.set_defaults(handler=_study)

    report = commands.add_parser("report", help="rebuild a study's report from its finished runs")
    report.add_argument("directory")
    report.set_defaults(handler=_report)

    bench = commands.add_parser("bench", help="time the sparse kernels against dense and sparse libraries")
    bench.add_argument("--sizes", default="1024,1760,2560,3072", help="hidden sizes n (n x n matrices)")
    bench.add_argument("--sparsities", default="0.8,0.9,0.95")
    bench.add_argument("--batches", default="1,4,16")
    bench.add_argument("--threads", default="1,2")
    bench.add_argument("--block", default="8x1", help="block shape of the block-sparse structure")
    bench.add_argument("--seconds", type=float, default=0.05, help="timing per measurement")
    bench.add_argument("--json", help="write the rows here")
    bench.add_argument("--markdown", help="write the table here")
    bench.add_argument("--plot", help="write a PNG plot here")
    bench.add_argument("--end-to-end", action="store_true",
                       help="also time 90%% sparse language models (GRU 2x1024, LSTM 2x200) against the "
                       "dense model in PyTorch, ONNX Runtime and OpenVINO")
    bench.add_argument("--model", help="end to end: an exported model file instead of a random GRU LM")
    bench.add_argument("--quick", action="store_true", help="one small configuration (a smoke test)")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:  # ConfigError, DataError, CheckpointError: the user's to fix
        print(f"sparsernn: error: {error}", file=sys.stderr)
        return 2
