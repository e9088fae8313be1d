/* sparsernn runtime: run a pruned recurrent model from its sparsernn file (format 3, saved with
 * sparsernn.save_sparse(model, path, example_inputs=...)) in plain C: C11, libc and libm only.
 *
 *   sr_model *model;
 *   char error[256];
 *   if (sr_model_from_file("lm.safetensors", &model, error, sizeof error)) { puts(error); return 1; }
 *   void *memory = malloc(sr_state_size(model, 1));
 *   sr_state *state;
 *   sr_state_init(model, memory, sr_state_size(model, 1), 1, &state);
 *   int32_t token = 0;
 *   float *logits = malloc(sizeof(float) * sr_model_output_size(model));
 *   for (...) { sr_step(state, &token, logits, error, sizeof error); token = pick(logits); }
 *
 * A model is immutable once loaded and may be shared by threads, each with its own state. A state lives
 * in memory the caller owns (sr_state_size bytes); sr_step allocates nothing. Every function that can
 * fail returns an sr_status and, where it takes one, writes a message into error.
 */
#ifndef SPARSERNN_H
#define SPARSERNN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SR_OK = 0,
    SR_ERROR_IO = 1,       /* the file cannot be read */
    SR_ERROR_FORMAT = 2,   /* not a sparsernn file, another format version, a bad header or tensor */
    SR_ERROR_DIGEST = 3,   /* the SHA-256 does not match: altered or damaged */
    SR_ERROR_PROGRAM = 4,  /* no program, or one that does not fit its tensors */
    SR_ERROR_MEMORY = 5,   /* out of memory */
    SR_ERROR_ARGUMENT = 6, /* a call's argument: too little memory, an id outside the vocabulary, ... */
} sr_status;

typedef struct sr_model sr_model;
typedef struct sr_state sr_state;

/* Loads and checks a model (every offset, shape, row pointer and index, the digest, the program). */
sr_status sr_model_from_file(const char *path, sr_model **model, char *error, size_t error_size);
/* The same from a file's bytes in memory (copied: the buffer may be freed afterwards). */
sr_status sr_model_from_buffer(const void *data, size_t size, sr_model **model, char *error, size_t error_size);
void sr_model_free(sr_model *model);
const char *sr_status_name(sr_status status);

/* What the program takes and gives, per step: its input is one token id (sr_model_input_ids != 0) or
 * sr_model_input_size features; its first output has sr_model_output_size features. */
int sr_model_input_ids(const sr_model *model);
size_t sr_model_input_size(const sr_model *model);
size_t sr_model_output_size(const sr_model *model);
/* 1 when the program needs whole sequences (a bidirectional layer): use sr_run, not sr_step. */
int sr_model_whole(const sr_model *model);
/* A description: the program's ops, the layers, sparsity and bytes (the CLI's --info). */
size_t sr_model_describe(const sr_model *model, char *text, size_t size);

/* Bytes of caller memory for a streaming state with this many threads (1 unless built with OpenMP). */
size_t sr_state_size(const sr_model *model, int threads);
sr_status sr_state_init(const sr_model *model, void *memory, size_t size, int threads, sr_state **state);
void sr_state_reset(sr_state *state); /* zero recurrent state: the next step starts a new sequence */
/* One step: input is an int32 token id or input_size floats; output receives output_size floats.
 * The recurrent state carries to the next step. */
sr_status sr_step(sr_state *state, const void *input, float *output, char *error, size_t error_size);

/* A whole sequence of T steps (inputs: T ids or T x input_size floats; outputs: T x output_size) from a
 * zero state, in scratch of sr_run_size(model, T, threads) bytes owned by the caller. */
size_t sr_run_size(const sr_model *model, long T, int threads);
sr_status sr_run(const sr_model *model, long T, const void *inputs, float *outputs, void *scratch, size_t size,
                 int threads, char *error, size_t error_size);

#ifdef __cplusplus
}
#endif
#endif
