/* SPDX-License-Identifier: MIT */
/*
 * view.h - the FUSE raw view: each opened VHDX image appears under one
 * mountpoint as a flat regular file of its virtual size, served straight
 * from the extent map (splice from the image file for data runs, holes
 * reported through SEEK_DATA/SEEK_HOLE).  Read-only unless the view is made
 * writable, in which case writes, hole punching and fsync go to the VHDX
 * writer (the images must then be opened with VHDX_OPEN_RDWR).
 *
 * The caller opens the images, names them and decides whether to fork;
 * this layer knows nothing of agent/.  Functions return 0 or a negative
 * errno; ERR (when given) receives one line saying what went wrong.
 */
#ifndef HVRESYNC_VIEW_H
#define HVRESYNC_VIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <syslog.h>

#include "vhdx/vhdx.h"

struct view_image {
	const char *name; /* file name under the mountpoint, no '/' */
	const char *path; /* the image's path, for log lines */
	struct vhdx_image *img;
};

struct view_config {
	/* Log to stderr ("hvresync: ...") instead of syslog. */
	bool log_stderr;
	/*
	 * Serve the files mode 0644 and pass writes, FALLOC_FL_PUNCH_HOLE /
	 * FALLOC_FL_ZERO_RANGE and fsync on to the writer.  Every open is
	 * direct I/O, so the kernel keeps no page of a file that could go
	 * stale; shared writable mmap is refused.  The size stays fixed:
	 * writes past the end fail with ENOSPC, size changes with EPERM.
	 */
	bool writable;
};

struct view;

/*
 * Build a view of COUNT images.  The images must stay open until
 * view_free().  Nothing is mounted yet.
 */
int view_new(const struct view_image *images, unsigned count,
	     const struct view_config *cfg, struct view **out, char *err,
	     size_t errlen);

/* Mount on MOUNTPOINT (an absolute path to an existing directory). */
int view_mount(struct view *v, const char *mountpoint, char *err,
	       size_t errlen);

/*
 * Serve requests with several threads until the view is unmounted or the
 * process gets SIGTERM, SIGINT or SIGHUP, then unmount.  Once the mount
 * answers requests (or fails to), "OK\n" (or one error line) is written to
 * READY_FD if it is >= 0, which is then closed.  With DETACH set,
 * stdin/stdout/stderr are pointed at /dev/null just before and later
 * messages go to syslog, so a caller capturing our output is not held up.
 * Returns 0 after an unmount or a signal, a negative errno otherwise.
 */
int view_serve(struct view *v, int ready_fd, bool detach);

/* Unmount if still mounted and free the view (not the images). */
void view_free(struct view *v);

/*
 * Log one line the way the view does: "hvresync: ..." on stderr, or to
 * syslog with priority PRIO once view_serve() has detached.
 */
void view_log(int prio, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* --- /proc/self/mountinfo ---------------------------------------------- */

struct view_mount_info {
	char fstype[64];
	char source[256];
	unsigned major, minor;
};

/*
 * Look up the topmost mount whose mount point is PATH (absolute, no
 * symlinks).  Returns 0 and fills *mi, -ENOENT when nothing is mounted
 * there, or another negative errno.
 */
int view_find_mount(const char *path, struct view_mount_info *mi);

/* The filesystem type our mounts show in /proc/mounts. */
#define VIEW_FSTYPE "fuse.hvresync"

#endif
