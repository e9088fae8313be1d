"""Sparse matrix products and whole-sequence recurrent layers: compiled kernels and a reference.

A :class:`SparseMatrix` holds a matrix in blocks of ``r x c`` (CSR is 1x1 blocks). Two backends
compute the same things with the same contract:

- ``"reference"``: scipy.sparse products and numpy cell equations, step by step (slow, obviously right);
- ``"c"``: the C extension ``sparsernn.kernels._kernels`` (built by ``pip install``): vectorized
  block kernels, fused gates, OpenMP threads, the whole sequence in one call; a :class:`Program` runs a
  streaming model's token (products and one-step layers over fixed buffers) in one call.

:func:`backend` picks ``"c"`` when the extension imports, else warns once and falls back.
Activations are feature-major: ``x`` is ``(features, N)``; ``xproj`` is ``(T, gates * H, B)``.
"""

from __future__ import annotations

import dataclasses
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
#: Matrices of at most this many columns get slices of 32 columns in their sliced one-column copy, wider
#: ones 64 (the C core's ``SLICE_NARROW_COLUMNS``; benchmarks/probes/slice_width_probe.py).
NARROW_COLUMNS = 256


def most_window(rows_unit: int) -> int:
    """The largest window of rows a one-column copy sorts its rows in (the C core's ``sr_most_window``):
    an eighth of ``rows_unit`` (a thread's share of the rows stays whole windows for up to 8 threads),
    but at least 64 and at most 512, a multiple of 8. Larger windows group rows of more alike lengths, so
    fewer padding slots."""
    return min(512, max(64, rows_unit // 8)) // 8 * 8


def slice_width(cols: int) -> int:
    """Columns in a slice of the sliced one-column copy of a matrix with ``cols`` columns: 32 (one lookup
    of x a slot) up to :data:`NARROW_COLUMNS`, 64 (two lookups and a blend, but fewer padding slots) above."""
    return 32 if cols <= NARROW_COLUMNS else 64


class FormatError(ValueError):
    """Arrays that do not describe a valid sparse matrix."""


class OneColumn(NamedTuple):
    """An unstructured matrix laid out again for products with one column, in one of two layouts.

    ``lanes == 8``, interleaved (SELL-8-sigma, the AVX2 kernel):

    Rows are sorted by their number of non-zeros within windows of ``sigma`` rows and taken 8 at a
    time: group ``g`` owns slots ``ptr[g]:ptr[g + 1]``; slot ``s`` holds the ``s``-th non-zero of each of
    the group's 8 rows in ``values[s]`` and ``index[s]`` (value 0, index 0 past a row's end); lane ``l``
    computes row ``order[8 * g + l]``. One vector multiply then serves 8 rows, with no per-row tail.

    ``lanes == 16``, sliced (the AVX-512 kernel): columns in slices of :func:`slice_width` (32 or 64), each
    window of ``sigma`` rows sorted by its rows' non-zeros in each slice (most first, slice by slice) and
    taken in ``ceil(sigma / 16)`` groups of 16
    (``order[16 * g + l]`` is lane ``l``'s row, -1 past the window). Segment ``(g, j)``, slots
    ``ptr[g * slices + j]`` to ``ptr[g * slices + j + 1]``, holds group ``g``'s non-zeros in slice
    ``j``: slot ``k`` of it the ``k``-th of each lane's row, ``index`` being the column within the slice
    (uint8). The kernel keeps a slice of x in two or four registers and looks 16 values up in them at once:
    no x is loaded per non-zero.

    ``values`` are float32, or for a :attr:`SparseMatrix.bf16` matrix the bfloat16 bits (uint16), which
    the kernels widen in registers: half the value bytes read per product. (A bf16 matrix of 8x1 or 16x1
    blocks has no such copy; its one-column kernels read its block values in bfloat16.)
    """

    lanes: int
    sigma: int
    ptr: np.ndarray  # int32 (groups + 1,) for 8 lanes, (groups * slices + 1,) for 16
    order: np.ndarray  # int32 (groups * lanes,)
    index: np.ndarray  # uint16 (slots, 8) or uint8 (slots, 16)
    values: np.ndarray  # float32 or bfloat16 bits (uint16), (slots, lanes)


@dataclass(frozen=True)
class SparseMatrix:
    """A ``shape`` matrix stored as ``block``-shaped dense blocks in block-CSR order.

    ``rowptr`` (int32, ``shape[0] / r + 1``), ``index`` (uint16 or int32 block-column numbers) and
    ``values`` (float32, ``(nblocks, r, c)``) are checked by :meth:`validate`; use :meth:`from_dense`
    to build one from a (masked) dense array. ``bf16``: the values are bfloat16 numbers (see
    :meth:`to_bf16`), and the one-column copies keep them in 16 bits. ``scales`` (float32, one per row;
    see :meth:`to_int8`): every value is an integer in [-127, 127] times its row's scale, and products
    run in int8 (:attr:`runs_int8`), each column of x quantized as :func:`reference.quantize` does, the
    sums in int32. ``rows_unit``: rows that are
    computed as one piece (a recurrent matrix's gates: the hidden size; a linear layer's: all its
    rows), which the one-column copies' windows divide; default the gcd of rows and columns, which
    suits a gate-stacked recurrent matrix.
    """

    shape: tuple[int, int]
    block: tuple[int, int]
    rowptr: np.ndarray
    index: np.ndarray
    values: np.ndarray
    bf16: bool = False
    rows_unit: int | None = None
    scales: np.ndarray | None = None

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

    @classmethod
    def from_int8(cls, shape: tuple[int, int], block: tuple[int, int], rowptr: np.ndarray, index: np.ndarray,
                  q: np.ndarray, scales: np.ndarray) -> SparseMatrix:
        """The matrix of int8 values ``q`` ``(nblocks, r, c)`` times a float32 scale per row, as a file
        stores it (checked as :meth:`validate` checks any matrix)."""
        if q.dtype != np.int8:
            raise FormatError(f"int8 values must be int8, got {q.dtype}")
        # the arrays checked first (with values that are surely int8 numbers), then the values set
        matrix = cls(shape, block, rowptr, index, np.zeros(q.shape, np.float32), scales=scales)
        return dataclasses.replace(matrix, values=q * _per_value(scales, rowptr, q.shape))

    def __post_init__(self):
        self.validate()
        if self.values.ctypes.data % 64:  # a block's vector loads then never span two cache lines
            object.__setattr__(self, "values", _cache_aligned(self.values))

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
        if self.rows_unit is not None and (self.rows_unit < 1 or rows % self.rows_unit):
            raise FormatError(f"rows_unit {self.rows_unit} does not divide the {rows} rows")
        if self.bf16 and np.any(self.values.view(np.uint32) & 0xFFFF):
            raise FormatError("bf16 is set but the values are not all bfloat16 numbers (see to_bf16)")
        if self.scales is not None:
            if self.bf16 or self.scales.dtype != np.float32 or self.scales.shape != (rows,):
                raise FormatError(f"scales must be float32 of length {rows} (and bf16 unset)")
            if not (np.all(np.isfinite(self.scales)) and np.all(self.scales >= 0)):
                raise FormatError("scales must be finite and not negative")
            q = self._quantized()
            per_value = _per_value(self.scales, self.rowptr, self.values.shape)
            if np.any(np.abs(q) > 127) or np.any((q * per_value).astype(np.float32) != self.values):
                raise FormatError("scales are set but the values are not integers in [-127, 127] times "
                                  "their row's scale (see to_int8)")

    def to_bf16(self) -> SparseMatrix:
        """The matrix with its values rounded to bfloat16 (to nearest, ties to even) and ``bf16`` set."""
        return dataclasses.replace(self, values=bf16_values(bf16_bits(self.values)), bf16=True)

    def to_int8(self) -> SparseMatrix:
        """The matrix with its values rounded to int8 times a scale per row (the largest magnitude of the
        row over 127, so that it maps to 127): ``scales`` set."""
        r = self.block[0]
        block_rows = np.repeat(np.arange(self.shape[0] // r), np.diff(self.rowptr))
        largest = np.zeros(self.shape[0], dtype=np.float32)
        np.maximum.at(largest.reshape(-1, r), block_rows, np.abs(self.values).max(axis=2, initial=0))
        scales = (largest / np.float32(127)).astype(np.float32)
        per_value = _per_value(scales, self.rowptr, self.values.shape)
        q = np.clip(_divided(self.values, per_value), -127, 127)
        return dataclasses.replace(self, bf16=False, scales=scales, values=(q * per_value).astype(np.float32))

    def _quantized(self) -> np.ndarray:
        """The values over their row scales, rounded (int32; 0 in rows whose scale is 0)."""
        return _divided(self.values, _per_value(self.scales, self.rowptr, self.values.shape))

    @property
    def runs_int8(self) -> bool:
        """Whether products run in int8 (int8 values, plain CSR with uint16 indices): every column of x
        is quantized on its own, so a batch computes what each of its columns alone does; blocks of int8
        values multiply their values in float32."""
        return self.scales is not None and self.block == (1, 1) and self.index.dtype == np.uint16

    @cached_property
    def int8(self) -> np.ndarray | None:
        """The int8 values in storage order (``values`` over the row scales), or None without ``scales``."""
        return None if self.scales is None else self._quantized().astype(np.int8).reshape(-1)

    @property
    def nnz(self) -> int:
        """Stored values (non-zeros plus the zeros inside kept blocks)."""
        return self.values.size

    @property
    def nbytes(self) -> int:
        """Bytes as stored (a file's bf16 values in 16 bits each, int8 values in 8 and their scales)."""
        if self.scales is not None:
            return self.rowptr.nbytes + self.index.nbytes + self.values.size + self.scales.nbytes
        return self.rowptr.nbytes + self.index.nbytes + self.values.nbytes // (2 if self.bf16 else 1)

    def _window(self, lanes: int) -> int | None:
        """The rows a thread's share and a gate of a recurrent matrix fall on whole multiples of, and
        within which the one-column copies sort rows: a multiple of 8 dividing ``rows_unit``, at most
        :func:`most_window` of it; for ``lanes``-row groups, the one that wastes the fewest lanes, then the
        largest."""
        unit = self.rows_unit or math.gcd(*self.shape)
        windows = [w for w in range(most_window(unit), 7, -8) if unit % w == 0]
        if self.block != (1, 1) or self.index.dtype != np.uint16 or not windows:
            return None
        return min(windows, key=lambda w: (-(-w // lanes) * lanes / w, -w))

    @cached_property
    def interleaved(self) -> OneColumn | None:
        """The 8-lane one-column layout (see :class:`OneColumn`), built on first use (about the size of
        the CSR arrays again); None for blocks, int32 indices, or shapes with no window."""
        sigma = self._window(8)
        if sigma is None:
            return None
        rows = self.shape[0]
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
        return OneColumn(8, sigma, ptr, order, index, self._stored(values))

    @cached_property
    def sliced(self) -> OneColumn | None:
        """The 16-lane one-column layout (see :class:`OneColumn`), built on first use; None where
        :attr:`interleaved` is."""
        return self.sliced_copy(slice_width(self.shape[1]))

    def sliced_copy(self, width: int) -> OneColumn | None:
        """The 16-lane layout with slices of ``width`` columns (the kernels read :func:`slice_width`'s; other
        widths are for benchmarks/probes/slice_width_probe.py)."""
        sigma = self._window(16)
        if sigma is None:
            return None
        rows, cols = self.shape
        per_window, slices = -(-sigma // 16), -(-cols // width)
        groups = rows // sigma * per_window
        # rows sorted within their window by their non-zeros in each slice, most first, slice by slice
        # (lexicographically), so that rows of alike counts share groups: less padding
        row = np.repeat(np.arange(rows), np.diff(self.rowptr))
        column = self.index.astype(np.int64)
        counts = np.bincount(row * slices + column // width, minlength=rows * slices).reshape(rows, slices)
        position = np.empty(rows, dtype=np.int64)
        keys = [-counts[:, j] for j in reversed(range(slices))]
        position[np.lexsort((np.arange(rows), *keys, np.arange(rows) // sigma))] = np.arange(rows)
        within = position % sigma
        group = position // sigma * per_window + within // 16
        lane = within % 16
        order = np.full(groups * 16, -1, dtype=np.int32)
        order[group * 16 + lane] = np.arange(rows)
        # the k-th non-zero of its row in its slice: rank within the (row, slice) runs
        key = row * slices + column // width
        by_key = np.argsort(key, kind="stable")
        starts = np.searchsorted(key[by_key], key[by_key], side="left")
        rank = np.empty(row.size, dtype=np.int64)
        rank[by_key] = np.arange(row.size) - starts
        segment = group[row] * slices + column // width
        length = np.zeros(groups * slices, dtype=np.int64)
        np.maximum.at(length, segment, rank + 1)
        ptr = np.zeros(groups * slices + 1, dtype=np.int32)
        np.cumsum(length, out=ptr[1:])
        slot = ptr[segment] + rank
        index = np.zeros((int(ptr[-1]), 16), dtype=np.uint8)
        values = np.zeros((int(ptr[-1]), 16), dtype=np.float32)
        index[slot, lane[row]] = column % width
        values[slot, lane[row]] = self.values.reshape(-1)
        return OneColumn(16, sigma, ptr, order, index, self._stored(values))

    def _stored(self, values: np.ndarray) -> np.ndarray:
        """One-column copy values as the kernels read them: bfloat16 bits for a bf16 matrix, starting on
        a cache line."""
        return _cache_aligned(bf16_bits(values) if self.bf16 else values)

    @cached_property
    def compiled(self) -> dict[tuple[str, bool], object]:
        """The compiled matrix by instruction set and one column or not, filled by the calls
        (:func:`_compiled_matrix`)."""
        return {}

    def to_dense(self) -> np.ndarray:
        rows, cols = self.shape
        r, c = self.block
        tiles = np.zeros((rows // r, cols // c, r, c), dtype=np.float32)
        block_rows = np.repeat(np.arange(rows // r), np.diff(self.rowptr))
        tiles[block_rows, self.index.astype(np.int64)] = self.values
        return tiles.transpose(0, 2, 1, 3).reshape(rows, cols)


def _per_value(scales: np.ndarray, rowptr: np.ndarray, shape: tuple) -> np.ndarray:
    """Each stored value's row scale, shaped as the values ``(nblocks, r, c)``."""
    block_rows = np.repeat(np.arange(len(rowptr) - 1), np.diff(rowptr))
    return np.broadcast_to(scales.reshape(-1, shape[1])[block_rows][:, :, None], shape)


def _divided(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``values / scales`` rounded to integers (int32), 0 where the scale is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scales > 0, np.rint(values / scales), 0).astype(np.int32)


def _cache_aligned(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` whose data starts on a 64-byte boundary, so that no vector load of a slot or a
    block spans two cache lines. numpy aligns to 16 bytes; 16 bytes off, the 1760-square products at
    90% took about 10% longer (`python benchmarks/probes/aligned_values.py`: unstructured AVX-512 38.5 against
    34.9 us, 8x1 blocks 17.5 against 15.8 us; bf16 values within 2%)."""
    buffer = np.empty(array.nbytes + 64, dtype=np.uint8)
    start = -buffer.ctypes.data % 64
    aligned = buffer[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    aligned[...] = array
    return aligned


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as its 16 bits (uint16): numpy
    has no bfloat16 type."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """bfloat16 numbers given as their 16 bits (uint16), as float32 (exactly)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


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
        index_bytes = 1 if cols // c <= 256 else 2 if cols // c <= 65536 else 4  # as a file stores them
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


#: The instruction sets of the compiled kernels, narrowest first.
ISA_LEVELS = ("portable", "avx2", "avx512")
_isa_limit: str | None = None


def isa_levels() -> tuple[str, ...]:
    """The instruction sets the compiled kernels can use here, narrowest first: ``"avx2"`` where they
    were built with it (``-march=native`` on an AVX2 machine), then ``"avx512"`` where the CPU also runs
    AVX-512F (found at run time); ``("portable",)`` without AVX2 or without the extension."""
    compiled = _compiled()
    if compiled is None or not compiled.avx2:
        return ("portable",)
    return ("avx2", "avx512") if compiled.avx512 else ("avx2",)


def isa() -> str:
    """The instruction set the compiled kernels use now (the widest, unless :func:`set_isa` narrowed it)."""
    return _isa_limit or isa_levels()[-1]


def int8_kernel() -> str:
    """The kernel that products with an int8 matrix run now: ``"vnni"`` (AVX-512 VNNI and VBMI),
    ``"avx2"``, ``"dotprod"`` (aarch64's dot product instructions) or ``"portable"``."""
    return _compiled().int8_kernel() if _compiled() is not None else "portable"


def set_isa(level: str | None) -> None:
    """Let the compiled kernels use at most ``level`` (one of :func:`isa_levels`; None: the widest), for
    tests and benchmarks of the narrower paths. AVX-512 adds the sliced one-column layout
    (:class:`OneColumn`) and a 16-wide kernel for 16 columns; AVX2 runs the interleaved layout."""
    global _isa_limit
    if level is not None and level not in isa_levels():
        raise ValueError(f"instruction set {level!r} not available here; "
                         f"available: {', '.join(isa_levels())}")
    _isa_limit = level
    if "avx512" in isa_levels():
        _compiled().set_avx512(isa() == "avx512")


def _matrix_args(matrix: SparseMatrix, one_column: bool) -> tuple:
    """The arguments of the compiled ``matrix`` call: the arrays and, for one column, the copy in the
    layout of the instruction set in use (sliced for AVX-512, interleaved for AVX2); for a matrix that
    runs in int8, its int8 values, scales and row unit instead (the C side builds that copy)."""
    level = isa() if one_column and matrix.scales is None else "portable"  # int8: C makes its own copy
    copy = matrix.sliced if level == "avx512" else matrix.interleaved if level == "avx2" else None
    lanes, sigma, ptr, order, index, values = copy or (0, 0, b"", b"", b"", b"")
    if matrix.bf16 and copy is None and level != "portable" and matrix.block in ((8, 1), (16, 1)):
        values = bf16_bits(matrix.values)  # read by the one-column kernels of these blocks
    int8 = matrix.runs_int8
    return (*matrix.shape, *matrix.block, int(matrix.index.dtype == np.int32), matrix.rowptr, matrix.index,
            matrix.values, lanes, sigma, int(matrix.bf16 and len(values) > 0), ptr, order, index, values,
            matrix.int8 if int8 else b"", matrix.scales if int8 else b"",
            matrix.rows_unit or math.gcd(*matrix.shape))


def _compiled_matrix(matrix: SparseMatrix, columns: int):
    """The matrix compiled for products with ``columns`` columns (layout and kernels chosen for the
    instruction set in use), kept on the matrix: a streaming model makes several calls per token."""
    key = (isa(), columns == 1)
    if key not in matrix.compiled:
        matrix.compiled[key] = _compiled().matrix(*_matrix_args(matrix, columns == 1))
    return matrix.compiled[key]


def _float32(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.dtype != np.float32 or array.shape != shape or not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous float32 of shape {shape}, "
                         f"got {array.dtype} {array.shape}")
    return array


def _check_product(matrix: SparseMatrix, x: np.ndarray, bias: np.ndarray | None) -> int:
    """The columns of ``x`` after checking it and ``bias`` against ``matrix``."""
    n = x.shape[1] if x.ndim == 2 else -1
    _float32("x", x, (matrix.shape[1], n))
    if bias is not None:
        _float32("bias", bias, (matrix.shape[0],))
    return n


def _check_recurrent(cell: str, weight_hh: SparseMatrix, bias_hh: np.ndarray, xproj: np.ndarray,
                     h: np.ndarray, c: np.ndarray | None) -> None:
    """A recurrent layer's arrays: ``xproj`` (T, gates*H, B), ``h`` and for LSTM ``c`` (H, B)."""
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


def spmm(matrix: SparseMatrix, x: np.ndarray, bias: np.ndarray | None = None, *, threads: int = 1,
         backend_name: str = "auto", out: np.ndarray | None = None) -> np.ndarray:
    """``matrix @ x + bias[:, None]`` for ``x`` of shape ``(cols, N)``; returns ``(rows, N)``."""
    rows = matrix.shape[0]
    n = _check_product(matrix, x, bias)
    if backend(backend_name) == "reference":
        return reference.spmm(matrix, x, bias)
    out = np.empty((rows, n), dtype=np.float32) if out is None else _float32("out", out, (rows, n))
    _compiled().spmm(_compiled_matrix(matrix, n), x, out, b"" if bias is None else bias, n, threads)
    return out


def contiguous(view: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``view`` copied into a C-contiguous array (``out`` where given, of its shape). A float32 view that
    transposes a contiguous buffer (its axes of size above 1 fall into two groups, each row-major in
    the buffer, the second group's elements further apart) is copied by the C core's transpose in tiles
    (``sr_transpose``; benchmarks/probes/transpose_probe.c times it against a plain double loop);
    any other view by numpy."""
    out = np.empty(view.shape, np.float32) if out is None else out
    split = _transposition(view) if view.dtype == np.float32 and backend() == "c" else None
    if split is None:
        out[...] = view
        return out
    rows, columns = split  # the buffer (rows, columns) of which the view is the transpose
    source = np.lib.stride_tricks.as_strided(view, (rows, columns), (4 * columns, 4))
    _compiled().transpose(source, out, rows, columns)
    return out


def _transposition(view: np.ndarray) -> tuple[int, int] | None:
    """``(rows, columns)`` where ``view`` is a contiguous buffer of that shape transposed (its axes
    regrouped), else None."""
    axes = [(n, s) for n, s in zip(view.shape, view.strides, strict=True) if n > 1]

    def row_major(group, inner: int) -> bool:
        for n, s in reversed(group):
            if s != inner:
                return False
            inner *= n
        return True

    for k in range(1, len(axes)):
        first, second = axes[:k], axes[k:]
        columns = math.prod(n for n, _ in first)
        if row_major(first, 4) and row_major(second, 4 * columns):
            return math.prod(n for n, _ in second), columns
    return None


def recurrent(cell: str, weight_hh: SparseMatrix, bias_hh: np.ndarray, xproj: np.ndarray,
              h: np.ndarray, c: np.ndarray | None = None, *, reverse: bool = False, threads: int = 1,
              backend_name: str = "auto") -> np.ndarray:
    """Run one recurrent layer (one direction) over ``xproj`` (T, gates*H, B), in place on ``h``/``c``.

    ``xproj`` holds ``W_ih x_t + b_ih`` for every step; ``h`` and, for LSTM, ``c`` are ``(H, B)``
    states, updated to the final step's. Returns the outputs ``(T, H, B)`` in time order (also
    with ``reverse``, which walks the steps from last to first as a backward direction does).
    """
    _check_recurrent(cell, weight_hh, bias_hh, xproj, h, c)
    steps, hidden, batch = xproj.shape[0], weight_hh.shape[1], xproj.shape[-1]
    if backend(backend_name) == "reference":
        return reference.recurrent(cell, weight_hh, bias_hh, xproj, h, c, reverse=reverse)
    out = np.empty((steps, hidden, batch), dtype=np.float32)
    _compiled().recurrent(_CELL_CODES[cell], _compiled_matrix(weight_hh, batch), bias_hh, xproj, out, h,
                          c if c is not None else np.empty(0, np.float32), steps, batch, int(reverse),
                          max(1, threads))
    return out


#: The elementwise functions of a :class:`Program` and their codes in the compiled program.
UNARY = {"tanh": 0, "relu": 1, "sigmoid": 2}
BINARY = {"add": 0, "mul": 1, "sub": 2, "div": 3}


class Program:
    """Operations over fixed buffers, run in order by one compiled call: a streaming model's whole step
    (embedding, every layer, norms, the output layer, softmax) or a translation decoder's step, with no
    Python in between.

    ``operations`` (float32 C-contiguous buffers, feature-major: ``(features, n)`` for ``n`` columns):

    - ``("product", matrix, x, y, bias)``: ``y = matrix @ x + bias`` (bias may be None), x ``(cols, n)``;
    - ``("step", cell, weight_hh, bias_hh, xproj, out, h, c)``: one step of :func:`recurrent` with the
      input projection ``xproj`` ``(gates * H, n)``; the new state in ``h`` (and ``c``) and in ``out``;
    - ``("cell", cell, xproj, gates, h, c, out)``: the cell's equations alone, on ``gates = W_hh h + b_hh``
      computed by an earlier product (an LSTM with a projection, whose ``h`` is not the cell's output):
      ``c`` updated in place, the output ``(H, n)`` in ``out``; ``h`` is read by a GRU only;
    - ``("attention", query, keys, memory, lengths, score, context)``: per column ``b`` the first
      ``lengths[b]`` (int32) rows of ``keys[b]`` and ``memory[b]`` (``(n, S, H)`` each) scored against
      ``query[:, b]`` (``(H, n)``), additively (``score . tanh(k + q)``, ``score`` ``(H,)``) or with
      ``score`` None as ``k . q``; softmax; ``context`` ``(H, n)`` the weighted sum of memory rows
      (:func:`reference.attention`);
    - ``("tanh" | "relu" | "sigmoid", x, y)``: ``y = f(x)``, both of one shape;
    - ``("gather", table, ids, y)``: column ``b`` of ``y`` ``(width, n)`` is row ``ids[b]`` (int32
      ``(n,)``) of ``table`` ``(rows, width)`` (an embedding lookup; an id outside the table raises
      IndexError when the program runs);
    - ``("layer_norm", x, y, weight, bias, size, eps)``: PyTorch's LayerNorm over each group of ``size``
      consecutive features, per column (weight and bias ``(size,)`` or None);
    - ``("softmax" | "log_softmax", x, y, size)``: over each group of ``size`` consecutive features;
    - ``("add" | "mul" | "sub" | "div", a, b, y)``: ``y = a op b`` with ``b`` of ``a``'s shape, one number
      (shape ``(1,)``) or a ``(features,)`` vector broadcast over the ``n`` columns;
    - ``("copy", x, y, outer, length, x_stride, x_offset, y_stride, y_offset)``: for each ``p`` below
      ``outer``, features ``p * y_stride + y_offset`` onward (``length`` of them) of ``y`` from features
      ``p * x_stride + x_offset`` onward of ``x``: a concatenation's part or a slice.

    Later operations may read what earlier ones wrote. The buffers are held, not copied: write the
    inputs into them, call the program, read the outputs. With the reference backend the same
    operations run one by one in numpy.
    """

    def __init__(self, operations: list[tuple], *, threads: int = 1, backend_name: str = "auto"):
        self.operations, self.backend = operations, backend(backend_name)
        compiled = [self._checked(operation) for operation in operations]
        self._program = _compiled().program(compiled, max(1, threads)) if self.backend == "c" else None

    def _checked(self, operation: tuple) -> tuple | None:
        """The operation's arguments to the compiled program (None with the reference backend), after
        checking its buffers (products and steps as :func:`spmm` and :func:`recurrent` do)."""
        kind, compiled = operation[0], self.backend == "c"
        if kind == "product":
            _, matrix, x, y, bias = operation
            n = _check_product(matrix, x, bias)
            _float32("y", y, (matrix.shape[0], n))
            return (0, _compiled_matrix(matrix, n), x, y, b"" if bias is None else bias, n
                    ) if compiled else None
        if kind == "step":
            _, cell, weight_hh, bias_hh, xproj, out, h, c = operation
            _check_recurrent(cell, weight_hh, bias_hh, xproj[None], h, c)
            _float32("out", out, h.shape)
            n = h.shape[1]
            return (1, _compiled_matrix(weight_hh, n), _CELL_CODES[cell], bias_hh, xproj, out, h,
                    np.empty(0, np.float32) if c is None else c, n) if compiled else None
        if kind == "cell":
            _, cell, xproj, gates, h, c, out = operation
            if cell not in CELLS:
                raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")
            hidden, n = _float32("out", out, out.shape).shape
            for name, array, shape in (("xproj", xproj, (CELLS[cell] * hidden, n)),
                                       ("gates", gates, (CELLS[cell] * hidden, n)), ("h", h, (hidden, n))):
                _float32(name, array, shape)
            if cell == "lstm":
                _float32("c", c, (hidden, n))
            return (9, _CELL_CODES[cell], xproj, gates, h, np.empty(0, np.float32) if c is None else c, out,
                    hidden, n) if compiled else None
        if kind == "attention":
            _, query, keys, memory, lengths, score, context = operation
            if keys.ndim != 3:
                raise ValueError(f"keys must be (n, S, H), got shape {keys.shape}")
            n, steps, hidden = keys.shape
            for name, array, shape in (("query", query, (hidden, n)), ("keys", keys, keys.shape),
                                       ("memory", memory, keys.shape), ("context", context, (hidden, n))):
                _float32(name, array, shape)
            if score is not None:
                _float32("score", score, (hidden,))
            _int32("lengths", lengths, (n,))
            if np.any(lengths < 1) or np.any(lengths > steps):
                raise ValueError(f"lengths must be in [1, {steps}]")
            return (2, query, keys, memory, lengths, b"" if score is None else score, context, hidden, steps,
                    n) if compiled else None
        if kind in UNARY:
            _, x, y = operation
            _float32("y", y, _float32("x", x, x.shape).shape)
            return (3, x, y, x.size, UNARY[kind]) if compiled else None
        if kind == "gather":
            _, table, ids, y = operation
            rows, width = _float32("table", table, table.shape).shape if table.ndim == 2 else (0, 0)
            n = _int32("ids", ids, ids.shape).shape[0] if ids.ndim == 1 else 0
            _float32("y", y, (width, n))
            return (4, table, ids, y, rows, width, n) if compiled else None
        if kind == "layer_norm":
            _, x, y, weight, bias, size, eps = operation
            features, n = _columns("x", x)
            _float32("y", y, x.shape)
            if size < 1 or features % size:
                raise ValueError(f"layer_norm: size {size} does not divide the {features} features")
            for name, array in (("weight", weight), ("bias", bias)):
                if array is not None:
                    _float32(name, array, (size,))
            return (5, x, y, b"" if weight is None else weight, b"" if bias is None else bias,
                    features // size, size, float(eps), n) if compiled else None
        if kind in ("softmax", "log_softmax"):
            _, x, y, size = operation
            features, n = _columns("x", x)
            _float32("y", y, x.shape)
            if size < 1 or features % size:
                raise ValueError(f"{kind}: size {size} does not divide the {features} features")
            return (6, x, y, features // size, size, int(kind == "log_softmax"), n) if compiled else None
        if kind in BINARY:
            _, a, b, y = operation
            _float32("y", y, _float32("a", a, a.shape).shape)
            per_feature = a.ndim == 2 and b.shape == a.shape[:1]  # broadcast over the n columns
            inner = a.shape[1] if per_feature else 1
            if b.shape not in (a.shape, (1,)) and not per_feature:
                raise ValueError(f"{kind}: b of shape {b.shape} does not broadcast to a of shape {a.shape}")
            _float32("b", b, b.shape)
            return (7, a, b, y, BINARY[kind], a.size, b.size, inner) if compiled else None
        if kind == "copy":
            _, x, y, outer, length, x_stride, x_offset, y_stride, y_offset = operation
            (x_features, n), (y_features, _) = _columns("x", x), _columns("y", y, x.shape[1])
            if min(outer, length) < 1 or min(x_stride, x_offset, y_stride, y_offset) < 0 or \
                    (outer - 1) * x_stride + x_offset + length > x_features or \
                    (outer - 1) * y_stride + y_offset + length > y_features:
                raise ValueError(f"copy: {outer} runs of {length} features (strides {x_stride}, {y_stride}, "
                                 f"offsets {x_offset}, {y_offset}) do not fit {x_features} and {y_features}")
            return (8, x, y, outer, length, x_stride, x_offset, y_stride, y_offset, n) if compiled else None
        raise ValueError(f"unknown operation {kind!r}; valid: product, step, cell, attention, gather, "
                         f"layer_norm, softmax, log_softmax, copy, {', '.join(UNARY)}, {', '.join(BINARY)}")

    def __call__(self) -> None:
        if self._program is not None:
            _compiled().run(self._program)
            return
        for operation in self.operations:
            _run_reference(*operation)


def _int32(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.dtype != np.int32 or array.shape != shape or not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous int32 of shape {shape}, "
                         f"got {array.dtype} {array.shape}")
    return array


def _columns(name: str, array: np.ndarray, n: int | None = None) -> tuple[int, int]:
    """``(features, n)`` of a feature-major float32 buffer, checked."""
    if array.ndim != 2 or (n is not None and array.shape[1] != n):
        raise ValueError(f"{name} must be (features, {n or 'n'}), got shape {array.shape}")
    return _float32(name, array, array.shape).shape


def _run_reference(kind: str, *arguments) -> None:
    """One :class:`Program` operation in numpy (the reference backend)."""
    if kind == "product":
        matrix, x, y, bias = arguments
        y[...] = reference.spmm(matrix, x, bias)
    elif kind == "step":
        cell, weight_hh, bias_hh, xproj, out, h, c = arguments
        out[...] = reference.recurrent(cell, weight_hh, bias_hh, xproj[None], h, c)[0]
    elif kind == "cell":
        cell, xproj, gates, h, c, out = arguments
        new_h, new_c = reference.cell_step(cell, xproj, gates, h, c)
        out[...] = new_h
        if c is not None:
            c[...] = new_c
    elif kind == "attention":
        query, keys, memory, lengths, score, context = arguments
        context[...] = reference.attention(query, keys, memory, lengths, score)
    elif kind in UNARY:
        x, y = arguments
        y[...] = {"tanh": np.tanh, "relu": lambda v: np.maximum(v, 0), "sigmoid": reference.sigmoid}[kind](x)
    elif kind == "gather":
        table, ids, y = arguments
        if np.any(ids < 0) or np.any(ids >= table.shape[0]):
            raise IndexError("program: an id is outside its embedding table")
        y[...] = table[ids].T
    elif kind == "layer_norm":
        x, y, weight, bias, size, eps = arguments
        y[...] = reference.layer_norm(x, size, weight, bias, eps)
    elif kind in ("softmax", "log_softmax"):
        x, y, size = arguments
        y[...] = reference.softmax(x, size, log=kind == "log_softmax")
    elif kind in BINARY:
        a, b, y = arguments
        b = b[:, None] if b.shape == a.shape[:1] and a.ndim == 2 else b
        y[...] = {"add": np.add, "mul": np.multiply, "sub": np.subtract, "div": np.divide}[kind](a, b)
    else:
        x, y, outer, length, x_stride, x_offset, y_stride, y_offset = arguments
        for p in range(outer):
            y[p * y_stride + y_offset:][:length] = x[p * x_stride + x_offset:][:length]
