/* SPDX-License-Identifier: MIT */
/*
 * mount_resync.h - what the two halves of `hvresync mount-and-resync`
 * share: the run's state, and the views' lifecycle (mount_resync_views.c:
 * FUSE views served by a child, device-mapper views watched by a child)
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
#include "fuse/dmview.h"
#include "vhdx/vhdx.h"

enum check {
	CHECK_NOT_RUN, /* the job did not complete */
	CHECK_SKIPPED, /* the recovery disk is not reachable from here */
	CHECK_MATCH,
	CHECK_DIFFER,
	CHECK_ERROR,
};

/* --view: which kind of view the disks are read through. */
enum mr_view {
	MR_VIEW_AUTO, /* dm where the kernel and the image allow, else FUSE */
	MR_VIEW_FUSE,
	MR_VIEW_DM,
};

struct mr_disk {
	const char *path; /* the configured primary disk */
	const char *name; /* its file name: the view's name, Sources' key */
	char *view;	  /* RUN-DIR/VM/NAME, or /dev/mapper/DM_NAME */
	bool dm;	  /* read through a device-mapper view */
	bool dm_mapped;	  /* ... which exists now */
	char dm_name[DMVIEW_NAME_MAX + 1];
	char view_why[512]; /* why this kind of view, for people */
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
	enum mr_view view;
	struct dmview_opts dm;	  /* --noudevsync, --udev-timeout */
	const char *metrics_path; /* --metrics-file */
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
	bool mnt_made;	     /* RUN-DIR/VM is ours to remove */
	unsigned nfuse, ndm; /* disks of each kind */
	pid_t keeper;	     /* the dm views' keeper (mount_resync_views.c) */
	bool dm_left;	     /* a dm view could not be removed yet */
	char dm_prefix[48];  /* uuid prefix of this run's dm views */
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
/* Pick each open disk's kind of view (--view), saying why. */
int mr_choose_views(struct mr *m);
/* Remove dm views an earlier run of this VM left behind. */
int mr_clear_dm(struct mr *m);
/* Fork the dm views' keeper, then map the disks chosen for dm.  With
 * --view auto a disk that cannot be mapped falls back to FUSE. */
int mr_map_views(struct mr *m);
/* Remove the dm views and stop the keeper. */
void mr_unmap_views(struct mr *m);
/* Fork the serving child for the FUSE disks and wait until they answer. */
int mr_mount_views(struct mr *m);
/* Stop the serving child and make sure nothing stays mounted. */
void mr_unmount_views(struct mr *m);
/* "dm" or "fuse". */
const char *mr_view_kind(const struct mr_disk *d);

#endif
