/* Reading a model file: the safetensors container, the sparsernn metadata, the digest, every tensor and
 * sparse matrix checked before use (docs/FORMAT.md). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sha256.h"

#define MAX_HEADER (100u << 20) /* safetensors' own limit on the JSON header */

static const struct {
    const char *name, *numpy; /* safetensors dtype, numpy's dtype.str (the digest names it) */
    int size;
} DTYPES[] = {{"F32", "<f4", 4}, {"F16", "<f2", 2}, {"U16", "<u2", 2}, {"I32", "<i4", 4}, {"I64", "<i8", 8},
              {"U8", "|u1", 1},  {"I8", "|i1", 1},  {"I16", "<i2", 2}, {"U32", "<u4", 4}, {"U64", "<u8", 8},
              {"F64", "<f8", 8}, {"BOOL", "|b1", 1}};

const char *sr_status_name(sr_status status) {
    static const char *names[] = {"ok", "cannot read the file", "not a valid sparsernn file", "digest mismatch",
                                  "bad program", "out of memory", "bad argument"};
    return (unsigned)status < sizeof names / sizeof *names ? names[status] : "unknown error";
}

static void *aligned(size_t bytes) {
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) ? NULL : p;
}

static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | mantissa << 13;
    } else if (exponent) {
        bits = sign | (exponent + 112) << 23 | mantissa << 13;
    } else if (mantissa) { /* subnormal: normalise */
        exponent = 113;
        while (!(mantissa & 0x400)) mantissa <<= 1, exponent--;
        bits = sign | exponent << 23 | (mantissa & 0x3ff) << 13;
    } else {
        bits = sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static const tensor *find_tensor(const sr_model *model, const char *name) {
    for (int i = 0; i < model->tensor_count; ++i)
        if (!strcmp(model->tensors[i].name, name)) return &model->tensors[i];
    return NULL;
}

const weight *sr_find_weight(const sr_model *model, const char *name) {
    for (int i = 0; name && i < model->weight_count; ++i)
        if (!strcmp(model->weights[i].name, name)) return &model->weights[i];
    return NULL;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(((const tensor *)a)->name, ((const tensor *)b)->name);
}

static void hash_write(void *context, const void *data, size_t size) { sha256_update(context, data, size); }

/* The digest of docs/FORMAT.md: every tensor (sorted by name) as "name:dtype:shape;" and its bytes, then
 * the metadata without sha256 as canonical JSON. */
static void digest(const sr_model *model, char hex[65]) {
    sha256 s;
    sha256_init(&s);
    for (int i = 0; i < model->tensor_count; ++i) {
        const tensor *t = &model->tensors[i];
        char head[512];
        int n = snprintf(head, sizeof head, "%s:%s:(", t->name, DTYPES[t->dtype].numpy);
        sha256_update(&s, head, (size_t)n);
        for (int d = 0; d < t->rank; ++d) {
            n = snprintf(head, sizeof head, d + 1 < t->rank ? "%lld, " : t->rank == 1 ? "%lld," : "%lld", t->shape[d]);
            sha256_update(&s, head, (size_t)n);
        }
        sha256_update(&s, ");", 2);
        sha256_update(&s, t->data, t->count * (size_t)DTYPES[t->dtype].size);
    }
    json_canonical(model->metadata, "sha256", hash_write, &s);
    unsigned char bytes[32];
    sha256_final(&s, bytes);
    for (int i = 0; i < 32; ++i) snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
}

/* Where a file's bytes come from: a caller's buffer, or an open file (size bytes either way). */
typedef struct {
    const unsigned char *buffer;
    FILE *file;
    size_t size;
} source;

/* n bytes at offset `at` of the source (the caller checked they lie inside it) into `to`: 0, or -1 when
 * the file cannot be read. */
static int fetch(const source *from, size_t at, void *to, size_t n) {
    if (from->buffer) return memcpy(to, from->buffer + at, n), 0;
    return n && (fseek(from->file, (long)at, SEEK_SET) || fread(to, 1, n, from->file) != n) ? -1 : 0;
}

#define LINE(n) (((n) + 63) / 64 * 64)

/* The safetensors container: the header's tensors, each checked against the data section and read into
 * model->arena on a 64-byte boundary of its own (a block's vector loads never span two cache lines: the
 * data section packs tensors at any offset). */
static sr_status read_container(sr_model *model, const source *from, json **metadata_text, char *error,
                                size_t error_size) {
    const size_t size = from->size;
    unsigned char length[8];
    if (size < 8) return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "not a safetensors file (%zu bytes)", size);
    if (fetch(from, 0, length, 8)) return SR_FAIL(SR_ERROR_IO, error, error_size, "cannot read the file");
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = header_size << 8 | length[i];
    if (header_size > MAX_HEADER || header_size > size - 8)
        return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "truncated or not a safetensors file (header of %" PRIu64
                       " bytes in a file of %zu)", header_size, size);
    char *text = malloc(header_size ? (size_t)header_size : 1);
    if (!text) return SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
    if (fetch(from, 8, text, (size_t)header_size)) {
        free(text);
        return SR_FAIL(SR_ERROR_IO, error, error_size, "cannot read the file");
    }
    char reason[160];
    json *header = json_parse(text, (size_t)header_size, reason, sizeof reason);
    free(text);
    if (!header || header->kind != JSON_OBJECT) {
        json_free(header);
        return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "safetensors header is not a JSON object (%s)",
                       header ? "another value" : reason);
    }
    const size_t data_at = 8 + (size_t)header_size, data_size = size - data_at;
    model->tensors = calloc(header->count + 1, sizeof(tensor));
    size_t *begins = calloc(header->count + 1, sizeof(size_t)); /* each tensor's offset in the data section */
    if (!model->tensors || !begins) {
        json_free(header), free(begins);
        return SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
    }
    sr_status status = SR_OK;
    size_t arena = 0, stored = 0; /* bytes of model->arena, and of the tensors as stored */
    for (json *entry = header->child; entry && !status; entry = entry->next) {
        if (!strcmp(entry->key, "__metadata__")) {
            const char *text = json_string(json_get(entry, "sparsernn"));
            if (!text) {
                status = SR_FAIL(SR_ERROR_FORMAT, error, error_size, "no sparsernn metadata; not a sparsernn model file");
                break;
            }
            *metadata_text = json_parse(text, strlen(text), reason, sizeof reason);
            if (!*metadata_text || (*metadata_text)->kind != JSON_OBJECT)
                status = SR_FAIL(SR_ERROR_FORMAT, error, error_size, "metadata is not a JSON object (%s)",
                                 *metadata_text ? "another value" : reason);
            continue;
        }
        tensor *t = &model->tensors[model->tensor_count];
        const char *dtype = json_string(json_get(entry, "dtype"));
        const json *shape = json_get(entry, "shape"), *offsets = json_get(entry, "data_offsets");
        t->dtype = -1;
        for (size_t d = 0; dtype && d < sizeof DTYPES / sizeof *DTYPES; ++d)
            if (!strcmp(dtype, DTYPES[d].name)) t->dtype = (int)d;
        long long begin, end;
        if (t->dtype < 0 || !shape || shape->kind != JSON_ARRAY || shape->count > 8 || !offsets ||
            offsets->kind != JSON_ARRAY || offsets->count != 2 || json_integer(json_at(offsets, 0), 0, (long long)data_size, &begin) ||
            json_integer(json_at(offsets, 1), begin, (long long)data_size, &end)) {
            status = SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: bad dtype, shape or data_offsets "
                             "(or outside the file's %zu data bytes)", entry->key, data_size);
            break;
        }
        t->rank = (int)shape->count;
        t->count = 1;
        for (int d = 0; d < t->rank && !status; ++d) {
            if (json_integer(json_at(shape, (size_t)d), 0, 1LL << 40, &t->shape[d]) ||
                (t->shape[d] && t->count > (SIZE_MAX / 8) / (size_t)t->shape[d]))
                status = SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: bad shape", entry->key);
            t->count *= (size_t)t->shape[d];
        }
        if (status) break;
        if ((size_t)(end - begin) != t->count * (size_t)DTYPES[t->dtype].size) {
            status = SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: %lld bytes for %zu %s values",
                             entry->key, end - begin, t->count, DTYPES[t->dtype].name);
            break;
        }
        if (!(t->name = strdup(entry->key))) {
            status = SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
            break;
        }
        begins[model->tensor_count++] = (size_t)begin;
        arena += LINE((size_t)(end - begin));
        if ((stored += (size_t)(end - begin)) > data_size) /* overlapping tensors: each would be copied */
            status = SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensors hold more bytes than the file's %zu "
                             "data bytes (overlapping data_offsets)", data_size);
    }
    json_free(header);
    if (!status && !(model->arena = aligned(arena))) status = SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
    size_t at = 0;
    for (int i = 0; !status && i < model->tensor_count; ++i) {
        tensor *t = &model->tensors[i];
        const size_t bytes = t->count * (size_t)DTYPES[t->dtype].size;
        t->data = model->arena + at;
        at += LINE(bytes);
        if (fetch(from, data_at + begins[i], t->data, bytes))
            status = SR_FAIL(SR_ERROR_IO, error, error_size, "cannot read the file");
    }
    free(begins);
    if (!status && !*metadata_text) status = SR_FAIL(SR_ERROR_FORMAT, error, error_size, "no sparsernn metadata; not a sparsernn model file");
    return status;
}

static const char *shape_text(const long long *shape, int rank, char *text, size_t size) {
    size_t n = (size_t)snprintf(text, size, "(");
    for (int d = 0; d < rank && n < size; ++d) n += (size_t)snprintf(text + n, size - n, d ? ", %lld" : "%lld", shape[d]);
    if (n < size) snprintf(text + n, size - n, ")");
    return text;
}

/* A sparse matrix's three tensors checked as sparsernn.kernels.SparseMatrix.validate does, values decoded. */
static sr_status read_sparse(sr_model *model, weight *w, const json *info, char *error, size_t error_size) {
    const json *block = json_get(info, "block");
    const char *kind = json_string(json_get(info, "values"));
    long long r, c;
    const long long rows = w->shape[0], cols = w->shape[1];
    if (w->rank != 2 || !block || block->count != 2 || json_integer(json_at(block, 0), 1, 64, &r) ||
        json_integer(json_at(block, 1), 1, 64, &c) || rows % r || cols % c || rows >= INT32_MAX || cols >= INT32_MAX)
        return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: block does not tile its shape", w->name);
    if (!kind || (strcmp(kind, "fp32") && strcmp(kind, "fp16") && strcmp(kind, "bf16") && strcmp(kind, "int8")))
        return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: unknown value type", w->name);
    char name[600];
    snprintf(name, sizeof name, "%s.rowptr", w->name);
    const tensor *rowptr = find_tensor(model, name);
    snprintf(name, sizeof name, "%s.index", w->name);
    const tensor *index = find_tensor(model, name);
    snprintf(name, sizeof name, "%s.values", w->name);
    const tensor *values = find_tensor(model, name);
    const long long block_rows = rows / r;
    if (!rowptr || rowptr->dtype != DT_I32 || rowptr->rank != 1 || rowptr->shape[0] != block_rows + 1)
        return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: rowptr missing or not int32 of length %lld",
                       w->name, block_rows + 1);
    const int32_t *ptr = rowptr->data;
    if (ptr[0] != 0) return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: rowptr must start at 0", w->name);
    for (long long i = 0; i < block_rows; ++i)
        if (ptr[i + 1] < ptr[i]) return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: rowptr decreases", w->name);
    const long long nblocks = ptr[block_rows];
    if (!index || index->rank != 1 || index->shape[0] != nblocks ||
        (index->dtype != DT_U8 && index->dtype != DT_U16 && index->dtype != DT_I32))
        return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: index missing or not uint8/uint16/int32 of "
                       "length %lld", w->name, nblocks);
    for (long long k = 0; k < nblocks; ++k) {
        const long long column = index->dtype == DT_U8    ? ((const uint8_t *)index->data)[k]
                                 : index->dtype == DT_U16 ? ((const uint16_t *)index->data)[k]
                                                          : ((const int32_t *)index->data)[k];
        if (column < 0 || column >= cols / c)
            return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: column index %lld out of range [0, %lld)",
                           w->name, column, cols / c);
    }
    const int want = !strcmp(kind, "fp32") ? DT_F32 : !strcmp(kind, "fp16") ? DT_F16 : !strcmp(kind, "int8") ? DT_I8 : DT_U16;
    if (!values || values->dtype != want || values->rank != 3 || values->shape[0] != nblocks || values->shape[1] != r ||
        values->shape[2] != c)
        return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: values missing or not (%lld, %lld, %lld) %s",
                       w->name, nblocks, r, c, kind);
    const tensor *scales = NULL;
    if (want == DT_I8) { /* a scale per row; the values are integers in [-127, 127] */
        snprintf(name, sizeof name, "%s.scales", w->name);
        scales = find_tensor(model, name);
        if (!scales || scales->dtype != DT_F32 || scales->rank != 1 || scales->shape[0] != rows)
            return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: scales missing or not float32 of length "
                           "%lld", w->name, rows);
        const float *scale = scales->data;
        for (long long i = 0; i < rows; ++i)
            if (!(scale[i] >= 0.0f && scale[i] <= 3.4e38f))
                return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: scale of row %lld not finite and "
                               "not negative", w->name, i);
        const int8_t *q = values->data;
        for (size_t i = 0; i < values->count; ++i)
            if (q[i] == -128)
                return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: int8 value -128 (values are in "
                               "[-127, 127])", w->name);
    }
    /* uint8 indices (at most 256 block columns) widened to the kernels' uint16 */
    const void *columns = index->data;
    if (index->dtype == DT_U8) {
        uint16_t *wide = aligned(sizeof(uint16_t) * (size_t)(nblocks + 1));
        if (!wide) return SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
        for (long long k = 0; k < nblocks; ++k) wide[k] = ((const uint8_t *)index->data)[k];
        w->owned[9] = wide, columns = wide;
    }
    /* a CSR matrix of int8 values runs in int8 and reads q and the scales alone: nothing to decode */
    const int runs_int8 = want == DT_I8 && r == 1 && c == 1 && index->dtype != DT_I32;
    float *decoded = runs_int8 ? NULL : values->data;
    if (want != DT_F32 && !runs_int8) {
        decoded = aligned(values->count * sizeof(float));
        if (!decoded) return SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
        const uint16_t *bits = values->data;
        for (size_t i = 0; want != DT_I8 && i < values->count; ++i) {
            if (want == DT_F16) {
                decoded[i] = half_to_float(bits[i]);
            } else {
                const uint32_t wide = (uint32_t)bits[i] << 16;
                memcpy(&decoded[i], &wide, 4);
            }
        }
        if (want == DT_I8) { /* q times its row's scale */
            const int8_t *q = values->data;
            const float *scale = scales->data;
            for (long long br = 0; br < block_rows; ++br)
                for (size_t i = (size_t)ptr[br] * (size_t)(r * c); i < (size_t)ptr[br + 1] * (size_t)(r * c); ++i)
                    decoded[i] = (float)q[i] * scale[br * r + (long long)(i % (size_t)(r * c)) / c];
        }
        w->owned[0] = decoded;
    }
    w->matrix = (Matrix){.rows = (int)rows, .cols = (int)cols, .r = (int)r, .c = (int)c,
                         .wide = index->dtype == DT_I32, .rowptr = ptr, .index = columns, .values = decoded};
    snprintf(w->values, sizeof w->values, "%s", kind);
    if (runs_int8) /* (blocks of int8 values run their decoded values) */
        w->matrix.q = values->data, w->matrix.scale = scales->data;
    if (!strcmp(kind, "bf16")) {
        w->bf16 = values->data;
        if ((r == 8 || r == 16) && c == 1) /* the R x 1 one-column kernels read the values in bfloat16 */
            w->matrix.sell_values = w->bf16, w->matrix.sell_bf16 = 1;
    }
    sr_matrix_kernels(&w->matrix);
    w->stored_bytes = rowptr->count * 4 + index->count * (size_t)DTYPES[index->dtype].size +
                      values->count * (size_t)DTYPES[want].size + (scales ? scales->count * 4 : 0);
    return SR_OK;
}

static sr_status read_weights(sr_model *model, char *error, size_t error_size) {
    const json *matrices = json_get(model->metadata, "matrices"), *ties = json_get(model->metadata, "ties");
    if (!matrices || matrices->kind != JSON_OBJECT)
        return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "metadata has no matrices");
    const size_t tie_count = ties && ties->kind == JSON_OBJECT ? ties->count : 0;
    model->weights = calloc(matrices->count + tie_count + 1, sizeof(weight));
    if (!model->weights) return SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
    for (const json *info = matrices->child; info; info = info->next) {
        weight *w = &model->weights[model->weight_count++];
        w->name = strdup(info->key);
        const char *storage = json_string(json_get(info, "storage"));
        const json *shape = json_get(info, "shape");
        if (!w->name) return SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
        if (!storage || !shape || shape->kind != JSON_ARRAY || shape->count > 8)
            return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: storage or shape missing", w->name);
        long long dims[8];
        w->rank = (int)shape->count;
        for (int d = 0; d < w->rank; ++d)
            if (json_integer(json_at(shape, (size_t)d), 0, 1LL << 40, &dims[d]))
                return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: bad shape", w->name);
        for (int d = 0; d < 2 && d < w->rank; ++d) w->shape[d] = dims[d];
        json_integer(json_get(info, "nonzeros"), 0, 1LL << 50, &w->nonzeros);
        if (!strcmp(storage, "dense")) {
            const tensor *t = find_tensor(model, w->name);
            char a[96], b[96];
            if (!t || t->rank != w->rank || (t->rank && memcmp(t->shape, dims, sizeof(long long) * (size_t)t->rank)))
                return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: missing or of shape %s, metadata says %s",
                               w->name, t ? shape_text(t->shape, t->rank, a, sizeof a) : "none",
                               shape_text(dims, w->rank, b, sizeof b));
            if (t->dtype == DT_F32) w->dense = t->data;
            w->stored_bytes = t->count * (size_t)DTYPES[t->dtype].size;
        } else if (!strcmp(storage, "csr") || !strcmp(storage, "blocks")) {
            const sr_status status = read_sparse(model, w, info, error, error_size);
            if (status) return status;
        } else {
            return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tensor %s: unknown storage %s", w->name, storage);
        }
    }
    for (const json *tie = ties ? ties->child : NULL; tie && tie_count; tie = tie->next) {
        const weight *stored = sr_find_weight(model, json_string(tie));
        if (!stored) return SR_FAIL(SR_ERROR_FORMAT, error, error_size, "tie %s names no stored tensor", tie->key);
        weight *w = &model->weights[model->weight_count++];
        *w = *stored; /* the same arrays, owned by the stored weight */
        memset(w->owned, 0, sizeof w->owned);
        w->name = strdup(tie->key);
        if (!w->name) return SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
    }
    return SR_OK;
}

/* Reads and checks a model file. */
static sr_status load(sr_model *model, const source *from, char *error, size_t error_size) {
    model->file_bytes = (long long)from->size;
    sr_status status = read_container(model, from, &model->metadata, error, error_size);
    long long format = 0;
    if (!status && json_integer(json_get(model->metadata, "format"), 0, 1000, &format))
        status = SR_FAIL(SR_ERROR_FORMAT, error, error_size, "metadata has no format version");
    if (!status && (format < 2 || format > 4))
        status = SR_FAIL(SR_ERROR_FORMAT, error, error_size, "format version %lld; this runtime reads 2, 3 and "
                         "4 (export the model again)", format);
    if (!status) {
        qsort(model->tensors, (size_t)model->tensor_count, sizeof(tensor), compare_names);
        char hex[65];
        digest(model, hex);
        const char *expected = json_string(json_get(model->metadata, "sha256"));
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION /* the fuzzer's mutations must reach the later checks */
        if (!expected || strcmp(hex, expected))
            status = SR_FAIL(SR_ERROR_DIGEST, error, error_size, "tensors or metadata do not match the file's "
                             "SHA-256; the file was altered or damaged");
#else
        (void)expected;
#endif
    }
    if (!status) status = read_weights(model, error, error_size);
    if (!status) {
        const json *program = json_get(model->metadata, "program");
        status = program ? sr_program_load(model, program, error, error_size)
                         : SR_FAIL(SR_ERROR_PROGRAM, error, error_size, "no program in this file; save it with "
                                   "sparsernn.save_sparse(model, path, example_inputs=...)");
    }
    return status;
}

sr_status sr_model_from_buffer(const void *data, size_t size, sr_model **out, char *error, size_t error_size) {
    char scratch[8];
    if (!error || !error_size) error = scratch, error_size = sizeof scratch;
    *out = NULL;
    sr_model *model = calloc(1, sizeof(sr_model));
    if (!model) return SR_FAIL(SR_ERROR_MEMORY, error, error_size, "out of memory");
    const source from = {data, NULL, size};
    const sr_status status = load(model, &from, error, error_size);
    if (status) sr_model_free(model);
    else *out = model;
    return status;
}

sr_status sr_model_from_file(const char *path, sr_model **out, char *error, size_t error_size) {
    char scratch[8];
    if (!error || !error_size) error = scratch, error_size = sizeof scratch;
    *out = NULL;
    FILE *file = fopen(path, "rb");
    if (!file) return SR_FAIL(SR_ERROR_IO, error, error_size, "%s: cannot open the file", path);
    long size = -1;
    if (!fseek(file, 0, SEEK_END)) size = ftell(file);
    sr_model *model = size >= 0 ? calloc(1, sizeof(sr_model)) : NULL;
    if (!model) {
        fclose(file);
        return size < 0 ? SR_FAIL(SR_ERROR_IO, error, error_size, "%s: cannot read the file", path)
                        : SR_FAIL(SR_ERROR_MEMORY, error, error_size, "%s: out of memory", path);
    }
    char reason[400];
    const source from = {NULL, file, (size_t)size};
    const sr_status status = load(model, &from, reason, sizeof reason); /* each tensor read to its place */
    fclose(file);
    if (status) {
        snprintf(error, error_size, "%s: %s", path, reason);
        sr_model_free(model);
    } else {
        *out = model;
    }
    return status;
}

void sr_model_free(sr_model *model) {
    if (!model) return;
    sr_program_free(model);
    for (int i = 0; i < model->weight_count; ++i) {
        for (int j = 0; j < 10; ++j) free(model->weights[i].owned[j]);
        free(model->weights[i].name);
    }
    for (int i = 0; i < model->tensor_count; ++i) free(model->tensors[i].name);
    free(model->weights), free(model->tensors);
    json_free(model->metadata);
    free(model->arena);
    free(model);
}
