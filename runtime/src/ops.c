/* The operations of a model's step besides the products: recurrent cells' equations, attention, gathers,
 * norms, activations, softmax, elementwise arithmetic and copies, feature-major over n columns. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "simd.h"

/* Units [u0, u1) x B columns: q runs over j*B + b. gates = W_hh h + b_hh, (G*H, B); x = xproj[t]. */
void sr_pointwise(int cell, long H, long B, long q0, long q1, const float *x, const float *gates,
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
void sr_attend(const float *q, const float *keys, const float *memory, const int32_t *lengths, const float *v,
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

/* y = f(x) over count values. */
void sr_unary(int fn, const float *x, float *y, long count) {
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
int sr_gather(const float *table, long rows, long width, const int32_t *ids, float *y, long n) {
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
void sr_layer_norm(const float *x, float *y, const float *weight, const float *bias, long groups, long size,
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
void sr_softmax(const float *x, float *y, long groups, long size, int log, long n) {
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

/* y[i] = a[i] (op) b[(i / inner) % b_count] over count values: b the same shape as a (b_count = count,
 * inner = 1), one number (b_count = 1), or a feature vector broadcast over n columns (inner = n). */
void sr_binary(int fn, const float *a, const float *b, float *y, long count, long b_count, long inner) {
    for (long i = 0; i < count; ++i) {
        const float v = b[(i / inner) % b_count];
        y[i] = fn == BINARY_ADD ? a[i] + v : fn == BINARY_MUL ? a[i] * v : fn == BINARY_SUB ? a[i] - v : a[i] / v;
    }
}

/* x (rows, columns) row-major into y (columns, rows), y's rows y_stride apart, in tiles of 8 x 8: the
 * tile's 8 rows of x stay in the cache while its columns are written out contiguously. A 10000 x 2000
 * matrix: a plain double loop 118-127 ms, tiles of 8 or 16 14-15 ms, of 32 or 64 18-22 ms, memcpy 7 ms
 * (benchmarks/probes/transpose_probe.c, development VM, AVX-512). */
void sr_transpose(const float *x, float *y, long rows, long columns, long y_stride) {
    enum { TILE = 8 };
    for (long i0 = 0; i0 < rows; i0 += TILE) {
        const long i1 = i0 + TILE < rows ? i0 + TILE : rows;
        for (long j0 = 0; j0 < columns; j0 += TILE) {
            const long j1 = j0 + TILE < columns ? j0 + TILE : columns;
            for (long j = j0; j < j1; ++j)
                for (long i = i0; i < i1; ++i) y[j * y_stride + i] = x[i * columns + j];
        }
    }
}

/* For p < outer: features [p * y_stride + y_offset, + length) of y = features [p * x_stride + x_offset,
 * + length) of x, n columns each (a concatenation's part, a slice). */
void sr_copy_features(const float *x, float *y, long outer, long length, long x_stride, long x_offset,
                          long y_stride, long y_offset, long n) {
    for (long p = 0; p < outer; ++p)
        memmove(y + (p * y_stride + y_offset) * n, x + (p * x_stride + x_offset) * n, sizeof(float) * (size_t)(length * n));
}
