/* Reading and writing .npy files for sparsernn-run and the runtime's tests: int32, int64 or float32
 * arrays of one or two dimensions, little-endian, C order. */
#ifndef SPARSERNN_NPY_H
#define SPARSERNN_NPY_H

#include <stddef.h>

typedef struct {
    char kind;     /* 'i' or 'f' */
    int size;      /* bytes a value */
    long shape[2];
    int rank;
    void *data;
} npy;

/* Token ids (T,) int32/int64 or features (T, F) float32; -1 with a message naming the file. */
int npy_read(const char *path, npy *a, char *error, size_t error_size);
/* A (rows, columns) float32 array; -1 when the file cannot be written. */
int npy_write(const char *path, const float *data, long rows, long columns);

#endif
