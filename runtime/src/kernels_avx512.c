/* AVX-512 kernels (chosen at run time where the CPU runs AVX-512F, unless SPARSERNN_ISA=avx2): the sliced
 * one-column copy of an unstructured matrix, and 16 columns in one register. Built on x86 with AVX2 only
 * (their fallbacks are the AVX2 kernels); elsewhere this file is empty. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "simd.h"

#ifdef __AVX2__
/* Unstructured, one contiguous column, from the sliced copy (AVX-512, chosen at run time): the values of
 * x in a slice sit in registers and each slot looks its 16 lanes' values up in them, so no x value is
 * loaded per non-zero: with slices of 32 columns one vpermi2ps a slot, with 64 two and a blend by the
 * index's bit 5 (sr_slice_width says which a matrix has). Costs padding (a segment runs as long as its
 * longest row) but no gathers. Rows [br0, br1) must be whole windows, else CSR. */
#define AVX512 __attribute__((target("avx512f")))
AVX512 static inline __attribute__((always_inline)) __m512 lookup16(const uint8_t *index, const __m512 *x,
                                                                    const int width) {
    const __m512i i = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)index));
    if (width == 32) return _mm512_permutex2var_ps(x[0], i, x[1]);
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
                                                                const int bf16, const int width) {
    if (ldx != 1 || br0 % m->sigma || br1 % m->sigma) {
        sr_avx2_csr_gather_u16(m, br0, br1, X, ldx, Y, ldy, bias);
        return;
    }
    const void *v = m->sell_values;
    const uint8_t *ix = m->sell_index;
    const int per_window = (m->sigma + 15) / 16, slices = (m->cols + width - 1) / width;
    __mmask16 last[4]; /* the last slice's columns in each register of x (0: past the end) */
    for (int q = 0; q < width / 16; ++q) {
        const int left = m->cols - width * (slices - 1) - 16 * q;
        last[q] = left >= 16 ? 0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
    }
    for (int g = br0 / m->sigma * per_window; g < br1 / m->sigma * per_window; ++g) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        const int32_t *ptr = m->sell_ptr + (size_t)g * slices;
        for (int j = 0; j < slices; ++j) {
            int32_t s = ptr[j];
            const int32_t end = ptr[j + 1];
            if (s == end) continue;
            __m512 x[4];
            for (int q = 0; q < width / 16; ++q) /* zeros past the columns (masked lanes are not read) */
                x[q] = j + 1 < slices ? _mm512_loadu_ps(X + width * j + 16 * q)
                                      : _mm512_maskz_loadu_ps(last[q], X + width * j + 16 * q);
            /* two slots a step: segments are short (about 11 slots at 90%), so a longer unrolled step
             * mostly adds tail iterations */
            for (; s + 2 <= end; s += 2) {
                const size_t at = 16 * (size_t)s;
                a0 = _mm512_fmadd_ps(values16(v, at, bf16), lookup16(ix + at, x, width), a0);
                a1 = _mm512_fmadd_ps(values16(v, at + 16, bf16), lookup16(ix + at + 16, x, width), a1);
            }
            if (s < end)
                a0 = _mm512_fmadd_ps(values16(v, 16 * (size_t)s, bf16), lookup16(ix + 16 * (size_t)s, x, width), a0);
        }
        float sums[16];
        _mm512_storeu_ps(sums, _mm512_add_ps(a0, a1));
        for (int lane = 0; lane < 16; ++lane) {
            const int32_t row = m->sell_order[16 * g + lane];
            if (row >= 0) Y[(size_t)row * ldy] = sums[lane] + (bias ? bias[row] : 0.0f);
        }
    }
}
#define SLICED(name, bf16, width)                                                                            \
    AVX512 static void name(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy, \
                            const float *bias) {                                                             \
        sliced(m, br0, br1, X, ldx, Y, ldy, bias, bf16, width);                                              \
    }
SLICED(sliced32_f32, 0, 32)
SLICED(sliced32_bf16, 1, 32)
SLICED(sliced64_f32, 0, 64)
SLICED(sliced64_bf16, 1, 64)

/* The same with AVX-512 (chosen at run time): one 16-wide FMA per non-zero instead of two 8-wide. */
AVX512 static void csr_tile16_avx512(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y,
                                     long ldy, const float *bias) {
    float *packed = sr_pack_tile(m, &X, &ldx, 16);
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

/* int8 values, one column, from the quad copy (AVX-512 VNNI and VBMI, chosen at run time): x
 * quantized to int8 and offset to uint8 (x + 128), a slice's 64 bytes in one register; per 4 slots of the
 * 16 lanes one vpermb looks the 64 x bytes up and one vpdpbusd adds the 4 products of each lane to its
 * int32 sum: 4 slots of 16 rows in two instructions, where the float32 kernel takes a blend, two
 * vpermi2ps and an FMA per slot. The offset comes off at the end as 128 times the row's sum of q. */
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vnni")))
VNNI void sr_avx512_int8_quad(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                                 const float *bias) {
    if (br0 % m->sigma || br1 % m->sigma) {
        sr_int8_csr(m, br0, br1, X, ldx, Y, ldy, bias);
        return;
    }
    const int per_window = (m->sigma + 15) / 16, slices = (m->cols + QUAD_SLICE - 1) / QUAD_SLICE;
    int8_t xq[QUAD_SLICE * slices];
    float xs;
    sr_quantize(X, ldx, m->cols, QUAD_SLICE * slices, xq, &xs);
    uint8_t xu[QUAD_SLICE * slices]; /* x + 128 */
    for (int i = 0; i < QUAD_SLICE * slices; ++i) xu[i] = (uint8_t)(xq[i] + 128);
    const int8_t *v = m->sell_values;
    const uint8_t *ix = m->sell_index;
    for (int g = br0 / m->sigma * per_window; g < br1 / m->sigma * per_window; ++g) {
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        const int32_t *ptr = m->sell_ptr + (size_t)g * slices;
        for (int j = 0; j < slices; ++j) {
            int32_t s = ptr[j] / 4;
            const int32_t end = ptr[j + 1] / 4;
            if (s == end) continue;
            const __m512i x = _mm512_loadu_si512(xu + QUAD_SLICE * j);
            for (; s + 2 <= end; s += 2) {
                const size_t at = 64 * (size_t)s;
                a0 = _mm512_dpbusd_epi32(a0, _mm512_permutexvar_epi8(_mm512_loadu_si512(ix + at), x),
                                         _mm512_loadu_si512(v + at));
                a1 = _mm512_dpbusd_epi32(a1, _mm512_permutexvar_epi8(_mm512_loadu_si512(ix + at + 64), x),
                                         _mm512_loadu_si512(v + at + 64));
            }
            if (s < end)
                a0 = _mm512_dpbusd_epi32(a0, _mm512_permutexvar_epi8(_mm512_loadu_si512(ix + 64 * (size_t)s), x),
                                         _mm512_loadu_si512(v + 64 * (size_t)s));
        }
        int32_t sums[16];
        _mm512_storeu_si512(sums, _mm512_add_epi32(a0, a1));
        sr_int8_rows(m, g, 16, sums, 128, xs, Y, ldy, bias);
    }
}

kernel_fn sr_avx512_kernel(const Matrix *m, int nn_slot, int shape) {
    if (m->wide || shape != 0) return NULL;
    if (nn_slot == 2 && m->lanes == 16 && sr_slice_width(m->cols) == 32) return m->sell_bf16 ? sliced32_bf16 : sliced32_f32;
    if (nn_slot == 2 && m->lanes == 16) return m->sell_bf16 ? sliced64_bf16 : sliced64_f32;
    if (nn_slot == 0) return csr_tile16_avx512;
    return NULL;
}
#else
typedef int sr_no_avx512; /* an empty translation unit is not C */
#endif
