/* .npy files (NumPy's format 1 and 2, little-endian, C order): see npy.h. */
#include "npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A .npy file (format 1 or 2, little-endian, C order) of int32, int64 or float32, one or two dimensions. */
int npy_read(const char *path, npy *a, char *error, size_t error_size) {
    FILE *file = fopen(path, "rb");
    if (!file) return snprintf(error, error_size, "%s: cannot open the file", path), -1;
    unsigned char magic[10];
    int status = -1;
    char *header = NULL;
    if (fread(magic, 1, 10, file) != 10 || memcmp(magic, "\x93NUMPY", 6) || (magic[6] != 1 && magic[6] != 2)) {
        snprintf(error, error_size, "%s: not a .npy file", path);
        goto done;
    }
    size_t length = magic[8] | (size_t)magic[9] << 8;
    if (magic[6] == 2) {
        unsigned char more[2];
        if (fread(more, 1, 2, file) != 2) goto truncated;
        length |= (size_t)more[0] << 16 | (size_t)more[1] << 24;
    }
    if (length > 1 << 20 || !(header = calloc(length + 1, 1)) || fread(header, 1, length, file) != length) goto truncated;
    const char *descr = strstr(header, "'descr':"), *order = strstr(header, "'fortran_order':"),
               *shape = strstr(header, "'shape':");
    if (!descr || !order || !shape) {
        snprintf(error, error_size, "%s: .npy header without descr, fortran_order or shape", path);
        goto done;
    }
    descr = strchr(descr + 8, '\'');
    if (!descr || (strncmp(descr, "'<i4'", 5) && strncmp(descr, "'<i8'", 5) && strncmp(descr, "'<f4'", 5))) {
        snprintf(error, error_size, "%s: values must be int32, int64 or float32 (little-endian)", path);
        goto done;
    }
    a->kind = descr[2], a->size = descr[3] - '0';
    if (strncmp(order + 16, " False", 6)) {
        snprintf(error, error_size, "%s: Fortran order is not supported; save a C-order array", path);
        goto done;
    }
    const char *p = strchr(shape, '(');
    a->rank = 0;
    while (p && *++p && *p != ')') {
        char *end;
        const long n = strtol(p, &end, 10);
        if (end == p) break;
        if (a->rank == 2 || n < 0) {
            snprintf(error, error_size, "%s: the array must have one or two dimensions", path);
            goto done;
        }
        a->shape[a->rank++] = n;
        p = end;
        if (*p != ',') break;
    }
    if (a->rank < 1 || (a->kind == 'i' && a->rank != 1) || (a->kind == 'f' && a->rank != 2)) {
        snprintf(error, error_size, "%s: token ids must be (T,) int32/int64, features (T, F) float32", path);
        goto done;
    }
    const size_t count = (size_t)a->shape[0] * (size_t)(a->rank == 2 ? a->shape[1] : 1);
    if (!(a->data = malloc(count * (size_t)a->size + 1)) || fread(a->data, (size_t)a->size, count, file) != count) goto truncated;
    status = 0;
    goto done;
truncated:
    snprintf(error, error_size, "%s: truncated .npy file", path);
done:
    free(header);
    fclose(file);
    return status;
}

int npy_write(const char *path, const float *data, long rows, long columns) {
    char header[128];
    int n = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (%ld, %ld), }", rows,
                     columns);
    const int total = ((10 + n + 1 + 63) / 64) * 64; /* header padded with spaces, ending in a newline */
    memset(header + n, ' ', (size_t)(total - 10 - n - 1));
    header[total - 10 - 1] = '\n';
    unsigned char magic[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)((total - 10) & 0xff),
                               (unsigned char)((total - 10) >> 8)};
    FILE *file = fopen(path, "wb");
    if (!file) return -1;
    const int ok = fwrite(magic, 1, 10, file) == 10 && fwrite(header, 1, (size_t)(total - 10), file) == (size_t)(total - 10) &&
                   fwrite(data, sizeof(float), (size_t)(rows * columns), file) == (size_t)(rows * columns);
    return fclose(file) || !ok ? -1 : 0;
}

