/* SPDX-License-Identifier: MIT */
/*
 * push_session.h - the insides of the primary side (push.h), shared by
 * its two files and by no one else: push.c sets a session up (parameters,
 * source, connection, HELLO and WELCOME) and tears it down; push_compare.c
 * runs the copy (the receiver thread, the compare-and-send loop, DONE).
 */
#ifndef HVRESYNC_SYNC_PUSH_SESSION_H
#define HVRESYNC_SYNC_PUSH_SESSION_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <zstd.h>

#include "agent/lib/bufpool.h"
#include "agent/sync/common.h"
#include "agent/sync/setup.h"
#include "agent/sync/proto.h"
#include "agent/sync/push.h"
#include "agent/sync/tls.h"
#include "uring/hash.h"
#include "uring/reader.h"

/* A SUBHASHES frame, copied out of the receive buffer. */
struct sub_msg {
	struct sub_msg *next;
	uint64_t block;
	uint32_t count;
	uint8_t hashes[];
};

/* A differing block waiting for its sub-block hashes. */
struct pend {
	uint64_t block;
	uint32_t len;
	bool zero;	   /* reads as zeros here: no copy */
	int fd;		   /* >= 0: the block lies at FILE_OFF there */
	uint64_t file_off; /* (read again, only what differs, when sent) */
	uint8_t *data;	   /* else block_size bytes, from the buffer pool */
	uint8_t *sub;	   /* nsub_max local sub-hashes */
};

struct push {
	const struct push_params *p;
	struct push_stats *st;
	char *err;
	size_t errlen;
	struct conn *c;
	char peer[128];

	uint64_t size;
	uint32_t bs;
	uint32_t sector;
	uint64_t nblocks;
	unsigned nsub_max;
	uint64_t resume_block;
	uint8_t seed[16];
	uint32_t window;

	struct ur_source *src;
	struct sync_reader rd;
	struct ur_hasher *hasher; /* sub-block hashes, this thread's */

	/* Shared with the receiver, under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint8_t *ring;	     /* window entries of PROTO_HASH_ENTRY_LEN */
	uint64_t recv_block; /* next block the HASHES stream covers */
	uint64_t granted;    /* blocks from resume_block on we took */
	struct sub_msg *subs, *subs_tail;
	unsigned nsubs;
	int rx_err; /* transport or protocol failure */
	char rx_msg[600];
	bool remote_error;
	struct msg_error remote;
	bool finished;
	struct msg_finished fin;
	bool done_sent;
	bool rx_running;
	pthread_t rx;

	/* The main thread's own. */
	uint64_t next_block; /* next block to compare */
	struct pend *pend;   /* FIFO of window slots */
	unsigned pend_head, pend_count;
	/* Buffers of pending slots (block data and sub-hashes), reused
	 * last in, first out: only as many exist as were ever pending at
	 * once, a reused one is still in the cache, and new ones come
	 * prefaulted (a fresh one per slot costs page faults). */
	struct bufpool bufs;
	unsigned pend_data;	/* pending slots with data: a copy or a place */
	uint8_t *pend_sub;	/* window x nsub_max local sub-hashes */
	uint8_t *piece_buf;	/* a block's differing pieces, read again */
	uint64_t told_block;	/* done_through last sent, in blocks */
	struct proto_batch out; /* small frames on their way out */
	ZSTD_CCtx *cctx;
	uint8_t *zbuf;
	size_t zcap;
	uint8_t *scratch;  /* nsub_max packed sub-hashes */
	uint32_t data_cap; /* largest DATA run */
	double tokens, last_refill;
	double start, last_progress;

	/* Watchdog. */
	pthread_t wd;
	bool wd_running;
	pthread_mutex_t wd_lock;
	pthread_cond_t wd_cond;
	bool wd_quit;
	bool aborted;
};

/* Every block below this is decided: the first one still waiting for its
 * sub-block hashes, or the next one to compare. */
static inline uint64_t push_done_block(const struct push *ps)
{
	return ps->pend_count ? ps->pend[ps->pend_head].block : ps->next_block;
}

/* The pthread_cond_timedwait() deadline @ms milliseconds from now (the
 * condition variables use the default, CLOCK_REALTIME). */
static inline void push_deadline(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += ms % 1000 * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* push.c */

/* Record the first error message (later ones are consequences); returns
 * @ret. */
int push_fail(struct push *ps, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Whether the caller asked to stop (push_params.stop). */
bool push_stopping(const struct push *ps);
/* Hand the statistics to the progress callback, at most a few times a
 * second unless @force. */
void push_report(struct push *ps, bool force);

/* push_compare.c */

/* Send @m (@payload bytes after the header) under --bwlimit; a failure
 * is explained by what the receiver saw when it can be. */
int push_send_msg(struct push *ps, const struct msg *m, size_t payload);
/* Tell the peer why we give up; best effort, never throttled. */
void push_send_error(struct push *ps, uint32_t code, const char *text);
/* The peer's ERROR (ps->remote) as an errno and message. */
int push_remote_error(struct push *ps);
/* After WELCOME: compare and send everything, then DONE and FINISHED. */
int push_copy(struct push *ps);

#endif
