/* SPDX-License-Identifier: MIT */
/*
 * failfs.c - test helper: a one-file FUSE filesystem that serves the bytes
 * of SOURCE_FILE as MOUNTPOINT/disk and injects read faults, so tests can
 * see how readers of an image cope with I/O errors and short reads.
 *
 * usage: failfs [-f] [--eio-at OFF]... [--short] [--eintr] [--eagain]
 *               [--max-read BYTES] SOURCE_FILE MOUNTPOINT
 *
 *   --eio-at OFF  a read request whose range holds byte OFF fails with EIO
 *                 (repeat the option for several offsets; K, M, G work)
 *   --short       each read request returns at most half of what it asked
 *                 for (at least one byte), with the right bytes
 *   --eintr       every other read request (the 1st, 3rd, ...) fails with
 *                 EINTR; the next one succeeds
 *   --eagain      the same with EAGAIN; given both, the failing requests
 *                 alternate between EINTR and EAGAIN, starting with EINTR
 *   --max-read N  ask the kernel for requests of at most N bytes (mount
 *                 option max_read), so one large read(2) becomes several
 *                 requests and a fault hits only part of it
 *   -f            stay in the foreground
 *
 * Without -f failfs returns once the mount is in place and serves it in
 * the background; `fusermount3 -u MOUNTPOINT` ends it.  It mounts with
 * auto_unmount, so a killed failfs does not leave a dead mount behind.
 *
 * The file is opened in direct-I/O mode: nothing is cached and every
 * read(2) of MOUNTPOINT/disk reaches failfs at the caller's offset, split
 * by the kernel into requests of at most max_read bytes (1 MiB with
 * libfuse 3.14 by default; a buffer that is not page aligned makes the
 * first request a little shorter).  What the caller sees:
 *   - EIO, EINTR and EAGAIN come back from read(2)/pread(2) unchanged.
 *     Many callers hide EINTR by retrying (coreutils' dd and cat, Python's
 *     os.read); an io_uring read gets the errno negated in cqe->res.
 *   - When one request of a split read(2) fails, the caller gets the
 *     bytes of the requests before it as a short read, or the error when
 *     the first request failed.
 *   - A short answer is a short read(2): fewer bytes than asked, never
 *     zeros in their place; the bytes of later requests are dropped.
 *     Loops that read until EOF (cat, dd iflag=fullblock) still get every
 *     byte.
 * Requests are served one at a time, so "every other read" counts in the
 * order the kernel sends them.
 */
#define FUSE_USE_VERSION 35

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_NAME "disk"
#define MAX_EIO 64

static struct {
	int fd;
	uint64_t eio_at[MAX_EIO];
	unsigned n_eio;
	bool short_reads;
	bool eintr;
	bool eagain;
	unsigned max_read;	/* 0: libfuse's default */
	unsigned long reads;	/* read requests seen */
	unsigned long failures; /* EINTR/EAGAIN answers given */
} ff = { .fd = -1 };

static const char usage[] =
	"usage: failfs [-f] [--eio-at OFF]... [--short] [--eintr] [--eagain]\n"
	"              [--max-read BYTES] SOURCE_FILE MOUNTPOINT\n";

static int parse_off(const char *s, uint64_t *out)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	switch (*end) {
	case 'k':
	case 'K':
		v <<= 10;
		end++;
		break;
	case 'm':
	case 'M':
		v <<= 20;
		end++;
		break;
	case 'g':
	case 'G':
		v <<= 30;
		end++;
		break;
	}
	if (*end)
		return -EINVAL;
	*out = v;
	return 0;
}

static off_t source_size(void)
{
	/* SEEK_END works for regular files and block devices alike, and
	 * follows a source that grows or shrinks while mounted. */
	off_t n = lseek(ff.fd, 0, SEEK_END);

	return n < 0 ? 0 : n;
}

static void *ff_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	/* libfuse insists that init() repeats the max_read mount option. */
	if (ff.max_read)
		conn->max_read = ff.max_read;
	cfg->direct_io = 1;
	cfg->kernel_cache = 0;
	cfg->entry_timeout = 0;
	cfg->attr_timeout = 0;
	cfg->negative_timeout = 0;
	cfg->use_ino = 1;
	return NULL;
}

static int ff_getattr(const char *path, struct stat *st,
		      struct fuse_file_info *fi)
{
	memset(st, 0, sizeof(*st));
	if (!strcmp(path, "/")) {
		st->st_ino = 1;
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return 0;
	}
	if (strcmp(path, "/" FILE_NAME))
		return -ENOENT;
	st->st_ino = 2;
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = source_size();
	st->st_blksize = 4096;
	st->st_blocks = (st->st_size + 511) / 512;
	return 0;
}

static int ff_readdir(const char *path, void *buf, fuse_fill_dir_t fill,
		      off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags flags)
{
	if (strcmp(path, "/"))
		return -ENOENT;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	fill(buf, FILE_NAME, NULL, 0, 0);
	return 0;
}

static int ff_open(const char *path, struct fuse_file_info *fi)
{
	if (strcmp(path, "/" FILE_NAME))
		return -ENOENT;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	fi->direct_io = 1;
	fi->keep_cache = 0;
	return 0;
}

static int ff_read(const char *path, char *buf, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	size_t want = size, got = 0;
	unsigned i;

	ff.reads++;
	for (i = 0; i < ff.n_eio; i++)
		if (ff.eio_at[i] >= (uint64_t)off &&
		    ff.eio_at[i] - (uint64_t)off < size)
			return -EIO;
	if ((ff.eintr || ff.eagain) && ff.reads % 2 == 1) {
		bool intr = ff.eintr && (!ff.eagain || ff.failures % 2 == 0);

		ff.failures++;
		return intr ? -EINTR : -EAGAIN;
	}
	if (ff.short_reads && want > 1)
		want /= 2;
	while (got < want) {
		ssize_t n = pread(ff.fd, buf + got, want - got, off + got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return got ? (int)got : -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (int)got;
}

static const struct fuse_operations ff_ops = {
	.init = ff_init,
	.getattr = ff_getattr,
	.readdir = ff_readdir,
	.open = ff_open,
	.read = ff_read,
};

int main(int argc, char **argv)
{
	char opts[128] = "ro,auto_unmount,fsname=failfs,subtype=failfs";
	char *fargv[] = { argv[0], "-o", opts, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	const char *src = NULL, *mnt = NULL;
	char *absmnt = NULL;
	struct fuse_session *se;
	struct fuse *f = NULL;
	bool foreground = false;
	int i, ret = 1;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-f") || !strcmp(a, "--foreground")) {
			foreground = true;
		} else if (!strcmp(a, "--eio-at") && i + 1 < argc) {
			if (ff.n_eio == MAX_EIO ||
			    parse_off(argv[++i], &ff.eio_at[ff.n_eio])) {
				fprintf(stderr, "failfs: bad --eio-at '%s'\n",
					argv[i]);
				return 2;
			}
			ff.n_eio++;
		} else if (!strcmp(a, "--max-read") && i + 1 < argc) {
			uint64_t v;

			if (parse_off(argv[++i], &v) || v < 4096 ||
			    v > (1u << 30)) {
				fprintf(stderr, "failfs: bad --max-read '%s'\n",
					argv[i]);
				return 2;
			}
			ff.max_read = (unsigned)v;
			snprintf(opts + strlen(opts),
				 sizeof(opts) - strlen(opts), ",max_read=%u",
				 ff.max_read);
		} else if (!strcmp(a, "--short")) {
			ff.short_reads = true;
		} else if (!strcmp(a, "--eintr")) {
			ff.eintr = true;
		} else if (!strcmp(a, "--eagain")) {
			ff.eagain = true;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(usage, stdout);
			return 0;
		} else if (a[0] == '-' || (src && mnt)) {
			fputs(usage, stderr);
			return 2;
		} else if (!src) {
			src = a;
		} else {
			mnt = a;
		}
	}
	if (!src || !mnt) {
		fputs(usage, stderr);
		return 2;
	}
	/* auto_unmount's helper and the daemon (which moves to "/") both
	 * need the mountpoint as an absolute path. */
	absmnt = realpath(mnt, NULL);
	if (!absmnt) {
		fprintf(stderr, "failfs: %s: %s\n", mnt, strerror(errno));
		return 2;
	}
	ff.fd = open(src, O_RDONLY | O_CLOEXEC);
	if (ff.fd < 0) {
		fprintf(stderr, "failfs: %s: %s\n", src, strerror(errno));
		free(absmnt);
		return 2;
	}

	f = fuse_new(&args, &ff_ops, sizeof(ff_ops), NULL);
	if (!f) {
		fprintf(stderr, "failfs: cannot set up FUSE\n");
		goto out;
	}
	if (fuse_mount(f, absmnt)) {
		fprintf(stderr, "failfs: %s: cannot mount\n", mnt);
		goto out;
	}
	se = fuse_get_session(f);
	/* Returns in the parent only after the mount exists. */
	if (fuse_daemonize(foreground) || fuse_set_signal_handlers(se)) {
		fuse_unmount(f);
		goto out;
	}
	ret = fuse_loop(f) ? 1 : 0;
	fuse_remove_signal_handlers(se);
	fuse_unmount(f);
out:
	if (f)
		fuse_destroy(f);
	fuse_opt_free_args(&args);
	free(absmnt);
	close(ff.fd);
	return ret;
}
