import pytest
import torch
from torch import nn

from sparsernn.prune.masks import find_prunable, magnitude_quantile, threshold_keep, topk_keep
from tests.prune.conftest import GRULanguageModel, LSTMTagger, VanillaRNN


def names(model, groups=("recurrent", "linear"), **kwargs):
    return [w.name for w in find_prunable(model, groups, **kwargs)]


def test_finds_every_fused_lstm_weight_but_no_bias():
    expected = [f"rnn.weight_{kind}_l{layer}{suffix}" for layer in (0, 1) for suffix in ("", "_reverse")
                for kind in ("ih", "hh", "hr")]
    assert sorted(names(LSTMTagger())) == sorted(expected + ["head.weight"])


def test_embedding_and_conv_only_when_asked():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Conv1d(4, 4, 3), nn.GRU(4, 8), nn.Linear(8, 2),
                          nn.LayerNorm(2))
    assert names(model) == ["2.weight_ih_l0", "2.weight_hh_l0", "3.weight"]
    assert names(model, ("embedding", "conv")) == ["0.weight", "1.weight"]


def test_cells_and_patterns():
    model = nn.ModuleDict({"cell": nn.GRUCell(4, 8), "lstm": nn.LSTMCell(8, 8), "out": nn.Linear(8, 3)})
    assert names(model) == ["cell.weight_ih", "cell.weight_hh", "lstm.weight_ih", "lstm.weight_hh",
                            "out.weight"]
    assert names(model, include=["*.weight_hh"]) == ["cell.weight_hh", "lstm.weight_hh"]
    assert names(model, exclude=["out.*", "cell.*"]) == ["lstm.weight_ih", "lstm.weight_hh"]


def test_tied_weight_listed_once():
    model = GRULanguageModel()
    model.decoder = nn.Linear(16, 40)
    model.rnn = nn.GRU(16, 16)
    model.decoder.weight = model.embedding.weight
    found = names(model, ("embedding", "recurrent", "linear"))
    assert found == ["embedding.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0"]


def test_gate_blocks():
    blocks = {w.name: w.blocks for w in find_prunable(LSTMTagger(), ["recurrent"], per_gate=True)}
    assert blocks["rnn.weight_ih_l1_reverse"] == 4 and blocks["rnn.weight_hr_l0"] == 1
    blocks = {w.name: w.blocks for w in find_prunable(GRULanguageModel(), ["recurrent"], per_gate=True)}
    assert set(blocks.values()) == {3}
    assert {w.blocks for w in find_prunable(VanillaRNN(), ["recurrent"], per_gate=True)} == {1}
    assert {w.blocks for w in find_prunable(LSTMTagger(), ["recurrent"])} == {1}


def test_magnitude_quantile_matches_sorting():
    magnitudes = torch.rand(3, 1000, generator=torch.Generator().manual_seed(0))
    q = magnitude_quantile(magnitudes, 0.9)
    for row in range(3):
        assert q[row] == magnitudes[row].sort().values[899]
        assert int((magnitudes[row] <= q[row]).sum()) == 900


def test_threshold_keep():
    weight = torch.tensor([[0.1, -0.5, 0.3], [0.2, -0.2, 0.9]])
    keep = threshold_keep(weight, torch.tensor([0.3, 0.1]))
    assert keep.tolist() == [[0, 1, 0], [1, 1, 1]]


def test_topk_keep_exact_count_and_prunes_masked_first():
    weight = torch.tensor([[0.4, 0.0, -0.1, 0.9, 0.05]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0]])  # 0.9 is already pruned
    keep, cutoff = topk_keep(weight, mask, 0.4)  # remove 2
    assert keep.tolist() == [[1, 0, 1, 0, 1]]  # the pruned one, then the smallest live one
    assert cutoff.tolist() == [0.0]
    keep, cutoff = topk_keep(weight, mask, 0.8)  # remove 4
    assert keep.tolist() == [[1, 0, 0, 0, 0]]
    assert cutoff.tolist() == pytest.approx([0.1])
