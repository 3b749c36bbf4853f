/* SPDX-License-Identifier: MIT */
/*
 * test_jsonparse_fuzz.c - what fuzz_json found in the control API's JSON
 * parser (tools/fuzz/README.md): a document it accepts must write back,
 * through jv_write, as the same tree.  Strings with bytes that are not
 * UTF-8 were accepted and came back with U+FFFD in them (a VM name or a
 * Sources path quietly changed); numbers past the double range were
 * accepted as infinity and came back as null.  Both are now refused with
 * the byte offset, and well-formed UTF-8 of every length still passes.
 * Large finite numbers, cut short by the writer, now write back whole.
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

static void refused(const char *text, size_t len, const char *needle)
{
	struct jv *v = NULL;
	char err[256] = "";

	if (jv_parse(text, len, &v, err, sizeof(err)) != -22) {
		jv_free(v);
		fail_msg("'%s' accepted", text);
	}
	assert_null(v);
	if (!strstr(err, needle))
		fail_msg("'%s': error '%s' does not say '%s'", text, err,
			 needle);
}

/* Parse @text, write it back compactly, and return what was written. */
static char *round_trip(const char *text)
{
	struct json_writer w;
	struct jv *v = NULL;
	char err[256], *out = NULL;
	size_t n = 0;
	FILE *f;

	if (jv_parse(text, strlen(text), &v, err, sizeof(err)))
		fail_msg("'%s' refused: %s", text, err);
	f = open_memstream(&out, &n);
	assert_non_null(f);
	json_init(&w, f, 0);
	jv_write(&w, v);
	assert_int_equal(json_end(&w), 0);
	fclose(f);
	jv_free(v);
	return out;
}

static void test_invalid_utf8_refused(void **state)
{
	/* The kept crash input: 0xff bytes inside a method name. */
	static const char ff[] = "{\"Method\": \"Resynchro\xff\xff\xffnize\"}";
	static const struct {
		const char *text;
		const char *where;
	} cases[] = {
		{ "\"a\xff\"", "at byte 2" },	 /* never in UTF-8 */
		{ "\"\x80\"", "at byte 1" },	 /* lone continuation */
		{ "\"\xc3\"", "at byte 1" },	 /* cut short by the quote */
		{ "\"\xc0\xaf\"", "at byte 1" }, /* overlong '/' */
		{ "\"\xe0\x80\xaf\"", "at byte 1" },	 /* overlong, 3 bytes */
		{ "\"\xed\xa0\x80\"", "at byte 1" },	 /* a surrogate */
		{ "\"\xf4\x90\x80\x80\"", "at byte 1" }, /* past U+10FFFF */
		{ "{\"k\xfe\": 1}", "at byte 3" },	 /* in a key too */
		{ "[\"ok\", \"\xe2\x82\"]", "at byte 8" },
	};
	size_t i;

	(void)state;
	refused(ff, sizeof(ff) - 1, "invalid UTF-8 in string");
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		refused(cases[i].text, strlen(cases[i].text), "invalid UTF-8");
		refused(cases[i].text, strlen(cases[i].text), cases[i].where);
	}
}

static void test_utf8_round_trips(void **state)
{
	static const char *texts[] = {
		"\"caf\xc3\xa9\"",	/* 2 bytes */
		"\"\xe2\x82\xac 5\"",	/* 3 bytes */
		"\"\xef\xbf\xbf\"",	/* U+FFFF */
		"\"\xf0\x9f\x98\x80\"", /* 4 bytes */
		"\"\xf4\x8f\xbf\xbf\"", /* U+10FFFF, the last */
		"{\"d\xc3\xadsk\":\"/srv/\xe6\x97\xa5.vhdx\"}",
	};
	size_t i;
	char *out;

	(void)state;
	for (i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		out = round_trip(texts[i]);
		if (strncmp(out, texts[i], strlen(texts[i])))
			fail_msg("'%s' wrote back as '%s'", texts[i], out);
		free(out);
	}
}

static void test_infinite_number_refused(void **state)
{
	char *out;

	(void)state;
	refused("1e999", 5, "number out of range");
	refused("[0, -1E400]", 11, "at byte 4");
	/* The largest finite numbers still pass and write back as numbers. */
	out = round_trip("[1e308, -1.5e300, 99999999999999999999]");
	if (strstr(out, "null"))
		fail_msg("finite numbers wrote back as '%s'", out);
	free(out);
	/* Large non-integers came back cut short by the writer's buffer, as
	 * another number or as "222...0." which is not JSON; written whole,
	 * they were too long for the parser.  They must come back exact. */
	out = round_trip("[5e93, -1.25e300, 1e85]");
	{
		struct jv *v = NULL;
		char err[256];

		if (jv_parse(out, strlen(out), &v, err, sizeof(err)))
			fail_msg("'%s' does not parse back: %s", out, err);
		assert_true(v->items[0].num == 5e93);
		assert_true(v->items[1].num == -1.25e300);
		assert_true(v->items[2].num == 1e85);
		jv_free(v);
	}
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_invalid_utf8_refused),
		cmocka_unit_test(test_utf8_round_trips),
		cmocka_unit_test(test_infinite_number_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
