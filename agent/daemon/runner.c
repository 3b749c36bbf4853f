/* SPDX-License-Identifier: MIT */
/*
 * runner.c - a job's thread.  It runs the push engine (push.h) in
 * Hyper-V's order, one phase after the other: check the geometry of
 * every disk, send each disk into a held child, merge each child.  Each
 * phase records its progress, so a job stopped by a restart or a suspend
 * resumes at the disk it got to.  A cancelled job discards the recovery
 * side's partial copies instead.  Sessions run without the agent lock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/daemon/internal.h"
#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/sync/common.h"
#include "agent/sync/push.h"
#include "uring/source.h"

#define SAVE_INTERVAL_US 5000000 /* progress is persisted this often */
#define BUSY_RETRIES 30		 /* seconds an export may stay busy */

/* Where a runner got to when a phase stopped. */
struct run {
	struct ajob *aj;
	unsigned disk;	/* the disk being worked on; ndisks: none */
	int ret;	/* the session's result */
	char err[1024]; /* and its message */
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

/* PercentComplete: the check is 1 %, sending 97 %, merging 2 %. */
static void update_percent(struct job *j)
{
	uint64_t total = 0, done = 0;
	unsigned i, merged = 0;

	for (i = 0; i < j->ndisks; i++) {
		total += j->disks[i].size;
		done += j->disks[i].sent ? j->disks[i].size : j->disks[i].done;
		merged += j->disks[i].merged;
	}
	switch (j->phase) {
	case JOB_PHASE_CHECK:
		j->percent = 0;
		break;
	case JOB_PHASE_SEND:
		j->percent = 1 + (unsigned)(total ? (done * 97) / total : 0);
		break;
	case JOB_PHASE_MERGE:
		j->percent = 98 + (j->ndisks ? (merged * 2) / j->ndisks : 0);
		if (j->percent > 99)
			j->percent = 99;
		break;
	case JOB_PHASE_DISCARD:
		break;
	case JOB_PHASE_DONE:
		j->percent = 100;
		break;
	}
}

/* --- one protocol session --- */

static void max_u64(uint64_t *dst, uint64_t v)
{
	if (v > *dst)
		*dst = v;
}

/* Under the lock: a session's counters into the job's.  Within a job they
 * only grow (a first session starts from 0 anyway), so a late or partial
 * report never shows the job going backwards. */
static void take_stats(struct ajob *aj, struct job_disk *d,
		       const struct push_stats *st)
{
	max_u64(&d->done, st->position);
	max_u64(&aj->j.bytes_compared, aj->base_compared + st->bytes_compared);
	max_u64(&aj->j.bytes_different,
		aj->base_different + st->bytes_different);
	max_u64(&aj->j.bytes_sent, aj->base_sent + st->bytes_sent);
}

static void on_progress(void *ctx, const struct push_stats *st)
{
	struct ajob *aj = ctx;
	struct agent *a = aj->a;
	struct job_disk *d;
	int64_t now = wall_us();

	pthread_mutex_lock(&a->lock);
	d = &aj->j.disks[aj->cur_disk];
	if (st->virtual_size)
		d->size = st->virtual_size;
	take_stats(aj, d, st);
	update_percent(&aj->j);
	if (now - aj->last_save >= SAVE_INTERVAL_US) {
		aj->last_save = now;
		jobs_persist(a, aj);
	}
	pthread_mutex_unlock(&a->lock);
}

/* The logical sector size of the configured disk that D stands for, when
 * the job reads D from somewhere else; 0 to let the source say. */
static uint32_t configured_sector_size(struct agent *a, struct ajob *aj,
				       const struct job_disk *d)
{
	const struct vm_config *vm;
	struct ur_source *src;
	char msg[512];
	uint32_t lss = 0;
	unsigned k;

	pthread_mutex_lock(&a->lock);
	vm = config_find_vm(&a->cfg, aj->j.vm);
	for (k = 0; vm && k < vm->ndisks; k++)
		if (!strcmp(config_basename(vm->disks[k]), d->name))
			break;
	if (!vm || k == vm->ndisks || !strcmp(vm->disks[k], d->path)) {
		pthread_mutex_unlock(&a->lock);
		return 0;
	}
	pthread_mutex_unlock(&a->lock);
	if (ur_source_open(vm->disks[k], &src, msg, sizeof(msg)) == 0) {
		lss = src->sector_size;
		ur_source_close(src);
	}
	return lss;
}

/* push_disk(), again while the export is busy: the recovery side may
 * still be tearing down a session of ours that a restart or a stop cut
 * short. */
static int push_retrying(struct ajob *aj, const struct push_params *p,
			 struct push_stats *st, char *err, size_t errlen)
{
	unsigned tries, k;
	int ret;

	for (tries = 0;; tries++) {
		err[0] = '\0';
		ret = push_disk(p, st, err, errlen);
		if (ret != -EBUSY || tries >= BUSY_RETRIES || aj->stop)
			return ret;
		for (k = 0; k < 10 && !aj->stop; k++)
			usleep(100000);
	}
}

/* One protocol session for disk @i of the job; called without the lock. */
static int session(struct ajob *aj, unsigned i, unsigned flags, char *err,
		   size_t errlen)
{
	struct agent *a = aj->a;
	struct job_disk *d = &aj->j.disks[i];
	struct push_stats st;
	char export_name[PROTO_NAME_MAX + 1];
	struct push_params p = {
		/* push.h allows NULL for MERGE and DISCARD, but HELLO still
		 * wants the geometry, which the source gives */
		.src = d->path,
		.addr = aj->j.peer,
		.export_name = export_name,
		.tls = &a->tls,
		.hash = UR_HASH_XXH3_128,
		.compress = true,
		.bwlimit = a->bwlimit,
		.flags = flags,
		.stop = &aj->stop,
		.progress = (flags & PUSH_HOLD) ? on_progress : NULL,
		.ctx = aj,
	};
	int ret;

	ret = sync_export_name(export_name, sizeof(export_name), aj->j.vm,
			       d->name);
	if (ret == -ENAMETOOLONG) {
		snprintf(err, errlen,
			 "export name %s:%s is longer than %u bytes", aj->j.vm,
			 d->name, PROTO_NAME_MAX);
		return -EINVAL;
	}
	if (ret) {
		snprintf(err, errlen,
			 "export name %s:%s breaks the export-name rule",
			 aj->j.vm, d->name);
		return -EINVAL;
	}
	/* A source given in place of the configured disk (a raw view from
	 * mount-and-resync) announces the configured disk's sector size. */
	p.sector_size = configured_sector_size(a, aj, d);
	memset(&st, 0, sizeof(st));
	pthread_mutex_lock(&a->lock);
	aj->cur_disk = i;
	aj->base_compared = aj->j.bytes_compared;
	aj->base_different = aj->j.bytes_different;
	aj->base_sent = aj->j.bytes_sent;
	pthread_mutex_unlock(&a->lock);

	ret = push_retrying(aj, &p, &st, err, errlen);

	pthread_mutex_lock(&a->lock);
	if (st.virtual_size)
		d->size = st.virtual_size;
	if (flags &
	    PUSH_HOLD) { /* the last report may be ahead of a cut session */
		take_stats(aj, d, &st);
		d->resumed = st.resume_offset;
	}
	pthread_mutex_unlock(&a->lock);
	if (!err[0] && ret)
		snprintf(err, errlen, "%s", strerror(-ret));
	return ret;
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
		ret = session(aj, i, PUSH_DISCARD, err, sizeof(err));
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
	char summary[512];

	snprintf(summary, sizeof(summary),
		 "Resynchronization of VM '%s' failed in the %s of disk %s.",
		 aj->j.vm, what, disk);
	log_msg(LOG_PRIO_ERR, NULL, "job %s (VM %s): %s: %s", aj->j.id,
		aj->j.vm, what, err);
	jobs_finish(a, aj, JS_EXCEPTION, rv_for_push(ret), summary, err);
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
	fail_job(a, aj, r->ret ? r->ret : -ECANCELED, phase_work(j->phase),
		 r->disk < j->ndisks ? j->disks[r->disk].name : "-", r->err);
}

/* --- the phases; each runs without the lock and returns false when it
 * stopped --- */

static bool phase_check(struct run *r)
{
	struct ajob *aj = r->aj;
	struct job *j = &aj->j;

	if (j->phase != JOB_PHASE_CHECK)
		return true;
	for (r->disk = 0; r->disk < j->ndisks; r->disk++) {
		r->ret = session(aj, r->disk, PUSH_CHECK, r->err,
				 sizeof(r->err));
		if (r->ret || aj->stop)
			return false;
	}
	pthread_mutex_lock(&aj->a->lock);
	j->phase = JOB_PHASE_SEND;
	update_percent(j);
	jobs_persist(aj->a, aj);
	pthread_mutex_unlock(&aj->a->lock);
	return true;
}

/* Compare and send disk @i into a held child on the recovery side. */
static bool send_disk(struct run *r, unsigned i)
{
	struct ajob *aj = r->aj;
	struct agent *a = aj->a;
	struct job_disk *d = &aj->j.disks[i];
	unsigned flags;

	pthread_mutex_lock(&a->lock);
	/* a job's first session of a disk drops whatever an older,
	 * abandoned job left on the recovery side */
	flags = PUSH_HOLD | (d->started ? 0 : PUSH_RESTART);
	d->started = true;
	jobs_persist(a, aj);
	pthread_mutex_unlock(&a->lock);
	r->ret = session(aj, i, flags, r->err, sizeof(r->err));
	if (r->ret || aj->stop)
		return false;
	pthread_mutex_lock(&a->lock);
	d->sent = true;
	d->done = d->size;
	update_percent(&aj->j);
	jobs_persist(a, aj);
	pthread_mutex_unlock(&a->lock);
	return true;
}

static bool phase_send(struct run *r)
{
	struct ajob *aj = r->aj;
	struct agent *a = aj->a;
	struct job *j = &aj->j;

	if (j->phase != JOB_PHASE_SEND)
		return true;
	for (r->disk = 0; r->disk < j->ndisks; r->disk++)
		if (!j->disks[r->disk].sent && !send_disk(r, r->disk))
			return false;
	pthread_mutex_lock(&a->lock);
	if (aj->stop) {
		pthread_mutex_unlock(&a->lock);
		return false;
	}
	/* from here on Hyper-V's resync cannot be cancelled either */
	j->phase = JOB_PHASE_MERGE;
	j->cancellable = false;
	update_percent(j);
	jobs_persist(a, aj);
	pthread_mutex_unlock(&a->lock);
	return true;
}

/* Not stopped by a request: a merge that began is carried through. */
static bool phase_merge(struct run *r)
{
	struct ajob *aj = r->aj;
	struct job *j = &aj->j;

	if (j->phase != JOB_PHASE_MERGE)
		return true;
	for (r->disk = 0; r->disk < j->ndisks; r->disk++) {
		if (j->disks[r->disk].merged)
			continue;
		r->ret = session(aj, r->disk, PUSH_MERGE, r->err,
				 sizeof(r->err));
		if (r->ret)
			return false;
		pthread_mutex_lock(&aj->a->lock);
		j->disks[r->disk].merged = true;
		update_percent(j);
		jobs_persist(aj->a, aj);
		pthread_mutex_unlock(&aj->a->lock);
	}
	return true;
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
	log_msg(LOG_PRIO_INFO, NULL,
		"job %s (VM %s, JobType %u) running: %s phase, to %s", j->id,
		j->vm, j->type, job_phase_name(j->phase), j->peer);
}

/* Under the lock (dropped while sessions run): run the phases the job
 * has left.  Returns the VM whose exports stay held until the runner is
 * done, or NULL. */
static const struct vm_config *run_phases(struct agent *a, struct ajob *aj)
{
	struct vmrt *vm = jobs_vm(a, aj->j.vm);
	struct run r = { .aj = aj, .disk = aj->j.ndisks };
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
	pthread_mutex_unlock(&a->lock);
	done = phase_check(&r) && phase_send(&r) && phase_merge(&r);
	pthread_mutex_lock(&a->lock);
	if (done)
		jobs_finish(a, aj, JS_COMPLETED, 0, NULL, NULL);
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
	aj->thread_done = false;
	if (aj->j.state != JS_SHUTTING_DOWN)
		jobs_set_state(aj, JS_STARTING);
	ret = pthread_create(&aj->thread, NULL, runner, aj);
	if (ret)
		return -ret;
	aj->has_thread = true;
	return 0;
}
