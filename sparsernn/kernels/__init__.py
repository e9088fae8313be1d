"""Sparse matrix products and whole-sequence recurrent layers: compiled kernels and a reference.

A :class:`SparseMatrix` holds a matrix in blocks of ``r x c`` (CSR is 1x1 blocks). Two backends
compute the same things with the same contract:

- ``"reference"``: scipy.sparse products and numpy cell equations, step by step (slow, obviously right);
- ``"c"``: the C extension ``sparsernn.kernels._kernels`` (built by ``pip install``): vectorized
  block kernels, fused gates, OpenMP threads, the whole sequence in one call.

:func:`backend` picks ``"c"`` when the extension imports, else warns once and falls back.
Activations are feature-major: ``x`` is ``(features, N)``; ``xproj`` is ``(T, gates * H, B)``.
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass
from functools import cache, cached_property
from typing import NamedTuple

import numpy as np

from sparsernn.kernels import reference

#: Cell names and their gate counts (PyTorch's gate order: LSTM i|f|g|o, GRU r|z|n).
CELLS = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4, "rnn_clipped_relu": 1}
_CELL_CODES = {"rnn_tanh": 0, "rnn_relu": 1, "gru": 2, "lstm": 3, "rnn_clipped_relu": 4}


class FormatError(ValueError):
    """Arrays that do not describe a valid sparse matrix."""


class Interleaved(NamedTuple):
    """An unstructured matrix laid out for products with one column (SELL-8-sigma).

    Rows are sorted by their number of non-zeros within windows of ``sigma`` rows and taken 8 at a
    time: group ``g`` owns slots ``ptr[g]:ptr[g + 1]``; slot ``s`` holds the ``s``-th non-zero of each of
    the group's 8 rows in ``values[s]`` and ``index[s]`` (value 0, index 0 past a row's end); lane ``l``
    computes row ``order[8 * g + l]``. One vector multiply then serves 8 rows, with no per-row tail.
    """

    sigma: int
    ptr: np.ndarray  # int32 (rows / 8 + 1,)
    order: np.ndarray  # int32 (rows,)
    index: np.ndarray  # uint16 (slots, 8)
    values: np.ndarray  # float32 (slots, 8)


@dataclass(frozen=True)
class SparseMatrix:
    """A ``shape`` matrix stored as ``block``-shaped dense blocks in block-CSR order.

    ``rowptr`` (int32, ``shape[0] / r + 1``), ``index`` (uint16 or int32 block-column numbers) and
    ``values`` (float32, ``(nblocks, r, c)``) are checked by :meth:`validate`; use :meth:`from_dense`
    to build one from a (masked) dense array.
    """

    shape: tuple[int, int]
    block: tuple[int, int]
    rowptr: np.ndarray
    index: np.ndarray
    values: np.ndarray

    @classmethod
    def from_dense(cls, dense: np.ndarray, block: tuple[int, int] = (1, 1),
                   index_dtype: np.dtype | None = None) -> SparseMatrix:
        """Keep every block with a non-zero; indices are uint16 when the block columns fit."""
        dense = np.asarray(dense, dtype=np.float32)
        rows, cols = dense.shape
        r, c = block
        if rows % r or cols % c:
            raise FormatError(f"block {r}x{c} does not tile a {rows}x{cols} matrix")
        tiles = dense.reshape(rows // r, r, cols // c, c).transpose(0, 2, 1, 3)  # (R, C, r, c)
        present = np.any(tiles != 0, axis=(2, 3))
        block_rows, block_cols = np.nonzero(present)
        counts = np.bincount(block_rows, minlength=rows // r)
        rowptr = np.zeros(rows // r + 1, dtype=np.int32)
        np.cumsum(counts, out=rowptr[1:])
        if index_dtype is None:
            index_dtype = np.uint16 if cols // c <= 65536 else np.int32
        return cls((rows, cols), (r, c), rowptr, block_cols.astype(index_dtype),
                   np.ascontiguousarray(tiles[block_rows, block_cols]))

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise :class:`FormatError` unless the arrays describe a ``shape`` matrix exactly."""
        rows, cols = self.shape
        r, c = self.block
        if r < 1 or c < 1 or r > 64 or c > 64 or rows % r or cols % c:
            raise FormatError(f"block {r}x{c} does not tile a {rows}x{cols} matrix (at most 64x64)")
        if self.rowptr.dtype != np.int32 or self.rowptr.shape != (rows // r + 1,):
            raise FormatError(f"rowptr must be int32 of length {rows // r + 1}, "
                              f"got {self.rowptr.dtype} {self.rowptr.shape}")
        nblocks = int(self.rowptr[-1])
        if self.rowptr[0] != 0 or np.any(np.diff(self.rowptr) < 0):
            raise FormatError("rowptr must start at 0 and never decrease")
        if self.index.dtype not in (np.uint16, np.int32) or self.index.shape != (nblocks,):
            raise FormatError(f"index must be uint16 or int32 of length {nblocks}, "
                              f"got {self.index.dtype} {self.index.shape}")
        if nblocks and (int(self.index.min()) < 0 or int(self.index.max()) >= cols // c):
            raise FormatError(f"column index out of range [0, {cols // c})")
        if self.values.dtype != np.float32 or self.values.shape != (nblocks, r, c):
            raise FormatError(f"values must be float32 of shape {(nblocks, r, c)}, "
                              f"got {self.values.dtype} {self.values.shape}")
        for array in (self.rowptr, self.index, self.values):
            if not array.flags.c_contiguous:
                raise FormatError("arrays must be C-contiguous")

    @property
    def nnz(self) -> int:
        """Stored values (non-zeros plus the zeros inside kept blocks)."""
        return self.values.size

    @property
    def nbytes(self) -> int:
        return self.rowptr.nbytes + self.index.nbytes + self.values.nbytes

    @cached_property
    def interleaved(self) -> Interleaved | None:
        """The one-column layout of an unstructured uint16 matrix, built on first use (about the size of
        the CSR arrays again); None for blocks, int32 indices, or shapes with no window (see below).

        The window is the largest multiple of 8 up to 64 that divides both dimensions, so that the
        gates of a recurrent matrix (``gates * H`` rows) and the threads' shares fall on whole windows.
        """
        rows, cols = self.shape
        windows = [w for w in range(64, 7, -8) if math.gcd(rows, cols) % w == 0]
        if self.block != (1, 1) or self.index.dtype != np.uint16 or not windows:
            return None
        sigma = windows[0]
        lengths = np.diff(self.rowptr)
        order = np.lexsort((-lengths, np.arange(rows) // sigma)).astype(np.int32)
        ptr = np.zeros(rows // 8 + 1, dtype=np.int32)
        np.cumsum(lengths[order].reshape(-1, 8).max(axis=1), out=ptr[1:])
        position = np.empty(rows, dtype=np.int64)
        position[order] = np.arange(rows)
        row = np.repeat(np.arange(rows), lengths)
        slot = ptr[position[row] // 8] + np.arange(row.size) - self.rowptr[row]
        index = np.zeros((int(ptr[-1]), 8), dtype=np.uint16)
        values = np.zeros((int(ptr[-1]), 8), dtype=np.float32)
        index[slot, position[row] % 8] = self.index
        values[slot, position[row] % 8] = self.values.reshape(-1)
        return Interleaved(sigma, ptr, order, index, values)

    def to_dense(self) -> np.ndarray:
        rows, cols = self.shape
        r, c = self.block
        tiles = np.zeros((rows // r, cols // c, r, c), dtype=np.float32)
        block_rows = np.repeat(np.arange(rows // r), np.diff(self.rowptr))
        tiles[block_rows, self.index.astype(np.int64)] = self.values
        return tiles.transpose(0, 2, 1, 3).reshape(rows, cols)


#: Block shapes with a vectorized kernel (``_kernels.c``: ``shape_table``); (1, 1) is plain CSR.
KERNEL_BLOCKS = ((1, 1), (4, 1), (8, 1), (16, 1), (1, 4), (1, 8), (1, 16), (4, 4), (8, 8))


def smallest_layout(dense: np.ndarray, rows_unit: int | None = None) -> SparseMatrix | None:
    """``dense`` in the kernel layout that takes the fewest bytes: CSR or one of :data:`KERNEL_BLOCKS`
    (a block-pruned matrix comes out in its blocks), or None when plain float32 is smallest.

    Blocks must tile the matrix and their rows must divide ``rows_unit`` (the hidden size for the
    gate-stacked weights of a recurrent layer: a block never straddles two gates).
    """
    dense = np.asarray(dense, dtype=np.float32)
    rows, cols = dense.shape
    unit = rows if rows_unit is None else rows_unit
    best, best_bytes = None, dense.nbytes
    for r, c in KERNEL_BLOCKS:
        if rows % r or cols % c or unit % r:
            continue
        present = np.count_nonzero(np.any(dense.reshape(rows // r, r, cols // c, c) != 0, axis=(1, 3)))
        index_bytes = 2 if cols // c <= 65536 else 4
        nbytes = present * (r * c * 4 + index_bytes) + (rows // r + 1) * 4
        if nbytes < best_bytes:
            best, best_bytes = (r, c), nbytes
    return None if best is None else SparseMatrix.from_dense(dense, best)


@cache
def _compiled():
    try:
        _kernels = importlib.import_module("sparsernn.kernels._kernels")
    except ImportError as error:
        warnings.warn(f"sparsernn's compiled kernels are not available ({error}); using the numpy/scipy "
                      "reference, which is much slower. Reinstall with a C compiler: pip install -e .",
                      RuntimeWarning, stacklevel=3)
        return None
    return _kernels


def backend(name: str = "auto") -> str:
    """The backend to use: ``"c"`` if compiled (or asked for and available), else ``"reference"``."""
    if name not in ("auto", "c", "reference"):
        raise ValueError(f"unknown backend {name!r}; valid: auto, c, reference")
    if name == "reference":
        return name
    if _compiled() is None:
        if name == "c":
            raise RuntimeError("the compiled kernels are not available; reinstall with a C compiler")
        return "reference"
    return "c"


def _args(matrix: SparseMatrix, columns: int) -> tuple:
    """The matrix's arguments to a compiled call with ``columns`` columns (one column, where the kernels
    were built with AVX2: the interleaved copy too)."""
    interleaved = matrix.interleaved if columns == 1 and _compiled().avx2 else None
    return (*matrix.shape, *matrix.block, int(matrix.index.dtype == np.int32),
            matrix.rowptr, matrix.index, matrix.values,
            *(interleaved or (0, b"", b"", b"", b"")))


def _float32(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.dtype != np.float32 or array.shape != shape or not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous float32 of shape {shape}, "
                         f"got {array.dtype} {array.shape}")
    return array


def spmm(matrix: SparseMatrix, x: np.ndarray, bias: np.ndarray | None = None, *, threads: int = 1,
         backend_name: str = "auto", out: np.ndarray | None = None) -> np.ndarray:
    """``matrix @ x + bias[:, None]`` for ``x`` of shape ``(cols, N)``; returns ``(rows, N)``."""
    rows, cols = matrix.shape
    n = x.shape[1] if x.ndim == 2 else -1
    _float32("x", x, (cols, n))
    if bias is not None:
        _float32("bias", bias, (rows,))
    if backend(backend_name) == "reference":
        return reference.spmm(matrix, x, bias)
    out = np.empty((rows, n), dtype=np.float32) if out is None else _float32("out", out, (rows, n))
    _compiled().spmm(*_args(matrix, n), x, out, b"" if bias is None else bias, n, threads)
    return out


def recurrent(cell: str, weight_hh: SparseMatrix, bias_hh: np.ndarray, xproj: np.ndarray,
              h: np.ndarray, c: np.ndarray | None = None, *, reverse: bool = False, threads: int = 1,
              backend_name: str = "auto") -> np.ndarray:
    """Run one recurrent layer (one direction) over ``xproj`` (T, gates*H, B), in place on ``h``/``c``.

    ``xproj`` holds ``W_ih x_t + b_ih`` for every step; ``h`` and, for LSTM, ``c`` are ``(H, B)``
    states, updated to the final step's. Returns the outputs ``(T, H, B)`` in time order (also
    with ``reverse``, which walks the steps from last to first as a backward direction does).
    """
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")
    gates = CELLS[cell]
    hidden = weight_hh.shape[1]
    if weight_hh.shape[0] != gates * hidden:
        raise ValueError(f"{cell} weight_hh must be ({gates * hidden}, {hidden}), got {weight_hh.shape}")
    if hidden % weight_hh.block[0]:
        raise ValueError(f"block {weight_hh.block} rows must divide the hidden size {hidden}")
    steps, batch = xproj.shape[0], xproj.shape[-1]
    _float32("xproj", xproj, (steps, gates * hidden, batch))
    _float32("bias_hh", bias_hh, (gates * hidden,))
    _float32("h", h, (hidden, batch))
    if cell == "lstm":
        _float32("c", c, (hidden, batch))
    if backend(backend_name) == "reference":
        return reference.recurrent(cell, weight_hh, bias_hh, xproj, h, c, reverse=reverse)
    out = np.empty((steps, hidden, batch), dtype=np.float32)
    _compiled().recurrent(_CELL_CODES[cell], *_args(weight_hh, batch), bias_hh, xproj, out, h,
                          c if c is not None else np.empty(0, np.float32), steps, batch, int(reverse),
                          max(1, threads))
    return out
