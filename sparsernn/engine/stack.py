"""Recurrent layers on the sparse kernels: the matrix layout each weight runs in, and a stack of layers.

:class:`RecurrentStack` runs RNN/GRU/LSTM layers (uni- or bidirectional, LSTM with or without
projections) over a sequence: per layer and direction, the input projections of all time steps as one
sparse-times-dense product, then the recurrence with gates fused in one compiled call. For streaming,
:meth:`RecurrentStack.step_operations` gives one step of every layer as operations of a
:class:`~sparsernn.kernels.Program`, which a caller extends (an output layer) and runs as one call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sparsernn import kernels
from sparsernn.kernels import CELLS, SparseMatrix, reference, smallest_layout

#: Above this density an unstructured matrix runs faster as dense 16x1 or 8x1 blocks (the vectorized
#: block kernels) than as CSR. `python benchmarks/probes/dense_layout.py` on the development machine, batch 1:
#: at full density 4.1x (576x192) and 3.7x (3072x1024) faster; CSR wins from 20% density down, and 40%
#: keeps to the safe side of the break-even on both shapes (BENCHMARKS.md).
DENSE_ENOUGH = 0.4


def as_kernel_matrix(weight: SparseMatrix | np.ndarray, rows_unit: int | None = None) -> SparseMatrix:
    """The layout the kernels run fastest: a pruned matrix as stored, or for a dense array the smallest
    of CSR and the kernels' blocks (:func:`~sparsernn.kernels.smallest_layout`); a dense or nearly dense
    one as 16x1 (or 8x1) blocks when that many rows divide ``rows_unit`` (the hidden size for recurrent
    weights, whose gates the blocks must not straddle), else as CSR. The matrix keeps ``rows_unit``
    (default: all its rows), which its one-column copies' windows divide."""
    rows, cols = weight.shape
    unit = rows if rows_unit is None else rows_unit
    if isinstance(weight, SparseMatrix):
        if weight.block != (1, 1) or weight.nnz < DENSE_ENOUGH * rows * cols:
            return dataclasses.replace(weight, rows_unit=unit)  # as exported
        weight = weight.to_dense()
    if np.count_nonzero(weight) < DENSE_ENOUGH * weight.size:
        matrix = smallest_layout(weight, rows_unit) or SparseMatrix.from_dense(weight)
    else:
        block = next(((r, 1) for r in (16, 8) if unit % r == 0 and rows % r == 0), (1, 1))
        matrix = SparseMatrix.from_dense(weight, block)
    return dataclasses.replace(matrix, rows_unit=unit)


@dataclass
class Direction:
    """One layer and direction: PyTorch's ``weight_ih``, ``weight_hh``, biases (zeros for ``bias=False``)
    and, for an LSTM with ``proj_size``, the projection ``weight_hr``."""

    weight_ih: SparseMatrix
    bias_ih: np.ndarray
    weight_hh: SparseMatrix
    bias_hh: np.ndarray
    weight_hr: SparseMatrix | None = None

    @property
    def output_size(self) -> int:
        return self.weight_hh.shape[1]  # hidden_size, or proj_size with a projection


class RecurrentStack:
    """``layers`` lists of one (forward) or two (forward, backward) directions, PyTorch's equations."""

    def __init__(self, cell: str, layers: list[list[Direction]], *, threads: int = 1, backend: str = "auto"):
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")
        self.cell, self.layers, self.threads = cell, layers, threads
        self.backend = kernels.backend(backend)
        self.hidden_size = layers[0][0].weight_hh.shape[0] // CELLS[cell]
        self.output_size = layers[0][0].output_size

    @classmethod
    def from_tensors(cls, cell: str, tensors: dict, prefix: str, num_layers: int, bidirectional: bool,
                     **options) -> RecurrentStack:
        """From PyTorch-named tensors (``{prefix}weight_ih_l0``, ``..._reverse``, biases when present,
        ``weight_hr_l0`` when present); each a SparseMatrix or a dense array."""
        suffixes = ["", "_reverse"] if bidirectional else [""]
        hidden = tensors[f"{prefix}weight_hh_l0"].shape[0] // CELLS[cell]

        def direction(name: str) -> Direction:
            bias = [np.asarray(tensors.get(f"{prefix}bias_{kind}{name}", np.zeros(CELLS[cell] * hidden)),
                               np.float32) for kind in ("ih", "hh")]
            projection = tensors.get(f"{prefix}weight_hr{name}")
            return Direction(as_kernel_matrix(tensors[f"{prefix}weight_ih{name}"], hidden), bias[0],
                             as_kernel_matrix(tensors[f"{prefix}weight_hh{name}"], hidden), bias[1],
                             None if projection is None else as_kernel_matrix(projection))

        return cls(cell, [[direction(f"_l{k}{s}") for s in suffixes] for k in range(num_layers)], **options)

    def initial_state(self, batch: int) -> list[list[tuple[np.ndarray, np.ndarray | None]]]:
        """Zero (h, c) per layer and direction: h (output size, B), c (H, B) for LSTM, else None."""
        return [[(np.zeros((self.output_size, batch), np.float32),
                  np.zeros((self.hidden_size, batch), np.float32) if self.cell == "lstm" else None)
                 for _ in layer] for layer in self.layers]

    def __call__(self, x: np.ndarray, state) -> np.ndarray:
        """``x`` (features, T, B) feature-major; ``state`` updated in place. Returns (dirs*out, T, B)."""
        features, steps, batch = x.shape
        for layer, layer_state in zip(self.layers, state, strict=True):
            flat = x.reshape(features, steps * batch)
            size = layer[0].output_size
            x = np.empty((size * len(layer), steps, batch), np.float32)  # the directions' outputs stacked
            for reverse, (direction, (h, c)) in enumerate(zip(layer, layer_state, strict=True)):
                projected = kernels.spmm(direction.weight_ih, flat, direction.bias_ih, threads=self.threads,
                                         backend_name=self.backend)  # (G*H, T*B)
                xproj = kernels.contiguous(projected.reshape(-1, steps, batch).transpose(1, 0, 2))
                if direction.weight_hr is None:
                    out = kernels.recurrent(self.cell, direction.weight_hh, direction.bias_hh, xproj, h, c,
                                            reverse=bool(reverse), threads=self.threads,
                                            backend_name=self.backend)  # (T, H, B)
                else:
                    out = self._projected_lstm(direction, xproj, h, c, bool(reverse))  # (T, P, B)
                kernels.contiguous(out.transpose(1, 0, 2), out=x[reverse * size:(reverse + 1) * size])
            features = x.shape[0]
        return x

    def step_operations(self, x: np.ndarray, state, out: np.ndarray | None = None
                        ) -> tuple[list[tuple], np.ndarray] | None:
        """One step of every layer as :class:`~sparsernn.kernels.Program` operations, from the buffer
        ``x`` (features, B) into the returned one (output size, B) (``out`` when given), updating
        ``state`` in place; the same products and cell equations as a call with one step. An LSTM with a
        projection runs its products and the cell equations as separate operations. None where a layer is
        bidirectional (a backward direction needs the whole sequence)."""
        if any(len(layer) > 1 for layer in self.layers):
            return None
        operations = []
        for k, ((direction,), ((h, c),)) in enumerate(zip(self.layers, state, strict=True)):
            batch = x.shape[1]
            xproj = np.empty((direction.weight_ih.shape[0], batch), np.float32)
            y = out if out is not None and k == len(self.layers) - 1 else np.empty_like(h)
            operations.append(("product", direction.weight_ih, x, xproj, direction.bias_ih))
            if direction.weight_hr is None:
                operations.append(("step", self.cell, direction.weight_hh, direction.bias_hh, xproj, y, h, c))
            else:  # gates = W_hh h + b_hh; the cell; h = W_hr (o * tanh(c))
                gates = np.empty_like(xproj)
                full = np.empty((self.hidden_size, batch), np.float32)
                operations += [("product", direction.weight_hh, h, gates, direction.bias_hh),
                               ("cell", self.cell, xproj, gates, full, c, full),
                               ("product", direction.weight_hr, full, h, None),
                               ("copy", h, y, 1, h.shape[0], 0, 0, 0, 0)]
            x = y
        return operations, x

    def _projected_lstm(self, direction: Direction, xproj: np.ndarray, h: np.ndarray, c: np.ndarray,
                        reverse: bool) -> np.ndarray:
        """An LSTM with ``proj_size`` step by step: gates = W_hh h + b_hh, the cell equations, then
        h = W_hr (o * tanh(c)) (PyTorch's ``nn.LSTM``; the fused kernel has no projection)."""
        steps = xproj.shape[0]
        out = np.empty((steps, *h.shape), np.float32)
        for t in range(steps - 1, -1, -1) if reverse else range(steps):
            gates = kernels.spmm(direction.weight_hh, h, direction.bias_hh, threads=self.threads,
                                 backend_name=self.backend)
            full, c[...] = reference.cell_step("lstm", xproj[t], gates, None, c)
            h[...] = kernels.spmm(direction.weight_hr, np.ascontiguousarray(full, np.float32),
                                  threads=self.threads, backend_name=self.backend)
            out[t] = h
        return out
