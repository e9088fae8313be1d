"""The dense runtimes a user would otherwise deploy with: ONNX Runtime and OpenVINO.

Both run the dense model as exported to ONNX by ``torch.onnx.export`` (the TorchScript exporter, which
turns ``nn.GRU`` / ``nn.LSTM`` into ONNX's own recurrent operators, the form both runtimes optimize),
on the CPU, with the thread count asked for and their latency settings; OpenVINO at fp32 precision
(``INFERENCE_PRECISION_HINT``), as our engine computes. They are an optional extra (``pip install
'sparsernn[peers]'``): where one is missing, :func:`missing` says why and the benchmarks say skipped.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

#: The peer runtimes, in the order the tables list them.
PEERS = ("onnxruntime", "openvino")

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def missing(name: str) -> str | None:
    """Why peer ``name`` cannot run here (None: it can)."""
    for module in ("onnx", name):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'sparsernn[peers]')"
    return None


def export_onnx(module, inputs: tuple, path: str | Path, input_names: Sequence[str],
                output_names: Sequence[str], dynamic_axes: dict | None = None) -> Path:
    """``module`` (in eval mode) traced on ``inputs`` and written as an ONNX model at ``path``."""
    import torch

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
    if name == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    if name == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(str(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        # shared buffers save a copy each way (about 60 us a call on a small model); outputs are copied
        # out, as the next call overwrites the request's
        return lambda feeds: [np.array(output) for output in
                              request.infer(feeds, share_inputs=True, share_outputs=True).values()]
    raise ValueError(f"unknown peer {name!r}; valid: {', '.join(PEERS)}")
