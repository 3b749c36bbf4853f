/* SPDX-License-Identifier: MIT */
/*
 * test_guid.c - unit tests of the GUID helpers: the Microsoft mixed-endian
 * on-disk layout (u32, u16, u16 little-endian, then 8 bytes in order),
 * parsing of the text form with and without braces, formatting, and
 * random version-4 GUIDs.
 */
#include <ctype.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "vhdx/internal.h"

/* The BAT region GUID 2DC27766-F623-4200-9D64-115E9BFD4A08 as stored. */
static const uint8_t bat_le[16] = {
	0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
	0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08,
};

/* The metadata region GUID 8B7CA206-4790-4B9A-B8FE-575F050F886E as stored. */
static const uint8_t md_le[16] = {
	0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
	0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
};

static void assert_bat_fields(const struct vhdx_guid *g)
{
	static const uint8_t d4[8] = { 0x9d, 0x64, 0x11, 0x5e,
				       0x9b, 0xfd, 0x4a, 0x08 };

	assert_int_equal(g->d1, 0x2DC27766u);
	assert_int_equal(g->d2, 0xF623u);
	assert_int_equal(g->d3, 0x4200u);
	assert_memory_equal(g->d4, d4, 8);
}

static void test_from_le_layout(void **state)
{
	struct vhdx_guid g;

	(void)state;
	memset(&g, 0xAA, sizeof(g));
	vhdx_guid_from_le(bat_le, &g);
	assert_bat_fields(&g);

	vhdx_guid_from_le(md_le, &g);
	assert_int_equal(g.d1, 0x8B7CA206u);
	assert_int_equal(g.d2, 0x4790u);
	assert_int_equal(g.d3, 0x4B9Au);
	assert_int_equal(g.d4[0], 0xB8);
	assert_int_equal(g.d4[7], 0x6E);
}

static void test_to_le_layout(void **state)
{
	struct vhdx_guid g = {
		.d1 = 0x2DC27766u,
		.d2 = 0xF623u,
		.d3 = 0x4200u,
		.d4 = { 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 },
	};
	uint8_t b[16];

	(void)state;
	memset(b, 0xEE, sizeof(b));
	vhdx_guid_to_le(&g, b);
	assert_memory_equal(b, bat_le, 16);
}

static void test_round_trip_bytes(void **state)
{
	uint8_t in[16], out[16];
	struct vhdx_guid g;
	unsigned i, r;

	(void)state;
	for (r = 0; r < 64; r++) {
		for (i = 0; i < 16; i++)
			in[i] = (uint8_t)(r * 31 + i * 17 + (r ^ i));
		vhdx_guid_from_le(in, &g);
		vhdx_guid_to_le(&g, out);
		assert_memory_equal(in, out, 16);
	}
}

static void test_parse_forms(void **state)
{
	static const char *const good[] = {
		"2DC27766-F623-4200-9D64-115E9BFD4A08",
		"2dc27766-f623-4200-9d64-115e9bfd4a08",
		"{2DC27766-F623-4200-9D64-115E9BFD4A08}",
		"{2dc27766-f623-4200-9d64-115e9bfd4a08}",
		"2Dc27766-f623-4200-9D64-115e9BFD4a08",
	};
	struct vhdx_guid g;
	unsigned i;

	(void)state;
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		memset(&g, 0, sizeof(g));
		assert_int_equal(vhdx_guid_parse(good[i], &g), 0);
		assert_bat_fields(&g);
	}
}

static void test_parse_rejects(void **state)
{
	static const char *const bad[] = {
		"",
		"{}",
		"2DC27766-F623-4200-9D64-115E9BFD4A0",	 /* short */
		"2DC27766-F623-4200-9D64-115E9BFD4A081", /* long */
		"2DC27766-F623-4200-9D64-115E9BFD4A08 ", /* trailing space */
		" 2DC27766-F623-4200-9D64-115E9BFD4A08", /* leading space */
		"{2DC27766-F623-4200-9D64-115E9BFD4A08", /* no closing brace */
		"2DC27766-F623-4200-9D64-115E9BFD4A08}", /* no opening brace */
		"{2DC27766-F623-4200-9D64-115E9BFD4A08}x", /* junk after brace
							    */
		"(2DC27766-F623-4200-9D64-115E9BFD4A08)",  /* wrong brackets */
		"{2DC27766-F623-4200-9D64-115E9BFD4A08]",  /* wrong closer */
		"{2DC27766-F623-4200-9D64-115E9BFD4A08{",  /* wrong closer */
		"2DC27766F623-4200-9D64-115E9BFD4A08-",	   /* dash misplaced */
		"2DC27766-F6234-200-9D64-115E9BFD4A08",	   /* dash misplaced */
		"2DC27766-F623-4200-9D64115E-9BFD4A08",	   /* dash misplaced */
		"2DC27766_F623_4200_9D64_115E9BFD4A08",	   /* not dashes */
		"2DC2776G-F623-4200-9D64-115E9BFD4A08",	   /* not hex */
		"2DC27766-F623-4200-9D64-115E9BFD4A0Z",	   /* not hex */
		"2DC27766-F623-4200-9D6 -115E9BFD4A08",	   /* space in digits */
		"+DC27766-F623-4200-9D64-115E9BFD4A08",	   /* sign */
		"2DC27766--623-4200-9D64-115E9BFD4A08",	   /* minus sign */
		"2DC27766-F623-4200-9D64-0x5E9BFD4A08",	   /* 0x prefix */
		"2DC277662F6234200A9D64A115E9BFD4A08",	   /* no dashes, 35 */
		"2DC27766F62342009D64115E9BFD4A08",	   /* no dashes, 32 */
	};
	struct vhdx_guid g, before;
	unsigned i;

	(void)state;
	memset(&before, 0x5C, sizeof(before));
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		g = before;
		assert_int_equal(vhdx_guid_parse(bad[i], &g), -EINVAL);
	}
}

static void test_format(void **state)
{
	struct vhdx_guid g, back;
	char s[VHDX_GUID_STR_LEN];
	unsigned i;

	(void)state;
	vhdx_guid_from_le(bat_le, &g);
	memset(s, 'Q', sizeof(s));
	vhdx_guid_format(&g, s);
	assert_int_equal(strlen(s), 36);
	assert_int_equal(strcasecmp(s, "2DC27766-F623-4200-9D64-115E9BFD4A08"),
			 0);

	/* leading zeros kept in every group */
	memset(&g, 0, sizeof(g));
	g.d1 = 0x1;
	g.d2 = 0x2;
	g.d3 = 0x3;
	g.d4[0] = 0x4;
	g.d4[7] = 0x5;
	vhdx_guid_format(&g, s);
	assert_int_equal(strcasecmp(s, "00000001-0002-0003-0400-000000000005"),
			 0);

	/* all ones */
	memset(&g, 0xFF, sizeof(g));
	vhdx_guid_format(&g, s);
	assert_int_equal(strcasecmp(s, "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"),
			 0);

	/* one case throughout, and format then parse is the identity */
	vhdx_guid_from_le(md_le, &g);
	vhdx_guid_format(&g, s);
	assert_int_equal(strcasecmp(s, "8B7CA206-4790-4B9A-B8FE-575F050F886E"),
			 0);
	{
		bool upper = false, lower = false;

		for (i = 0; s[i]; i++) {
			upper |= isupper((unsigned char)s[i]) != 0;
			lower |= islower((unsigned char)s[i]) != 0;
		}
		assert_false(upper && lower);
	}
	assert_int_equal(vhdx_guid_parse(s, &back), 0);
	assert_true(vhdx_guid_equal(&g, &back));
}

static void test_equal_and_zero(void **state)
{
	struct vhdx_guid a, b, z;
	unsigned i;

	(void)state;
	memset(&z, 0, sizeof(z));
	assert_true(vhdx_guid_is_zero(&z));
	vhdx_guid_from_le(bat_le, &a);
	b = a;
	assert_true(vhdx_guid_equal(&a, &b));
	assert_false(vhdx_guid_is_zero(&a));
	/* a difference in any byte of the stored form is a different GUID */
	for (i = 0; i < 16; i++) {
		uint8_t t[16];

		memcpy(t, bat_le, 16);
		t[i] ^= 0x01;
		vhdx_guid_from_le(t, &b);
		assert_false(vhdx_guid_equal(&a, &b));

		memset(t, 0, 16);
		t[i] = 0x80;
		vhdx_guid_from_le(t, &b);
		assert_false(vhdx_guid_is_zero(&b));
	}
}

static void test_const(void **state)
{
	struct vhdx_guid g, p;

	(void)state;
	g = vhdx_guid_const(VHDX_BAT_GUID_STR);
	assert_bat_fields(&g);
	g = vhdx_guid_const(VHDX_METADATA_GUID_STR);
	vhdx_guid_from_le(md_le, &p);
	assert_true(vhdx_guid_equal(&g, &p));
}

static void test_generate(void **state)
{
	struct vhdx_guid a, b;
	uint8_t le[16];
	unsigned i;

	(void)state;
	for (i = 0; i < 32; i++) {
		assert_int_equal(vhdx_guid_generate(&a), 0);
		assert_int_equal(vhdx_guid_generate(&b), 0);
		assert_false(vhdx_guid_equal(&a, &b));
		assert_false(vhdx_guid_is_zero(&a));
		/* RFC 4122 version 4: the high nibble of the third group */
		assert_int_equal(a.d3 >> 12, 4);
		/* variant 10xx in the first byte of the fourth group */
		assert_int_equal(a.d4[0] & 0xC0, 0x80);
		vhdx_guid_to_le(&a, le);
		assert_int_equal(le[7] >> 4, 4);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_from_le_layout),
		cmocka_unit_test(test_to_le_layout),
		cmocka_unit_test(test_round_trip_bytes),
		cmocka_unit_test(test_parse_forms),
		cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_equal_and_zero),
		cmocka_unit_test(test_const),
		cmocka_unit_test(test_generate),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
