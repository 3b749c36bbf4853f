/* SPDX-License-Identifier: MIT */
/*
 * internal.h - what the agent's own files share (agent.c, jobs.c,
 * runner.c, session.c, jobsnap.c, held.c, methods.c): the agent, its
 * jobs and its VMs, and the calls each file offers the others.  Nothing
 * outside agent/daemon/ includes it; the CLI sees only agent.h.
 *
 * The files call downwards only: agent.c (lifecycle, scheduler) uses
 * methods.c, held.c, runner.c, jobsnap.c and jobs.c; methods.c uses
 * held.c, runner.c, session.c and jobs.c; runner.c uses session.c,
 * jobsnap.c and jobs.c; held.c, session.c and jobsnap.c use jobs.c;
 * jobs.c uses none of them.
 *
 * Locking: one mutex (agent.lock) guards the job list, every job's
 * fields and the VM states; it is never held across a network session.
 * "Under the lock" below means the caller holds it.
 */
#ifndef HVRESYNC_DAEMON_INTERNAL_H
#define HVRESYNC_DAEMON_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "agent/daemon/config.h"
#include "agent/daemon/control.h"
#include "agent/daemon/job.h"
#include "agent/daemon/vmstate.h"
#include "agent/lib/jsonparse.h"
#include "agent/sync/serve.h"
#include "agent/sync/tls.h"

#define STOP_SHUTDOWN 100 /* stop_req: the agent is stopping */

struct agent;

struct ajob {
	struct job j;
	struct agent *a;
	pthread_t thread;
	bool has_thread;   /* a runner exists and must be joined */
	unsigned sessions; /* its protocol sessions now (agent lock) */
	bool thread_done;  /* it has returned (or is about to) */
	volatile int stop; /* push_disk()'s stop flag */
	unsigned stop_req; /* REQ_SUSPEND/TERMINATE/KILL, STOP_SHUTDOWN */
	int64_t last_save;
	bool keep_snap;	 /* network retries ran out: an Exception
			  * keeps the clones for the next job */
	bool discarding; /* a cancel of this failed job discards the
			  * recovery side's copies right now (it is not
			  * removed meanwhile) */
	struct ajob *next;
};

struct vmrt {
	const struct vm_config *cfg;
	struct vm_state st;
	int64_t last_auto; /* when auto-resync last submitted a job */
	bool exported;	   /* its disks are all exports of the server */
	bool discarding;   /* `vm discard` works on its held copies */
	char **merge_note; /* per disk: why an interrupted merge is still
			    * pending (held.c), or NULL */
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
	bool recheck; /* run the auto-resync pass now */
	bool ready;   /* jobs restored: requests are served */
	bool merging; /* finishing interrupted merges before serving:
		       * requests that only read are served */
	int64_t retention;
	uint64_t bwlimit;
	int lock_fd;
};

static inline bool ajob_active(const struct ajob *aj)
{
	return !job_state_final(aj->j.state);
}

/* --- jobs.c: the job list and the VM states, all under the lock --- */

struct vmrt *jobs_vm(struct agent *a, const char *name);
struct ajob *jobs_find(struct agent *a, const char *id);
/* The job of @vm that has not finished yet, or NULL. */
struct ajob *jobs_active_of(struct agent *a, const char *vm);

/* A new job (state New, not yet in the list) for @vm, reading the files
 * @sources names instead of its disks; NULL when out of memory. */
struct ajob *jobs_new(struct agent *a, const struct vm_config *vm,
		      const struct jv *sources, int64_t start, bool autor);
void jobs_free(struct ajob *aj);
void jobs_add(struct agent *a, struct ajob *aj);

/* Write the job's record to the state dir (a failure is logged). */
void jobs_persist(struct agent *a, struct ajob *aj);
void jobs_set_state(struct ajob *aj, unsigned state);
/* Set and record a VM's ReplicationState; @vm NULL does nothing. */
void jobs_set_vm(struct agent *a, struct vmrt *vm, unsigned state);
/* Tell systemd how many jobs run, wait and are suspended. */
void jobs_notify_status(struct agent *a);
/* The job reached the final @state: record it, log it as one JSON
 * line, and move its VM to Replicating or Resynchronization required. */
void jobs_finish(struct agent *a, struct ajob *aj, unsigned state,
		 unsigned code, const char *summary, const char *desc);
/* Read every job record of the state dir into the list (at start). */
int jobs_load(struct agent *a);
/* Remove the clones the job owns (its disks' Clone) and forget them. */
void jobs_drop_clones(struct agent *a, struct ajob *aj);
/* Does the job own a clone? */
bool jobs_has_clones(const struct ajob *aj);

/* The export name of disk @i of @vm ("VM:FILE"), as the recovery agent
 * exports it; 0 or the negative errno of sync_export_name(). */
int jobs_export_name(char *out, size_t len, const struct vm_config *vm,
		     unsigned i);
/* Is the primary sending to disk @i of replica VM @vm right now?  False
 * too when this agent serves no exports. */
bool jobs_disk_receiving(struct agent *a, const struct vm_config *vm,
			 unsigned i);

/* --- jobsnap.c: where a job reads its disks from (issue 9) --- */

/*
 * Called by the runner without the lock, before the check phase.  On the
 * job's first run: take over what the VM's last job left when it failed
 * (its kept clones, or the recorded identity of live sources that have
 * not changed since), else snapshot the disks as the VM's `snapshot =`
 * says.  On a later run (resume, restart): find the job's clones again;
 * when one is gone every disk starts over from new clones.  0, or a
 * negative errno with @rv (a Resynchronize value) and @err naming the
 * disk.
 */
int jobsnap_prepare(struct ajob *aj, unsigned *rv, char *err, size_t errlen);
/* At start, jobs restored: remove clones in the folders of every
 * configured disk whose owner is not a job that still owns clones. */
void jobsnap_sweep(struct agent *a);

/* --- session.c: one session of a job, and its retries --- */

/*
 * Run one session of @flags (PUSH_*) for disk @i, without the lock,
 * reading the disk's clone when it has one.  A network failure is tried
 * again as the VM's retries and retry-interval say (the job stays Running,
 * ErrorDescription says why, Retries counts); a retry after the recovery
 * side welcomed the session drops RESTART and REPASS, so it resumes.
 * When the retries run out aj->keep_snap is set.  0 or the negative errno
 * of the last session, with @err its one line.
 */
int runner_session(struct ajob *aj, unsigned i, unsigned flags, char *err,
		   size_t errlen);
/* One session, no network retries (a cancel of a failed job discards its
 * copies while its caller waits).  Without the lock. */
int runner_session_once(struct ajob *aj, unsigned i, unsigned flags, char *err,
			size_t errlen);
/* Under the lock: PercentComplete from the job's phase and disks. */
void runner_update_percent(struct job *j);

/* --- runner.c: a job's thread --- */

/* Start (or resume) the job's runner.  0 or -errno. */
int runner_start(struct agent *a, struct ajob *aj);
/* Join the job's runner if it has returned. */
void runner_reap(struct ajob *aj);
/* Act on the stop @aj->stop_req asks for.  Returns true when the job is
 * done with for now, false when its partial copies must be discarded. */
bool runner_handle_stop(struct agent *a, struct ajob *aj);

/* --- held.c: the recovery side's held copies (replica VMs' disks) --- */

/*
 * At start, before the peer server accepts: finish every interrupted
 * merge of the replica VMs' disks (a CHILD.merging marker is there),
 * logging each.  A merge that cannot finish leaves the disk's
 * merge_note saying why; GetVM shows the disk Critical until a later
 * session or `vm discard` completes it.  Without the lock.
 */
void held_finish_merges(struct agent *a);
/* Under the lock: fill @ds (one per disk of @rt, freed with
 * held_status_free()) with what is held of each disk now.  0 or -ENOMEM. */
int held_status(struct agent *a, struct vmrt *rt, struct vm_disk_status **ds);
void held_status_free(struct vm_disk_status *ds, unsigned n);
/*
 * `vm discard` (DiscardHeldCopies): drop every held copy of replica VM
 * @rt's disks (child and progress record); a merge that has begun is
 * completed instead (it cannot be undone).  Called without the lock;
 * writes the whole reply to @w: ReturnValue 0 with Discarded and Merged
 * (disk names), 32774 while a session or job of the VM runs or another
 * program holds an image, 32770 for a primary VM, 32768 on failure.
 */
void held_discard(struct agent *a, struct vmrt *rt, struct json_writer *w);
/* Does a disk of @vm have a merge pending (its marker is there)? */
bool held_merge_pending(const struct vm_config *vm, unsigned i);

/* --- methods.c: the control API --- */

/* The control_handler the agent serves its socket with (@ctx: agent). */
void methods_handle(void *ctx, const struct control_caller *who,
		    const struct jv *req, struct json_writer *w);

#endif
