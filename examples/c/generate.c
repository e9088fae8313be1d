/* Text from a pruned word-level language model, in C with no Python: the file that
 * examples/lstm_language_model.py writes (lm.safetensors, with its program) and its vocabulary.txt.
 *
 *   make -C examples/c
 *   examples/c/generate OUT/lm.safetensors OUT/vocabulary.txt [WORDS] [START] [TEMPERATURE] [SEED]
 *
 * Each step feeds one word id to the model (sr_step: the LSTM state carries in caller-owned memory) and
 * draws the next word from the softmax of its logits (TEMPERATURE 0: the most likely word). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparsernn.h"

static char **read_words(const char *path, long *count) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char **words = NULL, line[1024];
    *count = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char **grown = realloc(words, sizeof(char *) * (size_t)(*count + 1));
        if (!grown) break;
        words = grown;
        words[(*count)++] = strdup(line);
    }
    fclose(f);
    return words;
}

static double uniform(uint64_t *state) { /* xorshift64, in [0, 1) */
    *state ^= *state << 13, *state ^= *state >> 7, *state ^= *state << 17;
    return (double)(*state >> 11) / 9007199254740992.0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: generate MODEL.safetensors VOCABULARY.txt [WORDS] [START] [TEMPERATURE] [SEED]\n");
        return 2;
    }
    const long count = argc > 3 ? atol(argv[3]) : 30;
    const double temperature = argc > 5 ? atof(argv[5]) : 0.8;
    uint64_t seed = argc > 6 ? strtoull(argv[6], NULL, 10) + 1 : 88172645463325252ull;
    char error[512];
    sr_model *model;
    if (sr_model_from_file(argv[1], &model, error, sizeof error)) return fprintf(stderr, "generate: %s\n", error), 2;
    long vocabulary_size = 0;
    char **vocabulary = read_words(argv[2], &vocabulary_size);
    const long outputs = (long)sr_model_output_size(model);
    if (!vocabulary || vocabulary_size != outputs || !sr_model_input_ids(model)) {
        fprintf(stderr, "generate: %s: %ld words for a model of %ld outputs taking %s\n", argv[2], vocabulary_size,
                outputs, sr_model_input_ids(model) ? "word ids" : "features");
        return 2;
    }
    int32_t word = 0;
    const char *start = argc > 4 ? argv[4] : "the";
    for (long i = 0; i < vocabulary_size; ++i)
        if (!strcmp(vocabulary[i], start)) word = (int32_t)i;
    const size_t size = sr_state_size(model, 1);
    void *memory = malloc(size);
    float *logits = malloc(sizeof(float) * (size_t)outputs);
    double *weights = malloc(sizeof(double) * (size_t)outputs);
    sr_state *state;
    if (!memory || !logits || !weights || sr_state_init(model, memory, size, 1, &state))
        return fprintf(stderr, "generate: out of memory\n"), 2;
    printf("%s", vocabulary[word]);
    for (long n = 0; n < count; ++n) {
        if (sr_step(state, &word, logits, error, sizeof error)) return fprintf(stderr, "generate: %s\n", error), 2;
        int32_t best = 0;
        for (int32_t i = 1; i < outputs; ++i) best = logits[i] > logits[best] ? i : best;
        if (temperature > 0) { /* draw from softmax(logits / temperature) */
            double total = 0.0;
            for (long i = 0; i < outputs; ++i) total += weights[i] = exp((logits[i] - logits[best]) / temperature);
            double pick = uniform(&seed) * total;
            for (best = 0; best + 1 < outputs && (pick -= weights[best]) > 0; ++best) {
            }
        }
        word = best;
        printf(" %s", strcmp(vocabulary[word], "<eos>") ? vocabulary[word] : "\n");
    }
    printf("\n");
    for (long i = 0; i < vocabulary_size; ++i) free(vocabulary[i]);
    free(vocabulary), free(memory), free(logits), free(weights);
    sr_model_free(model);
    return 0;
}
