/* SPDX-License-Identifier: MIT */
/*
 * push_compare.c - the copy of a primary-side session (push_session.h):
 * the receiver thread that takes HASHES and SUBHASHES off the connection
 * into bounded queues, and this thread's loop that reads the local disk,
 * compares, asks for the sub-block hashes of blocks that differ and sends
 * the differing 4 KiB pieces, then DONE.
 *
 * What each range turned out to be (zero on both sides, identical, sent)
 * goes into push_params.map when the caller wants a picture of the disk.
 *
 * Memory is bounded by the window the recovery side announces: the hash
 * ring holds at most one window of entries, and only blocks that differ
 * (at most one window of them, since credit is returned only for decided
 * blocks) are copied while they wait for their sub-block hashes.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zstd.h>

#include "agent/lib/fmt.h"
#include "agent/sync/common.h"
#include "agent/sync/setup.h"
#include "agent/sync/proto.h"
#include "agent/sync/push_session.h"
#include "uring/blocks.h"
#include "uring/reader.h"

/* How many blocks the reader loop decides before looking at SUBHASHES. */
#define BATCH_BLOCKS 1024
/*
 * At most this many bytes of differing blocks wait for their sub-block
 * hashes: a window may be far larger (the recovery side's choice), and a
 * disk whose every block differs must not make us hold a window of data.
 * A SUBHASHES answer takes one round trip, so this is plenty to keep the
 * link busy.  Blocks that wait as their place in the file count too,
 * though they hold no copy: the compare must not run far ahead of what
 * is decided, which is the job's progress and the recovery side's
 * durable resume point (under --bwlimit, the data of blocks far ahead
 * would go out while the first waiting one holds both back).
 */
#define PEND_BYTES_MAX (16u << 20)
/* Their buffers come in slabs of this much, mapped as they are needed. */
#define PEND_SLAB_BYTES (1u << 20)
/* Frames gather in a batch of this size (one write, one TLS record), and
 * none waits in it longer than BATCH_AGE_NS. */
#define BATCH_BYTES (64u << 10)
#define BATCH_AGE_NS 1000000u
#define CREDIT_BYTES (2u << 20)
/*
 * A send that failed waits this long for the receiver to read what the
 * peer sent before it closed: a recovery side that gives up (a full disk)
 * sends ERROR and closes while we are still sending DATA, and our write
 * can fail before the receiver has read that ERROR.
 */
#define RX_GRACE_MS 2000

static const uint8_t zero_page[PROTO_SUBBLOCK];

/* ---- sending ------------------------------------------------------------- */

/* Token bucket: wait until @n more bytes fit under --bwlimit. */
static int push_flush(struct push *ps);

static int throttle(struct push *ps, size_t n)
{
	double rate = (double)ps->p->bwlimit, burst, t, wait;
	int ret;

	if (!ps->p->bwlimit)
		return 0;
	burst = rate / 10 > 65536 ? rate / 10 : 65536;
	t = mono_seconds();
	ps->tokens += (t - ps->last_refill) * rate;
	if (ps->tokens > burst)
		ps->tokens = burst;
	ps->last_refill = t;
	ps->tokens -= (double)n;
	if (ps->tokens >= 0)
		return 0;
	wait = -ps->tokens / rate;
	ret = push_flush(ps);
	if (ret < 0)
		return ret;
	while (wait > 0) {
		double step = wait < 0.1 ? wait : 0.1;
		struct timespec ts = {
			.tv_sec = (time_t)step,
			.tv_nsec = (long)((step - (double)(time_t)step) * 1e9),
		};

		if (push_stopping(ps))
			return -ECANCELED;
		nanosleep(&ts, NULL);
		wait -= step;
	}
	return 0;
}

static int rx_state(struct push *ps);

/* Under ps->lock: give the receiver a moment to reach the end of what
 * the peer sent (an ERROR, or the connection's end). */
static void rx_settle(struct push *ps)
{
	struct timespec ts;

	if (!ps->rx_running)
		return;
	push_deadline(&ts, RX_GRACE_MS);
	while (!ps->rx_err && !ps->remote_error && !ps->finished)
		if (pthread_cond_timedwait(&ps->cond, &ps->lock, &ts))
			break;
}

/* A send failed with @ret (@terr): the receiver usually knows better why
 * (an ERROR frame). */
static int send_failed(struct push *ps, int ret, const struct vhdx_error *terr)
{
	int rx;

	if (push_stopping(ps))
		return -ECANCELED;
	pthread_mutex_lock(&ps->lock);
	rx_settle(ps);
	rx = rx_state(ps);
	pthread_mutex_unlock(&ps->lock);
	if (rx)
		return rx;
	if (terr->msg[0])
		push_fail(ps, ret, "%s", terr->msg);
	else
		push_fail(ps, ret, "peer %s: connection lost: %s", ps->peer,
			  strerror(-ret));
	return ret;
}

/* Write out what the batch holds: before we wait, or when it has waited
 * long enough. */
static int push_flush(struct push *ps)
{
	struct vhdx_error terr;
	int ret;

	if (!ps->out.len)
		return 0;
	terr.msg[0] = '\0';
	ret = proto_batch_flush(ps->c, &ps->out, &terr);
	return ret < 0 ? send_failed(ps, ret, &terr) : 0;
}

int push_send_msg(struct push *ps, const struct msg *m, size_t payload)
{
	struct vhdx_error terr;
	int ret;

	if (push_stopping(ps))
		return -ECANCELED;
	ret = throttle(ps, PROTO_HDR_LEN + payload);
	if (ret < 0)
		return ret;
	terr.msg[0] = '\0';
	if (!ps->out.buf)
		ret = proto_send_msg(ps->c, m, &terr);
	else
		ret = proto_batch_msg(ps->c, &ps->out, m, &terr);
	if (ret < 0)
		return send_failed(ps, ret, &terr);
	/* The peer waits for SUBREQ and CREDIT: never hold them long. */
	if (proto_batch_age_ns(&ps->out) > BATCH_AGE_NS)
		return push_flush(ps);
	return 0;
}

static int send_credit(struct push *ps, bool final)
{
	uint64_t d = push_done_block(ps);
	struct msg m = { .type = PROTO_CREDIT };

	if (d == ps->told_block && !final)
		return 0;
	pthread_mutex_lock(&ps->lock);
	ps->granted += d - ps->told_block;
	pthread_mutex_unlock(&ps->lock);
	m.u.credit.blocks = (uint32_t)(d - ps->told_block);
	m.u.credit.done_through = ur_clip(ps->size, 0, d * ps->bs);
	ps->told_block = d;
	return push_send_msg(ps, &m, PROTO_CREDIT_LEN);
}

static int send_zero(struct push *ps, uint64_t off, uint64_t len)
{
	struct msg m = { .type = PROTO_ZERO };

	m.u.zero.offset = off;
	m.u.zero.length = len;
	ps->st->bytes_zeroed += len;
	return push_send_msg(ps, &m, PROTO_ZERO_LEN);
}

static int send_data(struct push *ps, uint64_t off, const uint8_t *data,
		     uint32_t len)
{
	struct msg m = { .type = PROTO_DATA };

	m.u.data.offset = off;
	m.u.data.length = len;
	m.u.data.data = data;
	m.u.data.data_len = len;
	if (ps->cctx) {
		size_t z = ZSTD_compressCCtx(
			ps->cctx, ps->zbuf, ps->zcap, data, len,
			ps->p->compress_level ? ps->p->compress_level : 1);

		if (!ZSTD_isError(z) && z < len) {
			m.u.data.compressed = true;
			m.u.data.data = ps->zbuf;
			m.u.data.data_len = (uint32_t)z;
		}
	}
	ps->st->bytes_sent += m.u.data.data_len;
	ps->st->bytes_data += len;
	return push_send_msg(ps, &m, PROTO_DATA_FIXED + m.u.data.data_len);
}

static bool is_zero(const uint8_t *p, size_t len)
{
	return !memcmp(p, zero_page, len);
}

/* Tell the caller's map (push_params.map) what a range is. */
static void mark(struct push *ps, uint64_t off, uint64_t len,
		 enum svgmap_class c)
{
	if (ps->p->map)
		svgmap_add(ps->p->map, off, len, c);
}

/*
 * Send the 4 KiB pieces of block @block whose hashes differ.  @data NULL:
 * the block reads as zeros here; @local/@remote NULL: every piece has the
 * zero hash on that side.  Runs of neighbouring pieces go as one frame.
 */
static int send_pieces(struct push *ps, uint64_t block, uint32_t len,
		       const uint8_t *data, const uint8_t *local,
		       const uint8_t *remote)
{
	uint64_t base = block * ps->bs;
	unsigned i, nsub = sync_nsub(len);
	int kind = 0; /* 0 none, 1 zero, 2 data */
	uint32_t run_off = 0, run_len = 0;
	int ret;

	for (i = 0; i <= nsub; i++) {
		uint32_t off = i * PROTO_SUBBLOCK, plen = 0;
		int k = 0;

		if (i < nsub) {
			const uint8_t *zh, *lh, *rh;

			plen = len - off < PROTO_SUBBLOCK ? len - off
							  : PROTO_SUBBLOCK;
			zh = sync_zero_sub_hash(&ps->rd.zero, plen);
			lh = local ? local + (size_t)i * PROTO_HASH_LEN : zh;
			rh = remote ? remote + (size_t)i * PROTO_HASH_LEN : zh;
			if (memcmp(lh, rh, PROTO_HASH_LEN)) {
				ps->st->bytes_different += plen;
				k = !data || is_zero(data + off, plen) ? 1 : 2;
				mark(ps, base + off, plen, SVGMAP_DIFF);
			} else {
				mark(ps, base + off, plen,
				     memcmp(lh, zh, PROTO_HASH_LEN)
					     ? SVGMAP_SAME
					     : SVGMAP_ZERO);
			}
		}
		if (kind &&
		    (k != kind || (k == 2 && run_len + plen > ps->data_cap))) {
			ret = kind == 1 ? send_zero(ps, base + run_off, run_len)
					: send_data(ps, base + run_off,
						    data + run_off, run_len);
			if (ret < 0)
				return ret;
			kind = 0;
		}
		if (k && !kind) {
			kind = k;
			run_off = off;
			run_len = 0;
		}
		run_len += plen;
	}
	return 0;
}

/* ---- receiving ----------------------------------------------------------- */

static void rx_fail(struct push *ps, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void rx_fail(struct push *ps, int ret, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&ps->lock);
	if (!ps->rx_err) {
		ps->rx_err = ret;
		va_start(ap, fmt);
		vsnprintf(ps->rx_msg, sizeof(ps->rx_msg), fmt, ap);
		va_end(ap);
	}
	pthread_cond_broadcast(&ps->cond);
	pthread_mutex_unlock(&ps->lock);
}

static size_t rx_cap(void)
{
	static const unsigned types[] = { PROTO_HASHES, PROTO_SUBHASHES,
					  PROTO_ERROR, PROTO_FINISHED };
	size_t cap = 0, i;

	for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (proto_limit(types[i]) > cap)
			cap = proto_limit(types[i]);
	return cap;
}

static bool rx_hashes(struct push *ps, const struct msg_hashes *h)
{
	uint64_t i;

	pthread_mutex_lock(&ps->lock);
	if (h->first_block != ps->recv_block || !h->count ||
	    h->first_block + h->count > ps->nblocks ||
	    h->first_block + h->count > ps->resume_block + ps->granted) {
		pthread_mutex_unlock(&ps->lock);
		rx_fail(ps, -EPROTO,
			"peer %s: malformed frame: HASHES "
			"for blocks %" PRIu64 "+%u out of order or "
			"beyond the credit",
			ps->peer, h->first_block, h->count);
		return false;
	}
	for (i = 0; i < h->count; i++)
		memcpy(ps->ring + ((h->first_block + i) % ps->window) *
					  PROTO_HASH_ENTRY_LEN,
		       h->entries + i * PROTO_HASH_ENTRY_LEN,
		       PROTO_HASH_ENTRY_LEN);
	ps->recv_block += h->count;
	pthread_cond_broadcast(&ps->cond);
	pthread_mutex_unlock(&ps->lock);
	return true;
}

static bool rx_subhashes(struct push *ps, const struct msg_subhashes *m)
{
	struct sub_msg *s;

	if (m->count > ps->nsub_max) {
		rx_fail(ps, -EPROTO,
			"peer %s: malformed frame: "
			"SUBHASHES with %u hashes for %u-byte blocks",
			ps->peer, m->count, ps->bs);
		return false;
	}
	s = malloc(sizeof(*s) + (size_t)m->count * PROTO_HASH_LEN);
	if (!s) {
		rx_fail(ps, -ENOMEM, "out of memory");
		return false;
	}
	s->next = NULL;
	s->block = m->block;
	s->count = m->count;
	memcpy(s->hashes, m->hashes, (size_t)s->count * PROTO_HASH_LEN);
	pthread_mutex_lock(&ps->lock);
	/* Every SUBHASHES answers a SUBREQ of ours: a window's worth at
	 * most. */
	if (ps->nsubs >= ps->window) {
		pthread_mutex_unlock(&ps->lock);
		free(s);
		rx_fail(ps, -EPROTO,
			"peer %s: malformed frame: "
			"SUBHASHES nobody asked for",
			ps->peer);
		return false;
	}
	if (ps->subs_tail)
		ps->subs_tail->next = s;
	else
		ps->subs = s;
	ps->subs_tail = s;
	ps->nsubs++;
	pthread_cond_broadcast(&ps->cond);
	pthread_mutex_unlock(&ps->lock);
	return true;
}

/* FINISHED is the answer to DONE, and the last frame. */
static bool rx_finished(struct push *ps, const struct msg_finished *f)
{
	pthread_mutex_lock(&ps->lock);
	if (!ps->done_sent) {
		pthread_mutex_unlock(&ps->lock);
		rx_fail(ps, -EPROTO,
			"peer %s: malformed frame: "
			"FINISHED before DONE",
			ps->peer);
		return false;
	}
	ps->finished = true;
	ps->fin = *f;
	pthread_cond_broadcast(&ps->cond);
	pthread_mutex_unlock(&ps->lock);
	return false;
}

/* Returns false when the receiver should end. */
static bool rx_one(struct push *ps, const struct msg *m)
{
	switch (m->type) {
	case PROTO_HASHES:
		return rx_hashes(ps, &m->u.hashes);
	case PROTO_SUBHASHES:
		return rx_subhashes(ps, &m->u.subhashes);
	case PROTO_ERROR:
		pthread_mutex_lock(&ps->lock);
		ps->remote_error = true;
		ps->remote = m->u.error;
		pthread_cond_broadcast(&ps->cond);
		pthread_mutex_unlock(&ps->lock);
		return false;
	case PROTO_FINISHED:
		return rx_finished(ps, &m->u.finished);
	default:
		rx_fail(ps, -EPROTO, "peer %s: malformed frame: unexpected %s",
			ps->peer, proto_type_name(m->type));
		return false;
	}
}

static void *rx_main(void *arg)
{
	struct push *ps = arg;
	size_t cap = rx_cap();
	uint8_t *buf = malloc(cap);
	struct vhdx_error terr;
	struct msg m;
	int ret;

	if (!buf) {
		rx_fail(ps, -ENOMEM, "out of memory");
		return NULL;
	}
	for (;;) {
		terr.msg[0] = '\0';
		ret = proto_recv_msg(ps->c, &m, buf, cap, &terr);
		if (ret == -ETIMEDOUT) {
			bool waiting;

			/* After DONE the recovery side merges, which takes
			 * as long as it takes; the socket's keepalive
			 * still notices a dead peer. */
			pthread_mutex_lock(&ps->lock);
			waiting = ps->done_sent;
			pthread_mutex_unlock(&ps->lock);
			if (waiting && !push_stopping(ps))
				continue;
		}
		if (ret < 0) {
			rx_fail(ps, ret, "%s",
				terr.msg[0] ? terr.msg : strerror(-ret));
			break;
		}
		if (!rx_one(ps, &m))
			break;
	}
	free(buf);
	return NULL;
}

/* ---- comparing ----------------------------------------------------------- */

int push_remote_error(struct push *ps)
{
	const struct msg_error *e = &ps->remote;
	int ret = sync_error_errno(e->code);

	return push_fail(ps, ret, "peer %s: %s", ps->peer,
			 e->message[0] ? e->message
				       : "error without a message");
}

/* The state of the receiver as an error, or 0. */
static int rx_state(struct push *ps)
{
	if (ps->remote_error)
		return push_remote_error(ps);
	if (ps->rx_err) {
		if (push_stopping(ps))
			return -ECANCELED;
		return push_fail(ps, ps->rx_err, "%s", ps->rx_msg);
	}
	return 0;
}

static const uint8_t *zero_hash_for(const struct push *ps, uint32_t len)
{
	return sync_zero_block_hash(&ps->rd.zero, ps->bs, len);
}

/*
 * The sub-block hashes of data block @b, packed as they travel.  Only
 * blocks that differ need them, a small part of most disks, so they are
 * computed here rather than by the reader for every block.
 */
static int pack_sub(struct push *ps, const struct ur_block *b, uint8_t *out)
{
	int ret = sync_hash_pieces(ps->hasher, b->data, b->len, out);

	if (ret < 0)
		return push_fail(ps, ret, "hashing: %s", strerror(-ret));
	return 0;
}

static int add_pending(struct push *ps, uint64_t block, uint32_t len,
		       const struct ur_block *b)
{
	size_t slot;
	struct pend *pd;
	struct msg m = { .type = PROTO_SUBREQ };
	int ret;

	if (ps->pend_count >= ps->window)
		return push_fail(ps, -EIO,
				 "internal error: more than a window "
				 "of blocks pending");
	slot = (ps->pend_head + ps->pend_count) % ps->window;
	pd = &ps->pend[slot];
	pd->block = block;
	pd->len = len;
	pd->zero = !b;
	pd->fd = -1;
	pd->data = NULL;
	pd->sub = ps->pend_sub + (size_t)slot * ps->nsub_max * PROTO_HASH_LEN;
	if (b) {
		/* Mostly one 4 KiB piece of a block differs: where the page
		 * cache holds the block, that piece is read again when the
		 * peer's hashes come, instead of a copy of all of it now. */
		if (b->fd >= 0) {
			pd->fd = b->fd;
			pd->file_off = b->file_off;
		} else {
			pd->data = bufpool_get(&ps->bufs);
			if (!pd->data)
				return push_fail(ps, -ENOMEM, "out of memory");
			memcpy(pd->data, b->data, len);
		}
		ps->pend_data++;
		ret = pack_sub(ps, b, pd->sub);
		if (ret < 0)
			return ret;
	}
	ps->pend_count++;
	m.u.subreq.block = block;
	return push_send_msg(ps, &m, PROTO_SUBREQ_LEN);
}

/* Read the pieces of pending block @pd whose hashes differ from @remote
 * into piece_buf, at their offsets in the block (send_pieces() looks at
 * no other bytes).  A piece that changed since it was compared goes as
 * it is now: what the recovery side gets is still what the source held. */
static int read_pieces(struct push *ps, const struct pend *pd,
		       const uint8_t *remote)
{
	unsigned i, first, nsub = sync_nsub(pd->len);
	int ret;

	for (i = 0; i < nsub;) {
		if (!memcmp(pd->sub + (size_t)i * PROTO_HASH_LEN,
			    remote + (size_t)i * PROTO_HASH_LEN,
			    PROTO_HASH_LEN)) {
			i++;
			continue;
		}
		first = i;
		while (i < nsub && memcmp(pd->sub + (size_t)i * PROTO_HASH_LEN,
					  remote + (size_t)i * PROTO_HASH_LEN,
					  PROTO_HASH_LEN))
			i++;
		{
			uint32_t off = first * PROTO_SUBBLOCK;
			uint32_t end = i * PROTO_SUBBLOCK < pd->len
					       ? i * PROTO_SUBBLOCK
					       : pd->len;

			ret = sync_pread_full(pd->fd, ps->piece_buf + off,
					      end - off, pd->file_off + off);
			if (ret < 0)
				return push_fail(ps, ret,
						 "%s: reading block %" PRIu64
						 " again: %s",
						 ps->p->src, pd->block,
						 sync_pread_error(ret));
		}
	}
	return 0;
}

static int handle_sub(struct push *ps, const struct sub_msg *s)
{
	struct pend *pd = &ps->pend[ps->pend_head];
	unsigned want;
	int ret;

	if (!ps->pend_count || s->block != pd->block)
		return push_fail(ps, -EPROTO,
				 "peer %s: malformed frame: SUBHASHES "
				 "for block %" PRIu64
				 ", which was not asked for "
				 "next",
				 ps->peer, s->block);
	want = sync_nsub(pd->len);
	if (s->count != want)
		return push_fail(ps, -EPROTO,
				 "peer %s: malformed frame: SUBHASHES "
				 "for block %" PRIu64 " has %u hashes, want %u",
				 ps->peer, s->block, s->count, want);
	if (pd->fd >= 0) {
		ret = read_pieces(ps, pd, s->hashes);
		if (ret < 0)
			return ret;
	}
	ret = send_pieces(ps, pd->block, pd->len,
			  pd->zero	? NULL
			  : pd->fd >= 0 ? ps->piece_buf
					: pd->data,
			  pd->zero ? NULL : pd->sub, s->hashes);
	if (ret < 0)
		return ret;
	if (!pd->zero)
		ps->pend_data--;
	if (pd->data) {
		bufpool_put(&ps->bufs, pd->data);
		pd->data = NULL;
	}
	ps->pend_head = (ps->pend_head + 1) % ps->window;
	ps->pend_count--;
	return 0;
}

/* Compare the next block (or run of zero blocks) whose remote hash is
 * here; returns how many blocks were decided or queued, or -errno. */
static int64_t compare_next(struct push *ps, uint64_t avail)
{
	struct ur_block b;
	const uint8_t *e;
	uint64_t n, i;
	int ret;

	ret = ur_stream_peek(ps->rd.stream, &b);
	if (ret < 0)
		return push_fail(ps, ret, "%s", ur_engine_error(ps->rd.eng));
	if (ret == 0 || b.index != ps->next_block)
		return push_fail(ps, -EIO,
				 "internal error: the reader is at block "
				 "%" PRIu64 ", expected %" PRIu64,
				 ret ? b.index : ps->nblocks, ps->next_block);
	if (b.zero) {
		n = b.run < avail ? b.run : avail;
		if (n > BATCH_BLOCKS)
			n = BATCH_BLOCKS;
		for (i = 0; i < n; i++) {
			uint64_t blk = ps->next_block + i;
			uint32_t len = ur_block_len(ps->size, ps->bs, blk);

			e = ps->ring +
			    (blk % ps->window) * PROTO_HASH_ENTRY_LEN;
			ps->st->bytes_compared += len;
			if (e[0] == PROTO_KIND_ZERO ||
			    !memcmp(e + 1, zero_hash_for(ps, len),
				    PROTO_HASH_LEN)) {
				mark(ps, blk * ps->bs, len, SVGMAP_ZERO);
				continue;
			}
			ps->st->blocks_different++;
			ret = add_pending(ps, blk, len, NULL);
			if (ret < 0)
				return ret;
		}
		ur_stream_release(ps->rd.stream, n);
		ps->next_block += n;
		return (int64_t)n;
	}
	e = ps->ring + (b.index % ps->window) * PROTO_HASH_ENTRY_LEN;
	ps->st->bytes_compared += b.len;
	if (e[0] == PROTO_KIND_ZERO) {
		if (!memcmp(b.hash.b, zero_hash_for(ps, b.len),
			    PROTO_HASH_LEN)) {
			mark(ps, b.off, b.len, SVGMAP_ZERO);
		} else {
			/* The other side is all zeros: its sub-hashes are
			 * known, no need to ask for them. */
			ps->st->blocks_different++;
			ret = pack_sub(ps, &b, ps->scratch);
			if (ret < 0)
				return ret;
			ret = send_pieces(ps, b.index, b.len, b.data,
					  ps->scratch, NULL);
			if (ret < 0)
				return ret;
		}
	} else if (memcmp(e + 1, b.hash.b, PROTO_HASH_LEN)) {
		ps->st->blocks_different++;
		ret = add_pending(ps, b.index, b.len, &b);
		if (ret < 0)
			return ret;
	} else {
		mark(ps, b.off, b.len,
		     memcmp(b.hash.b, zero_hash_for(ps, b.len), PROTO_HASH_LEN)
			     ? SVGMAP_SAME
			     : SVGMAP_ZERO);
	}
	ur_stream_release(ps->rd.stream, 1);
	ps->next_block++;
	return 1;
}

/* Wait a little for the receiver to bring something. */
static void wait_rx(struct push *ps, bool (*ready)(const struct push *))
{
	struct timespec ts;

	/* a failure is the receiver's to explain: rx_state() reports it */
	if (push_flush(ps) < 0)
		return;
	push_deadline(&ts, 100);
	pthread_mutex_lock(&ps->lock);
	if (!ready(ps) && !ps->rx_err && !ps->remote_error)
		pthread_cond_timedwait(&ps->cond, &ps->lock, &ts);
	pthread_mutex_unlock(&ps->lock);
}

/* Whether another differing block (its copy or its place) may wait for
 * its sub-hashes now (main thread only). */
static bool pend_room(const struct push *ps)
{
	uint32_t max = PEND_BYTES_MAX / ps->bs;

	return ps->pend_data < (max > 2 ? max : 2);
}

static bool compare_ready(const struct push *ps)
{
	return ps->subs || (ps->recv_block > ps->next_block && pend_room(ps));
}

static bool finish_ready(const struct push *ps)
{
	return ps->finished;
}

static int compare_all(struct push *ps)
{
	/* Credit goes back every quarter window, and at least every
	 * CREDIT_BYTES: done_through is also the recovery side's durable
	 * progress (what a cut session resumes from) and our progress
	 * report, and a window is up to 256 MiB. */
	uint64_t step = ps->window / 4, most = CREDIT_BYTES / ps->bs;

	if (step > most)
		step = most;
	if (!step)
		step = 1;
	struct sub_msg *subs, *s;
	uint64_t avail, n_done;
	bool progressed;
	int64_t n;
	int ret;

	while (ps->next_block < ps->nblocks || ps->pend_count) {
		if (push_stopping(ps))
			return -ECANCELED;
		pthread_mutex_lock(&ps->lock);
		ret = rx_state(ps);
		subs = ps->subs;
		ps->subs = ps->subs_tail = NULL;
		ps->nsubs = 0;
		avail = ps->recv_block - ps->next_block;
		pthread_mutex_unlock(&ps->lock);
		progressed = subs != NULL;
		while ((s = subs)) {
			subs = s->next;
			if (!ret)
				ret = handle_sub(ps, s);
			free(s);
			/* Under --bwlimit the sends of a window's worth of
			 * pending blocks take minutes: the report and the
			 * recovery side's durable progress keep up. */
			if (!ret &&
			    push_done_block(ps) - ps->told_block >= step)
				ret = send_credit(ps, false);
			if (!ret)
				push_report(ps, false);
		}
		if (ret < 0)
			return ret;
		n_done = 0;
		while (avail && n_done < BATCH_BLOCKS && pend_room(ps)) {
			n = compare_next(ps, avail);
			if (n < 0)
				return (int)n;
			avail -= (uint64_t)n;
			n_done += (uint64_t)n;
			if (push_done_block(ps) - ps->told_block >= step) {
				ret = send_credit(ps, false);
				if (ret < 0)
					return ret;
			}
			/* a batch can take long under --bwlimit */
			push_report(ps, false);
		}
		progressed |= n_done > 0;
		/* Nothing left to do until the peer answers: hand back
		 * all the credit we have, or both sides would wait. */
		if (push_done_block(ps) - ps->told_block >= step ||
		    (!progressed && push_done_block(ps) > ps->told_block)) {
			ret = send_credit(ps, false);
			if (ret < 0)
				return ret;
		}
		push_report(ps, false);
		ret = push_flush(ps);
		if (ret < 0)
			return ret;
		if (!progressed)
			wait_rx(ps, compare_ready);
	}
	ret = send_credit(ps, false);
	return ret < 0 ? ret : push_flush(ps);
}

static int wait_finished(struct push *ps)
{
	struct msg m = { .type = PROTO_DONE };
	int ret;

	pthread_mutex_lock(&ps->lock);
	ps->done_sent = true;
	pthread_mutex_unlock(&ps->lock);
	ret = push_send_msg(ps, &m, 0);
	if (ret >= 0)
		ret = push_flush(ps);
	if (ret < 0) {
		pthread_mutex_lock(&ps->lock);
		ret = rx_state(ps) ?: ret;
		pthread_mutex_unlock(&ps->lock);
		return ret;
	}
	for (;;) {
		if (push_stopping(ps))
			return -ECANCELED;
		pthread_mutex_lock(&ps->lock);
		ret = rx_state(ps);
		if (!ret && ps->finished) {
			ps->st->recovery_bytes_written = ps->fin.bytes_written;
			ps->st->merge_seconds = ps->fin.seconds_merge;
			pthread_mutex_unlock(&ps->lock);
			return 0;
		}
		pthread_mutex_unlock(&ps->lock);
		if (ret)
			return ret;
		push_report(ps, false);
		wait_rx(ps, finish_ready);
	}
}

void push_send_error(struct push *ps, uint32_t code, const char *text)
{
	struct vhdx_error terr;
	struct msg m;

	if (!ps->c || ps->aborted)
		return;
	sync_error_msg(&m, code, "%s", text);
	/* what went before it, then the ERROR itself */
	if (ps->out.len && proto_batch_flush(ps->c, &ps->out, &terr) < 0)
		return;
	proto_send_msg(ps->c, &m, &terr);
}

static int start_reader(struct push *ps)
{
	enum sync_reader_step step;
	struct ur_config cfg;
	char msg[512];
	int ret;

	sync_reader_config(&cfg, ps->bs, sync_hash_id(ps->p->hash), ps->seed);
	/* a view (hvresync mount or map) is what mount-and-resync reads */
	ur_config_views(&cfg, &ps->src, 1);
	ret = ur_hasher_new(cfg.hash, cfg.seed, &ps->hasher);
	if (ret < 0)
		return push_fail(ps, ret, "cannot set up the %s hash: %s",
				 ur_hash_name(cfg.hash), strerror(-ret));
	ret = sync_reader_start(&ps->rd, &cfg, ps->src, ps->resume_block,
				ps->size, &step, msg, sizeof(msg));
	/* the source's path leads, as in every message about it */
	if (ret < 0 && step == SYNC_READER_CONFIG)
		return push_fail(ps, ret, "%s: %s", ps->p->src, msg);
	if (ret < 0 && step == SYNC_READER_ADD)
		return push_fail(ps, ret, "%s: %s", ps->p->src, strerror(-ret));
	if (ret < 0)
		return push_fail(ps, ret, "%s", msg);
	return 0;
}

static int alloc_session(struct push *ps)
{
	uint32_t cap = PROTO_DATA_MAX;

	ps->ring = calloc(ps->window, PROTO_HASH_ENTRY_LEN);
	ps->pend = calloc(ps->window, sizeof(*ps->pend));
	if (proto_batch_init(&ps->out, BATCH_BYTES) < 0)
		return push_fail(ps, -ENOMEM, "out of memory");
	ps->scratch = malloc((size_t)ps->nsub_max * PROTO_HASH_LEN);
	ps->pend_sub =
		malloc((size_t)ps->window * ps->nsub_max * PROTO_HASH_LEN);
	ps->piece_buf = malloc(ps->bs);
	if (!ps->ring || !ps->pend || !ps->scratch || !ps->pend_sub ||
	    !ps->piece_buf ||
	    bufpool_init(&ps->bufs, ps->bs, PEND_SLAB_BYTES) < 0)
		return push_fail(ps, -ENOMEM, "out of memory");
	/* Under --bwlimit, frames small enough that one never waits long
	 * (the peer gives up after a silent minute). */
	if (ps->p->bwlimit && ps->p->bwlimit / 4 < cap)
		cap = (uint32_t)(ps->p->bwlimit / 4);
	cap -= cap % PROTO_SUBBLOCK;
	ps->data_cap = cap < PROTO_SUBBLOCK ? PROTO_SUBBLOCK : cap;
	if (ps->p->compress) {
		ps->cctx = ZSTD_createCCtx();
		ps->zcap = ZSTD_compressBound(ps->bs);
		ps->zbuf = malloc(ps->zcap);
		if (!ps->cctx || !ps->zbuf)
			return push_fail(ps, -ENOMEM, "out of memory");
	}
	return 0;
}

int push_copy(struct push *ps)
{
	int ret;

	ret = alloc_session(ps);
	if (ret < 0)
		return ret;
	if (ps->resume_block < ps->nblocks) {
		ret = start_reader(ps);
		if (ret < 0)
			goto local_error;
		ps->next_block = ps->resume_block; /* the reader starts there */
	} else {
		/* A complete held copy: nothing to read, only DONE. */
		ps->next_block = ps->resume_block;
	}
	ps->recv_block = ps->resume_block;
	ps->told_block = ps->resume_block;
	ps->granted = ps->window;
	ret = pthread_create(&ps->rx, NULL, rx_main, ps);
	if (ret)
		return push_fail(ps, -ret, "cannot start a thread: %s",
				 strerror(ret));
	ps->rx_running = true;
	ret = compare_all(ps);
	if (ret == -EPROTO)
		push_send_error(ps, PROTO_ERR_PROTOCOL, ps->err);
	if (ret < 0 && ps->rd.eng && *ur_engine_error(ps->rd.eng))
		goto local_error;
	if (ret < 0)
		return ret;
	push_report(ps, true);
	return wait_finished(ps);

local_error:
	push_send_error(ps, PROTO_ERR_IO, ps->err);
	return ret;
}
