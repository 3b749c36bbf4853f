/* SPDX-License-Identifier: MIT */
/*
 * jobsnap.c - where a job reads its disks from (issue 9): the point-in-time
 * clones it takes before the check phase (snapshot.h), the clones and
 * source identities it takes over from the VM's last job when that one
 * failed, finding its clones again when it resumes, and the sweep of
 * clones nobody owns when the agent starts.  The pass loop that watches
 * live sources is the runner's (runner.c).
 *
 * A job's clones are named after it (snapshot.h: the owner is the job's
 * InstanceID) and recorded in its disks' Clone, so the record alone says
 * which files it owns: jobs_finish() removes them, except for a job the
 * network gave up on, whose clones wait for the next job.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>

#include "agent/daemon/internal.h"
#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/lib/snapshot.h"
#include "agent/lib/watch.h"
#include "vhdx/vhdx.h"

/* What a new job needs to know of one disk of the failed job. */
struct prev_disk {
	char *clone; /* its kept clone, or NULL */
	char *ident; /* a live source's identity at its last pass */
	int64_t snap_time;
	bool started; /* the recovery side holds its child */
	bool changed; /* a write was seen during its last pass */
	bool found;   /* it had a disk of this name and path */
};

struct prev {
	char id[JOB_ID_LEN];
	unsigned ndisks;
	struct prev_disk *disks; /* indexed like the new job's disks */
};

static void prev_free(struct prev *p)
{
	unsigned i;

	for (i = 0; p->disks && i < p->ndisks; i++) {
		free(p->disks[i].clone);
		free(p->disks[i].ident);
	}
	free(p->disks);
	memset(p, 0, sizeof(*p));
}

/* Under the lock: the VM's last finished job, when it went to the same
 * peer and ended in Exception. */
static struct ajob *failed_predecessor(struct agent *a, struct ajob *aj)
{
	struct ajob *it, *last = NULL;

	for (it = a->jobs; it; it = it->next)
		if (it != aj && it->j.finished && !strcmp(it->j.vm, aj->j.vm) &&
		    (!last || it->j.finished > last->j.finished))
			last = it;
	if (!last || last->j.state != JS_EXCEPTION || !last->j.peer ||
	    strcmp(last->j.peer, aj->j.peer))
		return NULL;
	return last;
}

/* Under the lock: copy what the new job needs of @old's disks. */
static int prev_copy(struct prev *p, const struct ajob *old,
		     const struct job *j)
{
	unsigned i, k;

	memcpy(p->id, old->j.id, JOB_ID_LEN);
	p->disks = calloc(j->ndisks ? j->ndisks : 1, sizeof(*p->disks));
	if (!p->disks)
		return -ENOMEM;
	p->ndisks = j->ndisks;
	for (i = 0; i < j->ndisks; i++) {
		const struct job_disk *nd = &j->disks[i];
		struct prev_disk *pd = &p->disks[i];

		for (k = 0; k < old->j.ndisks; k++) {
			const struct job_disk *od = &old->j.disks[k];

			/* the same disk read from the same file */
			if (strcmp(od->name, nd->name) ||
			    strcmp(od->path, nd->path))
				continue;
			pd->found = true;
			pd->started = od->started;
			pd->changed = od->changed;
			pd->snap_time = od->snap_time;
			if ((od->clone && !(pd->clone = strdup(od->clone))) ||
			    (od->ident && !(pd->ident = strdup(od->ident))))
				return -ENOMEM;
			break;
		}
	}
	return 0;
}

/* Under the lock: one disk's record, as the job begins. */
static void set_text(char **dst, const char *s)
{
	free(*dst);
	*dst = s && s[0] ? strdup(s) : NULL;
}

/*
 * Take over @p's clones: rename each to the new owner's name.  All or
 * nothing (a set is one moment only when it is whole): false when one is
 * missing or a rename fails, with the renamed ones put back.
 */
static bool adopt_clones(struct ajob *aj, struct prev *p, char **names,
			 char *why, size_t whylen)
{
	struct job *j = &aj->j;
	unsigned i, n = 0, done;
	struct stat st;

	for (i = 0; i < p->ndisks; i++) {
		if (!p->disks[i].clone)
			continue;
		n++;
		if (stat(p->disks[i].clone, &st)) {
			snprintf(why, whylen, "its snapshot %s is gone",
				 p->disks[i].clone);
			return false;
		}
		names[i] = malloc(PATH_MAX);
		if (!names[i] ||
		    snap_path(j->disks[i].path, j->id, names[i], PATH_MAX)) {
			snprintf(why, whylen, "no clone name for %s",
				 j->disks[i].path);
			return false;
		}
	}
	if (!n)
		return false;
	for (done = 0; done < p->ndisks; done++) {
		if (!p->disks[done].clone)
			continue;
		if (rename(p->disks[done].clone, names[done])) {
			snprintf(why, whylen, "cannot rename %s: %s",
				 p->disks[done].clone, strerror(errno));
			while (done--)
				if (p->disks[done].clone)
					rename(names[done],
					       p->disks[done].clone);
			return false;
		}
	}
	return true;
}

/*
 * On a first run after a failed job of the same VM and peer: decide per
 * disk whether it resumes (no RESTART: the recovery side's held child
 * and durable progress stay) and from what.  Fills @adopted[i] (a clone
 * taken over) and the disks' started and Resume.  Without the lock.
 */
static void take_over(struct ajob *aj, bool *adopted)
{
	struct agent *a = aj->a;
	struct job *j = &aj->j;
	struct ajob *old;
	struct prev p = { 0 };
	char why[512], text[1024], **names;
	bool clones;
	unsigned i;

	pthread_mutex_lock(&a->lock);
	old = failed_predecessor(a, aj);
	if (!old || prev_copy(&p, old, j)) {
		pthread_mutex_unlock(&a->lock);
		prev_free(&p);
		return;
	}
	pthread_mutex_unlock(&a->lock);
	names = calloc(p.ndisks ? p.ndisks : 1, sizeof(*names));
	if (!names) {
		prev_free(&p);
		return;
	}
	why[0] = '\0';
	clones = adopt_clones(aj, &p, names, why, sizeof(why));

	pthread_mutex_lock(&a->lock);
	old = jobs_find(a, p.id);
	for (i = 0; i < j->ndisks; i++) {
		struct job_disk *d = &j->disks[i];
		struct prev_disk *pd = &p.disks[i];
		struct src_ident then, now;
		char e[512];

		text[0] = '\0';
		if (!pd->found) {
			continue;
		} else if (pd->clone && clones) {
			/* all of the set, started or not: the VM's disks
			 * stay one moment */
			d->started = pd->started;
			d->snap_decided = true;
			d->reflink = true;
			d->snap_time = pd->snap_time;
			d->clone = names[i];
			names[i] = NULL;
			adopted[i] = true;
			snprintf(
				text, sizeof(text),
				pd->started
					? "resumed from the snapshot job %s kept"
					: "reads the snapshot job %s kept",
				p.id);
		} else if (!pd->started) {
			continue; /* nothing of it to resume */
		} else if (pd->clone) {
			snprintf(
				text, sizeof(text),
				"started over: the snapshot job %s kept cannot be used (%s)",
				p.id, why);
		} else if (!pd->ident) {
			snprintf(
				text, sizeof(text),
				"started over: job %s recorded no identity of %s",
				p.id, d->name);
		} else if (pd->changed) {
			snprintf(
				text, sizeof(text),
				"started over: %s was written during the last pass of job %s",
				d->name, p.id);
		} else if (src_ident_parse(pd->ident, &then) ||
			   src_ident_read(d->path, &now, e, sizeof(e))) {
			snprintf(
				text, sizeof(text),
				"started over: cannot tell whether %s changed since job %s failed",
				d->name, p.id);
		} else if (!src_ident_equal(&then, &now, e, sizeof(e))) {
			snprintf(
				text, sizeof(text),
				"started over: %s was modified since job %s failed (%s)",
				d->name, p.id, e);
		} else {
			d->started = pd->started;
			snprintf(text, sizeof(text),
				 "resumed: %s is unchanged since job %s failed",
				 d->name, p.id);
		}
		set_text(&d->resume, text);
		log_msg(LOG_PRIO_INFO, NULL, "job %s (VM %s): disk %s %s",
			j->id, j->vm, d->name, text);
		/* the old record no longer owns what was handed over */
		if (old && adopted[i]) {
			unsigned k;

			for (k = 0; k < old->j.ndisks; k++)
				if (old->j.disks[k].clone &&
				    !strcmp(old->j.disks[k].clone, pd->clone)) {
					free(old->j.disks[k].clone);
					old->j.disks[k].clone = NULL;
				}
		}
	}
	if (old && clones)
		jobs_persist(a, old);
	jobs_persist(a, aj);
	pthread_mutex_unlock(&a->lock);
	for (i = 0; i < p.ndisks; i++)
		free(names[i]);
	free(names);
	prev_free(&p);
}

/* The job's settings from its VM (defaults when it is gone). */
static struct job_settings settings_of(struct agent *a, const struct job *j)
{
	struct job_settings s = a->cfg.job;
	const struct vm_config *vm;

	pthread_mutex_lock(&a->lock);
	vm = config_find_vm(&a->cfg, j->vm);
	if (vm)
		s = vm->job;
	pthread_mutex_unlock(&a->lock);
	return s;
}

static unsigned rv_for_snap(int ret)
{
	switch (ret) {
	case -EOPNOTSUPP:
	case -EXDEV:
	case -EINVAL:
	case -ENOTTY:
		return RV_NOT_SUPPORTED;
	case -ENOENT:
		return RV_NOT_FOUND;
	case -ENOMEM:
		return RV_NO_MEMORY;
	}
	return RV_FAILED;
}

/* Room for a snap_take() list of up to @n sources and, per entry, the
 * job disk it stands for. */
static int alloc_sources(unsigned n, const char ***src, unsigned **idx,
			 unsigned *rv, char *err, size_t errlen)
{
	*src = calloc(n ? n : 1, sizeof(**src));
	*idx = calloc(n ? n : 1, sizeof(**idx));
	if (*src && *idx)
		return 0;
	free(*src);
	free(*idx);
	*rv = RV_NO_MEMORY;
	snprintf(err, errlen, "out of memory");
	return -ENOMEM;
}

/* Snapshot the disks not taken over, back to back.  Without the lock. */
static int take_new(struct ajob *aj, const bool *adopted, unsigned *rv,
		    char *err, size_t errlen)
{
	struct agent *a = aj->a;
	struct job *j = &aj->j;
	struct job_settings s = settings_of(a, j);
	struct snap_set set = { 0 };
	const char **src;
	unsigned i, n = 0, *idx;
	int ret;

	ret = alloc_sources(j->ndisks, &src, &idx, rv, err, errlen);
	if (ret)
		return ret;
	for (i = 0; i < j->ndisks; i++)
		if (!adopted[i]) {
			idx[n] = i;
			src[n++] = j->disks[i].path;
		}
	ret = snap_take(&set, src, n, s.snapshot, j->id, false, err, errlen);
	if (ret) {
		snap_release(&set);
		*rv = rv_for_snap(ret);
		if (!err[0])
			snprintf(err, errlen, "cannot snapshot the disks: %s",
				 strerror(-ret));
		free(src);
		free(idx);
		return ret;
	}
	pthread_mutex_lock(&a->lock);
	for (i = 0; i < set.n; i++) {
		struct snap_disk *sd = &set.disks[i];
		struct job_disk *d = &j->disks[idx[i]];

		d->snap_decided = true;
		d->reflink = sd->mode == SNAP_REFLINK && sd->clone;
		d->snap_time = d->reflink ? set.taken : 0;
		if (d->reflink)
			set_text(&d->clone, sd->clone);
		if (sd->blockdev)
			set_text(
				&d->snap_note,
				"a block device: it can be neither cloned nor watched for writes during the resync (read it from an LVM snapshot)");
		else
			set_text(&d->snap_note, sd->note);
		if (d->reflink)
			log_msg(LOG_PRIO_INFO, NULL,
				"job %s (VM %s): disk %s: reads its snapshot %s",
				j->id, j->vm, d->name, sd->clone);
		else if (d->snap_note)
			log_msg(LOG_PRIO_NOTICE, NULL,
				"job %s (VM %s): disk %s: no snapshot: %s",
				j->id, j->vm, d->name, d->snap_note);
	}
	jobs_persist(a, aj);
	pthread_mutex_unlock(&a->lock);
	/* the job record owns the clones now */
	snap_forget(&set);
	free(src);
	free(idx);
	return 0;
}

/* A later run: the clones must still be there, unchanged. */
static int refind(struct ajob *aj, unsigned *rv, char *err, size_t errlen)
{
	struct agent *a = aj->a;
	struct job *j = &aj->j;
	struct snap_set set = { 0 };
	const char **src;
	unsigned i, n = 0, *idx;
	bool lost = false;
	struct stat st;
	int ret;

	if (j->phase != JOB_PHASE_CHECK && j->phase != JOB_PHASE_SEND)
		return 0; /* merging or discarding reads no source data */
	ret = alloc_sources(j->ndisks, &src, &idx, rv, err, errlen);
	if (ret)
		return ret;
	for (i = 0; i < j->ndisks; i++)
		if (j->disks[i].clone) {
			idx[n] = i;
			src[n++] = j->disks[i].path;
			if (stat(j->disks[i].clone, &st))
				lost = true;
		}
	/* Clones are never written, so one that is there is the one the
	 * job made: only a missing one needs snap_take(), which then makes
	 * the whole set again (one moment).  Asking it to re-find clones
	 * that are all there would compare them with the live disks, which
	 * the VM may have grown since. */
	if (!n || !lost) {
		free(src);
		free(idx);
		return 0;
	}
	ret = snap_take(&set, src, n, SNAP_REFLINK, j->id, true, err, errlen);
	if (ret) {
		snap_release(&set);
		*rv = rv_for_snap(ret);
		free(src);
		free(idx);
		return ret;
	}
	lost = false;
	for (i = 0; i < set.n; i++)
		if (!set.disks[i].reused)
			lost = true;
	pthread_mutex_lock(&a->lock);
	for (i = 0; lost && i < set.n; i++) {
		struct job_disk *d = &j->disks[idx[i]];

		/* new clones are a new moment: every disk read from one
		 * starts over, so the set stays one moment */
		set_text(&d->clone, set.disks[i].clone);
		d->snap_time = set.taken;
		d->started = false;
		d->sent = false;
		d->done = 0;
		d->passes = 0;
		d->repass = false;
		d->changed = false;
		set_text(
			&d->resume,
			"started over: the job's snapshot was gone when it resumed, so new snapshots were taken");
		log_msg(LOG_PRIO_WARNING, NULL,
			"job %s (VM %s): disk %s: its snapshot was gone; new snapshot, the disk starts over",
			j->id, j->vm, d->name);
	}
	if (lost)
		jobs_persist(a, aj);
	pthread_mutex_unlock(&a->lock);
	snap_forget(&set);
	free(src);
	free(idx);
	return 0;
}

int jobsnap_prepare(struct ajob *aj, unsigned *rv, char *err, size_t errlen)
{
	struct job *j = &aj->j;
	bool *adopted, decided = true;
	unsigned i;
	int ret;

	err[0] = '\0';
	*rv = 0;
	for (i = 0; i < j->ndisks; i++)
		if (!j->disks[i].snap_decided)
			decided = false;
	if (decided)
		return refind(aj, rv, err, errlen);
	adopted = calloc(j->ndisks ? j->ndisks : 1, sizeof(*adopted));
	if (!adopted) {
		*rv = RV_NO_MEMORY;
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	take_over(aj, adopted);
	ret = take_new(aj, adopted, rv, err, errlen);
	free(adopted);
	return ret;
}

/* --- the sweep at start --- */

static bool keep_owner(void *ctx, const char *owner)
{
	struct ajob *aj = jobs_find(ctx, owner);

	return aj && jobs_has_clones(aj);
}

void jobsnap_sweep(struct agent *a)
{
	char dir[4096], seen[64][512];
	unsigned i, k, m, nseen = 0, removed, total = 0;
	int ret;

	pthread_mutex_lock(&a->lock);
	for (i = 0; i < a->cfg.nvms; i++) {
		const struct vm_config *vm = &a->cfg.vms[i];

		for (k = 0; k < vm->ndisks; k++) {
			const char *base = config_basename(vm->disks[k]);
			size_t len = (size_t)(base - vm->disks[k]);

			if (len >= sizeof(dir) || len < 1)
				continue;
			memcpy(dir, vm->disks[k], len);
			dir[len > 1 ? len - 1 : len] = '\0';
			for (m = 0; m < nseen; m++)
				if (!strcmp(seen[m], dir))
					break;
			if (m < nseen)
				continue;
			if (nseen < 64 && strlen(dir) < sizeof(seen[0]))
				strcpy(seen[nseen++], dir);
			removed = 0;
			ret = snap_sweep_dir(dir, keep_owner, a, &removed);
			if (ret && ret != -ENOENT)
				log_msg(LOG_PRIO_WARNING, NULL,
					"%s: cannot look for stale snapshots: %s",
					dir, strerror(-ret));
			total += removed;
		}
	}
	pthread_mutex_unlock(&a->lock);
	if (total)
		log_msg(LOG_PRIO_INFO, NULL,
			"removed %u stale snapshot clone(s) of jobs that no longer exist",
			total);
}
