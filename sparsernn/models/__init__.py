"""Model families, by ``model.family``: ``lm`` (language model), ``ds2`` (Deep Speech 2 for CTC) and
``seq2seq`` (attention encoder-decoder for translation)."""

from __future__ import annotations

from torch import nn


def build_model(config, model_config, vocab_size: int) -> nn.Module:
    """The model a run config's family names, shaped by ``model_config`` (the config's own model, or a
    sized copy of it), with ``vocab_size`` words or characters."""
    if model_config.family == "lm":
        from sparsernn.models.lm import LanguageModel

        return LanguageModel(vocab_size, model_config)
    if model_config.family == "seq2seq":
        from sparsernn.models.seq2seq import Seq2Seq

        return Seq2Seq(vocab_size, model_config)
    from sparsernn.data.speech import feature_size
    from sparsernn.models.ctc import SpeechModel

    return SpeechModel(feature_size(config.data), vocab_size, model_config)


def parameter_count(config, model_config, vocab_size: int) -> int:
    """Parameters of such a model (tied weights once), built on the meta device."""
    import torch

    with torch.device("meta"):
        model = build_model(config, model_config, vocab_size)
    return sum(p.numel() for p in model.parameters())


def closest_hidden_size(count, target: int) -> int:
    """The hidden size h whose ``count(h)`` (parameters, increasing in h) is closest to ``target``."""
    low, high = 1, 1
    while count(high) < target:
        high *= 2
    while low < high:  # the smallest hidden size with at least `target` parameters
        middle = (low + high) // 2
        if count(middle) < target:
            low = middle + 1
        else:
            high = middle
    return min((h for h in (low - 1, low) if h >= 1), key=lambda h: abs(count(h) - target))


def scaled_shape(model_config, hidden_size: int):
    """``model_config`` with this hidden size (even for a translation model, whose encoder directions
    have half); the embedding of a language or translation model scales by the same factor (equal to the
    hidden size when weights are tied)."""
    if model_config.family == "seq2seq":
        hidden_size += hidden_size % 2
    update = {"hidden_size": hidden_size}
    if model_config.family in ("lm", "seq2seq"):
        ratio = model_config.embedding_size / model_config.hidden_size
        tied = model_config.tie_weights
        update["embedding_size"] = hidden_size if tied else max(1, round(hidden_size * ratio))
    return model_config.model_copy(update=update)
