"""Compare an exported language model with its checkpoint on real test text.

    python scripts/check_export.py runs/ptb-narang90/checkpoints/best.pt ptb-narang90.safetensors

Prints the largest logit difference and both perplexities over the first --tokens test tokens.
"""

import argparse

import numpy as np
import torch

from sparsernn.data.text import load_corpus
from sparsernn.engine import LanguageModelEngine
from sparsernn.train.evaluate import load_trained


def perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits, targets).exp())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("model_file")
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args()
    model, config, _, _ = load_trained(args.checkpoint)
    tokens = load_corpus(config.data).test[: args.tokens].reshape(-1, 1)
    with torch.no_grad():
        expected = model(tokens)[0].numpy()
    got = LanguageModelEngine(args.model_file)(tokens.numpy())
    targets = tokens[1:, 0]
    print(f"max |logit difference| over {len(tokens)} test tokens: {np.abs(got - expected).max():.2e}; "
          f"perplexity engine {perplexity(torch.from_numpy(got[:-1, 0]), targets):.3f}, "
          f"PyTorch {perplexity(torch.from_numpy(expected[:-1, 0]), targets):.3f}")


if __name__ == "__main__":
    main()
