/* SPDX-License-Identifier: MIT */
/*
 * reader.c - the io_uring reader (see reader.h).
 *
 * Shared state (plan cursors, slot queues, the free buffer list) lives
 * under one engine mutex; buffer contents and hashes belong to the lane
 * that planned the chunk until it publishes the chunk as READY, then to
 * the consumer until it releases the last block.  Lanes plan in order, so
 * every stream's queue of slots is in virtual order and the consumer only
 * ever looks at its head.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "uring/plan.h"
#include "uring/reader.h"

#define MAX_LANES 16
#define LANE_RING_ENTRIES 128
/* EAGAIN/EINTR in a row on one read before giving up on it. */
#define MAX_RETRIES 1000
/* How long teardown waits for a read that does not come back. */
#define DRAIN_TIMEOUT_MS 10000
#define DIRECT_ALIGN 4096u

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
	unsigned in_use, quota; /* chunk buffers held, and the cap */
	struct ur_hash zero_hash;  /* of a full block of zeros */
	struct ur_hash zero_last;  /* of the short last block, if any */
	struct ur_stream_stats stats;

	/* The consumer's copy of the head slot: blocks of a ready slot are
	 * handed out without the lock, which is only taken per slot. */
	struct slot cs;
	bool cs_valid;
};

struct direct_fd {
	int fd;
	int dfd; /* -1 when O_DIRECT is not possible for it */
};

struct lane {
	struct ur_engine *e;
	pthread_t thread;
	bool started;
	struct io_uring ring;
	bool ring_ok;
	bool sync; /* no io_uring here: plain pread() in this thread */
	bool fixed; /* buffers registered with this ring */
	struct ur_hasher *hasher;
	unsigned owned;    /* chunks planned and not yet published */
	unsigned inflight; /* SQEs in flight */
	struct ur_op *sq_head, *sq_tail; /* ops waiting for an SQE */
	struct chunk *done; /* chunks read, waiting to be hashed */
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
	unsigned lanes_waiting;   /* on lane_cond */
	bool cons_waiting;        /* on cons_cond */
	unsigned ready;           /* slots ready and not yet released */
	unsigned wake_batch;      /* wake the consumer for this many */

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
	bool sync_fallback;       /* some lane had to do without io_uring */
	bool started;
	bool stop;
	int err;
	char errmsg[512];
};

static void set_error_locked(struct ur_engine *e, int err, const char *fmt,
			     ...) __attribute__((format(printf, 3, 4)));

static void set_error_locked(struct ur_engine *e, int err, const char *fmt,
			     ...)
{
	va_list ap;

	if (e->err)
		return;
	__atomic_store_n(&e->err, err < 0 ? err : -EIO, __ATOMIC_RELAXED);
	va_start(ap, fmt);
	vsnprintf(e->errmsg, sizeof(e->errmsg), fmt, ap);
	va_end(ap);
	pthread_cond_broadcast(&e->cons_cond);
	pthread_cond_broadcast(&e->lane_cond);
}

/* --- setup -------------------------------------------------------------- */

int ur_engine_new(const struct ur_config *cfg, struct ur_engine **out,
		  char *err, size_t errlen)
{
	struct ur_engine *e;
	long ncpu;
	int ret;

	*out = NULL;
	if (!ur_is_pow2(cfg->block_size) || cfg->block_size < 512 ||
	    cfg->block_size > (256u << 20)) {
		snprintf(err, errlen, "block size %u is not a power of two "
			 "between 512 and 256M", cfg->block_size);
		return -EINVAL;
	}
	if (cfg->sub_hashes && cfg->block_size < UR_SUB_BLOCK) {
		snprintf(err, errlen, "4 KiB sub-block hashes need blocks of "
			 "at least 4 KiB");
		return -EINVAL;
	}
	if (cfg->hash != UR_HASH_XXH3_128 && cfg->hash != UR_HASH_SHA256) {
		snprintf(err, errlen, "unknown hash algorithm");
		return -EINVAL;
	}
	e = calloc(1, sizeof(*e));
	if (!e) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	e->cfg = *cfg;
	if (!e->cfg.queue_depth)
		e->cfg.queue_depth = UR_DEFAULT_QUEUE_DEPTH;
	if (!e->cfg.chunk_size)
		e->cfg.chunk_size = UR_DEFAULT_CHUNK;
	if (!e->cfg.window)
		e->cfg.window = UR_DEFAULT_WINDOW;
	if (!e->cfg.threads) {
		ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		e->cfg.threads = ncpu > 0 ? (unsigned)ncpu : 1;
	}
	if (e->cfg.threads > MAX_LANES)
		e->cfg.threads = MAX_LANES;
	if (!e->cfg.seed_set) {
		ret = ur_hash_random_seed(&e->cfg.seed);
		if (ret < 0) {
			snprintf(err, errlen, "getrandom: %s", strerror(-ret));
			free(e);
			return ret;
		}
		e->cfg.seed_set = true;
	}
	/* A chunk is a whole number of compare blocks. */
	e->chunk_blocks = e->cfg.chunk_size / e->cfg.block_size;
	if (!e->chunk_blocks)
		e->chunk_blocks = 1;
	e->chunk_size = e->chunk_blocks * e->cfg.block_size;
	e->subs_per_chunk = (e->chunk_size + UR_SUB_BLOCK - 1) / UR_SUB_BLOCK;
	e->nlanes = e->cfg.threads;

	ret = ur_hasher_new(e->cfg.hash, e->cfg.seed, &e->hasher);
	if (ret < 0) {
		snprintf(err, errlen, "cannot set up the %s hash: %s",
			 ur_hash_name(e->cfg.hash), strerror(-ret));
		free(e);
		return ret;
	}
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->lane_cond, NULL);
	pthread_cond_init(&e->cons_cond, NULL);
	*out = e;
	return 0;
}

int ur_engine_add(struct ur_engine *e, struct ur_source *src,
		  struct ur_stream **out)
{
	return ur_engine_add_from(e, src, 0, out);
}

int ur_engine_add_from(struct ur_engine *e, struct ur_source *src,
		       uint64_t first_block, struct ur_stream **out)
{
	uint32_t bs = e->cfg.block_size;
	struct ur_stream *s;
	uint64_t q;
	int ret;

	*out = NULL;
	if (e->started || e->nstreams == UR_MAX_STREAMS)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->e = e;
	s->src = src;
	s->size = src->size;
	s->nblocks = ur_block_count(src->size, bs);
	if (first_block > s->nblocks) {
		free(s);
		return -EINVAL;
	}
	/* The cursor maps any position afresh: planning may start anywhere. */
	s->plan_block = first_block;
	ur_cursor_init(&s->cur, ur_source_map, src, src->size);
	q = e->cfg.window / e->chunk_size;
	if (q > e->cfg.queue_depth)
		q = e->cfg.queue_depth;
	if (q < 2)
		q = 2;
	s->quota = (unsigned)q;
	/* Data and zero slots alternate at worst. */
	s->fifo_cap = 2 * s->quota + 4;
	s->fifo = calloc(s->fifo_cap, sizeof(*s->fifo));
	if (!s->fifo) {
		free(s);
		return -ENOMEM;
	}
	ret = ur_hasher_zero(e->hasher, bs, &s->zero_hash);
	if (!ret && s->size % bs)
		ret = ur_hasher_zero(e->hasher, s->size % bs, &s->zero_last);
	if (ret < 0) {
		free(s->fifo);
		free(s);
		return ret;
	}
	e->streams[e->nstreams++] = s;
	*out = s;
	return 0;
}

static void *lane_main(void *arg);

int ur_engine_start(struct ur_engine *e)
{
	unsigned i, total = 0;
	size_t hashes;
	int ret;

	if (e->started || !e->nstreams)
		return -EINVAL;
	for (i = 0; i < e->nstreams; i++)
		total += e->streams[i]->quota;
	e->nchunks = total;
	e->lane_cap = (total + e->nlanes - 1) / e->nlanes;
	e->wake_batch = total / 2 ? total / 2 : 1;
	e->bufbytes = (size_t)total * e->chunk_size;
	e->bufmem = mmap(NULL, e->bufbytes, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (e->bufmem == MAP_FAILED) {
		e->bufmem = NULL;
		snprintf(e->errmsg, sizeof(e->errmsg),
			 "cannot allocate %zu bytes of read buffers",
			 e->bufbytes);
		return e->err = -ENOMEM;
	}
	e->chunks = calloc(total, sizeof(*e->chunks));
	if (!e->chunks)
		goto nomem;
	hashes = e->chunk_blocks +
		 (e->cfg.sub_hashes ? e->subs_per_chunk : 0);
	for (i = 0; i < total; i++) {
		struct chunk *c = &e->chunks[i];

		c->idx = i;
		c->buf = e->bufmem + (size_t)i * e->chunk_size;
		c->hashes = calloc(hashes, sizeof(*c->hashes));
		if (!c->hashes)
			goto nomem;
		if (e->cfg.sub_hashes)
			c->sub = c->hashes + e->chunk_blocks;
		c->next = e->free_list;
		e->free_list = c;
	}
	e->started = true;
	for (i = 0; i < e->nlanes; i++) {
		struct lane *l = &e->lanes[i];

		l->e = e;
		ret = ur_hasher_new(e->cfg.hash, e->cfg.seed, &l->hasher);
		if (ret < 0) {
			pthread_mutex_lock(&e->lock);
			set_error_locked(e, ret, "cannot set up the hash: %s",
					 strerror(-ret));
			pthread_mutex_unlock(&e->lock);
			return ret;
		}
		ret = pthread_create(&l->thread, NULL, lane_main, l);
		if (ret) {
			pthread_mutex_lock(&e->lock);
			set_error_locked(e, -ret, "cannot start a thread: %s",
					 strerror(ret));
			pthread_mutex_unlock(&e->lock);
			return -ret;
		}
		l->started = true;
	}
	return 0;

nomem:
	snprintf(e->errmsg, sizeof(e->errmsg), "out of memory");
	return e->err = -ENOMEM;
}

void ur_engine_free(struct ur_engine *e)
{
	bool leak = false;
	unsigned i;

	if (!e)
		return;
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
	for (i = 0; i < e->ndirect; i++)
		if (e->direct[i].dfd >= 0)
			close(e->direct[i].dfd);
	for (i = 0; i < e->nstreams; i++) {
		free(e->streams[i]->fifo);
		free(e->streams[i]);
	}
	if (e->chunks) {
		for (i = 0; i < e->nchunks; i++) {
			ur_oplist_free(&e->chunks[i].ops);
			free(e->chunks[i].hashes);
		}
		free(e->chunks);
	}
	/* A read the kernel never finished may still land in the buffers:
	 * leave them mapped rather than hand the memory out again. */
	if (e->bufmem && !leak)
		munmap(e->bufmem, e->bufbytes);
	ur_hasher_free(e->hasher);
	pthread_cond_destroy(&e->lane_cond);
	pthread_cond_destroy(&e->cons_cond);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

const char *ur_engine_error(const struct ur_engine *e)
{
	return e->errmsg;
}

const struct ur_config *ur_engine_config(const struct ur_engine *e)
{
	return &e->cfg;
}

unsigned ur_engine_threads(const struct ur_engine *e)
{
	return e->nlanes;
}

uint64_t ur_engine_buffer_bytes(const struct ur_engine *e)
{
	return e->bufbytes;
}

bool ur_engine_uses_io_uring(const struct ur_engine *e)
{
	return !e->cfg.no_uring &&
	       !__atomic_load_n(&e->sync_fallback, __ATOMIC_RELAXED);
}

int ur_engine_zero_hash(struct ur_engine *e, size_t len, struct ur_hash *out)
{
	return ur_hasher_zero(e->hasher, len, out);
}

uint64_t ur_stream_size(const struct ur_stream *s)
{
	return s->size;
}

uint64_t ur_stream_blocks(const struct ur_stream *s)
{
	return s->nblocks;
}

void ur_stream_stats(struct ur_stream *s, struct ur_stream_stats *st)
{
	pthread_mutex_lock(&s->e->lock);
	*st = s->stats;
	pthread_mutex_unlock(&s->e->lock);
}

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

static int direct_twin(struct ur_engine *e, int fd)
{
	char path[64];
	unsigned i;
	int dfd;

	for (i = 0; i < e->ndirect; i++)
		if (e->direct[i].fd == fd)
			return e->direct[i].dfd;
	if (e->ndirect == sizeof(e->direct) / sizeof(e->direct[0]))
		return -1;
	/* Reopen through /proc so an image's fd (owned by the VHDX library)
	 * gets an O_DIRECT twin; filesystems without O_DIRECT refuse it and
	 * the buffered fd is used instead. */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	e->direct[e->ndirect].fd = fd;
	e->direct[e->ndirect].dfd = dfd < 0 ? -1 : dfd;
	e->ndirect++;
	return dfd < 0 ? -1 : dfd;
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
	set_error_locked(e, ret, "%s: cannot map virtual offset %llu: %s",
			 s->src->path, (unsigned long long)pos,
			 ret == -EIO ? "bad extent map" : strerror(-ret));
	return ret;
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
	struct chunk *c;
	bool progress = false;
	int64_t z;
	unsigned i;
	int ret = 0;

	*out = NULL;
	while (s->plan_block < s->nblocks) {
		uint64_t pos = s->plan_block * bs;

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
		c = e->free_list;
		e->free_list = c->next;
		c->next = NULL;
		c->s = s;
		c->first = s->plan_block;
		c->nblocks = 0;
		c->state = CHUNK_BUSY;
		ur_oplist_reset(&c->ops);
		for (i = 0; i < e->chunk_blocks && s->plan_block < s->nblocks;
		     i++) {
			uint32_t len = ur_block_len(s->size, bs, s->plan_block);

			pos = s->plan_block * bs;
			if (i) {
				/* A zero block ends the chunk: it costs no
				 * read and belongs in a zero slot. */
				z = ur_zero_blocks(&s->cur, pos, bs, 1);
				if (z < 0)
					ret = (int)z;
				else
					ret = z ? 1 : 0;
				if (ret)
					break;
			}
			ret = ur_plan_block(&s->cur, pos, len, i * bs,
					    &c->ops);
			if (ret < 0)
				break;
			s->plan_block++;
			c->nblocks++;
		}
		if (ret < 0) {
			/* Leave the chunk unqueued; the engine is failing. */
			c->state = CHUNK_FREE;
			c->next = e->free_list;
			e->free_list = c;
			if (ret != -ENOMEM)
				return map_error(e, s, pos, ret);
			set_error_locked(e, ret, "out of memory");
			return ret;
		}
		s->stats.blocks_data += c->nblocks;
		s->stats.bytes_read += c->ops.read_bytes;
		s->stats.bytes_data += (uint64_t)c->nblocks * bs;
		if (c->first + c->nblocks == s->nblocks && s->size % bs)
			s->stats.bytes_data -= bs - s->size % bs;
		s->in_use++;
		s->fifo[(s->head + s->count) % s->fifo_cap] = (struct slot){
			.first = c->first, .n = c->nblocks, .c = c };
		s->count++;
		if (e->cfg.direct) {
			for (i = 0; i < c->ops.n; i++) {
				struct ur_op *op = &c->ops.v[i];

				op->fixed_fd = op->fd;
				if (op->kind != UR_OP_READ ||
				    op->file_off % DIRECT_ALIGN ||
				    op->len % DIRECT_ALIGN ||
				    op->buf_off % DIRECT_ALIGN)
					continue;
				ret = direct_twin(e, op->fd);
				if (ret >= 0)
					op->fixed_fd = ret;
			}
		} else {
			for (i = 0; i < c->ops.n; i++)
				c->ops.v[i].fixed_fd = c->ops.v[i].fd;
		}
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
	set_error_locked(e, err, "%s", msg);
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
		lane_fail(l, -EIO, "%s: unexpected end of file at offset %llu "
			  "(%u more bytes expected)", op->path,
			  (unsigned long long)(op->file_off + op->done),
			  op->len - op->done);
	else
		lane_fail(l, res, "%s: read error at offset %llu: %s",
			  op->path,
			  (unsigned long long)(op->file_off + op->done),
			  strerror(-res));
}

/* Hash every block of C (and its 4 KiB pieces when asked). */
static int lane_hash(struct lane *l, struct chunk *c)
{
	struct ur_engine *e = l->e;
	uint32_t bs = e->cfg.block_size;
	unsigned i;
	int ret;

	for (i = 0; i < c->nblocks; i++) {
		uint32_t len = ur_block_len(c->s->size, bs, c->first + i);
		const uint8_t *p = c->buf + (size_t)i * bs;

		ret = ur_hasher_hash(l->hasher, p, len, &c->hashes[i]);
		if (ret < 0)
			return ret;
		if (e->cfg.sub_hashes) {
			unsigned j, per = bs / UR_SUB_BLOCK;
			uint32_t o;

			for (j = 0, o = 0; o < len; j++, o += UR_SUB_BLOCK) {
				uint32_t n = len - o < UR_SUB_BLOCK ?
						     len - o : UR_SUB_BLOCK;

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
			set_error_locked(e, ret, "hashing failed: %s",
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

/* --- the consumer ------------------------------------------------------- */

static void cons_wait(struct ur_engine *e)
{
	e->cons_waiting = true;
	pthread_cond_wait(&e->cons_cond, &e->lock);
	e->cons_waiting = false;
}

/* Make the head slot the consumer's copy, waiting until it is ready.
 * Returns 1, 0 at the end, or a negative errno. */
static int load_head(struct ur_stream *s)
{
	struct ur_engine *e = s->e;
	int ret;

	pthread_mutex_lock(&e->lock);
	for (;;) {
		struct slot *sl;

		if (e->err) {
			ret = e->err;
			break;
		}
		if (!s->count) {
			if (s->plan_block >= s->nblocks) {
				ret = 0;
				break;
			}
			if (!e->started) {
				set_error_locked(e, -EINVAL,
						 "reader not started");
				continue;
			}
			cons_wait(e);
			continue;
		}
		sl = &s->fifo[s->head];
		if (sl->c && sl->c->state != CHUNK_READY) {
			cons_wait(e);
			continue;
		}
		s->cs = *sl;
		s->cs_valid = true;
		ret = 1;
		break;
	}
	pthread_mutex_unlock(&e->lock);
	return ret;
}

int ur_stream_peek(struct ur_stream *s, struct ur_block *b)
{
	struct ur_engine *e = s->e;
	uint32_t bs = e->cfg.block_size;
	struct slot *sl = &s->cs;
	int ret;

	if (!s->cs_valid) {
		ret = load_head(s);
		if (ret <= 0)
			return ret;
	} else if (__atomic_load_n(&e->err, __ATOMIC_RELAXED)) {
		return e->err;
	}
	memset(b, 0, sizeof(*b));
	b->index = sl->first + sl->consumed;
	b->off = b->index * bs;
	b->len = ur_block_len(s->size, bs, b->index);
	if (!sl->c) {
		b->zero = true;
		b->run = sl->n - sl->consumed;
		b->hash = b->len == bs ? s->zero_hash : s->zero_last;
	} else {
		unsigned i = (unsigned)sl->consumed;

		b->run = 1;
		b->data = sl->c->buf + (size_t)i * bs;
		b->hash = sl->c->hashes[i];
		if (e->cfg.sub_hashes) {
			b->sub = sl->c->sub + i * (bs / UR_SUB_BLOCK);
			b->nsub = (b->len + UR_SUB_BLOCK - 1) / UR_SUB_BLOCK;
		}
	}
	return 1;
}

void ur_stream_release(struct ur_stream *s, uint64_t n)
{
	struct ur_engine *e = s->e;

	while (n) {
		struct slot *sl;
		uint64_t k;

		if (!s->cs_valid && load_head(s) <= 0)
			return;
		k = s->cs.n - s->cs.consumed;
		if (k > n)
			k = n;
		s->cs.consumed += k;
		n -= k;
		if (s->cs.consumed < s->cs.n)
			return;
		pthread_mutex_lock(&e->lock);
		sl = &s->fifo[s->head];
		if (sl->n > s->cs.n) {
			/* A zero run that grew while we walked it. */
			s->cs.n = sl->n;
			pthread_mutex_unlock(&e->lock);
			continue;
		}
		if (sl->c) {
			sl->c->state = CHUNK_FREE;
			sl->c->next = e->free_list;
			e->free_list = sl->c;
			s->in_use--;
		}
		s->head = (s->head + 1) % s->fifo_cap;
		s->count--;
		e->ready--;
		s->cs_valid = false;
		if (e->lanes_waiting)
			pthread_cond_broadcast(&e->lane_cond);
		pthread_mutex_unlock(&e->lock);
	}
}
