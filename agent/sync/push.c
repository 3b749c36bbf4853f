/* SPDX-License-Identifier: MIT */
/*
 * push.c - the primary side of a resync session (see push.h and
 * docs/protocol.md).
 *
 * Three threads: this one reads the local disk (io_uring reader), compares
 * and does all the sending; a receiver thread takes HASHES and SUBHASHES
 * off the connection into bounded queues; a watchdog aborts the connection
 * if a stop request finds this thread stuck in a write.  Memory is bounded
 * by the window the recovery side announces: the hash ring holds at most
 * one window of entries, and only blocks that differ (at most one window
 * of them, since credit is returned only for decided blocks) are copied
 * while they wait for their sub-block hashes.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/tcp.h>

#include <zstd.h>

#include "agent/sync/push.h"
#include "uring/blocks.h"
#include "uring/reader.h"

/* How many blocks the reader loop decides before looking at SUBHASHES. */
#define BATCH_BLOCKS 1024
#define PROGRESS_INTERVAL 0.25
/* A stop request the main thread has not acted on after this long
 * aborts the connection under it. */
#define STOP_GRACE_MS 2000

static const uint8_t zero_page[PROTO_SUBBLOCK];

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
	bool zero;     /* reads as zeros here: no copy */
	uint8_t *data; /* block_size bytes, kept for reuse */
	uint8_t *sub;  /* nsub_max local sub-hashes of PROTO_HASH_LEN */
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
	struct ur_engine *eng;
	struct ur_stream *stream;
	struct ur_hasher *hasher; /* sub-block hashes, this thread's */
	uint8_t zero_block[PROTO_HASH_LEN];	 /* hash of bs zero bytes */
	uint8_t zero_block_last[PROTO_HASH_LEN]; /* of the short last block */
	uint8_t zero_sub[PROTO_HASH_LEN];	 /* of 4 KiB of zeros */
	uint8_t zero_sub_last[PROTO_HASH_LEN];	 /* of the disk's short end */

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
	uint64_t told_block; /* done_through last sent, in blocks */
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

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(struct push *ps, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Record the first error message; later ones are consequences. */
static int fail(struct push *ps, int ret, const char *fmt, ...)
{
	va_list ap;

	if (ps->err && ps->errlen && !ps->err[0]) {
		va_start(ap, fmt);
		vsnprintf(ps->err, ps->errlen, fmt, ap);
		va_end(ap);
	}
	return ret;
}

static bool stopping(const struct push *ps)
{
	return ps->p->stop && __atomic_load_n(ps->p->stop, __ATOMIC_RELAXED);
}

/* ---- small public helpers ------------------------------------------------ */

bool push_export_name_ok(const char *name)
{
	size_t n = name ? strlen(name) : 0;
	size_t i;

	if (n < 1 || n > PROTO_NAME_MAX || !strcmp(name, ".") ||
	    !strcmp(name, ".."))
		return false;
	for (i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)name[i];

		if (ch == '/' || ch < 0x20 || ch == 0x7f)
			return false;
	}
	return true;
}

int push_parse_target(const char *target, char *addr, size_t addrlen,
		      char *name, size_t namelen, char *err, size_t errlen)
{
	const char *slash = target ? strchr(target, '/') : NULL;
	size_t hl;

	if (!slash || slash == target || !slash[1]) {
		snprintf(err, errlen, "%s: not HOST:PORT/NAME",
			 target ? target : "(null)");
		return -EINVAL;
	}
	hl = (size_t)(slash - target);
	if (hl >= addrlen || strlen(slash + 1) >= namelen) {
		snprintf(err, errlen, "%s: too long", target);
		return -EINVAL;
	}
	memcpy(addr, target, hl);
	addr[hl] = '\0';
	strcpy(name, slash + 1);
	if (!push_export_name_ok(name)) {
		snprintf(err, errlen,
			 "%s: the export name must be 1-255 bytes "
			 "without '/' or control characters, and not '.' or "
			 "'..'",
			 target);
		return -EINVAL;
	}
	return 0;
}

int push_security_config(struct tls_config *cfg, const char *psk_file,
			 const char *cert, const char *key, const char *ca,
			 bool insecure, char *err, size_t errlen)
{
	struct vhdx_error terr;
	int kinds = !!psk_file + !!(cert || key || ca) + !!insecure;
	int ret;

	memset(cfg, 0, sizeof(*cfg));
	if (kinds == 0) {
		snprintf(err, errlen,
			 "no authentication: give --psk-file "
			 "FILE, or --cert/--key/--ca, or --insecure "
			 "(loopback only)");
		return -EINVAL;
	}
	if (kinds > 1) {
		snprintf(err, errlen,
			 "--psk-file, --cert/--key/--ca and "
			 "--insecure exclude each other");
		return -EINVAL;
	}
	if (insecure) {
		cfg->mode = TLS_MODE_INSECURE;
		return 0;
	}
	if (psk_file) {
		cfg->mode = TLS_MODE_PSK;
		terr.msg[0] = '\0';
		ret = tls_load_psk(psk_file, cfg->psk, &terr);
		if (ret < 0)
			snprintf(err, errlen, "%s", terr.msg);
		return ret;
	}
	if (!cert || !key || !ca) {
		snprintf(err, errlen, "--cert, --key and --ca go together");
		return -EINVAL;
	}
	cfg->mode = TLS_MODE_X509;
	cfg->cert = cert;
	cfg->key = key;
	cfg->ca = ca;
	return 0;
}

/* ---- statistics ---------------------------------------------------------- */

/* All bytes this side sent and received on the socket, TLS included. */
static uint64_t wire_bytes(struct push *ps)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	if (!ps->c)
		return ps->st->wire_bytes;
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(conn_fd(ps->c), IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		return ps->st->wire_bytes;
	return (ti.tcpi_bytes_sent ? ti.tcpi_bytes_sent : ti.tcpi_bytes_acked) +
	       ti.tcpi_bytes_received;
}

static uint64_t done_block(const struct push *ps)
{
	return ps->pend_count ? ps->pend[ps->pend_head].block : ps->next_block;
}

static void report(struct push *ps, bool force)
{
	double t = now_s();

	if (!force && t - ps->last_progress < PROGRESS_INTERVAL)
		return;
	ps->last_progress = t;
	ps->st->wire_bytes = wire_bytes(ps);
	ps->st->seconds = t - ps->start;
	ps->st->position = ur_clip(ps->size, 0, done_block(ps) * ps->bs);
	if (ps->p->progress)
		ps->p->progress(ps->p->ctx, ps->st);
}

/* ---- sending ------------------------------------------------------------- */

/* Token bucket: wait until @n more bytes fit under --bwlimit. */
static int throttle(struct push *ps, size_t n)
{
	double rate = (double)ps->p->bwlimit, burst, t, wait;

	if (!ps->p->bwlimit)
		return 0;
	burst = rate / 10 > 65536 ? rate / 10 : 65536;
	t = now_s();
	ps->tokens += (t - ps->last_refill) * rate;
	if (ps->tokens > burst)
		ps->tokens = burst;
	ps->last_refill = t;
	ps->tokens -= (double)n;
	if (ps->tokens >= 0)
		return 0;
	wait = -ps->tokens / rate;
	while (wait > 0) {
		double step = wait < 0.1 ? wait : 0.1;
		struct timespec ts = {
			.tv_sec = (time_t)step,
			.tv_nsec = (long)((step - (double)(time_t)step) * 1e9),
		};

		if (stopping(ps))
			return -ECANCELED;
		nanosleep(&ts, NULL);
		wait -= step;
	}
	return 0;
}

static int rx_state(struct push *ps);

static int send_msg(struct push *ps, const struct msg *m, size_t payload)
{
	struct vhdx_error terr;
	int ret, rx;

	if (stopping(ps))
		return -ECANCELED;
	ret = throttle(ps, PROTO_HDR_LEN + payload);
	if (ret < 0)
		return ret;
	terr.msg[0] = '\0';
	ret = proto_send_msg(ps->c, m, &terr);
	if (ret < 0) {
		if (stopping(ps))
			return -ECANCELED;
		/* The receiver usually knows better why (an ERROR frame). */
		pthread_mutex_lock(&ps->lock);
		rx = rx_state(ps);
		pthread_mutex_unlock(&ps->lock);
		if (rx)
			return rx;
		if (terr.msg[0])
			fail(ps, ret, "%s", terr.msg);
		else
			fail(ps, ret, "peer %s: connection lost: %s", ps->peer,
			     strerror(-ret));
	}
	return ret;
}

static int send_credit(struct push *ps, bool final)
{
	uint64_t d = done_block(ps);
	struct msg m = {.type = PROTO_CREDIT};

	if (d == ps->told_block && !final)
		return 0;
	pthread_mutex_lock(&ps->lock);
	ps->granted += d - ps->told_block;
	pthread_mutex_unlock(&ps->lock);
	m.u.credit.blocks = (uint32_t)(d - ps->told_block);
	m.u.credit.done_through = ur_clip(ps->size, 0, d * ps->bs);
	ps->told_block = d;
	return send_msg(ps, &m, PROTO_CREDIT_LEN);
}

static int send_zero(struct push *ps, uint64_t off, uint64_t len)
{
	struct msg m = {.type = PROTO_ZERO};

	m.u.zero.offset = off;
	m.u.zero.length = len;
	ps->st->bytes_zeroed += len;
	return send_msg(ps, &m, PROTO_ZERO_LEN);
}

static int send_data(struct push *ps, uint64_t off, const uint8_t *data,
		     uint32_t len)
{
	struct msg m = {.type = PROTO_DATA};

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
	return send_msg(ps, &m, PROTO_DATA_FIXED + m.u.data.data_len);
}

static bool is_zero(const uint8_t *p, size_t len)
{
	return !memcmp(p, zero_page, len);
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
	unsigned i, nsub = (len + PROTO_SUBBLOCK - 1) / PROTO_SUBBLOCK;
	int kind = 0; /* 0 none, 1 zero, 2 data */
	uint32_t run_off = 0, run_len = 0;
	int ret;

	for (i = 0; i <= nsub; i++) {
		uint32_t off = i * PROTO_SUBBLOCK, plen = 0;
		int k = 0;

		if (i < nsub) {
			const uint8_t *zh;

			plen = len - off < PROTO_SUBBLOCK ? len - off
							  : PROTO_SUBBLOCK;
			zh = plen == PROTO_SUBBLOCK ? ps->zero_sub
						    : ps->zero_sub_last;
			if (memcmp(local ? local + (size_t)i * PROTO_HASH_LEN
					 : zh,
				   remote ? remote + (size_t)i * PROTO_HASH_LEN
					  : zh,
				   PROTO_HASH_LEN)) {
				ps->st->bytes_different += plen;
				k = !data || is_zero(data + off, plen) ? 1 : 2;
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
	static const unsigned types[] = {PROTO_HASHES, PROTO_SUBHASHES,
					 PROTO_ERROR, PROTO_FINISHED};
	size_t cap = 0, i;

	for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (proto_limit(types[i]) > cap)
			cap = proto_limit(types[i]);
	return cap;
}

/* Returns false when the receiver should end. */
static bool rx_one(struct push *ps, const struct msg *m)
{
	const struct msg_hashes *h;
	struct sub_msg *s;
	uint64_t i;

	switch (m->type) {
	case PROTO_HASHES:
		h = &m->u.hashes;
		pthread_mutex_lock(&ps->lock);
		if (h->first_block != ps->recv_block || !h->count ||
		    h->first_block + h->count > ps->nblocks ||
		    h->first_block + h->count >
			    ps->resume_block + ps->granted) {
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
	case PROTO_SUBHASHES:
		if (m->u.subhashes.count > ps->nsub_max) {
			rx_fail(ps, -EPROTO,
				"peer %s: malformed frame: "
				"SUBHASHES with %u hashes for %u-byte blocks",
				ps->peer, m->u.subhashes.count, ps->bs);
			return false;
		}
		s = malloc(sizeof(*s) +
			   (size_t)m->u.subhashes.count * PROTO_HASH_LEN);
		if (!s) {
			rx_fail(ps, -ENOMEM, "out of memory");
			return false;
		}
		s->next = NULL;
		s->block = m->u.subhashes.block;
		s->count = m->u.subhashes.count;
		memcpy(s->hashes, m->u.subhashes.hashes,
		       (size_t)s->count * PROTO_HASH_LEN);
		pthread_mutex_lock(&ps->lock);
		/* Every SUBHASHES answers a SUBREQ of ours: a window's
		 * worth at most. */
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
	case PROTO_ERROR:
		pthread_mutex_lock(&ps->lock);
		ps->remote_error = true;
		ps->remote = m->u.error;
		pthread_cond_broadcast(&ps->cond);
		pthread_mutex_unlock(&ps->lock);
		return false;
	case PROTO_FINISHED:
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
		ps->fin = m->u.finished;
		pthread_cond_broadcast(&ps->cond);
		pthread_mutex_unlock(&ps->lock);
		return false;
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
			if (waiting && !stopping(ps))
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

/* ---- the watchdog -------------------------------------------------------- */

static void *wd_main(void *arg)
{
	struct push *ps = arg;
	double since = 0;
	struct timespec ts;

	pthread_mutex_lock(&ps->wd_lock);
	while (!ps->wd_quit) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&ps->wd_cond, &ps->wd_lock, &ts);
		if (ps->wd_quit || !stopping(ps))
			continue;
		if (!since)
			since = now_s();
		else if (!ps->aborted &&
			 now_s() - since > STOP_GRACE_MS / 1000.0) {
			ps->aborted = true;
			conn_abort(ps->c);
		}
	}
	pthread_mutex_unlock(&ps->wd_lock);
	return NULL;
}

/* ---- comparing ----------------------------------------------------------- */

static int map_remote_error(struct push *ps)
{
	const struct msg_error *e = &ps->remote;
	int ret;

	switch (e->code) {
	case PROTO_ERR_UNKNOWN_EXPORT: ret = -ENOENT; break;
	case PROTO_ERR_BUSY: ret = -EBUSY; break;
	case PROTO_ERR_GEOMETRY: ret = -EXDEV; break;
	case PROTO_ERR_UNSUPPORTED: ret = -EPROTONOSUPPORT; break;
	case PROTO_ERR_PROTOCOL: ret = -EPROTO; break;
	default: ret = -EIO; break;
	}
	return fail(ps, ret, "peer %s: %s", ps->peer,
		    e->message[0] ? e->message : "error without a message");
}

/* The state of the receiver as an error, or 0. */
static int rx_state(struct push *ps)
{
	if (ps->remote_error)
		return map_remote_error(ps);
	if (ps->rx_err) {
		if (stopping(ps))
			return -ECANCELED;
		return fail(ps, ps->rx_err == -ECONNRESET ? -EIO : ps->rx_err,
			    "%s", ps->rx_msg);
	}
	return 0;
}

static const uint8_t *zero_hash_for(const struct push *ps, uint32_t len)
{
	return len == ps->bs ? ps->zero_block : ps->zero_block_last;
}

/*
 * The sub-block hashes of data block @b, packed as they travel.  Only
 * blocks that differ need them, a small part of most disks, so they are
 * computed here rather than by the reader for every block.
 */
static int pack_sub(struct push *ps, const struct ur_block *b, uint8_t *out)
{
	struct ur_hash h;
	uint32_t off, plen;
	int ret;

	for (off = 0; off < b->len; off += PROTO_SUBBLOCK) {
		plen = b->len - off < PROTO_SUBBLOCK ? b->len - off
						     : PROTO_SUBBLOCK;
		ret = ur_hasher_hash(ps->hasher, b->data + off, plen, &h);
		if (ret < 0)
			return fail(ps, ret, "hashing: %s", strerror(-ret));
		memcpy(out + (size_t)(off / PROTO_SUBBLOCK) * PROTO_HASH_LEN,
		       h.b, PROTO_HASH_LEN);
	}
	return 0;
}

static int add_pending(struct push *ps, uint64_t block, uint32_t len,
		       const struct ur_block *b)
{
	struct pend *pd;
	struct msg m = {.type = PROTO_SUBREQ};
	int ret;

	if (ps->pend_count >= ps->window)
		return fail(ps, -EIO,
			    "internal error: more than a window "
			    "of blocks pending");
	pd = &ps->pend[(ps->pend_head + ps->pend_count) % ps->window];
	pd->block = block;
	pd->len = len;
	pd->zero = !b;
	if (b) {
		if (!pd->data) {
			pd->data = malloc(ps->bs);
			pd->sub = malloc((size_t)ps->nsub_max * PROTO_HASH_LEN);
			if (!pd->data || !pd->sub)
				return fail(ps, -ENOMEM, "out of memory");
		}
		memcpy(pd->data, b->data, len);
		ret = pack_sub(ps, b, pd->sub);
		if (ret < 0)
			return ret;
	}
	ps->pend_count++;
	m.u.subreq.block = block;
	return send_msg(ps, &m, PROTO_SUBREQ_LEN);
}

static int handle_sub(struct push *ps, const struct sub_msg *s)
{
	struct pend *pd = &ps->pend[ps->pend_head];
	unsigned want;
	int ret;

	if (!ps->pend_count || s->block != pd->block)
		return fail(ps, -EPROTO,
			    "peer %s: malformed frame: SUBHASHES "
			    "for block %" PRIu64 ", which was not asked for "
			    "next",
			    ps->peer, s->block);
	want = (pd->len + PROTO_SUBBLOCK - 1) / PROTO_SUBBLOCK;
	if (s->count != want)
		return fail(ps, -EPROTO,
			    "peer %s: malformed frame: SUBHASHES "
			    "for block %" PRIu64 " has %u hashes, want %u",
			    ps->peer, s->block, s->count, want);
	ret = send_pieces(ps, pd->block, pd->len, pd->zero ? NULL : pd->data,
			  pd->zero ? NULL : pd->sub, s->hashes);
	if (ret < 0)
		return ret;
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

	ret = ur_stream_peek(ps->stream, &b);
	if (ret < 0)
		return fail(ps, ret, "%s", ur_engine_error(ps->eng));
	if (ret == 0 || b.index != ps->next_block)
		return fail(ps, -EIO,
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
				    PROTO_HASH_LEN))
				continue;
			ps->st->blocks_different++;
			ret = add_pending(ps, blk, len, NULL);
			if (ret < 0)
				return ret;
		}
		ur_stream_release(ps->stream, n);
		ps->next_block += n;
		return (int64_t)n;
	}
	e = ps->ring + (b.index % ps->window) * PROTO_HASH_ENTRY_LEN;
	ps->st->bytes_compared += b.len;
	if (e[0] == PROTO_KIND_ZERO) {
		if (memcmp(b.hash.b, zero_hash_for(ps, b.len),
			   PROTO_HASH_LEN)) {
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
	}
	ur_stream_release(ps->stream, 1);
	ps->next_block++;
	return 1;
}

/* Wait a little for the receiver to bring something. */
static void wait_rx(struct push *ps, bool (*ready)(const struct push *))
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 100 * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&ps->lock);
	if (!ready(ps) && !ps->rx_err && !ps->remote_error)
		pthread_cond_timedwait(&ps->cond, &ps->lock, &ts);
	pthread_mutex_unlock(&ps->lock);
}

static bool compare_ready(const struct push *ps)
{
	return ps->subs || ps->recv_block > ps->next_block;
}

static bool finish_ready(const struct push *ps)
{
	return ps->finished;
}

static int compare_all(struct push *ps)
{
	uint64_t step = ps->window / 4 ? ps->window / 4 : 1;
	struct sub_msg *subs, *s;
	uint64_t avail, n_done;
	bool progressed;
	int64_t n;
	int ret;

	while (ps->next_block < ps->nblocks || ps->pend_count) {
		if (stopping(ps))
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
		}
		if (ret < 0)
			return ret;
		n_done = 0;
		while (avail && n_done < BATCH_BLOCKS) {
			n = compare_next(ps, avail);
			if (n < 0)
				return (int)n;
			avail -= (uint64_t)n;
			n_done += (uint64_t)n;
			if (done_block(ps) - ps->told_block >= step) {
				ret = send_credit(ps, false);
				if (ret < 0)
					return ret;
			}
		}
		progressed |= n_done > 0;
		/* Nothing left to do until the peer answers: hand back
		 * all the credit we have, or both sides would wait. */
		if (done_block(ps) - ps->told_block >= step ||
		    (!progressed && done_block(ps) > ps->told_block)) {
			ret = send_credit(ps, false);
			if (ret < 0)
				return ret;
		}
		report(ps, false);
		if (!progressed)
			wait_rx(ps, compare_ready);
	}
	return send_credit(ps, false);
}

static int wait_finished(struct push *ps)
{
	struct msg m = {.type = PROTO_DONE};
	int ret;

	pthread_mutex_lock(&ps->lock);
	ps->done_sent = true;
	pthread_mutex_unlock(&ps->lock);
	ret = send_msg(ps, &m, 0);
	if (ret < 0) {
		pthread_mutex_lock(&ps->lock);
		ret = rx_state(ps) ?: ret;
		pthread_mutex_unlock(&ps->lock);
		return ret;
	}
	for (;;) {
		if (stopping(ps))
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
		report(ps, false);
		wait_rx(ps, finish_ready);
	}
}

/* Tell the peer why we give up; best effort, never throttled. */
static void send_error(struct push *ps, uint32_t code, const char *text)
{
	struct msg m = {.type = PROTO_ERROR};
	struct vhdx_error terr;

	if (!ps->c || ps->aborted)
		return;
	m.u.error.code = code;
	snprintf(m.u.error.message, sizeof(m.u.error.message), "%s", text);
	m.u.error.message_len = (uint16_t)strlen(m.u.error.message);
	proto_send_msg(ps->c, &m, &terr);
}

/* ---- setting up ---------------------------------------------------------- */

static int check_params(struct push *ps)
{
	const struct push_params *p = ps->p;
	unsigned kinds =
		p->flags & (PUSH_CHECK | PUSH_HOLD | PUSH_MERGE | PUSH_DISCARD);

	if (!p->addr || !*p->addr)
		return fail(ps, -EINVAL, "no recovery address");
	if (!push_export_name_ok(p->export_name))
		return fail(ps, -EINVAL,
			    "export name '%s': must be 1-255 "
			    "bytes without '/' or control characters, and not "
			    "'.' or '..'",
			    p->export_name ? p->export_name : "");
	if (!p->tls)
		return fail(ps, -EINVAL, "no transport security given");
	ps->bs = p->block_size ? p->block_size : PUSH_DEFAULT_BLOCK;
	if (!ur_is_pow2(ps->bs) || ps->bs < PROTO_BLOCK_MIN ||
	    ps->bs > PROTO_BLOCK_MAX)
		return fail(ps, -EINVAL,
			    "block size %u is not a power of two "
			    "from 4K to 4M",
			    ps->bs);
	if (p->hash != UR_HASH_XXH3_128 && p->hash != UR_HASH_SHA256)
		return fail(ps, -EINVAL, "unknown hash algorithm");
	if (p->flags & ~PROTO_HELLO_KNOWN)
		return fail(ps, -EINVAL, "unknown session flags 0x%x",
			    p->flags);
	if (kinds & (kinds - 1))
		return fail(ps, -EINVAL,
			    "check, hold, merge and discard "
			    "exclude each other");
	if ((p->flags & PUSH_RESTART) && (kinds & ~PUSH_HOLD))
		return fail(ps, -EINVAL, "restart goes with a copy only");
	if (!p->src && !(kinds & (PUSH_MERGE | PUSH_DISCARD)))
		return fail(ps, -EINVAL, "no source disk");
	return 0;
}

static int open_source(struct push *ps)
{
	char msg[1024];
	int ret;

	if (!ps->p->src)
		return 0;
	ret = ur_source_open(ps->p->src, &ps->src, msg, sizeof(msg));
	if (ret < 0)
		return fail(ps, ret, "%s", msg);
	ps->size = ps->src->size;
	ps->sector = ps->p->sector_size ? ps->p->sector_size : ps->src->sector_size;
	if (ps->size % ps->sector)
		return fail(ps, -EINVAL, "%s: size %" PRIu64 " is not a multiple of the %u-byte sector",
			    ps->p->src, ps->size, ps->sector);
	if (!ps->size || ps->size % PROTO_SECTOR)
		return fail(ps, -EINVAL,
			    "%s: size %" PRIu64 " is not a "
			    "positive multiple of %u bytes",
			    ps->p->src, ps->size, PROTO_SECTOR);
	ps->st->virtual_size = ps->size;
	ps->nblocks = ur_block_count(ps->size, ps->bs);
	ps->nsub_max = ps->bs / PROTO_SUBBLOCK;
	return 0;
}

static uint64_t le64(const uint8_t *b)
{
	uint64_t v = 0;
	int i;

	for (i = 7; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

/*
 * After DONE we wait for the merge without a time limit: have the kernel
 * notice a peer that vanished (about a minute and a half) instead of the
 * default two hours.
 */
static void keepalive(int fd)
{
	int idle = 30, intvl = 10, cnt = 6;

	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* HELLO, then the first answer (WELCOME, FINISHED or ERROR). */
static int greet(struct push *ps, struct msg *reply, uint8_t *buf, size_t cap)
{
	struct msg m = {.type = PROTO_HELLO};
	struct msg_hello *h = &m.u.hello;
	struct vhdx_error terr;
	int ret, rret;

	if (getrandom(ps->seed, sizeof(ps->seed), 0) != sizeof(ps->seed))
		return fail(ps, -errno, "getrandom: %s", strerror(errno));
	h->version = PROTO_VERSION;
	h->flags = ps->p->flags;
	h->block_size = ps->bs;
	h->hash = ps->p->hash == UR_HASH_SHA256 ? PROTO_HASH_SHA256
						: PROTO_HASH_XXH3_128;
	memcpy(h->seed, ps->seed, sizeof(h->seed));
	h->virtual_size = ps->size;
	/* MERGE and DISCARD may come without a source: size 0 tells the
	 * recovery side not to check the geometry. */
	h->logical_sector = ps->sector ? ps->sector : PROTO_SECTOR;
	h->name_len = (uint16_t)strlen(ps->p->export_name);
	memcpy(h->name, ps->p->export_name, h->name_len + 1);
	ret = send_msg(ps, &m, PROTO_HELLO_FIXED + h->name_len);
	if (ret < 0 && ret != -ECANCELED) {
		/*
		 * In TLS 1.3 a server judges our certificate after our side
		 * of the handshake is done: its verdict (an alert) waits in
		 * the other direction.  It explains more than "reset".
		 */
		terr.msg[0] = '\0';
		rret = proto_recv_msg(ps->c, reply, buf, cap, &terr);
		if (rret == -EACCES) {
			ps->err[0] = '\0';
			return fail(ps, rret, "%s", terr.msg);
		}
		if (!rret && reply->type == PROTO_ERROR) {
			ps->err[0] = '\0';
			ps->remote = reply->u.error;
			return map_remote_error(ps);
		}
	}
	if (ret < 0)
		return ret;
	terr.msg[0] = '\0';
	ret = proto_recv_msg(ps->c, reply, buf, cap, &terr);
	if (ret < 0) {
		if (stopping(ps))
			return -ECANCELED;
		return fail(ps, ret == -ECONNRESET ? -EIO : ret, "%s",
			    terr.msg[0] ? terr.msg : strerror(-ret));
	}
	if (reply->type == PROTO_ERROR) {
		ps->remote = reply->u.error;
		return map_remote_error(ps);
	}
	return 0;
}

static int check_welcome(struct push *ps, const struct msg_welcome *w)
{
	char msg[PROTO_ERRMSG_MAX];

	if (w->version != PROTO_VERSION)
		return fail(ps, -EPROTO,
			    "peer %s: malformed frame: WELCOME "
			    "for version %u",
			    ps->peer, w->version);
	if (w->virtual_size != ps->size || w->logical_sector != ps->sector) {
		snprintf(msg, sizeof(msg),
			 "geometry mismatch: %s has virtual "
			 "size %" PRIu64 " and %u-byte logical sectors, export "
			 "%s has virtual size %" PRIu64 " and %u-byte logical "
			 "sectors",
			 ps->p->src, ps->size, ps->sector, ps->p->export_name,
			 w->virtual_size, w->logical_sector);
		send_error(ps, PROTO_ERR_GEOMETRY, msg);
		return fail(ps, -EXDEV, "peer %s: %s", ps->peer, msg);
	}
	if (w->resume_offset > ps->size ||
	    (w->resume_offset % ps->bs && w->resume_offset != ps->size))
		return fail(ps, -EPROTO,
			    "peer %s: malformed frame: resume "
			    "offset %" PRIu64 " is not a block boundary",
			    ps->peer, w->resume_offset);
	/* The window bounds this side's memory too: refuse a silly one. */
	if (!w->window || w->window > (1u << 16) ||
	    (uint64_t)w->window * ps->bs > (256u << 20))
		return fail(ps, -EPROTO,
			    "peer %s: a window of %u blocks of "
			    "%u bytes is more than this side accepts",
			    ps->peer, w->window, ps->bs);
	ps->window = w->window;
	ps->resume_block = (w->resume_offset + ps->bs - 1) / ps->bs;
	ps->st->resume_offset = w->resume_offset;
	return 0;
}

static int start_engine(struct push *ps)
{
	struct ur_config cfg = {
		.block_size = ps->bs,
		.hash = ps->p->hash,
		.seed = le64(ps->seed),
		.seed_set = true,
	};
	struct ur_hash h;
	char msg[512];
	int ret;

	ret = ur_hasher_new(cfg.hash, cfg.seed, &ps->hasher);
	if (ret < 0)
		return fail(ps, ret, "cannot set up the %s hash: %s",
			    ur_hash_name(cfg.hash), strerror(-ret));
	ret = ur_engine_new(&cfg, &ps->eng, msg, sizeof(msg));
	if (ret < 0)
		return fail(ps, ret, "%s: %s", ps->p->src, msg);
	ret = ur_engine_add_from(ps->eng, ps->src, ps->resume_block, &ps->stream);
	if (ret < 0)
		return fail(ps, ret, "%s: %s", ps->p->src, strerror(-ret));
	ret = ur_engine_start(ps->eng);
	if (ret < 0)
		return fail(ps, ret, "%s", ur_engine_error(ps->eng));
	ret = ur_engine_zero_hash(ps->eng, ps->bs, &h);
	memcpy(ps->zero_block, h.b, PROTO_HASH_LEN);
	if (!ret && ps->size % ps->bs) {
		ret = ur_engine_zero_hash(ps->eng, ps->size % ps->bs, &h);
		memcpy(ps->zero_block_last, h.b, PROTO_HASH_LEN);
	}
	if (!ret) {
		ret = ur_engine_zero_hash(ps->eng, PROTO_SUBBLOCK, &h);
		memcpy(ps->zero_sub, h.b, PROTO_HASH_LEN);
	}
	if (!ret && ps->size % PROTO_SUBBLOCK) {
		ret = ur_engine_zero_hash(ps->eng, ps->size % PROTO_SUBBLOCK,
					  &h);
		memcpy(ps->zero_sub_last, h.b, PROTO_HASH_LEN);
	}
	if (ret < 0)
		return fail(ps, ret, "cannot hash zeros: %s", strerror(-ret));
	return 0;
}

static int alloc_session(struct push *ps)
{
	uint32_t cap = PROTO_DATA_MAX;

	ps->ring = calloc(ps->window, PROTO_HASH_ENTRY_LEN);
	ps->pend = calloc(ps->window, sizeof(*ps->pend));
	ps->scratch = malloc((size_t)ps->nsub_max * PROTO_HASH_LEN);
	if (!ps->ring || !ps->pend || !ps->scratch)
		return fail(ps, -ENOMEM, "out of memory");
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
			return fail(ps, -ENOMEM, "out of memory");
	}
	return 0;
}

static void stop_threads(struct push *ps)
{
	if (ps->wd_running) {
		pthread_mutex_lock(&ps->wd_lock);
		ps->wd_quit = true;
		pthread_cond_broadcast(&ps->wd_cond);
		pthread_mutex_unlock(&ps->wd_lock);
		pthread_join(ps->wd, NULL);
		ps->wd_running = false;
	}
	if (ps->rx_running) {
		bool ended;

		pthread_mutex_lock(&ps->lock);
		ended = ps->rx_err || ps->remote_error || ps->finished;
		pthread_mutex_unlock(&ps->lock);
		if (!ended)
			conn_abort(ps->c);
		pthread_join(ps->rx, NULL);
		ps->rx_running = false;
	}
}

static void free_session(struct push *ps)
{
	struct sub_msg *s;
	unsigned i;

	stop_threads(ps);
	if (ps->c) {
		ps->st->wire_bytes = wire_bytes(ps);
		conn_close(ps->c);
		ps->c = NULL;
	}
	ur_engine_free(ps->eng);
	ur_source_close(ps->src);
	ur_hasher_free(ps->hasher);
	while ((s = ps->subs)) {
		ps->subs = s->next;
		free(s);
	}
	if (ps->pend) {
		for (i = 0; i < ps->window; i++) {
			free(ps->pend[i].data);
			free(ps->pend[i].sub);
		}
	}
	free(ps->pend);
	free(ps->ring);
	free(ps->scratch);
	free(ps->zbuf);
	ZSTD_freeCCtx(ps->cctx);
	pthread_mutex_destroy(&ps->lock);
	pthread_cond_destroy(&ps->cond);
	pthread_mutex_destroy(&ps->wd_lock);
	pthread_cond_destroy(&ps->wd_cond);
}

static int copy_session(struct push *ps)
{
	int ret;

	ret = alloc_session(ps);
	if (ret < 0)
		return ret;
	if (ps->resume_block < ps->nblocks) {
		ret = start_engine(ps);
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
		return fail(ps, -ret, "cannot start a thread: %s",
			    strerror(ret));
	ps->rx_running = true;
	ret = compare_all(ps);
	if (ret == -EPROTO)
		send_error(ps, PROTO_ERR_PROTOCOL, ps->err);
	if (ret < 0 && ps->eng && *ur_engine_error(ps->eng))
		goto local_error;
	if (ret < 0)
		return ret;
	report(ps, true);
	return wait_finished(ps);

local_error:
	send_error(ps, PROTO_ERR_IO, ps->err);
	return ret;
}

int push_disk(const struct push_params *p, struct push_stats *st, char *err,
	      size_t errlen)
{
	struct push_stats local;
	struct push *ps;
	struct vhdx_error terr;
	struct msg reply;
	uint8_t rbuf[PROTO_ERROR_FIXED + PROTO_ERRMSG_MAX + 64];
	int ret, timeout;

	if (err && errlen)
		err[0] = '\0';
	ps = calloc(1, sizeof(*ps));
	if (!ps) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	ps->p = p;
	ps->st = st ? st : &local;
	memset(ps->st, 0, sizeof(*ps->st));
	ps->err = err;
	ps->errlen = errlen;
	pthread_mutex_init(&ps->lock, NULL);
	pthread_cond_init(&ps->cond, NULL);
	pthread_mutex_init(&ps->wd_lock, NULL);
	pthread_cond_init(&ps->wd_cond, NULL);

	ret = check_params(ps);
	if (!ret)
		ret = open_source(ps);
	if (ret < 0)
		goto out;
	ps->start = now_s();
	ps->last_refill = ps->start;
	timeout = p->timeout_ms > 0 ? p->timeout_ms : PUSH_DEFAULT_TIMEOUT_MS;
	terr.msg[0] = '\0';
	ret = tls_connect(p->addr, p->tls, timeout, &ps->c, &terr);
	if (ret < 0) {
		ps->c = NULL;
		fail(ps, ret, "%s", terr.msg[0] ? terr.msg : strerror(-ret));
		goto out;
	}
	snprintf(ps->peer, sizeof(ps->peer), "%s", conn_peer(ps->c));
	keepalive(conn_fd(ps->c));
	if (p->stop) {
		ret = pthread_create(&ps->wd, NULL, wd_main, ps);
		if (ret) {
			ret = fail(ps, -ret, "cannot start a thread: %s",
				   strerror(ret));
			goto out;
		}
		ps->wd_running = true;
	}
	ret = greet(ps, &reply, rbuf, sizeof(rbuf));
	if (ret < 0)
		goto out;
	if (p->flags & (PUSH_MERGE | PUSH_DISCARD)) {
		if (reply.type != PROTO_FINISHED) {
			ret = fail(ps, -EPROTO,
				   "peer %s: malformed frame: %s "
				   "where FINISHED was due",
				   ps->peer, proto_type_name(reply.type));
			goto out;
		}
		ps->st->recovery_bytes_written = reply.u.finished.bytes_written;
		ps->st->merge_seconds = reply.u.finished.seconds_merge;
		goto out;
	}
	if (reply.type != PROTO_WELCOME) {
		ret = fail(ps, -EPROTO,
			   "peer %s: malformed frame: %s where "
			   "WELCOME was due",
			   ps->peer, proto_type_name(reply.type));
		goto out;
	}
	ret = check_welcome(ps, &reply.u.welcome);
	if (ret < 0 || (p->flags & PUSH_CHECK))
		goto out;
	ret = copy_session(ps);
out:
	if (stopping(ps) && ret < 0) {
		ret = -ECANCELED;
		if (err && errlen)
			snprintf(err, errlen, "cancelled");
	}
	if (ret < 0 && err && errlen && !err[0])
		snprintf(err, errlen, "%s", strerror(-ret));
	free_session(ps);
	ps->st->seconds = ps->start ? now_s() - ps->start : 0;
	ps->st->position = ret == 0 && !(p->flags & (PUSH_CHECK | PUSH_MERGE |
						     PUSH_DISCARD))
				   ? ps->size
				   : ps->st->position;
	free(ps);
	return ret;
}
