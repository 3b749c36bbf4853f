/* SPDX-License-Identifier: MIT */
/*
 * serve_session.h - the insides of the recovery side (serve.h), shared by
 * its files and by no one else: the server with its exports, and one
 * session.  serve.c runs the listener, the exports table and the session
 * threads; serve_session.c speaks the protocol of one session; disk.c
 * holds the disk a session writes; record.c its durable progress record.
 */
#ifndef HVRESYNC_SYNC_SERVE_SESSION_H
#define HVRESYNC_SYNC_SERVE_SESSION_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <zstd.h>

#include "agent/sync/common.h"
#include "agent/sync/setup.h"
#include "agent/sync/proto.h"
#include "agent/sync/serve.h"
#include "agent/sync/tls.h"
#include "uring/reader.h"
#include "vhdx/vhdx.h"

/* The progress record's file name: the export name percent-encoded,
 * ".state", and room for the temporary name's dot and ".tmp". */
#define SERVE_STATE_NAME_MAX (PROTO_NAME_MAX * 3 + 16)

struct export
{
	struct export *next;
	char *name;
	char *path; /* absolute, from the configuration */
	bool vhdx;  /* as found when it was added */
	bool blockdev;
	bool busy;
	bool held; /* server_hold_export(): refuse sessions */
	dev_t dev; /* of the file while busy */
	ino_t ino;
	/* Who may open it (server_add_vm_export(), a copy); has_auth
	 * false: an export of no VM, open to every authenticated peer. */
	bool has_auth;
	struct sync_vm_auth auth;
	char **allow; /* auth.allow's strings */
};

struct session;

/*
 * Connections closed before they became a session, summed up so that an
 * attack costs one log line per SERVE_REFUSAL_PERIOD, not one per
 * connection (serve.c).
 */
enum serve_refusal {
	REFUSED_PER_ADDR,  /* its address had its handshakes at once */
	REFUSED_PENDING,   /* max_pending handshakes from other addresses */
	REFUSED_EVICTED,   /* closed to make room for another address */
	REFUSED_TIMEOUT,   /* no handshake and HELLO within the limit */
	REFUSED_HANDSHAKE, /* the handshake or HELLO failed */
	REFUSED_BUSY,	   /* authenticated, told "busy" */
	REFUSED_NOT_AUTHORIZED, /* authenticated, not allowed for the VM */
	REFUSED_KINDS
};

struct server {
	struct server_config cfg;
	char *listen;
	char *state_dir;
	struct tls_listener *l;
	char addr[128];

	/* cfg.tls.vm_keys, copied, and their key ids (tls_psk_key_id). */
	struct tls_vm_key *vm_keys;
	char (*key_ids)[TLS_KEY_ID_LEN + 1];

	pthread_mutex_t lock;
	pthread_cond_t cond; /* a session ended */
	struct export *exports;
	struct session *sessions;
	unsigned nsessions; /* threads, whatever their state */
	unsigned nactive;   /* past HELLO: at most cfg.max_sessions */
	unsigned npending;  /* before HELLO, evicted ones not counted */
	unsigned next_id;

	/* Refusals in the current period, and the lines shown of them. */
	double refusal_since;
	unsigned refusals[REFUSED_KINDS];
	unsigned refusal_lines;
	unsigned refusal_hidden;
	uint64_t refused_total; /* every refusal since the start */

	int stop_pipe[2];
	int stop; /* atomic: set by server_stop() */
};

struct ur_hasher;

struct session {
	struct server *srv;
	struct session *next;
	struct conn *c;
	unsigned id;
	char peer[128];
	char addr[128]; /* the peer without its port: the per-address cap */
	double accepted;
	/* Under srv->lock: before HELLO (counted in srv->npending), closed
	 * by the accept loop to make room, holding a session slot. */
	bool pending;
	bool evicted;
	bool active;
	char auth[256];
	struct export *ex;
	char name[PROTO_NAME_MAX + 1];
	char image[PATH_MAX];
	char child[PATH_MAX + 32];
	char marker[PATH_MAX + 48];
	char state[PATH_MAX]; /* the progress record, in srv->state_dir */
	char state_name[SERVE_STATE_NAME_MAX];
	struct msg_hello hello;

	/* The disk (disk.c). */
	bool vhdx;
	bool blockdev;
	struct vhdx_lock *hold; /* the image, locked for writing */
	struct vhdx_image *img; /* VHDX: the child, read-write */
	int fd;			/* raw: read-write */
	struct ur_source *src;
	struct sync_reader rd;
	uint64_t size;
	uint32_t sector;
	uint32_t bs;
	uint64_t nblocks;
	unsigned nsub_max;
	uint32_t window;
	uint64_t resume; /* resume_offset sent in WELCOME */
	uint64_t resume_block;

	/* Flow control, shared with the hash thread under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t credit_end; /* blocks below this were granted */
	uint64_t sent_block; /* HASHES went out for blocks below this */
	uint64_t done_block; /* the primary decided blocks below this */
	bool abort;
	int tx_err;
	char tx_msg[600];
	bool tx_running;
	pthread_t tx;
	pthread_mutex_t send_lock; /* one writer at a time */
	uint8_t *ring_sub;	   /* window x nsub_max x PROTO_HASH_LEN */
	uint8_t *ring_zero;	   /* window flags: block reads as zeros */
	/* Where a block in flight lies in the image's files, when one read
	 * through the page cache brought it (fd -1: its sub-block hashes
	 * are in ring_sub): SUBREQ reads and hashes it again, so the
	 * reader hashes each 4 KiB only of blocks the primary asks about. */
	int *ring_fd;
	uint64_t *ring_off;
	struct ur_hasher *sub_hasher; /* the receiver's, for those */
	uint8_t *sub_buf;	      /* one block */

	struct proto_batch out; /* SUBHASHES not yet written (send_lock) */
	uint8_t *rbuf;
	size_t rcap;
	ZSTD_DCtx *dctx;
	uint8_t *dbuf;

	uint64_t bytes_compared;
	uint64_t bytes_written;
	uint64_t bytes_received;
	/* The progress record (record.c). */
	uint64_t persisted_done;
	uint64_t written_since;
	/* The first block written since the record was last made durable,
	 * SESSION_CLEAN when none (under the lock: the hash thread's window
	 * ends one window past it, so a crash loses at most one window of
	 * data, whatever the record's cadence). */
	uint64_t dirty_block;
	double last_persist;
	double start;
	double merge_seconds;
	bool error_sent;
};

#define SESSION_CLEAN UINT64_MAX

/* A line for the server's log (serve.c). */
void serve_log(struct server *srv, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define S_LOG(s, level, fmt, ...)                                        \
	serve_log((s)->srv, level, "session %u: peer %s: " fmt, (s)->id, \
		  (s)->peer, ##__VA_ARGS__)

/* serve_session.c: one frame to the primary, under the send lock. */
int session_send(struct session *s, const struct msg *m);
/* Tell the primary why the session ends (once), and log it.  Returns
 * -EIO, or -EPROTO for a protocol error: the session is over. */
int session_error(struct session *s, uint32_t code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* A malformed frame from the primary: ERROR 6, then the end. */
int session_protocol_error(struct session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* After HELLO and claiming the export: the session of each kind.  Each
 * returns 0 or a negative errno and sets @result for the log. */
int session_copy(struct session *s, const char **result);
int session_merge(struct session *s, const char **result);
int session_discard(struct session *s, const char **result);

#endif
