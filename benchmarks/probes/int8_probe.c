/* Stand-alone probe behind the choice of int8 products (BENCHMARKS.md, "int8 values"): one column times a
 * 90% sparse matrix (random pattern, values ~ N(0, 1)) by the library's kernels (libsparsernn: float32 and
 * bfloat16 values in the sliced copy, int8 products in the quad copy, the AVX2 paths) against weight-only
 * int8, which this file adds: the sliced copy's layout with int8 values widened to float32 in registers
 * (vpmovsxbd, vcvtdq2ps), x in float32, each row's sum times its scale at the end. The methods take turns
 * (15 rounds of 200 calls) and each keeps its fastest round.
 * Build and run (AVX-512 VNNI machine):
 *   make runtime && gcc -O3 -march=native -Iruntime/src benchmarks/probes/int8_probe.c build/runtime/libsparsernn.a \
 *       -lm -o /tmp/int8_probe && /tmp/int8_probe */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"
#include "layouts.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* Weight-only int8 over the sliced layout: as the library's sliced kernel (kernels_avx512.c), the values
 * int8 and widened, the per-row scale applied once per row. */
__attribute__((target("avx512f,avx512bw"))) static void weight_only(const Matrix *m, const int8_t *v8,
                                                                     const float *lane_scale, const float *X,
                                                                     float *Y) {
    const int width = sr_slice_width(m->cols), per_window = (m->sigma + 15) / 16;
    const int slices = (m->cols + width - 1) / width;
    const uint8_t *ix = m->sell_index;
    for (int g = 0; g < m->rows / m->sigma * per_window; ++g) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        const int32_t *ptr = m->sell_ptr + (size_t)g * slices;
        for (int j = 0; j < slices; ++j) {
            int32_t s = ptr[j];
            const int32_t end = ptr[j + 1];
            if (s == end) continue;
            __m512 x[4];
            for (int q = 0; q < width / 16; ++q) x[q] = _mm512_loadu_ps(X + width * j + 16 * q); /* X padded */
            for (; s < end; ++s) {
                const __m512i i = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ix + 16 * (size_t)s)));
                const __mmask16 upper = _mm512_test_epi32_mask(i, _mm512_set1_epi32(32));
                const __m512 xs = width == 32 ? _mm512_permutex2var_ps(x[0], i, x[1])
                                              : _mm512_mask_blend_ps(upper, _mm512_permutex2var_ps(x[0], i, x[1]),
                                                                     _mm512_permutex2var_ps(x[2], i, x[3]));
                const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(v8 + 16 * (size_t)s))));
                if (s & 1)
                    a1 = _mm512_fmadd_ps(w, xs, a1);
                else
                    a0 = _mm512_fmadd_ps(w, xs, a0);
            }
        }
        float sums[16];
        _mm512_storeu_ps(sums, _mm512_mul_ps(_mm512_add_ps(a0, a1), _mm512_loadu_ps(lane_scale + 16 * g)));
        for (int lane = 0; lane < 16; ++lane)
            if (m->sell_order[16 * g + lane] >= 0) Y[m->sell_order[16 * g + lane]] = sums[lane];
    }
}

static void probe(int rows, int cols, long rows_unit) {
    srand(1);
    const double density = 0.1;
    int32_t *rowptr = calloc((size_t)rows + 1, 4);
    uint16_t *index = malloc((size_t)rows * cols * 2);
    float *values = malloc((size_t)rows * cols * 4), *scale = calloc((size_t)rows, 4);
    int8_t *q = malloc((size_t)rows * cols);
    int nnz = 0;
    for (int r = 0; r < rows; ++r) {
        float most = 0.0f;
        const int start = nnz;
        for (int c = 0; c < cols; ++c)
            if (rand() < density * RAND_MAX) {
                const float u = (rand() + 1.0f) / (RAND_MAX + 2.0f), w = (rand() + 1.0f) / (RAND_MAX + 2.0f);
                index[nnz] = (uint16_t)c, values[nnz] = sqrtf(-2 * logf(u)) * cosf(6.2831853f * w);
                most = fabsf(values[nnz]) > most ? fabsf(values[nnz]) : most;
                ++nnz;
            }
        scale[r] = most / 127.0f;
        for (int k = start; k < nnz; ++k) {
            q[k] = (int8_t)lrintf(values[k] / scale[r]);
            values[k] = q[k] * scale[r]; /* the same numbers in every method */
        }
        rowptr[r + 1] = nnz;
    }
    float *x = aligned_alloc(64, 4 * (size_t)(cols + 64)), *y = aligned_alloc(64, 4 * (size_t)rows);
    for (int c = 0; c < cols + 64; ++c) x[c] = c < cols ? sinf(0.37f * c) : 0.0f;
    const Matrix csr = {.rows = rows, .cols = cols, .r = 1, .c = 1, .rowptr = rowptr, .index = index, .values = values};
    Matrix f32 = csr, bf16 = csr, int8 = csr, avx2_f32 = csr, avx2_int8 = csr;
    void *owned[6][5];
    sr_set_avx512(1);
    sr_one_column_copy(&f32, rows_unit, 16, 0, owned[0]);
    /* bf16: the values rounded to bfloat16 first, as a bf16 file holds them */
    float *rounded = malloc((size_t)nnz * 4);
    for (int k = 0; k < nnz; ++k) {
        uint32_t bits;
        memcpy(&bits, &values[k], 4);
        bits = (bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff0000u;
        memcpy(&rounded[k], &bits, 4);
    }
    bf16.values = rounded;
    sr_one_column_copy(&bf16, rows_unit, 16, 1, owned[1]);
    int8.q = q, int8.scale = scale;
    sr_int8_copy(&int8, rows_unit, owned[2]);
    /* weight-only: the float32 sliced layout's values as int8, the lane scales per group */
    const int width = sr_slice_width(cols), slices = (cols + width - 1) / width;
    const int slots = f32.sell_ptr[(size_t)rows / f32.sigma * ((f32.sigma + 15) / 16) * slices];
    int8_t *v8 = aligned_alloc(64, (size_t)slots * 16 + 64);
    const int groups = rows / f32.sigma * ((f32.sigma + 15) / 16);
    float *lane_scale = aligned_alloc(64, 64 * (size_t)groups);
    for (int g = 0; g < groups; ++g)
        for (int lane = 0; lane < 16; ++lane) {
            const int32_t row = f32.sell_order[16 * g + lane];
            lane_scale[16 * g + lane] = row >= 0 ? scale[row] : 0.0f;
        }
    for (int g = 0; g < groups; ++g)
        for (int s = f32.sell_ptr[(size_t)g * slices]; s < f32.sell_ptr[(size_t)(g + 1) * slices]; ++s)
            for (int lane = 0; lane < 16; ++lane) {
                const float v = ((const float *)f32.sell_values)[16 * (size_t)s + lane];
                v8[16 * (size_t)s + lane] = (int8_t)(v == 0.0f ? 0 : lrintf(v / lane_scale[16 * g + lane]));
            }
    sr_set_avx512(0);
    sr_one_column_copy(&avx2_f32, rows_unit, 8, 0, owned[3]);
    avx2_int8.q = q, avx2_int8.scale = scale;
    sr_int8_copy(&avx2_int8, rows_unit, owned[4]);
    sr_set_avx512(1);
    sr_matrix_kernels(&f32), sr_matrix_kernels(&bf16), sr_matrix_kernels(&int8);
    /* the probe's kernel computes what the library's float32 kernel does (the same numbers) */
    float *check = aligned_alloc(64, 4 * (size_t)rows);
    sr_product(&f32, x, check, 1, NULL, 1);
    weight_only(&f32, v8, lane_scale, x, y);
    double worst = 0.0, largest = 0.0;
    for (int r = 0; r < rows; ++r) {
        worst = fabs(y[r] - check[r]) > worst ? fabs(y[r] - check[r]) : worst;
        largest = fabs(check[r]) > largest ? fabs(check[r]) : largest;
    }
    if (worst > 1e-5 * largest) {
        fprintf(stderr, "weight-only int8 differs from float32 by %g of %g\n", worst, largest);
        exit(1);
    }
    free(check);
    const char *names[] = {"float32, sliced (AVX-512)", "bfloat16, sliced (AVX-512)",
                           "int8 weight-only, sliced (AVX-512)", "int8 products, quad (AVX-512 VNNI)",
                           "float32, interleaved (AVX2)", "int8 products, interleaved (AVX2)"};
    double best[6];
    for (int k = 0; k < 6; ++k) best[k] = 1e9;
    for (int round = 0; round < 15; ++round)
        for (int k = 0; k < 6; ++k) {
            sr_set_avx512(k < 4);
            const double t = now();
            for (int i = 0; i < 200; ++i) switch (k) {
                case 0: sr_product(&f32, x, y, 1, NULL, 1); break;
                case 1: sr_product(&bf16, x, y, 1, NULL, 1); break;
                case 2: weight_only(&f32, v8, lane_scale, x, y); break;
                case 3: sr_product(&int8, x, y, 1, NULL, 1); break;
                case 4: sr_product(&avx2_f32, x, y, 1, NULL, 1); break;
                case 5: sr_product(&avx2_int8, x, y, 1, NULL, 1); break;
                }
            const double us = (now() - t) / 200 * 1e6;
            best[k] = us < best[k] ? us : best[k];
        }
    sr_set_avx512(1);
    printf("%d x %d, 90%%: %d non-zeros, %d slots in the sliced copy\n", rows, cols, nnz, slots);
    for (int k = 0; k < 6; ++k) printf("  %-38s %7.1f us  (%.2fx float32 sliced)\n", names[k], best[k], best[0] / best[k]);
}

int main(void) {
    sr_cpu_avx512();
    if (!sr_use_avx512()) {
        fprintf(stderr, "this probe needs AVX-512 (VNNI and VBMI for the int8 products)\n");
        return 2;
    }
    printf("int8 kernel here: %s\n", sr_int8_kernel());
    probe(1760, 1760, 1760);
    probe(10000, 200, 10000);
    probe(3072, 1024, 1024);
    return 0;
}
