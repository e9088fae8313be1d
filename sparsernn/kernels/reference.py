"""The reference backend: scipy.sparse products and PyTorch's cell equations in numpy, step by step.

Slow and plain on purpose: the compiled kernels are tested against it, and it runs where they are not
built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse

if TYPE_CHECKING:
    from sparsernn.kernels import SparseMatrix


def to_scipy(matrix: SparseMatrix) -> scipy.sparse.sparray:
    index = matrix.index.astype(np.int32)
    if matrix.block == (1, 1):
        return scipy.sparse.csr_array((matrix.values.reshape(-1), index, matrix.rowptr), shape=matrix.shape)
    return scipy.sparse.bsr_array((matrix.values, index, matrix.rowptr), shape=matrix.shape)


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """``x`` (float32) as int8 numbers (int32 here) and their scale: round(x * 127 / max |x|), as the
    kernels quantize the input of a product with one column of an int8 matrix."""
    most = np.abs(x).max(initial=np.float32(0))
    inverse = np.float32(127) / most if most > 0 else np.float32(0)
    return np.clip(np.rint(x * inverse), -127, 127).astype(np.int32), most / np.float32(127)


def spmm(matrix: SparseMatrix, x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``matrix @ x + bias``; for a matrix that runs in int8, as the kernels compute it: each column of x
    quantized, the integer sums exact, each scaled by its row's scale times its column's."""
    bias = np.zeros(matrix.shape[0], np.float32) if bias is None else bias
    if not matrix.runs_int8:
        return np.asarray(to_scipy(matrix) @ x, dtype=np.float32) + bias[:, None]
    integers = scipy.sparse.csr_array((matrix.int8.astype(np.int64), matrix.index.astype(np.int32),
                                       matrix.rowptr), shape=matrix.shape)
    out = np.empty((matrix.shape[0], x.shape[1]), np.float32)
    for n in range(x.shape[1]):
        xq, scale = quantize(x[:, n])
        sums = (integers @ xq.astype(np.int64)).astype(np.float64)
        out[:, n] = sums * (matrix.scales * scale) + bias
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def layer_norm(x: np.ndarray, size: int, weight: np.ndarray | None, bias: np.ndarray | None,
               eps: float) -> np.ndarray:
    """PyTorch's LayerNorm over each group of ``size`` consecutive rows of ``x`` (features, n)."""
    groups = x.reshape(-1, size, x.shape[1]).astype(np.float64)
    mean = groups.mean(axis=1, keepdims=True)
    out = (groups - mean) / np.sqrt(((groups - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    if weight is not None:
        out = out * weight[:, None]
    if bias is not None:
        out = out + bias[:, None]
    return out.reshape(x.shape).astype(np.float32)


def softmax(x: np.ndarray, size: int, *, log: bool = False) -> np.ndarray:
    """softmax (or log_softmax) over each group of ``size`` consecutive rows of ``x`` (features, n)."""
    groups = x.reshape(-1, size, x.shape[1]).astype(np.float64)
    shifted = groups - groups.max(axis=1, keepdims=True)
    total = np.exp(shifted).sum(axis=1, keepdims=True)
    out = shifted - np.log(total) if log else np.exp(shifted) / total
    return out.reshape(x.shape).astype(np.float32)


def cell_step(cell: str, x: np.ndarray, gates: np.ndarray, h: np.ndarray,
              c: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """One step: ``x`` = W_ih x_t + b_ih and ``gates`` = W_hh h + b_hh, both (gates*H, B)."""
    if cell == "rnn_tanh":
        return np.tanh(x + gates), None
    if cell == "rnn_relu":
        return np.maximum(x + gates, 0.0), None
    if cell == "rnn_clipped_relu":
        return np.clip(x + gates, 0.0, 20.0), None
    if cell == "gru":
        x_r, x_z, x_n = np.split(x, 3)
        h_r, h_z, h_n = np.split(gates, 3)
        r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)
        n = np.tanh(x_n + r * h_n)
        return (1.0 - z) * n + z * h, None
    i, f, g, o = (a + b for a, b in zip(np.split(x, 4), np.split(gates, 4), strict=True))
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def recurrent(cell: str, weight_hh: SparseMatrix, bias_hh: np.ndarray, xproj: np.ndarray, h: np.ndarray,
              c: np.ndarray | None, *, reverse: bool = False) -> np.ndarray:
    out = np.empty((xproj.shape[0], *h.shape), dtype=np.float32)
    steps = range(xproj.shape[0] - 1, -1, -1) if reverse else range(xproj.shape[0])
    state, cell_state = h.copy(), None if c is None else c.copy()
    for t in steps:
        gates = spmm(weight_hh, state, bias_hh)
        state, cell_state = cell_step(cell, xproj[t], gates, state, cell_state)
        state = state.astype(np.float32)
        out[t] = state
    h[...] = state
    if c is not None:
        c[...] = cell_state
    return out


def attention(query: np.ndarray, keys: np.ndarray, memory: np.ndarray, lengths: np.ndarray,
              score: np.ndarray | None) -> np.ndarray:
    """A translation decoder's attention for each column ``b``: the first ``lengths[b]`` rows of
    ``keys[b]`` and ``memory[b]`` (``(B, S, H)`` each) scored against ``query[:, b]`` (``query`` (H, B)):
    ``score . tanh(k + q)`` (additive) or, with ``score`` None, ``k . q``; softmax; returns the context
    (H, B), the weighted sum of memory rows."""
    context = np.zeros(query.shape, np.float32)
    for b, length in enumerate(lengths):
        k, m, q = keys[b, :length], memory[b, :length], query[:, b]
        scores = np.tanh(k + q) @ score if score is not None else k @ q
        weights = np.exp(scores - scores.max())
        context[:, b] = weights @ m / weights.sum()
    return context
