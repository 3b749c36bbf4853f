/* SPDX-License-Identifier: MIT */
/*
 * runner.c - a job's thread.  It runs the push engine (push.h) in
 * Hyper-V's order, one phase after the other: snapshot the disks
 * (jobsnap.c), check the geometry of every disk, send each disk into a
 * held child (a disk read live in passes while it keeps changing), merge
 * each child.  Each phase records its progress, so a job stopped by a
 * restart or a suspend resumes at the disk it got to.  A cancelled job
 * discards the recovery side's partial copies instead.  Sessions (and
 * their retries, session.c) run without the agent lock.
 *
 * Within a phase, up to the VM's parallel-disks disks run at once, each
 * in a worker thread of its own (with 1, in the runner's thread, in the
 * disks' order).  The first disk that fails decides the job's error and
 * stops the others through the job's stop flag, as a cancel would, but
 * without a stop request, so it ends as that disk's failure.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/daemon/internal.h"
#include "agent/daemon/joblog.h"
#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/lib/watch.h"
#include "agent/sync/common.h"
#include "agent/sync/push.h"

/* Where a runner got to when a phase stopped. */
struct run {
	struct ajob *aj;
	unsigned disk;	/* the disk that stopped first; ndisks: none */
	int ret;	/* its session's result */
	unsigned rv;	/* a snapshot failed: its Resynchronize value */
	char err[1024]; /* and its message */
	unsigned width; /* parallel-disks: disks at once */
	bool failstop;	/* a failure set aj->stop to stop the others */
};

/* One worker's disk: each thread has its own, so a session's result and
 * message are not shared. */
struct slot {
	struct run *r;
	int ret;
	char err[1024];
};

static unsigned rv_for_push(int err)
{
	switch (err) {
	case -EACCES:
		return RV_ACCESS_DENIED;
	case -ENOENT:
		return RV_NOT_FOUND;
	case -EBUSY:
	case -ETXTBSY: /* the recovery image is in use (ERROR 8) */
		return RV_IN_USE;
	case -EXDEV:
		return RV_INVALID_STATE;
	case -ETIMEDOUT:
		return RV_TIMEOUT;
	case -EHOSTUNREACH:
	case -ECONNREFUSED:
	case -ENETUNREACH:
	case -ECONNRESET:
	case -EPIPE:
		return RV_NOT_AVAILABLE;
	case -ENOMEM:
		return RV_NO_MEMORY;
	case -EPROTONOSUPPORT:
		return RV_NOT_SUPPORTED;
	}
	return RV_FAILED;
}

/* --- stopping --- */

bool runner_handle_stop(struct agent *a, struct ajob *aj)
{
	struct vmrt *vm = jobs_vm(a, aj->j.vm);

	switch (aj->stop_req) {
	case REQ_SUSPEND:
		jobs_set_state(aj, JS_SUSPENDED);
		jobs_set_vm(a, vm, RS_RESYNC_SUSPENDED);
		jobs_persist(a, aj);
		log_msg(LOG_PRIO_INFO, NULL, "job %s (VM %s) suspended at %u%%",
			aj->j.id, aj->j.vm, aj->j.percent);
		jobs_notify_status(a);
		return true;
	case REQ_TERMINATE:
		jobs_set_state(aj, JS_SHUTTING_DOWN);
		aj->j.phase = JOB_PHASE_DISCARD;
		aj->stop = 0;
		aj->stop_req = 0;
		jobs_persist(a, aj);
		log_msg(LOG_PRIO_INFO, NULL,
			"job %s (VM %s) cancelled: discarding the recovery side's partial copies",
			aj->j.id, aj->j.vm);
		return false;
	case REQ_KILL:
		jobs_finish(
			a, aj, JS_KILLED, 0, "The job was killed.",
			"RequestStateChange 5 (Kill): stopped without discarding the recovery side's partial copies; the next resynchronization starts over");
		return true;
	default: /* STOP_SHUTDOWN: stay as we are, resume at the next start */
		if (aj->j.running_since) {
			aj->j.elapsed += wall_us() - aj->j.running_since;
			aj->j.running_since = 0;
		}
		jobs_persist(a, aj);
		return true;
	}
}

/* Called without the lock: drop every partial copy on the recovery side,
 * then the job is Terminated (unless a kill or shutdown cuts in). */
static void discard_all(struct agent *a, struct ajob *aj)
{
	char err[1024], failed[1200] = "";
	unsigned i;
	int ret;

	for (i = 0; i < aj->j.ndisks; i++) {
		ret = runner_session(aj, i, PUSH_DISCARD, err, sizeof(err));
		pthread_mutex_lock(&a->lock);
		if (aj->stop && runner_handle_stop(a, aj)) {
			/* killed or shut down during the discard */
			pthread_mutex_unlock(&a->lock);
			return;
		}
		pthread_mutex_unlock(&a->lock);
		if (ret && ret != -ENOENT && !failed[0])
			snprintf(
				failed, sizeof(failed),
				"could not discard the partial copy of %s (the next resynchronization starts over anyway): %s",
				aj->j.disks[i].name, err);
	}
	pthread_mutex_lock(&a->lock);
	jobs_finish(
		a, aj, JS_TERMINATED, 0, "The job was cancelled.",
		failed[0]
			? failed
			: "RequestStateChange 4 (Terminate): the recovery images are untouched; the VM needs a resynchronization");
	pthread_mutex_unlock(&a->lock);
}

static void fail_job(struct agent *a, struct ajob *aj, int ret,
		     const char *what, const char *disk, const char *err)
{
	char summary[512], desc[1600];

	snprintf(summary, sizeof(summary),
		 "Resynchronization of VM '%s' failed in the %s of disk %s.",
		 aj->j.vm, what, disk);
	joblog(LOG_PRIO_ERR, &aj->j, NULL, disk, "job %s (VM %s): %s: %s",
	       aj->j.id, aj->j.vm, what, err);
	snprintf(desc, sizeof(desc), "%s", err);
	if (aj->keep_snap && jobs_has_clones(aj))
		snprintf(
			desc, sizeof(desc),
			"%s; the job's snapshots are kept so that the next resynchronization resumes from them",
			err);
	else if (aj->keep_snap)
		snprintf(
			desc, sizeof(desc),
			"%s; the next resynchronization resumes where this one stopped if the disks are unchanged",
			err);
	/* the failed record names the disk alone ("-": none in
	 * particular, then every disk) */
	jobs_finish_disk(a, aj, JS_EXCEPTION, rv_for_push(ret), summary, desc,
			 strcmp(disk, "-") ? disk : NULL);
}

static const char *phase_work(enum job_phase p)
{
	return p == JOB_PHASE_CHECK  ? "geometry check"
	       : p == JOB_PHASE_SEND ? "comparison and copy"
				     : "merge";
}

/* Under the lock (dropped during a discard): a phase stopped, on request
 * or because a session failed. */
static void stopped(struct agent *a, struct run *r)
{
	struct ajob *aj = r->aj;
	struct job *j = &aj->j;

	if (aj->stop && aj->stop_req) {
		if (!runner_handle_stop(a, aj)) {
			pthread_mutex_unlock(&a->lock);
			discard_all(a, aj);
			pthread_mutex_lock(&a->lock);
		}
		return;
	}
	/* no request came: the flag was ours, and a cancel of the failed
	 * job (its discard sessions) must not find it set */
	if (r->failstop)
		aj->stop = 0;
	fail_job(a, aj, r->ret ? r->ret : -ECANCELED, phase_work(j->phase),
		 r->disk < j->ndisks ? j->disks[r->disk].name : "-", r->err);
}

/* --- a phase's disks, up to parallel-disks at once --- */

/* One disk's work in a phase, without the lock: false when it stopped
 * (@s->ret and @s->err say why when it failed). */
typedef bool (*disk_work)(struct slot *s, unsigned i);
/* Under the lock: has disk @d still work in the phase? */
typedef bool (*disk_todo)(const struct job_disk *d);

struct phase {
	struct run *r;
	disk_work work;
	disk_todo todo;
	bool stop_others; /* a failure stops the disks still running */
	unsigned next;	  /* under the lock: the next disk to look at */
	bool stopped;	  /* under the lock: a disk stopped, start none */
};

struct worker {
	struct phase *ph;
	struct slot s;
	pthread_t thread;
};

/* Under the lock: the first disk that stops decides how the phase ends;
 * when it failed (a stop of ours or a request is no failure), the disks
 * still running are told to stop. */
static void disk_stopped(struct phase *ph, unsigned i, const struct slot *s)
{
	struct run *r = ph->r;
	struct ajob *aj = r->aj;

	if (ph->stopped)
		return;
	ph->stopped = true;
	r->disk = i;
	r->ret = s->ret;
	snprintf(r->err, sizeof(r->err), "%s", s->err);
	if (s->ret && !aj->stop && ph->stop_others && r->width > 1) {
		r->failstop = true;
		aj->stop = 1;
		pthread_cond_broadcast(&aj->a->cond); /* a retry's backoff */
	}
}

/* Take the phase's next disk with work left, until one stopped or the job
 * is asked to stop; as the sequential loop did, a stop is seen between two
 * disks. */
static void *work_disks(void *arg)
{
	struct worker *w = arg;
	struct phase *ph = w->ph;
	struct ajob *aj = ph->r->aj;
	struct agent *a = aj->a;
	unsigned i;

	pthread_mutex_lock(&a->lock);
	for (;;) {
		while (ph->next < aj->j.ndisks &&
		       !ph->todo(&aj->j.disks[ph->next]))
			ph->next++;
		if (ph->stopped || ph->next >= aj->j.ndisks)
			break;
		if (aj->stop) {
			w->s.ret = 0;
			w->s.err[0] = '\0';
			disk_stopped(ph, ph->next, &w->s);
			break;
		}
		i = ph->next++;
		pthread_mutex_unlock(&a->lock);
		w->s.ret = 0;
		w->s.err[0] = '\0';
		if (ph->work(&w->s, i)) {
			pthread_mutex_lock(&a->lock);
			continue;
		}
		pthread_mutex_lock(&a->lock);
		disk_stopped(ph, i, &w->s);
		break;
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

/*
 * Run @work on every disk @todo names, up to r->width at once: the
 * runner's thread is one worker, the others are threads of their own.
 * Returns false when a disk stopped (r->disk, r->ret and r->err say which
 * and why).  Without the lock.
 */
static bool run_disks(struct run *r, disk_work work, disk_todo todo,
		      bool stop_others)
{
	struct ajob *aj = r->aj;
	struct phase ph = {
		.r = r, .work = work, .todo = todo, .stop_others = stop_others
	};
	struct worker *w;
	unsigned n = r->width, left = 0, i, started;

	pthread_mutex_lock(&aj->a->lock);
	for (i = 0; i < aj->j.ndisks; i++)
		left += todo(&aj->j.disks[i]);
	pthread_mutex_unlock(&aj->a->lock);
	if (n > left)
		n = left;
	if (n < 1)
		n = 1;
	w = calloc(n, sizeof(*w));
	if (!w) { /* one disk at a time still does the job */
		struct worker one = { .ph = &ph, .s = { .r = r } };

		work_disks(&one);
		return !ph.stopped;
	}
	for (started = 1; started < n; started++) {
		w[started].ph = &ph;
		w[started].s.r = r;
		/* a thread that cannot be made leaves its disks to the
		 * others */
		if (pthread_create(&w[started].thread, NULL, work_disks,
				   &w[started]))
			break;
	}
	w[0].ph = &ph;
	w[0].s.r = r;
	work_disks(&w[0]);
	for (i = 1; i < started; i++)
		pthread_join(w[i].thread, NULL);
	free(w);
	return !ph.stopped;
}

/* --- the phases; each runs without the lock and returns false when it
 * stopped --- */

static bool all_disks(const struct job_disk *d)
{
	(void)d;
	return true;
}

static bool check_disk(struct slot *s, unsigned i)
{
	struct ajob *aj = s->r->aj;

	s->ret = runner_session(aj, i, PUSH_CHECK, s->err, sizeof(s->err));
	return !s->ret && !aj->stop;
}

static bool phase_check(struct run *r)
{
	struct ajob *aj = r->aj;
	struct job *j = &aj->j;

	if (j->phase != JOB_PHASE_CHECK)
		return true;
	if (!run_disks(r, check_disk, all_disks, true))
		return false;
	pthread_mutex_lock(&aj->a->lock);
	j->phase = JOB_PHASE_SEND;
	runner_update_percent(j);
	jobs_persist(aj->a, aj);
	pthread_mutex_unlock(&aj->a->lock);
	return true;
}

/* The flags of disk @d's next send session; without the lock (only the
 * runner changes them). */
static unsigned send_flags(const struct job_disk *d)
{
	/* a job's first session of a disk drops whatever an older,
	 * abandoned job left on the recovery side; a further pass keeps
	 * the held child but compares from the start again */
	if (!d->started)
		return PUSH_HOLD | PUSH_RESTART; /* from 0 anyway */
	return PUSH_HOLD | (d->repass ? PUSH_REPASS : 0);
}

/* Under the lock: the disk's send is done (its child is held). */
static void disk_sent(struct ajob *aj, struct job_disk *d)
{
	d->sent = true;
	d->done = d->size;
	runner_update_percent(&aj->j);
	jobs_persist(aj->a, aj);
}

/* A disk read from its snapshot (or one that cannot be watched): one
 * pass. */
static bool send_once(struct slot *s, unsigned i)
{
	struct ajob *aj = s->r->aj;
	struct agent *a = aj->a;
	struct job_disk *d = &aj->j.disks[i];

	pthread_mutex_lock(&a->lock);
	if (!d->passes) {
		d->passes = 1;
		jobs_persist(a, aj);
	}
	pthread_mutex_unlock(&a->lock);
	s->ret = runner_session(aj, i, send_flags(d), s->err, sizeof(s->err));
	if (s->ret || aj->stop)
		return false;
	pthread_mutex_lock(&a->lock);
	disk_sent(aj, d);
	pthread_mutex_unlock(&a->lock);
	return true;
}

/*
 * Start a pass of live disk @d: watch it before the session opens it, so
 * no write can fall between, and record its identity now (what a later
 * job compares to resume).  A pass an earlier run of this job began
 * (@resumed) is tainted when the file changed while nobody watched.
 * Returns 0, -ENOTSUP (a block device: not watchable) or another error
 * with @s->err.
 */
static int pass_begin(struct slot *s, struct job_disk *d, bool resumed,
		      struct watch **w, bool *taint, char *why, size_t whylen)
{
	struct ajob *aj = s->r->aj;
	struct agent *a = aj->a;
	char text[SRC_IDENT_TEXT_MAX];
	struct src_ident then;
	int ret;

	*taint = false;
	ret = watch_start(d->path, w, s->err, sizeof(s->err));
	if (ret)
		return ret;
	if (resumed && d->ident && !src_ident_parse(d->ident, &then) &&
	    !src_ident_equal(&then, watch_ident(*w), why, whylen))
		*taint = true;
	if (resumed && !d->ident) {
		*taint = true;
		snprintf(
			why, whylen,
			"its identity at the start of the pass was not recorded");
	}
	if (src_ident_format(watch_ident(*w), text, sizeof(text)))
		text[0] = '\0';
	pthread_mutex_lock(&a->lock);
	free(d->ident);
	d->ident = text[0] ? strdup(text) : NULL;
	jobs_persist(a, aj);
	pthread_mutex_unlock(&a->lock);
	return 0;
}

/*
 * A live disk (no snapshot): pass after pass while writes show up during
 * one, up to the VM's max-passes.  Each pass after the first keeps the
 * held child and compares from the start again, sending only what still
 * differs.  A disk still written in its last pass is marked changed; the
 * job goes on and ends Completed with warnings.
 */
static bool send_passes(struct slot *s, unsigned i)
{
	struct ajob *aj = s->r->aj;
	struct agent *a = aj->a;
	struct job_disk *d = &aj->j.disks[i];
	const struct vm_config *vm;
	unsigned max;
	struct watch *w;
	char why[512];
	bool resumed, taint;
	int ret, changed;

	pthread_mutex_lock(&a->lock);
	vm = config_find_vm(&a->cfg, aj->j.vm);
	max = vm ? vm->job.max_passes : a->cfg.job.max_passes;
	pthread_mutex_unlock(&a->lock);
	for (;;) {
		resumed = d->passes && !d->changed;
		if (!resumed) {
			if (d->passes >= max)
				break; /* the last pass saw writes */
			pthread_mutex_lock(&a->lock);
			d->passes++;
			d->repass = d->passes > 1;
			d->changed = false;
			jobs_persist(a, aj);
			pthread_mutex_unlock(&a->lock);
		}
		why[0] = '\0';
		ret = pass_begin(s, d, resumed, &w, &taint, why, sizeof(why));
		if (ret == -ENOTSUP) {
			pthread_mutex_lock(&a->lock);
			if (!d->snap_note)
				d->snap_note = strdup(
					"a block device: it cannot be watched for writes during the resync (read it from an LVM snapshot)");
			pthread_mutex_unlock(&a->lock);
			log_msg(LOG_PRIO_NOTICE, NULL,
				"job %s (VM %s): disk %s: %s", aj->j.id,
				aj->j.vm, d->name, s->err);
			return send_once(s, i);
		}
		if (ret) {
			s->ret = ret;
			return false;
		}
		log_msg(LOG_PRIO_INFO, NULL,
			"job %s (VM %s): disk %s: pass %u%s", aj->j.id,
			aj->j.vm, d->name, d->passes,
			resumed ? " (resumed)" : "");
		s->ret = runner_session(aj, i, send_flags(d), s->err,
					sizeof(s->err));
		changed = taint ? 1 : watch_changed(w, why, sizeof(why));
		watch_stop(w);
		if (changed < 0) { /* cannot tell: count it as written */
			snprintf(why, sizeof(why),
				 "%s: cannot tell whether it was written: %s",
				 d->path, strerror(-changed));
			changed = 1;
		}
		pthread_mutex_lock(&a->lock);
		d->changed = changed == 1;
		jobs_persist(a, aj);
		pthread_mutex_unlock(&a->lock);
		if (s->ret || aj->stop)
			return false;
		if (!changed)
			break;
		if (d->passes >= max) {
			log_msg(LOG_PRIO_WARNING, NULL,
				"job %s (VM %s): %s changed during pass %u (%s), the last of max-passes %u",
				aj->j.id, aj->j.vm, d->name, d->passes, why,
				max);
			break;
		}
		log_msg(LOG_PRIO_INFO, NULL,
			"job %s (VM %s): %s changed during pass %u (%s); pass %u",
			aj->j.id, aj->j.vm, d->name, d->passes, why,
			d->passes + 1);
	}
	pthread_mutex_lock(&a->lock);
	disk_sent(aj, d);
	pthread_mutex_unlock(&a->lock);
	return true;
}

/* Compare and send disk @i into a held child on the recovery side. */
static bool send_disk(struct slot *s, unsigned i)
{
	const struct job_disk *d = &s->r->aj->j.disks[i];

	if (d->reflink)
		return send_once(s, i);
	return send_passes(s, i);
}

static bool not_sent(const struct job_disk *d)
{
	return !d->sent;
}

static bool phase_send(struct run *r)
{
	struct ajob *aj = r->aj;
	struct agent *a = aj->a;
	struct job *j = &aj->j;

	if (j->phase != JOB_PHASE_SEND)
		return true;
	if (!run_disks(r, send_disk, not_sent, true))
		return false;
	pthread_mutex_lock(&a->lock);
	if (aj->stop) {
		pthread_mutex_unlock(&a->lock);
		return false;
	}
	/* from here on Hyper-V's resync cannot be cancelled either */
	j->phase = JOB_PHASE_MERGE;
	j->cancellable = false;
	runner_update_percent(j);
	jobs_persist(a, aj);
	pthread_mutex_unlock(&a->lock);
	return true;
}

static bool merge_disk(struct slot *s, unsigned i)
{
	struct ajob *aj = s->r->aj;

	s->ret = runner_session(aj, i, PUSH_MERGE, s->err, sizeof(s->err));
	if (s->ret)
		return false;
	pthread_mutex_lock(&aj->a->lock);
	aj->j.disks[i].merged = true;
	runner_update_percent(&aj->j);
	jobs_persist(aj->a, aj);
	pthread_mutex_unlock(&aj->a->lock);
	return true;
}

static bool not_merged(const struct job_disk *d)
{
	return !d->merged;
}

/* Not stopped by a request: a merge that began is carried through.  A
 * failed merge starts no further one, but the merges already running
 * finish (they cannot be cancelled and are short). */
static bool phase_merge(struct run *r)
{
	if (r->aj->j.phase != JOB_PHASE_MERGE)
		return true;
	return run_disks(r, merge_disk, not_merged, false);
}

/* --- the thread --- */

/*
 * A replica VM's job reads disks that its primary also sends to: hold the
 * exports for the run so no primary session starts under it.  Under the
 * lock; returns 0 or -EBUSY (with every hold released again).
 */
static int hold_exports(struct agent *a, const struct vm_config *vm, bool hold)
{
	char name[PROTO_NAME_MAX + 1];
	unsigned i;

	if (vm->role == VM_ROLE_PRIMARY || !a->server)
		return 0;
	for (i = 0; i < vm->ndisks; i++) {
		/* a name that breaks the rule is no export: nothing to hold */
		if (jobs_export_name(name, sizeof(name), vm, i) ||
		    server_hold_export(a->server, name, hold) != -EBUSY)
			continue;
		while (i--)
			if (!jobs_export_name(name, sizeof(name), vm, i))
				server_hold_export(a->server, name, false);
		return -EBUSY;
	}
	return 0;
}

/* Without the lock: snapshot the disks (or find the job's snapshots
 * again) before anything reads them. */
static bool prepare_sources(struct run *r)
{
	struct ajob *aj = r->aj;

	if (aj->j.phase != JOB_PHASE_CHECK && aj->j.phase != JOB_PHASE_SEND)
		return true;
	r->ret = jobsnap_prepare(aj, &r->rv, r->err, sizeof(r->err));
	return !r->ret && !aj->stop;
}

/* Under the lock: snapshots could not be taken. */
static void snapshot_failed(struct agent *a, struct run *r)
{
	struct ajob *aj = r->aj;
	char summary[512];

	snprintf(
		summary, sizeof(summary),
		"Resynchronization of VM '%s' failed: its disks could not be snapshotted.",
		aj->j.vm);
	log_msg(LOG_PRIO_ERR, NULL, "job %s (VM %s): snapshot: %s", aj->j.id,
		aj->j.vm, r->err);
	jobs_finish(a, aj, JS_EXCEPTION, r->rv, summary, r->err);
}

/*
 * Under the lock: every disk is merged.  A disk whose source was still
 * written during its last pass makes the recovery copy a mixture of
 * moments: Completed with warnings, and the VM stays "resynchronization
 * required" (jobs_finish() marks only Completed as in sync).
 */
static void finish_done(struct agent *a, struct ajob *aj)
{
	char names[600] = "", desc[1600];
	unsigned i, n = 0, passes = 0;
	size_t len = 0;

	for (i = 0; i < aj->j.ndisks; i++) {
		if (!aj->j.disks[i].changed)
			continue;
		if (aj->j.disks[i].passes > passes)
			passes = aj->j.disks[i].passes;
		len += (size_t)snprintf(
			names + len,
			len < sizeof(names) ? sizeof(names) - len : 0, "%s%s",
			n ? ", " : "", aj->j.disks[i].name);
		if (len >= sizeof(names))
			len = sizeof(names) - 1;
		n++;
	}
	if (!n) {
		jobs_finish(a, aj, JS_COMPLETED, 0, NULL, NULL);
		return;
	}
	snprintf(
		desc, sizeof(desc),
		"the source changed during the resynchronization of %s %s (still in the last of %u passes): the recovery copy is a mixture of moments and may not be consistent; to avoid this, keep the disks on XFS (reflink=1) or btrfs with snapshot = auto or reflink, read them from an LVM snapshot, or resynchronize while the VM is stopped",
		n == 1 ? "disk" : "disks", names, passes);
	log_msg(LOG_PRIO_WARNING, NULL, "job %s (VM %s): %s", aj->j.id,
		aj->j.vm, desc);
	jobs_finish(
		a, aj, JS_COMPLETED_WARNINGS, 0,
		"The resynchronization completed, but the source changed while it ran.",
		desc);
}

/* Under the lock: the job starts running (again). */
static void mark_running(struct agent *a, struct ajob *aj, struct vmrt *vm)
{
	struct job *j = &aj->j;

	if (!j->started)
		j->started = wall_us();
	j->running_since = wall_us();
	jobs_set_state(aj, JS_RUNNING);
	jobs_set_vm(a, vm, RS_RESYNCHRONIZING);
	jobs_persist(a, aj);
	jobs_notify_status(a);
	joblog(LOG_PRIO_INFO, j, MSGID_JOB_STARTED, NULL,
	       "job %s (VM %s, JobType %u) running: %s phase, to %s", j->id,
	       j->vm, j->type, job_phase_name(j->phase), j->peer);
}

/* Under the lock (dropped while sessions run): run the phases the job
 * has left.  Returns the VM whose exports stay held until the runner is
 * done, or NULL. */
static const struct vm_config *run_phases(struct agent *a, struct ajob *aj)
{
	struct vmrt *vm = jobs_vm(a, aj->j.vm);
	struct run r = { .aj = aj, .disk = aj->j.ndisks, .width = 1 };
	bool done;

	if (vm && hold_exports(a, vm->cfg, true)) {
		snprintf(
			r.err, sizeof(r.err),
			"VM %s: a disk is receiving from the primary right now",
			aj->j.vm);
		r.ret = -EBUSY;
		stopped(a, &r);
		return NULL;
	}
	mark_running(a, aj, vm);
	/* read once: a job keeps the width it started with */
	r.width = vm ? vm->cfg->job.parallel_disks : a->cfg.job.parallel_disks;
	if (r.width < 1)
		r.width = 1;
	if (r.width > 1 && aj->j.ndisks > 1)
		log_msg(LOG_PRIO_INFO, NULL,
			"job %s (VM %s): up to %u of its %u disks at once",
			aj->j.id, aj->j.vm,
			r.width < aj->j.ndisks ? r.width : aj->j.ndisks,
			aj->j.ndisks);
	pthread_mutex_unlock(&a->lock);
	done = prepare_sources(&r) && phase_check(&r) && phase_send(&r) &&
	       phase_merge(&r);
	pthread_mutex_lock(&a->lock);
	if (done)
		finish_done(a, aj);
	else if (r.rv)
		snapshot_failed(a, &r);
	else
		stopped(a, &r);
	return vm ? vm->cfg : NULL;
}

/* Under the lock (dropped during a discard): a job the agent stopped
 * while it was being cancelled.  A discard goes on; before it had begun,
 * the job counts as killed. */
static void resume_shutdown(struct agent *a, struct ajob *aj)
{
	if (aj->j.phase != JOB_PHASE_DISCARD) {
		aj->stop_req = REQ_KILL;
		runner_handle_stop(a, aj);
		return;
	}
	pthread_mutex_unlock(&a->lock);
	discard_all(a, aj);
	pthread_mutex_lock(&a->lock);
}

static void *runner(void *arg)
{
	struct ajob *aj = arg;
	struct agent *a = aj->a;
	const struct vm_config *held = NULL;

	pthread_mutex_lock(&a->lock);
	if (aj->j.state == JS_SHUTTING_DOWN)
		resume_shutdown(a, aj);
	else
		held = run_phases(a, aj);
	if (held)
		hold_exports(a, held, false);
	aj->thread_done = true;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

void runner_reap(struct ajob *aj)
{
	if (aj->has_thread && aj->thread_done) {
		pthread_join(aj->thread, NULL);
		aj->has_thread = false;
		aj->thread_done = false;
	}
}

int runner_start(struct agent *a, struct ajob *aj)
{
	int ret;

	runner_reap(aj);
	if (aj->has_thread)
		return -EBUSY;
	aj->stop = 0;
	aj->stop_req = 0;
	aj->keep_snap = false;
	aj->thread_done = false;
	if (aj->j.state != JS_SHUTTING_DOWN)
		jobs_set_state(aj, JS_STARTING);
	ret = pthread_create(&aj->thread, NULL, runner, aj);
	if (ret)
		return -ret;
	aj->has_thread = true;
	return 0;
}
