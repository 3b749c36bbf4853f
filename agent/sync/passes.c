/* SPDX-License-Identifier: MIT */
/*
 * passes.c - one disk pushed from one moment of it (passes.h): a reflink
 * clone read once, or the live file read in watched passes until a pass
 * saw no write.
 *
 * Why passes converge on a disk that is written only now and then: each
 * pass sends only what still differs, so a later pass is short, and a
 * short pass is less likely to overlap a write.  A pass that saw no
 * write read one moment of the disk, and everything it did not send
 * was equal at that moment, so the recovery disk is that moment.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "agent/lib/fmt.h"
#include "agent/lib/watch.h"
#include "agent/sync/passes.h"

#define OWNER_PREFIX "push-"

static void note(const struct passes_params *pp, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void note(const struct passes_params *pp, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	if (!pp->note)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	pp->note(pp->note_ctx, line);
}

static bool stopping(const struct passes_params *pp)
{
	return pp->push.stop &&
	       __atomic_load_n(pp->push.stop, __ATOMIC_RELAXED);
}

/* Add one session's figures to the sum. */
static void add_stats(struct push_stats *sum, const struct push_stats *st,
		      bool first)
{
	sum->virtual_size = st->virtual_size;
	if (first)
		sum->resume_offset = st->resume_offset;
	sum->position = st->position;
	sum->bytes_compared += st->bytes_compared;
	sum->blocks_different += st->blocks_different;
	sum->bytes_different += st->bytes_different;
	sum->bytes_sent += st->bytes_sent;
	sum->bytes_data += st->bytes_data;
	sum->bytes_zeroed += st->bytes_zeroed;
	sum->wire_bytes += st->wire_bytes;
	sum->recovery_bytes_written += st->recovery_bytes_written;
	sum->merge_seconds += st->merge_seconds;
	sum->seconds += st->seconds;
	sum->welcomed |= st->welcomed;
}

/* One session with @flags from @src; its figures go into @r. */
static int one_pass(const struct passes_params *pp, const char *src,
		    unsigned flags, struct passes_result *r, char *err,
		    size_t errlen)
{
	struct push_params p = pp->push;
	struct push_stats st;
	int ret;

	p.src = src;
	p.flags = flags;
	ret = push_disk(&p, &st, err, errlen);
	add_stats(&r->st, &st, r->passes == 0);
	r->passes++;
	return ret;
}

/* The reason alone, without watch.c's "SRC: changed during the resync: "
 * in front: the caller's line names the file and says "changed". */
static const char *reason(const char *why)
{
	static const char mark[] = "changed during the resync: ";
	const char *p = strstr(why, mark);

	if (!*why)
		return "it was written";
	return p ? p + strlen(mark) : why;
}

/* ---- the live file, in passes -------------------------------------------- */

/* The flags of pass @n (from 1): the first as asked.  Later ones never
 * RESTART (that would throw away what the earlier ones sent); a held copy
 * asks for REPASS to compare from 0 again, while an ordinary copy was
 * merged at its DONE, so its next session starts at 0 anyway. */
static unsigned pass_flags(unsigned asked, unsigned n)
{
	if (n == 1)
		return asked;
	if (asked & PUSH_HOLD)
		return PUSH_HOLD | PUSH_REPASS;
	return asked & ~(PUSH_RESTART | PUSH_REPASS);
}

/*
 * Watch, push, check; again while a pass saw a write and passes remain.
 * The watch starts before push_disk() opens the source and is read after
 * it closed it, so no write can fall between two passes unseen.
 */
static int live_passes(const struct passes_params *pp, struct passes_result *r,
		       char *err, size_t errlen)
{
	const char *src = pp->push.src;
	unsigned max = pp->max_passes ? pp->max_passes : PASSES_DEFAULT;
	char why[512];
	struct watch *w;
	unsigned n;
	int ret;

	for (n = 1;; n++) {
		w = NULL;
		why[0] = '\0';
		ret = watch_start(src, &w, why, sizeof(why));
		if (ret == -ENOTSUP) {
			/* A block device: one pass, and we cannot know. */
			note(pp,
			     "%s: a block device cannot be watched for "
			     "writes during the push: the copy is only "
			     "consistent if nothing writes it (read an LVM "
			     "snapshot instead)",
			     src);
			return one_pass(pp, src, pp->push.flags, r, err,
					errlen);
		}
		if (ret < 0) {
			fmt_line(err, errlen, "%s",
				 why[0] ? why : strerror(-ret));
			return ret;
		}
		r->watched = true;
		ret = one_pass(pp, src, pass_flags(pp->push.flags, n), r, err,
			       errlen);
		if (ret < 0) {
			watch_stop(w);
			return ret;
		}
		why[0] = '\0';
		ret = watch_changed(w, why, sizeof(why));
		watch_stop(w);
		if (ret < 0) {
			fmt_line(err, errlen, "%s",
				 why[0] ? why : strerror(-ret));
			return ret;
		}
		r->source_changed = ret == 1;
		if (!r->source_changed)
			return 0;
		fmt_line(r->change, sizeof(r->change), "%s", reason(why));
		if (n >= max)
			return 0;
		if (stopping(pp)) {
			fmt_line(err, errlen, "cancelled");
			return -ECANCELED;
		}
		note(pp,
		     "%s changed during pass %u (%s); comparing again "
		     "(pass %u of %u)",
		     src, n, r->change, n + 1, max);
	}
}

int passes_push(const struct passes_params *pp, struct passes_result *r,
		char *err, size_t errlen)
{
	unsigned kinds = PUSH_CHECK | PUSH_MERGE | PUSH_DISCARD;
	const char *src = pp->push.src;
	struct snap_set set;
	int ret;

	memset(r, 0, sizeof(*r));
	memset(&set, 0, sizeof(set));
	if (err && errlen)
		err[0] = '\0';
	r->snapshot = SNAP_NONE;
	if (!src || (pp->push.flags & kinds))
		return one_pass(pp, src, pp->push.flags, r, err, errlen);
	if (pp->max_passes > PASSES_MAX) {
		fmt_line(err, errlen, "at most %d passes", PASSES_MAX);
		return -EINVAL;
	}

	ret = snap_take(&set, &src, 1, pp->snapshot, pp->owner, false, err,
			errlen);
	if (ret < 0)
		goto out;
	if (set.n == 1 && set.disks[0].mode == SNAP_REFLINK &&
	    set.disks[0].clone) {
		/* Frozen: one pass reads one moment, whatever the VM does. */
		r->snapshot = SNAP_REFLINK;
		r->snapshot_time = set.taken;
		ret = one_pass(pp, set.disks[0].clone, pp->push.flags, r, err,
			       errlen);
		goto out;
	}
	if (set.n == 1)
		fmt_line(r->fallback, sizeof(r->fallback), "%s",
			 set.disks[0].note);
	ret = live_passes(pp, r, err, errlen);
out:
	/* The clone goes whatever happened, Ctrl-C included: the signal
	 * handler only set the stop flag, push_disk() returned since. */
	snap_release(&set);
	return ret;
}

/* ---- stale clones -------------------------------------------------------- */

/* Keep a clone unless it is a push's whose process is gone. */
static bool keep_clone(void *ctx, const char *owner)
{
	const char *digits = owner + strlen(OWNER_PREFIX);
	char *end;
	long pid;

	(void)ctx;
	if (strncmp(owner, OWNER_PREFIX, strlen(OWNER_PREFIX)) || !*digits ||
	    *digits < '1' || *digits > '9')
		return true;
	errno = 0;
	pid = strtol(digits, &end, 10);
	if (errno || *end || pid <= 0 || pid > INT_MAX)
		return true;
	/* EPERM means it lives (as another user); only ESRCH means gone. */
	return !(kill((pid_t)pid, 0) < 0 && errno == ESRCH);
}

int passes_sweep_stale(const char *src, unsigned *removed)
{
	char buf[PATH_MAX];
	struct stat st;

	if (removed)
		*removed = 0;
	if (!src || strlen(src) >= sizeof(buf))
		return -EINVAL;
	/* Clones are made next to regular files only (not in /dev). */
	if (stat(src, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	strcpy(buf, src);
	return snap_sweep_dir(dirname(buf), keep_clone, NULL, removed);
}
