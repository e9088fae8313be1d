/* Stand-alone probe behind BENCHMARKS.md's "Values on a cache line": the AVX-512 sliced one-column kernel
 * (padded slots in slices of 32 columns, as _kernels.c read them before slices of 64) against the same
 * layout storing only the non-zeros, each slot expanded by a 16-bit lane mask (vexpandps from memory, or
 * a load and vexpandps from a register), and a 4-row AVX-512 dense GEMV; n = 1760, 90%, random pattern,
 * aligned buffers, no Python. The methods take turns (15 rounds of 200 calls), each keeps its fastest
 * round. The matrix comes from benchmarks/probes/sliced_expand_probe.py, which builds and runs this file. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "probe.h"
static int rows, cols, sigma, nseg, nslots, ncomp;
static int32_t *ptr, *order; static uint8_t *ix; static float *vals, *comp, *x, *yref; static uint16_t *bits;
static inline __m512 lookup16(const uint8_t *index, __m512 lo, __m512 hi) {
    return _mm512_permutex2var_ps(lo, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)index)), hi);
}
static void padded(const float *X, float *Y) {
    const int slices = (cols + 31) / 32, groups = nseg / slices;
    for (int g = 0; g < groups; ++g) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        const int32_t *p = ptr + (size_t)g * slices;
        for (int j = 0; j < slices; ++j) {
            int s = p[j]; const int end = p[j + 1];
            const __m512 lo = _mm512_loadu_ps(X + 32 * j), hi = _mm512_loadu_ps(X + 32 * j + 16);
            for (; s + 4 <= end; s += 4) {
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + 16 * s), lookup16(ix + 16 * s, lo, hi), a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + 16 * s + 16), lookup16(ix + 16 * s + 16, lo, hi), a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + 16 * s + 32), lookup16(ix + 16 * s + 32, lo, hi), a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + 16 * s + 48), lookup16(ix + 16 * s + 48, lo, hi), a3);
            }
            for (; s < end; ++s) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + 16 * s), lookup16(ix + 16 * s, lo, hi), a0);
        }
        float sums[16]; _mm512_storeu_ps(sums, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        for (int l = 0; l < 16; ++l) { int r = order[16 * g + l]; if (r >= 0) Y[r] = sums[l]; }
    }
}
/* The non-zeros-only layout, each slot's values expanded by its 16-bit lane mask: from memory, and
 * loaded into a register first. Two functions on purpose: written as one with a flag, gcc folds the
 * load into the memory form, and the register variant then runs as slowly as the other. */
static void expanded(const float *X, float *Y) {
    const int slices = (cols + 31) / 32, groups = nseg / slices;
    const float *v = comp;
    for (int g = 0; g < groups; ++g) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        const int32_t *p = ptr + (size_t)g * slices;
        for (int j = 0; j < slices; ++j) {
            int s = p[j]; const int end = p[j + 1];
            const __m512 lo = _mm512_loadu_ps(X + 32 * j), hi = _mm512_loadu_ps(X + 32 * j + 16);
            for (; s + 4 <= end; s += 4) {
                const unsigned k0 = bits[s], k1 = bits[s + 1], k2 = bits[s + 2], k3 = bits[s + 3];
                const float *v1 = v + __builtin_popcount(k0), *v2 = v1 + __builtin_popcount(k1), *v3 = v2 + __builtin_popcount(k2);
                a0 = _mm512_fmadd_ps(_mm512_maskz_expandloadu_ps(k0, v), lookup16(ix + 16 * s, lo, hi), a0);
                a1 = _mm512_fmadd_ps(_mm512_maskz_expandloadu_ps(k1, v1), lookup16(ix + 16 * s + 16, lo, hi), a1);
                a2 = _mm512_fmadd_ps(_mm512_maskz_expandloadu_ps(k2, v2), lookup16(ix + 16 * s + 32, lo, hi), a2);
                a3 = _mm512_fmadd_ps(_mm512_maskz_expandloadu_ps(k3, v3), lookup16(ix + 16 * s + 48, lo, hi), a3);
                v = v3 + __builtin_popcount(k3);
            }
            for (; s < end; ++s) { const unsigned k = bits[s]; a0 = _mm512_fmadd_ps(_mm512_maskz_expandloadu_ps(k, v), lookup16(ix + 16 * s, lo, hi), a0); v += __builtin_popcount(k); }
        }
        float sums[16]; _mm512_storeu_ps(sums, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        for (int l = 0; l < 16; ++l) { int r = order[16 * g + l]; if (r >= 0) Y[r] = sums[l]; }
    }
}
static void expanded2(const float *X, float *Y) {
    const int slices = (cols + 31) / 32, groups = nseg / slices;
    const float *v = comp;
    for (int g = 0; g < groups; ++g) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        const int32_t *p = ptr + (size_t)g * slices;
        for (int j = 0; j < slices; ++j) {
            int s = p[j]; const int end = p[j + 1];
            const __m512 lo = _mm512_loadu_ps(X + 32 * j), hi = _mm512_loadu_ps(X + 32 * j + 16);
            for (; s + 4 <= end; s += 4) {
                const unsigned k0 = bits[s], k1 = bits[s + 1], k2 = bits[s + 2], k3 = bits[s + 3];
                const float *v1 = v + __builtin_popcount(k0), *v2 = v1 + __builtin_popcount(k1), *v3 = v2 + __builtin_popcount(k2);
                a0 = _mm512_fmadd_ps(_mm512_maskz_expand_ps(k0, _mm512_loadu_ps(v)), lookup16(ix + 16 * s, lo, hi), a0);
                a1 = _mm512_fmadd_ps(_mm512_maskz_expand_ps(k1, _mm512_loadu_ps(v1)), lookup16(ix + 16 * s + 16, lo, hi), a1);
                a2 = _mm512_fmadd_ps(_mm512_maskz_expand_ps(k2, _mm512_loadu_ps(v2)), lookup16(ix + 16 * s + 32, lo, hi), a2);
                a3 = _mm512_fmadd_ps(_mm512_maskz_expand_ps(k3, _mm512_loadu_ps(v3)), lookup16(ix + 16 * s + 48, lo, hi), a3);
                v = v3 + __builtin_popcount(k3);
            }
            for (; s < end; ++s) { const unsigned k = bits[s]; a0 = _mm512_fmadd_ps(_mm512_maskz_expand_ps(k, _mm512_loadu_ps(v)), lookup16(ix + 16 * s, lo, hi), a0); v += __builtin_popcount(k); }
        }
        float sums[16]; _mm512_storeu_ps(sums, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        for (int l = 0; l < 16; ++l) { int r = order[16 * g + l]; if (r >= 0) Y[r] = sums[l]; }
    }
}
static float *W;
static void dense(const float *X, float *Y) { dense4(W, rows, cols, X, Y); }
int main(int argc, char **argv) {
    FILE *f = fopen(argc > 1 ? argv[1] : "m.bin", "rb");
    int32_t h[6];
    if (!f || fread(h, 4, 6, f) != 6) return 1;
    rows = h[0]; cols = h[1]; sigma = h[2]; nseg = h[3]; nslots = h[4]; ncomp = h[5];
    ptr = read_aligned(f, 4 * (nseg + 1)); order = read_aligned(f, 4 * (size_t)(nseg / ((cols + 31) / 32)) * 16);
    ix = read_aligned(f, 16 * (size_t)nslots); vals = read_aligned(f, 64 * (size_t)nslots);  bits = read_aligned(f, 2 * (size_t)nslots);
    comp = read_aligned(f, 4 * (size_t)ncomp); x = read_aligned(f, 4 * cols); yref = read_aligned(f, 4 * rows);
    W = dense_like(rows, cols);
    float *y = calloc(rows, 4);
    double err = 0; padded(x, y); for (int i = 0; i < rows; ++i) err = fmax(err, fabs(y[i] - yref[i]));
    printf("padded err %g\n", err); memset(y, 0, 4 * rows);
    err = 0; expanded(x, y); for (int i = 0; i < rows; ++i) err = fmax(err, fabs(y[i] - yref[i]));
    printf("expanded err %g\n", err);
    memset(y,0,4*rows); err = 0; expanded2(x, y); for (int i = 0; i < rows; ++i) err = fmax(err, fabs(y[i] - yref[i]));
    printf("expanded2 err %g\n", err);
    const char *names[4] = {"padded (slices of 32)", "expanded from memory", "dense 4-row GEMV", "expanded from a register"};
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    for (int round = 0; round < 15; ++round)
        for (int k = 0; k < 4; ++k) {
            double t0 = now();
            for (int r = 0; r < 200; ++r) { if (k == 0) padded(x, y); else if (k == 1) expanded(x, y); else if (k == 2) dense(x, y); else expanded2(x, y); }
            double t = (now() - t0) / 200; if (t < best[k]) best[k] = t;
        }
    for (int k = 0; k < 4; ++k) printf("%s %.1f us\n", names[k], best[k] * 1e6);
}
