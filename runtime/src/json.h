/* A small JSON reader for the safetensors header and sparsernn's metadata: parses a whole text into a
 * tree of nodes in one allocation-per-node arena, with a depth limit and every length checked. Numbers
 * keep their source text (the digest re-serialises the metadata exactly as Python's json.dumps wrote it). */
#ifndef SPARSERNN_JSON_H
#define SPARSERNN_JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_kind;

typedef struct json json;
struct json {
    json_kind kind;
    char *text;     /* a string's value (UTF-8, NUL-terminated) or a number's source text */
    size_t length;  /* a string's bytes (it may hold NUL), a number's text length */
    char *key;      /* the member's key within an object (UTF-8, NUL-terminated), else NULL */
    size_t key_length;
    json *child;    /* first element or member */
    json *next;     /* the next element or member of the parent */
    size_t count;   /* elements or members */
};

/* Parses text[0..size); NULL on a syntax error or when out of memory, with the reason in error. */
json *json_parse(const char *text, size_t size, char *error, size_t error_size);
void json_free(json *node);

json *json_get(const json *object, const char *key); /* a member of an object, or NULL */
json *json_at(const json *array, size_t index);      /* an element of an array, or NULL */
/* A number that is an integer within [low, high] into *value; -1 otherwise. */
int json_integer(const json *node, long long low, long long high, long long *value);
int json_number(const json *node, double *value);    /* any number; -1 otherwise */
const char *json_string(const json *node);           /* a string's value, or NULL */

/* Writes node as Python's json.dumps(node, sort_keys=True, separators=(",", ":")) (ensure_ascii) would,
 * leaving out the top-level member named skip (NULL: none), through write(context, bytes, length). */
void json_canonical(const json *node, const char *skip, void (*write)(void *, const void *, size_t), void *context);

#endif
