/* What the stand-alone AVX-512 kernel probes share (benchmarks/probes/sliced_expand_probe.c,
 * benchmarks/probes/slice_width_probe.c): reading their data file, the clock, and the 4-row dense GEMV they
 * compare with. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* n bytes of f into a new buffer on a cache line (padded, so vector loads past the end stay inside). */
static void *read_aligned(FILE *f, size_t n) {
    void *p = aligned_alloc(64, (n + 127) / 64 * 64);
    if (!p || fread(p, 1, n, f) != n) exit(2);
    return p;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* Y = W X for a dense row-major rows x cols W, four rows at a time (rows a multiple of 4). */
static void dense4(const float *W, int rows, int cols, const float *X, float *Y) {
    for (int i = 0; i + 4 <= rows; i += 4) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k + 16 <= cols; k += 16) {
            const __m512 xv = _mm512_loadu_ps(X + k);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(W + (size_t)i * cols + k), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(W + (size_t)(i + 1) * cols + k), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(W + (size_t)(i + 2) * cols + k), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(W + (size_t)(i + 3) * cols + k), xv, a3);
        }
        Y[i] = _mm512_reduce_add_ps(a0), Y[i + 1] = _mm512_reduce_add_ps(a1);
        Y[i + 2] = _mm512_reduce_add_ps(a2), Y[i + 3] = _mm512_reduce_add_ps(a3);
    }
}

/* A dense stand-in of the same shape (only the bytes matter to the GEMV's time). */
static float *dense_like(int rows, int cols) {
    float *W = aligned_alloc(64, 4 * (size_t)rows * cols);
    if (!W) exit(2);
    for (size_t i = 0; i < (size_t)rows * cols; ++i) W[i] = 0.001f * (i % 7);
    return W;
}
