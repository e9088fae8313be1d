"""Export files: round trip, value encodings, size, and every kind of damaged file."""

import json
import struct

import numpy as np
import pytest
import torch
from torch import nn

from sparsernn.config import ModelConfig
from sparsernn.export import (
    ExportError,
    _digest,
    decode_values,
    encode_values,
    lm_architecture,
    load_exported,
    save_sparse,
)
from sparsernn.kernels import SparseMatrix
from sparsernn.models.lm import LanguageModel
from sparsernn.prune import OneShotSchedule, Pruner


def pruned_lm(cell="gru", block=(1, 1), tie=False, sparsity=0.9, vocab=48, hidden=32, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(cell=cell, embedding_size=hidden, hidden_size=hidden, layers=2, dropout=0.0,
                         tie_weights=tie)
    model = LanguageModel(vocab, config).eval()
    pruner = Pruner(model, dict.fromkeys(("recurrent", "linear", "embedding"),
                                         OneShotSchedule(at=1, sparsity=sparsity)), block=block)
    pruner.step()
    architecture = lm_architecture(config.model_dump(), vocab)
    return model, pruner.masks, architecture


def write(tmp_path, block=(1, 1), values="fp32", **kwargs):
    model, masks, architecture = pruned_lm(block=block, **kwargs)
    path = tmp_path / "model.safetensors"
    summary = save_sparse(model, path, values=values, extra={
        "architecture": architecture, "vocabulary": [f"w{i}" for i in range(architecture["vocab_size"])]})
    return model, masks, path, summary


@pytest.mark.parametrize("block", [(1, 1), (8, 1)])
def test_round_trip_is_exact_and_small(tmp_path, block):
    model, masks, path, summary = write(tmp_path, block, hidden=64)
    loaded = load_exported(path)
    for name, param in model.state_dict().items():
        tensor = loaded.tensors[name]
        array = tensor.to_dense() if isinstance(tensor, SparseMatrix) else tensor
        assert np.array_equal(array, param.numpy()), name
        if name in masks:
            assert isinstance(tensor, SparseMatrix) and tensor.block == block
            assert tensor.index.dtype == np.uint16
            assert loaded.metadata["matrices"][name]["sparsity"] == pytest.approx(0.9, abs=0.01)
    # 10% of the values with 16-bit indices, plus dense biases and the JSON header
    assert summary["bytes"] < 0.25 * summary["dense_fp32_bytes"]
    assert loaded.metadata["vocabulary"][3] == "w3"


def test_tied_weights_are_stored_once(tmp_path):
    _, _, path, _ = write(tmp_path, tie=True)
    loaded = load_exported(path)
    assert "decoder.weight" not in loaded.tensors and "embedding.weight" in loaded.tensors


def test_file_reads_with_numpy_and_safetensors_alone(tmp_path):
    from safetensors.numpy import load_file

    model, _, path, _ = write(tmp_path)
    arrays = load_file(str(path))
    rowptr, index = arrays["rnn.weight_hh_l0.rowptr"], arrays["rnn.weight_hh_l0.index"]
    values = arrays["rnn.weight_hh_l0.values"].reshape(-1)
    dense = np.zeros((96, 32), np.float32)
    for row in range(96):  # the CSR definition of docs/FORMAT.md, by hand
        dense[row, index[rowptr[row]:rowptr[row + 1]]] = values[rowptr[row]:rowptr[row + 1]]
    assert np.array_equal(dense, model.rnn.weight_hh_l0.detach().numpy())


@pytest.mark.parametrize("kind, tolerance", [("fp16", 1e-3), ("bf16", 8e-3)])
def test_reduced_precision_values(tmp_path, kind, tolerance):
    values = np.array([1.0, -0.1, 3.14159, 1e-3, 65504.0 / 2], np.float32)
    decoded = decode_values(encode_values(values, kind), kind)
    np.testing.assert_allclose(decoded, values, rtol=tolerance)
    halfway = np.array([1.00390625], np.float32)  # exactly between two bfloat16 values
    assert decode_values(encode_values(halfway, "bf16"), "bf16")[0] == 1.0  # ties to even
    model, _, path, summary = write(tmp_path, values=kind)
    loaded = load_exported(path)
    weight = loaded.tensors["rnn.weight_hh_l0"].to_dense()
    np.testing.assert_allclose(weight, model.rnn.weight_hh_l0.detach().numpy(), rtol=tolerance, atol=1e-6)
    assert weight.dtype == np.float32


@pytest.mark.parametrize("block", [(1, 1), (8, 1)])
def test_int8_values_with_a_scale_per_row(tmp_path, block):
    """int8 values: the stored integers and scales (as docs/FORMAT.md defines them) give back what
    to_int8 makes of each matrix, one byte a value; every matrix within half a step of its row's scale of
    the float one."""
    from safetensors.numpy import load_file

    model, masks, path, _ = write(tmp_path, block, values="int8", hidden=64)
    stored = load_file(str(path))
    loaded = load_exported(path)
    for name in masks:
        weight = model.state_dict()[name].numpy()
        q, scales = stored[f"{name}.values"], stored[f"{name}.scales"]
        assert q.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (weight.shape[0],)
        assert q.nbytes == stored[f"{name}.rowptr"][-1] * block[0] * block[1]
        np.testing.assert_array_equal(scales, np.abs(weight).max(axis=1) / np.float32(127))
        tensor = loaded.tensors[name]
        assert tensor.block == block and tensor.runs_int8 == (block == (1, 1))
        assert np.array_equal(tensor.to_dense(), SparseMatrix.from_dense(weight, block).to_int8().to_dense())
        assert np.all(np.abs(tensor.to_dense() - weight) <= scales[:, None] / 2 * 1.0001)


def test_indices_take_one_byte_where_a_matrix_has_at_most_256_block_columns(tmp_path):
    """Format 4 stores the block-column indices of a matrix of <= 256 block columns as uint8 (one byte
    a non-zero less); loading widens them to the kernels' uint16, and the matrix is the same."""
    from safetensors.numpy import load_file

    model = nn.Sequential(nn.Linear(256, 64), nn.Linear(257, 64), nn.Linear(512, 64))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model:
            layer.weight.mul_((torch.rand(layer.weight.shape, generator=generator) < 0.1).float())
    save_sparse(model, tmp_path / "m.safetensors", values="int8")
    stored = load_file(str(tmp_path / "m.safetensors"))
    assert [stored[f"{k}.weight.index"].dtype for k in range(3)] == [np.uint8, np.uint16, np.uint16]
    loaded = load_exported(tmp_path / "m.safetensors")
    for k in range(3):
        matrix = loaded.tensors[f"{k}.weight"]
        assert matrix.index.dtype == np.uint16 and matrix.runs_int8
        expected = SparseMatrix.from_dense(model[k].weight.detach().numpy()).to_int8().to_dense()
        assert np.array_equal(matrix.to_dense(), expected)
    assert loaded.metadata["format"] == 4


def test_int8_files_with_bad_values_or_scales_are_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    _, masks, path, _ = write(tmp_path, values="int8", hidden=64)
    name = next(iter(masks))
    stored = load_file(str(path))
    metadata = load_exported(path).metadata

    def rewritten(change):
        tensors = dict(stored)
        change(tensors)
        metadata["sha256"] = _digest(tensors, metadata)
        save_file(tensors, str(path), metadata={"sparsernn": json.dumps(metadata)})
        return path

    with pytest.raises(ExportError, match=f"tensor {name}: .*scales"):
        load_exported(rewritten(lambda t: t.pop(f"{name}.scales")))
    q = stored[f"{name}.values"].copy()
    q.reshape(-1)[0] = -128
    with pytest.raises(ExportError, match=f"tensor {name}: .*not integers in \\[-127, 127\\]"):
        load_exported(rewritten(lambda t: t.update({f"{name}.values": q})))


def test_missing_file(tmp_path):
    with pytest.raises(ExportError, match="file not found"):
        load_exported(tmp_path / "absent.safetensors")


def test_truncated_file(tmp_path):
    _, _, path, _ = write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        load_exported(path)


def test_altered_values_fail_the_checksum(tmp_path):
    _, _, path, _ = write(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a byte inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="SHA-256"):
        load_exported(path)


def rewrite_header(path, change, sign=True):
    """Edit the JSON metadata in place (keeps the tensors); ``sign``: with a matching SHA-256, as a
    writer that knows the format would, so that the checks behind the digest are reached."""
    from safetensors.numpy import load_file

    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    metadata = json.loads(header["__metadata__"]["sparsernn"])
    change(metadata)
    if sign:
        metadata["sha256"] = _digest(load_file(str(path)), metadata)
    header["__metadata__"]["sparsernn"] = json.dumps(metadata)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size:])


def test_altered_metadata_fails_the_checksum(tmp_path):
    _, _, path, _ = write(tmp_path)
    rewrite_header(path, lambda m: m["vocabulary"].__setitem__(3, "w4"), sign=False)
    with pytest.raises(ExportError, match="SHA-256"):
        load_exported(path)


def test_unknown_format_version(tmp_path):
    _, _, path, _ = write(tmp_path)
    rewrite_header(path, lambda m: m.update(format=99))
    with pytest.raises(ExportError, match="format version 99"):
        load_exported(path)


def test_shape_that_disagrees_with_the_metadata(tmp_path):
    _, _, path, _ = write(tmp_path)
    rewrite_header(path, lambda m: m["matrices"]["rnn.weight_hh_l0"].update(shape=[96, 64]))
    with pytest.raises(ExportError, match="rnn.weight_hh_l0"):
        load_exported(path)


def test_index_out_of_range_is_caught_even_with_a_matching_checksum(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    _, _, path, _ = write(tmp_path)
    arrays = load_file(str(path))
    arrays["rnn.weight_hh_l0.index"][0] = 40  # only 32 columns
    with safe_open(str(path), "numpy") as handle:
        metadata = json.loads(handle.metadata()["sparsernn"])
    metadata["sha256"] = _digest(arrays, metadata)
    save_file(arrays, str(path), metadata={"sparsernn": json.dumps(metadata)})
    with pytest.raises(ExportError, match=r"rnn.weight_hh_l0: column index out of range"):
        load_exported(path)


def test_foreign_safetensors_file(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": np.zeros(3, np.float32)}, str(path))
    with pytest.raises(ExportError, match="no sparsernn metadata"):
        load_exported(path)


def test_unpruned_matrices_stay_dense(tmp_path):
    model, masks, path, summary = write(tmp_path, sparsity=0.0)
    assert all(m["storage"] == "dense" for m in summary["matrices"].values())
    assert summary["bytes"] < 1.1 * summary["dense_fp32_bytes"]
