/* SPDX-License-Identifier: MIT */
/*
 * log_entries.h - what the VHDX log tests (test_log.c, test_log_active.c)
 * share: log entries built byte by byte from MS-VHDX 2.3 (header, zero
 * and data descriptors, data sectors, own CRC-32C) into a circular log
 * buffer, a recorder for what a replay writes, and the fixtures.
 */
#ifndef HVRESYNC_TEST_LOG_ENTRIES_H
#define HVRESYNC_TEST_LOG_ENTRIES_H

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
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
static inline void target(uint8_t *s, unsigned seed)
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
	unsigned seed;	   /* data descriptors: target(seed) */
};

struct entry {
	uint64_t seq;
	uint32_t tail;
	const uint8_t *guid;
	uint64_t flushed, last;
	unsigned n;
	const struct desc *d;
};

static inline uint32_t hdr_sectors(unsigned n)
{
	return (n + 2 + 127) / 128; /* 64-byte header = two 32-byte slots */
}

/* Lay ENTRY out linearly in BUF (zeroed by the caller); returns its
 * length.  Header fields at MS-VHDX 2.3.1.1 offsets, descriptors in
 * 32-byte slots after it, then one data sector per data descriptor. */
static inline uint32_t layout(uint8_t *buf, const struct entry *e)
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
static inline uint8_t *lsec(uint8_t *log, uint32_t log_len, uint32_t off,
			    uint32_t k)
{
	return log + (off + (uint64_t)k * SEC) % log_len;
}

static inline uint32_t put_entry(uint8_t *log, uint32_t log_len, uint32_t off,
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
static inline void reseal(uint8_t *log, uint32_t log_len, uint32_t off,
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
static inline uint8_t *dslot(uint8_t *log, uint32_t log_len, uint32_t off,
			     unsigned i)
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
	unsigned fail_at;	  /* return -EIO on this call (1-based) */
} rec;

static inline void rec_reset(void)
{
	unsigned i;

	for (i = 0; i < rec.n; i++)
		free(rec.data[i]);
	memset(&rec, 0, sizeof(rec));
}

static inline int record(void *ctx, uint64_t file_off, const uint8_t *data,
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
static inline void expect_data_call(unsigned i, uint64_t file_off,
				    unsigned seed)
{
	uint8_t t[SEC];

	assert_true(i < rec.n);
	target(t, seed);
	assert_int_equal(rec.off[i], file_off);
	assert_int_equal(rec.len[i], SEC);
	assert_non_null(rec.data[i]);
	assert_memory_equal(rec.data[i], t, SEC);
}

static inline void expect_zero_call(unsigned i, uint64_t file_off, uint64_t len)
{
	assert_true(i < rec.n);
	assert_int_equal(rec.off[i], file_off);
	assert_int_equal(rec.len[i], len);
	assert_null(rec.data[i]);
}

/* --- fixtures ---------------------------------------------------------- */

static uint8_t *lg; /* BIG_LOG bytes; tests use the first SMALL_LOG or all */

static inline int setup(void **state)
{
	(void)state;
	vhdx_guid_from_le(GUID_A, &guid_a);
	vhdx_guid_from_le(GUID_B, &guid_b);
	lg = calloc(1, BIG_LOG);
	return lg ? 0 : -1;
}

static inline int teardown(void **state)
{
	(void)state;
	free(lg);
	rec_reset();
	return 0;
}

static inline int clear(void **state)
{
	(void)state;
	memset(lg, 0, BIG_LOG);
	rec_reset();
	return 0;
}

static inline int check(uint32_t log_len, uint32_t off,
			const struct vhdx_guid *g)
{
	struct vhdx_log_entry_hdr h;

	return vhdx_log_entry_check(lg, log_len, off, g, &h);
}

#endif
