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
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
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

static const int shape_table[NSHAPES][2] = {{1, 1}, {4, 1}, {8, 1}, {16, 1}, {1, 4}, {1, 8}, {1, 16}, {4, 4}, {8, 8}};
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

kernel_fn sr_portable_kernel(const Matrix *m, int nn_slot) {
    for (int s = 0; s < NSHAPES; ++s)
        if (shape_table[s][0] == m->r && shape_table[s][1] == m->c) {
            const kernel_fn f = kernels[m->wide ? 1 : 0][nn_slot][s];
            if (f) return f;
        }
    return generic_kernel;
}

const char *sr_int8_kernel(void) {
#ifdef __AVX2__
    __builtin_cpu_init();
    if (sr_use_avx512() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi")) return "vnni";
    return "avx2";
#elif defined(__aarch64__) && defined(__ARM_NEON) && defined(__linux__)
    if (getauxval(AT_HWCAP) & (1UL << 20)) return "dotprod"; /* HWCAP_ASIMDDP */
#elif defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
    return "dotprod";
#endif
    return "portable";
}

int sr_int8_lanes(void) {
    const char *name = sr_int8_kernel();
    return !strcmp(name, "avx2") ? 8 : strcmp(name, "portable") ? 16 : 0;
}

void sr_quantize(const float *x, long stride, long n, long padded, int8_t *q, float *scale) {
    float most = 0.0f;
    for (long i = 0; i < n; ++i) most = __builtin_fabsf(x[i * stride]) > most ? __builtin_fabsf(x[i * stride]) : most;
    const float inverse = most > 0.0f ? 127.0f / most : 0.0f;
    for (long i = 0; i < n; ++i) {
        const float v = __builtin_rintf(x[i * stride] * inverse); /* within [-127, 127]: |x| <= most */
        q[i] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
    }
    for (long i = n; i < padded; ++i) q[i] = 0;
    *scale = most / 127.0f;
}

static inline float int8_row(int32_t sum, float row_scale, float x_scale, float bias) {
    return __builtin_fmaf((float)sum, row_scale * x_scale, bias);
}

void sr_int8_rows(const Matrix *m, int g, int lanes, const int32_t *sums, int32_t offset, float x_scale, float *Y,
                  long ldy, const float *bias) {
    for (int lane = 0; lane < lanes; ++lane) {
        const int32_t row = m->sell_order[lanes * g + lane];
        if (row >= 0)
            Y[(size_t)row * ldy] = int8_row(sums[lane] - offset * m->qsum[row], m->scale[row], x_scale,
                                            bias ? bias[row] : 0.0f);
    }
}

void sr_int8_csr(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy, const float *bias) {
    int8_t xq[m->cols];
    float xs;
    sr_quantize(X, ldx, m->cols, m->cols, xq, &xs);
    const uint16_t *index = m->index;
    for (int row = br0; row < br1; ++row) {
        int32_t sum = 0;
        for (int32_t k = m->rowptr[row]; k < m->rowptr[row + 1]; ++k) sum += (int32_t)m->q[k] * xq[index[k]];
        Y[(size_t)row * ldy] = int8_row(sum, m->scale[row], xs, bias ? bias[row] : 0.0f);
    }
}

/* A tile's `width` columns of X side by side (so that the loads of x stay in a few pages instead of one
 * page per input feature), in a buffer the caller frees; NULL, with X and ldx unchanged, where they
 * already are side by side or no memory was free (the kernels then read X at its own stride). */
float *sr_pack_tile(const Matrix *m, const float **X, long *ldx, int width) {
    if (*ldx == width) return NULL;
    float *packed = aligned_alloc(64, ((size_t)m->cols * width * sizeof(float) + 63) / 64 * 64);
    if (packed) {
        for (int col = 0; col < m->cols; ++col)
            memcpy(packed + (size_t)col * width, *X + (size_t)col * *ldx, (size_t)width * sizeof(float));
        *X = packed, *ldx = width;
    }
    return packed;
}

/* The kernel for m and 16, 4 or 1 columns (nn_slot 0, 1, 2): the widest instruction set's that has one
 * for the shape, else the portable one; NULL (the generic kernel, one column at a time) for other shapes. */
static kernel_fn pick_kernel(const Matrix *m, int nn_slot) {
    for (int s = 0; s < NSHAPES; ++s)
        if (shape_table[s][0] == m->r && shape_table[s][1] == m->c) {
            kernel_fn f = NULL;
            if (m->q && s == 0 && !m->wide) { /* int8 values: every column runs the one-column kernel */
                if (m->sell_int8 && m->lanes == sr_int8_lanes()) {
#ifdef __AVX2__
                    return m->lanes == 16 ? sr_avx512_int8_quad : sr_avx2_int8_interleaved;
#elif defined(__aarch64__) && defined(__ARM_NEON)
                    return sr_neon_int8_quad;
#endif
                }
                return sr_int8_csr;
            }
#ifdef __AVX2__
            if (use_avx512) f = sr_avx512_kernel(m, nn_slot, s);
            if (!f) f = sr_avx2_kernel(m, nn_slot, s);
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
            if (nn_slot == 2 && !m->wide && s == 0) f = sr_neon_csr_u16;
            if (nn_slot == 2 && !m->wide && (s == 2 || s == 3)) f = sr_neon_column_blocks;
#endif
            return f ? f : kernels[m->wide ? 1 : 0][nn_slot][s];
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
    if (m->q) { /* int8 values: every column quantized on its own, by the one-column kernel */
        for (long n = 0; n < N; ++n) m->by_width[2](m, br0, br1, X + n, ldx, Y + n, ldy, bias);
        return;
    }
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
    bounds[0] = 0, bounds[threads] = units;
    if (threads == 1) return; /* every step of a streamed layer calls this: no count for one thread */
    double total = 0.0;
    for (int u = 0; u < units; ++u)
        for (int g = 0; g < G; ++g) total += m->rowptr[g * units + u + 1] - m->rowptr[g * units + u] + 1;
    double seen = 0.0;
    int t = 1;
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
