/* SPDX-License-Identifier: MIT */
/*
 * session.c - one protocol session of a job (push.h) and its retries:
 * what it reads, how its counters feed the job's, the retry while the
 * recovery side still tears down an older session of ours (busy), and
 * the retries with backoff after the network failed (issue 9), which
 * resume from the recovery side's durable progress.  runner.c calls it.
 * A send session also fills a map of what it compared and sent, which
 * goes into the job's disk (bounded, persisted: `job show --map`).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/daemon/internal.h"
#include "agent/daemon/joblog.h"
#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/sync/common.h"
#include "agent/sync/push.h"
#include "uring/source.h"

#define SAVE_INTERVAL_US 5000000 /* progress is persisted this often */
#define BUSY_RETRIES 30		 /* seconds an export may stay busy */
#define RETRY_WAIT_MAX_S 300	 /* the backoff never waits longer */

/* PercentComplete: the check is 1 %, sending 97 %, merging 2 %. */
void runner_update_percent(struct job *j)
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

/* A send session's own: push_disk() fills @map without the agent's lock;
 * the progress callback, on the same thread, moves it into the job.  A
 * job's disks may run at once (parallel-disks), so which disk a report is
 * for and what the session added to the job's counters are the
 * session's, not the job's. */
struct sess_ctx {
	struct ajob *aj;
	unsigned disk;
	unsigned flags;			    /* the session's PUSH_* flags */
	uint64_t compared, different, sent; /* taken into the job so far */
	struct svgmap map;
};

/* Under the lock: what a session counter grew by since the last report,
 * into the job's total. */
static void add_growth(uint64_t *total, uint64_t *taken, uint64_t v)
{
	if (v > *taken) {
		*total += v - *taken;
		*taken = v;
	}
}

/* Under the lock: a session's counters into the job's.  They only grow
 * (a first session starts from 0 anyway), so a late or partial report
 * never shows the job going backwards, and the sessions of a job's disks
 * running at once add up. */
static void take_stats(struct sess_ctx *sc, struct job_disk *d,
		       const struct push_stats *st)
{
	struct job *j = &sc->aj->j;

	max_u64(&d->done, st->position);
	add_growth(&j->bytes_compared, &sc->compared, st->bytes_compared);
	add_growth(&j->bytes_different, &sc->different, st->bytes_different);
	add_growth(&j->bytes_sent, &sc->sent, st->bytes_sent);
}

/* Under the lock: the recovery side accepted a session (WELCOME), so
 * its RESTART or REPASS took effect; what follows must resume. */
static void took_effect(struct ajob *aj, struct job_disk *d, unsigned flags,
			const struct push_stats *st)
{
	if (!st->welcomed)
		return;
	if ((flags & PUSH_RESTART) && !d->started) {
		d->started = true;
		aj->last_save = 0; /* worth recording at once */
	}
	if ((flags & PUSH_REPASS) && d->repass) {
		d->repass = false;
		aj->last_save = 0;
	}
}

/* Under the lock: what the session mapped since the last call, into the
 * job's disk. */
static void take_map(struct job_disk *d, struct svgmap *m)
{
	if (!d->map.covered.limit)
		svgmap_set_limit(&d->map, JOB_MAP_LIMIT);
	svgmap_merge(&d->map, m);
	svgmap_reset(m);
}

static void on_progress(void *ctx, const struct push_stats *st)
{
	struct sess_ctx *sc = ctx;
	struct ajob *aj = sc->aj;
	struct agent *a = aj->a;
	struct job_disk *d;
	int64_t now = wall_us();

	pthread_mutex_lock(&a->lock);
	d = &aj->j.disks[sc->disk];
	take_map(d, &sc->map);
	if (st->virtual_size)
		d->size = st->virtual_size;
	take_stats(sc, d, st);
	took_effect(aj, d, sc->flags, st);
	runner_update_percent(&aj->j);
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

/*
 * The transport settings of a session of @aj's VM: the agent's, or with
 * the VM's own key (psk-file) offered under its key id.  The key is read
 * for each session, so a replaced key file takes effect at the next one.
 */
static int session_tls(struct ajob *aj, struct tls_config *tls, char *err,
		       size_t errlen)
{
	struct agent *a = aj->a;
	const struct vm_config *vm;
	struct vhdx_error terr;
	const char *file = NULL;
	int ret;

	pthread_mutex_lock(&a->lock);
	*tls = a->tls;
	vm = config_find_vm(&a->cfg, aj->j.vm);
	if (vm && vm->psk_file && a->tls.mode == TLS_MODE_PSK)
		file = vm->psk_file; /* the configuration outlives jobs */
	pthread_mutex_unlock(&a->lock);
	if (!file)
		return 0;
	terr.msg[0] = '\0';
	ret = tls_load_psk(file, tls->psk, &terr);
	if (ret) {
		snprintf(err, errlen, "VM %s: %s", aj->j.vm, terr.msg);
		return ret;
	}
	tls->psk_by_id = true;
	return 0;
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
		if (ret != -EBUSY || tries >= BUSY_RETRIES || aj->stop) {
			if (tries && ret != -EBUSY)
				log_msg(LOG_PRIO_INFO, NULL,
					"job %s (VM %s): %s no longer busy after %u s",
					aj->j.id, aj->j.vm, p->export_name,
					tries);
			return ret;
		}
		/* a wait this long shows in the log, not only in the
		 * job's percent standing still */
		if (!tries)
			log_msg(LOG_PRIO_NOTICE, NULL,
				"job %s (VM %s): %s is busy (%s); trying again every second for up to %u s",
				aj->j.id, aj->j.vm, p->export_name, err,
				BUSY_RETRIES);
		for (k = 0; k < 10 && !aj->stop; k++)
			usleep(100000);
	}
}

/* One protocol session for disk @i of the job; called without the lock.
 * @st gets the session's counters, on failure too. */
static int session(struct ajob *aj, unsigned i, unsigned flags,
		   struct push_stats *stp, char *err, size_t errlen)
{
	struct agent *a = aj->a;
	struct job_disk *d = &aj->j.disks[i];
	struct push_stats st;
	char export_name[PROTO_NAME_MAX + 1];
	struct sess_ctx sc = { .aj = aj, .disk = i, .flags = flags };
	struct tls_config tls;
	struct push_params p = {
		/* push.h allows NULL for MERGE and DISCARD, but HELLO still
		 * wants the geometry, which the source gives.  What is
		 * checked and sent is the clone while the job has one; a
		 * merge or discard reads nothing, so the disk will do even
		 * when a clone is gone. */
		.src = d->clone && (flags & (PUSH_CHECK | PUSH_HOLD)) ? d->clone
								      : d->path,
		.addr = aj->j.peer,
		.export_name = export_name,
		.tls = &tls,
		.hash = UR_HASH_XXH3_128,
		.compress = true,
		.bwlimit = a->bwlimit,
		.flags = flags,
		.stop = &aj->stop,
		.progress = (flags & PUSH_HOLD) ? on_progress : NULL,
		.ctx = &sc,
		.map = (flags & PUSH_HOLD) ? &sc.map : NULL,
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
	memset(stp, 0, sizeof(*stp));
	ret = session_tls(aj, &tls, err, errlen);
	if (ret) {
		explicit_bzero(&tls, sizeof(tls));
		return ret;
	}
	pthread_mutex_lock(&a->lock);
	aj->sessions++;
	pthread_mutex_unlock(&a->lock);
	ret = push_retrying(aj, &p, &st, err, errlen);
	explicit_bzero(&tls, sizeof(tls));

	pthread_mutex_lock(&a->lock);
	aj->sessions--;
	if (st.virtual_size)
		d->size = st.virtual_size;
	if (flags &
	    PUSH_HOLD) { /* the last report may be ahead of a cut session */
		take_stats(&sc, d, &st);
		d->resumed = st.resume_offset;
		take_map(d, &sc.map);
	}
	took_effect(aj, d, flags, &st);
	pthread_mutex_unlock(&a->lock);
	svgmap_free(&sc.map);
	if (!err[0] && ret)
		snprintf(err, errlen, "%s", strerror(-ret));
	*stp = st;
	return ret;
}

/* --- retries over a flaky link --- */

/*
 * Did the session fail because of the network (the peer refused, reset
 * or closed the connection, went silent, or cannot be reached)?  Those
 * are worth another try; an answer from the peer (busy, in use, no such
 * export, geometry) or a local I/O error is not.
 */
static bool network_failure(int ret)
{
	switch (ret) {
	case -ECONNREFUSED:
	case -ECONNRESET:
	case -ECONNABORTED:
	case -EPIPE:
	case -ETIMEDOUT:
	case -EHOSTUNREACH:
	case -ENETUNREACH:
	case -ENETDOWN:
	case -ENETRESET:
	case -EHOSTDOWN:
		return true;
	}
	return false;
}

/* Wait @secs or until the job is asked to stop (suspend, cancel, kill,
 * shutdown); without the lock. */
static void backoff(struct ajob *aj, unsigned secs)
{
	struct agent *a = aj->a;
	int64_t end = wall_us() + (int64_t)secs * 1000000;

	pthread_mutex_lock(&a->lock);
	while (!aj->stop && wall_us() < end) {
		/* a stop sets the flag without always signalling: look
		 * again every 100 ms */
		int64_t t = wall_us() + 100000;
		struct timespec ts;

		if (t > end)
			t = end;
		ts.tv_sec = t / 1000000;
		ts.tv_nsec = (t % 1000000) * 1000;
		pthread_cond_timedwait(&a->cond, &a->lock, &ts);
	}
	pthread_mutex_unlock(&a->lock);
}

/*
 * session(), again after a network failure, up to the VM's `retries`
 * times in a row, waiting retry-interval, twice that, four times ... (at
 * most 5 minutes).  A session that got further than the last one starts
 * the count again, so a long job over a flaky link is not given up on for
 * cuts spread over hours.  Once the recovery side welcomed a session, a
 * retry is a plain HOLD: it resumes from the recovery side's durable
 * progress and reads the same snapshot.  While it waits the job stays
 * Running with "retry N of M in S s after: ERROR" in ErrorDescription.
 */
int runner_session(struct ajob *aj, unsigned i, unsigned flags, char *err,
		   size_t errlen)
{
	struct agent *a = aj->a;
	const struct vm_config *vm;
	struct job_settings s;
	struct push_stats st;
	unsigned streak = 0, wait, k;
	char desc[1200];
	size_t len;
	int ret;

	pthread_mutex_lock(&a->lock);
	vm = config_find_vm(&a->cfg, aj->j.vm);
	s = vm ? vm->job : a->cfg.job;
	pthread_mutex_unlock(&a->lock);
	for (;;) {
		ret = session(aj, i, flags, &st, err, errlen);
		if (st.welcomed)
			flags &= ~(PUSH_RESTART | PUSH_REPASS);
		if (!ret || aj->stop || !network_failure(ret))
			return ret;
		if (st.welcomed && st.position > st.resume_offset)
			streak = 0; /* it got somewhere */
		if (streak >= s.retries) {
			pthread_mutex_lock(&a->lock);
			aj->keep_snap = true;
			pthread_mutex_unlock(&a->lock);
			len = strlen(err);
			if (len + 1 < errlen)
				snprintf(err + len, errlen - len,
					 " (gave up after %u %s)", streak,
					 streak == 1 ? "retry" : "retries");
			return ret;
		}
		streak++;
		wait = s.retry_interval;
		for (k = 1; k < streak && wait < RETRY_WAIT_MAX_S; k++)
			wait *= 2;
		if (wait > RETRY_WAIT_MAX_S)
			wait = RETRY_WAIT_MAX_S;
		snprintf(desc, sizeof(desc), "retry %u of %u in %u s after: %s",
			 streak, s.retries, wait, err);
		pthread_mutex_lock(&a->lock);
		aj->j.retries++;
		free(aj->j.error_desc);
		aj->j.error_desc = strdup(desc);
		jobs_persist(a, aj);
		pthread_mutex_unlock(&a->lock);
		joblog(LOG_PRIO_WARNING, &aj->j, NULL, aj->j.disks[i].name,
		       "job %s (VM %s): disk %s: %s", aj->j.id, aj->j.vm,
		       aj->j.disks[i].name, desc);
		backoff(aj, wait);
		if (aj->stop)
			return ret;
	}
}

int runner_session_once(struct ajob *aj, unsigned i, unsigned flags, char *err,
			size_t errlen)
{
	struct push_stats st;

	return session(aj, i, flags, &st, err, errlen);
}
