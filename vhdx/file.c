/* SPDX-License-Identifier: MIT */
/*
 * file.c - the bottom of the library: the image file itself.  Reads go
 * through the overlay of sectors a read-only open replayed from a dirty log
 * (the file is never written then), writes and header updates go straight
 * to it, and refusals are reported in one form.  Nothing here knows about
 * the BAT, the extent map or the parent chain, so every other part of an
 * open image can build on it.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

/* Most 4 KiB records a read-only open's log replay keeps in memory: twice
 * the sectors of the largest log (256 MiB), so a log's own data always
 * fits; what a zero descriptor adds past that is refused. */
#define VHDX_OVERLAY_MAX (1u << 17)

/* Zero descriptors of a log can cover much of the file: the overlay points
 * every zeroed sector here instead of holding a copy of each. */
static const uint8_t zero_sector[VHDX_LOG_SECTOR];

int vhdx_fail(struct vhdx_error *err, int ret, const char *path,
	      const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!err)
		return ret;
	n = snprintf(err->msg, sizeof(err->msg), "%.600s: ", path);
	if (n > 0 && (size_t)n < sizeof(err->msg)) {
		va_start(ap, fmt);
		vsnprintf(err->msg + n, sizeof(err->msg) - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return ret;
}

/* vhdx_read_full() with preadv2() flags. */
static int read_full_flags(int fd, void *buf, size_t len, uint64_t off,
			   size_t *got, int flags)
{
	uint8_t *p = buf;
	struct iovec iov;
	ssize_t n;

	*got = 0;
	while (*got < len) {
		iov.iov_base = p + *got;
		iov.iov_len = len - *got;
		n = preadv2(fd, &iov, 1, (off_t)(off + *got), flags);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		*got += (size_t)n;
	}
	return 0;
}

int vhdx_read_full(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
	return read_full_flags(fd, buf, len, off, got, 0);
}

int vhdx_write_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;
	ssize_t n;

	while (len) {
		n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int vhdx_probe_fd(int fd)
{
	uint8_t sig[sizeof(VHDX_FILE_ID_SIG) - 1];
	size_t got;
	int ret;

	ret = vhdx_read_full(fd, sig, sizeof(sig), VHDX_FILE_ID_OFFSET, &got);
	if (ret < 0)
		return ret;
	return got == sizeof(sig) &&
	       !memcmp(sig, VHDX_FILE_ID_SIG, sizeof(sig));
}

int vhdx_blockdev_geometry(int fd, uint64_t *size_bytes,
			   uint32_t *logical_sector)
{
	uint64_t size = 0;
	int ssz = 0;

	if (size_bytes && ioctl(fd, BLKGETSIZE64, &size))
		return -errno;
	if (logical_sector && ioctl(fd, BLKSSZGET, &ssz))
		return -errno;
	if (size_bytes)
		*size_bytes = size;
	if (logical_sector)
		*logical_sector = (uint32_t)ssz;
	return 0;
}

/* --- The replay overlay ------------------------------------------------ */

/* Index of the first overlay sector at or after OFF. */
static unsigned overlay_lower(const struct vhdx_overlay *ov, uint64_t off)
{
	unsigned lo = 0, hi = ov->count;

	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;

		if (ov->off[mid] < off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int file_read(const struct vhdx_image *img, void *buf, size_t len,
		     uint64_t off, int flags)
{
	const struct vhdx_overlay *ov = &img->overlay;
	uint8_t *p = buf;
	size_t got;
	unsigned i;
	int ret;

	ret = read_full_flags(img->fd, buf, len, off, &got, flags);
	if (ret == -EOPNOTSUPP && (flags & RWF_NOWAIT))
		return -EAGAIN;
	if (ret < 0)
		return ret;
	if (got < len) {
		if (off + len >
		    __atomic_load_n(&ov->file_size, __ATOMIC_RELAXED))
			return -ENODATA;
		memset(p + got, 0, len - got); /* extended by the log replay */
	}
	for (i = overlay_lower(
		     ov, off > VHDX_LOG_SECTOR ? off - VHDX_LOG_SECTOR + 1 : 0);
	     i < ov->count && ov->off[i] < off + len; i++) {
		uint64_t s = ov->off[i], e = s + VHDX_LOG_SECTOR;
		uint64_t from = s > off ? s : off;
		uint64_t to = e < off + len ? e : off + len;

		if (from < to)
			memcpy(p + (from - off), ov->data[i] + (from - s),
			       to - from);
	}
	return 0;
}

int vhdx_file_read(const struct vhdx_image *img, void *buf, size_t len,
		   uint64_t off)
{
	return file_read(img, buf, len, off, 0);
}

int vhdx_file_read_cached(const struct vhdx_image *img, void *buf, size_t len,
			  uint64_t off)
{
	return file_read(img, buf, len, off, RWF_NOWAIT);
}

static int overlay_put(struct vhdx_overlay *ov, uint64_t off,
		       const uint8_t *data)
{
	unsigned i = overlay_lower(ov, off);
	uint8_t *copy = (uint8_t *)zero_sector;

	if (data) {
		copy = malloc(VHDX_LOG_SECTOR);
		if (!copy)
			return -ENOMEM;
		memcpy(copy, data, VHDX_LOG_SECTOR);
	}
	if (i < ov->count && ov->off[i] == off) {
		if (ov->data[i] != zero_sector)
			free(ov->data[i]);
		ov->data[i] = copy;
		return 0;
	}
	if (ov->count >= VHDX_OVERLAY_MAX) {
		if (copy != zero_sector)
			free(copy);
		return -E2BIG;
	}
	if ((ov->count & (ov->count + 1)) == 0 || ov->count == 0) {
		unsigned cap = ov->count ? (ov->count + 1) * 2 : 16;
		uint64_t *o = realloc(ov->off, cap * sizeof(*o));
		uint8_t **d;

		if (!o)
			goto nomem;
		ov->off = o;
		d = realloc(ov->data, cap * sizeof(*d));
		if (!d)
			goto nomem;
		ov->data = d;
	}
	memmove(ov->off + i + 1, ov->off + i,
		(ov->count - i) * sizeof(*ov->off));
	memmove(ov->data + i + 1, ov->data + i,
		(ov->count - i) * sizeof(*ov->data));
	ov->off[i] = off;
	ov->data[i] = copy;
	ov->count++;
	return 0;
nomem:
	if (copy != zero_sector)
		free(copy);
	return -ENOMEM;
}

void vhdx_overlay_free(struct vhdx_overlay *ov)
{
	unsigned i;

	for (i = 0; i < ov->count; i++)
		if (ov->data[i] != zero_sector)
			free(ov->data[i]);
	free(ov->off);
	free(ov->data);
	memset(ov, 0, sizeof(*ov));
}

/* Make the K sectors at OFF read as zeros: the records already in the
 * range are dropped and the tail moved once. */
static int overlay_put_zeros(struct vhdx_overlay *ov, uint64_t off, uint64_t k)
{
	unsigned i = overlay_lower(ov, off),
		 j = overlay_lower(ov, off + k * VHDX_LOG_SECTOR), t;
	uint64_t count = (uint64_t)ov->count - (j - i) + k, cap = 16;

	if (count > VHDX_OVERLAY_MAX)
		return -E2BIG;
	/* overlay_put grows the arrays when count + 1 reaches a power of
	 * two: leave them at least that big. */
	while (cap < count + 1)
		cap *= 2;
	if (cap > ov->count + 1u) {
		uint64_t *o = realloc(ov->off, cap * sizeof(*o));
		uint8_t **d;

		if (!o)
			return -ENOMEM;
		ov->off = o;
		d = realloc(ov->data, cap * sizeof(*d));
		if (!d)
			return -ENOMEM;
		ov->data = d;
	}
	for (t = i; t < j; t++)
		if (ov->data[t] != zero_sector)
			free(ov->data[t]);
	if (j - i != k) {
		memmove(ov->off + i + k, ov->off + j,
			(ov->count - j) * sizeof(*ov->off));
		memmove(ov->data + i + k, ov->data + j,
			(ov->count - j) * sizeof(*ov->data));
	}
	for (t = 0; t < k; t++) {
		ov->off[i + t] = off + (uint64_t)t * VHDX_LOG_SECTOR;
		ov->data[i + t] = (uint8_t *)zero_sector;
	}
	ov->count = (unsigned)count;
	return 0;
}

int vhdx_replay_to_memory(void *ctx, uint64_t off, const uint8_t *data,
			  uint64_t len)
{
	struct vhdx_overlay *ov = ctx;
	uint64_t o;
	int ret;

	if (data)
		return overlay_put(ov, off, data);
	/* A zero descriptor may claim any length: one of terabytes would
	 * take that many sector records.  Past VHDX_OVERLAY_MAX sectors the
	 * in-memory replay gives up (the log can still be replayed on
	 * disk); below it the range goes in with one move, not one per
	 * sector. */
	if (len > (uint64_t)VHDX_OVERLAY_MAX * VHDX_LOG_SECTOR ||
	    off + len < off)
		return -E2BIG;
	if (len < 16 * VHDX_LOG_SECTOR) {
		for (o = 0; o < len; o += VHDX_LOG_SECTOR) {
			ret = overlay_put(ov, off + o, NULL);
			if (ret)
				return ret;
		}
		return 0;
	}
	return overlay_put_zeros(ov, off, len / VHDX_LOG_SECTOR);
}

/* Zeros over the LEN bytes at OFF inside the file: a whole-range write
 * that keeps the file's allocation (a fixed image stays preallocated). */
static int zero_in_place(int fd, uint64_t off, uint64_t len)
{
	uint64_t o, n;
	int ret;

	if (!fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
		       (off_t)off, (off_t)len))
		return 0;
	for (o = 0; o < len; o += n) {
		n = len - o < VHDX_LOG_SECTOR ? len - o : VHDX_LOG_SECTOR;
		ret = vhdx_write_full(fd, zero_sector, n, off + o);
		if (ret)
			return ret;
	}
	return 0;
}

/*
 * A zero descriptor on disk.  Its range is below its entry's
 * LastFileOffset (vhdx_log_check_ranges), but that is only a number in the
 * log: so that replay never takes more space than the image already had,
 * holes inside the file are left as they are (they read as zeros), only
 * its data extents are zeroed, and the part past the end of the file is
 * made by extending it, as replay does for LastFileOffset.
 */
static int replay_zeros(int fd, uint64_t off, uint64_t len)
{
	uint64_t end = off + len, size = 0, at, to;
	struct stat st;
	off_t d, h;
	int ret;

	if (fstat(fd, &st))
		return -errno;
	if (S_ISBLK(st.st_mode)) {
		ret = vhdx_blockdev_geometry(fd, &size, NULL);
		if (ret)
			return ret;
		if (end > size)
			return -ENOSPC; /* a device cannot grow */
	} else {
		size = (uint64_t)st.st_size;
	}
	for (at = off; at < end && at < size; at = to) {
		to = end < size ? end : size;
		d = lseek(fd, (off_t)at, SEEK_DATA);
		if (d < 0 && errno == ENXIO)
			break; /* only a hole from here on */
		if (d >= 0) {
			if ((uint64_t)d >= to)
				break;
			at = (uint64_t)d;
			h = lseek(fd, d, SEEK_HOLE);
			if (h >= 0 && (uint64_t)h < to)
				to = (uint64_t)h;
		} /* else no SEEK_DATA here: zero it all */
		ret = zero_in_place(fd, at, to - at);
		if (ret)
			return ret;
	}
	if (end > size && ftruncate(fd, (off_t)end))
		return -errno;
	return 0;
}

int vhdx_replay_to_file(void *ctx, uint64_t off, const uint8_t *data,
			uint64_t len)
{
	int fd = *(int *)ctx;

	if (data)
		return vhdx_write_full(fd, data, VHDX_LOG_SECTOR, off);
	return replay_zeros(fd, off, len);
}

/*
 * Header update (MS-VHDX 2.2.2.1): write the non-current header with the
 * next sequence number, flush, and it becomes current.
 */
int vhdx_header_update(struct vhdx_image *img, struct vhdx_header_info *h)
{
	uint8_t *buf = calloc(1, VHDX_HEADER_SIZE);
	int target = 1 - img->info.current_header, ret;

	if (!buf)
		return -ENOMEM;
	h->sequence = img->info.header[img->info.current_header].sequence + 1;
	h->valid = true;
	vhdx_header_build(h, buf);
	ret = vhdx_write_full(img->fd, buf, VHDX_HEADER_SIZE,
			      target ? VHDX_HEADER2_OFFSET
				     : VHDX_HEADER1_OFFSET);
	free(buf);
	if (ret)
		return ret;
	if (fdatasync(img->fd))
		return -errno;
	img->info.header[target] = *h;
	img->info.current_header = target;
	return 0;
}
