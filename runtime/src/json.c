/* JSON (RFC 8259) reader and canonical writer: see json.h. */
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEPTH 64

typedef struct {
    const char *p, *end;
    char *error;
    size_t error_size;
    int failed;
} reader;

static void fail(reader *r, const char *what) {
    if (!r->failed && r->error && r->error_size)
        snprintf(r->error, r->error_size, "%s", what);
    r->failed = 1;
}

static void skip_space(reader *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++;
}

static int hex4(reader *r, unsigned *value) {
    if (r->end - r->p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
        const char c = r->p[i];
        v = v * 16 + (unsigned)(c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 99);
        if (v > 0xffff) return -1;
    }
    r->p += 4;
    *value = v;
    return 0;
}

/* The string at r->p (after its opening quote) decoded into a new NUL-terminated buffer. */
static char *read_string(reader *r, size_t *length) {
    const char *start = r->p;
    size_t bound = 0;
    while (start + bound < r->end && start[bound] != '"') bound += start[bound] == '\\' ? 2 : 1;
    if (start + bound >= r->end) {
        fail(r, "unterminated string");
        return NULL;
    }
    char *out = malloc(bound + 1), *o = out; /* decoded text is never longer than its source */
    if (!out) {
        fail(r, "out of memory");
        return NULL;
    }
    while (r->p < r->end && *r->p != '"') {
        unsigned char c = (unsigned char)*r->p++;
        if (c < 0x20) {
            free(out);
            fail(r, "control character in a string");
            return NULL;
        }
        if (c != '\\') {
            *o++ = (char)c;
            continue;
        }
        if (r->p >= r->end) break;
        c = (unsigned char)*r->p++;
        const char *simple = strchr("\"\\/bfnrt", c);
        if (c && simple) {
            *o++ = (char)("\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"]);
            continue;
        }
        unsigned code;
        if (c != 'u' || hex4(r, &code)) {
            free(out);
            fail(r, "bad escape in a string");
            return NULL;
        }
        if (code >= 0xd800 && code < 0xdc00) { /* a surrogate pair */
            unsigned low;
            if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u' || (r->p += 2, hex4(r, &low)) ||
                low < 0xdc00 || low >= 0xe000) {
                free(out);
                fail(r, "bad surrogate pair in a string");
                return NULL;
            }
            code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
        }
        if (code < 0x80) {
            *o++ = (char)code;
        } else if (code < 0x800) {
            *o++ = (char)(0xc0 | code >> 6), *o++ = (char)(0x80 | (code & 0x3f));
        } else if (code < 0x10000) {
            *o++ = (char)(0xe0 | code >> 12), *o++ = (char)(0x80 | ((code >> 6) & 0x3f));
            *o++ = (char)(0x80 | (code & 0x3f));
        } else {
            *o++ = (char)(0xf0 | code >> 18), *o++ = (char)(0x80 | ((code >> 12) & 0x3f));
            *o++ = (char)(0x80 | ((code >> 6) & 0x3f)), *o++ = (char)(0x80 | (code & 0x3f));
        }
    }
    if (r->p >= r->end) {
        free(out);
        fail(r, "unterminated string");
        return NULL;
    }
    r->p++; /* the closing quote */
    *o = 0;
    *length = (size_t)(o - out);
    return out;
}

static json *node_new(reader *r, json_kind kind) {
    json *node = calloc(1, sizeof(json));
    if (!node) fail(r, "out of memory");
    else node->kind = kind;
    return node;
}

static json *read_value(reader *r, int depth);

static json *read_container(reader *r, int depth, int object) {
    json *node = node_new(r, object ? JSON_OBJECT : JSON_ARRAY), **tail = node ? &node->child : NULL;
    if (!node) return NULL;
    r->p++; /* [ or { */
    skip_space(r);
    if (r->p < r->end && *r->p == (object ? '}' : ']')) {
        r->p++;
        return node;
    }
    for (;;) {
        char *key = NULL;
        size_t key_length = 0;
        skip_space(r);
        if (object) {
            if (r->p >= r->end || *r->p != '"') {
                fail(r, "expected a member name");
                break;
            }
            r->p++;
            key = read_string(r, &key_length);
            if (!key) break;
            skip_space(r);
            if (r->p >= r->end || *r->p != ':') {
                free(key);
                fail(r, "expected ':'");
                break;
            }
            r->p++;
        }
        json *child = read_value(r, depth + 1);
        if (!child) {
            free(key);
            break;
        }
        child->key = key, child->key_length = key_length;
        *tail = child, tail = &child->next, node->count++;
        skip_space(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == (object ? '}' : ']')) {
            r->p++;
            return node;
        }
        fail(r, object ? "expected ',' or '}'" : "expected ',' or ']'");
        break;
    }
    json_free(node);
    return NULL;
}

static json *read_value(reader *r, int depth) {
    skip_space(r);
    if (depth > DEPTH) {
        fail(r, "nested too deeply");
        return NULL;
    }
    if (r->p >= r->end) {
        fail(r, "unexpected end");
        return NULL;
    }
    const char c = *r->p;
    if (c == '{' || c == '[') return read_container(r, depth, c == '{');
    if (c == '"') {
        r->p++;
        size_t length;
        char *text = read_string(r, &length);
        json *node = text ? node_new(r, JSON_STRING) : NULL;
        if (!node) {
            free(text);
            return NULL;
        }
        node->text = text, node->length = length;
        return node;
    }
    static const struct { const char *word; json_kind kind; } words[] = {
        {"null", JSON_NULL}, {"false", JSON_FALSE}, {"true", JSON_TRUE}};
    for (int i = 0; i < 3; ++i) {
        const size_t n = strlen(words[i].word);
        if ((size_t)(r->end - r->p) >= n && !memcmp(r->p, words[i].word, n)) {
            r->p += n;
            return node_new(r, words[i].kind);
        }
    }
    /* a number: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
    const char *start = r->p;
    if (r->p < r->end && *r->p == '-') r->p++;
    const char *digits = r->p;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    int ok = r->p > digits && !(*digits == '0' && r->p - digits > 1);
    if (ok && r->p < r->end && *r->p == '.') {
        const char *fraction = ++r->p;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
        ok = r->p > fraction;
    }
    if (ok && r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-')) r->p++;
        const char *exponent = r->p;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
        ok = r->p > exponent;
    }
    if (!ok) {
        fail(r, "unexpected character");
        return NULL;
    }
    json *node = node_new(r, JSON_NUMBER);
    if (node) {
        node->length = (size_t)(r->p - start);
        node->text = malloc(node->length + 1);
        if (!node->text) {
            free(node);
            fail(r, "out of memory");
            return NULL;
        }
        memcpy(node->text, start, node->length);
        node->text[node->length] = 0;
    }
    return node;
}

json *json_parse(const char *text, size_t size, char *error, size_t error_size) {
    reader r = {text, text + size, error, error_size, 0};
    json *root = read_value(&r, 0);
    skip_space(&r);
    if (root && r.p != r.end) {
        fail(&r, "text after the value");
        json_free(root);
        return NULL;
    }
    if (!root && error && error_size) { /* name the position */
        char reason[96];
        snprintf(reason, sizeof reason, "%s", r.failed ? error : "invalid JSON");
        snprintf(error, error_size, "%s at byte %ld", reason, (long)(r.p - text));
    }
    return root;
}

void json_free(json *node) {
    while (node) {
        json *next = node->next;
        json_free(node->child);
        free(node->text), free(node->key), free(node);
        node = next;
    }
}

json *json_get(const json *object, const char *key) {
    if (!object || object->kind != JSON_OBJECT) return NULL;
    const size_t n = strlen(key);
    for (json *c = object->child; c; c = c->next)
        if (c->key_length == n && !memcmp(c->key, key, n)) return c;
    return NULL;
}

json *json_at(const json *array, size_t index) {
    if (!array || array->kind != JSON_ARRAY) return NULL;
    json *c = array->child;
    while (c && index--) c = c->next;
    return c;
}

int json_integer(const json *node, long long low, long long high, long long *value) {
    if (!node || node->kind != JSON_NUMBER || strpbrk(node->text, ".eE")) return -1;
    errno = 0;
    char *end;
    const long long v = strtoll(node->text, &end, 10);
    if (errno || *end || v < low || v > high) return -1;
    *value = v;
    return 0;
}

int json_number(const json *node, double *value) {
    if (!node || node->kind != JSON_NUMBER) return -1;
    *value = strtod(node->text, NULL);
    return 0;
}

const char *json_string(const json *node) { return node && node->kind == JSON_STRING ? node->text : NULL; }

/* ---- canonical writer ---- */

static void write_string(const char *s, size_t n, void (*write)(void *, const void *, size_t), void *context) {
    write(context, "\"", 1);
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned code = *p;
        size_t extra = code < 0x80 ? 0 : code < 0xe0 ? 1 : code < 0xf0 ? 2 : 3;
        if (extra) { /* decode UTF-8 (the reader wrote it, so it is well formed) */
            code &= 0x3f >> extra;
            for (size_t i = 1; i <= extra && p + i < end; ++i) code = code << 6 | (p[i] & 0x3f);
        }
        p += extra + 1;
        char buffer[16];
        const char *simple = code == '"' ? "\\\"" : code == '\\' ? "\\\\" : code == '\n' ? "\\n" : code == '\r' ? "\\r"
                             : code == '\t' ? "\\t" : code == '\b' ? "\\b" : code == '\f' ? "\\f" : NULL;
        if (simple) {
            write(context, simple, 2);
        } else if (code >= 0x20 && code < 0x7f) { /* Python escapes all else, DEL included */
            buffer[0] = (char)code;
            write(context, buffer, 1);
        } else if (code < 0x10000) {
            snprintf(buffer, sizeof buffer, "\\u%04x", code);
            write(context, buffer, 6);
        } else { /* a surrogate pair, as Python writes it */
            code -= 0x10000;
            snprintf(buffer, sizeof buffer, "\\u%04x\\u%04x", 0xd800 + (code >> 10), 0xdc00 + (code & 0x3ff));
            write(context, buffer, 12);
        }
    }
    write(context, "\"", 1);
}

static int compare_keys(const void *a, const void *b) {
    const json *x = *(const json *const *)a, *y = *(const json *const *)b;
    const size_t n = x->key_length < y->key_length ? x->key_length : y->key_length;
    const int c = memcmp(x->key, y->key, n); /* UTF-8 byte order is code point order, as Python sorts */
    return c ? c : (x->key_length > y->key_length) - (x->key_length < y->key_length);
}

void json_canonical(const json *node, const char *skip, void (*write)(void *, const void *, size_t), void *context) {
    switch (node->kind) {
    case JSON_NULL: write(context, "null", 4); return;
    case JSON_FALSE: write(context, "false", 5); return;
    case JSON_TRUE: write(context, "true", 4); return;
    case JSON_NUMBER: write(context, node->text, node->length); return;
    case JSON_STRING: write_string(node->text, node->length, write, context); return;
    case JSON_ARRAY:
        write(context, "[", 1);
        for (json *c = node->child; c; c = c->next) {
            json_canonical(c, NULL, write, context);
            if (c->next) write(context, ",", 1);
        }
        write(context, "]", 1);
        return;
    case JSON_OBJECT: {
        const json **members = malloc(sizeof(json *) * (node->count + 1));
        size_t n = 0;
        if (!members) return; /* the digest then fails: reported as a mismatch */
        for (json *c = node->child; c; c = c->next)
            if (!skip || strcmp(c->key, skip)) members[n++] = c;
        qsort(members, n, sizeof(json *), compare_keys);
        write(context, "{", 1);
        for (size_t i = 0; i < n; ++i) {
            write_string(members[i]->key, members[i]->key_length, write, context);
            write(context, ":", 1);
            json_canonical(members[i], NULL, write, context);
            if (i + 1 < n) write(context, ",", 1);
        }
        write(context, "}", 1);
        free(members);
        return;
    }
    }
}
