/* SPDX-License-Identifier: MIT */
/*
 * methods.c - the control API's methods (docs/control-api.md) and their
 * dispatch.  A method that changes something goes in steps: parse the
 * request (pure, methods.h), check it against the agent's state and act
 * under the agent lock, then reply.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/daemon/cimtime.h"
#include "agent/daemon/internal.h"
#include "agent/daemon/methods.h"
#include "agent/daemon/metrics.h"
#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/sync/proto.h"
#include "agent/sync/push.h"

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
		/* messages quote what the client sent */
		json_kv_string(w, "Error", fmt_one_line(msg));
	}
	json_object_end(w);
}

/* A member of type @t (or null when @nullable); 0, RV_BAD_TYPE, or
 * RV_INVALID_PARAMETER when it is required and missing. */
static unsigned field(const struct jv *req, const char *k, enum jv_type t,
		      bool required, const struct jv **out, char *msg,
		      size_t len)
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

/* --- Resynchronize: parse --- */

/* Every member of Sources is a string. */
static unsigned sources_types(const struct jv *src, char *msg, size_t len)
{
	size_t i;

	for (i = 0; src && i < src->n; i++) {
		if (src->items[i].type != JV_STRING) {
			snprintf(msg, len, "Sources.%s is %s, not string",
				 src->keys[i],
				 jv_type_name(src->items[i].type));
			return RV_BAD_TYPE;
		}
	}
	return 0;
}

/* StartTime @s into *@start: 0 for now (or up to a minute ago). */
static unsigned start_time(const char *s, int64_t now, int64_t *start,
			   char *msg, size_t len)
{
	*start = 0;
	if (!s || !s[0])
		return 0;
	if (start_time_parse(s, start)) {
		snprintf(
			msg, len,
			"StartTime '%s' is neither a CIM datetime (yyyymmddHHMMSS.mmmmmmsUUU) nor ISO 8601",
			s);
		return RV_INVALID_PARAMETER;
	}
	if (*start < now - START_TIME_SLACK_US) {
		snprintf(msg, len, "StartTime '%s' is in the past", s);
		return RV_INVALID_PARAMETER;
	}
	if (*start > now + MAX_AHEAD_US) {
		snprintf(msg, len, "StartTime '%s' is more than 7 days ahead",
			 s);
		return RV_INVALID_PARAMETER;
	}
	if (*start <= now)
		*start = 0;
	return 0;
}

/* Each key of Sources names one of @vm's disks, each value is absolute. */
static unsigned sources_pair(const struct vm_config *vm, const struct jv *src,
			     char *msg, size_t len)
{
	size_t i;
	unsigned k;

	for (i = 0; src && i < src->n; i++) {
		for (k = 0; k < vm->ndisks; k++)
			if (!strcmp(src->keys[i],
				    config_basename(vm->disks[k])))
				break;
		if (k == vm->ndisks) {
			snprintf(
				msg, len,
				"Sources: VM %s has no replication-enabled disk named '%s'",
				vm->name, src->keys[i]);
			return RV_INVALID_PARAMETER;
		}
		if (src->items[i].s[0] != '/') {
			snprintf(msg, len,
				 "Sources.%s: '%s' is not an absolute path",
				 src->keys[i], src->items[i].s);
			return RV_INVALID_PARAMETER;
		}
	}
	return 0;
}

static unsigned parse_resync(const struct agent_config *cfg,
			     const struct jv *req, int64_t now,
			     struct resync_request *out, char *msg, size_t len)
{
	const struct jv *cs, *stv, *src;
	const struct vm_config *vm;
	unsigned rv;

	memset(out, 0, sizeof(*out));
	if ((rv = field(req, "ComputerSystem", JV_STRING, true, &cs, msg,
			len)) ||
	    (rv = field(req, "StartTime", JV_STRING, false, &stv, msg, len)) ||
	    (rv = field(req, "Sources", JV_OBJECT, false, &src, msg, len)) ||
	    (rv = sources_types(src, msg, len)))
		return rv;
	vm = config_find_vm(cfg, cs->s);
	if (!vm) {
		snprintf(msg, len, "no VM named '%s' in %s", cs->s, cfg->path);
		return RV_INVALID_PARAMETER;
	}
	if ((rv = start_time(stv ? stv->s : NULL, now, &out->start, msg,
			     len)) ||
	    (rv = sources_pair(vm, src, msg, len)))
		return rv;
	if (vm_mode(vm) == RM_EXTENDED_REPLICA ||
	    (vm->role == VM_ROLE_REPLICA && !vm->replica)) {
		snprintf(
			msg, len,
			"VM %s is a replica with no extended replica: its primary resynchronizes it",
			vm->name);
		return RV_NOT_SUPPORTED;
	}
	out->vm = vm;
	out->sources = src;
	out->start_text = stv ? stv->s : NULL;
	return 0;
}

/* The messages quote the request's strings: one line, whatever they hold. */
unsigned resync_parse(const struct agent_config *cfg, const struct jv *req,
		      int64_t now, struct resync_request *out, char *msg,
		      size_t len)
{
	unsigned rv = parse_resync(cfg, req, now, out, msg, len);

	if (rv)
		fmt_one_line(msg);
	return rv;
}

/* --- Resynchronize: admit (under the lock) --- */

static bool child_exists(const char *disk)
{
	char path[4096];
	struct stat st;

	snprintf(path, sizeof(path), "%s%s", disk, SERVER_CHILD_SUFFIX);
	return stat(path, &st) == 0;
}

/* Is a disk there and something we can read?  0, RV_NOT_FOUND or
 * RV_FAILED, with @msg. */
static unsigned check_disk(const char *vm, const char *path, char *msg,
			   size_t len)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		snprintf(msg, len, "VM %s: disk %s: %s", vm, path,
			 strerror(errno));
		return errno == ENOENT || errno == ENOTDIR ? RV_NOT_FOUND
							   : RV_FAILED;
	}
	if (fstat(fd, &st) || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
		snprintf(msg, len,
			 "VM %s: disk %s is not a file or block device", vm,
			 path);
		close(fd);
		return RV_FAILED;
	}
	close(fd);
	return 0;
}

/* A replica VM's disks may not be taking a resync from its primary. */
static unsigned replica_idle(struct agent *a, const struct vm_config *vm,
			     char *msg, size_t len)
{
	const char *name;
	unsigned i;

	if (vm->role != VM_ROLE_REPLICA || !a->server)
		return 0;
	for (i = 0; i < vm->ndisks; i++) {
		name = config_basename(vm->disks[i]);
		if (jobs_disk_receiving(a, vm, i)) {
			snprintf(
				msg, len,
				"VM %s: disk %s is receiving from the primary right now",
				vm->name, name);
			return RV_IN_USE;
		}
		/* between the primary's sessions its held copy waits as a
		 * child: a merge could land under our reads */
		if (child_exists(vm->disks[i])) {
			snprintf(
				msg, len,
				"VM %s: disk %s has a resynchronization from the primary under way (%s%s exists)",
				vm->name, name, name, SERVER_CHILD_SUFFIX);
			return RV_IN_USE;
		}
	}
	return 0;
}

/* May @r's VM start a job now, as far as the agent's state goes? */
static unsigned resync_check(struct agent *a, const struct resync_request *r,
			     char *msg, size_t len)
{
	const struct vm_config *vm = r->vm;
	struct vmrt *rt = jobs_vm(a, vm->name);
	struct ajob *aj;
	unsigned rv, i;

	if (a->stopping) {
		snprintf(msg, len, "the agent is stopping");
		return RV_NOT_AVAILABLE;
	}
	aj = jobs_active_of(a, vm->name);
	if (aj) {
		snprintf(msg, len,
			 "VM %s already has resynchronization job %s (%s)",
			 vm->name, aj->j.id, job_state_name(aj->j.state));
		return RV_IN_USE;
	}
	if (!vm->ndisks) {
		snprintf(msg, len, "VM %s has no replication-enabled disks",
			 vm->name);
		return RV_INVALID_STATE;
	}
	if (rt->st.state == RS_FAILOVER || rt->st.state == RS_FAILBACK) {
		snprintf(msg, len, "VM %s is in ReplicationState %u (%s)",
			 vm->name, rt->st.state, repl_state_name(rt->st.state));
		return RV_INVALID_STATE;
	}
	if (rt->discarding) {
		snprintf(msg, len,
			 "VM %s: its held copies are being discarded right now",
			 vm->name);
		return RV_IN_USE;
	}
	for (aj = a->jobs; aj; aj = aj->next) {
		if (aj->discarding && !strcmp(aj->j.vm, vm->name)) {
			snprintf(
				msg, len,
				"VM %s: the cancel of its failed job %s is discarding the recovery side's copies right now",
				vm->name, aj->j.id);
			return RV_IN_USE;
		}
	}
	if ((rv = replica_idle(a, vm, msg, len)))
		return rv;
	for (i = 0; i < vm->ndisks; i++) {
		const char *name = config_basename(vm->disks[i]);
		const struct jv *s =
			r->sources ? jv_get(r->sources, name) : NULL;

		if ((rv = check_disk(vm->name, s ? s->s : vm->disks[i], msg,
				     len)))
			return rv;
	}
	return 0;
}

/* Create, record and (unless scheduled) start the job; it joins the
 * list only once all of that worked. */
static unsigned resync_create(struct agent *a, const struct resync_request *r,
			      int64_t now, struct ajob **out, char *msg,
			      size_t len)
{
	struct ajob *aj = jobs_new(a, r->vm, r->sources, r->start, false);
	int ret;

	if (!aj) {
		snprintf(msg, len, "out of memory");
		return RV_NO_MEMORY;
	}
	ret = job_save(a->jobs_dir, &aj->j, now);
	if (ret) {
		snprintf(msg, len, "cannot record the job in %s: %s",
			 a->jobs_dir, strerror(-ret));
		jobs_free(aj);
		return ret == -ENOMEM ? RV_NO_MEMORY : RV_FAILED;
	}
	if (!r->start) {
		ret = runner_start(a, aj);
		if (ret) {
			job_remove(a->jobs_dir, aj->j.id);
			jobs_free(aj);
			snprintf(msg, len, "cannot start the job: %s",
				 strerror(-ret));
			return ret == -EAGAIN || ret == -ENOMEM ? RV_NO_MEMORY
								: RV_FAILED;
		}
	}
	jobs_add(a, aj);
	jobs_set_vm(a, jobs_vm(a, r->vm->name),
		    r->start ? RS_RESYNC_REQUIRED : RS_RESYNCHRONIZING);
	pthread_cond_broadcast(&a->cond);
	jobs_notify_status(a);
	*out = aj;
	return 0;
}

/* --- Resynchronize: reply --- */

static void resync_reply_started(const struct control_caller *who,
				 const struct resync_request *r,
				 const struct ajob *aj, struct json_writer *w)
{
	log_msg(LOG_PRIO_INFO, NULL,
		"uid %u: Resynchronize %s: job %s (JobType %u) %s%s",
		(unsigned)who->uid, r->vm->name, aj->j.id, aj->j.type,
		r->start ? "scheduled for " : "started",
		r->start ? r->start_text : "");
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", RV_JOB_STARTED);
	json_kv_string(w, "Job", aj->j.id);
	json_object_end(w);
}

static void resync_reply_refused(const struct control_caller *who, unsigned rv,
				 char *msg, struct json_writer *w)
{
	fmt_one_line(msg); /* Sources paths of the request, say */
	log_msg(LOG_PRIO_NOTICE, NULL,
		"uid %u: Resynchronize refused with %u: %s", (unsigned)who->uid,
		rv, msg);
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", rv);
	json_kv_null(w, "Job");
	json_kv_string(w, "Error", msg);
	json_object_end(w);
}

static void do_resynchronize(struct agent *a, const struct control_caller *who,
			     const struct jv *req, struct json_writer *w)
{
	struct resync_request r;
	struct ajob *aj = NULL;
	int64_t now = wall_us();
	char msg[1024];
	unsigned rv;

	rv = resync_parse(&a->cfg, req, now, &r, msg, sizeof(msg));
	if (rv) {
		resync_reply_refused(who, rv, msg, w);
		return;
	}
	pthread_mutex_lock(&a->lock);
	rv = resync_check(a, &r, msg, sizeof(msg));
	if (!rv)
		rv = resync_create(a, &r, now, &aj, msg, sizeof(msg));
	if (!rv)
		resync_reply_started(who, &r, aj, w);
	pthread_mutex_unlock(&a->lock);
	if (rv)
		resync_reply_refused(who, rv, msg, w);
}

/* --- RequestStateChange --- */

static unsigned parse_state_change(const struct jv *req,
				   struct state_change_request *out, char *msg,
				   size_t len)
{
	const struct jv *id, *rs, *to;
	unsigned rv;

	memset(out, 0, sizeof(*out));
	if ((rv = field(req, "Job", JV_STRING, true, &id, msg, len)) ||
	    (rv = field(req, "RequestedState", JV_NUMBER, true, &rs, msg,
			len)) ||
	    (rv = field(req, "TimeoutPeriod", JV_STRING, false, &to, msg, len)))
		/* RequestStateChange has its own number for a missing member */
		return rv == RV_INVALID_PARAMETER ? RSC_INVALID_PARAMETER : rv;
	if (!rs->is_int || rs->i < 0 || rs->i > 65535) {
		snprintf(msg, len, "RequestedState %g is not a state", rs->num);
		return RSC_INVALID_PARAMETER;
	}
	if (to && cim_interval_parse(to->s, &out->timeout)) {
		snprintf(
			msg, len,
			"TimeoutPeriod '%s' is not a CIM interval (ddddddddHHMMSS.mmmmmm:000)",
			to->s);
		return RSC_INVALID_PARAMETER;
	}
	out->job = id->s;
	out->requested = (unsigned)rs->i;
	return 0;
}

unsigned state_change_parse(const struct jv *req,
			    struct state_change_request *out, char *msg,
			    size_t len)
{
	unsigned rv = parse_state_change(req, out, msg, len);

	if (rv)
		fmt_one_line(msg);
	return rv;
}

unsigned state_change_check(const struct job *j, unsigned requested,
			    unsigned *next, char *msg, size_t len)
{
	unsigned rv = job_transition(j->state, requested, next);

	msg[0] = '\0';
	if (rv != RSC_OK && rv != RSC_STARTED) {
		snprintf(msg, len, "job %s is %s: RequestedState %u %s", j->id,
			 job_state_name(j->state), requested, rsc_name(rv));
		return rv;
	}
	if (!j->cancellable && requested != REQ_START &&
	    !job_state_final(j->state) && j->state != JS_SUSPENDED) {
		snprintf(msg, len,
			 "job %s is merging and can no longer be stopped",
			 j->id);
		return RSC_INVALID_TRANSITION;
	}
	return rv;
}

/* Under the lock: Terminate or Kill (@requested) a job that goes to
 * @next.  A job that never ran just finishes; a suspended one is killed
 * where it stands or gets a runner for the discard; a running one is
 * told to stop.  Returns @rv, or RSC_FAILED with @msg. */
static unsigned cancel_job(struct agent *a, struct ajob *aj, unsigned requested,
			   unsigned next, unsigned rv, char *msg, size_t len)
{
	struct vmrt *vm = jobs_vm(a, aj->j.vm);
	int ret;

	/* an admin's cancel is not undone by the next auto-resync pass */
	if (vm)
		vm->last_auto = wall_us();
	if (aj->j.state == JS_NEW) {
		jobs_finish(
			a, aj, next, 0,
			requested == REQ_KILL ? "The job was killed."
					      : "The job was cancelled.",
			"cancelled before it started; the VM needs a resynchronization");
		return rv;
	}
	if (aj->j.state == JS_SUSPENDED) {
		runner_reap(aj);
		if (requested == REQ_KILL) {
			aj->stop_req = REQ_KILL;
			runner_handle_stop(a, aj);
			return rv;
		}
		jobs_set_state(aj, JS_SHUTTING_DOWN);
		aj->j.phase = JOB_PHASE_DISCARD;
		jobs_persist(a, aj);
		ret = runner_start(a, aj);
		if (ret) {
			snprintf(msg, len, "cannot cancel job %s: %s", aj->j.id,
				 strerror(-ret));
			return RSC_FAILED;
		}
		return rv;
	}
	if (aj->j.state == JS_SHUTTING_DOWN && requested == REQ_TERMINATE)
		return rv;
	aj->stop_req = requested;
	aj->stop = 1;
	jobs_set_state(aj, JS_SHUTTING_DOWN);
	jobs_persist(a, aj);
	return rv;
}

/* Under the lock: carry out a transition state_change_check() allowed
 * (@rv RSC_OK or RSC_STARTED, toward @next).  Returns the ReturnValue. */
static unsigned state_change_apply(struct agent *a, struct ajob *aj,
				   unsigned requested, unsigned next,
				   unsigned rv, char *msg, size_t len)
{
	int ret;

	switch (requested) {
	case REQ_START: /* Suspended -> Running */
		ret = runner_start(a, aj);
		if (ret) {
			snprintf(msg, len, "cannot resume job %s: %s", aj->j.id,
				 strerror(-ret));
			return ret == -EBUSY ? RSC_BUSY : RSC_FAILED;
		}
		jobs_set_vm(a, jobs_vm(a, aj->j.vm), RS_RESYNCHRONIZING);
		break;
	case REQ_SUSPEND:
		aj->stop_req = REQ_SUSPEND;
		aj->stop = 1;
		break;
	case REQ_TERMINATE:
	case REQ_KILL:
		rv = cancel_job(a, aj, requested, next, rv, msg, len);
		break;
	}
	jobs_notify_status(a);
	return rv;
}

/* Under the lock: has a requested transition come to its end? */
static bool transition_done(const struct ajob *aj, unsigned requested)
{
	switch (requested) {
	case REQ_START:
		return aj->j.state == JS_RUNNING ||
		       job_state_final(aj->j.state);
	case REQ_SUSPEND:
		return aj->j.state == JS_SUSPENDED ||
		       job_state_final(aj->j.state);
	}
	return job_state_final(aj->j.state);
}

/* Under the lock: wait up to @timeout for the transition to end.
 * RSC_OK, or RSC_TIMEOUT with @msg. */
static unsigned state_change_wait(struct agent *a, struct ajob *aj,
				  unsigned requested, int64_t timeout,
				  char *msg, size_t len)
{
	int64_t deadline = wall_us() + timeout;

	while (!transition_done(aj, requested) && !a->stopping) {
		struct timespec ts = { .tv_sec = deadline / 1000000,
				       .tv_nsec = (deadline % 1000000) * 1000 };

		if (pthread_cond_timedwait(&a->cond, &a->lock, &ts) ==
		    ETIMEDOUT)
			break;
	}
	if (transition_done(aj, requested))
		return RSC_OK;
	snprintf(msg, len,
		 "job %s is %s: the transition goes on in the background",
		 aj->j.id, job_state_name(aj->j.state));
	return RSC_TIMEOUT;
}

/* Under the lock: may the cancel of failed job @aj discard the recovery
 * side's copies?  Only while they are still its own: no later job of the
 * VM (running or finished) has taken them over.  RSC_OK or 4097/4099. */
static unsigned discard_allowed(struct agent *a, struct ajob *aj, char *msg,
				size_t len)
{
	struct ajob *it;

	if (aj->discarding) {
		snprintf(msg, len,
			 "job %s: its copies are being discarded right now",
			 aj->j.id);
		return RSC_BUSY;
	}
	for (it = a->jobs; it; it = it->next) {
		if (it == aj || strcmp(it->j.vm, aj->j.vm))
			continue;
		if (ajob_active(it) || it->j.submitted > aj->j.submitted) {
			snprintf(
				msg, len,
				"job %s: a later job of VM %s (%s) owns the recovery side's copies now",
				aj->j.id, aj->j.vm, it->j.id);
			return RSC_INVALID_TRANSITION;
		}
	}
	return RSC_OK;
}

/*
 * Under the lock (dropped while the sessions run): RequestStateChange 4
 * on a job that ended in Exception.  Its held copies on the recovery side
 * would otherwise fill that filesystem until a later job of the VM, so
 * they are discarded now (DISCARD sessions, one try each: the caller
 * waits) and the job's kept clones go too; the next resync starts over.
 * The job stays Exception and its ErrorDescription says what was done.
 * RSC_OK, or RSC_FAILED with @msg when a DISCARD failed.
 */
static unsigned discard_failed(struct agent *a, struct ajob *aj, char *msg,
			       size_t len)
{
	char err[1024], desc[2400];
	unsigned i, rv;
	int ret = 0;

	rv = discard_allowed(a, aj, msg, len);
	if (rv)
		return rv;
	aj->discarding = true;
	pthread_mutex_unlock(&a->lock);
	for (i = 0; i < aj->j.ndisks && !ret; i++) {
		ret = runner_session_once(aj, i, PUSH_DISCARD, err,
					  sizeof(err));
		if (ret)
			snprintf(
				msg, len,
				"job %s: cannot discard the copy of %s held by %s: %s",
				aj->j.id, aj->j.disks[i].name, aj->j.peer, err);
	}
	pthread_mutex_lock(&a->lock);
	aj->discarding = false;
	pthread_cond_broadcast(&a->cond);
	if (ret) {
		log_msg(LOG_PRIO_WARNING, NULL, "%s", msg);
		return RSC_FAILED;
	}
	/* nothing is left to resume from: the next job starts over */
	jobs_drop_clones(a, aj);
	for (i = 0; i < aj->j.ndisks; i++) {
		aj->j.disks[i].started = false;
		aj->j.disks[i].sent = false;
	}
	snprintf(
		desc, sizeof(desc),
		"%s; RequestStateChange 4: the recovery side's copies were discarded",
		aj->j.error_desc ? aj->j.error_desc : "failed");
	free(aj->j.error_desc);
	aj->j.error_desc = strdup(desc);
	jobs_persist(a, aj);
	log_msg(LOG_PRIO_INFO, NULL,
		"job %s (VM %s): failed job cancelled: the copies held by %s were discarded",
		aj->j.id, aj->j.vm, aj->j.peer);
	msg[0] = '\0';
	return RSC_OK;
}

static void do_request_state_change(struct agent *a,
				    const struct control_caller *who,
				    const struct jv *req, struct json_writer *w)
{
	struct state_change_request r;
	struct ajob *aj;
	unsigned rv, next;
	char msg[1600];

	rv = state_change_parse(req, &r, msg, sizeof(msg));
	if (rv) {
		reply_rv(w, rv, "%s", msg);
		return;
	}
	pthread_mutex_lock(&a->lock);
	aj = jobs_find(a, r.job);
	if (!aj) {
		pthread_mutex_unlock(&a->lock);
		reply_rv(w, RSC_INVALID_PARAMETER,
			 "no job %s (finished jobs stay 5 minutes)", r.job);
		return;
	}
	rv = state_change_check(&aj->j, r.requested, &next, msg, sizeof(msg));
	if (rv != RSC_OK && rv != RSC_STARTED)
		goto out;
	log_msg(LOG_PRIO_INFO, NULL,
		"uid %u: RequestStateChange %u on job %s (%s)",
		(unsigned)who->uid, r.requested, aj->j.id,
		job_state_name(aj->j.state));
	if (aj->j.state == JS_EXCEPTION && r.requested == REQ_TERMINATE) {
		rv = discard_failed(a, aj, msg, sizeof(msg));
		goto out;
	}
	if (next == aj->j.state && rv == RSC_OK)
		goto out; /* already there */
	rv = state_change_apply(a, aj, r.requested, next, rv, msg, sizeof(msg));
	if (rv == RSC_STARTED && r.timeout > 0)
		rv = state_change_wait(a, aj, r.requested, r.timeout, msg,
				       sizeof(msg));
out:
	pthread_mutex_unlock(&a->lock);
	reply_rv(w, rv, msg[0] ? "%s" : NULL, msg);
}

/* --- jobs and VMs --- */

static void do_get_job(struct agent *a, const struct jv *req,
		       struct json_writer *w)
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
	aj = jobs_find(a, id->s);
	if (!aj) {
		pthread_mutex_unlock(&a->lock);
		reply_rv(
			w, RV_INVALID_PARAMETER,
			"no job %s (finished jobs stay visible for %lld s, then only in the log)",
			id->s, (long long)(a->retention / 1000000));
		return;
	}
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", RV_OK);
	json_key(w, "Instance");
	job_to_json(w, &aj->j, wall_us());
	json_object_end(w);
	pthread_mutex_unlock(&a->lock);
}

static void do_list_jobs(struct agent *a, const struct jv *req,
			 struct json_writer *w)
{
	const struct jv *cs;
	const struct vm_config *vm = NULL;
	struct ajob *aj;
	int64_t now = wall_us();
	char msg[256];
	unsigned rv;

	if ((rv = field(req, "ComputerSystem", JV_STRING, false, &cs, msg,
			sizeof(msg)))) {
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

/* Under the lock: the state GetVM shows (a replica receiving is 10; a
 * disk whose merge is pending and in no session makes it Critical). */
static void vm_json(struct agent *a, struct vmrt *rt, struct json_writer *w)
{
	struct vm_state st = rt->st;
	struct vm_disk_status *ds = NULL;
	bool receiving = false;
	unsigned i;

	if (held_status(a, rt, &ds))
		log_msg(LOG_PRIO_WARNING, NULL,
			"VM %s: out of memory for its held copies",
			rt->cfg->name);
	for (i = 0; rt->cfg->role != VM_ROLE_PRIMARY && i < rt->cfg->ndisks;
	     i++) {
		if (!jobs_disk_receiving(a, rt->cfg, i))
			continue;
		receiving = true;
		if (ds) {
			ds[i].in_session = true;
			ds[i].merge_note =
				"merge pending: a session of the primary is merging";
		}
	}
	if (receiving && !jobs_active_of(a, rt->cfg->name)) {
		st.state = RS_RESYNCHRONIZING;
		st.health = vm_health_for(st.state);
	}
	vm_to_json(w, rt->cfg, &st, ds);
	held_status_free(ds, rt->cfg->ndisks);
}

/* The configured VM a request's ComputerSystem names; NULL after replying
 * with why not (a missing member, or no such VM). */
static const struct vm_config *request_vm(struct agent *a, const struct jv *req,
					  struct json_writer *w)
{
	const struct vm_config *vm;
	const struct jv *cs;
	char msg[256];
	unsigned rv;

	if ((rv = field(req, "ComputerSystem", JV_STRING, true, &cs, msg,
			sizeof(msg)))) {
		reply_rv(w, rv, "%s", msg);
		return NULL;
	}
	vm = config_find_vm(&a->cfg, cs->s);
	if (!vm)
		reply_rv(w, RV_INVALID_PARAMETER, "no VM named '%s' in %s",
			 cs->s, a->cfg.path);
	return vm;
}

/*
 * GetVM's Authorization: who may open the VM's disks here (a served
 * VM), or which key its own sessions use (a primary).  Paths and
 * patterns only, never key material.
 */
static void vm_auth_json(struct agent *a, const struct vm_config *vm,
			 struct json_writer *w)
{
	bool primary = vm->role == VM_ROLE_PRIMARY;
	char desc[1024];
	size_t n = 0;
	unsigned i;

	if (a->cfg.insecure)
		snprintf(desc, sizeof(desc),
			 "plain TCP (insecure): any peer on loopback");
	else if (a->cfg.cert_file && primary)
		snprintf(desc, sizeof(desc),
			 "sessions use the agent certificate %s",
			 a->cfg.cert_file);
	else if (a->cfg.cert_file && !vm->nallow)
		snprintf(desc, sizeof(desc), "any certificate of the CA %s",
			 a->cfg.ca_file);
	else if (a->cfg.cert_file)
		for (i = 0; i < vm->nallow && n < sizeof(desc); i++)
			n += (size_t)snprintf(
				desc + n, sizeof(desc) - n, "%s%s",
				i ? ", " : "certificates matching: ",
				vm->allow[i]);
	else if (vm->psk_file)
		snprintf(desc, sizeof(desc), "%sown key file %s",
			 primary ? "sessions use its " : "", vm->psk_file);
	else
		snprintf(desc, sizeof(desc), "%sagent key %s",
			 primary ? "sessions use the " : "", a->cfg.psk_file);
	json_object_begin(w);
	json_kv_string(w, "Description", desc);
	json_key(w, "Kind");
	json_string(w, a->cfg.insecure ? "insecure"
		       : a->cfg.cert_file
			       ? (vm->nallow ? "allow" : "any-certificate")
		       : vm->psk_file ? "own-key"
				      : "agent-key");
	json_key(w, "KeyFile");
	if (a->cfg.insecure || a->cfg.cert_file)
		json_null(w);
	else
		json_string(w, vm->psk_file ? vm->psk_file : a->cfg.psk_file);
	json_key(w, "Allow");
	json_array_begin(w);
	for (i = 0; i < vm->nallow; i++)
		json_string(w, vm->allow[i]);
	json_array_end(w);
	json_object_end(w);
}

static void do_get_vm(struct agent *a, const struct jv *req,
		      struct json_writer *w)
{
	const struct vm_config *vm = request_vm(a, req, w);

	if (!vm)
		return;
	pthread_mutex_lock(&a->lock);
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", RV_OK);
	json_key(w, "Instance");
	vm_json(a, jobs_vm(a, vm->name), w);
	json_key(w, "Authorization");
	vm_auth_json(a, vm, w);
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

/* DiscardHeldCopies: `vm discard` on the recovery agent. */
static void do_discard_held(struct agent *a, const struct control_caller *who,
			    const struct jv *req, struct json_writer *w)
{
	const struct vm_config *vm = request_vm(a, req, w);

	if (!vm)
		return;
	log_msg(LOG_PRIO_INFO, NULL, "uid %u: DiscardHeldCopies %s",
		(unsigned)who->uid, vm->name);
	held_discard(a, jobs_vm(a, vm->name), w);
}

static void
do_request_replication_state_change(struct agent *a,
				    const struct control_caller *who,
				    const struct jv *req, struct json_writer *w)
{
	const struct vm_config *vm;
	const struct jv *cs, *rs;
	struct ajob *aj;
	char msg[512];
	unsigned rv;

	if ((rv = field(req, "ComputerSystem", JV_STRING, true, &cs, msg,
			sizeof(msg))) ||
	    (rv = field(req, "RequestedState", JV_NUMBER, true, &rs, msg,
			sizeof(msg)))) {
		reply_rv(w, rv, "%s", msg);
		return;
	}
	vm = config_find_vm(&a->cfg, cs->s);
	if (!vm) {
		reply_rv(w, RV_INVALID_PARAMETER, "no VM named '%s' in %s",
			 cs->s, a->cfg.path);
		return;
	}
	if (!rs->is_int || rs->i < 0 || rs->i > RS_MAX ||
	    !vm_state_settable((unsigned)rs->i)) {
		reply_rv(
			w, RV_INVALID_PARAMETER,
			"RequestedState %g cannot be set (1-9 and 12-14; 10 and 11 belong to jobs)",
			rs->num);
		return;
	}
	pthread_mutex_lock(&a->lock);
	aj = jobs_active_of(a, vm->name);
	if (aj) {
		pthread_mutex_unlock(&a->lock);
		reply_rv(w, RV_IN_USE, "VM %s has job %s (%s)", vm->name,
			 aj->j.id, job_state_name(aj->j.state));
		return;
	}
	log_msg(LOG_PRIO_INFO, NULL,
		"uid %u: RequestReplicationStateChange %s to %lld",
		(unsigned)who->uid, vm->name, (long long)rs->i);
	jobs_set_vm(a, jobs_vm(a, vm->name), (unsigned)rs->i);
	a->recheck = true; /* a VM marked 9 inside its window starts now */
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	reply_rv(w, RV_OK, NULL);
}

/* GetAgent: what `hvresync status` shows above the VMs. */
static void do_get_agent(struct agent *a, struct json_writer *w)
{
	struct metrics_counters c;
	bool primary = false, replica = false;
	unsigned i, in, out, jobs = 0;
	struct ajob *aj;

	metrics_get_counters(&c);
	pthread_mutex_lock(&a->lock);
	for (i = 0; i < a->cfg.nvms; i++) {
		if (a->cfg.vms[i].role == VM_ROLE_PRIMARY)
			primary = true;
		else
			replica = true;
	}
	for (aj = a->jobs; aj; aj = aj->next)
		jobs += ajob_active(aj);
	metrics_sessions(a, &in, &out);
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", RV_OK);
	json_key(w, "Instance");
	json_object_begin(w);
	json_kv_string(w, "Role",
		       primary && replica ? "primary and replica"
		       : primary	  ? "primary"
		       : replica	  ? "replica"
					  : "none");
	json_kv_u64(w, "ProcessID", (uint64_t)getpid());
	job_kv_time(w, "StartTime", c.started);
	json_kv_string(w, "Listen",
		       a->server && server_addr(a->server)[0]
			       ? server_addr(a->server)
			       : a->cfg.listen);
	json_kv_string(w, "Security",
		       a->cfg.insecure	  ? "plain TCP, loopback only"
		       : a->cfg.cert_file ? "TLS 1.3, certificates"
					  : "TLS 1.3, pre-shared key");
	json_kv_string(w, "Control", a->cfg.control);
	json_kv_string(w, "StateDir", a->cfg.state_dir);
	json_kv_string(w, "ConfigFile", a->cfg.path);
	json_kv_string(w, "MetricsFile",
		       a->cfg.metrics_file && a->cfg.metrics_file[0]
			       ? a->cfg.metrics_file
			       : NULL);
	json_kv_u64(w, "VMs", a->cfg.nvms);
	json_kv_u64(w, "ActiveJobs", jobs);
	json_kv_u64(w, "PeerSessionsIn", in);
	json_kv_u64(w, "PeerSessionsOut", out);
	json_kv_u64(w, "RefusedControlConnections", c.refused_control);
	json_kv_u64(w, "JobsFailed", c.jobs_failed);
	json_kv_u64(w, "JobsCompleted", c.jobs_completed);
	json_kv_u64(w, "JobsCancelled", c.jobs_cancelled);
	json_object_end(w);
	json_object_end(w);
	pthread_mutex_unlock(&a->lock);
}

/* Methods that change nothing. */
static bool read_only(const char *m)
{
	return !strcmp(m, "GetVM") || !strcmp(m, "ListVMs") ||
	       !strcmp(m, "GetJob") || !strcmp(m, "ListJobs") ||
	       !strcmp(m, "GetAgent");
}

void methods_handle(void *ctx, const struct control_caller *who,
		    const struct jv *req, struct json_writer *w)
{
	struct agent *a = ctx;
	const char *m = jv_get(req, "Method")->s;
	bool ready, reads;

	pthread_mutex_lock(&a->lock);
	ready = a->ready && !a->stopping;
	/* while interrupted merges are finished at start, what only reads
	 * is answered: GetVM shows those disks Critical */
	reads = ready || (a->merging && !a->stopping);
	pthread_mutex_unlock(&a->lock);
	if (!ready && !(reads && read_only(m))) {
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
	else if (!strcmp(m, "DiscardHeldCopies"))
		do_discard_held(a, who, req, w);
	else if (!strcmp(m, "GetAgent"))
		do_get_agent(a, w);
	else
		reply_rv(w, RV_NOT_SUPPORTED, "unknown Method '%.100s'", m);
}
