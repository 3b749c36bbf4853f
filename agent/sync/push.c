/* SPDX-License-Identifier: MIT */
/*
 * push.c - the primary side of a resync session (see push.h and
 * docs/protocol.md): checking the parameters, opening the source,
 * connecting, HELLO and WELCOME, and the end of the session.  The copy
 * itself is push_compare.c's.
 *
 * Three threads: this one reads the local disk (io_uring reader), compares
 * and does all the sending; a receiver thread takes HASHES and SUBHASHES
 * off the connection; a watchdog aborts the connection if a stop request
 * finds this thread stuck in a write.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <linux/tcp.h>

#include <zstd.h>

#include "agent/lib/fmt.h"
#include "agent/sync/common.h"
#include "agent/sync/setup.h"
#include "agent/sync/push.h"
#include "agent/sync/push_session.h"
#include "uring/blocks.h"
#include "uring/reader.h"
#include "vhdx/vhdx.h"

#define PROGRESS_INTERVAL 0.25
/* A stop request the main thread has not acted on after this long
 * aborts the connection under it. */
#define STOP_GRACE_MS 2000

int push_fail(struct push *ps, int ret, const char *fmt, ...)
{
	va_list ap;

	if (ps->err && ps->errlen && !ps->err[0]) {
		va_start(ap, fmt);
		vsnprintf(ps->err, ps->errlen, fmt, ap);
		va_end(ap);
	}
	return ret;
}

bool push_stopping(const struct push *ps)
{
	return ps->p->stop && __atomic_load_n(ps->p->stop, __ATOMIC_RELAXED);
}

/* What is wrong with export name @name (common.h), or NULL. */
static const char *name_problem(const char *name)
{
	return name ? sync_export_name_problem(name, strlen(name)) : "is empty";
}

int push_parse_target(const char *target, char *addr, size_t addrlen,
		      char *name, size_t namelen, char *err, size_t errlen)
{
	const char *slash = target ? strchr(target, '/') : NULL;
	const char *problem;
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
	problem = name_problem(name);
	if (problem) {
		snprintf(err, errlen, "%s: the export name %s", target,
			 problem);
		return -EINVAL;
	}
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

void push_report(struct push *ps, bool force)
{
	double t = mono_seconds();

	if (!force && t - ps->last_progress < PROGRESS_INTERVAL)
		return;
	ps->last_progress = t;
	ps->st->wire_bytes = wire_bytes(ps);
	ps->st->seconds = t - ps->start;
	ps->st->position = ur_clip(ps->size, 0, push_done_block(ps) * ps->bs);
	if (ps->p->progress)
		ps->p->progress(ps->p->ctx, ps->st);
}

/* ---- the watchdog -------------------------------------------------------- */

static void *wd_main(void *arg)
{
	struct push *ps = arg;
	double since = 0;
	struct timespec ts;

	pthread_mutex_lock(&ps->wd_lock);
	while (!ps->wd_quit) {
		push_deadline(&ts, 50);
		pthread_cond_timedwait(&ps->wd_cond, &ps->wd_lock, &ts);
		if (ps->wd_quit || !push_stopping(ps))
			continue;
		if (!since)
			since = mono_seconds();
		else if (!ps->aborted &&
			 mono_seconds() - since > STOP_GRACE_MS / 1000.0) {
			ps->aborted = true;
			conn_abort(ps->c);
		}
	}
	pthread_mutex_unlock(&ps->wd_lock);
	return NULL;
}

/* ---- setting up ---------------------------------------------------------- */

static int check_params(struct push *ps)
{
	const struct push_params *p = ps->p;
	unsigned kinds =
		p->flags & (PUSH_CHECK | PUSH_HOLD | PUSH_MERGE | PUSH_DISCARD);
	const char *problem = name_problem(p->export_name);

	if (!p->addr || !*p->addr)
		return push_fail(ps, -EINVAL, "no recovery address");
	if (problem)
		return push_fail(ps, -EINVAL, "export name '%s' %s",
				 p->export_name ? p->export_name : "", problem);
	if (!p->tls)
		return push_fail(ps, -EINVAL, "no transport security given");
	ps->bs = p->block_size ? p->block_size : PUSH_DEFAULT_BLOCK;
	if (!ur_is_pow2(ps->bs) || ps->bs < PROTO_BLOCK_MIN ||
	    ps->bs > PROTO_BLOCK_MAX)
		return push_fail(ps, -EINVAL,
				 "block size %u is not a power of two "
				 "from 4K to 4M",
				 ps->bs);
	if (p->hash != UR_HASH_XXH3_128 && p->hash != UR_HASH_SHA256)
		return push_fail(ps, -EINVAL, "unknown hash algorithm");
	if (p->flags & ~PROTO_HELLO_KNOWN)
		return push_fail(ps, -EINVAL, "unknown session flags 0x%x",
				 p->flags);
	if (kinds & (kinds - 1))
		return push_fail(ps, -EINVAL,
				 "check, hold, merge and discard "
				 "exclude each other");
	if ((p->flags & PUSH_RESTART) && (kinds & ~PUSH_HOLD))
		return push_fail(ps, -EINVAL, "restart goes with a copy only");
	if ((p->flags & PUSH_REPASS) &&
	    (kinds != PUSH_HOLD || (p->flags & PUSH_RESTART)))
		return push_fail(ps, -EINVAL,
				 "another pass (repass) goes with hold only, "
				 "not with restart");
	if (!p->src && !(kinds & (PUSH_MERGE | PUSH_DISCARD)))
		return push_fail(ps, -EINVAL, "no source disk");
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
		return push_fail(ps, ret, "%s", msg);
	ps->size = ps->src->size;
	ps->sector =
		ps->p->sector_size ? ps->p->sector_size : ps->src->sector_size;
	if (ps->size % ps->sector)
		return push_fail(ps, -EINVAL,
				 "%s: size %" PRIu64
				 " is not a multiple of the %u-byte sector",
				 ps->p->src, ps->size, ps->sector);
	if (!ps->size || ps->size % PROTO_SECTOR)
		return push_fail(ps, -EINVAL,
				 "%s: size %" PRIu64 " is not a "
				 "positive multiple of %u bytes",
				 ps->p->src, ps->size, PROTO_SECTOR);
	ps->st->virtual_size = ps->size;
	ps->nblocks = ur_block_count(ps->size, ps->bs);
	ps->nsub_max = ps->bs / PROTO_SUBBLOCK;
	return 0;
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

/* HELLO for this session, with a fresh seed. */
static int make_hello(struct push *ps, struct msg *m)
{
	struct msg_hello *h = &m->u.hello;
	int ret;

	ret = vhdx_random_bytes(ps->seed, sizeof(ps->seed));
	if (ret < 0)
		return push_fail(ps, ret, "getrandom: %s", strerror(-ret));
	memset(m, 0, sizeof(*m));
	m->type = PROTO_HELLO;
	h->version = PROTO_VERSION;
	h->flags = ps->p->flags;
	h->block_size = ps->bs;
	h->hash = sync_hash_id(ps->p->hash);
	memcpy(h->seed, ps->seed, sizeof(h->seed));
	h->virtual_size = ps->size;
	/* MERGE and DISCARD may come without a source: size 0 tells the
	 * recovery side not to check the geometry. */
	h->logical_sector = ps->sector ? ps->sector : PROTO_SECTOR;
	h->name_len = (uint16_t)strlen(ps->p->export_name);
	memcpy(h->name, ps->p->export_name, h->name_len + 1);
	return 0;
}

/*
 * HELLO could not be sent.  In TLS 1.3 a server judges our certificate
 * after our side of the handshake is done: its verdict (an alert) waits in
 * the other direction, and explains more than "reset".  Returns that
 * verdict as the error, or 0 when there is none.
 */
static int hello_refused(struct push *ps, struct msg *reply, uint8_t *buf,
			 size_t cap)
{
	struct vhdx_error terr;
	int ret;

	terr.msg[0] = '\0';
	ret = proto_recv_msg(ps->c, reply, buf, cap, &terr);
	if (ret == -EACCES) {
		ps->err[0] = '\0';
		return push_fail(ps, ret, "%s", terr.msg);
	}
	if (!ret && reply->type == PROTO_ERROR) {
		ps->err[0] = '\0';
		ps->remote = reply->u.error;
		return push_remote_error(ps);
	}
	return 0;
}

/* HELLO, then the first answer (WELCOME, FINISHED or ERROR). */
static int greet(struct push *ps, struct msg *reply, uint8_t *buf, size_t cap)
{
	struct vhdx_error terr;
	struct msg m;
	int ret, why;

	ret = make_hello(ps, &m);
	if (ret < 0)
		return ret;
	ret = push_send_msg(ps, &m, PROTO_HELLO_FIXED + m.u.hello.name_len);
	if (ret < 0 && ret != -ECANCELED) {
		why = hello_refused(ps, reply, buf, cap);
		if (why < 0)
			return why;
	}
	if (ret < 0)
		return ret;
	terr.msg[0] = '\0';
	ret = proto_recv_msg(ps->c, reply, buf, cap, &terr);
	if (ret < 0) {
		if (push_stopping(ps))
			return -ECANCELED;
		return push_fail(ps, ret, "%s",
				 terr.msg[0] ? terr.msg : strerror(-ret));
	}
	if (reply->type == PROTO_ERROR) {
		ps->remote = reply->u.error;
		return push_remote_error(ps);
	}
	return 0;
}

static int check_welcome(struct push *ps, const struct msg_welcome *w)
{
	char msg[PROTO_ERRMSG_MAX];

	if (w->version != PROTO_VERSION)
		return push_fail(ps, -EPROTO,
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
		push_send_error(ps, PROTO_ERR_GEOMETRY, msg);
		return push_fail(ps, -EXDEV, "peer %s: %s", ps->peer, msg);
	}
	if (w->resume_offset > ps->size ||
	    (w->resume_offset % ps->bs && w->resume_offset != ps->size))
		return push_fail(ps, -EPROTO,
				 "peer %s: malformed frame: resume "
				 "offset %" PRIu64 " is not a block boundary",
				 ps->peer, w->resume_offset);
	/* The window bounds this side's memory too: refuse a silly one. */
	if (!w->window || w->window > SYNC_WINDOW_MAX ||
	    (uint64_t)w->window * ps->bs > SYNC_WINDOW_BYTES_MAX)
		return push_fail(ps, -EPROTO,
				 "peer %s: a window of %u blocks of "
				 "%u bytes is more than this side accepts",
				 ps->peer, w->window, ps->bs);
	/* A repass that resumed would call blocks decided that the source
	 * may have changed since: it must compare from 0. */
	if ((ps->p->flags & PUSH_REPASS) && w->resume_offset)
		return push_fail(ps, -EPROTO,
				 "peer %s: malformed frame: resume offset "
				 "%" PRIu64 " for a pass that must start at 0",
				 ps->peer, w->resume_offset);
	ps->window = w->window;
	ps->resume_block = (w->resume_offset + ps->bs - 1) / ps->bs;
	ps->st->resume_offset = w->resume_offset;
	ps->st->welcomed = true;
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

	stop_threads(ps);
	if (ps->c) {
		ps->st->wire_bytes = wire_bytes(ps);
		conn_close(ps->c);
		ps->c = NULL;
	}
	sync_reader_free(&ps->rd);
	ur_source_close(ps->src);
	ur_hasher_free(ps->hasher);
	while ((s = ps->subs)) {
		ps->subs = s->next;
		free(s);
	}
	bufpool_free(&ps->bufs); /* every pending slot's data too */
	proto_batch_free(&ps->out);
	free(ps->pend);
	free(ps->ring);
	free(ps->scratch);
	free(ps->pend_sub);
	free(ps->piece_buf);
	free(ps->zbuf);
	ZSTD_freeCCtx(ps->cctx);
	pthread_mutex_destroy(&ps->lock);
	pthread_cond_destroy(&ps->cond);
	pthread_mutex_destroy(&ps->wd_lock);
	pthread_cond_destroy(&ps->wd_cond);
}

/* Connect, and watch for a stop request from now on. */
static int connect_peer(struct push *ps)
{
	const struct push_params *p = ps->p;
	struct vhdx_error terr;
	int ret, timeout;

	timeout = p->timeout_ms > 0 ? p->timeout_ms : PUSH_DEFAULT_TIMEOUT_MS;
	terr.msg[0] = '\0';
	ret = tls_connect(p->addr, p->tls, timeout, &ps->c, &terr);
	if (ret < 0) {
		ps->c = NULL;
		return push_fail(ps, ret, "%s",
				 terr.msg[0] ? terr.msg : strerror(-ret));
	}
	snprintf(ps->peer, sizeof(ps->peer), "%s", conn_peer(ps->c));
	keepalive(conn_fd(ps->c));
	if (p->stop) {
		ret = pthread_create(&ps->wd, NULL, wd_main, ps);
		if (ret)
			return push_fail(ps, -ret, "cannot start a thread: %s",
					 strerror(ret));
		ps->wd_running = true;
	}
	return 0;
}

/* A MERGE or DISCARD session is over at its first answer. */
static int take_finished(struct push *ps, const struct msg *reply)
{
	if (reply->type != PROTO_FINISHED)
		return push_fail(ps, -EPROTO,
				 "peer %s: malformed frame: %s "
				 "where FINISHED was due",
				 ps->peer, proto_type_name(reply->type));
	ps->st->recovery_bytes_written = reply->u.finished.bytes_written;
	ps->st->merge_seconds = reply->u.finished.seconds_merge;
	return 0;
}

/* Once connected: HELLO, then what the kind of session asks for. */
static int run_session(struct push *ps)
{
	uint8_t rbuf[PROTO_ERROR_FIXED + PROTO_ERRMSG_MAX + 64];
	unsigned flags = ps->p->flags;
	struct msg reply;
	int ret;

	ret = greet(ps, &reply, rbuf, sizeof(rbuf));
	if (ret < 0)
		return ret;
	if (flags & (PUSH_MERGE | PUSH_DISCARD))
		return take_finished(ps, &reply);
	if (reply.type != PROTO_WELCOME)
		return push_fail(ps, -EPROTO,
				 "peer %s: malformed frame: %s where "
				 "WELCOME was due",
				 ps->peer, proto_type_name(reply.type));
	ret = check_welcome(ps, &reply.u.welcome);
	if (ret < 0 || (flags & PUSH_CHECK))
		return ret;
	return push_copy(ps);
}

int push_disk(const struct push_params *p, struct push_stats *st, char *err,
	      size_t errlen)
{
	struct push_stats local;
	struct push *ps;
	int ret;

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
	if (!ret) {
		ps->start = mono_seconds();
		ps->last_refill = ps->start;
		ret = connect_peer(ps);
	}
	if (!ret)
		ret = run_session(ps);
	if (push_stopping(ps) && ret < 0) {
		ret = -ECANCELED;
		if (err && errlen)
			snprintf(err, errlen, "cancelled");
	}
	if (ret < 0 && err && errlen && !err[0])
		snprintf(err, errlen, "%s", strerror(-ret));
	free_session(ps);
	ps->st->seconds = ps->start ? mono_seconds() - ps->start : 0;
	if (ret == 0 && !(p->flags & (PUSH_CHECK | PUSH_MERGE | PUSH_DISCARD)))
		ps->st->position = ps->size;
	free(ps);
	return ret;
}
