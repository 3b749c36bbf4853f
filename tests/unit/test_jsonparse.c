/* SPDX-License-Identifier: MIT */
/*
 * test_jsonparse.c - the control API's JSON parser: what RFC 8259 accepts
 * it accepts with the right values, what it forbids it refuses with the
 * byte offset, nesting is bounded, and what json.c writes reads back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "agent/lib/json.h"
#include "agent/lib/jsonparse.h"

static struct jv *ok(const char *text)
{
	struct jv *v = NULL;
	char err[256];

	if (jv_parse(text, strlen(text), &v, err, sizeof(err)))
		fail_msg("'%s' refused: %s", text, err);
	return v;
}

static void bad(const char *text, const char *needle)
{
	struct jv *v = (struct jv *)1;
	char err[256] = "";

	if (jv_parse(text, strlen(text), &v, err, sizeof(err)) != -22)
		fail_msg("'%s' accepted", text);
	assert_null(v);
	if (needle && !strstr(err, needle))
		fail_msg("'%s': error '%s' does not say '%s'", text, err,
			 needle);
}

static void test_scalars(void **state)
{
	struct jv *v;

	(void)state;
	v = ok("null");
	assert_int_equal(v->type, JV_NULL);
	jv_free(v);
	v = ok(" true ");
	assert_int_equal(v->type, JV_BOOL);
	assert_true(v->b);
	jv_free(v);
	v = ok("false");
	assert_false(v->b);
	jv_free(v);
	v = ok("4096");
	assert_int_equal(v->type, JV_NUMBER);
	assert_true(v->is_int);
	assert_int_equal(v->i, 4096);
	jv_free(v);
	v = ok("-0");
	assert_true(v->is_int);
	assert_int_equal(v->i, 0);
	jv_free(v);
	v = ok("9223372036854775807");
	assert_true(v->is_int);
	assert_true(v->i == INT64_MAX);
	jv_free(v);
	/* beyond int64: still a number, no longer an exact integer */
	v = ok("18446744073709551616");
	assert_false(v->is_int);
	jv_free(v);
	v = ok("2.5");
	assert_false(v->is_int);
	assert_true(v->num == 2.5);
	jv_free(v);
	v = ok("1e3");
	assert_false(
		v->is_int); /* written as a fraction: not an integer field */
	assert_true(v->num == 1000);
	jv_free(v);
	v = ok("-1.25E-2");
	assert_true(v->num == -0.0125);
	jv_free(v);
}

static void test_strings(void **state)
{
	struct jv *v;

	(void)state;
	v = ok("\"web01\"");
	assert_int_equal(v->type, JV_STRING);
	assert_string_equal(v->s, "web01");
	jv_free(v);
	v = ok("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"");
	assert_string_equal(v->s, "a\"b\\c/d\b\f\n\r\t");
	jv_free(v);
	/* \u escapes become UTF-8: U+00E9, U+20AC and U+1F600 (a pair) */
	v = ok("\"\\u00e9\\u20AC\\ud83d\\ude00\"");
	assert_string_equal(v->s, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
	jv_free(v);
	/* UTF-8 as is */
	v = ok("\"caf\xc3\xa9\"");
	assert_string_equal(v->s, "caf\xc3\xa9");
	jv_free(v);
}

static void test_containers(void **state)
{
	struct jv *v;
	const struct jv *m;

	(void)state;
	v = ok("{\"Method\": \"Resynchronize\", \"ComputerSystem\": \"web01\", "
	       "\"StartTime\": null, \"Sources\": {\"os.vhdx\": \"/run/x\"}, "
	       "\"List\": [1, [], {}, \"x\"]}");
	assert_int_equal(v->type, JV_OBJECT);
	assert_int_equal(v->n, 5);
	assert_string_equal(jv_get(v, "Method")->s, "Resynchronize");
	assert_int_equal(jv_get(v, "StartTime")->type, JV_NULL);
	m = jv_get(v, "Sources");
	assert_int_equal(m->type, JV_OBJECT);
	assert_string_equal(jv_get(m, "os.vhdx")->s, "/run/x");
	m = jv_get(v, "List");
	assert_int_equal(m->type, JV_ARRAY);
	assert_int_equal(m->n, 4);
	assert_int_equal(m->items[1].type, JV_ARRAY);
	assert_int_equal(m->items[1].n, 0);
	assert_int_equal(m->items[2].type, JV_OBJECT);
	assert_null(jv_get(v, "Missing"));
	assert_null(jv_get(m, "x")); /* not an object */
	assert_null(jv_get(NULL, "x"));
	jv_free(v);
	v = ok("\t[ ]\r\n");
	assert_int_equal(v->type, JV_ARRAY);
	jv_free(v);
}

static void test_reject(void **state)
{
	(void)state;
	bad("", "end");
	bad("   ", "end");
	bad("{", NULL);
	bad("{\"a\"}", NULL);
	bad("{\"a\":1,}", NULL);
	bad("[1,]", NULL);
	bad("[1 2]", NULL);
	bad("{a:1}", "key");
	bad("{'a':1}", "key");
	bad("\"unterminated", "unterminated");
	bad("\"tab\there\"", "control");
	bad("\"\\x\"", "escape");
	bad("\"\\u12\"", NULL);
	bad("\"\\u12g4\"", "escape");
	bad("\"\\ud83d\"", "surrogate");
	bad("\"\\ude00\"", "surrogate");
	bad("\"\\ud83d\\u0041\"", "surrogate");
	bad("\"\\u0000\"", "NUL");
	bad("01", "leading zero");
	bad("-", NULL);
	bad("1.", NULL);
	bad(".5", NULL);
	bad("1e", NULL);
	bad("+1", NULL);
	bad("NaN", NULL);
	bad("Infinity", NULL);
	bad("tru", "literal");
	bad("nul", "literal");
	bad("True", NULL);
	bad("1 2", "trailing");
	bad("{} x", "trailing");
	bad("[\"a\"]]", "trailing");
	bad("// comment\n{}", NULL);
}

/* The offset in a message points at the offending byte. */
static void test_offset(void **state)
{
	struct jv *v;
	char err[256];

	(void)state;
	assert_int_equal(jv_parse("{\"a\": tru}", 10, &v, err, sizeof(err)),
			 -22);
	assert_non_null(strstr(err, "byte 6"));
	assert_int_equal(jv_parse("[1,2,3,,]", 9, &v, err, sizeof(err)), -22);
	assert_non_null(strstr(err, "byte 7"));
}

/* LEN bounds the input: nothing past it is read. */
static void test_length(void **state)
{
	struct jv *v;
	char err[256];

	(void)state;
	assert_int_equal(jv_parse("{}garbage", 2, &v, err, sizeof(err)), 0);
	jv_free(v);
	assert_int_equal(jv_parse("\"abc\"", 4, &v, err, sizeof(err)), -22);
	assert_int_equal(jv_parse("truex", 4, &v, err, sizeof(err)), 0);
	assert_true(v->b);
	jv_free(v);
	assert_int_equal(jv_parse("\"\\u00", 5, &v, err, sizeof(err)), -22);
	/* a NUL byte inside the text is a control character, not an end */
	assert_int_equal(jv_parse("\"a\0b\"", 5, &v, err, sizeof(err)), -22);
}

static char *nested(unsigned depth, char open, char close)
{
	char *s = malloc(2 * depth + 1);
	unsigned i;

	for (i = 0; i < depth; i++) {
		s[i] = open;
		s[2 * depth - 1 - i] = close;
	}
	s[2 * depth] = '\0';
	return s;
}

static void test_depth(void **state)
{
	struct jv *v;
	char err[256], *s;

	(void)state;
	s = nested(64, '[', ']');
	assert_int_equal(jv_parse(s, strlen(s), &v, err, sizeof(err)), 0);
	jv_free(v);
	free(s);
	s = nested(66, '[', ']');
	assert_int_equal(jv_parse(s, strlen(s), &v, err, sizeof(err)), -22);
	assert_non_null(strstr(err, "deep"));
	free(s);
	/* deep enough to overflow a stack if the bound were missing */
	s = nested(1000000, '[', ']');
	assert_int_equal(jv_parse(s, strlen(s), &v, err, sizeof(err)), -22);
	free(s);
}

/* Whatever json.c writes, jsonparse.c reads back the same. */
static void test_writer_round_trip(void **state)
{
	static const char *const strs[] = {
		"",
		"plain",
		"quote \" backslash \\ slash /",
		"ctl \x01\x1f\n\t",
		"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
	};
	struct json_writer w;
	char *buf = NULL, err[256];
	size_t len = 0, i;
	struct jv *v;
	FILE *f = open_memstream(&buf, &len);

	(void)state;
	json_init(&w, f, 2);
	json_object_begin(&w);
	json_key(&w, "strings");
	json_array_begin(&w);
	for (i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
		json_string(&w, strs[i]);
	json_array_end(&w);
	json_kv_u64(&w, "big", UINT64_C(9007199254740993));
	json_kv_i64(&w, "neg", -32768);
	json_kv_bool(&w, "yes", true);
	json_kv_null(&w, "none");
	json_object_end(&w);
	assert_int_equal(json_end(&w), 0);
	fclose(f);
	if (jv_parse(buf, len, &v, err, sizeof(err)))
		fail_msg("%s in %s", err, buf);
	for (i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
		assert_string_equal(jv_get(v, "strings")->items[i].s, strs[i]);
	assert_true(jv_get(v, "big")->is_int);
	assert_true(jv_get(v, "big")->i == INT64_C(9007199254740993));
	assert_int_equal(jv_get(v, "neg")->i, -32768);
	assert_true(jv_get(v, "yes")->b);
	assert_int_equal(jv_get(v, "none")->type, JV_NULL);
	jv_free(v);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scalars),
		cmocka_unit_test(test_strings),
		cmocka_unit_test(test_containers),
		cmocka_unit_test(test_reject),
		cmocka_unit_test(test_offset),
		cmocka_unit_test(test_length),
		cmocka_unit_test(test_depth),
		cmocka_unit_test(test_writer_round_trip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
