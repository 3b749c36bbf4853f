/* SPDX-License-Identifier: MIT */
/*
 * control.h - the agent's local control API (docs/control-api.md): a UNIX
 * stream socket carrying newline-delimited JSON, one request object per
 * line, one reply object per line, in order.
 *
 * Server side: control_server_start() listens, identifies each caller
 * with SO_PEERCRED and answers anyone who is neither root nor a member of
 * the admin group with ReturnValue 32769 before the request reaches the
 * handler.  The client side is
 * the CLI's: agent/cli/control_client.h.
 */
#ifndef HVRESYNC_CONTROL_H
#define HVRESYNC_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/daemon/job.h"
#include "agent/lib/json.h"
#include "agent/lib/jsonparse.h"

#define CONTROL_DEFAULT_SOCKET "/run/hvresync/control.sock"
#define CONTROL_MAX_LINE (64u << 10) /* a request or reply line */
#define CONTROL_MAX_CLIENTS 64

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

/* Write all of @buf to the socket @fd within @timeout_ms (both ends use
 * it); 0 or a negative errno. */
int control_send_all(int fd, const char *buf, size_t len, int timeout_ms);

#endif
