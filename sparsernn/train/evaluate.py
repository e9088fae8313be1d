"""Using a trained model: loading any checkpoint; for language models perplexity on a split or a file
and sampling text (speech models: ``recognize.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from sparsernn.checkpoint import load_checkpoint
from sparsernn.config import ConfigError, RunConfig
from sparsernn.data.text import EOS, DataError, batchify, bptt_windows, encode, load_corpus, word_tokens
from sparsernn.models import build_model
from sparsernn.models.lm import LanguageModel


@torch.no_grad()
def evaluate(model: LanguageModel, columns: torch.Tensor, bptt: int) -> float:
    """Mean cross-entropy per token over a batchified split."""
    model.eval()
    total, count, hidden = 0.0, 0, None
    for _, inputs, targets in bptt_windows(columns, bptt):
        logits, hidden = model(inputs, hidden)
        total += nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    model.train()
    return total / count


def load_trained(path: str | Path,
                 speech: bool | None = None) -> tuple[nn.Module, RunConfig, list[str], dict]:
    """A checkpoint's model (in eval mode), run config, vocabulary and the checkpoint itself.

    ``speech``: require a speech (True) or language (False) model, with an error naming the file.
    """
    checkpoint = load_checkpoint(path)
    raw = checkpoint["config"]
    if "valid_seed" not in raw["data"] and raw["data"].get("kind") in ("an4", "manifest", "librispeech"):
        # written before data.valid_seed: its held-out speakers were drawn with train.seed
        raw = {**raw, "data": {**raw["data"], "valid_seed": raw.get("train", {}).get("seed", 0)}}
    config = RunConfig.model_validate(raw)
    if speech is not None and config.speech != speech:
        wanted = "a speech (CTC)" if speech else "a language"
        raise ConfigError(f"{path}: {wanted} model is needed here, this checkpoint holds "
                          f"{'a speech' if config.speech else 'a language'} model")
    model_config = dict(checkpoint["model_config"])
    if config.speech:  # checkpoints written before the first recurrent layer had its norm have none
        model_config.setdefault("input_norm", False)
    model_config = type(config.model).model_validate({"family": config.model.family, **model_config})
    model = build_model(config, model_config, len(checkpoint["vocabulary"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), config, checkpoint["vocabulary"], checkpoint


def model_summary(model: nn.Module, checkpoint: dict) -> dict:
    """Step, sparsity of the pruned tensors, parameters and non-zero parameters of a checkpoint."""
    masks = checkpoint["pruner"]["masks"].values()
    pruned_total = sum(mask.numel() for mask in masks)
    return {"step": checkpoint["loop"]["step"],
            "sparsity": 1 - sum(int(m.sum()) for m in masks) / max(1, pruned_total),
            "parameters": sum(p.numel() for p in model.parameters()),
            "nonzero_parameters": sum(int(torch.count_nonzero(p)) for p in model.parameters())}


def _summary(model: LanguageModel, checkpoint: dict, loss: float, tokens: int) -> dict:
    return {**model_summary(model, checkpoint), "loss": loss, "perplexity": math.exp(loss), "tokens": tokens}


def evaluate_checkpoint(path: str | Path, split: str = "test") -> dict:
    """Perplexity of a saved model on one split of the corpus it was trained on."""
    model, config, vocabulary, checkpoint = load_trained(path, speech=False)
    corpus = load_corpus(config.data)
    if list(corpus.vocabulary) != vocabulary:
        raise DataError(f"{config.data.path}: vocabulary differs from the one {path} was trained on")
    columns = batchify(corpus.split(split), config.data.eval_batch_size)
    loss = evaluate(model, columns, config.data.bptt)
    return {"split": split, **_summary(model, checkpoint, loss, columns.numel())}


def score_file(path: str | Path, text_path: str | Path) -> dict:
    """Perplexity of a saved model on a text file, tokenized as its training data was."""
    model, config, vocabulary, checkpoint = load_trained(path, speech=False)
    try:
        text = Path(text_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{text_path}: cannot read as UTF-8 text ({error})") from None
    tokens = word_tokens(text) if config.data.level == "word" else list(text)
    if len(tokens) < 2:
        raise DataError(f"{text_path}: needs at least two tokens to score")
    loss = evaluate(model, encode(tokens, vocabulary).view(-1, 1), config.data.bptt)
    return {"file": str(text_path), **_summary(model, checkpoint, loss, len(tokens) - 1)}


@torch.no_grad()
def generate(path: str | Path, prompt: str, tokens: int, temperature: float = 1.0, seed: int = 0) -> str:
    """Sample ``tokens`` tokens after ``prompt`` (temperature-scaled softmax)."""
    if temperature <= 0:
        raise DataError(f"--temperature must be > 0, got {temperature}")
    model, config, vocabulary, _ = load_trained(path, speech=False)
    word_level = config.data.level == "word"
    context = (prompt.split() if word_level else list(prompt)) or ([EOS] if word_level else ["\n"])
    ids = encode(context, vocabulary).view(-1, 1)  # (T, 1)
    generator = torch.Generator().manual_seed(seed)
    logits, hidden = model(ids)
    out = []
    for _ in range(tokens):
        probabilities = torch.softmax(logits[-1, 0] / temperature, dim=-1)
        token = int(torch.multinomial(probabilities, 1, generator=generator))
        out.append(vocabulary[token])
        logits, hidden = model(torch.tensor([[token]]), hidden)
    if not word_level:
        return prompt + "".join(out)
    return " ".join(prompt.split() + out).replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n")
