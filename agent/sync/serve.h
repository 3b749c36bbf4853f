/* SPDX-License-Identifier: MIT */
/*
 * serve.h - the recovery side of the hvresync protocol
 * (docs/protocol.md) as a library: a TLS listener, a table of exports
 * (name -> local path) and one thread per session.  `hvresync serve` is a
 * thin CLI over it; the agent daemon embeds it.
 *
 * Clients name a disk by its export name only; the server never opens a
 * path that came from the network.  For a VHDX export, received data goes
 * to a differencing child next to the image (IMAGE.hvresync.avhdx), which
 * is merged at the end of a successful session, so cancel or failure
 * leaves the image byte-identical and the child kept for resume.  Raw
 * files and block devices are written in place (not cancel-safe).
 * Progress is recorded durably in the state directory so a dropped session
 * resumes where it stopped.
 */
#ifndef HVRESYNC_SERVE_H
#define HVRESYNC_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/sync/common.h"
#include "agent/sync/setup.h"
#include "agent/sync/tls.h"

#define SERVER_DEFAULT_LISTEN "0.0.0.0:7433"
#define SERVER_DEFAULT_STATE_DIR "/var/lib/hvresync/serve"
#define SERVER_DEFAULT_WINDOW (256u << 20)
#define SERVER_DEFAULT_MAX_SESSIONS 16
/*
 * Connections that have not yet authenticated and sent HELLO cost a
 * thread but no session slot: the TLS handshake and HELLO must both come
 * within SERVER_HANDSHAKE_MS; one address may have at most
 * SERVER_PENDING_PER_ADDR of them that have waited a second or more (a
 * burst of new connections from one primary is not an attack); all
 * together at most max_pending (default 4 x max_sessions, at least 16).
 * Beyond that a connection is closed at once, or, when the newcomer's
 * address has fewer in the handshake than the busiest one, the oldest of
 * the busiest address's is closed to make room: idle connections from a
 * few addresses cannot starve the others.
 */
#define SERVER_HANDSHAKE_MS 10000
#define SERVER_PENDING_PER_ADDR 8
#define SERVER_PENDING_PER_SESSION 4
#define SERVER_PENDING_MIN 16
#define SERVER_CHILD_SUFFIX ".hvresync.avhdx"

struct server_config {
	const char *listen;    /* "ADDR:PORT"; NULL: 0.0.0.0:7433 */
	struct tls_config tls; /* copied; its strings must outlive the
				* server.  Its vm_keys (copied too) are
				* the VMs with a key of their own: such a
				* VM's exports admit that key only. */
	const char *state_dir; /* NULL: SERVER_DEFAULT_STATE_DIR */
	uint64_t window_bytes; /* flow-control window in disk bytes;
				* 0: 8 MiB (at least 8 blocks) */
	unsigned max_sessions; /* authenticated sessions at once; 0: 16.
				* One more is told ERROR busy ("busy: 16
				* sessions"). */
	unsigned max_pending;  /* connections in the handshake at once;
				* 0: 4 x max_sessions, at least 16 */
	/* One line per call, no newline, @level a LOG_PRIO_* of
	 * agent/lib/log.h.  NULL: log_msg() with component "serve".
	 * Called from session threads. */
	void (*log)(void *ctx, int level, const char *msg);
	void *log_ctx;
	/* The caller finished the exports' interrupted merges itself (the
	 * agent, with its own reporting); false: server_run() finishes
	 * them before it accepts. */
	bool merges_finished;
};

struct server;

/* Check the configuration and create the state directory (mode 0700). */
struct server *server_new(const struct server_config *cfg, char *err,
			  size_t errlen);
/*
 * Export @path (a VHDX, raw file or block device, opened only when a
 * session starts) under @name (the export-name rule of common.h: 1-255
 * bytes of UTF-8, no '/', no '=', no control characters; ':' is fine).
 * May be called while the server runs.  -EEXIST for a name already
 * exported, -EINVAL for a bad name, -ENOENT or another -errno when @path
 * cannot be opened.
 */
int server_add_export(struct server *s, const char *name, const char *path,
		      char *err, size_t errlen);
/*
 * server_add_export() for a disk of VM @auth->vm, which only peers
 * @auth admits may open (sync_authorized() of common.h); @auth and its
 * strings are copied.  @auth->key_id is ignored: a VM that has a key in
 * cfg.tls.vm_keys admits that key and no other.  Any other authenticated peer
 * that names it is answered ERROR 9 (not authorized) before anything of it is
 * read.
 */
int server_add_vm_export(struct server *s, const char *name, const char *path,
			 const struct sync_vm_auth *auth, char *err,
			 size_t errlen);
/* Forget an export; -EBUSY while it is in a session, -ENOENT if unknown. */
int server_remove_export(struct server *s, const char *name);
/* Hold an export (HOLD true): new sessions on it get ERROR busy until it
 * is released, so the agent can read a replica's disk for its own extended
 * replication without a primary writing under it.  0, -EBUSY when a
 * session has it now, or -ENOENT. */
int server_hold_export(struct server *srv, const char *name, bool hold);
/* 1 if export @name is in a session, 0 if not, -ENOENT if unknown. */
int server_export_busy(struct server *s, const char *name);

/* Bind the listener now (server_run does it otherwise), so the caller
 * can report the address; 0 or -errno with @err. */
int server_listen(struct server *s, char *err, size_t errlen);
/* The bound address ("127.0.0.1:7433"), or "" before listening. */
const char *server_addr(const struct server *s);
/* Connections refused or dropped since the server started (bad key or
 * certificate, not authorized, too many, busy, protocol errors): the
 * counter behind the agent's hvresync_refused_connections_total. */
uint64_t server_refused_total(struct server *srv);

/*
 * Finish every interrupted merge of an export (CHILD.merging left by a
 * crash), unless cfg.merges_finished, then accept and serve sessions
 * until server_stop().  On the way out every session is aborted
 * (children and progress are kept) and waited for.
 * Returns 0, or -errno when the listener could not be set up or failed.
 */
int server_run(struct server *s);
/* Make server_run() return soon.  Async-signal-safe; any thread. */
void server_stop(struct server *s);
/* Free a server that is not running. */
void server_free(struct server *s);

#endif
