/* SHA-256 (FIPS 180-4), for the model file's digest. */
#ifndef SPARSERNN_SHA256_H
#define SPARSERNN_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[8];
    uint64_t length; /* bytes so far */
    unsigned char block[64];
    size_t used;
} sha256;

void sha256_init(sha256 *s);
void sha256_update(sha256 *s, const void *data, size_t size);
void sha256_final(sha256 *s, unsigned char digest[32]);

#endif
