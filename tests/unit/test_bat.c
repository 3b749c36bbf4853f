/* SPDX-License-Identifier: MIT */
/*
 * test_bat.c - unit tests of the BAT arithmetic (MS-VHDX 2.5): chunk
 * ratio, where payload and sector-bitmap entries sit, how many entries a
 * disk has, and the packing of state and file offset in an entry.
 * Expected values are the spec's worked numbers or counted by walking the
 * interleaved layout here, not derived from the functions under test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "vhdx/internal.h"

#define M (1024u * 1024u)

static void test_chunk_ratio(void **state)
{
	(void)state;
	/* 2^23 * logical sector size / block size */
	assert_int_equal(vhdx_chunk_ratio(32 * M, 512), 128);
	assert_int_equal(vhdx_chunk_ratio(2 * M, 512), 2048);
	assert_int_equal(vhdx_chunk_ratio(1 * M, 512), 4096);
	assert_int_equal(vhdx_chunk_ratio(1 * M, 4096), 32768);
	assert_int_equal(vhdx_chunk_ratio(256 * M, 512), 16);
	assert_int_equal(vhdx_chunk_ratio(256 * M, 4096), 128);
	assert_int_equal(vhdx_chunk_ratio(32 * M, 4096), 1024);
}

static void test_payload_blocks(void **state)
{
	(void)state;
	assert_int_equal(vhdx_payload_blocks(1, 32 * M), 1);
	assert_int_equal(vhdx_payload_blocks(512, 32 * M), 1);
	assert_int_equal(vhdx_payload_blocks(32 * M, 32 * M), 1);
	assert_int_equal(vhdx_payload_blocks(32 * M + 512, 32 * M), 2);
	assert_int_equal(vhdx_payload_blocks(10ull << 30, 32 * M), 320);
	/* 64 TiB in 1 MiB blocks: no 32-bit overflow */
	assert_int_equal(vhdx_payload_blocks(64ull << 40, 1 * M), 64ull << 20);
	assert_int_equal(vhdx_payload_blocks((64ull << 40) - 512, 1 * M),
			 64ull << 20);
}

/*
 * Walk the BAT as 2.5 describes it: chunk_ratio payload entries, then one
 * sector-bitmap entry, repeated.  Records where payload j and bitmap c
 * land.
 */
static void walk_layout(uint64_t cr, uint64_t n_entries, uint64_t *payload,
			uint64_t n_payload, uint64_t *bitmap, uint64_t n_bitmap)
{
	uint64_t i, j = 0, c = 0, in_chunk = 0;

	for (i = 0; i < n_entries; i++) {
		if (in_chunk == cr) {
			if (c < n_bitmap)
				bitmap[c] = i;
			c++;
			in_chunk = 0;
		} else {
			if (j < n_payload)
				payload[j] = i;
			j++;
			in_chunk++;
		}
	}
}

static void test_payload_and_bitmap_index(void **state)
{
	static const uint64_t ratios[] = { 1, 2, 3, 16, 128 };
	uint64_t payload[600], bitmap[600];
	unsigned r;
	uint64_t j, c;

	(void)state;
	/* worked values, chunk ratio 128 (32 MiB blocks, 512-byte sectors) */
	assert_int_equal(vhdx_bat_payload_index(0, 128), 0);
	assert_int_equal(vhdx_bat_payload_index(127, 128), 127);
	assert_int_equal(vhdx_bat_payload_index(128, 128), 129);
	assert_int_equal(vhdx_bat_payload_index(255, 128), 256);
	assert_int_equal(vhdx_bat_payload_index(256, 128), 258);
	assert_int_equal(vhdx_bat_bitmap_index(0, 128), 128);
	assert_int_equal(vhdx_bat_bitmap_index(1, 128), 257);
	assert_int_equal(vhdx_bat_bitmap_index(2, 128), 386);
	/* chunk ratio 2048 */
	assert_int_equal(vhdx_bat_payload_index(2048, 2048), 2049);
	assert_int_equal(vhdx_bat_bitmap_index(0, 2048), 2048);
	assert_int_equal(vhdx_bat_bitmap_index(3, 2048), 3 * 2049 + 2048);

	for (r = 0; r < sizeof(ratios) / sizeof(ratios[0]); r++) {
		uint64_t cr = ratios[r];

		walk_layout(cr, 600, payload, 600, bitmap, 600);
		for (j = 0; vhdx_bat_payload_index(j, cr) < 600; j++)
			assert_int_equal(vhdx_bat_payload_index(j, cr),
					 payload[j]);
		for (c = 0; vhdx_bat_bitmap_index(c, cr) < 600; c++)
			assert_int_equal(vhdx_bat_bitmap_index(c, cr),
					 bitmap[c]);
	}
}

/* Entries a disk of N payload blocks needs, counted by walking: a
 * non-differencing disk stops after its last payload entry; a
 * differencing one has every chunk complete with its bitmap entry. */
static uint64_t count_entries(uint64_t n, uint64_t cr, bool diff)
{
	uint64_t i = 0, j = 0, in_chunk = 0, last = 0;

	if (n == 0)
		return 0;
	while (j < n) {
		if (in_chunk == cr) {
			in_chunk = 0;
		} else {
			j++;
			in_chunk++;
			last = i;
		}
		i++;
	}
	if (!diff)
		return last + 1;
	/* complete the chunk: pad to cr payload slots, then its bitmap */
	return last + 1 + (cr - in_chunk) + 1;
}

static void test_entry_count(void **state)
{
	static const uint64_t ratios[] = { 1, 2, 5, 128, 2048 };
	unsigned r;
	uint64_t n;

	(void)state;
	/* worked values */
	assert_int_equal(vhdx_bat_entry_count(1, 128, false), 1);
	assert_int_equal(vhdx_bat_entry_count(1, 128, true), 129);
	assert_int_equal(vhdx_bat_entry_count(128, 128, false), 128);
	assert_int_equal(vhdx_bat_entry_count(128, 128, true), 129);
	assert_int_equal(vhdx_bat_entry_count(129, 128, false), 130);
	assert_int_equal(vhdx_bat_entry_count(129, 128, true), 258);
	assert_int_equal(vhdx_bat_entry_count(256, 128, false), 257);
	assert_int_equal(vhdx_bat_entry_count(256, 128, true), 258);
	/* 10 GiB, 32 MiB blocks: 320 blocks, 3 chunks */
	assert_int_equal(vhdx_bat_entry_count(320, 128, false), 322);
	assert_int_equal(vhdx_bat_entry_count(320, 128, true), 387);
	/* 64 TiB with 1 MiB blocks and 512-byte sectors */
	assert_int_equal(vhdx_bat_entry_count(64ull << 20, 4096, false),
			 (64ull << 20) + (64ull << 20) / 4096 - 1);
	assert_int_equal(vhdx_bat_entry_count(64ull << 20, 4096, true),
			 (64ull << 20) / 4096 * 4097);

	for (r = 0; r < sizeof(ratios) / sizeof(ratios[0]); r++) {
		uint64_t cr = ratios[r];

		for (n = 1; n <= 3 * cr + 2 && n < 7000; n++) {
			assert_int_equal(vhdx_bat_entry_count(n, cr, false),
					 count_entries(n, cr, false));
			assert_int_equal(vhdx_bat_entry_count(n, cr, true),
					 count_entries(n, cr, true));
		}
	}
}

static void test_entry_fields(void **state)
{
	uint64_t e;

	(void)state;
	/* state in bits 0-2, FileOffsetMB in bits 20-63 */
	e = (3ull << 20) | 6;
	assert_int_equal(vhdx_bat_state(e), 6);
	assert_int_equal(vhdx_bat_file_offset(e), 3ull * M);

	/* reserved bits 3-19 ignored */
	e = (5ull << 20) | 0xFFFF8ull | 7;
	assert_int_equal(vhdx_bat_state(e), 7);
	assert_int_equal(vhdx_bat_file_offset(e), 5ull * M);

	e = 0xFFFFFFFFFFFFFFFFull;
	assert_int_equal(vhdx_bat_state(e), 7);
	assert_int_equal(vhdx_bat_file_offset(e), 0xFFFFFFFFFFF00000ull);

	assert_int_equal(vhdx_bat_state(0), VHDX_PAYLOAD_NOT_PRESENT);
	assert_int_equal(vhdx_bat_file_offset(0), 0);
	assert_int_equal(vhdx_bat_state(2), VHDX_PAYLOAD_ZERO);
	assert_int_equal(vhdx_bat_state(3), VHDX_PAYLOAD_UNMAPPED);
	assert_int_equal(vhdx_bat_state(5), VHDX_PAYLOAD_UNMAPPED_V1);
}

static void test_make(void **state)
{
	static const uint64_t offs[] = { 0, 1ull * M, 3ull * M,
					 (1ull << 40) + 7 * M,
					 0xFFFFFFFFFFF00000ull };
	unsigned s, i;

	(void)state;
	assert_int_equal(vhdx_bat_make(6, 3ull * M), (3ull << 20) | 6);
	assert_int_equal(vhdx_bat_make(0, 0), 0);
	assert_int_equal(vhdx_bat_make(2, 0), 2);
	for (s = 0; s < 8; s++)
		for (i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
			uint64_t e = vhdx_bat_make(s, offs[i]);

			assert_int_equal(e, offs[i] | s);
			assert_int_equal(vhdx_bat_state(e), s);
			assert_int_equal(vhdx_bat_file_offset(e), offs[i]);
			/* reserved bits stay clear */
			assert_int_equal(e & 0xFFFF8ull, 0);
		}
}

static void test_state_names(void **state)
{
	unsigned s;

	(void)state;
	for (s = 0; s < 8; s++)
		assert_non_null(vhdx_payload_state_name(s));
	assert_string_not_equal(vhdx_payload_state_name(0),
				vhdx_payload_state_name(6));
	assert_string_not_equal(vhdx_payload_state_name(6),
				vhdx_payload_state_name(7));
	assert_non_null(vhdx_type_name(VHDX_TYPE_FIXED));
	assert_non_null(vhdx_type_name(VHDX_TYPE_DYNAMIC));
	assert_non_null(vhdx_type_name(VHDX_TYPE_DIFFERENCING));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chunk_ratio),
		cmocka_unit_test(test_payload_blocks),
		cmocka_unit_test(test_payload_and_bitmap_index),
		cmocka_unit_test(test_entry_count),
		cmocka_unit_test(test_entry_fields),
		cmocka_unit_test(test_make),
		cmocka_unit_test(test_state_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
