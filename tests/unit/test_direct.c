/* SPDX-License-Identifier: MIT */
/*
 * test_direct.c - unit tests of a batch writer's O_DIRECT writes into
 * blocks the image holds (direct.c), on real files in a scratch folder
 * under /tmp: scattered 4 KiB and 512-byte sectors, a run across two
 * blocks, writes into a block the same batch allocated, a cached write
 * into a page a direct write is still on, and writes the file system
 * refuses (EINVAL), which must land through the page cache.  Every byte
 * is checked after the flush against a copy kept here, reading the image
 * anew.
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

#include "vhdx/internal.h"

#define MB (1024ull * 1024)
#define BS (2 * MB)
#define SIZE (32 * MB)

struct env {
	char dir[64];
	char path[128];
	uint8_t *want; /* what the image must read */
};

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));

	if (!e)
		return -1;
	strcpy(e->dir, "/tmp/test_direct.XXXXXX");
	if (!mkdtemp(e->dir)) {
		free(e);
		return -1;
	}
	snprintf(e->path, sizeof(e->path), "%s/img.vhdx", e->dir);
	e->want = calloc(1, SIZE);
	*state = e;
	return e->want ? 0 : -1;
}

static int teardown(void **state)
{
	struct env *e = *state;

	unlink(e->path);
	rmdir(e->dir);
	free(e->want);
	free(e);
	return 0;
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

static void put(struct env *e, struct vhdx_image *img, uint64_t off,
		uint64_t len, unsigned seed)
{
	uint8_t *buf = malloc(len);
	uint64_t i;

	assert_non_null(buf);
	for (i = 0; i < len; i++)
		buf[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 9));
	assert_int_equal(vhdx_pwrite(img, buf, len, off), 0);
	memcpy(e->want + off, buf, len);
	free(buf);
}

/* A dynamic image whose first 8 blocks are written whole (and so held by
 * the file), the rest unallocated. */
static void make_image(struct env *e)
{
	struct vhdx_create_opts o = {
		.virtual_size = SIZE,
		.block_size = BS,
		.logical_sector_size = 512,
	};
	struct vhdx_error err;
	struct vhdx_image *img;
	unsigned b;

	assert_int_equal(vhdx_create(e->path, &o, &err), 0);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	for (b = 0; b < 8; b++)
		put(e, img, b * BS, BS, b + 1);
	assert_int_equal(vhdx_close_checked(img), 0);
}

static void check_image(struct env *e)
{
	struct vhdx_image *img = open_img(e->path, 0);
	uint8_t *got = malloc(SIZE);
	uint64_t i;

	assert_non_null(got);
	assert_int_equal(vhdx_pread(img, got, SIZE, 0), (ssize_t)SIZE);
	for (i = 0; i < SIZE; i++)
		if (got[i] != e->want[i])
			fail_msg("byte %llu reads 0x%02x, want 0x%02x",
				 (unsigned long long)i, got[i], e->want[i]);
	free(got);
	vhdx_close(img);
}

/* The writes of a merge, and the awkward ones around them. */
static void batch_writes(struct env *e, struct vhdx_image *img)
{
	uint64_t x = 0x9e3779b97f4a7c15ull, off;
	unsigned i;

	for (i = 0; i < 300; i++) { /* scattered 4 KiB sectors, held blocks */
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		off = x % (8 * BS / 4096) * 4096;
		put(e, img, off, 4096, 100 + i);
	}
	for (i = 0; i < 60; i++) { /* lone 512-byte sectors */
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		off = x % (8 * BS / 512) * 512;
		put(e, img, off, 512, 500 + i);
	}
	put(e, img, 4 * BS - 8192, 16384, 7);  /* across blocks 3 and 4 */
	put(e, img, 10 * BS + 4096, 8192, 8);  /* allocates block 10 */
	put(e, img, 10 * BS + 65536, 4096, 9); /* into it, now held */
	/* a cached write (zeros) into the page of a direct one in flight */
	put(e, img, 5 * BS + 8192, 4096, 10);
	assert_int_equal(vhdx_write_zeroes(img, 5 * BS + 8192 + 1024, 512), 0);
	memset(e->want + 5 * BS + 8192 + 1024, 0, 512);
	put(e, img, SIZE - 4096, 4096, 11); /* the last sector: unallocated */
}

static void test_batch_direct_writes_land(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;

	make_image(e);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	vhdx_writer_batch(img);
	if (!img->direct) {
		vhdx_close(img);
		skip(); /* this file system takes no O_DIRECT: nothing to test
			 */
	}
	assert_true(vhdx_direct_fits(img, 4096, 4096));
	batch_writes(e, img);
	assert_int_equal(vhdx_flush(img), 0);
	assert_true(vhdx_direct_fits(img, 4096, 4096)); /* none refused */
	assert_int_equal(vhdx_close_checked(img), 0);
	check_image(e);
}

static void test_refused_direct_writes_go_cached(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img;

	make_image(e);
	img = open_img(e->path, VHDX_OPEN_RDWR);
	vhdx_writer_batch(img);
	if (!img->direct) {
		vhdx_close(img);
		skip();
	}
	vhdx_direct_test_misalign(img);
	batch_writes(e, img);
	assert_int_equal(vhdx_flush(img), 0);
	/* refused once: not asked again */
	assert_false(vhdx_direct_fits(img, 4096, 4096));
	put(e, img, 4096, 4096, 12);
	assert_int_equal(vhdx_close_checked(img), 0);
	check_image(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_batch_direct_writes_land,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_refused_direct_writes_go_cached, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
