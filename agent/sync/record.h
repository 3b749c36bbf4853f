/* SPDX-License-Identifier: MIT */
/*
 * record.h - the durable progress record of a recovery session
 * (docs/protocol.md, "Resume"): one small text file per export in the
 * server's state directory, saying which image and geometry it is about,
 * how far the primary has decided (done_through) and whether a held copy
 * is complete.  A dropped session resumes from it.
 *
 * The file, in this order, one "key value" a line:
 *
 *	hvresync-state 1
 *	image /abs/path/of/the/image
 *	virtual_size BYTES
 *	logical_sector BYTES
 *	done_through BYTES
 *	complete 0|1
 *	merging 0|1
 *	discarded 0|1
 *
 * "merging 1" is written before a complete copy's merge starts, so that
 * a record whose child and merge marker are both gone can tell a merge
 * that finished (a crash came before the record went) from a child that
 * was lost (power cut, someone removed it): the first is merged, the
 * second an error.  "discarded 1" (no child) is what `hvresync vm
 * discard` leaves on the recovery agent: a MERGE of the primary's job
 * that comes after it is an error, not "nothing to merge".  A record
 * without these lines (older) reads them as 0.
 */
#ifndef HVRESYNC_SYNC_RECORD_H
#define HVRESYNC_SYNC_RECORD_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct record {
	char image[PATH_MAX];
	uint64_t size;
	uint32_t sector;
	uint64_t done;
	bool complete;
	bool merging;	/* a merge of the complete copy has begun */
	bool discarded; /* the copy was dropped on the recovery side */
};

/*
 * The record's file name for export @name: the name with anything but
 * [A-Za-z0-9_-] percent-encoded, then ".state", so no name can reach
 * outside the directory.  0 or -ENAMETOOLONG.
 */
int record_file_name(const char *name, char *out, size_t len);

/* Read DIR/NAME; -EINVAL when it is not a whole record. */
int record_load(const char *dir, const char *name, struct record *r);
/* Replace DIR/NAME durably (fs_write_atomic()). */
int record_save(const char *dir, const char *name, const struct record *r);

/* A session's record (the session knows its file and disk). */
struct session;

/* The record, if there is one about this image and geometry. */
bool record_find(struct session *s, struct record *r);
/* Where a copy resumes given that record (@have false: none): a block
 * boundary, or the virtual size once a held copy is complete. */
uint64_t record_resume_offset(const struct session *s, const struct record *r,
			      bool have);
/* Record @done (done_through) and @complete now. */
int record_write(struct session *s, uint64_t done, bool complete);
/* Say "merging 1" in the (complete) record before a merge starts. */
int record_mark_merging(struct session *s);
/* Forget the record, durably; 0 if there was none. */
int record_remove(struct session *s);
/*
 * Record done_through durably when enough was written since the last time
 * (a dropped session then costs at most about a window again) or some
 * time has passed.  The disk is flushed first.
 */
int record_persist(struct session *s);

#endif
