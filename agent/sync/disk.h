/* SPDX-License-Identifier: MIT */
/*
 * disk.h - the disk a recovery session writes.  For a VHDX export that is
 * a differencing child next to the image (IMAGE.hvresync.avhdx), created
 * or reopened at the start, merged into the image at the end (or held for
 * a later MERGE), and kept for resume when the session fails; a merge a
 * crash interrupted (its marker CHILD.merging is there) is completed
 * before anything else.  Raw files and block devices are written in place.
 *
 * The functions of a session report a failure to the primary themselves
 * (session_error()) and return what that returned, so the session just
 * ends; only disk_remove_durably() and the writes (disk_write(),
 * disk_zero(), disk_flush()) return a bare negative errno.
 */
#ifndef HVRESYNC_SYNC_DISK_H
#define HVRESYNC_SYNC_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct session;

/* unlink(2) @path and fsync its folder; 0 if it was not there. */
int disk_remove_durably(const char *path);

/* Lock the export for writing (vhdx_lock()) for the whole session, before
 * anything reads or writes it; ERROR 8 (in use) naming the holder when
 * another program, view or session has it.  disk_unlock() lets it go. */
int disk_lock(struct session *s);
void disk_unlock(struct session *s);

/* Find the export's kind and geometry as it is now, changing nothing. */
int disk_probe(struct session *s);
/* Does the primary's geometry (HELLO) match the export's? */
int disk_check_geometry(struct session *s);

/* Where a copy would resume now, without changing anything (CHECK). */
uint64_t disk_resume_offset(struct session *s);
/*
 * Get the disk ready for a copy: complete an interrupted merge, drop an
 * earlier partial copy when the primary restarts, open (or create) the
 * child or open the raw disk, set up s->src for reading it and decide
 * where the copy resumes (@resume).
 */
int disk_open(struct session *s, uint64_t *resume);

/* Writes of a copy; a negative errno, not reported. */
int disk_write(struct session *s, const void *buf, size_t len, uint64_t off);
int disk_zero(struct session *s, uint64_t off, uint64_t len);
int disk_flush(struct session *s);

/* DONE arrived: make the whole copy durable; a VHDX child is closed and
 * its record says complete, a raw disk is synced and its record gone. */
int disk_commit(struct session *s);
/* Merge the committed child into the image (s->merge_seconds). */
int disk_merge(struct session *s);
/* Close the disk (s->src too, once the reader is gone); after a failure
 * (@failed) keep the child and record the progress. */
void disk_close(struct session *s, bool failed);

/* A MERGE session: merge a held, complete child; @result for the log.
 * A record that says complete while the child is gone, or a child that
 * no longer opens with its image, is an error and the copy is forgotten
 * (the next push starts over); never "merged" with nothing merged. */
int disk_merge_held(struct session *s, const char **result);
/* A DISCARD session: drop the child and the record (a merge under way
 * is completed instead: it cannot be undone). */
int disk_discard_all(struct session *s);

/* What the session's last log line says about the image after a session
 * that returned @ret: "" or " (...)", never "unchanged" once a merge has
 * begun to write it (its marker is there). */
const char *disk_end_note(struct session *s, int ret);

#endif
