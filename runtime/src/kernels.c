/* Block-sparse (CSR = 1x1 blocks) times dense products, and whole-sequence recurrent layers (RNN, GRU,
 * LSTM) with the gates fused, one call per layer and direction (layouts: kernels.h).
 *
 * Kernels for 9 block shapes and 1, 4 or 16 columns at a time; with AVX2 (built with -march=native on an
 * AVX2 machine) the one-column kernels gather x 8 values at a time or run the one-column copies, and
 * with AVX-512F (found at run time) the sliced copy; elsewhere the portable kernels, which the compiler
 * vectorizes for the target (NEON on aarch64).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"
#include "simd.h"

static int cpu_avx512 = -1; /* the CPU (and OS) run AVX-512F: found at the first question */
static int use_avx512 = 0;  /* the AVX-512 kernels may run (sr_set_avx512; at first: cpu_avx512) */

int sr_avx2(void) {
#ifdef __AVX2__
    return 1;
#else
    return 0;
#endif
}

int sr_cpu_avx512(void) {
    if (cpu_avx512 < 0) {
#ifdef __AVX2__
        __builtin_cpu_init();
        cpu_avx512 = !!__builtin_cpu_supports("avx512f");
        /* SPARSERNN_ISA=avx2 keeps the AVX-512 kernels off (benchmarks of the AVX2 path) */
        const char *isa = getenv("SPARSERNN_ISA");
        use_avx512 = cpu_avx512 && !(isa && !strcmp(isa, "avx2"));
#else
        cpu_avx512 = 0;
#endif
    }
    return cpu_avx512;
}

int sr_set_avx512(int allowed) {
    if (!sr_cpu_avx512() && allowed) return -1;
    use_avx512 = allowed;
    return 0;
}

int sr_use_avx512(void) { return sr_cpu_avx512() && use_avx512; }

int sr_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int sr_cell_gates(int cell) { return cell == CELL_GRU ? 3 : cell == CELL_LSTM ? 4 : 1; }

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

static const int shape_table[][2] = {{1, 1}, {4, 1}, {8, 1}, {16, 1}, {1, 4}, {1, 8}, {1, 16}, {4, 4}, {8, 8}};
#define NSHAPES 9
#define ROW(NN, SUF)                                                                              \
    {k_1x1_##NN##SUF, k_4x1_##NN##SUF, k_8x1_##NN##SUF, k_16x1_##NN##SUF, k_1x4_##NN##SUF,        \
     k_1x8_##NN##SUF, k_1x16_##NN##SUF, k_4x4_##NN##SUF, k_8x8_##NN##SUF}
/* [index width][columns 16, 4, 1][shape]. Matrices with int32 indices (more than 65536 block columns,
 * which no recurrent or output layer of the models here has) run the generic kernel: their 27 kernels
 * would add about 60 KB of code to every build. */
static const kernel_fn kernels[2][3][NSHAPES] = {
    {ROW(16, _u16), ROW(4, _u16), ROW(1, _u16)},
    {{NULL}, {NULL}, {NULL}},
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
#if defined(__aarch64__) && defined(__ARM_NEON)
            if (nn_slot == 2 && !m->wide && s == 0) return sr_neon_csr_u16;
            if (nn_slot == 2 && !m->wide && (s == 2 || s == 3)) return sr_neon_column_blocks;
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
size_t sr_recurrent_scratch(int cell, long H, long B, int threads) {
    return sizeof(float) * (size_t)((sr_cell_gates(cell) + 1) * H * B) + sizeof(int) * (size_t)(threads + 1);
}

int sr_recurrent(int cell, const Matrix *m, const float *bias, const float *xproj, float *out, float *h, float *c,
                 long T, long B, int reverse, int threads, void *scratch) {
    const int G = sr_cell_gates(cell);
    const long H = m->cols;
    void *own = scratch ? NULL : malloc(sr_recurrent_scratch(cell, H, B, threads));
    if (!scratch && !own) return -1;
    float *gates = scratch ? scratch : own, *spare = gates + G * H * B;
    int *bounds = (int *)(spare + H * B);
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
                sr_pointwise(cell, H, B, q0, q1, xproj + t * G * H * B, gates, cur, next, c, out + t * H * B);
            float *swap = cur;
            cur = next;
            next = swap;
#pragma omp barrier
        }
        if (tid == 0) final_h = cur;
    }
    if (final_h != h) memcpy(h, final_h, sizeof(float) * (size_t)(H * B));
    free(own);
    return 0;
}

/* Y = W X + bias over N columns, the block rows split among threads on whole windows. */
void sr_product(const Matrix *m, const float *X, float *Y, long N, const float *bias, int threads) {
    const int block_rows = m->rows / m->r, parts = threads < 1 ? 1 : threads;
#pragma omp parallel for schedule(static) num_threads(parts) if (parts > 1)
    for (int part = 0; part < parts; ++part)
        rows_product(m, whole_windows(m, (int)((long)block_rows * part / parts)),
                     part + 1 == parts ? block_rows : whole_windows(m, (int)((long)block_rows * (part + 1) / parts)),
                     X, N, Y, N, N, bias);
}

void sr_matrix_kernels(Matrix *m) {
    sr_cpu_avx512();
    for (int slot = 0; slot < 3; ++slot) m->by_width[slot] = pick_kernel(m, slot);
}
