"""Compare an exported model with its checkpoint on real test data, and time both at batch 1.

    python scripts/check_export.py runs/ptb-narang90/checkpoints/best.pt ptb-narang90.safetensors
    python scripts/check_export.py runs/an4-narang90/checkpoints/best.pt an4-narang90.safetensors

Language model: the largest logit difference and both perplexities over the first --tokens test tokens.
Speech model: over the first --utterances test utterances, the largest log-probability difference, both
greedy CERs, and seconds of audio per second of the engine and of the PyTorch model (one thread each,
features excluded, one utterance at a time).
"""

import argparse
import time

import numpy as np
import torch

from sparsernn.train.evaluate import load_trained


def perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits, targets).exp())


def check_language_model(model, config, model_file: str, count: int) -> None:
    from sparsernn.data.text import load_corpus
    from sparsernn.engine import LanguageModelEngine

    tokens = load_corpus(config.data).test[:count].reshape(-1, 1)
    with torch.no_grad():
        expected = model(tokens)[0].numpy()
    got = LanguageModelEngine(model_file)(tokens.numpy())
    targets = tokens[1:, 0]
    print(f"max |logit difference| over {len(tokens)} test tokens: {np.abs(got - expected).max():.2e}; "
          f"perplexity engine {perplexity(torch.from_numpy(got[:-1, 0]), targets):.3f}, "
          f"PyTorch {perplexity(torch.from_numpy(expected[:-1, 0]), targets):.3f}")


def check_speech_model(model, config, model_file: str, count: int) -> None:
    from sparsernn.data.speech import load_speech
    from sparsernn.engine import SpeechEngine
    from sparsernn.train.metrics import error_rates, greedy_decode

    torch.set_num_threads(1)
    data = load_speech(config.data, splits=("test",))["test"]
    engine = SpeechEngine(model_file, threads=1)
    worst, seconds, ours, theirs, engine_text, torch_text = 0.0, 0.0, 0.0, 0.0, [], []
    for features in data.features[:count]:
        started = time.perf_counter()
        with torch.no_grad():
            expected = model(features[None], torch.tensor([features.shape[1]]))[0][:, 0]
        theirs += time.perf_counter() - started
        started = time.perf_counter()
        got = engine.log_probs(features.numpy())
        ours += time.perf_counter() - started
        worst = max(worst, float(np.abs(got - expected.numpy()).max()))
        seconds += features.shape[1] * config.data.hop_ms / 1000
        engine_text.append(greedy_decode(torch.from_numpy(got), engine.alphabet))
        torch_text.append(greedy_decode(expected, engine.alphabet))
    references = data.texts[:count]
    print(f"{len(references)} test utterances, {seconds:.1f} s of audio: max |log-probability difference| "
          f"{worst:.2e}; greedy CER engine {error_rates(references, engine_text)['cer']:.2%}, PyTorch "
          f"{error_rates(references, torch_text)['cer']:.2%}; seconds of audio per second: engine "
          f"{seconds / ours:.0f}, PyTorch {seconds / theirs:.0f} ({theirs / ours:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("model_file")
    parser.add_argument("--tokens", type=int, default=2000, help="language model: test tokens")
    parser.add_argument("--utterances", type=int, default=130, help="speech: test utterances")
    args = parser.parse_args()
    model, config, _, _ = load_trained(args.checkpoint)
    if config.speech:
        check_speech_model(model, config, args.model_file, args.utterances)
    else:
        check_language_model(model, config, args.model_file, args.tokens)


if __name__ == "__main__":
    main()
