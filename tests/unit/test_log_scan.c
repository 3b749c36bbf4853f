/* SPDX-License-Identifier: MIT */
/*
 * test_log_scan.c - what fuzz_vhdx found in the log search (vhdx/log.c):
 * it checked each 4 KiB offset's candidate entry by feeding its whole
 * length to CRC-32C and looked entries up by a linear search, so a
 * crafted log of a few MiB full of entry headers (each claiming the whole
 * log) kept an open busy for minutes to hours.  Now checksums come from
 * prefix sums in O(log n) and chains are walked within a budget; these
 * tests bound the time (an alarm fails them) and check the answers stay
 * right, also for an entry that wraps around the end of the log.
 *
 * And the in-memory replay of a read-only open: a zero descriptor of a
 * terabyte became one 4 KiB record per sector (hours and all memory);
 * now it is refused past a bound and a range goes in with one move.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "vhdx/internal.h"
#include "vhdx/le.h"

#define SEC 4096u
#define BIG (16u << 20) /* 4096 sectors */

static const struct vhdx_guid guid = {
	0x12345678, 0x9abc, 0xdef0, { 1, 2, 3, 4, 5, 6, 7, 8 }
};

static void too_slow(int sig)
{
	(void)sig;
	/* cmocka cannot fail from a handler; leave loudly. */
	static const char msg[] = "still busy after 20 s\n";
	(void)!write(2, msg, sizeof(msg) - 1);
	_exit(1);
}

/* A 1-sector entry (no descriptors) with sequence SEQ and TAIL at OFF. */
static void put_empty(uint8_t *log, uint32_t off, uint64_t seq, uint32_t tail)
{
	vhdx_log_entry_build(log + off, seq, tail, &guid, 0, 0, 0, NULL, NULL);
}

static void test_headers_everywhere_bad_checksums(void **state)
{
	uint8_t *log = calloc(1, BIG);
	struct vhdx_log_seq seq;
	uint32_t off;

	(void)state;
	assert_non_null(log);
	/* Every sector an entry header claiming the whole log, each with
	 * a checksum that does not match. */
	for (off = 0; off < BIG; off += SEC) {
		put_empty(log, off, 7, 0);
		le32_put(log + off + 8, BIG); /* entry length */
		le32_put(log + off + 4, 0xdeadbeef);
	}
	alarm(20);
	assert_int_equal(vhdx_log_find_active(log, BIG, &guid, &seq), -ENOENT);
	alarm(0);
	free(log);
}

static void test_chains_that_break_late(void **state)
{
	uint8_t *log = calloc(1, BIG);
	struct vhdx_log_seq seq;
	uint32_t i, n = BIG / SEC, mid = n / 2;
	int ret;

	(void)state;
	assert_non_null(log);
	/* Entries 1..n in order, every one naming sector 0 as its tail,
	 * but the one at mid has a sequence that breaks every chain through
	 * it: thousands of heads, each walking half the log. */
	for (i = 0; i < n; i++)
		put_empty(log, i * SEC, i == mid ? 1000000 : i + 1, 0);
	alarm(20);
	ret = vhdx_log_find_active(log, BIG, &guid, &seq);
	alarm(0);
	/* Either the search finds the run 1..mid (head at mid - 1) or it
	 * refuses the log as too damaged to search; never hangs. */
	if (ret == 0) {
		assert_int_equal(seq.head_off, (mid - 1) * SEC);
		assert_int_equal(seq.count, mid);
	} else {
		assert_int_equal(ret, -E2BIG);
	}
	free(log);
}

static void test_wrapping_entry_checksum(void **state)
{
	static const uint32_t len = 64 * 1024;
	uint8_t *log = calloc(1, len), *ent = calloc(1, 3 * SEC);
	uint8_t data[SEC];
	const uint8_t *pd[2] = { data, data };
	uint64_t foff[2] = { 1u << 20, 2u << 20 };
	struct vhdx_log_seq seq;
	uint32_t elen, k, at = len - SEC;

	(void)state;
	assert_non_null(log);
	assert_non_null(ent);
	memset(data, 0x5a, sizeof(data));
	elen = vhdx_log_entry_build(ent, 42, at, &guid, 0, 0, 2, foff, pd);
	assert_int_equal(elen, 3 * SEC);
	/* Header in the last sector, its two data sectors at the start. */
	for (k = 0; k < elen; k += SEC)
		memcpy(log + (at + k) % len, ent + k, SEC);
	assert_int_equal(vhdx_log_find_active(log, len, &guid, &seq), 0);
	assert_int_equal(seq.head_off, at);
	assert_int_equal(seq.head_sequence, 42);
	/* One bit off in a wrapped sector is noticed. */
	log[SEC + 100] ^= 1;
	assert_int_equal(vhdx_log_find_active(log, len, &guid, &seq), -ENOENT);
	free(ent);
	free(log);
}

static void test_zero_descriptor_of_a_terabyte(void **state)
{
	struct vhdx_overlay ov = { 0 };

	(void)state;
	alarm(20);
	assert_int_equal(vhdx_replay_to_memory(&ov, 1u << 20, NULL, 1ull << 40),
			 -E2BIG);
	alarm(0);
	assert_true(ov.count < 1u << 20);
	vhdx_overlay_free(&ov);
}

static void test_zero_range_over_data(void **state)
{
	struct vhdx_overlay ov = { 0 };
	uint8_t data[SEC];
	unsigned i;

	(void)state;
	memset(data, 0xab, sizeof(data));
	/* Data at sectors 10, 20, 30 and 200; zeros over 16..99. */
	assert_int_equal(vhdx_replay_to_memory(&ov, 200 * SEC, data, SEC), 0);
	assert_int_equal(vhdx_replay_to_memory(&ov, 10 * SEC, data, SEC), 0);
	assert_int_equal(vhdx_replay_to_memory(&ov, 30 * SEC, data, SEC), 0);
	assert_int_equal(vhdx_replay_to_memory(&ov, 20 * SEC, data, SEC), 0);
	assert_int_equal(vhdx_replay_to_memory(&ov, 16 * SEC, NULL, 84 * SEC),
			 0);
	/* 10, 16..99 (84 zero sectors), 200: sorted, one record each. */
	assert_int_equal(ov.count, 86);
	for (i = 1; i < ov.count; i++)
		assert_true(ov.off[i - 1] < ov.off[i]);
	assert_int_equal(ov.off[0], 10 * SEC);
	assert_int_equal(ov.data[0][0], 0xab);
	for (i = 1; i <= 84; i++) {
		assert_int_equal(ov.off[i], (15 + i) * SEC);
		assert_int_equal(ov.data[i][0], 0);
		assert_int_equal(ov.data[i][SEC - 1], 0);
	}
	assert_int_equal(ov.off[85], 200 * SEC);
	assert_int_equal(ov.data[85][SEC - 1], 0xab);
	/* More single sectors after the bulk insert keep the order. */
	for (i = 0; i < 40; i++)
		assert_int_equal(
			vhdx_replay_to_memory(&ov, (300 - i) * SEC, data, SEC),
			0);
	assert_int_equal(ov.count, 126);
	for (i = 1; i < ov.count; i++)
		assert_true(ov.off[i - 1] < ov.off[i]);
	vhdx_overlay_free(&ov);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_headers_everywhere_bad_checksums),
		cmocka_unit_test(test_chains_that_break_late),
		cmocka_unit_test(test_wrapping_entry_checksum),
		cmocka_unit_test(test_zero_descriptor_of_a_terabyte),
		cmocka_unit_test(test_zero_range_over_data),
	};

	signal(SIGALRM, too_slow);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
