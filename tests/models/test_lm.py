import pytest
import torch

from sparsernn.config import ModelConfig
from sparsernn.models.lm import LanguageModel, detach
from sparsernn.prune import NoSchedule, Pruner


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_shapes_and_hidden_carry(cell):
    model = LanguageModel(30, ModelConfig(cell=cell, embedding_size=8, hidden_size=12, layers=2))
    logits, hidden = model(torch.randint(0, 30, (5, 3)))
    assert logits.shape == (5, 3, 30)
    logits, _ = model(torch.randint(0, 30, (4, 3)), detach(hidden))
    assert logits.shape == (4, 3, 30)


def test_tied_decoder_is_the_embedding_and_pruned_once():
    model = LanguageModel(30, ModelConfig(embedding_size=12, hidden_size=12, tie_weights=True))
    assert model.decoder.weight is model.embedding.weight
    names = [w.name for w in Pruner(model, {"embedding": NoSchedule(), "linear": NoSchedule()}).weights]
    assert names == ["embedding.weight"]
    with pytest.raises(ValueError, match="tie_weights needs embedding_size == hidden_size"):
        ModelConfig(embedding_size=8, hidden_size=12, tie_weights=True)
