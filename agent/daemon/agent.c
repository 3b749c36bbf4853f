/* SPDX-License-Identifier: MIT */
/*
 * agentd.c - `hvresync agent`: the daemon.  It serves its replica VMs'
 * disks to peers (serve.h), answers the control API (control.h,
 * docs/control-api.md) and runs resynchronization jobs with the push
 * engine (push.h) in Hyper-V's order: geometry check of every disk, then
 * compare and send each disk into a held child, then merge each.
 *
 * Locking: one mutex (agent.lock) guards the job list, every job's
 * fields and the VM states; it is never held across a network session.
 * Jobs and VM states are written to the state dir at every state change
 * (and every few seconds of progress), so a restarted agent picks up
 * where it stopped: the recovery side keeps its own durable progress, so
 * a resumed send session starts where the last one got to.
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "agent/daemon/cimtime.h"
#include "agent/daemon/agent.h"
#include "agent/daemon/config.h"
#include "agent/daemon/control.h"
#include "agent/daemon/job.h"
#include "agent/lib/log.h"
#include "agent/sync/push.h"
#include "uring/source.h"
#include "agent/sync/serve.h"
#include "agent/daemon/vmstate.h"

#define AGENT_USAGE \
	"hvresync agent [--config FILE] [-f] [--bwlimit RATE] [--job-retention SECONDS]"

#define STOP_SHUTDOWN 100       /* stop_req: the agent is stopping */
#define SAVE_INTERVAL_US 5000000 /* progress is persisted this often */
#define AUTO_RETRY_US (600LL * 1000000) /* after a failed auto-resync */
#define BUSY_RETRIES 30         /* seconds an export may stay busy */
#define START_TIME_SLACK_US (60LL * 1000000)
#define MAX_AHEAD_US (7LL * 86400 * 1000000)

struct agent;

struct ajob {
	struct job j;
	struct agent *a;
	pthread_t thread;
	bool has_thread;      /* a runner exists and must be joined */
	bool thread_done;     /* it has returned (or is about to) */
	volatile int stop;    /* push_disk()'s stop flag */
	unsigned stop_req;    /* REQ_SUSPEND/TERMINATE/KILL, STOP_SHUTDOWN */
	int64_t last_save;
	uint64_t base_compared, base_different, base_sent;
	unsigned cur_disk;
	struct ajob *next;
};

struct vmrt {
	const struct vm_config *cfg;
	struct vm_state st;
	int64_t last_auto;     /* when auto-resync last submitted a job */
	bool exported;         /* its disks are all exports of the server */
};

struct agent {
	struct agent_config cfg;
	char *jobs_dir;
	char *vms_dir;
	char *serve_dir;
	struct tls_config tls;
	struct server *server;
	pthread_t server_thread;
	bool server_running;
	struct control_server *ctl;
	pthread_t sched_thread;
	bool sched_running;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct ajob *jobs;
	struct vmrt *vms;
	bool stopping;
	bool recheck;          /* run the auto-resync pass now */
	bool ready;            /* jobs restored: requests are served */
	int64_t retention;
	uint64_t bwlimit;
	int lock_fd;
};

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static char *path_join(const char *a, const char *b)
{
	char *s;

	if (asprintf(&s, "%s/%s", a, b) < 0)
		return NULL;
	return s;
}

static int mkdir_p(const char *path, mode_t mode)
{
	char *p, *copy = strdup(path);
	int ret = 0;

	if (!copy)
		return -ENOMEM;
	for (p = copy + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(copy, 0755) && errno != EEXIST) {
			ret = -errno;
			goto out;
		}
		*p = '/';
	}
	if (mkdir(copy, mode) && errno != EEXIST)
		ret = -errno;
out:
	free(copy);
	return ret;
}

static struct vmrt *vm_rt(struct agent *a, const char *name)
{
	unsigned i;

	for (i = 0; i < a->cfg.nvms; i++)
		if (!strcmp(a->vms[i].cfg->name, name))
			return &a->vms[i];
	return NULL;
}

static struct ajob *find_job(struct agent *a, const char *id)
{
	struct ajob *aj;

	for (aj = a->jobs; aj; aj = aj->next)
		if (!strcasecmp(aj->j.id, id))
			return aj;
	return NULL;
}

static bool job_active(const struct job *j)
{
	return !job_state_final(j->state);
}

static struct ajob *active_job_of(struct agent *a, const char *vm)
{
	struct ajob *aj;

	for (aj = a->jobs; aj; aj = aj->next)
		if (job_active(&aj->j) && !strcmp(aj->j.vm, vm))
			return aj;
	return NULL;
}

/* --- under the lock: persistence, VM state, status --- */

static void persist(struct agent *a, struct ajob *aj)
{
	int ret = job_save(a->jobs_dir, &aj->j, now_us());

	if (ret)
		log_msg(LOG_PRIO_ERR, NULL, "job %s: cannot save to %s: %s", aj->j.id,
			  a->jobs_dir, strerror(-ret));
}

static void set_vm(struct agent *a, struct vmrt *vm, unsigned state)
{
	int ret;

	if (!vm)
		return;
	if (vm->st.state != state)
		log_msg(LOG_PRIO_INFO, NULL, "VM %s: ReplicationState %u (%s) -> %u (%s)",
			  vm->cfg->name, vm->st.state, repl_state_name(vm->st.state),
			  state, repl_state_name(state));
	vm_state_set(&vm->st, state, now_us());
	ret = vm_state_save(a->vms_dir, vm->cfg->name, &vm->st);
	if (ret)
		log_msg(LOG_PRIO_ERR, NULL, "VM %s: cannot save its state in %s: %s",
			  vm->cfg->name, a->vms_dir, strerror(-ret));
}

static void notify_status(struct agent *a)
{
	unsigned run = 0, sched = 0, susp = 0;
	struct ajob *aj;

	for (aj = a->jobs; aj; aj = aj->next) {
		if (aj->j.state == JS_NEW)
			sched++;
		else if (aj->j.state == JS_SUSPENDED)
			susp++;
		else if (job_active(&aj->j))
			run++;
	}
	sd_notifyf(0, "STATUS=%u job(s) running, %u scheduled, %u suspended",
		   run, sched, susp);
}

static void set_state(struct ajob *aj, unsigned state)
{
	int64_t now = now_us();

	if (aj->j.state == state)
		return;
	if (aj->j.running_since && state != JS_RUNNING && state != JS_STARTING &&
	    state != JS_SHUTTING_DOWN) {
		aj->j.elapsed += now - aj->j.running_since;
		aj->j.running_since = 0;
	}
	aj->j.state = state;
	aj->j.last_change = now;
	pthread_cond_broadcast(&aj->a->cond);
}

static void log_job_json(struct ajob *aj, const char *what)
{
	struct json_writer w;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return;
	json_init(&w, f, 0);
	job_to_json(&w, &aj->j, now_us());
	json_end(&w);
	fclose(f);
	if (len && buf[len - 1] == '\n')
		buf[len - 1] = '\0';
	log_msg(LOG_PRIO_INFO, NULL, "job %s %s: %s", aj->j.id, what, buf ? buf : "");
	free(buf);
}

/* A job reached a final state. */
static void finish(struct agent *a, struct ajob *aj, unsigned state,
		   unsigned code, const char *summary, const char *desc)
{
	struct vmrt *vm = vm_rt(a, aj->j.vm);
	int64_t now = now_us();

	set_state(aj, state);
	aj->j.finished = now;
	aj->j.cancellable = false;
	aj->j.error_code = code;
	free(aj->j.error_summary);
	free(aj->j.error_desc);
	aj->j.error_summary = summary ? strdup(summary) : NULL;
	aj->j.error_desc = desc ? strdup(desc) : NULL;
	if (state == JS_COMPLETED) {
		aj->j.percent = 100;
		aj->j.phase = JOB_PHASE_DONE;
	}
	if (vm) {
		memcpy(vm->st.last_job, aj->j.id, JOB_ID_LEN);
		vm->st.last_job_state = state;
		if (state == JS_COMPLETED)
			vm->st.last_success = now;
		set_vm(a, vm, state == JS_COMPLETED ? RS_REPLICATING : RS_RESYNC_REQUIRED);
	}
	persist(a, aj);
	log_job_json(aj, job_state_name(state));
	notify_status(a);
}

static unsigned rv_for_push(int err)
{
	switch (err) {
	case -EACCES:
		return RV_ACCESS_DENIED;
	case -ENOENT:
		return RV_NOT_FOUND;
	case -EBUSY:
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

/* --- running a job --- */

static void max_u64(uint64_t *dst, uint64_t v)
{
	if (v > *dst)
		*dst = v;
}

/* Under the lock: a session's counters into the job's.  Within a job they
 * only grow (a first session starts from 0 anyway), so a late or partial
 * report never shows the job going backwards. */
static void take_stats(struct ajob *aj, struct job_disk *d, const struct push_stats *st)
{
	max_u64(&d->done, st->position);
	max_u64(&aj->j.bytes_compared, aj->base_compared + st->bytes_compared);
	max_u64(&aj->j.bytes_different, aj->base_different + st->bytes_different);
	max_u64(&aj->j.bytes_sent, aj->base_sent + st->bytes_sent);
}

static void on_progress(void *ctx, const struct push_stats *st)
{
	struct ajob *aj = ctx;
	struct agent *a = aj->a;
	struct job_disk *d;
	int64_t now = now_us();

	pthread_mutex_lock(&a->lock);
	d = &aj->j.disks[aj->cur_disk];
	if (st->virtual_size)
		d->size = st->virtual_size;
	take_stats(aj, d, st);
	update_percent(&aj->j);
	if (now - aj->last_save >= SAVE_INTERVAL_US) {
		aj->last_save = now;
		persist(a, aj);
	}
	pthread_mutex_unlock(&a->lock);
}

/* One protocol session for disk @i of the job; called without the lock. */
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

static int session(struct ajob *aj, unsigned i, unsigned flags, char *err,
		   size_t errlen)
{
	struct agent *a = aj->a;
	struct job_disk *d = &aj->j.disks[i];
	struct push_stats st;
	unsigned tries, k;
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

	if ((size_t)snprintf(export_name, sizeof(export_name), "%s:%s", aj->j.vm,
			     d->name) >= sizeof(export_name)) {
		snprintf(err, errlen, "export name %s:%s is longer than %u bytes",
			 aj->j.vm, d->name, PROTO_NAME_MAX);
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
	for (tries = 0;; tries++) {
		err[0] = '\0';
		ret = push_disk(&p, &st, err, errlen);
		/* The recovery side may still be tearing down a session of
		 * ours that a restart or a stop cut short: wait a little. */
		if (ret != -EBUSY || tries >= BUSY_RETRIES || aj->stop)
			break;
		for (k = 0; k < 10 && !aj->stop; k++)
			usleep(100000);
	}
	pthread_mutex_lock(&a->lock);
	if (st.virtual_size)
		d->size = st.virtual_size;
	if (flags & PUSH_HOLD) { /* the last report may be ahead of a cut session */
		take_stats(aj, d, &st);
		d->resumed = st.resume_offset;
	}
	pthread_mutex_unlock(&a->lock);
	if (!err[0] && ret)
		snprintf(err, errlen, "%s", strerror(-ret));
	return ret;
}

/* Under the lock: the runner is done with the job for now. */
static void runner_exit(struct ajob *aj)
{
	aj->thread_done = true;
	pthread_cond_broadcast(&aj->a->cond);
}

/* Under the lock: a stop was asked for; act on it.  Returns true when
 * the runner must return (false: go on with the discard). */
static bool handle_stop(struct agent *a, struct ajob *aj)
{
	struct vmrt *vm = vm_rt(a, aj->j.vm);

	switch (aj->stop_req) {
	case REQ_SUSPEND:
		set_state(aj, JS_SUSPENDED);
		set_vm(a, vm, RS_RESYNC_SUSPENDED);
		persist(a, aj);
		log_msg(LOG_PRIO_INFO, NULL, "job %s (VM %s) suspended at %u%%", aj->j.id,
			  aj->j.vm, aj->j.percent);
		notify_status(a);
		return true;
	case REQ_TERMINATE:
		set_state(aj, JS_SHUTTING_DOWN);
		aj->j.phase = JOB_PHASE_DISCARD;
		aj->stop = 0;
		aj->stop_req = 0;
		persist(a, aj);
		log_msg(LOG_PRIO_INFO, NULL, "job %s (VM %s) cancelled: discarding the recovery side's partial copies",
			  aj->j.id, aj->j.vm);
		return false;
	case REQ_KILL:
		finish(a, aj, JS_KILLED, 0, "The job was killed.",
		       "RequestStateChange 5 (Kill): stopped without discarding the recovery side's partial copies; the next resynchronization starts over");
		return true;
	default: /* STOP_SHUTDOWN: stay as we are, resume at the next start */
		if (aj->j.running_since) {
			aj->j.elapsed += now_us() - aj->j.running_since;
			aj->j.running_since = 0;
		}
		persist(a, aj);
		return true;
	}
}

static void fail_job(struct agent *a, struct ajob *aj, int ret, const char *what,
		     const char *disk, const char *err)
{
	char summary[512];

	snprintf(summary, sizeof(summary),
		 "Resynchronization of VM '%s' failed in the %s of disk %s.", aj->j.vm,
		 what, disk);
	log_msg(LOG_PRIO_ERR, NULL, "job %s (VM %s): %s: %s", aj->j.id, aj->j.vm, what, err);
	finish(a, aj, JS_EXCEPTION, rv_for_push(ret), summary, err);
}

static void discard_all(struct agent *a, struct ajob *aj)
{
	char err[1024], failed[1200] = "";
	unsigned i;
	int ret;

	for (i = 0; i < aj->j.ndisks; i++) {
		ret = session(aj, i, PUSH_DISCARD, err, sizeof(err));
		pthread_mutex_lock(&a->lock);
		if (aj->stop) { /* kill or shutdown during the discard */
			bool out = handle_stop(a, aj);

			if (out) {
				pthread_mutex_unlock(&a->lock);
				return;
			}
		}
		pthread_mutex_unlock(&a->lock);
		if (ret && ret != -ENOENT && !failed[0])
			snprintf(failed, sizeof(failed),
				 "could not discard the partial copy of %s (the next resynchronization starts over anyway): %s",
				 aj->j.disks[i].name, err);
	}
	pthread_mutex_lock(&a->lock);
	finish(a, aj, JS_TERMINATED, 0, "The job was cancelled.",
	       failed[0] ? failed :
	       "RequestStateChange 4 (Terminate): the recovery images are untouched; the VM needs a resynchronization");
	pthread_mutex_unlock(&a->lock);
}

/*
 * A replica VM's job reads disks that its primary also sends to: hold the
 * exports for the run so no primary session starts under it.  Under the
 * lock; returns 0 or -EBUSY (with every hold released again).
 */
static int hold_exports(struct agent *a, const struct vm_config *vm, bool hold)
{
	char name[PROTO_NAME_MAX + 1];
	unsigned i;
	int ret;

	if (vm->role == VM_ROLE_PRIMARY || !a->server)
		return 0;
	for (i = 0; i < vm->ndisks; i++) {
		snprintf(name, sizeof(name), "%s:%s", vm->name, config_basename(vm->disks[i]));
		ret = server_hold_export(a->server, name, hold);
		if (ret == -EBUSY) {
			while (i--) {
				snprintf(name, sizeof(name), "%s:%s", vm->name,
					 config_basename(vm->disks[i]));
				server_hold_export(a->server, name, false);
			}
			return ret;
		}
	}
	return 0;
}

static void *runner(void *arg)
{
	struct ajob *aj = arg;
	struct agent *a = aj->a;
	struct job *j = &aj->j;
	struct vmrt *vm;
	char err[1024];
	unsigned i, flags;
	bool held = false;
	int ret = 0;

	pthread_mutex_lock(&a->lock);
	vm = vm_rt(a, j->vm);
	if (j->state == JS_SHUTTING_DOWN) {
		if (j->phase != JOB_PHASE_DISCARD) {
			aj->stop_req = REQ_KILL;
			handle_stop(a, aj);
			goto out_locked;
		}
		pthread_mutex_unlock(&a->lock);
		discard_all(a, aj);
		goto out;
	}
	if (vm && hold_exports(a, vm->cfg, true)) {
		snprintf(err, sizeof(err),
			 "VM %s: a disk is receiving from the primary right now", j->vm);
		ret = -EBUSY;
		i = j->ndisks;
		pthread_mutex_unlock(&a->lock);
		goto stopped_nohold;
	}
	held = vm != NULL;
	if (!j->started)
		j->started = now_us();
	j->running_since = now_us();
	set_state(aj, JS_RUNNING);
	set_vm(a, vm, RS_RESYNCHRONIZING);
	persist(a, aj);
	notify_status(a);
	log_msg(LOG_PRIO_INFO, NULL, "job %s (VM %s, JobType %u) running: %s phase, to %s",
		  j->id, j->vm, j->type, job_phase_name(j->phase), j->peer);
	pthread_mutex_unlock(&a->lock);

	if (j->phase == JOB_PHASE_CHECK) {
		for (i = 0; i < j->ndisks; i++) {
			ret = session(aj, i, PUSH_CHECK, err, sizeof(err));
			if (ret || aj->stop)
				goto stopped;
		}
		pthread_mutex_lock(&a->lock);
		j->phase = JOB_PHASE_SEND;
		update_percent(j);
		persist(a, aj);
		pthread_mutex_unlock(&a->lock);
	}
	if (j->phase == JOB_PHASE_SEND) {
		for (i = 0; i < j->ndisks; i++) {
			if (j->disks[i].sent)
				continue;
			pthread_mutex_lock(&a->lock);
			/* a job's first session of a disk drops whatever an
			 * older, abandoned job left on the recovery side */
			flags = PUSH_HOLD | (j->disks[i].started ? 0 : PUSH_RESTART);
			j->disks[i].started = true;
			persist(a, aj);
			pthread_mutex_unlock(&a->lock);
			ret = session(aj, i, flags, err, sizeof(err));
			if (ret || aj->stop)
				goto stopped;
			pthread_mutex_lock(&a->lock);
			j->disks[i].sent = true;
			j->disks[i].done = j->disks[i].size;
			update_percent(j);
			persist(a, aj);
			pthread_mutex_unlock(&a->lock);
		}
		pthread_mutex_lock(&a->lock);
		if (aj->stop) {
			pthread_mutex_unlock(&a->lock);
			goto stopped;
		}
		/* from here on Hyper-V's resync cannot be cancelled either */
		j->phase = JOB_PHASE_MERGE;
		j->cancellable = false;
		update_percent(j);
		persist(a, aj);
		pthread_mutex_unlock(&a->lock);
	}
	if (j->phase == JOB_PHASE_MERGE) {
		for (i = 0; i < j->ndisks; i++) {
			if (j->disks[i].merged)
				continue;
			ret = session(aj, i, PUSH_MERGE, err, sizeof(err));
			if (ret)
				goto stopped;
			pthread_mutex_lock(&a->lock);
			j->disks[i].merged = true;
			update_percent(j);
			persist(a, aj);
			pthread_mutex_unlock(&a->lock);
		}
	}
	pthread_mutex_lock(&a->lock);
	finish(a, aj, JS_COMPLETED, 0, NULL, NULL);
	goto out_locked;

stopped:
stopped_nohold:
	pthread_mutex_lock(&a->lock);
	if (aj->stop && aj->stop_req) {
		if (!handle_stop(a, aj)) {
			pthread_mutex_unlock(&a->lock);
			discard_all(a, aj);
			goto out;
		}
		goto out_locked;
	}
	fail_job(a, aj, ret ? ret : -ECANCELED,
		 j->phase == JOB_PHASE_CHECK ? "geometry check" :
		 j->phase == JOB_PHASE_SEND ? "comparison and copy" : "merge",
		 i < j->ndisks ? j->disks[i].name : "-", err);
out_locked:
	if (held)
		hold_exports(a, vm->cfg, false);
	runner_exit(aj);
	pthread_mutex_unlock(&a->lock);
	return NULL;
out:
	pthread_mutex_lock(&a->lock);
	if (held)
		hold_exports(a, vm->cfg, false);
	runner_exit(aj);
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

/* Under the lock: join a runner that returned. */
static void reap(struct ajob *aj)
{
	if (aj->has_thread && aj->thread_done) {
		pthread_join(aj->thread, NULL);
		aj->has_thread = false;
		aj->thread_done = false;
	}
}

/* Under the lock: start (or resume) the job's runner.  0 or -errno. */
static int start_runner(struct agent *a, struct ajob *aj)
{
	int ret;

	reap(aj);
	if (aj->has_thread)
		return -EBUSY;
	aj->stop = 0;
	aj->stop_req = 0;
	aj->thread_done = false;
	if (aj->j.state != JS_SHUTTING_DOWN)
		set_state(aj, JS_STARTING);
	ret = pthread_create(&aj->thread, NULL, runner, aj);
	if (ret)
		return -ret;
	aj->has_thread = true;
	return 0;
}

/* --- control API --- */

static void reply_rv(struct json_writer *w, unsigned rv, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void reply_rv(struct json_writer *w, unsigned rv, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", rv);
	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(msg, sizeof(msg), fmt, ap);
		va_end(ap);
		json_kv_string(w, "Error", msg);
	}
	json_object_end(w);
}

/* A member of type @t (or null when @nullable); 0, RV_BAD_TYPE, or
 * RV_INVALID_PARAMETER when it is required and missing. */
static unsigned field(const struct jv *req, const char *k, enum jv_type t,
		      bool required, const struct jv **out, char *msg, size_t len)
{
	const struct jv *v = jv_get(req, k);

	*out = NULL;
	if (!v || v->type == JV_NULL) {
		if (!required)
			return 0;
		snprintf(msg, len, "%s is missing", k);
		return RV_INVALID_PARAMETER;
	}
	if (v->type != t) {
		snprintf(msg, len, "%s is %s, not %s", k, jv_type_name(v->type),
			 jv_type_name(t));
		return RV_BAD_TYPE;
	}
	*out = v;
	return 0;
}

static void free_job(struct ajob *aj)
{
	job_clear(&aj->j);
	free(aj);
}

static struct ajob *new_job(struct agent *a, const struct vm_config *vm,
			    const struct jv *sources, int64_t start, bool autor)
{
	struct ajob *aj = calloc(1, sizeof(*aj));
	struct job *j;
	unsigned i;
	int64_t now = now_us();

	if (!aj)
		return NULL;
	aj->a = a;
	j = &aj->j;
	if (job_new_id(j->id))
		goto fail;
	j->vm = strdup(vm->name);
	j->vm_id = vm->id ? strdup(vm->id) : NULL;
	j->peer = strdup(vm->replica);
	j->disks = calloc(vm->ndisks, sizeof(*j->disks));
	if (!j->vm || (vm->id && !j->vm_id) || !j->peer || !j->disks)
		goto fail;
	j->ndisks = vm->ndisks;
	for (i = 0; i < vm->ndisks; i++) {
		const char *name = config_basename(vm->disks[i]);
		const struct jv *src = sources ? jv_get(sources, name) : NULL;

		j->disks[i].name = strdup(name);
		j->disks[i].path = strdup(src ? src->s : vm->disks[i]);
		if (!j->disks[i].name || !j->disks[i].path)
			goto fail;
	}
	j->type = vm->role == VM_ROLE_PRIMARY ? JT_RESYNC : JT_RESYNC_EXTENDED;
	j->state = JS_NEW;
	j->submitted = now;
	j->last_change = now;
	j->scheduled = start;
	j->cancellable = true;
	j->retention = a->retention;
	j->auto_resync = autor;
	j->phase = JOB_PHASE_CHECK;
	return aj;
fail:
	free_job(aj);
	return NULL;
}

static bool child_exists(const char *disk)
{
	char path[4096];
	struct stat st;

	snprintf(path, sizeof(path), "%s%s", disk, SERVER_CHILD_SUFFIX);
	return stat(path, &st) == 0;
}

/* Is a disk there and something we can read?  0, RV_NOT_FOUND or
 * RV_FAILED, with @msg. */
static unsigned check_disk(const char *vm, const char *path, char *msg, size_t len)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		snprintf(msg, len, "VM %s: disk %s: %s", vm, path, strerror(errno));
		return errno == ENOENT || errno == ENOTDIR ? RV_NOT_FOUND : RV_FAILED;
	}
	if (fstat(fd, &st) || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
		snprintf(msg, len, "VM %s: disk %s is not a file or block device", vm, path);
		close(fd);
		return RV_FAILED;
	}
	close(fd);
	return 0;
}

static void do_resynchronize(struct agent *a, const struct control_caller *who,
			     const struct jv *req, struct json_writer *w)
{
	const struct jv *cs, *stv, *src;
	const struct vm_config *vm;
	struct vmrt *rt;
	struct ajob *aj;
	char msg[1024];
	int64_t start = 0, now = now_us();
	unsigned rv, i, k;
	int ret;

	if ((rv = field(req, "ComputerSystem", JV_STRING, true, &cs, msg, sizeof(msg))) ||
	    (rv = field(req, "StartTime", JV_STRING, false, &stv, msg, sizeof(msg))) ||
	    (rv = field(req, "Sources", JV_OBJECT, false, &src, msg, sizeof(msg))))
		goto reply;
	for (i = 0; src && i < src->n; i++) {
		if (src->items[i].type != JV_STRING) {
			snprintf(msg, sizeof(msg), "Sources.%s is %s, not string", src->keys[i],
				 jv_type_name(src->items[i].type));
			rv = RV_BAD_TYPE;
			goto reply;
		}
	}
	vm = config_find_vm(&a->cfg, cs->s);
	if (!vm) {
		snprintf(msg, sizeof(msg), "no VM named '%s' in %s", cs->s, a->cfg.path);
		rv = RV_INVALID_PARAMETER;
		goto reply;
	}
	if (stv && stv->s[0]) {
		if (start_time_parse(stv->s, &start)) {
			snprintf(msg, sizeof(msg),
				 "StartTime '%s' is neither a CIM datetime (yyyymmddHHMMSS.mmmmmmsUUU) nor ISO 8601",
				 stv->s);
			rv = RV_INVALID_PARAMETER;
			goto reply;
		}
		if (start < now - START_TIME_SLACK_US) {
			snprintf(msg, sizeof(msg), "StartTime '%s' is in the past", stv->s);
			rv = RV_INVALID_PARAMETER;
			goto reply;
		}
		if (start > now + MAX_AHEAD_US) {
			snprintf(msg, sizeof(msg), "StartTime '%s' is more than 7 days ahead",
				 stv->s);
			rv = RV_INVALID_PARAMETER;
			goto reply;
		}
		if (start <= now)
			start = 0;
	}
	for (i = 0; src && i < src->n; i++) {
		for (k = 0; k < vm->ndisks; k++)
			if (!strcmp(src->keys[i], config_basename(vm->disks[k])))
				break;
		if (k == vm->ndisks) {
			snprintf(msg, sizeof(msg), "Sources: VM %s has no replication-enabled disk named '%s'",
				 vm->name, src->keys[i]);
			rv = RV_INVALID_PARAMETER;
			goto reply;
		}
		if (src->items[i].s[0] != '/') {
			snprintf(msg, sizeof(msg), "Sources.%s: '%s' is not an absolute path",
				 src->keys[i], src->items[i].s);
			rv = RV_INVALID_PARAMETER;
			goto reply;
		}
	}
	if (vm_mode(vm) == RM_EXTENDED_REPLICA ||
	    (vm->role == VM_ROLE_REPLICA && !vm->replica)) {
		snprintf(msg, sizeof(msg),
			 "VM %s is a replica with no extended replica: its primary resynchronizes it",
			 vm->name);
		rv = RV_NOT_SUPPORTED;
		goto reply;
	}

	pthread_mutex_lock(&a->lock);
	rt = vm_rt(a, vm->name);
	if (a->stopping) {
		snprintf(msg, sizeof(msg), "the agent is stopping");
		rv = RV_NOT_AVAILABLE;
		goto reply_locked;
	}
	aj = active_job_of(a, vm->name);
	if (aj) {
		snprintf(msg, sizeof(msg), "VM %s already has resynchronization job %s (%s)",
			 vm->name, aj->j.id, job_state_name(aj->j.state));
		rv = RV_IN_USE;
		goto reply_locked;
	}
	if (!vm->ndisks) {
		snprintf(msg, sizeof(msg), "VM %s has no replication-enabled disks", vm->name);
		rv = RV_INVALID_STATE;
		goto reply_locked;
	}
	if (rt->st.state == RS_FAILOVER || rt->st.state == RS_FAILBACK) {
		snprintf(msg, sizeof(msg), "VM %s is in ReplicationState %u (%s)", vm->name,
			 rt->st.state, repl_state_name(rt->st.state));
		rv = RV_INVALID_STATE;
		goto reply_locked;
	}
	if (vm->role == VM_ROLE_REPLICA && a->server) {
		for (i = 0; i < vm->ndisks; i++) {
			char name[PROTO_NAME_MAX + 1];

			snprintf(name, sizeof(name), "%s:%s", vm->name,
				 config_basename(vm->disks[i]));
			if (server_export_busy(a->server, name) == 1) {
				snprintf(msg, sizeof(msg),
					 "VM %s: disk %s is receiving from the primary right now",
					 vm->name, config_basename(vm->disks[i]));
				rv = RV_IN_USE;
				goto reply_locked;
			}
			/* between the primary's sessions its held copy waits
			 * as a child: a merge could land under our reads */
			if (child_exists(vm->disks[i])) {
				snprintf(msg, sizeof(msg),
					 "VM %s: disk %s has a resynchronization from the primary under way (%s%s exists)",
					 vm->name, config_basename(vm->disks[i]),
					 config_basename(vm->disks[i]), SERVER_CHILD_SUFFIX);
				rv = RV_IN_USE;
				goto reply_locked;
			}
		}
	}
	for (i = 0; i < vm->ndisks; i++) {
		const struct jv *s = src ? jv_get(src, config_basename(vm->disks[i])) : NULL;

		rv = check_disk(vm->name, s ? s->s : vm->disks[i], msg, sizeof(msg));
		if (rv)
			goto reply_locked;
	}
	aj = new_job(a, vm, src, start, false);
	if (!aj) {
		snprintf(msg, sizeof(msg), "out of memory");
		rv = RV_NO_MEMORY;
		goto reply_locked;
	}
	ret = job_save(a->jobs_dir, &aj->j, now);
	if (ret) {
		snprintf(msg, sizeof(msg), "cannot record the job in %s: %s", a->jobs_dir,
			 strerror(-ret));
		free_job(aj);
		rv = ret == -ENOMEM ? RV_NO_MEMORY : RV_FAILED;
		goto reply_locked;
	}
	if (!start) {
		ret = start_runner(a, aj);
		if (ret) {
			job_remove(a->jobs_dir, aj->j.id);
			free_job(aj);
			snprintf(msg, sizeof(msg), "cannot start the job: %s", strerror(-ret));
			rv = ret == -EAGAIN || ret == -ENOMEM ? RV_NO_MEMORY : RV_FAILED;
			goto reply_locked;
		}
	}
	aj->next = a->jobs;
	a->jobs = aj;
	set_vm(a, rt, start ? RS_RESYNC_REQUIRED : RS_RESYNCHRONIZING);
	pthread_cond_broadcast(&a->cond);
	notify_status(a);
	log_msg(LOG_PRIO_INFO, NULL, "uid %u: Resynchronize %s: job %s (JobType %u) %s%s",
		  (unsigned)who->uid, vm->name, aj->j.id, aj->j.type,
		  start ? "scheduled for " : "started", start ? stv->s : "");
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", RV_JOB_STARTED);
	json_kv_string(w, "Job", aj->j.id);
	json_object_end(w);
	pthread_mutex_unlock(&a->lock);
	return;

reply_locked:
	pthread_mutex_unlock(&a->lock);
reply:
	log_msg(LOG_PRIO_NOTICE, NULL, "uid %u: Resynchronize refused with %u: %s",
		  (unsigned)who->uid, rv, msg);
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", rv);
	json_kv_null(w, "Job");
	json_kv_string(w, "Error", msg);
	json_object_end(w);
}

/* Under the lock: has a requested transition come to its end? */
static bool transition_done(const struct ajob *aj, unsigned requested)
{
	switch (requested) {
	case REQ_START:
		return aj->j.state == JS_RUNNING || job_state_final(aj->j.state);
	case REQ_SUSPEND:
		return aj->j.state == JS_SUSPENDED || job_state_final(aj->j.state);
	}
	return job_state_final(aj->j.state);
}

static void do_request_state_change(struct agent *a, const struct control_caller *who,
				    const struct jv *req, struct json_writer *w)
{
	const struct jv *id, *rs, *to;
	struct ajob *aj;
	struct vmrt *vm;
	unsigned rv, next, requested;
	int64_t timeout = 0;
	char msg[512];
	int ret;

	if ((rv = field(req, "Job", JV_STRING, true, &id, msg, sizeof(msg))) ||
	    (rv = field(req, "RequestedState", JV_NUMBER, true, &rs, msg, sizeof(msg))) ||
	    (rv = field(req, "TimeoutPeriod", JV_STRING, false, &to, msg, sizeof(msg)))) {
		if (rv == RV_INVALID_PARAMETER)
			rv = RSC_INVALID_PARAMETER;
		reply_rv(w, rv, "%s", msg);
		return;
	}
	if (!rs->is_int || rs->i < 0 || rs->i > 65535) {
		reply_rv(w, RSC_INVALID_PARAMETER, "RequestedState %g is not a state", rs->num);
		return;
	}
	requested = (unsigned)rs->i;
	if (to && cim_interval_parse(to->s, &timeout)) {
		reply_rv(w, RSC_INVALID_PARAMETER,
			 "TimeoutPeriod '%s' is not a CIM interval (ddddddddHHMMSS.mmmmmm:000)",
			 to->s);
		return;
	}
	pthread_mutex_lock(&a->lock);
	aj = find_job(a, id->s);
	if (!aj) {
		pthread_mutex_unlock(&a->lock);
		reply_rv(w, RSC_INVALID_PARAMETER, "no job %s (finished jobs stay 5 minutes)",
			 id->s);
		return;
	}
	vm = vm_rt(a, aj->j.vm);
	rv = job_transition(aj->j.state, requested, &next);
	if ((rv == RSC_OK || rv == RSC_STARTED) && !aj->j.cancellable &&
	    requested != REQ_START && !job_state_final(aj->j.state) &&
	    aj->j.state != JS_SUSPENDED) {
		rv = RSC_INVALID_TRANSITION;
		snprintf(msg, sizeof(msg), "job %s is merging and can no longer be stopped",
			 aj->j.id);
		goto out;
	}
	if (rv != RSC_OK && rv != RSC_STARTED) {
		snprintf(msg, sizeof(msg), "job %s is %s: RequestedState %u %s", aj->j.id,
			 job_state_name(aj->j.state), requested, rsc_name(rv));
		goto out;
	}
	msg[0] = '\0';
	log_msg(LOG_PRIO_INFO, NULL, "uid %u: RequestStateChange %u on job %s (%s)",
		  (unsigned)who->uid, requested, aj->j.id, job_state_name(aj->j.state));
	if (next == aj->j.state && rv == RSC_OK)
		goto out; /* already there */
	switch (requested) {
	case REQ_START: /* Suspended -> Running */
		ret = start_runner(a, aj);
		if (ret) {
			rv = ret == -EBUSY ? RSC_BUSY : RSC_FAILED;
			snprintf(msg, sizeof(msg), "cannot resume job %s: %s", aj->j.id,
				 strerror(-ret));
			goto out;
		}
		set_vm(a, vm, RS_RESYNCHRONIZING);
		break;
	case REQ_SUSPEND:
		aj->stop_req = REQ_SUSPEND;
		aj->stop = 1;
		break;
	case REQ_TERMINATE:
	case REQ_KILL:
		/* an admin's cancel is not undone by the next auto-resync pass */
		if (vm)
			vm->last_auto = now_us();
		if (aj->j.state == JS_NEW) {
			finish(a, aj, next, 0, requested == REQ_KILL ? "The job was killed." :
			       "The job was cancelled.",
			       "cancelled before it started; the VM needs a resynchronization");
			break;
		}
		if (aj->j.state == JS_SUSPENDED) {
			reap(aj);
			if (requested == REQ_KILL) {
				aj->stop_req = REQ_KILL;
				handle_stop(a, aj);
				break;
			}
			set_state(aj, JS_SHUTTING_DOWN);
			aj->j.phase = JOB_PHASE_DISCARD;
			persist(a, aj);
			ret = start_runner(a, aj);
			if (ret) {
				rv = RSC_FAILED;
				snprintf(msg, sizeof(msg), "cannot cancel job %s: %s",
					 aj->j.id, strerror(-ret));
			}
			break;
		}
		if (aj->j.state == JS_SHUTTING_DOWN && requested == REQ_TERMINATE)
			break;
		aj->stop_req = requested;
		aj->stop = 1;
		set_state(aj, JS_SHUTTING_DOWN);
		persist(a, aj);
		break;
	}
	notify_status(a);
	if (rv == RSC_STARTED && timeout > 0) {
		int64_t deadline = now_us() + timeout;

		while (!transition_done(aj, requested) && !a->stopping) {
			struct timespec ts = { .tv_sec = deadline / 1000000,
					       .tv_nsec = (deadline % 1000000) * 1000 };

			if (pthread_cond_timedwait(&a->cond, &a->lock, &ts) == ETIMEDOUT)
				break;
		}
		if (transition_done(aj, requested))
			rv = RSC_OK;
		else {
			rv = RSC_TIMEOUT;
			snprintf(msg, sizeof(msg),
				 "job %s is %s: the transition goes on in the background",
				 aj->j.id, job_state_name(aj->j.state));
		}
	}
out:
	pthread_mutex_unlock(&a->lock);
	reply_rv(w, rv, msg[0] ? "%s" : NULL, msg);
}

static void do_get_job(struct agent *a, const struct jv *req, struct json_writer *w)
{
	const struct jv *id;
	struct ajob *aj;
	char msg[256];
	unsigned rv;

	if ((rv = field(req, "Job", JV_STRING, true, &id, msg, sizeof(msg)))) {
		reply_rv(w, rv, "%s", msg);
		return;
	}
	pthread_mutex_lock(&a->lock);
	aj = find_job(a, id->s);
	if (!aj) {
		pthread_mutex_unlock(&a->lock);
		reply_rv(w, RV_INVALID_PARAMETER,
			 "no job %s (finished jobs stay visible for %lld s, then only in the log)",
			 id->s, (long long)(a->retention / 1000000));
		return;
	}
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", RV_OK);
	json_key(w, "Instance");
	job_to_json(w, &aj->j, now_us());
	json_object_end(w);
	pthread_mutex_unlock(&a->lock);
}

static void do_list_jobs(struct agent *a, const struct jv *req, struct json_writer *w)
{
	const struct jv *cs;
	const struct vm_config *vm = NULL;
	struct ajob *aj;
	int64_t now = now_us();
	char msg[256];
	unsigned rv;

	if ((rv = field(req, "ComputerSystem", JV_STRING, false, &cs, msg, sizeof(msg)))) {
		reply_rv(w, rv, "%s", msg);
		return;
	}
	if (cs && !(vm = config_find_vm(&a->cfg, cs->s))) {
		reply_rv(w, RV_INVALID_PARAMETER, "no VM named '%s'", cs->s);
		return;
	}
	pthread_mutex_lock(&a->lock);
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", RV_OK);
	json_key(w, "Jobs");
	json_array_begin(w);
	for (aj = a->jobs; aj; aj = aj->next)
		if (!vm || !strcmp(vm->name, aj->j.vm))
			job_to_json(w, &aj->j, now);
	json_array_end(w);
	json_object_end(w);
	pthread_mutex_unlock(&a->lock);
}

/* Under the lock: the state GetVM shows (a replica receiving is 10). */
static void vm_json(struct agent *a, struct vmrt *rt, struct json_writer *w)
{
	struct vm_state st = rt->st;
	unsigned i;

	if (rt->cfg->role != VM_ROLE_PRIMARY && a->server && !active_job_of(a, rt->cfg->name)) {
		for (i = 0; i < rt->cfg->ndisks; i++) {
			char name[PROTO_NAME_MAX + 1];

			snprintf(name, sizeof(name), "%s:%s", rt->cfg->name,
				 config_basename(rt->cfg->disks[i]));
			if (server_export_busy(a->server, name) == 1) {
				st.state = RS_RESYNCHRONIZING;
				st.health = vm_health_for(st.state);
				break;
			}
		}
	}
	vm_to_json(w, rt->cfg, &st);
}

static void do_get_vm(struct agent *a, const struct jv *req, struct json_writer *w)
{
	const struct vm_config *vm;
	const struct jv *cs;
	char msg[256];
	unsigned rv;

	if ((rv = field(req, "ComputerSystem", JV_STRING, true, &cs, msg, sizeof(msg)))) {
		reply_rv(w, rv, "%s", msg);
		return;
	}
	vm = config_find_vm(&a->cfg, cs->s);
	if (!vm) {
		reply_rv(w, RV_INVALID_PARAMETER, "no VM named '%s' in %s", cs->s, a->cfg.path);
		return;
	}
	pthread_mutex_lock(&a->lock);
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", RV_OK);
	json_key(w, "Instance");
	vm_json(a, vm_rt(a, vm->name), w);
	json_object_end(w);
	pthread_mutex_unlock(&a->lock);
}

static void do_list_vms(struct agent *a, struct json_writer *w)
{
	unsigned i;

	pthread_mutex_lock(&a->lock);
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", RV_OK);
	json_key(w, "VMs");
	json_array_begin(w);
	for (i = 0; i < a->cfg.nvms; i++)
		vm_json(a, &a->vms[i], w);
	json_array_end(w);
	json_object_end(w);
	pthread_mutex_unlock(&a->lock);
}

static void do_request_replication_state_change(struct agent *a,
						const struct control_caller *who,
						const struct jv *req,
						struct json_writer *w)
{
	const struct vm_config *vm;
	const struct jv *cs, *rs;
	struct ajob *aj;
	char msg[512];
	unsigned rv;

	if ((rv = field(req, "ComputerSystem", JV_STRING, true, &cs, msg, sizeof(msg))) ||
	    (rv = field(req, "RequestedState", JV_NUMBER, true, &rs, msg, sizeof(msg)))) {
		reply_rv(w, rv, "%s", msg);
		return;
	}
	vm = config_find_vm(&a->cfg, cs->s);
	if (!vm) {
		reply_rv(w, RV_INVALID_PARAMETER, "no VM named '%s' in %s", cs->s, a->cfg.path);
		return;
	}
	if (!rs->is_int || rs->i < 0 || rs->i > RS_MAX || !vm_state_settable((unsigned)rs->i)) {
		reply_rv(w, RV_INVALID_PARAMETER,
			 "RequestedState %g cannot be set (1-9 and 12-14; 10 and 11 belong to jobs)",
			 rs->num);
		return;
	}
	pthread_mutex_lock(&a->lock);
	aj = active_job_of(a, vm->name);
	if (aj) {
		pthread_mutex_unlock(&a->lock);
		reply_rv(w, RV_IN_USE, "VM %s has job %s (%s)", vm->name, aj->j.id,
			 job_state_name(aj->j.state));
		return;
	}
	log_msg(LOG_PRIO_INFO, NULL, "uid %u: RequestReplicationStateChange %s to %lld",
		  (unsigned)who->uid, vm->name, (long long)rs->i);
	set_vm(a, vm_rt(a, vm->name), (unsigned)rs->i);
	a->recheck = true; /* a VM marked 9 inside its window starts now */
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	reply_rv(w, RV_OK, NULL);
}

static void handle(void *ctx, const struct control_caller *who, const struct jv *req,
		   struct json_writer *w)
{
	struct agent *a = ctx;
	const char *m = jv_get(req, "Method")->s;
	bool ready;

	pthread_mutex_lock(&a->lock);
	ready = a->ready && !a->stopping;
	pthread_mutex_unlock(&a->lock);
	if (!ready) {
		reply_rv(w, RV_NOT_AVAILABLE, "the agent is %s",
			 a->stopping ? "stopping" : "starting");
		return;
	}
	if (!strcmp(m, "Resynchronize"))
		do_resynchronize(a, who, req, w);
	else if (!strcmp(m, "RequestStateChange"))
		do_request_state_change(a, who, req, w);
	else if (!strcmp(m, "GetJob"))
		do_get_job(a, req, w);
	else if (!strcmp(m, "ListJobs"))
		do_list_jobs(a, req, w);
	else if (!strcmp(m, "GetVM"))
		do_get_vm(a, req, w);
	else if (!strcmp(m, "ListVMs"))
		do_list_vms(a, w);
	else if (!strcmp(m, "RequestReplicationStateChange"))
		do_request_replication_state_change(a, who, req, w);
	else
		reply_rv(w, RV_NOT_SUPPORTED, "unknown Method '%.100s'", m);
}

/* --- scheduler: scheduled starts, auto-resync, expiry, exports --- */

static void add_exports(struct agent *a, bool first)
{
	char name[PROTO_NAME_MAX + 1], err[512];
	unsigned i, k;
	int ret;

	if (!a->server)
		return;
	for (i = 0; i < a->cfg.nvms; i++) {
		struct vmrt *rt = &a->vms[i];
		bool all = true;

		if (rt->cfg->role == VM_ROLE_PRIMARY || rt->exported)
			continue;
		for (k = 0; k < rt->cfg->ndisks; k++) {
			snprintf(name, sizeof(name), "%s:%s", rt->cfg->name,
				 config_basename(rt->cfg->disks[k]));
			ret = server_add_export(a->server, name, rt->cfg->disks[k], err,
						sizeof(err));
			if (ret == -EEXIST)
				continue;
			if (ret) {
				all = false;
				if (first)
					log_msg(LOG_PRIO_WARNING, NULL, "VM %s: cannot export %s (tried again every minute): %s",
						  rt->cfg->name, rt->cfg->disks[k], err);
				continue;
			}
			log_msg(LOG_PRIO_INFO, NULL, "VM %s: exporting %s as %s", rt->cfg->name,
				  rt->cfg->disks[k], name);
		}
		rt->exported = all;
	}
}

static int local_minute(int64_t now)
{
	time_t t = (time_t)(now / 1000000);
	struct tm tm;

	if (!localtime_r(&t, &tm))
		return 0;
	return tm.tm_hour * 60 + tm.tm_min;
}

static void *scheduler(void *arg)
{
	struct agent *a = arg;
	int64_t next_minute = 0;

	pthread_mutex_lock(&a->lock);
	while (!a->stopping) {
		int64_t now = now_us(), wake = now + 60 * 1000000LL;
		struct ajob **pp, *aj;
		struct timespec ts;
		unsigned i;

		for (pp = &a->jobs; (aj = *pp);) {
			reap(aj);
			if (aj->j.finished && !aj->has_thread &&
			    now >= aj->j.finished + aj->j.retention) {
				log_msg(LOG_PRIO_INFO, NULL, "job %s (VM %s, %s) removed: its TimeBeforeRemoval passed",
					  aj->j.id, aj->j.vm, job_state_name(aj->j.state));
				job_remove(a->jobs_dir, aj->j.id);
				*pp = aj->next;
				free_job(aj);
				continue;
			}
			if (aj->j.finished && aj->j.finished + aj->j.retention < wake)
				wake = aj->j.finished + aj->j.retention;
			if (aj->j.state == JS_NEW && !aj->has_thread) {
				if (aj->j.scheduled <= now) {
					int ret = start_runner(a, aj);

					if (ret)
						log_msg(LOG_PRIO_ERR, NULL, "job %s: cannot start: %s",
							  aj->j.id, strerror(-ret));
				} else if (aj->j.scheduled < wake) {
					wake = aj->j.scheduled;
				}
			}
			pp = &aj->next;
		}

		if (now >= next_minute || a->recheck) {
			int min = local_minute(now);

			a->recheck = false;

			next_minute = now + 60 * 1000000LL;
			for (i = 0; i < a->cfg.nvms; i++) {
				struct vmrt *rt = &a->vms[i];
				const struct vm_config *vm = rt->cfg;

				if (!vm->auto_resync || rt->st.state != RS_RESYNC_REQUIRED ||
				    !config_in_window(vm, min) || active_job_of(a, vm->name) ||
				    !vm->ndisks || !vm->replica || vm_mode(vm) == RM_EXTENDED_REPLICA ||
				    (rt->last_auto && now - rt->last_auto < AUTO_RETRY_US))
					continue;
				aj = new_job(a, vm, NULL, 0, true);
				if (!aj) {
					log_msg(LOG_PRIO_ERR, NULL, "VM %s: auto-resync: out of memory",
						  vm->name);
					continue;
				}
				rt->last_auto = now;
				if (job_save(a->jobs_dir, &aj->j, now) || start_runner(a, aj)) {
					log_msg(LOG_PRIO_ERR, NULL, "VM %s: auto-resync: cannot start a job",
						  vm->name);
					job_remove(a->jobs_dir, aj->j.id);
					free_job(aj);
					continue;
				}
				aj->next = a->jobs;
				a->jobs = aj;
				log_msg(LOG_PRIO_INFO, NULL, "VM %s: auto-resync inside its window: job %s", vm->name,
					  aj->j.id);
			}
			pthread_mutex_unlock(&a->lock);
			add_exports(a, false);
			pthread_mutex_lock(&a->lock);
			notify_status(a);
			continue; /* look at the jobs again before sleeping */
		}
		if (next_minute < wake)
			wake = next_minute;
		ts.tv_sec = wake / 1000000;
		ts.tv_nsec = (wake % 1000000) * 1000;
		pthread_cond_timedwait(&a->cond, &a->lock, &ts);
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

/* --- start and stop --- */

static void *server_main(void *arg)
{
	struct agent *a = arg;
	int ret = server_run(a->server);

	if (ret)
		log_msg(LOG_PRIO_ERR, NULL, "serve: stopped: %s", strerror(-ret));
	return NULL;
}

static int load_jobs(struct agent *a)
{
	DIR *d = opendir(a->jobs_dir);
	struct dirent *e;
	char err[512];

	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);
		struct ajob *aj;
		struct vmrt *rt;
		int ret;

		if (len != 41 || strcmp(e->d_name + 36, ".json"))
			continue;
		aj = calloc(1, sizeof(*aj));
		if (!aj) {
			closedir(d);
			return -ENOMEM;
		}
		aj->a = a;
		ret = job_load(a->jobs_dir, e->d_name, &aj->j, err, sizeof(err));
		if (ret) {
			log_msg(LOG_PRIO_WARNING, NULL, "%s/%s: not a job record, ignored: %s",
				  a->jobs_dir, e->d_name, err);
			free_job(aj);
			continue;
		}
		aj->j.retention = a->retention;
		aj->next = a->jobs;
		a->jobs = aj;
		rt = vm_rt(a, aj->j.vm);
		if (job_active(&aj->j) && !rt) {
			finish(a, aj, JS_EXCEPTION, RV_INVALID_PARAMETER,
			       "The VM is no longer configured.",
			       "the agent restarted and its configuration has no such VM");
			continue;
		}
		if (job_active(&aj->j))
			log_msg(LOG_PRIO_INFO, NULL, "job %s (VM %s) restored: %s, %s phase, %u%%",
				  aj->j.id, aj->j.vm, job_state_name(aj->j.state),
				  job_phase_name(aj->j.phase), aj->j.percent);
	}
	closedir(d);
	return 0;
}

/* Jobs that were running when the agent stopped run again; a VM whose
 * job vanished is left "resynchronization required". */
static void resume_jobs(struct agent *a)
{
	struct ajob *aj;
	unsigned i;

	pthread_mutex_lock(&a->lock);
	for (aj = a->jobs; aj; aj = aj->next) {
		unsigned s = aj->j.state;

		if (s == JS_STARTING || s == JS_RUNNING || s == JS_SHUTTING_DOWN) {
			int ret = start_runner(a, aj);

			if (ret)
				log_msg(LOG_PRIO_ERR, NULL, "job %s: cannot resume: %s", aj->j.id,
					  strerror(-ret));
		}
	}
	for (i = 0; i < a->cfg.nvms; i++) {
		struct vmrt *rt = &a->vms[i];
		struct ajob *act = active_job_of(a, rt->cfg->name);

		if (!act && (rt->st.state == RS_RESYNCHRONIZING ||
			     rt->st.state == RS_RESYNC_SUSPENDED))
			set_vm(a, rt, RS_RESYNC_REQUIRED);
		if (act && act->j.state == JS_SUSPENDED)
			set_vm(a, rt, RS_RESYNC_SUSPENDED);
	}
	notify_status(a);
	pthread_mutex_unlock(&a->lock);
}

static int setup(struct agent *a, char *err, size_t errlen)
{
	struct server_config scfg;
	struct server *srv;
	unsigned i;
	int ret;

	a->jobs_dir = path_join(a->cfg.state_dir, "jobs");
	a->vms_dir = path_join(a->cfg.state_dir, "vms");
	a->serve_dir = path_join(a->cfg.state_dir, "serve");
	a->vms = calloc(a->cfg.nvms ? a->cfg.nvms : 1, sizeof(*a->vms));
	if (!a->jobs_dir || !a->vms_dir || !a->serve_dir || !a->vms) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if ((ret = mkdir_p(a->cfg.state_dir, 0700)) || (ret = mkdir_p(a->jobs_dir, 0700)) ||
	    (ret = mkdir_p(a->vms_dir, 0700))) {
		snprintf(err, errlen, "%s: cannot create the state directory: %s",
			 a->cfg.state_dir, strerror(-ret));
		return ret;
	}
	{
		char *lk = path_join(a->cfg.state_dir, "agent.lock");

		a->lock_fd = lk ? open(lk, O_RDWR | O_CREAT | O_CLOEXEC, 0600) : -1;
		free(lk);
		if (a->lock_fd < 0 || flock(a->lock_fd, LOCK_EX | LOCK_NB)) {
			snprintf(err, errlen, "%s: %s", a->cfg.state_dir,
				 errno == EWOULDBLOCK ? "another agent uses this state directory" :
				 strerror(errno));
			return -EBUSY;
		}
		/* the lock file names the agent, for scripts and kill(1) */
		if (!ftruncate(a->lock_fd, 0))
			dprintf(a->lock_fd, "%d\n", (int)getpid());
	}
	for (i = 0; i < a->cfg.nvms; i++) {
		a->vms[i].cfg = &a->cfg.vms[i];
		ret = vm_state_load(a->vms_dir, a->cfg.vms[i].name, &a->vms[i].st, err, errlen);
		if (ret) {
			log_msg(LOG_PRIO_WARNING, NULL, "VM %s: state record unreadable, starting from 1: %s",
				  a->cfg.vms[i].name, err);
			vm_state_load("/nonexistent", a->cfg.vms[i].name, &a->vms[i].st, err,
				      errlen);
		}
	}
	ret = load_jobs(a);
	if (ret) {
		snprintf(err, errlen, "%s: cannot read jobs: %s", a->jobs_dir, strerror(-ret));
		return ret;
	}
	ret = push_security_config(&a->tls, a->cfg.psk_file, a->cfg.cert_file,
				   a->cfg.key_file, a->cfg.ca_file, a->cfg.insecure, err, errlen);
	if (ret)
		return ret;

	/* The control socket first: a second agent on it stops here,
	 * before it binds the peer port. */
	ret = control_server_start(a->cfg.control, a->cfg.admin_group, handle, a, &a->ctl,
				   err, errlen);
	if (ret)
		return ret;
	log_msg(LOG_PRIO_INFO, NULL, "control API on %s", a->cfg.control);

	memset(&scfg, 0, sizeof(scfg));
	scfg.listen = a->cfg.listen;
	scfg.tls = a->tls;
	scfg.state_dir = a->serve_dir;
	srv = server_new(&scfg, err, errlen);
	if (!srv)
		return -EINVAL;
	pthread_mutex_lock(&a->lock);
	a->server = srv;
	pthread_mutex_unlock(&a->lock);
	ret = server_listen(a->server, err, errlen);
	if (ret)
		return ret;
	add_exports(a, true);
	ret = pthread_create(&a->server_thread, NULL, server_main, a);
	if (ret) {
		snprintf(err, errlen, "cannot start the server thread: %s", strerror(ret));
		return -ret;
	}
	a->server_running = true;
	log_msg(LOG_PRIO_INFO, NULL, "serving peers on %s (%s)", server_addr(a->server),
		  a->cfg.insecure ? "plain TCP, loopback only" :
		  a->cfg.cert_file ? "TLS 1.3, certificates" : "TLS 1.3, pre-shared key");

	resume_jobs(a);
	ret = pthread_create(&a->sched_thread, NULL, scheduler, a);
	if (ret) {
		snprintf(err, errlen, "cannot start the scheduler: %s", strerror(ret));
		return -ret;
	}
	a->sched_running = true;
	pthread_mutex_lock(&a->lock);
	a->ready = true;
	pthread_mutex_unlock(&a->lock);
	return 0;
}

static void teardown(struct agent *a)
{
	struct ajob *aj;

	pthread_mutex_lock(&a->lock);
	a->stopping = true;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	if (a->ctl)
		control_server_stop(a->ctl);
	if (a->sched_running)
		pthread_join(a->sched_thread, NULL);
	pthread_mutex_lock(&a->lock);
	for (aj = a->jobs; aj; aj = aj->next)
		if (aj->has_thread && !aj->thread_done) {
			aj->stop_req = STOP_SHUTDOWN;
			aj->stop = 1;
		}
	pthread_mutex_unlock(&a->lock);
	for (aj = a->jobs; aj; aj = aj->next)
		if (aj->has_thread) {
			pthread_join(aj->thread, NULL);
			aj->has_thread = false;
		}
	if (a->server_running) {
		server_stop(a->server);
		pthread_join(a->server_thread, NULL);
	}
	if (a->server)
		server_free(a->server);
	while ((aj = a->jobs)) {
		a->jobs = aj->next;
		free_job(aj);
	}
	free(a->vms);
	free(a->jobs_dir);
	free(a->vms_dir);
	free(a->serve_dir);
	if (a->lock_fd >= 0)
		close(a->lock_fd);
	config_free(&a->cfg);
}

/*
 * Run the agent until SIGTERM or SIGINT: load the configuration, detach
 * unless @o->foreground (the parent returns once the child is ready, so
 * systemd's Type=forking and a shell both see setup errors), serve, stop.
 */
int agent_run(const struct agent_options *o, char *err, size_t errlen)
{
	struct agent a;
	int ret, sig, ready[2] = { -1, -1 };
	sigset_t set;

	memset(&a, 0, sizeof(a));
	a.lock_fd = -1;
	a.bwlimit = o->bwlimit;
	a.retention = o->retention_us;

	ret = config_load(o->config, &a.cfg, err, errlen);
	if (ret) {
		config_free(&a.cfg);
		return ret;
	}
	log_use_journal();

	if (!o->foreground) {
		pid_t pid;
		char ok;

		if (pipe2(ready, O_CLOEXEC)) {
			ret = -errno;
			snprintf(err, errlen, "pipe: %s", strerror(errno));
			config_free(&a.cfg);
			return ret;
		}
		pid = fork();
		if (pid < 0) {
			ret = -errno;
			snprintf(err, errlen, "fork: %s", strerror(errno));
			config_free(&a.cfg);
			return ret;
		}
		if (pid > 0) {
			int status;

			close(ready[1]);
			if (read(ready[0], &ok, 1) == 1)
				_exit(0);
			waitpid(pid, &status, 0);
			_exit(2);
		}
		close(ready[0]);
		setsid();
	}

	/* Signals are taken by this thread alone, with sigwait(). */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	pthread_mutex_init(&a.lock, NULL);
	pthread_cond_init(&a.cond, NULL);

	ret = setup(&a, err, errlen);
	if (ret) {
		teardown(&a);
		log_use_plain(); /* the caller reports @err as the CLI does */
		return ret < 0 ? ret : -EINVAL;
	}
	log_msg(LOG_PRIO_INFO, NULL, "agent ready: %u VM(s) from %s, state in %s",
		a.cfg.nvms, o->config, a.cfg.state_dir);
	sd_notify(0, "READY=1");
	if (!o->foreground) {
		int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

		log_use_syslog();
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		if (write(ready[1], "R", 1) != 1)
			log_msg(LOG_PRIO_WARNING, NULL, "cannot tell the parent we are ready");
		close(ready[1]);
	}
	for (;;) {
		if (sigwait(&set, &sig))
			continue;
		if (sig == SIGHUP) {
			log_msg(LOG_PRIO_NOTICE, NULL,
				"SIGHUP: the configuration is read at start only; restart the agent to reload it");
			continue;
		}
		break;
	}
	log_msg(LOG_PRIO_INFO, NULL,
		"signal %d: stopping (running jobs resume at the next start)", sig);
	sd_notify(0, "STOPPING=1");
	teardown(&a);
	pthread_mutex_destroy(&a.lock);
	pthread_cond_destroy(&a.cond);
	log_msg(LOG_PRIO_INFO, NULL, "agent stopped");
	return 0;
}
