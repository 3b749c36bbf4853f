/* SPDX-License-Identifier: MIT */
/*
 * write.c - the writable raw view: writes, hole punching and fsync handed
 * to the VHDX writer, and the size and attribute changes a fixed-size
 * disk must refuse.
 *
 * Writes go to vhdx_pwrite() and hole punching to vhdx_write_zeroes(); the
 * writer serialises them per image and publishes each BAT entry only after
 * its data.  Writable opens are direct I/O (see view_open()): with no page
 * cache there is nothing the kernel could serve stale after a write, a
 * punched hole or a block the writer turned into a ZERO block.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "fuse/internal.h"

/*
 * How much of a LEN-byte write at OFF fits before the end: like a disk
 * device, a write that starts inside is cut short and one that starts at
 * or past the end fails with ENOSPC.
 */
static int write_span(const struct view_file *f, off_t off, size_t len,
		      size_t *n)
{
	if (off < 0)
		return -EINVAL;
	if ((uint64_t)off >= f->size)
		return -ENOSPC;
	*n = f->size - (uint64_t)off < len ? (size_t)(f->size - (uint64_t)off)
					   : len;
	return 0;
}

static struct view_file *write_file(fuse_req_t req, fuse_ino_t ino)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f = view_ino_file(v, ino);

	if (!f) {
		fuse_reply_err(req, ino == ROOT_INO ? EISDIR : ENOENT);
		return NULL;
	}
	if (!v->writable) {
		fuse_reply_err(req, EROFS);
		return NULL;
	}
	return f;
}

static void do_write(fuse_req_t req, struct view_file *f, const void *buf,
		     size_t n, off_t off)
{
	int ret = vhdx_pwrite(f->img, buf, n, (uint64_t)off);

	if (ret < 0) {
		view_report_write_error(f, "write", (uint64_t)off, n, ret);
		fuse_reply_err(req, -ret);
		return;
	}
	fuse_reply_write(req, n);
}

void view_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
		off_t off, struct fuse_file_info *fi)
{
	struct view_file *f = write_file(req, ino);
	size_t n;
	int ret;

	(void)fi;
	if (!f)
		return;
	ret = write_span(f, off, size, &n);
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	do_write(req, f, buf, n, off);
}

/*
 * libfuse prefers this to view_write().  Without splice from /dev/fuse the
 * data is one buffer in libfuse's memory, handed on as it is; anything
 * else is gathered into one buffer first.
 */
void view_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in,
		    off_t off, struct fuse_file_info *fi)
{
	struct view_file *f = write_file(req, ino);
	struct fuse_bufvec dst = FUSE_BUFVEC_INIT(0);
	const struct fuse_buf *b;
	size_t n;
	ssize_t got;
	char *tmp;
	int ret;

	(void)fi;
	if (!f)
		return;
	ret = write_span(f, off, fuse_buf_size(in), &n);
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	b = &in->buf[in->idx];
	if (in->idx < in->count && !(b->flags & FUSE_BUF_IS_FD) &&
	    b->size - in->off >= n) {
		do_write(req, f, (const char *)b->mem + in->off, n, off);
		return;
	}
	tmp = malloc(n ? n : 1);
	if (!tmp) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	dst.buf[0].mem = tmp;
	dst.buf[0].size = n;
	got = fuse_buf_copy(&dst, in, 0);
	if (got < 0 || (size_t)got != n) {
		fuse_reply_err(req, got < 0 ? (int)-got : EIO);
		free(tmp);
		return;
	}
	do_write(req, f, tmp, n, off);
	free(tmp);
}

/*
 * Punching a hole and zeroing a range are the same to a virtual disk:
 * vhdx_write_zeroes() turns whole blocks into ZERO blocks (or zeros them
 * in place when the image wants its blocks kept allocated) and writes
 * zeros into partial ones.  Plain preallocation means nothing here.
 */
void view_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
		    off_t len, struct fuse_file_info *fi)
{
	struct view_file *f = write_file(req, ino);
	const char *op;
	uint64_t n;
	int ret;

	(void)fi;
	if (!f)
		return;
	if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
		op = "punching a hole";
	} else if (mode == FALLOC_FL_ZERO_RANGE ||
		   mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
		op = "zeroing a range";
	} else {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (off < 0 || len <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/* Without KEEP_SIZE the range may not reach past the end. */
	if (!(mode & FALLOC_FL_KEEP_SIZE) &&
	    ((uint64_t)off >= f->size ||
	     (uint64_t)len > f->size - (uint64_t)off)) {
		fuse_reply_err(req, ENOSPC);
		return;
	}
	if ((uint64_t)off >= f->size) {
		fuse_reply_err(req, 0);
		return;
	}
	n = f->size - (uint64_t)off < (uint64_t)len ? f->size - (uint64_t)off
						    : (uint64_t)len;
	ret = vhdx_write_zeroes(f->img, (uint64_t)off, n);
	if (ret < 0)
		view_report_write_error(f, op, (uint64_t)off, n, ret);
	fuse_reply_err(req, -ret);
}

static void do_flush(fuse_req_t req, fuse_ino_t ino, const char *op)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f = view_ino_file(v, ino);
	int ret;

	if (!f || !v->writable) {
		fuse_reply_err(req, 0);
		return;
	}
	ret = vhdx_flush(f->img);
	if (ret < 0)
		view_report_write_error(f, op, 0, 0, ret);
	fuse_reply_err(req, -ret);
}

/* fsync and fdatasync alike: data and the block map are both needed to
 * read the data back. */
void view_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		struct fuse_file_info *fi)
{
	(void)datasync;
	(void)fi;
	do_flush(req, ino, "fsync");
}

void view_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	do_flush(req, ino, "flush on close");
}

/*
 * Times and modes are not the image's to keep: a touch is accepted and
 * changes nothing.  Ownership, mode and size changes are refused.
 */
void view_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		  struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f = view_ino_file(v, ino);
	struct stat st;

	(void)fi;
	if (ino != ROOT_INO && !f) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!v->writable) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (to_set &
	    (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (!f) {
			fuse_reply_err(req, EISDIR);
			return;
		}
		if ((uint64_t)attr->st_size != f->size) {
			fuse_reply_err(req, EPERM);
			return;
		}
	}
	if (f)
		view_file_stat(v, f, &st);
	else
		view_root_stat(v, &st);
	fuse_reply_attr(req, &st, VIEW_ATTR_TIMEOUT);
}
