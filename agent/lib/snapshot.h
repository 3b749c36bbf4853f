/* SPDX-License-Identifier: MIT */
/*
 * snapshot.h - point-in-time copies of source disks: FICLONE clones
 * (reflinks) made next to each disk, back to back, read instead of the
 * live files while the VMs keep writing, and removed when their owner
 * (a job, or one `hvresync push`) ends.  A clone shares its blocks with
 * the disk, so it costs metadata only, and exists only on filesystems
 * that can share blocks (XFS with reflink, btrfs).
 *
 * A clone of disk DIR/NAME owned by OWNER is DIR/.hvresync-snap.OWNER.NAME
 * (hidden; mode 0600 while it is made, 0400 once complete), so an agent that
 * restarts can find the clones of owners that no longer exist and remove them
 * (snap_sweep_dir()). Every function returns 0 or a negative errno.
 */
#ifndef HVRESYNC_LIB_SNAPSHOT_H
#define HVRESYNC_LIB_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SNAP_PREFIX ".hvresync-snap."
#define SNAP_OWNER_MAX 64 /* [A-Za-z0-9-], no dot */

enum snap_mode {
	SNAP_AUTO,    /* reflink where the filesystem can, else none */
	SNAP_REFLINK, /* reflink, or fail */
	SNAP_NONE,    /* the live file (with change detection, watch.h) */
};

/* "auto", "reflink", "none" <-> the mode; -EINVAL for another word. */
int snap_mode_parse(const char *word, enum snap_mode *mode);
const char *snap_mode_name(enum snap_mode mode);

/* The clone's path for source @src and @owner.  -EINVAL for an owner
 * that is empty, too long or has a character outside [A-Za-z0-9-];
 * -ENAMETOOLONG when it does not fit. */
int snap_path(const char *src, const char *owner, char *out, size_t len);

/* One source disk of a set. */
struct snap_disk {
	char *src;	     /* the live disk, as given */
	char *clone;	     /* the clone, or NULL (mode none) */
	enum snap_mode mode; /* SNAP_REFLINK or SNAP_NONE, as taken */
	bool blockdev;	     /* a block device: no clone, no watching */
	char note[256];	     /* why auto fell back to none, or "" */
	bool reused;	     /* an existing clone was kept (@reuse): the
			      * data is the same as before the restart */
};

struct snap_set {
	unsigned n;
	struct snap_disk *disks;
	int64_t taken; /* wall-clock usec when the clones were made; 0 if
			* none was */
};

/*
 * Clone each of the @n sources back to back (all clones are made before
 * this returns, one right after the other, so the set is as close to one
 * moment as the filesystem allows).  Per disk, @mode:
 *   SNAP_REFLINK: a clone, else the call fails with -EOPNOTSUPP (or the
 *                 errno of FICLONE) and @err names the disk and why;
 *   SNAP_AUTO:    a clone where FICLONE works, else mode none with the
 *                 reason in note ("XFS without reflink", "not supported
 *                 by ext4", "a block device");
 *   SNAP_NONE:    no clone.
 * A block device gets no clone in any mode (reflink: -EOPNOTSUPP).
 * On ext4, tmpfs and FUSE (which never share blocks) no clone file is
 * even created; elsewhere FICLONE is tried.
 * An existing clone of the same owner and source (a job that resumes
 * after a restart) is kept and reused, not made again (@reuse true), so
 * the job keeps reading the same frozen data: disk.reused says so, and
 * set->taken is then the clones' time (their mtime, which FICLONE set).
 * A clone is reused only when it is a regular file marked complete
 * (mode 0400, set once it was whole and durable; one cut short by a
 * crash or kill keeps 0600), whatever the disk's size now (a VM's VHDX
 * grows), and only when every clone of the set can be: one missing or
 * incomplete clone means all are made anew (reused false), since old and
 * new clones together would not be one moment; a caller that resumes
 * must then start over.
 * Without @reuse an old clone of ours at the name is replaced.  A name
 * taken by something other than a regular file is refused (-EEXIST).
 * New clones are fsynced, marked complete (0400) and fsynced again with
 * their folder after all are made (metadata only): not needed for an
 * agent crash, but a job that resumes after a power cut must not reuse a
 * clone whose blocks are not all on disk.
 * On failure every clone this call made is removed (the kept ones stay,
 * for snap_release()).  snap_release() the set in every case.
 */
int snap_take(struct snap_set *set, const char *const *src, unsigned n,
	      enum snap_mode mode, const char *owner, bool reuse, char *err,
	      size_t errlen);

/* Remove the set's clones (unlink, then fsync of the folder) and free it.
 * Safe on a zeroed or half-made set. */
void snap_release(struct snap_set *set);

/* Forget the set without removing its clones (they were handed over). */
void snap_forget(struct snap_set *set);

/*
 * Remove every clone in @dir (SNAP_PREFIX files that are regular files)
 * whose owner @keep does not want (keep(ctx, owner) false).  The owner
 * is the text between SNAP_PREFIX and the next '.'; a name without a
 * valid owner and a name after it is not ours and stays, as does
 * anything that is not a regular file (never followed).  The folder is
 * fsynced when something was removed.  @removed (optional) counts them.
 * -ENOENT when @dir does not exist; other errors after removing what
 * could be.
 */
int snap_sweep_dir(const char *dir, bool (*keep)(void *ctx, const char *owner),
		   void *ctx, unsigned *removed);

#endif
