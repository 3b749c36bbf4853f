/* SPDX-License-Identifier: MIT */
/*
 * test_header.c - unit tests of the VHDX header (MS-VHDX 2.2.2): parsing a
 * header built byte by byte here, rejection of a bad signature or checksum,
 * the choice of the current header, and vhdx_header_build.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "vhdx/internal.h"
#include "tests/unit/oracle.h"

#define HSIZE 4096

/* Stored forms of three GUIDs, and their text. */
static const uint8_t fw_le[16] = { 0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a,
				   0xf0, 0xde, 0x01, 0x23, 0x45, 0x67,
				   0x89, 0xab, 0xcd, 0xef };
#define FW_STR "12345678-9ABC-DEF0-0123-456789ABCDEF"
static const uint8_t dw_le[16] = { 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
				   0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
				   0xdd, 0xee, 0xff, 0x00 };
#define DW_STR "44332211-6655-8877-99AA-BBCCDDEEFF00"
static const uint8_t lg_le[16] = { 0xde, 0xc0, 0xad, 0x0b, 0xef, 0xbe,
				   0xfe, 0xca, 0x10, 0x20, 0x30, 0x40,
				   0x50, 0x60, 0x70, 0x80 };
#define LG_STR "0BADC0DE-BEEF-CAFE-1020-304050607080"

static void seal(uint8_t *h)
{
	memset(h + 4, 0, 4);
	put32(h + 4, ref_crc32c(h, HSIZE));
}

/* A header as MS-VHDX 2.2.2.1 lays it out, sealed with its CRC-32C. */
static void make_header(uint8_t *h, uint64_t seq, bool with_log)
{
	memset(h, 0, HSIZE);
	memcpy(h, "head", 4);
	put64(h + 8, seq);
	memcpy(h + 16, fw_le, 16);
	memcpy(h + 32, dw_le, 16);
	if (with_log)
		memcpy(h + 48, lg_le, 16);
	h[64] = 0; /* LogVersion 0 */
	h[65] = 0;
	h[66] = 1; /* Version 1 */
	h[67] = 0;
	put32(h + 68, 1024 * 1024);	   /* LogLength 1 MiB */
	put64(h + 72, 3ull * 1024 * 1024); /* LogOffset 3 MiB */
	seal(h);
}

static struct vhdx_guid g(const char *s)
{
	struct vhdx_guid r;

	assert_int_equal(vhdx_guid_parse(s, &r), 0);
	return r;
}

static void test_parse_valid(void **state)
{
	uint8_t h[HSIZE];
	struct vhdx_header_info hi;
	struct vhdx_guid fw = g(FW_STR), dw = g(DW_STR), lg = g(LG_STR);

	(void)state;
	make_header(h, 0x0102030405060708ull, true);
	memset(&hi, 0xA5, sizeof(hi));
	assert_int_equal(vhdx_header_parse(h, &hi), 0);
	assert_true(hi.valid);
	assert_int_equal(hi.sequence, 0x0102030405060708ull);
	assert_true(vhdx_guid_equal(&hi.file_write_guid, &fw));
	assert_true(vhdx_guid_equal(&hi.data_write_guid, &dw));
	assert_true(vhdx_guid_equal(&hi.log_guid, &lg));
	assert_int_equal(hi.log_version, 0);
	assert_int_equal(hi.version, 1);
	assert_int_equal(hi.log_length, 1024 * 1024);
	assert_int_equal(hi.log_offset, 3ull * 1024 * 1024);

	make_header(h, 1, false);
	assert_int_equal(vhdx_header_parse(h, &hi), 0);
	assert_true(hi.valid);
	assert_true(vhdx_guid_is_zero(&hi.log_guid));
}

static void test_parse_bad_signature(void **state)
{
	static const char *const sigs[] = { "Head", "hea\0", "HEAD", "\0\0\0\0",
					    "daeh" };
	uint8_t h[HSIZE];
	struct vhdx_header_info hi;
	unsigned i;

	(void)state;
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		make_header(h, 5, false);
		memcpy(h, sigs[i], 4);
		seal(h); /* the checksum is right: only the signature is bad */
		memset(&hi, 0xA5, sizeof(hi));
		assert_int_equal(vhdx_header_parse(h, &hi), -EINVAL);
		assert_false(hi.valid);
	}
}

static void test_parse_bad_checksum(void **state)
{
	static const size_t flips[] = { 0 + 8, 16, 66, 79, 80, 2000, 4095 };
	uint8_t h[HSIZE];
	struct vhdx_header_info hi;
	unsigned i;

	(void)state;
	/* any byte of the 4 KiB is covered, reserved bytes included */
	for (i = 0; i < sizeof(flips) / sizeof(flips[0]); i++) {
		make_header(h, 5, true);
		h[flips[i]] ^= 0x10;
		memset(&hi, 0xA5, sizeof(hi));
		assert_int_equal(vhdx_header_parse(h, &hi), -EBADMSG);
		assert_false(hi.valid);
	}
	/* a wrong stored checksum */
	make_header(h, 5, true);
	h[4] ^= 1;
	assert_int_equal(vhdx_header_parse(h, &hi), -EBADMSG);
	assert_false(hi.valid);
	/* a zero checksum field is not "no checksum" */
	make_header(h, 5, true);
	memset(h + 4, 0, 4);
	assert_int_equal(vhdx_header_parse(h, &hi), -EBADMSG);
	/* bytes past 4 KiB are not part of the header */
	{
		uint8_t big[HSIZE + 64];

		make_header(big, 5, true);
		memset(big + HSIZE, 0x77, 64);
		assert_int_equal(vhdx_header_parse(big, &hi), 0);
	}
}

static struct vhdx_header_info hinfo(bool valid, uint64_t seq)
{
	struct vhdx_header_info h;

	memset(&h, 0, sizeof(h));
	h.valid = valid;
	h.sequence = seq;
	h.version = 1;
	return h;
}

static void test_select(void **state)
{
	struct vhdx_header_info a, b;
	const char *why;

	(void)state;
	/* greater sequence wins, on either side */
	a = hinfo(true, 10);
	b = hinfo(true, 11);
	why = NULL;
	assert_int_equal(vhdx_header_select(&a, &b, false, &why), 1);
	assert_int_equal(vhdx_header_select(&b, &a, false, &why), 0);
	a = hinfo(true, 0xFFFFFFFFFFFFFFFFull);
	b = hinfo(true, 0x7FFFFFFFFFFFFFFFull);
	assert_int_equal(vhdx_header_select(&a, &b, false, &why), 0);
	assert_int_equal(vhdx_header_select(&b, &a, false, &why), 1);

	/* only one valid: that one, whatever the sequence numbers say */
	a = hinfo(true, 3);
	b = hinfo(false, 100);
	assert_int_equal(vhdx_header_select(&a, &b, false, &why), 0);
	assert_int_equal(vhdx_header_select(&b, &a, false, &why), 1);

	/* none valid */
	a = hinfo(false, 3);
	b = hinfo(false, 4);
	why = NULL;
	assert_int_equal(vhdx_header_select(&a, &b, false, &why), -EINVAL);
	assert_non_null(why);
	assert_true(strlen(why) > 0);

	/* equal sequence numbers: accepted only when byte-identical */
	a = hinfo(true, 1);
	b = hinfo(true, 1);
	why = NULL;
	{
		int r = vhdx_header_select(&a, &b, true, &why);

		assert_true(r == 0 || r == 1);
	}
	why = NULL;
	assert_int_equal(vhdx_header_select(&a, &b, false, &why), -EINVAL);
	assert_non_null(why);

	/* equal sequence but only one valid is not a tie */
	a = hinfo(false, 7);
	b = hinfo(true, 7);
	assert_int_equal(vhdx_header_select(&a, &b, false, &why), 1);
}

static void test_build_matches_layout(void **state)
{
	uint8_t want[HSIZE], got[HSIZE];
	struct vhdx_header_info hi;

	(void)state;
	make_header(want, 0x1122334455667788ull, true);
	memset(&hi, 0, sizeof(hi));
	hi.valid = true;
	hi.sequence = 0x1122334455667788ull;
	hi.file_write_guid = g(FW_STR);
	hi.data_write_guid = g(DW_STR);
	hi.log_guid = g(LG_STR);
	hi.log_version = 0;
	hi.version = 1;
	hi.log_length = 1024 * 1024;
	hi.log_offset = 3ull * 1024 * 1024;
	memset(got, 0xCC,
	       sizeof(got)); /* the build must clear reserved bytes */
	vhdx_header_build(&hi, got);
	assert_memory_equal(got, want, HSIZE);
}

static void test_build_round_trip(void **state)
{
	uint8_t buf[HSIZE];
	struct vhdx_header_info in, out;
	unsigned i;

	(void)state;
	for (i = 0; i < 16; i++) {
		memset(&in, 0, sizeof(in));
		in.valid = true;
		in.sequence = 1ull << (i * 4);
		assert_int_equal(vhdx_guid_generate(&in.file_write_guid), 0);
		assert_int_equal(vhdx_guid_generate(&in.data_write_guid), 0);
		if (i & 1)
			assert_int_equal(vhdx_guid_generate(&in.log_guid), 0);
		in.log_version = 0;
		in.version = 1;
		in.log_length = (uint32_t)((i + 1) * 1024 * 1024);
		in.log_offset = (uint64_t)(i + 1) * 1024 * 1024 * 1024;
		vhdx_header_build(&in, buf);
		assert_memory_equal(buf, "head", 4);
		/* checked with the reference CRC, not the library's */
		{
			uint32_t stored = le32_get(buf + 4);

			memset(buf + 4, 0, 4);
			assert_int_equal(stored, ref_crc32c(buf, HSIZE));
			put32(buf + 4, stored);
		}
		memset(&out, 0, sizeof(out));
		assert_int_equal(vhdx_header_parse(buf, &out), 0);
		assert_true(out.valid);
		assert_int_equal(out.sequence, in.sequence);
		assert_true(vhdx_guid_equal(&out.file_write_guid,
					    &in.file_write_guid));
		assert_true(vhdx_guid_equal(&out.data_write_guid,
					    &in.data_write_guid));
		assert_true(vhdx_guid_equal(&out.log_guid, &in.log_guid));
		assert_int_equal(out.log_version, in.log_version);
		assert_int_equal(out.version, in.version);
		assert_int_equal(out.log_length, in.log_length);
		assert_int_equal(out.log_offset, in.log_offset);
	}
}

/* The usual update: build the other header with sequence + 1; selection
 * then picks it. */
static void test_update_then_select(void **state)
{
	uint8_t b1[HSIZE], b2[HSIZE];
	struct vhdx_header_info h1, h2, next;
	const char *why = NULL;

	(void)state;
	make_header(b1, 41, false);
	make_header(b2, 40, false);
	assert_int_equal(vhdx_header_parse(b1, &h1), 0);
	assert_int_equal(vhdx_header_parse(b2, &h2), 0);
	assert_int_equal(vhdx_header_select(&h1, &h2, false, &why), 0);
	next = h1;
	next.sequence++;
	next.log_guid = g(LG_STR);
	vhdx_header_build(&next, b2);
	assert_int_equal(vhdx_header_parse(b2, &h2), 0);
	assert_int_equal(vhdx_header_select(&h1, &h2, false, &why), 1);
	/* torn write of the new one: the old one stays current */
	b2[100] ^= 0xFF;
	assert_int_equal(vhdx_header_parse(b2, &h2), -EBADMSG);
	assert_int_equal(vhdx_header_select(&h1, &h2, false, &why), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_valid),
		cmocka_unit_test(test_parse_bad_signature),
		cmocka_unit_test(test_parse_bad_checksum),
		cmocka_unit_test(test_select),
		cmocka_unit_test(test_build_matches_layout),
		cmocka_unit_test(test_build_round_trip),
		cmocka_unit_test(test_update_then_select),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
