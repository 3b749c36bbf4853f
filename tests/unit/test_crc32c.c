/* SPDX-License-Identifier: MIT */
/*
 * test_crc32c.c - unit tests of the CRC-32C used by every VHDX checksum:
 * published vectors (RFC 3720 B.4 and the "123456789" check value), a
 * bitwise reference implementation written here as the oracle, the
 * incremental form, and vhdx_checksum's skipping of the checksum field.
 * Where the CPU has a crc32 instruction vhdx_crc32c() uses it, so the
 * table path is checked against the reference on its own as well.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "vhdx/internal.h"
#include "tests/unit/oracle.h"

/* Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
static void test_known_vectors(void **state)
{
	uint8_t buf[32];
	unsigned i;

	(void)state;
	assert_int_equal(vhdx_crc32c("123456789", 9), 0xE3069283u);
	assert_int_equal(ref_crc32c("123456789", 9), 0xE3069283u);

	memset(buf, 0, sizeof(buf));
	assert_int_equal(vhdx_crc32c(buf, 32), 0x8A9136AAu);
	assert_int_equal(ref_crc32c(buf, 32), 0x8A9136AAu);

	memset(buf, 0xFF, sizeof(buf));
	assert_int_equal(vhdx_crc32c(buf, 32), 0x62A8AB43u);
	assert_int_equal(ref_crc32c(buf, 32), 0x62A8AB43u);

	for (i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	assert_int_equal(vhdx_crc32c(buf, 32), 0x46DD794Eu);
	assert_int_equal(ref_crc32c(buf, 32), 0x46DD794Eu);

	for (i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	assert_int_equal(vhdx_crc32c(buf, 32), 0x113FDB5Cu);
	assert_int_equal(ref_crc32c(buf, 32), 0x113FDB5Cu);
}

static void test_empty(void **state)
{
	(void)state;
	/* ~(~0) with no data */
	assert_int_equal(vhdx_crc32c("", 0), 0);
	assert_int_equal(vhdx_crc32c_update(0xFFFFFFFFu, "", 0), 0xFFFFFFFFu);
}

static uint32_t table_crc32c(const void *buf, size_t len)
{
	return ~vhdx_crc32c_table_update(0xFFFFFFFFu, buf, len);
}

/* Every length 0..300 and every start alignment 0..7 against the
 * reference, so the word-at-a-time path, the byte head and the byte
 * tail all run, in both paths. */
static void test_matches_reference(void **state)
{
	uint8_t *buf = malloc(300 + 8);
	size_t len, a;

	(void)state;
	assert_non_null(buf);
	fill_random(buf, 308, 12345);
	for (a = 0; a < 8; a++)
		for (len = 0; len <= 300; len++) {
			uint32_t want = ref_crc32c(buf + a, len);

			assert_int_equal(vhdx_crc32c(buf + a, len), want);
			assert_int_equal(table_crc32c(buf + a, len), want);
		}
	free(buf);
}

static void test_large_buffers(void **state)
{
	size_t len = 1024 * 1024 + 3;
	uint8_t *buf = malloc(len);

	(void)state;
	assert_non_null(buf);
	fill_random(buf, len, 777);
	assert_int_equal(vhdx_crc32c(buf, len), ref_crc32c(buf, len));
	assert_int_equal(table_crc32c(buf + 1, len - 1),
			 ref_crc32c(buf + 1, len - 1));
	assert_int_equal(vhdx_crc32c(buf + 1, len - 1),
			 ref_crc32c(buf + 1, len - 1));
	assert_int_equal(vhdx_crc32c(buf, 64 * 1024),
			 ref_crc32c(buf, 64 * 1024));
	assert_int_equal(vhdx_crc32c(buf, 4096), ref_crc32c(buf, 4096));
	free(buf);
}

static void test_incremental_equals_oneshot(void **state)
{
	uint8_t buf[200];
	uint32_t whole, crc;
	size_t cut, cut2;

	(void)state;
	fill_random(buf, sizeof(buf), 99);
	whole = vhdx_crc32c(buf, sizeof(buf));
	assert_int_equal(whole, ref_crc32c(buf, sizeof(buf)));
	for (cut = 0; cut <= sizeof(buf); cut++) {
		crc = vhdx_crc32c_update(0xFFFFFFFFu, buf, cut);
		crc = vhdx_crc32c_update(crc, buf + cut, sizeof(buf) - cut);
		assert_int_equal(~crc, whole);
	}
	/* three pieces */
	for (cut = 0; cut <= sizeof(buf); cut += 7)
		for (cut2 = cut; cut2 <= sizeof(buf); cut2 += 13) {
			crc = vhdx_crc32c_update(0xFFFFFFFFu, buf, cut);
			crc = vhdx_crc32c_update(crc, buf + cut, cut2 - cut);
			crc = vhdx_crc32c_update(crc, buf + cut2,
						 sizeof(buf) - cut2);
			assert_int_equal(~crc, whole);
		}
	/* byte by byte */
	crc = 0xFFFFFFFFu;
	for (cut = 0; cut < sizeof(buf); cut++)
		crc = vhdx_crc32c_update(crc, buf + cut, 1);
	assert_int_equal(~crc, whole);
}

/* vhdx_checksum must equal the CRC of the buffer with the 4-byte field
 * zeroed, whatever the field holds, and must not modify the buffer. */
static void test_checksum_skips_field(void **state)
{
	static const size_t offs[] = { 0, 4, 5, 8, 100, 4092 };
	uint8_t buf[4096], copy[4096], zeroed[4096];
	unsigned i;

	(void)state;
	for (i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		size_t off = offs[i];

		fill_random(buf, sizeof(buf), 1000 + i);
		memcpy(copy, buf, sizeof(buf));
		memcpy(zeroed, buf, sizeof(buf));
		memset(zeroed + off, 0, 4);
		assert_int_equal(vhdx_checksum(buf, sizeof(buf), off),
				 ref_crc32c(zeroed, sizeof(zeroed)));
		assert_memory_equal(buf, copy, sizeof(buf));

		/* a different value in the field changes nothing */
		buf[off] ^= 0x5A;
		buf[off + 3] ^= 0xA5;
		assert_int_equal(vhdx_checksum(buf, sizeof(buf), off),
				 ref_crc32c(zeroed, sizeof(zeroed)));
		/* a byte outside the field does */
		buf[(off + 4) % sizeof(buf)] ^= 1;
		assert_int_not_equal(vhdx_checksum(buf, sizeof(buf), off),
				     ref_crc32c(zeroed, sizeof(zeroed)));
	}
}

/* The way a VHDX header is checked: store the checksum at offset 4, then
 * the stored value equals vhdx_checksum of the whole block. */
static void test_checksum_store_and_verify(void **state)
{
	uint8_t *buf = malloc(64 * 1024);
	uint32_t c;

	(void)state;
	assert_non_null(buf);
	fill_random(buf, 64 * 1024, 4242);
	memset(buf + 4, 0, 4);
	c = ref_crc32c(buf, 64 * 1024);
	le32_put(buf + 4, c);
	assert_int_equal(vhdx_checksum(buf, 64 * 1024, 4), c);
	buf[65535] ^= 0x80;
	assert_int_not_equal(vhdx_checksum(buf, 64 * 1024, 4), c);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_vectors),
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_matches_reference),
		cmocka_unit_test(test_large_buffers),
		cmocka_unit_test(test_incremental_equals_oneshot),
		cmocka_unit_test(test_checksum_skips_field),
		cmocka_unit_test(test_checksum_store_and_verify),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
