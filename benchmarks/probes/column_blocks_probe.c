/* Stand-alone probe behind the one-column kernel of 8x1 blocks (kernels_avx2.c, COLUMN_BLOCKS): variants
 * of y = W x over the GRU LM 2x1024's five products at 90% in 8x1 blocks (3072 x 512, three 3072 x 1024,
 * 10000 x 1024: about 9 MB of float32 values, more than the L2 cache holds), one after another as a streamed
 * token runs them, and each matrix alone. Random block patterns, 10% of the blocks kept; every variant is
 * checked against a scalar loop. Methods take turns (15 rounds of 100 tokens), each keeps its fastest round.
 * The kernel is bound by its loads (a block: its index, a broadcast of x, its values), not by the bytes or
 * the FMAs' latency: four indices in one 64-bit load won, more accumulators or AVX-512 did not.
 * gcc -O3 -march=native benchmarks/probes/column_blocks_probe.c -o /tmp/cb && /tmp/cb */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "probe.h"

typedef struct { int rows, cols; int32_t *rowptr; uint16_t *index; float *values, *x, *y; } M;

static M make(int rows, int cols, unsigned seed) {
    M m = {.rows = rows, .cols = cols};
    const int brows = rows / 8;
    m.rowptr = malloc(4 * (size_t)(brows + 1));
    m.index = aligned_alloc(64, (2 * (size_t)brows * cols + 127) / 64 * 64);
    m.values = aligned_alloc(64, 32 * (size_t)brows * cols / 10 + 4096);
    m.x = aligned_alloc(64, 4 * (size_t)cols + 64);
    m.y = aligned_alloc(64, 4 * (size_t)rows + 64);
    size_t k = 0;
    m.rowptr[0] = 0;
    for (int br = 0; br < brows; ++br) {
        for (int c = 0; c < cols; ++c) {
            seed = seed * 1103515245u + 12345u;
            if ((seed >> 8) % 10 == 0) m.index[k++] = (uint16_t)c;
        }
        m.rowptr[br + 1] = (int32_t)k;
    }
    for (size_t i = 0; i < 8 * k; ++i) m.values[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    for (int c = 0; c < cols; ++c) m.x[c] = (float)((c * 31) % 100) / 100.0f;
    return m;
}

static void reference(const M *m, float *y) {
    for (int br = 0; br < m->rows / 8; ++br)
        for (int h = 0; h < 8; ++h) {
            double s = 0;
            for (int k = m->rowptr[br]; k < m->rowptr[br + 1]; ++k) s += m->values[8 * (size_t)k + h] * m->x[m->index[k]];
            y[8 * br + h] = (float)s;
        }
}

/* Every variant's tail: the blocks [k, end) of block row br one at a time, added to sum, and the row stored. */
static inline __attribute__((always_inline)) void finish(const M *m, int br, int32_t k, int32_t end, __m256 sum) {
    for (; k < end; ++k)
        sum = _mm256_fmadd_ps(_mm256_loadu_ps(m->values + 8 * (size_t)k), _mm256_broadcast_ss(m->x + m->index[k]), sum);
    _mm256_storeu_ps(m->y + 8 * br, sum);
}

/* 0: the kernel as it is: a broadcast of x and an FMA a block, four blocks in flight. */
static void current(const M *m) {
    const float *X = m->x, *v = m->values;
    for (int br = 0; br < m->rows / 8; ++br) {
        __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int32_t k = m->rowptr[br];
        const int32_t end = m->rowptr[br + 1];
        for (; k + 4 <= end; k += 4)
            for (int u = 0; u < 4; ++u)
                a[u] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)(k + u)), _mm256_broadcast_ss(X + m->index[k + u]), a[u]);
        finish(m, br, k, end, _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    }
}

/* 1: eight blocks in flight. */
static void eight(const M *m) {
    const float *X = m->x, *v = m->values;
    for (int br = 0; br < m->rows / 8; ++br) {
        __m256 a[8];
        for (int u = 0; u < 8; ++u) a[u] = _mm256_setzero_ps();
        int32_t k = m->rowptr[br];
        const int32_t end = m->rowptr[br + 1];
        for (; k + 8 <= end; k += 8)
            for (int u = 0; u < 8; ++u)
                a[u] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)(k + u)), _mm256_broadcast_ss(X + m->index[k + u]), a[u]);
        for (int u = 1; u < 8; ++u) a[0] = _mm256_add_ps(a[0], a[u]);
        finish(m, br, k, end, a[0]);
    }
}

/* 2: AVX-512, two blocks a vector: 16 values in one load, x of the two blocks in its halves. */
static void paired(const M *m) {
    const float *X = m->x, *v = m->values;
    for (int br = 0; br < m->rows / 8; ++br) {
        __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        int32_t k = m->rowptr[br];
        const int32_t end = m->rowptr[br + 1];
        const uint16_t *ix = m->index;
#define PAIR(k) _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_broadcast_ss(X + ix[k])), _mm256_broadcast_ss(X + ix[(k) + 1]), 1)
        for (; k + 8 <= end; k += 8)
            for (int u = 0; u < 4; ++u)
                a[u] = _mm512_fmadd_ps(_mm512_loadu_ps(v + 8 * (size_t)(k + 2 * u)), PAIR(k + 2 * u), a[u]);
        for (; k + 2 <= end; k += 2) a[0] = _mm512_fmadd_ps(_mm512_loadu_ps(v + 8 * (size_t)k), PAIR(k), a[0]);
        __m512 s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
        __m256 t = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
        finish(m, br, k, end, t);
    }
}

/* 3: as 0, the four indices in one 64-bit load. */
static void index64(const M *m) {
    const float *X = m->x, *v = m->values;
    for (int br = 0; br < m->rows / 8; ++br) {
        __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int32_t k = m->rowptr[br];
        const int32_t end = m->rowptr[br + 1];
        for (; k + 4 <= end; k += 4) {
            uint64_t i;
            memcpy(&i, m->index + k, 8);
            a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)k), _mm256_broadcast_ss(X + (i & 0xffff)), a[0]);
            a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)k + 8), _mm256_broadcast_ss(X + ((i >> 16) & 0xffff)), a[1]);
            a[2] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)k + 16), _mm256_broadcast_ss(X + ((i >> 32) & 0xffff)), a[2]);
            a[3] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)k + 24), _mm256_broadcast_ss(X + (i >> 48)), a[3]);
        }
        finish(m, br, k, end, _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    }
}

/* 4: as 0, the values prefetched DIST bytes ahead. */
#define DIST 1024
static void prefetched(const M *m) {
    const float *X = m->x, *v = m->values;
    for (int br = 0; br < m->rows / 8; ++br) {
        __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int32_t k = m->rowptr[br];
        const int32_t end = m->rowptr[br + 1];
        for (; k + 4 <= end; k += 4) {
            _mm_prefetch((const char *)(v + 8 * (size_t)k) + DIST, _MM_HINT_T0);
            _mm_prefetch((const char *)(v + 8 * (size_t)k) + DIST + 64, _MM_HINT_T0);
            for (int u = 0; u < 4; ++u)
                a[u] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)(k + u)), _mm256_broadcast_ss(X + m->index[k + u]), a[u]);
        }
        finish(m, br, k, end, _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    }
}

/* 5: two block rows at once, their blocks interleaved (two independent streams). */
static void tworows(const M *m) {
    const float *X = m->x, *v = m->values;
    const int brows = m->rows / 8;
    for (int br = 0; br < brows; br += 2) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
        int32_t k = m->rowptr[br], e = m->rowptr[br + 1];
        int32_t j = e, f = br + 1 < brows ? m->rowptr[br + 2] : e;
        for (; k + 2 <= e && j + 2 <= f; k += 2, j += 2) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)k), _mm256_broadcast_ss(X + m->index[k]), a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)j), _mm256_broadcast_ss(X + m->index[j]), b0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)k + 8), _mm256_broadcast_ss(X + m->index[k + 1]), a1);
            b1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)j + 8), _mm256_broadcast_ss(X + m->index[j + 1]), b1);
        }
        finish(m, br, k, e, _mm256_add_ps(a0, a1));
        if (br + 1 < brows) finish(m, br + 1, j, f, _mm256_add_ps(b0, b1));
    }
}


/* 6: as 3, eight blocks a step (two 64-bit loads of indices), four accumulators. */
static void index64x8(const M *m) {
    const float *X = m->x, *v = m->values;
    for (int br = 0; br < m->rows / 8; ++br) {
        __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int32_t k = m->rowptr[br];
        const int32_t end = m->rowptr[br + 1];
        for (; k + 8 <= end; k += 8) {
            uint64_t i[2];
            memcpy(i, m->index + k, 16);
            for (int u = 0; u < 8; ++u)
                a[u % 4] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)(k + u)),
                                           _mm256_broadcast_ss(X + ((i[u / 4] >> (16 * (u % 4))) & 0xffff)), a[u % 4]);
        }
        finish(m, br, k, end, _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    }
}


/* 7: as 2, the indices of four blocks in one 64-bit load. */
static void paired64(const M *m) {
    const float *X = m->x, *v = m->values;
    for (int br = 0; br < m->rows / 8; ++br) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        int32_t k = m->rowptr[br];
        const int32_t end = m->rowptr[br + 1];
        const uint16_t *ix = m->index;
        for (; k + 4 <= end; k += 4) {
            uint64_t i;
            memcpy(&i, ix + k, 8);
            const __m512 x0 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_broadcast_ss(X + (i & 0xffff))),
                                                 _mm256_broadcast_ss(X + ((i >> 16) & 0xffff)), 1);
            const __m512 x1 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_broadcast_ss(X + ((i >> 32) & 0xffff))),
                                                 _mm256_broadcast_ss(X + (i >> 48)), 1);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + 8 * (size_t)k), x0, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + 8 * (size_t)k + 16), x1, a1);
        }
        const __m512 s = _mm512_add_ps(a0, a1);
        __m256 t = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
        finish(m, br, k, end, t);
    }
}


/* 8: as 6 (two 64-bit loads of indices a step), eight accumulators. */
static void index64acc8(const M *m) {
    const float *X = m->x, *v = m->values;
    for (int br = 0; br < m->rows / 8; ++br) {
        __m256 a[8];
        for (int u = 0; u < 8; ++u) a[u] = _mm256_setzero_ps();
        int32_t k = m->rowptr[br];
        const int32_t end = m->rowptr[br + 1];
        for (; k + 8 <= end; k += 8) {
            uint64_t i[2];
            memcpy(i, m->index + k, 16);
            for (int u = 0; u < 8; ++u)
                a[u] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * (size_t)(k + u)),
                                       _mm256_broadcast_ss(X + ((i[u / 4] >> (16 * (u % 4))) & 0xffff)), a[u]);
        }
        for (int u = 1; u < 8; ++u) a[0] = _mm256_add_ps(a[0], a[u]);
        finish(m, br, k, end, a[0]);
    }
}

#define METHODS 9
static void (*fn[METHODS])(const M *) = {current, eight, paired, index64, prefetched, tworows, index64x8, paired64, index64acc8};
static const char *names[METHODS] = {"current", "eight", "paired512", "index64", "prefetch", "tworows", "index64x8", "paired64", "index64acc8"};

int main(void) {
    const int shapes[5][2] = {{3072, 512}, {3072, 1024}, {3072, 1024}, {3072, 1024}, {10000, 1024}};
    M ms[5];
    for (int i = 0; i < 5; ++i) ms[i] = make(shapes[i][0], shapes[i][1], 17u + i);
    float *ref = malloc(4 * 10000);
    for (int i = 0; i < 5; ++i) {
        reference(&ms[i], ref);
        for (int k = 0; k < METHODS; ++k) {
            memset(ms[i].y, 0, 4 * (size_t)ms[i].rows);
            fn[k](&ms[i]);
            for (int r = 0; r < ms[i].rows; ++r)
                if (fabsf(ms[i].y[r] - ref[r]) > 1e-3f * (1 + fabsf(ref[r])))
                    return fprintf(stderr, "%s: matrix %d row %d %g against %g\n", names[k], i, r, ms[i].y[r], ref[r]), 3;
        }
    }
    double token[METHODS], alone[METHODS];
    for (int k = 0; k < METHODS; ++k) token[k] = alone[k] = 1e9;
    for (int round = 0; round < 15; ++round)
        for (int k = 0; k < METHODS; ++k) {
            double t0 = now();
            for (int r = 0; r < 100; ++r)
                for (int i = 0; i < 5; ++i) fn[k](&ms[i]);
            double t = (now() - t0) / 100;
            if (t < token[k]) token[k] = t;
            t0 = now();
            for (int r = 0; r < 100; ++r) fn[k](&ms[1]);
            t = (now() - t0) / 100;
            if (t < alone[k]) alone[k] = t;
        }
    printf("us: five products in turn (a token), 3072 x 1024 alone\n");
    for (int k = 0; k < METHODS; ++k) printf("%-10s %7.1f %7.1f\n", names[k], token[k] * 1e6, alone[k] * 1e6);
    return 0;
}
