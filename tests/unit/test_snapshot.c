/* SPDX-License-Identifier: MIT */
/*
 * test_snapshot.c - point-in-time clones (agent/lib/snapshot.c): what a
 * job reading a frozen disk relies on.  On a filesystem without reflink
 * (here /tmp): auto falls back with a note, reflink fails naming the disk
 * and leaves nothing behind.  On XFS with reflink, made in a file and
 * loop-mounted when we are root: a clone holds the disk as it was, is
 * reused after a restart, is swept when its owner is gone and released
 * with its set.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent/lib/snapshot.h"

static char tmpdir[] = "/tmp/test_snapshot.XXXXXX";
static char xfs_mnt[512];  /* "" when XFS could not be mounted */
static char xfs0_mnt[512]; /* XFS made with reflink=0 */
static char xfs_why[256];  /* why not */
static bool tmp_reflinks;  /* /tmp can clone after all (XFS, btrfs) */

static void write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

/* A file of @len bytes of a pattern that depends on @seed. */
static void make_disk(const char *path, size_t len, unsigned seed)
{
	unsigned char *b = malloc(len);
	size_t i;

	assert_non_null(b);
	for (i = 0; i < len; i++)
		b[i] = (unsigned char)(i * 31 + seed);
	write_file(path, b, len);
	free(b);
}

static bool same_content(const char *a, const char *b)
{
	char cmd[2600];

	snprintf(cmd, sizeof(cmd), "cmp -s '%s' '%s'", a, b);
	return system(cmd) == 0;
}

/* Open descriptors of this process: a set leaves none behind. */
static int open_fds(void)
{
	char cmd[64];
	FILE *p;
	int n = -1;

	snprintf(cmd, sizeof(cmd), "ls /proc/%d/fd | wc -l", (int)getpid());
	p = popen(cmd, "r");
	assert_non_null(p);
	assert_int_equal(fscanf(p, "%d", &n), 1);
	pclose(p);
	return n;
}

static bool exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

/* How many SNAP_PREFIX entries @dir holds. */
static int count_clones(const char *dir)
{
	char cmd[600];
	FILE *p;
	int n = -1;

	snprintf(cmd, sizeof(cmd), "ls -A '%s' | grep -c '^%s'", dir,
		 SNAP_PREFIX);
	p = popen(cmd, "r");
	assert_non_null(p);
	assert_int_equal(fscanf(p, "%d", &n), 1);
	pclose(p);
	return n;
}

static void test_mode_words(void **state)
{
	enum snap_mode m;

	(void)state;
	assert_int_equal(snap_mode_parse("auto", &m), 0);
	assert_int_equal(m, SNAP_AUTO);
	assert_int_equal(snap_mode_parse("reflink", &m), 0);
	assert_int_equal(m, SNAP_REFLINK);
	assert_int_equal(snap_mode_parse("none", &m), 0);
	assert_int_equal(m, SNAP_NONE);
	assert_int_equal(snap_mode_parse("Reflink", &m), -EINVAL);
	assert_int_equal(snap_mode_parse("", &m), -EINVAL);
	assert_string_equal(snap_mode_name(SNAP_AUTO), "auto");
	assert_string_equal(snap_mode_name(SNAP_REFLINK), "reflink");
	assert_string_equal(snap_mode_name(SNAP_NONE), "none");
}

static void test_path(void **state)
{
	char out[4096], owner[SNAP_OWNER_MAX + 2], name[300];

	(void)state;
	assert_int_equal(
		snap_path("/vm/a/disk.vhdx", "job-12", out, sizeof(out)), 0);
	assert_string_equal(out, "/vm/a/.hvresync-snap.job-12.disk.vhdx");
	assert_int_equal(snap_path("disk.vhdx", "J1", out, sizeof(out)), 0);
	assert_string_equal(out, ".hvresync-snap.J1.disk.vhdx");
	/* Owners: [A-Za-z0-9-], 1 to SNAP_OWNER_MAX characters. */
	assert_int_equal(snap_path("/a/b", "", out, sizeof(out)), -EINVAL);
	assert_int_equal(snap_path("/a/b", "a.b", out, sizeof(out)), -EINVAL);
	assert_int_equal(snap_path("/a/b", "a/b", out, sizeof(out)), -EINVAL);
	assert_int_equal(snap_path("/a/b", "a b", out, sizeof(out)), -EINVAL);
	memset(owner, 'x', SNAP_OWNER_MAX);
	owner[SNAP_OWNER_MAX] = '\0';
	assert_int_equal(snap_path("/a/b", owner, out, sizeof(out)), 0);
	owner[SNAP_OWNER_MAX] = 'x';
	owner[SNAP_OWNER_MAX + 1] = '\0';
	assert_int_equal(snap_path("/a/b", owner, out, sizeof(out)), -EINVAL);
	/* The clone's name must fit in a directory entry, the path in out. */
	memset(name, 'n', 250);
	name[250] = '\0';
	assert_int_equal(snap_path(name, "o", out, sizeof(out)), -ENAMETOOLONG);
	assert_int_equal(snap_path("/vm/disk", "o", out, 10), -ENAMETOOLONG);
}

/* Can FICLONE clone a file in @dir at all? */
static bool dir_reflinks(const char *dir)
{
	char a[512], b[512];
	int fa, fb;
	bool ok;

	snprintf(a, sizeof(a), "%s/probe-a", dir);
	snprintf(b, sizeof(b), "%s/probe-b", dir);
	make_disk(a, 4096, 1);
	fa = open(a, O_RDONLY | O_CLOEXEC);
	fb = open(b, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	assert_true(fa >= 0 && fb >= 0);
	ok = ioctl(fb, FICLONE, fa) == 0;
	close(fa);
	close(fb);
	unlink(a);
	unlink(b);
	return ok;
}

static void test_no_reflink(void **state)
{
	char src[2][512], err[512];
	const char *srcs[2];
	struct snap_set set;
	int ret;

	(void)state;
	if (tmp_reflinks) {
		print_message(
			"SKIP: %s can clone files (XFS or btrfs), so the fallback is not tested there\n",
			tmpdir);
		skip();
	}
	snprintf(src[0], sizeof(src[0]), "%s/a.vhdx", tmpdir);
	snprintf(src[1], sizeof(src[1]), "%s/b.raw", tmpdir);
	make_disk(src[0], 8192, 1);
	make_disk(src[1], 8192, 2);
	srcs[0] = src[0];
	srcs[1] = src[1];

	/* auto: the live files, each with a reason a person can read. */
	assert_int_equal(snap_take(&set, srcs, 2, SNAP_AUTO, "job-1", false,
				   err, sizeof(err)),
			 0);
	assert_int_equal(set.n, 2);
	for (unsigned i = 0; i < 2; i++) {
		assert_string_equal(set.disks[i].src, src[i]);
		assert_null(set.disks[i].clone);
		assert_int_equal(set.disks[i].mode, SNAP_NONE);
		assert_false(set.disks[i].blockdev);
		assert_true(strlen(set.disks[i].note) > 0);
		print_message("auto fell back: %s\n", set.disks[i].note);
	}
	assert_int_equal(set.taken, 0);
	assert_int_equal(count_clones(tmpdir), 0);
	snap_release(&set);

	/* reflink: an error naming the disk, and no clone left behind. */
	ret = snap_take(&set, srcs, 2, SNAP_REFLINK, "job-1", false, err,
			sizeof(err));
	assert_true(ret < 0);
	print_message("reflink refused: %s\n", err);
	assert_non_null(strstr(err, src[0]));
	assert_null(strchr(err, '\n'));
	assert_int_equal(count_clones(tmpdir), 0);
	snap_release(&set);

	/* none: nothing to do, nothing to say. */
	assert_int_equal(snap_take(&set, srcs, 2, SNAP_NONE, "job-1", false,
				   err, sizeof(err)),
			 0);
	assert_null(set.disks[0].clone);
	assert_string_equal(set.disks[0].note, "");
	snap_release(&set);
	unlink(src[0]);
	unlink(src[1]);
}

static void test_missing_source(void **state)
{
	char src[512], err[512];
	const char *srcs[1] = { src };
	struct snap_set set;

	(void)state;
	snprintf(src, sizeof(src), "%s/missing.vhdx", tmpdir);
	assert_int_equal(snap_take(&set, srcs, 1, SNAP_AUTO, "job-1", false,
				   err, sizeof(err)),
			 -ENOENT);
	assert_non_null(strstr(err, src));
	snap_release(&set);
	/* A zeroed set can be released too. */
	memset(&set, 0, sizeof(set));
	snap_release(&set);
	assert_int_equal(snap_take(&set, srcs, 1, SNAP_AUTO, "bad.owner", false,
				   err, sizeof(err)),
			 -EINVAL);
	snap_release(&set);
}

/* The first block device we can open read-only, or NULL. */
static const char *find_blockdev(void)
{
	static const char *const cand[] = { "/dev/vda", "/dev/sda",
					    "/dev/nvme0n1", "/dev/xvda",
					    "/dev/loop0" };
	struct stat st;
	unsigned i;
	int fd;

	for (i = 0; i < sizeof(cand) / sizeof(cand[0]); i++) {
		if (stat(cand[i], &st) || !S_ISBLK(st.st_mode))
			continue;
		fd = open(cand[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		close(fd);
		return cand[i];
	}
	return NULL;
}

static void test_blockdev(void **state)
{
	const char *dev = find_blockdev();
	struct snap_set set;
	char err[512];

	(void)state;
	if (!dev) {
		print_message("SKIP: no block device can be opened here\n");
		skip();
	}
	assert_int_equal(snap_take(&set, &dev, 1, SNAP_REFLINK, "job-1", false,
				   err, sizeof(err)),
			 -EOPNOTSUPP);
	assert_non_null(strstr(err, dev));
	assert_non_null(strstr(err, "block device"));
	snap_release(&set);

	assert_int_equal(snap_take(&set, &dev, 1, SNAP_AUTO, "job-1", false,
				   err, sizeof(err)),
			 0);
	assert_true(set.disks[0].blockdev);
	assert_null(set.disks[0].clone);
	assert_int_equal(set.disks[0].mode, SNAP_NONE);
	assert_string_equal(set.disks[0].note, "a block device");
	snap_release(&set);
}

/* --- On XFS with reflink --------------------------------------------- */

static void need_xfs(void)
{
	if (!xfs_mnt[0]) {
		print_message("SKIP: no XFS with reflink to clone on: %s\n",
			      xfs_why);
		skip();
	}
}

static void pwrite_at(const char *path, off_t off, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, s, strlen(s), off), (ssize_t)strlen(s));
	assert_int_equal(close(fd), 0);
}

static void test_xfs_clone(void **state)
{
	char src[2][600], copy[2][600], path[700], err[512];
	const char *srcs[2];
	struct snap_set set;
	struct stat st;
	int64_t taken;
	unsigned i;

	(void)state;
	need_xfs();
	for (i = 0; i < 2; i++) {
		snprintf(src[i], sizeof(src[i]), "%s/disk%u.vhdx", xfs_mnt, i);
		snprintf(copy[i], sizeof(copy[i]), "%s/copy%u", tmpdir, i);
		make_disk(src[i], 1 << 20, i + 7);
		make_disk(copy[i], 1 << 20, i + 7);
		srcs[i] = src[i];
	}
	assert_int_equal(snap_take(&set, srcs, 2, SNAP_REFLINK, "job-7", false,
				   err, sizeof(err)),
			 0);
	assert_true(set.taken > 0);
	for (i = 0; i < 2; i++) {
		assert_int_equal(snap_path(src[i], "job-7", path, sizeof(path)),
				 0);
		assert_string_equal(set.disks[i].clone, path);
		assert_int_equal(set.disks[i].mode, SNAP_REFLINK);
		assert_false(set.disks[i].reused);
		assert_int_equal(lstat(path, &st), 0);
		assert_true(S_ISREG(st.st_mode));
		/* 0400: whole and durable, so a restarted job may reuse it */
		assert_int_equal(st.st_mode & 07777, 0400);
		assert_true(same_content(path, copy[i]));
		/* The VM writes on: the clone keeps the moment. */
		pwrite_at(src[i], 4096, "written after the snapshot");
		assert_false(same_content(src[i], copy[i]));
		assert_true(same_content(path, copy[i]));
	}
	taken = set.taken;

	/* A restarted job keeps its clones: same data, same time. */
	snap_forget(&set);
	assert_int_equal(count_clones(xfs_mnt), 2);
	assert_int_equal(snap_take(&set, srcs, 2, SNAP_REFLINK, "job-7", true,
				   err, sizeof(err)),
			 0);
	for (i = 0; i < 2; i++) {
		assert_true(set.disks[i].reused);
		assert_true(same_content(set.disks[i].clone, copy[i]));
	}
	assert_true(set.taken > 0 && set.taken <= taken);
	snap_forget(&set);

	/* The VM's disk grew meanwhile: the clones are still that moment. */
	pwrite_at(src[0], (1 << 20) + 8192, "a new block");
	assert_int_equal(snap_take(&set, srcs, 2, SNAP_REFLINK, "job-7", true,
				   err, sizeof(err)),
			 0);
	assert_true(set.disks[0].reused && set.disks[1].reused);
	assert_true(same_content(set.disks[0].clone, copy[0]));
	snap_forget(&set);

	/* A clone cut short (never marked complete) is not one to trust:
	 * both are made anew, from the disks as they are now. */
	assert_int_equal(snap_path(src[0], "job-7", path, sizeof(path)), 0);
	assert_int_equal(chmod(path, 0600), 0);
	assert_int_equal(snap_take(&set, srcs, 2, SNAP_REFLINK, "job-7", true,
				   err, sizeof(err)),
			 0);
	for (i = 0; i < 2; i++) {
		assert_false(set.disks[i].reused);
		assert_true(same_content(set.disks[i].clone, src[i]));
	}
	snap_forget(&set);

	/* One clone gone: not one moment any more, so both are made anew. */
	assert_int_equal(snap_path(src[1], "job-7", path, sizeof(path)), 0);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(snap_take(&set, srcs, 2, SNAP_REFLINK, "job-7", true,
				   err, sizeof(err)),
			 0);
	for (i = 0; i < 2; i++) {
		assert_false(set.disks[i].reused);
		assert_true(same_content(set.disks[i].clone, src[i]));
	}
	/* Without reuse an old clone is replaced too. */
	snap_forget(&set);
	pwrite_at(src[0], 0, "newer still");
	assert_int_equal(snap_take(&set, srcs, 2, SNAP_AUTO, "job-7", false,
				   err, sizeof(err)),
			 0);
	assert_int_equal(set.disks[0].mode, SNAP_REFLINK);
	assert_string_equal(set.disks[0].note, "");
	assert_true(same_content(set.disks[0].clone, src[0]));

	/* Release removes the clones and nothing else. */
	snap_release(&set);
	assert_int_equal(count_clones(xfs_mnt), 0);
	for (i = 0; i < 2; i++) {
		assert_true(exists(src[i]));
		unlink(src[i]);
		unlink(copy[i]);
	}
}

/* A set on XFS with and XFS without reflink: reflink fails and takes back
 * the clone it had made of the first disk; auto keeps that clone and says
 * why the second has none. */
static void test_xfs_failure_cleans_up(void **state)
{
	char src[2][600], err[512];
	const char *srcs[2];
	struct snap_set set;
	int fds;

	(void)state;
	need_xfs();
	snprintf(src[0], sizeof(src[0]), "%s/good.vhdx", xfs_mnt);
	snprintf(src[1], sizeof(src[1]), "%s/bad.vhdx", xfs0_mnt);
	make_disk(src[0], 65536, 3);
	make_disk(src[1], 65536, 4);
	srcs[0] = src[0];
	srcs[1] = src[1];
	fds = open_fds();
	assert_int_equal(snap_take(&set, srcs, 2, SNAP_REFLINK, "job-9", false,
				   err, sizeof(err)),
			 -EOPNOTSUPP);
	print_message("reflink refused: %s\n", err);
	assert_non_null(strstr(err, src[1]));
	assert_non_null(strstr(err, "XFS without reflink"));
	assert_int_equal(count_clones(xfs_mnt), 0);
	assert_int_equal(count_clones(xfs0_mnt), 0);
	snap_release(&set);

	assert_int_equal(snap_take(&set, srcs, 2, SNAP_AUTO, "job-9", false,
				   err, sizeof(err)),
			 0);
	assert_int_equal(set.disks[0].mode, SNAP_REFLINK);
	assert_non_null(set.disks[0].clone);
	assert_string_equal(set.disks[0].note, "");
	assert_int_equal(set.disks[1].mode, SNAP_NONE);
	assert_null(set.disks[1].clone);
	assert_non_null(strstr(set.disks[1].note, "XFS without reflink"));
	assert_int_equal(count_clones(xfs_mnt), 1);
	assert_int_equal(count_clones(xfs0_mnt), 0);
	snap_release(&set);
	assert_int_equal(count_clones(xfs_mnt), 0);
	assert_int_equal(open_fds(), fds);
	unlink(src[0]);
	unlink(src[1]);
}

static bool keep_wanted(void *ctx, const char *owner)
{
	return !strcmp(owner, (const char *)ctx);
}

static void test_xfs_sweep(void **state)
{
	char src[600], other[700], odd[700], err[512];
	const char *srcs[1] = { src };
	struct snap_set a, b;
	unsigned removed = 99;

	(void)state;
	need_xfs();
	snprintf(src, sizeof(src), "%s/vm.vhdx", xfs_mnt);
	make_disk(src, 65536, 5);
	assert_int_equal(snap_take(&a, srcs, 1, SNAP_REFLINK, "wanted", false,
				   err, sizeof(err)),
			 0);
	assert_int_equal(snap_take(&b, srcs, 1, SNAP_REFLINK, "gone", false,
				   err, sizeof(err)),
			 0);
	/* Names with the prefix that are not clones of ours stay. */
	snprintf(other, sizeof(other), "%s/%snoowner", xfs_mnt, SNAP_PREFIX);
	write_file(other, "x", 1);
	snprintf(odd, sizeof(odd), "%s/%sgone2.link", xfs_mnt, SNAP_PREFIX);
	assert_int_equal(symlink(src, odd), 0);

	assert_int_equal(
		snap_sweep_dir(xfs_mnt, keep_wanted, "wanted", &removed), 0);
	assert_int_equal(removed, 1);
	assert_true(exists(a.disks[0].clone));
	assert_false(exists(b.disks[0].clone));
	assert_true(exists(other));
	assert_true(exists(odd));
	assert_true(exists(src));
	snap_forget(&b);
	snprintf(other, sizeof(other), "%s", a.disks[0].clone);
	snap_release(&a);
	assert_false(exists(other));
	snprintf(other, sizeof(other), "%s/%snoowner", xfs_mnt, SNAP_PREFIX);

	assert_int_equal(
		snap_sweep_dir("/nonexistent-hvresync", keep_wanted, "x", NULL),
		-ENOENT);
	unlink(other);
	unlink(odd);
	unlink(src);
}

static void run(const char *fmt, ...)
{
	char cmd[1200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (system(cmd))
		snprintf(xfs_why, sizeof(xfs_why), "\"%.200s\" failed", cmd);
}

/* XFS in a file in tmpdir, made with -m reflink=@reflink and
 * loop-mounted at tmpdir/@name; @out gets the mount point. */
static void mount_one(const char *name, int reflink, char *out, size_t len)
{
	char img[128], mnt[128];

	snprintf(img, sizeof(img), "%s/%s.img", tmpdir, name);
	snprintf(mnt, sizeof(mnt), "%s/%s", tmpdir, name);
	run("truncate -s 320M '%s' && mkfs.xfs -q -m reflink=%d '%s' >/dev/null 2>&1",
	    img, reflink, img);
	if (xfs_why[0])
		return;
	if (mkdir(mnt, 0755)) {
		snprintf(xfs_why, sizeof(xfs_why), "mkdir %s: %s", mnt,
			 strerror(errno));
		return;
	}
	run("mount -o loop '%s' '%s' 2>/dev/null", img, mnt);
	if (xfs_why[0])
		return;
	snprintf(out, len, "%s", mnt);
}

static void mount_xfs(void)
{
	if (geteuid() != 0) {
		snprintf(xfs_why, sizeof(xfs_why),
			 "not root, cannot loop-mount");
		return;
	}
	if (system("command -v mkfs.xfs >/dev/null 2>&1")) {
		snprintf(xfs_why, sizeof(xfs_why), "mkfs.xfs is not installed");
		return;
	}
	xfs_why[0] = '\0';
	mount_one("xfs0", 0, xfs0_mnt, sizeof(xfs0_mnt));
	if (!xfs_why[0])
		mount_one("xfs", 1, xfs_mnt, sizeof(xfs_mnt));
}

static int setup(void **state)
{
	(void)state;
	if (!mkdtemp(tmpdir))
		return -1;
	tmp_reflinks = dir_reflinks(tmpdir);
	mount_xfs();
	return 0;
}

static int unmount(const char *mnt)
{
	char cmd[2000];

	if (!mnt[0])
		return 0;
	/* udev may still be probing a new loop device: try again first. */
	snprintf(
		cmd, sizeof(cmd),
		"umount '%s' 2>/dev/null || { sleep 1; umount '%s'; } || umount -l '%s'",
		mnt, mnt, mnt);
	return system(cmd) ? -1 : 0;
}

static int teardown(void **state)
{
	char cmd[1200];

	(void)state;
	if (unmount(xfs_mnt) || unmount(xfs0_mnt))
		return -1;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mode_words),
		cmocka_unit_test(test_path),
		cmocka_unit_test(test_no_reflink),
		cmocka_unit_test(test_missing_source),
		cmocka_unit_test(test_blockdev),
		cmocka_unit_test(test_xfs_clone),
		cmocka_unit_test(test_xfs_failure_cleans_up),
		cmocka_unit_test(test_xfs_sweep),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
