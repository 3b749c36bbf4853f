/* SPDX-License-Identifier: MIT */
/*
 * internal.h - the io_uring reader's engine state, shared by its two
 * halves and seen by nothing outside uring/:
 *
 *	reader.c  the engine's life (configure, add streams, start, free)
 *	          and the consumer's side (peek and release blocks)
 *	lane.c    the lanes: planning chunks under the engine lock, then
 *	          reading them through their own ring and hashing them
 *
 * Shared state (plan cursors, slot queues, the free buffer list) lives
 * under one engine mutex; buffer contents and hashes belong to the lane
 * that planned the chunk until it publishes the chunk as READY, then to
 * the consumer until it releases the last block.  Lanes plan in order, so
 * every stream's queue of slots is in virtual order and the consumer only
 * ever looks at its head.
 */
#ifndef HVRESYNC_URING_INTERNAL_H
#define HVRESYNC_URING_INTERNAL_H

#include <liburing.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "uring/cached.h"
#include "uring/plan.h"
#include "uring/reader.h"

#define MAX_LANES 16

enum chunk_state {
	CHUNK_FREE,
	CHUNK_BUSY,  /* planned; the lane is reading or hashing it */
	CHUNK_READY, /* hashed; the consumer's until the last release */
};

struct lane;

struct chunk {
	unsigned idx; /* registered buffer index */
	uint8_t *buf;
	struct ur_stream *s;
	uint64_t first; /* first block index */
	unsigned nblocks;
	enum chunk_state state;
	struct ur_oplist ops;
	unsigned pending; /* read ops not finished */
	struct ur_hash *hashes;
	struct ur_hash *sub;
	struct chunk *next; /* free list, or a lane's completed list */
};

struct slot {
	uint64_t first;
	uint64_t n;
	uint64_t consumed;
	struct chunk *c; /* NULL: a run of zero blocks */
};

struct ur_stream {
	struct ur_engine *e;
	struct ur_source *src;
	struct ur_cursor cur;
	uint64_t size;
	uint64_t nblocks;
	uint64_t plan_block; /* next block to plan */
	struct slot *fifo;
	unsigned fifo_cap, head, count;
	unsigned in_use, quota;	  /* chunk buffers held, and the cap */
	struct ur_hash zero_hash; /* of a full block of zeros */
	struct ur_hash zero_last; /* of the short last block, if any */
	struct ur_stream_stats stats;

	/* The consumer's copy of the head slot: blocks of a ready slot are
	 * handed out without the lock, which is only taken per slot. */
	struct slot cs;
	bool cs_valid;
};

struct direct_fd {
	int fd;
	int dfd;       /* -1 when O_DIRECT is not possible for it */
	bool view;     /* a file on FUSE or a device over loop devices */
	bool probe_ok; /* direct_uncached: probe tells what is cached */
	struct ur_cache_probe probe;
};

struct lane {
	struct ur_engine *e;
	pthread_t thread;
	bool started;
	struct io_uring ring;
	bool ring_ok;
	bool sync;  /* no io_uring here: plain pread() in this thread */
	bool fixed; /* buffers registered with this ring */
	struct ur_hasher *hasher;
	unsigned owned;	   /* chunks planned and not yet published */
	unsigned inflight; /* SQEs in flight */
	struct ur_op *sq_head, *sq_tail; /* ops waiting for an SQE */
	struct chunk *done;		 /* chunks read, waiting to be hashed */
	bool leak; /* reads never came back: keep the buffers */
};

struct ur_engine {
	struct ur_config cfg;
	uint32_t chunk_size;
	unsigned chunk_blocks;
	unsigned subs_per_chunk;

	pthread_mutex_t lock;
	pthread_cond_t lane_cond; /* buffers or slots were freed; stop */
	pthread_cond_t cons_cond; /* a chunk became ready; an error */
	unsigned lanes_waiting;	  /* on lane_cond */
	bool cons_waiting;	  /* on cons_cond */
	unsigned ready;		  /* slots ready and not yet released */
	unsigned wake_batch;	  /* wake the consumer for this many */

	struct ur_stream *streams[UR_MAX_STREAMS];
	unsigned nstreams;

	struct lane lanes[MAX_LANES];
	unsigned nlanes;
	unsigned lane_cap; /* chunks a lane may own at once */

	struct chunk *chunks;
	unsigned nchunks;
	struct chunk *free_list;
	uint8_t *bufmem;
	size_t bufbytes;

	struct direct_fd direct[16];
	unsigned ndirect;

	struct ur_hasher *hasher; /* the consumer's, for zero hashes */
	bool sync_fallback;	  /* some lane had to do without io_uring */
	bool started;
	bool stop;
	int err;
	char errmsg[512];
};

/* --- reader.c ---------------------------------------------------------- */

/*
 * Record the engine's first error (later ones are dropped) and wake
 * everyone, so lanes and consumer see it.  Engine lock held.
 */
void ur_fail_locked(struct ur_engine *e, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Hand chunk C back to the free list.  Engine lock held. */
static inline void ur_chunk_put(struct ur_engine *e, struct chunk *c)
{
	c->state = CHUNK_FREE;
	c->next = e->free_list;
	e->free_list = c;
}

/* --- lane.c ------------------------------------------------------------ */

/* Start one thread per lane.  0, or a negative errno (already recorded). */
int ur_lanes_start(struct ur_engine *e);
/*
 * Stop and join the lanes and free their rings and hashers.  Returns true
 * when a read never came back, so the buffers must stay mapped.
 */
bool ur_lanes_stop(struct ur_engine *e);

#endif
