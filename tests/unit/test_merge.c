/* SPDX-License-Identifier: MIT */
/*
 * test_merge.c - unit tests of vhdx_merge() (merge.c) on real files in a
 * scratch directory: a child of scattered sectors, whole blocks, zeroed
 * ranges and runs across the parent's block edges merged into a dynamic
 * parent and into a differencing one; the merged parent must read as a
 * byte model kept here (the parent's writes, then the child's), the child
 * and its marker must be gone, and the parent's BAT on disk must say what
 * a fresh open says.  A wide merge into a differencing parent dirties more
 * BAT and sector-bitmap sectors than one log entry holds, so its commit
 * spans entries.  The log entries the merge wrote are counted from the
 * file's log region (signature "loge"), decoded here: a merge that
 * commits once per sector or per block fails.  A child half out of the
 * page cache takes the copy's other way of reading (from the disk, with
 * read-ahead) for its second half.
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
#include <unistd.h>
#include <cmocka.h>

#include "vhdx/internal.h"
#include "tests/unit/oracle.h"

#define MB (1024ull * 1024)

struct env {
	char dir[64];
	char base[128];
	char mid[128];
	char child[128];
	char marker[160];
};

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));

	if (!e)
		return -1;
	strcpy(e->dir, "/tmp/test_merge.XXXXXX");
	if (!mkdtemp(e->dir)) {
		free(e);
		return -1;
	}
	snprintf(e->base, sizeof(e->base), "%s/base.vhdx", e->dir);
	snprintf(e->mid, sizeof(e->mid), "%s/mid.vhdx", e->dir);
	snprintf(e->child, sizeof(e->child), "%s/child.vhdx", e->dir);
	snprintf(e->marker, sizeof(e->marker), "%s.merging", e->child);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	unlink(e->marker);
	unlink(e->child);
	unlink(e->mid);
	unlink(e->base);
	rmdir(e->dir);
	free(e);
	return 0;
}

static void create(const char *path, uint64_t size, uint32_t bs,
		   const char *parent)
{
	struct vhdx_create_opts o = {
		.virtual_size = size,
		.block_size = bs,
		.logical_sector_size = 512,
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

/* A deterministic byte pattern that differs per call. */
static uint32_t rng = 12345;

static uint32_t next_rand(void)
{
	rng = rng * 1103515245u + 12345u;
	return rng >> 8;
}

/* Write LEN bytes at OFF into IMG and into the model M (NULL: zeros). */
static void put(struct vhdx_image *img, uint8_t *m, uint64_t off, size_t len,
		bool zero)
{
	uint8_t *buf = malloc(len);
	size_t i;

	assert_non_null(buf);
	if (zero) {
		memset(buf, 0, len);
		assert_int_equal(vhdx_write_zeroes(img, off, len), 0);
	} else {
		for (i = 0; i < len; i++)
			buf[i] = (uint8_t)next_rand();
		assert_int_equal(vhdx_pwrite(img, buf, len, off), 0);
	}
	if (m)
		memcpy(m + off, buf, len);
	free(buf);
}

static void merge(const char *child)
{
	struct vhdx_error err;
	int ret = vhdx_merge(child, 0, NULL, NULL, &err);

	if (ret)
		fprintf(stderr, "vhdx_merge: %s\n", err.msg);
	assert_int_equal(ret, 0);
}

/* IMG reads exactly as the model M (LEN bytes). */
static void expect_model(struct vhdx_image *img, const uint8_t *m, uint64_t len)
{
	uint8_t *buf = malloc(len);
	uint64_t i;

	assert_non_null(buf);
	assert_int_equal(vhdx_pread(img, buf, len, 0), (ssize_t)len);
	for (i = 0; i < len; i += 512)
		if (memcmp(buf + i, m + i, 512))
			fail_msg("sector at %llu differs from the model",
				 (unsigned long long)i);
	free(buf);
}

static void read_file(const char *path, void *buf, size_t len, uint64_t off)
{
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

/* The parent's BAT as the file holds it equals what an open holds. */
static void expect_bat_on_disk(const char *path)
{
	struct vhdx_image *img = open_img(path, VHDX_OPEN_NO_PARENT);
	uint64_t n = img->info.bat_entries, i;
	uint8_t *b = malloc(n * 8);

	assert_non_null(b);
	read_file(path, b, n * 8, img->info.bat_offset);
	for (i = 0; i < n; i++)
		if (get64(b + i * 8) != img->bat[i])
			fail_msg("BAT entry %llu: file %#llx, open %#llx",
				 (unsigned long long)i,
				 (unsigned long long)get64(b + i * 8),
				 (unsigned long long)img->bat[i]);
	free(b);
	vhdx_close(img);
}

/* Zero PATH's log region (its log is clean: nothing reads it), so that
 * what log_entries() finds afterwards was written by the merge. */
static void wipe_log(const char *path)
{
	struct vhdx_image *img = open_img(path, VHDX_OPEN_NO_PARENT);
	const struct vhdx_header_info *h =
		&img->info.header[img->info.current_header];
	uint8_t *z = calloc(1, h->log_length);
	int fd = open(path, O_WRONLY);

	assert_true(vhdx_guid_is_zero(&h->log_guid));
	assert_non_null(z);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, z, h->log_length, (off_t)h->log_offset),
			 (ssize_t)h->log_length);
	close(fd);
	free(z);
	vhdx_close(img);
}

/*
 * Log entries in PATH's log region under the LogGuid of the entry at its
 * start (a writer's log starts at offset 0, and starts there again under
 * a new LogGuid when it wraps).  Decoded from the spec's layout: "loge"
 * at 0, LogGuid at 32.
 */
static unsigned log_entries(const char *path)
{
	struct vhdx_image *img = open_img(path, VHDX_OPEN_NO_PARENT);
	const struct vhdx_header_info *h =
		&img->info.header[img->info.current_header];
	uint32_t len = h->log_length, off;
	uint8_t *log = malloc(len);
	unsigned n = 0;

	assert_non_null(log);
	read_file(path, log, len, h->log_offset);
	vhdx_close(img);
	if (memcmp(log, "loge", 4) == 0)
		for (off = 0; off + 4096 <= len; off += 4096)
			if (!memcmp(log + off, "loge", 4) &&
			    !memcmp(log + off + 32, log + 32, 16))
				n++;
	free(log);
	return n;
}

/* --- into a dynamic parent ----------------------------------------------- */

/* Drop the page cache of PATH but for its first half, read back in: a
 * merge's copy then starts from the cache and meets the disk halfway,
 * where its read-ahead starts. */
static void half_cold(const char *path)
{
	int fd = open(path, O_RDONLY);
	struct vhdx_image *img;
	struct stat st;
	uint8_t buf[4096];
	off_t half, o;

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(fdatasync(fd), 0);
	half = st.st_size / 2 / 4096 * 4096;
	assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	/* no read-ahead: exactly the first half comes back */
	assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM), 0);
	for (o = 0; o < half; o += 4096)
		assert_true(pread(fd, buf, sizeof(buf), o) >= 0);
	/* data past the half (a hole would read as zeros without waiting) */
	o = lseek(fd, half, SEEK_DATA);
	assert_true(o >= half);
	close(fd);
	img = open_img(path, VHDX_OPEN_NO_PARENT);
	assert_int_equal(vhdx_file_read_cached(img, buf, 4096, 0), 0);
	assert_int_equal(vhdx_file_read_cached(img, buf, 4096, (uint64_t)o),
			 -EAGAIN);
	vhdx_close(img);
}

static void merge_dynamic(struct env *e, bool cold)
{
	uint64_t size = 48 * MB, i, off;
	uint8_t *m = calloc(1, size);
	struct vhdx_image *img;
	struct stat st;

	assert_non_null(m);
	/* parent: 2 MiB blocks, data in the first 20 MiB and at 32-36 */
	create(e->base, size, 2 * MB, NULL);
	img = open_img(e->base, VHDX_OPEN_RDWR);
	put(img, m, 0, 20 * MB, false);
	put(img, m, 32 * MB, 4 * MB, false);
	assert_int_equal(vhdx_close_checked(img), 0);

	/* child: 1 MiB blocks */
	create(e->child, 0, 1 * MB, e->base);
	img = open_img(e->child, VHDX_OPEN_RDWR);
	for (i = 0; i < 300; i++) {
		off = (uint64_t)(next_rand() % (size / 4096)) * 4096;
		put(img, m, off, 4096, false);
	}
	put(img, m, 5 * MB, 1 * MB, false);	  /* whole child block */
	put(img, m, 40 * MB, 3 * MB, false);	  /* over nothing */
	put(img, m, 8 * MB - 4096, 8192, false);  /* across a block edge */
	put(img, m, 10 * MB, 2 * MB, true);	  /* a whole parent block */
	put(img, m, 14 * MB + 8192, 65536, true); /* zeros over data */
	put(img, m, 22 * MB + 4096, 12288, true); /* zeros over nothing */
	put(img, m, 34 * MB - 512, 1024, false);  /* 512-byte sectors */
	put(img, m, size - 4096, 4096, false);	  /* the very end */
	assert_int_equal(vhdx_close_checked(img), 0);
	if (cold)
		half_cold(e->child);

	wipe_log(e->base);
	merge(e->child);
	assert_int_equal(stat(e->child, &st), -1);
	assert_int_equal(stat(e->marker, &st), -1);
	img = open_img(e->base, 0);
	assert_false(img->info.has_parent);
	expect_model(img, m, size);
	/* the zeroed parent block is a ZERO entry, not stored zeros */
	assert_int_equal(vhdx_bat_state(img->bat[vhdx_bat_payload_index(
				 5, img->info.chunk_ratio)]),
			 VHDX_PAYLOAD_ZERO);
	vhdx_close(img);
	expect_bat_on_disk(e->base);
	/* three new blocks, two BAT sectors at most: not one commit per
	 * block or sector */
	assert_true(log_entries(e->base) >= 1 && log_entries(e->base) <= 2);
	free(m);
}

static void test_merge_dynamic(void **state)
{
	merge_dynamic(*state, false);
}

/* The child half out of the page cache: the copy reads from the cache,
 * then from the disk with its read-ahead; every byte still arrives. */
static void test_merge_child_half_cold(void **state)
{
	merge_dynamic(*state, true);
}

/* --- into a differencing parent --------------------------------------------
 */

static void test_merge_differencing(void **state)
{
	struct env *e = *state;
	uint64_t size = 64 * MB, i, off;
	uint8_t *m = calloc(1, size);
	struct vhdx_image *img;
	struct stat st;

	assert_non_null(m);
	create(e->base, size, 4 * MB, NULL);
	img = open_img(e->base, VHDX_OPEN_RDWR);
	put(img, m, 0, size, false);
	assert_int_equal(vhdx_close_checked(img), 0);
	create(e->mid, 0, 2 * MB, e->base);
	img = open_img(e->mid, VHDX_OPEN_RDWR);
	put(img, m, 4 * MB, 2 * MB, false);	 /* whole */
	put(img, m, 9 * MB + 4096, 8192, false); /* partial */
	put(img, m, 20 * MB, 2 * MB, true);	 /* ZERO */
	assert_int_equal(vhdx_close_checked(img), 0);

	create(e->child, 0, 1 * MB, e->mid);
	img = open_img(e->child, VHDX_OPEN_RDWR);
	for (i = 0; i < 400; i++) {
		off = (uint64_t)(next_rand() % (size / 4096)) * 4096;
		put(img, m, off, 4096, false);
	}
	put(img, m, 9 * MB, 4096, false);	/* next to mid's own */
	put(img, m, 30 * MB, 4 * MB, false);	/* whole mid blocks */
	put(img, m, 40 * MB + 512, 2048, true); /* zeros over base data */
	put(img, m, 44 * MB, 2 * MB, true);	/* a whole zero block */
	put(img, m, 21 * MB, 4096, false);	/* into mid's ZERO block */
	assert_int_equal(vhdx_close_checked(img), 0);

	merge(e->child);
	assert_int_equal(stat(e->child, &st), -1);
	assert_int_equal(stat(e->marker, &st), -1);
	img = open_img(e->mid, 0);
	assert_true(img->info.has_parent);
	expect_model(img, m, size);
	vhdx_close(img);
	expect_bat_on_disk(e->mid);
	free(m);
}

/*
 * A merge whose BAT and sector-bitmap changes do not fit one log entry of
 * a 1 MiB log: one 4 KiB sector every 16 MiB of a 5 GiB differencing
 * parent dirties 320 bitmap sectors.  Every sector must arrive and the BAT
 * on disk must be complete.
 */
static void test_merge_many_sectors(void **state)
{
	struct env *e = *state;
	uint64_t size = 5120 * MB, n = size / (16 * MB), i;
	struct vhdx_image *img;
	uint8_t want[4096], got[4096], zero[4096] = { 0 };

	create(e->base, size, 32 * MB, NULL);
	create(e->mid, 0, 1 * MB, e->base);
	create(e->child, 0, 2 * MB, e->mid);
	img = open_img(e->child, VHDX_OPEN_RDWR);
	for (i = 0; i < n; i++) {
		memset(want, (int)(i % 250) + 1, sizeof(want));
		assert_int_equal(vhdx_pwrite(img, want, 4096,
					     i * 16 * MB + (i % 7) * 4096),
				 0);
	}
	assert_int_equal(vhdx_close_checked(img), 0);

	wipe_log(e->mid);
	merge(e->child);
	img = open_img(e->mid, 0);
	for (i = 0; i < n; i++) {
		off_t at = (off_t)(i * 16 * MB + (i % 7) * 4096);

		memset(want, (int)(i % 250) + 1, sizeof(want));
		assert_int_equal(vhdx_pread(img, got, 4096, (uint64_t)at),
				 4096);
		assert_memory_equal(got, want, 4096);
		assert_int_equal(
			vhdx_pread(img, got, 4096, (uint64_t)at + 4096), 4096);
		assert_memory_equal(got, zero, 4096);
	}
	vhdx_close(img);
	expect_bat_on_disk(e->mid);
	/* through the log: a BAT and bitmaps written in place would leave
	 * none */
	assert_true(log_entries(e->mid) >= 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_merge_dynamic, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_merge_child_half_cold,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_merge_differencing, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_merge_many_sectors, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
