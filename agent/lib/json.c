/* SPDX-License-Identifier: MIT */
/* json.c - streaming JSON writer with RFC 8259 string escaping. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "agent/lib/json.h"

static void fail(struct json_writer *w, int err)
{
	if (!w->err)
		w->err = err;
}

static void put(struct json_writer *w, const char *s, size_t len)
{
	if (w->err)
		return;
	errno = 0;
	if (len && fwrite(s, 1, len, w->out) != len)
		fail(w, errno ? -errno : -EIO);
}

static void puts_(struct json_writer *w, const char *s)
{
	put(w, s, strlen(s));
}

static void newline_indent(struct json_writer *w, unsigned depth)
{
	unsigned i;

	if (!w->indent)
		return;
	put(w, "\n", 1);
	for (i = 0; i < depth * w->indent; i++)
		put(w, " ", 1);
}

/*
 * Called before every value and every key: checks that one is allowed here
 * and writes the separator.  IS_KEY says which of the two is coming.
 */
static bool before(struct json_writer *w, bool is_key)
{
	if (w->err)
		return false;
	if (w->done) {
		fail(w, -EINVAL); /* a second top-level value */
		return false;
	}
	if (w->depth == 0) {
		if (is_key)
			fail(w, -EINVAL);
		return !w->err;
	}
	if (w->is_object[w->depth - 1]) {
		if (w->after_key) {
			if (is_key) {
				fail(w, -EINVAL); /* key after key */
				return false;
			}
			w->after_key = false;
			return true; /* the key wrote ": " already */
		}
		if (!is_key) {
			fail(w, -EINVAL); /* value without a key */
			return false;
		}
	}
	if (w->has_items[w->depth - 1])
		put(w, ",", 1);
	w->has_items[w->depth - 1] = true;
	newline_indent(w, w->depth);
	return !w->err;
}

/* A scalar or a container just ended: at depth 0 the document is done. */
static void after_value(struct json_writer *w)
{
	if (w->depth == 0)
		w->done = true;
}

void json_init(struct json_writer *w, FILE *out, unsigned indent)
{
	memset(w, 0, sizeof(*w));
	w->out = out;
	w->indent = indent;
}

int json_end(struct json_writer *w)
{
	if (!w->err && (!w->done || w->depth))
		fail(w, -EINVAL);
	put(w, "\n", 1);
	errno = 0;
	if (fflush(w->out) || ferror(w->out))
		fail(w, errno ? -errno : -EIO);
	return w->err;
}

static void begin(struct json_writer *w, bool object)
{
	if (!before(w, false))
		return;
	if (w->depth >= JSON_MAX_DEPTH) {
		fail(w, -EINVAL);
		return;
	}
	put(w, object ? "{" : "[", 1);
	w->is_object[w->depth] = object;
	w->has_items[w->depth] = false;
	w->depth++;
}

static void end(struct json_writer *w, bool object)
{
	bool had;

	if (w->err)
		return;
	if (!w->depth || w->is_object[w->depth - 1] != object || w->after_key) {
		fail(w, -EINVAL);
		return;
	}
	had = w->has_items[w->depth - 1];
	w->depth--;
	if (had)
		newline_indent(w, w->depth);
	put(w, object ? "}" : "]", 1);
	after_value(w);
}

void json_object_begin(struct json_writer *w)
{
	begin(w, true);
}

void json_object_end(struct json_writer *w)
{
	end(w, true);
}

void json_array_begin(struct json_writer *w)
{
	begin(w, false);
}

void json_array_end(struct json_writer *w)
{
	end(w, false);
}

/*
 * Length of the well-formed UTF-8 sequence at S (at most LEN bytes), or 0
 * when it is not one: no overlong forms, no surrogates, nothing past
 * U+10FFFF (RFC 3629).
 */
static size_t utf8_seq_len(const unsigned char *s, size_t len)
{
	unsigned char c = s[0];
	size_t n, i;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	if (n > len)
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

static void write_escaped(struct json_writer *w, const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0, run = 0, n;
	char esc[8];

	put(w, "\"", 1);
	while (i < len) {
		unsigned char c = s[i];
		const char *rep = NULL;

		if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
			i++;
			run++;
			continue;
		}
		if (c >= 0x80) {
			n = utf8_seq_len(s + i, len - i);
			if (n) {
				i += n;
				run += n;
				continue;
			}
		}
		/* Flush the plain run before the byte that needs care. */
		put(w, (const char *)s + i - run, run);
		run = 0;
		switch (c) {
		case '"':
			rep = "\\\"";
			break;
		case '\\':
			rep = "\\\\";
			break;
		case '\b':
			rep = "\\b";
			break;
		case '\f':
			rep = "\\f";
			break;
		case '\n':
			rep = "\\n";
			break;
		case '\r':
			rep = "\\r";
			break;
		case '\t':
			rep = "\\t";
			break;
		default:
			if (c < 0x20) {
				snprintf(esc, sizeof(esc), "\\u%04x", c);
				rep = esc;
			} else {
				rep = "\\ufffd"; /* not UTF-8 */
			}
		}
		puts_(w, rep);
		i++;
	}
	put(w, (const char *)s + i - run, run);
	put(w, "\"", 1);
}

void json_key(struct json_writer *w, const char *key)
{
	if (!key) {
		fail(w, -EINVAL);
		return;
	}
	if (!before(w, true))
		return;
	write_escaped(w, key, strlen(key));
	puts_(w, w->indent ? ": " : ":");
	w->after_key = true;
}

void json_string_n(struct json_writer *w, const char *s, size_t len)
{
	if (!before(w, false))
		return;
	write_escaped(w, s, len);
	after_value(w);
}

void json_string(struct json_writer *w, const char *s)
{
	if (s)
		json_string_n(w, s, strlen(s));
	else
		json_null(w);
}

static void scalar(struct json_writer *w, const char *text)
{
	if (!before(w, false))
		return;
	puts_(w, text);
	after_value(w);
}

void json_u64(struct json_writer *w, uint64_t v)
{
	char buf[24];

	snprintf(buf, sizeof(buf), "%" PRIu64, v);
	scalar(w, buf);
}

void json_double(struct json_writer *w, double v, unsigned decimals)
{
	char buf[64];

	if (!isfinite(v)) { /* JSON has no NaN or infinity */
		json_null(w);
		return;
	}
	/* Past 1e15 "%f" spells out every digit: too long for readers (and
	 * for our own parser's limit); "%.17g" gives the same double back. */
	if (fabs(v) >= 1e15)
		snprintf(buf, sizeof(buf), "%.17g", v);
	else
		snprintf(buf, sizeof(buf), "%.*f",
			 decimals > 9 ? 9 : (int)decimals, v);
	scalar(w, buf);
}

void json_i64(struct json_writer *w, int64_t v)
{
	char buf[24];

	snprintf(buf, sizeof(buf), "%" PRId64, v);
	scalar(w, buf);
}

void json_bool(struct json_writer *w, bool v)
{
	scalar(w, v ? "true" : "false");
}

void json_null(struct json_writer *w)
{
	scalar(w, "null");
}
