/* SPDX-License-Identifier: MIT */
/*
 * serve.c - the recovery side of a resync session (see serve.h and
 * docs/protocol.md).
 *
 * One thread accepts; each connection gets a session thread that does the
 * handshake, reads HELLO, claims the export and then receives (CREDIT,
 * SUBREQ, DATA, ZERO, DONE), writing into the differencing child (VHDX) or
 * the raw disk in place.  A second thread per session reads the disk
 * through the child with the io_uring reader and streams HASHES ahead, as
 * far as the primary's credit allows.  Sub-block hashes of blocks in
 * flight are kept in a ring of one window, which is all the memory a
 * session needs besides its receive buffer, whatever the disk size.
 *
 * Writes only ever land in blocks whose hashes were sent and which the
 * primary has not declared done, so the reader (which runs ahead of the
 * sent position) never races a write to the block it reads.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zstd.h>

#include "agent/sync/proto.h"
#include "agent/sync/serve.h"
#include "agent/lib/log.h"
#include "uring/blocks.h"
#include "uring/reader.h"
#include "vhdx/vhdx.h"

#define SESSION_TIMEOUT_MS 60000
/* Progress is recorded at least this often while done_through moves. */
#define PERSIST_INTERVAL 5.0
#define HELLO_BUF 512
#define WINDOW_MIN 8u
#define WINDOW_MAX (1u << 16)
#define WINDOW_BYTES_MAX (256u << 20)

struct export
{
	struct export *next;
	char *name;
	char *path; /* absolute, from the configuration */
	bool vhdx;  /* as found when it was added */
	bool blockdev;
	bool busy;
	bool held; /* server_hold_export(): refuse sessions */
	dev_t dev; /* of the file while busy */
	ino_t ino;
};

struct session;

struct server {
	struct server_config cfg;
	char *listen;
	char *state_dir;
	struct tls_listener *l;
	char addr[128];

	pthread_mutex_t lock;
	pthread_cond_t cond; /* a session ended */
	struct export *exports;
	struct session *sessions;
	unsigned nsessions;
	unsigned next_id;

	int stop_pipe[2];
	int stop; /* atomic: set by server_stop() */
};

struct session {
	struct server *srv;
	struct session *next;
	struct conn *c;
	unsigned id;
	char peer[128];
	char auth[256];
	struct export *ex;
	char name[PROTO_NAME_MAX + 1];
	char image[PATH_MAX];
	char child[PATH_MAX + 32];
	char marker[PATH_MAX + 48];
	char state[PATH_MAX];
	struct msg_hello hello;

	/* The disk. */
	bool vhdx;
	bool blockdev;
	struct vhdx_image *img; /* VHDX: the child, read-write */
	int fd;			/* raw: read-write */
	struct ur_source *src;
	struct ur_engine *eng;
	struct ur_stream *stream;
	uint64_t size;
	uint32_t sector;
	uint32_t bs;
	uint64_t nblocks;
	unsigned nsub_max;
	uint32_t window;
	uint64_t resume; /* resume_offset sent in WELCOME */
	uint64_t resume_block;
	uint8_t zero_sub[PROTO_HASH_LEN];
	uint8_t zero_sub_last[PROTO_HASH_LEN];

	/* Flow control, shared with the hash thread under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t credit_end; /* blocks below this were granted */
	uint64_t sent_block; /* HASHES went out for blocks below this */
	uint64_t done_block; /* the primary decided blocks below this */
	bool abort;
	int tx_err;
	char tx_msg[600];
	bool tx_running;
	pthread_t tx;
	pthread_mutex_t send_lock; /* one writer at a time */
	uint8_t *ring_sub;	   /* window x nsub_max x PROTO_HASH_LEN */
	uint8_t *ring_zero;	   /* window flags: block reads as zeros */

	uint8_t *rbuf;
	size_t rcap;
	ZSTD_DCtx *dctx;
	uint8_t *dbuf;

	uint64_t bytes_compared;
	uint64_t bytes_written;
	uint64_t bytes_received;
	uint64_t persisted_done;
	uint64_t written_since;
	double last_persist;
	double start;
	double merge_seconds;
	bool error_sent;
};

struct state {
	char image[PATH_MAX];
	uint64_t size;
	uint32_t sector;
	uint64_t done;
	bool complete;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- logging ------------------------------------------------------------- */

static void slog(struct server *srv, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void slog(struct server *srv, int level, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (srv->cfg.log) {
		srv->cfg.log(srv->cfg.log_ctx, level, line);
		return;
	}
	log_msg(level, "serve", "%s", line);
}

#define S_LOG(s, level, fmt, ...)                                              \
	slog((s)->srv, level, "session %u: peer %s: " fmt, (s)->id, (s)->peer, \
	     ##__VA_ARGS__)

/* ---- small file helpers -------------------------------------------------- */

static int fsync_dir_of(const char *path)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/');
	int fd, ret = 0;

	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fsync(fd))
		ret = -errno;
	close(fd);
	return ret;
}

static int remove_durably(const char *path)
{
	if (unlink(path) && errno != ENOENT)
		return -errno;
	return fsync_dir_of(path);
}

static bool exists(const char *path)
{
	return access(path, F_OK) == 0;
}

/* ---- progress records ---------------------------------------------------- */

/* The state file name: the export name with anything but [A-Za-z0-9_-]
 * percent-encoded, so no name can reach outside the directory. */
static int state_path(struct server *srv, const char *name, char *out,
		      size_t len)
{
	size_t n, i;
	int w;

	w = snprintf(out, len, "%s/", srv->state_dir);
	if (w < 0 || (size_t)w >= len)
		return -ENAMETOOLONG;
	n = (size_t)w;
	for (i = 0; name[i]; i++) {
		unsigned char ch = (unsigned char)name[i];
		bool plain = (ch >= 'a' && ch <= 'z') ||
			     (ch >= 'A' && ch <= 'Z') ||
			     (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';

		if (n + 4 >= len)
			return -ENAMETOOLONG;
		if (plain)
			out[n++] = (char)ch;
		else
			n += (size_t)snprintf(out + n, len - n, "%%%02X", ch);
	}
	if (n + 7 >= len)
		return -ENAMETOOLONG;
	strcpy(out + n, ".state");
	return 0;
}

static int state_load(const char *path, struct state *st)
{
	char line[PATH_MAX + 64];
	unsigned long long v;
	bool magic = false, have_done = false;
	FILE *f;

	memset(st, 0, sizeof(*st));
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		size_t l = strlen(line);

		if (l && line[l - 1] == '\n')
			line[--l] = '\0';
		if (!strcmp(line, "hvresync-state 1"))
			magic = true;
		else if (!strncmp(line, "image ", 6))
			snprintf(st->image, sizeof(st->image), "%.*s",
				 (int)sizeof(st->image) - 1, line + 6);
		else if (sscanf(line, "virtual_size %llu", &v) == 1)
			st->size = v;
		else if (sscanf(line, "logical_sector %llu", &v) == 1)
			st->sector = (uint32_t)v;
		else if (sscanf(line, "done_through %llu", &v) == 1) {
			st->done = v;
			have_done = true;
		} else if (sscanf(line, "complete %llu", &v) == 1)
			st->complete = v == 1;
	}
	fclose(f);
	return magic && have_done && st->size && st->done <= st->size ? 0
								      : -EINVAL;
}

/* Write to a temporary file, fsync, rename over, fsync the directory. */
static int state_save(const char *path, const struct state *st)
{
	char tmp[PATH_MAX + 8];
	FILE *f;
	int fd, ret = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	f = fdopen(fd, "w");
	if (!f) {
		ret = -errno;
		close(fd);
		unlink(tmp);
		return ret;
	}
	fprintf(f,
		"hvresync-state 1\nimage %s\nvirtual_size %" PRIu64
		"\nlogical_sector %u\ndone_through %" PRIu64 "\ncomplete %d\n",
		st->image, st->size, st->sector, st->done,
		st->complete ? 1 : 0);
	if (fflush(f) || ferror(f) || fsync(fd))
		ret = -(errno ? errno : EIO);
	if (fclose(f) && !ret)
		ret = -errno;
	if (!ret && rename(tmp, path))
		ret = -errno;
	if (ret) {
		unlink(tmp);
		return ret;
	}
	return fsync_dir_of(path);
}

/* ---- exports ------------------------------------------------------------- */

static bool name_ok(const char *name)
{
	size_t n = strlen(name), i;

	if (n < 1 || n > PROTO_NAME_MAX || !strcmp(name, ".") ||
	    !strcmp(name, ".."))
		return false;
	for (i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)name[i];

		if (ch == '/' || ch == '=' || ch < 0x20 || ch == 0x7f)
			return false;
	}
	return true;
}

static struct export *find_export(struct server *srv, const char *name)
{
	struct export *e;

	for (e = srv->exports; e; e = e->next)
		if (!strcmp(e->name, name))
			return e;
	return NULL;
}

/* Does @fd start with the VHDX file signature? */
static bool has_vhdx_signature(int fd)
{
	char sig[8];

	return pread(fd, sig, sizeof(sig), 0) == (ssize_t)sizeof(sig) &&
	       !memcmp(sig, "vhdxfile", 8);
}

static void describe_export(struct server *srv, const struct export *e)
{
	if (e->vhdx)
		slog(srv, SERVER_LOG_INFO,
		     "export %s: %s (VHDX: sessions "
		     "write to %s%s, merged at the end)",
		     e->name, e->path, e->path, SERVER_CHILD_SUFFIX);
	else
		slog(srv, SERVER_LOG_WARNING,
		     "export %s: %s is a raw %s, "
		     "written in place: not cancel-safe (a cancelled or "
		     "failed session leaves it partly updated)",
		     e->name, e->path, e->blockdev ? "block device" : "file");
}

int server_add_export(struct server *srv, const char *name, const char *path,
		      char *err, size_t errlen)
{
	struct export *e;
	char real[PATH_MAX];
	struct stat st;
	bool vhdx, running;
	int fd, ret;

	if (!name_ok(name)) {
		snprintf(err, errlen,
			 "export name '%s': must be 1-255 bytes "
			 "without '/', '=' or control characters, and not '.' "
			 "or '..'",
			 name);
		return -EINVAL;
	}
	if (!realpath(path, real)) {
		ret = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return ret;
	}
	if (strlen(real) + sizeof(SERVER_CHILD_SUFFIX) + 16 >= PATH_MAX) {
		snprintf(err, errlen, "%s: path too long", path);
		return -ENAMETOOLONG;
	}
	fd = open(real, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot open: %s", path,
			 strerror(errno));
		if (fd >= 0)
			close(fd);
		return ret;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		close(fd);
		snprintf(err, errlen, "%s: not a regular file or block device",
			 path);
		return -EINVAL;
	}
	vhdx = S_ISREG(st.st_mode) && has_vhdx_signature(fd);
	close(fd);
	e = calloc(1, sizeof(*e));
	if (!e || !(e->name = strdup(name)) || !(e->path = strdup(real))) {
		if (e)
			free(e->name);
		free(e);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	pthread_mutex_lock(&srv->lock);
	if (find_export(srv, name)) {
		pthread_mutex_unlock(&srv->lock);
		free(e->name);
		free(e->path);
		free(e);
		snprintf(err, errlen, "export '%s' is already defined", name);
		return -EEXIST;
	}
	e->next = srv->exports;
	srv->exports = e;
	e->vhdx = vhdx;
	e->blockdev = S_ISBLK(st.st_mode);
	running = srv->l != NULL;
	pthread_mutex_unlock(&srv->lock);
	/* Before the server runs, server_run() describes the exports, so a
	 * command line that fails later prints one error line only. */
	if (running)
		describe_export(srv, e);
	return 0;
}

int server_remove_export(struct server *srv, const char *name)
{
	struct export **pp, *e;
	int ret = -ENOENT;

	pthread_mutex_lock(&srv->lock);
	for (pp = &srv->exports; (e = *pp); pp = &e->next) {
		if (strcmp(e->name, name))
			continue;
		if (e->busy) {
			ret = -EBUSY;
			break;
		}
		*pp = e->next;
		free(e->name);
		free(e->path);
		free(e);
		ret = 0;
		break;
	}
	pthread_mutex_unlock(&srv->lock);
	return ret;
}

int server_hold_export(struct server *srv, const char *name, bool hold)
{
	struct export *e;
	int ret = 0;

	pthread_mutex_lock(&srv->lock);
	e = find_export(srv, name);
	if (!e)
		ret = -ENOENT;
	else if (hold && e->busy)
		ret = -EBUSY;
	else
		e->held = hold;
	pthread_mutex_unlock(&srv->lock);
	return ret;
}

int server_export_busy(struct server *srv, const char *name)
{
	struct export *e;
	int ret;

	pthread_mutex_lock(&srv->lock);
	e = find_export(srv, name);
	ret = e ? e->busy : -ENOENT;
	pthread_mutex_unlock(&srv->lock);
	return ret;
}

/* ---- server life --------------------------------------------------------- */

struct server *server_new(const struct server_config *cfg, char *err,
			  size_t errlen)
{
	struct server *srv;
	struct stat st;

	srv = calloc(1, sizeof(*srv));
	if (!srv) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->cfg = *cfg;
	srv->listen = strdup(cfg->listen ? cfg->listen : SERVER_DEFAULT_LISTEN);
	srv->state_dir = strdup(cfg->state_dir ? cfg->state_dir
					       : SERVER_DEFAULT_STATE_DIR);
	srv->stop_pipe[0] = srv->stop_pipe[1] = -1;
	if (!srv->listen || !srv->state_dir) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (!srv->cfg.window_bytes)
		srv->cfg.window_bytes = SERVER_DEFAULT_WINDOW;
	if (!srv->cfg.max_sessions)
		srv->cfg.max_sessions = SERVER_DEFAULT_MAX_SESSIONS;
	if (strlen(srv->state_dir) > PATH_MAX - 800) {
		snprintf(err, errlen, "%s: path too long", srv->state_dir);
		goto fail;
	}
	if (mkdir(srv->state_dir, 0700) && errno != EEXIST) {
		snprintf(err, errlen,
			 "%s: cannot create the state directory: "
			 "%s",
			 srv->state_dir, strerror(errno));
		goto fail;
	}
	if (stat(srv->state_dir, &st) || !S_ISDIR(st.st_mode) ||
	    access(srv->state_dir, W_OK)) {
		snprintf(err, errlen, "%s: not a writable directory",
			 srv->state_dir);
		goto fail;
	}
	if (pipe2(srv->stop_pipe, O_CLOEXEC | O_NONBLOCK)) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		goto fail;
	}
	pthread_mutex_init(&srv->lock, NULL);
	pthread_cond_init(&srv->cond, NULL);
	return srv;

fail:
	free(srv->listen);
	free(srv->state_dir);
	free(srv);
	return NULL;
}

void server_free(struct server *srv)
{
	struct export *e;

	if (!srv)
		return;
	while ((e = srv->exports)) {
		srv->exports = e->next;
		free(e->name);
		free(e->path);
		free(e);
	}
	if (srv->l)
		tls_listener_close(srv->l);
	if (srv->stop_pipe[0] >= 0)
		close(srv->stop_pipe[0]);
	if (srv->stop_pipe[1] >= 0)
		close(srv->stop_pipe[1]);
	pthread_mutex_destroy(&srv->lock);
	pthread_cond_destroy(&srv->cond);
	free(srv->listen);
	free(srv->state_dir);
	free(srv);
}

int server_listen(struct server *srv, char *err, size_t errlen)
{
	struct vhdx_error terr;
	int ret;

	if (srv->l)
		return 0;
	terr.msg[0] = '\0';
	ret = tls_listen(srv->listen, &srv->cfg.tls, &srv->l, &terr);
	if (ret < 0) {
		srv->l = NULL;
		snprintf(err, errlen, "%s",
			 terr.msg[0] ? terr.msg : strerror(-ret));
		return ret;
	}
	snprintf(srv->addr, sizeof(srv->addr), "%s", tls_listener_addr(srv->l));
	return 0;
}

const char *server_addr(const struct server *srv)
{
	return srv->addr;
}

void server_stop(struct server *srv)
{
	ssize_t n;

	__atomic_store_n(&srv->stop, 1, __ATOMIC_RELAXED);
	n = write(srv->stop_pipe[1], "x", 1);
	(void)n;
}

/* ---- sending ------------------------------------------------------------- */

static int send_locked(struct session *s, const struct msg *m)
{
	struct vhdx_error terr;
	int ret;

	pthread_mutex_lock(&s->send_lock);
	ret = proto_send_msg(s->c, m, &terr);
	pthread_mutex_unlock(&s->send_lock);
	return ret;
}

/* Tell the primary why the session ends (once), and log it.  Returns
 * -EIO, or -EPROTO for a protocol error: the session is over. */
static int send_error(struct session *s, uint32_t code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int send_error(struct session *s, uint32_t code, const char *fmt, ...)
{
	struct msg m = {.type = PROTO_ERROR};
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(m.u.error.message, sizeof(m.u.error.message), fmt, ap);
	va_end(ap);
	m.u.error.code = code;
	m.u.error.message_len = (uint16_t)strlen(m.u.error.message);
	if (!s->error_sent) {
		s->error_sent = true;
		send_locked(s, &m);
	}
	S_LOG(s,
	      code == PROTO_ERR_IO || code == PROTO_ERR_INTERNAL
		      ? SERVER_LOG_ERR
		      : SERVER_LOG_WARNING,
	      "%s", m.u.error.message);
	return code == PROTO_ERR_PROTOCOL ? -EPROTO : -EIO;
}

/* The work is done whether or not the primary is still there to hear it. */
static int send_finished(struct session *s)
{
	struct msg m = {.type = PROTO_FINISHED};

	m.u.finished.bytes_written = s->bytes_written;
	m.u.finished.seconds_merge = (uint32_t)(s->merge_seconds + 0.5);
	if (send_locked(s, &m) < 0)
		S_LOG(s, SERVER_LOG_WARNING,
		      "the primary left before "
		      "FINISHED");
	return 0;
}

/* ---- the disk ------------------------------------------------------------ */

/* Geometry of the export as it is now, without changing anything. */
static int probe_export(struct session *s)
{
	struct vhdx_image *img;
	struct vhdx_error verr;
	struct stat st;
	int fd, ss;
	uint64_t size;

	fd = open(s->image, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		int e = errno;

		if (fd >= 0)
			close(fd);
		return send_error(s, PROTO_ERR_IO,
				  "export %s: cannot open "
				  "it: %s",
				  s->name, strerror(e));
	}
	s->blockdev = S_ISBLK(st.st_mode);
	s->vhdx = S_ISREG(st.st_mode) && has_vhdx_signature(fd);
	if (s->blockdev) {
		if (ioctl(fd, BLKGETSIZE64, &size) < 0 ||
		    ioctl(fd, BLKSSZGET, &ss) < 0) {
			int e = errno;

			close(fd);
			return send_error(s, PROTO_ERR_IO,
					  "export %s: cannot "
					  "read the device's geometry: %s",
					  s->name, strerror(e));
		}
		s->size = size;
		s->sector = (uint32_t)ss;
	} else if (!s->vhdx) {
		s->size = (uint64_t)st.st_size;
		s->sector = 512;
	}
	close(fd);
	if (!s->vhdx)
		return 0;
	if (vhdx_open(s->image, 0, &img, &verr) < 0)
		return send_error(s, PROTO_ERR_IO, "export %s: %s", s->name,
				  verr.msg);
	s->size = vhdx_get_info(img)->virtual_size;
	s->sector = vhdx_get_info(img)->logical_sector_size;
	vhdx_close(img);
	return 0;
}

static int check_geometry(struct session *s)
{
	const struct msg_hello *h = &s->hello;

	if (h->virtual_size == s->size && h->logical_sector == s->sector)
		return 0;
	return send_error(s, PROTO_ERR_GEOMETRY,
			  "geometry mismatch: the "
			  "primary disk has virtual size %" PRIu64 " and "
			  "%u-byte logical sectors, export %s has virtual "
			  "size %" PRIu64 " and %u-byte logical sectors",
			  h->virtual_size, h->logical_sector, s->name, s->size,
			  s->sector);
}

/* A merge that a crash or an error interrupted must complete before
 * anything else touches the image. */
static int finish_interrupted_merge(struct session *s)
{
	struct vhdx_error verr;
	int ret;

	if (!s->vhdx || !exists(s->marker))
		return 0;
	S_LOG(s, SERVER_LOG_WARNING,
	      "export %s: completing an interrupted "
	      "merge of %s",
	      s->name, s->child);
	ret = vhdx_merge(s->child, 0, NULL, NULL, &verr);
	if (ret < 0)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: cannot complete "
				  "the interrupted merge: %s",
				  s->name, verr.msg);
	remove_durably(s->state);
	return 0;
}

static int discard_partial(struct session *s)
{
	int ret = 0;

	if (s->vhdx && exists(s->child)) {
		ret = remove_durably(s->child);
		if (ret < 0)
			return send_error(s, PROTO_ERR_IO,
					  "export %s: cannot "
					  "remove %s: %s",
					  s->name, s->child, strerror(-ret));
	}
	ret = remove_durably(s->state);
	if (ret < 0)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: cannot remove "
				  "%s: %s",
				  s->name, s->state, strerror(-ret));
	return 0;
}

/* The progress record, if it is about this image and geometry. */
static bool load_progress(struct session *s, struct state *st)
{
	if (state_load(s->state, st) < 0)
		return false;
	return !strcmp(st->image, s->image) && st->size == s->size &&
	       st->sector == s->sector;
}

static uint64_t resume_offset(struct session *s, const struct state *st,
			      bool have)
{
	if (!have)
		return 0;
	if (st->complete || st->done >= s->size)
		return s->size;
	return st->done - st->done % s->bs;
}

/* Open (or create) the child and decide where to resume. */
static int prepare_vhdx(struct session *s, uint64_t *resume)
{
	struct vhdx_create_opts opts = {.parent = s->image};
	struct vhdx_error verr;
	struct state st;
	bool have;
	char real[PATH_MAX];
	int ret;

	ret = finish_interrupted_merge(s);
	if (!ret && (s->hello.flags & PROTO_HELLO_RESTART))
		ret = discard_partial(s);
	if (ret < 0)
		return ret;
	have = load_progress(s, &st);
	if (exists(s->child)) {
		ret = vhdx_open(s->child, VHDX_OPEN_RDWR, &s->img, &verr);
		if (ret == 0) {
			const struct vhdx_info *info = vhdx_get_info(s->img);

			if (!info->has_parent || !info->parent_path ||
			    !realpath(info->parent_path, real) ||
			    strcmp(real, s->image)) {
				vhdx_close(s->img);
				s->img = NULL;
				snprintf(verr.msg, sizeof(verr.msg),
					 "%.400s: not "
					 "a child of %.400s",
					 s->child, s->image);
				ret = -EINVAL;
			}
		}
		if (ret < 0) {
			/* The image changed under it, or it is damaged:
			 * what it holds is of no use any more. */
			S_LOG(s, SERVER_LOG_WARNING,
			      "export %s: starting "
			      "over: %s",
			      s->name, verr.msg);
			ret = discard_partial(s);
			if (ret < 0)
				return ret;
			have = false;
		}
	} else if (have) {
		remove_durably(s->state);
		have = false;
	}
	if (!s->img) {
		ret = vhdx_create(s->child, &opts, &verr);
		if (ret < 0)
			return send_error(s, PROTO_ERR_IO,
					  "export %s: cannot "
					  "create the differencing child: %s",
					  s->name, verr.msg);
		ret = vhdx_open(s->child, VHDX_OPEN_RDWR, &s->img, &verr);
		if (ret < 0)
			return send_error(s, PROTO_ERR_IO, "export %s: %s",
					  s->name, verr.msg);
	}
	*resume = resume_offset(s, &st, have);
	ret = ur_source_from_vhdx(s->img, &s->src);
	if (ret < 0)
		return send_error(s, PROTO_ERR_INTERNAL, "out of memory");
	return 0;
}

static int prepare_raw(struct session *s, uint64_t *resume)
{
	struct state st;
	bool have;
	int ret;

	if (s->hello.flags & PROTO_HELLO_RESTART) {
		ret = discard_partial(s);
		if (ret < 0)
			return ret;
	}
	have = load_progress(s, &st);
	*resume = resume_offset(s, &st, have);
	s->fd = open(s->image, O_RDWR | O_CLOEXEC);
	if (s->fd < 0)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: cannot open it "
				  "for writing: %s",
				  s->name, strerror(errno));
	/* Our own raw source: the signature must not decide the format of
	 * a raw export whose guest data starts with "vhdxfile". */
	s->src = calloc(1, sizeof(*s->src));
	if (!s->src || !(s->src->path = strdup(s->image)))
		return send_error(s, PROTO_ERR_INTERNAL, "out of memory");
	s->src->type = s->blockdev ? UR_SRC_BLOCKDEV : UR_SRC_FILE;
	s->src->size = s->size;
	s->src->sector_size = s->sector;
	s->src->no_seek_data = s->blockdev;
	s->src->fd = open(s->image, O_RDONLY | O_CLOEXEC);
	if (s->src->fd < 0)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: cannot open it: "
				  "%s",
				  s->name, strerror(errno));
	S_LOG(s, SERVER_LOG_WARNING,
	      "export %s: raw, written in place: not "
	      "cancel-safe",
	      s->name);
	return 0;
}

static int disk_write(struct session *s, const void *buf, size_t len,
		      uint64_t off)
{
	const uint8_t *p = buf;
	ssize_t n;

	if (s->vhdx)
		return vhdx_pwrite(s->img, buf, len, off);
	while (len) {
		n = pwrite(s->fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static int disk_zero(struct session *s, uint64_t off, uint64_t len)
{
	static const uint8_t zeros[1 << 16];
	uint64_t range[2] = {off, len};
	int ret;

	if (s->vhdx)
		return vhdx_write_zeroes(s->img, off, len);
	if (s->blockdev) {
		if (!ioctl(s->fd, BLKZEROOUT, range))
			return 0;
	} else if (!fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)off, (off_t)len)) {
		return 0;
	}
	while (len) {
		size_t n = len < sizeof(zeros) ? len : sizeof(zeros);

		ret = disk_write(s, zeros, n, off);
		if (ret < 0)
			return ret;
		off += n;
		len -= n;
	}
	return 0;
}

static int disk_flush(struct session *s)
{
	if (s->vhdx)
		return s->img ? vhdx_flush(s->img) : 0;
	return s->fd >= 0 && fdatasync(s->fd) ? -errno : 0;
}

static int save_progress(struct session *s, uint64_t done, bool complete)
{
	struct state st;

	memset(&st, 0, sizeof(st));
	snprintf(st.image, sizeof(st.image), "%s", s->image);
	st.size = s->size;
	st.sector = s->sector;
	st.done = done;
	st.complete = complete;
	return state_save(s->state, &st);
}

/*
 * Record done_through durably when enough was written (a dropped session
 * then costs at most about a window again) or some time has passed.
 */
static int maybe_persist(struct session *s, bool force)
{
	uint64_t done;
	double t = now_s();
	int ret;

	pthread_mutex_lock(&s->lock);
	done = ur_clip(s->size, 0, s->done_block * s->bs);
	pthread_mutex_unlock(&s->lock);
	if (!force && s->written_since < (uint64_t)s->window * s->bs / 2 &&
	    (t - s->last_persist < PERSIST_INTERVAL ||
	     done == s->persisted_done))
		return 0;
	if (s->written_since) {
		ret = disk_flush(s);
		if (ret < 0)
			return ret;
	}
	ret = save_progress(s, done, false);
	if (ret < 0)
		return ret;
	s->persisted_done = done;
	s->written_since = 0;
	s->last_persist = t;
	return 0;
}

/* ---- the hash stream ----------------------------------------------------- */

static uint64_t send_limit(const struct session *s)
{
	uint64_t lim = s->done_block + s->window;

	if (s->credit_end < lim)
		lim = s->credit_end;
	return lim < s->nblocks ? lim : s->nblocks;
}

static void tx_fail(struct session *s, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void tx_fail(struct session *s, int ret, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&s->lock);
	if (!s->tx_err) {
		s->tx_err = ret;
		va_start(ap, fmt);
		vsnprintf(s->tx_msg, sizeof(s->tx_msg), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&s->lock);
}

static int flush_hashes(struct session *s, uint64_t first, uint32_t n,
			const uint8_t *entries)
{
	struct msg m = {.type = PROTO_HASHES};

	if (!n)
		return 0;
	m.u.hashes.first_block = first;
	m.u.hashes.count = n;
	m.u.hashes.entries = entries;
	return send_locked(s, &m);
}

static void *tx_main(void *arg)
{
	struct session *s = arg;
	uint32_t cap =
		s->window < PROTO_HASHES_MAX ? s->window : PROTO_HASHES_MAX;
	uint8_t *ent = malloc((size_t)cap * PROTO_HASH_ENTRY_LEN);
	uint64_t block = s->resume_block, limit, i, n; /* the reader starts there */
	uint32_t nent = 0;
	struct ur_block b;
	int ret;

	if (!ent) {
		tx_fail(s, -ENOMEM, "out of memory");
		goto out;
	}
	while (block < s->nblocks) {
		pthread_mutex_lock(&s->lock);
		while (!s->abort && block >= (limit = send_limit(s)) && !nent)
			pthread_cond_wait(&s->cond, &s->lock);
		ret = s->abort;
		limit = send_limit(s);
		pthread_mutex_unlock(&s->lock);
		if (ret)
			goto out;
		if (block >= limit) {
			/* Out of credit: what we have must go now, or both
			 * sides wait for each other. */
			ret = flush_hashes(s, block - nent, nent, ent);
			if (ret < 0)
				goto send_error;
			nent = 0;
			continue;
		}
		ret = ur_stream_peek(s->stream, &b);
		if (ret <= 0 || b.index != block)
			goto read_error;
		n = b.zero ? b.run : 1;
		if (n > limit - block)
			n = limit - block;
		if (n > cap - nent)
			n = cap - nent;
		for (i = 0; i < n; i++) {
			uint8_t *e =
				ent + (size_t)(nent + i) * PROTO_HASH_ENTRY_LEN;
			uint64_t slot = (block + i) % s->window;

			memset(e, 0, PROTO_HASH_ENTRY_LEN);
			s->ring_zero[slot] = b.zero;
			if (b.zero)
				continue;
			e[0] = PROTO_KIND_DATA;
			memcpy(e + 1, b.hash.b, PROTO_HASH_LEN);
			if (!b.sub || b.nsub > s->nsub_max)
				goto read_error;
			for (unsigned k = 0; k < b.nsub; k++)
				memcpy(s->ring_sub + (slot * s->nsub_max + k) *
							     PROTO_HASH_LEN,
				       b.sub[k].b, PROTO_HASH_LEN);
		}
		s->bytes_compared += ur_clip(s->size, block * s->bs, n * s->bs);
		ur_stream_release(s->stream, n);
		block += n;
		nent += (uint32_t)n;
		pthread_mutex_lock(&s->lock);
		s->sent_block = block;
		pthread_mutex_unlock(&s->lock);
		if (nent == cap || block == s->nblocks || block == limit) {
			ret = flush_hashes(s, block - nent, nent, ent);
			if (ret < 0)
				goto send_error;
			nent = 0;
		}
	}
	goto out;

read_error:
	tx_fail(s, -EIO, "export %s: %s", s->name,
		*ur_engine_error(s->eng) ? ur_engine_error(s->eng)
					 : "the reader lost its place");
	{
		struct msg m = {.type = PROTO_ERROR};

		m.u.error.code = PROTO_ERR_IO;
		snprintf(m.u.error.message, sizeof(m.u.error.message), "%s",
			 s->tx_msg);
		m.u.error.message_len = (uint16_t)strlen(m.u.error.message);
		send_locked(s, &m);
	}
	/* Wake the receiver, which ends the session. */
	conn_abort(s->c);
	goto out;
send_error:
	tx_fail(s, ret, "sending HASHES: %s", strerror(-ret));
out:
	free(ent);
	return NULL;
}

/* ---- receiving ----------------------------------------------------------- */

static int protocol_error(struct session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int protocol_error(struct session *s, const char *fmt, ...)
{
	char line[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	return send_error(s, PROTO_ERR_PROTOCOL, "malformed frame: %s", line);
}

static int on_credit(struct session *s, const struct msg_credit *c)
{
	uint64_t d = c->done_through, db;
	int ret = 0;

	db = d == s->size ? s->nblocks : d / s->bs;
	pthread_mutex_lock(&s->lock);
	if ((d % s->bs && d != s->size) || db < s->done_block ||
	    db > s->sent_block || c->blocks > s->window)
		ret = -EPROTO;
	else {
		s->done_block = db;
		s->credit_end += c->blocks;
		if (s->credit_end > s->nblocks + s->window)
			s->credit_end = s->nblocks + s->window;
		pthread_cond_broadcast(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	if (ret < 0)
		return protocol_error(s,
				      "CREDIT done_through %" PRIu64
				      " (+%u blocks) does not fit the blocks "
				      "sent",
				      d, c->blocks);
	ret = maybe_persist(s, false);
	if (ret < 0)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: cannot record "
				  "progress: %s",
				  s->name, strerror(-ret));
	return 0;
}

static int on_subreq(struct session *s, uint64_t block)
{
	uint8_t hashes[PROTO_SUBHASHES_MAX * PROTO_HASH_LEN];
	struct msg m = {.type = PROTO_SUBHASHES};
	uint64_t slot = block % s->window;
	uint32_t len, nsub, k;
	bool ok, zero;
	int ret;

	pthread_mutex_lock(&s->lock);
	ok = block >= s->done_block && block < s->sent_block;
	zero = ok && s->ring_zero[slot];
	pthread_mutex_unlock(&s->lock);
	if (!ok)
		return protocol_error(s,
				      "SUBREQ for block %" PRIu64 ", which "
				      "is not in flight",
				      block);
	len = ur_block_len(s->size, s->bs, block);
	nsub = (len + PROTO_SUBBLOCK - 1) / PROTO_SUBBLOCK;
	for (k = 0; k < nsub; k++) {
		const uint8_t *h;

		if (!zero)
			h = s->ring_sub +
			    (slot * s->nsub_max + k) * PROTO_HASH_LEN;
		else if (len - k * PROTO_SUBBLOCK >= PROTO_SUBBLOCK)
			h = s->zero_sub;
		else
			h = s->zero_sub_last;
		memcpy(hashes + (size_t)k * PROTO_HASH_LEN, h, PROTO_HASH_LEN);
	}
	m.u.subhashes.block = block;
	m.u.subhashes.count = nsub;
	m.u.subhashes.hashes = hashes;
	ret = send_locked(s, &m);
	return ret < 0 ? ret : 0;
}

/* DATA and ZERO may only touch blocks in flight. */
static int check_write(struct session *s, const char *what, uint64_t off,
		       uint64_t len)
{
	uint64_t lo, hi;

	pthread_mutex_lock(&s->lock);
	lo = s->done_block * s->bs;
	hi = ur_clip(s->size, 0, s->sent_block * s->bs);
	pthread_mutex_unlock(&s->lock);
	if (off % PROTO_SECTOR ||
	    (len % PROTO_SECTOR && off + len != s->size) || off < lo ||
	    off > hi || len > hi - off)
		return protocol_error(s,
				      "%s at %" PRIu64 "+%" PRIu64 " is "
				      "outside the blocks in flight [%" PRIu64
				      ", %" PRIu64 ")",
				      what, off, len, lo, hi);
	return 0;
}

static int on_data(struct session *s, const struct msg_data *d)
{
	const uint8_t *buf = d->data;
	size_t n;
	int ret;

	ret = check_write(s, "DATA", d->offset, d->length);
	if (ret < 0)
		return ret;
	if (d->compressed) {
		if (!s->dctx) {
			s->dctx = ZSTD_createDCtx();
			s->dbuf = malloc(PROTO_DATA_MAX);
			if (!s->dctx || !s->dbuf)
				return send_error(s, PROTO_ERR_INTERNAL,
						  "out of memory");
		}
		n = ZSTD_decompressDCtx(s->dctx, s->dbuf, d->length, d->data,
					d->data_len);
		if (ZSTD_isError(n) || n != d->length)
			return protocol_error(s,
					      "DATA at %" PRIu64 ": the zstd "
					      "payload does not give %u bytes",
					      d->offset, d->length);
		buf = s->dbuf;
	}
	ret = disk_write(s, buf, d->length, d->offset);
	if (ret < 0)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: write at %" PRIu64 ": %s",
				  s->name, d->offset, strerror(-ret));
	s->bytes_written += d->length;
	s->bytes_received += d->data_len;
	s->written_since += d->length;
	return 0;
}

static int on_zero(struct session *s, const struct msg_zero *z)
{
	int ret;

	ret = check_write(s, "ZERO", z->offset, z->length);
	if (ret < 0)
		return ret;
	ret = disk_zero(s, z->offset, z->length);
	if (ret < 0)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: zeroing at %" PRIu64 ": %s",
				  s->name, z->offset, strerror(-ret));
	s->bytes_written += z->length;
	s->written_since += z->length;
	return 0;
}

/*
 * Receive until DONE.  Returns 1 at DONE, or a negative value once the
 * session is over (the reason is logged and, where it helps, sent).
 */
static int receive_loop(struct session *s)
{
	struct vhdx_error terr;
	struct msg m;
	int ret;

	for (;;) {
		terr.msg[0] = '\0';
		ret = proto_recv_msg(s->c, &m, s->rbuf, s->rcap, &terr);
		if (ret < 0) {
			bool tx_failed;

			pthread_mutex_lock(&s->lock);
			tx_failed = s->tx_err != 0;
			if (tx_failed) {
				ret = s->tx_err;
				snprintf(terr.msg, sizeof(terr.msg), "%.500s",
					 s->tx_msg);
			}
			pthread_mutex_unlock(&s->lock);
			if (tx_failed) {
				/* The hash thread told the primary. */
				S_LOG(s, SERVER_LOG_ERR, "%s", terr.msg);
				s->error_sent = true;
				return ret;
			}
			if (ret == -EPROTO || ret == -EMSGSIZE) {
				struct msg e = {.type = PROTO_ERROR};

				/* The message already names the peer. */
				slog(s->srv, SERVER_LOG_WARNING,
				     "session %u: "
				     "%s",
				     s->id, terr.msg);
				e.u.error.code = PROTO_ERR_PROTOCOL;
				snprintf(e.u.error.message,
					 sizeof(e.u.error.message), "%s",
					 terr.msg);
				e.u.error.message_len =
					(uint16_t)strlen(e.u.error.message);
				send_locked(s, &e);
				s->error_sent = true;
				return ret;
			}
			S_LOG(s, SERVER_LOG_WARNING, "connection lost: %s",
			      terr.msg[0] ? terr.msg : strerror(-ret));
			return ret;
		}
		switch (m.type) {
		case PROTO_CREDIT: ret = on_credit(s, &m.u.credit); break;
		case PROTO_SUBREQ: ret = on_subreq(s, m.u.subreq.block); break;
		case PROTO_DATA: ret = on_data(s, &m.u.data); break;
		case PROTO_ZERO: ret = on_zero(s, &m.u.zero); break;
		case PROTO_DONE:
			pthread_mutex_lock(&s->lock);
			ret = s->done_block == s->nblocks;
			pthread_mutex_unlock(&s->lock);
			if (ret)
				return 1;
			return protocol_error(s, "DONE before every block was "
						 "decided");
		case PROTO_ERROR:
			S_LOG(s, SERVER_LOG_WARNING,
			      "the primary gave up: %s "
			      "(code %u)",
			      m.u.error.message, m.u.error.code);
			s->error_sent = true;
			return -ECONNABORTED;
		default:
			return protocol_error(s, "unexpected %s",
					      proto_type_name(m.type));
		}
		if (ret < 0)
			return ret;
	}
}

/* ---- a copy session ------------------------------------------------------ */

static int start_engine(struct session *s)
{
	struct ur_config cfg = {
		.block_size = s->bs,
		.hash = s->hello.hash == PROTO_HASH_SHA256 ? UR_HASH_SHA256
							   : UR_HASH_XXH3_128,
		.seed_set = true,
		.sub_hashes = true,
	};
	struct ur_hash h;
	char msg[512];
	int i, ret;

	/* The primary's seed keys both sides' hashes (docs/protocol.md). */
	for (i = 7; i >= 0; i--)
		cfg.seed = cfg.seed << 8 | s->hello.seed[i];
	ret = ur_engine_new(&cfg, &s->eng, msg, sizeof(msg));
	if (ret < 0)
		return send_error(s, PROTO_ERR_INTERNAL, "export %s: %s",
				  s->name, msg);
	ret = ur_engine_add_from(s->eng, s->src, s->resume_block, &s->stream);
	if (!ret)
		ret = ur_engine_start(s->eng);
	if (ret < 0)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: cannot start "
				  "reading: %s",
				  s->name,
				  *ur_engine_error(s->eng)
					  ? ur_engine_error(s->eng)
					  : strerror(-ret));
	ret = ur_engine_zero_hash(s->eng, PROTO_SUBBLOCK, &h);
	memcpy(s->zero_sub, h.b, PROTO_HASH_LEN);
	if (!ret && s->size % PROTO_SUBBLOCK) {
		ret = ur_engine_zero_hash(s->eng, s->size % PROTO_SUBBLOCK, &h);
		memcpy(s->zero_sub_last, h.b, PROTO_HASH_LEN);
	}
	if (ret < 0)
		return send_error(s, PROTO_ERR_INTERNAL,
				  "cannot hash zeros: "
				  "%s",
				  strerror(-ret));
	return 0;
}

static int setup_flow(struct session *s, uint64_t resume)
{
	uint64_t w = s->srv->cfg.window_bytes / s->bs;

	if (w < WINDOW_MIN)
		w = WINDOW_MIN;
	if (w > WINDOW_MAX)
		w = WINDOW_MAX;
	if (w * s->bs > WINDOW_BYTES_MAX)
		w = WINDOW_BYTES_MAX / s->bs;
	s->window = (uint32_t)w;
	s->nblocks = ur_block_count(s->size, s->bs);
	s->nsub_max = s->bs / PROTO_SUBBLOCK;
	s->ring_sub = malloc((size_t)s->window * s->nsub_max * PROTO_HASH_LEN);
	s->ring_zero = calloc(s->window, 1);
	s->rcap = PROTO_MAX_PAYLOAD;
	s->rbuf = malloc(s->rcap);
	if (!s->ring_sub || !s->ring_zero || !s->rbuf)
		return send_error(s, PROTO_ERR_INTERNAL, "out of memory");
	s->resume_block = (resume + s->bs - 1) / s->bs;
	s->done_block = s->sent_block = s->resume_block;
	s->credit_end = s->resume_block + s->window;
	s->persisted_done = resume;
	s->last_persist = now_s();
	return 0;
}

static void stop_tx(struct session *s, bool abort_conn)
{
	if (!s->tx_running)
		return;
	pthread_mutex_lock(&s->lock);
	s->abort = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	/* It may be stuck sending to a primary that no longer reads. */
	if (abort_conn)
		conn_abort(s->c);
	pthread_join(s->tx, NULL);
	s->tx_running = false;
}

/* Close the disk; after a failure keep the child and record progress. */
static void release_disk(struct session *s, bool failed)
{
	uint64_t done;
	int ret;

	ur_engine_free(s->eng);
	s->eng = NULL;
	ur_source_close(s->src);
	s->src = NULL;
	if (failed && (s->img || s->fd >= 0)) {
		pthread_mutex_lock(&s->lock);
		done = ur_clip(s->size, 0, s->done_block * s->bs);
		pthread_mutex_unlock(&s->lock);
		ret = disk_flush(s);
		if (!ret)
			ret = save_progress(s, done, false);
		if (ret < 0)
			S_LOG(s, SERVER_LOG_ERR,
			      "export %s: cannot record "
			      "progress: %s",
			      s->name, strerror(-ret));
		else if (done)
			S_LOG(s, SERVER_LOG_INFO,
			      "export %s: progress kept: "
			      "a later push resumes at %" PRIu64,
			      s->name, done);
	}
	if (s->img) {
		vhdx_close(s->img);
		s->img = NULL;
	}
	if (s->fd >= 0) {
		close(s->fd);
		s->fd = -1;
	}
}

static int merge_child(struct session *s)
{
	struct vhdx_error verr;
	double t0 = now_s();
	int ret;

	ret = vhdx_merge(s->child, 0, NULL, NULL, &verr);
	s->merge_seconds = now_s() - t0;
	if (ret < 0)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: merge failed "
				  "(it completes at the next session): %s",
				  s->name, verr.msg);
	remove_durably(s->state);
	return 0;
}

/* DONE arrived: make everything durable and merge (unless held). */
static int finish_copy(struct session *s, const char **result)
{
	int ret;

	stop_tx(s, false);
	ur_engine_free(s->eng);
	s->eng = NULL;
	ur_source_close(s->src);
	s->src = NULL;
	if (!s->vhdx) {
		ret = fdatasync(s->fd) ? -errno : 0;
		close(s->fd);
		s->fd = -1;
		if (ret < 0)
			return send_error(s, PROTO_ERR_IO,
					  "export %s: flush: "
					  "%s",
					  s->name, strerror(-ret));
		remove_durably(s->state);
		*result = "done";
		return send_finished(s);
	}
	ret = vhdx_close_checked(s->img);
	s->img = NULL;
	if (!ret)
		ret = save_progress(s, s->size, true);
	if (ret < 0)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: cannot flush "
				  "%s: %s",
				  s->name, s->child, strerror(-ret));
	if (s->hello.flags & PROTO_HELLO_HOLD) {
		*result = "held (complete, not merged)";
		return send_finished(s);
	}
	ret = merge_child(s);
	if (ret < 0)
		return ret;
	*result = "merged";
	return send_finished(s);
}

static int do_copy(struct session *s, const char **result)
{
	struct msg m = {.type = PROTO_WELCOME};
	struct state st;
	uint64_t resume = 0;
	int ret;

	ret = check_geometry(s);
	if (ret < 0)
		return ret;
	if (s->hello.flags & PROTO_HELLO_CHECK) {
		resume = resume_offset(s, &st,
				       load_progress(s, &st) &&
					       (!s->vhdx || exists(s->child)));
	} else {
		ret = s->vhdx ? prepare_vhdx(s, &resume)
			      : prepare_raw(s, &resume);
		if (!ret)
			ret = setup_flow(s, resume);
		/* A complete held copy needs no reading, only DONE. */
		if (!ret && s->resume_block < s->nblocks)
			ret = start_engine(s);
		if (ret < 0)
			goto fail;
	}
	m.u.welcome.version = PROTO_VERSION;
	m.u.welcome.virtual_size = s->size;
	m.u.welcome.logical_sector = s->sector;
	m.u.welcome.resume_offset = resume;
	m.u.welcome.window = s->window ? s->window : WINDOW_MIN;
	ret = send_locked(s, &m);
	if (ret < 0 || (s->hello.flags & PROTO_HELLO_CHECK)) {
		*result = ret < 0 ? "failed" : "checked";
		goto fail;
	}
	s->resume = resume;
	if (s->eng) {
		ret = pthread_create(&s->tx, NULL, tx_main, s);
		if (ret) {
			ret = send_error(s, PROTO_ERR_INTERNAL,
					 "cannot start "
					 "a thread: %s",
					 strerror(ret));
			goto fail;
		}
		s->tx_running = true;
	}
	ret = receive_loop(s);
	if (ret == 1)
		return finish_copy(s, result);
fail:
	stop_tx(s, true);
	release_disk(s, !(s->hello.flags & PROTO_HELLO_CHECK) && s->window);
	return ret < 0 ? ret : 0;
}

static int do_merge(struct session *s, const char **result)
{
	struct state st;
	int ret;

	if (!s->vhdx || (!exists(s->child) && !exists(s->marker))) {
		*result = "nothing to merge";
		return send_finished(s);
	}
	if (exists(s->marker)) {
		ret = finish_interrupted_merge(s);
		if (ret < 0)
			return ret;
		*result = "merged";
		return send_finished(s);
	}
	if (!load_progress(s, &st) || !st.complete)
		return send_error(s, PROTO_ERR_IO,
				  "export %s: the copy held "
				  "in %s is incomplete: push it again before "
				  "merging",
				  s->name, s->child);
	ret = merge_child(s);
	if (ret < 0)
		return ret;
	*result = "merged";
	return send_finished(s);
}

static int do_discard(struct session *s, const char **result)
{
	int ret;

	/* A merge under way cannot be undone, only completed. */
	ret = finish_interrupted_merge(s);
	if (!ret)
		ret = discard_partial(s);
	if (ret < 0)
		return ret;
	*result = "discarded";
	return send_finished(s);
}

/* ---- session threads ----------------------------------------------------- */

static int claim_export(struct session *s)
{
	struct export *e, *o;
	struct stat st;
	bool busy = false;
	int ret;

	pthread_mutex_lock(&s->srv->lock);
	e = find_export(s->srv, s->hello.name);
	if (!e) {
		pthread_mutex_unlock(&s->srv->lock);
		return send_error(s, PROTO_ERR_UNKNOWN_EXPORT,
				  "unknown export "
				  "'%s'",
				  s->hello.name);
	}
	if (stat(e->path, &st) < 0) {
		ret = errno;
		pthread_mutex_unlock(&s->srv->lock);
		return send_error(s, PROTO_ERR_IO, "export %s: %s", e->name,
				  strerror(ret));
	}
	busy = e->busy || e->held;
	for (o = s->srv->exports; o && !busy; o = o->next)
		busy = o->busy && o->dev == st.st_dev && o->ino == st.st_ino;
	if (busy) {
		pthread_mutex_unlock(&s->srv->lock);
		return send_error(s, PROTO_ERR_BUSY,
				  "export '%s' is busy in "
				  "another session",
				  s->hello.name);
	}
	e->busy = true;
	e->dev = st.st_dev;
	e->ino = st.st_ino;
	s->ex = e;
	snprintf(s->name, sizeof(s->name), "%s", e->name);
	snprintf(s->image, sizeof(s->image), "%s", e->path);
	pthread_mutex_unlock(&s->srv->lock);
	snprintf(s->child, sizeof(s->child), "%s%s", s->image,
		 SERVER_CHILD_SUFFIX);
	snprintf(s->marker, sizeof(s->marker), "%s.merging", s->child);
	ret = state_path(s->srv, s->name, s->state, sizeof(s->state));
	if (ret < 0)
		return send_error(s, PROTO_ERR_INTERNAL,
				  "export %s: state "
				  "path too long",
				  s->name);
	return 0;
}

static void unclaim_export(struct session *s)
{
	if (!s->ex)
		return;
	pthread_mutex_lock(&s->srv->lock);
	s->ex->busy = false;
	pthread_mutex_unlock(&s->srv->lock);
	s->ex = NULL;
}

static const char *kind_name(uint32_t flags)
{
	if (flags & PROTO_HELLO_CHECK)
		return "check";
	if (flags & PROTO_HELLO_MERGE)
		return "merge";
	if (flags & PROTO_HELLO_DISCARD)
		return "discard";
	if (flags & PROTO_HELLO_HOLD)
		return flags & PROTO_HELLO_RESTART ? "copy (restart, hold)"
						   : "copy (hold)";
	return flags & PROTO_HELLO_RESTART ? "copy (restart)" : "copy";
}

static void serve_session(struct session *s)
{
	const char *result = "failed";
	uint8_t buf[HELLO_BUF];
	struct vhdx_error terr;
	struct msg m;
	int ret;

	terr.msg[0] = '\0';
	ret = conn_handshake(s->c, &terr);
	if (ret < 0) {
		slog(s->srv, SERVER_LOG_WARNING, "session %u: %s", s->id,
		     terr.msg[0] ? terr.msg : strerror(-ret));
		return;
	}
	snprintf(s->auth, sizeof(s->auth), "%s", conn_auth(s->c));
	conn_set_timeout(s->c, SESSION_TIMEOUT_MS);
	terr.msg[0] = '\0';
	ret = proto_recv_msg(s->c, &m, buf, sizeof(buf), &terr);
	if (ret == -EPROTONOSUPPORT) {
		send_error(s, PROTO_ERR_UNSUPPORTED, "%s", terr.msg);
		return;
	}
	if (ret < 0) {
		slog(s->srv, SERVER_LOG_WARNING, "session %u: %s", s->id,
		     terr.msg[0] ? terr.msg : strerror(-ret));
		return;
	}
	if (m.type != PROTO_HELLO) {
		protocol_error(s, "%s before HELLO", proto_type_name(m.type));
		return;
	}
	s->hello = m.u.hello;
	s->bs = s->hello.block_size;
	if (claim_export(s) < 0)
		return;
	s->start = now_s();
	S_LOG(s, SERVER_LOG_INFO,
	      "session start (%s): export %s (%s): %s, "
	      "block size %u",
	      s->auth, s->name, s->image, kind_name(s->hello.flags), s->bs);
	ret = probe_export(s);
	/* MERGE and DISCARD may come without a source disk (size 0). */
	if (!ret &&
	    (s->hello.flags & (PROTO_HELLO_MERGE | PROTO_HELLO_DISCARD)) &&
	    s->hello.virtual_size)
		ret = check_geometry(s);
	if (!ret && (s->hello.flags & PROTO_HELLO_MERGE))
		ret = do_merge(s, &result);
	else if (!ret && (s->hello.flags & PROTO_HELLO_DISCARD))
		ret = do_discard(s, &result);
	else if (!ret)
		ret = do_copy(s, &result);
	S_LOG(s, SERVER_LOG_INFO,
	      "session end: export %s: %s: from %" PRIu64 " of %" PRIu64
	      ", compared %" PRIu64 " bytes, different %" PRIu64
	      ", received %" PRIu64 ", in %.2f s%s",
	      s->name, ret < 0 ? "failed" : result, s->resume, s->size,
	      s->bytes_compared, s->bytes_written, s->bytes_received,
	      now_s() - s->start,
	      s->vhdx && ret < 0 && exists(s->child)
		      ? " (the image is unchanged; the child is kept for "
			"resume)"
		      : "");
	unclaim_export(s);
}

static void *session_main(void *arg)
{
	struct session *s = arg;
	struct server *srv = s->srv;
	struct session **pp;

	serve_session(s);
	free(s->rbuf);
	free(s->ring_sub);
	free(s->ring_zero);
	free(s->dbuf);
	ZSTD_freeDCtx(s->dctx);
	pthread_mutex_lock(&srv->lock);
	for (pp = &srv->sessions; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
	srv->nsessions--;
	pthread_cond_broadcast(&srv->cond);
	pthread_mutex_unlock(&srv->lock);
	conn_close(s->c);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->send_lock);
	free(s);
	return NULL;
}

static const char *mode_name(enum tls_mode m)
{
	switch (m) {
	case TLS_MODE_PSK: return "TLS 1.3, pre-shared key";
	case TLS_MODE_X509: return "TLS 1.3, certificates";
	case TLS_MODE_INSECURE: return "plain TCP, insecure, loopback only";
	}
	return "?";
}

static void start_session(struct server *srv, struct conn *c)
{
	pthread_attr_t attr;
	struct session *s;
	int ret;

	pthread_mutex_lock(&srv->lock);
	if (srv->nsessions >= srv->cfg.max_sessions) {
		pthread_mutex_unlock(&srv->lock);
		slog(srv, SERVER_LOG_WARNING,
		     "peer %s: refused: %u sessions "
		     "already",
		     conn_peer(c), srv->cfg.max_sessions);
		conn_close(c);
		return;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		pthread_mutex_unlock(&srv->lock);
		conn_close(c);
		return;
	}
	s->srv = srv;
	s->c = c;
	s->fd = -1;
	s->id = ++srv->next_id;
	snprintf(s->peer, sizeof(s->peer), "%s", conn_peer(c));
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	pthread_mutex_init(&s->send_lock, NULL);
	s->next = srv->sessions;
	srv->sessions = s;
	srv->nsessions++;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	ret = pthread_create(&(pthread_t){0}, &attr, session_main, s);
	pthread_attr_destroy(&attr);
	if (ret) {
		srv->sessions = s->next;
		srv->nsessions--;
		pthread_mutex_unlock(&srv->lock);
		slog(srv, SERVER_LOG_ERR, "peer %s: cannot start a thread: %s",
		     s->peer, strerror(ret));
		conn_close(c);
		free(s);
		return;
	}
	pthread_mutex_unlock(&srv->lock);
}

int server_run(struct server *srv)
{
	struct pollfd p[2];
	struct vhdx_error terr;
	struct session *s;
	struct export *e;
	struct conn *c;
	char err[512];
	int ret;

	ret = server_listen(srv, err, sizeof(err));
	if (ret < 0) {
		slog(srv, SERVER_LOG_ERR, "%s", err);
		return ret;
	}
	slog(srv, SERVER_LOG_INFO, "listening on %s (%s), state in %s",
	     srv->addr, mode_name(srv->cfg.tls.mode), srv->state_dir);
	pthread_mutex_lock(&srv->lock);
	for (e = srv->exports; e; e = e->next)
		describe_export(srv, e);
	pthread_mutex_unlock(&srv->lock);
	p[0].fd = tls_listener_fd(srv->l);
	p[0].events = POLLIN;
	p[1].fd = srv->stop_pipe[0];
	p[1].events = POLLIN;
	ret = 0;
	while (!__atomic_load_n(&srv->stop, __ATOMIC_RELAXED)) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			slog(srv, SERVER_LOG_ERR, "poll: %s", strerror(errno));
			break;
		}
		if (p[1].revents)
			break;
		if (!p[0].revents)
			continue;
		terr.msg[0] = '\0';
		ret = tls_accept(srv->l, &c, &terr);
		if (ret == -EAGAIN || ret == -EINTR) {
			ret = 0;
			continue;
		}
		if (ret < 0) {
			slog(srv, SERVER_LOG_WARNING, "accept: %s",
			     terr.msg[0] ? terr.msg : strerror(-ret));
			/* Out of descriptors, say: do not spin. */
			usleep(100000);
			ret = 0;
			continue;
		}
		start_session(srv, c);
	}
	pthread_mutex_lock(&srv->lock);
	for (s = srv->sessions; s; s = s->next)
		conn_abort(s->c);
	while (srv->nsessions)
		pthread_cond_wait(&srv->cond, &srv->lock);
	pthread_mutex_unlock(&srv->lock);
	slog(srv, SERVER_LOG_INFO, "stopped");
	return ret;
}
