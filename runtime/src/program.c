/* A model's program (docs/FORMAT.md, "Program") read from the metadata and checked against the weights,
 * as sparsernn.export.program.check_program does: every value defined before use, every size consistent,
 * so that the interpreter (run.c) never reads or writes outside a buffer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "layouts.h"

const char *const SR_OP_NAMES[OP_COUNT] = {"embedding", "linear", "rnn", "layer_norm", "tanh", "relu", "sigmoid",
                                           "softmax", "log_softmax", "add", "mul", "sub", "div", "copy"};
const char *const SR_CELL_NAMES[4] = {"rnn_tanh", "rnn_relu", "gru", "lstm"}; /* by cell code (kernels.h) */

typedef struct {
    sr_model *model;
    char *error;
    size_t error_size;
    char where[160];
    unsigned char *defined; /* per value */
    int lengths;            /* the value of the lengths input (packed sequences), or -1 */
} loader;

#define FAIL(l, ...) (snprintf((l)->error, (l)->error_size, "program: %s", (l)->where), \
                      snprintf((l)->error + strlen((l)->error), (l)->error_size - strlen((l)->error), __VA_ARGS__), \
                      SR_ERROR_PROGRAM)

static int find_value(const sr_model *model, const char *name) {
    for (int i = 0; name && i < model->value_count; ++i)
        if (!strcmp(model->values[i].name, name)) return i;
    return -1;
}

/* A value the op reads: named, defined before. */
static sr_status use(loader *l, const json *op, const char *key, int *index) {
    const char *name = json_string(json_get(op, key));
    *index = find_value(l->model, name);
    if (*index < 0 || !l->defined[*index]) return FAIL(l, "%s %s is not defined before it is used", key, name ? name : "(none)");
    return SR_OK;
}

/* A value the op writes: named, of the size the op computes. */
static sr_status define(loader *l, const json *op, const char *key, long size, int again, int *index) {
    const char *name = json_string(json_get(op, key));
    *index = find_value(l->model, name);
    if (*index < 0) return FAIL(l, "%s %s has no entry in values", key, name ? name : "(none)");
    if (l->model->values[*index].size != size)
        return FAIL(l, "%s %s holds %ld features, the op computes %ld", key, name, l->model->values[*index].size, size);
    if (l->defined[*index] && !again) return FAIL(l, "%s %s is computed twice", key, name);
    l->defined[*index] = 1;
    return SR_OK;
}

/* A stored weight the op names (key absent or null: *w = NULL when optional). */
static sr_status find(loader *l, const json *op, const char *key, int optional, const weight **w) {
    const json *node = json_get(op, key);
    *w = NULL;
    if ((!node || node->kind == JSON_NULL) && optional) return SR_OK;
    *w = sr_find_weight(l->model, json_string(node));
    if (!*w) return FAIL(l, "%s %s is not a tensor of the file", key, json_string(node) ? json_string(node) : "(none)");
    return SR_OK;
}

static long long count(const weight *w) {
    long long n = 1;
    for (int d = 0; d < w->rank && d < 2; ++d) n *= w->shape[d];
    return w->rank > 2 ? -1 : n;
}

static sr_status integer(loader *l, const json *op, const char *key, long long low, long long high, long *value) {
    long long v;
    if (json_integer(json_get(op, key), low, high, &v)) return FAIL(l, "%s must be an integer in [%lld, %lld]", key, low, high);
    *value = (long)v;
    return SR_OK;
}

/* The weight as a matrix the kernels multiply by: sparse as stored; a dense one laid out as blocks of
 * up to 16 rows (dividing rows_unit: a block must not straddle two gates), made once. */
static sr_status as_matrix(loader *l, const weight *cw, long rows_unit, const char *key) {
    weight *w = (weight *)cw; /* the model is not shared while it loads */
    if (w->rank != 2) return FAIL(l, "%s %s is not a matrix", key, w->name);
    if (w->matrix.rows) {
        if (rows_unit % w->matrix.r) return FAIL(l, "%s %s: blocks of %d rows straddle its gates", key, w->name, w->matrix.r);
        /* an unstructured matrix's one-column copy for the AVX2 or AVX-512 kernels, or its int8 kernel's
         * (streaming products) */
        if (w->matrix.q ? !w->matrix.lanes && sr_int8_copy(&w->matrix, rows_unit, w->owned + 4) < 0
                        : sr_avx2() && !w->matrix.lanes &&
                              sr_one_column_copy(&w->matrix, rows_unit, sr_use_avx512() ? 16 : 8, w->bf16 != NULL,
                                                 w->owned + 4) < 0)
            return SR_FAIL(SR_ERROR_MEMORY, l->error, l->error_size, "out of memory");
        return SR_OK;
    }
    if (!w->dense) return FAIL(l, "%s %s is not float32", key, w->name);
    const long rows = (long)w->shape[0], cols = (long)w->shape[1];
    if (cols > 65536 || rows * cols > (1L << 31))
        return FAIL(l, "%s %s: a dense matrix of more than 65536 columns or 2^31 values", key, w->name);
    const int r = rows % 16 == 0 && rows_unit % 16 == 0 ? 16 : rows % 8 == 0 && rows_unit % 8 == 0 ? 8 : 1;
    const long block_rows = rows / r;
    int32_t *rowptr = malloc(sizeof(int32_t) * (size_t)(block_rows + 1));
    uint16_t *index = malloc(sizeof(uint16_t) * (size_t)(block_rows * cols + 1));
    float *values = NULL;
    if (posix_memalign((void **)&values, 64, sizeof(float) * (size_t)(rows * cols + 1))) values = NULL;
    if (!rowptr || !index || !values) {
        free(rowptr), free(index), free(values);
        return SR_FAIL(SR_ERROR_MEMORY, l->error, l->error_size, "out of memory");
    }
    for (long i = 0; i <= block_rows; ++i) rowptr[i] = (int32_t)(i * cols);
    for (long i = 0; i < block_rows; ++i)
        for (long j = 0; j < cols; ++j) {
            index[i * cols + j] = (uint16_t)j;
            for (int a = 0; a < r; ++a) values[(i * cols + j) * r + a] = w->dense[(i * r + a) * cols + j];
        }
    w->owned[1] = rowptr, w->owned[2] = index, w->owned[3] = values;
    w->matrix = (Matrix){.rows = (int)rows, .cols = (int)cols, .r = r, .c = 1, .rowptr = rowptr, .index = index,
                         .values = values};
    sr_matrix_kernels(&w->matrix);
    return SR_OK;
}

static sr_status vector(loader *l, const weight *w, long long size, const char *key) {
    if (!w) return SR_OK;
    if (!w->dense || count(w) != size) return FAIL(l, "%s %s does not hold %lld float32 values", key, w->name, size);
    return SR_OK;
}

static sr_status load_rnn(loader *l, const json *node, op *o) {
    const char *cell = json_string(json_get(node, "cell"));
    o->cell = -1;
    for (int i = 0; i < 4; ++i)
        if (cell && !strcmp(cell, SR_CELL_NAMES[i])) o->cell = i;
    if (o->cell < 0) return FAIL(l, "cell must be rnn_tanh, rnn_relu, gru or lstm");
    long layers, hidden, proj;
    sr_status s;
    if ((s = integer(l, node, "layers", 1, 64, &layers)) || (s = integer(l, node, "hidden_size", 1, 1 << 20, &hidden)) ||
        (s = integer(l, node, "proj_size", 0, 1 << 20, &proj)))
        return s;
    const json *bidirectional = json_get(node, "bidirectional");
    if (!bidirectional || (bidirectional->kind != JSON_TRUE && bidirectional->kind != JSON_FALSE))
        return FAIL(l, "bidirectional must be true or false");
    o->directions = bidirectional->kind == JSON_TRUE ? 2 : 1;
    if (o->directions == 2 && !l->model->whole) return FAIL(l, "a bidirectional layer needs mode whole");
    if (proj && o->cell != CELL_LSTM) return FAIL(l, "proj_size is for LSTM only");
    o->layers = (int)layers, o->hidden = (int)hidden, o->out = (int)(proj ? proj : hidden);
    const json *weights = json_get(node, "weights");
    if (!weights || weights->kind != JSON_ARRAY || weights->count != (size_t)(layers * o->directions))
        return FAIL(l, "weights must list %ld layers and directions", layers * o->directions);
    if ((s = use(l, node, "x", &o->x))) return s;
    const long gates = sr_cell_gates(o->cell) * hidden, features = l->model->values[o->x].size;
    o->dirs = calloc((size_t)(layers * o->directions), sizeof(rnn_direction));
    if (!o->dirs) return SR_FAIL(SR_ERROR_MEMORY, l->error, l->error_size, "out of memory");
    for (long k = 0; k < layers * o->directions; ++k) {
        const json *names = json_at(weights, (size_t)k);
        rnn_direction *d = &o->dirs[k];
        const weight *b_ih, *b_hh;
        if ((s = find(l, names, "weight_ih", 0, &d->w_ih)) || (s = find(l, names, "weight_hh", 0, &d->w_hh)) ||
            (s = find(l, names, "bias_ih", 1, &b_ih)) || (s = find(l, names, "bias_hh", 1, &b_hh)) ||
            (s = find(l, names, "weight_hr", !proj, &d->w_hr)))
            return s;
        const long inputs = k < o->directions ? features : (long)o->out * o->directions;
        if (d->w_ih->shape[0] != gates || d->w_ih->shape[1] != inputs || d->w_hh->shape[0] != gates ||
            d->w_hh->shape[1] != o->out || (d->w_hr && (d->w_hr->shape[0] != proj || d->w_hr->shape[1] != hidden)))
            return FAIL(l, "weights[%ld]: shapes do not fit a %s of %ld units over %ld inputs", k, cell, hidden, inputs);
        if ((s = as_matrix(l, d->w_ih, hidden, "weight_ih")) || (s = as_matrix(l, d->w_hh, hidden, "weight_hh")) ||
            (d->w_hr && (s = as_matrix(l, d->w_hr, proj, "weight_hr"))) || (s = vector(l, b_ih, gates, "bias_ih")) ||
            (s = vector(l, b_hh, gates, "bias_hh")))
            return s;
        d->b_ih = b_ih ? b_ih->dense : NULL, d->b_hh = b_hh ? b_hh->dense : NULL;
    }
    o->state_offset = l->model->state_floats;
    l->model->state_floats += (size_t)(layers * o->directions * (o->out + hidden));
    if (gates > l->model->max_gates) l->model->max_gates = gates;
    if (hidden > l->model->max_hidden) l->model->max_hidden = hidden;
    if (o->out * o->directions > l->model->max_out) l->model->max_out = o->out * o->directions;
    /* Lengths (packed sequences): this runtime runs one sequence at a time, whose length is all of its
     * steps, so such an op runs as one without them. */
    const json *lengths = json_get(node, "lengths");
    if (lengths && lengths->kind != JSON_NULL &&
        (l->lengths < 0 || find_value(l->model, json_string(lengths)) != l->lengths || !l->model->whole))
        return FAIL(l, "lengths must name the program's lengths input, in mode whole");
    if ((s = define(l, node, "y", (long)o->out * o->directions, 0, &o->y))) return s;
    o->hn = o->cn = -1;
    const long per = layers * o->directions;
    if (json_get(node, "hn") && json_get(node, "hn")->kind != JSON_NULL &&
        (s = define(l, node, "hn", per * o->out, 0, &o->hn)))
        return s;
    if (json_get(node, "cn") && json_get(node, "cn")->kind != JSON_NULL) {
        if (o->cell != CELL_LSTM) return FAIL(l, "cn is for LSTM only");
        if ((s = define(l, node, "cn", per * hidden, 0, &o->cn))) return s;
    }
    return SR_OK;
}

static sr_status load_op(loader *l, const json *node, op *o) {
    const char *kind = json_string(json_get(node, "op"));
    o->kind = -1, o->other = -1, o->hn = o->cn = -1;
    for (int k = 0; kind && k < OP_COUNT; ++k)
        if (!strcmp(kind, SR_OP_NAMES[k])) o->kind = k;
    if (o->kind < 0) return FAIL(l, "unknown op %s", kind ? kind : "(none)");
    if (o->kind == OP_RNN) return load_rnn(l, node, o);
    sr_status s = use(l, node, "x", &o->x);
    if (s) return s;
    const long x = l->model->values[o->x].size;
    const int ids = o->x == l->model->input && l->model->input_ids;
    if ((o->kind == OP_EMBEDDING) != ids) return FAIL(l, "token ids are read by embedding ops only, and they read ids only");
    switch (o->kind) {
    case OP_EMBEDDING:
        if ((s = find(l, node, "weight", 0, &o->weight))) return s;
        if (o->weight->rank != 2 || (!o->weight->dense && !o->weight->matrix.rows))
            return FAIL(l, "weight %s is not a float32 matrix", o->weight->name);
        return define(l, node, "y", (long)o->weight->shape[1], 0, &o->y);
    case OP_LINEAR:
        if ((s = find(l, node, "weight", 0, &o->weight)) || (s = find(l, node, "bias", 1, &o->bias))) return s;
        if (o->weight->rank != 2 || o->weight->shape[1] != x)
            return FAIL(l, "weight %s does not take %ld features", o->weight->name, x);
        if ((s = as_matrix(l, o->weight, (long)o->weight->shape[0], "weight")) ||
            (s = vector(l, o->bias, o->weight->shape[0], "bias")))
            return s;
        return define(l, node, "y", (long)o->weight->shape[0], 0, &o->y);
    case OP_LAYER_NORM: {
        double eps;
        if ((s = integer(l, node, "size", 1, x, &o->size))) return s;
        if (x % o->size) return FAIL(l, "size %ld does not divide the %ld features", o->size, x);
        if (json_number(json_get(node, "eps"), &eps) || eps < 0) return FAIL(l, "eps must be a number >= 0");
        o->eps = (float)eps;
        if ((s = find(l, node, "weight", 1, &o->weight)) || (s = find(l, node, "bias", 1, &o->bias)) ||
            (s = vector(l, o->weight, o->size, "weight")) || (s = vector(l, o->bias, o->size, "bias")))
            return s;
        return define(l, node, "y", x, 0, &o->y);
    }
    case OP_SOFTMAX:
    case OP_LOG_SOFTMAX:
        if ((s = integer(l, node, "size", 1, x, &o->size))) return s;
        if (x % o->size) return FAIL(l, "size %ld does not divide the %ld features", o->size, x);
        return define(l, node, "y", x, 0, &o->y);
    case OP_TANH:
    case OP_RELU:
    case OP_SIGMOID: return define(l, node, "y", x, 0, &o->y);
    case OP_ADD:
    case OP_MUL:
    case OP_SUB:
    case OP_DIV: {
        const json *other = json_get(node, "other"), *w = json_get(node, "weight"), *scalar = json_get(node, "scalar");
        const int given = (other && other->kind != JSON_NULL) + (w && w->kind != JSON_NULL) +
                          (scalar && scalar->kind != JSON_NULL);
        if (given != 1) return FAIL(l, "exactly one of other, weight and scalar must be given");
        if (other && other->kind != JSON_NULL) {
            if ((s = use(l, node, "other", &o->other))) return s;
            if (l->model->values[o->other].size != x || (o->other == l->model->input && l->model->input_ids))
                return FAIL(l, "other does not hold %ld features", x);
        } else if (w && w->kind != JSON_NULL) {
            if ((s = find(l, node, "weight", 0, &o->weight))) return s;
            if (!o->weight->dense || o->weight->rank > 2) return FAIL(l, "weight %s is not float32 values", o->weight->name);
            long long n = 1;
            for (int d = 0; d < o->weight->rank; ++d) n *= o->weight->shape[d];
            if (n != x) return FAIL(l, "weight %s does not hold %ld values", o->weight->name, x);
        } else {
            double v;
            if (json_number(scalar, &v)) return FAIL(l, "scalar must be a number");
            o->scalar = (float)v, o->has_scalar = 1;
        }
        return define(l, node, "y", x, 0, &o->y);
    }
    default: { /* OP_COPY */
        long *fields[] = {&o->outer, &o->length, &o->x_stride, &o->x_offset, &o->y_stride, &o->y_offset};
        const char *keys[] = {"outer", "length", "x_stride", "x_offset", "y_stride", "y_offset"};
        for (int i = 0; i < 6; ++i)
            if ((s = integer(l, node, keys[i], i < 2 ? 1 : 0, 1L << 30, fields[i]))) return s;
        const char *name = json_string(json_get(node, "y"));
        o->y = find_value(l->model, name);
        if (o->y < 0) return FAIL(l, "y %s has no entry in values", name ? name : "(none)");
        const long y = l->model->values[o->y].size;
        if ((o->outer - 1) * o->x_stride + o->x_offset + o->length > x ||
            (o->outer - 1) * o->y_stride + o->y_offset + o->length > y)
            return FAIL(l, "%ld runs of %ld do not fit x (%ld) and y (%ld)", o->outer, o->length, x, y);
        if (o->y == l->model->input) return FAIL(l, "y is the program's input");
        l->defined[o->y] = 1;
        return SR_OK;
    }
    }
}

sr_status sr_program_load(sr_model *model, const json *program, char *error, size_t error_size) {
    loader l = {model, error, error_size, "", NULL, -1};
    long long version;
    if (json_integer(json_get(program, "version"), 1, 2, &version)) return FAIL(&l, "version must be 1 or 2");
    const char *mode = json_string(json_get(program, "mode"));
    if (!mode || (strcmp(mode, "stream") && strcmp(mode, "whole"))) return FAIL(&l, "mode must be stream or whole");
    model->whole = !strcmp(mode, "whole");
    const json *values = json_get(program, "values"), *inputs = json_get(program, "inputs"),
               *outputs = json_get(program, "outputs"), *ops = json_get(program, "ops");
    if (!values || values->kind != JSON_OBJECT || !inputs || inputs->kind != JSON_ARRAY || !outputs ||
        outputs->kind != JSON_ARRAY || !outputs->count || !ops || ops->kind != JSON_ARRAY)
        return FAIL(&l, "values, inputs, outputs and ops must be given");
    model->values = calloc(values->count + 1, sizeof(value));
    l.defined = calloc(values->count + 1, 1);
    model->ops = calloc(ops->count + 1, sizeof(op));
    if (!model->values || !l.defined || !model->ops) {
        free(l.defined);
        return SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
    }
    sr_status s = SR_OK;
    for (const json *v = values->child; v && !s; v = v->next) {
        value *entry = &model->values[model->value_count];
        long long size;
        if (json_integer(v, 1, 1 << 28, &size)) s = FAIL(&l, "values[%s] must be a positive integer", v->key);
        else if (!(entry->name = strdup(v->key))) s = SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
        else entry->size = (long)size, entry->offset = model->value_floats, model->value_floats += (size_t)size,
             model->value_count++;
    }
    /* the one sequence input (state inputs are carried by the runtime, starting at zero) */
    model->input = -1;
    for (const json *entry = inputs->child; entry && !s; entry = entry->next) {
        const char *name = json_string(json_get(entry, "name")), *dtype = json_string(json_get(entry, "dtype"));
        const int index = find_value(model, name);
        if (index < 0 || !dtype) {
            s = FAIL(&l, "input %s has no entry in values or no dtype", name ? name : "(none)");
            break;
        }
        if (json_get(entry, "lengths")) { /* never read as a value: only named by rnn ops */
            if (version < 2 || json_get(entry, "lengths")->kind != JSON_TRUE || !strcmp(dtype, "float32") ||
                json_get(entry, "state") || l.lengths >= 0)
                s = FAIL(&l, "input %s: lengths need program version 2, true, an integer dtype, one such input", name);
            l.lengths = index;
            continue;
        }
        l.defined[index] = 1;
        if (json_get(entry, "state")) continue;
        if (model->input >= 0) s = FAIL(&l, "this runtime runs programs of one sequence input");
        model->input = index;
        model->input_ids = strcmp(dtype, "float32") != 0;
        if (model->input_ids && model->values[index].size != 1) s = FAIL(&l, "an id input must hold one id a step");
    }
    if (!s && model->input < 0) s = FAIL(&l, "the program has no sequence input");
    for (const json *node = ops->child; node && !s; node = node->next) {
        op *o = &model->ops[model->op_count];
        snprintf(l.where, sizeof l.where, "op %d (%s, module %s): ", model->op_count,
                 json_string(json_get(node, "op")) ? json_string(json_get(node, "op")) : "?",
                 json_string(json_get(node, "module")) ? json_string(json_get(node, "module")) : "?");
        o->module = json_string(json_get(node, "module"));
        model->op_count++;
        s = load_op(&l, node, o);
    }
    l.where[0] = 0;
    if (!s) {
        const char *name = json_string(json_get(json_at(outputs, 0), "name"));
        model->output = find_value(model, name);
        if (model->output < 0 || !l.defined[model->output] || json_get(json_at(outputs, 0), "state"))
            s = FAIL(&l, "the first output %s is not computed", name ? name : "(none)");
    }
    free(l.defined);
    return s;
}

void sr_program_free(sr_model *model) {
    for (int i = 0; i < model->op_count; ++i) free(model->ops[i].dirs);
    for (int i = 0; i < model->value_count; ++i) free(model->values[i].name);
    free(model->ops), free(model->values);
}
