/* SPDX-License-Identifier: MIT */
/*
 * fsutil.h - small file-system helpers shared by every agent layer:
 * mkdir -p, durable write-and-rename, and reading a small file.  Each
 * returns 0 or a negative errno.  The fsync of a folder lives one layer
 * further down, in the format library (vhdx_fsync_dir(), vhdx/vhdx.h),
 * because a merge needs it too.
 */
#ifndef HVRESYNC_LIB_FSUTIL_H
#define HVRESYNC_LIB_FSUTIL_H

#include <stddef.h>
#include <sys/types.h>

/* Create @path and its missing parents; parents get 0755, @path @mode.
 * An existing folder is fine.  Each folder it makes is durable (its
 * parent is fsynced), and so is @path's own name. */
int fs_mkdir_p(const char *path, mode_t mode);

/* "A/B", malloc()ed; NULL when out of memory. */
char *fs_path_join(const char *a, const char *b);

/*
 * Write @len bytes to DIR/NAME durably: a temporary DIR/.NAME.tmp (mode
 * 0600, O_NOFOLLOW), fsync, rename over NAME, fsync of DIR.  A crash
 * leaves the old or the new file, never a mixture.
 */
int fs_write_atomic(const char *dir, const char *name, const void *buf,
		    size_t len);

/*
 * The same for a file other programs read and other processes may write
 * too (a node_exporter .prom file): the file gets @mode whatever the
 * umask, and the temporary is DIR/.NAME.PID.tmp, so two writers never
 * share one half-written file.
 */
int fs_write_shared(const char *dir, const char *name, const void *buf,
		    size_t len, mode_t mode);

/* Read DIR/NAME (a regular file, no symlink, at most 1 MiB) into a
 * malloc()ed, NUL-terminated buffer. */
int fs_read_small(const char *dir, const char *name, char **out, size_t *len);

#endif
