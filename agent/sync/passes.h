/* SPDX-License-Identifier: MIT */
/*
 * passes.h - push one disk so that the recovery side ends equal to one
 * moment of it, although a VM may keep writing it: read a reflink clone
 * (lib/snapshot.h) made when the push starts, or read the live file in
 * passes and watch it (lib/watch.h), running another pass while a pass
 * saw a change (HELLO REPASS when the copy is held, docs/protocol.md).
 * `hvresync push` uses it; it knows nothing of the command line.
 */
#ifndef HVRESYNC_SYNC_PASSES_H
#define HVRESYNC_SYNC_PASSES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/lib/snapshot.h"
#include "agent/sync/push.h"

#define PASSES_DEFAULT 3
#define PASSES_MAX 100

struct passes_params {
	/* The session; push.src is the live disk.  push.flags: a copy (0,
	 * PUSH_HOLD, with or without PUSH_RESTART, which only the first pass
	 * sends).  CHECK, MERGE and DISCARD are run once, as they are. */
	struct push_params push;
	enum snap_mode snapshot;
	unsigned max_passes; /* 1..PASSES_MAX; 0: PASSES_DEFAULT */
	const char *owner;   /* the clone's owner (snapshot.h), "push-PID" */
	/* One line for the user (no prefix, no newline): another pass
	 * starts, a source cannot be watched, stale clones were removed.
	 * Called from the caller's thread, between sessions. */
	void (*note)(void *ctx, const char *line);
	void *note_ctx;
};

struct passes_result {
	struct push_stats st;	 /* byte counts and seconds summed over the
				  * passes; resume_offset the first pass's */
	unsigned passes;	 /* sessions run (the last may have failed) */
	enum snap_mode snapshot; /* SNAP_REFLINK or SNAP_NONE, as read */
	int64_t snapshot_time;	 /* wall-clock usec of the clone, or 0 */
	char fallback[256];	 /* why auto read the live file, or "" */
	bool watched;		 /* the live source was watched */
	bool source_changed;	 /* the last pass too saw a change: the
				  * recovery disk is a mixture of moments */
	char change[512];	 /* how it changed in the last pass, in
				  * words ("its size changed from X to Y") */
};

/*
 * Push as above.  Returns 0 when the last session ended well: then
 * r->source_changed says whether the result is one moment of the source
 * (false) or not (true).  Else a negative errno as push_disk() returns
 * them (-ECANCELED after *push.stop), or the snapshot's or the watch's,
 * with @err one line naming the file or peer.  A clone this call made is
 * removed before it returns, whatever the outcome.
 */
int passes_push(const struct passes_params *pp, struct passes_result *r,
		char *err, size_t errlen);

/*
 * Remove the clones in @src's folder left by pushes that no longer run
 * (owner "push-PID" with no process PID).  @removed (optional) counts
 * them.  0, or a negative errno (the folder cannot be read).
 */
int passes_sweep_stale(const char *src, unsigned *removed);

#endif
