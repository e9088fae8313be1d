"""Target mode reaches the sparsity asked for in loops written the way users write them.

Each loop is a plain PyTorch loop (its own optimizer, gradient clipping, ``batch_first`` where the
model takes it) with ``NarangSchedule(start, ramp, end, freq, sparsity=0.9)`` and no other argument.
Adam with a large learning rate makes the weights grow during the ramp, the case where a q measured
once at ``start`` falls short.
"""

import pytest
import torch
from torch import nn

from sparsernn import NarangSchedule, Pruner


class WordLM(nn.Module):
    def __init__(self, vocab=60):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 24)
        self.lstm = nn.LSTM(24, 32, num_layers=2, batch_first=True)
        self.decoder = nn.Linear(32, vocab)

    def forward(self, tokens):  # (B, T)
        return self.decoder(self.lstm(self.embedding(tokens))[0])  # (B, T, vocab)


class Tagger(nn.Module):
    """Bidirectional LSTM with projections (Adam's favourite failure case for a fixed q)."""

    def __init__(self, vocab=60, cell=nn.LSTM, **options):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 24)
        self.rnn = cell(24, 32, batch_first=True, bidirectional=True, **options)
        self.head = nn.Linear(2 * options.get("proj_size", 32), vocab)

    def forward(self, tokens):
        return self.head(self.rnn(self.embedding(tokens))[0])


LOOPS = {
    "lstm-lm-adam": (lambda: WordLM(), lambda p: torch.optim.Adam(p, lr=1e-2)),
    "lstm-proj-bidirectional-adam": (lambda: Tagger(proj_size=16), lambda p: torch.optim.Adam(p, lr=1e-2)),
    "gru-bidirectional-sgd-momentum": (lambda: Tagger(cell=nn.GRU),
                                       lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9)),
    "rnn-adam": (lambda: Tagger(cell=nn.RNN), lambda p: torch.optim.Adam(p, lr=1e-2)),
}


def train(name, **schedule_options):
    """The loop ``name`` as a user writes it, with the Pruner added; returns the Pruner."""
    torch.manual_seed(0)
    make_model, make_optimizer = LOOPS[name]
    model = make_model()
    optimizer = make_optimizer(model.parameters())
    pruner = Pruner(model, NarangSchedule(start=20, ramp=60, end=120, freq=10, sparsity=0.9,
                                          **schedule_options), optimizer=optimizer)
    data = torch.randint(0, 60, (400, 13), generator=torch.Generator().manual_seed(1))
    for step in range(150):
        tokens = data[(step * 8) % 400:][:8]
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 60), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        pruner.step()
    return pruner


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_user_loop_reaches_the_target(name):
    pruner = train(name)  # no q_from: the default
    assert pruner.sparsity() == pytest.approx(0.9, abs=0.01)
    for row in pruner.report():  # every tensor, not only the pooled figure
        assert row.sparsity == pytest.approx(0.9, abs=0.01), row.name


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_the_papers_fixed_q_falls_short_on_the_same_loops(name):
    """Why the default is q_from="update": q measured once at ``start`` misses the target here."""
    assert train(name, q_from="start").sparsity() < 0.8
