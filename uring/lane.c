/* SPDX-License-Identifier: MIT */
/*
 * lane.c - the reader's lanes: worker threads that each plan chunks under
 * the engine lock, read them through a ring of their own (or pread() where
 * io_uring is not allowed), and hash them while the data is still in this
 * CPU's cache before handing them to the consumer (see internal.h for who
 * owns what).
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "uring/internal.h"

#define LANE_RING_ENTRIES 128
/* EAGAIN/EINTR in a row on one read before giving up on it. */
#define MAX_RETRIES 1000
/* How long teardown waits for a read that does not come back. */
#define DRAIN_TIMEOUT_MS 10000
#define DIRECT_ALIGN 4096u

/* --- planning (engine lock held) --------------------------------------- */

/*
 * Waking the consumer for every chunk costs two context switches per chunk
 * on a busy machine, so it is woken once a batch is ready, or as soon as
 * the lanes could stall without it (no buffer left, a stream at its quota
 * or fully planned).
 */
static void wake_consumer(struct ur_engine *e)
{
	unsigned i;

	if (!e->cons_waiting)
		return;
	if (e->ready < e->wake_batch && e->free_list) {
		for (i = 0; i < e->nstreams; i++) {
			struct ur_stream *s = e->streams[i];

			if (s->plan_block >= s->nblocks ||
			    s->in_use >= s->quota || s->count == s->fifo_cap)
				break;
		}
		if (i == e->nstreams)
			return;
	}
	pthread_cond_broadcast(&e->cons_cond);
}

/*
 * Whether every aligned read of D's file goes to its O_DIRECT twin, not
 * only those the page cache does not hold (direct_uncached).
 * A FUSE file read through the page cache costs a copy into the FUSE
 * file's own pages and their housekeeping, and hvresync's raw views drop
 * those pages at every open anyway; O_DIRECT hands the server our buffer.
 * A device-mapper view is made of loop devices over the image files,
 * whose pages hold the data already: through the device's own page cache
 * it would be cached and copied twice.
 */
static bool always_direct(const struct ur_engine *e, const struct direct_fd *d)
{
	return e->cfg.direct || (e->cfg.direct_views && d->view);
}

static struct direct_fd *direct_twin(struct ur_engine *e, int fd)
{
	struct direct_fd *d;
	char path[64];
	unsigned i;

	for (i = 0; i < e->ndirect; i++)
		if (e->direct[i].fd == fd)
			return e->direct[i].dfd < 0 ? NULL : &e->direct[i];
	if (e->ndirect == sizeof(e->direct) / sizeof(e->direct[0]))
		return NULL;
	d = &e->direct[e->ndirect++];
	memset(d, 0, sizeof(*d));
	d->fd = fd;
	d->dfd = -1;
	d->view = ur_fd_on_fuse(fd) || ur_fd_over_loop(fd);
	/* Reopen through /proc so an image's fd (owned by the VHDX library)
	 * gets an O_DIRECT twin; filesystems without O_DIRECT refuse it and
	 * the buffered fd is used instead. */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (always_direct(e, d) || (e->cfg.direct_uncached && !d->view))
		d->dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (d->dfd >= 0 && e->cfg.direct_uncached && !d->view)
		d->probe_ok = ur_cache_probe_init(&d->probe, fd) == 0;
	return d->dfd < 0 ? NULL : d;
}

static bool slot_push_zero(struct ur_stream *s, uint64_t n)
{
	struct slot *tail;

	if (s->count) {
		tail = &s->fifo[(s->head + s->count - 1) % s->fifo_cap];
		if (!tail->c) {
			tail->n += n;
			return true;
		}
	}
	if (s->count == s->fifo_cap)
		return false;
	tail = &s->fifo[(s->head + s->count) % s->fifo_cap];
	tail->first = s->plan_block;
	tail->n = n;
	tail->consumed = 0;
	tail->c = NULL;
	s->count++;
	s->e->ready++;
	return true;
}

static int map_error(struct ur_engine *e, struct ur_stream *s, uint64_t pos,
		     int ret)
{
	ur_fail_locked(e, ret, "%s: cannot map virtual offset %llu: %s",
		       s->src->path, (unsigned long long)pos,
		       ret == -EIO ? "bad extent map" : strerror(-ret));
	return ret;
}

/* Take a free chunk for the next data blocks of S. */
static struct chunk *chunk_take(struct ur_engine *e, struct ur_stream *s)
{
	struct chunk *c = e->free_list;

	e->free_list = c->next;
	c->next = NULL;
	c->s = s;
	c->first = s->plan_block;
	c->nblocks = 0;
	c->state = CHUNK_BUSY;
	ur_oplist_reset(&c->ops);
	return c;
}

/*
 * Plan the reads of up to a chunk's worth of S's next data blocks into C;
 * a zero block ends the chunk early, as it costs no read and belongs in a
 * zero slot.  Returns 0, or a negative errno with *POS the virtual offset
 * that failed.
 */
static int plan_chunk(struct ur_engine *e, struct ur_stream *s, struct chunk *c,
		      uint64_t *pos)
{
	uint32_t bs = e->cfg.block_size;
	unsigned i;
	int64_t z;
	int ret;

	for (i = 0; i < e->chunk_blocks && s->plan_block < s->nblocks; i++) {
		uint32_t len = ur_block_len(s->size, bs, s->plan_block);

		*pos = s->plan_block * bs;
		if (i) {
			z = ur_zero_blocks(&s->cur, *pos, bs, 1);
			if (z < 0)
				return (int)z;
			if (z)
				return 0;
		}
		ret = ur_plan_block(&s->cur, *pos, len, i * bs, &c->ops);
		if (ret < 0)
			return ret;
		s->plan_block++;
		c->nblocks++;
	}
	return 0;
}

/* Queue C, just planned, as the next slot of S and count what it holds. */
static void queue_chunk(struct ur_engine *e, struct ur_stream *s,
			struct chunk *c)
{
	uint32_t bs = e->cfg.block_size;

	s->stats.blocks_data += c->nblocks;
	s->stats.bytes_read += c->ops.read_bytes;
	s->stats.bytes_data += (uint64_t)c->nblocks * bs;
	if (c->first + c->nblocks == s->nblocks && s->size % bs)
		s->stats.bytes_data -= bs - s->size % bs;
	s->in_use++;
	s->fifo[(s->head + s->count) % s->fifo_cap] =
		(struct slot){ .first = c->first, .n = c->nblocks, .c = c };
	s->count++;
}

/* The descriptor each read of C goes to: an O_DIRECT twin where the
 * engine wants direct I/O and the read is aligned for it.  With
 * direct_uncached, a read the page cache holds whole goes through the
 * cache and any other one around it (lane_prepare() asks which), so a
 * cold disk is read without filling the cache (and evicting what others
 * use) while a warm one is still read from memory. */
static void pick_fds(struct ur_engine *e, struct chunk *c)
{
	struct direct_fd *d;
	unsigned i;

	for (i = 0; i < c->ops.n; i++) {
		struct ur_op *op = &c->ops.v[i];

		op->fixed_fd = op->fd;
		op->twin = NULL;
		if ((!e->cfg.direct && !e->cfg.direct_views &&
		     !e->cfg.direct_uncached) ||
		    op->kind != UR_OP_READ || op->file_off % DIRECT_ALIGN ||
		    op->len % DIRECT_ALIGN || op->buf_off % DIRECT_ALIGN)
			continue;
		d = direct_twin(e, op->fd);
		if (!d)
			continue;
		if (always_direct(e, d))
			op->fixed_fd = d->dfd;
		else if (d->probe_ok)
			op->twin = d; /* decided in lane_prepare() */
	}
}

/*
 * Plan S forward: zero runs become zero slots, and the next data blocks
 * become one chunk, returned in *OUT.  Returns 1 when something was
 * planned, 0 when S cannot move (finished, or out of buffers or slots),
 * or a negative errno.
 */
static int plan_stream(struct ur_engine *e, struct ur_stream *s,
		       struct chunk **out)
{
	uint32_t bs = e->cfg.block_size;
	bool progress = false;
	struct chunk *c;
	uint64_t pos;
	int64_t z;
	int ret;

	*out = NULL;
	while (s->plan_block < s->nblocks) {
		pos = s->plan_block * bs;
		if (s->count == s->fifo_cap)
			break;
		z = ur_zero_blocks(&s->cur, pos, bs,
				   s->nblocks - s->plan_block);
		if (z < 0)
			return map_error(e, s, pos, (int)z);
		if (z > 0) {
			if (!slot_push_zero(s, (uint64_t)z))
				break;
			s->plan_block += (uint64_t)z;
			s->stats.blocks_zero += (uint64_t)z;
			progress = true;
			/* Zero slots are ready as soon as they exist. */
			wake_consumer(e);
			continue;
		}
		if (s->in_use >= s->quota || !e->free_list)
			break;
		c = chunk_take(e, s);
		ret = plan_chunk(e, s, c, &pos);
		if (ret < 0) {
			/* Leave the chunk unqueued; the engine is failing. */
			ur_chunk_put(e, c);
			if (ret != -ENOMEM)
				return map_error(e, s, pos, ret);
			ur_fail_locked(e, ret, "out of memory");
			return ret;
		}
		queue_chunk(e, s, c);
		pick_fds(e, c);
		*out = c;
		return 1;
	}
	return progress ? 1 : 0;
}

/* Plan for the stream that is furthest behind, so all streams advance
 * together.  Returns a chunk to read, or NULL. */
static struct chunk *plan_next(struct ur_engine *e)
{
	bool tried[UR_MAX_STREAMS] = { false };
	struct chunk *c;
	unsigned i, k;
	int ret;

	for (k = 0; k < e->nstreams * 4 && !e->err; k++) {
		struct ur_stream *best = NULL;
		unsigned bi = 0;

		for (i = 0; i < e->nstreams; i++) {
			struct ur_stream *s = e->streams[i];

			if (tried[i] || s->plan_block >= s->nblocks)
				continue;
			if (!best || s->plan_block < best->plan_block) {
				best = s;
				bi = i;
			}
		}
		if (!best)
			return NULL;
		ret = plan_stream(e, best, &c);
		if (ret < 0)
			return NULL;
		if (c)
			return c;
		/* Only zero slots, or stuck: look at the others. */
		if (!ret)
			tried[bi] = true;
	}
	return NULL;
}

/* --- the lanes ---------------------------------------------------------- */

static void lane_queue(struct lane *l, struct ur_op *op)
{
	op->next = NULL;
	if (l->sq_tail)
		l->sq_tail->next = op;
	else
		l->sq_head = op;
	l->sq_tail = op;
}

static void lane_fail(struct lane *l, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void lane_fail(struct lane *l, int err, const char *fmt, ...)
{
	struct ur_engine *e = l->e;
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&e->lock);
	ur_fail_locked(e, err, "%s", msg);
	pthread_mutex_unlock(&e->lock);
}

/* Fill the parts of C that need no read, and queue its reads. */
static void lane_prepare(struct lane *l, struct chunk *c)
{
	unsigned i;

	c->pending = 0;
	for (i = 0; i < c->ops.n; i++) {
		struct ur_op *op = &c->ops.v[i];

		switch (op->kind) {
		case UR_OP_FILL:
			memset(c->buf + op->buf_off, 0, op->len);
			break;
		case UR_OP_COPY:
			memcpy(c->buf + op->buf_off, op->mem, op->len);
			break;
		case UR_OP_READ:
			if (op->twin) {
				struct direct_fd *d = op->twin;

				if (!ur_range_cached(&d->probe, op->file_off,
						     op->len))
					op->fixed_fd = d->dfd;
			}
			op->chunk = c;
			op->done = 0;
			op->piece = 0;
			op->retries = 0;
			c->pending++;
			lane_queue(l, op);
			break;
		}
	}
	if (!c->pending) {
		c->next = l->done;
		l->done = c;
	}
}

static void lane_complete(struct lane *l, struct ur_op *op, int res);

/* Without io_uring: the same operations, one pread() at a time. */
static void lane_submit_sync(struct lane *l)
{
	while (l->sq_head) {
		struct ur_op *op = l->sq_head;
		struct chunk *c = op->chunk;
		uint32_t n = op->len - op->done;
		ssize_t ret;

		l->sq_head = op->next;
		if (!l->sq_head)
			l->sq_tail = NULL;
		if (op->piece && n > op->piece)
			n = op->piece;
		ret = pread(op->fixed_fd, c->buf + op->buf_off + op->done, n,
			    (off_t)(op->file_off + op->done));
		l->inflight++;
		lane_complete(l, op, ret < 0 ? -errno : (int)ret);
	}
}

static void lane_submit(struct lane *l)
{
	struct io_uring_sqe *sqe;
	struct ur_op *op;
	int ret;

	if (l->sync) {
		lane_submit_sync(l);
		return;
	}
	while (l->sq_head && l->inflight < LANE_RING_ENTRIES) {
		struct chunk *c;
		uint8_t *dst;
		uint32_t n;

		sqe = io_uring_get_sqe(&l->ring);
		if (!sqe)
			break;
		op = l->sq_head;
		l->sq_head = op->next;
		if (!l->sq_head)
			l->sq_tail = NULL;
		c = op->chunk;
		n = op->len - op->done;
		if (op->piece && n > op->piece)
			n = op->piece;
		dst = c->buf + op->buf_off + op->done;
		if (l->fixed)
			io_uring_prep_read_fixed(sqe, op->fixed_fd, dst, n,
						 op->file_off + op->done,
						 c->idx);
		else
			io_uring_prep_read(sqe, op->fixed_fd, dst, n,
					   op->file_off + op->done);
		io_uring_sqe_set_data(sqe, op);
		l->inflight++;
	}
	do
		ret = io_uring_submit(&l->ring);
	while (ret == -EINTR);
	if (ret < 0 && ret != -EAGAIN && ret != -EBUSY)
		lane_fail(l, ret, "io_uring_submit: %s", strerror(-ret));
}

static void lane_complete(struct lane *l, struct ur_op *op, int res)
{
	struct chunk *c = op->chunk;

	l->inflight--;
	if (__atomic_load_n(&l->e->err, __ATOMIC_RELAXED))
		return; /* draining: nothing is used any more */
	if (res > 0) {
		op->done += (uint32_t)res;
		op->retries = 0;
		if (op->done < op->len) {
			/* Short read: ask for the rest. */
			lane_queue(l, op);
			return;
		}
		if (!--c->pending) {
			c->next = l->done;
			l->done = c;
		}
		return;
	}
	if (res == -EAGAIN || res == -EINTR) {
		uint32_t n = op->len - op->done;

		/* Retry in smaller pieces: a large read that the kernel
		 * splits into several requests fails as a whole when any
		 * of them is interrupted, and could keep doing so. */
		if (op->piece && op->piece < n)
			n = op->piece;
		if (n > 2 * UR_SUB_BLOCK)
			op->piece = n / 2 / UR_SUB_BLOCK * UR_SUB_BLOCK;
		if (++op->retries <= MAX_RETRIES) {
			lane_queue(l, op);
			return;
		}
	} else if (res == -EINVAL && op->fixed_fd != op->fd) {
		/* O_DIRECT refused this one: read it through the cache. */
		op->fixed_fd = op->fd;
		lane_queue(l, op);
		return;
	}
	if (!res)
		lane_fail(l, -EIO,
			  "%s: unexpected end of file at offset %llu "
			  "(%u more bytes expected)",
			  op->path,
			  (unsigned long long)(op->file_off + op->done),
			  op->len - op->done);
	else
		lane_fail(l, res, "%s: read error at offset %llu: %s", op->path,
			  (unsigned long long)(op->file_off + op->done),
			  strerror(-res));
}

/* Hash every block of C (and its 4 KiB pieces when asked). */
static int lane_hash(struct lane *l, struct chunk *c)
{
	struct ur_engine *e = l->e;
	uint32_t bs = e->cfg.block_size;
	uint64_t file_off;
	unsigned i;
	int ret, fd;

	for (i = 0; i < c->nblocks; i++) {
		uint32_t len = ur_block_len(c->s->size, bs, c->first + i);
		const uint8_t *p = c->buf + (size_t)i * bs;

		ret = ur_hasher_hash(l->hasher, p, len, &c->hashes[i]);
		if (ret < 0)
			return ret;
		if (e->cfg.sub_hashes && e->cfg.sub_hashes_unlocated &&
		    ur_oplist_locate(&c->ops, i * bs, len, &fd, &file_off))
			continue; /* hashed again from the file if asked */
		if (e->cfg.sub_hashes) {
			unsigned j, per = bs / UR_SUB_BLOCK;
			uint32_t o;

			for (j = 0, o = 0; o < len; j++, o += UR_SUB_BLOCK) {
				uint32_t n = len - o < UR_SUB_BLOCK
						     ? len - o
						     : UR_SUB_BLOCK;

				ret = ur_hasher_hash(l->hasher, p + o, n,
						     &c->sub[i * per + j]);
				if (ret < 0)
					return ret;
			}
		}
	}
	return 0;
}

/* Hash what finished reading and hand it to the consumer. */
static void lane_publish(struct lane *l)
{
	struct ur_engine *e = l->e;

	while (l->done) {
		struct chunk *c = l->done;
		int ret;

		l->done = c->next;
		c->next = NULL;
		ret = lane_hash(l, c);
		pthread_mutex_lock(&e->lock);
		if (ret < 0)
			ur_fail_locked(e, ret, "hashing failed: %s",
				       strerror(-ret));
		c->state = CHUNK_READY;
		l->owned--;
		e->ready++;
		wake_consumer(e);
		pthread_mutex_unlock(&e->lock);
	}
}

static unsigned lane_reap(struct lane *l)
{
	struct io_uring_cqe *cqe;
	unsigned n = 0;

	while (io_uring_peek_cqe(&l->ring, &cqe) == 0) {
		struct ur_op *op = io_uring_cqe_get_data(cqe);
		int res = cqe->res;

		io_uring_cqe_seen(&l->ring, cqe);
		lane_complete(l, op, res);
		n++;
	}
	return n;
}

static int lane_setup(struct lane *l)
{
	struct ur_engine *e = l->e;
	struct io_uring_params p;
	struct iovec *iov;
	unsigned i;
	int ret;

	if (e->cfg.no_uring) {
		l->sync = true;
		return 0;
	}
	memset(&p, 0, sizeof(p));
	/* Only this thread submits; completions can wait for it. */
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
	ret = io_uring_queue_init_params(LANE_RING_ENTRIES, &l->ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		ret = io_uring_queue_init_params(LANE_RING_ENTRIES, &l->ring,
						 &p);
	}
	if (ret == -EPERM || ret == -ENOSYS || ret == -EACCES) {
		/* io_uring disabled (sysctl, seccomp, old kernel): slower,
		 * but still correct. */
		l->sync = true;
		__atomic_store_n(&e->sync_fallback, true, __ATOMIC_RELAXED);
		return 0;
	}
	if (ret < 0) {
		lane_fail(l, ret, "cannot set up io_uring: %s", strerror(-ret));
		return ret;
	}
	l->ring_ok = true;
	iov = calloc(e->nchunks, sizeof(*iov));
	if (!iov) {
		lane_fail(l, -ENOMEM, "out of memory");
		return -ENOMEM;
	}
	for (i = 0; i < e->nchunks; i++) {
		iov[i].iov_base = e->chunks[i].buf;
		iov[i].iov_len = e->chunk_size;
	}
	/* Registration can fail on a low RLIMIT_MEMLOCK; plain reads into
	 * the same buffers still work. */
	l->fixed = io_uring_register_buffers(&l->ring, iov, e->nchunks) == 0;
	free(iov);
	return 0;
}

/* Wait for reads still in flight, so their buffers can be freed. */
static void lane_drain(struct lane *l)
{
	struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = 100000000 };
	struct io_uring_cqe *cqe;
	unsigned waited = 0;
	bool cancelled = false;

	if (!l->ring_ok)
		return;
	while (l->inflight) {
		if (!cancelled) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);

			cancelled = true;
			/* Ask the kernel to give up on blocked reads. */
			if (sqe) {
				io_uring_prep_cancel(sqe, NULL,
						     IORING_ASYNC_CANCEL_ANY);
				io_uring_sqe_set_data(sqe, NULL);
				io_uring_submit(&l->ring);
			}
		}
		if (io_uring_wait_cqe_timeout(&l->ring, &cqe, &ts) == 0) {
			void *d = io_uring_cqe_get_data(cqe);

			io_uring_cqe_seen(&l->ring, cqe);
			if (d)
				l->inflight--;
			continue;
		}
		waited += 100;
		if (waited >= DRAIN_TIMEOUT_MS) {
			l->leak = true;
			return;
		}
	}
}

static void *lane_main(void *arg)
{
	struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = 200000000 };
	struct lane *l = arg;
	struct ur_engine *e = l->e;
	struct io_uring_cqe *cqe;

	if (lane_setup(l) < 0)
		goto out;
	for (;;) {
		struct chunk *c = NULL;
		unsigned reaped;

		pthread_mutex_lock(&e->lock);
		if (e->stop || e->err) {
			pthread_mutex_unlock(&e->lock);
			break;
		}
		if (l->owned < e->lane_cap) {
			c = plan_next(e);
			if (c)
				l->owned++;
		}
		if (!c && !l->owned) {
			/* Nothing in flight and nothing to plan: wait for the
			 * consumer to free buffers (or for the end). */
			if (e->cons_waiting)
				pthread_cond_broadcast(&e->cons_cond);
			e->lanes_waiting++;
			pthread_cond_wait(&e->lane_cond, &e->lock);
			e->lanes_waiting--;
			pthread_mutex_unlock(&e->lock);
			continue;
		}
		pthread_mutex_unlock(&e->lock);

		if (c)
			lane_prepare(l, c);
		if (l->sq_head || (!l->sync && io_uring_sq_ready(&l->ring)))
			lane_submit(l);
		/* Reads served from the page cache complete during the
		 * submit: hash them now, while they are in this CPU's
		 * cache, before planning more. */
		reaped = l->sync ? 0 : lane_reap(l);
		if (l->done) {
			lane_publish(l);
			continue;
		}
		if (c || reaped)
			continue;
		if (!l->inflight || l->sync)
			continue;
		/* Waiting on the disk.  The timeout lets a stop be seen
		 * even when a read hangs. */
		if (io_uring_wait_cqe_timeout(&l->ring, &cqe, &ts) == 0) {
			lane_reap(l);
			lane_publish(l);
		}
	}
out:
	lane_drain(l);
	return NULL;
}

int ur_lanes_start(struct ur_engine *e)
{
	unsigned i;
	int ret;

	for (i = 0; i < e->nlanes; i++) {
		struct lane *l = &e->lanes[i];

		l->e = e;
		ret = ur_hasher_new(e->cfg.hash, e->cfg.seed, &l->hasher);
		if (ret < 0) {
			pthread_mutex_lock(&e->lock);
			ur_fail_locked(e, ret, "cannot set up the hash: %s",
				       strerror(-ret));
			pthread_mutex_unlock(&e->lock);
			return ret;
		}
		ret = pthread_create(&l->thread, NULL, lane_main, l);
		if (ret) {
			pthread_mutex_lock(&e->lock);
			ur_fail_locked(e, -ret, "cannot start a thread: %s",
				       strerror(ret));
			pthread_mutex_unlock(&e->lock);
			return -ret;
		}
		l->started = true;
	}
	return 0;
}

bool ur_lanes_stop(struct ur_engine *e)
{
	bool leak = false;
	unsigned i;

	pthread_mutex_lock(&e->lock);
	e->stop = true;
	pthread_cond_broadcast(&e->lane_cond);
	pthread_mutex_unlock(&e->lock);
	for (i = 0; i < e->nlanes; i++) {
		struct lane *l = &e->lanes[i];

		if (l->started)
			pthread_join(l->thread, NULL);
		if (l->ring_ok)
			io_uring_queue_exit(&l->ring);
		ur_hasher_free(l->hasher);
		leak |= l->leak;
	}
	/* The O_DIRECT twins that planning opened. */
	for (i = 0; i < e->ndirect; i++) {
		if (e->direct[i].dfd >= 0)
			close(e->direct[i].dfd);
		if (e->direct[i].probe_ok)
			ur_cache_probe_fini(&e->direct[i].probe);
	}
	return leak;
}
