/* SPDX-License-Identifier: MIT */
/*
 * control_client.h - talking to a running agent over its control socket
 * (docs/control-api.md): used by resync, job, vm and mount-and-resync.
 */
#ifndef HVRESYNC_CLI_CONTROL_CLIENT_H
#define HVRESYNC_CLI_CONTROL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/daemon/control.h"
#include "agent/daemon/job.h"
#include "agent/lib/jsonparse.h"

/*
 * Which socket to talk to: @control when given, else the control key of
 * @config (when given, it must load), else that of the default config
 * when it is readable, else CONTROL_DEFAULT_SOCKET.  *out is malloc()ed.
 */
int control_resolve_socket(const char *config, const char *control, char **out,
			   char *err, size_t errlen);

/*
 * Send one request line (a JSON object without the newline) to @sock and
 * read the reply, everything within @timeout_ms.  Returns 0 with *reply
 * an object that has an integer ReturnValue, or a negative errno with ERR
 * saying what failed: -EACCES (not allowed to use the socket), -ENOENT /
 * -ECONNREFUSED (no agent), -ETIMEDOUT, -EPROTO (a reply that is not
 * JSON), -ENOMEM.
 */
int control_call(const char *sock, const char *request, int timeout_ms,
		 struct jv **reply, char *err, size_t errlen);
/* The ReturnValue a client reports for a control_call() error:
 * 32769 access denied, 32772 timeout, 32778 out of memory, 32777 the
 * agent is not there, 32768 otherwise. */
unsigned control_rv_for_error(int err);
/* ReturnValue of a reply (32768 when it has none), and its "Error". */
unsigned control_reply_rv(const struct jv *reply);
const char *control_reply_error(const struct jv *reply);

/* Arguments of Resynchronize. */
struct control_resync {
	const char *vm;		/* ComputerSystem: name or id */
	const char *start_time; /* CIM datetime, ISO 8601 or NULL */
	/* Sources: read these files instead of the configured disks, paired
	 * by file name ("os.vhdx" -> "/run/hvresync/web01/os.vhdx"). */
	unsigned nsources;
	const char *const *source_names;
	const char *const *source_paths;
};

/* Resynchronize; returns its ReturnValue (or control_rv_for_error()),
 * @job gets the InstanceID on 4096. */
unsigned control_resynchronize(const char *sock, const struct control_resync *a,
			       int timeout_ms, char job[JOB_ID_LEN], char *err,
			       size_t errlen);
/* GetJob; 0 with @j filled (job_clear() it), else a ReturnValue. */
unsigned control_get_job(const char *sock, const char *id, int timeout_ms,
			 struct job *j, char *err, size_t errlen);
/* RequestStateChange; the CIM_ConcreteJob return value, or a 327xx. */
unsigned control_job_state_change(const char *sock, const char *id,
				  unsigned requested, int64_t timeout_usec,
				  char *err, size_t errlen);

/*
 * Poll a job every 100 ms until it is finished (Completed, Terminated,
 * Killed, Exception, Completed with warnings) or @timeout_ms passes
 * (<= 0: no limit).  @progress, when not NULL, sees every poll.  Returns
 * 0 with @j the final job, 32772 on timeout (@j the last seen), or the
 * ReturnValue of a failed poll.  A job that vanished while waited for
 * (its 5 minutes passed) is 32773.
 */
unsigned control_wait_job(const char *sock, const char *id, int timeout_ms,
			  void (*progress)(void *arg, const struct job *j),
			  void *arg, struct job *j, char *err, size_t errlen);

#endif
