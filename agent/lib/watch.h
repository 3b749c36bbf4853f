/* SPDX-License-Identifier: MIT */
/*
 * watch.h - did anything write to a source disk while we read it?  For
 * sources read live (no snapshot): inotify on the file sees write(2),
 * io_uring and truncate from any local process; the identity (inode,
 * size, mtime, ctime and, for a VHDX, the current header's sequence
 * number and FileWriteGuid, DataWriteGuid and LogGuid) compared at the
 * end of a pass also catches writes through mmap and from other hosts
 * of a shared filesystem.  A block device can be watched by neither:
 * watch_start() says so (-ENOTSUP).
 *
 * Order matters: start the watch before the pass opens the source, check
 * it after the pass closed it, so no write can fall between.
 * Every function returns 0 or a negative errno unless it says otherwise.
 */
#ifndef HVRESYNC_LIB_WATCH_H
#define HVRESYNC_LIB_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a file is, as far as telling "unchanged" goes. */
struct src_ident {
	uint64_t dev, ino, size;
	int64_t mtime_ns, ctime_ns;
	bool vhdx;    /* the rest is set for a VHDX only */
	uint64_t seq; /* the current header's SequenceNumber */
	uint8_t file_write_guid[16];
	uint8_t data_write_guid[16];
	uint8_t log_guid[16];
};

/* Read @path's identity (following a symlink).  A VHDX's header fields
 * come straight from its two headers (the valid one with the greater
 * sequence number): no log replay, no image lock, no vhdx_open().
 * @err: "PATH: cannot open: ...", or "PATH: VHDX headers: ..." when
 * neither header is valid. */
int src_ident_read(const char *path, struct src_ident *id, char *err,
		   size_t errlen);
/* Are @a and @b the same?  When not, @why (optional) says what differs
 * first, in words and without the file's name, in this order: "it is
 * another file now (replaced, or renamed over)", "it is no longer a
 * VHDX", "its VHDX header was rewritten (sequence number N to M): ...",
 * a header GUID that changed, "its size changed from X to Y bytes", "it
 * was modified at TIME (...)", "its times, permissions or links were
 * changed at TIME". */
bool src_ident_equal(const struct src_ident *a, const struct src_ident *b,
		     char *why, size_t whylen);
/* One line of text without spaces, for a job's record, and back:
 * "d=DEV,i=INO,s=SIZE,m=MTIME_NS,c=CTIME_NS" and, for a VHDX,
 * ",q=SEQ,f=HEX32,w=HEX32,l=HEX32" (the GUIDs' on-disk bytes).  Format:
 * -ENOSPC when @len is too small (SRC_IDENT_TEXT_MAX always does).
 * Parse: -EINVAL for anything else (unknown or repeated keys, a missing
 * one, bad numbers, spaces), and then @id is left alone. */
#define SRC_IDENT_TEXT_MAX 256
int src_ident_format(const struct src_ident *id, char *out, size_t len);
int src_ident_parse(const char *text, struct src_ident *id);

struct watch;

/*
 * Start watching @path: an inotify watch (IN_MODIFY, IN_ATTRIB,
 * IN_MOVE_SELF, IN_DELETE_SELF) and its identity now.  -ENOTSUP for a
 * block device (@err says so in one line: use an LVM snapshot); other
 * errors with @err naming the file.
 */
int watch_start(const char *path, struct watch **out, char *err, size_t errlen);
/* The identity read at watch_start(). */
const struct src_ident *watch_ident(const struct watch *w);
/*
 * Was the source written since watch_start()?  Drains inotify, then
 * compares the identity now with the one at the start.  Returns 1
 * (changed; @why says how, naming the file), 0 (unchanged) or a
 * negative errno (@why then holds the error).  What inotify saw stays
 * seen, so a later call says changed too.  A file that is gone
 * (deleted, renamed away) is changed, not an error.  The identity is
 * compared first because it says more ("its size changed ..."); the
 * inotify events then catch what it cannot: a write in place within one
 * tick of the file's clock.
 */
int watch_changed(struct watch *w, char *why, size_t whylen);
void watch_stop(struct watch *w);

#endif
