/* Python bindings of sparsernn's compute core (runtime/src: kernels.h, the products, recurrent layers and
 * program operations that the C runtime runs too): compiled matrices, products, recurrent layers and
 * programs over buffers that sparsernn.kernels checks and holds.
 *
 * The Python side (sparsernn.kernels) validates index ranges once, when a matrix is built; here only
 * buffer sizes are checked (when a matrix or a program is compiled, and on every call), so a wrong call
 * raises instead of reading out of bounds. The GIL is released while computing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "layouts.h"

/* ---- Python bindings ---------------------------------------------------------------------------- */

static int check_len(const Py_buffer *b, Py_ssize_t need, const char *what) {
    if (b->len < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, needs %zd", what, b->len, need);
        return -1;
    }
    return 0;
}


/* The one-column copy's segments, and its groups in *groups: lanes 8, a group per 8 rows (a segment
 * each); lanes 16, ceil(sigma / 16) groups per window of sigma rows, a segment per group and slice. */
static Py_ssize_t one_column_segments(int rows, int cols, int sigma, int lanes, Py_ssize_t *groups) {
    *groups = lanes == 8 ? rows / 8 : (Py_ssize_t)(rows / sigma) * ((sigma + 15) / 16);
    return lanes == 8 ? *groups : *groups * sr_slices(cols);
}

/* Fills m from the buffers after checking their sizes against the shape and block shape. */
static int make_matrix(Matrix *m, int rows, int cols, int r, int c, int wide, Py_buffer *rowptr, Py_buffer *index,
                       Py_buffer *values, int lanes, int sigma, int bf16, Py_buffer *sell_ptr, Py_buffer *sell_order,
                       Py_buffer *sell_index, Py_buffer *sell_values, Py_buffer *q, Py_buffer *scale, long rows_unit,
                       void *owned[5]) {
    if (r < 1 || c < 1 || r > 64 || c > 64 || rows % r || cols % c) {
        PyErr_Format(PyExc_ValueError, "block %dx%d does not tile a %dx%d matrix", r, c, rows, cols);
        return -1;
    }
    const Py_ssize_t block_rows = rows / r;
    if (check_len(rowptr, (block_rows + 1) * 4, "rowptr")) return -1;
    const int32_t *ptr = rowptr->buf;
    const Py_ssize_t nblocks = ptr[block_rows];
    if (ptr[0] != 0 || nblocks < 0) {
        PyErr_SetString(PyExc_ValueError, "rowptr must start at 0 and end at the number of blocks");
        return -1;
    }
    if (check_len(index, nblocks * (wide ? 4 : 2), "index") ||
        check_len(values, nblocks * r * c * 4, "values"))
        return -1;
    *m = (Matrix){.rows = rows, .cols = cols, .r = r, .c = c, .wide = wide, .rowptr = ptr, .index = index->buf,
                  .values = values->buf};
    const int usable = sr_avx2() && (lanes == 8 || (lanes == 16 && sr_use_avx512())); /* else no copy is used */
    if (lanes && !usable) {
        PyErr_Format(PyExc_ValueError, "one-column copy with %d lanes: not built, or AVX-512 not run by this CPU or turned off", lanes);
        return -1;
    }
    if (usable) {
        if (r != 1 || c != 1 || wide || sigma < 8 || sigma % 8 || rows % sigma) {
            PyErr_Format(PyExc_ValueError, "one-column copy: window %d does not fit a %dx%d %dx%d matrix", sigma,
                         rows, cols, r, c);
            return -1;
        }
        Py_ssize_t groups;
        const Py_ssize_t segments = one_column_segments(rows, cols, sigma, lanes, &groups);
        if (check_len(sell_ptr, (segments + 1) * 4, "one-column ptr") ||
            check_len(sell_order, groups * lanes * 4, "one-column order"))
            return -1;
        const int32_t *sp = sell_ptr->buf;
        const Py_ssize_t slots = sp[segments];
        if (sp[0] != 0 || slots < 0 ||
            check_len(sell_index, slots * lanes * (lanes == 8 ? 2 : 1), "one-column index") ||
            check_len(sell_values, slots * lanes * (bf16 ? 2 : 4), "one-column values"))
            return -1;
        m->lanes = lanes, m->sigma = sigma, m->sell_bf16 = !!bf16, m->sell_ptr = sp, m->sell_order = sell_order->buf;
        m->sell_index = sell_index->buf, m->sell_values = sell_values->buf;
    }
    if (bf16 && !lanes && sell_values->len) { /* no copy: the block values in bfloat16 (R x 1 kernels) */
        if (check_len(sell_values, nblocks * r * c * 2, "bfloat16 values")) return -1;
        m->sell_bf16 = 1, m->sell_values = sell_values->buf;
    }
    if (q->len) { /* int8 values: the copy that the int8 kernel here reads (made here, in C) */
        if (r != 1 || c != 1 || wide || lanes || check_len(q, nblocks, "int8 values") ||
            check_len(scale, (Py_ssize_t)rows * 4, "scales") || rows_unit < 1 || rows % rows_unit) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "int8 values: CSR with uint16 indices only, no copy");
            return -1;
        }
        m->q = q->buf, m->scale = scale->buf;
        if (sr_int8_copy(m, rows_unit, owned) < 0) {
            PyErr_NoMemory();
            return -1;
        }
    }
    sr_matrix_kernels(m);
    return 0;
}

/* A compiled matrix: the Matrix with its kernels chosen, holding the buffers it points into; made once per
 * matrix and instruction set (sparsernn.kernels keeps it on the SparseMatrix), so that a call per token
 * parses no layout arguments. */
typedef struct {
    Matrix m;
    Py_buffer buffers[9];
    void *owned[5]; /* the quad copy of int8 values, made in C */
} Held;
static const char *const HELD = "sparsernn.kernels.Matrix";

static void held_free(PyObject *capsule) {
    Held *held = PyCapsule_GetPointer(capsule, HELD);
    for (int i = 0; i < 9; ++i) PyBuffer_Release(&held->buffers[i]);
    for (int i = 0; i < 5; ++i) free(held->owned[i]);
    free(held);
}

static PyObject *py_matrix(PyObject *self, PyObject *args) {
    (void)self;
    int rows, cols, r, c, wide, lanes, sigma, bf16;
    long rows_unit;
    Held *held = calloc(1, sizeof(Held));
    if (!held) return PyErr_NoMemory();
    Py_buffer *b = held->buffers;
    if (!PyArg_ParseTuple(args, "iiiiiy*y*y*iiiy*y*y*y*y*y*l", &rows, &cols, &r, &c, &wide, &b[0], &b[1], &b[2],
                          &lanes, &sigma, &bf16, &b[3], &b[4], &b[5], &b[6], &b[7], &b[8], &rows_unit)) {
        free(held); /* the parser released what it had taken */
        return NULL;
    }
    PyObject *capsule = NULL;
    if (!make_matrix(&held->m, rows, cols, r, c, wide, &b[0], &b[1], &b[2], lanes, sigma, bf16, &b[3], &b[4], &b[5],
                     &b[6], &b[7], &b[8], rows_unit, held->owned))
        capsule = PyCapsule_New(held, HELD, held_free);
    if (!capsule) {
        for (int i = 0; i < 9; ++i) PyBuffer_Release(&b[i]);
        for (int i = 0; i < 5; ++i) free(held->owned[i]);
        free(held);
    }
    return capsule;
}

static const Matrix *held_matrix(PyObject *capsule) {
    Held *held = PyCapsule_GetPointer(capsule, HELD); /* sets TypeError/ValueError for anything else */
    return held ? &held->m : NULL;
}

/* The buffers of Y = W X + bias over N columns, against m; -1 with an exception set. */
static int check_product(const Matrix *m, const Py_buffer *x, const Py_buffer *y, const Py_buffer *bias, long N) {
    if (check_len(x, (Py_ssize_t)m->cols * N * 4, "x") || check_len(y, (Py_ssize_t)m->rows * N * 4, "y") ||
        (bias->len && check_len(bias, (Py_ssize_t)m->rows * 4, "bias")))
        return -1;
    return 0;
}

/* A recurrent layer of `cell` with W_hh m over T steps of B columns: the shapes, then the buffers (c only
 * for LSTM); -1 with an exception set. */
static int check_recurrent(int cell, const Matrix *m, long T, long B, const Py_buffer *bias, const Py_buffer *xproj,
                           const Py_buffer *out, const Py_buffer *h, const Py_buffer *c) {
    const int G = cell < 0 || cell > 4 ? 0 : sr_cell_gates(cell);
    if (!G || m->rows != G * m->cols || m->cols % m->r || T < 0 || B < 1) {
        PyErr_Format(PyExc_ValueError, "recurrent: cell %d, W_hh %dx%d, block %dx%d, %ld steps of %ld columns do not "
                     "fit", cell, m->rows, m->cols, m->r, m->c, T, B);
        return -1;
    }
    const Py_ssize_t HB = (Py_ssize_t)m->cols * B;
    if (check_len(bias, (Py_ssize_t)m->rows * 4, "bias") || check_len(xproj, T * G * HB * 4, "xproj") ||
        check_len(out, T * HB * 4, "out") || check_len(h, HB * 4, "h") ||
        (cell == CELL_LSTM && check_len(c, HB * 4, "c")))
        return -1;
    return 0;
}

static PyObject *py_spmm(PyObject *self, PyObject *args) {
    (void)self;
    int threads;
    long N;
    PyObject *capsule;
    Py_buffer x, y, bias;
    if (!PyArg_ParseTuple(args, "Oy*w*y*li", &capsule, &x, &y, &bias, &N, &threads)) return NULL;
    PyObject *result = NULL;
    const Matrix *m = held_matrix(capsule);
    if (!m || check_product(m, &x, &y, &bias, N)) goto done;
    Py_BEGIN_ALLOW_THREADS;
    sr_product(m, x.buf, y.buf, N, bias.len ? bias.buf : NULL, threads);
    Py_END_ALLOW_THREADS;
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&x), PyBuffer_Release(&y), PyBuffer_Release(&bias);
    return result;
}

static PyObject *py_recurrent(PyObject *self, PyObject *args) {
    (void)self;
    int cell, reverse, threads;
    long T, B;
    PyObject *capsule;
    Py_buffer bias, xproj, out, h, cst;
    if (!PyArg_ParseTuple(args, "iOy*y*w*w*w*llii", &cell, &capsule, &bias, &xproj, &out, &h, &cst, &T, &B, &reverse,
                          &threads))
        return NULL;
    PyObject *result = NULL;
    const Matrix *m = held_matrix(capsule);
    if (!m || check_recurrent(cell, m, T, B, &bias, &xproj, &out, &h, &cst)) goto done;
    if (threads < 1) {
        PyErr_SetString(PyExc_ValueError, "recurrent: threads must be at least 1");
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = sr_recurrent(cell, m, bias.buf, xproj.buf, out.buf, h.buf, cell == CELL_LSTM ? cst.buf : NULL, T, B,
                          reverse, threads, NULL);
    Py_END_ALLOW_THREADS;
    if (status) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&bias), PyBuffer_Release(&xproj), PyBuffer_Release(&out), PyBuffer_Release(&h);
    PyBuffer_Release(&cst);
    return result;
}

/* A program: products, one-step recurrent layers, attention and tanh in a fixed order over fixed buffers,
 * run by one call (a streaming model's whole token: every layer and the output layer; a translation
 * decoder's step). Built once from a list of operations, each a tuple:
 *   (0, matrix, x, y, bias, n)                          y = W x + bias, x (cols, n), y (rows, n)
 *   (1, matrix, cell, bias_hh, xproj, out, h, c, n)     one step of a recurrent layer, xproj (G*H, n)
 *   (2, query, keys, memory, lengths, v, context, H, S, n)   attend(): query, context (H, n); keys, memory
 *                                                        (n, S, H); lengths int32 (n); v (H) or empty
 *   (3, x, y, count, fn)                                y = fn(x) over count values: tanh 0, relu 1, sigmoid 2
 *   (4, table, ids, y, rows, width, n)                  column b of y (width, n) = row ids[b] (int32) of table
 *   (5, x, y, weight, bias, groups, size, eps, n)       LayerNorm over groups of size features; weight, bias or empty
 *   (6, x, y, groups, size, log, n)                     softmax (log_softmax with log = 1) over groups of size
 *   (7, a, b, y, fn, count, b_count, inner)             y[i] = a[i] fn b[(i / inner) % b_count]: add 0, mul 1, sub 2, div 3
 *   (8, x, y, outer, length, x_stride, x_offset, y_stride, y_offset, n)   copy_features()
 *   (9, cell, xproj, gates, h, c, out, H, n)            a cell's equations on gates = W_hh h + b_hh computed before
 *                                                        (an LSTM with a projection): c updated, out (H, n) its output
 * The program holds the operations' objects and buffers until it is freed. */
enum { OP_PRODUCT = 0, OP_STEP = 1, OP_ATTEND = 2, OP_UNARY = 3, OP_GATHER = 4, OP_LAYER_NORM = 5, OP_SOFTMAX = 6,
       OP_BINARY = 7, OP_COPY = 8, OP_CELL = 9 };
enum { OP_BUFFERS = 6 }; /* the most buffers one operation holds */
typedef struct {
    int kind, cell, fn;
    const Matrix *m;
    const float *bias, *x; /* bias may be NULL for a product; x is xproj for a step, the query for attention */
    float *y, *h, *c;      /* y is out for a step, the context for attention; c NULL but for LSTM */
    const float *keys, *memory, *v; /* attention; v NULL for Luong's score; keys: a norm's weight, a cell's gates,
                                       a binary operation's b */
    const int32_t *lengths; /* attention's lengths, a gather's ids */
    float *scratch;         /* attention: 2 * H + S floats; a cell: H * n; the operation's own */
    long n, H, S;
    long size[6];           /* gather: rows, width; norm, softmax: groups, size; binary: count, b_count, inner;
                               copy: outer, length, x_stride, x_offset, y_stride, y_offset */
    float eps;
} Op;
typedef struct {
    int count, threads, held;
    Op *ops;
    Py_buffer *buffers; /* OP_BUFFERS per operation, `held` of them taken */
    PyObject *source;   /* the operations' tuples: they keep the compiled matrices alive */
} Program;
static const char *const PROGRAM = "sparsernn.kernels.Program";

static void program_free(PyObject *capsule) {
    Program *p = PyCapsule_GetPointer(capsule, PROGRAM);
    for (int i = 0; i < p->held; ++i) PyBuffer_Release(&p->buffers[i]);
    for (int i = 0; i < p->count; ++i) free(p->ops[i].scratch);
    Py_XDECREF(p->source);
    free(p->ops), free(p->buffers), free(p);
}

/* The attention operation's buffers against H, S and n; -1 with an exception set. */
static int check_attend(const Py_buffer *b, long H, long S, long n) {
    if (H < 1 || S < 1 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "attention: H, S and n must be positive");
        return -1;
    }
    if (check_len(&b[0], H * n * 4, "query") || check_len(&b[1], n * S * H * 4, "keys") ||
        check_len(&b[2], n * S * H * 4, "memory") || check_len(&b[3], n * 4, "lengths") ||
        check_len(&b[5], H * n * 4, "context"))
        return -1;
    return b[4].len ? check_len(&b[4], H * 4, "v") : 0;
}

static int positive(long value, const char *what) {
    if (value < 1) {
        PyErr_Format(PyExc_ValueError, "program: %s must be positive, got %ld", what, value);
        return -1;
    }
    return 0;
}

/* The operations without a matrix (3 to 8) from their tuples, buffers into b; -1 with an exception set. */
static int make_plain_op(Op *op, int kind, PyObject *item, Py_buffer *b, int *taken) {
    long *z = op->size, n = 1;
    if (kind == OP_UNARY) {
        if (!PyArg_ParseTuple(item, "iy*w*li", &kind, &b[0], &b[1], &z[0], &op->fn)) return -1;
        *taken = 2;
        if (z[0] < 0 || op->fn < 0 || op->fn > 2) {
            PyErr_SetString(PyExc_ValueError, "unary: the count must not be negative, the function 0 to 2");
            return -1;
        }
        if (check_len(&b[0], z[0] * 4, "x") || check_len(&b[1], z[0] * 4, "y")) return -1;
    } else if (kind == OP_GATHER) {
        if (!PyArg_ParseTuple(item, "iy*y*w*lll", &kind, &b[0], &b[1], &b[2], &z[0], &z[1], &n)) return -1;
        *taken = 3;
        if (positive(z[0], "rows") || positive(z[1], "width") || positive(n, "n") ||
            check_len(&b[0], z[0] * z[1] * 4, "table") || check_len(&b[1], n * 4, "ids") ||
            check_len(&b[2], z[1] * n * 4, "y"))
            return -1;
        op->keys = b[0].buf, op->lengths = b[1].buf, op->y = b[2].buf;
        op->n = n;
        return 0;
    } else if (kind == OP_LAYER_NORM) {
        double eps;
        if (!PyArg_ParseTuple(item, "iy*w*y*y*lldl", &kind, &b[0], &b[1], &b[2], &b[3], &z[0], &z[1], &eps, &n))
            return -1;
        *taken = 4;
        if (positive(z[0], "groups") || positive(z[1], "size") || positive(n, "n") ||
            check_len(&b[0], z[0] * z[1] * n * 4, "x") || check_len(&b[1], z[0] * z[1] * n * 4, "y") ||
            (b[2].len && check_len(&b[2], z[1] * 4, "weight")) || (b[3].len && check_len(&b[3], z[1] * 4, "bias")))
            return -1;
        op->keys = b[2].len ? b[2].buf : NULL, op->bias = b[3].len ? b[3].buf : NULL, op->eps = (float)eps;
    } else if (kind == OP_SOFTMAX) {
        if (!PyArg_ParseTuple(item, "iy*w*llil", &kind, &b[0], &b[1], &z[0], &z[1], &op->fn, &n)) return -1;
        *taken = 2;
        if (positive(z[0], "groups") || positive(z[1], "size") || positive(n, "n") ||
            check_len(&b[0], z[0] * z[1] * n * 4, "x") || check_len(&b[1], z[0] * z[1] * n * 4, "y"))
            return -1;
    } else if (kind == OP_BINARY) {
        if (!PyArg_ParseTuple(item, "iy*y*w*illl", &kind, &b[0], &b[2], &b[1], &op->fn, &z[0], &z[1], &z[2]))
            return -1;
        *taken = 3;
        if (op->fn < 0 || op->fn > 3) {
            PyErr_SetString(PyExc_ValueError, "binary: function must be 0 to 3");
            return -1;
        }
        if (positive(z[0], "count") || positive(z[1], "b_count") || positive(z[2], "inner") ||
            check_len(&b[0], z[0] * 4, "a") || check_len(&b[1], z[0] * 4, "y") || check_len(&b[2], z[1] * 4, "b"))
            return -1;
        op->keys = b[2].buf;
    } else { /* OP_COPY */
        if (!PyArg_ParseTuple(item, "iy*w*lllllll", &kind, &b[0], &b[1], &z[0], &z[1], &z[2], &z[3], &z[4], &z[5], &n))
            return -1;
        *taken = 2;
        if (positive(z[0], "outer") || positive(z[1], "length") || positive(n, "n") || z[2] < 0 || z[3] < 0 ||
            z[4] < 0 || z[5] < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "copy: strides and offsets must not be negative");
            return -1;
        }
        if (check_len(&b[0], ((z[0] - 1) * z[2] + z[3] + z[1]) * n * 4, "x") ||
            check_len(&b[1], ((z[0] - 1) * z[4] + z[5] + z[1]) * n * 4, "y"))
            return -1;
    }
    op->x = b[0].buf, op->y = b[1].buf, op->n = n;
    return 0;
}

/* Fills op from one operation tuple, taking its buffers into b (OP_BUFFERS slots; *taken says how many,
 * also when a later check fails); -1 with an exception set. */
static int make_op(Op *op, PyObject *item, Py_buffer *b, int *taken, int threads) {
    PyObject *capsule;
    long n, H = 0, S = 0;
    int kind = PyTuple_Check(item) && PyTuple_GET_SIZE(item) ? (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 0)) : -1;
    *op = (Op){.kind = kind};
    if (kind >= OP_UNARY && kind <= OP_COPY) return make_plain_op(op, kind, item, b, taken);
    if (kind == OP_PRODUCT) {
        if (!PyArg_ParseTuple(item, "iOy*w*y*l", &kind, &capsule, &b[0], &b[1], &b[2], &n)) return -1;
        *taken = 3;
    } else if (kind == OP_STEP) {
        if (!PyArg_ParseTuple(item, "iOiy*y*w*w*w*l", &kind, &capsule, &op->cell, &b[0], &b[1], &b[2], &b[3], &b[4], &n))
            return -1;
        *taken = 5;
    } else if (kind == OP_ATTEND) {
        if (!PyArg_ParseTuple(item, "iy*y*y*y*y*w*lll", &kind, &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &H, &S, &n))
            return -1;
        *taken = 6;
        if (check_attend(b, H, S, n)) return -1;
        *op = (Op){.kind = kind, .x = b[0].buf, .keys = b[1].buf, .memory = b[2].buf, .lengths = b[3].buf,
                   .v = b[4].len ? b[4].buf : NULL, .y = b[5].buf, .n = n, .H = H, .S = S,
                   .scratch = malloc(sizeof(float) * (size_t)(2 * H + S))};
        if (!op->scratch) {
            PyErr_NoMemory();
            return -1;
        }
        return 0;
    } else if (kind == OP_CELL) {
        if (!PyArg_ParseTuple(item, "iiy*y*y*w*w*ll", &kind, &op->cell, &b[0], &b[1], &b[2], &b[3], &b[4], &H, &n))
            return -1;
        *taken = 5;
        const int G = op->cell < 0 || op->cell > 4 ? 0 : sr_cell_gates(op->cell);
        if (!G || positive(H, "H") || positive(n, "n")) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "cell: unknown cell %d", op->cell);
            return -1;
        }
        if (check_len(&b[0], G * H * n * 4, "xproj") || check_len(&b[1], G * H * n * 4, "gates") ||
            check_len(&b[2], H * n * 4, "h") || (op->cell == CELL_LSTM && check_len(&b[3], H * n * 4, "c")) ||
            check_len(&b[4], H * n * 4, "out"))
            return -1;
        *op = (Op){.kind = kind, .cell = op->cell, .x = b[0].buf, .keys = b[1].buf, .h = b[2].buf,
                   .c = op->cell == CELL_LSTM ? b[3].buf : NULL, .y = b[4].buf, .H = H, .n = n,
                   .scratch = malloc(sizeof(float) * (size_t)(H * n))};
        if (!op->scratch) {
            PyErr_NoMemory();
            return -1;
        }
        return 0;
    } else {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "program: an operation is (0, ...) to (9, ...)");
        return -1;
    }
    const Matrix *m = held_matrix(capsule);
    if (!m) return -1;
    *op = (Op){.kind = kind, .cell = op->cell, .m = m, .n = n};
    if (kind == OP_PRODUCT) {
        if (check_product(m, &b[0], &b[1], &b[2], n)) return -1;
        op->x = b[0].buf, op->y = b[1].buf, op->bias = b[2].len ? b[2].buf : NULL;
        return 0;
    }
    if (check_recurrent(op->cell, m, 1, n, &b[0], &b[1], &b[2], &b[3], &b[4])) return -1;
    op->bias = b[0].buf, op->x = b[1].buf, op->y = b[2].buf, op->h = b[3].buf;
    op->c = op->cell == CELL_LSTM ? b[4].buf : NULL;
    op->scratch = malloc(sr_recurrent_scratch(op->cell, m->cols, n, threads)); /* none allocated per step */
    if (!op->scratch) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *py_program(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *list;
    int threads;
    if (!PyArg_ParseTuple(args, "O!i", &PyList_Type, &list, &threads)) return NULL;
    const int count = (int)PyList_GET_SIZE(list);
    Program *p = calloc(1, sizeof(Program));
    if (p) p->ops = calloc((size_t)count + 1, sizeof(Op)), p->buffers = calloc((size_t)count * OP_BUFFERS + 1, sizeof(Py_buffer));
    if (!p || !p->ops || !p->buffers) {
        if (p) free(p->ops), free(p->buffers), free(p);
        return PyErr_NoMemory();
    }
    p->count = count, p->threads = threads < 1 ? 1 : threads;
    p->source = PyList_AsTuple(list);
    PyObject *capsule = NULL;
    for (int i = 0; p->source && i < count; ++i) {
        int taken = 0;
        const int status = make_op(&p->ops[i], PyTuple_GET_ITEM(p->source, i), p->buffers + p->held, &taken, p->threads);
        p->held += taken; /* what the parser took (nothing when it failed) */
        if (status) goto fail;
    }
    if (p->source) capsule = PyCapsule_New(p, PROGRAM, program_free);
    if (capsule) return capsule;
fail:
    for (int i = 0; i < p->held; ++i) PyBuffer_Release(&p->buffers[i]);
    for (int i = 0; i < count; ++i) free(p->ops[i].scratch);
    Py_XDECREF(p->source);
    free(p->ops), free(p->buffers), free(p);
    return NULL;
}

/* Every operation of p in order; 0, 2 for an id outside its table, -1 out of memory. */
static int run_program(const Program *p) {
    int status = 0;
    for (int i = 0; i < p->count && !status; ++i) {
        const Op *op = &p->ops[i];
        const long *z = op->size;
        switch (op->kind) {
        case OP_PRODUCT: sr_product(op->m, op->x, op->y, op->n, op->bias, p->threads); break;
        case OP_STEP:
            status = sr_recurrent(op->cell, op->m, op->bias, op->x, op->y, op->h, op->c, 1, op->n, 0, p->threads,
                                  op->scratch);
            break;
        case OP_ATTEND:
            sr_attend(op->x, op->keys, op->memory, op->lengths, op->v, op->y, op->H, op->S, op->n, op->scratch);
            break;
        case OP_UNARY: sr_unary(op->fn, op->x, op->y, z[0]); break;
        case OP_GATHER: status = sr_gather(op->keys, z[0], z[1], op->lengths, op->y, op->n) ? 2 : 0; break;
        case OP_LAYER_NORM: sr_layer_norm(op->x, op->y, op->keys, op->bias, z[0], z[1], op->eps, op->n); break;
        case OP_SOFTMAX: sr_softmax(op->x, op->y, z[0], z[1], op->fn, op->n); break;
        case OP_BINARY: sr_binary(op->fn, op->x, op->keys, op->y, z[0], z[1], z[2]); break;
        case OP_COPY: sr_copy_features(op->x, op->y, z[0], z[1], z[2], z[3], z[4], z[5], op->n); break;
        case OP_CELL:
            sr_pointwise(op->cell, op->H, op->n, 0, op->H * op->n, op->x, op->keys, op->h, op->scratch, op->c, op->y);
            break;
        }
    }
    return status;
}

/* run_program's status as a Python exception: -1 with one set, else 0. */
static int program_error(int status) {
    if (status == 2) PyErr_SetString(PyExc_IndexError, "program: an id is outside its embedding table");
    else if (status) PyErr_NoMemory();
    return status ? -1 : 0;
}

static PyObject *py_run(PyObject *self, PyObject *capsule) {
    (void)self;
    Program *p = PyCapsule_GetPointer(capsule, PROGRAM);
    if (!p) return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = run_program(p);
    Py_END_ALLOW_THREADS;
    if (program_error(status)) return NULL;
    Py_RETURN_NONE;
}

/* step(program, inputs, outputs): a streamed step of one column in one call. inputs: (source, buffer) pairs,
 * each source copied into its buffer (int64 ids narrowed to an int32 buffer, an id beyond int32 becoming -1,
 * which the gather refuses); the program run; returns a copy of each of the outputs (numpy arrays). */
static PyObject *py_step(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *capsule, *inputs, *outputs;
    if (!PyArg_ParseTuple(args, "OO!O!", &capsule, &PyList_Type, &inputs, &PyList_Type, &outputs)) return NULL;
    Program *p = PyCapsule_GetPointer(capsule, PROGRAM);
    if (!p) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(inputs); ++i) {
        Py_buffer source, target;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(inputs, i), "y*w*", &source, &target)) return NULL;
        int ok = 1;
        if (source.len == target.len) {
            memcpy(target.buf, source.buf, (size_t)source.len);
        } else if (source.len == 2 * target.len && target.len % 4 == 0) { /* int64 ids into int32 */
            const int64_t *from = source.buf;
            int32_t *to = target.buf;
            for (Py_ssize_t k = 0; k < target.len / 4; ++k)
                to[k] = from[k] >= INT32_MIN && from[k] <= INT32_MAX ? (int32_t)from[k] : -1;
        } else {
            ok = 0;
        }
        PyBuffer_Release(&source), PyBuffer_Release(&target);
        if (!ok) {
            PyErr_SetString(PyExc_ValueError, "step: an input does not fit its buffer");
            return NULL;
        }
    }
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = run_program(p);
    Py_END_ALLOW_THREADS;
    if (program_error(status)) return NULL;
    PyObject *result = PyList_New(PyList_GET_SIZE(outputs));
    for (Py_ssize_t i = 0; result && i < PyList_GET_SIZE(outputs); ++i) {
        PyObject *copy = PyObject_CallMethod(PyList_GET_ITEM(outputs, i), "copy", NULL);
        if (!copy) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, copy);
    }
    return result;
}

/* one_column(rows, cols, rowptr, index, values, lanes, rows_unit, bf16): the one-column copy of a CSR
 * matrix with uint16 indices (layouts.c, as the C runtime builds it) as (sigma, ptr, order, index, values),
 * each array as bytes; None where it has none. */
static PyObject *py_one_column(PyObject *self, PyObject *args) {
    (void)self;
    int rows, cols, lanes, bf16;
    long unit;
    Py_buffer rowptr, index, values;
    if (!PyArg_ParseTuple(args, "iiy*y*y*ili", &rows, &cols, &rowptr, &index, &values, &lanes, &unit, &bf16))
        return NULL;
    PyObject *result = NULL;
    if (rows < 1 || cols < 1 || cols > 65536 || check_len(&rowptr, ((Py_ssize_t)rows + 1) * 4, "rowptr")) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "one_column: bad shape");
        goto done;
    }
    const int32_t *ptr = rowptr.buf;
    if (ptr[0] != 0 || check_len(&index, (Py_ssize_t)ptr[rows] * 2, "index") ||
        check_len(&values, (Py_ssize_t)ptr[rows] * 4, "values")) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "one_column: rowptr must start at 0");
        goto done;
    }
    Matrix m = {.rows = rows, .cols = cols, .r = 1, .c = 1, .rowptr = ptr, .index = index.buf, .values = values.buf};
    void *owned[4];
    const int made = sr_one_column_copy(&m, unit, lanes, bf16, owned);
    if (made < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (!made) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    Py_ssize_t groups;
    const Py_ssize_t segments = one_column_segments(rows, cols, m.sigma, lanes, &groups);
    const Py_ssize_t slots = m.sell_ptr[segments];
    result = Py_BuildValue("iy#y#y#y#", m.sigma, (const char *)m.sell_ptr, (segments + 1) * 4,
                           (const char *)m.sell_order, groups * lanes * 4, (const char *)m.sell_index,
                           slots * lanes * (lanes == 8 ? 2 : 1), (const char *)m.sell_values,
                           slots * lanes * (bf16 ? 2 : 4));
    for (int i = 0; i < 4; ++i) free(owned[i]);
done:
    PyBuffer_Release(&rowptr), PyBuffer_Release(&index), PyBuffer_Release(&values);
    return result;
}

/* transpose(x, y, rows, columns): y (columns, rows) = x (rows, columns) transposed, both float32 row-major. */
static PyObject *py_transpose(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, y;
    long rows, columns;
    if (!PyArg_ParseTuple(args, "y*w*ll", &x, &y, &rows, &columns)) return NULL;
    PyObject *result = NULL;
    if (rows < 0 || columns < 0 || check_len(&x, (Py_ssize_t)rows * columns * 4, "x") ||
        check_len(&y, (Py_ssize_t)rows * columns * 4, "y"))
        goto done;
    Py_BEGIN_ALLOW_THREADS;
    sr_transpose(x.buf, y.buf, rows, columns, rows);
    Py_END_ALLOW_THREADS;
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&x), PyBuffer_Release(&y);
    return result;
}

static PyObject *py_int8_kernel(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    return PyUnicode_FromString(sr_int8_kernel());
}

static PyObject *py_set_avx512(PyObject *self, PyObject *args) {
    (void)self;
    int flag;
    if (!PyArg_ParseTuple(args, "p", &flag)) return NULL;
    if (sr_set_avx512(flag)) {
        PyErr_SetString(PyExc_ValueError, "this CPU does not run AVX-512F (or the kernels were built without AVX2)");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"set_avx512", py_set_avx512, METH_VARARGS, "set_avx512(flag): allow the AVX-512 kernels or not"},
    {"matrix", py_matrix, METH_VARARGS,
     "matrix(rows, cols, r, c, wide, rowptr, index, values, lanes, sigma, bf16, sell_ptr, sell_order, sell_index, "
     "sell_values, q, scales, rows_unit): the compiled matrix (a capsule holding the buffers), kernels chosen for "
     "the instruction set allowed now; q (int8, or empty) and scales: int8 values"},
    {"int8_kernel", py_int8_kernel, METH_NOARGS, "int8_kernel(): the int8 one-column kernel that runs now: 'vnni', "
     "'avx2', 'dotprod' or 'portable'"},
    {"spmm", py_spmm, METH_VARARGS, "spmm(matrix, x, y, bias, n, threads): y = W x + bias"},
    {"transpose", py_transpose, METH_VARARGS, "transpose(x, y, rows, columns): y = x.T, float32 row-major"},
    {"recurrent", py_recurrent, METH_VARARGS, "recurrent(cell, matrix, bias_hh, xproj, out, h, c, T, B, reverse, threads)"},
    {"program", py_program, METH_VARARGS,
     "program(operations, threads): products (0, matrix, x, y, bias, n), one-step layers "
     "(1, matrix, cell, bias_hh, xproj, out, h, c, n), attention (2, query, keys, memory, lengths, v, context, H, S, "
     "n), unary functions, gathers, norms, softmax, elementwise arithmetic, copies and cells (3 to 9: see the "
     "comment above Op), compiled to run in order by run(program)"},
    {"run", py_run, METH_O, "run(program): every operation of the program, in order"},
    {"one_column", py_one_column, METH_VARARGS, "one_column(rows, cols, rowptr, index, values, lanes, rows_unit, "
     "bf16): a CSR matrix's one-column copy (sigma, ptr, order, index, values as bytes), or None"},
    {"step", py_step, METH_VARARGS, "step(program, [(source, buffer), ...], [output, ...]): inputs copied into the "
     "program's buffers, the program run, copies of the outputs returned"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "sparsernn compiled kernels", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
    PyObject *mod = PyModule_Create(&module);
    if (!mod) return NULL;
    PyModule_AddIntConstant(mod, "avx2", sr_avx2());
    PyModule_AddIntConstant(mod, "avx512", sr_avx2() && sr_use_avx512()); /* SPARSERNN_ISA=avx2: off */
    PyModule_AddIntConstant(mod, "NARROW_COLUMNS", SLICE_NARROW_COLUMNS);
    PyModule_AddIntConstant(mod, "openmp", sr_openmp());
    return mod;
}
