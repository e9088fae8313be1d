"""The compiled kernels against the scipy/numpy reference and against dense numpy."""

import dataclasses
import itertools

import numpy as np
import pytest

from sparsernn import kernels
from sparsernn.kernels import CELLS, FormatError, SparseMatrix, recurrent, reference, spmm

pytestmark = pytest.mark.skipif(kernels.backend() != "c", reason="compiled kernels not built")



def _on(level):
    return pytest.mark.skipif(kernels.backend() != "c" or level not in kernels.isa_levels(),
                              reason=f"this build or CPU has no {level} kernels")


BACKENDS = ["reference", "c"]
#: Every instruction set of the kernels, each skipped where this machine lacks it.
ISAS = [pytest.param(level, marks=_on(level)) for level in kernels.ISA_LEVELS]
#: The one-column copy each instruction set uses.
COPIES = [pytest.param("avx2", "interleaved", marks=_on("avx2")),
          pytest.param("avx512", "sliced", marks=_on("avx512"))]


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test with the compiled kernels limited to each instruction set the machine has."""
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa(None)

BLOCKS = [(1, 1), (4, 1), (8, 1), (16, 1), (1, 4), (1, 8), (4, 4), (8, 8), (2, 3)]
#: The compiled matrix's trailing arguments without int8 values: q, scales, rows_unit.
NO_INT8 = (b"", b"", 16)


def random_sparse(rng, shape, block, density, index_dtype=None):
    r, c = block
    keep = rng.random((shape[0] // r, shape[1] // c)) < density
    dense = rng.standard_normal(shape).astype(np.float32) * np.kron(keep, np.ones(block, np.float32))
    return dense, SparseMatrix.from_dense(dense, block, index_dtype)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 1.0])
def test_spmm_matches_dense_and_reference(block, density, isa):
    rng = np.random.default_rng(hash((block, density)) % 2**32)
    shape = (48, 96)
    dense, matrix = random_sparse(rng, shape, block, density)
    assert np.array_equal(matrix.to_dense(), dense)
    for n, threads, index_dtype in itertools.product([1, 3, 4, 16, 37], [1, 2, 3], [None, np.int32]):
        if index_dtype is not None:
            matrix = SparseMatrix.from_dense(dense, block, index_dtype)
        x = rng.standard_normal((shape[1], n)).astype(np.float32)
        bias = rng.standard_normal(shape[0]).astype(np.float32)
        expected = dense.astype(np.float64) @ x + bias[:, None]
        np.testing.assert_allclose(spmm(matrix, x, bias, threads=threads), expected, atol=1e-4)
        np.testing.assert_allclose(spmm(matrix, x, bias, backend_name="reference"), expected, atol=1e-4)
        np.testing.assert_allclose(spmm(matrix, x, threads=threads), expected - bias[:, None], atol=1e-4)


@pytest.mark.parametrize("rows, window", [(71, None), (72, 8)])
def test_long_rows_use_every_unrolled_path(rows, window, isa):
    """Rows with 0..71 non-zeros exercise the 16-wide CSR loop, its remainder and the scalar tail (71
    rows: no one-column copy), or the one-column copies' unrolled loops and their remainders (72 rows)."""
    rng = np.random.default_rng(3)
    dense = np.zeros((rows, 1760), np.float32)
    for row in range(rows):
        cols = rng.choice(1760, size=row, replace=False)
        dense[row, cols] = rng.standard_normal(row)
    matrix = SparseMatrix.from_dense(dense)
    x = rng.standard_normal((1760, 1)).astype(np.float32)
    np.testing.assert_allclose(spmm(matrix, x), dense @ x, atol=1e-4)
    assert (matrix.interleaved and matrix.interleaved.sigma) == window
    assert (matrix.sliced and matrix.sliced.sigma) == window


def interleaved_to_dense(matrix):
    """The slow oracle: every slot of every group written back to its row."""
    layout = matrix.interleaved
    dense = np.zeros(matrix.shape, np.float32)
    for group in range(matrix.shape[0] // 8):
        for slot in range(layout.ptr[group], layout.ptr[group + 1]):
            for lane in range(8):
                dense[layout.order[8 * group + lane], layout.index[slot, lane]] += layout.values[slot, lane]
    return dense


@pytest.mark.parametrize("shape, window",
                         [((48, 96), 48), ((600, 200), 40), ((192, 64), 64), ((24, 9), None)])
def test_interleaved_copy_holds_each_row_within_its_window(shape, window):
    rng = np.random.default_rng(11)
    dense, matrix = random_sparse(rng, shape, (1, 1), 0.1)
    dense[5] = 0.0  # an empty row
    matrix = SparseMatrix.from_dense(dense)
    if window is None:
        assert matrix.interleaved is None
        return
    layout = matrix.interleaved
    assert layout.sigma == window
    assert sorted(layout.order) == list(range(shape[0]))
    assert np.array_equal(layout.order // window, np.arange(shape[0]) // window)  # rows stay in their window
    lengths = np.diff(matrix.rowptr)[layout.order]
    assert np.all(np.diff(lengths.reshape(-1, window), axis=1) <= 0)  # longest first inside a window
    assert np.array_equal(np.diff(layout.ptr), lengths.reshape(-1, 8).max(axis=1))
    assert np.array_equal(interleaved_to_dense(matrix), dense)


@pytest.mark.parametrize("shape", [(600, 200), (192, 64), (1760, 1760), (24, 40), (48, 96), (48, 120),
                                   (24, 88), (48, 264), (48, 296), (48, 312), (48, 360)])
def test_one_column_products_match_dense(shape, isa):
    """One column, with thread shares that start inside a window (moved to its start) or not, and a
    last slice that is whole or not. Slices of 32 (up to 256 columns): ending inside the first (200, 40,
    88, 120) or second (24 + 16: 40 is that too) of the kernel's registers of x, or at the end of the
    second (64, 96); slices of 64 (wider): ending inside the first (264), second (296), third (312) or
    fourth (360) register, or at the end of the fourth (1760)."""
    rng = np.random.default_rng(12)
    dense, matrix = random_sparse(rng, shape, (1, 1), 0.1)
    assert matrix.interleaved is not None and matrix.sliced is not None
    x = rng.standard_normal((shape[1], 1)).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    for threads in (1, 2, 3, 5):
        np.testing.assert_allclose(spmm(matrix, x, bias, threads=threads), dense.astype(np.float64) @ x
                                   + bias[:, None], atol=1e-4)


@pytest.mark.parametrize("shape", [(600, 200), (1760, 1760), (24, 40)])
def test_bf16_one_column_products_read_16_bit_values(shape, isa):
    """A bf16 matrix: its one-column copies hold the values' 16 bits, the product equals the float32
    product of the rounded matrix (up to the order of the sums) and is within 1e-2 of the unrounded."""
    rng = np.random.default_rng(13)
    dense, matrix = random_sparse(rng, shape, (1, 1), 0.1)
    rounded = matrix.to_bf16()
    assert rounded.bf16 and not matrix.bf16
    assert np.array_equal(rounded.to_dense(), round_to_bfloat16(dense))
    for layout in ("interleaved", "sliced"):
        copy = getattr(rounded, layout)
        assert copy.values.dtype == np.uint16
        assert copy.values.nbytes * 2 == getattr(matrix, layout).values.nbytes
    x = rng.standard_normal((shape[1], 1)).astype(np.float32)
    exact = rounded.to_dense().astype(np.float64) @ x
    for threads in (1, 3):
        y = spmm(rounded, x, threads=threads)
        np.testing.assert_allclose(y, exact, atol=1e-4)
        assert np.abs(y - dense.astype(np.float64) @ x).max() <= 1e-2 * np.abs(exact).max()


def round_to_bfloat16(dense):
    """Round to the nearest bfloat16, ties to even, the slow way: by the spacing of each number's binade."""
    out = np.zeros_like(dense)
    nonzero = dense != 0
    spacing = 2.0 ** (np.floor(np.log2(np.abs(dense[nonzero]))) - 7)
    out[nonzero] = (np.round(dense[nonzero] / spacing) * spacing).astype(np.float32)  # numpy: ties to even
    return out


@pytest.mark.parametrize("block", [(8, 1), (16, 1)])
@pytest.mark.parametrize("level", [pytest.param(level, marks=_on(level)) for level in ("avx2", "avx512")])
def test_column_blocks_read_their_bf16_values(block, level):
    """8x1 and 16x1 blocks times one column read the bfloat16 block values: given zeros as float32
    values, the product is still the matrix's."""
    rng = np.random.default_rng(14)
    dense, matrix = random_sparse(rng, (64, 48), block, 0.2)
    matrix = matrix.to_bf16()
    x = rng.standard_normal((48, 1)).astype(np.float32)
    kernels.set_isa(level)
    try:
        args = list(kernels._matrix_args(matrix, True))
        assert args[10] == 1 and args[14].dtype == np.uint16  # bf16, the values in 16 bits
        np.testing.assert_allclose(spmm(matrix, x), matrix.to_dense() @ x, atol=1e-4)
        args[7] = np.zeros_like(matrix.values)
        y = np.empty((64, 1), np.float32)
        kernels._compiled().spmm(kernels._compiled().matrix(*args), x, y, b"", 1, 1)
        np.testing.assert_allclose(y, matrix.to_dense() @ x, atol=1e-4)
        args[14] = args[14][:-1]
        with pytest.raises(ValueError, match="bfloat16 values"):
            kernels._compiled().matrix(*args)
    finally:
        kernels.set_isa(None)


def test_bf16_needs_bfloat16_values():
    dense = np.array([[1.0, 0.0], [0.0, 1.0 + 2.0 ** -10]], np.float32)
    matrix = SparseMatrix.from_dense(dense)
    with pytest.raises(FormatError, match="not all bfloat16"):
        SparseMatrix((2, 2), (1, 1), matrix.rowptr, matrix.index, matrix.values, bf16=True)
    assert matrix.to_bf16().values.tolist() == [[[1.0]], [[1.0]]]  # 1 + 2^-10 rounds to 1


def test_windows_divide_the_rows_unit():
    matrix = SparseMatrix.from_dense(np.ones((10000, 200), np.float32))
    assert matrix._window(16) == 40  # gcd(10000, 200) = 200: a window of 40 leaves 8 of 48 lanes idle
    whole = SparseMatrix(matrix.shape, (1, 1), matrix.rowptr, matrix.index, matrix.values, rows_unit=10000)
    assert (whole._window(16), whole._window(8)) == (400, 400)  # no idle lane, the longest up to 512
    # an eighth of the unit (whole windows for 8 threads), within 64 and 512, a multiple of 8
    assert [kernels.most_window(n) for n in (8, 200, 600, 1024, 1100, 10000)] == [64, 64, 72, 128, 136, 512]
    with pytest.raises(FormatError, match="rows_unit 300 does not divide the 10000 rows"):
        SparseMatrix(matrix.shape, (1, 1), matrix.rowptr, matrix.index, matrix.values, rows_unit=300)

@pytest.mark.parametrize("bf16", [False, True])
def test_values_the_kernels_read_start_on_a_cache_line(bf16):
    rng = np.random.default_rng(5)
    _, made = random_sparse(rng, (64, 64), (1, 1), 0.3)
    buffer = np.empty(made.values.nbytes + 64, np.uint8)
    start = (16 - buffer.ctypes.data) % 64  # numpy's usual 16-byte alignment, off a cache line
    given = buffer[start:start + made.values.nbytes].view(np.float32).reshape(made.values.shape)
    given[...] = made.values
    matrix = SparseMatrix(made.shape, made.block, made.rowptr, made.index, given)
    matrix = matrix.to_bf16() if bf16 else matrix
    assert given.ctypes.data % 64 == 16
    arrays = [matrix.values, matrix.interleaved.values, matrix.sliced.values]
    assert [array.ctypes.data % 64 for array in arrays] == [0, 0, 0]
    np.testing.assert_array_equal(matrix.to_dense(), made.to_bf16().to_dense() if bf16 else made.to_dense())


def test_no_interleaved_copy_for_blocks_or_wide_indices():
    dense = np.ones((16, 16), np.float32)
    assert SparseMatrix.from_dense(dense, (8, 1)).interleaved is None
    assert SparseMatrix.from_dense(dense, (1, 1), np.int32).interleaved is None


@pytest.mark.parametrize("level, layout", COPIES)
def test_short_one_column_arrays_are_rejected_by_the_compiled_matrix(level, layout):
    matrix = SparseMatrix.from_dense(np.eye(16, dtype=np.float32))
    lanes, sigma, ptr, order, index, values = getattr(matrix, layout)
    csr = (16, 16, 1, 1, 0, matrix.rowptr, matrix.index, matrix.values)
    with pytest.raises(ValueError, match="one-column index"):
        kernels._compiled().matrix(*csr, lanes, sigma, 0, ptr, order, index[:-1], values, *NO_INT8)
    with pytest.raises(ValueError, match="one-column order"):
        kernels._compiled().matrix(*csr, lanes, sigma, 0, ptr, order[:-1], index, values, *NO_INT8)
    with pytest.raises(ValueError, match="window 12"):
        kernels._compiled().matrix(*csr, lanes, 12, 0, ptr, order, index, values, *NO_INT8)
    with pytest.raises(ValueError, match="one-column values"):  # float32 values read as bfloat16 are
        half = kernels.bf16_bits(values)                         # long enough; bfloat16 as float32 not
        kernels._compiled().matrix(*csr, lanes, sigma, 0, ptr, order, index, half, *NO_INT8)


def test_the_compiled_matrix_keeps_its_arrays_and_calls_check_their_buffers():
    """The compiled matrix holds the arrays it reads (they outlive the SparseMatrix that made it); the
    calls refuse short activations and anything that is not a compiled matrix."""
    import gc

    rng = np.random.default_rng(3)
    dense, matrix = random_sparse(rng, (32, 24), (1, 1), 0.3)
    compiled = kernels._compiled_matrix(matrix, 1)
    del matrix
    gc.collect()
    x, y = rng.standard_normal((24, 1)).astype(np.float32), np.empty((32, 1), np.float32)
    kernels._compiled().spmm(compiled, x, y, b"", 1, 1)
    np.testing.assert_allclose(y, dense @ x, atol=1e-5)
    with pytest.raises(ValueError, match="x holds 92 bytes, needs 96"):
        kernels._compiled().spmm(compiled, x[:-1], y, b"", 1, 1)
    with pytest.raises(ValueError, match="y holds"):
        kernels._compiled().spmm(compiled, x, y[:-1], b"", 1, 1)
    with pytest.raises((TypeError, ValueError)):
        kernels._compiled().spmm(object(), x, y, b"", 1, 1)


@_on("avx2")
def test_the_sliced_layout_is_refused_without_avx512():
    """Refused where the CPU lacks AVX-512F, and where it is turned off (then also asking for it)."""
    matrix = SparseMatrix.from_dense(np.eye(16, dtype=np.float32))
    kernels.set_isa("avx2")
    try:
        with pytest.raises(ValueError, match="16 lanes"):
            kernels._compiled().matrix(16, 16, 1, 1, 0, matrix.rowptr, matrix.index, matrix.values,
                                       *matrix.sliced[:2], 0, *matrix.sliced[2:], *NO_INT8)
    finally:
        kernels.set_isa(None)
    if "avx512" not in kernels.isa_levels():
        with pytest.raises(ValueError, match="does not run AVX-512F"):
            kernels._compiled().set_avx512(True)
        with pytest.raises(ValueError, match="not available here"):
            kernels.set_isa("avx512")


def test_the_extension_slices_columns_as_the_layout_does():
    if kernels.backend() != "c":
        pytest.skip("the compiled kernels are not built")
    assert kernels._compiled().NARROW_COLUMNS == kernels.NARROW_COLUMNS
    assert [kernels.slice_width(n) for n in (1, 200, 256, 257, 1024)] == [32, 32, 32, 64, 64]


def sliced_to_dense(matrix):
    """The slow oracle for the sliced copy: every slot's lanes written back to their rows and columns."""
    lanes, sigma, ptr, order, index, values = matrix.sliced
    rows, cols = matrix.shape
    width = kernels.slice_width(cols)
    slices = -(-cols // width)
    dense = np.zeros(matrix.shape, np.float32)
    for group in range(len(order) // 16):
        for j in range(slices):
            for slot in range(ptr[group * slices + j], ptr[group * slices + j + 1]):
                for lane in range(16):
                    row, column = order[16 * group + lane], width * j + int(index[slot, lane])
                    if row >= 0:
                        dense[row, column] += values[slot, lane]
                    else:
                        assert values[slot, lane] == 0
    return dense


@pytest.mark.parametrize("shape, window, groups",
                         [((48, 96), 48, 3), ((600, 200), 40, 45), ((64, 64), 64, 4), ((24, 40), 8, 3),
                          ((48, 304), 16, 3), ((40, 70), None, None)])
def test_sliced_copy_holds_each_row_within_its_window(shape, window, groups):
    """Windows are whole 16-row groups where a multiple of 16 divides the shape (48, 64), else padded
    (40 rows: groups of 16, 16 and 8); rows stay in their window, sorted by their non-zeros in each
    slice, most first, slice by slice (then by row)."""
    rng = np.random.default_rng(13)
    dense, _ = random_sparse(rng, shape, (1, 1), 0.15)
    dense[5] = 0.0  # an empty row
    dense[6] = rng.standard_normal(shape[1])  # a full one
    matrix = SparseMatrix.from_dense(dense)
    if window is None:
        assert matrix.sliced is None
        return
    lanes, sigma, ptr, order, index, values = matrix.sliced
    assert (lanes, sigma, len(order)) == (16, window, 16 * groups)
    rows = order[order >= 0]
    assert sorted(rows) == list(range(shape[0]))
    assert np.array_equal(rows // window, np.arange(shape[0]) // window)
    width = kernels.slice_width(shape[1])
    counts = [tuple(-np.count_nonzero(dense[row, j:j + width]) for j in range(0, shape[1], width)) + (row,)
              for row in rows]
    for start in range(0, len(rows), window):
        assert counts[start:start + window] == sorted(counts[start:start + window])
    assert np.all(index < width)
    assert np.array_equal(sliced_to_dense(matrix), dense)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("block, bf16", [((1, 1), False), ((1, 1), True), ((8, 1), False), ((4, 4), False)])
def test_recurrent_matches_reference(cell, block, bf16, isa):
    rng = np.random.default_rng(7)
    gates, hidden, steps = CELLS[cell], 32, 9
    dense, weight = random_sparse(rng, (gates * hidden, hidden), block, 0.3)
    weight = SparseMatrix.from_dense(dense * 0.5, block)
    weight = weight.to_bf16() if bf16 else weight
    bias = rng.standard_normal(gates * hidden).astype(np.float32)
    for batch, threads, reverse in itertools.product([1, 3, 8], [1, 2, 3], [False, True]):
        xproj = rng.standard_normal((steps, gates * hidden, batch)).astype(np.float32)
        h0 = rng.standard_normal((hidden, batch)).astype(np.float32)
        c0 = rng.standard_normal((hidden, batch)).astype(np.float32) if cell == "lstm" else None
        results = []
        for name in ("c", "reference"):
            h, c = h0.copy(), None if c0 is None else c0.copy()
            out = recurrent(cell, weight, bias, xproj, h, c, reverse=reverse, threads=threads,
                            backend_name=name)
            results.append((out, h, c))
        (out, h, c), (out_ref, h_ref, c_ref) = results
        np.testing.assert_allclose(out, out_ref, atol=1e-4)
        np.testing.assert_allclose(h, h_ref, atol=1e-4)
        assert np.array_equal(h, out[0] if reverse else out[-1])
        if cell == "lstm":
            np.testing.assert_allclose(c, c_ref, atol=1e-4)


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_program_runs_two_layers_and_an_output_layer_as_separate_calls_do(cell, isa):
    """Product, step, product, step, product over shared buffers, in one compiled call, twice (the
    state carried), equals the same calls one by one and the reference program; on 1 and 2 threads."""
    rng = np.random.default_rng(9)
    gates, hidden = CELLS[cell], 24
    weights = [random_sparse(rng, shape, (1, 1), 0.3)[1] for shape in
               [(gates * hidden, 16), (gates * hidden, hidden), (gates * hidden, hidden),
                (gates * hidden, hidden), (40, hidden)]]
    biases = [rng.standard_normal(w.shape[0]).astype(np.float32) for w in weights]
    inputs = [rng.standard_normal((16, 3)).astype(np.float32) for _ in range(2)]

    def buffers():
        x = np.empty((16, 3), np.float32)
        xproj, out, states = [], [], []
        for _ in range(2):
            xproj.append(np.empty((gates * hidden, 3), np.float32))
            out.append(np.empty((hidden, 3), np.float32))
            states.append([np.zeros((hidden, 3), np.float32) for _ in range(2)])
        return x, xproj, out, states, np.empty((40, 3), np.float32)

    expected = []
    x, xproj, out, states, logits = buffers()
    for x in inputs:  # separate calls
        for layer in range(2):
            (h, c), w_ih, w_hh = states[layer], weights[2 * layer], weights[2 * layer + 1]
            projected = spmm(w_ih, x, biases[2 * layer])
            x = recurrent(cell, w_hh, biases[2 * layer + 1], projected[None], h,
                          c if cell == "lstm" else None)[0]
        expected.append(spmm(weights[4], x, biases[4]))
    for backend_name, threads in (("c", 1), ("c", 2), ("reference", 1)):
        x, xproj, out, states, logits = buffers()
        operations, previous = [], x
        for layer in range(2):
            h, c = states[layer]
            operations += [("product", weights[2 * layer], previous, xproj[layer], biases[2 * layer]),
                           ("step", cell, weights[2 * layer + 1], biases[2 * layer + 1], xproj[layer],
                            out[layer], h, c if cell == "lstm" else None)]
            previous = out[layer]
        operations.append(("product", weights[4], previous, logits, biases[4]))
        program = kernels.Program(operations, threads=threads, backend_name=backend_name)
        for step, values in enumerate(inputs):
            x[...] = values
            program()
            np.testing.assert_allclose(logits, expected[step], atol=1e-4, err_msg=backend_name)


@pytest.mark.parametrize("additive", [True, False])
def test_program_attention_and_tanh_match_pytorch(additive):
    """Three columns with 5, 1 and 3 of 5 encoder positions (the rest garbage that must not count),
    H = 19 (two 8-wide vectors and a tail): torch's masked softmax attention, as in Seq2Seq.decode_step."""
    import torch

    rng = np.random.default_rng(12)
    batch, steps, hidden = 3, 5, 19
    keys, memory = (rng.standard_normal((batch, steps, hidden)).astype(np.float32) for _ in range(2))
    query = rng.standard_normal((hidden, batch)).astype(np.float32)
    score = rng.standard_normal(hidden).astype(np.float32) if additive else None
    lengths = np.array([5, 1, 3], np.int32)
    k, m, q = torch.from_numpy(keys), torch.from_numpy(memory), torch.from_numpy(query.T)
    if additive:
        scores = torch.tanh(k + q[:, None]) @ torch.from_numpy(score)
    else:
        scores = torch.bmm(k, q[:, :, None])[..., 0]
    mask = torch.arange(steps)[None] < torch.from_numpy(lengths)[:, None]
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    expected = torch.bmm(weights[:, None], m)[:, 0].T.numpy()
    for backend_name in ("c", "reference"):
        context = np.full((hidden, batch), np.nan, np.float32)
        squashed = np.empty((hidden, batch), np.float32)
        kernels.Program([("attention", query, keys, memory, lengths, score, context),
                         ("tanh", context, squashed)], backend_name=backend_name)()
        np.testing.assert_allclose(context, expected, atol=1e-5, err_msg=backend_name)
        np.testing.assert_allclose(squashed, np.tanh(expected), atol=1e-6, err_msg=backend_name)


def test_a_program_checks_attention_buffers():
    keys = np.zeros((2, 4, 8), np.float32)
    query, context = np.zeros((8, 2), np.float32), np.zeros((8, 2), np.float32)
    lengths = np.array([4, 2], np.int32)
    with pytest.raises(ValueError, match="memory must be"):
        kernels.Program([("attention", query, keys, keys[:, :3], lengths, None, context)])
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 4\]"):
        kernels.Program([("attention", query, keys, keys, np.array([4, 5], np.int32), None, context)])
    with pytest.raises(ValueError, match="lengths must be C-contiguous int32"):
        kernels.Program([("attention", query, keys, keys, lengths.astype(np.int64), None, context)])
    with pytest.raises(ValueError, match="score must be"):
        kernels.Program([("attention", query, keys, keys, lengths, np.zeros(7, np.float32), context)])
    with pytest.raises(ValueError, match="y must be"):
        kernels.Program([("tanh", query, context[:4])])
    with pytest.raises(ValueError, match="keys holds 256 bytes, needs 512"):
        kernels._compiled().program([(2, query, keys, keys, lengths, b"", context, 8, 8, 2)], 1)


def test_a_program_checks_its_buffers_and_holds_them():
    import gc

    weight = SparseMatrix.from_dense(np.eye(12, 4, dtype=np.float32))
    x, y = np.ones((4, 1), np.float32), np.empty((12, 1), np.float32)
    with pytest.raises(ValueError, match="y must be"):
        kernels.Program([("product", weight, x, y[:8], None)])
    with pytest.raises(ValueError, match="weight_hh must be"):
        kernels.Program([("step", "lstm", weight, np.zeros(12, np.float32), y, x, x, x)])
    with pytest.raises(ValueError, match="unknown operation 'scatter'"):
        kernels.Program([("scatter", weight, x, y, None)])
    with pytest.raises(ValueError, match="program: an operation is"):
        kernels._compiled().program([(17, None)], 1)
    program = kernels._compiled().program([(0, kernels._compiled_matrix(weight, 1), x, y, b"", 1)], 1)
    del weight
    gc.collect()
    kernels._compiled().run(program)
    assert y[:4, 0].tolist() == [1.0, 1.0, 1.0, 1.0] and not y[4:].any()


@pytest.mark.parametrize("cell", list(CELLS))
def test_cells_with_a_hidden_size_off_the_vector_width(cell):
    """13 units: one 8-wide vector of the cell equations, then five one at a time."""
    rng = np.random.default_rng(8)
    gates, hidden, steps = CELLS[cell], 13, 6
    dense, weight = random_sparse(rng, (gates * hidden, hidden), (1, 1), 0.5)
    bias = rng.standard_normal(gates * hidden).astype(np.float32)
    for batch in (1, 2):
        xproj = rng.standard_normal((steps, gates * hidden, batch)).astype(np.float32)
        state = [rng.standard_normal((hidden, batch)).astype(np.float32) for _ in range(2)]
        outs = []
        for name in ("c", "reference"):
            h, c = state[0].copy(), state[1].copy() if cell == "lstm" else None
            outs.append(recurrent(cell, weight, bias, xproj, h, c, backend_name=name))
        np.testing.assert_allclose(outs[0], outs[1], atol=1e-4)


@pytest.mark.parametrize("cell", ["rnn_relu", "rnn_clipped_relu", "gru"])
def test_nan_inputs_stay_nan_as_in_the_reference(cell):
    gates, hidden = CELLS[cell], 16
    weight = SparseMatrix.from_dense(np.zeros((gates * hidden, hidden), np.float32))
    xproj = np.zeros((1, gates * hidden, 1), np.float32)
    xproj[0, 3] = np.nan
    for name in ("c", "reference"):
        out = recurrent(cell, weight, np.zeros(gates * hidden, np.float32), xproj,
                        np.zeros((hidden, 1), np.float32), backend_name=name)
        assert np.isnan(out[0, 3, 0]) and not np.isnan(np.delete(out[0, :, 0], 3)).any(), name


def test_zero_steps_leave_the_state():
    weight = SparseMatrix.from_dense(np.eye(12, 4, dtype=np.float32))
    h = np.ones((4, 2), np.float32)
    out = recurrent("gru", weight, np.zeros(12, np.float32), np.zeros((0, 12, 2), np.float32), h)
    assert out.shape == (0, 4, 2) and np.array_equal(h, np.ones((4, 2)))


@pytest.mark.parametrize("mutate, message", [
    (lambda m: dict(index=np.array([0, 9], np.uint16)), "out of range"),
    (lambda m: dict(rowptr=np.array([0, 2, 1], np.int32)), "never decrease"),
    (lambda m: dict(rowptr=np.array([0, 1, 2, 2], np.int32)), "length 3"),
    (lambda m: dict(values=np.zeros((2, 1, 1), np.float64)), "float32"),
    (lambda m: dict(index=np.array([0], np.uint16)), "length 2"),
])
def test_invalid_arrays_are_rejected(mutate, message):
    good = SparseMatrix.from_dense(np.array([[1, 0], [0, 2]], np.float32))
    arrays = dict(rowptr=good.rowptr, index=good.index, values=good.values) | mutate(good)
    with pytest.raises(FormatError, match=message):
        SparseMatrix(good.shape, good.block, **arrays)


def test_wrong_activation_shape_is_rejected():
    matrix = SparseMatrix.from_dense(np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="x must be"):
        spmm(matrix, np.ones((3, 1), np.float32))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("n", [1, 3])
def test_program_ops_besides_products_against_torch(backend_name, n):
    """gather, layer_norm, the elementwise functions, softmax, arithmetic, copy and cell against PyTorch."""
    import torch

    generator = np.random.default_rng(0)
    x = generator.standard_normal((12, n)).astype(np.float32) * 3
    other = generator.standard_normal((12, n)).astype(np.float32)
    table = generator.standard_normal((7, 12)).astype(np.float32)
    ids = np.array([4, 0, 6][:n], np.int32)
    weight, bias = (generator.standard_normal(4).astype(np.float32) for _ in range(2))
    per_feature = generator.standard_normal(12).astype(np.float32)
    names = ("gather", "norm", "tanh", "relu", "sigmoid", "softmax", "log_softmax", "add", "mul", "sub",
             "div", "scale")
    out = {name: np.zeros((12, n), np.float32) for name in names}
    cat = np.zeros((18, n), np.float32)
    kernels.Program([("gather", table, ids, out["gather"]),
                     ("layer_norm", x, out["norm"], weight, bias, 4, 1e-5),
                     *[(name, x, out[name]) for name in ("tanh", "relu", "sigmoid")],
                     ("softmax", x, out["softmax"], 6), ("log_softmax", x, out["log_softmax"], 6),
                     *[(name, x, other, out[name]) for name in ("add", "mul", "sub", "div")],
                     ("mul", x, per_feature, out["scale"]),
                     ("copy", x, cat, 2, 3, 6, 1, 9, 0), ("copy", other, cat, 2, 6, 6, 0, 9, 3)],
                    backend_name=backend_name)()
    t = torch.from_numpy(x.T.copy())  # (n, 12): PyTorch's layout, features last
    groups = t.reshape(n, 3, 4)
    expected = {
        "gather": torch.from_numpy(table)[torch.from_numpy(ids).long()],
        "norm": torch.nn.functional.layer_norm(groups, (4,), torch.from_numpy(weight),
                                               torch.from_numpy(bias)).reshape(n, 12),
        "tanh": torch.tanh(t), "relu": torch.relu(t), "sigmoid": torch.sigmoid(t),
        "softmax": torch.softmax(t.reshape(n, 2, 6), -1).reshape(n, 12),
        "log_softmax": torch.log_softmax(t.reshape(n, 2, 6), -1).reshape(n, 12),
        "add": t + torch.from_numpy(other.T), "mul": t * torch.from_numpy(other.T),
        "sub": t - torch.from_numpy(other.T), "div": t / torch.from_numpy(other.T),
        "scale": t * torch.from_numpy(per_feature)}
    for name, value in expected.items():
        np.testing.assert_allclose(out[name].T, value.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    # two runs of 3 features of x (from feature 1) and of 6 of other, interleaved as a concatenation
    left, right = x.reshape(2, 6, n)[:, 1:4], other.reshape(2, 6, n)
    np.testing.assert_array_equal(cat.reshape(2, 9, n), np.concatenate([left, right], axis=1))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
def test_the_cell_operation_equals_the_reference_cell(backend_name, cell):
    generator = np.random.default_rng(1)
    hidden, n, gates = 8, 2, kernels.CELLS[cell]
    xproj, projected = (generator.standard_normal((gates * hidden, n)).astype(np.float32) for _ in range(2))
    h, c = (generator.standard_normal((hidden, n)).astype(np.float32) for _ in range(2))
    out = np.zeros((hidden, n), np.float32)
    lstm = cell == "lstm"
    expected_h, expected_c = reference.cell_step(cell, xproj, projected, h, c.copy() if lstm else None)
    state = c.copy()
    kernels.Program([("cell", cell, xproj, projected, h, state if cell == "lstm" else None, out)],
                    backend_name=backend_name)()
    np.testing.assert_allclose(out, expected_h, rtol=1e-5, atol=1e-6)
    if cell == "lstm":
        np.testing.assert_allclose(state, expected_c, rtol=1e-5, atol=1e-6)


def test_a_gather_outside_its_table_raises_and_bad_copies_are_refused():
    table, y = np.zeros((3, 4), np.float32), np.zeros((4, 1), np.float32)
    for backend_name in BACKENDS:
        program = kernels.Program([("gather", table, np.array([3], np.int32), y)], backend_name=backend_name)
        with pytest.raises(IndexError, match="outside its embedding table"):
            program()
    with pytest.raises(ValueError, match="do not fit"):
        kernels.Program([("copy", y, y, 2, 4, 1, 0, 1, 0)])


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize(("shape", "rows_unit", "density"), [((64, 64), None, 0.3), ((96, 200), 32, 0.1),
                                                             ((400, 130), 200, 0.05), ((24, 8), None, 0.5),
                                                             ((48, 300), 48, 0.1), ((1200, 40), 1200, 0.1)])
def test_the_c_runtime_builds_the_same_one_column_copies(shape, rows_unit, density, bf16):
    """The C runtime builds its one-column copies at load (runtime/src/layouts.c); the Python package
    builds them in numpy: the same arrays, so both run the kernels on the same layout."""
    rng = np.random.default_rng(7)
    _, matrix = random_sparse(rng, shape, (1, 1), density)
    matrix = dataclasses.replace(matrix, rows_unit=rows_unit)
    matrix = matrix.to_bf16() if bf16 else matrix
    unit = rows_unit or np.gcd(*shape)
    for lanes, python in ((8, matrix.interleaved), (16, matrix.sliced)):
        made = kernels._compiled().one_column(*shape, matrix.rowptr, matrix.index, matrix.values, lanes, unit,
                                               int(bf16))
        if python is None:
            assert made is None
            continue
        sigma, ptr, order, index, values = made
        assert sigma == python.sigma
        np.testing.assert_array_equal(np.frombuffer(ptr, np.int32), python.ptr)
        np.testing.assert_array_equal(np.frombuffer(order, np.int32), python.order)
        for got, expected in ((index, python.index), (values, python.values)):
            np.testing.assert_array_equal(np.frombuffer(got, expected.dtype).reshape(-1, lanes), expected)


def test_int8_values_are_integers_times_a_scale_per_row():
    """to_int8: each row's largest magnitude maps to 127, every value is round(v / scale) * scale, the
    scales are stored per row (blocks too), and a matrix whose values are not such numbers is refused."""
    dense = np.array([[0.5, 0.0, -1.0, 0.25], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 1.0]], np.float32)
    matrix = SparseMatrix.from_dense(dense).to_int8()
    np.testing.assert_array_equal(matrix.scales, np.float32([1 / 127, 0, 3 / 127]))
    np.testing.assert_array_equal(matrix.int8, [64, -127, 32, 127, 42])  # 63.5 rounds to even; 42.33 to 42
    np.testing.assert_array_equal(matrix.values.reshape(-1), np.float32([64, -127, 32, 127, 42]) *
                                  np.float32([1 / 127] * 3 + [3 / 127] * 2))
    assert matrix.nbytes == 4 * 4 + 5 * 2 + 5 + 3 * 4
    blocks = SparseMatrix.from_dense(np.kron(dense, np.ones((2, 1), np.float32)), (2, 1)).to_int8()
    np.testing.assert_array_equal(blocks.scales, np.repeat(matrix.scales, 2))
    with pytest.raises(FormatError, match="not integers"):
        dataclasses.replace(matrix, values=matrix.values * np.float32(1.001))
    with pytest.raises(FormatError, match="scales must be float32"):
        dataclasses.replace(matrix, scales=matrix.scales[:2])


def test_quantize_as_the_kernels_do():
    q, scale = reference.quantize(np.float32([0.5, -1.0, 0.25, 0.0]))
    np.testing.assert_array_equal(q, [64, -127, 32, 0])
    assert scale == np.float32(1 / 127)
    q, scale = reference.quantize(np.zeros(3, np.float32))
    assert not q.any() and scale == 0


@pytest.mark.parametrize(("shape", "rows_unit"), [((800, 200), 200), ((10000, 200), None), ((48, 130), None),
                                                  ((3072, 1024), 1024), ((40, 24), None)])
def test_int8_products_of_one_column_are_exact_and_alike_on_every_instruction_set(shape, rows_unit):
    """One column times an int8 matrix: x quantized, integer sums, one scale per row; every kernel's
    output equals the reference's bit for bit (the sums are exact integers and the last step is one
    fused multiply-add everywhere), and is within int8's error of the float32 product."""
    rng = np.random.default_rng(shape[0])
    dense, matrix = random_sparse(rng, shape, (1, 1), 0.1)
    matrix = dataclasses.replace(matrix, rows_unit=rows_unit).to_int8()
    x = rng.standard_normal((shape[1], 1)).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    expected = reference.spmm(matrix, x, bias)
    exact = dense @ x + bias[:, None]
    assert np.abs(expected - exact).max() < 0.02 * np.abs(dense @ x).max()
    levels = kernels.isa_levels() if kernels.backend() == "c" else ()
    for level in levels:
        kernels.set_isa(level)
        try:
            fresh = dataclasses.replace(matrix)  # compiled anew for this instruction set
            np.testing.assert_array_equal(spmm(fresh, x, bias), expected, err_msg=kernels.int8_kernel())
        finally:
            kernels.set_isa(None)


def test_int8_products_of_several_columns_and_int8_recurrent_layers(isa):
    """A product of several columns is each column's own (quantized alone), bit for bit; 8x1 blocks of
    int8 values multiply their values in float32; a recurrent layer runs its products in int8 step by
    step as the reference does."""
    rng = np.random.default_rng(8)
    dense, matrix = random_sparse(rng, (96, 48), (1, 1), 0.2)
    matrix = matrix.to_int8()
    x = rng.standard_normal((48, 21)).astype(np.float32)
    wide = spmm(matrix, x)
    for n in (0, 5, 20):
        np.testing.assert_array_equal(wide[:, n:n + 1], spmm(matrix, np.ascontiguousarray(x[:, n:n + 1])))
    np.testing.assert_array_equal(wide, reference.spmm(matrix, x))
    _, blocks = random_sparse(rng, (96, 48), (8, 1), 0.2)
    blocks = blocks.to_int8()
    assert not blocks.runs_int8
    np.testing.assert_allclose(spmm(blocks, x), blocks.to_dense() @ x, rtol=1e-5, atol=1e-5)
    hidden = 32
    _, weight_hh = random_sparse(rng, (4 * hidden, hidden), (1, 1), 0.3)
    weight_hh = dataclasses.replace(weight_hh, rows_unit=hidden).to_int8()
    bias = rng.standard_normal(4 * hidden).astype(np.float32)
    xproj = rng.standard_normal((6, 4 * hidden, 1)).astype(np.float32)
    states = [[np.zeros((hidden, 1), np.float32) for _ in range(2)] for _ in range(2)]
    outs = [recurrent("lstm", weight_hh, bias, xproj, *states[0]),
            reference.recurrent("lstm", weight_hh, bias, xproj, *states[1])]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states[0][1], states[1][1], rtol=1e-5, atol=1e-6)


def test_the_compiled_matrix_refuses_int8_values_it_cannot_run():
    if kernels.backend() != "c":
        pytest.skip("no compiled kernels")
    matrix = SparseMatrix.from_dense(np.eye(16, dtype=np.float32)).to_int8()
    csr = (16, 16, 1, 1, 0, matrix.rowptr, matrix.index, matrix.values, 0, 0, 0, b"", b"", b"", b"")
    with pytest.raises(ValueError, match="int8 values"):
        kernels._compiled().matrix(*csr, matrix.int8[:-1], matrix.scales, 16)
    with pytest.raises(ValueError, match="scales"):
        kernels._compiled().matrix(*csr, matrix.int8, matrix.scales[:-1], 16)
    with pytest.raises(ValueError, match="CSR with uint16 indices"):
        kernels._compiled().matrix(16, 16, 2, 1, *csr[4:], matrix.int8, matrix.scales, 16)


def test_contiguous_copies_any_view_and_transposes_in_tiles_where_it_can():
    """Against numpy: every permutation of a 4-D array (axes of size 1 included), a strided view, and
    into a given array; the tiled transpose runs where the view regroups two row-major groups."""
    rng = np.random.default_rng(0)
    array = rng.random((7, 5, 1, 33), dtype=np.float32)
    tiled = 0
    for order in itertools.permutations(range(4)):
        view = array.transpose(order)
        got = kernels.contiguous(view)
        assert got.flags.c_contiguous and np.array_equal(got, view), order
        tiled += kernels._transposition(view) is not None
    assert tiled == 8  # (5 33 | 7) and (33 | 7 5), the axis of size 1 anywhere
    strided = rng.random((10, 6), dtype=np.float32)[:, ::2].T
    assert kernels._transposition(strided) is None and np.array_equal(kernels.contiguous(strided), strided)
    out = np.zeros((2, 33, 35), np.float32)
    kernels.contiguous(array.reshape(35, 33).T, out=out[1])
    assert np.array_equal(out[1], array.reshape(35, 33).T) and not out[0].any()
