import pytest
import torch

from sparsernn.config import ModelConfig
from sparsernn.models.lm import LanguageModel, nonzero_parameters, parameter_count, size_to_parameters


def test_parameter_count_matches_hand_formula():
    config = ModelConfig(cell="lstm", embedding_size=10, hidden_size=20, layers=2)
    vocab = 50
    lstm = 4 * 20 * (10 + 20) + 8 * 20 + 4 * 20 * (20 + 20) + 8 * 20  # weights + two biases per layer
    expected = vocab * 10 + lstm + 20 * vocab + vocab
    assert parameter_count(vocab, config) == expected
    assert expected == sum(p.numel() for p in LanguageModel(vocab, config).parameters())
    tied = ModelConfig(cell="gru", embedding_size=20, hidden_size=20, layers=1, tie_weights=True)
    assert parameter_count(vocab, tied) == vocab * 20 + 3 * 20 * 40 + 6 * 20 + vocab


@pytest.mark.parametrize("tie", [False, True])
def test_size_to_parameters_picks_the_closest_hidden_size(tie):
    base = ModelConfig(cell="lstm", embedding_size=64, hidden_size=64, layers=2, tie_weights=tie)
    target = 123_456
    sized, count = size_to_parameters(1000, base, target)
    assert count == parameter_count(1000, sized)
    for neighbour in (sized.hidden_size - 1, sized.hidden_size + 1):
        other = sized.model_copy(update={"hidden_size": neighbour, "embedding_size": neighbour})
        assert abs(parameter_count(1000, other) - target) >= abs(count - target)
    assert sized.embedding_size == sized.hidden_size  # the base's ratio, 64 / 64


def test_sizing_keeps_the_embedding_ratio():
    base = ModelConfig(cell="gru", embedding_size=100, hidden_size=200, layers=1)
    sized, count = size_to_parameters(5000, base, 300_000)
    assert sized.embedding_size == round(sized.hidden_size / 2)
    assert abs(count - 300_000) / 300_000 < 0.02


def test_nonzero_parameters_counts_tied_storage_once():
    model = LanguageModel(30, ModelConfig(cell="gru", embedding_size=8, hidden_size=8, layers=1,
                                          tie_weights=True))
    with torch.no_grad():
        model.rnn.weight_hh_l0[:4] = 0.0
    state = model.state_dict()
    assert "decoder.weight" in state and "embedding.weight" in state
    expected = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert nonzero_parameters(state) == expected
