/* SPDX-License-Identifier: MIT */
/*
 * snapshot.c - point-in-time clones of source disks (snapshot.h): FICLONE
 * into hidden files next to each disk, made back to back, reused by a job
 * that resumes, removed by their owner or by the sweep at agent start.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "agent/lib/fmt.h"
#include "agent/lib/snapshot.h"
#include "vhdx/vhdx.h"

/* Magic numbers linux/magic.h may lack on older headers. */
#ifndef XFS_SUPER_MAGIC
#define XFS_SUPER_MAGIC 0x58465342
#endif
#ifndef BCACHEFS_SUPER_MAGIC
#define BCACHEFS_SUPER_MAGIC 0xca451a4e
#endif
#define ZFS_SUPER_MAGIC_ 0x2fc12fc1
#define FUSE_SUPER_MAGIC_ 0x65735546
#define CIFS_SUPER_MAGIC_ 0xff534d42
#define SMB2_SUPER_MAGIC_ 0xfe534d42
#define CEPH_SUPER_MAGIC_ 0x00c36400
#define F2FS_SUPER_MAGIC_ 0xf2f52010

/* A clone is made with CLONE_MODE and gets CLONE_DONE_MODE once it is
 * whole and durable: the mark that lets a restarted job reuse it. */
#define CLONE_MODE 0600
#define CLONE_DONE_MODE 0400

int snap_mode_parse(const char *word, enum snap_mode *mode)
{
	if (!strcmp(word, "auto"))
		*mode = SNAP_AUTO;
	else if (!strcmp(word, "reflink"))
		*mode = SNAP_REFLINK;
	else if (!strcmp(word, "none"))
		*mode = SNAP_NONE;
	else
		return -EINVAL;
	return 0;
}

const char *snap_mode_name(enum snap_mode mode)
{
	switch (mode) {
	case SNAP_AUTO:
		return "auto";
	case SNAP_REFLINK:
		return "reflink";
	case SNAP_NONE:
		return "none";
	}
	return "?";
}

static bool owner_ok(const char *owner, size_t len)
{
	size_t i;

	if (!len || len > SNAP_OWNER_MAX)
		return false;
	for (i = 0; i < len; i++) {
		char c = owner[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		      (c >= '0' && c <= '9') || c == '-'))
			return false;
	}
	return true;
}

int snap_path(const char *src, const char *owner, char *out, size_t len)
{
	const char *slash, *name;
	int dirlen, n;

	if (!owner_ok(owner, strlen(owner)))
		return -EINVAL;
	slash = strrchr(src, '/');
	name = slash ? slash + 1 : src;
	dirlen = slash ? (int)(slash - src) + 1 : 0;
	if (!*name)
		return -EINVAL;
	/* The clone's own name must fit in one directory entry. */
	if (strlen(SNAP_PREFIX) + strlen(owner) + 1 + strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	n = snprintf(out, len, "%.*s%s%s.%s", dirlen, src, SNAP_PREFIX, owner,
		     name);
	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	return 0;
}

/* The filesystem's name for a human, from statfs(2). */
static const char *fs_name(unsigned long type)
{
	switch (type) {
	case XFS_SUPER_MAGIC:
		return "XFS";
	case EXT4_SUPER_MAGIC: /* ext2 and ext3 share it */
		return "ext4";
	case TMPFS_MAGIC:
		return "tmpfs";
	case BTRFS_SUPER_MAGIC:
		return "btrfs";
	case NFS_SUPER_MAGIC:
		return "NFS";
	case OVERLAYFS_SUPER_MAGIC:
		return "overlayfs";
	case BCACHEFS_SUPER_MAGIC:
		return "bcachefs";
	case ZFS_SUPER_MAGIC_:
		return "ZFS";
	case FUSE_SUPER_MAGIC_:
		return "a FUSE filesystem";
	case CIFS_SUPER_MAGIC_:
	case SMB2_SUPER_MAGIC_:
		return "SMB";
	case CEPH_SUPER_MAGIC_:
		return "CephFS";
	case F2FS_SUPER_MAGIC_:
		return "F2FS";
	}
	return NULL;
}

/*
 * Why FICLONE failed with @e on the filesystem of @fd, in words: "XFS
 * without reflink", "not supported by ext4", or the filesystem and the
 * error.
 */
static void clone_reason(int fd, int e, char *out, size_t len)
{
	struct statfs sfs;
	const char *fs = "this filesystem";
	char unknown[48];

	if (!fstatfs(fd, &sfs)) {
		fs = fs_name((unsigned long)sfs.f_type);
		if (!fs) {
			snprintf(unknown, sizeof(unknown),
				 "this filesystem (type 0x%lx)",
				 (unsigned long)sfs.f_type);
			fs = unknown;
		}
	}
	if (e == EOPNOTSUPP || e == ENOTTY || e == ENOSYS) {
		if (!strcmp(fs, "XFS"))
			snprintf(
				out, len,
				"XFS without reflink (made without -m reflink=1)");
		else
			snprintf(out, len, "not supported by %s", fs);
	} else if (e == EXDEV) {
		snprintf(
			out, len,
			"the clone's folder is on another filesystem than the disk (a symlink?)");
	} else {
		snprintf(out, len, "%s refused the clone: %s", fs, strerror(e));
	}
}

/* Filesystems that cannot share blocks at all, whatever their options. */
static bool never_clones(unsigned long type)
{
	return type == EXT4_SUPER_MAGIC || type == TMPFS_MAGIC ||
	       type == FUSE_SUPER_MAGIC_;
}

/* One disk while the set is being made. */
struct take_disk {
	int src_fd, dst_fd;
	bool want;   /* clone it (mode reflink or auto, not a block device) */
	bool made;   /* this call created the clone file */
	bool reused; /* an existing clone is kept */
	int error;   /* FICLONE's errno, or 0 */
};

static void set_free(struct snap_set *set)
{
	unsigned i;

	for (i = 0; set->disks && i < set->n; i++) {
		free(set->disks[i].src);
		free(set->disks[i].clone);
	}
	free(set->disks);
	set->disks = NULL;
	set->n = 0;
	set->taken = 0;
}

static void remove_clone(const char *path)
{
	if (!unlink(path))
		vhdx_fsync_parent_dir(path);
}

/*
 * An existing clone at @path: reusable when it is a regular file marked
 * complete (CLONE_DONE_MODE, set once the clone was durable; a clone cut
 * short by a crash or a kill still has CLONE_MODE).  Its size is not
 * compared with the disk's: a VM's dynamic VHDX grows, and the clone
 * keeps the size the disk had.  Returns 1 reusable, 0 nothing there,
 * -ESTALE for an incomplete clone (to be replaced), or -EEXIST for
 * something that is no regular file (left alone: we did not make it).
 */
static int existing_clone(const char *path, int64_t *mtime)
{
	struct stat st;

	if (lstat(path, &st))
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISREG(st.st_mode))
		return -EEXIST;
	if ((st.st_mode & 07777) != CLONE_DONE_MODE)
		return -ESTALE;
	*mtime = (int64_t)st.st_mtim.tv_sec * 1000000 +
		 st.st_mtim.tv_nsec / 1000;
	return 1;
}

/*
 * Open the source, decide what to do with it, and create an empty clone
 * file where one is to be made.  Everything slow happens here, so that
 * the clones themselves can be made back to back afterwards.
 */
static int prepare(struct snap_disk *d, struct take_disk *t,
		   enum snap_mode mode, const char *owner, char *err,
		   size_t errlen)
{
	char path[PATH_MAX], why[200];
	struct statfs sfs;
	struct stat st;
	int ret;

	t->src_fd = open(d->src, O_RDONLY | O_CLOEXEC);
	if (t->src_fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot open: %s", d->src,
			 strerror(-ret));
		return ret;
	}
	if (fstat(t->src_fd, &st)) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot stat: %s", d->src,
			 strerror(-ret));
		return ret;
	}
	d->mode = SNAP_NONE;
	if (S_ISBLK(st.st_mode)) {
		d->blockdev = true;
		if (mode == SNAP_REFLINK) {
			snprintf(
				err, errlen,
				"%s: a block device cannot be cloned; read an LVM snapshot of it instead",
				d->src);
			return -EOPNOTSUPP;
		}
		if (mode == SNAP_AUTO)
			snprintf(d->note, sizeof(d->note), "a block device");
		return 0;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: not a regular file or block device",
			 d->src);
		return -EINVAL;
	}
	if (mode == SNAP_NONE)
		return 0;
	/* Where FICLONE can never work, do not even make the file: a folder
	 * of FUSE views may not take one, and nothing is gained. */
	if (!fstatfs(t->src_fd, &sfs) &&
	    never_clones((unsigned long)sfs.f_type)) {
		clone_reason(t->src_fd, EOPNOTSUPP, why, sizeof(why));
		if (mode == SNAP_AUTO) {
			snprintf(d->note, sizeof(d->note), "%s", why);
			return 0;
		}
		snprintf(err, errlen,
			 "%s: cannot clone it (snapshot reflink): %s", d->src,
			 why);
		return -EOPNOTSUPP;
	}
	ret = snap_path(d->src, owner, path, sizeof(path));
	if (ret < 0) {
		snprintf(err, errlen, "%s: %s", d->src,
			 ret == -EINVAL ? "invalid snapshot owner"
					: "the clone's name is too long");
		return ret;
	}
	d->clone = strdup(path);
	if (!d->clone)
		return -ENOMEM;
	t->want = true;
	return 0;
}

/* Create the empty file FICLONE fills: hidden, 0600, never through a
 * symlink, never over a file we did not just decide to replace. */
static int create_clone(struct snap_disk *d, struct take_disk *t, char *err,
			size_t errlen)
{
	int ret;

	t->dst_fd = open(d->clone,
			 O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			 CLONE_MODE);
	if (t->dst_fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot create its clone %s: %s",
			 d->src, d->clone, strerror(-ret));
		return ret;
	}
	t->made = true;
	return 0;
}

/* A disk falls back to mode none (auto): forget its clone file. */
static void fall_back(struct snap_disk *d, struct take_disk *t)
{
	if (t->dst_fd >= 0) {
		close(t->dst_fd);
		t->dst_fd = -1;
	}
	if (t->made)
		unlink(d->clone);
	t->made = false;
	free(d->clone);
	d->clone = NULL;
	d->mode = SNAP_NONE;
	t->want = false;
}

/*
 * Reuse: every clone the set needs exists and is whole, or none is kept.
 * A set made partly of old clones and partly of new ones would not be
 * one moment, so one missing or stale clone means all are made again
 * (the caller sees reused false and starts over).  Returns 0 or an error
 * for a name taken by something that is not a regular file.
 */
static int try_reuse(struct snap_set *set, struct take_disk *t, char *err,
		     size_t errlen, int64_t *taken)
{
	int64_t mtime = 0, oldest = 0;
	bool all = true, any = false;
	unsigned i;
	int ret;

	for (i = 0; i < set->n; i++) {
		if (!t[i].want)
			continue;
		any = true;
		ret = existing_clone(set->disks[i].clone, &mtime);
		if (ret == -EEXIST) {
			snprintf(
				err, errlen,
				"%s: exists and is not a regular file; left alone",
				set->disks[i].clone);
			return -EEXIST;
		}
		if (ret != 1) {
			all = false;
			continue;
		}
		if (!oldest || mtime < oldest)
			oldest = mtime;
	}
	if (!any || !all)
		return 0;
	for (i = 0; i < set->n; i++) {
		if (!t[i].want)
			continue;
		t[i].reused = true;
		set->disks[i].mode = SNAP_REFLINK;
		set->disks[i].reused = true;
	}
	/* FICLONE stamps the clone with the time it was made. */
	*taken = oldest;
	return 0;
}

int snap_take(struct snap_set *set, const char *const *src, unsigned n,
	      enum snap_mode mode, const char *owner, bool reuse, char *err,
	      size_t errlen)
{
	struct take_disk *t = NULL;
	bool cloned = false;
	int64_t taken = 0;
	unsigned i;
	int ret = 0;

	memset(set, 0, sizeof(*set));
	if (err && errlen)
		err[0] = '\0';
	if (mode != SNAP_NONE && !owner_ok(owner, strlen(owner))) {
		snprintf(err, errlen, "snapshot owner \"%s\" is not valid",
			 owner);
		return -EINVAL;
	}
	set->disks = calloc(n ? n : 1, sizeof(*set->disks));
	t = calloc(n ? n : 1, sizeof(*t));
	if (!set->disks || !t) {
		ret = -ENOMEM;
		goto fail;
	}
	set->n = n;
	for (i = 0; i < n; i++) {
		t[i].src_fd = t[i].dst_fd = -1;
		set->disks[i].src = strdup(src[i]);
		if (!set->disks[i].src) {
			ret = -ENOMEM;
			goto fail;
		}
	}

	/* 1. Open every source and settle what each gets. */
	for (i = 0; i < n; i++) {
		ret = prepare(&set->disks[i], &t[i], mode, owner, err, errlen);
		if (ret < 0)
			goto fail;
	}
	if (reuse) {
		ret = try_reuse(set, t, err, errlen, &taken);
		if (ret < 0)
			goto fail;
	}

	/* 2. Create the empty clone files; a stale one of ours (same owner,
	 * same disk: nobody else uses the name) is replaced. */
	for (i = 0; i < n; i++) {
		struct snap_disk *d = &set->disks[i];
		struct stat st;

		if (!t[i].want || t[i].reused)
			continue;
		if (!lstat(d->clone, &st)) {
			if (!S_ISREG(st.st_mode)) {
				snprintf(
					err, errlen,
					"%s: exists and is not a regular file; left alone",
					d->clone);
				ret = -EEXIST;
				goto fail;
			}
			unlink(d->clone);
		}
		ret = create_clone(d, &t[i], err, errlen);
		if (ret < 0 && mode == SNAP_AUTO) {
			/* A folder we cannot write (read-only, no
			 * permission) is one more reason for none. */
			snprintf(d->note, sizeof(d->note),
				 "cannot create a clone next to it: %s",
				 strerror(-ret));
			fall_back(d, &t[i]);
			if (err && errlen)
				err[0] = '\0';
			continue;
		}
		if (ret < 0)
			goto fail;
	}

	/* 3. The clones, back to back: nothing else in this loop, so the
	 * disks of one VM are as close to one moment as FICLONE allows. */
	for (i = 0; i < n; i++) {
		if (!t[i].want || t[i].reused)
			continue;
		if (ioctl(t[i].dst_fd, FICLONE, t[i].src_fd))
			t[i].error = errno;
		else
			cloned = true;
	}
	if (cloned)
		taken = wall_us();

	/* 4. What failed: auto falls back, reflink fails. */
	for (i = 0; i < n; i++) {
		struct snap_disk *d = &set->disks[i];
		char why[200];
		int e;

		if (!t[i].want || t[i].reused)
			continue;
		if (!t[i].error) {
			d->mode = SNAP_REFLINK;
			continue;
		}
		e = t[i].error;
		clone_reason(t[i].src_fd, e, why, sizeof(why));
		if (mode == SNAP_AUTO) {
			snprintf(d->note, sizeof(d->note), "%s", why);
			fall_back(d, &t[i]);
			continue;
		}
		snprintf(err, errlen,
			 "%s: cannot clone it (snapshot reflink): %s", d->src,
			 why);
		ret = e == ENOTTY || e == ENOSYS ? -EOPNOTSUPP : -e;
		goto fail;
	}

	/*
	 * 5. Make the new clones durable, then mark them complete.  Not for
	 * a crash of the agent (the sweep at start removes clones no job
	 * owns), but a job that resumes reuses its clones, and must not read
	 * one whose blocks did not all reach the disk or that a kill cut
	 * short.  The mark is made durable only after the clone is, so a
	 * marked clone is whole on any filesystem.  A reflink's fsync writes
	 * metadata only, and it comes after the clones, not between them.
	 */
	for (i = 0; i < n; i++) {
		if (t[i].dst_fd < 0)
			continue;
		if (fsync(t[i].dst_fd) ||
		    fchmod(t[i].dst_fd, CLONE_DONE_MODE) ||
		    fsync(t[i].dst_fd)) {
			ret = -errno;
			snprintf(err, errlen,
				 "%s: cannot make its clone %s durable: %s",
				 set->disks[i].src, set->disks[i].clone,
				 strerror(-ret));
			goto fail;
		}
		ret = vhdx_fsync_parent_dir(set->disks[i].clone);
		if (ret < 0) {
			snprintf(err, errlen,
				 "%s: cannot fsync the folder of its clone: %s",
				 set->disks[i].src, strerror(-ret));
			goto fail;
		}
	}
	set->taken = taken;
	ret = 0;
	goto out;

fail:
	for (i = 0; t && i < n; i++) {
		if (t[i].dst_fd >= 0) {
			close(t[i].dst_fd);
			t[i].dst_fd = -1;
		}
		if (t[i].made) {
			remove_clone(set->disks[i].clone);
			t[i].made = false;
		}
		/* A kept clone stays: it is the caller's to release. */
		if (!t[i].reused && set->disks) {
			free(set->disks[i].clone);
			set->disks[i].clone = NULL;
			set->disks[i].mode = SNAP_NONE;
		}
	}
	if (err && errlen && !err[0])
		snprintf(err, errlen, "cannot take the snapshot: %s",
			 strerror(-ret));
out:
	for (i = 0; t && i < n; i++) {
		if (t[i].src_fd >= 0)
			close(t[i].src_fd);
		if (t[i].dst_fd >= 0)
			close(t[i].dst_fd);
	}
	free(t);
	return ret;
}

void snap_release(struct snap_set *set)
{
	unsigned i;

	if (!set)
		return;
	for (i = 0; set->disks && i < set->n; i++)
		if (set->disks[i].clone)
			remove_clone(set->disks[i].clone);
	set_free(set);
}

void snap_forget(struct snap_set *set)
{
	if (set)
		set_free(set);
}

int snap_sweep_dir(const char *dir, bool (*keep)(void *ctx, const char *owner),
		   void *ctx, unsigned *removed)
{
	size_t plen = strlen(SNAP_PREFIX);
	char owner[SNAP_OWNER_MAX + 1];
	unsigned count = 0;
	struct dirent *de;
	struct stat st;
	int dfd, ret = 0;
	DIR *d;

	if (removed)
		*removed = 0;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	d = fdopendir(dfd);
	if (!d) {
		ret = -errno;
		close(dfd);
		return ret;
	}
	while ((errno = 0, de = readdir(d))) {
		const char *o, *dot;

		if (strncmp(de->d_name, SNAP_PREFIX, plen))
			continue;
		o = de->d_name + plen;
		dot = strchr(o, '.');
		/* Not one of ours unless OWNER.NAME is well formed. */
		if (!dot || !dot[1] || !owner_ok(o, (size_t)(dot - o)))
			continue;
		memcpy(owner, o, (size_t)(dot - o));
		owner[dot - o] = '\0';
		if (keep && keep(ctx, owner))
			continue;
		if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) ||
		    !S_ISREG(st.st_mode))
			continue;
		if (unlinkat(dfd, de->d_name, 0)) {
			if (errno != ENOENT && !ret)
				ret = -errno;
			continue;
		}
		count++;
	}
	if (errno && !ret)
		ret = -errno;
	if (count && fsync(dfd) && !ret)
		ret = -errno;
	closedir(d);
	if (removed)
		*removed = count;
	return ret;
}
