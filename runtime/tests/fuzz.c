/* Loader fuzzing: a fixture file mutated many times (bit flips in the header and in the tensors, truncation,
 * digits of the JSON changed, the header length rewritten, bytes inserted or removed), each loaded from a
 * buffer; a load that succeeds is then run for a few steps. Built with AddressSanitizer and
 * UndefinedBehaviorSanitizer and with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, under which the loader
 * reports but does not enforce a digest mismatch, so that mutations reach every later check. Every load
 * must end in a clear error or a verified model; a crash or an out-of-bounds access fails (the sanitizers
 * abort).
 *
 *   fuzz FILE.safetensors COUNT [SEED] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparsernn.h"

static uint64_t state = 88172645463325252ull;
static uint64_t next(void) { /* xorshift64 */
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return state;
}

int main(int argc, char **argv) {
    if (argc < 3) return fprintf(stderr, "usage: fuzz FILE COUNT [SEED]\n"), 2;
    if (argc > 3) state += strtoull(argv[3], NULL, 10);
    FILE *f = fopen(argv[1], "rb");
    if (!f) return fprintf(stderr, "fuzz: cannot open %s\n", argv[1]), 2;
    fseek(f, 0, SEEK_END);
    const size_t size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *original = malloc(size), *data = malloc(size + 64);
    if (!original || !data || fread(original, 1, size, f) != size) return fprintf(stderr, "fuzz: cannot read\n"), 2;
    fclose(f);
    size_t header = 0;
    for (int i = 7; i >= 0; --i) header = header << 8 | original[i];
    const long count = atol(argv[2]);
    long loaded = 0, refused[8] = {0};
    for (long trial = 0; trial < count; ++trial) {
        memcpy(data, original, size);
        size_t n = size;
        const int kind = (int)(next() % 6), edits = 1 + (int)(next() % 4);
        for (int e = 0; e < edits; ++e) {
            if (kind == 0) { /* bits of the JSON header */
                const size_t at = 8 + next() % header;
                data[at] ^= (unsigned char)(1u << (next() % 8));
            } else if (kind == 1) { /* bits of the tensors: row pointers, indices, values */
                const size_t at = 8 + header + next() % (size - 8 - header);
                data[at] ^= (unsigned char)(1u << (next() % 8));
            } else if (kind == 2) { /* truncated */
                n = next() % size;
            } else if (kind == 3) { /* a digit of the header changed: shapes, offsets, sizes, indices */
                for (int tries = 0; tries < 64; ++tries) {
                    const size_t at = 8 + next() % header;
                    if (data[at] >= '0' && data[at] <= '9') {
                        data[at] = (unsigned char)('0' + next() % 10);
                        break;
                    }
                }
            } else if (kind == 4) { /* the header length rewritten */
                const uint64_t length = next() % 3 ? header + (next() % 64) - 32 : next();
                for (int i = 0; i < 8; ++i) data[i] = (unsigned char)(length >> (8 * i));
            } else { /* a byte inserted or removed */
                const size_t at = next() % n;
                if (next() % 2 && n < size + 60) memmove(data + at + 1, data + at, n - at), data[at] = (unsigned char)next(), n++;
                else memmove(data + at, data + at + 1, n - at - 1), n--;
            }
        }
        sr_model *model;
        char error[512];
        const sr_status status = sr_model_from_buffer(data, n, &model, error, sizeof error);
        if (status) {
            refused[status & 7]++;
            if (!error[0]) return fprintf(stderr, "fuzz: status %d without a message\n", status), 1;
            continue;
        }
        loaded++;
        const size_t memory_size = sr_state_size(model, 1);
        void *memory = malloc(memory_size);
        float *out = malloc(sizeof(float) * sr_model_output_size(model) * 4 + 4);
        float *in = calloc(sr_model_input_size(model) * 4 + 4, sizeof(float));
        int32_t ids[4] = {0, 1, 2, 3};
        if (sr_model_whole(model)) {
            const size_t scratch_size = sr_run_size(model, 4, 1);
            void *scratch = malloc(scratch_size);
            sr_run(model, 4, sr_model_input_ids(model) ? (void *)ids : (void *)in, out, scratch, scratch_size, 1, error,
                   sizeof error);
            free(scratch);
        } else {
            sr_state *s;
            if (!sr_state_init(model, memory, memory_size, 1, &s))
                for (int t = 0; t < 4; ++t) sr_step(s, sr_model_input_ids(model) ? (void *)&ids[t] : (void *)in, out, error, sizeof error);
        }
        free(memory), free(out), free(in);
        sr_model_free(model);
    }
    printf("fuzz %s: %ld mutations, %ld loaded and run, refused: format %ld, digest %ld, program %ld, memory %ld\n",
           argv[1], count, loaded, refused[SR_ERROR_FORMAT], refused[SR_ERROR_DIGEST], refused[SR_ERROR_PROGRAM],
           refused[SR_ERROR_MEMORY]);
    free(original), free(data);
    return 0;
}
