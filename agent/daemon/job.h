/* SPDX-License-Identifier: MIT */
/*
 * job.h - a resynchronization job as the control API shows it: the
 * Msvm_ConcreteJob model (states, RequestStateChange codes, property
 * names), its JSON form and its persistence in the agent's state dir.
 *
 * Nothing here does I/O on disks or peers: the daemon (runner.c) runs
 * jobs and moves them between states; this module only says which moves
 * are legal and how a job is written down, so it can be unit-tested.
 */
#ifndef HVRESYNC_JOB_H
#define HVRESYNC_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/lib/json.h"
#include "agent/lib/jsonparse.h"
#include "agent/lib/svgmap.h"

/* Msvm_ReplicationService method return values (and CLI outcomes). */
#define RV_OK 0
#define RV_JOB_STARTED 4096
#define RV_FAILED 32768
#define RV_ACCESS_DENIED 32769
#define RV_NOT_SUPPORTED 32770
#define RV_UNKNOWN 32771
#define RV_TIMEOUT 32772
#define RV_INVALID_PARAMETER 32773
#define RV_IN_USE 32774
#define RV_INVALID_STATE 32775
#define RV_BAD_TYPE 32776
#define RV_NOT_AVAILABLE 32777
#define RV_NO_MEMORY 32778
#define RV_NOT_FOUND 32779

/* CIM_ConcreteJob.RequestStateChange return values. */
#define RSC_OK 0
#define RSC_NOT_SUPPORTED 1
#define RSC_UNKNOWN 2
#define RSC_TIMEOUT 3
#define RSC_FAILED 4
#define RSC_INVALID_PARAMETER 5
#define RSC_IN_USE 6
#define RSC_STARTED 4096
#define RSC_INVALID_TRANSITION 4097
#define RSC_TIMEOUT_UNSUPPORTED 4098
#define RSC_BUSY 4099

/* RequestStateChange's RequestedState. */
#define REQ_START 2
#define REQ_SUSPEND 3
#define REQ_TERMINATE 4
#define REQ_KILL 5
#define REQ_SERVICE 6

/* JobState. */
#define JS_NEW 2
#define JS_STARTING 3
#define JS_RUNNING 4
#define JS_SUSPENDED 5
#define JS_SHUTTING_DOWN 6
#define JS_COMPLETED 7
#define JS_TERMINATED 8
#define JS_KILLED 9
#define JS_EXCEPTION 10
#define JS_SERVICE 11
#define JS_COMPLETED_WARNINGS 32768

/* JobType. */
#define JT_RESYNC 107
#define JT_STOP_RESYNC 110
#define JT_RESYNC_EXTENDED 121

/* How long a finished job stays visible (TimeBeforeRemoval). */
#define JOB_DEFAULT_RETENTION_SEC 300

#define JOB_ID_LEN 37 /* a GUID and the NUL */
/* Extents a job keeps of each of its disks' maps (per list): the picture
 * is drawn at cell resolution anyway, and three lists of 512 extents are
 * some 30 KiB of a job's record, which must stay under the 1 MiB a job
 * file may have (fs_read_small) with dozens of disks. */
#define JOB_MAP_LIMIT 512

/* Where a job is in Hyper-V's order of work. */
enum job_phase {
	JOB_PHASE_CHECK,   /* geometry of every disk, nothing written */
	JOB_PHASE_SEND,	   /* compare and send, into held children */
	JOB_PHASE_MERGE,   /* merge the children: no longer cancellable */
	JOB_PHASE_DISCARD, /* cancelled: remove the children */
	JOB_PHASE_DONE,
};

struct job_disk {
	char *name;	  /* file name; the export is "VM:name" */
	char *path;	  /* what is read on this side */
	uint64_t size;	  /* virtual size, known after the check */
	uint64_t done;	  /* bytes of it compared in the send phase */
	uint64_t resumed; /* where the recovery side resumed the last
			   * send session (0: from the start) */
	bool started;	  /* a RESTART session was welcomed: the recovery
			   * side holds our child, later sessions resume */
	bool sent;	  /* the send session finished (child held) */
	bool merged;
	/* where the data came from (issue 9) */
	bool snap_decided; /* Snapshot is known (null before) */
	bool reflink;	   /* read from a clone ("reflink"), else "none" */
	int64_t snap_time; /* when the clone was made; 0 none */
	char *snap_note;   /* why auto fell back to none, a block device
			    * warning, or NULL */
	char *clone;	   /* the clone the job owns, NULL when none (or
			    * released) */
	unsigned passes;   /* passes run so far (the last may be running) */
	bool repass;	   /* the current pass must compare from offset 0
			    * until the recovery side welcomed it */
	char *ident;	   /* a live source's identity (src_ident_format)
			    * at the start of the current pass, or NULL */
	bool changed;	   /* a write to the live source was seen during
			    * the current (or, when sent, the last) pass */
	char *resume;	   /* how a new job took over from a failed one
			    * ("resumed ..." / "started over: ..."), or
			    * NULL */
	/* What the send sessions of this job compared and sent, bounded
	 * (JOB_MAP_LIMIT); `job show --map` draws it (issue 13). */
	struct svgmap map;
};

struct job {
	char id[JOB_ID_LEN];   /* InstanceID */
	char *vm;	       /* VM name */
	char *vm_id;	       /* the VM's GUID, or NULL */
	char *peer;	       /* HOST:PORT of the agent sent to */
	unsigned type;	       /* JobType */
	unsigned state;	       /* JobState */
	unsigned percent;      /* PercentComplete */
	unsigned error_code;   /* ErrorCode, a Resynchronize value */
	char *error_desc;      /* ErrorDescription */
	char *error_summary;   /* ErrorSummaryDescription */
	int64_t submitted;     /* usec since the epoch (UTC) */
	int64_t scheduled;     /* 0: start at once */
	int64_t started;       /* first start, 0 before */
	int64_t last_change;   /* TimeOfLastStateChange */
	int64_t finished;      /* 0 while not finished */
	int64_t elapsed;       /* usec run, up to running_since */
	int64_t running_since; /* 0 when not running; not persisted */
	int64_t retention;     /* usec a finished job stays visible */
	bool cancellable;
	bool auto_resync; /* submitted by the auto-resync window */
	uint64_t bytes_compared;
	uint64_t bytes_different;
	uint64_t bytes_sent;
	unsigned retries; /* network retries so far */
	enum job_phase phase;
	unsigned ndisks;
	struct job_disk *disks;
};

/*
 * The CIM_ConcreteJob state machine: may a job in JobState @current move
 * to RequestedState @requested?  Returns the RequestStateChange value:
 * RSC_OK (nothing left to do; *next is the state now), RSC_STARTED (the
 * transition runs in the background; *next is the state to show while it
 * does), RSC_INVALID_TRANSITION, RSC_NOT_SUPPORTED (Service) or
 * RSC_INVALID_PARAMETER (not a RequestedState).  Pure.
 *
 *   Start (2):     Suspended -> Running (4096); New/Starting/Running: 0.
 *   Suspend (3):   Starting/Running -> Suspended (4096); Suspended: 0.
 *   Terminate (4): New -> Terminated (0); Starting/Running/Suspended ->
 *                  Shutting Down (4096, Terminated when the children are
 *                  gone); Shutting Down: 4096.
 *   Kill (5):      New -> Killed (0); Starting/Running/Suspended/Shutting
 *                  Down -> Shutting Down (4096, Killed when stopped).
 *   Finished jobs: 4097 for every request, but Terminate of an
 *                  Exception: 0 (it stays Exception; the caller discards
 *                  the copies the failed job left on the recovery side).
 * Whether a job may still be cancelled (its merge has not begun) is the
 * caller's check: Suspend, Terminate and Kill of a job that is not
 * Cancellable are 4097 too.
 */
unsigned job_transition(unsigned current, unsigned requested, unsigned *next);

/* Is @state one a job never leaves (Completed, Terminated, Killed,
 * Exception, Completed with warnings)? */
bool job_state_final(unsigned state);
/* "Running", "Completed", ...; "Unknown" for other numbers. */
const char *job_state_name(unsigned state);
/* "Resynchronizing", "Resynchronizing extended replication", ... */
const char *job_type_name(unsigned type);
/* Text of a Resynchronize return value ("Method parameters checked, job
 * started"); "Unknown return value" when not one. */
const char *rv_name(unsigned rv);
/* Text of a RequestStateChange return value. */
const char *rsc_name(unsigned rv);
const char *job_phase_name(enum job_phase p);

/* A new random InstanceID, uppercase GUID form.  0 or -errno. */
int job_new_id(char out[JOB_ID_LEN]);
/* Does @s look like an InstanceID (a GUID, any case, no braces)? */
bool job_id_valid(const char *s);

/* ElapsedTime at @now. */
int64_t job_elapsed(const struct job *j, int64_t now);

/*
 * Write @j as one JSON object: the Msvm_ConcreteJob properties, then
 * hvresync's ("ComputerSystem", "ElementName", counters, "Phase",
 * "Disks", ...).  @now fills ElapsedTime and TimeBeforeRemoval.  The
 * same form is persisted, so job_from_json() reads it back.
 */
void job_to_json(struct json_writer *w, const struct job *j, int64_t now);
/* Member @k: the CIM datetime of @t in the local offset, or null when @t
 * is 0 (never).  vmstate.c writes its times the same way. */
void job_kv_time(struct json_writer *w, const char *k, int64_t t);
/*
 * Fill @j from an object written by job_to_json().  Returns 0 or -EINVAL
 * (ERR says which member is wrong) / -ENOMEM.  @j is zeroed first;
 * job_clear() it afterwards in every case.
 */
int job_from_json(const struct jv *v, struct job *j, char *err, size_t errlen);
void job_clear(struct job *j);

/*
 * Persistence: DIR/ID.json, written to a temporary file, fsync()ed,
 * renamed over the old one and the directory fsync()ed, so a crash leaves
 * the old or the new record, never a torn one.
 */
int job_save(const char *dir, const struct job *j, int64_t now);
int job_remove(const char *dir, const char *id);
/* Read DIR/NAME (a job file).  0, -ENOENT, -EINVAL (ERR says why) or
 * another -errno. */
int job_load(const char *dir, const char *name, struct job *j, char *err,
	     size_t errlen);

#endif
