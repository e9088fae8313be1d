/* The runtime's model and program, shared by model.c (reading and checking a file), program.c (the
 * program's ops checked against the tensors) and run.c (the interpreter). */
#ifndef SPARSERNN_INTERNAL_H
#define SPARSERNN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "../include/sparsernn.h"
#include "json.h"
#include "kernels.h"

enum { DT_F32, DT_F16, DT_U16, DT_I32, DT_I64, DT_U8, DT_I8, DT_I16, DT_U32, DT_U64, DT_F64, DT_BOOL };

/* A tensor of the file (its data in the model's arena, on a 64-byte boundary). */
typedef struct {
    char *name;
    int dtype, rank;
    long long shape[8];
    size_t count; /* elements */
    void *data;
} tensor;

/* A stored weight as the program uses it: a matrix for products (sparse as stored, dense as blocks), or
 * float values (vectors, norms, dense embedding tables). */
typedef struct {
    char *name;
    int rank;
    long long shape[2];
    Matrix matrix;      /* rows > 0 when the weight is a matrix the kernels can multiply by */
    float *dense;       /* all values as float32 when stored dense; NULL for a sparse matrix */
    void *owned[10];    /* arrays made at load: decoded values, a dense one's block layout, the one-column copy
                           and, for int8 values, its row sums; uint8 indices widened */
    const uint16_t *bf16; /* a bf16 file's values as stored (read by the one-column kernels), else NULL */
    char values[8];       /* a sparse matrix's value type as stored: fp32, fp16, bf16 or int8 */
    long long nonzeros;   /* as the metadata counts them */
    size_t stored_bytes;
} weight;

enum {
    OP_EMBEDDING, OP_LINEAR, OP_RNN, OP_LAYER_NORM, OP_TANH, OP_RELU, OP_SIGMOID, OP_SOFTMAX, OP_LOG_SOFTMAX,
    OP_ADD, OP_MUL, OP_SUB, OP_DIV, OP_COPY, OP_COUNT
};

typedef struct {
    const weight *w_ih, *w_hh, *w_hr;
    const float *b_ih, *b_hh; /* zeros when the layer has no biases */
} rnn_direction;

typedef struct {
    int kind;
    int x, y, other; /* value indices; other -1 unless an arithmetic op combines two values */
    const char *module;
    const weight *weight, *bias; /* embedding table, linear matrix and bias, norm weight and bias, operand */
    float scalar, eps;
    int has_scalar;
    long size;                                               /* norm or softmax group size */
    long outer, length, x_stride, x_offset, y_stride, y_offset; /* copy */
    /* rnn */
    int cell, layers, directions, hidden, out; /* out: proj_size, else hidden */
    rnn_direction *dirs;                       /* layers * directions, layer-major */
    int hn, cn;                                /* values holding the final state, -1 if none */
    size_t state_offset;                       /* floats into the recurrent state: per direction h then c */
} op;

typedef struct {
    char *name;
    long size;     /* features per step */
    size_t offset; /* floats into a state's values (streaming) */
} value;

struct sr_model {
    unsigned char *arena; /* every tensor's bytes, each on a 64-byte boundary (owned) */
    json *metadata;
    tensor *tensors;
    int tensor_count;
    weight *weights;
    int weight_count;
    value *values;
    int value_count;
    op *ops;
    int op_count;
    int whole, input, input_ids, output; /* mode; the sequence input and first output (value indices) */
    size_t value_floats, state_floats;   /* per step: every value; every rnn op's h and c */
    long max_gates, max_hidden, max_out; /* of the rnn ops, for their work space (run.c) */
    long long file_bytes;
};

extern const char *const SR_OP_NAMES[OP_COUNT]; /* program.c: the ops' names in the file */
extern const char *const SR_CELL_NAMES[4];       /* rnn_tanh, rnn_relu, gru, lstm, by cell code */

/* model.c */
const weight *sr_find_weight(const sr_model *model, const char *name);
/* program.c: the program's ops from the metadata, checked against the weights; SR_OK or the error */
sr_status sr_program_load(sr_model *model, const json *program, char *error, size_t error_size);
void sr_program_free(sr_model *model);

#define SR_FAIL(status, error, size, ...) (snprintf((error), (size), __VA_ARGS__), (status))

#endif
