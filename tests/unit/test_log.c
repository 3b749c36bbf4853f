/* SPDX-License-Identifier: MIT */
/*
 * test_log.c - unit tests of the VHDX log (MS-VHDX 2.3): entries are built
 * byte by byte here (header, zero and data descriptors, data sectors, own
 * CRC-32C) into a circular log buffer, then checked, searched for the
 * active sequence and replayed; vhdx_log_entry_build is compared with the
 * hand-built form.
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

#define SEC 4096u
#define SMALL_LOG (16 * SEC)
#define BIG_LOG (1024u * 1024u)

/* --- byte-level helpers ------------------------------------------------ */

/* Two LogGuids, in their stored form. */
static const uint8_t GUID_A[16] = { 0x10, 0x32, 0x54, 0x76, 0x98, 0xba,
				    0xdc, 0xfe, 0x01, 0x23, 0x45, 0x67,
				    0x89, 0xab, 0xcd, 0xef };
static const uint8_t GUID_B[16] = { 0xaa, 0xbb, 0xcc, 0xdd, 0x11, 0x22,
				    0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
				    0x99, 0x00, 0x12, 0x34 };
static struct vhdx_guid guid_a, guid_b;

/* The 4 KiB a data descriptor writes, from a seed: every byte differs
 * between seeds and between neighbouring positions. */
static void target(uint8_t *s, unsigned seed)
{
	unsigned i;

	for (i = 0; i < SEC; i++)
		s[i] = (uint8_t)(seed * 37 + i * 7 + (i >> 8) * 13 + 1);
	s[0] = (uint8_t)(0xA0 + seed); /* leading 8 bytes */
	s[7] = (uint8_t)(0xB0 + seed);
	s[4092] = (uint8_t)(0xC0 + seed); /* trailing 4 bytes */
	s[4095] = (uint8_t)(0xD0 + seed);
}

struct desc {
	bool zero;
	uint64_t file_off;
	uint64_t zero_len; /* zero descriptors */
	unsigned seed;     /* data descriptors: target(seed) */
};

struct entry {
	uint64_t seq;
	uint32_t tail;
	const uint8_t *guid;
	uint64_t flushed, last;
	unsigned n;
	const struct desc *d;
};

static uint32_t hdr_sectors(unsigned n)
{
	return (n + 2 + 127) / 128; /* 64-byte header = two 32-byte slots */
}

/* Lay ENTRY out linearly in BUF (zeroed by the caller); returns its
 * length.  Header fields at MS-VHDX 2.3.1.1 offsets, descriptors in
 * 32-byte slots after it, then one data sector per data descriptor. */
static uint32_t layout(uint8_t *buf, const struct entry *e)
{
	uint8_t t[SEC];
	uint32_t hs = hdr_sectors(e->n), nd = 0, len, crc;
	unsigned i;

	for (i = 0; i < e->n; i++)
		nd += !e->d[i].zero;
	len = (hs + nd) * SEC;
	memcpy(buf, "loge", 4);
	put32(buf + 8, len);
	put32(buf + 12, e->tail);
	put64(buf + 16, e->seq);
	put32(buf + 24, e->n);
	memcpy(buf + 32, e->guid, 16);
	put64(buf + 48, e->flushed);
	put64(buf + 56, e->last);
	nd = 0;
	for (i = 0; i < e->n; i++) {
		uint8_t *d = buf + 32 * (i + 2);

		if (e->d[i].zero) {
			memcpy(d, "zero", 4);
			put64(d + 8, e->d[i].zero_len);
		} else {
			uint8_t *s = buf + (hs + nd++) * SEC;

			target(t, e->d[i].seed);
			memcpy(d, "desc", 4);
			memcpy(d + 4, t + 4092, 4);
			memcpy(d + 8, t, 8);
			memcpy(s, "data", 4);
			put32(s + 4, (uint32_t)(e->seq >> 32));
			memcpy(s + 8, t + 8, 4084);
			put32(s + 4092, (uint32_t)e->seq);
		}
		put64(d + 16, e->d[i].file_off);
		put64(d + 24, e->seq);
	}
	crc = ref_crc32c_update(0xFFFFFFFFu, buf, len);
	put32(buf + 4, ~crc);
	return len;
}

/* Sector K of the entry at OFF in the circular log. */
static uint8_t *lsec(uint8_t *log, uint32_t log_len, uint32_t off, uint32_t k)
{
	return log + (off + (uint64_t)k * SEC) % log_len;
}

static uint32_t put_entry(uint8_t *log, uint32_t log_len, uint32_t off,
			  const struct entry *e)
{
	uint8_t *buf = calloc(1, BIG_LOG);
	uint32_t len, k;

	assert_non_null(buf);
	len = layout(buf, e);
	for (k = 0; k < len / SEC; k++)
		memcpy(lsec(log, log_len, off, k), buf + k * SEC, SEC);
	free(buf);
	return len;
}

/* Recompute the checksum of the entry at OFF after a deliberate change,
 * so that only the change is wrong. */
static void reseal(uint8_t *log, uint32_t log_len, uint32_t off,
		   uint32_t sectors)
{
	uint8_t *h = lsec(log, log_len, off, 0);
	uint32_t crc, k;

	memset(h + 4, 0, 4);
	crc = 0xFFFFFFFFu;
	for (k = 0; k < sectors; k++)
		crc = ref_crc32c_update(crc, lsec(log, log_len, off, k), SEC);
	put32(h + 4, ~crc);
}

/* Descriptor slot I of the entry at OFF. */
static uint8_t *dslot(uint8_t *log, uint32_t log_len, uint32_t off, unsigned i)
{
	return lsec(log, log_len, off, (i + 2) / 128) + 32 * ((i + 2) % 128);
}

/* --- replay recorder --------------------------------------------------- */

#define MAX_CALLS 512

static struct {
	unsigned n;
	uint64_t off[MAX_CALLS];
	uint64_t len[MAX_CALLS];
	uint8_t *data[MAX_CALLS]; /* NULL for zero ranges */
	unsigned fail_at;         /* return -EIO on this call (1-based) */
} rec;

static void rec_reset(void)
{
	unsigned i;

	for (i = 0; i < rec.n; i++)
		free(rec.data[i]);
	memset(&rec, 0, sizeof(rec));
}

static int record(void *ctx, uint64_t file_off, const uint8_t *data,
		  uint64_t len)
{
	assert_ptr_equal(ctx, &rec);
	assert_true(rec.n < MAX_CALLS);
	rec.off[rec.n] = file_off;
	rec.len[rec.n] = len;
	rec.data[rec.n] = NULL;
	if (data) {
		assert_int_equal(len, SEC);
		rec.data[rec.n] = malloc(SEC);
		assert_non_null(rec.data[rec.n]);
		memcpy(rec.data[rec.n], data, SEC);
	}
	rec.n++;
	if (rec.fail_at && rec.n == rec.fail_at)
		return -EIO;
	return 0;
}

/* Call I of the replay wrote target(SEED) at FILE_OFF. */
static void expect_data_call(unsigned i, uint64_t file_off, unsigned seed)
{
	uint8_t t[SEC];

	assert_true(i < rec.n);
	target(t, seed);
	assert_int_equal(rec.off[i], file_off);
	assert_int_equal(rec.len[i], SEC);
	assert_non_null(rec.data[i]);
	assert_memory_equal(rec.data[i], t, SEC);
}

static void expect_zero_call(unsigned i, uint64_t file_off, uint64_t len)
{
	assert_true(i < rec.n);
	assert_int_equal(rec.off[i], file_off);
	assert_int_equal(rec.len[i], len);
	assert_null(rec.data[i]);
}

/* --- fixtures ---------------------------------------------------------- */

static uint8_t *lg; /* BIG_LOG bytes; tests use the first SMALL_LOG or all */

static int setup(void **state)
{
	(void)state;
	vhdx_guid_from_le(GUID_A, &guid_a);
	vhdx_guid_from_le(GUID_B, &guid_b);
	lg = calloc(1, BIG_LOG);
	return lg ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	free(lg);
	rec_reset();
	return 0;
}

static int clear(void **state)
{
	(void)state;
	memset(lg, 0, BIG_LOG);
	rec_reset();
	return 0;
}

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
	struct entry e = { MIXED_SEQ, off, GUID_A, 100ull << 20,
			   200ull << 20, 3, mixed };

	return put_entry(lg, log_len, off, &e);
}

static int check(uint32_t log_len, uint32_t off, const struct vhdx_guid *g)
{
	struct vhdx_log_entry_hdr h;

	return vhdx_log_entry_check(lg, log_len, off, g, &h);
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
	assert_int_equal(vhdx_log_entry_check(lg, SMALL_LOG, MIXED_OFF,
					      &guid_a, &h), 0);
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
	static const uint32_t flips[] = { 4, 20, 60, 64 + 8, 2000, SEC + 8,
					  SEC + 3000, 3 * SEC - 1 };

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

/* --- vhdx_log_find_active ---------------------------------------------- */

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
	e = (struct entry){ 0x0000000500000009ull, at, GUID_A, 3ull << 20,
			    4ull << 30, count, d };
	want_len = layout(mine, &e);
	assert_int_equal(want_len, (hdr_sectors(count) + count) * SEC);
	assert_int_equal(vhdx_log_entry_size(count), want_len);

	memset(built, 0xEE, BIG_LOG);
	len = vhdx_log_entry_build(built, e.seq, at, &guid_a, e.flushed,
				   e.last, count, offs,
				   (const uint8_t *const *)data);
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
		T(test_active_single),
		T(test_active_run_of_three),
		T(test_active_ignores_stale),
		T(test_active_wraps),
		T(test_active_entry_straddles_end),
		T(test_active_gap),
		T(test_active_empty_entry),
		T(test_active_highest_wins),
		T(test_active_none),
		T(test_replay_order_and_zero),
		T(test_replay_stops_on_error),
		T(test_build),
		T(test_build_sequence),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
