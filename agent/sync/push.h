/* SPDX-License-Identifier: MIT */
/*
 * push.h - the primary side of the hvresync protocol (docs/protocol.md):
 * bring one recovery disk, exported by `hvresync serve` or the agent, in
 * line with a local disk.  `hvresync push` is a thin CLI over push_disk();
 * the agent daemon's jobs call it too, with their own stop flag and
 * progress callback.
 *
 * Both sides read their disk at once: the recovery side streams block
 * hashes under credit, this side compares them with its own (io_uring
 * reader), asks for 4 KiB sub-block hashes of the blocks that differ and
 * sends only the differing 4 KiB pieces (zero pieces as ZERO).
 */
#ifndef HVRESYNC_PUSH_H
#define HVRESYNC_PUSH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/lib/svgmap.h"
#include "agent/sync/common.h"
#include "agent/sync/setup.h"
#include "agent/sync/proto.h"
#include "agent/sync/tls.h"
#include "uring/hash.h"

/* Session kinds (HELLO flags); a session does one thing. */
#define PUSH_RESTART PROTO_HELLO_RESTART /* drop an earlier partial copy */
#define PUSH_CHECK PROTO_HELLO_CHECK	 /* geometry check only */
#define PUSH_HOLD PROTO_HELLO_HOLD	 /* copy, keep the child unmerged */
#define PUSH_MERGE PROTO_HELLO_MERGE	 /* merge a held child now */
#define PUSH_DISCARD PROTO_HELLO_DISCARD /* drop the child and progress */
#define PUSH_REPASS PROTO_HELLO_REPASS	 /* with HOLD: compare all again */

#define PUSH_DEFAULT_BLOCK (64u << 10)
#define PUSH_DEFAULT_TIMEOUT_MS 60000

struct push_stats {
	uint64_t virtual_size;
	uint64_t resume_offset;	 /* where the recovery side resumed */
	uint64_t position;	 /* every byte below this is decided */
	uint64_t bytes_compared; /* virtual bytes whose hashes were compared */
	uint64_t blocks_different; /* compare blocks whose hashes differed */
	uint64_t bytes_different;  /* in the 4 KiB pieces found different */
	uint64_t bytes_sent;	   /* DATA payload bytes (compressed size) */
	uint64_t bytes_data;	   /* disk bytes those DATA frames cover */
	uint64_t bytes_zeroed;	   /* disk bytes sent as ZERO instructions */
	uint64_t wire_bytes;	   /* TCP payload bytes sent and received,
				    * TLS records included (TCP_INFO) */
	uint64_t recovery_bytes_written; /* from FINISHED */
	double merge_seconds;		 /* from FINISHED */
	double seconds;			 /* connect to FINISHED */
	bool welcomed; /* the recovery side accepted the session (WELCOME):
			* a RESTART took effect, a retry must resume */
};

struct push_params {
	const char *src;	 /* VHDX, raw file, block device or raw view;
				  * may be NULL for MERGE and DISCARD */
	const char *addr;	 /* "HOST:PORT" (tls_parse_addr forms) */
	const char *export_name; /* the export-name rule of common.h */
	const struct tls_config *tls;
	uint32_t block_size;	/* compare block; 0: 64 KiB */
	enum ur_hash_algo hash; /* UR_HASH_XXH3_128 (0) or UR_HASH_SHA256 */
	bool compress;		/* zstd per DATA frame */
	int compress_level;	/* 0: 1 (fast) */
	uint64_t bwlimit;	/* bytes per second on sends; 0: none */
	unsigned flags;		/* PUSH_* */
	int timeout_ms;		/* connect and silence limit; 0: 60 s */
	uint32_t sector_size;	/* logical sector size to announce; 0: the
				 * source's (a raw view of a 4096-byte-sector
				 * VHDX reads as 512 unless told) */
	/* Checked often (atomic loads; set it with __atomic_store_n, also
	 * from a signal handler); when it becomes non-zero the connection
	 * is closed and push_disk() returns -ECANCELED (the recovery side
	 * keeps its child and progress for a later resume). */
	const volatile int *stop;
	/* Called a few times a second from push_disk()'s thread. */
	void (*progress)(void *ctx, const struct push_stats *st);
	void *ctx;
	/* Optional: each range compared goes in here as zero on both
	 * sides, identical, or differing (the 4 KiB pieces sent), for a
	 * picture of the disk.  Written from push_disk()'s thread only (the
	 * progress callback runs there too, so it may read it). */
	struct svgmap *map;
};

/*
 * Run one session.  Returns 0 when the recovery side answered FINISHED
 * (after a copy: its disk is now identical, or held complete with
 * PUSH_HOLD), or a negative errno whose class the caller can map:
 *   -EACCES        authentication failed
 *   -ENOENT        the recovery side has no export of that name
 *   -EBUSY         the export is in another session
 *   -EXDEV         geometry (virtual size, logical sector size) differs
 *   -EHOSTUNREACH, -ECONNREFUSED, -ETIMEDOUT, -ENETUNREACH: unreachable
 *   -ECONNRESET, -EPIPE: the connection was reset or closed under us
 *   -ECANCELED     *stop was set
 *   -EPROTO        the peer broke the protocol
 *   -EPROTONOSUPPORT the peer does not speak this version or option
 *   -EINVAL        bad parameters (nothing was sent)
 *   -EIO           an I/O error on either side, other failures
 * @err gets one line ("peer 10.0.0.2:7433: authentication failed (...)",
 * "SRC: cannot open: ...").  @st (optional) is filled as far as the
 * session got, on failure too.
 */
int push_disk(const struct push_params *p, struct push_stats *st, char *err,
	      size_t errlen);

/*
 * Split "HOST:PORT/NAME" ("[V6]:PORT/NAME", "HOST/NAME") at the first '/'
 * into @addr and @name.  -EINVAL (with @err) for an empty part, a part
 * that is too long or a name that breaks the export-name rule (common.h).
 */
int push_parse_target(const char *target, char *addr, size_t addrlen,
		      char *name, size_t namelen, char *err, size_t errlen);

/* push_security_config(), which push, serve and the agent call, is in
 * setup.h. */

#endif
