"""The engine against the masked PyTorch model: whole sequences, streaming, batches, threads."""

import numpy as np
import pytest
import torch
from torch import nn

from sparsernn import kernels
from sparsernn.engine import LanguageModelEngine, RecurrentStack
from sparsernn.export import export_model, load_exported
from tests.export.test_export import pruned_lm

BACKENDS = ["reference"] + (["c"] if kernels.backend() == "c" else [])


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
@pytest.mark.parametrize("block", [(1, 1), (8, 1)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_language_model_matches_pytorch(tmp_path, cell, block, backend):
    model, masks, architecture = pruned_lm(cell=cell, block=block, tie=cell == "gru")
    path = tmp_path / "lm.safetensors"
    export_model(model, masks, path, architecture=architecture, vocabulary=[str(i) for i in range(48)],
                 block=block)
    tokens = torch.randint(0, 48, (11, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(tokens)[0].numpy()
    for threads in (1, 2):
        engine = LanguageModelEngine(path, threads=threads, backend=backend)
        np.testing.assert_allclose(engine(tokens.numpy()), expected, atol=1e-4)
        engine.reset()
        streamed = np.concatenate([engine(tokens[t:t + 1].numpy()) for t in range(11)])
        np.testing.assert_allclose(streamed, expected, atol=1e-4)  # state carried between calls


def test_real_text_through_a_trained_checkpoint(trained_checkpoint, tmp_path):
    """A model trained by the loop on a real text slice, exported, gives the same logits."""
    from sparsernn.export import export_checkpoint
    from sparsernn.train.evaluate import load_trained

    model, _, vocabulary, _ = load_trained(trained_checkpoint)
    export_checkpoint(trained_checkpoint, tmp_path / "m.safetensors")
    engine = LanguageModelEngine(tmp_path / "m.safetensors")
    tokens = torch.arange(40).remainder(len(vocabulary)).reshape(20, 2)
    with torch.no_grad():
        expected = model(tokens)[0].numpy()
    np.testing.assert_allclose(engine(tokens.numpy()), expected, atol=1e-4)


@pytest.mark.parametrize("cell, module", [("lstm", nn.LSTM), ("gru", nn.GRU)])
def test_bidirectional_stack_matches_pytorch(cell, module):
    torch.manual_seed(0)
    rnn = module(24, 16, num_layers=2, bidirectional=True).eval()
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("weight"):
                p.mul_((torch.rand_like(p) > 0.7).float())
    tensors = {name: p.detach().numpy() for name, p in rnn.named_parameters()}
    stack = RecurrentStack.from_tensors(cell, tensors, "", 2, True, threads=2)
    x = torch.randn(9, 4, 24)
    with torch.no_grad():
        expected = rnn(x)[0].numpy()  # (T, B, 2H)
    out = stack(np.ascontiguousarray(x.numpy().transpose(2, 0, 1)), stack.initial_state(4))
    np.testing.assert_allclose(out.transpose(1, 2, 0), expected, atol=1e-4)


def test_bad_tokens_are_rejected(tmp_path):
    model, masks, architecture = pruned_lm()
    export_model(model, masks, tmp_path / "m.safetensors", architecture=architecture,
                 vocabulary=[str(i) for i in range(48)])
    engine = LanguageModelEngine(load_exported(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match=r"\[0, 48\)"):
        engine(np.array([[48]]))


def test_missing_compiled_kernels_fall_back_with_a_warning(monkeypatch):
    import sys

    kernels._compiled.cache_clear()
    monkeypatch.setitem(sys.modules, "sparsernn.kernels._kernels", None)  # import fails
    try:
        with pytest.warns(RuntimeWarning, match="reference"):
            assert kernels.backend() == "reference"
    finally:
        kernels._compiled.cache_clear()
