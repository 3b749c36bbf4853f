/* SPDX-License-Identifier: MIT */
/* source.c - VHDX, raw file and block device sources (see source.h). */
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <linux/magic.h>

#include "uring/source.h"

/*
 * A source and what it holds that source.h does not show: a raw file's
 * read lock.  A VHDX's lock belongs to its image (vhdx_open() takes it);
 * a raw file or block device gets the same one here, qemu's shared
 * "consistent read", so that a program which lets nobody read the image
 * consistently (a qemu block job) is seen, while a VM writing it is never
 * held up.  ur_source_close() finds the lock from the source, so it closes
 * only sources made here; the serve makes its own raw sources
 * (agent/sync/disk.c), which is why what any source needs to be read (a
 * dm device's zero ranges) lives in struct ur_source itself.
 */
struct source {
	struct ur_source s;
	struct vhdx_lock *lock;
};

#define SOURCE(p) ((struct source *)((char *)(p)-offsetof(struct source, s)))

bool ur_fd_on_fuse(int fd)
{
	struct statfs sf;

	return fd >= 0 && fstatfs(fd, &sf) == 0 &&
	       sf.f_type == FUSE_SUPER_MAGIC;
}

bool ur_source_on_fuse(const struct ur_source *src)
{
	return ur_fd_on_fuse(src->img ? vhdx_get_fd(src->img) : src->fd);
}

/* Whether the sysfs directory of a block device, SYSDIR, is a loop
 * device's (it has a loop/ directory). */
static bool is_loop(const char *sysdir)
{
	char p[PATH_MAX + 8];

	snprintf(p, sizeof(p), "%s/loop", sysdir);
	return access(p, F_OK) == 0;
}

bool ur_fd_over_loop(int fd)
{
	char dir[96], p[PATH_MAX];
	bool any = false, all = true;
	struct dirent *de;
	struct stat st;
	DIR *d;

	if (fd < 0 || fstat(fd, &st) || !S_ISBLK(st.st_mode))
		return false;
	snprintf(dir, sizeof(dir), "/sys/dev/block/%u:%u", major(st.st_rdev),
		 minor(st.st_rdev));
	if (is_loop(dir))
		return true;
	snprintf(p, sizeof(p), "%s/slaves", dir);
	d = opendir(p);
	if (!d)
		return false;
	while (all && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		any = true;
		snprintf(p, sizeof(p), "/sys/class/block/%s", de->d_name);
		all = is_loop(p);
	}
	closedir(d);
	return any && all;
}

const char *ur_source_type_name(enum ur_source_type t)
{
	switch (t) {
	case UR_SRC_VHDX:
		return "vhdx";
	case UR_SRC_FILE:
		return "raw";
	case UR_SRC_BLOCKDEV:
		return "block device";
	}
	return "?";
}

/* qemu's reader lock on the raw file open at @fd, by its path; the path
 * must still name that file once locked, or the lock guards another. */
static int lock_raw(struct ur_source *s, int fd, const struct stat *st,
		    char *err, size_t errlen)
{
	struct vhdx_error verr;
	struct stat now;
	int ret;

	ret = vhdx_lock(s->path, VHDX_LOCK_READ, &SOURCE(s)->lock, &verr);
	if (ret < 0) {
		snprintf(err, errlen, "%s", verr.msg);
		return ret;
	}
	if (stat(s->path, &now) || now.st_dev != st->st_dev ||
	    now.st_ino != st->st_ino) {
		snprintf(err, errlen,
			 "%s: was replaced while being opened; try again",
			 s->path);
		return -EAGAIN;
	}
	return 0;
}

static int open_raw(struct ur_source *s, int fd, const struct stat *st,
		    char *err, size_t errlen)
{
	int ret = lock_raw(s, fd, st, err, errlen);

	if (ret < 0)
		return ret;
	s->fd = fd;
	if (S_ISBLK(st->st_mode)) {
		s->type = UR_SRC_BLOCKDEV;
		ret = vhdx_blockdev_geometry(fd, &s->size, &s->sector_size);
		if (ret < 0) {
			snprintf(err, errlen,
				 "%s: cannot read the block "
				 "device's geometry: %s",
				 s->path, strerror(-ret));
			return ret;
		}
		/* Block devices report one data run from SEEK_DATA at
		 * best; do not bother.  A dm view tells its holes by its
		 * table instead (dmzero.c); other devices are all data. */
		s->no_seek_data = true;
		(void)ur_dm_zero_ranges(fd, &s->zeros, &s->nzeros);
	} else {
		s->type = UR_SRC_FILE;
		s->size = (uint64_t)st->st_size;
		s->sector_size = 512;
	}
	return 0;
}

static struct ur_source *source_alloc(const char *path)
{
	struct source *src = calloc(1, sizeof(*src));

	if (!src)
		return NULL;
	src->s.path = strdup(path);
	if (!src->s.path) {
		free(src);
		return NULL;
	}
	src->s.fd = -1;
	return &src->s;
}

/* The library opens the image again by its path and keeps its own fd. */
static int open_vhdx(struct ur_source *s, char *err, size_t errlen)
{
	struct vhdx_error verr;
	int ret;

	ret = vhdx_open(s->path, 0, &s->img, &verr);
	if (ret < 0) {
		snprintf(err, errlen, "%s", verr.msg);
		return ret;
	}
	s->own_img = true;
	s->type = UR_SRC_VHDX;
	s->size = vhdx_get_info(s->img)->virtual_size;
	s->sector_size = vhdx_get_info(s->img)->logical_sector_size;
	return 0;
}

int ur_source_open(const char *path, struct ur_source **out, char *err,
		   size_t errlen)
{
	struct ur_source *s;
	struct stat st;
	int fd, ret;

	*out = NULL;
	s = source_alloc(path);
	if (!s) {
		snprintf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot open: %s", path,
			 strerror(errno));
		goto fail;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot stat: %s", path,
			 strerror(errno));
		goto fail_fd;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		ret = -EINVAL;
		snprintf(err, errlen, "%s: not a regular file or block device",
			 path);
		goto fail_fd;
	}
	ret = vhdx_probe_fd(fd);
	if (ret < 0) {
		snprintf(err, errlen, "%s: cannot read at offset 0: %s", path,
			 strerror(-ret));
		goto fail_fd;
	}
	if (ret) {
		close(fd);
		ret = open_vhdx(s, err, errlen);
		if (ret < 0)
			goto fail;
	} else {
		ret = open_raw(s, fd, &st, err, errlen);
		if (ret < 0)
			goto fail_fd;
	}
	*out = s;
	return 0;

fail_fd:
	close(fd);
fail:
	s->fd = -1;
	ur_source_close(s);
	return ret;
}

int ur_source_from_vhdx(struct vhdx_image *img, struct ur_source **out)
{
	const struct vhdx_info *info = vhdx_get_info(img);
	struct ur_source *s;

	*out = NULL;
	s = source_alloc(info->path);
	if (!s)
		return -ENOMEM;
	s->type = UR_SRC_VHDX;
	s->img = img;
	s->size = info->virtual_size;
	s->sector_size = info->logical_sector_size;
	*out = s;
	return 0;
}

void ur_source_close(struct ur_source *s)
{
	if (!s)
		return;
	if (s->img && s->own_img)
		vhdx_close(s->img);
	if (s->fd >= 0)
		close(s->fd);
	vhdx_unlock(SOURCE(s)->lock);
	free(s->zeros);
	free(s->path);
	free(SOURCE(s));
}

static int map_vhdx(struct ur_source *s, uint64_t off, uint64_t len,
		    struct ur_run *run)
{
	struct vhdx_extent e;
	int ret;

	ret = vhdx_map(s->img, off, len, 0, &e);
	if (ret < 0)
		return ret;
	memset(run, 0, sizeof(*run));
	run->off = e.off;
	run->len = e.len;
	run->fd = -1;
	switch (e.kind) {
	case VHDX_EXT_DATA:
		run->kind = UR_RUN_DATA;
		run->fd = e.fd;
		run->file_off = e.file_off;
		run->path = e.source ? vhdx_get_info(e.source)->path : s->path;
		break;
	case VHDX_EXT_MEM:
		run->kind = UR_RUN_MEM;
		run->mem = e.mem;
		break;
	case VHDX_EXT_ZERO:
	case VHDX_EXT_UNALLOC:
		run->kind = UR_RUN_ZERO;
		break;
	default:
		/* Parent runs only appear with VHDX_MAP_NO_RESOLVE. */
		return -EIO;
	}
	return 0;
}

/* RUN (data from OFF, as long as asked) cut at the next of the device's
 * zero ranges, or made a zero run when OFF lies in one. */
static int map_zero_ranges(const struct ur_source *src, uint64_t off,
			   struct ur_run *run)
{
	unsigned lo = 0, hi = src->nzeros, mid;
	const struct ur_range *z;

	/* the first range that ends past OFF */
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (src->zeros[mid].off + src->zeros[mid].len <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == src->nzeros)
		return 0;
	z = &src->zeros[lo];
	if (z->off > off) {
		if (z->off - off < run->len)
			run->len = z->off - off;
		return 0;
	}
	run->kind = UR_RUN_ZERO;
	run->fd = -1;
	if (z->off + z->len - off < run->len)
		run->len = z->off + z->len - off;
	return 0;
}

static int map_raw(struct ur_source *s, uint64_t off, uint64_t len,
		   struct ur_run *run)
{
	off_t d, h;

	memset(run, 0, sizeof(*run));
	run->off = off;
	run->fd = s->fd;
	run->path = s->path;
	run->kind = UR_RUN_DATA;
	run->file_off = off;
	run->len = len;
	if (s->no_seek_data)
		return map_zero_ranges(s, off, run);
	d = lseek(s->fd, (off_t)off, SEEK_DATA);
	if (d < 0) {
		if (errno == ENXIO) {
			/* No data from here to the end of the file. */
			run->kind = UR_RUN_ZERO;
			run->fd = -1;
			return 0;
		}
		if (errno == EINVAL || errno == EOPNOTSUPP) {
			s->no_seek_data = true;
			return 0;
		}
		return -errno;
	}
	if ((uint64_t)d > off) {
		run->kind = UR_RUN_ZERO;
		run->fd = -1;
		if ((uint64_t)d - off < len)
			run->len = (uint64_t)d - off;
		return 0;
	}
	h = lseek(s->fd, (off_t)off, SEEK_HOLE);
	if (h < 0)
		return errno == ENXIO ? 0 : -errno;
	if ((uint64_t)h > off && (uint64_t)h - off < len)
		run->len = (uint64_t)h - off;
	return 0;
}

int ur_source_map(void *ctx, uint64_t off, uint64_t len, struct ur_run *run)
{
	struct ur_source *s = ctx;

	if (off >= s->size)
		return -EINVAL;
	if (len > s->size - off)
		len = s->size - off;
	return s->type == UR_SRC_VHDX ? map_vhdx(s, off, len, run)
				      : map_raw(s, off, len, run);
}
