/* sparsernn-run: run a sparsernn model file (format 3, with a program) on a sequence, without Python.
 *
 *   sparsernn-run MODEL.safetensors --input IN.npy --output OUT.npy [--whole] [--threads N] [--time]
 *   sparsernn-run MODEL.safetensors --info
 *
 * IN holds token ids (T,) as int32 or int64, or features (T, F) as float32. OUT (T, F_out) float32 holds
 * the model's first output for each step, streamed one step per row from a fresh state, or with --whole
 * computed over the sequence at once (needed for bidirectional models). --time prints the time the steps
 * took (not loading, not reading or writing files; --whole: the second of two runs); OUT is then optional. Errors: one line, exit status 2. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "npy.h"
#include "sparsernn.h"

static int fail(const char *message) {
    fprintf(stderr, "sparsernn-run: %s\n", message);
    return 2;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *input = NULL, *output = NULL;
    int whole = 0, info = 0, timed = 0, threads = 1;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--input") && i + 1 < argc) input = argv[++i];
        else if (!strcmp(argv[i], "--output") && i + 1 < argc) output = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--whole")) whole = 1;
        else if (!strcmp(argv[i], "--info")) info = 1;
        else if (!strcmp(argv[i], "--time")) timed = 1;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            puts("usage: sparsernn-run MODEL.safetensors --input IN.npy --output OUT.npy [--whole] [--threads N] [--time]\n"
                 "       sparsernn-run MODEL.safetensors --info");
            return 0;
        } else if (argv[i][0] != '-' && !model_path) model_path = argv[i];
        else {
            char message[300];
            snprintf(message, sizeof message, "unknown argument %s (see --help)", argv[i]);
            return fail(message);
        }
    }
    if (!model_path || (!info && (!input || (!output && !timed))))
        return fail("usage: sparsernn-run MODEL.safetensors --input IN.npy --output OUT.npy [--whole] [--threads N]");
    if (threads < 1) return fail("--threads must be at least 1");
    char error[512];
    sr_model *model;
    if (sr_model_from_file(model_path, &model, error, sizeof error)) return fail(error);
    if (info) {
        const size_t n = sr_model_describe(model, NULL, 0);
        char *text = malloc(n + 1);
        if (text) sr_model_describe(model, text, n + 1), fputs(text, stdout);
        free(text);
        sr_model_free(model);
        return 0;
    }
    npy in = {0};
    int status = 2;
    float *out = NULL;
    void *memory = NULL;
    if (npy_read(input, &in, error, sizeof error)) goto failed;
    const long T = in.shape[0], features = (long)sr_model_input_size(model), out_size = (long)sr_model_output_size(model);
    if (sr_model_input_ids(model) != (in.kind == 'i') || (in.kind == 'f' && in.shape[1] != features)) {
        if (sr_model_input_ids(model)) snprintf(error, sizeof error, "%s: the model takes token ids: (T,) int32 or int64", input);
        else snprintf(error, sizeof error, "%s: the model takes (T, %ld) float32 features", input, features);
        goto failed;
    }
    if (in.kind == 'i' && in.size == 8) { /* int64 ids to int32, each checked */
        int32_t *ids = (int32_t *)in.data;
        for (long t = 0; t < T; ++t) {
            int64_t id;
            memcpy(&id, (char *)in.data + 8 * t, 8);
            if (id < INT32_MIN || id > INT32_MAX) {
                snprintf(error, sizeof error, "%s: token id %lld at row %ld does not fit int32", input, (long long)id, t);
                goto failed;
            }
            ids[t] = (int32_t)id;
        }
        in.size = 4;
    }
    /* streamed without --output, every step's output goes to one row (as a program that consumes it would) */
    const int one_row = !output && !(whole || sr_model_whole(model));
    out = malloc(sizeof(float) * (size_t)((one_row ? 1 : T) * out_size + 1));
    if (!out) goto memory;
    struct timespec start, end;
    if (whole || sr_model_whole(model)) {
        if (!whole) {
            snprintf(error, sizeof error, "%s: the model has a bidirectional layer: run it with --whole", model_path);
            goto failed;
        }
        const size_t size = sr_run_size(model, T, threads);
        if (!(memory = malloc(size))) goto memory;
        /* timed: the second of two runs, as a program that runs sequences one after another sees it (the
         * first also pays for the first touch of the scratch's and the output's fresh pages) */
        if (timed && T && sr_run(model, T, in.data, out, memory, size, threads, error, sizeof error)) goto failed;
        clock_gettime(CLOCK_MONOTONIC, &start);
        if (T && sr_run(model, T, in.data, out, memory, size, threads, error, sizeof error)) goto failed;
    } else {
        const size_t size = sr_state_size(model, threads);
        sr_state *state;
        if (!(memory = malloc(size))) goto memory;
        if (sr_state_init(model, memory, size, threads, &state)) {
            snprintf(error, sizeof error, "--threads %d: this build runs one thread (make runtime OPENMP=1)", threads);
            goto failed;
        }
        const size_t stride = (size_t)in.size * (size_t)(in.kind == 'i' ? 1 : features);
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (long t = 0; t < T; ++t)
            if (sr_step(state, (char *)in.data + (size_t)t * stride, out + (one_row ? 0 : t) * out_size, error,
                        sizeof error))
                goto failed;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    if (timed) {
        const double us = (double)(end.tv_sec - start.tv_sec) * 1e6 + (double)(end.tv_nsec - start.tv_nsec) / 1e3;
        printf("%ld steps (%s): %.1f us, %.2f us a step\n", T, whole ? "whole sequence" : "streamed", us,
               T ? us / (double)T : 0.0);
    }
    if (output && npy_write(output, out, T, out_size)) {
        snprintf(error, sizeof error, "%s: cannot write the file", output);
        goto failed;
    }
    status = 0;
    goto done;
memory:
    snprintf(error, sizeof error, "out of memory");
failed:
    fail(error);
done:
    free(in.data), free(out), free(memory);
    sr_model_free(model);
    return status;
}
