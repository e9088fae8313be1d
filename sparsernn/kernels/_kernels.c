/* Compiled kernels for sparsernn: block-sparse (CSR = 1x1 blocks) times dense, and whole-sequence
 * recurrent layers (RNN, GRU, LSTM) with the gates fused, one call per layer and direction.
 *
 * Layouts (all float32, C order):
 *   matrix  rows x cols in r x c blocks: rowptr[rows/r + 1] (int32), index[nblocks] (uint16 or int32
 *           block-column numbers), values[nblocks * r * c] (row-major inside a block).
 *   spmm    X is (cols, N), Y is (rows, N): Y = W X (+ bias per row). Feature-major, so the N columns
 *           of one input feature sit together and the products vectorize over N.
 *   recurrent  xproj (T, G*H, B): input projections incl. b_ih; out (T, H, B); h, c (H, B) in/out.
 *   program  products and one-step recurrent layers over fixed buffers, run in order by one call.
 *   one-column copy  optional second copy of an unstructured uint16 matrix for products with one
 *           column, in one of two layouts (lanes = 0: none):
 *     lanes 8, interleaved (SELL-8-sigma, AVX2): rows sorted by length within windows of sigma rows,
 *           then taken 8 at a time; group g holds slots [ptr[g], ptr[g+1]), slot s the s-th non-zero of
 *           each of its 8 rows (lanes) in values[8s..8s+8] and index[8s..8s+8] (uint16; zero value,
 *           index 0 past a row's end), and lane l computes row order[8g + l].
 *     lanes 16, sliced (AVX-512): columns in slices of SLICE (64); each window of sigma rows, sorted by
 *           length, split into ceil(sigma/16) groups of 16 rows (lane l of group g computes row
 *           order[16g + l], -1 for a lane past the window); segment (g, j) = group g's non-zeros in slice j, slots
 *           [ptr[g*S + j], ptr[g*S + j + 1]) with S slices, slot s the k-th non-zero in the slice of
 *           each lane's row: values[16s..16s+16], index[16s..16s+16] (uint8 column within the slice).
 *     Either layout's values are float32 or, with bf16 = 1, bfloat16 (the upper 16 bits of the float32,
 *           uint16): the kernels widen them in registers and read half the value bytes. With bf16 = 1
 *           and no copy (lanes = 0), sell_values holds the matrix's block values in bfloat16, which
 *           the one-column kernels of 8x1 and 16x1 blocks read instead of values.
 *
 * The Python side (sparsernn.kernels) validates index ranges once, when a matrix is built; here only
 * buffer sizes are checked (when a matrix or a program is compiled, and on every call), so a wrong call
 * raises instead of reading out of bounds.
 * The GIL is released while computing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __AVX2__
#include <immintrin.h>
#endif
#define SLICE 64 /* columns in a slice of the sliced one-column copy; sparsernn.kernels.SLICE */

typedef struct Matrix Matrix;
static int cpu_avx512 = 0; /* the CPU (and OS) run AVX-512F: found at import */
static int use_avx512 = 0; /* the AVX-512 kernels may run (set_avx512; at import: cpu_avx512) */
/* Block rows [br0, br1) of Y = W X + bias for a fixed number of columns (X row stride ldx, Y row stride ldy). */
typedef void (*kernel_fn)(const Matrix *, int, int, const float *, long, float *, long, const float *);

struct Matrix {
    int rows, cols, r, c, wide; /* wide: int32 block-column indices, else uint16 */
    const int32_t *rowptr;
    const void *index;
    const float *values;
    kernel_fn by_width[3]; /* for 16, 4 and 1 columns, chosen when compiled (NULL: generic_kernel) */
    int lanes, sigma;      /* the one-column copy's layout (8, 16; 0: none) and window */
    int sell_bf16;         /* sell_values are bfloat16 (uint16), else float32; without a copy (lanes 0)
                              they are the block values in bfloat16, for the R x 1 one-column kernels */
    const int32_t *sell_ptr, *sell_order;
    const void *sell_index;
    const void *sell_values;
};

/* ---- block rows [br0, br1) of Y = W X + bias, for N columns (X row stride ldx, Y row stride ldy) ---- */

/* Each FMA chain waits ~4 cycles for the previous result, so U blocks go to U separate accumulators
 * (U * R * NN >= 32 floats in flight). With one column (NN == 1) the C products of a block also stay
 * in separate lanes until the row ends, so 1xC blocks vectorize without reassociating sums. */
#define UNROLLED _Pragma("GCC unroll 64")
#define UNROLL(W) ((W) >= 32 ? 1 : (32 / (W)) > 8 ? 8 : 32 / (W))

#define BLOCKS_ONE_COLUMN(R, C, IDX, LDX)                                                       \
    {                                                                                           \
        enum { U = UNROLL((R) * (C)) };                                                         \
        float acc[U][(R) * (C)];                                                                \
        memset(acc, 0, sizeof acc);                                                             \
        int32_t k = m->rowptr[br];                                                              \
        const int32_t end = m->rowptr[br + 1];                                                  \
        for (; k + U <= end; k += U)                                                            \
            UNROLLED for (int u = 0; u < U; ++u) {                                                  \
                const float *v = m->values + (size_t)(k + u) * ((R) * (C));                     \
                const float *x = X + (size_t)index[k + u] * (C) * (LDX);                        \
                UNROLLED for (int i = 0; i < (R); ++i)                                              \
                    UNROLLED for (int j = 0; j < (C); ++j) acc[u][i * (C) + j] += v[i * (C) + j] * x[j * (LDX)]; \
            }                                                                                   \
        for (; k < end; ++k) {                                                                  \
            const float *v = m->values + (size_t)k * ((R) * (C));                               \
            const float *x = X + (size_t)index[k] * (C) * (LDX);                                \
            UNROLLED for (int i = 0; i < (R); ++i)                                                  \
                UNROLLED for (int j = 0; j < (C); ++j) acc[0][i * (C) + j] += v[i * (C) + j] * x[j * (LDX)]; \
        }                                                                                       \
        UNROLLED for (int i = 0; i < (R); ++i) {                                                    \
            float sum = bias ? bias[br * (R) + i] : 0.0f;                                       \
            UNROLLED for (int u = 0; u < U; ++u)                                                    \
                UNROLLED for (int j = 0; j < (C); ++j) sum += acc[u][i * (C) + j];                  \
            Y[(size_t)(br * (R) + i) * ldy] = sum;                                              \
        }                                                                                       \
    }

#define KERNEL_1(NAME, R, C, IDX)                                                               \
    static void NAME(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy, \
                     const float *bias) {                                                       \
        const IDX *index = (const IDX *)m->index;                                               \
        for (int br = br0; br < br1; ++br) {                                                    \
            if (ldx == 1)                                                                       \
                BLOCKS_ONE_COLUMN(R, C, IDX, 1)                                                 \
            else                                                                                \
                BLOCKS_ONE_COLUMN(R, C, IDX, ldx)                                               \
        }                                                                                       \
    }

/* NN columns at once: the NN products of one weight vectorize. */
#define KERNEL_N(NAME, R, C, NN, IDX)                                                           \
    static void NAME(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy, \
                     const float *bias) {                                                       \
        enum { U = UNROLL((R) * (NN)) };                                                        \
        const IDX *index = (const IDX *)m->index;                                               \
        for (int br = br0; br < br1; ++br) {                                                    \
            float acc[U][(R) * (NN)];                                                           \
            memset(acc, 0, sizeof acc);                                                         \
            int32_t k = m->rowptr[br];                                                          \
            const int32_t end = m->rowptr[br + 1];                                              \
            for (; k < end; k += U)                                                             \
                for (int u = 0; u < U && k + u < end; ++u) {                                    \
                    const float *v = m->values + (size_t)(k + u) * ((R) * (C));                 \
                    const float *x = X + (size_t)index[k + u] * (C) * ldx;                      \
                    UNROLLED for (int i = 0; i < (R); ++i)                                          \
                        UNROLLED for (int j = 0; j < (C); ++j) {                                    \
                            const float w = v[i * (C) + j];                                     \
                            UNROLLED for (int n = 0; n < (NN); ++n) acc[u][i * (NN) + n] += w * x[j * ldx + n]; \
                        }                                                                       \
                }                                                                               \
            UNROLLED for (int i = 0; i < (R); ++i) {                                                \
                const float b = bias ? bias[br * (R) + i] : 0.0f;                               \
                UNROLLED for (int n = 0; n < (NN); ++n) {                                           \
                    float sum = b;                                                              \
                    for (int u = 0; u < U; ++u) sum += acc[u][i * (NN) + n];                    \
                    Y[(size_t)(br * (R) + i) * ldy + n] = sum;                                  \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }
#define KERNEL(NAME, R, C, NN, IDX) KERNEL_##NN(NAME, R, C, IDX)
#define KERNEL_4(NAME, R, C, IDX) KERNEL_N(NAME, R, C, 4, IDX)
#define KERNEL_16(NAME, R, C, IDX) KERNEL_N(NAME, R, C, 16, IDX)

#define SHAPES(X, NN, IDX, SUF)                                                                   \
    X(k_1x1_##NN##SUF, 1, 1, NN, IDX) X(k_4x1_##NN##SUF, 4, 1, NN, IDX)                        \
    X(k_8x1_##NN##SUF, 8, 1, NN, IDX) X(k_16x1_##NN##SUF, 16, 1, NN, IDX)                      \
    X(k_1x4_##NN##SUF, 1, 4, NN, IDX) X(k_1x8_##NN##SUF, 1, 8, NN, IDX)                        \
    X(k_1x16_##NN##SUF, 1, 16, NN, IDX) X(k_4x4_##NN##SUF, 4, 4, NN, IDX)                      \
    X(k_8x8_##NN##SUF, 8, 8, NN, IDX)
SHAPES(KERNEL, 1, uint16_t, _u16)
SHAPES(KERNEL, 4, uint16_t, _u16)
SHAPES(KERNEL, 16, uint16_t, _u16)
SHAPES(KERNEL, 1, int32_t, _i32)
SHAPES(KERNEL, 4, int32_t, _i32)
SHAPES(KERNEL, 16, int32_t, _i32)

static const int shape_table[][2] = {{1, 1}, {4, 1}, {8, 1}, {16, 1}, {1, 4}, {1, 8}, {1, 16}, {4, 4}, {8, 8}};
#define NSHAPES 9
#define ROW(NN, SUF)                                                                              \
    {k_1x1_##NN##SUF, k_4x1_##NN##SUF, k_8x1_##NN##SUF, k_16x1_##NN##SUF, k_1x4_##NN##SUF,        \
     k_1x8_##NN##SUF, k_1x16_##NN##SUF, k_4x4_##NN##SUF, k_8x8_##NN##SUF}
/* [index width][columns 16, 4, 1][shape] */
static const kernel_fn kernels[2][3][NSHAPES] = {
    {ROW(16, _u16), ROW(4, _u16), ROW(1, _u16)},
    {ROW(16, _i32), ROW(4, _i32), ROW(1, _i32)},
};

/* Any other block shape, one column at a time. */
static void generic_kernel(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                           const float *bias) {
    const int R = m->r, C = m->c;
    for (int br = br0; br < br1; ++br)
        for (int i = 0; i < R; ++i) {
            float acc = 0.0f;
            for (int32_t k = m->rowptr[br]; k < m->rowptr[br + 1]; ++k) {
                const long col = m->wide ? ((const int32_t *)m->index)[k] : ((const uint16_t *)m->index)[k];
                const float *v = m->values + (size_t)k * R * C + (size_t)i * C;
                for (int j = 0; j < C; ++j) acc += v[j] * X[(col * C + j) * ldx];
            }
            Y[(size_t)(br * R + i) * ldy] = acc + (bias ? bias[br * R + i] : 0.0f);
        }
}

#ifdef __AVX2__
/* Unstructured, one contiguous column, uint16 indices. Each non-zero needs its own load of x: 8 scalar
 * loads are packed into a vector (faster here than AVX2's gather instruction or a scalar loop: see
 * benchmarks/csr_gather_variants.c), then one FMA per 8 non-zeros; two accumulators. */
static void csr_gather_u16(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                           const float *bias) {
    if (ldx != 1) { /* a column of a wider x: strided */
        k_1x1_1_u16(m, br0, br1, X, ldx, Y, ldy, bias);
        return;
    }
    const uint16_t *ix = (const uint16_t *)m->index;
    const float *v = m->values;
    for (int row = br0; row < br1; ++row) {
        int32_t k = m->rowptr[row];
        const int32_t end = m->rowptr[row + 1];
        __m256 p0 = _mm256_setzero_ps(), p1 = _mm256_setzero_ps();
        for (; k + 16 <= end; k += 16) {
            const uint16_t *i = ix + k;
            const __m256 g0 = _mm256_set_ps(X[i[7]], X[i[6]], X[i[5]], X[i[4]], X[i[3]], X[i[2]], X[i[1]], X[i[0]]);
            const __m256 g1 = _mm256_set_ps(X[i[15]], X[i[14]], X[i[13]], X[i[12]], X[i[11]], X[i[10]], X[i[9]], X[i[8]]);
            p0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + k), g0, p0);
            p1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + k + 8), g1, p1);
        }
        const __m256 p = _mm256_add_ps(p0, p1);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps(p, 1));
        s = _mm_hadd_ps(s, s);
        s = _mm_hadd_ps(s, s);
        float acc = _mm_cvtss_f32(s);
        for (; k < end; ++k) acc += v[k] * X[ix[k]];
        Y[(size_t)row * ldy] = acc + (bias ? bias[row] : 0.0f);
    }
}

/* Eight x values at eight uint16 indices, packed into a vector; the indices come in two 64-bit loads and
 * are split with shifts, which leaves the load ports to the x loads. */
static inline __m256 gather_x8(const float *X, const uint16_t *i) {
    uint64_t a, b;
    memcpy(&a, i, 8);
    memcpy(&b, i + 4, 8);
    return _mm256_set_ps(X[b >> 48], X[(b >> 32) & 0xffff], X[(b >> 16) & 0xffff], X[b & 0xffff], X[a >> 48],
                         X[(a >> 32) & 0xffff], X[(a >> 16) & 0xffff], X[a & 0xffff]);
}

/* Eight values of the one-column copy from slot position at: float32, or bfloat16 widened by a shift. */
static inline __m256 values8(const void *v, size_t at, const int bf16) {
    if (bf16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)v + at))), 16));
    return _mm256_loadu_ps((const float *)v + at);
}

/* Unstructured, one contiguous column, from the interleaved copy: one FMA computes a non-zero of each of
 * 8 rows, so there is no per-row tail or horizontal sum (about 1.3x csr_gather_u16 at n = 1760, 90%:
 * benchmarks/csr_gather_variants.c). Rows [br0, br1) must be whole windows, else CSR. */
static inline __attribute__((always_inline)) void interleaved(const Matrix *m, int br0, int br1, const float *X,
                                                              long ldx, float *Y, long ldy, const float *bias,
                                                              const int bf16) {
    if (ldx != 1 || br0 % m->sigma || br1 % m->sigma) {
        csr_gather_u16(m, br0, br1, X, ldx, Y, ldy, bias);
        return;
    }
    const void *v = m->sell_values;
    const uint16_t *ix = m->sell_index;
    for (int g = br0 / 8; g < br1 / 8; ++g) {
        int32_t s = m->sell_ptr[g];
        const int32_t end = m->sell_ptr[g + 1];
        __m256 p0 = _mm256_setzero_ps(), p1 = _mm256_setzero_ps(), p2 = _mm256_setzero_ps(),
               p3 = _mm256_setzero_ps();
        for (; s + 4 <= end; s += 4) {
            const size_t at = 8 * (size_t)s;
            p0 = _mm256_fmadd_ps(values8(v, at, bf16), gather_x8(X, ix + at), p0);
            p1 = _mm256_fmadd_ps(values8(v, at + 8, bf16), gather_x8(X, ix + at + 8), p1);
            p2 = _mm256_fmadd_ps(values8(v, at + 16, bf16), gather_x8(X, ix + at + 16), p2);
            p3 = _mm256_fmadd_ps(values8(v, at + 24, bf16), gather_x8(X, ix + at + 24), p3);
        }
        for (; s < end; ++s)
            p0 = _mm256_fmadd_ps(values8(v, 8 * (size_t)s, bf16), gather_x8(X, ix + 8 * (size_t)s), p0);
        float sums[8];
        _mm256_storeu_ps(sums, _mm256_add_ps(_mm256_add_ps(p0, p1), _mm256_add_ps(p2, p3)));
        for (int lane = 0; lane < 8; ++lane) {
            const int32_t row = m->sell_order[8 * g + lane];
            Y[(size_t)row * ldy] = sums[lane] + (bias ? bias[row] : 0.0f);
        }
    }
}
static void interleaved_f32(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                            const float *bias) {
    interleaved(m, br0, br1, X, ldx, Y, ldy, bias, 0);
}
static void interleaved_bf16(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                             const float *bias) {
    interleaved(m, br0, br1, X, ldx, Y, ldy, bias, 1);
}

/* Unstructured, one contiguous column, from the sliced copy (AVX-512, chosen at run time): the 64 values
 * of x in a slice sit in four registers and each slot looks its 16 lanes' values up in them (one
 * vpermi2ps per pair of registers by the index's low 5 bits, a blend by bit 5), so no x value is loaded
 * per non-zero. Costs padding (a segment runs as long as its longest row) but no gathers. Slices of 64
 * rather than 32 columns: a third fewer padding slots (1.70 instead of 2.01 slots a non-zero at 90%),
 * which is what the product is bound by once the matrix is not in L2 (benchmarks/slice_width_probe.py).
 * Rows [br0, br1) must be whole windows, else CSR. */
#define AVX512 __attribute__((target("avx512f")))
AVX512 static inline __m512 lookup16(const uint8_t *index, const __m512 *x) {
    const __m512i i = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)index));
    const __mmask16 upper = _mm512_test_epi32_mask(i, _mm512_set1_epi32(32)); /* columns 32-63 */
    return _mm512_mask_blend_ps(upper, _mm512_permutex2var_ps(x[0], i, x[1]), _mm512_permutex2var_ps(x[2], i, x[3]));
}
AVX512 static inline __m512 values16(const void *v, size_t at, const int bf16) {
    if (bf16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)v + at))), 16));
    return _mm512_loadu_ps((const float *)v + at);
}
AVX512 static inline __attribute__((always_inline)) void sliced(const Matrix *m, int br0, int br1, const float *X,
                                                                long ldx, float *Y, long ldy, const float *bias,
                                                                const int bf16) {
    if (ldx != 1 || br0 % m->sigma || br1 % m->sigma) {
        csr_gather_u16(m, br0, br1, X, ldx, Y, ldy, bias);
        return;
    }
    const void *v = m->sell_values;
    const uint8_t *ix = m->sell_index;
    const int per_window = (m->sigma + 15) / 16, slices = (m->cols + SLICE - 1) / SLICE;
    __mmask16 last[SLICE / 16]; /* the last slice's columns in each register of x (0: past the end) */
    for (int q = 0; q < SLICE / 16; ++q) {
        const int left = m->cols - SLICE * (slices - 1) - 16 * q;
        last[q] = left >= 16 ? 0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
    }
    for (int g = br0 / m->sigma * per_window; g < br1 / m->sigma * per_window; ++g) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        const int32_t *ptr = m->sell_ptr + (size_t)g * slices;
        for (int j = 0; j < slices; ++j) {
            int32_t s = ptr[j];
            const int32_t end = ptr[j + 1];
            if (s == end) continue;
            __m512 x[SLICE / 16];
            for (int q = 0; q < SLICE / 16; ++q) /* zeros past the columns (masked lanes are not read) */
                x[q] = j + 1 < slices ? _mm512_loadu_ps(X + SLICE * j + 16 * q)
                                      : _mm512_maskz_loadu_ps(last[q], X + SLICE * j + 16 * q);
            /* two slots a step: segments are short (about 11 slots at 90%), so a longer unrolled step
             * mostly adds tail iterations */
            for (; s + 2 <= end; s += 2) {
                const size_t at = 16 * (size_t)s;
                a0 = _mm512_fmadd_ps(values16(v, at, bf16), lookup16(ix + at, x), a0);
                a1 = _mm512_fmadd_ps(values16(v, at + 16, bf16), lookup16(ix + at + 16, x), a1);
            }
            if (s < end)
                a0 = _mm512_fmadd_ps(values16(v, 16 * (size_t)s, bf16), lookup16(ix + 16 * (size_t)s, x), a0);
        }
        float sums[16];
        _mm512_storeu_ps(sums, _mm512_add_ps(a0, a1));
        for (int lane = 0; lane < 16; ++lane) {
            const int32_t row = m->sell_order[16 * g + lane];
            if (row >= 0) Y[(size_t)row * ldy] = sums[lane] + (bias ? bias[row] : 0.0f);
        }
    }
}
AVX512 static void sliced_f32(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                              const float *bias) {
    sliced(m, br0, br1, X, ldx, Y, ldy, bias, 0);
}
AVX512 static void sliced_bf16(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                               const float *bias) {
    sliced(m, br0, br1, X, ldx, Y, ldy, bias, 1);
}
#endif

/* R x 1 blocks (R = 8 or 16 consecutive rows of one column), one contiguous column: per block one
 * broadcast of x and R/8 FMAs; four blocks in flight. VALUES8(k, h) loads the 8 values h of block k:
 * float32, or bfloat16 (m->sell_values) widened by a shift. */
#define COLUMN_BLOCKS(NAME, R, VALUES8)                                                          \
    static void NAME(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy, \
                     const float *bias) {                                                        \
        if (ldx != 1 || ldy != 1) {                                                              \
            k_##R##x1_1_u16(m, br0, br1, X, ldx, Y, ldy, bias);                                  \
            return;                                                                              \
        }                                                                                        \
        const uint16_t *index = (const uint16_t *)m->index;                                      \
        for (int br = br0; br < br1; ++br) {                                                     \
            __m256 acc[4][(R) / 8];                                                              \
            for (int u = 0; u < 4; ++u)                                                          \
                for (int h = 0; h < (R) / 8; ++h) acc[u][h] = _mm256_setzero_ps();              \
            int32_t k = m->rowptr[br];                                                           \
            const int32_t end = m->rowptr[br + 1];                                               \
            for (; k + 4 <= end; k += 4)                                                         \
                for (int u = 0; u < 4; ++u) {                                                    \
                    const __m256 x = _mm256_broadcast_ss(X + index[k + u]);                      \
                    for (int h = 0; h < (R) / 8; ++h)                                            \
                        acc[u][h] = _mm256_fmadd_ps(VALUES8(k + u, h), x, acc[u][h]);            \
                }                                                                                \
            for (; k < end; ++k) {                                                               \
                const __m256 x = _mm256_broadcast_ss(X + index[k]);                              \
                for (int h = 0; h < (R) / 8; ++h) acc[0][h] = _mm256_fmadd_ps(VALUES8(k, h), x, acc[0][h]); \
            }                                                                                    \
            for (int h = 0; h < (R) / 8; ++h) {                                                  \
                __m256 sum = _mm256_add_ps(_mm256_add_ps(acc[0][h], acc[1][h]), _mm256_add_ps(acc[2][h], acc[3][h])); \
                if (bias) sum = _mm256_add_ps(sum, _mm256_loadu_ps(bias + br * (R) + 8 * h));   \
                _mm256_storeu_ps(Y + (size_t)br * (R) + 8 * h, sum);                             \
            }                                                                                    \
        }                                                                                        \
    }
#ifdef __AVX2__
#define F32_8(k, h) _mm256_loadu_ps(m->values + (size_t)(k) * 8 + 8 * (h))
#define F32_16(k, h) _mm256_loadu_ps(m->values + (size_t)(k) * 16 + 8 * (h))
#define BF16_8(k, h) values8(m->sell_values, (size_t)(k) * 8 + 8 * (h), 1)
#define BF16_16(k, h) values8(m->sell_values, (size_t)(k) * 16 + 8 * (h), 1)
COLUMN_BLOCKS(column_blocks_8, 8, F32_8)
COLUMN_BLOCKS(column_blocks_16, 16, F32_16)
COLUMN_BLOCKS(column_blocks_8_bf16, 8, BF16_8)
COLUMN_BLOCKS(column_blocks_16_bf16, 16, BF16_16)

static inline float hsum128(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline float hsum256(__m256 v) {
    return hsum128(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

/* R x C blocks with C = 8 or 16, one contiguous column: each row of a block is C/8 vectors, multiplied by
 * the block's C values of x; U blocks in flight, a horizontal sum per row at the end of a block row. */
#define ROW_VECTOR_BLOCKS(NAME, R, C, U)                                                            \
    static void NAME(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy, \
                     const float *bias) {                                                        \
        if (ldx != 1) {                                                                          \
            k_##R##x##C##_1_u16(m, br0, br1, X, ldx, Y, ldy, bias);                              \
            return;                                                                              \
        }                                                                                        \
        const uint16_t *index = (const uint16_t *)m->index;                                      \
        for (int br = br0; br < br1; ++br) {                                                     \
            __m256 acc[U][R][(C) / 8];                                                           \
            for (int u = 0; u < (U); ++u)                                                        \
                for (int i = 0; i < (R); ++i)                                                    \
                    for (int h = 0; h < (C) / 8; ++h) acc[u][i][h] = _mm256_setzero_ps();      \
            int32_t k = m->rowptr[br];                                                           \
            const int32_t end = m->rowptr[br + 1];                                               \
            for (; k < end; k += (U))                                                            \
                for (int u = 0; u < (U) && k + u < end; ++u) {                                   \
                    const float *x = X + (size_t)index[k + u] * (C);                             \
                    const float *v = m->values + (size_t)(k + u) * ((R) * (C));                  \
                    for (int i = 0; i < (R); ++i)                                                \
                        for (int h = 0; h < (C) / 8; ++h)                                        \
                            acc[u][i][h] = _mm256_fmadd_ps(_mm256_loadu_ps(v + i * (C) + 8 * h),  \
                                                           _mm256_loadu_ps(x + 8 * h), acc[u][i][h]); \
                }                                                                                \
            for (int i = 0; i < (R); ++i) {                                                      \
                __m256 sum = _mm256_setzero_ps();                                                \
                for (int u = 0; u < (U); ++u)                                                    \
                    for (int h = 0; h < (C) / 8; ++h) sum = _mm256_add_ps(sum, acc[u][i][h]);    \
                Y[(size_t)(br * (R) + i) * ldy] = hsum256(sum) + (bias ? bias[br * (R) + i] : 0.0f); \
            }                                                                                    \
        }                                                                                        \
    }
ROW_VECTOR_BLOCKS(row_blocks_1x8, 1, 8, 4)
ROW_VECTOR_BLOCKS(row_blocks_1x16, 1, 16, 2)
ROW_VECTOR_BLOCKS(row_blocks_8x8, 8, 8, 1)

/* 4x4 blocks, one contiguous column: rows 0-1 and rows 2-3 of a block are one vector each, times the
 * block's 4 values of x repeated; two blocks in flight; the halves of each sum are the rows. */
static void blocks_4x4(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                       const float *bias) {
    if (ldx != 1) {
        k_4x4_1_u16(m, br0, br1, X, ldx, Y, ldy, bias);
        return;
    }
    const uint16_t *index = (const uint16_t *)m->index;
    for (int br = br0; br < br1; ++br) {
        __m256 a[2][2] = {{_mm256_setzero_ps(), _mm256_setzero_ps()}, {_mm256_setzero_ps(), _mm256_setzero_ps()}};
        int32_t k = m->rowptr[br];
        const int32_t end = m->rowptr[br + 1];
        for (; k < end; k += 2)
            for (int u = 0; u < 2 && k + u < end; ++u) {
                const __m256 x = _mm256_broadcast_ps((const __m128 *)(X + (size_t)index[k + u] * 4));
                const float *v = m->values + (size_t)(k + u) * 16;
                a[u][0] = _mm256_fmadd_ps(_mm256_loadu_ps(v), x, a[u][0]);
                a[u][1] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8), x, a[u][1]);
            }
        for (int half = 0; half < 2; ++half) {
            const __m256 sum = _mm256_add_ps(a[0][half], a[1][half]);
            for (int j = 0; j < 2; ++j) {
                const int row = br * 4 + 2 * half + j;
                const __m128 part = j ? _mm256_extractf128_ps(sum, 1) : _mm256_castps256_ps128(sum);
                Y[(size_t)row * ldy] = hsum128(part) + (bias ? bias[row] : 0.0f);
            }
        }
    }
}

/* 1x4 and 4x1 blocks, one contiguous column: two consecutive blocks' 8 values form one vector, times
 * both blocks' 4 values of x (1x4) or each block's x value repeated 4 times (4x1, spread). Returns the
 * sum of block row br's pairs and, apart, of an odd last block. */
static inline __m128 four_of_x(const float *X, int col, int spread) {
    return spread ? _mm_set1_ps(X[col]) : _mm_loadu_ps(X + (size_t)col * 4);
}
static inline __m256 blocks_of_four(const Matrix *m, int br, const float *X, int spread, __m128 *tail) {
    const uint16_t *index = (const uint16_t *)m->index;
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    *tail = _mm_setzero_ps();
    int32_t k = m->rowptr[br];
    const int32_t end = m->rowptr[br + 1];
    for (; k + 8 <= end; k += 8)
        for (int u = 0; u < 4; ++u) {
            const __m256 x = _mm256_set_m128(four_of_x(X, index[k + 2 * u + 1], spread),
                                             four_of_x(X, index[k + 2 * u], spread));
            a[u] = _mm256_fmadd_ps(_mm256_loadu_ps(m->values + (size_t)(k + 2 * u) * 4), x, a[u]);
        }
    for (; k < end; ++k)
        *tail = _mm_fmadd_ps(_mm_loadu_ps(m->values + (size_t)k * 4), four_of_x(X, index[k], spread), *tail);
    return _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
}

static void row_blocks_1x4(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                           const float *bias) {
    if (ldx != 1) {
        k_1x4_1_u16(m, br0, br1, X, ldx, Y, ldy, bias);
        return;
    }
    for (int br = br0; br < br1; ++br) {
        __m128 tail;
        const __m256 sum = blocks_of_four(m, br, X, 0, &tail);
        Y[(size_t)br * ldy] = hsum256(sum) + hsum128(tail) + (bias ? bias[br] : 0.0f);
    }
}

static void column_blocks_4(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                            const float *bias) {
    if (ldx != 1) {
        k_4x1_1_u16(m, br0, br1, X, ldx, Y, ldy, bias);
        return;
    }
    for (int br = br0; br < br1; ++br) {
        __m128 tail;
        const __m256 sum = blocks_of_four(m, br, X, 1, &tail);
        float rows[4];
        _mm_storeu_ps(rows, _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1)), tail));
        for (int i = 0; i < 4; ++i) Y[(size_t)(br * 4 + i) * ldy] = rows[i] + (bias ? bias[br * 4 + i] : 0.0f);
    }
}

/* A tile's `width` columns of X side by side (so that the loads of x stay in a few pages instead of one
 * page per input feature), in a buffer the caller frees; NULL, with X and ldx unchanged, where they
 * already are side by side or no memory was free (the kernels then read X at its own stride). */
static float *pack_tile(const Matrix *m, const float **X, long *ldx, int width) {
    if (*ldx == width) return NULL;
    float *packed = aligned_alloc(64, ((size_t)m->cols * width * sizeof(float) + 63) / 64 * 64);
    if (packed) {
        for (int col = 0; col < m->cols; ++col)
            memcpy(packed + (size_t)col * width, *X + (size_t)col * *ldx, (size_t)width * sizeof(float));
        *X = packed, *ldx = width;
    }
    return packed;
}

/* Unstructured, 16 columns (rows of X at stride ldx): per non-zero one broadcast of the weight and two
 * FMAs; four non-zeros in flight, so eight accumulators cover the FMA latency. The 16 columns are first
 * copied side by side (64 bytes per input feature), so that the loads of x stay in a few pages instead of
 * one page per feature. The copy is made per call, that is per band of rows and tile, into a small buffer
 * that stays in L1; packing all tiles once in rows_product into one large buffer was tried and was slower. */
static void csr_tile16_u16(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                           const float *bias) {
    float *packed = pack_tile(m, &X, &ldx, 16);
    const uint16_t *ix = (const uint16_t *)m->index;
    const float *v = m->values;
    for (int row = br0; row < br1; ++row) {
        __m256 a[4][2];
        for (int u = 0; u < 4; ++u) a[u][0] = a[u][1] = _mm256_setzero_ps();
        int32_t k = m->rowptr[row];
        const int32_t end = m->rowptr[row + 1];
        for (; k + 4 <= end; k += 4)
            for (int u = 0; u < 4; ++u) {
                const __m256 w = _mm256_broadcast_ss(v + k + u);
                const float *x = X + (size_t)ix[k + u] * ldx;
                a[u][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x), a[u][0]);
                a[u][1] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 8), a[u][1]);
            }
        for (; k < end; ++k) {
            const __m256 w = _mm256_broadcast_ss(v + k);
            const float *x = X + (size_t)ix[k] * ldx;
            a[0][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x), a[0][0]);
            a[0][1] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 8), a[0][1]);
        }
        const __m256 b = _mm256_set1_ps(bias ? bias[row] : 0.0f);
        for (int h = 0; h < 2; ++h)
            _mm256_storeu_ps(Y + (size_t)row * ldy + 8 * h,
                             _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a[0][h], a[1][h]), _mm256_add_ps(a[2][h], a[3][h])), b));
    }
    free(packed);
}

/* The same with AVX-512 (chosen at run time): one 16-wide FMA per non-zero instead of two 8-wide. */
AVX512 static void csr_tile16_avx512(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y,
                                     long ldy, const float *bias) {
    float *packed = pack_tile(m, &X, &ldx, 16);
    const uint16_t *ix = (const uint16_t *)m->index;
    const float *v = m->values;
    for (int row = br0; row < br1; ++row) {
        __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        int32_t k = m->rowptr[row];
        const int32_t end = m->rowptr[row + 1];
        for (; k + 4 <= end; k += 4)
            for (int u = 0; u < 4; ++u)
                a[u] = _mm512_fmadd_ps(_mm512_set1_ps(v[k + u]), _mm512_loadu_ps(X + (size_t)ix[k + u] * ldx), a[u]);
        for (; k < end; ++k) a[0] = _mm512_fmadd_ps(_mm512_set1_ps(v[k]), _mm512_loadu_ps(X + (size_t)ix[k] * ldx), a[0]);
        const __m512 sum = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
        _mm512_storeu_ps(Y + (size_t)row * ldy, _mm512_add_ps(sum, _mm512_set1_ps(bias ? bias[row] : 0.0f)));
    }
    free(packed);
}

/* Unstructured, 4 columns (a batch of 4, or the 4-column tile after the 16-column ones): per non-zero a
 * broadcast weight times the feature's 4 x values, four non-zeros in flight; x packed as for 16 columns. */
static void csr_tile4_u16(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                          const float *bias) {
    float *packed = pack_tile(m, &X, &ldx, 4);
    const uint16_t *ix = (const uint16_t *)m->index;
    const float *v = m->values;
    for (int row = br0; row < br1; ++row) {
        __m128 a[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
        int32_t k = m->rowptr[row];
        const int32_t end = m->rowptr[row + 1];
        for (; k + 4 <= end; k += 4)
            for (int u = 0; u < 4; ++u)
                a[u] = _mm_fmadd_ps(_mm_broadcast_ss(v + k + u), _mm_loadu_ps(X + (size_t)ix[k + u] * ldx), a[u]);
        for (; k < end; ++k) a[0] = _mm_fmadd_ps(_mm_broadcast_ss(v + k), _mm_loadu_ps(X + (size_t)ix[k] * ldx), a[0]);
        const __m128 sum = _mm_add_ps(_mm_add_ps(a[0], a[1]), _mm_add_ps(a[2], a[3]));
        _mm_storeu_ps(Y + (size_t)row * ldy, _mm_add_ps(sum, _mm_set1_ps(bias ? bias[row] : 0.0f)));
    }
    free(packed);
}

/* The one-column AVX2 kernel of each shape in shape_table (1x1 is chosen in pick_kernel). */
static const kernel_fn one_column[NSHAPES] = {NULL, column_blocks_4, column_blocks_8, column_blocks_16,
                                              row_blocks_1x4, row_blocks_1x8, row_blocks_1x16, blocks_4x4,
                                              row_blocks_8x8};
#endif

static kernel_fn pick_kernel(const Matrix *m, int nn_slot) {
    for (int s = 0; s < NSHAPES; ++s)
        if (shape_table[s][0] == m->r && shape_table[s][1] == m->c) {
#ifdef __AVX2__
            if (nn_slot == 2 && !m->wide && m->sell_bf16 && !m->lanes && (s == 2 || s == 3))
                return s == 2 ? column_blocks_8_bf16 : column_blocks_16_bf16;
            if (nn_slot == 2 && !m->wide) {
                if (s == 0 && m->lanes == 16) return m->sell_bf16 ? sliced_bf16 : sliced_f32;
                if (s == 0 && m->lanes == 8) return m->sell_bf16 ? interleaved_bf16 : interleaved_f32;
                if (s == 0) return csr_gather_u16;
                return one_column[s];
            }
            if (nn_slot == 0 && !m->wide && s == 0) return use_avx512 ? csr_tile16_avx512 : csr_tile16_u16;
            if (nn_slot == 1 && !m->wide && s == 0) return csr_tile4_u16;
#endif
            return kernels[m->wide ? 1 : 0][nn_slot][s];
        }
    return NULL;
}

/* Block rows [br0, br1) for all N columns: tiles of 16, then 4, then 1 columns. With 16 columns or more
 * the rows go in bands of about 128, each band through every tile, so that the band's rows of Y (a page
 * each when N is large) stay in the TLB while the tiles pass; tile by tile over all rows, every 64-byte
 * store would land on a page not seen since the previous tile. */
static void rows_product(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                         long N, const float *bias) {
    static const int widths[3] = {16, 4, 1};
    const int band = N >= 16 && m->r < 128 ? 128 / m->r : br1 - br0;
    for (int b0 = br0; b0 < br1; b0 += band) {
        const int b1 = b0 + band < br1 ? b0 + band : br1;
        long n = 0;
        for (int slot = 0; slot < 3; ++slot) {
            const kernel_fn f = m->by_width[slot];
            for (; n + widths[slot] <= N; n += widths[slot]) {
                if (f) {
                    f(m, b0, b1, X + n, ldx, Y + n, ldy, bias);
                } else {
                    for (int w = 0; w < widths[slot]; ++w)
                        generic_kernel(m, b0, b1, X + n + w, ldx, Y + n + w, ldy, bias);
                }
            }
        }
    }
}

/* ---- pointwise recurrent cells (PyTorch's equations); exp by Cephes' polynomial so loops vectorize ---- */

static inline float fast_exp(float x) {
    x = fminf(fmaxf(x, -87.3f), 88.3f);
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
static inline float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
static inline float fast_tanh(float x) { return 1.0f - 2.0f / (fast_exp(2.0f * x) + 1.0f); }

#ifdef __AVX2__
/* The same on 8 lanes: gcc leaves the scalar loops unvectorized without -ffast-math (the clamps and
 * floorf), which made a GRU step of 192 units cost several microseconds. NaN passes through. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
    const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
static inline __m256 sigmoid8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
static inline __m256 tanh8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(exp8(_mm256_add_ps(x, x)), one)));
}
static inline __m256 sum8(const float *a, const float *b, long q) {
    return _mm256_add_ps(_mm256_loadu_ps(a + q), _mm256_loadu_ps(b + q));
}
#endif

enum { CELL_TANH = 0, CELL_RELU = 1, CELL_GRU = 2, CELL_LSTM = 3, CELL_CLIPPED_RELU = 4 };
static int cell_gates(int cell) { return cell == CELL_GRU ? 3 : cell == CELL_LSTM ? 4 : 1; }

/* Units [u0, u1) x B columns: q runs over j*B + b. gates = W_hh h + b_hh, (G*H, B); x = xproj[t]. */
static void pointwise(int cell, long H, long B, long q0, long q1, const float *x, const float *gates,
                      const float *h, float *h_next, float *c, float *out) {
    const long S = H * B; /* distance between gate blocks */
    long q = q0;           /* 8 at a time with AVX2 (GRU, LSTM, tanh), then one at a time */
    switch (cell) {
    case CELL_TANH:
#ifdef __AVX2__
        for (; q + 8 <= q1; q += 8) _mm256_storeu_ps(h_next + q, tanh8(sum8(x, gates, q)));
#endif
        for (; q < q1; ++q) h_next[q] = fast_tanh(x[q] + gates[q]);
        break;
    case CELL_RELU:
        for (; q < q1; ++q) {
            const float v = x[q] + gates[q];
            h_next[q] = v < 0.0f ? 0.0f : v; /* NaN stays NaN, as in PyTorch */
        }
        break;
    case CELL_CLIPPED_RELU:
        for (; q < q1; ++q) {
            const float v = x[q] + gates[q];
            h_next[q] = v < 0.0f ? 0.0f : v > 20.0f ? 20.0f : v;
        }
        break;
    case CELL_GRU:
#ifdef __AVX2__
        for (; q + 8 <= q1; q += 8) {
            const __m256 r = sigmoid8(sum8(x, gates, q));
            const __m256 z = sigmoid8(sum8(x + S, gates + S, q));
            const __m256 n = tanh8(_mm256_fmadd_ps(r, _mm256_loadu_ps(gates + 2 * S + q), _mm256_loadu_ps(x + 2 * S + q)));
            _mm256_storeu_ps(h_next + q, _mm256_fmadd_ps(z, _mm256_sub_ps(_mm256_loadu_ps(h + q), n), n));
        }
#endif
        for (; q < q1; ++q) {
            const float r = sigmoid(x[q] + gates[q]);
            const float z = sigmoid(x[S + q] + gates[S + q]);
            const float n = fast_tanh(x[2 * S + q] + r * gates[2 * S + q]);
            h_next[q] = (1.0f - z) * n + z * h[q];
        }
        break;
    case CELL_LSTM:
#ifdef __AVX2__
        for (; q + 8 <= q1; q += 8) {
            const __m256 i = sigmoid8(sum8(x, gates, q)), f = sigmoid8(sum8(x + S, gates + S, q));
            const __m256 g = tanh8(sum8(x + 2 * S, gates + 2 * S, q)), o = sigmoid8(sum8(x + 3 * S, gates + 3 * S, q));
            const __m256 cell_state = _mm256_fmadd_ps(f, _mm256_loadu_ps(c + q), _mm256_mul_ps(i, g));
            _mm256_storeu_ps(c + q, cell_state);
            _mm256_storeu_ps(h_next + q, _mm256_mul_ps(o, tanh8(cell_state)));
        }
#endif
        for (; q < q1; ++q) {
            const float i = sigmoid(x[q] + gates[q]);
            const float f = sigmoid(x[S + q] + gates[S + q]);
            const float g = fast_tanh(x[2 * S + q] + gates[2 * S + q]);
            const float o = sigmoid(x[3 * S + q] + gates[3 * S + q]);
            c[q] = f * c[q] + i * g;
            h_next[q] = o * fast_tanh(c[q]);
        }
        break;
    }
    memcpy(out + q0, h_next + q0, (size_t)(q1 - q0) * sizeof(float));
}

/* ---- a translation decoder's attention, one step ---- */

/* v . tanh(k + q) (additive score, Bahdanau) or, without v, k . q (Luong's general score, k = W m). */
static float score(const float *k, const float *q, const float *v, long H) {
    long j = 0;
    float total = 0.0f;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= H; j += 8) {
        const __m256 kj = _mm256_loadu_ps(k + j), qj = _mm256_loadu_ps(q + j);
        acc = v ? _mm256_fmadd_ps(_mm256_loadu_ps(v + j), tanh8(_mm256_add_ps(kj, qj)), acc) : _mm256_fmadd_ps(kj, qj, acc);
    }
    total = hsum256(acc);
#endif
    for (; j < H; ++j) total += v ? v[j] * fast_tanh(k[j] + q[j]) : k[j] * q[j];
    return total;
}

/* For each of B columns, the first lengths[b] (at most S) encoder positions of its keys and memory
 * ((S, H) each, at b * S * H) scored against query column b (q: (H, B)), softmax over them, and context
 * column b (context: (H, B)) their weighted sum of memory rows. scratch: 2 * H + S floats. */
static void attend(const float *q, const float *keys, const float *memory, const int32_t *lengths, const float *v,
                   float *context, long H, long S, long B, float *scratch) {
    float *query = scratch, *sum = scratch + H, *w = scratch + 2 * H;
    for (long b = 0; b < B; ++b) {
        const long L = lengths[b] < 0 ? 0 : lengths[b] > S ? S : lengths[b];
        const float *k = keys + b * S * H, *m = memory + b * S * H;
        for (long j = 0; j < H; ++j) query[j] = q[j * B + b], sum[j] = 0.0f;
        float top = -INFINITY, total = 0.0f;
        for (long s = 0; s < L; ++s) {
            w[s] = score(k + s * H, query, v, H);
            top = w[s] > top ? w[s] : top;
        }
        for (long s = 0; s < L; ++s) total += w[s] = fast_exp(w[s] - top);
        for (long s = 0; s < L; ++s) {
            const float ws = w[s] / total;
            for (long j = 0; j < H; ++j) sum[j] += ws * m[s * H + j];
        }
        for (long j = 0; j < H; ++j) context[j * B + b] = sum[j];
    }
}

/* y = tanh(x) over n values. */
static void tanh_all(const float *x, float *y, long n) {
    long i = 0;
#ifdef __AVX2__
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, tanh8(_mm256_loadu_ps(x + i)));
#endif
    for (; i < n; ++i) y[i] = fast_tanh(x[i]);
}

/* ---- the rest of a model's step (sparsernn.engine.program): gathers, norms, activations, softmax,
 * elementwise arithmetic and copies, all feature-major over n columns ---- */

enum { UNARY_TANH = 0, UNARY_RELU = 1, UNARY_SIGMOID = 2 };

/* y = f(x) over count values. */
static void unary(int fn, const float *x, float *y, long count) {
    if (fn == UNARY_TANH) {
        tanh_all(x, y, count);
    } else if (fn == UNARY_RELU) {
        for (long i = 0; i < count; ++i) y[i] = x[i] < 0.0f ? 0.0f : x[i]; /* NaN stays NaN */
    } else {
        long i = 0;
#ifdef __AVX2__
        for (; i + 8 <= count; i += 8) _mm256_storeu_ps(y + i, sigmoid8(_mm256_loadu_ps(x + i)));
#endif
        for (; i < count; ++i) y[i] = sigmoid(x[i]);
    }
}

/* Column b of y (width, n) = row ids[b] of table (rows, width); -1 (y untouched from there on) when an id is
 * outside [0, rows). */
static int gather(const float *table, long rows, long width, const int32_t *ids, float *y, long n) {
    for (long b = 0; b < n; ++b) {
        if (ids[b] < 0 || ids[b] >= rows) return -1;
        const float *row = table + (size_t)ids[b] * (size_t)width;
        if (n == 1)
            memcpy(y, row, sizeof(float) * (size_t)width);
        else
            for (long j = 0; j < width; ++j) y[j * n + b] = row[j];
    }
    return 0;
}

/* PyTorch's LayerNorm over each group of `size` consecutive features of x (groups * size, n), per column:
 * (x - mean) / sqrt(biased variance + eps) * weight + bias (weight, bias (size) or NULL). */
static void layer_norm(const float *x, float *y, const float *weight, const float *bias, long groups, long size,
                       float eps, long n) {
    for (long g = 0; g < groups; ++g)
        for (long b = 0; b < n; ++b) {
            const float *in = x + g * size * n + b;
            float *out = y + g * size * n + b;
            double sum = 0.0, squares = 0.0;
            for (long j = 0; j < size; ++j) sum += in[j * n];
            const double mean = sum / (double)size;
            for (long j = 0; j < size; ++j) squares += (in[j * n] - mean) * (in[j * n] - mean);
            const float scale = (float)(1.0 / sqrt(squares / (double)size + (double)eps));
            for (long j = 0; j < size; ++j) {
                const float v = (float)(in[j * n] - mean) * scale;
                out[j * n] = v * (weight ? weight[j] : 1.0f) + (bias ? bias[j] : 0.0f);
            }
        }
}

/* softmax (or with log set, log_softmax) over each group of `size` consecutive features of x
 * (groups * size, n), per column. */
static void softmax(const float *x, float *y, long groups, long size, int log, long n) {
    for (long g = 0; g < groups; ++g)
        for (long b = 0; b < n; ++b) {
            const float *in = x + g * size * n + b;
            float *out = y + g * size * n + b;
            float top = -INFINITY;
            for (long j = 0; j < size; ++j) top = in[j * n] > top ? in[j * n] : top;
            double total = 0.0;
            if (n == 1) { /* contiguous: vectorized exp */
                long j = 0;
#ifdef __AVX2__
                __m256 acc = _mm256_setzero_ps();
                const __m256 shift = _mm256_set1_ps(top);
                for (; j + 8 <= size; j += 8) {
                    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(in + j), shift));
                    if (!log) _mm256_storeu_ps(out + j, e);
                    acc = _mm256_add_ps(acc, e);
                }
                total = hsum256(acc);
#endif
                for (; j < size; ++j) {
                    const float e = fast_exp(in[j] - top);
                    if (!log) out[j] = e;
                    total += e;
                }
            } else {
                for (long j = 0; j < size; ++j) {
                    const float e = fast_exp(in[j * n] - top);
                    if (!log) out[j * n] = e;
                    total += e;
                }
            }
            if (log) {
                const float shift = top + (float)logf((float)total);
                for (long j = 0; j < size; ++j) out[j * n] = in[j * n] - shift;
            } else {
                const float scale = (float)(1.0 / total);
                for (long j = 0; j < size; ++j) out[j * n] *= scale;
            }
        }
}

enum { BINARY_ADD = 0, BINARY_MUL = 1, BINARY_SUB = 2, BINARY_DIV = 3 };

/* y[i] = a[i] (op) b[(i / inner) % b_count] over count values: b the same shape as a (b_count = count,
 * inner = 1), one number (b_count = 1), or a feature vector broadcast over n columns (inner = n). */
static void binary(int fn, const float *a, const float *b, float *y, long count, long b_count, long inner) {
    for (long i = 0; i < count; ++i) {
        const float v = b[(i / inner) % b_count];
        y[i] = fn == BINARY_ADD ? a[i] + v : fn == BINARY_MUL ? a[i] * v : fn == BINARY_SUB ? a[i] - v : a[i] / v;
    }
}

/* For p < outer: features [p * y_stride + y_offset, + length) of y = features [p * x_stride + x_offset,
 * + length) of x, n columns each (a concatenation's part, a slice). */
static void copy_features(const float *x, float *y, long outer, long length, long x_stride, long x_offset,
                          long y_stride, long y_offset, long n) {
    for (long p = 0; p < outer; ++p)
        memmove(y + (p * y_stride + y_offset) * n, x + (p * x_stride + x_offset) * n, sizeof(float) * (size_t)(length * n));
}

/* A block-row bound moved down to a window of the interleaved copy, so that every thread can use it. */
static int whole_windows(const Matrix *m, int bound) { return m->sigma ? bound - bound % m->sigma : bound; }

/* Split H/r unit blocks among threads by their non-zeros over all gates. */
static void partition(const Matrix *m, int G, int threads, int *bounds) {
    const int units = m->rows / G / m->r;
    double total = 0.0;
    for (int u = 0; u < units; ++u)
        for (int g = 0; g < G; ++g) total += m->rowptr[g * units + u + 1] - m->rowptr[g * units + u] + 1;
    double seen = 0.0;
    int t = 1;
    bounds[0] = 0;
    for (int u = 0; u < units && t < threads; ++u) {
        for (int g = 0; g < G; ++g) seen += m->rowptr[g * units + u + 1] - m->rowptr[g * units + u] + 1;
        while (t < threads && seen >= total * t / threads) bounds[t++] = u + 1;
    }
    while (t <= threads) bounds[t++] = units;
    for (t = 1; t < threads; ++t) bounds[t] = whole_windows(m, bounds[t]);
}

/* One layer and direction over T steps. The threads stay in one parallel region for the whole
 * sequence, each owning the same units (all gates' rows) at every step, so its part of W_hh stays in its
 * core's cache; one barrier per step. */
static int run_recurrent(int cell, const Matrix *m, const float *bias, const float *xproj, float *out, float *h,
                         float *c, long T, long B, int reverse, int threads) {
    const int G = cell_gates(cell);
    const long H = m->cols;
    float *gates = malloc(sizeof(float) * (size_t)(G * H * B));
    float *spare = malloc(sizeof(float) * (size_t)(H * B));
    int *bounds = malloc(sizeof(int) * (size_t)(threads + 1));
    if (!gates || !spare || !bounds) {
        free(gates), free(spare), free(bounds);
        return -1;
    }
    partition(m, G, threads, bounds);
    const int units = (int)(H / m->r);
    float *final_h = h;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const int u0 = bounds[tid], u1 = bounds[tid + 1];
        const long q0 = (long)u0 * m->r * B, q1 = (long)u1 * m->r * B;
        float *cur = h, *next = spare;
        for (long s = 0; s < T; ++s) {
            const long t = reverse ? T - 1 - s : s;
            if (u1 > u0)
                for (int g = 0; g < G; ++g)
                    rows_product(m, g * units + u0, g * units + u1, cur, B, gates, B, B, bias);
            if (q1 > q0)
                pointwise(cell, H, B, q0, q1, xproj + t * G * H * B, gates, cur, next, c, out + t * H * B);
            float *swap = cur;
            cur = next;
            next = swap;
#pragma omp barrier
        }
        if (tid == 0) final_h = cur;
    }
    if (final_h != h) memcpy(h, final_h, sizeof(float) * (size_t)(H * B));
    free(gates), free(spare), free(bounds);
    return 0;
}

/* Y = W X + bias over N columns, the block rows split among threads on whole windows. */
static void product(const Matrix *m, const float *X, float *Y, long N, const float *bias, int threads) {
    const int block_rows = m->rows / m->r, parts = threads < 1 ? 1 : threads;
#pragma omp parallel for schedule(static) num_threads(parts) if (parts > 1)
    for (int part = 0; part < parts; ++part)
        rows_product(m, whole_windows(m, (int)((long)block_rows * part / parts)),
                     part + 1 == parts ? block_rows : whole_windows(m, (int)((long)block_rows * (part + 1) / parts)),
                     X, N, Y, N, N, bias);
}

/* ---- Python bindings ---------------------------------------------------------------------------- */

static int check_len(const Py_buffer *b, Py_ssize_t need, const char *what) {
    if (b->len < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, needs %zd", what, b->len, need);
        return -1;
    }
    return 0;
}


/* Fills m from the buffers after checking their sizes against the shape and block shape. */
static int make_matrix(Matrix *m, int rows, int cols, int r, int c, int wide, Py_buffer *rowptr, Py_buffer *index,
                       Py_buffer *values, int lanes, int sigma, int bf16, Py_buffer *sell_ptr, Py_buffer *sell_order,
                       Py_buffer *sell_index, Py_buffer *sell_values) {
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
    *m = (Matrix){rows, cols, r, c, wide, ptr, index->buf, values->buf, {NULL, NULL, NULL}, 0, 0, 0, NULL, NULL, NULL, NULL};
#ifdef __AVX2__
    const int usable = lanes == 8 || (lanes == 16 && use_avx512);
#else
    const int usable = 0; /* without AVX2 no one-column copy is used */
#endif
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
        /* lanes 8: a group per 8 rows; lanes 16: ceil(sigma / 16) groups per window, a segment per slice */
        const Py_ssize_t groups = lanes == 8 ? rows / 8 : (Py_ssize_t)(rows / sigma) * ((sigma + 15) / 16);
        const Py_ssize_t segments = lanes == 8 ? groups : groups * ((cols + SLICE - 1) / SLICE);
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
    for (int slot = 0; slot < 3; ++slot) m->by_width[slot] = pick_kernel(m, slot);
    return 0;
}

/* A compiled matrix: the Matrix with its kernels chosen, holding the buffers it points into; made once per
 * matrix and instruction set (sparsernn.kernels keeps it on the SparseMatrix), so that a call per token
 * parses no layout arguments. */
typedef struct {
    Matrix m;
    Py_buffer buffers[7];
} Held;
static const char *const HELD = "sparsernn.kernels.Matrix";

static void held_free(PyObject *capsule) {
    Held *held = PyCapsule_GetPointer(capsule, HELD);
    for (int i = 0; i < 7; ++i) PyBuffer_Release(&held->buffers[i]);
    free(held);
}

static PyObject *py_matrix(PyObject *self, PyObject *args) {
    (void)self;
    int rows, cols, r, c, wide, lanes, sigma, bf16;
    Held *held = calloc(1, sizeof(Held));
    if (!held) return PyErr_NoMemory();
    Py_buffer *b = held->buffers;
    if (!PyArg_ParseTuple(args, "iiiiiy*y*y*iiiy*y*y*y*", &rows, &cols, &r, &c, &wide, &b[0], &b[1], &b[2], &lanes,
                          &sigma, &bf16, &b[3], &b[4], &b[5], &b[6])) {
        free(held); /* the parser released what it had taken */
        return NULL;
    }
    PyObject *capsule = NULL;
    if (!make_matrix(&held->m, rows, cols, r, c, wide, &b[0], &b[1], &b[2], lanes, sigma, bf16, &b[3], &b[4], &b[5],
                     &b[6]))
        capsule = PyCapsule_New(held, HELD, held_free);
    if (!capsule) {
        for (int i = 0; i < 7; ++i) PyBuffer_Release(&b[i]);
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
    const int G = cell < 0 || cell > 4 ? 0 : cell_gates(cell);
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
    product(m, x.buf, y.buf, N, bias.len ? bias.buf : NULL, threads);
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
    status = run_recurrent(cell, m, bias.buf, xproj.buf, out.buf, h.buf, cell == CELL_LSTM ? cst.buf : NULL, T, B,
                           reverse, threads);
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
static int make_op(Op *op, PyObject *item, Py_buffer *b, int *taken) {
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
        const int G = op->cell < 0 || op->cell > 4 ? 0 : cell_gates(op->cell);
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
        const int status = make_op(&p->ops[i], PyTuple_GET_ITEM(p->source, i), p->buffers + p->held, &taken);
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

static PyObject *py_run(PyObject *self, PyObject *capsule) {
    (void)self;
    Program *p = PyCapsule_GetPointer(capsule, PROGRAM);
    if (!p) return NULL;
    int status = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (int i = 0; i < p->count && !status; ++i) {
        const Op *op = &p->ops[i];
        const long *z = op->size;
        switch (op->kind) {
        case OP_PRODUCT: product(op->m, op->x, op->y, op->n, op->bias, p->threads); break;
        case OP_STEP:
            status = run_recurrent(op->cell, op->m, op->bias, op->x, op->y, op->h, op->c, 1, op->n, 0, p->threads);
            break;
        case OP_ATTEND:
            attend(op->x, op->keys, op->memory, op->lengths, op->v, op->y, op->H, op->S, op->n, op->scratch);
            break;
        case OP_UNARY: unary(op->fn, op->x, op->y, z[0]); break;
        case OP_GATHER: status = gather(op->keys, z[0], z[1], op->lengths, op->y, op->n) ? 2 : 0; break;
        case OP_LAYER_NORM: layer_norm(op->x, op->y, op->keys, op->bias, z[0], z[1], op->eps, op->n); break;
        case OP_SOFTMAX: softmax(op->x, op->y, z[0], z[1], op->fn, op->n); break;
        case OP_BINARY: binary(op->fn, op->x, op->keys, op->y, z[0], z[1], z[2]); break;
        case OP_COPY: copy_features(op->x, op->y, z[0], z[1], z[2], z[3], z[4], z[5], op->n); break;
        case OP_CELL:
            pointwise(op->cell, op->H, op->n, 0, op->H * op->n, op->x, op->keys, op->h, op->scratch, op->c, op->y);
            break;
        }
    }
    Py_END_ALLOW_THREADS;
    if (status == 2) {
        PyErr_SetString(PyExc_IndexError, "program: an id is outside its embedding table");
        return NULL;
    }
    if (status) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_set_avx512(PyObject *self, PyObject *args) {
    (void)self;
    int flag;
    if (!PyArg_ParseTuple(args, "p", &flag)) return NULL;
    if (flag && !cpu_avx512) {
        PyErr_SetString(PyExc_ValueError, "this CPU does not run AVX-512F (or the kernels were built without AVX2)");
        return NULL;
    }
    use_avx512 = flag;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"set_avx512", py_set_avx512, METH_VARARGS, "set_avx512(flag): allow the AVX-512 kernels or not"},
    {"matrix", py_matrix, METH_VARARGS,
     "matrix(rows, cols, r, c, wide, rowptr, index, values, lanes, sigma, bf16, sell_ptr, sell_order, sell_index, "
     "sell_values): the compiled matrix (a capsule holding the buffers), kernels chosen for the instruction set "
     "allowed now"},
    {"spmm", py_spmm, METH_VARARGS, "spmm(matrix, x, y, bias, n, threads): y = W x + bias"},
    {"recurrent", py_recurrent, METH_VARARGS, "recurrent(cell, matrix, bias_hh, xproj, out, h, c, T, B, reverse, threads)"},
    {"program", py_program, METH_VARARGS,
     "program(operations, threads): products (0, matrix, x, y, bias, n), one-step layers "
     "(1, matrix, cell, bias_hh, xproj, out, h, c, n), attention (2, query, keys, memory, lengths, v, context, H, S, "
     "n), unary functions, gathers, norms, softmax, elementwise arithmetic, copies and cells (3 to 9: see the "
     "comment above Op), compiled to run in order by run(program)"},
    {"run", py_run, METH_O, "run(program): every operation of the program, in order"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "sparsernn compiled kernels", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
    PyObject *mod = PyModule_Create(&module);
    if (!mod) return NULL;
#ifdef __AVX2__
    PyModule_AddIntConstant(mod, "avx2", 1);
    __builtin_cpu_init();
    cpu_avx512 = use_avx512 = !!__builtin_cpu_supports("avx512f");
#else
    PyModule_AddIntConstant(mod, "avx2", 0);
#endif
    PyModule_AddIntConstant(mod, "avx512", cpu_avx512);
    PyModule_AddIntConstant(mod, "SLICE", SLICE);
#ifdef _OPENMP
    PyModule_AddIntConstant(mod, "openmp", 1);
#else
    PyModule_AddIntConstant(mod, "openmp", 0);
#endif
    return mod;
}
