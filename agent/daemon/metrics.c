/* SPDX-License-Identifier: MIT */
/*
 * metrics.c - what the agent tells Prometheus (metrics.h): the families
 * built from the job list and the VM states, the writer thread that keeps
 * the metrics file current, the per-process counters, and the one-shot
 * file of a finished push or mount-and-resync.  The text format and the
 * atomic write are agent/lib/prom.c's.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/daemon/internal.h"
#include "agent/daemon/metrics.h"
#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/lib/prom.h"

/* One agent per process: its writer and counters are the process's. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	bool running, stop, dirty;
	struct agent *a;
	struct metrics_counters c;
} M = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

void metrics_reset(void)
{
	pthread_mutex_lock(&M.lock);
	memset(&M.c, 0, sizeof(M.c));
	M.c.started = wall_us();
	pthread_mutex_unlock(&M.lock);
}

void metrics_poke(void)
{
	pthread_mutex_lock(&M.lock);
	M.dirty = true;
	pthread_cond_signal(&M.cond);
	pthread_mutex_unlock(&M.lock);
}

void metrics_count_finished(unsigned state)
{
	pthread_mutex_lock(&M.lock);
	if (state == JS_EXCEPTION)
		M.c.jobs_failed++;
	else if (state == JS_COMPLETED || state == JS_COMPLETED_WARNINGS)
		M.c.jobs_completed++;
	else
		M.c.jobs_cancelled++;
	M.dirty = true;
	pthread_cond_signal(&M.cond);
	pthread_mutex_unlock(&M.lock);
}

void metrics_count_refused_control(void)
{
	pthread_mutex_lock(&M.lock);
	M.c.refused_control++;
	M.dirty = true;
	pthread_cond_signal(&M.cond);
	pthread_mutex_unlock(&M.lock);
}

void metrics_get_counters(struct metrics_counters *c)
{
	pthread_mutex_lock(&M.lock);
	*c = M.c;
	pthread_mutex_unlock(&M.lock);
}

void metrics_sessions(struct agent *a, unsigned *in, unsigned *out)
{
	struct ajob *aj;
	unsigned i, k;

	*in = *out = 0;
	for (i = 0; i < a->cfg.nvms; i++) {
		const struct vm_config *vm = a->vms[i].cfg;

		for (k = 0; vm->role != VM_ROLE_PRIMARY && k < vm->ndisks; k++)
			*in += jobs_disk_receiving(a, vm, k);
	}
	/* a job runs up to parallel-disks sessions at once */
	for (aj = a->jobs; aj; aj = aj->next)
		*out += aj->sessions;
}

/* --- the agent's families --- */

static double secs(int64_t us)
{
	return (double)us / 1e6;
}

static const char *role_name(const struct vm_config *vm)
{
	switch (vm_mode(vm)) {
	case RM_PRIMARY:
		return "primary";
	case RM_REPLICA:
		return "replica";
	}
	return "extended-replica";
}

/* What GetVM shows of a VM (methods.c's vm_json()): a replica receiving
 * from its primary is Resynchronizing, a disk half-merged with no session
 * on it makes the VM Critical. */
struct vm_view {
	const struct vm_config *cfg;
	struct vm_state st;
	struct vm_disk_status *ds;
	const struct ajob *job; /* its unfinished job, or NULL */
};

static void vm_view(struct agent *a, struct vmrt *rt, struct vm_view *v)
{
	bool receiving = false;
	unsigned i;

	v->cfg = rt->cfg;
	v->st = rt->st;
	v->ds = NULL;
	v->job = jobs_active_of(a, rt->cfg->name);
	if (held_status(a, rt, &v->ds))
		v->ds = NULL;
	for (i = 0; rt->cfg->role != VM_ROLE_PRIMARY && i < rt->cfg->ndisks;
	     i++) {
		if (!jobs_disk_receiving(a, rt->cfg, i))
			continue;
		receiving = true;
		if (v->ds)
			v->ds[i].in_session = true;
	}
	if (receiving && !v->job) {
		v->st.state = RS_RESYNCHRONIZING;
		v->st.health = vm_health_for(v->st.state);
	}
	for (i = 0; v->ds && i < rt->cfg->ndisks; i++)
		if (v->ds[i].merge_pending && !v->ds[i].in_session)
			v->st.health = RH_CRITICAL;
}

/* One sample per VM of @name, its value from @get; the label set every
 * VM family has. */
#define VM_LABELS(v)                                               \
	"vm", (v)->cfg->name, "role", role_name((v)->cfg), "peer", \
		(v)->cfg->replica

static void agent_families(struct prom *p, struct agent *a, int64_t now)
{
	struct metrics_counters c;
	unsigned in, out;

	metrics_get_counters(&c);
	metrics_sessions(a, &in, &out);
	prom_family(p, "hvresync_agent_start_time_seconds", PROM_GAUGE,
		    "When the agent process started (Unix time).");
	prom_sample(p, secs(c.started), NULL);
	prom_family(
		p, "hvresync_metrics_write_time_seconds", PROM_GAUGE,
		"When the agent wrote this file (Unix time); old means the agent is not running.");
	prom_sample(p, secs(now), NULL);
	prom_family(
		p, "hvresync_peer_sessions", PROM_GAUGE,
		"Protocol sessions now: received from primaries (in) and sent by this agent's jobs (out).");
	prom_sample(p, in, "direction", "in", NULL);
	prom_sample(p, out, "direction", "out", NULL);
	prom_family(
		p, "hvresync_refused_connections_total", PROM_COUNTER,
		"Connections refused since the agent started, by listener.");
	prom_sample(p, (double)c.refused_control, "listener", "control", NULL);
	if (a->server)
		prom_sample(p, (double)server_refused_total(a->server),
			    "listener", "peer", NULL);
	prom_family(
		p, "hvresync_jobs_failed_total", PROM_COUNTER,
		"Resynchronization jobs that ended in Exception since the agent started.");
	prom_sample(p, (double)c.jobs_failed, NULL);
	prom_family(
		p, "hvresync_jobs_completed_total", PROM_COUNTER,
		"Resynchronization jobs that completed (with or without warnings) since the agent started.");
	prom_sample(p, (double)c.jobs_completed, NULL);
	prom_family(
		p, "hvresync_jobs_cancelled_total", PROM_COUNTER,
		"Resynchronization jobs that were cancelled or killed since the agent started.");
	prom_sample(p, (double)c.jobs_cancelled, NULL);
}

static void vm_families(struct prom *p, struct vm_view *v, unsigned n)
{
	unsigned i, k;

	prom_family(
		p, "hvresync_vm_replication_state", PROM_GAUGE,
		"Hyper-V ReplicationState of the VM (3 Replicating, 9 resynchronization required, 10 Resynchronizing, 11 suspended, ...).");
	for (i = 0; i < n; i++)
		prom_sample(p, v[i].st.state, VM_LABELS(&v[i]), NULL);
	prom_family(
		p, "hvresync_vm_replication_health", PROM_GAUGE,
		"Hyper-V ReplicationHealth of the VM (1 Ok, 2 Warning, 3 Critical).");
	for (i = 0; i < n; i++)
		prom_sample(p, v[i].st.health, VM_LABELS(&v[i]), NULL);
	prom_family(
		p, "hvresync_vm_replication_mode", PROM_GAUGE,
		"Hyper-V ReplicationMode of the VM (1 Primary, 2 Replica, 4 Extended replica).");
	for (i = 0; i < n; i++)
		prom_sample(p, vm_mode(v[i].cfg), VM_LABELS(&v[i]), NULL);
	prom_family(p, "hvresync_vm_state_change_time_seconds", PROM_GAUGE,
		    "When the VM's ReplicationState last changed (Unix time).");
	for (i = 0; i < n; i++)
		if (v[i].st.last_change)
			prom_sample(p, secs(v[i].st.last_change),
				    VM_LABELS(&v[i]), NULL);
	prom_family(
		p, "hvresync_vm_last_job_state", PROM_GAUGE,
		"JobState the VM's last resynchronization job ended in (7 Completed, 8 Terminated, 9 Killed, 10 Exception, 32768 Completed with warnings; 0 none finished).");
	for (i = 0; i < n; i++)
		prom_sample(p, v[i].st.last_job_state, VM_LABELS(&v[i]), NULL);

	/* the last successful resync: no sample until there was one */
	prom_family(
		p, "hvresync_vm_last_success_time_seconds", PROM_GAUGE,
		"When the VM's last successful resynchronization ended (Unix time).");
	for (i = 0; i < n; i++)
		if (v[i].st.last_success)
			prom_sample(p, secs(v[i].st.last_success),
				    VM_LABELS(&v[i]), NULL);
	prom_family(p, "hvresync_vm_last_success_duration_seconds", PROM_GAUGE,
		    "How long the VM's last successful resynchronization ran.");
	for (i = 0; i < n; i++)
		if (v[i].st.last_success)
			prom_sample(p, secs(v[i].st.last_success_elapsed),
				    VM_LABELS(&v[i]), NULL);
	prom_family(
		p, "hvresync_vm_last_success_compared_bytes", PROM_GAUGE,
		"Bytes the VM's last successful resynchronization compared.");
	for (i = 0; i < n; i++)
		if (v[i].st.last_success)
			prom_sample(p, (double)v[i].st.last_success_compared,
				    VM_LABELS(&v[i]), NULL);
	prom_family(
		p, "hvresync_vm_last_success_different_bytes", PROM_GAUGE,
		"Bytes the VM's last successful resynchronization found different.");
	for (i = 0; i < n; i++)
		if (v[i].st.last_success)
			prom_sample(p, (double)v[i].st.last_success_different,
				    VM_LABELS(&v[i]), NULL);
	prom_family(
		p, "hvresync_vm_last_success_sent_bytes", PROM_GAUGE,
		"Bytes the VM's last successful resynchronization sent on the wire (compressed).");
	for (i = 0; i < n; i++)
		if (v[i].st.last_success)
			prom_sample(p, (double)v[i].st.last_success_sent,
				    VM_LABELS(&v[i]), NULL);

	prom_family(
		p, "hvresync_vm_held_copy_bytes", PROM_GAUGE,
		"Bytes on disk of a copy the recovery side holds for a disk (a resync not merged yet).");
	for (i = 0; i < n; i++)
		for (k = 0; v[i].ds && k < v[i].cfg->ndisks; k++)
			if (v[i].ds[k].held)
				prom_sample(p, (double)v[i].ds[k].held_bytes,
					    "vm", v[i].cfg->name, "disk",
					    config_basename(v[i].cfg->disks[k]),
					    "role", role_name(v[i].cfg), NULL);
}

/* The unfinished job of each VM (at most one): gone once it finished. */
static void job_families(struct prom *p, struct vm_view *v, unsigned n,
			 int64_t now)
{
	const struct job *j;
	unsigned i, k;

#define EACH_JOB                \
	for (i = 0; i < n; i++) \
		if ((j = v[i].job ? &v[i].job->j : NULL))
#define JOB_LABELS "vm", j->vm, "role", role_name(v[i].cfg), "peer", j->peer
	prom_family(
		p, "hvresync_job_state", PROM_GAUGE,
		"JobState of the VM's running job (2 New, 3 Starting, 4 Running, 5 Suspended, 6 Shutting down).");
	EACH_JOB prom_sample(p, j->state, JOB_LABELS, NULL);
	prom_family(
		p, "hvresync_job_complete_ratio", PROM_GAUGE,
		"How far the VM's running job is (its PercentComplete / 100).");
	EACH_JOB prom_sample(p, j->percent / 100.0, JOB_LABELS, NULL);
	prom_family(p, "hvresync_job_elapsed_seconds", PROM_GAUGE,
		    "How long the VM's running job has run (its ElapsedTime).");
	EACH_JOB prom_sample(p, secs(job_elapsed(j, now)), JOB_LABELS, NULL);
	prom_family(p, "hvresync_job_compared_bytes", PROM_GAUGE,
		    "Bytes the VM's running job compared so far.");
	EACH_JOB prom_sample(p, (double)j->bytes_compared, JOB_LABELS, NULL);
	prom_family(p, "hvresync_job_different_bytes", PROM_GAUGE,
		    "Bytes the VM's running job found different so far.");
	EACH_JOB prom_sample(p, (double)j->bytes_different, JOB_LABELS, NULL);
	prom_family(p, "hvresync_job_sent_bytes", PROM_GAUGE,
		    "Bytes the VM's running job sent so far.");
	EACH_JOB prom_sample(p, (double)j->bytes_sent, JOB_LABELS, NULL);
	prom_family(p, "hvresync_job_retries", PROM_GAUGE,
		    "Network retries of the VM's running job so far.");
	EACH_JOB prom_sample(p, j->retries, JOB_LABELS, NULL);
	prom_family(
		p, "hvresync_job_disk_size_bytes", PROM_GAUGE,
		"Virtual size of each disk of the VM's running job (0 before its check).");
	EACH_JOB for (k = 0; k < j->ndisks; k++)
		prom_sample(p, (double)j->disks[k].size, "vm", j->vm, "disk",
			    j->disks[k].name, "peer", j->peer, NULL);
	prom_family(p, "hvresync_job_disk_compared_bytes", PROM_GAUGE,
		    "How far the running job's compare of each disk got.");
	EACH_JOB for (k = 0; k < j->ndisks; k++) prom_sample(
		p,
		(double)(j->disks[k].sent ? j->disks[k].size
					  : j->disks[k].done),
		"vm", j->vm, "disk", j->disks[k].name, "peer", j->peer, NULL);
#undef EACH_JOB
#undef JOB_LABELS
}

int metrics_render(struct agent *a, int64_t now, char **buf, size_t *len)
{
	struct vm_view *v;
	struct prom p;
	unsigned i, n = a->cfg.nvms;
	int ret;

	v = calloc(n ? n : 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	ret = prom_init(&p);
	if (ret) {
		free(v);
		return ret;
	}
	for (i = 0; i < n; i++)
		vm_view(a, &a->vms[i], &v[i]);
	agent_families(&p, a, now);
	vm_families(&p, v, n);
	job_families(&p, v, n, now);
	for (i = 0; i < n; i++)
		held_status_free(v[i].ds, v[i].cfg->ndisks);
	free(v);
	return prom_finish(&p, buf, len);
}

/* --- the writer thread --- */

static bool any_job_runs(struct agent *a)
{
	struct ajob *aj;

	for (aj = a->jobs; aj; aj = aj->next)
		if (ajob_active(aj) && aj->j.state != JS_SUSPENDED &&
		    aj->j.state != JS_NEW)
			return true;
	return false;
}

/* Render under the agent lock, write without it: the fsyncs must not
 * hold up the jobs.  Returns whether a job runs (the next write is due
 * sooner). */
static bool write_once(struct agent *a, bool *failing)
{
	char err[1024], *buf = NULL;
	size_t len = 0;
	bool runs;
	int ret;

	pthread_mutex_lock(&a->lock);
	runs = any_job_runs(a);
	ret = metrics_render(a, wall_us(), &buf, &len);
	pthread_mutex_unlock(&a->lock);
	if (ret)
		snprintf(err, sizeof(err), "%s: %s", a->cfg.metrics_file,
			 strerror(-ret));
	else
		ret = prom_write_file(a->cfg.metrics_file, buf, len, err,
				      sizeof(err));
	free(buf);
	/* once per failure streak, not every 10 s */
	if (ret && !*failing)
		log_msg(LOG_PRIO_WARNING, NULL,
			"metrics: cannot write the metrics file: %s", err);
	else if (!ret && *failing)
		log_msg(LOG_PRIO_INFO, NULL, "metrics: %s written again",
			a->cfg.metrics_file);
	*failing = ret != 0;
	return runs;
}

static void *writer(void *arg)
{
	struct agent *a = arg;
	bool failing = false, runs;
	int64_t next;
	struct timespec ts;

	pthread_mutex_lock(&M.lock);
	while (!M.stop) {
		M.dirty = false;
		pthread_mutex_unlock(&M.lock);
		runs = write_once(a, &failing);
		next = wall_us() + (runs ? METRICS_RUNNING_INTERVAL_US
					 : METRICS_IDLE_INTERVAL_US);
		pthread_mutex_lock(&M.lock);
		while (!M.stop && !M.dirty && wall_us() < next) {
			ts.tv_sec = next / 1000000;
			ts.tv_nsec = (next % 1000000) * 1000;
			pthread_cond_timedwait(&M.cond, &M.lock, &ts);
		}
	}
	pthread_mutex_unlock(&M.lock);
	return NULL;
}

int metrics_start(struct agent *a, char *err, size_t errlen)
{
	int ret;

	if (!a->cfg.metrics_file || !a->cfg.metrics_file[0])
		return 0;
	pthread_mutex_lock(&M.lock);
	M.stop = false;
	M.dirty = true;
	M.a = a;
	pthread_mutex_unlock(&M.lock);
	ret = pthread_create(&M.thread, NULL, writer, a);
	if (ret) {
		snprintf(err, errlen, "cannot start the metrics writer: %s",
			 strerror(ret));
		return -ret;
	}
	M.running = true;
	log_msg(LOG_PRIO_INFO, NULL, "metrics in %s", a->cfg.metrics_file);
	return 0;
}

void metrics_stop(void)
{
	if (!M.running)
		return;
	pthread_mutex_lock(&M.lock);
	M.stop = true;
	pthread_cond_signal(&M.cond);
	pthread_mutex_unlock(&M.lock);
	pthread_join(M.thread, NULL);
	M.running = false;
	M.a = NULL;
}

/* --- one finished command --- */

int metrics_write_result(const char *path, const struct metrics_result *r,
			 char *err, size_t errlen)
{
	char *buf = NULL;
	struct prom p;
	size_t len;
	int ret;

#define RESULT_LABELS \
	"command", r->command, "vm", r->vm, "disk", r->disk, "peer", r->peer
	ret = prom_init(&p);
	if (ret) {
		snprintf(err, errlen, "%s: out of memory", path);
		return ret;
	}
	prom_family(
		&p, "hvresync_last_run_success", PROM_GAUGE,
		"Whether the command's last run succeeded (1) or failed (0).");
	prom_sample(&p, r->ok, RESULT_LABELS, NULL);
	prom_family(&p, "hvresync_last_run_exit_code", PROM_GAUGE,
		    "The exit status of the command's last run.");
	prom_sample(&p, r->exit_code, RESULT_LABELS, NULL);
	prom_family(&p, "hvresync_last_run_end_time_seconds", PROM_GAUGE,
		    "When the command's last run ended (Unix time).");
	prom_sample(&p, secs(r->finished), RESULT_LABELS, NULL);
	prom_family(&p, "hvresync_last_run_duration_seconds", PROM_GAUGE,
		    "How long the command's last run took.");
	prom_sample(&p, secs(r->finished - r->started), RESULT_LABELS, NULL);
	prom_family(&p, "hvresync_last_run_compared_bytes", PROM_GAUGE,
		    "Bytes the command's last run compared.");
	prom_sample(&p, (double)r->compared, RESULT_LABELS, NULL);
	prom_family(&p, "hvresync_last_run_different_bytes", PROM_GAUGE,
		    "Bytes the command's last run found different.");
	prom_sample(&p, (double)r->different, RESULT_LABELS, NULL);
	prom_family(&p, "hvresync_last_run_sent_bytes", PROM_GAUGE,
		    "Bytes the command's last run sent on the wire.");
	prom_sample(&p, (double)r->sent, RESULT_LABELS, NULL);
	prom_family(&p, "hvresync_metrics_write_time_seconds", PROM_GAUGE,
		    "When this file was written (Unix time).");
	prom_sample(&p, secs(wall_us()), NULL);
#undef RESULT_LABELS
	ret = prom_finish(&p, &buf, &len);
	if (ret) {
		snprintf(err, errlen, "%s: cannot format the metrics: %s", path,
			 strerror(-ret));
		return ret;
	}
	ret = prom_write_file(path, buf, len, err, errlen);
	free(buf);
	return ret;
}
