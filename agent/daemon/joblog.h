/* SPDX-License-Identifier: MIT */
/*
 * joblog.h - the job lifecycle records (started, completed, failed,
 * cancelled) with their journal fields, like Hyper-V's resynchronization
 * events: each carries HVRESYNC_VM, HVRESYNC_JOB, one HVRESYNC_DISK per
 * disk it is about, and one of the stable MESSAGE_IDs below, listed in
 * hvresync(8) so that `journalctl MESSAGE_ID=...` finds every failed
 * resync.  Never change an ID: admins' queries and alerts name them.
 */
#ifndef HVRESYNC_DAEMON_JOBLOG_H
#define HVRESYNC_DAEMON_JOBLOG_H

#include "agent/daemon/internal.h"

#define MSGID_JOB_STARTED "994fce546c594bcebb71f94c4e67cdf6"
#define MSGID_JOB_COMPLETED "01e28b0f89ff419380752a70339d952b"
#define MSGID_JOB_FAILED "2b7a1e629f134237b2ed0490ad2d4d0e"
#define MSGID_JOB_CANCELLED "757b4723a5b649ee9bc2159877dea0ca"

/* Log a line about job @j with its fields: @disk, or every disk of the
 * job when NULL; @msgid or NULL. */
void joblog(int prio, const struct job *j, const char *msgid, const char *disk,
	    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* jobs_finish() (internal.h) naming the disk that failed: the failed
 * record's HVRESYNC_DISK is that disk alone.  @disk NULL: every disk. */
void jobs_finish_disk(struct agent *a, struct ajob *aj, unsigned state,
		      unsigned code, const char *summary, const char *desc,
		      const char *disk);

#endif
