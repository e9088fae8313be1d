"""The translation model: shapes, padding that changes nothing, and decoding against exhaustive search."""

import itertools
import math

import pytest
import torch

from sparsernn.config import Seq2SeqConfig
from sparsernn.data.translation import BOS, EOS
from sparsernn.models.seq2seq import Seq2Seq


def model(cell="gru", attention="bahdanau", vocab=11, **options):
    torch.manual_seed(0)
    config = Seq2SeqConfig(**{"cell": cell, "attention": attention, "embedding_size": 8, "hidden_size": 12,
                              "dropout": 0.0, **options})
    return Seq2Seq(vocab, config).eval()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_padding_changes_nothing(cell, attention):
    net = model(cell, attention, layers=2, decoder_layers=2)
    short, long = torch.tensor([5, 6, 7]), torch.tensor([4, 9, 8, 6, 5, 10])
    source = torch.zeros(2, 6, dtype=torch.long)
    source[0, :3], source[1] = short, long
    target = torch.tensor([[BOS, 5, 6, 7], [BOS, 8, 9, 10]])
    with torch.no_grad():
        both = net(source, torch.tensor([3, 6]), target)  # (B, T, V)
        alone = net(short[None], torch.tensor([3]), target[:1])
    assert both.shape == (2, 4, 11)
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=0)


def test_tied_output_layer_is_the_target_embedding():
    net = model(tie_weights=True, embedding_size=12)
    assert net.output.weight is net.target_embedding.weight


def test_greedy_equals_beam_of_one():
    net = model("lstm", "luong")
    source = torch.tensor([4, 5, 6, 7])
    greedy = net.greedy(source[None], torch.tensor([4]), max_length=8)[0]
    assert net.beam_search(source, 4, beam=1, max_length=8) == greedy


def sequence_score(net, source, words, length_penalty):
    """log P(words, EOS | source) / (len(words) + 1) ** length_penalty, by teacher forcing."""
    target = torch.tensor([[BOS, *words]])
    with torch.no_grad():
        log_probs = torch.log_softmax(net(source[None], torch.tensor([len(source)]), target)[0], dim=-1)
    total = sum(log_probs[t, w].item() for t, w in enumerate([*words, EOS]))
    return total / (len(words) + 1) ** length_penalty


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_best(length_penalty):
    net = model(vocab=6)
    source = torch.tensor([4, 5, 4])
    words = [w for w in range(6) if w != EOS]
    candidates = [list(c) for k in range(3) for c in itertools.product(words, repeat=k)]  # + EOS <= 3
    best = max(candidates, key=lambda c: sequence_score(net, source, c, length_penalty))
    found = net.beam_search(source, 3, beam=200, max_length=3, length_penalty=length_penalty)
    assert found == best
    assert math.isclose(sequence_score(net, source, found, length_penalty),
                        sequence_score(net, source, best, length_penalty))
