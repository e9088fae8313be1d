/* NEON kernels for aarch64 (the baseline there, Cortex-A53 included): products with one column, the
 * streamed step's products. Elsewhere this file is empty. Each equals the portable kernel of its shape
 * (kernels.c) to rounding: the C tests run both on aarch64 under qemu against PyTorch's outputs. */
#include "kernels.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

/* Unstructured (CSR, uint16 indices), one column: x gathered four lanes at a time, two FMA chains. */
void sr_neon_csr_u16(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                     const float *bias) {
    const uint16_t *index = m->index;
    const float *v = m->values;
    for (int row = br0; row < br1; ++row) {
        int32_t k = m->rowptr[row];
        const int32_t end = m->rowptr[row + 1];
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
        if (ldx == 1)
            for (; k + 8 <= end; k += 8) {
                const uint16_t *i = index + k;
                float32x4_t x0 = vdupq_n_f32(X[i[0]]), x1 = vdupq_n_f32(X[i[4]]);
                x0 = vsetq_lane_f32(X[i[1]], x0, 1), x1 = vsetq_lane_f32(X[i[5]], x1, 1);
                x0 = vsetq_lane_f32(X[i[2]], x0, 2), x1 = vsetq_lane_f32(X[i[6]], x1, 2);
                x0 = vsetq_lane_f32(X[i[3]], x0, 3), x1 = vsetq_lane_f32(X[i[7]], x1, 3);
                a0 = vfmaq_f32(a0, vld1q_f32(v + k), x0);
                a1 = vfmaq_f32(a1, vld1q_f32(v + k + 4), x1);
            }
        float sum = vaddvq_f32(vaddq_f32(a0, a1));
        for (; k < end; ++k) sum += v[k] * X[(size_t)index[k] * (size_t)ldx];
        Y[(size_t)row * (size_t)ldy] = sum + (bias ? bias[row] : 0.0f);
    }
}

/* R x 1 blocks (R = 8 or 16 rows of one column), one column: per block one broadcast of x and R / 4
 * FMAs, the block row's R sums in R / 4 registers. */
void sr_neon_column_blocks(const Matrix *m, int br0, int br1, const float *X, long ldx, float *Y, long ldy,
                           const float *bias) {
    const uint16_t *index = m->index;
    const int R = m->r, Q = R / 4;
    for (int br = br0; br < br1; ++br) {
        float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
        for (int32_t k = m->rowptr[br]; k < m->rowptr[br + 1]; ++k) {
            const float32x4_t x = vdupq_n_f32(X[(size_t)index[k] * (size_t)ldx]);
            const float *v = m->values + (size_t)k * (size_t)R;
            for (int q = 0; q < Q; ++q) acc[q] = vfmaq_f32(acc[q], vld1q_f32(v + 4 * q), x);
        }
        float sums[16] = {0};
        for (int q = 0; q < Q; ++q) vst1q_f32(sums + 4 * q, acc[q]);
        for (int i = 0; i < R; ++i)
            Y[(size_t)(br * R + i) * (size_t)ldy] = sums[i] + (bias ? bias[br * R + i] : 0.0f);
    }
}
/* int8 values, one column, from the quad copy (with the dot product instructions, Armv8.2 and
 * later, where sr_int8_kernel finds them): x quantized to int8, a slice's 64 bytes in four registers; per 4 slots of 4
 * lanes one tbl looks 16 x bytes up and one sdot adds each lane's 4 products to its int32 sum. */
__attribute__((target("arch=armv8.2-a+dotprod"))) void sr_neon_int8_quad(const Matrix *m, int br0, int br1,
                                                                          const float *X, long ldx, float *Y,
                                                                          long ldy, const float *bias) {
    if (br0 % m->sigma || br1 % m->sigma) {
        sr_int8_csr(m, br0, br1, X, ldx, Y, ldy, bias);
        return;
    }
    const int per_window = (m->sigma + 15) / 16, slices = (m->cols + QUAD_SLICE - 1) / QUAD_SLICE;
    int8_t xq[QUAD_SLICE * slices];
    float xs;
    sr_quantize(X, ldx, m->cols, QUAD_SLICE * slices, xq, &xs);
    const int8_t *v = m->sell_values;
    const uint8_t *ix = m->sell_index;
    for (int g = br0 / m->sigma * per_window; g < br1 / m->sigma * per_window; ++g) {
        int32x4_t a[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        const int32_t *ptr = m->sell_ptr + (size_t)g * slices;
        for (int j = 0; j < slices; ++j) {
            if (ptr[j] == ptr[j + 1]) continue;
            const int8x16x4_t x = vld1q_s8_x4(xq + QUAD_SLICE * j);
            for (int32_t s = ptr[j] / 4; s < ptr[j + 1] / 4; ++s)
                for (int r = 0; r < 4; ++r) {
                    const size_t at = 64 * (size_t)s + 16 * (size_t)r;
                    a[r] = vdotq_s32(a[r], vld1q_s8(v + at), vqtbl4q_s8(x, vld1q_u8(ix + at)));
                }
        }
        int32_t sums[16];
        for (int r = 0; r < 4; ++r) vst1q_s32(sums + 4 * r, a[r]);
        sr_int8_rows(m, g, 16, sums, 0, xs, Y, ldy, bias);
    }
}

#else
typedef int sr_no_neon; /* an empty translation unit is not C */
#endif
