"""The peer runtimes compute what PyTorch computes on the ONNX graphs the benchmarks export."""

import numpy as np
import pytest
import torch

from sparsernn.bench.end_to_end import QUICK_SHAPE, _peer_calls, _pruned_model
from sparsernn.bench.peers import (
    BF16_PEERS,
    INT8_PEERS,
    PEERS,
    export_language_model,
    missing,
    pytorch_int8,
    runner,
)


@pytest.mark.parametrize("peer, atol", [pytest.param(name, atol, marks=pytest.mark.skipif(
    missing(name) is not None, reason=f"{missing(name)}"))
    for names, atol in ((PEERS, 1e-4), (BF16_PEERS, 1e-2), (INT8_PEERS, 2e-2)) for name in names])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_peer_runs_the_exported_model_as_pytorch_does(peer, atol, cell, tmp_path):
    """One step with states carried and the whole sequence, against the PyTorch model at 1e-4 (bf16
    peers: 1e-2; int8 ones: 2e-2)."""
    model, _ = _pruned_model(QUICK_SHAPE | {"cell": cell, "layers": 2}, (1, 1))
    paths = export_language_model(model, tmp_path, 5)
    tokens = np.array([[3], [1], [4], [1], [5]], np.int64)
    names = ["h", "c"] if cell == "lstm" else ["h"]
    state = np.random.default_rng(0).standard_normal((2, 1, 128)).astype(np.float32)
    with torch.no_grad():
        hidden = tuple(torch.from_numpy(state) for _ in names)
        logits, after = model(torch.from_numpy(tokens), hidden if cell == "lstm" else hidden[0])
        step_logits, after_step = model(torch.from_numpy(tokens[:1]), hidden if cell == "lstm" else hidden[0])
    outputs = runner(peer, paths["sequence"])({"tokens": tokens, **dict.fromkeys(names, state)})
    np.testing.assert_allclose(outputs[0], logits.numpy(), atol=atol)
    np.testing.assert_allclose(outputs[1], (after[0] if cell == "lstm" else after).numpy(), atol=atol)
    outputs = runner(peer, paths["streaming"])({"tokens": tokens[:1], **dict.fromkeys(names, state)})
    np.testing.assert_allclose(outputs[0], step_logits.numpy(), atol=atol)
    if cell == "lstm":
        np.testing.assert_allclose(outputs[2], after_step[1].numpy(), atol=atol)


@pytest.mark.skipif(missing("onnxruntime") is not None, reason=str(missing("onnxruntime")))
def test_a_peer_that_computes_other_logits_is_not_timed(tmp_path):
    model, _ = _pruned_model(QUICK_SHAPE, (1, 1))
    paths = export_language_model(model, tmp_path, 4)
    with torch.no_grad():
        model.decoder.bias += 1.0  # the graphs keep the old bias
    with pytest.raises(RuntimeError, match="other logits than PyTorch"):
        _peer_calls("onnxruntime", paths, model, dict.fromkeys(("streaming", "sequence"),
                                                                np.zeros((4, 1), np.int64)), threads=1)


def test_a_missing_peer_is_named_with_the_install_command(monkeypatch):
    import importlib.machinery
    import importlib.util

    # everything importable but openvino, whatever this machine has installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "openvino"
                        else importlib.machinery.ModuleSpec(name, None))
    assert missing("openvino") == "openvino is not installed (pip install 'sparsernn[peers]')"
    assert missing("openvino_bf16") == missing("openvino")
    with pytest.raises(RuntimeError, match="openvino is not installed"):
        runner("openvino", "model.onnx")


@pytest.mark.parametrize("peer", [pytest.param(name, marks=pytest.mark.skipif(
    missing(name) is not None, reason=f"{missing(name)}")) for name in PEERS])
@pytest.mark.parametrize("cell, attention", [("gru", "bahdanau"), ("lstm", "luong")])
def test_peer_translates_as_the_pytorch_model_does(peer, cell, attention, tmp_path):
    """Greedy decoding through the exported encoder and decoder step: the same words as the model's
    own greedy search, on sources of several lengths (the graphs take any source length)."""
    from sparsernn.bench.peers import PeerTranslator, export_translator
    from sparsernn.config import Seq2SeqConfig
    from sparsernn.models.seq2seq import Seq2Seq

    torch.manual_seed(0)
    config = Seq2SeqConfig(cell=cell, attention=attention, embedding_size=24, hidden_size=32, dropout=0.0,
                           decoder_layers=2 if cell == "lstm" else 1)
    model = Seq2Seq(50, config).eval()
    for p in model.parameters():  # sharp distributions: greedy words that differ by a hair are rare
        torch.nn.init.normal_(p, std=0.5)
    translator = PeerTranslator(peer, export_translator(model, tmp_path), model)
    for source in ([5, 6, 7], [9] * 11, [4, 30, 22, 8, 17, 3]):
        expected = model.greedy(torch.tensor([source]), torch.tensor([len(source)]), 12)[0]
        assert translator.greedy(np.array(source), 12) == expected


@pytest.mark.parametrize("peer", [pytest.param(name, marks=pytest.mark.skipif(
    missing(name) is not None, reason=f"{missing(name)}")) for name in PEERS])
@pytest.mark.parametrize("cell, bidirectional", [("gru", True), ("lstm", False)])
def test_peer_recognizes_utterances_of_any_length_as_pytorch_does(peer, cell, bidirectional, tmp_path):
    """One graph for every utterance length; the model it came from stays in eval mode (the exporter
    leaves submodules in the mode of the module it was given)."""
    from sparsernn.bench.peers import PeerSpeech, export_speech
    from sparsernn.config import SpeechModelConfig
    from sparsernn.models.ctc import SpeechModel

    torch.manual_seed(0)
    model = SpeechModel(40, 29, SpeechModelConfig(cell=cell, hidden_size=32, layers=2,
                                                   bidirectional=bidirectional)).eval()
    for norm in model.modules():  # running statistics away from their initial 0 and 1
        if isinstance(norm, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    recognizer = PeerSpeech(peer, export_speech(model, tmp_path, 40))
    assert not any(module.training for module in model.modules())
    for frames in (17, 50, 123):
        features = torch.randn(40, frames)
        with torch.no_grad():
            expected = model(features[None], torch.tensor([frames]))[0][:, 0].numpy()
        np.testing.assert_allclose(recognizer.log_probs(features.numpy()), expected, atol=1e-4)


def test_a_clipped_relu_speech_model_is_not_exported(tmp_path):
    from sparsernn.bench.peers import export_speech
    from sparsernn.config import SpeechModelConfig
    from sparsernn.models.ctc import SpeechModel

    model = SpeechModel(40, 29, SpeechModelConfig(cell="rnn_clipped_relu", hidden_size=16, layers=1))
    with pytest.raises(ValueError, match="Python loop"):
        export_speech(model, tmp_path, 40)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_pytorch_int8_quantizes_the_recurrent_layers_and_the_output_layer(cell):
    model, _ = _pruned_model(QUICK_SHAPE | {"cell": cell, "layers": 2}, (1, 1))
    quantized = pytorch_int8(model)
    for module in (quantized.rnn, quantized.decoder):
        assert type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert type(model.rnn) is (torch.nn.GRU if cell == "gru" else torch.nn.LSTM)  # the model left as it was
    tokens = torch.tensor([[3], [1], [4], [1], [5]])
    with torch.no_grad():
        expected, got = model(tokens)[0], quantized(tokens)[0]
    assert float((got - expected).abs().max() / expected.abs().max()) < 5e-2
