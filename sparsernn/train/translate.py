"""Using a trained translation model: loss, perplexity, BLEU and chrF on a split (greedy or beam search),
and translations of text, one per input line.

Scores are sacrebleu's, on detokenized output against the references as written, with sacrebleu's
signature (which says exactly how the score was computed) beside them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from sparsernn.config import ConfigError, TranslationDataConfig
from sparsernn.data.translation import PAD, ParallelSet, Tokenizer, collate, in_order
from sparsernn.train.losses import padded_cross_entropy


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
    """sacrebleu's corpus BLEU and chrF, with their signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    return {"bleu": bleu.corpus_score(hypotheses, [references]).score,
            "bleu_signature": str(bleu.get_signature()),
            "chrf": chrf.corpus_score(hypotheses, [references]).score,
            "chrf_signature": str(chrf.get_signature())}


def translate_ids(model: nn.Module, sources: list[torch.Tensor], beam: int, max_output: int,
                  batch_size: int = 128, device="cpu") -> list[list[int]]:
    """Output ids for each source (in order): greedy in batches, or beam search one sentence at a time."""
    if beam > 0:
        return [model.beam_search(source.to(device), len(source), beam, max_output) for source in sources]
    data = ParallelSet(sources, [torch.zeros(0, dtype=torch.long)] * len(sources), [])
    out: list[list[int]] = [[] for _ in sources]
    for indices in in_order(data, batch_size):
        batch = collate(data, indices).to(device)
        outputs = model.greedy(batch.source, batch.source_lengths, max_output)
        for index, words in zip(indices, outputs, strict=True):
            out[index] = words
    return out


@torch.no_grad()
def score_set(model: nn.Module, data: ParallelSet, tokenizer: Tokenizer, config: TranslationDataConfig,
              beam: int = 0, device="cpu") -> dict:
    """Loss and perplexity (teacher forcing) and BLEU / chrF of the decoded split."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for indices in in_order(data, config.eval_batch_size):
        batch = collate(data, indices).to(device)
        logits = model(batch.source, batch.source_lengths, batch.target_in)
        words = int((batch.target_out != PAD).sum())
        total += padded_cross_entropy(logits, batch.target_out, PAD).item() * words
        count += words
    outputs = translate_ids(model, data.sources, beam, config.max_output, config.eval_batch_size, device)
    hypotheses = [tokenizer.decode(ids) for ids in outputs]
    model.train(was_training)
    loss = total / max(1, count)
    return {"loss": loss, "perplexity": math.exp(loss), **corpus_scores(hypotheses, data.references),
            "hypotheses": hypotheses}


def load_translator(path: str | Path):
    """A translation checkpoint's model (eval mode), config, tokenizer and the checkpoint itself."""
    from sparsernn.train.evaluate import load_trained

    model, config, _, checkpoint = load_trained(path)
    if not config.translation:
        raise ConfigError(f"{path}: a translation model is needed here; this checkpoint holds another kind")
    return model, config, Tokenizer(checkpoint["artifacts"]["tokenizer.model"]), checkpoint


def evaluate_translation(path: str | Path, split: str = "test", beam: int = 0) -> dict:
    """Loss, perplexity, BLEU and chrF of a checkpoint on a split (``sparsernn evaluate``)."""
    from sparsernn.data.translation import load_translation
    from sparsernn.train.evaluate import model_summary

    model, config, tokenizer, checkpoint = load_translator(path)
    data = load_translation(config.data, tokenizer, splits=(split,))[0][split]
    scores = score_set(model, data, tokenizer, config.data, beam)
    del scores["hypotheses"]
    return {"split": split, "pairs": len(data), "beam_width": beam, **model_summary(model, checkpoint),
            **scores}


def translate(path: str | Path, lines: list[str], beam: int = 0) -> list[str]:
    """One translation per line (an empty line gives an empty translation)."""
    model, config, tokenizer, _ = load_translator(path)
    return translate_lines(model, tokenizer, lines, beam, config.data.max_output)


def translate_lines(model: nn.Module, tokenizer: Tokenizer, lines: list[str], beam: int,
                    max_output: int) -> list[str]:
    """Detokenized translations of text lines by a model (PyTorch's or its sparsified copy)."""
    sources = [torch.tensor(tokenizer.encode(line) or [PAD]) for line in lines]  # an empty line: PAD
    out = translate_ids(model, sources, beam, max_output)
    return [tokenizer.decode(ids) if line.strip() else "" for ids, line in zip(out, lines, strict=True)]
