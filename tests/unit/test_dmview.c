/* SPDX-License-Identifier: MIT */
/*
 * test_dmview.c - unit tests of the device-mapper view's pure parts
 * (fuse/dmview.c): the device names mount-and-resync derives (always valid,
 * distinct for distinct disks, bounded so a uuid prefix still fits), the
 * name rule of `hvresync map`, and the table of real images made with the
 * writer: reading the image file through the table's lines must give the
 * bytes vhdx_pread() gives, and images a table cannot describe are refused
 * with -ENOTSUP and a line naming the file.  Nothing here needs a kernel
 * with device-mapper.
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

#include "fuse/dmview.h"
#include "vhdx/vhdx.h"

#define MIB (1024 * 1024)

static char dir[] = "/tmp/test_dmview.XXXXXX";

static int setup(void **state)
{
	(void)state;
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void path_of(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", dir, name);
}

/* --- names ---------------------------------------------------------------- */

static void test_valid_name(void **state)
{
	char longest[DMVIEW_NAME_MAX + 2];

	(void)state;
	assert_true(dmview_valid_name("web01"));
	assert_true(dmview_valid_name("a.b_c+d-e"));
	assert_false(dmview_valid_name(""));
	assert_false(dmview_valid_name("-x"));
	assert_false(dmview_valid_name(".x"));
	assert_false(dmview_valid_name("control"));
	assert_false(dmview_valid_name("a/b"));
	assert_false(dmview_valid_name("a b"));
	memset(longest, 'x', sizeof(longest));
	longest[DMVIEW_NAME_MAX] = '\0';
	assert_true(dmview_valid_name(longest));
	longest[DMVIEW_NAME_MAX] = 'x';
	longest[DMVIEW_NAME_MAX + 1] = '\0';
	assert_false(dmview_valid_name(longest));
}

static void test_derived_names(void **state)
{
	char a[DMVIEW_NAME_MAX + 1], b[DMVIEW_NAME_MAX + 1];
	char vm[300], disk[300];

	(void)state;
	dmview_name("web01", "os.vhdx", a, sizeof(a));
	assert_string_equal(a, "hvresync-web01-os");
	dmview_name("web01", "data.AVHDX", a, sizeof(a));
	assert_string_equal(a, "hvresync-web01-data");
	/* only the VHDX extensions go */
	dmview_name("web01", "swap.img", a, sizeof(a));
	assert_string_equal(a, "hvresync-web01-swap.img");
	/* characters outside the set become '_' and the result is valid */
	dmview_name("my vm/ä", "d isk.vhdx", a, sizeof(a));
	assert_true(dmview_valid_name(a));
	assert_null(strchr(a, ' '));
	assert_null(strchr(a, '/'));

	/* too long: bounded, valid, and still telling disks apart */
	memset(vm, 'v', 200);
	vm[200] = '\0';
	memset(disk, 'd', 200);
	strcpy(disk + 200, "1.vhdx");
	dmview_name(vm, disk, a, sizeof(a));
	disk[200] = '2';
	dmview_name(vm, disk, b, sizeof(b));
	assert_true(strlen(a) <= DMVIEW_DERIVED_MAX);
	assert_true(dmview_valid_name(a));
	assert_true(dmview_valid_name(b));
	assert_string_not_equal(a, b);
	assert_memory_equal(a, "hvresync-vvv", 12);
	/* the same input gives the same name (a later run must find it) */
	dmview_name(vm, disk, a, sizeof(a));
	assert_string_equal(a, b);
	/* a uuid prefix of 32 still fits the kernel's 128 */
	assert_true(32 + DMVIEW_DERIVED_MAX < DMVIEW_UUID_LEN);
}

/* --- tables ----------------------------------------------------------------
 */

/* Read the image file through T as the kernel would and compare with what
 * the library reads. */
static void check_table(struct vhdx_image *img, const struct dmview_table *t)
{
	const struct vhdx_info *info = vhdx_get_info(img);
	uint64_t pos = 0;
	char *want, *got;
	size_t i;
	int fd;

	want = malloc(info->virtual_size);
	got = calloc(1, info->virtual_size);
	assert_non_null(want);
	assert_non_null(got);
	assert_int_equal(vhdx_pread(img, want, info->virtual_size, 0),
			 (ssize_t)info->virtual_size);
	fd = open(info->path, O_RDONLY);
	assert_true(fd >= 0);
	for (i = 0; i < t->n; i++) {
		const struct dmview_line *l = &t->v[i];

		/* the lines tile the disk in order */
		assert_int_equal(l->start, pos);
		assert_true(l->len > 0);
		if (l->linear)
			assert_int_equal(pread(fd, got + l->start * 512,
					       l->len * 512, l->dev_off * 512),
					 (ssize_t)(l->len * 512));
		pos += l->len;
	}
	close(fd);
	assert_int_equal(pos * 512, info->virtual_size);
	assert_memory_equal(want, got, info->virtual_size);
	free(want);
	free(got);
}

static void write_pattern(struct vhdx_image *img, uint64_t off, size_t len,
			  int c)
{
	char *buf = malloc(len);

	assert_non_null(buf);
	memset(buf, c, len);
	assert_int_equal(vhdx_pwrite(img, buf, len, off), 0);
	free(buf);
}

static void test_table_dynamic(void **state)
{
	struct vhdx_create_opts co = { .virtual_size = 16 * MIB,
				       .block_size = MIB };
	struct vhdx_error err;
	struct dmview_table t;
	struct vhdx_image *img;
	char p[300];
	size_t i, zeros = 0, linears = 0;

	(void)state;
	path_of(p, sizeof(p), "dyn.vhdx");
	assert_int_equal(vhdx_create(p, &co, &err), 0);
	assert_int_equal(vhdx_open(p, VHDX_OPEN_RDWR, &img, &err), 0);
	/* out of order in the file, a zero block, a partial write */
	write_pattern(img, 9 * MIB, MIB, 0x19);
	write_pattern(img, 2 * MIB, MIB, 0x12);
	write_pattern(img, 14 * MIB + 4096, 8192, 0x1e);
	write_pattern(img, 0, 65536, 0x10);
	assert_int_equal(vhdx_write_zeroes(img, 5 * MIB, MIB), 0);
	assert_int_equal(vhdx_close_checked(img), 0);

	assert_int_equal(dmview_build(p, &img, &t, &err), 0);
	for (i = 0; i < t.n; i++) {
		if (t.v[i].linear)
			linears++;
		else
			zeros++;
	}
	assert_true(linears >= 4);
	assert_true(zeros >= 1);
	check_table(img, &t);
	dmview_table_free(&t);
	vhdx_close(img);
}

static void test_table_fixed(void **state)
{
	struct vhdx_create_opts co = { .virtual_size = 8 * MIB,
				       .block_size = MIB,
				       .fixed = true };
	struct vhdx_error err;
	struct dmview_table t;
	struct vhdx_image *img;
	char p[300];

	(void)state;
	path_of(p, sizeof(p), "fixed.vhdx");
	assert_int_equal(vhdx_create(p, &co, &err), 0);
	assert_int_equal(vhdx_open(p, VHDX_OPEN_RDWR, &img, &err), 0);
	write_pattern(img, 3 * MIB, 2 * MIB, 0x33);
	assert_int_equal(vhdx_close_checked(img), 0);
	assert_int_equal(dmview_build(p, &img, &t, &err), 0);
	check_table(img, &t);
	dmview_table_free(&t);
	vhdx_close(img);
}

static void test_refusals(void **state)
{
	struct vhdx_create_opts co = { .virtual_size = 4 * MIB };
	struct vhdx_create_opts cc = { 0 };
	struct vhdx_error err;
	struct dmview_table t;
	struct vhdx_image *img = NULL;
	char base[300], child[300], none[300];

	(void)state;
	path_of(base, sizeof(base), "base.vhdx");
	path_of(child, sizeof(child), "child.avhdx");
	path_of(none, sizeof(none), "none.vhdx");
	assert_int_equal(vhdx_create(base, &co, &err), 0);
	cc.parent = base;
	assert_int_equal(vhdx_create(child, &cc, &err), 0);

	assert_int_equal(dmview_build(child, &img, &t, &err), -ENOTSUP);
	assert_null(img);
	assert_non_null(strstr(err.msg, child));
	assert_non_null(strstr(err.msg, "differencing"));
	assert_null(strchr(err.msg, '\n'));

	/* dmview_mappable() alone says the same of the open child */
	assert_int_equal(vhdx_open(child, 0, &img, &err), 0);
	assert_int_equal(dmview_mappable(child, vhdx_get_info(img), &err),
			 -ENOTSUP);
	assert_non_null(strstr(err.msg, "parent chain"));
	vhdx_close(img);
	img = NULL;

	assert_true(dmview_build(none, &img, &t, &err) < 0);
	assert_non_null(strstr(err.msg, none));

	/* a sweep never touches what does not carry our prefix */
	assert_int_equal(dmview_sweep("LVM-", NULL, NULL, NULL, NULL, &err),
			 -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_name),
		cmocka_unit_test(test_derived_names),
		cmocka_unit_test(test_table_dynamic),
		cmocka_unit_test(test_table_fixed),
		cmocka_unit_test(test_refusals),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
