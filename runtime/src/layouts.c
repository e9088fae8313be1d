/* The one-column copies of an unstructured matrix (kernels.h: interleaved for AVX2, sliced for AVX-512),
 * built from its CSR arrays as sparsernn.kernels.SparseMatrix.interleaved and .sliced build them in numpy:
 * rows sorted within windows of sigma rows, by length for the interleaved copy (longest first, then by
 * row), by their non-zeros in each slice for the sliced ones (most first, slice by slice, then by row). */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* posix_memalign */
#endif
#include <stdlib.h>
#include <string.h>

#include "layouts.h"

/* The window: a multiple of 8 up to sr_most_window(rows_unit) dividing rows_unit; for groups of `lanes`
 * rows, the one that wastes the fewest lanes, then the largest. 0 when none divides. */
static int window(long rows_unit, int lanes) {
    int best = 0;
    double best_waste = 0.0;
    for (int w = sr_most_window(rows_unit); w >= 8; w -= 8) {
        if (rows_unit % w) continue;
        const double waste = (double)((w + lanes - 1) / lanes * lanes) / w;
        if (!best || waste < best_waste) best = w, best_waste = waste;
    }
    return best;
}

/* A row's sort key: its window, then `count` numbers, larger first (its length, or its non-zeros in each
 * slice), then the row. */
typedef struct {
    int32_t row, window, count;
    const int32_t *counts;
} row_key;

static int by_window_then_counts(const void *a, const void *b) {
    const row_key *x = a, *y = b;
    if (x->window != y->window) return x->window < y->window ? -1 : 1;
    for (int32_t j = 0; j < x->count; ++j)
        if (x->counts[j] != y->counts[j]) return x->counts[j] > y->counts[j] ? -1 : 1;
    return x->row < y->row ? -1 : x->row > y->row;
}

/* position[row]: the row's place once sorted within its window, by length (width 0) or by its non-zeros
 * in each slice of `width` columns; NULL when out of memory. */
static int32_t *positions(const Matrix *m, int sigma, int width) {
    const int32_t slices = width ? (m->cols + width - 1) / width : 1;
    row_key *keys = malloc(sizeof(row_key) * (size_t)m->rows);
    int32_t *position = malloc(sizeof(int32_t) * (size_t)m->rows);
    int32_t *counts = calloc((size_t)m->rows * (size_t)slices, sizeof(int32_t));
    if (!keys || !position || !counts) {
        free(keys), free(position), free(counts);
        return NULL;
    }
    const uint16_t *column = m->index;
    for (int32_t i = 0; i < m->rows; ++i) {
        for (int32_t k = m->rowptr[i]; k < m->rowptr[i + 1]; ++k)
            ++counts[(size_t)i * (size_t)slices + (size_t)(width ? column[k] / width : 0)];
        keys[i] = (row_key){i, i / sigma, slices, counts + (size_t)i * (size_t)slices};
    }
    qsort(keys, (size_t)m->rows, sizeof(row_key), by_window_then_counts);
    for (int32_t i = 0; i < m->rows; ++i) position[keys[i].row] = i;
    free(keys), free(counts);
    return position;
}

/* A value into a copy: float32, or its upper 16 bits (exact for a value read from a bf16 file). */
static void store(void *values, size_t at, float value, int bf16) {
    if (bf16) {
        uint32_t bits;
        memcpy(&bits, &value, 4);
        ((uint16_t *)values)[at] = (uint16_t)(bits >> 16);
    } else {
        ((float *)values)[at] = value;
    }
}

static void *aligned_zeros(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
    memset(p, 0, bytes ? bytes : 64);
    return p;
}

/* The copy with `lanes`; int8: of m->q (the quad copy with 16 lanes). */
static int one_column_copy(Matrix *m, long rows_unit, int lanes, int bf16, int int8, void *owned[4]) {
    memset(owned, 0, sizeof(void *) * 4);
    if (m->r != 1 || m->c != 1 || m->wide || (lanes != 8 && lanes != 16) || (int8 && !m->q)) return 0;
    const int quad = int8 && lanes == 16;
    const int sigma = window(rows_unit, lanes);
    const int width = lanes == 8 ? 0 : quad ? QUAD_SLICE : sr_slice_width(m->cols); /* 0: sort by length */
    if (!sigma || m->rows % sigma) return 0;
    int32_t *position = positions(m, sigma, width);
    if (!position) return -1;
    const int32_t rows = m->rows;
    const uint16_t *column = m->index;
    int32_t *ptr = NULL, *order = NULL;
    void *index = NULL, *values = NULL;
    const size_t value_size = int8 ? 1 : bf16 ? 2 : 4;
    if (lanes == 8) {
        const int32_t groups = rows / 8;
        ptr = aligned_zeros(sizeof(int32_t) * (size_t)(groups + 1));
        order = aligned_zeros(sizeof(int32_t) * (size_t)rows);
        if (!ptr || !order) goto memory;
        for (int32_t row = 0; row < rows; ++row) order[position[row]] = row;
        for (int32_t g = 0; g < groups; ++g) {
            int32_t longest = 0;
            for (int l = 0; l < 8; ++l) {
                const int32_t row = order[8 * g + l], n = m->rowptr[row + 1] - m->rowptr[row];
                longest = n > longest ? n : longest;
            }
            ptr[g + 1] = ptr[g] + longest;
        }
        index = aligned_zeros(sizeof(uint16_t) * 8 * (size_t)ptr[groups]);
        values = aligned_zeros(value_size * 8 * (size_t)ptr[groups]);
        if (!index || !values) goto memory;
        for (int32_t row = 0; row < rows; ++row)
            for (int32_t k = m->rowptr[row]; k < m->rowptr[row + 1]; ++k) {
                const size_t at = 8 * (size_t)(ptr[position[row] / 8] + k - m->rowptr[row]) + (size_t)(position[row] % 8);
                ((uint16_t *)index)[at] = column[k];
                if (int8)
                    ((int8_t *)values)[at] = m->q[k];
                else
                    store(values, at, m->values[k], bf16);
            }
    } else {
        const int per_window = (sigma + 15) / 16, slices = (m->cols + width - 1) / width;
        const int32_t groups = rows / sigma * per_window;
        const size_t segments = (size_t)groups * (size_t)slices;
        ptr = aligned_zeros(sizeof(int32_t) * (segments + 1));
        order = aligned_zeros(sizeof(int32_t) * (size_t)groups * 16);
        int32_t *group = malloc(sizeof(int32_t) * (size_t)rows), *lane = malloc(sizeof(int32_t) * (size_t)rows);
        if (!ptr || !order || !group || !lane) {
            free(group), free(lane);
            goto memory;
        }
        for (size_t i = 0; i < (size_t)groups * 16; ++i) order[i] = -1;
        for (int32_t row = 0; row < rows; ++row) {
            const int32_t within = position[row] % sigma;
            group[row] = position[row] / sigma * per_window + within / 16, lane[row] = within % 16;
            order[16 * group[row] + lane[row]] = row;
        }
        /* segment lengths: a segment runs as long as its longest row's share of the slice */
        for (int32_t row = 0; row < rows; ++row) {
            int32_t rank = 0, slice = -1;
            for (int32_t k = m->rowptr[row]; k < m->rowptr[row + 1]; ++k) {
                const int32_t s = column[k] / width;
                rank = s == slice ? rank + 1 : 0, slice = s;
                int32_t *length = &ptr[(size_t)group[row] * (size_t)slices + (size_t)s + 1];
                *length = rank + 1 > *length ? rank + 1 : *length;
            }
        }
        for (size_t s = 0; s < segments; ++s) {
            const int32_t length = quad ? (ptr[s + 1] + 3) / 4 * 4 : ptr[s + 1]; /* quad: whole fours */
            ptr[s + 1] = ptr[s] + length;
        }
        index = aligned_zeros(16 * (size_t)ptr[segments]);
        values = aligned_zeros(value_size * 16 * (size_t)ptr[segments]);
        if (!index || !values) {
            free(group), free(lane);
            goto memory;
        }
        for (int32_t row = 0; row < rows; ++row) {
            int32_t rank = 0, slice = -1;
            for (int32_t k = m->rowptr[row]; k < m->rowptr[row + 1]; ++k) { /* columns ascend within a row */
                const int32_t s = column[k] / width;
                rank = s == slice ? rank + 1 : 0, slice = s;
                const size_t slot = (size_t)(ptr[(size_t)group[row] * (size_t)slices + (size_t)s] + rank);
                const size_t at = quad ? 64 * (slot / 4) + 4 * (size_t)lane[row] + slot % 4 : 16 * slot + (size_t)lane[row];
                ((uint8_t *)index)[at] = (uint8_t)(column[k] % width);
                if (quad)
                    ((int8_t *)values)[at] = m->q[k];
                else
                    store(values, at, m->values[k], bf16);
            }
        }
        free(group), free(lane);
    }
    free(position);
    m->lanes = lanes, m->sigma = sigma, m->sell_bf16 = bf16, m->sell_int8 = int8;
    m->sell_ptr = ptr, m->sell_order = order, m->sell_index = index, m->sell_values = values;
    owned[0] = ptr, owned[1] = order, owned[2] = index, owned[3] = values;
    sr_matrix_kernels(m);
    return 1;
memory:
    free(position), free(ptr), free(order), free(index), free(values);
    return -1;
}

int sr_one_column_copy(Matrix *m, long rows_unit, int lanes, int bf16, void *owned[4]) {
    return one_column_copy(m, rows_unit, lanes, bf16, 0, owned);
}

int sr_int8_copy(Matrix *m, long rows_unit, void *owned[5]) {
    owned[4] = NULL;
    const int lanes = sr_int8_lanes();
    if (m->r != 1 || m->c != 1 || m->wide || !m->q || !lanes) return 0;
    int32_t *qsum = malloc(sizeof(int32_t) * (size_t)m->rows);
    if (!qsum) return -1;
    for (int32_t row = 0; row < m->rows; ++row) {
        qsum[row] = 0;
        for (int32_t k = m->rowptr[row]; k < m->rowptr[row + 1]; ++k) qsum[row] += m->q[k];
    }
    const int made = one_column_copy(m, rows_unit, lanes, 0, 1, owned);
    if (made == 1) {
        m->qsum = qsum, owned[4] = qsum;
        sr_matrix_kernels(m);
    } else {
        free(qsum);
    }
    return made;
}
