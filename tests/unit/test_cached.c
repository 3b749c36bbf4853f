/* SPDX-License-Identifier: MIT */
/*
 * test_cached.c - the page-cache probe and the reader's direct_uncached
 * mode: the probe follows what the cache holds (cachestat() and the
 * mincore() fallback alike), a cold file is read around the cache and
 * left uncached, a warm one is read from the cache, and a file half in
 * the cache is read both ways, every block hashing as its bytes do.
 * Needs a file system whose cache can be dropped (not tmpfs): SKIP there.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/oracle.h"

#include "uring/cached.h"
#include "uring/hash.h"
#include "uring/reader.h"
#include "uring/source.h"

#define MiB (1024u * 1024u)
#define FSIZE (8 * MiB)
#define BS (64u * 1024u)

struct fixture {
	char dir[64];
	char path[128];
	uint8_t *content;
	int fd;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "/var/tmp/hvr-cached-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/disk", f->dir);
	f->content = malloc(FSIZE);
	assert_non_null(f->content);
	fill_random(f->content, FSIZE, 4711);
	f->fd = open(f->path, O_CREAT | O_TRUNC | O_RDWR, 0600);
	assert_true(f->fd >= 0);
	assert_int_equal(pwrite(f->fd, f->content, FSIZE, 0), FSIZE);
	assert_int_equal(fsync(f->fd), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	close(f->fd);
	unlink(f->path);
	rmdir(f->dir);
	free(f->content);
	free(f);
	return 0;
}

static void drop(struct fixture *f, uint64_t off, uint64_t len)
{
	assert_int_equal(posix_fadvise(f->fd, (off_t)off, (off_t)len,
				       POSIX_FADV_DONTNEED),
			 0);
}

/* Bring [OFF, OFF + LEN) into the cache and no more: without read-ahead,
 * which would bring what follows too. */
static void warm(struct fixture *f, uint64_t off, uint64_t len)
{
	uint8_t *buf = malloc(len);
	int fd = open(f->path, O_RDONLY);

	assert_non_null(buf);
	assert_true(fd >= 0);
	assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM), 0);
	assert_int_equal(pread(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
	free(buf);
}

/* Both ways of asking must give WANT for the range (a macro, so that a
 * failure names the line that asked). */
#define expect(p, off, len, want)                                             \
	do {                                                                  \
		assert_int_equal(ur_range_cached(p, off, len), want);         \
		assert_int_equal(ur_range_cached_mincore(p, off, len), want); \
	} while (0)

/* Whether the file system lets the cache go at all (tmpfs does not). */
static bool droppable(struct fixture *f, struct ur_cache_probe *p)
{
	drop(f, 0, FSIZE);
	if (ur_range_cached_mincore(p, 0, FSIZE) == 0)
		return true;
	print_message("SKIP: the cache of %s cannot be dropped (tmpfs?)\n",
		      f->path);
	return false;
}

static void test_probe_follows_the_cache(void **state)
{
	struct fixture *f = *state;
	struct ur_cache_probe p;

	assert_int_equal(ur_cache_probe_init(&p, f->fd), 0);
	if (!droppable(f, &p)) {
		ur_cache_probe_fini(&p);
		skip();
	}
	expect(&p, 0, FSIZE, 0);
	expect(&p, 0, 4096, 0);
	warm(f, 0, 4 * MiB);
	expect(&p, 0, 4 * MiB, 1);
	expect(&p, MiB, 4096, 1);
	expect(&p, 0, FSIZE, 0);
	expect(&p, 4 * MiB, 4 * MiB, 0);
	/* a part missing makes the range uncached (the part is 2 MiB: the
	 * kernel keeps a large folio that a drop covers only in part) */
	drop(f, 2 * MiB, 2 * MiB);
	expect(&p, 0, 4 * MiB, 0);
	expect(&p, 0, 2 * MiB, 1);
	expect(&p, 2 * MiB - 4096, 8192, 0);
	expect(&p, 0, 0, 1); /* nothing asked: nothing missing */
	ur_cache_probe_fini(&p);
}

/* Read the whole file with direct_uncached: every block must hash and
 * read as its bytes; blocks the reader took from the cache come with
 * their place in the file (fd), the others without (read with O_DIRECT
 * into the reader's buffer).  *FROM_CACHE counts the former. */
static void read_all(struct fixture *f, unsigned *from_cache,
		     bool placed[FSIZE / BS])
{
	struct ur_config cfg = { .block_size = BS,
				 .hash = UR_HASH_XXH3_128,
				 .seed = 5,
				 .seed_set = true,
				 .sub_hashes = true,
				 .sub_hashes_unlocated = true,
				 .direct_uncached = true };
	struct ur_source *src;
	struct ur_engine *e;
	struct ur_stream *st;
	struct ur_hasher *ref;
	struct ur_block b;
	struct ur_hash want;
	char err[256];
	uint64_t idx = 0;
	int ret;

	*from_cache = 0;
	assert_int_equal(ur_source_open(f->path, &src, err, sizeof(err)), 0);
	assert_int_equal(ur_engine_new(&cfg, &e, err, sizeof(err)), 0);
	assert_int_equal(ur_engine_add(e, src, &st), 0);
	assert_int_equal(ur_engine_start(e), 0);
	assert_int_equal(ur_hasher_new(UR_HASH_XXH3_128, 5, &ref), 0);
	while ((ret = ur_stream_peek(st, &b)) > 0) {
		assert_int_equal(b.index, idx);
		assert_false(b.zero);
		ur_hasher_hash(ref, f->content + idx * BS, BS, &want);
		assert_true(ur_hash_equal(&b.hash, &want));
		assert_memory_equal(b.data, f->content + idx * BS, BS);
		placed[idx] = b.fd >= 0;
		if (placed[idx])
			(*from_cache)++;
		else
			assert_int_equal(b.nsub, BS / 4096);
		ur_stream_release(st, 1);
		idx++;
	}
	assert_int_equal(ret, 0);
	assert_int_equal(idx, FSIZE / BS);
	ur_hasher_free(ref);
	ur_engine_free(e);
	ur_source_close(src);
}

static void test_reader_reads_around_the_cache(void **state)
{
	struct fixture *f = *state;
	bool placed[FSIZE / BS];
	struct ur_cache_probe p;
	unsigned n, i;

	assert_int_equal(ur_cache_probe_init(&p, f->fd), 0);
	if (!droppable(f, &p)) {
		ur_cache_probe_fini(&p);
		skip();
	}

	/* cold: all of it around the cache, and the cache still empty */
	read_all(f, &n, placed);
	assert_int_equal(n, 0);
	expect(&p, 0, MiB, 0);
	expect(&p, FSIZE - MiB, MiB, 0);

	/* warm: all of it from the cache */
	warm(f, 0, FSIZE);
	read_all(f, &n, placed);
	assert_int_equal(n, FSIZE / BS);

	/* half: the first half from the cache, the second around it */
	drop(f, FSIZE / 2, FSIZE / 2);
	read_all(f, &n, placed);
	for (i = 0; i < FSIZE / BS; i++)
		assert_int_equal(placed[i], i < FSIZE / BS / 2);
	expect(&p, FSIZE / 2, FSIZE / 2, 0);
	ur_cache_probe_fini(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_probe_follows_the_cache,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_reader_reads_around_the_cache, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
