"""Small recurrent models the pruner tests share."""

import pytest
import torch
from torch import nn


class LSTMTagger(nn.Module):
    """2-layer bidirectional LSTM with projections, embedding in, linear out."""

    def __init__(self, vocab=40, hidden=24):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 16)
        self.rnn = nn.LSTM(16, hidden, num_layers=2, bidirectional=True, proj_size=8)
        self.head = nn.Linear(16, vocab)

    def forward(self, tokens):  # (T, B)
        return self.head(self.rnn(self.embedding(tokens))[0])  # (T, B, vocab)


class GRULanguageModel(nn.Module):
    def __init__(self, vocab=40, hidden=32):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 16)
        self.rnn = nn.GRU(16, hidden, num_layers=2)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        return self.decoder(self.rnn(self.embedding(tokens))[0])


class VanillaRNN(nn.Module):
    def __init__(self, vocab=40, hidden=32):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 16)
        self.rnn = nn.RNN(16, hidden, nonlinearity="relu")
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        return self.head(self.rnn(self.embedding(tokens))[0])


MODELS = {"lstm": LSTMTagger, "gru": GRULanguageModel, "rnn": VanillaRNN}


def batch(step, vocab=40, length=12, size=4):
    """The batch of a given step: the same on every call, so runs can be replayed."""
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, vocab, (length, size), generator=generator)


def train_step(model, optimizer, pruner, step, vocab=40):
    tokens = batch(step, vocab)
    logits = model(tokens[:-1])
    loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[1:].reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if pruner is not None:
        pruner.step()
    return loss


@pytest.fixture(params=sorted(MODELS))
def model_name(request):
    return request.param
