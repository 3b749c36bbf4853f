/* SPDX-License-Identifier: MIT */
/*
 * test_log.c - unit tests of the VHDX log (MS-VHDX 2.3): entries built by
 * hand (log_entries.h) are checked and replayed, and vhdx_log_entry_build
 * is compared with the hand-built form.  Finding the active sequence is
 * tested in test_log_active.c.
 */
#include "tests/unit/log_entries.h"

/* An entry writing two sectors and zeroing a range, with a sequence
 * number whose two halves differ. */
static const struct desc mixed[] = {
	{ false, 5ull << 20, 0, 1 },
	{ true, 8ull << 20, 3 * SEC, 0 },
	{ false, (1ull << 32) + SEC, 0, 2 },
};
#define MIXED_SEQ 0x0000000100000002ull
#define MIXED_OFF (2 * SEC)

static uint32_t put_mixed(uint32_t log_len, uint32_t off)
{
	struct entry e = { MIXED_SEQ,	 off, GUID_A, 100ull << 20,
			   200ull << 20, 3,   mixed };

	return put_entry(lg, log_len, off, &e);
}

/* --- vhdx_log_entry_check ---------------------------------------------- */

static void test_check_good(void **state)
{
	struct vhdx_log_entry_hdr h;
	uint32_t len;

	(void)state;
	len = put_mixed(SMALL_LOG, MIXED_OFF);
	assert_int_equal(len, 3 * SEC);
	memset(&h, 0xA5, sizeof(h));
	assert_int_equal(
		vhdx_log_entry_check(lg, SMALL_LOG, MIXED_OFF, &guid_a, &h), 0);
	assert_int_equal(h.entry_length, 3 * SEC);
	assert_int_equal(h.tail, MIXED_OFF);
	assert_int_equal(h.sequence, MIXED_SEQ);
	assert_int_equal(h.descriptor_count, 3);
	assert_true(vhdx_guid_equal(&h.log_guid, &guid_a));
	assert_int_equal(h.flushed_file_offset, 100ull << 20);
	assert_int_equal(h.last_file_offset, 200ull << 20);
	assert_int_equal(h.checksum, get32(lg + MIXED_OFF + 4));
	/* nothing is an entry at the data sectors or in empty space */
	assert_int_equal(check(SMALL_LOG, MIXED_OFF + SEC, &guid_a), -EINVAL);
	assert_int_equal(check(SMALL_LOG, 0, &guid_a), -EINVAL);
}

static void test_check_bad_signature(void **state)
{
	(void)state;
	put_mixed(SMALL_LOG, MIXED_OFF);
	memcpy(lg + MIXED_OFF, "LOGE", 4);
	reseal(lg, SMALL_LOG, MIXED_OFF, 3);
	assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
}

static void test_check_bad_length(void **state)
{
	static const uint32_t lens[] = { 0, 3 * SEC + 512, 3 * SEC - 1, 100 };

	(void)state;
	for (unsigned i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		clear(NULL);
		put_mixed(SMALL_LOG, MIXED_OFF);
		put32(lg + MIXED_OFF + 8, lens[i]);
		reseal(lg, SMALL_LOG, MIXED_OFF, 3);
		assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
	}
	/* longer than the whole log */
	clear(NULL);
	put_mixed(SMALL_LOG, MIXED_OFF);
	put32(lg + MIXED_OFF + 8, SMALL_LOG + SEC);
	reseal(lg, SMALL_LOG, MIXED_OFF, 3);
	assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
	/* too short for its descriptors' data sectors */
	clear(NULL);
	put_mixed(SMALL_LOG, MIXED_OFF);
	put32(lg + MIXED_OFF + 8, 2 * SEC);
	reseal(lg, SMALL_LOG, MIXED_OFF, 2);
	assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
}

static void test_check_zero_sequence(void **state)
{
	static const struct desc one[] = { { false, SEC, 0, 3 } };
	struct entry e = { 0, 0, GUID_A, 0, 0, 1, one };

	(void)state;
	/* everything consistent, but sequence 0 */
	put_entry(lg, SMALL_LOG, 0, &e);
	assert_int_equal(check(SMALL_LOG, 0, &guid_a), -EINVAL);
	/* the same entry with sequence 1 is fine */
	e.seq = 1;
	put_entry(lg, SMALL_LOG, 0, &e);
	assert_int_equal(check(SMALL_LOG, 0, &guid_a), 0);
}

static void test_check_bad_checksum(void **state)
{
	static const uint32_t flips[] = {
		4, 20, 60, 64 + 8, 2000, SEC + 8, SEC + 3000, 3 * SEC - 1
	};

	(void)state;
	for (unsigned i = 0; i < sizeof(flips) / sizeof(flips[0]); i++) {
		clear(NULL);
		put_mixed(SMALL_LOG, MIXED_OFF);
		lg[MIXED_OFF + flips[i]] ^= 0x20;
		assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
	}
}

static void test_check_wrong_guid(void **state)
{
	struct vhdx_guid zero;

	(void)state;
	memset(&zero, 0, sizeof(zero));
	put_mixed(SMALL_LOG, MIXED_OFF);
	assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_b), -EINVAL);
	assert_int_equal(check(SMALL_LOG, MIXED_OFF, &zero), -EINVAL);
	assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), 0);
}

static void test_check_descriptor_sequence(void **state)
{
	(void)state;
	for (unsigned i = 0; i < 3; i++) { /* data, zero, data */
		clear(NULL);
		put_mixed(SMALL_LOG, MIXED_OFF);
		put64(dslot(lg, SMALL_LOG, MIXED_OFF, i) + 24, MIXED_SEQ + 1);
		reseal(lg, SMALL_LOG, MIXED_OFF, 3);
		assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
	}
}

static void test_check_unaligned_offset(void **state)
{
	static const uint64_t bad[] = { 512, 1, 4095, (5ull << 20) + 2048 };

	(void)state;
	for (unsigned i = 0; i < 3; i++)
		for (unsigned j = 0; j < sizeof(bad) / sizeof(bad[0]); j++) {
			clear(NULL);
			put_mixed(SMALL_LOG, MIXED_OFF);
			put64(dslot(lg, SMALL_LOG, MIXED_OFF, i) + 16, bad[j]);
			reseal(lg, SMALL_LOG, MIXED_OFF, 3);
			assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a),
					 -EINVAL);
		}
}

static void test_check_data_sector(void **state)
{
	(void)state;
	for (unsigned s = 1; s <= 2; s++) {
		uint8_t *d;

		/* high half */
		clear(NULL);
		put_mixed(SMALL_LOG, MIXED_OFF);
		d = lsec(lg, SMALL_LOG, MIXED_OFF, s);
		put32(d + 4, 0);
		reseal(lg, SMALL_LOG, MIXED_OFF, 3);
		assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
		/* low half */
		clear(NULL);
		put_mixed(SMALL_LOG, MIXED_OFF);
		d = lsec(lg, SMALL_LOG, MIXED_OFF, s);
		put32(d + 4092, 3);
		reseal(lg, SMALL_LOG, MIXED_OFF, 3);
		assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
		/* halves swapped */
		clear(NULL);
		put_mixed(SMALL_LOG, MIXED_OFF);
		d = lsec(lg, SMALL_LOG, MIXED_OFF, s);
		put32(d + 4, 2);
		put32(d + 4092, 1);
		reseal(lg, SMALL_LOG, MIXED_OFF, 3);
		assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
		/* signature */
		clear(NULL);
		put_mixed(SMALL_LOG, MIXED_OFF);
		d = lsec(lg, SMALL_LOG, MIXED_OFF, s);
		memcpy(d, "DATA", 4);
		reseal(lg, SMALL_LOG, MIXED_OFF, 3);
		assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
	}
}

/* A descriptor count the entry cannot hold, up to 2^32 - 1. */
static void test_check_descriptor_count(void **state)
{
	static const uint32_t counts[] = { 4, 127, 128 * 3, 0xFFFFFFFFu,
					   0xFFFFFF80u };

	(void)state;
	for (unsigned i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		clear(NULL);
		put_mixed(SMALL_LOG, MIXED_OFF);
		put32(lg + MIXED_OFF + 24, counts[i]);
		reseal(lg, SMALL_LOG, MIXED_OFF, 3);
		assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
	}
}

/* Arguments that do not name a sector of a well-formed log. */
static void test_check_bad_position(void **state)
{
	(void)state;
	put_mixed(SMALL_LOG, MIXED_OFF);
	assert_int_equal(check(SMALL_LOG, MIXED_OFF + 512, &guid_a), -EINVAL);
	assert_int_equal(check(SMALL_LOG, SMALL_LOG, &guid_a), -EINVAL);
	assert_int_equal(check(SMALL_LOG, SMALL_LOG + MIXED_OFF, &guid_a),
			 -EINVAL);
	assert_int_equal(check(0, 0, &guid_a), -EINVAL);
	{
		struct vhdx_log_seq seq;

		assert_int_equal(vhdx_log_find_active(lg, 0, &guid_a, &seq),
				 -ENOENT);
	}
}

/* A zero descriptor's ZeroLength is a multiple of 4 KiB. */
static void test_check_zero_length(void **state)
{
	(void)state;
	put_mixed(SMALL_LOG, MIXED_OFF);
	put64(dslot(lg, SMALL_LOG, MIXED_OFF, 1) + 8, 3 * SEC + 512);
	reseal(lg, SMALL_LOG, MIXED_OFF, 3);
	assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
}

static void test_check_descriptor_signature(void **state)
{
	(void)state;
	put_mixed(SMALL_LOG, MIXED_OFF);
	memcpy(dslot(lg, SMALL_LOG, MIXED_OFF, 1), "ZERO", 4);
	reseal(lg, SMALL_LOG, MIXED_OFF, 3);
	assert_int_equal(check(SMALL_LOG, MIXED_OFF, &guid_a), -EINVAL);
}

/* An entry that starts in the last sector and continues at the start. */
static void test_check_wraps(void **state)
{
	const uint32_t off = SMALL_LOG - SEC;
	struct vhdx_log_entry_hdr h;

	(void)state;
	put_mixed(SMALL_LOG, off);
	assert_int_equal(vhdx_log_entry_check(lg, SMALL_LOG, off, &guid_a, &h),
			 0);
	assert_int_equal(h.entry_length, 3 * SEC);
	/* the wrapped part is covered by the checksum */
	lg[SEC + 100] ^= 1;
	assert_int_equal(check(SMALL_LOG, off, &guid_a), -EINVAL);
}

/* 130 descriptors need two header sectors; data descriptors sit on both
 * sides of the sector boundary. */
static void test_check_two_header_sectors(void **state)
{
	struct desc *d = calloc(130, sizeof(*d));
	struct vhdx_log_seq seq;
	struct entry e;
	unsigned i;

	(void)state;
	assert_non_null(d);
	for (i = 0; i < 130; i++)
		d[i] = (struct desc){ true, (uint64_t)(i + 1) << 20, SEC, 0 };
	d[125] = (struct desc){ false, 7 * SEC, 0, 11 }; /* slot 127 */
	d[127] = (struct desc){ false, 9 * SEC, 0, 12 }; /* slot 129 */
	d[128] = (struct desc){ false, 3 * SEC, 0, 13 };
	d[129] = (struct desc){ false, 1 * SEC, 0, 14 };
	e = (struct entry){ 77, 0, GUID_A, 0, 1ull << 30, 130, d };
	assert_int_equal(put_entry(lg, SMALL_LOG, 0, &e), 6 * SEC);
	assert_int_equal(check(SMALL_LOG, 0, &guid_a), 0);

	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.count, 1);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 130);
	for (i = 0; i < 125; i++)
		expect_zero_call(i, (uint64_t)(i + 1) << 20, SEC);
	expect_data_call(125, 7 * SEC, 11);
	expect_zero_call(126, 127ull << 20, SEC);
	expect_data_call(127, 9 * SEC, 12);
	expect_data_call(128, 3 * SEC, 13);
	expect_data_call(129, 1 * SEC, 14);

	/* exactly 126 descriptors still fit one header sector */
	clear(NULL);
	for (i = 0; i < 126; i++)
		d[i] = (struct desc){ false, (uint64_t)i * SEC, 0, i };
	e = (struct entry){ 78, 0, GUID_A, 0, 0, 126, d };
	assert_int_equal(put_entry(lg, BIG_LOG, 0, &e), 127 * SEC);
	assert_int_equal(check(BIG_LOG, 0, &guid_a), 0);
	/* and 127 need two */
	clear(NULL);
	for (i = 0; i < 127; i++)
		d[i] = (struct desc){ false, (uint64_t)i * SEC, 0, i };
	e = (struct entry){ 79, 0, GUID_A, 0, 0, 127, d };
	assert_int_equal(put_entry(lg, BIG_LOG, 0, &e), 129 * SEC);
	assert_int_equal(check(BIG_LOG, 0, &guid_a), 0);
	assert_int_equal(vhdx_log_find_active(lg, BIG_LOG, &guid_a, &seq), 0);
	assert_int_equal(vhdx_log_replay(lg, BIG_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 127);
	expect_data_call(0, 0, 0);
	expect_data_call(125, 125 * SEC, 125);
	expect_data_call(126, 126 * SEC, 126);
	free(d);
}

/* --- vhdx_log_replay --------------------------------------------------- */

static void test_replay_order_and_zero(void **state)
{
	struct vhdx_log_seq seq;

	(void)state;
	put_mixed(SMALL_LOG, MIXED_OFF);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.head_sequence, MIXED_SEQ);
	assert_int_equal(seq.flushed_file_offset, 100ull << 20);
	assert_int_equal(seq.last_file_offset, 200ull << 20);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 3);
	expect_data_call(0, 5ull << 20, 1);
	expect_zero_call(1, 8ull << 20, 3 * SEC);
	expect_data_call(2, (1ull << 32) + SEC, 2);
}

static void test_replay_stops_on_error(void **state)
{
	struct vhdx_log_seq seq;

	(void)state;
	put_mixed(SMALL_LOG, MIXED_OFF);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	rec.fail_at = 2;
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec),
			 -EIO);
	assert_int_equal(rec.n, 2);
}

/* --- vhdx_log_entry_build ---------------------------------------------- */

static void build_case(unsigned count, uint32_t log_len, uint32_t at)
{
	uint8_t **data = calloc(count + 1, sizeof(*data));
	uint64_t *offs = calloc(count + 1, sizeof(*offs));
	struct desc *d = calloc(count + 1, sizeof(*d));
	uint8_t *mine = calloc(1, BIG_LOG), *built = malloc(BIG_LOG);
	struct vhdx_log_seq seq;
	struct entry e;
	uint32_t want_len, len, k;
	unsigned i;

	assert_non_null(data);
	assert_non_null(offs);
	assert_non_null(d);
	assert_non_null(mine);
	assert_non_null(built);
	for (i = 0; i < count; i++) {
		data[i] = malloc(SEC);
		assert_non_null(data[i]);
		target(data[i], 50 + i);
		offs[i] = (uint64_t)(3 + 2 * i) << 20;
		d[i] = (struct desc){ false, offs[i], 0, 50 + i };
	}
	e = (struct entry){ 0x0000000500000009ull,
			    at,
			    GUID_A,
			    3ull << 20,
			    4ull << 30,
			    count,
			    d };
	want_len = layout(mine, &e);
	assert_int_equal(want_len, (hdr_sectors(count) + count) * SEC);
	assert_int_equal(vhdx_log_entry_size(count), want_len);

	memset(built, 0xEE, BIG_LOG);
	len = vhdx_log_entry_build(built, e.seq, at, &guid_a, e.flushed, e.last,
				   count, offs, (const uint8_t *const *)data);
	assert_int_equal(len, want_len);
	assert_memory_equal(built, mine, len);

	/* into the log, where it checks and replays to the same sectors */
	memset(lg, 0, BIG_LOG);
	for (k = 0; k < len / SEC; k++)
		memcpy(lsec(lg, log_len, at, k), built + k * SEC, SEC);
	assert_int_equal(check(log_len, at, &guid_a), 0);
	assert_int_equal(vhdx_log_find_active(lg, log_len, &guid_a, &seq), 0);
	assert_int_equal(seq.count, 1);
	assert_int_equal(seq.tail_off, at);
	assert_int_equal(seq.head_sequence, e.seq);
	assert_int_equal(seq.flushed_file_offset, 3ull << 20);
	assert_int_equal(seq.last_file_offset, 4ull << 30);
	rec_reset();
	assert_int_equal(vhdx_log_replay(lg, log_len, &seq, record, &rec), 0);
	assert_int_equal(rec.n, count);
	for (i = 0; i < count; i++) {
		assert_int_equal(rec.off[i], offs[i]);
		assert_non_null(rec.data[i]);
		assert_memory_equal(rec.data[i], data[i], SEC);
	}
	rec_reset();

	for (i = 0; i < count; i++)
		free(data[i]);
	free(data);
	free(offs);
	free(d);
	free(mine);
	free(built);
}

static void test_build(void **state)
{
	(void)state;
	build_case(1, SMALL_LOG, 0);
	build_case(3, SMALL_LOG, 5 * SEC);
	build_case(3, SMALL_LOG, SMALL_LOG - 2 * SEC); /* wraps */
	build_case(0, SMALL_LOG, 7 * SEC);
	build_case(126, BIG_LOG, 0);
	build_case(127, BIG_LOG, 100 * SEC);
}

/* A run of built entries, each one's tail at the first. */
static void test_build_sequence(void **state)
{
	uint8_t s1[SEC], s2[SEC];
	const uint8_t *p1[1] = { s1 }, *p2[1] = { s2 };
	uint64_t o1 = 6ull << 20, o2 = 6ull << 20;
	struct vhdx_log_seq seq;
	uint32_t off = 10 * SEC, len;

	(void)state;
	target(s1, 61);
	target(s2, 62);
	len = vhdx_log_entry_build(lg + off, 1000, 10 * SEC, &guid_a, 0,
				   1ull << 30, 1, &o1, p1);
	off += len;
	len = vhdx_log_entry_build(lg + off, 1001, 10 * SEC, &guid_a, 0,
				   1ull << 30, 1, &o2, p2);
	assert_int_equal(vhdx_log_find_active(lg, SMALL_LOG, &guid_a, &seq), 0);
	assert_int_equal(seq.count, 2);
	assert_int_equal(seq.head_sequence, 1001);
	assert_int_equal(vhdx_log_replay(lg, SMALL_LOG, &seq, record, &rec), 0);
	assert_int_equal(rec.n, 2);
	expect_data_call(0, 6ull << 20, 61);
	expect_data_call(1, 6ull << 20, 62);
}

#define T(f) cmocka_unit_test_setup(f, clear)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_check_good),
		T(test_check_bad_signature),
		T(test_check_bad_length),
		T(test_check_zero_sequence),
		T(test_check_bad_checksum),
		T(test_check_wrong_guid),
		T(test_check_descriptor_sequence),
		T(test_check_unaligned_offset),
		T(test_check_data_sector),
		T(test_check_descriptor_signature),
		T(test_check_descriptor_count),
		T(test_check_bad_position),
		T(test_check_zero_length),
		T(test_check_wraps),
		T(test_check_two_header_sectors),
		T(test_replay_order_and_zero),
		T(test_replay_stops_on_error),
		T(test_build),
		T(test_build_sequence),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
