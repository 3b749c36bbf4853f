/* SPDX-License-Identifier: MIT */
/*
 * vmstate.h - a VM's replication state as Msvm_ComputerSystem shows it
 * (ReplicationState, ReplicationHealth, ReplicationMode), kept by the agent
 * in its state dir so that "resynchronization required" survives a restart.
 *
 * ReplicationMode comes from the configuration: role = primary is 1
 * (Primary), role = replica is 2 (Replica), and a VM at the end of an
 * extended chain (role = extended-replica, when the configuration knows
 * that role) is 4 (Extended replica).  ReplicationHealth follows from the
 * state (see vm_health_for()).
 */
#ifndef HVRESYNC_VMSTATE_H
#define HVRESYNC_VMSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/daemon/config.h"
#include "agent/daemon/job.h"
#include "agent/lib/json.h"

/* ReplicationState */
#define RS_DISABLED 0
#define RS_READY 1
#define RS_WAITING_INITIAL 2
#define RS_REPLICATING 3
#define RS_SYNCED 4
#define RS_RECOVERED 5
#define RS_COMMITTED 6
#define RS_SUSPENDED 7
#define RS_CRITICAL 8
#define RS_RESYNC_REQUIRED 9
#define RS_RESYNCHRONIZING 10
#define RS_RESYNC_SUSPENDED 11
#define RS_FAILOVER 12
#define RS_FAILBACK 13
#define RS_FAILBACK_COMPLETE 14
#define RS_MAX 14

/* ReplicationHealth */
#define RH_NOT_APPLICABLE 0
#define RH_OK 1
#define RH_WARNING 2
#define RH_CRITICAL 3

/* ReplicationMode */
#define RM_NONE 0
#define RM_PRIMARY 1
#define RM_REPLICA 2
#define RM_TEST_REPLICA 3
#define RM_EXTENDED_REPLICA 4

struct vm_state {
	unsigned state;		   /* ReplicationState */
	unsigned health;	   /* ReplicationHealth */
	int64_t last_change;	   /* usec, when state last changed */
	char last_job[JOB_ID_LEN]; /* the last resync job, "" for none */
	unsigned last_job_state;   /* its final JobState, 0 while unfinished */
	int64_t last_success;	   /* when a resync last completed, 0 never */
	/* that resync (for `status` and the metrics file): how long it
	 * ran (ElapsedTime, usec) and its byte counters */
	int64_t last_success_elapsed;
	uint64_t last_success_compared;
	uint64_t last_success_different;
	uint64_t last_success_sent;
};

/* Record that job @j Completed at @now: LastSuccessfulResync and the
 * job's ElapsedTime and byte counters. */
void vm_state_success(struct vm_state *st, const struct job *j, int64_t now);

const char *repl_state_name(unsigned s);
const char *repl_health_name(unsigned h);
const char *repl_mode_name(unsigned m);
/* ReplicationMode of a configured VM. */
unsigned vm_mode(const struct vm_config *vm);
/* The health a VM in ReplicationState @s has: 3 while a resync is
 * required or suspended, 2 while one runs or a failover is under way,
 * 1 otherwise. */
unsigned vm_health_for(unsigned s);
/* May RequestReplicationStateChange set @s?  Not 0 (replication is
 * switched off in the configuration) nor 10 and 11, which belong to jobs. */
bool vm_state_settable(unsigned s);

/* Set the state (and the health that goes with it). */
void vm_state_set(struct vm_state *st, unsigned s, int64_t now);

/* DIR/NAME.json, NAME escaped so that any VM name makes a file name.
 * A missing file gives the initial state: 1 Ready for replication. */
int vm_state_load(const char *dir, const char *name, struct vm_state *st,
		  char *err, size_t errlen);
int vm_state_save(const char *dir, const char *name, const struct vm_state *st);

/*
 * What the recovery side holds of one replica disk (the agent's held.c
 * finds it): its differencing child IMAGE.hvresync.avhdx with the
 * progress record, and whether a merge into the image has begun and not
 * finished (the child's .merging marker is there).
 */
struct vm_disk_status {
	bool held;		/* the child is there */
	const char *held_path;	/* the child */
	uint64_t held_bytes;	/* its bytes on disk */
	int64_t held_since;	/* usec: when it was made; 0 unknown */
	bool held_complete;	/* its record says the copy is complete */
	bool merge_pending;	/* the image is half-merged */
	bool in_session;	/* a session of the primary has the disk
				 * (its merge is under way, not stuck) */
	const char *merge_note; /* why it is still pending, or NULL */
};

/*
 * The Msvm_ComputerSystem view of a VM: ElementName, Name (its id),
 * ReplicationState/Health/Mode, then hvresync's (role, peer, disks with
 * whether each exists and whether its merge is pending, the held copies,
 * excluded disks, auto-resync window, last job).  @ds: one status per
 * disk of @vm, or NULL (nothing held).  A pending merge that no session
 * is carrying on makes the health 3 (Critical) whatever the state says: a
 * half-merged disk is never Ok.
 */
void vm_to_json(struct json_writer *w, const struct vm_config *vm,
		const struct vm_state *st, const struct vm_disk_status *ds);

#endif
