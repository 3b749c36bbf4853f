/* SPDX-License-Identifier: MIT */
/*
 * view.c - the FUSE raw view of VHDX images (see view.h).
 *
 * Built on libfuse's low-level API: the high-level one free()s every memory
 * buffer of a read_buf reply, which rules out pointing zero runs at one
 * shared zero buffer and log-replayed sectors at the library's own memory.
 * The read handler walks the extent map over the request into a
 * fuse_bufvec (file runs as FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK buffers on
 * the image's descriptor, zero runs on a static zero buffer, replayed
 * sectors in place), stages the file runs in a per-thread pipe so read
 * errors are seen (see stage_data()), and replies with fuse_reply_data(),
 * which splices the pages on to the kernel.  Per read only the bufvec is
 * allocated.
 *
 * A writable view hands writes to vhdx_pwrite() and hole punching to
 * vhdx_write_zeroes(); the writer serialises them per image and publishes
 * each BAT entry only after its data, so a read running beside a write
 * sees old or new data.  Every read maps its range afresh, and never
 * reuses a run across requests.  Writable opens are direct I/O: with no
 * page cache there is nothing the kernel could serve stale after a write,
 * a punched hole or a block the writer turned into a ZERO block.
 */
#define FUSE_USE_VERSION 35

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "fuse/view.h"

/*
 * Largest request we ask the kernel for (libfuse offers max_pages 256);
 * pick_max_read() may settle for a little less.
 */
#define VIEW_MAX_READ (1u << 20)
/* Room a staging pipe keeps beyond max_read; see pick_max_read(). */
#define STAGE_SLACK (8 * 4096)
/*
 * Readahead window of our mount's bdi.  With the kernel's default of
 * 128 KiB a sequential reader gets 128 KiB requests one after the other;
 * a few MiB gets full-size requests that several threads serve at once.
 */
#define VIEW_READAHEAD_KB 8192
/* Asynchronous (readahead) requests the kernel may have in flight. */
#define VIEW_MAX_BACKGROUND 64
#define VIEW_IDLE_THREADS 16
/* Names never change while mounted; attributes carry the image's mtime. */
#define VIEW_ENTRY_TIMEOUT 3600.0
#define VIEW_ATTR_TIMEOUT 1.0

#define ROOT_INO FUSE_ROOT_ID
#define FIRST_FILE_INO (FUSE_ROOT_ID + 1)

struct view_file {
	char *name;
	char *path;
	struct vhdx_image *img;
	int fd; /* the image's own descriptor, for its mtime */
	uint64_t size;
	uint64_t alloc; /* bytes the image itself holds, for st_blocks */
	atomic_bool error_logged;
	atomic_bool write_error_logged;
};

struct view {
	struct view_file *files;
	unsigned count;
	struct fuse_session *se;
	char *mountpoint;
	bool mounted;
	uid_t uid;
	gid_t gid;
	struct timespec created;
	bool writable;
};

/*
 * Zero runs point here.  It is never written, so it stays in .bss and
 * every page of it maps the kernel's shared zero page.
 */
static char zero_buf[VIEW_MAX_READ] __attribute__((aligned(4096)));
/* The max_read this process mounts with; see pick_max_read(). */
static unsigned view_max_read = VIEW_MAX_READ;

/* --- logging ----------------------------------------------------------- */

static atomic_bool log_stderr = true;
/*
 * While set, libfuse's first message is kept here instead of logged, so a
 * failed mount is reported as one line.  Worker threads log too, hence the
 * lock.
 */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char *log_capture;
static size_t log_capture_len;

static void view_vlog(int prio, const char *fmt, va_list ap)
{
	char line[1024];

	vsnprintf(line, sizeof(line), fmt, ap);
	if (log_stderr)
		fprintf(stderr, "hvresync: %s\n", line);
	else
		syslog(prio, "%s", line);
}

void view_log(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	view_vlog(prio, fmt, ap);
	va_end(ap);
}

static void fuse_logger(enum fuse_log_level level, const char *fmt,
			va_list ap)
{
	char line[1024];
	char *p = line;
	size_t n;
	int prio;

	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == ' '))
		line[--n] = '\0';
	if (!strncmp(p, "fuse: ", 6))
		p += 6;
	if (!*p)
		return;
	pthread_mutex_lock(&log_lock);
	if (log_capture) {
		if (!log_capture[0])
			snprintf(log_capture, log_capture_len, "%s", p);
		pthread_mutex_unlock(&log_lock);
		return;
	}
	pthread_mutex_unlock(&log_lock);
	if (level >= FUSE_LOG_DEBUG)
		return;
	prio = level <= FUSE_LOG_ERR ? LOG_ERR : LOG_WARNING;
	view_log(prio, "fuse: %s", p);
}

static void capture_start(char *err, size_t errlen)
{
	if (err && errlen) {
		pthread_mutex_lock(&log_lock);
		err[0] = '\0';
		log_capture = err;
		log_capture_len = errlen;
		pthread_mutex_unlock(&log_lock);
	}
}

static void capture_stop(void)
{
	pthread_mutex_lock(&log_lock);
	log_capture = NULL;
	log_capture_len = 0;
	pthread_mutex_unlock(&log_lock);
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen || err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/*
 * One line per image: a failing disk or a truncated file would otherwise
 * log every read the kernel retries.
 */
static void report_error(struct view_file *f, const char *op, uint64_t off,
			 int err, const char *what)
{
	if (atomic_exchange(&f->error_logged, true))
		return;
	view_log(LOG_ERR,
		 "%s: %s at virtual offset %llu failed: %s (%s); returning "
		 "EIO, further errors on this image are not logged",
		 f->path, op, (unsigned long long)off, what, strerror(-err));
}

/*
 * The writer keeps its first failure and fails every later write and flush
 * of the image with it, so one line per image says it all.  A write past
 * the end is the caller's mistake and is not logged.
 */
static void report_write_error(struct view_file *f, const char *op,
			       uint64_t off, uint64_t len, int err)
{
	char where[96] = "";

	if (atomic_exchange(&f->write_error_logged, true))
		return;
	if (len)
		snprintf(where, sizeof(where),
			 " of %llu bytes at virtual offset %llu",
			 (unsigned long long)len, (unsigned long long)off);
	view_log(LOG_ERR,
		 "%s: %s%s failed: %s; the error is sticky: every later "
		 "write and flush of this image fails with it until it is "
		 "unmounted (reads still work; writes not yet flushed may be "
		 "lost)", f->path, op, where, strerror(-err));
}

/* --- helpers ----------------------------------------------------------- */

static struct view_file *ino_file(struct view *v, fuse_ino_t ino)
{
	if (ino < FIRST_FILE_INO || ino - FIRST_FILE_INO >= v->count)
		return NULL;
	return &v->files[ino - FIRST_FILE_INO];
}

static void file_stat(const struct view *v, const struct view_file *f,
		      struct stat *st)
{
	struct stat ist;

	memset(st, 0, sizeof(*st));
	st->st_ino = FIRST_FILE_INO + (fuse_ino_t)(f - v->files);
	st->st_mode = S_IFREG | (v->writable ? 0644 : 0444);
	st->st_nlink = 1;
	st->st_uid = v->uid;
	st->st_gid = v->gid;
	st->st_size = (off_t)f->size;
	st->st_blocks = (blkcnt_t)((f->alloc + 511) / 512);
	/* Tells cat, cp and friends to read 1 MiB at a time. */
	st->st_blksize = VIEW_MAX_READ;
	if (fstat(f->fd, &ist) == 0) {
		st->st_atim = ist.st_atim;
		st->st_mtim = ist.st_mtim;
		st->st_ctim = ist.st_ctim;
	} else {
		st->st_atim = st->st_mtim = st->st_ctim = v->created;
	}
}

static void root_stat(const struct view *v, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ROOT_INO;
	st->st_mode = S_IFDIR | 0555;
	st->st_nlink = 2;
	st->st_uid = v->uid;
	st->st_gid = v->gid;
	st->st_atim = st->st_mtim = st->st_ctim = v->created;
}

/* --- low-level operations ---------------------------------------------- */

static void view_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Must repeat the max_read mount option, or libfuse refuses INIT. */
	conn->max_read = view_max_read;
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_MOVE)
		conn->want |= FUSE_CAP_SPLICE_MOVE;
	/* The kernel takes the smaller of this and the bdi's setting. */
	conn->max_readahead = UINT32_MAX;
	conn->max_background = VIEW_MAX_BACKGROUND;
	conn->congestion_threshold = VIEW_MAX_BACKGROUND * 3 / 4;
	/*
	 * A writeback cache would acknowledge writes we never saw, and the
	 * writer wants the data in memory anyway: no splice from /dev/fuse.
	 * O_TRUNC is better refused by open than by a size change after the
	 * file was opened.
	 */
	conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ);
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
}

static void view_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct view *v = fuse_req_userdata(req);
	struct fuse_entry_param e;
	unsigned i;

	if (parent != ROOT_INO) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	for (i = 0; i < v->count; i++)
		if (!strcmp(name, v->files[i].name))
			break;
	if (i == v->count) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = FIRST_FILE_INO + i;
	e.entry_timeout = VIEW_ENTRY_TIMEOUT;
	e.attr_timeout = VIEW_ATTR_TIMEOUT;
	file_stat(v, &v->files[i], &e.attr);
	fuse_reply_entry(req, &e);
}

static void view_getattr(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f;
	struct stat st;

	(void)fi;
	if (ino == ROOT_INO) {
		root_stat(v, &st);
	} else {
		f = ino_file(v, ino);
		if (!f) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		file_stat(v, f, &st);
	}
	fuse_reply_attr(req, &st, VIEW_ATTR_TIMEOUT);
}

static void view_opendir(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	if (ino != ROOT_INO) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	fi->cache_readdir = 1;
	fuse_reply_open(req, fi);
}

static void view_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
			 off_t off, struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);
	size_t used = 0, n;
	struct stat st;
	char *buf;
	off_t i;

	(void)fi;
	if (ino != ROOT_INO) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/* Entry i: 0 ".", 1 "..", then the files; an entry's off is i + 1. */
	for (i = off; i < (off_t)v->count + 2; i++) {
		const char *name;

		memset(&st, 0, sizeof(st));
		if (i < 2) {
			name = i == 0 ? "." : "..";
			st.st_ino = ROOT_INO;
			st.st_mode = S_IFDIR;
		} else {
			name = v->files[i - 2].name;
			st.st_ino = FIRST_FILE_INO + (fuse_ino_t)(i - 2);
			st.st_mode = S_IFREG;
		}
		n = fuse_add_direntry(req, buf + used, size - used, name, &st,
				      i + 1);
		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void view_open(fuse_req_t req, fuse_ino_t ino,
		      struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);

	if (ino == ROOT_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (!ino_file(v, ino)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!v->writable && ((fi->flags & O_ACCMODE) != O_RDONLY ||
			     (fi->flags & (O_TRUNC | O_APPEND)))) {
		fuse_reply_err(req, EROFS);
		return;
	}
	/* The size is fixed: nothing can be cut off or appended. */
	if (fi->flags & (O_TRUNC | O_APPEND)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	/*
	 * No keep_cache: each open drops pages cached by an earlier one, so
	 * it reads what the image file holds now (through the block map
	 * loaded at mount time).  A writable view caches nothing at all.
	 */
	fi->keep_cache = 0;
	fi->direct_io = v->writable;
	/* close() of a descriptor that wrote flushes, as on a disk device. */
	fi->noflush = (fi->flags & O_ACCMODE) == O_RDONLY;
	fuse_reply_open(req, fi);
}

static void view_release(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

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
		ret = bufvec_push(bvp, cap, &(struct fuse_buf){
			.size = n, .mem = zero_buf, .fd = -1 });
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
		return bufvec_push(bvp, cap, &(struct fuse_buf){
			.size = ext->len,
			.flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK,
			.fd = ext->fd,
			.pos = (off_t)ext->file_off });
	case VHDX_EXT_MEM:
		/* libfuse only reads memory buffers, it never writes them. */
		return bufvec_push(bvp, cap, &(struct fuse_buf){
			.size = ext->len, .mem = (void *)ext->mem, .fd = -1 });
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

static void view_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f = ino_file(v, ino);
	const char *what = "the extent map failed";
	struct stage_pipe *sp = NULL;
	struct fuse_bufvec *bv;
	struct vhdx_map_iter it;
	struct vhdx_extent ext;
	uint64_t end, pos, bad;
	size_t cap = 4;
	int ret, staged = 1, n;

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

	bv = malloc(bufvec_bytes(cap));
	if (!bv) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	memset(bv, 0, sizeof(*bv));

	vhdx_map_iter_init(&it, f->img, (uint64_t)off, end - (uint64_t)off, 0);
	pos = it.pos;
	while ((ret = vhdx_map_next(&it, &ext)) > 0) {
		ret = run_ok(pos, &ext);
		if (ret) {
			what = "the extent map returned a malformed run";
			break;
		}
		ret = add_extent(&bv, &cap, &ext, &what);
		if (ret)
			break;
		pos = it.pos;
	}
	if (ret == 0 && has_fd(bv)) {
		sp = stage_get();
		if (sp) {
			staged = stage_data(bv, sp, (uint64_t)off, &what, &bad);
			if (staged) {
				/* Nothing of it may reach the next reply. */
				stage_drop(sp);
				sp = NULL;
			}
			if (staged < 0)
				ret = staged;
		}
		if (staged > 0)
			ret = check_sizes(bv, (uint64_t)off, &what, &bad);
	}
	if (ret < 0) {
		free(bv);
		if (ret == -ENOMEM) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		report_error(f, "read", bad, ret, what);
		fuse_reply_err(req, EIO);
		return;
	}
	/*
	 * Splicing pays off for file data only.  A reply made of memory
	 * alone (zeros, replayed sectors) would be copied into libfuse's pipe
	 * and out again; without splice a single memory buffer goes straight
	 * to writev().
	 */
	fuse_reply_data(req, bv, has_fd(bv) ? FUSE_BUF_SPLICE_MOVE :
			FUSE_BUF_NO_SPLICE);
	free(bv);
	/* libfuse drains the pipe unless it failed half way. */
	if (sp && (ioctl(sp->rd, FIONREAD, &n) < 0 || n > 0))
		stage_drop(sp);
}

static bool is_data(enum vhdx_ext_kind k)
{
	return k == VHDX_EXT_DATA || k == VHDX_EXT_MEM;
}

static void view_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		       struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f = ino_file(v, ino);
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
	vhdx_map_iter_init(&it, f->img, (uint64_t)off,
			   f->size - (uint64_t)off, 0);
	pos = it.pos;
	while ((ret = vhdx_map_next(&it, &ext)) > 0) {
		ret = run_ok(pos, &ext);
		if (ret)
			break;
		if (is_data(ext.kind) == want_data) {
			fuse_reply_lseek(req, ext.off > (uint64_t)off ?
					 (off_t)ext.off : off);
			return;
		}
		pos = it.pos;
	}
	if (ret < 0) {
		report_error(f, "SEEK_DATA/SEEK_HOLE", (uint64_t)off, ret,
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

/* --- writing ----------------------------------------------------------- */

/*
 * How much of a LEN-byte write at OFF fits before the end: like a disk
 * device, a write that starts inside is cut short and one that starts at
 * or past the end fails with ENOSPC.
 */
static int write_span(const struct view_file *f, off_t off, size_t len,
		      size_t *n)
{
	if (off < 0)
		return -EINVAL;
	if ((uint64_t)off >= f->size)
		return -ENOSPC;
	*n = f->size - (uint64_t)off < len ? (size_t)(f->size - (uint64_t)off) :
					       len;
	return 0;
}

static struct view_file *write_file(fuse_req_t req, fuse_ino_t ino)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f = ino_file(v, ino);

	if (!f) {
		fuse_reply_err(req, ino == ROOT_INO ? EISDIR : ENOENT);
		return NULL;
	}
	if (!v->writable) {
		fuse_reply_err(req, EROFS);
		return NULL;
	}
	return f;
}

static void do_write(fuse_req_t req, struct view_file *f, const void *buf,
		     size_t n, off_t off)
{
	int ret = vhdx_pwrite(f->img, buf, n, (uint64_t)off);

	if (ret < 0) {
		report_write_error(f, "write", (uint64_t)off, n, ret);
		fuse_reply_err(req, -ret);
		return;
	}
	fuse_reply_write(req, n);
}

static void view_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		       size_t size, off_t off, struct fuse_file_info *fi)
{
	struct view_file *f = write_file(req, ino);
	size_t n;
	int ret;

	(void)fi;
	if (!f)
		return;
	ret = write_span(f, off, size, &n);
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	do_write(req, f, buf, n, off);
}

/*
 * libfuse prefers this to view_write().  Without splice from /dev/fuse the
 * data is one buffer in libfuse's memory, handed on as it is; anything
 * else is gathered into one buffer first.
 */
static void view_write_buf(fuse_req_t req, fuse_ino_t ino,
			   struct fuse_bufvec *in, off_t off,
			   struct fuse_file_info *fi)
{
	struct view_file *f = write_file(req, ino);
	struct fuse_bufvec dst = FUSE_BUFVEC_INIT(0);
	const struct fuse_buf *b;
	size_t n;
	ssize_t got;
	char *tmp;
	int ret;

	(void)fi;
	if (!f)
		return;
	ret = write_span(f, off, fuse_buf_size(in), &n);
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	b = &in->buf[in->idx];
	if (in->idx < in->count && !(b->flags & FUSE_BUF_IS_FD) &&
	    b->size - in->off >= n) {
		do_write(req, f, (const char *)b->mem + in->off, n, off);
		return;
	}
	tmp = malloc(n ? n : 1);
	if (!tmp) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	dst.buf[0].mem = tmp;
	dst.buf[0].size = n;
	got = fuse_buf_copy(&dst, in, 0);
	if (got < 0 || (size_t)got != n) {
		fuse_reply_err(req, got < 0 ? (int)-got : EIO);
		free(tmp);
		return;
	}
	do_write(req, f, tmp, n, off);
	free(tmp);
}

/*
 * Punching a hole and zeroing a range are the same to a virtual disk:
 * vhdx_write_zeroes() turns whole blocks into ZERO blocks (or zeros them
 * in place when the image wants its blocks kept allocated) and writes
 * zeros into partial ones.  Plain preallocation means nothing here.
 */
static void view_fallocate(fuse_req_t req, fuse_ino_t ino, int mode,
			   off_t off, off_t len, struct fuse_file_info *fi)
{
	struct view_file *f = write_file(req, ino);
	const char *op;
	uint64_t n;
	int ret;

	(void)fi;
	if (!f)
		return;
	if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
		op = "punching a hole";
	} else if (mode == FALLOC_FL_ZERO_RANGE ||
		   mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
		op = "zeroing a range";
	} else {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (off < 0 || len <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/* Without KEEP_SIZE the range may not reach past the end. */
	if (!(mode & FALLOC_FL_KEEP_SIZE) && ((uint64_t)off >= f->size ||
	    (uint64_t)len > f->size - (uint64_t)off)) {
		fuse_reply_err(req, ENOSPC);
		return;
	}
	if ((uint64_t)off >= f->size) {
		fuse_reply_err(req, 0);
		return;
	}
	n = f->size - (uint64_t)off < (uint64_t)len ? f->size - (uint64_t)off :
						     (uint64_t)len;
	ret = vhdx_write_zeroes(f->img, (uint64_t)off, n);
	if (ret < 0)
		report_write_error(f, op, (uint64_t)off, n, ret);
	fuse_reply_err(req, -ret);
}

static void do_flush(fuse_req_t req, fuse_ino_t ino, const char *op)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f = ino_file(v, ino);
	int ret;

	if (!f || !v->writable) {
		fuse_reply_err(req, 0);
		return;
	}
	ret = vhdx_flush(f->img);
	if (ret < 0)
		report_write_error(f, op, 0, 0, ret);
	fuse_reply_err(req, -ret);
}

/* fsync and fdatasync alike: data and the block map are both needed to
 * read the data back. */
static void view_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		       struct fuse_file_info *fi)
{
	(void)datasync;
	(void)fi;
	do_flush(req, ino, "fsync");
}

static void view_flush(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	(void)fi;
	do_flush(req, ino, "flush on close");
}

/*
 * Times and modes are not the image's to keep: a touch is accepted and
 * changes nothing.  Ownership, mode and size changes are refused.
 */
static void view_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
			 int to_set, struct fuse_file_info *fi)
{
	struct view *v = fuse_req_userdata(req);
	struct view_file *f = ino_file(v, ino);
	struct stat st;

	(void)fi;
	if (ino != ROOT_INO && !f) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!v->writable) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID |
		      FUSE_SET_ATTR_GID)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (!f) {
			fuse_reply_err(req, EISDIR);
			return;
		}
		if ((uint64_t)attr->st_size != f->size) {
			fuse_reply_err(req, EPERM);
			return;
		}
	}
	if (f)
		file_stat(v, f, &st);
	else
		root_stat(v, &st);
	fuse_reply_attr(req, &st, VIEW_ATTR_TIMEOUT);
}

/* The set of files is fixed. */
static void view_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		       mode_t mode, dev_t rdev)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)rdev;
	fuse_reply_err(req, EPERM);
}

static void view_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		       mode_t mode)
{
	(void)parent;
	(void)name;
	(void)mode;
	fuse_reply_err(req, EPERM);
}

static void view_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent;
	(void)name;
	fuse_reply_err(req, EPERM);
}

static void view_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
			 const char *name)
{
	(void)link;
	(void)parent;
	(void)name;
	fuse_reply_err(req, EPERM);
}

static void view_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
			fuse_ino_t newparent, const char *newname,
			unsigned int flags)
{
	(void)parent;
	(void)name;
	(void)newparent;
	(void)newname;
	(void)flags;
	fuse_reply_err(req, EPERM);
}

static void view_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		      const char *newname)
{
	(void)ino;
	(void)newparent;
	(void)newname;
	fuse_reply_err(req, EPERM);
}

static void view_create(fuse_req_t req, fuse_ino_t parent, const char *name,
			mode_t mode, struct fuse_file_info *fi)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)fi;
	fuse_reply_err(req, EPERM);
}

static void view_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct view *v = fuse_req_userdata(req);
	struct statvfs sv;
	uint64_t total = 0;
	unsigned i;

	(void)ino;
	for (i = 0; i < v->count; i++)
		total += v->files[i].size;
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = VIEW_MAX_READ;
	sv.f_frsize = 4096;
	sv.f_blocks = (total + 4095) / 4096;
	sv.f_files = v->count + 1;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops view_ops = {
	.init = view_init,
	.lookup = view_lookup,
	.getattr = view_getattr,
	.opendir = view_opendir,
	.readdir = view_readdir,
	.open = view_open,
	.read = view_read,
	.release = view_release,
	.lseek = view_lseek,
	.statfs = view_statfs,
	.write = view_write,
	.write_buf = view_write_buf,
	.fallocate = view_fallocate,
	.fsync = view_fsync,
	.flush = view_flush,
	.setattr = view_setattr,
	.mknod = view_mknod,
	.mkdir = view_mkdir,
	.unlink = view_unlink,
	.rmdir = view_unlink,
	.symlink = view_symlink,
	.rename = view_rename,
	.link = view_link,
	.create = view_create,
};

/* --- setup ------------------------------------------------------------- */

static uint64_t image_alloc(const struct vhdx_info *info)
{
	uint64_t blocks = info->block_states[VHDX_PAYLOAD_FULLY_PRESENT] +
			  info->block_states[VHDX_PAYLOAD_PARTIALLY_PRESENT];
	uint64_t bytes;

	if (info->block_size && blocks > UINT64_MAX / info->block_size)
		return info->virtual_size;
	bytes = blocks * info->block_size;
	return bytes < info->virtual_size ? bytes : info->virtual_size;
}

/*
 * libfuse splices a reply only when its per-thread pipe holds the data, one
 * page per buffer and two more; otherwise it reads the data into a freshly
 * allocated buffer and copies it, which costs about half the throughput.
 * Growing a pipe past /proc/sys/fs/pipe-max-size (1 MiB by default) needs
 * CAP_SYS_RESOURCE, so without it reads are kept a few pages under that
 * size.  The slack covers replies of up to five buffers.
 */
static unsigned pick_max_read(void)
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

int view_new(const struct view_image *images, unsigned count,
	     const struct view_config *cfg, struct view **out, char *err,
	     size_t errlen)
{
	char mopts[128];
	char *fargv[] = { "hvresync", "-o", mopts, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	struct view *v;
	unsigned i;
	int ret = -ENOMEM;

	*out = NULL;
	view_max_read = pick_max_read();
	/* subtype: /proc/mounts shows VIEW_FSTYPE, which umount checks. */
	snprintf(mopts, sizeof(mopts),
		 "%s,fsname=hvresync,subtype=hvresync,max_read=%u",
		 cfg && cfg->writable ? "rw" : "ro", view_max_read);
	if (err && errlen)
		err[0] = '\0';
	log_stderr = cfg ? cfg->log_stderr : true;
	fuse_set_log_func(fuse_logger);

	v = calloc(1, sizeof(*v));
	if (!v)
		goto fail;
	v->files = calloc(count ? count : 1, sizeof(*v->files));
	if (!v->files)
		goto fail;
	v->count = count;
	v->writable = cfg && cfg->writable;
	v->uid = getuid();
	v->gid = getgid();
	clock_gettime(CLOCK_REALTIME, &v->created);
	for (i = 0; i < count; i++) {
		const struct vhdx_info *info = vhdx_get_info(images[i].img);
		struct view_file *f = &v->files[i];

		f->name = strdup(images[i].name);
		f->path = strdup(images[i].path);
		if (!f->name || !f->path)
			goto fail;
		f->img = images[i].img;
		f->fd = vhdx_get_fd(images[i].img);
		f->size = info->virtual_size;
		f->alloc = image_alloc(info);
		atomic_init(&f->error_logged, false);
		atomic_init(&f->write_error_logged, false);
	}

	capture_start(err, errlen);
	v->se = fuse_session_new(&args, &view_ops, sizeof(view_ops), v);
	capture_stop();
	fuse_opt_free_args(&args);
	if (!v->se) {
		ret = -EINVAL;
		set_err(err, errlen, "cannot set up the FUSE session");
		goto fail;
	}
	*out = v;
	return 0;
fail:
	if (ret == -ENOMEM)
		set_err(err, errlen, "out of memory");
	view_free(v);
	return ret;
}

int view_mount(struct view *v, const char *mountpoint, char *err,
	       size_t errlen)
{
	int ret;

	if (err && errlen)
		err[0] = '\0';
	v->mountpoint = strdup(mountpoint);
	if (!v->mountpoint) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	capture_start(err, errlen);
	ret = fuse_session_mount(v->se, mountpoint);
	capture_stop();
	if (ret) {
		set_err(err, errlen, "mount failed");
		return -EIO;
	}
	v->mounted = true;
	return 0;
}

struct ready_ctx {
	struct view *v;
	int fd;
	bool detach;
	bool no_probe; /* no thread: the loop cannot answer a probe yet */
	char msg[512]; /* libfuse's first complaint before the mount answered */
};

static void tune_readahead(dev_t dev)
{
	char path[128], val[32];
	int fd, n;

	/* A FUSE mount's bdi is named after its anonymous device number. */
	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/read_ahead_kb",
		 major(dev), minor(dev));
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return; /* not root, or no sysfs: keep the default */
	n = snprintf(val, sizeof(val), "%u\n", VIEW_READAHEAD_KB);
	if (write(fd, val, (size_t)n) != n)
		view_log(LOG_WARNING, "%s: cannot raise readahead: %s", path,
			 strerror(errno));
	close(fd);
}

static void detach_stdio(void)
{
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return;
	dup2(fd, STDIN_FILENO);
	dup2(fd, STDOUT_FILENO);
	dup2(fd, STDERR_FILENO);
	if (fd > STDERR_FILENO)
		close(fd);
}

/*
 * Runs beside the loop: the stat below is answered by the loop only after
 * the kernel's INIT, and INIT's reply would overwrite a readahead setting
 * made before it.  Only then is the mount reported ready.
 */
static void *ready_thread(void *arg)
{
	struct ready_ctx *c = arg;
	char line[1024];
	struct stat st;
	sigset_t all;
	int ret = 0;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	if (c->no_probe)
		memset(&st, 0, sizeof(st));
	else if (stat(c->v->mountpoint, &st) < 0)
		ret = -errno;
	capture_stop();
	if (ret == 0 && !c->no_probe)
		tune_readahead(st.st_dev);
	snprintf(line, sizeof(line), "OK\n");
	if (ret < 0)
		snprintf(line, sizeof(line), "%s: the mount does not answer: %s\n",
			 c->v->mountpoint, c->msg[0] ? c->msg : strerror(-ret));
	if (c->detach) {
		log_stderr = false;
		detach_stdio();
	}
	if (c->fd >= 0) {
		ssize_t n = write(c->fd, line, strlen(line));

		(void)n;
		close(c->fd);
	} else if (ret < 0) {
		view_log(LOG_ERR, "%.*s", (int)strlen(line) - 1, line);
	}
	return NULL;
}

int view_serve(struct view *v, int ready_fd, bool detach)
{
	struct fuse_loop_config lc = {
		/* One /dev/fuse descriptor per worker: no shared queue lock. */
		.clone_fd = 1,
		.max_idle_threads = VIEW_IDLE_THREADS,
	};
	struct ready_ctx ctx = { .v = v, .fd = ready_fd, .detach = detach };
	pthread_t th;
	bool thread;
	int ret;

	if (fuse_set_signal_handlers(v->se)) {
		view_log(LOG_ERR, "cannot install signal handlers");
		if (ready_fd >= 0)
			close(ready_fd);
		return -EIO;
	}
	if (detach)
		openlog("hvresync", LOG_PID, LOG_DAEMON);
	capture_start(ctx.msg, sizeof(ctx.msg));
	thread = pthread_create(&th, NULL, ready_thread, &ctx) == 0;
	if (!thread) {
		ctx.no_probe = true;
		ready_thread(&ctx);
	}

	ret = fuse_session_loop_mt(v->se, &lc);

	fuse_remove_signal_handlers(v->se);
	if (v->mounted) {
		fuse_session_unmount(v->se);
		v->mounted = false;
	}
	/*
	 * Closing /dev/fuse aborts a request the ready thread may still be
	 * waiting on, if the loop ended before it was answered.
	 */
	fuse_session_destroy(v->se);
	v->se = NULL;
	if (thread)
		pthread_join(th, NULL);
	/* A positive value is the signal that ended the loop: a clean stop. */
	return ret < 0 ? -EIO : 0;
}

void view_free(struct view *v)
{
	unsigned i;

	if (!v)
		return;
	if (v->se) {
		if (v->mounted)
			fuse_session_unmount(v->se);
		fuse_session_destroy(v->se);
	}
	if (v->files) {
		for (i = 0; i < v->count; i++) {
			free(v->files[i].name);
			free(v->files[i].path);
		}
		free(v->files);
	}
	free(v->mountpoint);
	free(v);
}

/* --- mountinfo --------------------------------------------------------- */

/* Undo mountinfo's octal escapes (\040 for a space) in place. */
static void unescape(char *s)
{
	char *o = s;

	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' &&
		    s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*o++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 +
				      (s[3] - '0'));
			s += 4;
		} else {
			*o++ = *s++;
		}
	}
	*o = '\0';
}

int view_find_mount(const char *path, struct view_mount_info *mi)
{
	FILE *fp = fopen("/proc/self/mountinfo", "re");
	char *line = NULL, *save, *tok, *mnt;
	size_t cap = 0;
	bool found = false;
	unsigned maj, min;
	int field;

	if (!fp)
		return -errno;
	while (getline(&line, &cap, fp) > 0) {
		line[strcspn(line, "\n")] = '\0';
		mnt = NULL;
		maj = min = 0;
		/* id parent maj:min root mountpoint opts [optional...] - fstype
		 * source superopts */
		for (field = 0, tok = strtok_r(line, " ", &save); tok;
		     field++, tok = strtok_r(NULL, " ", &save)) {
			if (field == 2 && sscanf(tok, "%u:%u", &maj, &min) != 2)
				break;
			if (field == 4) {
				unescape(tok);
				mnt = tok;
				if (strcmp(mnt, path))
					break;
			}
			if (field > 5 && !strcmp(tok, "-")) {
				char *fstype = strtok_r(NULL, " ", &save);
				char *source = strtok_r(NULL, " ", &save);

				if (!fstype)
					break;
				/* Later lines are mounted on top: keep the last. */
				found = true;
				snprintf(mi->fstype, sizeof(mi->fstype), "%s",
					 fstype);
				if (source)
					unescape(source);
				snprintf(mi->source, sizeof(mi->source), "%s",
					 source ? source : "");
				mi->major = maj;
				mi->minor = min;
				break;
			}
		}
	}
	free(line);
	fclose(fp);
	return found ? 0 : -ENOENT;
}
