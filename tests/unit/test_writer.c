/* SPDX-License-Identifier: MIT */
/*
 * test_writer.c - unit tests of the VHDX writer (write.c) on real files in
 * a scratch directory: where new blocks go, that BAT and sector-bitmap
 * changes reach the file only through the log and then say exactly what
 * the in-memory state says, whole-block zeroing, read-modify-write of
 * partial sectors, and the log entry builder against the log reader
 * (vhdx_log_entry_check, vhdx_log_find_active, vhdx_log_replay).  BAT
 * entries, sector bitmaps, file sizes and the built entries' layout are
 * read back with pread/stat and decoded here from the spec's byte layout,
 * not through the library's own parsers.
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "vhdx/internal.h"
#include "tests/unit/oracle.h"

#define MB (1024ull * 1024)

struct env {
	char dir[64];
	char path[128];
	char child[128];
};

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));

	if (!e)
		return -1;
	strcpy(e->dir, "/tmp/test_writer.XXXXXX");
	if (!mkdtemp(e->dir)) {
		free(e);
		return -1;
	}
	snprintf(e->path, sizeof(e->path), "%s/img.vhdx", e->dir);
	snprintf(e->child, sizeof(e->child), "%s/child.vhdx", e->dir);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	unlink(e->child);
	unlink(e->path);
	rmdir(e->dir);
	free(e);
	return 0;
}

static void read_file(const char *path, void *buf, size_t len, uint64_t off)
{
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static uint64_t file_size(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_size;
}

static uint64_t disk_bat_entry(const char *path, const struct vhdx_image *img,
			       uint64_t idx)
{
	uint8_t b[8];

	read_file(path, b, 8, img->info.bat_offset + idx * 8);
	return get64(b);
}

static void create(const char *path, uint64_t size, uint32_t bs, uint32_t lss,
		   bool fixed, const char *parent)
{
	struct vhdx_create_opts o = {
		.virtual_size = size,
		.block_size = bs,
		.logical_sector_size = lss,
		.fixed = fixed,
		.parent = parent,
	};
	struct vhdx_error err;
	int ret = vhdx_create(path, &o, &err);

	if (ret)
		fprintf(stderr, "vhdx_create: %s\n", err.msg);
	assert_int_equal(ret, 0);
}

static struct vhdx_image *open_img(const char *path, unsigned flags)
{
	struct vhdx_image *img = NULL;
	struct vhdx_error err;
	int ret = vhdx_open(path, flags, &img, &err);

	if (ret)
		fprintf(stderr, "vhdx_open: %s\n", err.msg);
	assert_int_equal(ret, 0);
	return img;
}

static void write_byte(struct vhdx_image *img, uint64_t off, size_t len, int c)
{
	uint8_t *buf = malloc(len);

	assert_non_null(buf);
	memset(buf, c, len);
	assert_int_equal(vhdx_pwrite(img, buf, len, off), 0);
	free(buf);
}

/* Every byte of LEN at virtual OFF reads as C. */
static void expect_bytes(struct vhdx_image *img, uint64_t off, size_t len,
			 int c)
{
	uint8_t *buf = malloc(len);
	size_t i;

	assert_non_null(buf);
	assert_int_equal(vhdx_pread(img, buf, len, off), (ssize_t)len);
	for (i = 0; i < len; i++)
		if (buf[i] != (uint8_t)c)
			fail_msg("byte %llu reads 0x%02x, want 0x%02x",
				 (unsigned long long)(off + i), buf[i], c);
	free(buf);
}

/* --- allocation ---------------------------------------------------------- */

static void test_alloc_aligned_at_eof(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	uint64_t s0, e5, e2, want;
	uint8_t buf[4096];

	create(e->path, 64 * MB, 1 * MB, 512, false, NULL);
	s0 = file_size(e->path);
	img = open_img(e->path, VHDX_OPEN_RDWR);

	write_byte(img, 5 * MB + 512, 4096, 0xa5);
	e5 = img->bat[vhdx_bat_payload_index(5, img->info.chunk_ratio)];
	want = (s0 + MB - 1) / MB * MB;
	assert_int_equal(vhdx_bat_state(e5), VHDX_PAYLOAD_FULLY_PRESENT);
	assert_int_equal(vhdx_bat_file_offset(e5), want);
	assert_int_equal(file_size(e->path), want + MB);

	/* the next one goes right after it, not into a hole */
	write_byte(img, 2 * MB, 512, 0xa2);
	e2 = img->bat[vhdx_bat_payload_index(2, img->info.chunk_ratio)];
	assert_int_equal(vhdx_bat_file_offset(e2), want + MB);
	assert_int_equal(file_size(e->path), want + 2 * MB);

	/* a second write into an allocated block allocates nothing */
	write_byte(img, 5 * MB + 8192, 512, 0xa6);
	assert_int_equal(
		img->bat[vhdx_bat_payload_index(5, img->info.chunk_ratio)], e5);
	assert_int_equal(file_size(e->path), want + 2 * MB);
	assert_int_equal(vhdx_close_checked(img), 0);

	/* the data sits at the block's offset plus the in-block offset,
	 * zeros around it */
	read_file(e->path, buf, sizeof(buf), want + 512);
	assert_int_equal(buf[0], 0xa5);
	assert_int_equal(buf[4095], 0xa5);
	read_file(e->path, buf, 512, want);
	assert_int_equal(buf[0], 0);
	assert_int_equal(buf[511], 0);
	read_file(e->path, buf, 512, want + 8192);
	assert_int_equal(buf[0], 0xa6);
}

static void test_fixed_never_allocates(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	uint64_t s0, before[4];
	unsigned j;

	create(e->path, 4 * MB, 1 * MB, 512, true, NULL);
	s0 = file_size(e->path);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	for (j = 0; j < 4; j++)
		before[j] = img->bat[vhdx_bat_payload_index(
			j, img->info.chunk_ratio)];
	write_byte(img, 1 * MB - 512, 1024, 0x11);
	assert_int_equal(vhdx_write_zeroes(img, 2 * MB, 1 * MB), 0);
	for (j = 0; j < 4; j++)
		assert_int_equal(img->bat[vhdx_bat_payload_index(
					 j, img->info.chunk_ratio)],
				 before[j]);
	assert_int_equal(vhdx_close_checked(img), 0);
	assert_int_equal(file_size(e->path), s0);
}

/* --- space: what failed attempts leave, what a merge needs ---------------
 */

/* A writer that dies without committing: it appends NBLOCKS 1 MiB blocks
 * of 0x55 at the first virtual blocks and never flushes, so the file has
 * grown but its BAT references none of it. */
static void failed_attempt(const char *path, unsigned nblocks)
{
	pid_t pid = fork();
	int status;

	assert_true(pid >= 0);
	if (pid == 0) {
		struct vhdx_image *img = NULL;
		struct vhdx_error err;
		uint8_t *buf = malloc(MB);
		unsigned j;

		if (!buf || vhdx_open(path, VHDX_OPEN_RDWR, &img, &err))
			_exit(1);
		memset(buf, 0x55, MB);
		for (j = 0; j < nblocks; j++)
			if (vhdx_pwrite(img, buf, MB, (uint64_t)j * MB))
				_exit(1);
		_exit(0); /* no flush, no close: a crash */
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_failed_attempt_space_reused(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	uint64_t s0, e7, idx7;

	create(e->path, 64 * MB, 1 * MB, 512, false, NULL);
	s0 = file_size(e->path);
	failed_attempt(e->path, 3);
	/* the leak this is about: the file grew, nothing references it */
	assert_int_equal(file_size(e->path), s0 + 3 * MB);

	img = open_img(e->path, VHDX_OPEN_RDWR);
	for (idx7 = 0; idx7 < 3; idx7++)
		assert_int_equal(vhdx_bat_state(img->bat[vhdx_bat_payload_index(
					 idx7, img->info.chunk_ratio)]),
				 VHDX_PAYLOAD_NOT_PRESENT);
	idx7 = vhdx_bat_payload_index(7, img->info.chunk_ratio);
	write_byte(img, 7 * MB + 4096, 512, 0xa7);
	e7 = img->bat[idx7];
	/* the new block takes the dead attempt's place, and the rest of
	 * that tail is given back */
	assert_int_equal(vhdx_bat_file_offset(e7), s0);
	assert_int_equal(file_size(e->path), s0 + MB);
	/* what the dead attempt wrote there does not show through */
	expect_bytes(img, 7 * MB, 4096, 0);
	expect_bytes(img, 7 * MB + 4096, 512, 0xa7);
	expect_bytes(img, 7 * MB + 4608, MB - 4608, 0);
	expect_bytes(img, 0, 3 * MB, 0);
	assert_int_equal(vhdx_close_checked(img), 0);
	assert_int_equal(file_size(e->path), s0 + MB);
	assert_int_equal(
		disk_bat_entry(e->path, img = open_img(e->path, 0), idx7), e7);
	expect_bytes(img, 7 * MB, 4096, 0);
	expect_bytes(img, 7 * MB + 4096, 512, 0xa7);
	vhdx_close(img);

	/* three failed attempts in a row do not add up */
	failed_attempt(e->path, 4);
	failed_attempt(e->path, 4);
	failed_attempt(e->path, 4);
	assert_int_equal(file_size(e->path), s0 + 5 * MB);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	write_byte(img, 9 * MB, 512, 0xa9);
	assert_int_equal(vhdx_close_checked(img), 0);
	assert_int_equal(file_size(e->path), s0 + 2 * MB);
}

/* An open that writes nothing leaves the file as it found it, tail and
 * all; a close after writing cuts what the BAT stopped referencing. */
static void test_tail_trimmed_only_after_writing(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	uint64_t s0;

	create(e->path, 64 * MB, 1 * MB, 512, false, NULL);
	s0 = file_size(e->path);
	failed_attempt(e->path, 2);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	assert_int_equal(vhdx_flush(img), 0);
	assert_int_equal(vhdx_close_checked(img), 0);
	assert_int_equal(file_size(e->path), s0 + 2 * MB);

	img = open_img(e->path, VHDX_OPEN_RDWR);
	write_byte(img, 1 * MB, 4096, 0x11); /* at s0 */
	write_byte(img, 2 * MB, 4096, 0x22); /* at s0 + 1 MiB */
	assert_int_equal(vhdx_flush(img), 0);
	/* the last block becomes ZERO: its space is nobody's any more */
	assert_int_equal(vhdx_write_zeroes(img, 2 * MB, MB), 0);
	assert_int_equal(vhdx_close_checked(img), 0);
	assert_int_equal(file_size(e->path), s0 + MB);
	img = open_img(e->path, 0);
	expect_bytes(img, 1 * MB, 4096, 0x11);
	expect_bytes(img, 2 * MB, MB, 0);
	vhdx_close(img);
}

static uint64_t merge_need(const char *child, const char *parent)
{
	struct vhdx_image *c = open_img(child, VHDX_OPEN_NO_PARENT);
	struct vhdx_image *p = open_img(parent, 0);
	struct vhdx_space sp;

	assert_int_equal(vhdx_merge_space(c, p, &sp), 0);
	assert_true(sp.known);
	assert_true(sp.free > 0);
	vhdx_close(c);
	vhdx_close(p);
	return sp.need;
}

/* What a merge needs: the bytes it writes where the parent has no space
 * yet (new blocks are sparse), not whole blocks; nothing to speak of when
 * it overwrites allocated blocks in place. */
static void test_merge_space(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	struct vhdx_error err;
	uint64_t need;

	create(e->path, 256 * MB, 32 * MB, 512, false, NULL);
	create(e->child, 0, 2 * MB, 0, false, e->path);
	img = open_img(e->child, VHDX_OPEN_RDWR);
	write_byte(img, 40 * MB, 6 * MB, 0x61);	 /* one parent block */
	write_byte(img, 100 * MB, 2 * MB, 0x62); /* another */
	write_byte(img, 200 * MB + 512, 4096, 0x63);
	assert_int_equal(vhdx_close_checked(img), 0);
	need = merge_need(e->child, e->path);
	/* 8 MiB and a sector of data, the parent's 1 MiB log, overhead */
	assert_true(need >= 8 * MB + 4096);
	assert_true(need < 8 * MB + 4 * MB);
	assert_int_equal(vhdx_merge(e->child, 0, NULL, NULL, &err), 0);

	/* the same ranges again: already allocated in the parent */
	create(e->child, 0, 2 * MB, 0, false, e->path);
	img = open_img(e->child, VHDX_OPEN_RDWR);
	write_byte(img, 40 * MB, 6 * MB, 0x71);
	write_byte(img, 100 * MB, 2 * MB, 0x72);
	assert_int_equal(vhdx_close_checked(img), 0);
	need = merge_need(e->child, e->path);
	assert_true(need < 2 * MB);
	/* and a hole inside an allocated parent block takes space */
	write_byte(img = open_img(e->child, VHDX_OPEN_RDWR), 50 * MB, 4 * MB,
		   0x73);
	assert_int_equal(vhdx_close_checked(img), 0);
	assert_true(merge_need(e->child, e->path) >= need + 4 * MB);
}

/* --- BAT through the log ---------------------------------------------------
 */

struct captured {
	unsigned n;
	uint64_t off[64];
	uint8_t data[64][4096];
};

static int capture(void *ctx, uint64_t file_off, const uint8_t *data,
		   uint64_t len)
{
	struct captured *c = ctx;

	if (!data || len != 4096 || c->n == 64)
		return -EINVAL;
	c->off[c->n] = file_off;
	memcpy(c->data[c->n], data, 4096);
	c->n++;
	return 0;
}

static void test_bat_committed_through_log(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	struct vhdx_header_info h1, h2, *cur;
	struct vhdx_log_seq seq;
	struct captured *cap;
	uint8_t hdr[4096], sec[4096], *log;
	uint64_t idx, entry, sector_off;
	uint32_t log_len;
	unsigned i;
	bool found = false;

	create(e->path, 16 * MB, 1 * MB, 512, false, NULL);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	idx = vhdx_bat_payload_index(3, img->info.chunk_ratio);
	write_byte(img, 3 * MB + 4096, 4096, 0x33);
	entry = img->bat[idx];
	assert_int_equal(vhdx_bat_state(entry), VHDX_PAYLOAD_FULLY_PRESENT);
	/* before the flush the file's BAT still says "not present" */
	assert_int_equal(disk_bat_entry(e->path, img, idx), 0);

	assert_int_equal(vhdx_flush(img), 0);
	assert_int_equal(disk_bat_entry(e->path, img, idx), entry);

	/* while open, the current header names the log, and the log's
	 * active sequence rewrites the BAT sector with what is on disk */
	read_file(e->path, hdr, 4096, 64 * 1024);
	assert_int_equal(vhdx_header_parse(hdr, &h1), 0);
	read_file(e->path, hdr, 4096, 128 * 1024);
	assert_int_equal(vhdx_header_parse(hdr, &h2), 0);
	cur = h1.sequence > h2.sequence ? &h1 : &h2;
	assert_false(vhdx_guid_is_zero(&cur->log_guid));
	log_len = cur->log_length;
	log = malloc(log_len);
	cap = calloc(1, sizeof(*cap));
	assert_non_null(log);
	assert_non_null(cap);
	read_file(e->path, log, log_len, cur->log_offset);
	assert_int_equal(
		vhdx_log_find_active(log, log_len, &cur->log_guid, &seq), 0);
	assert_int_equal(vhdx_log_replay(log, log_len, &seq, capture, cap), 0);
	sector_off = (img->info.bat_offset + idx * 8) / 4096 * 4096;
	for (i = 0; i < cap->n; i++) {
		if (cap->off[i] != sector_off)
			continue;
		read_file(e->path, sec, 4096, sector_off);
		assert_memory_equal(cap->data[i], sec, 4096);
		assert_int_equal(get64(cap->data[i] +
				       (img->info.bat_offset + idx * 8) % 4096),
				 entry);
		found = true;
	}
	assert_true(found);

	/* a clean close leaves the current header without a LogGuid */
	assert_int_equal(vhdx_close_checked(img), 0);
	read_file(e->path, hdr, 4096, 64 * 1024);
	assert_int_equal(vhdx_header_parse(hdr, &h1), 0);
	read_file(e->path, hdr, 4096, 128 * 1024);
	assert_int_equal(vhdx_header_parse(hdr, &h2), 0);
	cur = h1.sequence > h2.sequence ? &h1 : &h2;
	assert_true(vhdx_guid_is_zero(&cur->log_guid));
	free(log);
	free(cap);
}

/* Many commits wrap the 1 MiB log; the active sequence is still the last
 * commit and matches the BAT on disk. */
static void test_log_wraps(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	struct vhdx_log_seq seq;
	struct captured *cap;
	uint8_t *log, sec[4096];
	uint32_t log_len;
	uint64_t log_off, j, first_seq = 0;
	unsigned i;

	create(e->path, 400 * MB, 1 * MB, 512, false, NULL);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	log_len = img->info.header[img->info.current_header].log_length;
	log_off = img->info.header[img->info.current_header].log_offset;
	for (j = 0; j < 300; j++) {
		write_byte(img, j * MB, 512, (int)(j % 250) + 1);
		assert_int_equal(vhdx_flush(img), 0);
		if (j == 0)
			first_seq = img->log_seq - 1;
	}
	log = malloc(log_len);
	cap = calloc(1, sizeof(*cap));
	assert_non_null(log);
	assert_non_null(cap);
	read_file(e->path, log, log_len, log_off);
	assert_int_equal(
		vhdx_log_find_active(log, log_len, &img->log_guid, &seq), 0);
	/* 300 commits of at least 8 KiB cannot fit in 1 MiB: it wrapped,
	 * and the head is the last commit */
	assert_true(300ull * 8192 > log_len);
	assert_int_equal(seq.head_sequence, first_seq + 299);
	assert_int_equal(vhdx_log_replay(log, log_len, &seq, capture, cap), 0);
	assert_true(cap->n > 0);
	for (i = 0; i < cap->n; i++) {
		read_file(e->path, sec, 4096, cap->off[i]);
		assert_memory_equal(cap->data[i], sec, 4096);
	}
	assert_int_equal(vhdx_close_checked(img), 0);

	img = open_img(e->path, 0);
	for (j = 0; j < 300; j += 37)
		expect_bytes(img, j * MB, 512, (int)(j % 250) + 1);
	expect_bytes(img, 299 * MB, 512, 299 % 250 + 1);
	expect_bytes(img, 300 * MB, 512, 0);
	vhdx_close(img);
	free(log);
	free(cap);
}

/* One vhdx_write_zeroes that changes BAT entries in 260 different 4 KiB
 * BAT sectors: more than one log entry can hold in a 1 MiB log, so the
 * commit is split, and every sector still reaches the file. */
static void test_commit_spans_entries(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	uint64_t j, idx, n = 260, span = 512; /* blocks per BAT sector */

	create(e->path, n * span * MB, 1 * MB, 512, false, NULL);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	for (j = 0; j < n; j++)
		write_byte(img, j * span * MB, 512, 0x60);
	assert_int_equal(vhdx_flush(img), 0);
	for (j = 0; j < n; j++) {
		idx = vhdx_bat_payload_index(j * span, img->info.chunk_ratio);
		assert_int_equal(disk_bat_entry(e->path, img, idx) & 7,
				 VHDX_PAYLOAD_FULLY_PRESENT);
	}
	assert_int_equal(vhdx_write_zeroes(img, 0, n * span * MB), 0);
	assert_int_equal(vhdx_flush(img), 0);
	for (j = 0; j < n; j++) {
		idx = vhdx_bat_payload_index(j * span, img->info.chunk_ratio);
		assert_int_equal(img->bat[idx] & 7, VHDX_PAYLOAD_ZERO);
		assert_int_equal(disk_bat_entry(e->path, img, idx),
				 img->bat[idx]);
	}
	assert_int_equal(vhdx_close_checked(img), 0);
	img = open_img(e->path, 0);
	expect_bytes(img, 0, 512, 0);
	expect_bytes(img, (n - 1) * span * MB, 512, 0);
	vhdx_close(img);
}

/* --- sector bitmaps ---------------------------------------------------------
 */

static bool bit_set(const uint8_t *bm, uint64_t i)
{
	return bm[i / 8] >> (i % 8) & 1;
}

static void test_sector_bitmap_bits(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img, *chk;
	uint64_t sb, sb_off, want[] = { 3, 4, 5, 100, 2049, 4095, 4096 }, i, k;
	uint8_t *bm;
	struct vhdx_extent ext;
	bool expect;

	create(e->path, 8 * MB, 1 * MB, 512, false, NULL);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	write_byte(img, 0, 8 * MB, 0x77);
	assert_int_equal(vhdx_close_checked(img), 0);
	create(e->child, 0, 1 * MB, 0, false, e->path);

	img = open_img(e->child, VHDX_OPEN_RDWR);
	write_byte(img, 3 * 512, 3 * 512, 0xc1); /* sectors 3-5 */
	write_byte(img, 100 * 512, 512, 0xc2);	 /* sector 100 */
	write_byte(img, 1 * MB + 700, 10, 0xc3); /* inside sector 2049 */
	write_byte(img, 2 * MB - 512, 1024,
		   0xc4);		       /* 4095 and 4096: two blocks */
	write_byte(img, 3 * MB, 1 * MB, 0xc5); /* whole block 3 */
	assert_int_equal(vhdx_flush(img), 0);

	sb = img->bat[vhdx_bat_bitmap_index(0, img->info.chunk_ratio)];
	assert_int_equal(vhdx_bat_state(sb), VHDX_SB_STATE_PRESENT);
	sb_off = vhdx_bat_file_offset(sb);
	assert_int_equal(sb_off % MB, 0);
	assert_int_equal(
		disk_bat_entry(e->child, img,
			       vhdx_bat_bitmap_index(0, img->info.chunk_ratio)),
		sb);
	for (k = 0; k < 4; k++) {
		uint64_t pe = img->bat[vhdx_bat_payload_index(
			k, img->info.chunk_ratio)];

		assert_int_equal(
			disk_bat_entry(e->child, img,
				       vhdx_bat_payload_index(
					       k, img->info.chunk_ratio)),
			pe);
		assert_int_equal(vhdx_bat_state(pe),
				 k == 3 ? VHDX_PAYLOAD_FULLY_PRESENT
					: VHDX_PAYLOAD_PARTIALLY_PRESENT);
	}

	bm = malloc(MB);
	assert_non_null(bm);
	read_file(e->child, bm, MB, sb_off);
	for (i = 0; i < 16 * 2048; i++) {
		expect = false;
		for (k = 0; k < sizeof(want) / sizeof(want[0]); k++)
			expect |= want[k] == i;
		if (bit_set(bm, i) != expect)
			fail_msg("bitmap bit %llu is %d, want %d",
				 (unsigned long long)i, bit_set(bm, i), expect);
	}
	/* block 3 was written whole: FULLY_PRESENT needs no bits */
	for (i = 16 * 2048 / 8; i < MB; i++)
		if (bm[i])
			fail_msg(
				"bitmap byte %llu is 0x%02x past the written sectors",
				(unsigned long long)i, bm[i]);
	assert_int_equal(vhdx_close_checked(img), 0);
	free(bm);

	/* reading back: the written sectors from the child, the parent's
	 * bytes everywhere else (partial sector 2049 keeps the parent's
	 * bytes around the 10 written ones) */
	chk = open_img(e->child, 0);
	expect_bytes(chk, 0, 3 * 512, 0x77);
	expect_bytes(chk, 3 * 512, 3 * 512, 0xc1);
	expect_bytes(chk, 6 * 512, 94 * 512, 0x77);
	expect_bytes(chk, 100 * 512, 512, 0xc2);
	expect_bytes(chk, 1 * MB, 700, 0x77);
	expect_bytes(chk, 1 * MB + 700, 10, 0xc3);
	expect_bytes(chk, 1 * MB + 710, MB - 710 - 512, 0x77);
	expect_bytes(chk, 2 * MB - 512, 1024, 0xc4);
	expect_bytes(chk, 3 * MB, 1 * MB, 0xc5);
	expect_bytes(chk, 4 * MB, 4 * MB, 0x77);
	assert_int_equal(
		vhdx_map(chk, 100 * 512, MB, VHDX_MAP_NO_RESOLVE, &ext), 0);
	assert_int_equal(ext.kind, VHDX_EXT_DATA);
	assert_int_equal(ext.len, 512);
	assert_int_equal(
		vhdx_map(chk, 101 * 512, MB, VHDX_MAP_NO_RESOLVE, &ext), 0);
	assert_int_equal(ext.kind, VHDX_EXT_PARENT);
	vhdx_close(chk);
}

/* The map splits a partially present block at every change of its
 * bitmap, whole words of equal bits skipped at once: runs that start,
 * end or span 64-sector words (and a block's end) come out exact. */
static void test_map_runs_across_bitmap_words(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	/* [first, last) sectors written in the child's block 0 (2048 sectors
	 * of 512 bytes): inside a word, ending at a word's end, starting at
	 * one, spanning several words, single sectors at 63/64, adjacent
	 * runs (one extent), and up to the block's last sector */
	static const uint64_t runs[][2] = {
		{ 1, 2 },	{ 10, 64 },	{ 64, 65 },   { 127, 128 },
		{ 128, 130 },	{ 191, 700 },	{ 703, 704 }, { 767, 768 },
		{ 1024, 1088 }, { 2000, 2048 },
	};
	struct vhdx_extent ext;
	bool present[2048] = { false };
	uint64_t off = 0, s;
	unsigned k;

	create(e->path, 2 * MB, 1 * MB, 512, false, NULL);
	create(e->child, 0, 1 * MB, 0, false, e->path);
	img = open_img(e->child, VHDX_OPEN_RDWR);
	for (k = 0; k < sizeof(runs) / sizeof(runs[0]); k++)
		write_byte(img, runs[k][0] * 512,
			   (runs[k][1] - runs[k][0]) * 512, 0xd0 + k);
	assert_int_equal(vhdx_close_checked(img), 0);

	for (k = 0; k < sizeof(runs) / sizeof(runs[0]); k++)
		for (s = runs[k][0]; s < runs[k][1]; s++)
			present[s] = true;
	/* each extent: one kind, all of its sectors of that kind, and the
	 * sector after it (in the block) of the other */
	img = open_img(e->child, 0);
	while (off < 1 * MB) {
		uint64_t first = off / 512, end;

		assert_int_equal(vhdx_map(img, off, 1 * MB - off,
					  VHDX_MAP_NO_RESOLVE, &ext),
				 0);
		assert_int_equal(ext.off, off);
		assert_int_equal(ext.len % 512, 0);
		assert_int_equal(ext.kind, present[first] ? VHDX_EXT_DATA
							  : VHDX_EXT_PARENT);
		end = first + ext.len / 512;
		assert_true(end <= 2048);
		for (s = first; s < end; s++)
			if (present[s] != present[first])
				fail_msg("extent at sector %llu runs past "
					 "sector %llu",
					 (unsigned long long)first,
					 (unsigned long long)s);
		if (end < 2048 && present[end] == present[first])
			fail_msg("extent at sector %llu ends early, at %llu",
				 (unsigned long long)first,
				 (unsigned long long)end);
		off += ext.len;
	}
	vhdx_close(img);
}

/* --- zero blocks
 * -------------------------------------------------------------- */

static void test_whole_block_zero(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	uint64_t size, idx3, idx4;
	uint8_t *zeros = calloc(1, MB);

	assert_non_null(zeros);
	create(e->path, 8 * MB, 1 * MB, 512, false, NULL);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	write_byte(img, 2 * MB, 4 * MB, 0x5a);
	assert_int_equal(vhdx_flush(img), 0);
	size = file_size(e->path);
	idx3 = vhdx_bat_payload_index(3, img->info.chunk_ratio);
	idx4 = vhdx_bat_payload_index(4, img->info.chunk_ratio);

	assert_int_equal(vhdx_write_zeroes(img, 3 * MB, 1 * MB), 0);
	assert_int_equal(vhdx_pwrite(img, zeros, MB, 4 * MB), 0);
	assert_int_equal(vhdx_write_zeroes(img, 5 * MB + 512, 512), 0);
	assert_int_equal(vhdx_bat_state(img->bat[idx3]), VHDX_PAYLOAD_ZERO);
	assert_int_equal(vhdx_bat_state(img->bat[idx4]), VHDX_PAYLOAD_ZERO);
	assert_int_equal(vhdx_bat_state(img->bat[vhdx_bat_payload_index(
				 5, img->info.chunk_ratio)]),
			 VHDX_PAYLOAD_FULLY_PRESENT);
	assert_int_equal(vhdx_flush(img), 0);
	assert_int_equal(disk_bat_entry(e->path, img, idx3) & 7,
			 VHDX_PAYLOAD_ZERO);
	assert_int_equal(file_size(e->path), size);
	expect_bytes(img, 2 * MB, MB, 0x5a);
	expect_bytes(img, 3 * MB, 2 * MB, 0);
	expect_bytes(img, 5 * MB, 512, 0x5a);
	expect_bytes(img, 5 * MB + 512, 512, 0);
	expect_bytes(img, 5 * MB + 1024, MB - 1024, 0x5a);

	/* writing into a ZERO block allocates a new one, zeros around */
	write_byte(img, 3 * MB + 4096, 512, 0x31);
	assert_int_equal(vhdx_bat_state(img->bat[idx3]),
			 VHDX_PAYLOAD_FULLY_PRESENT);
	assert_int_equal(file_size(e->path), size + MB);
	expect_bytes(img, 3 * MB, 4096, 0);
	expect_bytes(img, 3 * MB + 4096, 512, 0x31);
	expect_bytes(img, 3 * MB + 4608, MB - 4608, 0);
	assert_int_equal(vhdx_close_checked(img), 0);
	free(zeros);
}

/* --- partial sectors and errors
 * ------------------------------------------------ */

static void test_partial_sector_4k(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;

	create(e->path, 4 * MB, 1 * MB, 4096, false, NULL);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	write_byte(img, 4096, 8192, 0x44);
	write_byte(img, 5000, 100, 0x45);      /* inside a written sector */
	write_byte(img, 2 * MB + 10, 3, 0x46); /* inside an empty block */
	expect_bytes(img, 4096, 5000 - 4096, 0x44);
	expect_bytes(img, 5000, 100, 0x45);
	expect_bytes(img, 5100, 3 * 4096 - 5100, 0x44);
	expect_bytes(img, 2 * MB, 10, 0);
	expect_bytes(img, 2 * MB + 10, 3, 0x46);
	expect_bytes(img, 2 * MB + 13, 4096 - 13, 0);
	assert_int_equal(vhdx_close_checked(img), 0);
}

static void test_write_errors(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;
	uint8_t buf[512] = { 1 };

	create(e->path, 4 * MB, 1 * MB, 512, false, NULL);
	img = open_img(e->path, 0);
	assert_int_equal(vhdx_pwrite(img, buf, 512, 0), -EBADF);
	vhdx_close(img);

	img = open_img(e->path, VHDX_OPEN_RDWR);
	assert_int_equal(vhdx_pwrite(img, buf, 512, 4 * MB), -ENOSPC);
	assert_int_equal(vhdx_pwrite(img, buf, 512, 4 * MB - 256), -ENOSPC);
	assert_int_equal(vhdx_write_zeroes(img, 4 * MB - 512, 1024), -ENOSPC);
	assert_int_equal(vhdx_pwrite(img, NULL, 512, 0), -EINVAL);
	/* a refused write leaves the image writable */
	assert_int_equal(vhdx_pwrite(img, buf, 512, 4 * MB - 512), 0);
	assert_int_equal(vhdx_close_checked(img), 0);
	img = open_img(e->path, 0);
	expect_bytes(img, 4 * MB - 512, 1, 1);
	vhdx_close(img);
}

/* --- log entries -------------------------------------------------------------
 */

#define LOG_LEN (64 * 1024)

static const struct vhdx_guid guid_a = {
	0x01234567, 0x89ab, 0xcdef, { 1, 2, 3, 4, 5, 6, 7, 8 }
};
static const struct vhdx_guid guid_b = {
	0x01234567, 0x89ab, 0xcdef, { 1, 2, 3, 4, 5, 6, 7, 9 }
};

static void fill(uint8_t *p, size_t len, unsigned seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		p[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 8));
}

/* Build an entry and copy it into the circular LOG at OFF. */
static uint32_t put_entry(uint8_t *log, uint32_t off, uint64_t seqno,
			  uint32_t tail, const struct vhdx_guid *g, unsigned n,
			  const uint64_t *offs, uint8_t (*data)[4096])
{
	const uint8_t *ptrs[160];
	uint8_t *buf = malloc(vhdx_log_entry_size(n));
	uint32_t len, i;

	assert_non_null(buf);
	assert_true(n <= 160);
	for (i = 0; i < n; i++)
		ptrs[i] = data[i];
	len = vhdx_log_entry_build(buf, seqno, tail, g, 5 * MB, 6 * MB, n, offs,
				   ptrs);
	assert_int_equal(len, vhdx_log_entry_size(n));
	for (i = 0; i < len; i++)
		log[(off + i) % LOG_LEN] = buf[i];
	free(buf);
	return len;
}

static void test_log_entry_layout(void **state)
{
	uint8_t(*data)[4096] = calloc(3, 4096);
	uint8_t *log = calloc(1, LOG_LEN), *p;
	uint64_t offs[3] = { 3 * MB, 3 * MB + 4096, 7 * MB };
	uint32_t len, crc;
	unsigned i;

	(void)state;
	assert_non_null(data);
	assert_non_null(log);
	for (i = 0; i < 3; i++)
		fill(data[i], 4096, i + 1);
	len = put_entry(log, 0, 0x100000002ull, 0, &guid_a, 3, offs, data);
	assert_int_equal(len,
			 4 * 4096); /* one header sector + 3 data sectors */

	/* MS-VHDX 2.3.1: header, descriptors from byte 64, data sectors */
	assert_memory_equal(log, "loge", 4);
	assert_int_equal(get32(log + 8), len);
	assert_int_equal(get32(log + 12), 0);
	assert_int_equal(get64(log + 16), 0x100000002ull);
	assert_int_equal(get32(log + 24), 3);
	assert_int_equal(get64(log + 48), 5 * MB);
	assert_int_equal(get64(log + 56), 6 * MB);
	crc = get32(log + 4);
	memset(log + 4, 0, 4);
	assert_int_equal(ref_crc32c(log, len), crc);
	for (i = 0; i < 3; i++) {
		p = log + 64 + 32 * i;
		assert_memory_equal(p, "desc", 4);
		assert_memory_equal(p + 4, data[i] + 4092, 4);
		assert_memory_equal(p + 8, data[i], 8);
		assert_int_equal(get64(p + 16), offs[i]);
		assert_int_equal(get64(p + 24), 0x100000002ull);
		p = log + 4096 * (1 + i);
		assert_memory_equal(p, "data", 4);
		assert_int_equal(get32(p + 4), 1);
		assert_memory_equal(p + 8, data[i] + 8, 4084);
		assert_int_equal(get32(p + 4092), 2);
	}
	free(data);
	free(log);
}

static void test_log_round_trip(void **state)
{
	uint8_t(*data)[4096] = calloc(4, 4096);
	uint8_t *log = calloc(1, LOG_LEN);
	struct captured *cap = calloc(1, sizeof(*cap));
	struct vhdx_log_entry_hdr hdr;
	struct vhdx_log_seq seq;
	uint64_t offs1[3] = { 3 * MB, 3 * MB + 4096, 7 * MB };
	uint64_t offs2[1] = { 3 * MB + 4096 };
	uint32_t len1, len2;
	unsigned i;

	(void)state;
	assert_non_null(data);
	assert_non_null(log);
	assert_non_null(cap);
	for (i = 0; i < 4; i++)
		fill(data[i], 4096, i + 10);

	/* an empty log has no active sequence */
	assert_int_equal(vhdx_log_find_active(log, LOG_LEN, &guid_a, &seq),
			 -ENOENT);

	len1 = put_entry(log, 0, 7, 0, &guid_a, 3, offs1, data);
	assert_int_equal(vhdx_log_entry_check(log, LOG_LEN, 0, &guid_a, &hdr),
			 0);
	assert_int_equal(hdr.sequence, 7);
	assert_int_equal(hdr.entry_length, len1);
	assert_int_equal(hdr.descriptor_count, 3);
	assert_int_equal(hdr.tail, 0);
	assert_true(vhdx_guid_equal(&hdr.log_guid, &guid_a));
	assert_int_equal(vhdx_log_entry_check(log, LOG_LEN, 0, &guid_b, &hdr),
			 -EINVAL);
	assert_int_equal(vhdx_log_find_active(log, LOG_LEN, &guid_b, &seq),
			 -ENOENT);

	assert_int_equal(vhdx_log_find_active(log, LOG_LEN, &guid_a, &seq), 0);
	assert_int_equal(seq.count, 1);
	assert_int_equal(seq.head_sequence, 7);
	assert_int_equal(seq.tail_off, 0);
	assert_int_equal(seq.flushed_file_offset, 5 * MB);
	assert_int_equal(seq.last_file_offset, 6 * MB);
	assert_int_equal(vhdx_log_replay(log, LOG_LEN, &seq, capture, cap), 0);
	assert_int_equal(cap->n, 3);
	for (i = 0; i < 3; i++) {
		assert_int_equal(cap->off[i], offs1[i]);
		assert_memory_equal(cap->data[i], data[i], 4096);
	}

	/* a second entry continuing the sequence from the first's tail
	 * rewrites one sector; replay applies both, in order */
	len2 = put_entry(log, len1, 8, 0, &guid_a, 1, offs2, &data[3]);
	assert_int_equal(vhdx_log_find_active(log, LOG_LEN, &guid_a, &seq), 0);
	assert_int_equal(seq.count, 2);
	assert_int_equal(seq.head_sequence, 8);
	assert_int_equal(seq.head_off, len1);
	memset(cap, 0, sizeof(*cap));
	assert_int_equal(vhdx_log_replay(log, LOG_LEN, &seq, capture, cap), 0);
	assert_int_equal(cap->n, 4);
	assert_int_equal(cap->off[3], offs2[0]);
	assert_memory_equal(cap->data[3], data[3], 4096);

	/* a torn second entry (one data byte lost) leaves the first active */
	log[len1 + len2 - 100] ^= 0xff;
	assert_int_equal(
		vhdx_log_entry_check(log, LOG_LEN, len1, &guid_a, &hdr),
		-EINVAL);
	assert_int_equal(vhdx_log_find_active(log, LOG_LEN, &guid_a, &seq), 0);
	assert_int_equal(seq.count, 1);
	assert_int_equal(seq.head_sequence, 7);
	free(data);
	free(log);
	free(cap);
}

/* An entry may wrap around the end of the circular log, and one with more
 * than 126 descriptors needs a second header sector. */
static void test_log_wrap_and_big_entry(void **state)
{
	uint8_t(*data)[4096] = calloc(130, 4096);
	uint8_t *log = calloc(1, LOG_LEN), *big = calloc(1, 4 * MB);
	struct captured *cap = calloc(1, sizeof(*cap));
	struct vhdx_log_seq seq;
	uint64_t offs[130];
	uint32_t off, len;
	unsigned i;

	(void)state;
	assert_non_null(data);
	assert_non_null(log);
	assert_non_null(cap);
	assert_non_null(big);
	for (i = 0; i < 130; i++) {
		fill(data[i], 4096, i + 40);
		offs[i] = 8 * MB + (uint64_t)i * 4096;
	}
	off = LOG_LEN - 8192;
	len = put_entry(log, off, 42, off, &guid_a, 3, offs, data);
	assert_int_equal(len, 4 * 4096);
	assert_int_equal(vhdx_log_find_active(log, LOG_LEN, &guid_a, &seq), 0);
	assert_int_equal(seq.head_sequence, 42);
	assert_int_equal(seq.tail_off, off);
	assert_int_equal(vhdx_log_replay(log, LOG_LEN, &seq, capture, cap), 0);
	assert_int_equal(cap->n, 3);
	for (i = 0; i < 3; i++)
		assert_memory_equal(cap->data[i], data[i], 4096);
	free(log);

	/* 130 descriptors: (130 + 2) / 128 rounds up to 2 header sectors */
	assert_int_equal(vhdx_log_entry_size(130), (2 + 130) * 4096);
	{
		const uint8_t *ptrs[130];
		struct vhdx_log_entry_hdr hdr;

		for (i = 0; i < 130; i++)
			ptrs[i] = data[i];
		len = vhdx_log_entry_build(big, 1, 0, &guid_a, 0, 0, 130, offs,
					   ptrs);
		assert_int_equal(len, (2 + 130) * 4096);
		assert_int_equal(
			vhdx_log_entry_check(big, 4 * MB, 0, &guid_a, &hdr), 0);
		/* descriptor 126 is the first of the second header sector */
		assert_memory_equal(big + 4096, "desc", 4);
		assert_int_equal(get64(big + 4096 + 16), offs[126]);
		assert_memory_equal(big + 2 * 4096, "data", 4);
		assert_int_equal(
			vhdx_log_find_active(big, 4 * MB, &guid_a, &seq), 0);
		assert_int_equal(seq.count, 1);
	}
	free(big);
	free(cap);
	free(data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_alloc_aligned_at_eof,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_fixed_never_allocates,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_failed_attempt_space_reused, setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_tail_trimmed_only_after_writing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_merge_space, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_bat_committed_through_log,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_log_wraps, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_commit_spans_entries,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_map_runs_across_bitmap_words, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sector_bitmap_bits, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_whole_block_zero, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_partial_sector_4k, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_write_errors, setup,
						teardown),
		cmocka_unit_test(test_log_entry_layout),
		cmocka_unit_test(test_log_round_trip),
		cmocka_unit_test(test_log_wrap_and_big_entry),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
