"""The dense runtimes a user would otherwise deploy with: ONNX Runtime and OpenVINO, and dense int8.

Both run the dense model as exported to ONNX by ``torch.onnx.export`` (the TorchScript exporter, which
turns ``nn.GRU`` / ``nn.LSTM`` into ONNX's own recurrent operators, the form both runtimes optimize),
on the CPU, with the thread count asked for and their latency settings; OpenVINO at fp32 precision
(``INFERENCE_PRECISION_HINT``), as our engine computes, and as ``openvino_bf16`` at bf16, OpenVINO's own
default on a CPU with bf16 instructions (the comparison for the engine's bf16 values);
``onnxruntime_int8``: the graph after ONNX Runtime's ``quantize_dynamic`` (int8 weights, activations
quantized per call: its LSTM becomes DynamicQuantizeLSTM; it has no quantized GRU, so a GRU stays in
float32 and only the products around it are quantized). PyTorch's own dense int8 (``quantize_dynamic``
of the model) is :func:`pytorch_int8`. The peers are an optional extra (``pip install
'sparsernn[peers]'``): where one is missing, :func:`missing` says why and the benchmarks say skipped.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

#: The peer runtimes at fp32, in the order the tables list them.
PEERS = ("onnxruntime", "openvino")
#: Peers computing with bf16 weights and activations, where the CPU has bf16 instructions.
BF16_PEERS = ("openvino_bf16",)
#: Peers computing with int8 weights, the activations quantized per call.
INT8_PEERS = ("onnxruntime_int8",)

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def missing(name: str) -> str | None:
    """Why peer ``name`` cannot run here (None: it can)."""
    for module in ("onnx", name.removesuffix("_bf16").removesuffix("_int8")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'sparsernn[peers]')"
    if name == "openvino_bf16":
        import openvino

        if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return "this CPU has no bf16 instructions (OpenVINO's OPTIMIZATION_CAPABILITIES)"
    return None


def export_onnx(module, inputs: tuple, path: str | Path, input_names: Sequence[str],
                output_names: Sequence[str], dynamic_axes: dict | None = None) -> Path:
    """``module`` traced in eval mode on ``inputs`` and written as an ONNX model at ``path``; the module is
    left in eval mode (the exporter restores the mode the top module had onto every submodule, so a
    wrapper fresh in training mode would otherwise switch the wrapped model's dropout back on)."""
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and RNN batch notes
        torch.onnx.export(module, inputs, str(path), input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic_axes or {},
                          opset_version=17, dynamo=False)
    return Path(path)


def runner(name: str, path: str | Path, threads: int = 1) -> Runner:
    """A function from named input arrays to the ONNX model's outputs, run by peer ``name``."""
    reason = missing(name)
    if reason:
        raise RuntimeError(reason)
    if name == "onnxruntime_int8":
        path = quantized_onnx(path)
    if name in ("onnxruntime", "onnxruntime_int8"):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    if name in ("openvino", "openvino_bf16"):
        import openvino

        compiled = openvino.Core().compile_model(str(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if name == "openvino_bf16" else "f32"})
        request = compiled.create_infer_request()
        # shared buffers save a copy each way (about 60 us a call on a small model); outputs are copied
        # out, as the next call overwrites the request's
        return lambda feeds: [np.array(output) for output in
                              request.infer(feeds, share_inputs=True, share_outputs=True).values()]
    raise ValueError(f"unknown peer {name!r}; valid: {', '.join((*PEERS, *INT8_PEERS, *BF16_PEERS))}")


def quantized_onnx(path: str | Path) -> Path:
    """The ONNX model at ``path`` after ONNX Runtime's recipe for dynamic quantization, beside it: its
    pre-processing (shape inference and graph optimization), then ``quantize_dynamic`` to int8 weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(path).with_suffix(".int8.onnx")
    if not out.exists():
        prepared = Path(path).with_suffix(".prepared.onnx")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer's notes
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    quant_pre_process(str(path), str(prepared))
                except Exception:  # noqa: BLE001 - a graph its shape inference cannot follow: as it is
                    prepared = Path(path)
                quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
    return out


def pytorch_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with PyTorch's dynamic quantization: its LSTM, GRU and Linear modules with int8
    weights, activations quantized per call (torch.ao.quantization.quantize_dynamic)."""
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(),
                                                      {torch.nn.LSTM, torch.nn.GRU, torch.nn.Linear},
                                                      dtype=torch.qint8)


# -- the model families as ONNX graphs ------------------------------------------------------------------


def _states(state) -> tuple:
    return state if isinstance(state, tuple) else (state,)


def _state_names(recurrent) -> list[str]:
    return ["h", "c"] if isinstance(recurrent, torch.nn.LSTM) else ["h"]


class _LanguageModelGraph(torch.nn.Module):
    """A language model with its states as separate tensors in and out, as an ONNX graph takes them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, *states):
        logits, hidden = self.model(tokens, states if len(states) == 2 else states[0])
        return (logits, *_states(hidden))


class _Encode(torch.nn.Module):
    """A translation model's ``encode`` for one sentence, its outputs as plain tensors."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, source):
        encoded, state, feed = self.model.encode(source, torch.full((1,), source.shape[1], dtype=torch.long))
        return (encoded.memory, encoded.keys, *_states(state), feed)


class _Utterance(torch.nn.Module):
    """A speech model's forward for one utterance: features (1, bins, frames) -> log-probabilities."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return self.model(features, torch.full((1,), features.shape[2], dtype=torch.long))[0]


class _DecodeStep(torch.nn.Module):
    """A translation model's ``decode_step`` for one sentence (no padding: every position attended)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, words, memory, keys, feed, *states):
        from sparsernn.models.seq2seq import Encoded

        mask = torch.ones(memory.shape[:2], dtype=torch.bool)
        logits, state, feed = self.model.decode_step(words, states if len(states) == 2 else states[0], feed,
                                                     Encoded(memory, keys, mask))
        return (logits, feed, *_states(state))


def export_language_model(model, directory: Path, sequence_steps: int) -> dict[str, Path]:
    """A :class:`~sparsernn.models.lm.LanguageModel` (batch 1) as two ONNX graphs of fixed shapes, one
    token (``"streaming"``) and ``sequence_steps`` tokens (``"sequence"``): each runtime's fastest form
    for that use (a graph with a free length ran slower in OpenVINO)."""
    names = _state_names(model.rnn)
    zeros = torch.zeros(model.rnn.num_layers, 1, model.rnn.hidden_size)
    return {mode: export_onnx(_LanguageModelGraph(model), (torch.zeros(length, 1, dtype=torch.long),
                                                           *([zeros] * len(names))),
                              Path(directory) / f"lm-{mode}.onnx", ["tokens", *names],
                              ["logits", *(f"{n}_out" for n in names)])
            for mode, length in (("streaming", 1), ("sequence", sequence_steps))}


class PeerLanguageModel:
    """The graphs of :func:`export_language_model` on peer ``name``, from zero states."""

    def __init__(self, name: str, paths: dict[str, Path], model, threads: int = 1):
        self.step, self.whole = (runner(name, paths[mode], threads) for mode in ("streaming", "sequence"))
        self.names = _state_names(model.rnn)
        zeros = np.zeros((model.rnn.num_layers, 1, model.rnn.hidden_size), np.float32)
        self.start = dict.fromkeys(self.names, zeros)

    def stream(self, tokens: np.ndarray) -> np.ndarray:
        """``tokens`` (T, 1) one per call, the state carried: logits (T, 1, V)."""
        states, logits = self.start, []
        for t in range(tokens.shape[0]):
            outputs = self.step({"tokens": tokens[t:t + 1], **states})
            states = dict(zip(self.names, outputs[1:], strict=True))
            logits.append(outputs[0])
        return np.concatenate(logits)

    def sequence(self, tokens: np.ndarray) -> np.ndarray:
        """``tokens`` (T, 1), T as exported, in one call: logits (T, 1, V)."""
        return self.whole({"tokens": tokens, **self.start})[0]


def export_translator(model, directory: Path) -> dict[str, Path]:
    """A :class:`~sparsernn.models.seq2seq.Seq2Seq` (batch 1) as two ONNX graphs: the model's own
    ``encode`` (source of any length -> encoder states, their attention keys, the decoder's first state
    and attentional vector) and its own ``decode_step``."""
    names = _state_names(model.decoder)
    source = torch.ones(1, 3, dtype=torch.long)
    with torch.no_grad():
        encoded, state, feed = model.encode(source, torch.tensor([3]))
    free = {"source": {1: "length"}, "memory": {1: "length"}, "keys": {1: "length"}}
    return {
        "encode": export_onnx(_Encode(model), (source,), Path(directory) / "encode.onnx", ["source"],
                              ["memory", "keys", *names, "feed"], free),
        "step": export_onnx(_DecodeStep(model), (torch.ones(1, dtype=torch.long), encoded.memory,
                                                 encoded.keys, feed, *_states(state)),
                            Path(directory) / "step.onnx",
                            ["words", "memory", "keys", "feed", *names],
                            ["logits", "feed_out", *(f"{n}_out" for n in names)], free),
    }


class PeerTranslator:
    """The graphs of :func:`export_translator` on peer ``name``: greedy decoding of one sentence."""

    def __init__(self, name: str, paths: dict[str, Path], model, threads: int = 1):
        self.encode, self.step = (runner(name, paths[part], threads) for part in ("encode", "step"))
        self.names = _state_names(model.decoder)

    def greedy(self, source: np.ndarray, max_length: int) -> list[int]:
        """Source ids (S,) -> the most likely word at each step, up to the end of sentence."""
        from sparsernn.data.translation import BOS, EOS

        memory, keys, *states, feed = self.encode({"source": np.asarray(source, np.int64)[None]})
        words, output = np.array([BOS], np.int64), []
        for _ in range(max_length):
            logits, feed, *states = self.step({"words": words, "memory": memory, "keys": keys, "feed": feed,
                                               **dict(zip(self.names, states, strict=True))})
            words = logits.argmax(-1).astype(np.int64)
            if int(words[0]) == EOS:
                break
            output.append(int(words[0]))
        return output


def export_speech(model, directory: Path, bins: int) -> Path:
    """A :class:`~sparsernn.models.ctc.SpeechModel` (batch 1, ``bins`` features per frame) as one ONNX
    graph taking utterances of any length. Not for ``rnn_clipped_relu``, whose recurrence is a Python
    loop that tracing unrolls."""
    if model.config.cell == "rnn_clipped_relu":
        raise ValueError("a clipped-ReLU RNN runs a Python loop over frames; its ONNX graph would fix "
                         "the utterance length")
    return export_onnx(_Utterance(model), (torch.zeros(1, bins, 20),),
                       Path(directory) / "speech.onnx", ["features"], ["log_probs"],
                       {"features": {2: "frames"}, "log_probs": {0: "steps"}})


class PeerSpeech:
    """The graph of :func:`export_speech` on peer ``name``."""

    def __init__(self, name: str, path: Path, threads: int = 1):
        self.run = runner(name, path, threads)

    def log_probs(self, features: np.ndarray) -> np.ndarray:
        """Features (bins, frames) of one utterance -> log-probabilities (frames', alphabet)."""
        return self.run({"features": np.asarray(features, np.float32)[None]})[0][:, 0]
