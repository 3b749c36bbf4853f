/* SPDX-License-Identifier: MIT */
/*
 * ops.c - the raw view's namespace: one read-only directory holding a
 * fixed set of regular files, one per image, with the image's virtual size
 * and times.  Also the table of low-level operations, which names the read
 * path (read.c) and the writable path (write.c) for the file contents.
 *
 * Built on libfuse's low-level API: the high-level one free()s every memory
 * buffer of a read_buf reply, which rules out pointing zero runs at one
 * shared zero buffer and log-replayed sectors at the library's own memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "fuse/internal.h"

struct view_file *view_ino_file(struct view *v, fuse_ino_t ino)
{
	if (ino < FIRST_FILE_INO || ino - FIRST_FILE_INO >= v->count)
		return NULL;
	return &v->files[ino - FIRST_FILE_INO];
}

void view_file_stat(const struct view *v, const struct view_file *f,
		    struct stat *st)
{
	struct stat ist;

	memset(st, 0, sizeof(*st));
	st->st_ino = FIRST_FILE_INO + (fuse_ino_t)(f - v->files);
	st->st_mode = S_IFREG | (v->writable ? 0644 : 0444);
	st->st_nlink = 1;
	st->st_uid = v->uid;
	st->st_gid = v->gid;
	st->st_size = (off_t)f->size;
	st->st_blocks = (blkcnt_t)((f->alloc + 511) / 512);
	/* Tells cat, cp and friends to read 1 MiB at a time. */
	st->st_blksize = VIEW_MAX_READ;
	if (fstat(f->fd, &ist) == 0) {
		st->st_atim = ist.st_atim;
		st->st_mtim = ist.st_mtim;
		st->st_ctim = ist.st_ctim;
	} else {
		st->st_atim = st->st_mtim = st->st_ctim = v->created;
	}
}

void view_root_stat(const struct view *v, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ROOT_INO;
	st->st_mode = S_IFDIR | 0555;
	st->st_nlink = 2;
	st->st_uid = v->uid;
	st->st_gid = v->gid;
	st->st_atim = st->st_mtim = st->st_ctim = v->created;
}

/* --- low-level operations ---------------------------------------------- */

static void view_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Must repeat the max_read mount option, or libfuse refuses INIT. */
	conn->max_read = view_max_read;
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_MOVE)
		conn->want |= FUSE_CAP_SPLICE_MOVE;
	/* The kernel takes the smaller of this and the bdi's setting. */
	conn->max_readahead = UINT32_MAX;
	conn->max_background = VIEW_MAX_BACKGROUND;
	conn->congestion_threshold = VIEW_MAX_BACKGROUND * 3 / 4;
	/*
	 * A writeback cache would acknowledge writes we never saw, and the
	 * writer wants the data in memory anyway: no splice from /dev/fuse.
	 * O_TRUNC is better refused by open than by a size change after the
	 * file was opened.
	 */
	conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ);
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
}

static void view_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct view *v = fuse_req_userdata(req);
	struct fuse_entry_param e;
	unsigned i;

	if (parent != ROOT_INO) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	for (i = 0; i < v->count; i++)
		if (!strcmp(name, v->files[i].name))
			break;
	if (i == v->count) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = FIRST_FILE_INO + i;
	e.entry_timeout = VIEW_ENTRY_TIMEOUT;
	e.attr_timeout = VIEW_ATTR_TIMEOUT;
	view_file_stat(v, &v->files[i], &e.attr);
	fuse_reply_entry(req, &e);
}

static void view_getattr(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f;
	struct stat st;

	(void)fi;
	if (ino == ROOT_INO) {
		view_root_stat(v, &st);
	} else {
		f = view_ino_file(v, ino);
		if (!f) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		view_file_stat(v, f, &st);
	}
	fuse_reply_attr(req, &st, VIEW_ATTR_TIMEOUT);
}

static void view_opendir(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	if (ino != ROOT_INO) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	fi->cache_readdir = 1;
	fuse_reply_open(req, fi);
}

static void view_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			 struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);
	size_t used = 0, n;
	struct stat st;
	char *buf;
	off_t i;

	(void)fi;
	if (ino != ROOT_INO) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/* Entry i: 0 ".", 1 "..", then the files; an entry's off is i + 1. */
	for (i = off; i < (off_t)v->count + 2; i++) {
		const char *name;

		memset(&st, 0, sizeof(st));
		if (i < 2) {
			name = i == 0 ? "." : "..";
			st.st_ino = ROOT_INO;
			st.st_mode = S_IFDIR;
		} else {
			name = v->files[i - 2].name;
			st.st_ino = FIRST_FILE_INO + (fuse_ino_t)(i - 2);
			st.st_mode = S_IFREG;
		}
		n = fuse_add_direntry(req, buf + used, size - used, name, &st,
				      i + 1);
		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void view_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);

	if (ino == ROOT_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (!view_ino_file(v, ino)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!v->writable && ((fi->flags & O_ACCMODE) != O_RDONLY ||
			     (fi->flags & (O_TRUNC | O_APPEND)))) {
		fuse_reply_err(req, EROFS);
		return;
	}
	/* The size is fixed: nothing can be cut off or appended. */
	if (fi->flags & (O_TRUNC | O_APPEND)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	/*
	 * No keep_cache: each open drops pages cached by an earlier one, so
	 * it reads what the image file holds now (through the block map
	 * loaded at mount time).  A writable view caches nothing at all.
	 */
	fi->keep_cache = 0;
	fi->direct_io = v->writable;
	/* close() of a descriptor that wrote flushes, as on a disk device. */
	fi->noflush = (fi->flags & O_ACCMODE) == O_RDONLY;
	fuse_reply_open(req, fi);
}

static void view_release(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

/* The set of files is fixed. */
static void view_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		       mode_t mode, dev_t rdev)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)rdev;
	fuse_reply_err(req, EPERM);
}

static void view_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		       mode_t mode)
{
	(void)parent;
	(void)name;
	(void)mode;
	fuse_reply_err(req, EPERM);
}

static void view_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent;
	(void)name;
	fuse_reply_err(req, EPERM);
}

static void view_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
			 const char *name)
{
	(void)link;
	(void)parent;
	(void)name;
	fuse_reply_err(req, EPERM);
}

static void view_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
			fuse_ino_t newparent, const char *newname,
			unsigned int flags)
{
	(void)parent;
	(void)name;
	(void)newparent;
	(void)newname;
	(void)flags;
	fuse_reply_err(req, EPERM);
}

static void view_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		      const char *newname)
{
	(void)ino;
	(void)newparent;
	(void)newname;
	fuse_reply_err(req, EPERM);
}

static void view_create(fuse_req_t req, fuse_ino_t parent, const char *name,
			mode_t mode, struct fuse_file_info *fi)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)fi;
	fuse_reply_err(req, EPERM);
}

static void view_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct view *v = fuse_req_userdata(req);
	struct statvfs sv;
	uint64_t total = 0;
	unsigned i;

	(void)ino;
	for (i = 0; i < v->count; i++)
		total += v->files[i].size;
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = VIEW_MAX_READ;
	sv.f_frsize = 4096;
	sv.f_blocks = (total + 4095) / 4096;
	sv.f_files = v->count + 1;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

const struct fuse_lowlevel_ops view_ops = {
	.init = view_init,
	.lookup = view_lookup,
	.getattr = view_getattr,
	.opendir = view_opendir,
	.readdir = view_readdir,
	.open = view_open,
	.read = view_read,
	.release = view_release,
	.lseek = view_lseek,
	.statfs = view_statfs,
	.write = view_write,
	.write_buf = view_write_buf,
	.fallocate = view_fallocate,
	.fsync = view_fsync,
	.flush = view_flush,
	.setattr = view_setattr,
	.mknod = view_mknod,
	.mkdir = view_mkdir,
	.unlink = view_unlink,
	.rmdir = view_unlink,
	.symlink = view_symlink,
	.rename = view_rename,
	.link = view_link,
	.create = view_create,
};
