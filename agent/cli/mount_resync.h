/* SPDX-License-Identifier: MIT */
/*
 * mount_resync.h - what the two halves of `hvresync mount-and-resync`
 * share: the run's state, and the views' lifecycle (mount_resync_views.c)
 * that the command (cmd_mount_resync.c) drives.
 */
#ifndef HVRESYNC_CLI_MOUNT_RESYNC_H
#define HVRESYNC_CLI_MOUNT_RESYNC_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/daemon/config.h"
#include "agent/daemon/job.h"
#include "agent/lib/probe.h"
#include "vhdx/vhdx.h"

enum check {
	CHECK_NOT_RUN, /* the job did not complete */
	CHECK_SKIPPED, /* the recovery disk is not reachable from here */
	CHECK_MATCH,
	CHECK_DIFFER,
	CHECK_ERROR,
};

struct mr_disk {
	const char *path; /* the configured primary disk */
	const char *name; /* its file name: the view's name, Sources' key */
	char *view;	  /* RUN-DIR/VM/NAME */
	struct vhdx_image *img;
	uint32_t sector;
	char *recovery; /* from --recovery-config, or NULL */
	struct probe_result p, r;
	bool probed_p, probed_r;
	enum check check;
	char what[1024]; /* the check's verdict in one line */
};

/* The command line, as given. */
struct mr_opts {
	const char *vm; /* the operand: a VM's name or id */
	const char *config_path;
	const char *recovery_config;
	const char *run_dir;
	bool json;
	double timeout; /* seconds; 0: none */
};

struct mr {
	struct mr_opts o;
	struct agent_config cfg;
	struct agent_config rcfg;
	bool have_rcfg;
	const struct vm_config *vm;
	const char *sock;
	char *run_dir;
	char *mnt;
	char *lock_path;
	int lock_fd;
	bool mounted;
	bool unmounted; /* ours is gone and nothing is left there */
	pid_t server;
	struct mr_disk *disks;
	unsigned ndisks;
	unsigned rv; /* Resynchronize's ReturnValue, or 32772 */
	char job[JOB_ID_LEN];
	struct job final;
	bool have_final;
	int signal;
	char err[1024]; /* the first failure, for the last line */
	bool rv_printed;
	bool final_printed;
	char skip_why[512];
};

/* The signal that asked us to stop (SIGTERM, SIGINT, SIGHUP), or 0. */
extern volatile sig_atomic_t mr_got_signal;

/* Remember the first failure; later ones are consequences. */
void mr_set_err(struct mr *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Each returns 0, or -1 with m->err set. */
/* Hold RUN-DIR/VM.lock: one run per VM at a time. */
int mr_take_lock(struct mr *m);
void mr_drop_lock(struct mr *m);
/* Make RUN-DIR/VM an empty directory, detaching a view left behind. */
int mr_clear_mountpoint(struct mr *m);
/* Open every disk, with shared locks on what its view will read. */
int mr_open_disks(struct mr *m);
void mr_close_disks(struct mr *m);
/* Fork the serving child and wait until the views answer. */
int mr_mount_views(struct mr *m);
/* Stop the serving child and make sure nothing stays mounted. */
void mr_unmount_views(struct mr *m);

#endif
