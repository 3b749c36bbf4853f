/* SPDX-License-Identifier: MIT */
/*
 * test_watch.c - change detection on a source read live
 * (agent/lib/watch.c): every way a local process can change a disk
 * during a pass is noticed and named, a disk nobody touched is not, and
 * the identity a job records reads back the same.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent/lib/watch.h"
#include "vhdx/vhdx.h"

static char tmpdir[] = "/tmp/test_watch.XXXXXX";
static char path[600];

static void make_file(const char *p, size_t len)
{
	char *b = malloc(len);
	int fd;

	assert_non_null(b);
	memset(b, 'a', len);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, b, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
	free(b);
}

static struct watch *start(const char *p)
{
	struct watch *w = NULL;
	char err[512];

	assert_int_equal(watch_start(p, &w, err, sizeof(err)), 0);
	assert_non_null(w);
	return w;
}

/* Changed, with a one-line reason naming the file. */
static void assert_changed(struct watch *w, const char *p)
{
	char why[1024];

	assert_int_equal(watch_changed(w, why, sizeof(why)), 1);
	print_message("changed: %s\n", why);
	assert_non_null(strstr(why, p));
	assert_null(strchr(why, '\n'));
}

static void assert_unchanged(struct watch *w)
{
	char why[1024];

	assert_int_equal(watch_changed(w, why, sizeof(why)), 0);
}

static int fresh(void **state)
{
	(void)state;
	make_file(path, 65536);
	return 0;
}

static void test_untouched(void **state)
{
	struct watch *w;
	char buf[4096];
	int fd;

	(void)state;
	w = start(path);
	/* Reading, as a pass does, is no change. */
	fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, sizeof(buf), 8192), sizeof(buf));
	close(fd);
	assert_unchanged(w);
	assert_unchanged(w);
	assert_false(watch_ident(w)->vhdx);
	assert_int_equal(watch_ident(w)->size, 65536);
	watch_stop(w);
}

static void test_write(void **state)
{
	struct watch *w;
	int fd;

	(void)state;
	w = start(path);
	fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "x", 1), 1);
	close(fd);
	assert_changed(w, path);
	/* Once changed, changed: the pass saw a mixture. */
	assert_changed(w, path);
	watch_stop(w);
}

/* A write in place through a descriptor opened before the watch: same
 * size, and maybe the same mtime tick. */
static void test_pwrite_other_fd(void **state)
{
	struct watch *w;
	int fd;

	(void)state;
	fd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	w = start(path);
	assert_unchanged(w);
	assert_int_equal(pwrite(fd, "b", 1, 100), 1);
	close(fd);
	assert_changed(w, path);
	watch_stop(w);
}

static void test_truncate(void **state)
{
	struct watch *w;
	char why[1024];

	(void)state;
	w = start(path);
	assert_int_equal(truncate(path, 4096), 0);
	assert_int_equal(watch_changed(w, why, sizeof(why)), 1);
	assert_non_null(strstr(why, "size"));
	watch_stop(w);
}

static void test_replaced(void **state)
{
	char other[700], why[1024];
	struct watch *w;

	(void)state;
	snprintf(other, sizeof(other), "%s/other", tmpdir);
	make_file(other, 65536);
	w = start(path);
	assert_int_equal(rename(other, path), 0);
	assert_int_equal(watch_changed(w, why, sizeof(why)), 1);
	print_message("replaced: %s\n", why);
	assert_non_null(strstr(why, "another file"));
	watch_stop(w);
}

static void test_deleted(void **state)
{
	struct watch *w;
	char why[1024];

	(void)state;
	w = start(path);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(watch_changed(w, why, sizeof(why)), 1);
	assert_non_null(strstr(why, path));
	assert_non_null(strstr(why, "gone"));
	watch_stop(w);
}

/* Only the modification time, set to another one by hand. */
static void test_mtime_only(void **state)
{
	struct timespec ts[2] = { { 0, UTIME_OMIT }, { 1000000000, 0 } };
	struct src_ident before, after;
	struct watch *w;
	char why[1024], err[512];

	(void)state;
	w = start(path);
	assert_int_equal(src_ident_read(path, &before, err, sizeof(err)), 0);
	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
	assert_changed(w, path);
	watch_stop(w);

	/* The identity alone names it too. */
	assert_int_equal(src_ident_read(path, &after, err, sizeof(err)), 0);
	assert_false(src_ident_equal(&before, &after, why, sizeof(why)));
	assert_non_null(strstr(why, "modified"));
	assert_true(src_ident_equal(&after, &after, why, sizeof(why)));
	assert_false(src_ident_equal(&before, &after, NULL, 0));
}

static void test_vhdx_header(void **state)
{
	/* Fixed: a write lands in an allocated block, the size stays. */
	struct vhdx_create_opts opts = { .virtual_size = 8 << 20,
					 .fixed = true };
	char data[4096];
	char vpath[700], why[1024], err[512];
	struct vhdx_image *img;
	struct vhdx_error verr;
	struct src_ident before, after;
	struct watch *w;

	(void)state;
	snprintf(vpath, sizeof(vpath), "%s/disk.vhdx", tmpdir);
	unlink(vpath);
	assert_int_equal(vhdx_create(vpath, &opts, &verr), 0);
	assert_int_equal(src_ident_read(vpath, &before, err, sizeof(err)), 0);
	assert_true(before.vhdx);
	assert_true(before.seq > 0);
	w = start(vpath);
	assert_true(watch_ident(w)->vhdx);
	assert_int_equal(watch_ident(w)->seq, before.seq);
	assert_memory_equal(watch_ident(w)->file_write_guid,
			    before.file_write_guid, 16);
	assert_unchanged(w);

	/* A read-only open (a pass) changes nothing. */
	assert_int_equal(vhdx_open(vpath, 0, &img, &verr), 0);
	vhdx_close(img);
	assert_unchanged(w);

	/* A write renews FileWriteGuid and DataWriteGuid in a new header. */
	memset(data, 0x5a, sizeof(data));
	assert_int_equal(vhdx_open(vpath, VHDX_OPEN_RDWR, &img, &verr), 0);
	assert_int_equal(vhdx_pwrite(img, data, sizeof(data), 1 << 20), 0);
	assert_int_equal(vhdx_close_checked(img), 0);
	assert_int_equal(watch_changed(w, why, sizeof(why)), 1);
	print_message("vhdx: %s\n", why);
	assert_non_null(strstr(why, vpath));
	assert_non_null(strstr(why, "VHDX header"));
	watch_stop(w);

	assert_int_equal(src_ident_read(vpath, &after, err, sizeof(err)), 0);
	assert_true(after.seq > before.seq);
	assert_memory_not_equal(after.file_write_guid, before.file_write_guid,
				16);
	/* With the same size and times, the header alone tells. */
	after.mtime_ns = before.mtime_ns;
	after.ctime_ns = before.ctime_ns;
	after.size = before.size;
	assert_false(src_ident_equal(&before, &after, why, sizeof(why)));
	print_message("header: %s\n", why);
	assert_non_null(strstr(why, "VHDX header"));
	after.seq = before.seq;
	assert_false(src_ident_equal(&before, &after, why, sizeof(why)));
	assert_non_null(strstr(why, "FileWriteGuid"));
	unlink(vpath);
}

static void test_ident_text(void **state)
{
	struct src_ident a, b;
	char text[SRC_IDENT_TEXT_MAX], err[512];
	unsigned i;

	(void)state;
	/* A real file's identity. */
	assert_int_equal(src_ident_read(path, &a, err, sizeof(err)), 0);
	assert_int_equal(src_ident_format(&a, text, sizeof(text)), 0);
	assert_null(strchr(text, ' '));
	assert_int_equal(src_ident_parse(text, &b), 0);
	/* src_ident_equal() compares every field. */
	assert_true(src_ident_equal(&a, &b, NULL, 0));

	/* The largest values still fit, and negative times survive. */
	memset(&a, 0, sizeof(a));
	a.dev = a.ino = a.size = a.seq = UINT64_MAX;
	a.mtime_ns = INT64_MIN;
	a.ctime_ns = -1;
	a.vhdx = true;
	for (i = 0; i < 16; i++) {
		a.file_write_guid[i] = (uint8_t)(0xf0 + i);
		a.data_write_guid[i] = (uint8_t)i;
		a.log_guid[i] = (uint8_t)(i * 17);
	}
	assert_int_equal(src_ident_format(&a, text, sizeof(text)), 0);
	print_message("ident: %s\n", text);
	assert_null(strchr(text, ' '));
	assert_int_equal(src_ident_parse(text, &b), 0);
	assert_true(src_ident_equal(&a, &b, NULL, 0));
	assert_true(b.vhdx);
	assert_int_equal(b.mtime_ns, INT64_MIN);
	assert_int_equal(src_ident_format(&a, text, 20), -ENOSPC);

	/* Anything else is refused rather than half read. */
	assert_int_equal(src_ident_parse("", &b), -EINVAL);
	assert_int_equal(src_ident_parse("d=1,i=2,s=3,m=4", &b), -EINVAL);
	assert_int_equal(src_ident_parse("d=1,i=2,s=3,m=4,c=5", &b), 0);
	assert_false(b.vhdx);
	assert_int_equal(src_ident_parse("d=1,i=2,s=3,m=4,c=5,", &b), -EINVAL);
	assert_int_equal(src_ident_parse("d=1,i=2,s=3,m=4,c=5,d=1", &b),
			 -EINVAL);
	assert_int_equal(src_ident_parse("d=1,i=2,s=3,m=4,c=5,x=1", &b),
			 -EINVAL);
	assert_int_equal(src_ident_parse("d=1,i=2,s=3,m=4,c=5,q=1", &b),
			 -EINVAL);
	assert_int_equal(src_ident_parse("d=1,i=2,s=-3,m=4,c=5", &b), -EINVAL);
	assert_int_equal(src_ident_parse("d=1,i=2,s=3x,m=4,c=5", &b), -EINVAL);
	assert_int_equal(src_ident_parse("d=1, i=2,s=3,m=4,c=5", &b), -EINVAL);
	assert_int_equal(
		src_ident_parse("d=1,i=2,s=3,m=4,c=5,q=1,f=00,w=00,l=00", &b),
		-EINVAL);
	assert_int_equal(
		src_ident_parse("d=99999999999999999999999,i=2,s=3,m=4,c=5",
				&b),
		-EINVAL);
}

static void test_blockdev(void **state)
{
	static const char *const cand[] = { "/dev/vda", "/dev/sda",
					    "/dev/nvme0n1", "/dev/loop0" };
	struct watch *w = NULL;
	struct stat st;
	char err[512];
	const char *dev = NULL;
	unsigned i;
	int fd;

	(void)state;
	for (i = 0; i < sizeof(cand) / sizeof(cand[0]) && !dev; i++) {
		if (stat(cand[i], &st) || !S_ISBLK(st.st_mode))
			continue;
		fd = open(cand[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		close(fd);
		dev = cand[i];
	}
	if (!dev) {
		print_message("SKIP: no block device can be opened here\n");
		skip();
	}
	assert_int_equal(watch_start(dev, &w, err, sizeof(err)), -ENOTSUP);
	assert_null(w);
	print_message("block device: %s\n", err);
	assert_non_null(strstr(err, dev));
	assert_non_null(strstr(err, "LVM snapshot"));
}

static void test_missing(void **state)
{
	struct watch *w = NULL;
	char err[512], p[700];

	(void)state;
	snprintf(p, sizeof(p), "%s/nope", tmpdir);
	assert_int_equal(watch_start(p, &w, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, p));
}

static int setup(void **state)
{
	(void)state;
	if (!mkdtemp(tmpdir))
		return -1;
	snprintf(path, sizeof(path), "%s/disk.raw", tmpdir);
	return 0;
}

static int teardown(void **state)
{
	char cmd[256];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_untouched, fresh),
		cmocka_unit_test_setup(test_write, fresh),
		cmocka_unit_test_setup(test_pwrite_other_fd, fresh),
		cmocka_unit_test_setup(test_truncate, fresh),
		cmocka_unit_test_setup(test_replaced, fresh),
		cmocka_unit_test_setup(test_deleted, fresh),
		cmocka_unit_test_setup(test_mtime_only, fresh),
		cmocka_unit_test(test_vhdx_header),
		cmocka_unit_test_setup(test_ident_text, fresh),
		cmocka_unit_test(test_blockdev),
		cmocka_unit_test(test_missing),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
