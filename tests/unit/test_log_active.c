/* SPDX-License-Identifier: MIT */
/*
 * test_log_active.c - unit tests of vhdx_log_find_active (MS-VHDX 2.3.3):
 * which sequence of hand-built log entries (log_entries.h) is the active
 * one, across wraps, gaps, stale entries and empty ones.
 */
#include "tests/unit/log_entries.h"

static const struct desc d_one_a[] = { { false, 1 * SEC, 0, 21 } };
static const struct desc d_one_b[] = { { false, 1 * SEC, 0, 22 } };
static const struct desc d_one_c[] = { { false, 2 * SEC, 0, 23 } };
static const struct desc d_one_d[] = { { false, 1 * SEC, 0, 24 } };

static struct entry one(uint64_t seq, uint32_t tail, const uint8_t *guid,
			const struct desc *d)
{
	return (struct entry){ seq, tail, guid, 1ull << 20, 2ull << 20, 1, d };
}

static void test_active_single(void **state)
{
	struct entry e = one(9, 3 * SEC, GUID_A, d_one_a);
	struct vhdx_log_seq seq;

	(void)state;
	e.flushed = 0x1234500000ull;
	e.last = 0x6789A00000ull;
	put_entry(lg, SMALL_LOG, 3 * SEC, &e);
	memset(&seq, 0xA5, sizeof(seq));
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.tail_off, 3 * SEC);
	assert_int_equal(seq.head_off, 3 * SEC);
	assert_int_equal(seq.count, 1);
	assert_int_equal(seq.head_sequence, 9);
	assert_int_equal(seq.flushed_file_offset, 0x1234500000ull);
	assert_int_equal(seq.last_file_offset, 0x6789A00000ull);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 1);
	expect_data_call(0, 1 * SEC, 21);
}

/* Three entries, the later ones rewriting the same sector: replay order
 * is the sequence order; FlushedFileOffset/LastFileOffset come from the
 * head. */
static void test_active_run_of_three(void **state)
{
	struct entry e1 = one(10, 0, GUID_A, d_one_a);
	struct entry e2 = one(11, 0, GUID_A, d_one_b);
	struct entry e3 = one(12, 0, GUID_A, d_one_c);
	struct vhdx_log_seq seq;
	uint32_t off = 0;

	(void)state;
	e3.flushed = 5ull << 20;
	e3.last = 6ull << 20;
	off += put_entry(lg, SMALL_LOG, off, &e1);
	off += put_entry(lg, SMALL_LOG, off, &e2);
	put_entry(lg, SMALL_LOG, off, &e3);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.tail_off, 0);
	assert_int_equal(seq.head_off, 4 * SEC);
	assert_int_equal(seq.count, 3);
	assert_int_equal(seq.head_sequence, 12);
	assert_int_equal(seq.flushed_file_offset, 5ull << 20);
	assert_int_equal(seq.last_file_offset, 6ull << 20);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 3);
	expect_data_call(0, 1 * SEC, 21);
	expect_data_call(1, 1 * SEC, 22);
	expect_data_call(2, 2 * SEC, 23);
}

/* Entries of an earlier log (another LogGuid) with higher sequence
 * numbers, and an older disconnected entry of this one. */
static void test_active_ignores_stale(void **state)
{
	struct entry e1 = one(10, 0, GUID_A, d_one_a);
	struct entry e2 = one(11, 0, GUID_A, d_one_b);
	struct entry s1 = one(50, 8 * SEC, GUID_B, d_one_c);
	struct entry s2 = one(51, 8 * SEC, GUID_B, d_one_d);
	struct entry old = one(3, 12 * SEC, GUID_A, d_one_d);
	struct vhdx_log_seq seq;

	(void)state;
	put_entry(lg, SMALL_LOG, 0, &e1);
	put_entry(lg, SMALL_LOG, 2 * SEC, &e2);
	put_entry(lg, SMALL_LOG, 8 * SEC, &s1);
	put_entry(lg, SMALL_LOG, 10 * SEC, &s2);
	put_entry(lg, SMALL_LOG, 12 * SEC, &old);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.tail_off, 0);
	assert_int_equal(seq.head_off, 2 * SEC);
	assert_int_equal(seq.count, 2);
	assert_int_equal(seq.head_sequence, 11);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 2);
	expect_data_call(0, 1 * SEC, 21);
	expect_data_call(1, 1 * SEC, 22);

	/* the same buffer read with the other LogGuid */
	rec_reset();
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_b, &seq), 0);
	assert_int_equal(seq.tail_off, 8 * SEC);
	assert_int_equal(seq.head_off, 10 * SEC);
	assert_int_equal(seq.count, 2);
	assert_int_equal(seq.head_sequence, 51);
}

/* A run that wraps around the end of the log, with an older run of the
 * same log left behind it. */
static void test_active_wraps(void **state)
{
	struct entry e20 = one(20, 12 * SEC, GUID_A, d_one_a);
	struct entry e21 = one(21, 12 * SEC, GUID_A, d_one_b);
	struct entry e22 = one(22, 12 * SEC, GUID_A, d_one_c);
	struct entry e23 = one(23, 12 * SEC, GUID_A, d_one_d);
	struct entry o16 = one(16, 4 * SEC, GUID_A, d_one_c);
	struct entry o17 = one(17, 4 * SEC, GUID_A, d_one_c);
	struct vhdx_log_seq seq;

	(void)state;
	put_entry(lg, SMALL_LOG, 4 * SEC, &o16);
	put_entry(lg, SMALL_LOG, 6 * SEC, &o17);
	put_entry(lg, SMALL_LOG, 12 * SEC, &e20);
	put_entry(lg, SMALL_LOG, 14 * SEC, &e21);
	put_entry(lg, SMALL_LOG, 0, &e22);
	put_entry(lg, SMALL_LOG, 2 * SEC, &e23);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.tail_off, 12 * SEC);
	assert_int_equal(seq.head_off, 2 * SEC);
	assert_int_equal(seq.count, 4);
	assert_int_equal(seq.head_sequence, 23);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 4);
	expect_data_call(0, 1 * SEC, 21);
	expect_data_call(1, 1 * SEC, 22);
	expect_data_call(2, 2 * SEC, 23);
	expect_data_call(3, 1 * SEC, 24);
}

/* A run whose entries themselves straddle the end of the log. */
static void test_active_entry_straddles_end(void **state)
{
	static const struct desc two[] = { { false, 8 * SEC, 0, 31 },
					   { false, 9 * SEC, 0, 32 } };
	struct entry a = { 40, 13 * SEC, GUID_A, 0, 0, 2, two };
	struct entry b = one(41, 13 * SEC, GUID_A, d_one_a);
	struct vhdx_log_seq seq;

	(void)state;
	put_entry(lg, SMALL_LOG, 13 * SEC, &a); /* sectors 13, 14, 15 */
	put_entry(lg, SMALL_LOG, 0, &b);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.count, 2);
	assert_int_equal(seq.tail_off, 13 * SEC);
	assert_int_equal(seq.head_off, 0);

	clear(NULL);
	b.tail = 14 * SEC;
	a.tail = 14 * SEC;
	put_entry(lg, SMALL_LOG, 14 * SEC, &a); /* sectors 14, 15, 0 */
	put_entry(lg, SMALL_LOG, 1 * SEC, &b);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.count, 2);
	assert_int_equal(seq.tail_off, 14 * SEC);
	assert_int_equal(seq.head_off, 1 * SEC);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 3);
	expect_data_call(0, 8 * SEC, 31);
	expect_data_call(1, 9 * SEC, 32);
	expect_data_call(2, 1 * SEC, 21);
}

static void test_active_gap(void **state)
{
	struct entry e5 = one(5, 0, GUID_A, d_one_a);
	struct entry e6 = one(6, 0, GUID_A, d_one_b);
	struct entry e8 = one(8, 4 * SEC, GUID_A, d_one_c);
	struct entry e7 = one(7, 0, GUID_A, d_one_b);
	struct vhdx_log_seq seq;
	int ret;

	(void)state;
	/* 5, 6 then a new run starting at 8 */
	put_entry(lg, SMALL_LOG, 0, &e5);
	put_entry(lg, SMALL_LOG, 2 * SEC, &e6);
	put_entry(lg, SMALL_LOG, 4 * SEC, &e8);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.head_sequence, 8);
	assert_int_equal(seq.count, 1);
	assert_int_equal(seq.tail_off, 4 * SEC);
	assert_int_equal(seq.head_off, 4 * SEC);

	/* 5 then 7 with its tail at 5: never replayed as one run across the
	 * missing 6 */
	clear(NULL);
	put_entry(lg, SMALL_LOG, 0, &e5);
	e7.seq = 7;
	put_entry(lg, SMALL_LOG, 2 * SEC, &e7);
	memset(&seq, 0, sizeof(seq));
	ret = vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq);
	if (ret == 0) {
		assert_false(seq.head_sequence == 7 && seq.count == 2);
		if (seq.head_sequence == 7)
			assert_int_equal(seq.tail_off, 2 * SEC);
	} else {
		assert_int_equal(ret, -ENOENT);
	}

	/* a head whose tail points at an empty sector */
	clear(NULL);
	e8.tail = 6 * SEC;
	put_entry(lg, SMALL_LOG, 4 * SEC, &e8);
	ret = vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq);
	assert_int_equal(ret, -ENOENT);
}

/* Windows writes entries with no descriptors. */
static void test_active_empty_entry(void **state)
{
	struct entry e30 = one(30, 0, GUID_A, d_one_a);
	struct entry e31 = { 31, 0, GUID_A, 7ull << 20, 8ull << 20, 0, NULL };
	struct vhdx_log_seq seq;

	(void)state;
	assert_int_equal(put_entry(lg, SMALL_LOG, 0, &e30), 2 * SEC);
	assert_int_equal(put_entry(lg, SMALL_LOG, 2 * SEC, &e31), SEC);
	assert_int_equal(check(SMALL_LOG, 2 * SEC, &guid_a), 0);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.head_sequence, 31);
	assert_int_equal(seq.count, 2);
	assert_int_equal(seq.tail_off, 0);
	assert_int_equal(seq.head_off, 2 * SEC);
	assert_int_equal(seq.last_file_offset, 8ull << 20);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 1);
	expect_data_call(0, 1 * SEC, 21);

	/* alone: a sequence that replays nothing */
	clear(NULL);
	e31.tail = 5 * SEC;
	put_entry(lg, SMALL_LOG, 5 * SEC, &e31);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.count, 1);
	assert_int_equal(seq.tail_off, 5 * SEC);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 0);
}

static void test_active_highest_wins(void **state)
{
	struct entry a3 = one(3, 0, GUID_A, d_one_a);
	struct entry a4 = one(4, 0, GUID_A, d_one_a);
	struct entry b9 = one(9, 6 * SEC, GUID_A, d_one_b);
	struct entry b10 = one(10, 6 * SEC, GUID_A, d_one_c);
	struct entry c7 = one(7, 12 * SEC, GUID_A, d_one_d);
	struct vhdx_log_seq seq;

	(void)state;
	put_entry(lg, SMALL_LOG, 0, &a3);
	put_entry(lg, SMALL_LOG, 2 * SEC, &a4);
	put_entry(lg, SMALL_LOG, 6 * SEC, &b9);
	put_entry(lg, SMALL_LOG, 8 * SEC, &b10);
	put_entry(lg, SMALL_LOG, 12 * SEC, &c7);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.head_sequence, 10);
	assert_int_equal(seq.count, 2);
	assert_int_equal(seq.tail_off, 6 * SEC);
	assert_int_equal(seq.head_off, 8 * SEC);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 2);
	expect_data_call(0, 1 * SEC, 22);
	expect_data_call(1, 2 * SEC, 23);

	/* a torn write of the newest entry: the run before it is active */
	rec_reset();
	lg[8 * SEC + SEC + 500] ^= 0xFF;
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.head_sequence, 9);
	assert_int_equal(seq.count, 1);
	assert_int_equal(seq.tail_off, 6 * SEC);
}

static void test_active_none(void **state)
{
	struct entry s = one(5, 0, GUID_B, d_one_a);
	struct vhdx_log_seq seq;
	uint32_t x = 2463534242u;
	unsigned i;

	(void)state;
	/* all zeros */
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq),
			 -ENOENT);
	assert_int_equal(vhdx_log_find_active(lg, BIG_LOG, &guid_a, &seq),
			 -ENOENT);
	/* garbage, with "loge" at every sector start */
	for (i = 0; i < BIG_LOG; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		lg[i] = (uint8_t)x;
	}
	for (i = 0; i < BIG_LOG; i += SEC) {
		memcpy(lg + i, "loge", 4);
		put32(lg + i + 8, SEC);
		put32(lg + i + 12, 0);
	}
	assert_int_equal(vhdx_log_find_active(lg, BIG_LOG, &guid_a, &seq),
			 -ENOENT);
	/* only another log's entries */
	clear(NULL);
	put_entry(lg, SMALL_LOG, 0, &s);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq),
			 -ENOENT);
}

#define T(f) cmocka_unit_test_setup(f, clear)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_active_single),
		T(test_active_run_of_three),
		T(test_active_ignores_stale),
		T(test_active_wraps),
		T(test_active_entry_straddles_end),
		T(test_active_gap),
		T(test_active_empty_entry),
		T(test_active_highest_wins),
		T(test_active_none),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
