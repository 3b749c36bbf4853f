/* SPDX-License-Identifier: MIT */
/*
 * test_region.c - unit tests of the region table parser (MS-VHDX 2.2.3):
 * tables built byte by byte here with their own CRC-32C, in the entry
 * orders different creators use, and each way a table can be wrong.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "vhdx/internal.h"
#include "tests/unit/oracle.h"

#define RT_SIZE (64 * 1024)
#define M (1024ull * 1024)

/* Stored (mixed-endian) forms of the two known region GUIDs. */
static const uint8_t BAT[16] = {
	0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
	0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08
};
static const uint8_t MD[16] = {
	0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
	0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e
};
/* Some region nobody knows. */
static const uint8_t UNK[16] = {
	0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
	0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10
};

struct ent {
	const uint8_t *guid;
	uint64_t off;
	uint32_t len;
	uint32_t flags;
};

static uint8_t *rt;

static void seal(void)
{
	memset(rt + 4, 0, 4);
	put32(rt + 4, ref_crc32c(rt, RT_SIZE));
}

static void make_table(const struct ent *e, unsigned n)
{
	unsigned i;

	memset(rt, 0, RT_SIZE);
	memcpy(rt, "regi", 4);
	put32(rt + 8, n);
	for (i = 0; i < n; i++) {
		uint8_t *p = rt + 16 + 32 * i;

		memcpy(p, e[i].guid, 16);
		put64(p + 16, e[i].off);
		put32(p + 24, e[i].len);
		put32(p + 28, e[i].flags);
	}
	seal();
}

static int setup(void **state)
{
	(void)state;
	rt = malloc(RT_SIZE);
	return rt ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	free(rt);
	return 0;
}

static int parse(uint64_t file_size, struct vhdx_regions *r, const char **why)
{
	*why = NULL;
	memset(r, 0xA5, sizeof(*r));
	return vhdx_region_table_parse(rt, file_size, r, why);
}

/* A failed parse sets *why and leaves nothing to free. */
static void expect_fail(uint64_t file_size, int err)
{
	struct vhdx_regions r;
	const char *why;

	int ret = parse(file_size, &r, &why);

	if (ret == 0)
		vhdx_regions_free(&r); /* wrongly accepted: don't leak it */
	assert_int_equal(ret, err);
	assert_non_null(why);
	assert_true(strlen(why) > 0);
}

static void test_valid_bat_first(void **state)
{
	struct ent e[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
	};
	struct vhdx_regions r;
	const char *why;

	(void)state;
	make_table(e, 2);
	assert_int_equal(parse(8 * M, &r, &why), 0);
	assert_int_equal(r.count, 2);
	assert_non_null(r.entry);
	assert_int_equal(r.bat_offset, 2 * M);
	assert_int_equal(r.bat_length, 1 * M);
	assert_int_equal(r.metadata_offset, 3 * M);
	assert_int_equal(r.metadata_length, 1 * M);
	assert_int_equal(r.entry[0].file_offset, 2 * M);
	assert_int_equal(r.entry[0].length, 1 * M);
	assert_true(r.entry[0].required);
	assert_string_equal(r.entry[0].name, "BAT");
	assert_int_equal(r.entry[0].guid.d1, 0x2DC27766u);
	assert_string_equal(r.entry[1].name, "metadata");
	assert_int_equal(r.entry[1].guid.d1, 0x8B7CA206u);
	vhdx_regions_free(&r);
}

/* Disk2vhd lists the metadata region first. */
static void test_valid_metadata_first(void **state)
{
	struct ent e[] = {
		{ MD, 1 * M, 1 * M, 1 },
		{ BAT, 2 * M, 2 * M, 1 },
	};
	struct vhdx_regions r;
	const char *why;

	(void)state;
	make_table(e, 2);
	assert_int_equal(parse(4 * M, &r, &why), 0); /* ends exactly at EOF */
	assert_int_equal(r.count, 2);
	assert_int_equal(r.bat_offset, 2 * M);
	assert_int_equal(r.bat_length, 2 * M);
	assert_int_equal(r.metadata_offset, 1 * M);
	assert_int_equal(r.metadata_length, 1 * M);
	assert_string_equal(r.entry[0].name, "metadata");
	assert_string_equal(r.entry[1].name, "BAT");
	vhdx_regions_free(&r);
}

static void test_bad_signature(void **state)
{
	struct ent e[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
	};

	(void)state;
	make_table(e, 2);
	memcpy(rt, "REGI", 4);
	seal();
	expect_fail(8 * M, -EINVAL);
}

static void test_bad_checksum(void **state)
{
	static const size_t flips[] = { 8, 16, 40, 4096, RT_SIZE - 1 };
	struct ent e[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
	};
	unsigned i;

	(void)state;
	/* all 64 KiB are covered, unused entry slots included */
	for (i = 0; i < sizeof(flips) / sizeof(flips[0]); i++) {
		make_table(e, 2);
		rt[flips[i]] ^= 0x01;
		expect_fail(8 * M, -EBADMSG);
	}
	make_table(e, 2);
	rt[5] ^= 0x40;
	expect_fail(8 * M, -EBADMSG);
}

static void test_entry_count_limit(void **state)
{
	struct ent *e = calloc(2048, sizeof(*e));
	struct vhdx_regions r;
	const char *why;
	unsigned i;

	(void)state;
	assert_non_null(e);
	/* 2047 entries: the most a 64 KiB table holds; all accepted */
	e[0] = (struct ent){ BAT, 1 * M, 1 * M, 1 };
	e[1] = (struct ent){ MD, 2 * M, 1 * M, 1 };
	for (i = 2; i < 2047; i++)
		e[i] = (struct ent){ UNK, (uint64_t)(i + 1) * M, 1 * M, 0 };
	make_table(e, 2047);
	assert_int_equal(parse(2048 * M, &r, &why), 0);
	assert_int_equal(r.count, 2047);
	assert_string_equal(r.entry[2046].name, "unknown");
	vhdx_regions_free(&r);

	/* 2048 is one too many (it would not even fit in the table) */
	make_table(e, 2047);
	put32(rt + 8, 2048);
	seal();
	expect_fail(4096 * M, -EINVAL);

	make_table(e, 2);
	put32(rt + 8, 0xFFFFFFFFu);
	seal();
	expect_fail(4096 * M, -EINVAL);
	free(e);
}

static void test_unknown_required(void **state)
{
	struct ent e[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ UNK, 5 * M, 1 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
	};

	(void)state;
	make_table(e, 3);
	expect_fail(8 * M, -ENOTSUP);
	/* only bit 0 is "required"; other flag bits are reserved */
	e[1].flags = 0xFFFFFFFFu;
	make_table(e, 3);
	expect_fail(8 * M, -ENOTSUP);
}

static void test_unknown_optional(void **state)
{
	struct ent e[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ UNK, 5 * M, 2 * M, 0 },
		{ MD, 3 * M, 1 * M, 1 },
	};
	struct vhdx_regions r;
	const char *why;

	(void)state;
	make_table(e, 3);
	assert_int_equal(parse(8 * M, &r, &why), 0);
	assert_int_equal(r.count, 3);
	assert_string_equal(r.entry[1].name, "unknown");
	assert_false(r.entry[1].required);
	assert_int_equal(r.entry[1].file_offset, 5 * M);
	assert_int_equal(r.entry[1].length, 2 * M);
	assert_int_equal(r.bat_offset, 2 * M);
	assert_int_equal(r.metadata_offset, 3 * M);
	vhdx_regions_free(&r);
}

static void test_missing_known(void **state)
{
	struct ent only_md[] = { { MD, 3 * M, 1 * M, 1 } };
	struct ent only_bat[] = { { BAT, 3 * M, 1 * M, 1 } };
	struct ent md_unk[] = {
		{ MD, 3 * M, 1 * M, 1 },
		{ UNK, 2 * M, 1 * M, 0 },
	};
	struct ent two_bats[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ BAT, 4 * M, 1 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
	};

	(void)state;
	make_table(only_md, 1);
	expect_fail(8 * M, -EINVAL);
	make_table(only_bat, 1);
	expect_fail(8 * M, -EINVAL);
	make_table(md_unk, 2);
	expect_fail(8 * M, -EINVAL);
	make_table(NULL, 0);
	expect_fail(8 * M, -EINVAL);
	make_table(two_bats, 3);
	expect_fail(8 * M, -EINVAL);
}

static void test_region_in_header_section(void **state)
{
	struct ent e[] = {
		{ BAT, 0, 1 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
	};

	(void)state;
	make_table(e, 2);
	expect_fail(8 * M, -EINVAL);
	/* an optional unknown region there is just as wrong */
	{
		struct ent u[] = {
			{ BAT, 2 * M, 1 * M, 1 },
			{ MD, 3 * M, 1 * M, 1 },
			{ UNK, 0, 1 * M, 0 },
		};

		make_table(u, 3);
		expect_fail(8 * M, -EINVAL);
	}
}

static void test_overlap(void **state)
{
	struct ent same[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 2 * M, 1 * M, 1 },
	};
	struct ent partial[] = {
		{ MD, 3 * M, 2 * M, 1 },
		{ BAT, 4 * M, 2 * M, 1 },
	};
	struct ent inside[] = {
		{ BAT, 2 * M, 4 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
	};
	struct ent with_unknown[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
		{ UNK, 1 * M, 2 * M, 0 },
	};
	struct ent adjacent[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
		{ UNK, 1 * M, 1 * M, 0 },
	};
	struct vhdx_regions r;
	const char *why;

	(void)state;
	make_table(same, 2);
	expect_fail(16 * M, -EINVAL);
	make_table(partial, 2);
	expect_fail(16 * M, -EINVAL);
	make_table(inside, 2);
	expect_fail(16 * M, -EINVAL);
	make_table(with_unknown, 3);
	expect_fail(16 * M, -EINVAL);
	/* touching is not overlapping */
	make_table(adjacent, 3);
	assert_int_equal(parse(16 * M, &r, &why), 0);
	vhdx_regions_free(&r);
}

static void test_past_end_of_file(void **state)
{
	struct ent e[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
	};

	(void)state;
	make_table(e, 2);
	expect_fail(4 * M - 1, -EINVAL); /* one byte short */
	expect_fail(3 * M, -EINVAL);
	expect_fail(0, -EINVAL);
}

/* An offset so large that offset + length wraps past 2^64 must not look
 * like it fits in the file. */
static void test_offset_overflow(void **state)
{
	struct ent e[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 0xFFFFFFFFFFF00000ull, 1 * M, 1 },
	};
	struct ent e2[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 3 * M, 1 * M, 1 },
		{ UNK, 0xFFFFFFFFFFE00000ull, 4 * M, 0 },
	};

	(void)state;
	make_table(e, 2);
	expect_fail(8 * M, -EINVAL);
	make_table(e2, 3);
	expect_fail(8 * M, -EINVAL);
}

static void test_unaligned(void **state)
{
	struct ent off[] = {
		{ BAT, 2 * M + 4096, 1 * M, 1 },
		{ MD, 4 * M, 1 * M, 1 },
	};
	struct ent len[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 4 * M, 64 * 1024, 1 },
	};
	struct ent unk[] = {
		{ BAT, 2 * M, 1 * M, 1 },
		{ MD, 4 * M, 1 * M, 1 },
		{ UNK, 6 * M + 512, 1 * M, 0 },
	};

	(void)state;
	make_table(off, 2);
	expect_fail(16 * M, -EINVAL);
	make_table(len, 2);
	expect_fail(16 * M, -EINVAL);
	make_table(unk, 3);
	expect_fail(16 * M, -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_bat_first),
		cmocka_unit_test(test_valid_metadata_first),
		cmocka_unit_test(test_bad_signature),
		cmocka_unit_test(test_bad_checksum),
		cmocka_unit_test(test_entry_count_limit),
		cmocka_unit_test(test_unknown_required),
		cmocka_unit_test(test_unknown_optional),
		cmocka_unit_test(test_missing_known),
		cmocka_unit_test(test_region_in_header_section),
		cmocka_unit_test(test_overlap),
		cmocka_unit_test(test_past_end_of_file),
		cmocka_unit_test(test_offset_overflow),
		cmocka_unit_test(test_unaligned),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
