/* AVX2 kernels (x86 built with AVX2, -march=native on an AVX2 machine): products with one column (x
 * gathered 8 at a time, the interleaved one-column copy, vector blocks) and with 4 and 16 columns of
 * unstructured matrices. Elsewhere this file is empty. A strided column falls back to the portable kernel
 * of its shape (kernels.c), which every kernel here is tested against. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "simd.h"

#ifdef __AVX2__
/* Unstructured, one contiguous column, uint16 indices. Each non-zero needs its own load of x: 8 scalar
 * loads are packed into a vector (faster here than AVX2's gather instruction or a scalar loop: see
 * benchmarks/probes/csr_gather_variants.c), then one FMA per 8 non-zeros; two accumulators. */
void sr_avx2_csr_gather_u16(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                           const float *bias) {
    if (ldx != 1) { /* a column of a wider x: strided */
        sr_portable_kernel(m, 2)(m, br0, br1, X, ldx, Y, ldy, bias);
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
 * benchmarks/probes/csr_gather_variants.c). Rows [br0, br1) must be whole windows, else CSR. */
static inline __attribute__((always_inline)) void interleaved(const Matrix *m, int br0, int br1, const float *X,
                                                              long ldx, float *Y, long ldy, const float *bias,
                                                              const int bf16) {
    if (ldx != 1 || br0 % m->sigma || br1 % m->sigma) {
        sr_avx2_csr_gather_u16(m, br0, br1, X, ldx, Y, ldy, bias);
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
/* The same for int32 x. */
static inline __m256i gather_w8(const int32_t *X, const uint16_t *i) {
    uint64_t a, b;
    memcpy(&a, i, 8);
    memcpy(&b, i + 4, 8);
    return _mm256_set_epi32(X[b >> 48], X[(b >> 32) & 0xffff], X[(b >> 16) & 0xffff], X[b & 0xffff], X[a >> 48],
                            X[(a >> 32) & 0xffff], X[(a >> 16) & 0xffff], X[a & 0xffff]);
}

/* A slot's 8 products (int32) of int8 values and x held as gather_w8 reads it. */
static inline __m256i products8(const int8_t *v, const uint16_t *ix, const int32_t *x, size_t at) {
    return _mm256_madd_epi16(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(v + at))), gather_w8(x, ix + at));
}

/* int8 values, one column, from the interleaved copy with int8 values: x quantized and held as
 * int32 whose upper halves are 0, so that vpmaddwd of it and of the sign-extended q gives each lane its
 * exact product (x * q + 0 * sign); the int32 sums equal the portable kernel's. */
void sr_avx2_int8_interleaved(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                              const float *bias) {
    if (br0 % m->sigma || br1 % m->sigma) {
        sr_int8_csr(m, br0, br1, X, ldx, Y, ldy, bias);
        return;
    }
    int8_t xq[m->cols];
    int32_t xw[m->cols];
    float xs;
    sr_quantize(X, ldx, m->cols, m->cols, xq, &xs);
    for (int i = 0; i < m->cols; ++i) xw[i] = (uint16_t)(int16_t)xq[i];
    const int8_t *v = m->sell_values;
    const uint16_t *ix = m->sell_index;
    for (int g = br0 / 8; g < br1 / 8; ++g) {
        int32_t s = m->sell_ptr[g];
        const int32_t end = m->sell_ptr[g + 1];
        __m256i p0 = _mm256_setzero_si256(), p1 = _mm256_setzero_si256();
        for (; s + 2 <= end; s += 2) {
            p0 = _mm256_add_epi32(p0, products8(v, ix, xw, 8 * (size_t)s));
            p1 = _mm256_add_epi32(p1, products8(v, ix, xw, 8 * (size_t)s + 8));
        }
        if (s < end) p0 = _mm256_add_epi32(p0, products8(v, ix, xw, 8 * (size_t)s));
        int32_t sums[8];
        _mm256_storeu_si256((__m256i *)sums, _mm256_add_epi32(p0, p1));
        sr_int8_rows(m, g, 8, sums, 0, xs, Y, ldy, bias);
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

/* R x 1 blocks (R = 8 or 16 consecutive rows of one column), one contiguous column: per block one
 * broadcast of x and R/8 FMAs; four blocks in flight, their four indices in one 64-bit load (the kernel is
 * bound by its loads: 1.15x faster so, benchmarks/probes/column_blocks_probe.c). VALUES8(k, h) loads the 8
 * values h of block k: float32, or bfloat16 (m->sell_values) widened by a shift. */
#define COLUMN_BLOCKS(NAME, R, VALUES8)                                                          \
    static void NAME(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy, \
                     const float *bias) {                                                        \
        if (ldx != 1 || ldy != 1) {                                                              \
            sr_portable_kernel(m, 2)(m, br0, br1, X, ldx, Y, ldy, bias);                                  \
            return;                                                                              \
        }                                                                                        \
        const uint16_t *index = (const uint16_t *)m->index;                                      \
        for (int br = br0; br < br1; ++br) {                                                     \
            __m256 acc[4][(R) / 8];                                                              \
            for (int u = 0; u < 4; ++u)                                                          \
                for (int h = 0; h < (R) / 8; ++h) acc[u][h] = _mm256_setzero_ps();              \
            int32_t k = m->rowptr[br];                                                           \
            const int32_t end = m->rowptr[br + 1];                                               \
            for (; k + 4 <= end; k += 4) {                                                       \
                uint64_t four;                                                                   \
                memcpy(&four, index + k, 8);                                                     \
                for (int u = 0; u < 4; ++u) {                                                    \
                    const __m256 x = _mm256_broadcast_ss(X + ((four >> (16 * u)) & 0xffff));    \
                    for (int h = 0; h < (R) / 8; ++h)                                            \
                        acc[u][h] = _mm256_fmadd_ps(VALUES8(k + u, h), x, acc[u][h]);            \
                }                                                                                \
            }                                                                                    \
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
            sr_portable_kernel(m, 2)(m, br0, br1, X, ldx, Y, ldy, bias);                              \
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
        sr_portable_kernel(m, 2)(m, br0, br1, X, ldx, Y, ldy, bias);
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
        sr_portable_kernel(m, 2)(m, br0, br1, X, ldx, Y, ldy, bias);
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
        sr_portable_kernel(m, 2)(m, br0, br1, X, ldx, Y, ldy, bias);
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


/* Unstructured, 16 columns (rows of X at stride ldx): per non-zero one broadcast of the weight and two
 * FMAs; four non-zeros in flight, so eight accumulators cover the FMA latency. The 16 columns are first
 * copied side by side (64 bytes per input feature), so that the loads of x stay in a few pages instead of
 * one page per feature. The copy is made per call, that is per band of rows and tile, into a small buffer
 * that stays in L1; packing all tiles once in rows_product into one large buffer was tried and was slower. */
static void csr_tile16_u16(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                           const float *bias) {
    float *packed = sr_pack_tile(m, &X, &ldx, 16);
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

/* Unstructured, 4 columns (a batch of 4, or the 4-column tile after the 16-column ones): per non-zero a
 * broadcast weight times the feature's 4 x values, four non-zeros in flight; x packed as for 16 columns. */
static void csr_tile4_u16(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                          const float *bias) {
    float *packed = sr_pack_tile(m, &X, &ldx, 4);
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

kernel_fn sr_avx2_kernel(const Matrix *m, int nn_slot, int shape) {
    if (m->wide) return NULL;
    if (nn_slot == 2 && m->sell_bf16 && !m->lanes && (shape == 2 || shape == 3))
        return shape == 2 ? column_blocks_8_bf16 : column_blocks_16_bf16;
    if (nn_slot == 2) {
        if (shape == 0 && m->lanes == 8) return m->sell_bf16 ? interleaved_bf16 : interleaved_f32;
        return shape == 0 ? sr_avx2_csr_gather_u16 : one_column[shape];
    }
    if (nn_slot == 0 && shape == 0) return csr_tile16_u16;
    if (nn_slot == 1 && shape == 0) return csr_tile4_u16;
    return NULL;
}
#else
typedef int sr_no_avx2; /* an empty translation unit is not C */
#endif
