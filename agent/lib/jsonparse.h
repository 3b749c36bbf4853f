/* SPDX-License-Identifier: MIT */
/*
 * jsonparse.h - a small, strict JSON parser (RFC 8259) for the control
 * API's requests and replies.  Bounded: depth 64, whatever length the
 * caller allows; a parse error names the byte offset.
 */
#ifndef HVRESYNC_JSONPARSE_H
#define HVRESYNC_JSONPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum jv_type { JV_NULL, JV_BOOL, JV_NUMBER, JV_STRING, JV_ARRAY, JV_OBJECT };

struct jv {
	enum jv_type type;
	bool b;
	double num;
	bool is_int;	  /* the number was written as an integer */
	int64_t i;	  /* its value, when is_int */
	char *s;	  /* STRING: UTF-8, NUL-terminated */
	size_t n;	  /* ARRAY/OBJECT: number of items */
	struct jv *items; /* ARRAY/OBJECT values */
	char **keys;	  /* OBJECT keys */
};

/* Parse LEN bytes; returns 0 with *out allocated, or -EINVAL / -ENOMEM
 * with ERR describing the problem and where. */
int jv_parse(const char *text, size_t len, struct jv **out, char *err,
	     size_t errlen);
void jv_free(struct jv *v);
/* Member KEY of an object, or NULL. */
const struct jv *jv_get(const struct jv *obj, const char *key);
const char *jv_type_name(enum jv_type t);

struct json_writer;
/* Write V through the JSON writer (agent/lib/json.h). */
void jv_write(struct json_writer *w, const struct jv *v);

#endif
