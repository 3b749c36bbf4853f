/* SPDX-License-Identifier: MIT */
/*
 * config.h - the agent's INI configuration (hvresync.conf(5)): the [agent]
 * section and one [vm NAME] section per virtual machine.
 */
#ifndef HVRESYNC_CONFIG_H
#define HVRESYNC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "agent/lib/snapshot.h"

#define HVRESYNC_DEFAULT_CONFIG "/etc/hvresync/hvresync.conf"
#define HVRESYNC_DEFAULT_PORT 7433

/* Defaults and limits of the per-VM job settings (also [agent] keys). */
#define CONFIG_DEFAULT_MAX_PASSES 3
#define CONFIG_MAX_PASSES_MAX 100
#define CONFIG_DEFAULT_RETRIES 5
#define CONFIG_RETRIES_MAX 1000
#define CONFIG_DEFAULT_RETRY_INTERVAL 10 /* seconds; doubles per retry */
#define CONFIG_RETRY_INTERVAL_MAX 300	 /* and never waits longer */
/* parallel-disks defaults to the online CPUs, within 1..this */
#define CONFIG_PARALLEL_DISKS_MAX 64

/* How a job reads and guards its sources; one per VM, with [agent]
 * giving the defaults. */
struct job_settings {
	enum snap_mode snapshot; /* snapshot = auto|reflink|none */
	unsigned max_passes;	 /* max-passes = 1..100 */
	unsigned retries;	 /* retries = 0..1000 */
	unsigned retry_interval; /* retry-interval = 1..300 seconds */
	unsigned parallel_disks; /* parallel-disks = 1..64: disks a job
				  * works on at once */
};

enum vm_role {
	VM_ROLE_PRIMARY,
	VM_ROLE_REPLICA,
	VM_ROLE_EXTENDED_REPLICA, /* the last hop: receives, never sends on */
};

struct vm_config {
	char *name;
	char *id; /* GUID as written, or NULL */
	enum vm_role role;
	char *replica; /* HOST:PORT of the recovery (or extended) agent */
	char **disks;  /* replication-enabled disks */
	unsigned ndisks;
	char **excludes; /* attached but never read or sent */
	unsigned nexcludes;
	bool auto_resync;
	int window_start; /* minutes after local midnight */
	int window_end;
	struct job_settings job; /* [agent]'s, overridden key by key */
	unsigned job_set;	 /* which keys the section set (internal) */
	char *psk_file;		 /* its own key: only it opens the VM */
	char **allow;		 /* certificate names that may open it */
	unsigned nallow;
	int line; /* where the section starts, for messages */
};

struct agent_config {
	char *path;
	char *listen;
	char *control;
	char *state_dir;
	char *psk_file;
	char *cert_file;
	char *key_file;
	char *ca_file;
	char *admin_group;
	char *metrics_file;	 /* Prometheus textfile; NULL or "": none */
	bool insecure;		 /* plain TCP, loopback only: tests and demos */
	struct job_settings job; /* defaults for every [vm] */
	struct vm_config *vms;
	unsigned nvms;
};

/* Load PATH.  On error returns a negative errno and ERR holds one line:
 * "PATH:LINE: what is wrong". */
int config_load(const char *path, struct agent_config *cfg, char *err,
		size_t errlen);
void config_free(struct agent_config *cfg);
/* Find a VM by name or by id (case-insensitive GUID). */
const struct vm_config *config_find_vm(const struct agent_config *cfg,
				       const char *key);
/* File name of PATH (disks are paired by file name across agents). */
const char *config_basename(const char *path);
/* Is the local time of day MIN (minutes) inside the VM's window? */
bool config_in_window(const struct vm_config *vm, int min);

#endif
