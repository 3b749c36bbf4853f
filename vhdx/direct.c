/* SPDX-License-Identifier: MIT */
/*
 * direct.c - a batch writer's data for blocks the image already holds,
 * written with O_DIRECT, many at a time (io_uring).
 *
 * A merge copies thousands of scattered 4 KiB sectors into blocks of the
 * parent that are there already.  Through the page cache each costs a
 * copy, a dirty page and later its writeback, and the flush at the end
 * waits for the device all the same.  Written around the cache, 64 at a
 * time, the device takes them while the copy reads on, and the flush has
 * little left to wait for.
 *
 * Only writes the writer would make in place (write.c's write_range into
 * an allocated block) come here, and only when offset, length and buffer
 * meet the file's O_DIRECT alignment (statx); anything else goes through
 * the page cache as before.  The two must not meet on one page while a
 * direct write is in flight (the page-cache write could read the page
 * before the direct write lands, and write the old bytes back later), so
 * a buffered write or read of the image first waits for the direct writes
 * whose pages it touches (vhdx_direct_fence); so does a direct write,
 * since writes in flight land in any order.  A completed direct write is
 * as durable as a buffered one: not until the writer's fdatasync, which
 * runs after vhdx_direct_drain().
 *
 * Where O_DIRECT is refused (tmpfs on 6.1), the writer stays with the
 * page cache.  A file system that does not tell its alignment (FUSE) is
 * tried with 4 KiB; one that then refuses a write (EINVAL) has it, and
 * any others in flight, written again through the page cache once
 * nothing is in flight, and is not asked again.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define DIRECT_DEPTH 64
#define DIRECT_BYTES (8u << 20) /* in flight at most */
#define DIRECT_SUBMIT 16	/* queued before they are submitted */
#define DIRECT_PAGE 4096u	/* the fence's unit: a page of the cache */

struct direct_write {
	void *buf;
	uint64_t off, len; /* in the file */
	enum { W_FREE, W_FLIGHT, W_REDO } state;
};

struct vhdx_direct {
	struct io_uring ring;
	int fd, cached_fd; /* O_DIRECT; the writer's own */
	uint32_t mem_align, off_align;
	bool refused; /* a write came back EINVAL: no more */
	unsigned inflight, queued;
	uint64_t bytes;
	int error; /* sticky: the first failure of a completed write */
	struct direct_write w[DIRECT_DEPTH];
};

int vhdx_direct_start(struct vhdx_image *img)
{
	struct vhdx_direct *d;
	struct statx stx;
	int fd, ret;

	if (img->direct)
		return 0;
	if (statx(img->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx))
		return -errno;
	if (!(stx.stx_mask & STATX_DIOALIGN)) {
		stx.stx_dio_mem_align = 4096;
		stx.stx_dio_offset_align = 4096;
	} else if (!stx.stx_dio_offset_align) {
		return -EOPNOTSUPP;
	}
	fd = open(img->path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = calloc(1, sizeof(*d));
	if (!d) {
		close(fd);
		return -ENOMEM;
	}
	ret = io_uring_queue_init(DIRECT_DEPTH, &d->ring, 0);
	if (ret < 0) {
		free(d);
		close(fd);
		return ret;
	}
	d->fd = fd;
	d->cached_fd = img->fd;
	d->mem_align = stx.stx_dio_mem_align > 8 ? stx.stx_dio_mem_align : 8;
	d->off_align = stx.stx_dio_offset_align;
	img->direct = d;
	return 0;
}

bool vhdx_direct_fits(const struct vhdx_image *img, uint64_t off, uint64_t len)
{
	const struct vhdx_direct *d = img->direct;

	return d && !d->refused && len && len <= DIRECT_BYTES &&
	       off % d->off_align == 0 && len % d->off_align == 0;
}

/* Take one completion (waiting for it when WAIT); 0 when none came. */
static int reap(struct vhdx_direct *d, bool wait)
{
	struct io_uring_cqe *cqe;
	struct direct_write *w;
	int ret, res;

	do {
		ret = wait ? io_uring_wait_cqe(&d->ring, &cqe)
			   : io_uring_peek_cqe(&d->ring, &cqe);
	} while (ret == -EINTR);
	if (ret == -EAGAIN && !wait)
		return 0;
	if (ret < 0)
		return ret;
	w = io_uring_cqe_get_data(cqe);
	res = cqe->res;
	io_uring_cqe_seen(&d->ring, cqe);
	d->inflight--;
	if (res == -EINVAL) {
		/* the alignment guessed was wrong: through the cache later */
		d->refused = true;
		w->state = W_REDO;
		d->bytes -= w->len;
		return 1;
	}
	if (res < 0 && !d->error)
		d->error = res;
	else if (res >= 0 && (uint64_t)res != w->len && !d->error)
		d->error = -EIO; /* short: the device or the space ran out */
	free(w->buf);
	w->buf = NULL;
	w->state = W_FREE;
	d->bytes -= w->len;
	return 1;
}

static int submit(struct vhdx_direct *d)
{
	int ret;

	if (!d->queued)
		return 0;
	ret = io_uring_submit(&d->ring);
	if (ret < 0)
		return ret;
	d->queued = 0;
	return 0;
}

int vhdx_direct_drain(struct vhdx_image *img)
{
	struct vhdx_direct *d = img->direct;
	int ret;

	if (!d)
		return 0;
	ret = submit(d);
	while (!ret && d->inflight) {
		ret = reap(d, true);
		if (ret > 0)
			ret = 0;
	}
	if (ret < 0 && !d->error)
		d->error = ret;
	if (d->inflight)
		return d->error;
	for (unsigned i = 0; i < DIRECT_DEPTH; i++) {
		struct direct_write *w = &d->w[i];

		if (w->state != W_REDO)
			continue;
		ret = d->error ? 0
			       : vhdx_write_full(d->cached_fd, w->buf, w->len,
						 w->off);
		if (ret && !d->error)
			d->error = ret;
		free(w->buf);
		w->buf = NULL;
		w->state = W_FREE;
	}
	return d->error;
}

int vhdx_direct_write(struct vhdx_image *img, const void *data, uint64_t len,
		      uint64_t off)
{
	struct vhdx_direct *d = img->direct;
	struct io_uring_sqe *sqe;
	struct direct_write *w = NULL;
	unsigned i;
	int ret;

	/* a completion already failed: no more writes */
	while ((ret = reap(d, false)) > 0)
		;
	if (ret < 0 || d->error)
		return d->error ? d->error : ret;
	/* writes in flight land in any order: one to the same pages waits */
	ret = vhdx_direct_fence(img, off, len);
	if (ret)
		return ret;
	while (!d->refused &&
	       (d->inflight == DIRECT_DEPTH || d->bytes + len > DIRECT_BYTES)) {
		ret = submit(d);
		if (!ret)
			ret = reap(d, true);
		if (ret < 0)
			return ret;
		if (d->error)
			return d->error;
	}
	if (d->refused) {
		/* found out since the caller asked: once none is in flight,
		 * through the cache like the ones refused */
		ret = vhdx_direct_drain(img);
		return ret ? ret
			   : vhdx_write_full(d->cached_fd, data, len, off);
	}
	for (i = 0; i < DIRECT_DEPTH && !w; i++)
		if (d->w[i].state == W_FREE)
			w = &d->w[i];
	if (!w)
		return -EBUSY; /* cannot be: one is free per write not in flight
				*/
	if (posix_memalign(&w->buf, d->mem_align, len))
		return -ENOMEM;
	memcpy(w->buf, data, len);
	w->off = off;
	w->len = len;
	sqe = io_uring_get_sqe(&d->ring);
	if (!sqe) {
		ret = submit(d);
		sqe = ret ? NULL : io_uring_get_sqe(&d->ring);
		if (!sqe) {
			free(w->buf);
			w->buf = NULL;
			return ret ? ret : -EBUSY;
		}
	}
	io_uring_prep_write(sqe, d->fd, w->buf, (unsigned)len, off);
	io_uring_sqe_set_data(sqe, w);
	w->state = W_FLIGHT;
	d->inflight++;
	d->bytes += len;
	if (++d->queued >= DIRECT_SUBMIT)
		return submit(d);
	return 0;
}

int vhdx_direct_fence(struct vhdx_image *img, uint64_t off, uint64_t len)
{
	struct vhdx_direct *d = img->direct;
	uint64_t lo, hi;
	unsigned i;

	if (!d)
		return 0;
	lo = off - off % DIRECT_PAGE;
	hi = off + len + DIRECT_PAGE - 1;
	hi -= hi % DIRECT_PAGE;
	for (i = 0; i < DIRECT_DEPTH; i++) {
		const struct direct_write *w = &d->w[i];

		if (w->state != W_FREE && w->off < hi && w->off + w->len > lo)
			return vhdx_direct_drain(img);
	}
	return 0;
}

void vhdx_direct_stop(struct vhdx_image *img)
{
	struct vhdx_direct *d = img->direct;

	if (!d)
		return;
	(void)vhdx_direct_drain(img);
	if (d->inflight)
		return; /* the ring failed: leak it rather than free buffers
			 * the kernel may still write from */
	io_uring_queue_exit(&d->ring);
	close(d->fd);
	free(d);
	img->direct = NULL;
}

void vhdx_direct_test_misalign(struct vhdx_image *img)
{
	if (img->direct)
		img->direct->mem_align = 16;
}
