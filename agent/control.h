/* SPDX-License-Identifier: MIT */
/*
 * control.h - the agent's local control API (docs/control-api.md): a UNIX
 * stream socket carrying newline-delimited JSON, one request object per
 * line, one reply object per line, in order.
 *
 * Server side: control_server_start() listens, identifies each caller
 * with SO_PEERCRED and answers anyone who is neither root nor a member of
 * the admin group with ReturnValue 32769 before the request reaches the
 * handler.  Client side: control_call() and the typed helpers below, used
 * by the CLI (resync, job, vm) and by mount-and-resync.
 *
 * The daemon's log also lives here: agent_log() writes journald-style
 * lines ("<6>message") to stderr, or to syslog once the agent detached.
 */
#ifndef HVRESYNC_CONTROL_H
#define HVRESYNC_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/job.h"
#include "agent/json.h"
#include "agent/jsonparse.h"

#define CONTROL_DEFAULT_SOCKET "/run/hvresync/control.sock"
#define CONTROL_MAX_LINE (64u << 10)	/* a request or reply line */
#define CONTROL_MAX_CLIENTS 64

/* --- log --- */

#define LOG_PRIO_ERR 3
#define LOG_PRIO_WARNING 4
#define LOG_PRIO_NOTICE 5
#define LOG_PRIO_INFO 6
#define LOG_PRIO_DEBUG 7

void agent_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* From now on log through syslog(3) (the agent detached from stderr). */
void agent_log_use_syslog(void);

/* --- server --- */

struct control_caller {
	uid_t uid;
	gid_t gid;
	pid_t pid;
};

/*
 * Answer one authorised request: @req is a JSON object with a string
 * "Method"; write exactly one JSON object to @w (it must carry
 * "ReturnValue").  Runs on the connection's thread; several may run at
 * once.
 */
typedef void (*control_handler)(void *ctx, const struct control_caller *who,
				const struct jv *req, struct json_writer *w);

struct control_server;

/*
 * Listen on @path: create its directory (mode 0755) if needed, refuse to
 * start when another agent answers there, replace a stale socket, and
 * make it mode 0660, group @admin_group when that group exists (else
 * root only, with a warning in the log).
 */
int control_server_start(const char *path, const char *admin_group,
			 control_handler fn, void *ctx,
			 struct control_server **out, char *err, size_t errlen);
/* Stop accepting, end every connection, wait for their threads, unlink
 * the socket. */
void control_server_stop(struct control_server *s);

/* Is the caller root or in @admin_gid (primary or supplementary group)?
 * @admin_gid (gid_t)-1 means there is no admin group. */
bool control_caller_authorized(const struct control_caller *c, gid_t admin_gid);

/* --- client --- */

/*
 * Which socket to talk to: @control when given, else the control key of
 * @config (when given, it must load), else that of the default config
 * when it is readable, else CONTROL_DEFAULT_SOCKET.  *out is malloc()ed.
 */
int control_resolve_socket(const char *config, const char *control,
			   char **out, char *err, size_t errlen);

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
	const char *vm;            /* ComputerSystem: name or id */
	const char *start_time;    /* CIM datetime, ISO 8601 or NULL */
	/* Sources: read these files instead of the configured disks, paired
	 * by file name ("os.vhdx" -> "/run/hvresync/web01/os.vhdx"). */
	unsigned nsources;
	const char *const *source_names;
	const char *const *source_paths;
};

/* Resynchronize; returns its ReturnValue (or control_rv_for_error()),
 * @job gets the InstanceID on 4096. */
unsigned control_resynchronize(const char *sock, const struct control_resync *a,
			       int timeout_ms, char job[JOB_ID_LEN],
			       char *err, size_t errlen);
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
