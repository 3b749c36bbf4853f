/* SPDX-License-Identifier: MIT */
/*
 * read.c - the raw view's read path: reads spliced from the image files,
 * and holes reported through SEEK_DATA/SEEK_HOLE.
 *
 * The read handler walks the extent map over the request into a
 * fuse_bufvec (file runs as FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK buffers on
 * the image's descriptor, zero runs on a static zero buffer, replayed
 * sectors in place), stages the file runs in a per-thread pipe so read
 * errors are seen (see stage_data()), and replies with fuse_reply_data(),
 * which splices the pages on to the kernel.  Per read only the bufvec is
 * allocated.
 *
 * A read running beside a write of a writable view sees old or new data:
 * the writer publishes each BAT entry only after its data, and every read
 * maps its range afresh, never reusing a run across requests.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuse/internal.h"

/*
 * Zero runs point here.  It is never written, so it stays in .bss and
 * every page of it maps the kernel's shared zero page.
 */
static char zero_buf[VIEW_MAX_READ] __attribute__((aligned(4096)));
/* The max_read this process mounts with; see view_pick_max_read(). */
unsigned view_max_read = VIEW_MAX_READ;

/*
 * The map must hand out runs that start where the last one ended and are
 * not empty; anything else would loop or misplace data.
 */
static int run_ok(uint64_t expect, const struct vhdx_extent *ext)
{
	return ext->len && ext->off == expect ? 0 : -EIO;
}

/* Room for CAP buffers. */
static size_t bufvec_bytes(size_t cap)
{
	return sizeof(struct fuse_bufvec) + (cap - 1) * sizeof(struct fuse_buf);
}

static int bufvec_push(struct fuse_bufvec **bvp, size_t *cap,
		       const struct fuse_buf *b)
{
	struct fuse_bufvec *bv = *bvp;

	if (bv->count == *cap) {
		size_t ncap = *cap * 2;
		struct fuse_bufvec *nbv = realloc(bv, bufvec_bytes(ncap));

		if (!nbv)
			return -ENOMEM;
		*bvp = bv = nbv;
		*cap = ncap;
	}
	bv->buf[bv->count++] = *b;
	return 0;
}

/* --- staging data runs ---------------------------------------------- */

/*
 * libfuse splices FD buffers into /dev/fuse itself, and when that splice
 * fails (a failing disk) or comes up short (a truncated image) it answers
 * the kernel on its own: with the error, or with a short read that the
 * kernel takes for end of file, zero-filling the rest.  Either way we would
 * never know.  So each thread first splices the request's data runs into a
 * pipe of its own: page references move, no byte is copied, and every
 * error and short count is ours to log.  The reply's buffers then name that
 * pipe, and libfuse moves its pages on into /dev/fuse.
 */
struct stage_pipe {
	int rd, wr;
	size_t size;
};

static pthread_key_t stage_key;
static pthread_once_t stage_once = PTHREAD_ONCE_INIT;
static bool stage_key_ok;

static void stage_free(void *p)
{
	struct stage_pipe *sp = p;

	close(sp->rd);
	close(sp->wr);
	free(sp);
}

static void stage_key_init(void)
{
	stage_key_ok = pthread_key_create(&stage_key, stage_free) == 0;
}

/* This thread's pipe, made on its first read; NULL if none can be had. */
static struct stage_pipe *stage_get(void)
{
	struct stage_pipe *sp;
	int fds[2], size;

	pthread_once(&stage_once, stage_key_init);
	if (!stage_key_ok)
		return NULL;
	sp = pthread_getspecific(stage_key);
	if (sp)
		return sp;
	sp = malloc(sizeof(*sp));
	if (!sp)
		return NULL;
	if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
		free(sp);
		return NULL;
	}
	sp->rd = fds[0];
	sp->wr = fds[1];
	size = fcntl(sp->rd, F_SETPIPE_SZ, view_max_read + STAGE_SLACK);
	if (size < 0)
		size = fcntl(sp->rd, F_GETPIPE_SZ);
	sp->size = size > 0 ? (size_t)size : 0;
	if (pthread_setspecific(stage_key, sp)) {
		stage_free(sp);
		return NULL;
	}
	return sp;
}

/* Throw the pipe away with whatever it still holds. */
static void stage_drop(struct stage_pipe *sp)
{
	pthread_setspecific(stage_key, NULL);
	stage_free(sp);
}

/*
 * Splice every FD buffer of BV into SP and point the buffers at it.
 * Returns 0 when staged, 1 when the pipe cannot take them (BV untouched:
 * libfuse splices from the image itself), or a negative errno with *what
 * and *bad_off (virtual offset of the failing run) set.
 */
static int stage_data(struct fuse_bufvec *bv, struct stage_pipe *sp,
		      uint64_t off, const char **what, uint64_t *bad_off)
{
	const size_t page = 4096;
	size_t i, need = 0, left;
	uint64_t voff = off;
	loff_t pos;
	ssize_t n;

	/* A run not starting on a page takes one more pipe slot. */
	for (i = 0; i < bv->count; i++)
		if (bv->buf[i].flags & FUSE_BUF_IS_FD)
			need += bv->buf[i].size + page;
	if (need > sp->size)
		return 1;

	for (i = 0; i < bv->count; i++) {
		struct fuse_buf *b = &bv->buf[i];

		if (!(b->flags & FUSE_BUF_IS_FD)) {
			voff += b->size;
			continue;
		}
		pos = b->pos;
		left = b->size;
		while (left) {
			n = splice(b->fd, &pos, sp->wr, NULL, left,
				   SPLICE_F_MOVE);
			if (n > 0) {
				left -= (size_t)n;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			*bad_off = voff + (b->size - left);
			if (n == 0) {
				*what = "the image file ends before data its "
					"BAT points to";
				return -EIO;
			}
			if (errno == EAGAIN || errno == EINVAL)
				return 1; /* full after all, or no splice */
			*what = "reading the image file failed";
			return -errno;
		}
		voff += b->size;
	}
	for (i = 0; i < bv->count; i++) {
		struct fuse_buf *b = &bv->buf[i];

		if (b->flags & FUSE_BUF_IS_FD) {
			b->flags = FUSE_BUF_IS_FD;
			b->fd = sp->rd;
			b->pos = 0;
		}
	}
	return 0;
}

/*
 * Without a staging pipe a run reaching past the end of its file would
 * splice short unnoticed: check the file sizes instead (once per file and
 * request).  A file that fails later still gets EIO, but is not logged.
 */
static int check_sizes(const struct fuse_bufvec *bv, uint64_t off,
		       const char **what, uint64_t *bad_off)
{
	int last_fd = -1;
	off_t size = 0;
	struct stat st;
	size_t i;

	for (i = 0; i < bv->count; off += bv->buf[i].size, i++) {
		const struct fuse_buf *b = &bv->buf[i];

		if (!(b->flags & FUSE_BUF_IS_FD))
			continue;
		if (b->fd != last_fd) {
			if (fstat(b->fd, &st) < 0) {
				*what = "cannot stat the image file";
				*bad_off = off;
				return -errno;
			}
			last_fd = b->fd;
			size = st.st_size;
		}
		if (b->pos + (off_t)b->size > size) {
			*what = "the image file ends before data its BAT "
				"points to";
			*bad_off = off;
			return -EIO;
		}
	}
	return 0;
}

static int add_zero(struct fuse_bufvec **bvp, size_t *cap, uint64_t len)
{
	struct fuse_bufvec *bv = *bvp;
	struct fuse_buf *last;
	size_t n;
	int ret;

	while (len) {
		last = bv->count ? &bv->buf[bv->count - 1] : NULL;
		if (last && !(last->flags & FUSE_BUF_IS_FD) &&
		    last->mem == zero_buf && last->size < sizeof(zero_buf)) {
			n = sizeof(zero_buf) - last->size;
			if (n > len)
				n = len;
			last->size += n;
			len -= n;
			continue;
		}
		n = len < sizeof(zero_buf) ? len : sizeof(zero_buf);
		ret = bufvec_push(bvp, cap,
				  &(struct fuse_buf){ .size = n,
						      .mem = zero_buf,
						      .fd = -1 });
		if (ret)
			return ret;
		bv = *bvp;
		len -= n;
	}
	return 0;
}

static int add_extent(struct fuse_bufvec **bvp, size_t *cap,
		      const struct vhdx_extent *ext, const char **what)
{
	struct fuse_bufvec *bv = *bvp;
	struct fuse_buf *last = bv->count ? &bv->buf[bv->count - 1] : NULL;

	switch (ext->kind) {
	case VHDX_EXT_DATA:
		if (last && (last->flags & FUSE_BUF_IS_FD) &&
		    last->fd == ext->fd &&
		    (uint64_t)last->pos + last->size == ext->file_off) {
			last->size += ext->len;
			return 0;
		}
		return bufvec_push(
			bvp, cap,
			&(struct fuse_buf){ .size = ext->len,
					    .flags = FUSE_BUF_IS_FD |
						     FUSE_BUF_FD_SEEK,
					    .fd = ext->fd,
					    .pos = (off_t)ext->file_off });
	case VHDX_EXT_MEM:
		/* libfuse only reads memory buffers, it never writes them. */
		return bufvec_push(bvp, cap,
				   &(struct fuse_buf){ .size = ext->len,
						       .mem = (void *)ext->mem,
						       .fd = -1 });
	case VHDX_EXT_ZERO:
	case VHDX_EXT_UNALLOC:
		return add_zero(bvp, cap, ext->len);
	case VHDX_EXT_PARENT:
	default:
		*what = "the extent map returned an unexpected run";
		return -EIO;
	}
}

static bool has_fd(const struct fuse_bufvec *bv)
{
	size_t i;

	for (i = 0; i < bv->count; i++)
		if (bv->buf[i].flags & FUSE_BUF_IS_FD)
			return true;
	return false;
}

/*
 * Describe [OFF, END) of F as buffers in *BVP, one per run of the extent
 * map (merged where they touch).  Returns 0, or a negative errno with
 * *WHAT set unless the map itself failed.
 */
static int map_request(struct view_file *f, uint64_t off, uint64_t end,
		       struct fuse_bufvec **bvp, const char **what)
{
	struct vhdx_map_iter it;
	struct vhdx_extent ext;
	size_t cap = 4;
	uint64_t pos;
	int ret;

	*bvp = malloc(bufvec_bytes(cap));
	if (!*bvp)
		return -ENOMEM;
	memset(*bvp, 0, sizeof(**bvp));

	vhdx_map_iter_init(&it, f->img, off, end - off, 0);
	pos = it.pos;
	while ((ret = vhdx_map_next(&it, &ext)) > 0) {
		ret = run_ok(pos, &ext);
		if (ret) {
			*what = "the extent map returned a malformed run";
			break;
		}
		ret = add_extent(bvp, &cap, &ext, what);
		if (ret)
			break;
		pos = it.pos;
	}
	return ret;
}

/*
 * Make sure every file run of BV reaches the kernel in full: staged in
 * this thread's pipe (returned in *SPP), or, when it cannot be, checked
 * against the file sizes.  Returns 0, or a negative errno with *WHAT and
 * *BAD set.
 */
static int stage_request(struct fuse_bufvec *bv, uint64_t off,
			 struct stage_pipe **spp, const char **what,
			 uint64_t *bad)
{
	struct stage_pipe *sp;
	int staged = 1;

	*spp = NULL;
	if (!has_fd(bv))
		return 0;
	sp = stage_get();
	if (sp) {
		staged = stage_data(bv, sp, off, what, bad);
		if (staged) {
			/* Nothing of it may reach the next reply. */
			stage_drop(sp);
			sp = NULL;
		}
		if (staged < 0)
			return staged;
		*spp = sp;
	}
	if (staged > 0)
		return check_sizes(bv, off, what, bad);
	return 0;
}

void view_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	       struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f = view_ino_file(v, ino);
	const char *what = "the extent map failed";
	struct stage_pipe *sp = NULL;
	struct fuse_bufvec *bv = NULL;
	uint64_t end, bad;
	int ret, n;

	(void)fi;
	if (!f) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if ((uint64_t)off >= f->size || !size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	end = f->size - (uint64_t)off < size ? f->size : (uint64_t)off + size;
	bad = (uint64_t)off;

	ret = map_request(f, (uint64_t)off, end, &bv, &what);
	if (ret == 0)
		ret = stage_request(bv, (uint64_t)off, &sp, &what, &bad);
	if (ret < 0) {
		free(bv);
		if (ret == -ENOMEM) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		view_report_error(f, "read", bad, ret, what);
		fuse_reply_err(req, EIO);
		return;
	}
	/*
	 * Splicing pays off for file data only.  A reply made of memory
	 * alone (zeros, replayed sectors) would be copied into libfuse's pipe
	 * and out again; without splice a single memory buffer goes straight
	 * to writev().
	 */
	fuse_reply_data(req, bv,
			has_fd(bv) ? FUSE_BUF_SPLICE_MOVE : FUSE_BUF_NO_SPLICE);
	free(bv);
	/* libfuse drains the pipe unless it failed half way. */
	if (sp && (ioctl(sp->rd, FIONREAD, &n) < 0 || n > 0))
		stage_drop(sp);
}

static bool is_data(enum vhdx_ext_kind k)
{
	return k == VHDX_EXT_DATA || k == VHDX_EXT_MEM;
}

void view_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f = view_ino_file(v, ino);
	struct vhdx_map_iter it;
	struct vhdx_extent ext;
	bool want_data;
	uint64_t pos;
	int ret;

	(void)fi;
	if (!f) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (whence != SEEK_DATA && whence != SEEK_HOLE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (off < 0 || (uint64_t)off >= f->size) {
		fuse_reply_err(req, ENXIO);
		return;
	}
	want_data = whence == SEEK_DATA;
	vhdx_map_iter_init(&it, f->img, (uint64_t)off, f->size - (uint64_t)off,
			   0);
	pos = it.pos;
	while ((ret = vhdx_map_next(&it, &ext)) > 0) {
		ret = run_ok(pos, &ext);
		if (ret)
			break;
		if (is_data(ext.kind) == want_data) {
			fuse_reply_lseek(req, ext.off > (uint64_t)off
						      ? (off_t)ext.off
						      : off);
			return;
		}
		pos = it.pos;
	}
	if (ret < 0) {
		view_report_error(f, "SEEK_DATA/SEEK_HOLE", (uint64_t)off, ret,
				  "the extent map failed");
		fuse_reply_err(req, EIO);
		return;
	}
	/* The end of the file is a hole; there is no data past the last. */
	if (want_data)
		fuse_reply_err(req, ENXIO);
	else
		fuse_reply_lseek(req, (off_t)f->size);
}

/*
 * libfuse splices a reply only when its per-thread pipe holds the data, one
 * page per buffer and two more; otherwise it reads the data into a freshly
 * allocated buffer and copies it, which costs about half the throughput.
 * Growing a pipe past /proc/sys/fs/pipe-max-size (1 MiB by default) needs
 * CAP_SYS_RESOURCE, so without it reads are kept a few pages under that
 * size.  The slack covers replies of up to five buffers.
 */
unsigned view_pick_max_read(void)
{
	const long page = sysconf(_SC_PAGESIZE);
	const unsigned slack = STAGE_SLACK;
	unsigned long pmax = 0;
	int pfd[2], ok = 0;
	char buf[32];
	ssize_t n;
	int fd;

	if (pipe2(pfd, O_CLOEXEC) == 0) {
		ok = fcntl(pfd[0], F_SETPIPE_SZ, VIEW_MAX_READ + slack) >= 0;
		close(pfd[0]);
		close(pfd[1]);
	}
	if (ok)
		return VIEW_MAX_READ;
	fd = open("/proc/sys/fs/pipe-max-size", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf) - 1);
		if (n > 0) {
			buf[n] = '\0';
			pmax = strtoul(buf, NULL, 10);
		}
		close(fd);
	}
	/* Too small a pipe to be worth it: keep big reads and copy. */
	if (pmax < (VIEW_MAX_READ / 4) + slack)
		return VIEW_MAX_READ;
	pmax = (pmax - slack) & ~((unsigned long)page - 1);
	return pmax < VIEW_MAX_READ ? (unsigned)pmax : VIEW_MAX_READ;
}
