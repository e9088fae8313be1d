"""What a study records about one finished run (``DIR/runs/<name>/result.json``).

Test metric (perplexity; CER and WER greedy and with beam search; or BLEU and chrF greedy and with beam
search), parameter counts, sparsity per pruned tensor, training time, exported file size, and the time
at batch 1 (one thread) on the same test input of the run's PyTorch model, the baseline's PyTorch model
(also in ONNX Runtime and OpenVINO, where installed, and in dense int8: PyTorch's and ONNX Runtime's
dynamic quantization) and the engine on
the exported file, taken in turns in one process so that the ratios compare like with like.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from sparsernn.config import RunConfig
from sparsernn.export import export_checkpoint

#: Fields an older sparsernn did not record; a result.json without them is measured again.
NEWER_FIELDS = ("baseline_pytorch_seconds", "machine")


def is_measured(directory: Path) -> bool:
    """Whether the run has a ``result.json`` with every field this version reports."""
    path = directory / "result.json"
    return path.exists() and all(field in json.loads(path.read_text()) for field in NEWER_FIELDS)


def _best_seconds(functions: dict, repeats: int = 3) -> dict:
    """The best of ``repeats`` timings of each function, taken in turns so drift hits them alike."""
    for function in functions.values():
        function()  # warm up
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def _peer_calls(config: RunConfig, baseline, inputs, directory: Path) -> dict:
    """The baseline's dense model on each installed peer runtime (:mod:`sparsernn.bench.peers`), on
    the same input as the other timings: ``{"baseline_<peer>_seconds": call}``."""
    from sparsernn.bench import peers

    names = [name for name in (*peers.PEERS, *peers.INT8_PEERS) if peers.missing(name) is None]
    if not names or (config.speech and config.model.cell == "rnn_clipped_relu"):
        return {}  # no peer installed, or a model whose ONNX graph would fix the utterance length
    if config.speech:
        path = peers.export_speech(baseline, directory, inputs[0].shape[0])
        runs = {name: peers.PeerSpeech(name, path) for name in names}
        return {f"baseline_{name}_seconds": (lambda p=p: [p.log_probs(f.numpy()) for f in inputs])
                for name, p in runs.items()}
    if config.translation:
        paths = peers.export_translator(baseline, directory)
        translators = {name: peers.PeerTranslator(name, paths, baseline) for name in names}
        limit = config.data.max_output
        return {f"baseline_{name}_seconds": (lambda t=t: [t.greedy(s.numpy(), limit) for s in inputs])
                for name, t in translators.items()}
    paths = peers.export_language_model(baseline, directory, len(inputs))
    models = {name: peers.PeerLanguageModel(name, paths, baseline) for name in names}
    return {f"baseline_{name}_seconds": (lambda m=m: m.stream(inputs.numpy())) for name, m in models.items()}


def _speed(config: RunConfig, model, baseline, model_file: Path, study, checkpoint: dict) -> dict:
    """Seconds at batch 1, one thread, on the same test input: the run's PyTorch model, the baseline's
    PyTorch model (and, where installed, in ONNX Runtime and OpenVINO) and the engine on the run's
    exported file, side by side."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if config.speech:
            from sparsernn.data.speech import load_speech
            from sparsernn.engine import SpeechEngine

            data = load_speech(config.data, splits=("test",))["test"]
            inputs = data.features[:study.speed_utterances]
            engine = SpeechEngine(model_file, threads=1)

            def pytorch(network):
                with torch.no_grad():
                    for features in inputs:
                        network(features[None], torch.tensor([features.shape[1]]))

            def ours():
                for features in inputs:
                    engine.log_probs(features.numpy())

            amount = {"audio_seconds": sum(f.shape[1] for f in inputs) * config.data.hop_ms / 1000}
        elif config.translation:
            from sparsernn.data.translation import Tokenizer, load_translation
            from sparsernn.engine import TranslationEngine

            tokenizer = Tokenizer(checkpoint["artifacts"]["tokenizer.model"])
            sources = load_translation(config.data, tokenizer, splits=("test",))[0]["test"].sources
            inputs = sources = sources[:study.speed_sentences]
            engine = TranslationEngine(model_file, threads=1)
            limit = config.data.max_output

            # One sentence per call, greedy, as a deployed translator runs.
            def pytorch(network):
                with torch.no_grad():
                    for source in sources:
                        network.greedy(source[None], torch.tensor([len(source)]), limit)

            def ours():
                with torch.inference_mode():
                    for source in sources:
                        engine.model.greedy(source[None], torch.tensor([len(source)]), limit)

            amount = {"sentences": len(sources)}
        else:
            from sparsernn.data.text import load_corpus
            from sparsernn.engine import LanguageModelEngine

            inputs = tokens = load_corpus(config.data).test[:study.speed_tokens].reshape(-1, 1)
            engine = LanguageModelEngine(model_file, threads=1)

            # Streaming, as a deployed language model runs: one token per call, the state carried.
            def pytorch(network):
                with torch.no_grad():
                    hidden = None
                    for t in range(len(tokens)):
                        _, hidden = network(tokens[t:t + 1], hidden)

            def ours():
                engine.reset()
                for token in tokens.numpy():
                    engine(token[None])

            amount = {"tokens": len(tokens)}
        from sparsernn.bench.peers import pytorch_int8

        quantized = pytorch_int8(baseline)
        with tempfile.TemporaryDirectory() as tmp:
            seconds = _best_seconds({"pytorch_seconds": lambda: pytorch(model),
                                     "baseline_pytorch_seconds": lambda: pytorch(baseline),
                                     "baseline_pytorch_int8_seconds": lambda: pytorch(quantized),
                                     **_peer_calls(config, baseline, inputs, Path(tmp)),
                                     "engine_seconds": ours})
        return {**amount, **seconds}
    finally:
        torch.set_num_threads(threads)


def _baseline_source(study, out: Path) -> str:
    """The run whose dense model is timed as the baseline: the baseline, or where its checkpoint is
    gone (a study continued on another machine) the first run that differs from it only in its seed or
    its dropout and has one. Dense speed depends on the shapes, not on the weights, so any such run
    times the same."""
    from sparsernn.study import run_dir, setup

    def shape(run) -> tuple:
        return setup(run, ignoring=("train.seed=", "model.dropout="))

    runs = {run.name: run for run in study.runs}
    alike = [run.name for run in study.runs if shape(run) == shape(runs[study.baseline])]
    present = [name for name in alike if (run_dir(out, name) / "checkpoints" / "best.pt").exists()]
    return study.baseline if study.baseline in present or not present else present[0]


def measure_run(study, name: str, config: RunConfig, out: Path) -> dict:
    """Evaluate, export and time a finished run; writes and returns its ``result.json``."""
    from sparsernn.bench import machine
    from sparsernn.study import run_dir
    from sparsernn.train.evaluate import evaluate_checkpoint, load_trained

    directory = run_dir(out, name)
    best = directory / "checkpoints" / "best.pt"
    model, config, vocabulary, checkpoint = load_trained(best)
    timed_as_baseline = _baseline_source(study, out)
    baseline = (model if name == timed_as_baseline  # the baseline times itself: load it once
                else load_trained(run_dir(out, timed_as_baseline) / "checkpoints" / "best.pt")[0])
    extra = {}
    if config.speech:
        from sparsernn.train.recognize import evaluate_speech

        evaluation = evaluate_speech(best, "test", beam=study.beam)
        metrics = {key: evaluation[key] for key in evaluation if key.startswith(("cer_", "wer_", "rtf_"))}
        if study.lm is not None:
            metrics |= _with_lm(study, out, config, model, vocabulary)
    elif config.translation:
        from sparsernn.train.translate import evaluate_translation

        evaluation = evaluate_translation(best, "test")
        metrics = {"bleu_greedy": evaluation["bleu"], "chrf_greedy": evaluation["chrf"],
                   "perplexity": evaluation["perplexity"]}
        if study.beam:
            beam = evaluate_translation(best, "test", beam=study.beam)
            metrics |= {"bleu_beam": beam["bleu"], "chrf_beam": beam["chrf"]}
        extra = {key: evaluation[key] for key in ("bleu_signature", "chrf_signature")}
    else:
        evaluation = evaluate_checkpoint(best, "test")
        metrics = {"perplexity": evaluation["perplexity"]}
    masks = checkpoint["pruner"]["masks"]
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    exported = export_checkpoint(best, directory / "model.safetensors")
    shape = model.config
    result = {
        "name": name,
        "task": "speech" if config.speech else "translation" if config.translation else "language_model",
        "method": config.prune.method, "cell": shape.cell, "layers": shape.layers,
        "hidden_size": shape.hidden_size, "block": list(config.prune.block), "seed": config.train.seed,
        "step": evaluation["step"], "parameters": evaluation["parameters"],
        "nonzero_parameters": evaluation["nonzero_parameters"], "sparsity": evaluation["sparsity"],
        "layer_sparsity": {tensor: 1 - float(mask.float().mean()) for tensor, mask in masks.items()},
        "metrics": metrics,
        "train_seconds": [r for r in records if r["kind"] == "eval"][-1]["train_seconds"],
        "file_bytes": exported["bytes"], "dense_fp32_bytes": exported["dense_fp32_bytes"],
        **_speed(config, model, baseline, directory / "model.safetensors", study, checkpoint), **extra,
        "baseline_timed_run": timed_as_baseline,
        "machine": machine(),  # where it was timed, so a report rebuilt elsewhere still says so
    }
    (directory / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _with_lm(study, out: Path, config: RunConfig, model, vocabulary) -> dict:
    """Test CER, WER and the search's real-time factor with the study's LM fused, per beam width
    (``cer_lm16``, ``rtf_beam64``, ...); the LM is built on first use from the training transcripts
    (validation speakers left out) into ``DIR/lm.<order>gram.arpa``."""
    from sparsernn.ngram import write_arpa
    from sparsernn.train.recognize import frames_of, load_lm, load_split, search_rates, transcripts_lm

    path = out / f"lm.{study.lm.order}gram.arpa"
    if not path.exists():
        write_arpa(transcripts_lm(config.data, study.lm.order), path)
    fusion = load_lm(path, vocabulary, study.lm.alpha, study.lm.beta)
    data = load_split(config, model, "test")
    frames = frames_of(model, data, config.data.eval_batch_size)
    searches = {f"{kind}{width}": (width, lm) for width in study.lm.beams
                for kind, lm in (("beam", None), ("lm", fusion))}
    rates = search_rates(frames, data, vocabulary, searches, config.data.hop_ms)
    # the plain search's error rates are the main metrics' (at study.beam); here only its speed
    return {key: value for key, value in rates.items() if not key.startswith(("cer_beam", "wer_beam"))}


def training_curves(directory: Path) -> list[dict]:
    """The run's training records (step, sparsity, threshold per group)."""
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]

