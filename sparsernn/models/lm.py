"""Language model: embedding -> RNN/GRU/LSTM stack -> linear decoder (optionally tied)."""

from __future__ import annotations

import torch
from torch import nn

from sparsernn.config import ModelConfig

_RECURRENT = {
    "rnn_tanh": lambda i, h, n, d: nn.RNN(i, h, n, nonlinearity="tanh", dropout=d),
    "rnn_relu": lambda i, h, n, d: nn.RNN(i, h, n, nonlinearity="relu", dropout=d),
    "gru": lambda i, h, n, d: nn.GRU(i, h, n, dropout=d),
    "lstm": lambda i, h, n, d: nn.LSTM(i, h, n, dropout=d),
}

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class LanguageModel(nn.Module):
    def __init__(self, vocab_size: int, config: ModelConfig):
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        self.embedding = nn.Embedding(vocab_size, config.embedding_size)
        inner_dropout = config.dropout if config.layers > 1 else 0.0
        self.rnn = _RECURRENT[config.cell](config.embedding_size, config.hidden_size, config.layers,
                                           inner_dropout)
        self.decoder = nn.Linear(config.hidden_size, vocab_size)
        if config.tie_weights:  # Press & Wolf 2017
            self.decoder.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        embedded = self.dropout(self.embedding(tokens))  # (T, B, E)
        output, hidden = self.rnn(embedded, hidden)  # (T, B, H)
        return self.decoder(self.dropout(output)), hidden  # (T, B, V)


def detach(hidden: Hidden | None) -> Hidden | None:
    """Cut the graph between BPTT windows."""
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return hidden.detach()


def parameter_count(vocab_size: int, config: ModelConfig) -> int:
    """Parameters of a language model of this shape (tied weights once), built on the meta device."""
    with torch.device("meta"):
        model = LanguageModel(vocab_size, config)
    return sum(p.numel() for p in model.parameters())


def size_to_parameters(vocab_size: int, config: ModelConfig, target: int) -> tuple[ModelConfig, int]:
    """The hidden size whose dense model has the parameter count closest to ``target``.

    ``embedding_size`` scales with ``hidden_size`` (keeping their ratio; equal when weights are tied),
    so the result is a smaller copy of the same model: with a large vocabulary, the embedding and
    decoder hold most parameters. Returns the sized config and its parameter count.
    """
    from sparsernn.models import closest_hidden_size, scaled_shape

    hidden = closest_hidden_size(lambda h: parameter_count(vocab_size, scaled_shape(config, h)), target)
    return scaled_shape(config, hidden), parameter_count(vocab_size, scaled_shape(config, hidden))


def nonzero_parameters(state_dict: dict[str, torch.Tensor]) -> int:
    """Non-zero parameters of a model state, counting storage shared by tied weights once; batch-norm
    statistics (buffers, not parameters) are left out."""
    seen, total = set(), 0
    for name, tensor in state_dict.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total += int(torch.count_nonzero(tensor))
    return total
