/* SPDX-License-Identifier: MIT */
/* test_fsutil.c - agent/lib's file helpers and size formatting: what the
 * daemon's state files and every size an admin reads rely on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent/lib/fmt.h"
#include "agent/lib/fsutil.h"

static void test_fmt_size(void **state)
{
	char b[32];

	(void)state;
	assert_string_equal(fmt_size(b, sizeof(b), 0), "0 B");
	assert_string_equal(fmt_size(b, sizeof(b), 1023), "1023 B");
	assert_string_equal(fmt_size(b, sizeof(b), 1024), "1.0 KiB");
	assert_string_equal(fmt_size(b, sizeof(b), 1536), "1.5 KiB");
	assert_string_equal(fmt_size(b, sizeof(b), 10.0 * (1 << 20)),
			    "10.0 MiB");
	assert_string_equal(fmt_size(b, sizeof(b), 4.0 * (1ull << 40)),
			    "4.0 TiB");
	assert_string_equal(fmt_size(b, sizeof(b), 3.0 * (1ull << 50)),
			    "3.0 PiB");
	/* nothing above PiB: an exabyte disk is counted in PiB */
	assert_string_equal(fmt_size(b, sizeof(b), 1.0 * (1ull << 60)),
			    "1024.0 PiB");
}

static void test_fmt_size_exact(void **state)
{
	char b[32];

	(void)state;
	assert_string_equal(fmt_size_exact(b, sizeof(b), 512), "512 bytes");
	assert_string_equal(fmt_size_exact(b, sizeof(b), 4 << 20), "4 MiB");
	assert_string_equal(fmt_size_exact(b, sizeof(b), (1 << 30) + (1 << 29)),
			    "1.5 GiB");
	assert_string_equal(fmt_size_exact(b, sizeof(b), 64ull << 40),
			    "64 TiB");
}

static void test_clocks(void **state)
{
	int64_t a, b;

	(void)state;
	a = mono_us();
	usleep(2000);
	b = mono_us();
	assert_true(b - a >= 2000);
	assert_true(mono_ms() >= a / 1000);
	/* after 2020-01-01, in microseconds */
	assert_true(wall_us() > 1577836800LL * 1000000);
}

static char dir[] = "/tmp/test_fsutil.XXXXXX";

static void test_mkdir_p(void **state)
{
	char *p = fs_path_join(dir, "a/b/c");
	struct stat st;

	(void)state;
	assert_non_null(p);
	assert_int_equal(fs_mkdir_p(p, 0700), 0);
	assert_int_equal(stat(p, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	/* an existing folder is fine */
	assert_int_equal(fs_mkdir_p(p, 0700), 0);
	free(p);
}

static void test_atomic_write(void **state)
{
	char *buf, path[4096], tmp[4096];
	size_t len;

	(void)state;
	assert_int_equal(fs_write_atomic(dir, "state", "one", 3), 0);
	assert_int_equal(fs_write_atomic(dir, "state", "second", 6), 0);
	assert_int_equal(fs_read_small(dir, "state", &buf, &len), 0);
	assert_int_equal(len, 6);
	assert_string_equal(buf, "second");
	free(buf);
	/* no temporary file is left behind */
	snprintf(tmp, sizeof(tmp), "%s/.state.tmp", dir);
	assert_int_equal(access(tmp, F_OK), -1);
	/* a symlink is never followed, for reading or as the temporary */
	snprintf(path, sizeof(path), "%s/link", dir);
	assert_int_equal(symlink("state", path), 0);
	assert_int_equal(fs_read_small(dir, "link", &buf, &len), -ELOOP);
	assert_int_equal(symlink("state", tmp), 0);
	assert_true(fs_write_atomic(dir, "state", "x", 1) < 0);
	unlink(tmp);
	assert_int_equal(fs_read_small(dir, "state", &buf, &len), 0);
	assert_string_equal(buf, "second");
	free(buf);
	assert_int_equal(fs_read_small(dir, "missing", &buf, &len), -ENOENT);
}

static void test_read_small_limit(void **state)
{
	char *big = calloc(1, (1 << 20) + 1), *buf;
	size_t len;

	(void)state;
	assert_non_null(big);
	assert_int_equal(fs_write_atomic(dir, "big", big, (1 << 20) + 1), 0);
	assert_int_equal(fs_read_small(dir, "big", &buf, &len), -EINVAL);
	free(big);
}

static int setup(void **state)
{
	(void)state;
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[256];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fmt_size),
		cmocka_unit_test(test_fmt_size_exact),
		cmocka_unit_test(test_clocks),
		cmocka_unit_test(test_mkdir_p),
		cmocka_unit_test(test_atomic_write),
		cmocka_unit_test(test_read_small_limit),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
