/* SPDX-License-Identifier: MIT */
/*
 * serve_session.c - one recovery session after HELLO (serve_session.h,
 * docs/protocol.md): the copy, with its hash stream and receive loop, and
 * the MERGE and DISCARD sessions.
 *
 * The session thread receives (CREDIT, SUBREQ, DATA, ZERO, DONE), writing
 * into the disk (disk.c).  A second thread per session reads the disk
 * through the child with the io_uring reader and streams HASHES ahead, as
 * far as the primary's credit allows.  Sub-block hashes of blocks in
 * flight are kept in a ring of one window, which is all the memory a
 * session needs besides its receive buffer, whatever the disk size.
 *
 * Writes only ever land in blocks whose hashes were sent and which the
 * primary has not declared done, so the reader (which runs ahead of the
 * sent position) never races a write to the block it reads.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include <zstd.h>

#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/sync/common.h"
#include "agent/sync/setup.h"
#include "agent/sync/disk.h"
#include "agent/sync/proto.h"
#include "agent/sync/record.h"
#include "agent/sync/serve_session.h"
#include "uring/blocks.h"
#include "uring/hash.h"
#include "uring/reader.h"

/* How long a failed session waits for its hash thread to stop by itself
 * before it shuts the connection under it. */
#define TX_STOP_GRACE_S 1

/* ---- sending ------------------------------------------------------------- */

int session_send(struct session *s, const struct msg *m)
{
	struct vhdx_error terr;
	int ret;

	pthread_mutex_lock(&s->send_lock);
	ret = proto_send_msg(s->c, m, &terr);
	pthread_mutex_unlock(&s->send_lock);
	return ret;
}

/* SUBHASHES gather in a batch (set up with the flow, before any SUBREQ
 * can come) while more of the primary's frames are already here;
 * receive_loop() writes it out before it would wait. */
static int send_batched(struct session *s, const struct msg *m)
{
	struct vhdx_error terr;
	int ret;

	pthread_mutex_lock(&s->send_lock);
	ret = proto_batch_msg(s->c, &s->out, m, &terr);
	pthread_mutex_unlock(&s->send_lock);
	return ret;
}

static int flush_batch(struct session *s, struct vhdx_error *terr)
{
	int ret;

	terr->msg[0] = '\0';
	pthread_mutex_lock(&s->send_lock);
	ret = proto_batch_flush(s->c, &s->out, terr);
	pthread_mutex_unlock(&s->send_lock);
	return ret;
}

int session_error(struct session *s, uint32_t code, const char *fmt, ...)
{
	struct msg m;
	va_list ap;

	va_start(ap, fmt);
	sync_error_vmsg(&m, code, fmt, ap);
	va_end(ap);
	if (!s->error_sent) {
		s->error_sent = true;
		session_send(s, &m);
	}
	S_LOG(s,
	      code == PROTO_ERR_IO || code == PROTO_ERR_INTERNAL
		      ? LOG_PRIO_ERR
		      : LOG_PRIO_WARNING,
	      "%s", m.u.error.message);
	return code == PROTO_ERR_PROTOCOL ? -EPROTO : -EIO;
}

int session_protocol_error(struct session *s, const char *fmt, ...)
{
	char line[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	return session_error(s, PROTO_ERR_PROTOCOL, "malformed frame: %s",
			     line);
}

/* The work is done whether or not the primary is still there to hear it. */
static int send_finished(struct session *s)
{
	struct msg m = { .type = PROTO_FINISHED };

	m.u.finished.bytes_written = s->bytes_written;
	m.u.finished.seconds_merge = (uint32_t)(s->merge_seconds + 0.5);
	if (session_send(s, &m) < 0)
		S_LOG(s, LOG_PRIO_WARNING,
		      "the primary left before "
		      "FINISHED");
	return 0;
}

/* ---- the hash stream ----------------------------------------------------- */

/*
 * The hash stream runs one window ahead of what the primary decided, and
 * no further than one window past the first block written since the last
 * durable record: data received after that record is lost in a crash and
 * sent again, and this bounds it to one window.
 */
static uint64_t send_limit(const struct session *s)
{
	uint64_t from =
		s->done_block < s->dirty_block ? s->done_block : s->dirty_block;
	uint64_t lim = from + s->window;

	if (s->credit_end < lim)
		lim = s->credit_end;
	return lim < s->nblocks ? lim : s->nblocks;
}

static void tx_fail(struct session *s, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void tx_fail(struct session *s, int ret, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&s->lock);
	if (!s->tx_err) {
		s->tx_err = ret;
		va_start(ap, fmt);
		vsnprintf(s->tx_msg, sizeof(s->tx_msg), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&s->lock);
}

/* HASHES entries per frame (PROTO_HASHES_MAX at most): 64 entries are
 * 4 MiB of disk at the default block size, in a frame of about 1 KiB. */
#define HASHES_BATCH 64u
/* SUBHASHES of 64 KiB blocks are 268 bytes: a batch holds about 60. */
#define SESSION_BATCH_BYTES (16u << 10)

static int flush_hashes(struct session *s, uint64_t first, uint32_t n,
			const uint8_t *entries)
{
	struct msg m = { .type = PROTO_HASHES };

	if (!n)
		return 0;
	m.u.hashes.first_block = first;
	m.u.hashes.count = n;
	m.u.hashes.entries = entries;
	return session_send(s, &m);
}

/*
 * Turn @n blocks of @b (one data block, or part of a zero run) starting at
 * @block into HASHES entries at @ent, keeping their sub-block hashes in
 * the ring for SUBREQ.  False when the reader handed out something that
 * does not fit.
 */
static bool take_block(struct session *s, const struct ur_block *b,
		       uint64_t block, uint64_t n, uint8_t *ent)
{
	uint64_t i, slot;
	unsigned k;

	for (i = 0; i < n; i++) {
		uint8_t *e = ent + (size_t)i * PROTO_HASH_ENTRY_LEN;

		slot = (block + i) % s->window;
		memset(e, 0, PROTO_HASH_ENTRY_LEN);
		s->ring_zero[slot] = b->zero;
		s->ring_fd[slot] = -1;
		if (b->zero)
			continue;
		e[0] = PROTO_KIND_DATA;
		memcpy(e + 1, b->hash.b, PROTO_HASH_LEN);
		if (!b->sub && b->fd >= 0) {
			s->ring_fd[slot] = b->fd;
			s->ring_off[slot] = b->file_off;
			continue;
		}
		if (!b->sub || b->nsub > s->nsub_max)
			return false;
		for (k = 0; k < b->nsub; k++)
			memcpy(s->ring_sub + (slot * s->nsub_max + k) *
						     PROTO_HASH_LEN,
			       b->sub[k].b, PROTO_HASH_LEN);
	}
	return true;
}

/* The reader failed: tell the primary, then wake the receiver, which
 * ends the session. */
static void tx_read_error(struct session *s)
{
	const char *why = ur_engine_error(s->rd.eng);
	struct msg m;

	tx_fail(s, -EIO, "export %s: %s", s->name,
		*why ? why : "the reader lost its place");
	sync_error_msg(&m, PROTO_ERR_IO, "%s", s->tx_msg);
	session_send(s, &m);
	conn_abort(s->c);
}

/* Wait until there is credit for @block or entries to flush; false when
 * the session is being aborted.  @limit: the end of the send window. */
static bool wait_credit(struct session *s, uint64_t block, uint32_t nent,
			uint64_t *limit)
{
	bool aborted;

	pthread_mutex_lock(&s->lock);
	while (!s->abort && block >= send_limit(s) && !nent)
		pthread_cond_wait(&s->cond, &s->lock);
	aborted = s->abort;
	*limit = send_limit(s);
	pthread_mutex_unlock(&s->lock);
	return !aborted;
}

static void *tx_main(void *arg)
{
	struct session *s = arg;
	/* Small frames keep the primary busy: it compares a frame's blocks
	 * only once the frame is here, and a frame of a whole window would
	 * leave it idle while we read that window. */
	uint32_t cap = s->window < HASHES_BATCH ? s->window : HASHES_BATCH;
	uint8_t *ent = malloc((size_t)cap * PROTO_HASH_ENTRY_LEN);
	uint64_t block = s->resume_block; /* the reader starts there */
	uint64_t limit, n;
	uint32_t nent = 0;
	struct ur_block b;
	int ret;

	if (!ent) {
		tx_fail(s, -ENOMEM, "out of memory");
		goto out;
	}
	while (block < s->nblocks) {
		if (!wait_credit(s, block, nent, &limit))
			goto out;
		if (block >= limit) {
			/* Out of credit: what we have must go now, or both
			 * sides wait for each other. */
			ret = flush_hashes(s, block - nent, nent, ent);
			if (ret < 0)
				goto send_error;
			nent = 0;
			continue;
		}
		ret = ur_stream_peek(s->rd.stream, &b);
		if (ret <= 0 || b.index != block)
			goto read_error;
		n = b.zero ? b.run : 1;
		if (n > limit - block)
			n = limit - block;
		if (n > cap - nent)
			n = cap - nent;
		if (!take_block(s, &b, block, n,
				ent + (size_t)nent * PROTO_HASH_ENTRY_LEN))
			goto read_error;
		s->bytes_compared += ur_clip(s->size, block * s->bs, n * s->bs);
		ur_stream_release(s->rd.stream, n);
		block += n;
		nent += (uint32_t)n;
		pthread_mutex_lock(&s->lock);
		s->sent_block = block;
		pthread_mutex_unlock(&s->lock);
		if (nent == cap || block == s->nblocks || block == limit) {
			ret = flush_hashes(s, block - nent, nent, ent);
			if (ret < 0)
				goto send_error;
			nent = 0;
		}
	}
	goto out;

read_error:
	tx_read_error(s);
	goto out;
send_error:
	tx_fail(s, ret, "sending HASHES: %s", strerror(-ret));
out:
	free(ent);
	return NULL;
}

/* ---- receiving ----------------------------------------------------------- */

static int on_credit(struct session *s, const struct msg_credit *c)
{
	uint64_t d = c->done_through, db;
	int ret = 0;

	db = d == s->size ? s->nblocks : d / s->bs;
	pthread_mutex_lock(&s->lock);
	if ((d % s->bs && d != s->size) || db < s->done_block ||
	    db > s->sent_block || c->blocks > s->window)
		ret = -EPROTO;
	else {
		s->done_block = db;
		s->credit_end += c->blocks;
		if (s->credit_end > s->nblocks + s->window)
			s->credit_end = s->nblocks + s->window;
		pthread_cond_broadcast(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	if (ret < 0)
		return session_protocol_error(s,
					      "CREDIT done_through %" PRIu64
					      " (+%u blocks) does not fit the "
					      "blocks sent",
					      d, c->blocks);
	ret = record_persist(s);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot record "
				     "progress: %s",
				     s->name, strerror(-ret));
	return 0;
}

/* SUBHASHES for a block the reader placed in a file: read it there again
 * (from the page cache, where the reader just brought it; this session
 * writes only the child, and a block only after its SUBHASHES) and hash
 * its pieces. */
static int subreq_placed(struct session *s, uint64_t block, uint64_t slot,
			 uint32_t len)
{
	uint8_t hashes[PROTO_SUBHASHES_MAX * PROTO_HASH_LEN];
	struct msg m = { .type = PROTO_SUBHASHES };
	int ret;

	ret = sync_pread_full(s->ring_fd[slot], s->sub_buf, len,
			      s->ring_off[slot]);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: reading block %" PRIu64
				     " again: %s",
				     s->name, block, sync_pread_error(ret));
	ret = sync_hash_pieces(s->sub_hasher, s->sub_buf, len, hashes);
	if (ret < 0)
		return session_error(s, PROTO_ERR_INTERNAL,
				     "export %s: hashing: %s", s->name,
				     strerror(-ret));
	m.u.subhashes.block = block;
	m.u.subhashes.count = sync_nsub(len);
	m.u.subhashes.hashes = hashes;
	ret = send_batched(s, &m);
	return ret < 0 ? ret : 0;
}

static int on_subreq(struct session *s, uint64_t block)
{
	uint8_t hashes[PROTO_SUBHASHES_MAX * PROTO_HASH_LEN];
	struct msg m = { .type = PROTO_SUBHASHES };
	uint64_t slot = block % s->window;
	uint32_t len, nsub, k;
	bool ok, zero;
	int ret;

	pthread_mutex_lock(&s->lock);
	ok = block >= s->done_block && block < s->sent_block;
	zero = ok && s->ring_zero[slot];
	pthread_mutex_unlock(&s->lock);
	if (!ok)
		return session_protocol_error(s,
					      "SUBREQ for block %" PRIu64
					      ", which is not in flight",
					      block);
	len = ur_block_len(s->size, s->bs, block);
	nsub = sync_nsub(len);
	if (!zero && s->ring_fd[slot] >= 0)
		return subreq_placed(s, block, slot, len);
	for (k = 0; k < nsub; k++) {
		const uint8_t *h;

		if (!zero)
			h = s->ring_sub +
			    (slot * s->nsub_max + k) * PROTO_HASH_LEN;
		else
			h = sync_zero_sub_hash(&s->rd.zero,
					       len - k * PROTO_SUBBLOCK);
		memcpy(hashes + (size_t)k * PROTO_HASH_LEN, h, PROTO_HASH_LEN);
	}
	m.u.subhashes.block = block;
	m.u.subhashes.count = nsub;
	m.u.subhashes.hashes = hashes;
	ret = send_batched(s, &m);
	return ret < 0 ? ret : 0;
}

/* DATA and ZERO may only touch blocks in flight. */
/* A write at @off happened since the last durable record. */
static void mark_dirty(struct session *s, uint64_t off)
{
	uint64_t block = off / s->bs;

	/* only this thread writes it, so the unlocked read is exact */
	if (s->dirty_block <= block)
		return;
	pthread_mutex_lock(&s->lock);
	s->dirty_block = block;
	pthread_mutex_unlock(&s->lock);
}

static int check_write(struct session *s, const char *what, uint64_t off,
		       uint64_t len)
{
	uint64_t lo, hi;

	pthread_mutex_lock(&s->lock);
	lo = s->done_block * s->bs;
	hi = ur_clip(s->size, 0, s->sent_block * s->bs);
	pthread_mutex_unlock(&s->lock);
	if (off % PROTO_SECTOR ||
	    (len % PROTO_SECTOR && off + len != s->size) || off < lo ||
	    off > hi || len > hi - off)
		return session_protocol_error(s,
					      "%s at %" PRIu64 "+%" PRIu64
					      " is outside the blocks in "
					      "flight [%" PRIu64 ", %" PRIu64
					      ")",
					      what, off, len, lo, hi);
	return 0;
}

static int on_data(struct session *s, const struct msg_data *d)
{
	const uint8_t *buf = d->data;
	size_t n;
	int ret;

	ret = check_write(s, "DATA", d->offset, d->length);
	if (ret < 0)
		return ret;
	if (d->compressed) {
		if (!s->dctx) {
			s->dctx = ZSTD_createDCtx();
			s->dbuf = malloc(PROTO_DATA_MAX);
			if (!s->dctx || !s->dbuf)
				return session_error(s, PROTO_ERR_INTERNAL,
						     "out of memory");
		}
		n = ZSTD_decompressDCtx(s->dctx, s->dbuf, d->length, d->data,
					d->data_len);
		if (ZSTD_isError(n) || n != d->length)
			return session_protocol_error(
				s,
				"DATA at %" PRIu64 ": the zstd "
				"payload does not give %u bytes",
				d->offset, d->length);
		buf = s->dbuf;
	}
	ret = disk_write(s, buf, d->length, d->offset);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: write at %" PRIu64 ": %s",
				     s->name, d->offset, strerror(-ret));
	s->bytes_written += d->length;
	s->bytes_received += d->data_len;
	s->written_since += d->length;
	mark_dirty(s, d->offset);
	return 0;
}

static int on_zero(struct session *s, const struct msg_zero *z)
{
	int ret;

	ret = check_write(s, "ZERO", z->offset, z->length);
	if (ret < 0)
		return ret;
	ret = disk_zero(s, z->offset, z->length);
	if (ret < 0)
		return session_error(s, PROTO_ERR_IO,
				     "export %s: zeroing at %" PRIu64 ": %s",
				     s->name, z->offset, strerror(-ret));
	s->bytes_written += z->length;
	s->written_since += z->length;
	mark_dirty(s, z->offset);
	return 0;
}

/* Nothing more can be received: find out why, say so, end. */
static int receive_failed(struct session *s, int ret, struct vhdx_error *terr)
{
	struct msg e;
	bool tx_failed;

	pthread_mutex_lock(&s->lock);
	tx_failed = s->tx_err != 0;
	if (tx_failed) {
		ret = s->tx_err;
		snprintf(terr->msg, sizeof(terr->msg), "%.500s", s->tx_msg);
	}
	pthread_mutex_unlock(&s->lock);
	if (tx_failed) {
		/* The hash thread told the primary. */
		S_LOG(s, LOG_PRIO_ERR, "%s", terr->msg);
		s->error_sent = true;
		return ret;
	}
	if (ret == -EPROTO || ret == -EMSGSIZE) {
		/* The message already names the peer. */
		serve_log(s->srv, LOG_PRIO_WARNING, "session %u: %s", s->id,
			  terr->msg);
		sync_error_msg(&e, PROTO_ERR_PROTOCOL, "%s", terr->msg);
		session_send(s, &e);
		s->error_sent = true;
		return ret;
	}
	S_LOG(s, LOG_PRIO_WARNING, "connection lost: %s",
	      terr->msg[0] ? terr->msg : strerror(-ret));
	return ret;
}

/* DONE is only right once every block was decided. */
static int on_done(struct session *s)
{
	bool all;

	pthread_mutex_lock(&s->lock);
	all = s->done_block == s->nblocks;
	pthread_mutex_unlock(&s->lock);
	if (all)
		return 1;
	return session_protocol_error(s, "DONE before every block was "
					 "decided");
}

/*
 * Receive until DONE.  Returns 1 at DONE, or a negative value once the
 * session is over (the reason is logged and, where it helps, sent).
 */
static int receive_loop(struct session *s)
{
	struct vhdx_error terr;
	struct msg m;
	int ret;

	for (;;) {
		/* About to wait for the primary: it may be waiting for us. */
		if (s->out.len && !conn_input_buffered(s->c)) {
			ret = flush_batch(s, &terr);
			if (ret < 0)
				return receive_failed(s, ret, &terr);
		}
		terr.msg[0] = '\0';
		ret = proto_recv_msg(s->c, &m, s->rbuf, s->rcap, &terr);
		if (ret < 0)
			return receive_failed(s, ret, &terr);
		switch (m.type) {
		case PROTO_CREDIT:
			ret = on_credit(s, &m.u.credit);
			break;
		case PROTO_SUBREQ:
			ret = on_subreq(s, m.u.subreq.block);
			break;
		case PROTO_DATA:
			ret = on_data(s, &m.u.data);
			break;
		case PROTO_ZERO:
			ret = on_zero(s, &m.u.zero);
			break;
		case PROTO_DONE:
			return on_done(s);
		case PROTO_ERROR:
			S_LOG(s, LOG_PRIO_WARNING,
			      "the primary gave up: %s "
			      "(code %u)",
			      m.u.error.message, m.u.error.code);
			s->error_sent = true;
			return -ECONNABORTED;
		default:
			return session_protocol_error(s, "unexpected %s",
						      proto_type_name(m.type));
		}
		if (ret < 0)
			return ret;
	}
}

/* ---- a copy session ------------------------------------------------------ */

/*
 * Reader threads for a new session: the CPUs shared among the sessions
 * running now, at least one.  Sixteen sessions of a lane per CPU each
 * spend the CPUs switching between threads and the caches on their
 * buffers, and together read no faster than two do.
 */
static unsigned reader_lanes(struct server *srv)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned active;

	pthread_mutex_lock(&srv->lock);
	active = srv->nactive;
	pthread_mutex_unlock(&srv->lock);
	if (ncpu < 1)
		ncpu = 1;
	if (!active)
		active = 1;
	return (unsigned)ncpu > active ? (unsigned)ncpu / active : 1;
}

static int start_reader(struct session *s)
{
	enum sync_reader_step step;
	struct ur_config cfg;
	char msg[512];
	int ret;

	sync_reader_config(&cfg, s->bs, s->hello.hash, s->hello.seed);
	cfg.sub_hashes = true;
	cfg.sub_hashes_unlocated = true;
	cfg.direct_uncached = true;
	ret = s->sub_hasher ? 0
			    : ur_hasher_new(cfg.hash, cfg.seed, &s->sub_hasher);
	if (ret < 0)
		return session_error(s, PROTO_ERR_INTERNAL,
				     "export %s: hashing: %s", s->name,
				     strerror(-ret));
	cfg.threads = reader_lanes(s->srv);
	ret = sync_reader_start(&s->rd, &cfg, s->src, s->resume_block, s->size,
				&step, msg, sizeof(msg));
	if (ret >= 0)
		return 0;
	switch (step) {
	case SYNC_READER_CONFIG:
		return session_error(s, PROTO_ERR_INTERNAL, "export %s: %s",
				     s->name, msg);
	case SYNC_READER_ADD:
	case SYNC_READER_READ:
		return session_error(s, PROTO_ERR_IO,
				     "export %s: cannot start "
				     "reading: %s",
				     s->name, msg);
	default:
		return session_error(s, PROTO_ERR_INTERNAL, "%s", msg);
	}
}

static int setup_flow(struct session *s, uint64_t resume)
{
	uint64_t w = s->srv->cfg.window_bytes / s->bs;

	if (w < SYNC_WINDOW_MIN)
		w = SYNC_WINDOW_MIN;
	if (w > SYNC_WINDOW_MAX)
		w = SYNC_WINDOW_MAX;
	if (w * s->bs > SYNC_WINDOW_BYTES_MAX)
		w = SYNC_WINDOW_BYTES_MAX / s->bs;
	s->window = (uint32_t)w;
	s->nblocks = ur_block_count(s->size, s->bs);
	s->nsub_max = s->bs / PROTO_SUBBLOCK;
	s->ring_sub = malloc((size_t)s->window * s->nsub_max * PROTO_HASH_LEN);
	s->ring_zero = calloc(s->window, 1);
	s->ring_fd = malloc((size_t)s->window * sizeof(*s->ring_fd));
	s->ring_off = malloc((size_t)s->window * sizeof(*s->ring_off));
	s->sub_buf = malloc(s->bs);
	s->rcap = PROTO_MAX_PAYLOAD;
	s->rbuf = malloc(s->rcap);
	if (!s->ring_sub || !s->ring_zero || !s->ring_fd || !s->ring_off ||
	    !s->sub_buf || !s->rbuf ||
	    proto_batch_init(&s->out, SESSION_BATCH_BYTES) < 0)
		return session_error(s, PROTO_ERR_INTERNAL, "out of memory");
	s->resume_block = (resume + s->bs - 1) / s->bs;
	s->done_block = s->sent_block = s->resume_block;
	s->credit_end = s->resume_block + s->window;
	s->persisted_done = resume;
	s->dirty_block = SESSION_CLEAN;
	s->last_persist = mono_seconds();
	return 0;
}

static void stop_tx(struct session *s, bool abort_conn)
{
	if (!s->tx_running)
		return;
	struct timespec ts;

	pthread_mutex_lock(&s->lock);
	s->abort = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	/*
	 * It may be stuck sending to a primary that no longer reads; but
	 * give it a moment to see the flag first: shutting the socket
	 * with the primary's data unread makes the close a reset, which a
	 * relay on the way may pass on before the ERROR we just sent.
	 */
	if (abort_conn) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += TX_STOP_GRACE_S;
		if (!pthread_timedjoin_np(s->tx, NULL, &ts)) {
			s->tx_running = false;
			return;
		}
		conn_abort(s->c);
	}
	pthread_join(s->tx, NULL);
	s->tx_running = false;
}

/* DONE arrived: make everything durable and merge (unless held). */
static int finish_copy(struct session *s, const char **result)
{
	int ret;

	stop_tx(s, false);
	sync_reader_free(&s->rd);
	ret = disk_commit(s);
	if (ret < 0)
		return ret;
	if (!s->vhdx) {
		*result = "done";
	} else if (s->hello.flags & PROTO_HELLO_HOLD) {
		*result = "held (complete, not merged)";
	} else {
		ret = disk_merge(s);
		if (ret < 0)
			return ret;
		*result = "merged";
	}
	return send_finished(s);
}

/* Get the disk and the reader ready; @resume is where the copy starts. */
static int prepare_copy(struct session *s, uint64_t *resume)
{
	int ret;

	if (s->hello.flags & PROTO_HELLO_CHECK) {
		*resume = disk_resume_offset(s);
		return 0;
	}
	ret = disk_open(s, resume);
	if (!ret)
		ret = setup_flow(s, *resume);
	/* A complete held copy needs no reading, only DONE. */
	if (!ret && s->resume_block < s->nblocks)
		ret = start_reader(s);
	return ret;
}

static int send_welcome(struct session *s, uint64_t resume)
{
	struct msg m = { .type = PROTO_WELCOME };

	m.u.welcome.version = PROTO_VERSION;
	m.u.welcome.virtual_size = s->size;
	m.u.welcome.logical_sector = s->sector;
	m.u.welcome.resume_offset = resume;
	m.u.welcome.window = s->window ? s->window : SYNC_WINDOW_MIN;
	return session_send(s, &m);
}

int session_copy(struct session *s, const char **result)
{
	uint64_t resume = 0;
	int ret;

	ret = disk_check_geometry(s);
	if (ret < 0)
		return ret;
	ret = prepare_copy(s, &resume);
	if (ret < 0)
		goto fail;
	ret = send_welcome(s, resume);
	if (ret < 0 || (s->hello.flags & PROTO_HELLO_CHECK)) {
		*result = ret < 0 ? "failed" : "checked";
		goto fail;
	}
	s->resume = resume;
	if (s->rd.eng) {
		ret = pthread_create(&s->tx, NULL, tx_main, s);
		if (ret) {
			ret = session_error(s, PROTO_ERR_INTERNAL,
					    "cannot start "
					    "a thread: %s",
					    strerror(ret));
			goto fail;
		}
		s->tx_running = true;
	}
	ret = receive_loop(s);
	if (ret == 1)
		return finish_copy(s, result);
fail:
	stop_tx(s, true);
	sync_reader_free(&s->rd);
	disk_close(s, !(s->hello.flags & PROTO_HELLO_CHECK) && s->window);
	return ret < 0 ? ret : 0;
}

/* ---- MERGE and DISCARD --------------------------------------------------- */

int session_merge(struct session *s, const char **result)
{
	int ret = disk_merge_held(s, result);

	return ret < 0 ? ret : send_finished(s);
}

int session_discard(struct session *s, const char **result)
{
	int ret = disk_discard_all(s);

	if (ret < 0)
		return ret;
	*result = "discarded";
	return send_finished(s);
}
