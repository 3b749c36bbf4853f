/* SPDX-License-Identifier: MIT */
/*
 * write.c - writing into fixed, dynamic and differencing images.
 *
 * Durability discipline (MS-VHDX 2.3, "a writer puts each BAT or metadata
 * change through the log"):
 *   1. payload data goes to blocks that are either already allocated or
 *      freshly allocated past everything the BAT, the log and the regions
 *      reference, never referenced by the on-disk BAT until step 3;
 *   2. fdatasync, so the data is durable before anything points to it;
 *   3. the changed 4 KiB BAT and sector-bitmap sectors are written as one
 *      log entry (under a LogGuid set in the header), fdatasync;
 *   4. the same sectors are written in place, fdatasync.
 * A crash before 3 completes leaves the old BAT (the new space is
 * unreferenced); a crash after it is repaired by log replay at the next
 * open.  Either way every block reads its old or its new content.  The
 * LogGuid is cleared on a clean close.  In-memory BAT entries and bitmap
 * bits are published with release stores after the data is written, so
 * concurrent readers (the FUSE view) never see a block before its data.
 *
 * A writer commits whenever COMMIT_THRESHOLD sectors are pending, so
 * that a crash loses little of what it was told to write.  A merge, which
 * is redone whole after a crash anyway, asks for a batch instead
 * (vhdx_writer_batch): its BAT and bitmap changes wait for its one flush
 * and go into as few log entries as the log holds, and its data is sent
 * to the disk as it is written, so that the flush waits for little.
 *
 * Space: new blocks go after the last referenced byte, not at the file
 * size, and a tail nothing references (what a failed or crashed attempt
 * appended) is cut off while the log is clean: at the first write of an
 * open, before any log entry exists, and at a clean close, after the BAT
 * that no longer references it is durable and the LogGuid cleared.  Never
 * while a log entry is in use: an entry records the file size it expects
 * (FlushedFileOffset) and its replay refuses a shorter file.  So failed
 * attempts do not leak space, and the BAT never points past the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* Pending sectors that trigger a commit on their own. */
#define COMMIT_THRESHOLD 128
#define ZERO_CHUNK (1 * MiB)
/* Bytes a batch writes between two starts of writeback. */
#define KICK_BYTES (1 * MiB)

static const uint8_t zero_buf[ZERO_CHUNK];

static uint64_t align_up(uint64_t v)
{
	return (v + VHDX_ALIGN - 1) / VHDX_ALIGN * VHDX_ALIGN;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

uint64_t vhdx_referenced_end(const struct vhdx_image *img)
{
	const struct vhdx_info *in = &img->info;
	const struct vhdx_header_info *h = &in->header[in->current_header];
	uint64_t end = VHDX_HEADER_SECTION_SIZE, cr = in->chunk_ratio, i, e,
		 off;
	unsigned k, st;

	/* only the current header's log: the other header is stale, and
	 * was never checked against the file */
	if (h->log_length)
		end = max_u64(end, h->log_offset + h->log_length);
	for (k = 0; k < in->region_count; k++)
		end = max_u64(end, in->regions[k].file_offset +
					   in->regions[k].length);
	for (i = 0; i < in->bat_entries; i++) {
		e = __atomic_load_n(&img->bat[i], __ATOMIC_ACQUIRE);
		off = vhdx_bat_file_offset(e);
		st = vhdx_bat_state(e);
		if (i % (cr + 1) == cr) {
			if (st != VHDX_SB_STATE_PRESENT)
				continue;
			/* Without a parent a bitmap is never read, so open
			 * does not check it: only one inside the file can
			 * be anything real. */
			if (!in->has_parent &&
			    off + VHDX_SECTOR_BITMAP_SIZE > in->file_size)
				continue;
			end = max_u64(end, off + VHDX_SECTOR_BITMAP_SIZE);
			continue;
		}
		if (i - i / (cr + 1) >= in->payload_blocks)
			continue; /* padding entry of the last chunk */
		/* a whole block, even the short last one: that is what
		 * alloc_space() gave it */
		if (st == VHDX_PAYLOAD_FULLY_PRESENT ||
		    st == VHDX_PAYLOAD_PARTIALLY_PRESENT)
			end = max_u64(end, off + in->block_size);
	}
	return align_up(end);
}

int vhdx_writer_init(struct vhdx_image *img)
{
	img->alloc_end = vhdx_referenced_end(img);
	img->log_seq = 1;
	img->log_pos = 0;
	img->dirty_cap = 64;
	img->dirty = calloc(img->dirty_cap, sizeof(*img->dirty));
	return img->dirty ? 0 : -ENOMEM;
}

/* Cut the file back to the end of what is referenced: 1 when it was cut,
 * 0 when there was nothing to cut (or it is not a regular file: a block
 * device keeps its size), or a negative errno.  Only while no log entry
 * is in use (see the top of this file). */
static int trim_tail(struct vhdx_image *img)
{
	uint64_t end = vhdx_referenced_end(img);
	struct stat st;

	if (!vhdx_guid_is_zero(&img->log_guid) || img->ndirty)
		return 0;
	if (fstat(img->fd, &st))
		return -errno;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size <= end)
		return 0;
	if (ftruncate(img->fd, (off_t)end))
		return -errno;
	__atomic_store_n(&img->info.file_size, end, __ATOMIC_RELAXED);
	__atomic_store_n(&img->overlay.file_size, end, __ATOMIC_RELAXED);
	img->alloc_end = end;
	return 1;
}

/* FileWriteGuid and DataWriteGuid change before the first write of each
 * open: a differencing child made earlier no longer matches its parent,
 * which is the point. */
static int renew_guids(struct vhdx_image *img)
{
	struct vhdx_header_info h = img->info.header[img->info.current_header];
	int ret;

	if (img->guids_changed)
		return 0;
	/* Best effort: where the tail stays, alloc_space() zeroes what it
	 * reuses of it. */
	(void)trim_tail(img);
	ret = vhdx_guid_generate(&h.file_write_guid);
	if (!ret)
		ret = vhdx_guid_generate(&h.data_write_guid);
	if (!ret)
		ret = vhdx_header_update(img, &h);
	if (!ret)
		img->guids_changed = true;
	return ret;
}

/* Sectors a run of writes dirties repeat close together (the same BAT or
 * bitmap sector for one block after another), so only the last few are
 * looked at here; compact_dirty() drops the other repeats. */
#define DIRTY_RECENT 8

static int mark_dirty(struct vhdx_image *img, uint64_t sector_off)
{
	unsigned i =
		img->ndirty > DIRTY_RECENT ? img->ndirty - DIRTY_RECENT : 0;

	for (; i < img->ndirty; i++)
		if (img->dirty[i] == sector_off)
			return 0;
	if (img->ndirty == img->dirty_cap) {
		uint64_t *d =
			realloc(img->dirty, 2 * img->dirty_cap * sizeof(*d));

		if (!d)
			return -ENOMEM;
		img->dirty = d;
		img->dirty_cap *= 2;
	}
	img->dirty[img->ndirty++] = sector_off;
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Sort the pending sectors by file offset and drop repeats. */
static void compact_dirty(struct vhdx_image *img)
{
	unsigned i, n = 0;

	qsort(img->dirty, img->ndirty, sizeof(*img->dirty), cmp_u64);
	for (i = 0; i < img->ndirty; i++)
		if (n == 0 || img->dirty[n - 1] != img->dirty[i])
			img->dirty[n++] = img->dirty[i];
	img->ndirty = n;
}

/*
 * A batch's writeback starts on a thread of its own: sync_file_range()
 * walks the dirty pages and submits them in the caller's time (about 2 ms
 * per MiB of scattered 4 KiB writes here), which the copy need not wait
 * for.  Kicks that come while one runs fold into the next.
 */
struct vhdx_kicker {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int fd;
	bool pending, stop;
};

static void *kicker_main(void *arg)
{
	struct vhdx_kicker *k = arg;

	pthread_mutex_lock(&k->lock);
	for (;;) {
		while (!k->pending && !k->stop)
			pthread_cond_wait(&k->cond, &k->lock);
		if (k->stop)
			break;
		k->pending = false;
		pthread_mutex_unlock(&k->lock);
		(void)sync_file_range(k->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
		pthread_mutex_lock(&k->lock);
	}
	pthread_mutex_unlock(&k->lock);
	return NULL;
}

/* Under write_lock.  Without a thread, the writer kicks in its own time. */
static void kicker_start(struct vhdx_image *img)
{
	struct vhdx_kicker *k = calloc(1, sizeof(*k));

	if (!k)
		return;
	k->fd = img->fd;
	pthread_mutex_init(&k->lock, NULL);
	pthread_cond_init(&k->cond, NULL);
	if (pthread_create(&k->thread, NULL, kicker_main, k)) {
		pthread_cond_destroy(&k->cond);
		pthread_mutex_destroy(&k->lock);
		free(k);
		return;
	}
	img->kicker = k;
}

/* Under write_lock: before a flush (which writes back everything anyway)
 * and before the descriptor can close. */
static void kicker_stop(struct vhdx_image *img)
{
	struct vhdx_kicker *k = img->kicker;

	if (!k)
		return;
	pthread_mutex_lock(&k->lock);
	k->stop = true;
	pthread_cond_signal(&k->cond);
	pthread_mutex_unlock(&k->lock);
	pthread_join(k->thread, NULL);
	pthread_cond_destroy(&k->cond);
	pthread_mutex_destroy(&k->lock);
	free(k);
	img->kicker = NULL;
}

static void kick_writeback(struct vhdx_image *img)
{
	struct vhdx_kicker *k = img->kicker;

	if (!k) {
		(void)sync_file_range(img->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
		return;
	}
	pthread_mutex_lock(&k->lock);
	k->pending = true;
	pthread_cond_signal(&k->cond);
	pthread_mutex_unlock(&k->lock);
}

void vhdx_writer_batch(struct vhdx_image *img)
{
	pthread_mutex_lock(&img->write_lock);
	img->batch = true;
	/* only a writable image's flush (and close) stops it */
	if (!img->kicker && img->writable)
		kicker_start(img);
	pthread_mutex_unlock(&img->write_lock);
}

static int set_bat(struct vhdx_image *img, uint64_t idx, uint64_t entry)
{
	uint64_t off = img->info.bat_offset + idx * 8;

	__atomic_store_n(&img->bat[idx], entry, __ATOMIC_RELEASE);
	return mark_dirty(img, off - off % VHDX_LOG_SECTOR);
}

static int write_range(struct vhdx_image *img, uint64_t off,
		       const uint8_t *data, uint64_t len)
{
	uint64_t done = 0, n;
	int ret;

	if (data)
		return vhdx_write_full(img->fd, data, len, off);
	while (done < len) {
		n = len - done < ZERO_CHUNK ? len - done : ZERO_CHUNK;
		ret = vhdx_write_full(img->fd, zero_buf, n, off + done);
		if (ret)
			return ret;
		done += n;
	}
	return 0;
}

/*
 * LEN bytes of zeros for a new block, at the next 1 MiB boundary past
 * everything referenced (alloc_end).  Space past the end of the file reads
 * as zeros once the file is extended; space an earlier attempt left
 * inside it (a tail that could not be cut, as on a block device) holds
 * its stale bytes, which the unwritten rest of the block must not show:
 * punched out, or overwritten where punching is not supported.
 */
static int alloc_space(struct vhdx_image *img, uint64_t len, uint64_t *off)
{
	uint64_t at = img->alloc_end, size = img->info.file_size, n;
	int ret;

	if (at < size) {
		n = at + len < size ? len : size - at;
		if (fallocate(img->fd,
			      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)at, (off_t)n)) {
			ret = write_range(img, at, NULL, n);
			if (ret)
				return ret;
		}
	}
	if (at + len > size) {
		if (ftruncate(img->fd, (off_t)(at + len)))
			return -errno;
		/* readers (map.c) look at the size without the write lock */
		__atomic_store_n(&img->info.file_size, at + len,
				 __ATOMIC_RELAXED);
		__atomic_store_n(&img->overlay.file_size, at + len,
				 __ATOMIC_RELAXED);
	}
	img->alloc_end = align_up(at + len);
	*off = at;
	return 0;
}

static bool all_zero(const uint8_t *p, uint64_t len)
{
	if (!p)
		return true;
	if (len == 0)
		return true;
	/* p[0] == 0 and p[i] == p[i + 1] for all i: all bytes are zero */
	return p[0] == 0 && !memcmp(p, p + 1, len - 1);
}

static int bitmap_offset(struct vhdx_image *img, uint64_t chunk, uint64_t *off)
{
	uint64_t idx = vhdx_bat_bitmap_index(chunk, img->info.chunk_ratio);
	uint64_t e = img->bat[idx];
	int ret;

	if (vhdx_bat_state(e) == VHDX_SB_STATE_PRESENT) {
		*off = vhdx_bat_file_offset(e);
		return 0;
	}
	ret = alloc_space(img, VHDX_SECTOR_BITMAP_SIZE, off);
	if (ret)
		return ret;
	return set_bat(img, idx, vhdx_bat_make(VHDX_SB_STATE_PRESENT, *off));
}

/* Mark sectors [first, first + count) of the virtual disk as present in
 * this file. */
static int set_bits(struct vhdx_image *img, uint64_t first, uint64_t count)
{
	uint64_t chunk = first / VHDX_SECTORS_PER_CHUNK;
	uint64_t base = chunk * VHDX_SECTORS_PER_CHUNK, boff = 0, i, s,
		 last_sec = UINT64_MAX;
	uint8_t *bm;
	int ret = 0;

	ret = bitmap_offset(img, chunk, &boff);
	if (ret)
		return ret;
	bm = vhdx_get_bitmap(img, chunk, &ret);
	if (!bm)
		return ret;
	for (i = first - base; i < first - base + count; i++) {
		__atomic_fetch_or(&bm[i >> 3], (uint8_t)(1u << (i & 7)),
				  __ATOMIC_RELEASE);
		s = (i >> 3) / VHDX_LOG_SECTOR;
		if (s != last_sec) {
			ret = mark_dirty(img, boff + s * VHDX_LOG_SECTOR);
			if (ret)
				return ret;
			last_sec = s;
		}
	}
	return 0;
}

/* Write N bytes (DATA, or zeros when NULL) at IN_BLOCK of payload block J. */
static int write_block(struct vhdx_image *img, uint64_t j, uint64_t in_block,
		       const uint8_t *data, uint64_t n)
{
	const struct vhdx_info *in = &img->info;
	uint64_t idx = vhdx_bat_payload_index(j, in->chunk_ratio);
	uint64_t e = img->bat[idx], bs = in->block_size, blen, off = 0;
	unsigned st = vhdx_bat_state(e);
	bool diff = in->has_parent, whole, zero;
	int ret;

	blen = in->virtual_size - j * bs < bs ? in->virtual_size - j * bs : bs;
	whole = in_block == 0 && n == blen;
	zero = all_zero(data, n);

	switch (st) {
	case VHDX_PAYLOAD_FULLY_PRESENT:
	case VHDX_PAYLOAD_PARTIALLY_PRESENT:
		if (whole && zero && !in->leave_blocks_allocated)
			return set_bat(img, idx,
				       vhdx_bat_make(VHDX_PAYLOAD_ZERO, 0));
		off = vhdx_bat_file_offset(e);
		ret = write_range(img, off + in_block, data, n);
		if (ret)
			return ret;
		if (st == VHDX_PAYLOAD_FULLY_PRESENT)
			return 0;
		if (whole)
			return set_bat(
				img, idx,
				vhdx_bat_make(VHDX_PAYLOAD_FULLY_PRESENT, off));
		return set_bits(img,
				(j * bs + in_block) / in->logical_sector_size,
				n / in->logical_sector_size);
	case VHDX_PAYLOAD_NOT_PRESENT:
	case VHDX_PAYLOAD_UNDEFINED:
		if (diff) {
			if (whole && zero)
				return set_bat(
					img, idx,
					vhdx_bat_make(VHDX_PAYLOAD_ZERO, 0));
			ret = alloc_space(img, bs, &off);
			if (!ret)
				ret = write_range(img, off + in_block, data, n);
			if (ret)
				return ret;
			if (whole)
				return set_bat(
					img, idx,
					vhdx_bat_make(
						VHDX_PAYLOAD_FULLY_PRESENT,
						off));
			ret = set_bits(img,
				       (j * bs + in_block) /
					       in->logical_sector_size,
				       n / in->logical_sector_size);
			if (ret)
				return ret;
			return set_bat(
				img, idx,
				vhdx_bat_make(VHDX_PAYLOAD_PARTIALLY_PRESENT,
					      off));
		}
		/* reads as zeros without a parent, like the states below */
		__attribute__((fallthrough));
	default: /* ZERO, UNMAPPED */
		if (zero)
			return 0; /* already reads as zeros */
		ret = alloc_space(img, bs, &off);
		if (!ret)
			ret = write_range(img, off + in_block, data, n);
		if (ret)
			return ret;
		return set_bat(img, idx,
			       vhdx_bat_make(VHDX_PAYLOAD_FULLY_PRESENT, off));
	}
}

/* Where each chunk's sector bitmap lies in the file, sorted by offset:
 * which bitmap a dirty sector belongs to, without a walk of every chunk
 * for every sector. */
struct bitmap_at {
	uint64_t off;
	uint64_t chunk;
};

static int cmp_bitmap_at(const void *a, const void *b)
{
	const struct bitmap_at *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

static struct bitmap_at *bitmap_table(struct vhdx_image *img, uint64_t *n)
{
	const struct vhdx_info *in = &img->info;
	struct bitmap_at *t;
	uint64_t c, e, i;

	*n = 0;
	t = malloc((img->chunks ? img->chunks : 1) * sizeof(*t));
	if (!t)
		return NULL;
	/* only a differencing image has a bitmap entry for every chunk
	 * (the last chunk of any other may have none) and writes bitmaps */
	for (c = 0; in->has_parent && c < img->chunks; c++) {
		i = vhdx_bat_bitmap_index(c, in->chunk_ratio);
		if (i >= in->bat_entries)
			break;
		e = img->bat[i];
		if (vhdx_bat_state(e) != VHDX_SB_STATE_PRESENT)
			continue;
		t[*n].off = vhdx_bat_file_offset(e);
		t[(*n)++].chunk = c;
	}
	qsort(t, *n, sizeof(*t), cmp_bitmap_at);
	return t;
}

/* The current 4 KiB sector at file offset OFF as this writer sees it;
 * BM (NBM long) from bitmap_table(). */
static int sector_image(struct vhdx_image *img, uint64_t off, uint8_t *buf,
			const struct bitmap_at *bm_at, uint64_t nbm)
{
	const struct vhdx_info *in = &img->info;
	uint64_t i, first, lo = 0, hi = nbm, mid, k;
	const uint8_t *bm;
	int ret;

	if (off >= in->bat_offset && off < in->bat_offset + in->bat_length) {
		first = (off - in->bat_offset) / 8;
		/* the file's bytes only where no entry covers the sector:
		 * the end of the last one */
		if (first + VHDX_LOG_SECTOR / 8 > in->bat_entries) {
			ret = vhdx_file_read(img, buf, VHDX_LOG_SECTOR, off);
			if (ret)
				return ret;
		}
		for (i = 0;
		     i < VHDX_LOG_SECTOR / 8 && first + i < in->bat_entries;
		     i++)
			le64_put(buf + i * 8, img->bat[first + i]);
		return 0;
	}
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (bm_at[mid].off + VHDX_SECTOR_BITMAP_SIZE <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == nbm || off < bm_at[lo].off)
		return -EINVAL;
	bm = vhdx_get_bitmap(img, bm_at[lo].chunk, &ret);
	if (!bm)
		return ret;
	for (k = 0; k < VHDX_LOG_SECTOR; k++)
		buf[k] = __atomic_load_n(&bm[off - bm_at[lo].off + k],
					 __ATOMIC_RELAXED);
	return 0;
}

/* Put a fresh LogGuid in the header; the log starts again at offset 0. */
static int new_log_guid(struct vhdx_image *img)
{
	struct vhdx_header_info h = img->info.header[img->info.current_header];
	int ret;

	ret = vhdx_guid_generate(&img->log_guid);
	if (ret)
		return ret;
	h.log_guid = img->log_guid;
	ret = vhdx_header_update(img, &h);
	if (ret)
		return ret;
	img->log_pos = 0;
	return 0;
}

static int commit(struct vhdx_image *img)
{
	const struct vhdx_header_info *cur =
		&img->info.header[img->info.current_header];
	uint32_t log_len = cur->log_length, len;
	unsigned max_desc, done = 0, n, i;
	uint64_t *offs = NULL, nbm = 0;
	uint8_t *sectors = NULL, *entry = NULL;
	const uint8_t **ptrs = NULL;
	struct bitmap_at *bm_at = NULL;
	int ret = 0;

	if (fdatasync(img->fd))
		return -errno;
	if (img->ndirty == 0)
		return 0;
	compact_dirty(img);
	if (log_len < 2 * VHDX_LOG_SECTOR)
		return -ENOSPC;
	if (vhdx_guid_is_zero(&img->log_guid)) {
		ret = new_log_guid(img);
		if (ret)
			return ret;
	}
	for (max_desc = 1;
	     vhdx_log_entry_size(max_desc + 1) <= log_len && max_desc < 1024;)
		max_desc++;
	offs = calloc(max_desc, sizeof(*offs));
	ptrs = calloc(max_desc, sizeof(*ptrs));
	sectors = malloc((size_t)max_desc * VHDX_LOG_SECTOR);
	entry = malloc(vhdx_log_entry_size(max_desc));
	bm_at = bitmap_table(img, &nbm);
	if (!offs || !ptrs || !sectors || !entry || !bm_at) {
		ret = -ENOMEM;
		goto out;
	}
	while (done < img->ndirty) {
		n = img->ndirty - done < max_desc ? img->ndirty - done
						  : max_desc;
		for (i = 0; i < n; i++) {
			offs[i] = img->dirty[done + i];
			ptrs[i] = sectors + (size_t)i * VHDX_LOG_SECTOR;
			ret = sector_image(img, offs[i],
					   sectors +
						   (size_t)i * VHDX_LOG_SECTOR,
					   bm_at, nbm);
			if (ret)
				goto out;
		}
		if (img->log_pos + vhdx_log_entry_size(n) > log_len) {
			/* Every entry so far is applied and flushed.  Start
			 * over under a new LogGuid so that no reader can chain
			 * the stale entries of the last pass onto new ones
			 * (qemu chains any run of consecutive sequence
			 * numbers, whatever the Tail says). */
			ret = new_log_guid(img);
			if (ret)
				goto out;
			cur = &img->info.header[img->info.current_header];
		}
		len = vhdx_log_entry_build(entry, img->log_seq, img->log_pos,
					   &img->log_guid, img->info.file_size,
					   img->info.file_size, n, offs, ptrs);
		ret = vhdx_write_full(img->fd, entry, len,
				      cur->log_offset + img->log_pos);
		if (!ret && fdatasync(img->fd))
			ret = -errno;
		for (i = 0; !ret && i < n; i++)
			ret = vhdx_write_full(img->fd, ptrs[i], VHDX_LOG_SECTOR,
					      offs[i]);
		if (!ret && fdatasync(img->fd))
			ret = -errno;
		if (ret)
			goto out;
		img->log_pos += len;
		img->log_seq++;
		done += n;
	}
	img->ndirty = 0;
out:
	free(bm_at);
	free(offs);
	free(ptrs);
	free(sectors);
	free(entry);
	return ret;
}

static int write_locked(struct vhdx_image *img, const uint8_t *data,
			uint64_t len, uint64_t off)
{
	uint64_t bs = img->info.block_size, done = 0;
	int ret;

	ret = renew_guids(img);
	while (!ret && done < len) {
		uint64_t pos = off + done, j = pos / bs, in_block = pos % bs;
		uint64_t n =
			bs - in_block < len - done ? bs - in_block : len - done;

		ret = write_block(img, j, in_block, data ? data + done : NULL,
				  n);
		done += n;
	}
	/* A batch (a merge) commits at its flush, in as few entries as
	 * the log holds: what it wrote is redone whole after a crash.  Its
	 * data is sent on its way as it goes, so that the flush before the
	 * commit waits for little more than the last of it. */
	if (!ret && img->batch) {
		img->unkicked += len;
		if (img->unkicked >= KICK_BYTES) {
			kick_writeback(img);
			img->unkicked = 0;
		}
	}
	if (!ret && !img->batch && img->ndirty >= COMMIT_THRESHOLD) {
		compact_dirty(img);
		if (img->ndirty >= COMMIT_THRESHOLD)
			ret = commit(img);
	}
	return ret;
}

static int do_write(struct vhdx_image *img, const uint8_t *buf, uint64_t len,
		    uint64_t off)
{
	uint64_t lss = img->info.logical_sector_size, a, b;
	uint8_t *tmp = NULL;
	ssize_t got;
	int ret;

	if (!img->writable)
		return -EBADF;
	if (off > img->info.virtual_size || len > img->info.virtual_size - off)
		return -ENOSPC;
	if (len == 0)
		return 0;
	pthread_mutex_lock(&img->write_lock);
	ret = img->write_error;
	if (ret)
		goto out;
	if (off % lss || len % lss) {
		/* Sector bitmaps and blocks work in whole logical sectors:
		 * read around a partial one and write whole sectors. */
		a = off - off % lss;
		b = (off + len + lss - 1) / lss * lss;
		tmp = malloc(b - a);
		if (!tmp) {
			ret = -ENOMEM;
			goto out;
		}
		got = vhdx_pread(img, tmp, b - a, a);
		if (got < 0) {
			ret = (int)got;
			goto out;
		}
		if (buf)
			memcpy(tmp + (off - a), buf, len);
		else
			memset(tmp + (off - a), 0, len);
		ret = write_locked(img, tmp, b - a, a);
	} else {
		ret = write_locked(img, buf, len, off);
	}
	if (ret)
		img->write_error = ret;
out:
	pthread_mutex_unlock(&img->write_lock);
	free(tmp);
	return ret;
}

int vhdx_pwrite(struct vhdx_image *img, const void *buf, size_t len,
		uint64_t off)
{
	if (!buf)
		return -EINVAL;
	return do_write(img, buf, len, off);
}

int vhdx_write_zeroes(struct vhdx_image *img, uint64_t off, uint64_t len)
{
	return do_write(img, NULL, len, off);
}

int vhdx_flush(struct vhdx_image *img)
{
	int ret;

	if (!img->writable)
		return 0;
	pthread_mutex_lock(&img->write_lock);
	kicker_stop(img);
	ret = img->write_error;
	if (!ret)
		ret = commit(img);
	if (ret)
		img->write_error = ret;
	pthread_mutex_unlock(&img->write_lock);
	return ret;
}

int vhdx_writer_close(struct vhdx_image *img)
{
	struct vhdx_header_info h;
	int ret;

	ret = vhdx_flush(img);
	if (!ret && !vhdx_guid_is_zero(&img->log_guid)) {
		h = img->info.header[img->info.current_header];
		memset(&h.log_guid, 0, sizeof(h.log_guid));
		ret = vhdx_header_update(img, &h);
		if (!ret)
			memset(&img->log_guid, 0, sizeof(img->log_guid));
	}
	if (!ret && fsync(img->fd))
		ret = -errno;
	/* The BAT on disk is the whole truth now: give back what this open
	 * or a failed one before it left unreferenced at the end.  Only
	 * after a write: an open that wrote nothing leaves the file as it
	 * found it.  A cut that fails (or is lost in a crash) only leaves
	 * the tail for the next writer to cut, so it does not fail the
	 * close; an fsync that fails does, as anywhere. */
	if (!ret && img->guids_changed && trim_tail(img) == 1 && fsync(img->fd))
		ret = -errno;
	img->writable = false;
	return ret;
}
