"""The engine against the masked PyTorch model: whole sequences, streaming, batches, threads."""

import numpy as np
import pytest
import torch
from torch import nn

from sparsernn import kernels
from sparsernn.engine import DENSE_ENOUGH, LanguageModelEngine, RecurrentStack, as_kernel_matrix
from sparsernn.export import load_exported, save_sparse
from tests.export.test_export import pruned_lm

BACKENDS = ["reference"] + (["c"] if kernels.backend() == "c" else [])


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
@pytest.mark.parametrize("block", [(1, 1), (8, 1)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_language_model_matches_pytorch(tmp_path, cell, block, backend):
    model, masks, architecture = pruned_lm(cell=cell, block=block, tie=cell == "gru")
    path = tmp_path / "lm.safetensors"
    save_sparse(model, path, extra={"architecture": architecture, "vocabulary": [str(i) for i in range(48)]})
    tokens = torch.randint(0, 48, (11, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(tokens)[0].numpy()
    for threads in (1, 2):
        engine = LanguageModelEngine(path, threads=threads, backend=backend)
        np.testing.assert_allclose(engine(tokens.numpy()), expected, atol=1e-4)
        engine.reset()
        streamed = np.concatenate([engine(tokens[t:t + 1].numpy()) for t in range(11)])
        np.testing.assert_allclose(streamed, expected, atol=1e-4)  # state carried between calls
        engine.reset()
        mixed = [engine(tokens[t:t + 1].numpy()) for t in range(4)] + [engine(tokens[4:].numpy())]
        np.testing.assert_allclose(np.concatenate(mixed), expected, atol=1e-4)  # one state for both
        np.testing.assert_allclose(engine(tokens[:1, :2].numpy())[0], expected[0, :2], atol=1e-4)  # new batch


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
@pytest.mark.parametrize("keep", [0.1, 1.0])  # pruned (CSR) and dense (16x1 blocks)
def test_bidirectional_stack_matches_pytorch(cell, module, keep):
    torch.manual_seed(0)
    rnn = module(24, 16, num_layers=2, bidirectional=True).eval()
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("weight"):
                p.mul_((torch.rand_like(p) < keep).float())
    tensors = {name: p.detach().numpy() for name, p in rnn.named_parameters()}
    stack = RecurrentStack.from_tensors(cell, tensors, "", 2, True, threads=2)
    assert stack.layers[1][1].weight_hh.block == ((1, 1) if keep < DENSE_ENOUGH else (16, 1))
    x = torch.randn(9, 4, 24)
    with torch.no_grad():
        expected = rnn(x)[0].numpy()  # (T, B, 2H)
    out = stack(np.ascontiguousarray(x.numpy().transpose(2, 0, 1)), stack.initial_state(4))
    np.testing.assert_allclose(out.transpose(1, 2, 0), expected, atol=1e-4)


def test_dense_matrices_run_as_blocks_that_keep_gates_apart():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((3 * 24, 40)).astype(np.float32)
    assert as_kernel_matrix(dense).block == (8, 1)  # 72 rows: 8 divides, 16 does not
    assert as_kernel_matrix(dense, rows_unit=12).block == (1, 1)  # blocks may not straddle gates
    assert as_kernel_matrix(np.zeros((64, 8), np.float32) + dense[:64, :8]).block == (16, 1)
    sparse = dense * (rng.random(dense.shape) < 0.1)
    stored = kernels.SparseMatrix.from_dense(sparse)
    kept = as_kernel_matrix(stored)  # pruned: as exported, its windows within all 72 rows
    assert kept.rowptr is stored.rowptr and (kept.rows_unit, stored.rows_unit) == (72, None)
    assert (kept._window(16), stored._window(16)) == (24, 8)  # gcd(72, 40) = 8
    assert as_kernel_matrix(stored, rows_unit=24)._window(16) == 24
    for matrix in (dense, sparse):
        np.testing.assert_array_equal(as_kernel_matrix(kernels.SparseMatrix.from_dense(matrix)).to_dense(),
                                      matrix)


def test_bad_tokens_are_rejected(tmp_path):
    model, masks, architecture = pruned_lm()
    save_sparse(model, tmp_path / "m.safetensors",
                extra={"architecture": architecture, "vocabulary": [str(i) for i in range(48)]})
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


def pruned_speech_model(cell, bidirectional, block=(1, 1)):
    """A DS2 model with random batch-norm statistics and 80% of its recurrent and output weights pruned."""
    from sparsernn.config import SpeechModelConfig
    from sparsernn.models.ctc import SpeechModel
    from sparsernn.prune import OneShotSchedule, Pruner

    torch.manual_seed(0)
    config = SpeechModelConfig(conv=({"channels": 4, "kernel": (5, 5), "stride": (2, 2)},
                                     {"channels": 3, "kernel": (3, 3), "stride": (2, 1)}),
                               cell=cell, hidden_size=16, layers=3, bidirectional=bidirectional)
    model = SpeechModel(16, 29, config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    pruner = Pruner(model, OneShotSchedule(at=1, sparsity=0.8), block=block)
    pruner.step()
    return model.eval(), pruner.masks, config


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_clipped_relu"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_speech_model_matches_pytorch(tmp_path, cell, bidirectional, backend):
    from sparsernn.engine import SpeechEngine
    from sparsernn.export import speech_architecture

    model, masks, config = pruned_speech_model(cell, bidirectional, block=(1, 4) if cell == "gru" else (1, 1))
    data = {"sample_rate": 16000, "features": "logmel", "n_mels": 16, "window_ms": 20.0, "hop_ms": 10.0}
    summary = save_sparse(model, tmp_path / "s.safetensors", extra={
        "vocabulary": [str(i) for i in range(29)],
        "architecture": speech_architecture(config.model_dump(mode="json"), data, 29)})
    assert {name for name, m in summary["matrices"].items() if m["storage"] != "dense"} == set(masks)
    features = torch.randn(16, 45)
    with torch.no_grad():
        expected, _ = model(features[None], torch.tensor([45]))
    for threads in (1, 2):
        engine = SpeechEngine(tmp_path / "s.safetensors", threads=threads, backend=backend)
        np.testing.assert_allclose(engine.log_probs(features.numpy()), expected[:, 0].numpy(), atol=1e-4)


def test_trained_speech_checkpoint_transcribes_like_pytorch(tmp_path, speech_config, an4_dir):
    """A speech model trained by the loop, exported by the CLI, gives the checkpoint's transcripts."""
    from sparsernn.cli import main
    from sparsernn.config import RunConfig
    from sparsernn.data.speech import read_audio
    from sparsernn.engine import SpeechEngine
    from sparsernn.train.loop import train
    from sparsernn.train.recognize import transcribe

    speech_config["train"]["epochs"] = 1
    train(RunConfig.model_validate(speech_config), tmp_path / "run")
    checkpoint = tmp_path / "run/checkpoints/last.pt"
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "s.safetensors")]) == 0
    engine = SpeechEngine(tmp_path / "s.safetensors")
    files = sorted((an4_dir / "wav/an4test_clstk").rglob("*.wav"))[:3]
    for file, text in zip(files, transcribe(checkpoint, files, beam=4), strict=True):
        assert engine.transcribe(*read_audio(file), beam=4) == text
    # with a word LM fused, as the checkpoint's search
    from sparsernn.ngram import NgramLM
    from sparsernn.train.metrics import LMFusion

    arpa = str(tmp_path / "lm.arpa")
    assert main(["lm", "build", "--config", str(tmp_path / "run/config.yaml"), "-o", arpa]) == 0
    fusion = LMFusion(NgramLM.load(tmp_path / "lm.arpa"), alpha=2.0, beta=1.0)
    fused = transcribe(checkpoint, files, beam=4, lm=tmp_path / "lm.arpa", alpha=2.0, beta=1.0)
    for file, text in zip(files, fused, strict=True):
        assert engine.transcribe(*read_audio(file), beam=4, lm=fusion) == text


@pytest.mark.parametrize("cell, attention, decoder_layers", [("gru", "bahdanau", 1), ("lstm", "luong", 2),
                                                             ("gru", "luong", 2), ("lstm", "bahdanau", 1)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_translation_decoder_step_matches_pytorch(cell, attention, decoder_layers, backend):
    """The engine's decoder step (one Program: layers, attention, attentional vector, output layer) on a
    pruned Seq2Seq against the model's own decode_step, step by step on a padded batch, then greedy
    decoding and beam search through it."""
    from sparsernn.config import Seq2SeqConfig
    from sparsernn.engine import sparsify
    from sparsernn.engine.families import _DecodeStep
    from sparsernn.models.seq2seq import Seq2Seq

    torch.manual_seed(0)
    config = Seq2SeqConfig(cell=cell, attention=attention, embedding_size=8, hidden_size=12, dropout=0.0,
                           decoder_layers=decoder_layers)
    net = Seq2Seq(13, config).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            if parameter.dim() == 2:
                parameter.mul_(torch.rand(parameter.shape) > 0.7)
    engine = sparsify(net, backend=backend)
    engine.decode_step = _DecodeStep(engine, 1, backend)
    source, lengths = torch.tensor([[4, 5, 6, 0, 0, 0], [7, 8, 9, 10, 11, 12]]), torch.tensor([3, 6])
    with torch.no_grad():
        encoded, state, feed = net.encode(source, lengths)
        ours, engine_encoded = (state, feed), engine.encode(source, lengths)[0]
        for words in ([1, 1], [5, 9], [12, 3]):
            words = torch.tensor(words)
            logits, state, feed = net.decode_step(words, state, feed, encoded)
            got, *ours = engine.decode_step(words, *ours, engine_encoded)
            torch.testing.assert_close(got, logits, atol=1e-4, rtol=0)
            for mine, theirs in zip(torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(
                    (state, feed)), strict=True):
                torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
        assert engine.greedy(source, lengths, 7) == net.greedy(source, lengths, 7)
        assert engine.beam_search(source[1], 6, 3, 7) == net.beam_search(source[1], 6, 3, 7)
