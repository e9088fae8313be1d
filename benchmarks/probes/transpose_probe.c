/* Stand-alone probe behind the tile of sr_transpose (runtime/src/ops.c), which whole sequences use to
 * turn a (features, T) value into (T, features) and back: a 10000 x 2000 float32 matrix (a 10,000-word
 * LM's logits over 2,000 tokens) transposed by a plain double loop, by tiles of 8, 16, 32 and 64 (within a
 * tile, column by column of the result), by the library's sr_transpose, and copied with memcpy for scale.
 * The methods take turns (5 rounds) and each keeps its fastest round.
 * Build and run:
 *   make runtime && gcc -O3 -march=native -Iruntime/src benchmarks/probes/transpose_probe.c \
 *       build/runtime/libsparsernn.a -lm -o /tmp/transpose_probe && /tmp/transpose_probe */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void plain(const float *x, float *y, long rows, long columns) {
    for (long i = 0; i < rows; ++i)
        for (long j = 0; j < columns; ++j) y[j * rows + i] = x[i * columns + j];
}

static void tiled(const float *x, float *y, long rows, long columns, long tile) {
    for (long i0 = 0; i0 < rows; i0 += tile)
        for (long j0 = 0; j0 < columns; j0 += tile) {
            const long i1 = i0 + tile < rows ? i0 + tile : rows, j1 = j0 + tile < columns ? j0 + tile : columns;
            for (long j = j0; j < j1; ++j)
                for (long i = i0; i < i1; ++i) y[j * rows + i] = x[i * columns + j];
        }
}

int main(void) {
    enum { ROWS = 10000, COLUMNS = 2000, METHODS = 7, ROUNDS = 5 };
    static const char *names[METHODS] = {"plain loop", "tiles of 8", "tiles of 16", "tiles of 32", "tiles of 64",
                                         "sr_transpose", "memcpy (no transpose)"};
    float *x = malloc(sizeof(float) * ROWS * COLUMNS), *y = malloc(sizeof(float) * ROWS * COLUMNS),
          *check = malloc(sizeof(float) * ROWS * COLUMNS);
    for (long k = 0; k < (long)ROWS * COLUMNS; ++k) x[k] = (float)k;
    plain(x, check, ROWS, COLUMNS);
    double best[METHODS];
    for (int m = 0; m < METHODS; ++m) best[m] = 1e9;
    for (int round = 0; round < ROUNDS; ++round)
        for (int m = 0; m < METHODS; ++m) {
            const double start = now();
            if (m == 0) plain(x, y, ROWS, COLUMNS);
            else if (m <= 4) tiled(x, y, ROWS, COLUMNS, 4L << m);
            else if (m == 5) sr_transpose(x, y, ROWS, COLUMNS, ROWS);
            else memcpy(y, x, sizeof(float) * ROWS * COLUMNS);
            const double seconds = now() - start;
            if (seconds < best[m]) best[m] = seconds;
            if (m < 6 && memcmp(y, check, sizeof(float) * ROWS * COLUMNS)) {
                fprintf(stderr, "%s: wrong result\n", names[m]);
                return 1;
            }
        }
    printf("%d x %d float32, best of %d rounds in turns:\n", ROWS, COLUMNS, ROUNDS);
    for (int m = 0; m < METHODS; ++m) printf("  %-22s %6.1f ms\n", names[m], best[m] * 1e3);
    free(x), free(y), free(check);
    return 0;
}
