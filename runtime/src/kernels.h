/* sparsernn's compute core, shared by the C runtime (libsparsernn) and the Python extension
 * (sparsernn.kernels._kernels): block-sparse products, recurrent layers with fused gates, and the other
 * operations of a model's program. No Python, no allocation but where a function says so.
 *
 * Layouts (all float32, C order, feature-major: a vector of F features for N columns is (F, N)):
 *   matrix  rows x cols in r x c blocks: rowptr[rows/r + 1] (int32), index[nblocks] (uint16 or int32
 *           block-column numbers), values[nblocks * r * c] (row-major inside a block).
 *   product X is (cols, N), Y is (rows, N): Y = W X (+ bias per row).
 *   recurrent  xproj (T, G*H, B): input projections incl. b_ih; out (T, H, B); h, c (H, B) in/out.
 *   one-column copy  optional second copy of an unstructured uint16 matrix for products with one
 *           column, in one of two layouts (lanes = 0: none):
 *     lanes 8, interleaved (SELL-8-sigma, AVX2): rows sorted by length within windows of sigma rows,
 *           then taken 8 at a time; group g holds slots [ptr[g], ptr[g+1]), slot s the s-th non-zero of
 *           each of its 8 rows (lanes) in values[8s..8s+8] and index[8s..8s+8] (uint16; zero value,
 *           index 0 past a row's end), and lane l computes row order[8g + l].
 *     lanes 16, sliced (AVX-512): columns in slices of sr_slice_width(cols); each window of sigma rows,
 *           sorted by the rows' non-zeros in each slice (most first, slice by slice, then by row), split
 *           into ceil(sigma/16) groups of 16 rows (lane l of group g computes row order[16g + l], -1 for
 *           a lane past the window); segment (g, j) = group g's non-zeros in slice j,
 *           slots [ptr[g*S + j], ptr[g*S + j + 1]) with S slices, slot s the k-th non-zero in the slice of
 *           each lane's row: values[16s..16s+16], index[16s..16s+16] (uint8 column within the slice).
 *     With int8 values (sell_int8), lanes 8 is the interleaved layout with int8 values (AVX2), and lanes 16
 *     quad (the VNNI and NEON dotprod kernels): the sliced layout of 16 lanes, slices of QUAD_SLICE
 *           (64) columns and every segment a multiple of 4 slots, slots in fours: slot s of lane l at
 *           byte 64 (s / 4) + 4 l + s % 4 of sell_values (int8 q) and of sell_index (uint8 column within
 *           the slice), so that one 64-byte load holds 4 consecutive slots of all 16 lanes, a dot product
 *           of 4 per lane.
 *     Either layout's values are float32 or, with bf16 = 1, bfloat16 (the upper 16 bits of the float32,
 *           uint16): the kernels widen them in registers and read half the value bytes. With bf16 = 1
 *           and no copy (lanes = 0), sell_values holds the matrix's block values in bfloat16, which
 *           the one-column kernels of 8x1 and 16x1 blocks read instead of values.
 *
 * Callers check every size and index before a matrix is made (sr_matrix_check, the file reader, the
 * Python binding); the kernels trust them.
 */
#ifndef SPARSERNN_KERNELS_H
#define SPARSERNN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Columns in a slice of an unstructured matrix's sliced one-column copy (sparsernn.kernels.slice_width):
 * 32 (one lookup a slot: faster where the product is bound by its shuffles, as a small model's are) for
 * at most 256 columns, 64 (two lookups and a blend, but fewer padding slots: fewer bytes, which bound a
 * large model's products) above; benchmarks/probes/slice_width_probe.py. */
#define SLICE_NARROW_COLUMNS 256
static inline int sr_slice_width(long cols) { return cols <= SLICE_NARROW_COLUMNS ? 32 : 64; }
/* Slices of the sliced copy of a matrix with cols columns. */
static inline long sr_slices(long cols) { return (cols + sr_slice_width(cols) - 1) / sr_slice_width(cols); }
/* The largest window of rows a one-column copy sorts its rows in (sparsernn.kernels.most_window): an
 * eighth of rows_unit (a thread's share stays whole windows for up to 8 threads), at least 64, at most
 * 512, a multiple of 8. */
static inline int sr_most_window(long rows_unit) {
    const long most = rows_unit / 8 < 64 ? 64 : rows_unit / 8 > 512 ? 512 : rows_unit / 8;
    return (int)(most / 8 * 8);
}
#define QUAD_SLICE 64 /* columns in a slice of the quad copy (int8: 64 bytes of x in one register) */
#define NSHAPES 9 /* block shapes with kernels: 1x1, 4x1, 8x1, 16x1, 1x4, 1x8, 1x16, 4x4, 8x8 (kernels.c) */

typedef struct Matrix Matrix;
/* Block rows [br0, br1) of Y = W X + bias for a fixed number of columns (X row stride ldx, Y row stride ldy). */
typedef void kernel(const Matrix *, int, int, const float *, long, float *, long, const float *);
typedef kernel *kernel_fn;

struct Matrix {
    int rows, cols, r, c, wide; /* wide: int32 block-column indices, else uint16 */
    const int32_t *rowptr;
    const void *index;
    const float *values;
    kernel_fn by_width[3]; /* for 16, 4 and 1 columns, chosen by sr_matrix_kernels (NULL: generic) */
    int lanes, sigma;      /* the one-column copy's layout (8, 16; 0: none) and window */
    int sell_bf16;         /* sell_values are bfloat16 (uint16), else float32; without a copy (lanes 0)
                              they are the block values in bfloat16, for the R x 1 one-column kernels */
    const int32_t *sell_ptr, *sell_order;
    const void *sell_index;
    const void *sell_values;
    /* int8 values of a CSR matrix with uint16 indices (NULL: none): q[nnz] and scale[rows]; values may
     * then be NULL (no kernel reads them). Products run one column at a time, each quantized
     * (sr_quantize), the products q * xq summed in int32 (sr_int8_rows), so that any batch computes what
     * one column does; with sell_int8 the one-column copy holds int8 values (lanes 16: the quad copy)
     * and qsum[rows] each row's sum of q. */
    const int8_t *q;
    const float *scale;
    const int32_t *qsum;
    int sell_int8;
};

enum { CELL_TANH = 0, CELL_RELU = 1, CELL_GRU = 2, CELL_LSTM = 3, CELL_CLIPPED_RELU = 4 };
enum { UNARY_TANH = 0, UNARY_RELU = 1, UNARY_SIGMOID = 2 };
enum { BINARY_ADD = 0, BINARY_MUL = 1, BINARY_SUB = 2, BINARY_DIV = 3 };

/* ---- instruction sets (kernels.c) ---- */
int sr_avx2(void);              /* built with AVX2 (-march on an AVX2 machine) */
int sr_cpu_avx512(void);        /* the CPU (and OS) run AVX-512F, found at the first call */
int sr_set_avx512(int allowed); /* allow the AVX-512 kernels or not; -1 if asked where the CPU lacks them */
int sr_use_avx512(void);
int sr_openmp(void);            /* built with OpenMP threads */

/* ---- products and recurrent layers (kernels.c) ---- */
/* Chooses m's kernels for 16, 4 and 1 columns, by its layout and the instruction sets allowed now. */
void sr_matrix_kernels(Matrix *m);
/* Y = W X + bias over N columns, the block rows split among threads on whole windows. */
void sr_product(const Matrix *m, const float *X, float *Y, long N, const float *bias, int threads);
int sr_cell_gates(int cell);
/* Bytes of scratch sr_recurrent needs for these sizes. */
size_t sr_recurrent_scratch(int cell, long H, long B, int threads);
/* One layer and direction over T steps, in place on h (and c); scratch: sr_recurrent_scratch bytes, or
 * NULL to allocate it here (then -1 when out of memory). */
int sr_recurrent(int cell, const Matrix *m, const float *bias, const float *xproj, float *out, float *h, float *c,
                 long T, long B, int reverse, int threads, void *scratch);

/* ---- int8 products with one column (kernels.c) ---- */
/* x (n values, stride apart) quantized symmetrically into q[0, n), zeros up to q[padded): q[i] =
 * round(x[i] * 127 / max |x|) and *scale = max |x| / 127 (0 when x is 0). Every kernel quantizes with this
 * one function, so their int32 sums are equal and so are their outputs. */
void sr_quantize(const float *x, long stride, long n, long padded, int8_t *q, float *scale);
/* The rows of group g of m's one-column copy (`lanes` rows a group) from their int32 sums less `offset`
 * times each row's sum of q: fmaf(sum, row scale * x scale, bias), as every int8 kernel writes a row. */
void sr_int8_rows(const Matrix *m, int g, int lanes, const int32_t *sums, int32_t offset, float x_scale, float *Y,
                  long ldy, const float *bias);
/* The int8 one-column kernel that runs here now: "vnni" (the quad copy; AVX-512 VNNI and VBMI, AVX-512
 * allowed), "avx2" (the interleaved copy), "dotprod" (the quad copy; aarch64 with the dot product
 * instructions), else "portable" (CSR); and the lanes of the copy it reads (0: none). */
const char *sr_int8_kernel(void);
int sr_int8_lanes(void);
/* The portable int8 kernel (CSR, one column). */
kernel sr_int8_csr;

/* ---- the kernels of each instruction set, for the dispatch in kernels.c ---- */
/* The portable kernel of m's shape for 16, 4 or 1 columns (nn_slot 0, 1, 2), or the generic one: what an
 * instruction set's kernel falls back to (a strided column). */
kernel_fn sr_portable_kernel(const Matrix *m, int nn_slot);
/* A tile's `width` columns of X side by side, in a buffer the caller frees; NULL, with X and ldx unchanged,
 * where they already are side by side or no memory was free. */
float *sr_pack_tile(const Matrix *m, const float **X, long *ldx, int width);
#ifdef __AVX2__
/* kernels_avx2.c and kernels_avx512.c: the kernel for this shape (shape_table index) and width, or NULL */
kernel_fn sr_avx2_kernel(const Matrix *m, int nn_slot, int shape);
kernel_fn sr_avx512_kernel(const Matrix *m, int nn_slot, int shape);
/* The int8 kernels of the quad copy (AVX-512 VNNI and VBMI) and of the interleaved copy (AVX2), run where
 * sr_int8_kernel names them; the CSR kernel that gathers x eight values at a time. */
kernel sr_avx512_int8_quad, sr_avx2_int8_interleaved, sr_avx2_csr_gather_u16;
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
/* ---- aarch64 (kernels_neon.c): one-column products of CSR and of 8x1 / 16x1 blocks, and the int8 kernel
 * of the quad copy (the dot product instructions of Armv8.2, run where sr_int8_kernel names it) ---- */
kernel sr_neon_csr_u16, sr_neon_column_blocks, sr_neon_int8_quad;
#endif

/* ---- the other operations (ops.c) ---- */
/* A cell's equations on units q in [q0, q1) (q = j * B + b): gates = W_hh h + b_hh (G*H, B), x = xproj[t];
 * h_next, c and out (H, B) written. */
void sr_pointwise(int cell, long H, long B, long q0, long q1, const float *x, const float *gates, const float *h,
                  float *h_next, float *c, float *out);
void sr_attend(const float *q, const float *keys, const float *memory, const int32_t *lengths, const float *v,
               float *context, long H, long S, long B, float *scratch);
void sr_unary(int fn, const float *x, float *y, long count);
int sr_gather(const float *table, long rows, long width, const int32_t *ids, float *y, long n);
void sr_layer_norm(const float *x, float *y, const float *weight, const float *bias, long groups, long size,
                   float eps, long n);
void sr_softmax(const float *x, float *y, long groups, long size, int log, long n);
void sr_binary(int fn, const float *a, const float *b, float *y, long count, long b_count, long inner);
void sr_copy_features(const float *x, float *y, long outer, long length, long x_stride, long x_offset,
                      long y_stride, long y_offset, long n);
void sr_transpose(const float *x, float *y, long rows, long columns, long y_stride);

#endif
