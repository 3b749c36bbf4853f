/* SPDX-License-Identifier: MIT */
/*
 * internal.h - what the files of the FUSE raw view share and nothing
 * outside fuse/ may see: the view's state, its tuning constants and the
 * functions one part of the view calls in another.
 *
 *	view.c       the session: build, mount, serve, unmount
 *	ops.c        the namespace (one directory of fixed files) and the
 *	             table of low-level operations
 *	read.c       the read path: splice and SEEK_DATA/SEEK_HOLE
 *	write.c      the writable path through the VHDX writer
 *	log.c        log lines, libfuse's messages and error reports
 *	mountinfo.c  looking a mount up in /proc/self/mountinfo
 */
#ifndef HVRESYNC_FUSE_INTERNAL_H
#define HVRESYNC_FUSE_INTERNAL_H

#define FUSE_USE_VERSION 35

#include <fuse_lowlevel.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include "fuse/view.h"

/*
 * Largest request we ask the kernel for (libfuse offers max_pages 256);
 * view_pick_max_read() may settle for a little less.
 */
#define VIEW_MAX_READ (1u << 20)
/* Room a staging pipe keeps beyond max_read; see view_pick_max_read(). */
#define STAGE_SLACK (8 * 4096)
/*
 * Readahead window of our mount's bdi.  With the kernel's default of
 * 128 KiB a sequential reader gets 128 KiB requests one after the other;
 * a few MiB gets full-size requests that several threads serve at once.
 */
#define VIEW_READAHEAD_KB 8192
/* Asynchronous (readahead) requests the kernel may have in flight. */
#define VIEW_MAX_BACKGROUND 64
#define VIEW_IDLE_THREADS 16
/* Names never change while mounted; attributes carry the image's mtime. */
#define VIEW_ENTRY_TIMEOUT 3600.0
#define VIEW_ATTR_TIMEOUT 1.0

#define ROOT_INO FUSE_ROOT_ID
#define FIRST_FILE_INO (FUSE_ROOT_ID + 1)

struct view_file {
	char *name;
	char *path;
	struct vhdx_image *img;
	int fd; /* the image's own descriptor, for its mtime */
	uint64_t size;
	uint64_t alloc; /* bytes the image itself holds, for st_blocks */
	atomic_bool error_logged;
	atomic_bool write_error_logged;
};

struct view {
	struct view_file *files;
	unsigned count;
	struct fuse_session *se;
	char *mountpoint;
	bool mounted;
	uid_t uid;
	gid_t gid;
	struct timespec created;
	bool writable;
};

/* --- log.c ------------------------------------------------------------- */

/* Route libfuse's messages through view_log(); TO_STDERR as in view_log. */
void view_log_start(bool to_stderr);
/* From now on log to syslog (the caller's stderr is going away). */
void view_log_detach(void);
/*
 * Between these, libfuse's first message goes into ERR instead of the
 * log, so a failed setup is reported as one line.
 */
void view_capture_start(char *err, size_t errlen);
void view_capture_stop(void);
/* Fill ERR unless it already holds a (more precise) message. */
void view_set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* The first failed read or seek of F, once. */
void view_report_error(struct view_file *f, const char *op, uint64_t off,
		       int err, const char *what);
/* The first failed write or flush of F, once (LEN 0: no range). */
void view_report_write_error(struct view_file *f, const char *op, uint64_t off,
			     uint64_t len, int err);

/* --- ops.c ------------------------------------------------------------- */

extern const struct fuse_lowlevel_ops view_ops;

/* The file behind INO, or NULL for the root and unknown numbers. */
struct view_file *view_ino_file(struct view *v, fuse_ino_t ino);
void view_file_stat(const struct view *v, const struct view_file *f,
		    struct stat *st);
void view_root_stat(const struct view *v, struct stat *st);

/* --- read.c ------------------------------------------------------------ */

/* The max_read this process mounts with; see view_pick_max_read(). */
extern unsigned view_max_read;
unsigned view_pick_max_read(void);

void view_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	       struct fuse_file_info *fi);
void view_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		struct fuse_file_info *fi);

/* --- write.c ----------------------------------------------------------- */

void view_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
		off_t off, struct fuse_file_info *fi);
void view_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in,
		    off_t off, struct fuse_file_info *fi);
void view_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
		    off_t len, struct fuse_file_info *fi);
void view_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		struct fuse_file_info *fi);
void view_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void view_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		  struct fuse_file_info *fi);

#endif
