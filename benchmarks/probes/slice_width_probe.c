/* Stand-alone probe behind the sliced kernel's slice width (kernels.h, sr_slice_width): the AVX-512
 * one-column product over the sliced layout with x held in registers, slices of 32 columns (two
 * registers, one vpermi2ps a slot; unrolled by 4, and by 2 as the kernel is), 64 (four registers, two
 * vpermi2ps and a blend; by 2 as the kernel is) and 128 (eight registers, four vpermi2ps and three blends), against a 4-row
 * AVX-512 dense GEMV. Each data file given is one matrix; a call runs all of them one after another (one
 * file: a matrix alone; several: a model's products, each evicting the others from the caches). No Python,
 * aligned buffers; methods take turns (15 rounds of 200 calls) and each keeps its fastest round.
 * benchmarks/probes/slice_width_probe.py writes the layouts and runs this file. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "probe.h"
typedef struct { int nseg, nslots; int32_t *ptr, *order; uint8_t *ix; float *vals; } Layout;
#define MOST 8
static int rows, cols, count, shape[MOST][2];
static Layout lay[3], lays[MOST][3]; /* slices of 32, 64, 128 */
static float *x, *yref, *W, *xs[MOST], *yrefs[MOST], *Ws[MOST];
static inline __attribute__((always_inline)) __m512 look(const uint8_t *index, const __m512 *t, const int S) {
    const __m512i i = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)index));
    const __m512 p0 = _mm512_permutex2var_ps(t[0], i, t[1]);
    if (S == 32) return p0;
    const __mmask16 k5 = _mm512_test_epi32_mask(i, _mm512_set1_epi32(32));
    const __m512 a = _mm512_mask_blend_ps(k5, p0, _mm512_permutex2var_ps(t[2], i, t[3]));
    if (S == 64) return a;
    const __m512 c = _mm512_mask_blend_ps(k5, _mm512_permutex2var_ps(t[4], i, t[5]), _mm512_permutex2var_ps(t[6], i, t[7]));
    return _mm512_mask_blend_ps(_mm512_test_epi32_mask(i, _mm512_set1_epi32(64)), a, c);
}
static inline __attribute__((always_inline)) void sliced(const Layout *l, const float *X, float *Y, const int S, const int U) {
    const int slices = (cols + S - 1) / S, groups = l->nseg / slices;
    const float *v = l->vals;
    const uint8_t *ix = l->ix;
    __mmask16 last[8]; /* the last slice's columns in each register of x, as in _kernels.c */
    for (int q = 0; q < S / 16; ++q) {
        const int left = cols - S * (slices - 1) - 16 * q;
        last[q] = left >= 16 ? 0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
    }
    for (int g = 0; g < groups; ++g) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        const int32_t *p = l->ptr + (size_t)g * slices;
        for (int j = 0; j < slices; ++j) {
            int s = p[j];
            const int end = p[j + 1];
            if (s == end) continue;
            __m512 t[8];
            for (int q = 0; q < S / 16; ++q)
                t[q] = j + 1 < slices ? _mm512_loadu_ps(X + S * j + 16 * q) : _mm512_maskz_loadu_ps(last[q], X + S * j + 16 * q);
            if (U == 4)
                for (; s + 4 <= end; s += 4) {
                    a0 = _mm512_fmadd_ps(_mm512_load_ps(v + 16 * s), look(ix + 16 * s, t, S), a0);
                    a1 = _mm512_fmadd_ps(_mm512_load_ps(v + 16 * s + 16), look(ix + 16 * s + 16, t, S), a1);
                    a2 = _mm512_fmadd_ps(_mm512_load_ps(v + 16 * s + 32), look(ix + 16 * s + 32, t, S), a2);
                    a3 = _mm512_fmadd_ps(_mm512_load_ps(v + 16 * s + 48), look(ix + 16 * s + 48, t, S), a3);
                }
            for (; s + 2 <= end; s += 2) {
                a0 = _mm512_fmadd_ps(_mm512_load_ps(v + 16 * s), look(ix + 16 * s, t, S), a0);
                a1 = _mm512_fmadd_ps(_mm512_load_ps(v + 16 * s + 16), look(ix + 16 * s + 16, t, S), a1);
            }
            if (s < end) a0 = _mm512_fmadd_ps(_mm512_load_ps(v + 16 * s), look(ix + 16 * s, t, S), a0);
        }
        float sums[16];
        _mm512_storeu_ps(sums, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        for (int q = 0; q < 16; ++q) {
            const int r = l->order[16 * g + q];
            if (r >= 0) Y[r] = sums[q];
        }
    }
}
static void s32u4(const float *X, float *Y) { sliced(&lay[0], X, Y, 32, 4); }
static void s32u2(const float *X, float *Y) { sliced(&lay[0], X, Y, 32, 2); }
static void s64u2(const float *X, float *Y) { sliced(&lay[1], X, Y, 64, 2); }
static void s128u2(const float *X, float *Y) { sliced(&lay[2], X, Y, 128, 2); }
static void dense(const float *X, float *Y) { dense4(W, rows, cols, X, Y); }
static void (*fn[5])(const float *, float *) = {s32u4, s32u2, s64u2, s128u2, dense};
/* method k on matrix i: the globals the methods read set to that matrix */
static void on(int i, int k, float *y) {
    rows = shape[i][0], cols = shape[i][1], x = xs[i], yref = yrefs[i], W = Ws[i];
    memcpy(lay, lays[i], sizeof lay);
    fn[k](x, y);
}
int main(int argc, char **argv) {
    count = argc - 1;
    if (count < 1 || count > MOST) return 1;
    size_t most_rows = 0;
    for (int i = 0; i < count; ++i) {
        FILE *f = fopen(argv[i + 1], "rb");
        int32_t h[2];
        if (!f || fread(h, 4, 2, f) != 2) return 1;
        rows = shape[i][0] = h[0], cols = shape[i][1] = h[1];
        most_rows = (size_t)rows > most_rows ? (size_t)rows : most_rows;
        const int widths[3] = {32, 64, 128};
        for (int w = 0; w < 3; ++w) {
            Layout *l = &lays[i][w];
            if (fread(h, 4, 2, f) != 2) return 1;
            l->nseg = h[0], l->nslots = h[1];
            l->ptr = read_aligned(f, 4 * (size_t)(l->nseg + 1));
            l->order = read_aligned(f, 64 * (size_t)(l->nseg / ((cols + widths[w] - 1) / widths[w])));
            l->ix = read_aligned(f, 16 * (size_t)l->nslots);
            l->vals = read_aligned(f, 64 * (size_t)l->nslots);
        }
        xs[i] = read_aligned(f, 4 * (size_t)cols), yrefs[i] = read_aligned(f, 4 * (size_t)rows);
        Ws[i] = dense_like(rows, cols);
        fclose(f);
    }
    float *y = calloc(most_rows, 4);
    double best[5] = {1e9, 1e9, 1e9, 1e9, 1e9};
    for (int i = 0; i < count; ++i)
        for (int k = 0; k < 4; ++k) {
            memset(y, 0, 4 * most_rows);
            on(i, k, y);
            for (int r = 0; r < rows; ++r)
                if (fabs(y[r] - yref[r]) > 1e-3) return fprintf(stderr, "method %d row %d wrong\n", k, r), 3;
        }
    for (int round = 0; round < 15; ++round)
        for (int k = 0; k < 5; ++k) {
            const double t0 = now();
            for (int r = 0; r < 200; ++r)
                for (int i = 0; i < count; ++i) on(i, k, y);
            const double t = (now() - t0) / 200;
            if (t < best[k]) best[k] = t;
        }
    for (int k = 0; k < 5; ++k) printf("%.1f ", best[k] * 1e6);
    printf("\n");
    return 0;
}
