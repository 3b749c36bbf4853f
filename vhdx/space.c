/* SPDX-License-Identifier: MIT */
/*
 * space.c - what merging a child into its parent will take of the
 * parent's filesystem, worked out before anything is written, so that a
 * merge that cannot finish is refused instead of stopping half way with
 * ENOSPC (a half-merged parent is neither the old disk nor the new one).
 *
 * The count follows what write.c will do with each run the merge copies
 * (merge.c's copy_runs): a write into an allocated block takes space only
 * where the file has a hole there; a new block is appended sparsely, so it
 * takes the bytes written into it, not the whole block; whole blocks of
 * zeros become ZERO entries and take nothing.  Added: holes in the log (it
 * is written in place) and in the BAT sectors that change, a new sector
 * bitmap per chunk of a differencing parent, and a margin for the
 * filesystem's own metadata.  The unreferenced tail the writer cuts off at
 * its first write (write.c) counts as free.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "internal.h"

struct tally {
	struct vhdx_image *parent;
	uint64_t unit;	       /* filesystem block */
	uint8_t *fresh;	       /* parent blocks that get new space */
	uint8_t *fresh_bitmap; /* chunks that get a new sector bitmap */
	uint64_t last_bat_sector;
	uint64_t bytes;
	/* The parent's data run the last lookup found, [data_lo, data_hi):
	 * a merge's pieces are sorted, and most fall into allocated blocks
	 * that are one run, so most need no lseek at all. */
	uint64_t data_lo, data_hi;
};

static bool test_and_set(uint8_t *set, uint64_t i)
{
	bool was = set[i >> 3] & (1u << (i & 7));

	set[i >> 3] |= (uint8_t)(1u << (i & 7));
	return was;
}

/* Bytes of [off, off + len) of FD that are holes (past the end included):
 * what writing all of it would take.  An lseek that fails for another
 * reason than "no more data" counts as a hole: better to refuse a merge
 * than to start one that cannot finish. */
static uint64_t holes(int fd, uint64_t off, uint64_t len)
{
	uint64_t pos = off, end = off + len, sum = 0;
	off_t d, h;

	while (pos < end) {
		d = lseek(fd, (off_t)pos, SEEK_DATA);
		if (d < 0 || (uint64_t)d >= end) {
			sum += end - pos;
			break;
		}
		sum += (uint64_t)d - pos;
		h = lseek(fd, d, SEEK_HOLE);
		if (h < 0)
			break; /* data to the end: nothing more to count */
		pos = (uint64_t)h;
	}
	return sum;
}

/* holes() of the parent, through the tally's memory of its last data run. */
static uint64_t parent_holes(struct tally *t, uint64_t off, uint64_t len)
{
	int fd = t->parent->fd;
	off_t d, h;

	if (off >= t->data_lo && off + len <= t->data_hi)
		return 0;
	d = lseek(fd, (off_t)off, SEEK_DATA);
	if (d >= 0 && (uint64_t)d == off) {
		h = lseek(fd, d, SEEK_HOLE);
		if (h > d) {
			t->data_lo = (uint64_t)d;
			t->data_hi = (uint64_t)h;
			if (off + len <= t->data_hi)
				return 0;
		}
	}
	return holes(fd, off, len);
}

/* LEN bytes at IN_BLOCK of a new, sparse block: the filesystem blocks they
 * touch (a new block starts 1 MiB aligned). */
static uint64_t rounded(const struct tally *t, uint64_t in_block, uint64_t len)
{
	uint64_t a = in_block / t->unit * t->unit;
	uint64_t b = (in_block + len + t->unit - 1) / t->unit * t->unit;

	return b - a;
}

/* The BAT sector holding entry IDX changes: space if it is a hole. */
static void bat_sector(struct tally *t, uint64_t idx)
{
	const struct vhdx_info *in = &t->parent->info;
	uint64_t s =
		(in->bat_offset + idx * 8) / VHDX_LOG_SECTOR * VHDX_LOG_SECTOR;

	if (s == t->last_bat_sector)
		return;
	t->last_bat_sector = s;
	t->bytes += parent_holes(t, s, VHDX_LOG_SECTOR);
}

/* A new block J of the parent (once) and, for a partial write into a
 * differencing parent, its chunk's sector bitmap. */
static void new_block(struct tally *t, uint64_t j, bool partial)
{
	const struct vhdx_info *in = &t->parent->info;
	uint64_t cr = in->chunk_ratio, c = j / cr;

	if (!test_and_set(t->fresh, j))
		bat_sector(t, vhdx_bat_payload_index(j, cr));
	if (!partial || !in->has_parent)
		return;
	if (vhdx_bat_state(t->parent->bat[vhdx_bat_bitmap_index(c, cr)]) ==
	    VHDX_SB_STATE_PRESENT)
		return;
	if (!test_and_set(t->fresh_bitmap, c)) {
		t->bytes += VHDX_SECTOR_BITMAP_SIZE;
		bat_sector(t, vhdx_bat_bitmap_index(c, cr));
	}
}

/* N bytes at virtual OFF, inside one parent block, written with data or
 * (ZERO) zeros, as write.c's write_block() will. */
static void piece(struct tally *t, uint64_t off, uint64_t n, bool zero)
{
	const struct vhdx_info *in = &t->parent->info;
	uint64_t bs = in->block_size, j = off / bs, in_block = off % bs;
	uint64_t idx = vhdx_bat_payload_index(j, in->chunk_ratio);
	uint64_t e = t->parent->bat[idx], blen;
	unsigned st = vhdx_bat_state(e);
	bool whole;

	blen = in->virtual_size - j * bs < bs ? in->virtual_size - j * bs : bs;
	whole = in_block == 0 && n == blen;
	if (t->fresh[j >> 3] & (1u << (j & 7))) {
		/* new earlier in this merge: written in place now */
		t->bytes += rounded(t, in_block, n);
		return;
	}
	switch (st) {
	case VHDX_PAYLOAD_FULLY_PRESENT:
	case VHDX_PAYLOAD_PARTIALLY_PRESENT:
		if (zero && whole && !in->leave_blocks_allocated) {
			bat_sector(t, idx);
			return;
		}
		t->bytes +=
			parent_holes(t, vhdx_bat_file_offset(e) + in_block, n);
		if (st == VHDX_PAYLOAD_PARTIALLY_PRESENT && whole)
			bat_sector(t, idx);
		return;
	case VHDX_PAYLOAD_NOT_PRESENT:
	case VHDX_PAYLOAD_UNDEFINED:
		if (in->has_parent) {
			if (zero && whole) {
				bat_sector(t, idx);
				return;
			}
			new_block(t, j, !whole);
			t->bytes += rounded(t, in_block, n);
			return;
		}
		/* reads as zeros without a parent, like the states below */
		__attribute__((fallthrough));
	default: /* ZERO, UNMAPPED */
		if (zero)
			return;
		new_block(t, j, false);
		t->bytes += rounded(t, in_block, n);
	}
}

/* A run of the child, cut at the parent's block edges. */
static void run(struct tally *t, uint64_t off, uint64_t len, bool zero)
{
	uint64_t bs = t->parent->info.block_size, n;

	while (len) {
		n = bs - off % bs < len ? bs - off % bs : len;
		piece(t, off, n, zero);
		off += n;
		len -= n;
	}
}

int vhdx_merge_space(struct vhdx_image *child, struct vhdx_image *parent,
		     struct vhdx_space *sp)
{
	const struct vhdx_info *pi = &parent->info;
	const struct vhdx_header_info *h = &pi->header[pi->current_header];
	struct tally t = { .parent = parent, .last_bat_sector = UINT64_MAX };
	struct vhdx_map_iter it;
	struct vhdx_extent e;
	struct statvfs vfs;
	struct stat st;
	uint64_t end, chunks, size;
	int ret;

	sp->known = false;
	sp->need = sp->free = 0;
	/* A block device does not grow, and statvfs of one says nothing
	 * about it. */
	if (fstat(parent->fd, &st))
		return -errno;
	if (!S_ISREG(st.st_mode))
		return 0;
	if (fstatvfs(parent->fd, &vfs))
		return -errno;
	t.unit = vfs.f_frsize ? vfs.f_frsize : 4096;
	chunks = (pi->payload_blocks + pi->chunk_ratio - 1) / pi->chunk_ratio;
	t.fresh = calloc((pi->payload_blocks + 7) / 8 + 1, 1);
	t.fresh_bitmap = calloc((chunks + 7) / 8 + 1, 1);
	if (!t.fresh || !t.fresh_bitmap) {
		ret = -ENOMEM;
		goto out;
	}
	vhdx_map_iter_init(&it, child, 0, child->info.virtual_size,
			   VHDX_MAP_NO_RESOLVE);
	while ((ret = vhdx_map_next(&it, &e)) > 0) {
		if (e.kind == VHDX_EXT_DATA || e.kind == VHDX_EXT_MEM)
			run(&t, e.off, e.len, false);
		else if (e.kind == VHDX_EXT_ZERO)
			run(&t, e.off, e.len, true);
	}
	if (ret < 0)
		goto out;
	if (h->log_length)
		t.bytes += holes(parent->fd, h->log_offset, h->log_length);
	/* extent trees, journal: a 1/128 share and 1 MiB */
	sp->need = t.bytes + t.bytes / 128 + VHDX_ALIGN;
	sp->free = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	/* what the writer's first write gives back (write.c, trim_tail) */
	end = vhdx_referenced_end(parent);
	size = (uint64_t)st.st_size;
	if (size > end)
		sp->free += (size - end) - holes(parent->fd, end, size - end);
	sp->known = true;
	ret = 0;
out:
	free(t.fresh);
	free(t.fresh_bitmap);
	return ret;
}
