/* SPDX-License-Identifier: MIT */
/* jsonparse.c - a strict recursive-descent JSON parser with a depth bound. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/lib/json.h"
#include "agent/lib/jsonparse.h"

#define MAX_DEPTH 64

struct parser {
	const char *p, *start, *end;
	char *err;
	size_t errlen;
	int ret;
};

static int fail(struct parser *ps, const char *what)
{
	if (!ps->ret) {
		snprintf(ps->err, ps->errlen, "%s at byte %ld", what,
			 (long)(ps->p - ps->start));
		ps->ret = -EINVAL;
	}
	return ps->ret;
}

static void skip_ws(struct parser *ps)
{
	while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' ||
				   *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

static int parse_value(struct parser *ps, struct jv *v, int depth);

static int hex4(struct parser *ps, unsigned *u)
{
	unsigned i, d;

	*u = 0;
	if (ps->end - ps->p < 4)
		return fail(ps, "short \\u escape");
	for (i = 0; i < 4; i++) {
		char c = ps->p[i];

		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else
			return fail(ps, "bad \\u escape");
		*u = *u << 4 | d;
	}
	ps->p += 4;
	return 0;
}

static size_t put_utf8(char *o, unsigned c)
{
	if (c < 0x80) {
		o[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		o[0] = (char)(0xC0 | (c >> 6));
		o[1] = (char)(0x80 | (c & 0x3F));
		return 2;
	}
	if (c < 0x10000) {
		o[0] = (char)(0xE0 | (c >> 12));
		o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
		o[2] = (char)(0x80 | (c & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | (c >> 18));
	o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
	o[3] = (char)(0x80 | (c & 0x3F));
	return 4;
}

/*
 * The length of the well-formed UTF-8 sequence at @p (at most @n bytes),
 * or 0: RFC 8259 text is UTF-8, and what the agent accepts it must be able
 * to write back unchanged (the JSON writer replaces bad bytes with U+FFFD,
 * which would quietly change a name or a path).  Overlong forms,
 * surrogates and code points past U+10FFFF are not well-formed (RFC 3629).
 */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	size_t len, i;
	unsigned char lo = 0x80, hi = 0xBF;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xC2 && p[0] <= 0xDF)
		len = 2;
	else if (p[0] >= 0xE0 && p[0] <= 0xEF)
		len = 3;
	else if (p[0] >= 0xF0 && p[0] <= 0xF4)
		len = 4;
	else
		return 0;
	if (p[0] == 0xE0)
		lo = 0xA0; /* overlong */
	else if (p[0] == 0xED)
		hi = 0x9F; /* surrogates */
	else if (p[0] == 0xF0)
		lo = 0x90; /* overlong */
	else if (p[0] == 0xF4)
		hi = 0x8F; /* past U+10FFFF */
	if (n < len || p[1] < lo || p[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
		if (p[i] < 0x80 || p[i] > 0xBF)
			return 0;
	return len;
}

static int parse_string(struct parser *ps, char **out)
{
	const char *q;
	char *s, *o;

	ps->p++; /* opening quote */
	for (q = ps->p; q < ps->end && *q != '"'; q++)
		if (*q == '\\')
			q++;
	if (q >= ps->end)
		return fail(ps, "unterminated string");
	s = malloc((size_t)(q - ps->p) + 1);
	if (!s)
		return ps->ret = -ENOMEM;
	o = s;
	while (*ps->p != '"') {
		unsigned char c = (unsigned char)*ps->p++;

		if (c < 0x20) {
			free(s);
			return fail(ps, "control character in string");
		}
		if (c >= 0x80) {
			/* Continuation bytes are never '"': the sequence
			 * ends before the closing quote or is refused. */
			size_t n = utf8_len((const unsigned char *)ps->p - 1,
					    (size_t)(q - ps->p) + 1);

			if (!n) {
				ps->p--;
				free(s);
				return fail(ps, "invalid UTF-8 in string");
			}
			memcpy(o, ps->p - 1, n);
			o += n;
			ps->p += n - 1;
			continue;
		}
		if (c != '\\') {
			*o++ = (char)c;
			continue;
		}
		c = (unsigned char)*ps->p++;
		switch (c) {
		case '"':
			*o++ = '"';
			break;
		case '\\':
			*o++ = '\\';
			break;
		case '/':
			*o++ = '/';
			break;
		case 'b':
			*o++ = '\b';
			break;
		case 'f':
			*o++ = '\f';
			break;
		case 'n':
			*o++ = '\n';
			break;
		case 'r':
			*o++ = '\r';
			break;
		case 't':
			*o++ = '\t';
			break;
		case 'u': {
			unsigned u, lo;

			if (hex4(ps, &u))
				goto bad;
			if (u >= 0xD800 && u <= 0xDBFF) {
				if (ps->end - ps->p < 6 || ps->p[0] != '\\' ||
				    ps->p[1] != 'u') {
					fail(ps, "unpaired surrogate");
					goto bad;
				}
				ps->p += 2;
				if (hex4(ps, &lo))
					goto bad;
				if (lo < 0xDC00 || lo > 0xDFFF) {
					fail(ps, "unpaired surrogate");
					goto bad;
				}
				u = 0x10000 + ((u - 0xD800) << 10) +
				    (lo - 0xDC00);
			} else if (u >= 0xDC00 && u <= 0xDFFF) {
				fail(ps, "unpaired surrogate");
				goto bad;
			}
			if (u == 0) {
				fail(ps, "NUL in string");
				goto bad;
			}
			o += put_utf8(o, u); /* never longer than the escape */
			break;
		}
		default:
			fail(ps, "bad escape");
			goto bad;
		}
	}
	ps->p++;
	*o = '\0';
	*out = s;
	return 0;
bad:
	free(s);
	return ps->ret;
}

static int parse_number(struct parser *ps, struct jv *v)
{
	const char *q = ps->p;
	char buf[64];
	bool frac = false;
	size_t n;

	if (q < ps->end && *q == '-')
		q++;
	if (q >= ps->end || *q < '0' || *q > '9')
		return fail(ps, "bad number");
	if (*q == '0' && q + 1 < ps->end && q[1] >= '0' && q[1] <= '9')
		return fail(ps, "leading zero");
	while (q < ps->end && *q >= '0' && *q <= '9')
		q++;
	if (q < ps->end && *q == '.') {
		frac = true;
		q++;
		if (q >= ps->end || *q < '0' || *q > '9')
			return fail(ps, "bad number");
		while (q < ps->end && *q >= '0' && *q <= '9')
			q++;
	}
	if (q < ps->end && (*q == 'e' || *q == 'E')) {
		frac = true;
		q++;
		if (q < ps->end && (*q == '+' || *q == '-'))
			q++;
		if (q >= ps->end || *q < '0' || *q > '9')
			return fail(ps, "bad number");
		while (q < ps->end && *q >= '0' && *q <= '9')
			q++;
	}
	n = (size_t)(q - ps->p);
	if (n >= sizeof(buf))
		return fail(ps, "number too long");
	memcpy(buf, ps->p, n);
	buf[n] = '\0';
	v->type = JV_NUMBER;
	v->num = strtod(buf, NULL);
	/* JSON has no infinity: 1e999 would be written back as null. */
	if (!isfinite(v->num))
		return fail(ps, "number out of range");
	if (!frac) {
		errno = 0;
		v->i = strtoll(buf, NULL, 10);
		v->is_int = errno == 0;
	}
	ps->p = q;
	return 0;
}

static int parse_container(struct parser *ps, struct jv *v, int depth,
			   bool object)
{
	char close = object ? '}' : ']';
	size_t cap = 0;

	v->type = object ? JV_OBJECT : JV_ARRAY;
	ps->p++;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == close) {
		ps->p++;
		return 0;
	}
	for (;;) {
		char *key = NULL;

		skip_ws(ps);
		if (object) {
			if (ps->p >= ps->end || *ps->p != '"')
				return fail(ps, "expected a string key");
			if (parse_string(ps, &key))
				return ps->ret;
			skip_ws(ps);
			if (ps->p >= ps->end || *ps->p != ':') {
				free(key);
				return fail(ps, "expected ':'");
			}
			ps->p++;
		}
		if (v->n == cap) {
			size_t ncap = cap ? cap * 2 : 4;
			struct jv *it = realloc(v->items, ncap * sizeof(*it));
			char **ks;

			if (!it) {
				free(key);
				return ps->ret = -ENOMEM;
			}
			v->items = it;
			if (object) {
				ks = realloc(v->keys, ncap * sizeof(*ks));
				if (!ks) {
					free(key);
					return ps->ret = -ENOMEM;
				}
				v->keys = ks;
			}
			cap = ncap;
		}
		memset(&v->items[v->n], 0, sizeof(v->items[0]));
		if (object)
			v->keys[v->n] = key;
		v->n++;
		if (parse_value(ps, &v->items[v->n - 1], depth + 1))
			return ps->ret;
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == ',') {
			ps->p++;
			continue;
		}
		if (ps->p < ps->end && *ps->p == close) {
			ps->p++;
			return 0;
		}
		return fail(ps, object ? "expected ',' or '}'"
				       : "expected ',' or ']'");
	}
}

static bool word(struct parser *ps, const char *w)
{
	size_t n = strlen(w);

	if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, w, n))
		return false;
	ps->p += n;
	return true;
}

static int parse_value(struct parser *ps, struct jv *v, int depth)
{
	if (depth > MAX_DEPTH)
		return fail(ps, "nested too deeply");
	skip_ws(ps);
	if (ps->p >= ps->end)
		return fail(ps, "unexpected end");
	switch (*ps->p) {
	case '{':
		return parse_container(ps, v, depth, true);
	case '[':
		return parse_container(ps, v, depth, false);
	case '"':
		v->type = JV_STRING;
		return parse_string(ps, &v->s);
	case 't':
		if (!word(ps, "true"))
			return fail(ps, "bad literal");
		v->type = JV_BOOL;
		v->b = true;
		return 0;
	case 'f':
		if (!word(ps, "false"))
			return fail(ps, "bad literal");
		v->type = JV_BOOL;
		return 0;
	case 'n':
		if (!word(ps, "null"))
			return fail(ps, "bad literal");
		v->type = JV_NULL;
		return 0;
	default:
		return parse_number(ps, v);
	}
}

static void free_inner(struct jv *v)
{
	size_t i;

	for (i = 0; i < v->n; i++) {
		free_inner(&v->items[i]);
		if (v->keys)
			free(v->keys[i]);
	}
	free(v->items);
	free(v->keys);
	free(v->s);
}

void jv_free(struct jv *v)
{
	if (!v)
		return;
	free_inner(v);
	free(v);
}

int jv_parse(const char *text, size_t len, struct jv **out, char *err,
	     size_t errlen)
{
	struct parser ps = { .p = text,
			     .start = text,
			     .end = text + len,
			     .err = err,
			     .errlen = errlen };
	struct jv *v = calloc(1, sizeof(*v));

	*out = NULL;
	if (!v)
		return -ENOMEM;
	if (!parse_value(&ps, v, 0)) {
		skip_ws(&ps);
		if (ps.p != ps.end)
			fail(&ps, "trailing characters");
	}
	if (ps.ret) {
		if (ps.ret == -ENOMEM)
			snprintf(err, errlen, "out of memory");
		jv_free(v);
		return ps.ret;
	}
	*out = v;
	return 0;
}

const struct jv *jv_get(const struct jv *obj, const char *key)
{
	size_t i;

	if (!obj || obj->type != JV_OBJECT)
		return NULL;
	for (i = 0; i < obj->n; i++)
		if (!strcmp(obj->keys[i], key))
			return &obj->items[i];
	return NULL;
}

const char *jv_type_name(enum jv_type t)
{
	static const char *names[] = { "null",	 "boolean", "number",
				       "string", "array",   "object" };

	return t <= JV_OBJECT ? names[t] : "?";
}

void jv_write(struct json_writer *w, const struct jv *v)
{
	size_t i;

	switch (v->type) {
	case JV_NULL:
		json_null(w);
		break;
	case JV_BOOL:
		json_bool(w, v->b);
		break;
	case JV_NUMBER:
		if (v->is_int)
			json_i64(w, v->i);
		else
			json_double(w, v->num, 6);
		break;
	case JV_STRING:
		json_string(w, v->s);
		break;
	case JV_ARRAY:
		json_array_begin(w);
		for (i = 0; i < v->n; i++)
			jv_write(w, &v->items[i]);
		json_array_end(w);
		break;
	case JV_OBJECT:
		json_object_begin(w);
		for (i = 0; i < v->n; i++) {
			json_key(w, v->keys[i]);
			jv_write(w, &v->items[i]);
		}
		json_object_end(w);
		break;
	}
}
