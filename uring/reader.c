/* SPDX-License-Identifier: MIT */
/*
 * reader.c - the io_uring reader (see reader.h): the engine's life, from
 * configuration and streams through the buffers to teardown, and the
 * consumer's side, which takes the ready blocks of each stream in order.
 * The lanes that fill the buffers are in lane.c; who owns what, and
 * when, is in internal.h.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uring/internal.h"

void ur_fail_locked(struct ur_engine *e, int err, const char *fmt, ...)
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

/* Is CFG one the engine can run?  If not, ERR says why. */
static int check_config(const struct ur_config *cfg, char *err, size_t errlen)
{
	if (!ur_is_pow2(cfg->block_size) || cfg->block_size < 512 ||
	    cfg->block_size > (256u << 20)) {
		snprintf(err, errlen,
			 "block size %u is not a power of two "
			 "between 512 and 256M",
			 cfg->block_size);
		return -EINVAL;
	}
	if (cfg->sub_hashes && cfg->block_size < UR_SUB_BLOCK) {
		snprintf(err, errlen,
			 "4 KiB sub-block hashes need blocks of "
			 "at least 4 KiB");
		return -EINVAL;
	}
	if (cfg->hash != UR_HASH_XXH3_128 && cfg->hash != UR_HASH_SHA256) {
		snprintf(err, errlen, "unknown hash algorithm");
		return -EINVAL;
	}
	return 0;
}

/* Fill the zeros of CFG with defaults and pick a seed if none was set. */
static int fill_defaults(struct ur_config *cfg, char *err, size_t errlen)
{
	long ncpu;
	int ret;

	if (!cfg->queue_depth)
		cfg->queue_depth = UR_DEFAULT_QUEUE_DEPTH;
	if (!cfg->chunk_size)
		cfg->chunk_size = UR_DEFAULT_CHUNK;
	if (!cfg->window)
		cfg->window = UR_DEFAULT_WINDOW;
	if (!cfg->threads) {
		ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		cfg->threads = ncpu > 0 ? (unsigned)ncpu : 1;
	}
	if (cfg->threads > MAX_LANES)
		cfg->threads = MAX_LANES;
	if (!cfg->seed_set) {
		ret = ur_hash_random_seed(&cfg->seed);
		if (ret < 0) {
			snprintf(err, errlen, "getrandom: %s", strerror(-ret));
			return ret;
		}
		cfg->seed_set = true;
	}
	return 0;
}

void ur_config_views(struct ur_config *cfg, struct ur_source *const *src,
		     unsigned n)
{
	unsigned i;

	cfg->direct_views = true;
	for (i = 0; i < n && !cfg->chunk_size; i++)
		if (ur_source_on_fuse(src[i]))
			cfg->chunk_size = UR_FUSE_CHUNK;
}

int ur_engine_new(const struct ur_config *cfg, struct ur_engine **out,
		  char *err, size_t errlen)
{
	struct ur_engine *e;
	int ret;

	*out = NULL;
	ret = check_config(cfg, err, errlen);
	if (ret < 0)
		return ret;
	e = calloc(1, sizeof(*e));
	if (!e) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	e->cfg = *cfg;
	ret = fill_defaults(&e->cfg, err, errlen);
	if (ret < 0) {
		free(e);
		return ret;
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

int ur_engine_start(struct ur_engine *e)
{
	unsigned i, total = 0;
	size_t hashes;

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
	hashes = e->chunk_blocks + (e->cfg.sub_hashes ? e->subs_per_chunk : 0);
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
	return ur_lanes_start(e);

nomem:
	snprintf(e->errmsg, sizeof(e->errmsg), "out of memory");
	return e->err = -ENOMEM;
}

void ur_engine_free(struct ur_engine *e)
{
	bool leak;
	unsigned i;

	if (!e)
		return;
	leak = ur_lanes_stop(e);
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
				ur_fail_locked(e, -EINVAL,
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
	b->fd = -1;
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
		if (!ur_oplist_locate(&sl->c->ops, (uint32_t)i * bs, b->len,
				      &b->fd, &b->file_off))
			b->fd = -1;
		if (e->cfg.sub_hashes) {
			b->nsub = (b->len + UR_SUB_BLOCK - 1) / UR_SUB_BLOCK;
			if (b->fd < 0 || !e->cfg.sub_hashes_unlocated)
				b->sub = sl->c->sub + i * (bs / UR_SUB_BLOCK);
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
			ur_chunk_put(e, sl->c);
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
