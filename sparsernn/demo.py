"""The quick demo behind `make run`: a character-level GRU language model, dense and 90% pruned.

The text is the Python reference documentation that ships inside every CPython installation
(``pydoc_data.topics``, about 465,000 characters of English), so the demo runs offline anywhere.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from sparsernn.prune import NarangSchedule, NoSchedule, Pruner, Schedule, format_report


@dataclass(frozen=True)
class DemoConfig:
    steps: int = 600
    batch_size: int = 32
    seq_len: int = 64
    embedding_size: int = 64
    hidden_size: int = 256
    lr: float = 3e-3
    clip: float = 1.0
    sparsity: float = 0.9
    q_from: str = "update"  # "start": the paper's fixed q (falls short of the target here)
    seed: int = 0


def stdlib_text() -> str:
    """English text present wherever Python is installed: pydoc's topic help."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # some distributions strip it from minimal installs
        raise RuntimeError("this Python has no pydoc_data module; the demo needs its text") from error
    return "\n".join(topics[key] for key in sorted(topics))


def encode(text: str) -> tuple[torch.Tensor, list[str]]:
    alphabet = sorted(set(text))
    index = {char: i for i, char in enumerate(alphabet)}
    return torch.tensor([index[char] for char in text], dtype=torch.long), alphabet


class CharLM(nn.Module):
    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.rnn = nn.GRU(embedding_size, hidden_size)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (T, B) -> (T, B, V)
        return self.decoder(self.rnn(self.embedding(tokens))[0])


def random_batch(data: torch.Tensor, config: DemoConfig, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - config.seq_len - 1, (config.batch_size,), generator=generator)
    return torch.stack([data[s:s + config.seq_len + 1] for s in starts.tolist()], dim=1)  # (T+1, B)


@torch.no_grad()
def perplexity(model: nn.Module, data: torch.Tensor, seq_len: int) -> float:
    """Per-character perplexity over contiguous windows covering ``data``."""
    model.eval()
    windows = (len(data) - 1) // seq_len
    tokens = data[:windows * seq_len + 1]
    inputs = tokens[:-1].view(windows, seq_len).t()  # (T, windows)
    targets = tokens[1:].view(windows, seq_len).t()
    logits = model(inputs)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    model.train()
    return math.exp(loss.item())


def train(config: DemoConfig, train_data: torch.Tensor, vocab_size: int, schedule: Schedule,
          label: str) -> tuple[nn.Module, Pruner, float]:
    torch.manual_seed(config.seed)
    model = CharLM(vocab_size, config.embedding_size, config.hidden_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    pruner = Pruner(model, schedule, optimizer)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    progress = tqdm(range(config.steps), desc=label, unit="step", disable=None)  # off without a TTY
    for _ in progress:
        tokens = random_batch(train_data, config, generator)
        logits = model(tokens[:-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab_size), tokens[1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        pruner.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", sparsity=f"{pruner.sparsity():.1%}",
                             refresh=False)
    return model, pruner, time.perf_counter() - started


def run_demo(config: DemoConfig = DemoConfig()) -> dict[str, float]:
    data, alphabet = encode(stdlib_text())
    split = int(0.9 * len(data))
    train_data, valid_data = data[:split], data[split:]
    print(f"text: Python's bundled reference docs, {len(data):,} characters, "
          f"{len(alphabet)} symbols; GRU {config.hidden_size}, {config.steps} steps of "
          f"{config.batch_size}x{config.seq_len}")
    steps = config.steps
    narang = NarangSchedule(start=steps // 10, ramp=3 * steps // 10, end=6 * steps // 10,
                            freq=max(1, steps // 60), sparsity=config.sparsity, q_from=config.q_from)
    results = {}
    for label, schedule in (("dense", NoSchedule()), (f"narang {config.sparsity:.0%}", narang)):
        model, pruner, seconds = train(config, train_data, len(alphabet), schedule, label)
        results[label] = perplexity(model, valid_data, config.seq_len)
        results[f"{label} seconds"] = seconds
        results[f"{label} sparsity"] = pruner.sparsity()
    print(f"\npruning report ({narang})\n{format_report(pruner.report())}\n")
    dense, sparse = results["dense"], results[f"narang {config.sparsity:.0%}"]
    print(f"validation perplexity per character: dense {dense:.3f}, "
          f"{results[f'narang {config.sparsity:.0%} sparsity']:.1%} sparse {sparse:.3f} "
          f"({sparse / dense - 1:+.1%})")
    return results
