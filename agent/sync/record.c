/* SPDX-License-Identifier: MIT */
/*
 * record.c - the durable progress record of a recovery session
 * (record.h): the file itself, then a session's use of it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/lib/fmt.h"
#include "agent/lib/fsutil.h"
#include "agent/sync/disk.h"
#include "agent/sync/record.h"
#include "agent/sync/serve_session.h"
#include "uring/blocks.h"

/* Progress is recorded at least this often while done_through moves. */
#define PERSIST_INTERVAL 5.0
/* Data written since the last record that makes the next one due (or
 * half the window, if less): what a crash here makes the primary send
 * again, whatever the window (up to 256 MiB, which only costs comparing
 * again). */
#define PERSIST_WRITTEN (4u << 20)
#define RECORD_MAGIC "hvresync-state 1"

/* ---- the file ------------------------------------------------------------ */

int record_file_name(const char *name, char *out, size_t len)
{
	size_t n = 0, i;

	for (i = 0; name[i]; i++) {
		unsigned char ch = (unsigned char)name[i];
		bool plain = (ch >= 'a' && ch <= 'z') ||
			     (ch >= 'A' && ch <= 'Z') ||
			     (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';

		if (n + 4 >= len)
			return -ENAMETOOLONG;
		if (plain)
			out[n++] = (char)ch;
		else
			n += (size_t)snprintf(out + n, len - n, "%%%02X", ch);
	}
	if (n + 7 >= len)
		return -ENAMETOOLONG;
	strcpy(out + n, ".state");
	return 0;
}

/* One line of the record; returns whether it was the done_through line. */
static bool parse_line(const char *line, struct record *r, bool *magic)
{
	unsigned long long v;

	if (!strcmp(line, RECORD_MAGIC))
		*magic = true;
	else if (!strncmp(line, "image ", 6))
		snprintf(r->image, sizeof(r->image), "%.*s",
			 (int)sizeof(r->image) - 1, line + 6);
	else if (sscanf(line, "virtual_size %llu", &v) == 1)
		r->size = v;
	else if (sscanf(line, "logical_sector %llu", &v) == 1)
		r->sector = (uint32_t)v;
	else if (sscanf(line, "done_through %llu", &v) == 1) {
		r->done = v;
		return true;
	} else if (sscanf(line, "complete %llu", &v) == 1)
		r->complete = v == 1;
	else if (sscanf(line, "merging %llu", &v) == 1)
		r->merging = v == 1;
	else if (sscanf(line, "discarded %llu", &v) == 1)
		r->discarded = v == 1;
	return false;
}

int record_load(const char *dir, const char *name, struct record *r)
{
	bool magic = false, have_done = false;
	char *buf, *line, *nl;
	size_t len;
	int ret;

	memset(r, 0, sizeof(*r));
	ret = fs_read_small(dir, name, &buf, &len);
	if (ret < 0)
		return ret;
	for (line = buf; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		have_done |= parse_line(line, r, &magic);
		if (!nl)
			break;
	}
	free(buf);
	return magic && have_done && r->size && r->done <= r->size ? 0
								   : -EINVAL;
}

/* The record is small and rewritten whole, so fs_write_atomic()'s
 * temporary file, fsync, rename and fsync of the folder are what a crash
 * needs: the old record or the new one, never a mixture. */
int record_save(const char *dir, const char *name, const struct record *r)
{
	char buf[PATH_MAX + 256];
	int n;

	n = snprintf(buf, sizeof(buf),
		     RECORD_MAGIC "\nimage %s\nvirtual_size %" PRIu64
				  "\nlogical_sector %u\ndone_through %" PRIu64
				  "\ncomplete %d\nmerging %d\ndiscarded %d\n",
		     r->image, r->size, r->sector, r->done, r->complete ? 1 : 0,
		     r->merging ? 1 : 0, r->discarded ? 1 : 0);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return -ENAMETOOLONG;
	return fs_write_atomic(dir, name, buf, (size_t)n);
}

/* ---- a session's record -------------------------------------------------- */

bool record_find(struct session *s, struct record *r)
{
	if (record_load(s->srv->state_dir, s->state_name, r) < 0)
		return false;
	return !strcmp(r->image, s->image) && r->size == s->size &&
	       r->sector == s->sector;
}

uint64_t record_resume_offset(const struct session *s, const struct record *r,
			      bool have)
{
	if (!have)
		return 0;
	if (r->complete || r->done >= s->size)
		return s->size;
	return r->done - r->done % s->bs;
}

int record_write(struct session *s, uint64_t done, bool complete)
{
	struct record r;

	memset(&r, 0, sizeof(r));
	snprintf(r.image, sizeof(r.image), "%s", s->image);
	r.size = s->size;
	r.sector = s->sector;
	r.done = done;
	r.complete = complete;
	return record_save(s->srv->state_dir, s->state_name, &r);
}

int record_mark_merging(struct session *s)
{
	struct record r;

	memset(&r, 0, sizeof(r));
	snprintf(r.image, sizeof(r.image), "%s", s->image);
	r.size = s->size;
	r.sector = s->sector;
	r.done = s->size;
	r.complete = true;
	r.merging = true;
	return record_save(s->srv->state_dir, s->state_name, &r);
}

int record_remove(struct session *s)
{
	return disk_remove_durably(s->state);
}

int record_persist(struct session *s)
{
	uint64_t done, written_max;
	double t = mono_seconds();
	bool half_window;
	int ret;

	pthread_mutex_lock(&s->lock);
	done = ur_clip(s->size, 0, s->done_block * s->bs);
	/* The hash stream stops one window past the first unrecorded write
	 * (serve_session.c): record at half of it so it never waits. */
	half_window = s->dirty_block != SESSION_CLEAN &&
		      s->done_block >= s->dirty_block + s->window / 2;
	pthread_mutex_unlock(&s->lock);
	written_max = (uint64_t)s->window * s->bs / 2;
	if (written_max > PERSIST_WRITTEN)
		written_max = PERSIST_WRITTEN;
	if (s->written_since < written_max && !half_window &&
	    (t - s->last_persist < PERSIST_INTERVAL ||
	     done == s->persisted_done))
		return 0;
	if (s->written_since) {
		ret = disk_flush(s);
		if (ret < 0)
			return ret;
	}
	ret = record_write(s, done, false);
	if (ret < 0)
		return ret;
	s->persisted_done = done;
	s->written_since = 0;
	pthread_mutex_lock(&s->lock);
	s->dirty_block = SESSION_CLEAN;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	s->last_persist = t;
	return 0;
}
