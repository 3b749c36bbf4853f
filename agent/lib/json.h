/* SPDX-License-Identifier: MIT */
/*
 * json.h - a small streaming JSON writer for the CLI's --json outputs.
 *
 * The writer places commas, colons and (optionally) indentation itself, so
 * callers only say what comes next.  Strings are escaped per RFC 8259 and
 * made valid UTF-8 (bad bytes become U+FFFD): a creator string or a parent
 * path read from an image can never break the document.  Errors (nesting
 * misuse, a failed write) are sticky and reported once by json_end().
 *
 *	struct json_writer w;
 *
 *	json_init(&w, stdout, 2);
 *	json_object_begin(&w);
 *	json_kv_u64(&w, "virtual_size", size);
 *	json_key(&w, "parent");
 *	json_null(&w);
 *	json_object_end(&w);
 *	ret = json_end(&w);
 */
#ifndef HVRESYNC_JSON_H
#define HVRESYNC_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define JSON_MAX_DEPTH 128

struct json_writer {
	FILE *out;
	unsigned indent; /* spaces per level; 0 writes one compact line */
	unsigned depth;
	int err;	/* first error, sticky: 0 or a negative errno */
	bool after_key; /* a key was written, its value comes next */
	bool done;	/* the top-level value is complete */
	bool has_items[JSON_MAX_DEPTH];
	bool is_object[JSON_MAX_DEPTH];
};

void json_init(struct json_writer *w, FILE *out, unsigned indent);
/* Ends the document with a newline; returns 0 or the first error
 * (-EINVAL for misuse such as an unclosed object, -EIO for a failed write). */
int json_end(struct json_writer *w);

void json_object_begin(struct json_writer *w);
void json_object_end(struct json_writer *w);
void json_array_begin(struct json_writer *w);
void json_array_end(struct json_writer *w);

/* Inside an object: the key of the next value. */
void json_key(struct json_writer *w, const char *key);

/* Values.  json_string(w, NULL) writes null. */
void json_string(struct json_writer *w, const char *s);
void json_string_n(struct json_writer *w, const char *s, size_t len);
void json_u64(struct json_writer *w, uint64_t v);
void json_i64(struct json_writer *w, int64_t v);
void json_bool(struct json_writer *w, bool v);
/* A number with DECIMALS digits after the point (null if not finite). */
void json_double(struct json_writer *w, double v, unsigned decimals);
void json_null(struct json_writer *w);

/* Key and value in one call, for the common flat members. */
static inline void json_kv_string(struct json_writer *w, const char *k,
				  const char *s)
{
	json_key(w, k);
	json_string(w, s);
}

static inline void json_kv_u64(struct json_writer *w, const char *k, uint64_t v)
{
	json_key(w, k);
	json_u64(w, v);
}

static inline void json_kv_i64(struct json_writer *w, const char *k, int64_t v)
{
	json_key(w, k);
	json_i64(w, v);
}

static inline void json_kv_bool(struct json_writer *w, const char *k, bool v)
{
	json_key(w, k);
	json_bool(w, v);
}

static inline void json_kv_null(struct json_writer *w, const char *k)
{
	json_key(w, k);
	json_null(w);
}

#endif
