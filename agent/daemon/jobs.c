/* SPDX-License-Identifier: MIT */
/*
 * jobs.c - the agent's job list and its VMs' replication states, kept
 * under the agent lock and written to the state dir at every change, so a
 * restarted agent picks up where it stopped (see internal.h).
 */
#include <errno.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "agent/daemon/internal.h"
#include "agent/daemon/joblog.h"
#include "agent/daemon/metrics.h"
#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/sync/common.h"
#include "vhdx/vhdx.h"
#include "agent/sync/proto.h"

struct vmrt *jobs_vm(struct agent *a, const char *name)
{
	unsigned i;

	for (i = 0; i < a->cfg.nvms; i++)
		if (!strcmp(a->vms[i].cfg->name, name))
			return &a->vms[i];
	return NULL;
}

struct ajob *jobs_find(struct agent *a, const char *id)
{
	struct ajob *aj;

	for (aj = a->jobs; aj; aj = aj->next)
		if (!strcasecmp(aj->j.id, id))
			return aj;
	return NULL;
}

struct ajob *jobs_active_of(struct agent *a, const char *vm)
{
	struct ajob *aj;

	for (aj = a->jobs; aj; aj = aj->next)
		if (ajob_active(aj) && !strcmp(aj->j.vm, vm))
			return aj;
	return NULL;
}

void jobs_free(struct ajob *aj)
{
	job_clear(&aj->j);
	free(aj);
}

void jobs_add(struct agent *a, struct ajob *aj)
{
	aj->next = a->jobs;
	a->jobs = aj;
}

/* The disks a new job reads: the configured ones, or what @sources
 * (already checked to pair with them) names instead. */
static int new_job_disks(struct job *j, const struct vm_config *vm,
			 const struct jv *sources)
{
	unsigned i;

	j->disks = calloc(vm->ndisks, sizeof(*j->disks));
	if (!j->disks)
		return -ENOMEM;
	j->ndisks = vm->ndisks;
	for (i = 0; i < vm->ndisks; i++) {
		const char *name = config_basename(vm->disks[i]);
		const struct jv *src = sources ? jv_get(sources, name) : NULL;

		j->disks[i].name = strdup(name);
		j->disks[i].path = strdup(src ? src->s : vm->disks[i]);
		if (!j->disks[i].name || !j->disks[i].path)
			return -ENOMEM;
	}
	return 0;
}

struct ajob *jobs_new(struct agent *a, const struct vm_config *vm,
		      const struct jv *sources, int64_t start, bool autor)
{
	struct ajob *aj = calloc(1, sizeof(*aj));
	struct job *j;
	int64_t now = wall_us();

	if (!aj)
		return NULL;
	aj->a = a;
	j = &aj->j;
	if (job_new_id(j->id))
		goto fail;
	j->vm = strdup(vm->name);
	j->vm_id = vm->id ? strdup(vm->id) : NULL;
	j->peer = strdup(vm->replica);
	if (!j->vm || (vm->id && !j->vm_id) || !j->peer ||
	    new_job_disks(j, vm, sources))
		goto fail;
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
	jobs_free(aj);
	return NULL;
}

void jobs_persist(struct agent *a, struct ajob *aj)
{
	int ret = job_save(a->jobs_dir, &aj->j, wall_us());

	if (ret)
		log_msg(LOG_PRIO_ERR, NULL, "job %s: cannot save to %s: %s",
			aj->j.id, a->jobs_dir, strerror(-ret));
}

void jobs_set_vm(struct agent *a, struct vmrt *vm, unsigned state)
{
	int ret;

	if (!vm)
		return;
	if (vm->st.state != state)
		log_msg(LOG_PRIO_INFO, NULL,
			"VM %s: ReplicationState %u (%s) -> %u (%s)",
			vm->cfg->name, vm->st.state,
			repl_state_name(vm->st.state), state,
			repl_state_name(state));
	vm_state_set(&vm->st, state, wall_us());
	metrics_poke();
	ret = vm_state_save(a->vms_dir, vm->cfg->name, &vm->st);
	if (ret)
		log_msg(LOG_PRIO_ERR, NULL,
			"VM %s: cannot save its state in %s: %s", vm->cfg->name,
			a->vms_dir, strerror(-ret));
}

void jobs_notify_status(struct agent *a)
{
	unsigned run = 0, sched = 0, susp = 0;
	struct ajob *aj;

	for (aj = a->jobs; aj; aj = aj->next) {
		if (aj->j.state == JS_NEW)
			sched++;
		else if (aj->j.state == JS_SUSPENDED)
			susp++;
		else if (ajob_active(aj))
			run++;
	}
	sd_notifyf(0, "STATUS=%u job(s) running, %u scheduled, %u suspended",
		   run, sched, susp);
}

void jobs_set_state(struct ajob *aj, unsigned state)
{
	int64_t now = wall_us();

	if (aj->j.state == state)
		return;
	/* ElapsedTime counts running time only */
	if (aj->j.running_since && state != JS_RUNNING &&
	    state != JS_STARTING && state != JS_SHUTTING_DOWN) {
		aj->j.elapsed += now - aj->j.running_since;
		aj->j.running_since = 0;
	}
	aj->j.state = state;
	aj->j.last_change = now;
	pthread_cond_broadcast(&aj->a->cond);
	metrics_poke(); /* the metrics file follows every state change */
}

void joblog(int prio, const struct job *j, const char *msgid, const char *disk,
	    const char *fmt, ...)
{
	const char *names[LOG_FIELDS_MAX_DISKS];
	struct log_fields f = { .vm = j->vm,
				.job = j->id,
				.message_id = msgid };
	unsigned i;
	va_list ap;

	if (disk) {
		names[0] = disk;
		f.ndisks = 1;
	} else {
		for (i = 0; i < j->ndisks && i < LOG_FIELDS_MAX_DISKS; i++)
			names[i] = j->disks[i].name;
		f.ndisks = i;
	}
	f.disks = names;
	va_start(ap, fmt);
	log_fields_vmsg(prio, NULL, &f, fmt, ap);
	va_end(ap);
}

/* The MESSAGE_ID of a job's final @state. */
static const char *final_msgid(unsigned state)
{
	switch (state) {
	case JS_COMPLETED:
	case JS_COMPLETED_WARNINGS:
		return MSGID_JOB_COMPLETED;
	case JS_EXCEPTION:
		return MSGID_JOB_FAILED;
	}
	return MSGID_JOB_CANCELLED; /* Terminated, Killed */
}

/* The finished job as one JSON line: the journal's record of it once the
 * job's TimeBeforeRemoval passed. */
static void log_job_json(struct ajob *aj, const char *what, const char *disk)
{
	struct json_writer w;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	unsigned state = aj->j.state;

	if (!f)
		return;
	json_init(&w, f, 0);
	job_to_json(&w, &aj->j, wall_us());
	json_end(&w);
	fclose(f);
	if (len && buf[len - 1] == '\n')
		buf[len - 1] = '\0';
	joblog(state == JS_EXCEPTION		? LOG_PRIO_ERR
	       : state == JS_COMPLETED_WARNINGS ? LOG_PRIO_WARNING
						: LOG_PRIO_INFO,
	       &aj->j, final_msgid(state), disk, "job %s %s: %s", aj->j.id,
	       what, buf ? buf : "");
	free(buf);
}

bool jobs_has_clones(const struct ajob *aj)
{
	unsigned i;

	for (i = 0; i < aj->j.ndisks; i++)
		if (aj->j.disks[i].clone)
			return true;
	return false;
}

void jobs_drop_clones(struct agent *a, struct ajob *aj)
{
	char dir[4096];
	unsigned i;

	for (i = 0; i < aj->j.ndisks; i++) {
		struct job_disk *d = &aj->j.disks[i];
		char *slash;

		if (!d->clone)
			continue;
		if (unlink(d->clone) && errno != ENOENT)
			log_msg(LOG_PRIO_WARNING, NULL,
				"job %s: cannot remove its snapshot %s: %s",
				aj->j.id, d->clone, strerror(errno));
		/* the name must be gone for good before the record says
		 * so, or a crash leaves a clone nobody owns */
		snprintf(dir, sizeof(dir), "%s", d->clone);
		slash = strrchr(dir, '/');
		if (slash && slash != dir) {
			*slash = '\0';
			vhdx_fsync_dir(dir);
		}
		free(d->clone);
		d->clone = NULL;
	}
}

void jobs_finish(struct agent *a, struct ajob *aj, unsigned state,
		 unsigned code, const char *summary, const char *desc)
{
	jobs_finish_disk(a, aj, state, code, summary, desc, NULL);
}

void jobs_finish_disk(struct agent *a, struct ajob *aj, unsigned state,
		      unsigned code, const char *summary, const char *desc,
		      const char *disk)
{
	struct vmrt *vm = jobs_vm(a, aj->j.vm);
	int64_t now = wall_us();

	/* Snapshots live as long as the job runs, whatever its end, but
	 * for a job the network gave up on: the next job takes them over
	 * (or they go when this one is removed). */
	if (!(state == JS_EXCEPTION && aj->keep_snap))
		jobs_drop_clones(a, aj);
	jobs_set_state(aj, state);
	aj->j.finished = now;
	aj->j.cancellable = false;
	aj->j.error_code = code;
	free(aj->j.error_summary);
	free(aj->j.error_desc);
	aj->j.error_summary = summary ? strdup(summary) : NULL;
	aj->j.error_desc = desc ? strdup(desc) : NULL;
	if (state == JS_COMPLETED || state == JS_COMPLETED_WARNINGS) {
		aj->j.percent = 100;
		aj->j.phase = JOB_PHASE_DONE;
	}
	if (vm) {
		memcpy(vm->st.last_job, aj->j.id, JOB_ID_LEN);
		vm->st.last_job_state = state;
		if (state == JS_COMPLETED)
			vm_state_success(&vm->st, &aj->j, now);
		jobs_set_vm(a, vm,
			    state == JS_COMPLETED ? RS_REPLICATING
						  : RS_RESYNC_REQUIRED);
	}
	jobs_persist(a, aj);
	metrics_count_finished(state);
	log_job_json(aj, job_state_name(state), disk);
	jobs_notify_status(a);
}

/* Is @name a job record's file name, "GUID.json"? */
static bool job_file_name(const char *name)
{
	size_t len = strlen(name);

	return len == JOB_ID_LEN - 1 + 5 &&
	       !strcmp(name + JOB_ID_LEN - 1, ".json");
}

/* Read one job record into the list; a record that does not read is
 * logged and skipped.  0 or -ENOMEM. */
static int load_job(struct agent *a, const char *name)
{
	struct ajob *aj = calloc(1, sizeof(*aj));
	char err[512];
	int ret;

	if (!aj)
		return -ENOMEM;
	aj->a = a;
	ret = job_load(a->jobs_dir, name, &aj->j, err, sizeof(err));
	if (ret) {
		log_msg(LOG_PRIO_WARNING, NULL,
			"%s/%s: not a job record, ignored: %s", a->jobs_dir,
			name, err);
		jobs_free(aj);
		return 0;
	}
	aj->j.retention = a->retention;
	jobs_add(a, aj);
	if (!ajob_active(aj))
		return 0;
	if (!jobs_vm(a, aj->j.vm)) {
		jobs_finish(
			a, aj, JS_EXCEPTION, RV_INVALID_PARAMETER,
			"The VM is no longer configured.",
			"the agent restarted and its configuration has no such VM");
		return 0;
	}
	log_msg(LOG_PRIO_INFO, NULL,
		"job %s (VM %s) restored: %s, %s phase, %u%%", aj->j.id,
		aj->j.vm, job_state_name(aj->j.state),
		job_phase_name(aj->j.phase), aj->j.percent);
	return 0;
}

int jobs_load(struct agent *a)
{
	DIR *d = opendir(a->jobs_dir);
	struct dirent *e;
	int ret = 0;

	if (!d)
		return -errno;
	while (!ret && (e = readdir(d)))
		if (job_file_name(e->d_name))
			ret = load_job(a, e->d_name);
	closedir(d);
	return ret;
}

int jobs_export_name(char *out, size_t len, const struct vm_config *vm,
		     unsigned i)
{
	return sync_export_name(out, len, vm->name, vm->disks[i]);
}

bool jobs_disk_receiving(struct agent *a, const struct vm_config *vm,
			 unsigned i)
{
	char name[PROTO_NAME_MAX + 1];

	return a->server && !jobs_export_name(name, sizeof(name), vm, i) &&
	       server_export_busy(a->server, name) == 1;
}
