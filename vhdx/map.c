/* SPDX-License-Identifier: MIT */
/*
 * map.c - the extent map: what backs each virtual byte of an image, as
 * runs of file data, replayed-log memory, zeros, unallocated space or the
 * parent.  Every reader in hvresync goes through vhdx_map(), so it merges
 * adjacent blocks that are contiguous in the file into one run: a fixed
 * disk maps to a handful of large reads.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

uint8_t *vhdx_get_bitmap(struct vhdx_image *img, uint64_t chunk, int *err)
{
	uint8_t *bm = __atomic_load_n(&img->bitmaps[chunk], __ATOMIC_ACQUIRE);
	uint64_t e;
	int ret;

	if (bm)
		return bm;
	pthread_mutex_lock(&img->bitmap_lock);
	bm = img->bitmaps[chunk];
	if (bm)
		goto out;
	e = img->bat[vhdx_bat_bitmap_index(chunk, img->info.chunk_ratio)];
	if (vhdx_bat_state(e) != VHDX_SB_STATE_PRESENT) {
		/* No bitmap block yet: no sector is in this file. */
		bm = calloc(1, VHDX_SECTOR_BITMAP_SIZE);
		if (!bm)
			*err = -ENOMEM;
		else
			__atomic_store_n(&img->bitmaps[chunk], bm,
					 __ATOMIC_RELEASE);
		goto out;
	}
	bm = malloc(VHDX_SECTOR_BITMAP_SIZE);
	if (!bm) {
		*err = -ENOMEM;
		goto out;
	}
	ret = vhdx_file_read(img, bm, VHDX_SECTOR_BITMAP_SIZE,
			     vhdx_bat_file_offset(e));
	if (ret) {
		free(bm);
		bm = NULL;
		*err = ret == -ENODATA ? -EIO : ret;
		goto out;
	}
	__atomic_store_n(&img->bitmaps[chunk], bm, __ATOMIC_RELEASE);
out:
	pthread_mutex_unlock(&img->bitmap_lock);
	return bm;
}

static inline bool bit(const uint8_t *bm, uint64_t i)
{
	return (__atomic_load_n(&bm[i >> 3], __ATOMIC_RELAXED) >> (i & 7)) & 1;
}

typedef uint64_t __attribute__((may_alias)) bitmap_word;

/* The first bit from @i on (before @last) that is not @present, or @last.
 * A sparse child's bitmap is mostly one value: whole words at a time. */
static uint64_t run_end(const uint8_t *bm, uint64_t i, uint64_t last,
			bool present)
{
	const uint64_t same = present ? ~0ull : 0;

	while (i < last && (i & 63)) {
		if (bit(bm, i) != present)
			return i;
		i++;
	}
	/* bitmaps are malloc'ed: word @i / 64 is aligned */
	while (i + 64 <= last &&
	       __atomic_load_n((const bitmap_word *)(bm + (i >> 3)),
			       __ATOMIC_RELAXED) == same)
		i += 64;
	while (i < last && bit(bm, i) == present)
		i++;
	return i;
}

/*
 * One block's run at OFF (never past the block's end or END): kind and,
 * for data, the file offset.  For partially present blocks the sector
 * bitmap splits the block into runs.
 */
static int block_run(struct vhdx_image *img, uint64_t off, uint64_t end,
		     struct vhdx_extent *ext)
{
	const struct vhdx_info *in = &img->info;
	uint64_t bs = in->block_size, j = off / bs, in_block = off % bs;
	uint64_t block_end = (j + 1) * bs, e;
	bool diff = in->has_parent;
	unsigned st;

	if (block_end > end)
		block_end = end;
	e = __atomic_load_n(
		&img->bat[vhdx_bat_payload_index(j, in->chunk_ratio)],
		__ATOMIC_ACQUIRE);
	st = vhdx_bat_state(e);
	ext->off = off;
	ext->len = block_end - off;
	ext->source = img;
	ext->fd = -1;
	ext->mem = NULL;
	ext->file_off = 0;
	switch (st) {
	case VHDX_PAYLOAD_FULLY_PRESENT:
		ext->kind = VHDX_EXT_DATA;
		ext->fd = img->fd;
		ext->file_off = vhdx_bat_file_offset(e) + in_block;
		return 0;
	case VHDX_PAYLOAD_PARTIALLY_PRESENT: {
		uint64_t lss = in->logical_sector_size;
		uint64_t chunk = j / in->chunk_ratio;
		uint64_t s = off / lss, last = (block_end + lss - 1) / lss;
		uint64_t base = chunk * VHDX_SECTORS_PER_CHUNK;
		int err = 0;
		const uint8_t *bm = vhdx_get_bitmap(img, chunk, &err);
		bool present;

		if (!bm)
			return err;
		present = bit(bm, s - base);
		s = base + run_end(bm, s + 1 - base, last - base, present);
		if (s * lss < block_end)
			ext->len = s * lss - off;
		if (present) {
			ext->kind = VHDX_EXT_DATA;
			ext->fd = img->fd;
			ext->file_off = vhdx_bat_file_offset(e) + in_block;
		} else {
			ext->kind = VHDX_EXT_PARENT;
		}
		return 0;
	}
	case VHDX_PAYLOAD_NOT_PRESENT:
	case VHDX_PAYLOAD_UNDEFINED:
		ext->kind = diff ? VHDX_EXT_PARENT : VHDX_EXT_UNALLOC;
		return 0;
	default: /* ZERO, UNMAPPED: validated at open */
		ext->kind = VHDX_EXT_ZERO;
		return 0;
	}
}

/* Split a DATA run where the replayed log (read-only opens) or the end of
 * the real file cuts into it. */
static void apply_overlay(const struct vhdx_image *img, struct vhdx_extent *ext)
{
	const struct vhdx_overlay *ov = &img->overlay;
	uint64_t fo = ext->file_off;
	uint64_t real = __atomic_load_n(&img->info.file_size, __ATOMIC_RELAXED);
	unsigned lo = 0, hi = ov->count;

	if (ext->kind != VHDX_EXT_DATA)
		return;
	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;

		if (ov->off[mid] + VHDX_LOG_SECTOR <= fo)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < ov->count && ov->off[lo] <= fo) {
		uint64_t in_sec = fo - ov->off[lo];

		ext->kind = VHDX_EXT_MEM;
		ext->mem = ov->data[lo] + in_sec;
		if (ext->len > VHDX_LOG_SECTOR - in_sec)
			ext->len = VHDX_LOG_SECTOR - in_sec;
		ext->fd = -1;
		return;
	}
	if (lo < ov->count && ov->off[lo] < fo + ext->len)
		ext->len = ov->off[lo] - fo;
	if (fo >= real) {
		ext->kind = VHDX_EXT_ZERO; /* the log extended the file */
		ext->fd = -1;
	} else if (fo + ext->len > real) {
		ext->len = real - fo;
	}
}

static bool can_merge(const struct vhdx_extent *a, const struct vhdx_extent *b)
{
	if (a->kind != b->kind || a->source != b->source)
		return false;
	if (a->kind == VHDX_EXT_DATA)
		return a->file_off + a->len == b->file_off;
	return a->kind != VHDX_EXT_MEM;
}

int vhdx_map(struct vhdx_image *img, uint64_t off, uint64_t len, unsigned flags,
	     struct vhdx_extent *ext)
{
	uint64_t vsize = img->info.virtual_size, end;
	struct vhdx_extent next;
	int ret;

	if (off >= vsize || len == 0)
		return -EINVAL;
	end = len > vsize - off ? vsize : off + len;
	ret = block_run(img, off, end, ext);
	if (ret)
		return ret;
	apply_overlay(img, ext);
	while (ext->off + ext->len < end && ext->kind != VHDX_EXT_MEM) {
		ret = block_run(img, ext->off + ext->len, end, &next);
		if (ret)
			return ret;
		apply_overlay(img, &next);
		if (!can_merge(ext, &next))
			break;
		ext->len += next.len;
	}
	if (ext->kind != VHDX_EXT_PARENT || (flags & VHDX_MAP_NO_RESOLVE))
		return 0;
	if (!img->parent)
		return -ENOENT; /* opened with VHDX_OPEN_NO_PARENT */
	if (off >= img->parent->info.virtual_size) {
		ext->kind = VHDX_EXT_ZERO; /* past a smaller parent's end */
		return 0;
	}
	return vhdx_map(img->parent, off, ext->len, flags, ext);
}

ssize_t vhdx_pread(struct vhdx_image *img, void *buf, size_t len, uint64_t off)
{
	struct vhdx_map_iter it;
	struct vhdx_extent ext;
	uint8_t *p = buf;
	int ret;

	if (off >= img->info.virtual_size || len == 0)
		return 0;
	if (len > img->info.virtual_size - off)
		len = img->info.virtual_size - off;
	vhdx_map_iter_init(&it, img, off, len, 0);
	while ((ret = vhdx_map_next(&it, &ext)) > 0) {
		uint8_t *dst = p + (ext.off - off);
		uint64_t done = 0;
		ssize_t n;

		switch (ext.kind) {
		case VHDX_EXT_DATA:
			while (done < ext.len) {
				n = pread(ext.fd, dst + done, ext.len - done,
					  (off_t)(ext.file_off + done));
				if (n < 0 && errno == EINTR)
					continue;
				if (n < 0)
					return -errno;
				if (n == 0)
					return -EIO; /* file shrank under us */
				done += (uint64_t)n;
			}
			break;
		case VHDX_EXT_MEM:
			memcpy(dst, ext.mem, ext.len);
			break;
		default:
			memset(dst, 0, ext.len);
			break;
		}
	}
	if (ret < 0)
		return ret;
	return (ssize_t)len;
}
