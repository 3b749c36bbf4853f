/* SPDX-License-Identifier: MIT */
/*
 * blocks.h - compare-block arithmetic and extent merging, kept pure (no
 * I/O, no allocation beyond the caller's arrays) so the unit tests can
 * check the corner cases: the short last block of a disk whose size is not
 * a multiple of the block size, and runs of differing blocks merged into
 * sorted, non-overlapping extents.
 */
#ifndef HVRESYNC_URING_BLOCKS_H
#define HVRESYNC_URING_BLOCKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Smallest and largest compare block the tools accept. */
#define UR_MIN_BLOCK (4u << 10)
#define UR_MAX_BLOCK (4u << 20)

static inline bool ur_is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* Number of compare blocks covering SIZE bytes (the last may be short). */
static inline uint64_t ur_block_count(uint64_t size, uint32_t bs)
{
	return size / bs + (size % bs ? 1 : 0);
}

static inline uint64_t ur_block_off(uint64_t index, uint32_t bs)
{
	return index * bs;
}

/* Length of block INDEX of a SIZE-byte disk: BS, less for the last one,
 * 0 past the end. */
static inline uint32_t ur_block_len(uint64_t size, uint32_t bs, uint64_t index)
{
	uint64_t off = index * bs;

	if (off >= size)
		return 0;
	return size - off < bs ? (uint32_t)(size - off) : bs;
}

/* Clip [off, off + len) to a SIZE-byte disk; returns the clipped length. */
static inline uint64_t ur_clip(uint64_t size, uint64_t off, uint64_t len)
{
	if (off >= size)
		return 0;
	return size - off < len ? size - off : len;
}

/* --- extents ------------------------------------------------------------ */

struct ur_range {
	uint64_t off;
	uint64_t len;
};

/*
 * Streaming merge of ranges that arrive in ascending order (differing
 * compare blocks as a verify finds them): ur_acc_add() returns true and
 * fills *out with a finished extent when the new range does not touch the
 * pending one; ur_acc_flush() hands out the last one.  Nothing is kept but
 * the pending extent, so memory does not grow with the disk.
 */
struct ur_acc {
	struct ur_range cur;
	bool have;
	uint64_t count; /* extents handed out so far */
	uint64_t bytes; /* bytes in them */
};

static inline void ur_acc_init(struct ur_acc *a)
{
	a->have = false;
	a->count = 0;
	a->bytes = 0;
	a->cur.off = a->cur.len = 0;
}

static inline bool ur_acc_add(struct ur_acc *a, uint64_t off, uint64_t len,
			      struct ur_range *out)
{
	uint64_t end;

	if (!len)
		return false;
	if (a->have && off <= a->cur.off + a->cur.len) {
		/* Touches or overlaps the pending extent: grow it. */
		end = off + len;
		if (end > a->cur.off + a->cur.len)
			a->cur.len = end - a->cur.off;
		if (off < a->cur.off) {
			a->cur.len += a->cur.off - off;
			a->cur.off = off;
		}
		return false;
	}
	if (a->have) {
		*out = a->cur;
		a->count++;
		a->bytes += a->cur.len;
		a->cur.off = off;
		a->cur.len = len;
		return true;
	}
	a->have = true;
	a->cur.off = off;
	a->cur.len = len;
	return false;
}

static inline bool ur_acc_flush(struct ur_acc *a, struct ur_range *out)
{
	if (!a->have)
		return false;
	*out = a->cur;
	a->count++;
	a->bytes += a->cur.len;
	a->have = false;
	return true;
}

static inline int ur_range_cmp(const void *pa, const void *pb)
{
	const struct ur_range *a = pa, *b = pb;

	if (a->off != b->off)
		return a->off < b->off ? -1 : 1;
	if (a->len != b->len)
		return a->len < b->len ? -1 : 1;
	return 0;
}

/*
 * Sort V[0..N) and merge ranges that overlap or touch, dropping empty ones.
 * Returns the new count; the merged ranges are at the front of V.
 */
static inline size_t ur_ranges_merge(struct ur_range *v, size_t n)
{
	size_t i, out = 0;

	qsort(v, n, sizeof(*v), ur_range_cmp);
	for (i = 0; i < n; i++) {
		uint64_t end;

		if (!v[i].len)
			continue;
		if (out && v[i].off <= v[out - 1].off + v[out - 1].len) {
			end = v[i].off + v[i].len;
			if (end > v[out - 1].off + v[out - 1].len)
				v[out - 1].len = end - v[out - 1].off;
			continue;
		}
		v[out++] = v[i];
	}
	return out;
}

#endif
