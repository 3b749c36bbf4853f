/* SPDX-License-Identifier: MIT */
/*
 * disk.c - the disk a recovery session writes (disk.h): probing the
 * export, the differencing child of a VHDX export (create, reopen,
 * discard, merge), a raw file or block device written in place, and the
 * writes themselves.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/sync/disk.h"
#include "agent/sync/record.h"
#include "agent/sync/serve_session.h"
#include "uring/blocks.h"
#include "vhdx/vhdx.h"

static bool exists(const char *path)
{
	return access(path, F_OK) == 0;
}

int disk_remove_durably(const char *path)
{
	if (unlink(path) && errno != ENOENT)
		return -errno;
	return vhdx_fsync_parent_dir(path);
}

/* ---- the lock ------------------------------------------------------------ */

int disk_lock(struct session *s)
{
	struct vhdx_error verr = { { 0 } };
	int ret;

	ret = vhdx_lock(s->image, VHDX_LOCK_WRITE, &s->hold, &verr);
	if (ret == -EBUSY)
		return session_error(s, PROTO_ERR_IN_USE, "export %s: %s",
				     s->name, verr.msg);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO, "export %s: %s", s->name,
				     verr.msg[0] ? verr.msg : strerror(-ret));
	return 0;
}

void disk_unlock(struct session *s)
{
	vhdx_unlock(s->hold);
	s->hold = NULL;
}

/* ---- the export as it is ------------------------------------------------- */

/* Kind and geometry of a file or device, open at @fd, that is not a VHDX. */
static int probe_plain(struct session *s, int fd, const struct stat *st)
{
	int ret;

	if (!s->blockdev) {
		s->size = (uint64_t)st->st_size;
		s->sector = 512;
		return 0;
	}
	ret = vhdx_blockdev_geometry(fd, &s->size, &s->sector);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot "
				     "read the device's geometry: %s",
				     s->name, strerror(-ret));
	return 0;
}

/* Did an open fail on what the file holds (not on a lock, memory or
 * permission, which say nothing about the image)? */
static bool damaged(int ret)
{
	return ret != -EBUSY && ret != -ENOMEM && ret != -EACCES &&
	       ret != -EPERM && ret != -EMFILE && ret != -ENFILE;
}

int disk_probe(struct session *s)
{
	struct vhdx_image *img;
	struct vhdx_error verr;
	struct stat st;
	int fd, ret;

	fd = open(s->image, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		int e = errno;

		if (fd >= 0)
			close(fd);
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot open "
				     "it: %s",
				     s->name, strerror(e));
	}
	s->blockdev = S_ISBLK(st.st_mode);
	s->vhdx = S_ISREG(st.st_mode) && vhdx_probe_fd(fd) == 1;
	ret = s->vhdx ? 0 : probe_plain(s, fd, &st);
	close(fd);
	if (ret < 0 || !s->vhdx)
		return ret;
	ret = vhdx_open(s->image, 0, &img, &verr);
	if (ret < 0 && (s->hello.flags & PROTO_HELLO_MERGE) && damaged(ret) &&
	    !exists(s->marker)) {
		/* A held copy of an image that no longer opens cannot be
		 * merged; whatever is done to the image next, the copy must
		 * start over rather than resume as if nothing happened. */
		record_remove(s);
		return session_error(s, PROTO_ERR_IO,
				     "export %s: %s; nothing was merged, the "
				     "next push starts over",
				     s->name, verr.msg);
	}
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO, "export %s: %s", s->name,
				     verr.msg);
	s->size = vhdx_get_info(img)->virtual_size;
	s->sector = vhdx_get_info(img)->logical_sector_size;
	vhdx_close(img);
	return 0;
}

int disk_check_geometry(struct session *s)
{
	const struct msg_hello *h = &s->hello;

	if (h->virtual_size == s->size && h->logical_sector == s->sector)
		return 0;
	return session_error(s, PROTO_ERR_GEOMETRY,
			     "geometry mismatch: the "
			     "primary disk has virtual size %" PRIu64 " and "
			     "%u-byte logical sectors, export %s has virtual "
			     "size %" PRIu64 " and %u-byte logical sectors",
			     h->virtual_size, h->logical_sector, s->name,
			     s->size, s->sector);
}

/* ---- the child ----------------------------------------------------------- */

/* A merge that a crash or an error interrupted must complete before
 * anything else touches the image. */
static int finish_interrupted_merge(struct session *s)
{
	struct vhdx_error verr;
	int ret;

	if (!s->vhdx || !exists(s->marker))
		return 0;
	S_LOG(s, LOG_PRIO_WARNING,
	      "export %s: completing an interrupted "
	      "merge of %s",
	      s->name, s->child);
	ret = vhdx_merge(s->child, 0, NULL, NULL, &verr);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot complete "
				     "the interrupted merge: %s",
				     s->name, verr.msg);
	record_remove(s);
	return 0;
}

/* Drop an earlier partial copy: the child and the record. */
static int discard_partial(struct session *s)
{
	int ret = 0;

	if (s->vhdx && exists(s->child)) {
		ret = disk_remove_durably(s->child);
		if (ret < 0)
			return session_error(s, PROTO_ERR_IO,
					     "export %s: cannot "
					     "remove %s: %s",
					     s->name, s->child, strerror(-ret));
	}
	ret = record_remove(s);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot remove "
				     "%s: %s",
				     s->name, s->state, strerror(-ret));
	return 0;
}

uint64_t disk_resume_offset(struct session *s)
{
	struct record r;
	bool have = record_find(s, &r) && (!s->vhdx || exists(s->child));

	return record_resume_offset(s, &r, have);
}

/* Reopen the child of an earlier session; -EINVAL with @verr when it is
 * not (any more) a child of this image. */
static int reopen_child(struct session *s, struct vhdx_error *verr)
{
	const struct vhdx_info *info;
	char real[PATH_MAX];
	int ret;

	ret = vhdx_open(s->child, VHDX_OPEN_RDWR, &s->img, verr);
	if (ret < 0)
		return ret;
	info = vhdx_get_info(s->img);
	if (info->has_parent && info->parent_path &&
	    realpath(info->parent_path, real) && !strcmp(real, s->image))
		return 0;
	vhdx_close(s->img);
	s->img = NULL;
	snprintf(verr->msg, sizeof(verr->msg), "%.400s: not a child of %.400s",
		 s->child, s->image);
	return -EINVAL;
}

static int create_child(struct session *s)
{
	struct vhdx_create_opts opts = { .parent = s->image };
	struct vhdx_error verr;
	int ret;

	ret = vhdx_create(s->child, &opts, &verr);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot "
				     "create the differencing child: %s",
				     s->name, verr.msg);
	/* The progress record will speak of this child: its name must
	 * survive a power cut before any record can. */
	ret = vhdx_fsync_parent_dir(s->child);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot make %s durable "
				     "(fsync of its folder): %s",
				     s->name, s->child, strerror(-ret));
	ret = vhdx_open(s->child, VHDX_OPEN_RDWR, &s->img, &verr);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO, "export %s: %s", s->name,
				     verr.msg);
	return 0;
}

/*
 * REPASS: the source changed while the last pass read it, so what that
 * pass decided may be stale anywhere.  Keep what the child (or the raw
 * disk) holds, it makes equal blocks cheap, but compare from 0 again.
 * The record says "not complete, from 0" before anything else happens,
 * so a cut repass resumes from its own progress and a crash never leaves
 * a record that calls the half-compared copy complete.
 */
static int repass(struct session *s, uint64_t *resume)
{
	int ret;

	if (!(s->hello.flags & PROTO_HELLO_REPASS))
		return 0;
	*resume = 0;
	ret = record_write(s, 0, false);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot record progress in "
				     "%s: %s",
				     s->name, s->state, strerror(-ret));
	return 0;
}

/* Open (or create) the child and decide where to resume. */
static int open_vhdx(struct session *s, uint64_t *resume)
{
	struct vhdx_error verr;
	struct record r;
	bool have;
	int ret;

	ret = finish_interrupted_merge(s);
	if (!ret && (s->hello.flags & PROTO_HELLO_RESTART))
		ret = discard_partial(s);
	if (ret < 0)
		return ret;
	have = record_find(s, &r);
	if (exists(s->child)) {
		if (reopen_child(s, &verr) < 0) {
			/* The image changed under it, or it is damaged:
			 * what it holds is of no use any more. */
			S_LOG(s, LOG_PRIO_WARNING,
			      "export %s: starting "
			      "over: %s",
			      s->name, verr.msg);
			ret = discard_partial(s);
			if (ret < 0)
				return ret;
			have = false;
		}
	} else if (have) {
		record_remove(s);
		have = false;
	}
	if (!s->img) {
		ret = create_child(s);
		if (ret < 0)
			return ret;
	}
	*resume = record_resume_offset(s, &r, have);
	ret = repass(s, resume);
	if (ret < 0)
		return ret;
	ret = ur_source_from_vhdx(s->img, &s->src);
	if (ret < 0)
		return session_error(s, PROTO_ERR_INTERNAL, "out of memory");
	return 0;
}

/* ---- a raw disk ---------------------------------------------------------- */

/* Our own raw source: the signature must not decide the format of a raw
 * export whose guest data starts with "vhdxfile", and the session's write
 * lock (disk_lock()) already covers the file, so it needs no reader's
 * lock of its own.  Made here, it is freed by source_close(), never by
 * ur_source_close(), which frees only what ur_source_open() made. */
static int raw_source(struct session *s)
{
	s->src = calloc(1, sizeof(*s->src));
	if (!s->src)
		return session_error(s, PROTO_ERR_INTERNAL, "out of memory");
	s->src->fd = -1;
	s->src->path = strdup(s->image);
	if (!s->src->path)
		return session_error(s, PROTO_ERR_INTERNAL, "out of memory");
	s->src->type = s->blockdev ? UR_SRC_BLOCKDEV : UR_SRC_FILE;
	s->src->size = s->size;
	s->src->sector_size = s->sector;
	s->src->no_seek_data = s->blockdev;
	s->src->fd = open(s->image, O_RDONLY | O_CLOEXEC);
	if (s->src->fd < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot open it: "
				     "%s",
				     s->name, strerror(errno));
	return 0;
}

static int open_raw(struct session *s, uint64_t *resume)
{
	struct record r;
	bool have;
	int ret;

	if (s->hello.flags & PROTO_HELLO_RESTART) {
		ret = discard_partial(s);
		if (ret < 0)
			return ret;
	}
	have = record_find(s, &r);
	*resume = record_resume_offset(s, &r, have);
	ret = repass(s, resume);
	if (ret < 0)
		return ret;
	s->fd = open(s->image, O_RDWR | O_CLOEXEC);
	if (s->fd < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot open it "
				     "for writing: %s",
				     s->name, strerror(errno));
	ret = raw_source(s);
	if (ret < 0)
		return ret;
	S_LOG(s, LOG_PRIO_WARNING,
	      "export %s: raw, written in place: not "
	      "cancel-safe",
	      s->name);
	return 0;
}

int disk_open(struct session *s, uint64_t *resume)
{
	return s->vhdx ? open_vhdx(s, resume) : open_raw(s, resume);
}

/* ---- writing ------------------------------------------------------------- */

int disk_write(struct session *s, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;
	ssize_t n;

	if (s->vhdx)
		return vhdx_pwrite(s->img, buf, len, off);
	while (len) {
		n = pwrite(s->fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

int disk_zero(struct session *s, uint64_t off, uint64_t len)
{
	static const uint8_t zeros[1 << 16];
	uint64_t range[2] = { off, len };
	int ret;

	if (s->vhdx)
		return vhdx_write_zeroes(s->img, off, len);
	if (s->blockdev) {
		if (!ioctl(s->fd, BLKZEROOUT, range))
			return 0;
	} else if (!fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)off, (off_t)len)) {
		return 0;
	}
	while (len) {
		size_t n = len < sizeof(zeros) ? len : sizeof(zeros);

		ret = disk_write(s, zeros, n, off);
		if (ret < 0)
			return ret;
		off += n;
		len -= n;
	}
	return 0;
}

int disk_flush(struct session *s)
{
	if (s->vhdx)
		return s->img ? vhdx_flush(s->img) : 0;
	return s->fd >= 0 && fdatasync(s->fd) ? -errno : 0;
}

/* ---- the end of a session ------------------------------------------------ */

/* The reader's source: a VHDX child's from ur_source_from_vhdx(), a raw
 * disk's from raw_source(), each freed by the side that made it. */
static void source_close(struct session *s)
{
	if (s->src && !s->vhdx) {
		if (s->src->fd >= 0)
			close(s->src->fd);
		free(s->src->path);
		free(s->src);
	} else {
		ur_source_close(s->src);
	}
	s->src = NULL;
}

int disk_commit(struct session *s)
{
	int ret;

	source_close(s);
	if (!s->vhdx) {
		ret = fdatasync(s->fd) ? -errno : 0;
		close(s->fd);
		s->fd = -1;
		if (ret < 0)
			return session_error(s, PROTO_ERR_IO,
					     "export %s: flush: "
					     "%s",
					     s->name, strerror(-ret));
		record_remove(s);
		return 0;
	}
	ret = vhdx_close_checked(s->img);
	s->img = NULL;
	/* "complete" and FINISHED promise a child that a power cut keeps:
	 * its folder entry is made durable first. */
	if (!ret)
		ret = vhdx_fsync_parent_dir(s->child);
	if (!ret)
		ret = record_write(s, s->size, true);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot flush "
				     "%s: %s",
				     s->name, s->child, strerror(-ret));
	return 0;
}

int disk_merge(struct session *s)
{
	struct vhdx_error verr;
	double t0 = mono_seconds();
	int ret;

	/* Before the merge can remove the child: a record that outlives it
	 * then says the merge finished, not that the child was lost. */
	ret = record_mark_merging(s);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot record the merge in "
				     "%s: %s",
				     s->name, s->state, strerror(-ret));
	ret = vhdx_merge(s->child, 0, NULL, NULL, &verr);
	s->merge_seconds = mono_seconds() - t0;
	if (ret < 0 && exists(s->marker))
		return session_error(s, PROTO_ERR_IO,
				     "export %s: merge failed after it began "
				     "to write the image (it is completed "
				     "before the image is used again): %s",
				     s->name, verr.msg);
	if (ret < 0) {
		/* nothing began: the record says plainly complete again */
		record_write(s, s->size, true);
		return session_error(s, PROTO_ERR_IO,
				     "export %s: merge failed before it "
				     "wrote the image (unchanged; the copy "
				     "is kept): %s",
				     s->name, verr.msg);
	}
	record_remove(s);
	return 0;
}

/* After a failure: flush what was written and record how far it got. */
static void keep_progress(struct session *s)
{
	uint64_t done;
	int ret;

	pthread_mutex_lock(&s->lock);
	done = ur_clip(s->size, 0, s->done_block * s->bs);
	pthread_mutex_unlock(&s->lock);
	ret = disk_flush(s);
	if (!ret)
		ret = record_write(s, done, false);
	if (ret < 0)
		S_LOG(s, LOG_PRIO_ERR,
		      "export %s: cannot record "
		      "progress: %s",
		      s->name, strerror(-ret));
	else if (done)
		S_LOG(s, LOG_PRIO_INFO,
		      "export %s: progress kept: "
		      "a later push resumes at %" PRIu64,
		      s->name, done);
}

void disk_close(struct session *s, bool failed)
{
	source_close(s);
	if (failed && (s->img || s->fd >= 0))
		keep_progress(s);
	if (s->img) {
		vhdx_close(s->img);
		s->img = NULL;
	}
	if (s->fd >= 0) {
		close(s->fd);
		s->fd = -1;
	}
}

/* ---- MERGE and DISCARD sessions ------------------------------------------ */

/* A held copy that cannot be merged: forget it (the record, and the
 * child when @drop_child) so the next push starts over. */
static void forget_copy(struct session *s, bool drop_child)
{
	int ret = 0;

	if (drop_child)
		ret = disk_remove_durably(s->child);
	if (!ret)
		ret = record_remove(s);
	if (ret < 0)
		S_LOG(s, LOG_PRIO_ERR, "export %s: cannot forget the copy: %s",
		      s->name, strerror(-ret));
}

int disk_merge_held(struct session *s, const char **result)
{
	struct vhdx_image *img;
	struct vhdx_error verr;
	struct record r;
	bool have;
	int ret;

	if (!s->vhdx) {
		*result = "nothing to merge";
		return 0;
	}
	if (exists(s->marker)) {
		ret = finish_interrupted_merge(s);
		if (ret < 0)
			return ret;
		*result = "merged";
		return 0;
	}
	have = record_find(s, &r);
	if (!exists(s->child)) {
		if (!have) {
			*result = "nothing to merge";
			return 0;
		}
		if (r.merging) {
			/* the merge finished (a crash came before the
			 * record went, or the agent finished it at start) */
			record_remove(s);
			*result = "merged";
			return 0;
		}
		if (r.discarded) {
			forget_copy(s, false);
			return session_error(
				s, PROTO_ERR_IO,
				"export %s: the copy held in %s "
				"was discarded on the recovery "
				"side (hvresync vm discard): "
				"nothing was merged; resynchronize "
				"again",
				s->name, s->child);
		}
		forget_copy(s, false);
		return session_error(s, PROTO_ERR_IO,
				     "export %s: the copy held in %s is "
				     "gone although its record says %s: "
				     "nothing was merged; the next push "
				     "starts over",
				     s->name, s->child,
				     r.complete ? "complete" : "partial");
	}
	if (!have || !r.complete)
		return session_error(
			s, PROTO_ERR_IO,
			"export %s: the copy held "
			"in %s is incomplete: push it again before "
			"merging",
			s->name, s->child);
	/* The child and the image it was made from must still open as one
	 * chain (a damaged header, a changed image), or nothing is merged. */
	ret = vhdx_open(s->child, 0, &img, &verr);
	if (ret < 0 && !damaged(ret))
		return session_error(s, PROTO_ERR_IO, "export %s: %s", s->name,
				     verr.msg);
	if (ret < 0) {
		forget_copy(s, true);
		return session_error(s, PROTO_ERR_IO,
				     "export %s: the copy held in %s cannot "
				     "be merged: %s; nothing was merged, the "
				     "next push starts over",
				     s->name, s->child, verr.msg);
	}
	vhdx_close(img);
	ret = disk_merge(s);
	if (ret < 0)
		return ret;
	*result = "merged";
	return 0;
}

const char *disk_end_note(struct session *s, int ret)
{
	if (!s->vhdx)
		return "";
	if (exists(s->marker))
		return " (a merge has begun to write the image: it is "
		       "completed before the image is used again)";
	if (ret < 0 && exists(s->child))
		return " (the image is unchanged; the child is kept for "
		       "resume)";
	return "";
}

int disk_discard_all(struct session *s)
{
	int ret;

	ret = finish_interrupted_merge(s);
	if (!ret)
		ret = discard_partial(s);
	return ret;
}
