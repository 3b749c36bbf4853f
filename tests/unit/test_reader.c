/* SPDX-License-Identifier: MIT */
/*
 * test_reader.c - unit tests of the compare-block arithmetic, extent
 * merging and run walking under `hvresync verify`, and of the zero-block
 * shortcut: a block that is never read (a hole, an unallocated VHDX block)
 * must hash exactly like a block of zeros that was read, the disk's short
 * last block included.  The oracles are computed here by brute force.
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

#include "uring/blocks.h"
#include "uring/hash.h"
#include "uring/plan.h"
#include "uring/reader.h"
#include "uring/source.h"

/* --- block arithmetic ---------------------------------------------------- */

static void test_block_arithmetic(void **state)
{
	(void)state;
	assert_int_equal(ur_block_count(0, 65536), 0);
	assert_int_equal(ur_block_count(1, 65536), 1);
	assert_int_equal(ur_block_count(65536, 65536), 1);
	assert_int_equal(ur_block_count(65537, 65536), 2);
	assert_int_equal(ur_block_count(10ull << 30, 4096), 2621440);

	/* 200000 = 3 * 65536 + 3392: three full blocks and a short one. */
	assert_int_equal(ur_block_count(200000, 65536), 4);
	assert_int_equal(ur_block_len(200000, 65536, 0), 65536);
	assert_int_equal(ur_block_len(200000, 65536, 2), 65536);
	assert_int_equal(ur_block_len(200000, 65536, 3), 3392);
	assert_int_equal(ur_block_len(200000, 65536, 4), 0);
	assert_int_equal(ur_block_len(65536, 65536, 0), 65536);
	assert_int_equal(ur_block_len(65536, 65536, 1), 0);

	/* Block arithmetic past 4 GiB must not wrap in 32 bits. */
	assert_true(ur_block_off(70000, 65536) == 70000ull * 65536);
	assert_int_equal(ur_block_len((5ull << 30) + 512, 1u << 20, 5120), 512);

	assert_int_equal(ur_clip(200000, 196608, 65536), 3392);
	assert_int_equal(ur_clip(200000, 200000, 65536), 0);
	assert_int_equal(ur_clip(200000, 0, 65536), 65536);

	assert_true(ur_is_pow2(4096));
	assert_false(ur_is_pow2(0));
	assert_false(ur_is_pow2(3 << 12));
}

/* --- extent merging ------------------------------------------------------ */

static void test_acc_merges_adjacent(void **state)
{
	struct ur_acc a;
	struct ur_range r;

	(void)state;
	ur_acc_init(&a);
	assert_false(ur_acc_add(&a, 0, 4096, &r));
	assert_false(ur_acc_add(&a, 4096, 4096, &r)); /* touches: grows */
	assert_false(ur_acc_add(&a, 8192, 100, &r));
	assert_true(ur_acc_add(&a, 65536, 4096, &r)); /* gap: out it goes */
	assert_int_equal(r.off, 0);
	assert_int_equal(r.len, 8292);
	assert_true(ur_acc_flush(&a, &r));
	assert_int_equal(r.off, 65536);
	assert_int_equal(r.len, 4096);
	assert_false(ur_acc_flush(&a, &r));
	assert_int_equal(a.count, 2);
	assert_int_equal(a.bytes, 8292 + 4096);

	/* Empty ranges are ignored; an overlap is absorbed. */
	ur_acc_init(&a);
	assert_false(ur_acc_add(&a, 100, 0, &r));
	assert_false(ur_acc_flush(&a, &r));
	assert_false(ur_acc_add(&a, 1000, 500, &r));
	assert_false(ur_acc_add(&a, 1200, 100, &r));
	assert_false(ur_acc_add(&a, 1400, 400, &r));
	assert_true(ur_acc_flush(&a, &r));
	assert_int_equal(r.off, 1000);
	assert_int_equal(r.len, 800);
}

/* Brute force: mark every byte, then read the runs of marks back. */
static size_t ref_merge(const struct ur_range *v, size_t n, size_t span,
			struct ur_range *out)
{
	uint8_t *mark = calloc(span, 1);
	size_t i, k = 0;
	uint64_t j;

	assert_non_null(mark);
	for (i = 0; i < n; i++)
		for (j = v[i].off; j < v[i].off + v[i].len; j++)
			mark[j] = 1;
	for (j = 0; j < span; j++) {
		if (!mark[j])
			continue;
		out[k].off = j;
		while (j < span && mark[j])
			j++;
		out[k].len = j - out[k].off;
		k++;
	}
	free(mark);
	return k;
}

static void test_ranges_merge_random(void **state)
{
	struct ur_range v[64], want[64];
	uint8_t rnd[64 * 3];
	unsigned round;

	(void)state;
	for (round = 0; round < 200; round++) {
		size_t n = 1 + round % 60, got, exp, i;

		fill_random(rnd, sizeof(rnd), round + 1);
		for (i = 0; i < n; i++) {
			v[i].off = rnd[3 * i] * 4;
			v[i].len = rnd[3 * i + 1] % 5 ? rnd[3 * i + 2] % 40 : 0;
		}
		exp = ref_merge(v, n, 2048, want);
		got = ur_ranges_merge(v, n);
		assert_int_equal(got, exp);
		for (i = 0; i < got; i++) {
			assert_int_equal(v[i].off, want[i].off);
			assert_int_equal(v[i].len, want[i].len);
		}
	}
}

/* --- walking runs -------------------------------------------------------- */

struct fake_map {
	const struct ur_run *runs;
	unsigned n;
	unsigned calls;
};

/* Serve the run containing OFF, cut to start at OFF (as a map must). */
static int fake_map_fn(void *ctx, uint64_t off, uint64_t len,
		       struct ur_run *run)
{
	struct fake_map *m = ctx;
	unsigned i;

	m->calls++;
	for (i = 0; i < m->n; i++) {
		const struct ur_run *r = &m->runs[i];
		uint64_t d;

		if (off < r->off || off >= r->off + r->len)
			continue;
		d = off - r->off;
		*run = *r;
		run->off = off;
		run->len = r->len - d < len ? r->len - d : len;
		if (r->kind == UR_RUN_DATA)
			run->file_off = r->file_off + d;
		if (r->kind == UR_RUN_MEM)
			run->mem = (const char *)r->mem + d;
		return 0;
	}
	return -EINVAL;
}

#define K 1024u

static void test_zero_blocks(void **state)
{
	/* 4 KiB blocks over 40 KiB + 512 (10 full blocks and a short one).
	 * Two zero runs back to back, data from 14K to 20K, then zeros to
	 * the end. */
	static const struct ur_run runs[] = {
		{ .off = 0, .len = 6 * K, .kind = UR_RUN_ZERO },
		{ .off = 6 * K, .len = 8 * K, .kind = UR_RUN_ZERO },
		{ .off = 14 * K,
		  .len = 6 * K,
		  .kind = UR_RUN_DATA,
		  .fd = 3,
		  .file_off = 1 << 20 },
		{ .off = 20 * K, .len = 20 * K + 512, .kind = UR_RUN_ZERO },
	};
	struct fake_map m = { runs, 4, 0 };
	struct ur_cursor c;
	uint64_t size = 40 * K + 512;

	(void)state;
	ur_cursor_init(&c, fake_map_fn, &m, size);
	/* [0, 14K) is zero across two runs: blocks 0..2 whole, block 3
	 * (12K..16K) holds data. */
	assert_int_equal(ur_zero_blocks(&c, 0, 4 * K, 100), 3);
	assert_int_equal(ur_zero_blocks(&c, 0, 4 * K, 2), 2);
	assert_int_equal(ur_zero_blocks(&c, 12 * K, 4 * K, 100), 0);
	assert_int_equal(ur_zero_blocks(&c, 16 * K, 4 * K, 100), 0);
	/* From 20K to the end: 5 full blocks and the 512-byte tail. */
	assert_int_equal(ur_zero_blocks(&c, 20 * K, 4 * K, 100), 6);
	assert_int_equal(ur_zero_blocks(&c, 40 * K, 4 * K, 100), 1);
	/* 64 KiB blocks: the only block holds data. */
	assert_int_equal(ur_zero_blocks(&c, 0, 64 * K, 100), 0);
}

static void test_plan_block_merges_reads(void **state)
{
	static const char mem[8 * K];
	/* Data contiguous in the file across 0..12K, then a jump, then a
	 * sector held in memory, then zeros. */
	static const struct ur_run runs[] = {
		{ .off = 0,
		  .len = 5 * K,
		  .kind = UR_RUN_DATA,
		  .fd = 7,
		  .file_off = 1 << 20 },
		{ .off = 5 * K,
		  .len = 7 * K,
		  .kind = UR_RUN_DATA,
		  .fd = 7,
		  .file_off = (1 << 20) + 5 * K },
		{ .off = 12 * K,
		  .len = 2 * K,
		  .kind = UR_RUN_DATA,
		  .fd = 7,
		  .file_off = 8 << 20 },
		{ .off = 14 * K, .len = 512, .kind = UR_RUN_MEM, .mem = mem },
		{ .off = 14 * K + 512,
		  .len = 512,
		  .kind = UR_RUN_MEM,
		  .mem = mem + 512 },
		{ .off = 15 * K, .len = 9 * K, .kind = UR_RUN_ZERO },
	};
	struct fake_map m = { runs, 6, 0 };
	struct ur_oplist ops = { 0 };
	struct ur_cursor c;
	uint32_t bs = 4 * K;
	uint64_t pos;

	(void)state;
	ur_cursor_init(&c, fake_map_fn, &m, 24 * K);
	/* Plan blocks 0..3 into one chunk, as the reader does. */
	for (pos = 0; pos < 16 * K; pos += bs)
		assert_int_equal(
			ur_plan_block(&c, pos, bs, (uint32_t)pos, &ops), 0);
	assert_int_equal(ops.n, 4);
	/* One 12 KiB read across two runs and three blocks. */
	assert_int_equal(ops.v[0].kind, UR_OP_READ);
	assert_int_equal(ops.v[0].buf_off, 0);
	assert_int_equal(ops.v[0].len, 12 * K);
	assert_int_equal(ops.v[0].file_off, 1 << 20);
	assert_int_equal(ops.v[0].fd, 7);
	/* The jump in the file starts a new read. */
	assert_int_equal(ops.v[1].kind, UR_OP_READ);
	assert_int_equal(ops.v[1].buf_off, 12 * K);
	assert_int_equal(ops.v[1].len, 2 * K);
	assert_int_equal(ops.v[1].file_off, 8 << 20);
	/* Two memory runs that are contiguous become one copy. */
	assert_int_equal(ops.v[2].kind, UR_OP_COPY);
	assert_int_equal(ops.v[2].buf_off, 14 * K);
	assert_int_equal(ops.v[2].len, K);
	assert_ptr_equal(ops.v[2].mem, mem);
	assert_int_equal(ops.v[3].kind, UR_OP_FILL);
	assert_int_equal(ops.v[3].buf_off, 15 * K);
	assert_int_equal(ops.v[3].len, K);
	assert_int_equal(ops.read_bytes, 14 * K);
	assert_int_equal(ops.data_bytes, 15 * K);
	/* Walking block by block asked the map once per run. */
	assert_int_equal(m.calls, 6);
	ur_oplist_free(&ops);
}

static int bad_map_fn(void *ctx, uint64_t off, uint64_t len, struct ur_run *run)
{
	(void)ctx;
	memset(run, 0, sizeof(*run));
	run->off = off + 1; /* not where it was asked */
	run->len = len;
	run->kind = UR_RUN_ZERO;
	return 0;
}

static void test_cursor_rejects_bad_map(void **state)
{
	struct ur_cursor c;
	const struct ur_run *r;

	(void)state;
	ur_cursor_init(&c, bad_map_fn, NULL, 1 << 20);
	assert_int_equal(ur_cursor_at(&c, 0, &r), -EIO);
	assert_int_equal(ur_cursor_at(&c, 1 << 20, &r), -EINVAL);
	assert_int_equal(ur_zero_blocks(&c, 0, 4096, 10), -EIO);
}

/* --- hashes -------------------------------------------------------------- */

static void test_sha256_vector(void **state)
{
	struct ur_hasher *h;
	struct ur_hash out;
	char hex[2 * UR_HASH_MAX + 1];

	(void)state;
	assert_int_equal(ur_hasher_new(UR_HASH_SHA256, 0, &h), 0);
	assert_int_equal(ur_hasher_hash(h, "abc", 3, &out), 0);
	ur_hash_hex(UR_HASH_SHA256, &out, hex);
	/* FIPS 180-2, appendix B.1. */
	assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223"
				 "b00361a396177a9cb410ff61f20015ad");
	ur_hasher_free(h);
}

static void test_hash_names(void **state)
{
	enum ur_hash_algo a;

	(void)state;
	assert_int_equal(ur_hash_parse("xxh3", &a), 0);
	assert_int_equal(a, UR_HASH_XXH3_128);
	assert_int_equal(ur_hash_parse("sha256", &a), 0);
	assert_int_equal(a, UR_HASH_SHA256);
	assert_int_equal(ur_hash_parse("md5", &a), -EINVAL);
	assert_int_equal(ur_hash_len(UR_HASH_XXH3_128), 16);
	assert_int_equal(ur_hash_len(UR_HASH_SHA256), 32);
}

static void test_seed_keys_xxh3(void **state)
{
	struct ur_hasher *h1, *h2, *h3;
	struct ur_hash a, b, c;
	uint8_t buf[4096];

	(void)state;
	fill_random(buf, sizeof(buf), 9);
	assert_int_equal(ur_hasher_new(UR_HASH_XXH3_128, 1, &h1), 0);
	assert_int_equal(ur_hasher_new(UR_HASH_XXH3_128, 2, &h2), 0);
	assert_int_equal(ur_hasher_new(UR_HASH_XXH3_128, 1, &h3), 0);
	ur_hasher_hash(h1, buf, sizeof(buf), &a);
	ur_hasher_hash(h2, buf, sizeof(buf), &b);
	ur_hasher_hash(h3, buf, sizeof(buf), &c);
	assert_false(ur_hash_equal(&a, &b));
	assert_true(ur_hash_equal(&a, &c));
	ur_hasher_free(h1);
	ur_hasher_free(h2);
	ur_hasher_free(h3);
}

/* The hash of an unread block equals the hash of real zeros, for full
 * blocks and for every odd short length a disk's end can leave. */
static void test_zero_hash_matches_real_zeros(void **state)
{
	static const size_t lens[] = { 0,    1,	    511,   512,	    3392,
				       4096, 65535, 65536, 1 << 20, 4 << 20 };
	enum ur_hash_algo algos[] = { UR_HASH_XXH3_128, UR_HASH_SHA256 };
	uint8_t *zeros = calloc(1, 4 << 20);
	unsigned i, j;

	(void)state;
	assert_non_null(zeros);
	for (j = 0; j < 2; j++) {
		struct ur_hasher *h;

		assert_int_equal(ur_hasher_new(algos[j], 0x1234, &h), 0);
		for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
			struct ur_hash a, b;

			assert_int_equal(ur_hasher_zero(h, lens[i], &a), 0);
			assert_int_equal(ur_hasher_hash(h, zeros, lens[i], &b),
					 0);
			assert_true(ur_hash_equal(&a, &b));
		}
		ur_hasher_free(h);
	}
	free(zeros);
}

/* --- the reader end to end ----------------------------------------------- */

#define BS (64u * 1024)
#define TAIL 3392u
#define FSIZE (3 * BS + TAIL)

static char tmpdir[] = "/tmp/test_reader.XXXXXX";

static int make_file(const char *name, const uint8_t *content,
		     const bool *write_block, char *path)
{
	unsigned i;
	int fd;

	snprintf(path, 256, "%s/%s", tmpdir, name);
	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, FSIZE), 0);
	for (i = 0; i < 4; i++) {
		uint32_t len = ur_block_len(FSIZE, BS, i);

		if (write_block[i])
			assert_int_equal(
				pwrite(fd, content + i * BS, len, i * BS),
				(ssize_t)len);
	}
	assert_int_equal(fsync(fd), 0);
	close(fd);
	return 0;
}

static bool is_hole(const char *path, uint64_t off)
{
	int fd = open(path, O_RDONLY);
	off_t d;

	assert_true(fd >= 0);
	d = lseek(fd, (off_t)off, SEEK_DATA);
	close(fd);
	return d < 0 || (uint64_t)d > off;
}

/*
 * Two files with the same contents: zeros, random, zeros, zeros (the last
 * block short).  X writes its zeros out, Y leaves them as holes.  Every
 * block must hash the same on both sides, the holes must not be read, and
 * both must match hashes computed here from the bytes.
 */
static void test_reader_zero_shortcut(void **state)
{
	static const bool write_x[4] = { true, true, true, true };
	static const bool write_y[4] = { false, true, false, false };
	uint8_t *content = calloc(1, 4 * BS);
	char px[256], py[256], err[256];
	struct ur_source *sx, *sy;
	struct ur_engine *e;
	struct ur_stream *st[2];
	struct ur_config cfg = { .block_size = BS,
				 .hash = UR_HASH_XXH3_128,
				 .seed = 77,
				 .seed_set = true,
				 .sub_hashes = true };
	struct ur_hasher *ref;
	uint64_t idx = 0;

	(void)state;
	assert_non_null(content);
	fill_random(content + BS, BS, 5);
	assert_non_null(mkdtemp(tmpdir));
	make_file("x", content, write_x, px);
	make_file("y", content, write_y, py);
	assert_int_equal(ur_source_open(px, &sx, err, sizeof(err)), 0);
	assert_int_equal(ur_source_open(py, &sy, err, sizeof(err)), 0);
	assert_int_equal(sx->type, UR_SRC_FILE);
	assert_int_equal(sx->size, FSIZE);
	assert_int_equal(ur_engine_new(&cfg, &e, err, sizeof(err)), 0);
	assert_int_equal(ur_engine_add(e, sx, &st[0]), 0);
	assert_int_equal(ur_engine_add(e, sy, &st[1]), 0);
	assert_int_equal(ur_engine_start(e), 0);
	assert_int_equal(ur_hasher_new(UR_HASH_XXH3_128, 77, &ref), 0);

	for (;;) {
		struct ur_block a, b;
		struct ur_hash want;
		uint32_t len = ur_block_len(FSIZE, BS, idx);
		int ra = ur_stream_peek(st[0], &a);
		int rb = ur_stream_peek(st[1], &b);

		assert_int_equal(ra, rb);
		if (!ra)
			break;
		assert_int_equal(ra, 1);
		assert_int_equal(a.index, idx);
		assert_int_equal(b.index, idx);
		assert_int_equal(a.len, len);
		assert_int_equal(b.len, len);
		ur_hasher_hash(ref, content + idx * BS, len, &want);
		assert_true(ur_hash_equal(&a.hash, &want));
		assert_true(ur_hash_equal(&b.hash, &want));
		/* Written blocks are read; holes must not be. */
		assert_false(a.zero);
		assert_non_null(a.data);
		assert_memory_equal(a.data, content + idx * BS, len);
		assert_int_equal(a.nsub, (len + 4095) / 4096);
		{
			/* Each 4 KiB piece's hash, the short tail too. */
			unsigned j;

			for (j = 0; j < a.nsub; j++) {
				uint32_t o = j * 4096;
				uint32_t n = len - o < 4096 ? len - o : 4096;

				ur_hasher_hash(ref, content + idx * BS + o, n,
					       &want);
				assert_true(ur_hash_equal(&a.sub[j], &want));
			}
			ur_hasher_hash(ref, content + idx * BS, len, &want);
		}
		if (is_hole(py, idx * BS)) {
			assert_true(b.zero);
			assert_null(b.data);
			assert_int_equal(b.fd, -1); /* nothing was read */
		} else {
			assert_false(b.zero);
		}
		ur_stream_release(st[0], 1);
		ur_stream_release(st[1], 1);
		idx++;
	}
	assert_int_equal(idx, 4);
	{
		struct ur_stream_stats sa, sb;

		ur_stream_stats(st[0], &sa);
		ur_stream_stats(st[1], &sb);
		assert_int_equal(sa.bytes_read, FSIZE);
		if (is_hole(py, 0) && is_hole(py, 2 * BS) &&
		    is_hole(py, 3 * BS)) {
			assert_int_equal(sb.bytes_read, BS);
			assert_int_equal(sb.blocks_zero, 3);
		}
	}
	ur_hasher_free(ref);
	ur_engine_free(e);
	ur_source_close(sx);
	ur_source_close(sy);
	unlink(px);
	unlink(py);
	rmdir(tmpdir);
	free(content);
}

/*
 * Sub-block hashes only where the reader cannot say where a block lies:
 * blocks 0, 2 and 3 of this file are data, each brought by one read, and
 * come without sub-block hashes but with their place, where hashing the
 * pieces gives what hashing them here does; block 1 is half a hole (a
 * fill and a read) and comes with its sub-block hashes.
 */
static void test_reader_sub_hashes_unlocated(void **state)
{
	char dir[] = "/tmp/test_reader3.XXXXXX";
	uint8_t *content = calloc(1, 4 * BS), piece[4096];
	struct ur_config cfg = { .block_size = BS,
				 .hash = UR_HASH_XXH3_128,
				 .seed = 5,
				 .seed_set = true,
				 .sub_hashes = true,
				 .sub_hashes_unlocated = true };
	char path[256], err[256];
	struct ur_source *src;
	struct ur_engine *e;
	struct ur_stream *st;
	struct ur_hasher *ref;
	struct ur_block b;
	uint64_t idx = 0;
	int fd, ret;

	(void)state;
	assert_non_null(content);
	fill_random(content, FSIZE, 9);
	memset(content + BS, 0, BS / 2);
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/f", dir);
	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, FSIZE), 0);
	assert_int_equal(pwrite(fd, content, BS, 0), (ssize_t)BS);
	assert_int_equal(pwrite(fd, content + BS + BS / 2, FSIZE - BS - BS / 2,
				BS + BS / 2),
			 (ssize_t)(FSIZE - BS - BS / 2));
	assert_int_equal(fsync(fd), 0);
	close(fd);
	if (!is_hole(path, BS)) {
		/* a filesystem without holes here: nothing to show */
		unlink(path);
		rmdir(dir);
		free(content);
		skip();
	}

	assert_int_equal(ur_source_open(path, &src, err, sizeof(err)), 0);
	assert_int_equal(ur_engine_new(&cfg, &e, err, sizeof(err)), 0);
	assert_int_equal(ur_engine_add(e, src, &st), 0);
	assert_int_equal(ur_engine_start(e), 0);
	assert_int_equal(ur_hasher_new(UR_HASH_XXH3_128, 5, &ref), 0);
	while ((ret = ur_stream_peek(st, &b)) > 0) {
		uint32_t len = ur_block_len(FSIZE, BS, idx), o, n;
		unsigned j;

		assert_false(b.zero);
		assert_int_equal(b.nsub, (len + 4095) / 4096);
		if (idx == 1) {
			assert_int_equal(b.fd, -1);
			assert_non_null(b.sub);
		} else {
			assert_true(b.fd >= 0);
			assert_null(b.sub);
		}
		for (j = 0, o = 0; o < len; j++, o += 4096) {
			struct ur_hash want, got;

			n = len - o < 4096 ? len - o : 4096;
			ur_hasher_hash(ref, content + idx * BS + o, n, &want);
			if (b.sub) {
				got = b.sub[j];
			} else {
				assert_int_equal(pread(b.fd, piece, n,
						       (off_t)(b.file_off + o)),
						 (ssize_t)n);
				ur_hasher_hash(ref, piece, n, &got);
			}
			assert_true(ur_hash_equal(&got, &want));
		}
		ur_stream_release(st, 1);
		idx++;
	}
	assert_int_equal(ret, 0);
	assert_int_equal(idx, 4);
	ur_hasher_free(ref);
	ur_engine_free(e);
	ur_source_close(src);
	unlink(path);
	rmdir(dir);
	free(content);
}

/* The same random file through every block size and a tiny window: the
 * hashes must match a plain read, whatever the chunking; with io_uring
 * and with the pread() fallback.  Every block says where in the file it
 * lies (read through the page cache), and it lies there. */
static void reader_block_sizes(bool no_uring)
{
	char dir[] = "/tmp/test_reader2.XXXXXX";
	const size_t size = (3 << 20) + 4608; /* not a multiple of 4 KiB */
	uint8_t *content = malloc(size);
	uint8_t *again = malloc(4u << 20);
	char path[256], err[256];
	uint64_t located;
	uint32_t bs;
	int fd;

	assert_non_null(content);
	assert_non_null(again);
	fill_random(content, size, 11);
	memset(content + (1 << 20), 0, 300000); /* zeros that are data */
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/f", dir);
	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, size), (ssize_t)size);
	close(fd);

	for (bs = 4096; bs <= (4u << 20); bs *= 4) {
		struct ur_config cfg = { .block_size = bs,
					 .hash = UR_HASH_SHA256,
					 .queue_depth = 3,
					 .threads = 2,
					 .window = 1,
					 .no_uring = no_uring };
		struct ur_source *src;
		struct ur_engine *e;
		struct ur_stream *st;
		struct ur_hasher *ref;
		struct ur_block b;
		uint64_t idx = 0;
		int ret;

		assert_int_equal(ur_source_open(path, &src, err, sizeof(err)),
				 0);
		assert_int_equal(ur_engine_new(&cfg, &e, err, sizeof(err)), 0);
		assert_int_equal(ur_engine_add(e, src, &st), 0);
		assert_int_equal(ur_engine_start(e), 0);
		assert_int_equal(ur_hasher_new(UR_HASH_SHA256, 0, &ref), 0);
		located = 0;
		while ((ret = ur_stream_peek(st, &b)) > 0) {
			struct ur_hash want;
			uint32_t len = ur_block_len(size, bs, idx);

			assert_int_equal(b.index, idx);
			assert_int_equal(b.len, len);
			ur_hasher_hash(ref, content + idx * bs, len, &want);
			assert_true(ur_hash_equal(&b.hash, &want));
			ur_stream_release(st, 1);
			/* where it says the block lies, the block lies, and
			 * it can be read there after the release */
			if (b.fd >= 0) {
				assert_int_equal(pread(b.fd, again, len,
						       (off_t)b.file_off),
						 (ssize_t)len);
				assert_memory_equal(again, content + idx * bs,
						    len);
				located++;
			}
			idx++;
		}
		assert_int_equal(ret, 0);
		assert_int_equal(idx, ur_block_count(size, bs));
		/* a plain file, read through the page cache: every block */
		assert_int_equal(located, idx);
		assert_int_equal(ur_engine_uses_io_uring(e), !no_uring);
		ur_hasher_free(ref);
		ur_engine_free(e);
		ur_source_close(src);
	}
	unlink(path);
	rmdir(dir);
	free(again);
	free(content);
}

static void test_reader_block_sizes(void **state)
{
	(void)state;
	reader_block_sizes(false);
}

static void test_reader_pread_fallback(void **state)
{
	(void)state;
	reader_block_sizes(true);
}

static void test_engine_rejects_bad_config(void **state)
{
	struct ur_config cfg = { .block_size = 3000 };
	struct ur_engine *e;
	char err[256];

	(void)state;
	assert_int_equal(ur_engine_new(&cfg, &e, err, sizeof(err)), -EINVAL);
	assert_null(e);
	assert_non_null(strstr(err, "power of two"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_block_arithmetic),
		cmocka_unit_test(test_acc_merges_adjacent),
		cmocka_unit_test(test_ranges_merge_random),
		cmocka_unit_test(test_zero_blocks),
		cmocka_unit_test(test_plan_block_merges_reads),
		cmocka_unit_test(test_cursor_rejects_bad_map),
		cmocka_unit_test(test_sha256_vector),
		cmocka_unit_test(test_hash_names),
		cmocka_unit_test(test_seed_keys_xxh3),
		cmocka_unit_test(test_zero_hash_matches_real_zeros),
		cmocka_unit_test(test_reader_zero_shortcut),
		cmocka_unit_test(test_reader_block_sizes),
		cmocka_unit_test(test_reader_sub_hashes_unlocated),
		cmocka_unit_test(test_reader_pread_fallback),
		cmocka_unit_test(test_engine_rejects_bad_config),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
