/* The C runtime's tests, with no Python: every fixture (runtime/tests/fixtures, written by
 * make_fixtures.py from PyTorch) run and compared with PyTorch's output; no allocation in a step (malloc,
 * calloc, realloc and posix_memalign are wrapped and counted: -Wl,--wrap=...); one model shared by two
 * states; whole-sequence runs equal to stepping; every tensor on a cache line, from a file or a buffer;
 * and the errors a caller meets.
 *
 *   test_runtime FIXTURE_DIRECTORY      exit status 0 when every check passes */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/internal.h" /* the model's tensors, whose alignment one test checks */
#include "npy.h"
#include "sparsernn.h"

static long allocations;
void *__real_malloc(size_t);
void *__real_calloc(size_t, size_t);
void *__real_realloc(void *, size_t);
int __real_posix_memalign(void **, size_t, size_t);
void *__wrap_malloc(size_t n) { return allocations++, __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t m) { return allocations++, __real_calloc(n, m); }
void *__wrap_realloc(void *p, size_t n) { return allocations++, __real_realloc(p, n); }
int __wrap_posix_memalign(void **p, size_t a, size_t n) { return allocations++, __real_posix_memalign(p, a, n); }

static int failures;
#define CHECK(condition, ...)                                                  \
    do {                                                                       \
        if (!(condition)) {                                                    \
            failures++;                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);               \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

static const char *const FIXTURES[] = {"lstm", "gru", "rnn_relu", "lstm_proj", "gru_8x1", "gru_bf16",
                                       "rnnmodel", "tagger", "packed", "mixer", "lstm_int8"};

/* max |a - b| / max |b| */
static double relative(const float *a, const float *b, size_t n) {
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; ++i) {
        const double d = fabs((double)a[i] - b[i]);
        worst = d > worst || isnan(d) ? d : worst;
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
    }
    return scale ? worst / scale : worst;
}

static void *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *data = malloc(*size);
    if (data && fread(data, 1, *size, f) != *size) free(data), data = NULL;
    fclose(f);
    return data;
}

/* The fixture's outputs: T x output_size, streamed (a fresh state) or whole. */
static float *outputs_of(const sr_model *model, const npy *in, int whole, int threads) {
    const long T = in->shape[0], out = (long)sr_model_output_size(model);
    const size_t stride = in->kind == 'i' ? (size_t)in->size : sizeof(float) * sr_model_input_size(model);
    float *result = malloc(sizeof(float) * (size_t)(T * out));
    char error[256];
    if (whole) {
        const size_t size = sr_run_size(model, T, threads);
        void *scratch = malloc(size);
        const sr_status s = sr_run(model, T, in->data, result, scratch, size, threads, error, sizeof error);
        CHECK(!s, "sr_run: %s", error);
        free(scratch);
        return result;
    }
    const size_t size = sr_state_size(model, threads);
    void *memory = malloc(size);
    sr_state *state;
    CHECK(!sr_state_init(model, memory, size, threads, &state), "sr_state_init");
    const long before = allocations;
    for (long t = 0; t < T; ++t) {
        const sr_status s = sr_step(state, (const char *)in->data + (size_t)t * stride, result + t * out, error,
                                    sizeof error);
        CHECK(!s, "sr_step %ld: %s", t, error);
    }
    CHECK(allocations == before, "%ld allocations in %ld steps", allocations - before, T);
    free(memory);
    return result;
}

static void fixture(const char *directory, const char *name) {
    char path[512], error[512];
    snprintf(path, sizeof path, "%s/%s.safetensors", directory, name);
    sr_model *model;
    const long before = allocations;
    if (sr_model_from_file(path, &model, error, sizeof error)) {
        CHECK(0, "%s", error);
        return;
    }
    CHECK(allocations > before, "loading counted no allocation: the counter does not count");
    npy in = {0}, expected = {0};
    snprintf(path, sizeof path, "%s/%s.in.npy", directory, name);
    CHECK(!npy_read(path, &in, error, sizeof error), "%s", error);
    snprintf(path, sizeof path, "%s/%s.expected.npy", directory, name);
    CHECK(!npy_read(path, &expected, error, sizeof error), "%s", error);
    if (in.kind == 'i' && in.size == 8) { /* int64 ids as int32 */
        for (long t = 0; t < in.shape[0]; ++t) ((int32_t *)in.data)[t] = (int32_t)((int64_t *)in.data)[t];
        in.size = 4;
    }
    const int whole = sr_model_whole(model);
    const size_t n = (size_t)in.shape[0] * sr_model_output_size(model);
    /* bf16 against PyTorch's float32; int8 against the Python engine, whose integer sums are the same but
     * whose tanh and exp are not libm's everywhere: a last-bit difference can round an input the other way */
    const double tolerance = strstr(name, "bf16") || strstr(name, "int8") ? 1e-2 : 1e-5;
    float *got = outputs_of(model, &in, whole, 1);
    const double difference = relative(got, expected.data, n);
    CHECK(expected.shape[0] == in.shape[0] && (size_t)expected.shape[1] == sr_model_output_size(model),
          "%s: expected output of another shape", name);
    CHECK(difference <= tolerance, "%s: relative difference %.3g from the oracle (tolerance %g)", name, difference,
          tolerance);
    printf("%-10s %s, %ld steps, relative difference from the oracle %.2g\n", name, whole ? "whole " : "stream",
           in.shape[0], difference);
    if (!whole) { /* a whole-sequence run equals the steps; two states on one model do not disturb each other */
        float *all = outputs_of(model, &in, 1, 1);
        CHECK(relative(all, got, n) <= 1e-5, "%s: sr_run differs from sr_step by %.3g", name, relative(all, got, n));
        free(all);
        const size_t size = sr_state_size(model, 1);
        void *memory[2] = {malloc(size), malloc(size)};
        sr_state *state[2];
        const long T = in.shape[0], out = (long)sr_model_output_size(model);
        float *both[2] = {malloc(sizeof(float) * (size_t)(T * out)), malloc(sizeof(float) * (size_t)(T * out))};
        const size_t stride = in.kind == 'i' ? 4 : sizeof(float) * sr_model_input_size(model);
        for (int k = 0; k < 2; ++k) sr_state_init(model, memory[k], size, 1, &state[k]);
        for (long t = 0; t < T; ++t) /* the two states step in turns */
            for (int k = 0; k < 2; ++k)
                sr_step(state[k], (const char *)in.data + (size_t)t * stride, both[k] + t * out, NULL, 0);
        CHECK(relative(both[0], got, n) <= 1e-6 && relative(both[1], got, n) <= 1e-6,
              "%s: two states on one model interfere", name);
        for (int k = 0; k < 2; ++k) free(memory[k]), free(both[k]);
    }
    free(got), free(in.data), free(expected.data);
    sr_model_free(model);
}

/* Every tensor of a loaded model starts a cache line (the file packs them at any offset: the fixture's
 * are not all aligned there), read from the file or from a buffer; the offsets in the file are checked to
 * include unaligned ones, so that the test sees the reader place them. */
static void aligned(const char *directory) {
    char path[512], error[256];
    snprintf(path, sizeof path, "%s/gru_8x1.safetensors", directory);
    sr_model *models[2] = {NULL, NULL};
    CHECK(sr_model_from_file(path, &models[0], error, sizeof error) == SR_OK, "%s", error);
    FILE *f = fopen(path, "rb");
    unsigned char *data = malloc(1 << 20);
    const size_t size = f ? fread(data, 1, 1 << 20, f) : 0;
    if (f) fclose(f);
    CHECK(size > 8 && size < (1 << 20), "%s read", path);
    CHECK(sr_model_from_buffer(data, size, &models[1], error, sizeof error) == SR_OK, "%s", error);
    for (int k = 0; k < 2 && models[k]; ++k) {
        int misplaced = 0;
        for (int i = 0; i < models[k]->tensor_count; ++i) misplaced += (uintptr_t)models[k]->tensors[i].data % 64 != 0;
        CHECK(models[k]->tensor_count > 3 && !misplaced, "%d tensor(s) off a cache line", misplaced);
    }
    int unaligned = 0; /* tensors the file holds off a 64-byte boundary: "data_offsets":[begin, */
    const size_t length = (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16;
    char *header = size > 8 + length ? strndup((const char *)data + 8, length) : NULL;
    for (const char *at = header; at && (at = strstr(at, "\"data_offsets\":[")) != NULL; at += 16)
        unaligned += (8 + length + strtoull(at + 16, NULL, 10)) % 64 != 0;
    free(header);
    CHECK(unaligned > 0, "the fixture has no tensor off a cache line in its file");
    free(data), sr_model_free(models[0]), sr_model_free(models[1]);
}

static sr_status load(const void *data, size_t size, char *error) {
    sr_model *model;
    const sr_status s = sr_model_from_buffer(data, size, &model, error, 256);
    sr_model_free(model);
    return s;
}

static void errors(const char *directory) {
    char path[512], error[256];
    snprintf(path, sizeof path, "%s/lstm.safetensors", directory);
    size_t size = 0;
    unsigned char *data = read_file(path, &size);
    CHECK(data && load(data, size, error) == SR_OK, "the fixture loads from a buffer");
    CHECK(load(data, size - 1, error) == SR_ERROR_FORMAT && strstr(error, "tensor"), "truncated: %s", error);
    CHECK(load(data, 20, error) == SR_ERROR_FORMAT && strstr(error, "truncated"), "a stub: %s", error);
    data[size - 3] ^= 0x10; /* a bit of the last tensor */
    CHECK(load(data, size, error) == SR_ERROR_DIGEST && strstr(error, "SHA-256"), "a flipped bit: %s", error);
    data[size - 3] ^= 0x10;
    char *format = memmem(data, size, "\\\"format\\\": 4", 13);
    CHECK(format != NULL, "the fixture's metadata holds format 4");
    if (format) {
        format[12] = '7';
        CHECK(load(data, size, error) == SR_ERROR_FORMAT && strstr(error, "format version 7"), "format: %s", error);
        format[12] = '4';
    }
    sr_model *model;
    CHECK(sr_model_from_file("/nonexistent.safetensors", &model, error, sizeof error) == SR_ERROR_IO &&
          strstr(error, "/nonexistent.safetensors"), "a missing file: %s", error);
    CHECK(sr_model_from_buffer(data, size, &model, error, sizeof error) == SR_OK, "loads");
    sr_state *state;
    unsigned char memory[64];
    CHECK(sr_state_init(model, memory, sizeof memory, 1, &state) == SR_ERROR_ARGUMENT, "too little state memory");
    void *enough = malloc(sr_state_size(model, 1));
    sr_state_init(model, enough, sr_state_size(model, 1), 1, &state);
    const int32_t bad = 40;
    float *out = malloc(sizeof(float) * sr_model_output_size(model));
    CHECK(sr_step(state, &bad, out, error, sizeof error) == SR_ERROR_ARGUMENT && strstr(error, "token id 40"),
          "an id outside the vocabulary: %s", error);
    free(enough), free(out), free(data);
    sr_model_free(model);
    snprintf(path, sizeof path, "%s/tagger.safetensors", directory);
    CHECK(sr_model_from_file(path, &model, error, sizeof error) == SR_OK, "%s", error);
    enough = malloc(sr_state_size(model, 1));
    sr_state_init(model, enough, sr_state_size(model, 1), 1, &state);
    out = malloc(sizeof(float) * sr_model_output_size(model));
    CHECK(sr_step(state, &bad, out, error, sizeof error) == SR_ERROR_ARGUMENT && strstr(error, "whole"),
          "a bidirectional model refuses steps: %s", error);
    free(enough), free(out);
    sr_model_free(model);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_runtime FIXTURE_DIRECTORY\n");
        return 2;
    }
    for (size_t i = 0; i < sizeof FIXTURES / sizeof *FIXTURES; ++i) fixture(argv[1], FIXTURES[i]);
    errors(argv[1]);
    aligned(argv[1]);
    if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
    else printf("runtime tests passed\n");
    return failures ? 1 : 0;
}
