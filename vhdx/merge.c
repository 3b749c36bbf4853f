/* SPDX-License-Identifier: MIT */
/*
 * merge.c - merging a differencing child into its parent.
 *
 * The parent's DataWriteGuid changes at its first write, after which the
 * child no longer links to it; so before touching the parent we record
 * its path in CHILD.merging (fsync'd with its directory).  Copying the
 * child's blocks is idempotent, so a merge interrupted at any point is
 * completed by running it again: the marker says the linkage mismatch is
 * our own doing.  The child and then the marker are removed last.
 *
 * Before the marker, what the merge will take of the filesystem is worked
 * out (space.c) and a merge that would run out of space half way is
 * refused with nothing written: a half-merged parent is neither the old
 * disk nor the new one, and until the merge is finished nothing may use it.
 *
 * The merge is done once the child's name is durably gone.  Its blocks go
 * back to the filesystem when its last descriptor closes, and that can
 * cost more than the whole copy: a child of N scattered sectors is N
 * extents, and a filesystem mounted with discard (ext4) frees them one
 * journal transaction at a time.  So a thread closes that last descriptor
 * and the caller has its answer first; a process that exits right away
 * (the CLI) waits for it in its exit instead.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define COPY_CHUNK (4 * MiB)

static int write_marker(const char *marker, const char *parent)
{
	char tmp[PATH_MAX + 16];
	int fd, ret = 0;
	size_t len = strlen(parent);

	snprintf(tmp, sizeof(tmp), "%s.tmp", marker);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (write(fd, parent, len) != (ssize_t)len || write(fd, "\n", 1) != 1)
		ret = -EIO;
	if (!ret && fsync(fd))
		ret = -errno;
	close(fd);
	if (!ret && rename(tmp, marker))
		ret = -errno;
	if (ret)
		unlink(tmp);
	else
		ret = vhdx_fsync_parent_dir(marker);
	return ret;
}

static int read_marker(const char *marker, char *parent, size_t len)
{
	FILE *f = fopen(marker, "re");
	size_t n;

	if (!f)
		return -errno;
	if (!fgets(parent, (int)len, f)) {
		fclose(f);
		return -EINVAL;
	}
	fclose(f);
	n = strlen(parent);
	if (n && parent[n - 1] == '\n')
		parent[--n] = '\0';
	return n ? 0 : -EINVAL;
}

static void *release_main(void *arg)
{
	close((int)(intptr_t)arg);
	return NULL;
}

/* Close FD, the last reference to the removed child, in a thread of its
 * own (see the top of this file); here when no thread can be started. */
static void release_later(int fd)
{
	pthread_attr_t attr;
	pthread_t t;
	int ret;

	if (fd < 0)
		return;
	if (pthread_attr_init(&attr)) {
		close(fd);
		return;
	}
	ret = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (!ret)
		ret = pthread_create(&t, &attr, release_main,
				     (void *)(intptr_t)fd);
	pthread_attr_destroy(&attr);
	if (ret)
		close(fd);
}

/* A size for people: "130 MiB", "1.5 GiB". */
static void human(char *buf, size_t len, uint64_t bytes)
{
	static const char *const unit[] = { "bytes", "KiB", "MiB",
					    "GiB",   "TiB", "PiB" };
	uint64_t div = 1;
	unsigned u = 0;

	while (u + 1 < sizeof(unit) / sizeof(unit[0]) && bytes >= div * 1024) {
		div *= 1024;
		u++;
	}
	if (u == 0 || bytes >= 10 * div)
		snprintf(buf, len, "%llu %s",
			 (unsigned long long)((bytes + div / 2) / div),
			 unit[u]);
	else
		snprintf(buf, len, "%.1f %s", (double)bytes / (double)div,
			 unit[u]);
}

/* Refuse, with both figures, a merge the filesystem has no room for.
 * RESUMING: an interrupted merge, which stays where it stopped. */
static int check_space(struct vhdx_image *child, struct vhdx_image *parent,
		       bool resuming, struct vhdx_error *err)
{
	struct vhdx_space sp;
	char need[32], have[32];
	int ret;

	ret = vhdx_merge_space(child, parent, &sp);
	if (ret)
		return vhdx_fail(
			err, ret, parent->path,
			"cannot work out the space the merge needs: %s",
			strerror(-ret));
	if (!sp.known || sp.need <= sp.free)
		return 0;
	human(need, sizeof(need), sp.need);
	human(have, sizeof(have), sp.free);
	return vhdx_fail(
		err, -ENOSPC, parent->path,
		"the merge needs %s (%llu bytes) but the filesystem has %s (%llu bytes) free; %s and %s is kept: free space and merge again",
		need, (unsigned long long)sp.need, have,
		(unsigned long long)sp.free,
		resuming ? "the interrupted merge is left as it stopped"
			 : "nothing was written",
		child->path);
}

/*
 * The child's runs ahead of the copy, whose reads are asked for before
 * the copy gets there: a child of scattered sectors is as many small
 * reads, which on a cold cache then come from the disk together instead
 * of one after the other.  A hint only: a failure is no error here.
 * It starts at the first run the page cache does not hold: a child just
 * written (the usual merge, right after the copy) is all there, and
 * asking for it again costs a system call per run and, for the holes
 * between runs, zeroed pages.
 */
struct ahead {
	struct vhdx_map_iter it;
	bool cold;	/* a read missed the cache: reading ahead */
	uint64_t runs;	/* runs it has gone past */
	uint64_t bytes; /* of data it has asked for */
	bool end;
	/* Runs close together in the child's file are asked for as one
	 * range: a system call per 4 KiB sector costs more than reading
	 * the few holes between them. */
	int fd;
	uint64_t lo, hi; /* the range not yet asked for; lo == hi: none */
};

/* Gaps up to this much between runs are read along: a gap is mostly a
 * hole, whose pages are zeroed, so not much more than a system call's
 * worth. */
#define AHEAD_GAP (32u << 10)
#define AHEAD_RANGE (1u << 20)

static void ahead_flush(struct ahead *a)
{
	if (a->hi > a->lo)
		(void)posix_fadvise(a->fd, (off_t)a->lo, (off_t)(a->hi - a->lo),
				    POSIX_FADV_WILLNEED);
	a->lo = a->hi = 0;
}

static void ahead_add(struct ahead *a, int fd, uint64_t off, uint64_t n)
{
	if (a->hi > a->lo && fd == a->fd && off >= a->lo &&
	    off <= a->hi + AHEAD_GAP) {
		if (off + n > a->hi)
			a->hi = off + n;
		return;
	}
	ahead_flush(a);
	a->fd = fd;
	a->lo = off;
	a->hi = off + n;
}

#define AHEAD_RUNS 256
#define AHEAD_BYTES (8 * MiB)

/* Ask for the runs from the COPIED-th on until AHEAD_RUNS runs or
 * AHEAD_BYTES bytes past the BYTES the copy has read. */
static void read_ahead(struct ahead *a, uint64_t copied, uint64_t bytes)
{
	struct vhdx_extent e;
	uint64_t n;

	if (!a->cold)
		return;
	if (a->bytes < bytes)
		a->bytes = bytes; /* it started late */
	while (!a->end && a->runs < copied + AHEAD_RUNS &&
	       a->bytes < bytes + AHEAD_BYTES) {
		if (vhdx_map_next(&a->it, &e) <= 0) {
			a->end = true;
			break;
		}
		if (a->runs++ < copied || e.kind != VHDX_EXT_DATA)
			continue; /* copied before it started, or no read */
		n = bytes + AHEAD_BYTES - a->bytes;
		if (n > e.len)
			n = e.len;
		ahead_add(a, e.fd, e.file_off, n);
		a->bytes += e.len;
	}
	/* A range is asked for when the next run is not close by, when it
	 * has grown to AHEAD_RANGE (so the copy, AHEAD_RUNS behind, never
	 * catches up with an unasked range), and at the end. */
	if (a->end || a->hi - a->lo >= AHEAD_RANGE)
		ahead_flush(a);
}

/* Read N bytes of the COPIED-th run: from the page cache while it holds
 * them, else the usual way, with the read-ahead started there. */
static int read_run(struct vhdx_image *child, struct ahead *a, uint64_t copied,
		    uint64_t read, void *buf, size_t n, uint64_t off)
{
	int ret;

	if (!a->cold) {
		ret = vhdx_file_read_cached(child, buf, n, off);
		if (ret != -EAGAIN)
			return ret;
		a->cold = true;
		read_ahead(a, copied, read);
	}
	return vhdx_file_read(child, buf, n, off);
}

/* Copy every run the child holds itself into the parent. */
static int copy_runs(struct vhdx_image *child, struct vhdx_image *parent,
		     vhdx_progress_fn progress, void *ctx,
		     struct vhdx_error *err)
{
	uint64_t size = child->info.virtual_size, copied = 0, read = 0;
	struct vhdx_map_iter it;
	struct vhdx_extent e;
	struct ahead a = { .end = false };
	uint8_t *buf = malloc(COPY_CHUNK);
	int ret;

	if (!buf)
		return vhdx_fail(err, -ENOMEM, child->path, "out of memory");
	vhdx_map_iter_init(&it, child, 0, size, VHDX_MAP_NO_RESOLVE);
	vhdx_map_iter_init(&a.it, child, 0, size, VHDX_MAP_NO_RESOLVE);
	while ((ret = vhdx_map_next(&it, &e)) > 0) {
		uint64_t done = 0, n;

		read_ahead(&a, copied, read);

		switch (e.kind) {
		case VHDX_EXT_DATA:
		case VHDX_EXT_MEM:
			while (done < e.len) {
				n = e.len - done < COPY_CHUNK ? e.len - done
							      : COPY_CHUNK;
				if (e.kind == VHDX_EXT_MEM) {
					memcpy(buf,
					       (const uint8_t *)e.mem + done,
					       n);
				} else {
					ret = read_run(child, &a, copied, read,
						       buf, n,
						       e.file_off + done);
					if (ret) {
						vhdx_fail(
							err, ret, child->path,
							"read at %llu: %s",
							(unsigned long long)(e.file_off +
									     done),
							strerror(-ret));
						goto out;
					}
				}
				ret = vhdx_pwrite(parent, buf, n, e.off + done);
				if (ret) {
					vhdx_fail(err, ret, parent->path,
						  "write at %llu: %s",
						  (unsigned long long)(e.off +
								       done),
						  strerror(-ret));
					goto out;
				}
				done += n;
				if (e.kind == VHDX_EXT_DATA)
					read += n;
				if (progress)
					progress(ctx, e.off + done, size);
			}
			break;
		case VHDX_EXT_ZERO:
			ret = vhdx_write_zeroes(parent, e.off, e.len);
			if (ret) {
				vhdx_fail(err, ret, parent->path,
					  "zeroing at %llu: %s",
					  (unsigned long long)e.off,
					  strerror(-ret));
				goto out;
			}
			break;
		default: /* the parent's own data: nothing to do */
			break;
		}
		copied++;
	}
	if (ret < 0)
		vhdx_fail(err, ret, child->path, "mapping failed: %s",
			  strerror(-ret));
out:
	free(buf);
	return ret < 0 ? ret : 0;
}

int vhdx_merge(const char *child_path, unsigned flags,
	       vhdx_progress_fn progress, void *ctx, struct vhdx_error *err)
{
	struct vhdx_image *child = NULL, *parent = NULL;
	struct vhdx_lock *clk = NULL, *plk = NULL;
	struct vhdx_error perr;
	char marker[PATH_MAX], ppath[PATH_MAX];
	bool resuming;
	int ret, keep = -1;

	if (err)
		err->msg[0] = '\0';
	if (snprintf(marker, sizeof(marker), "%s.merging", child_path) >=
	    (int)sizeof(marker))
		return vhdx_fail(err, -ENAMETOOLONG, child_path,
				 "path too long");
	/* Both files are written (the child removed): held by us alone. */
	if (access(child_path, F_OK) == 0) {
		ret = vhdx_lock(child_path, VHDX_LOCK_WRITE, &clk, err);
		if (ret)
			return ret;
	}
	resuming = access(marker, F_OK) == 0;
	if (resuming) {
		ret = read_marker(marker, ppath, sizeof(ppath));
		if (ret) {
			vhdx_fail(err, ret, marker, "unreadable merge marker");
			goto out;
		}
		if (access(child_path, F_OK)) {
			/* Crashed after the child was removed: finished. */
			unlink(marker);
			ret = vhdx_fsync_parent_dir(marker);
			goto out;
		}
		ret = vhdx_lock(ppath, VHDX_LOCK_WRITE, &plk, err);
		if (ret)
			goto out;
		ret = vhdx_open(child_path, VHDX_OPEN_NO_PARENT, &child, err);
		if (ret)
			goto out;
	} else {
		ret = vhdx_open(child_path, flags & VHDX_OPEN_IGNORE_LINKAGE,
				&child, err);
		if (ret)
			goto out;
		if (!child->info.has_parent) {
			ret = vhdx_fail(
				err, -EINVAL, child_path,
				"not a differencing disk: nothing to merge");
			goto out;
		}
		if (!realpath(child->info.parent_path, ppath)) {
			ret = vhdx_fail(err, -errno, child->info.parent_path,
					"%s", strerror(errno));
			goto out;
		}
		/* The parent stays open (and locked for reading) only for
		 * the checks above; the child is read on as it is. */
		vhdx_close(child->parent);
		child->parent = NULL;
		ret = vhdx_lock(ppath, VHDX_LOCK_WRITE, &plk, err);
		if (ret)
			goto out;
	}
	/* Opening it for writing writes nothing (unless its own log needs
	 * replaying): the first write does. */
	ret = vhdx_open(ppath, VHDX_OPEN_RDWR | VHDX_OPEN_IGNORE_LINKAGE,
			&parent, &perr);
	if (ret) {
		vhdx_fail(err, ret, child_path, "parent %s", perr.msg);
		goto out;
	}
	if (parent->info.virtual_size < child->info.virtual_size) {
		ret = vhdx_fail(err, -EINVAL, child_path,
				"parent %s is smaller than the child", ppath);
		goto out;
	}
	ret = check_space(child, parent, resuming, err);
	if (ret)
		goto out;
	/* the merge is redone whole after a crash: one commit at the end */
	vhdx_writer_batch(parent);
	if (!resuming) {
		ret = write_marker(marker, ppath);
		if (ret) {
			vhdx_fail(err, ret, marker,
				  "cannot write merge marker: %s",
				  strerror(-ret));
			goto out;
		}
	}
	ret = copy_runs(child, parent, progress, ctx, err);
	if (ret)
		goto out;
	ret = vhdx_close_checked(parent);
	parent = NULL;
	if (ret) {
		vhdx_fail(err, ret, ppath, "flush failed: %s", strerror(-ret));
		goto out;
	}
	vhdx_close(child);
	child = NULL;
	/* held across the unlink: the blocks are given back at its close */
	keep = open(child_path, O_RDONLY | O_CLOEXEC);
	if (unlink(child_path) && errno != ENOENT) {
		ret = vhdx_fail(err, -errno, child_path,
				"cannot remove after merging: %s",
				strerror(errno));
		goto out;
	}
	ret = vhdx_fsync_parent_dir(child_path);
	if (!ret && unlink(marker) && errno != ENOENT)
		ret = -errno;
	if (!ret)
		ret = vhdx_fsync_parent_dir(marker);
	if (ret)
		vhdx_fail(err, ret, marker, "cannot remove merge marker: %s",
			  strerror(-ret));
out:
	vhdx_close(parent);
	vhdx_close(child);
	vhdx_unlock(plk);
	vhdx_unlock(clk);
	/* after every other descriptor of the child: this one is the last */
	release_later(keep);
	return ret;
}
