/* The program interpreter: a streaming state in caller-owned memory and one step at a time (sr_step), or
 * a whole sequence at once (sr_run, for bidirectional layers). Values are feature-major: a step's value is
 * its features, a sequence's value (features, T). Nothing here allocates. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct sr_state {
    const sr_model *model;
    int threads;
    float **v;       /* each value's buffer */
    float *values;   /* model->value_floats: every value of a step */
    float *state;    /* model->state_floats: per rnn op, layer and direction, h then c */
    float *work;     /* work_floats(model, 1) */
    void *recurrent; /* the recurrent kernel's scratch */
};

static size_t round64(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

static size_t recurrent_bytes(const sr_model *model, int threads) {
    return sr_recurrent_scratch(CELL_LSTM, model->max_hidden ? model->max_hidden : 1, 1, threads);
}

/* An rnn op's work space for T steps: two layer outputs, the input projections feature- and time-major,
 * one direction's outputs time-major, gates, a projected cell's output and next h. */
static size_t work_floats(const sr_model *model, long T) {
    return (size_t)T * (size_t)(2 * model->max_out + 2 * model->max_gates + model->max_out) +
           (size_t)(model->max_gates + 2 * model->max_hidden) + 16;
}

static int threads_ok(int threads) { return threads >= 1 && (threads == 1 || sr_openmp()); }

size_t sr_state_size(const sr_model *model, int threads) {
    if (threads < 1) threads = 1;
    return 64 + round64(sizeof(sr_state)) + round64(sizeof(float *) * (size_t)model->value_count) +
           round64(sizeof(float) * model->value_floats) + round64(sizeof(float) * model->state_floats) +
           round64(sizeof(float) * work_floats(model, 1)) + round64(recurrent_bytes(model, threads));
}

sr_status sr_state_init(const sr_model *model, void *memory, size_t size, int threads, sr_state **out) {
    if (!model || !memory || !out || !threads_ok(threads) || size < sr_state_size(model, threads))
        return SR_ERROR_ARGUMENT;
    unsigned char *p = (unsigned char *)(((uintptr_t)memory + 63) & ~(uintptr_t)63);
    sr_state *state = (sr_state *)p;
    p += round64(sizeof(sr_state));
    state->model = model, state->threads = threads;
    state->v = (float **)p, p += round64(sizeof(float *) * (size_t)model->value_count);
    state->values = (float *)p, p += round64(sizeof(float) * model->value_floats);
    state->state = (float *)p, p += round64(sizeof(float) * model->state_floats);
    state->work = (float *)p, p += round64(sizeof(float) * work_floats(model, 1));
    state->recurrent = p;
    for (int i = 0; i < model->value_count; ++i) state->v[i] = state->values + model->values[i].offset;
    sr_state_reset(state);
    *out = state;
    return SR_OK;
}

void sr_state_reset(sr_state *state) {
    memset(state->state, 0, sizeof(float) * state->model->state_floats);
    memset(state->values, 0, sizeof(float) * state->model->value_floats);
}

int sr_model_input_ids(const sr_model *model) { return model->input_ids; }
size_t sr_model_input_size(const sr_model *model) { return (size_t)model->values[model->input].size; }
size_t sr_model_output_size(const sr_model *model) { return (size_t)model->values[model->output].size; }
int sr_model_whole(const sr_model *model) { return model->whole; }

/* Row `row` of a weight into column b of y (width, n): a dense table's row, or a sparse matrix's. */
static void table_column(const weight *w, long row, float *y, long n, long b) {
    const long width = (long)w->shape[1];
    if (w->dense) {
        const float *source = w->dense + row * width;
        if (n == 1) memcpy(y, source, sizeof(float) * (size_t)width);
        else for (long j = 0; j < width; ++j) y[j * n + b] = source[j];
        return;
    }
    const Matrix *m = &w->matrix;
    for (long j = 0; j < width; ++j) y[j * n + b] = 0.0f;
    const long block_row = row / m->r, a = row % m->r;
    for (int32_t k = m->rowptr[block_row]; k < m->rowptr[block_row + 1]; ++k) {
        const long column = m->wide ? ((const int32_t *)m->index)[k] : ((const uint16_t *)m->index)[k];
        if (m->q) { /* int8 values (CSR): q times the row's scale */
            y[column * n + b] = (float)m->q[k] * m->scale[row];
            continue;
        }
        const float *block = m->values + ((size_t)k * m->r + (size_t)a) * m->c;
        for (int q = 0; q < m->c; ++q) y[(column * m->c + q) * n + b] = block[q];
    }
}

/* An rnn op over T steps (T = 1 streaming), from state (h, c per layer and direction) in place. */
static void rnn_op(const op *o, float *const *v, const sr_model *model, long T, float *state, float *work,
                   void *recurrent, int threads) {
    const long G = sr_cell_gates(o->cell) * o->hidden, D = o->directions, out = o->out, H = o->hidden;
    float *layer_out[2] = {work, work + T * model->max_out};
    float *projected = layer_out[1] + T * model->max_out, *timed = projected + T * model->max_gates;
    float *outputs = timed + T * model->max_gates, *gates = outputs + T * model->max_out;
    float *full = gates + model->max_gates, *next = full + model->max_hidden;
    const float *x = v[o->x];
    for (int k = 0; k < o->layers; ++k) {
        float *y = k + 1 == o->layers ? v[o->y] : layer_out[k % 2];
        for (int d = 0; d < D; ++d) {
            const rnn_direction *dir = &o->dirs[k * D + d];
            float *h = state + o->state_offset + (size_t)(k * D + d) * (size_t)(out + H), *c = h + out;
            sr_product(&dir->w_ih->matrix, x, projected, T, dir->b_ih, threads); /* (G*H, T) */
            const float *xproj = projected;
            if (T > 1) {
                sr_transpose(projected, timed, G, T, G); /* (T, G*H) */
                xproj = timed;
            }
            float *result = T == 1 && D == 1 ? y : outputs; /* (T, out) */
            if (!dir->w_hr) {
                sr_recurrent(o->cell, &dir->w_hh->matrix, dir->b_hh, xproj, result, h, o->cell == CELL_LSTM ? c : NULL,
                             T, 1, d, threads, recurrent);
            } else { /* an LSTM with a projection, step by step: gates, the cell, h = W_hr (o * tanh(c)) */
                for (long s = 0; s < T; ++s) {
                    const long t = d ? T - 1 - s : s;
                    sr_product(&dir->w_hh->matrix, h, gates, 1, dir->b_hh, threads);
                    sr_pointwise(CELL_LSTM, H, 1, 0, H, xproj + t * G, gates, h, next, c, full);
                    sr_product(&dir->w_hr->matrix, full, h, 1, NULL, threads);
                    memcpy(result + t * out, h, sizeof(float) * (size_t)out);
                }
            }
            if (result != y) sr_transpose(result, y + d * out * T, T, out, T); /* rows d*out.. of (D*out, T) */
        }
        x = y;
    }
    for (int part = 0; part < 2; ++part) { /* the final state into hn / cn, every column */
        const int target = part ? o->cn : o->hn;
        if (target < 0) continue;
        const long size = part ? H : out;
        for (long k = 0; k < o->layers * D; ++k) {
            const float *source = state + o->state_offset + (size_t)k * (size_t)(out + H) + (part ? out : 0);
            for (long j = 0; j < size; ++j)
                for (long t = 0; t < T; ++t) v[target][(k * size + j) * T + t] = source[j];
        }
    }
}

/* Every op over n columns (1 streaming, T whole) on values v; ids: the input's token ids. */
static sr_status run_ops(const sr_model *model, float *const *v, const int32_t *ids, long n, float *state,
                         float *work, void *recurrent, int threads, char *error, size_t error_size) {
    static const int UNARY[] = {[OP_TANH] = UNARY_TANH, [OP_RELU] = UNARY_RELU, [OP_SIGMOID] = UNARY_SIGMOID};
    static const int BINARY[] = {[OP_ADD] = BINARY_ADD, [OP_MUL] = BINARY_MUL, [OP_SUB] = BINARY_SUB,
                                 [OP_DIV] = BINARY_DIV};
    for (int i = 0; i < model->op_count; ++i) {
        const op *o = &model->ops[i];
        const long F = o->kind == OP_RNN ? 0 : model->values[o->x].size;
        switch (o->kind) {
        case OP_EMBEDDING:
            for (long b = 0; b < n; ++b) {
                if (ids[b] < 0 || ids[b] >= o->weight->shape[0])
                    return SR_FAIL(SR_ERROR_ARGUMENT, error, error_size, "token id %d outside [0, %lld)", (int)ids[b],
                                   o->weight->shape[0]);
                table_column(o->weight, ids[b], v[o->y], n, b);
            }
            break;
        case OP_LINEAR:
            sr_product(&o->weight->matrix, v[o->x], v[o->y], n, o->bias ? o->bias->dense : NULL, threads);
            break;
        case OP_RNN: rnn_op(o, v, model, n, state, work, recurrent, threads); break;
        case OP_LAYER_NORM:
            sr_layer_norm(v[o->x], v[o->y], o->weight ? o->weight->dense : NULL, o->bias ? o->bias->dense : NULL,
                          F / o->size, o->size, o->eps, n);
            break;
        case OP_TANH:
        case OP_RELU:
        case OP_SIGMOID: sr_unary(UNARY[o->kind], v[o->x], v[o->y], F * n); break;
        case OP_SOFTMAX:
        case OP_LOG_SOFTMAX: sr_softmax(v[o->x], v[o->y], F / o->size, o->size, o->kind == OP_LOG_SOFTMAX, n); break;
        case OP_COPY:
            sr_copy_features(v[o->x], v[o->y], o->outer, o->length, o->x_stride, o->x_offset, o->y_stride, o->y_offset, n);
            break;
        default: /* arithmetic */
            if (o->other >= 0) sr_binary(BINARY[o->kind], v[o->x], v[o->other], v[o->y], F * n, F * n, 1);
            else if (o->weight) sr_binary(BINARY[o->kind], v[o->x], o->weight->dense, v[o->y], F * n, F, n);
            else sr_binary(BINARY[o->kind], v[o->x], &o->scalar, v[o->y], F * n, 1, 1);
        }
    }
    return SR_OK;
}

sr_status sr_step(sr_state *state, const void *input, float *output, char *error, size_t error_size) {
    char scratch[8];
    if (!error || !error_size) error = scratch, error_size = sizeof scratch;
    if (!state || !input || !output) return SR_FAIL(SR_ERROR_ARGUMENT, error, error_size, "a NULL argument");
    const sr_model *model = state->model;
    if (model->whole)
        return SR_FAIL(SR_ERROR_ARGUMENT, error, error_size, "this program has a bidirectional layer: run whole "
                       "sequences (sr_run)");
    int32_t id = 0;
    if (model->input_ids) memcpy(&id, input, sizeof id);
    else memcpy(state->v[model->input], input, sizeof(float) * (size_t)model->values[model->input].size);
    const sr_status status = run_ops(model, state->v, &id, 1, state->state, state->work, state->recurrent,
                                     state->threads, error, error_size);
    if (!status) memcpy(output, state->v[model->output], sizeof(float) * (size_t)model->values[model->output].size);
    return status;
}

/* Zeros for the values no op writes in full over T columns (copies' targets, state inputs): every other
 * value is written before it is read, and zeroing them all would be one more pass over T times the
 * model's values (80 MB for a 10,000-word LM over 2,000 tokens). */
static void zero_unwritten(const sr_model *model, float *const *v, long T) {
    for (int i = 0; i < model->value_count; ++i) {
        int written = i == model->input;
        for (int k = 0; k < model->op_count && !written; ++k) {
            const op *o = &model->ops[k];
            written = o->kind != OP_COPY && (o->y == i || o->hn == i || o->cn == i);
        }
        if (!written) memset(v[i], 0, sizeof(float) * (size_t)model->values[i].size * (size_t)T);
    }
}

size_t sr_run_size(const sr_model *model, long T, int threads) {
    if (T < 1) T = 1;
    if (threads < 1) threads = 1;
    return 64 + round64(sizeof(float *) * (size_t)model->value_count) +
           round64(sizeof(float) * model->value_floats * (size_t)T) + round64(sizeof(float) * model->state_floats) +
           round64(sizeof(float) * work_floats(model, T)) + round64(sizeof(int32_t) * (size_t)T) +
           round64(recurrent_bytes(model, threads));
}

sr_status sr_run(const sr_model *model, long T, const void *inputs, float *outputs, void *scratch, size_t size,
                 int threads, char *error, size_t error_size) {
    char spare[8];
    if (!error || !error_size) error = spare, error_size = sizeof spare;
    if (!model || T < 1 || !inputs || !outputs || !scratch || !threads_ok(threads))
        return SR_FAIL(SR_ERROR_ARGUMENT, error, error_size, "a NULL argument, no steps or threads not available");
    if (size < sr_run_size(model, T, threads))
        return SR_FAIL(SR_ERROR_ARGUMENT, error, error_size, "scratch of %zu bytes; %zu needed", size,
                       sr_run_size(model, T, threads));
    unsigned char *p = (unsigned char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float **v = (float **)p;
    p += round64(sizeof(float *) * (size_t)model->value_count);
    float *values = (float *)p;
    p += round64(sizeof(float) * model->value_floats * (size_t)T);
    float *state = (float *)p;
    p += round64(sizeof(float) * model->state_floats);
    float *work = (float *)p;
    p += round64(sizeof(float) * work_floats(model, T));
    int32_t *ids = (int32_t *)p;
    p += round64(sizeof(int32_t) * (size_t)T);
    for (int i = 0; i < model->value_count; ++i) v[i] = values + model->values[i].offset * (size_t)T;
    zero_unwritten(model, v, T);
    memset(state, 0, sizeof(float) * model->state_floats);
    const long F = model->values[model->input].size;
    if (model->input_ids) memcpy(ids, inputs, sizeof(int32_t) * (size_t)T);
    else sr_transpose(inputs, v[model->input], T, F, T); /* (T, F) -> (F, T) */
    const sr_status status = run_ops(model, v, ids, T, state, work, p, threads, error, error_size);
    if (!status) sr_transpose(v[model->output], outputs, model->values[model->output].size, T, model->values[model->output].size);
    return status;
}

size_t sr_model_describe(const sr_model *model, char *text, size_t size) {
    size_t n = 0;
#define PUT(...) (n += (size_t)snprintf(text + (n < size ? n : size), n < size ? size - n : 0, __VA_ARGS__))
    PUT("program: mode %s, input %s (%ld a step), first output %s (%ld features), %d ops\n",
        model->whole ? "whole (bidirectional: run with --whole)" : "stream", model->values[model->input].name,
        model->values[model->input].size, model->values[model->output].name, model->values[model->output].size,
        model->op_count);
    for (int i = 0; i < model->op_count; ++i) {
        const op *o = &model->ops[i];
        PUT("  %2d %-11s %-24s", i, SR_OP_NAMES[o->kind], o->module ? o->module : "");
        if (o->kind == OP_RNN)
            PUT(" %s, %d layer(s), %s, hidden %d%s", SR_CELL_NAMES[o->cell],
                o->layers, o->directions == 2 ? "bidirectional" : "one direction", o->hidden,
                o->out != o->hidden ? ", projected" : "");
        else if (o->weight)
            PUT(" %s", o->weight->name);
        PUT("\n");
    }
    long long total = 0, nonzero = 0;
    size_t stored = 0;
    PUT("tensors:\n");
    for (int i = 0; i < model->weight_count; ++i) {
        const weight *w = &model->weights[i];
        long long elements = 1;
        for (int d = 0; d < w->rank && d < 2; ++d) elements *= w->shape[d];
        const int sparse = w->matrix.rows && !w->dense;
        PUT("  %-32s %s", w->name, sparse ? (w->matrix.r == 1 && w->matrix.c == 1 ? "csr" : "blocks") : "dense");
        if (sparse && (w->matrix.r > 1 || w->matrix.c > 1)) PUT(" %dx%d", w->matrix.r, w->matrix.c);
        if (sparse) PUT(" %s", w->values);
        if (w->rank == 2) PUT("  %lld x %lld", w->shape[0], w->shape[1]);
        if (elements) PUT("  sparsity %.1f%%", 100.0 * (1.0 - (double)w->nonzeros / (double)elements));
        PUT("  %zu bytes\n", w->stored_bytes);
        total += elements, nonzero += w->nonzeros, stored += w->stored_bytes;
    }
    PUT("total: %lld parameters, %lld non-zero (sparsity %.1f%%), %zu bytes of tensors, file %lld bytes\n", total,
        nonzero, total ? 100.0 * (1.0 - (double)nonzero / (double)total) : 0.0, stored, model->file_bytes);
#undef PUT
    return n;
}
