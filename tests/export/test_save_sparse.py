"""save_sparse / load_sparse on a user's own model: round trip, size, tied weights, and every mismatch."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from sparsernn import OneShotSchedule, Pruner, load_sparse, save_sparse
from sparsernn.engine import SparseLinear, SparseRNN
from sparsernn.export import ExportError, load_exported
from tests.export.test_export import rewrite_header


class Tagger(nn.Module):
    """Embedding, a bidirectional LSTM with projections, a batch norm (with its integer counter), a GRU
    cell, and an output layer tied to the embedding."""

    def __init__(self, vocab=64, hidden=32, batch_first=True):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 16)
        self.lstm = nn.LSTM(16, hidden, num_layers=2, bidirectional=True, proj_size=8,
                            batch_first=batch_first)
        self.norm = nn.BatchNorm1d(16)
        self.cell = nn.GRUCell(16, 16)
        self.output = nn.Linear(16, vocab)
        self.output.weight = self.embedding.weight

    def forward(self, tokens):  # (B, T)
        hidden = self.norm(self.lstm(self.embedding(tokens))[0].transpose(1, 2)).transpose(1, 2)
        return self.output(self.cell(hidden[:, -1]))


def pruned_tagger(sparsity=0.9, **options):
    torch.manual_seed(0)
    model = Tagger(**options)
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.num_batches_tracked += 7
    pruner = Pruner(model, OneShotSchedule(at=1, sparsity=sparsity))
    pruner.step()
    return model.eval()


def test_round_trip_into_a_fresh_instance(tmp_path):
    model = pruned_tagger()
    summary = save_sparse(model, tmp_path / "m.safetensors")
    fresh = Tagger()
    fast = load_sparse(fresh, tmp_path / "m.safetensors", threads=2)
    for name, tensor in model.state_dict().items():  # every tensor, the integer counter included
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert isinstance(fast.lstm, SparseRNN) and isinstance(fast.output, SparseLinear)
    tokens = torch.randint(0, 64, (3, 9))
    with torch.no_grad():
        np.testing.assert_allclose(fast(tokens).numpy(), model(tokens).numpy(), atol=1e-4)
    matrices = summary["matrices"]
    assert matrices["lstm.weight_hh_l1_reverse"]["storage"] == "csr"
    assert matrices["embedding.weight"]["storage"] == "csr"  # pruned as the tied output weight
    metadata = load_exported(tmp_path / "m.safetensors").metadata
    assert metadata["ties"] == {"output.weight": "embedding.weight"}
    assert metadata["modules"]["lstm"] == {"type": "LSTM", "input_size": 16, "hidden_size": 32,
                                           "num_layers": 2, "bias": True, "batch_first": True,
                                           "bidirectional": True, "proj_size": 8}


def test_file_is_small_and_reads_with_numpy_and_safetensors_alone(tmp_path):
    model = pruned_tagger()
    summary = save_sparse(model, tmp_path / "m.safetensors")
    assert summary["bytes"] < 0.5 * summary["dense_fp32_bytes"]
    arrays = load_file(str(tmp_path / "m.safetensors"))
    rowptr, index = arrays["lstm.weight_hr_l0.rowptr"], arrays["lstm.weight_hr_l0.index"]
    values = arrays["lstm.weight_hr_l0.values"].reshape(-1)
    dense = np.zeros((8, 32), np.float32)
    for row in range(8):  # docs/FORMAT.md's CSR definition, by hand
        dense[row, index[rowptr[row]:rowptr[row + 1]]] = values[rowptr[row]:rowptr[row + 1]]
    assert np.array_equal(dense, model.lstm.weight_hr_l0.detach().numpy())
    assert arrays["norm.num_batches_tracked"].dtype == np.int64 and arrays["norm.num_batches_tracked"] == 7


def test_block_pruned_weights_are_stored_and_run_in_their_blocks(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.GRU(16, 32))
    Pruner(model, OneShotSchedule(at=1, sparsity=0.9), block=(8, 1)).step()
    summary = save_sparse(model, tmp_path / "m.safetensors")
    assert summary["matrices"]["0.weight_hh_l0"]["block"] == [8, 1]
    fast = load_sparse(nn.Sequential(nn.GRU(16, 32)), tmp_path / "m.safetensors")
    assert fast[0].stack.layers[0][0].weight_hh.block == (8, 1)


@pytest.mark.parametrize("values, tolerance", [("fp16", 5e-3), ("bf16", 3e-2)])
def test_reduced_precision_values(tmp_path, values, tolerance):
    model = pruned_tagger()
    save_sparse(model, tmp_path / "b.safetensors", values=values)
    stored = load_file(str(tmp_path / "b.safetensors"))
    assert all(array.itemsize == 2 for name, array in stored.items() if name.endswith(".values"))
    fast = load_sparse(Tagger(), tmp_path / "b.safetensors")
    assert fast.lstm.stack.layers[0][0].weight_hh.bf16 == (values == "bf16")  # the kernels read 16 bits
    tokens = torch.randint(0, 64, (3, 9))
    with torch.no_grad():
        np.testing.assert_allclose(fast(tokens).numpy(), model(tokens).numpy(), atol=tolerance)


def test_tampered_tensor_or_metadata_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_sparse(pruned_tagger(), path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="SHA-256"):
        load_sparse(Tagger(), path)
    save_sparse(pruned_tagger(), path)
    rewrite_header(path, lambda m: m["modules"]["lstm"].update(batch_first=False), sign=False)
    with pytest.raises(ExportError, match="SHA-256"):
        load_sparse(Tagger(), path)


def test_a_model_that_does_not_match_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_sparse(pruned_tagger(), path)
    with pytest.raises(ExportError, match=r"tensor lstm.weight_ih_l0 has shape \(128, 16\) in the file, "
                                          r"\(256, 16\) in the model"):
        load_sparse(Tagger(hidden=64), path)
    with pytest.raises(ExportError, match="module lstm: batch_first is True in the file, False in the model"):
        load_sparse(Tagger(batch_first=False), path)
    with pytest.raises(ExportError, match="the model's tensor extra.weight is not in the file"):
        model = Tagger()
        model.extra = nn.Linear(2, 2)
        load_sparse(model, path)
    with pytest.raises(ExportError, match="tensor cell.bias_hh in the file is not in the model"):
        model = Tagger()
        del model.cell
        load_sparse(model, path)


def test_old_format_and_foreign_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_sparse(pruned_tagger(), path)
    rewrite_header(path, lambda m: m.update(format=1))
    with pytest.raises(ExportError, match="format version 1; this sparsernn reads 2"):
        load_sparse(Tagger(), path)
    save_sparse(pruned_tagger(), path)
    with pytest.raises(ExportError, match="load_sparse"):  # a user's model is not a built-in family
        _ = load_exported(path).architecture
