/* SPDX-License-Identifier: MIT */
/*
 * serve.c - the recovery side of the resync protocol (see serve.h and
 * docs/protocol.md): the listener, the table of exports and the session
 * threads.
 *
 * One thread accepts; each connection gets a session thread that does the
 * handshake, reads HELLO and claims the export; what follows is one
 * session's protocol (serve_session.c) over the disk it writes (disk.c),
 * with its progress recorded durably (record.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>

#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/sync/common.h"
#include "agent/sync/disk.h"
#include "agent/sync/proto.h"
#include "agent/sync/record.h"
#include "agent/sync/serve.h"
#include "agent/sync/serve_session.h"
#include "vhdx/vhdx.h"

#define SESSION_TIMEOUT_MS 60000
#define HELLO_BUF 512

/* ---- logging ------------------------------------------------------------- */

void serve_log(struct server *srv, int level, const char *fmt, ...)
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

/* ---- exports ------------------------------------------------------------- */

static struct export *find_export(struct server *srv, const char *name)
{
	struct export *e;

	for (e = srv->exports; e; e = e->next)
		if (!strcmp(e->name, name))
			return e;
	return NULL;
}

static void free_export(struct export *e)
{
	if (!e)
		return;
	free(e->name);
	free(e->path);
	free(e);
}

static void describe_export(struct server *srv, const struct export *e)
{
	if (e->vhdx)
		serve_log(srv, LOG_PRIO_INFO,
			  "export %s: %s (VHDX: sessions "
			  "write to %s%s, merged at the end)",
			  e->name, e->path, e->path, SERVER_CHILD_SUFFIX);
	else
		serve_log(srv, LOG_PRIO_WARNING,
			  "export %s: %s is a raw %s, "
			  "written in place: not cancel-safe (a cancelled or "
			  "failed session leaves it partly updated)",
			  e->name, e->path,
			  e->blockdev ? "block device" : "file");
}

/*
 * A new export for @path, found through its real path (the child goes
 * next to the real image), with its kind as it is now; NULL with @err.
 */
static struct export *new_export(const char *name, const char *path, int *ret,
				 char *err, size_t errlen)
{
	char real[PATH_MAX];
	struct export *e;
	struct stat st;
	int fd;

	if (!realpath(path, real)) {
		*ret = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	if (strlen(real) + sizeof(SERVER_CHILD_SUFFIX) + 16 >= PATH_MAX) {
		*ret = -ENAMETOOLONG;
		snprintf(err, errlen, "%s: path too long", path);
		return NULL;
	}
	fd = open(real, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		*ret = -errno;
		snprintf(err, errlen, "%s: cannot open: %s", path,
			 strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	e = calloc(1, sizeof(*e));
	if (e) {
		e->vhdx = S_ISREG(st.st_mode) && vhdx_probe_fd(fd) == 1;
		e->blockdev = S_ISBLK(st.st_mode);
	}
	close(fd);
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		free(e);
		*ret = -EINVAL;
		snprintf(err, errlen, "%s: not a regular file or block device",
			 path);
		return NULL;
	}
	if (!e || !(e->name = strdup(name)) || !(e->path = strdup(real))) {
		free_export(e);
		*ret = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	return e;
}

int server_add_export(struct server *srv, const char *name, const char *path,
		      char *err, size_t errlen)
{
	const char *problem = sync_export_name_problem(name, strlen(name));
	struct export *e;
	bool running;
	int ret;

	if (problem) {
		snprintf(err, errlen, "export name '%s' %s", name, problem);
		return -EINVAL;
	}
	e = new_export(name, path, &ret, err, errlen);
	if (!e)
		return ret;
	pthread_mutex_lock(&srv->lock);
	if (find_export(srv, name)) {
		pthread_mutex_unlock(&srv->lock);
		free_export(e);
		snprintf(err, errlen, "export '%s' is already defined", name);
		return -EEXIST;
	}
	e->next = srv->exports;
	srv->exports = e;
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
		free_export(e);
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
		free_export(e);
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
		return session_error(s, PROTO_ERR_UNKNOWN_EXPORT,
				     "unknown export "
				     "'%s'",
				     s->hello.name);
	}
	if (stat(e->path, &st) < 0) {
		ret = errno;
		pthread_mutex_unlock(&s->srv->lock);
		return session_error(s, PROTO_ERR_IO, "export %s: %s", e->name,
				     strerror(ret));
	}
	busy = e->busy || e->held;
	for (o = s->srv->exports; o && !busy; o = o->next)
		busy = o->busy && o->dev == st.st_dev && o->ino == st.st_ino;
	if (busy) {
		pthread_mutex_unlock(&s->srv->lock);
		return session_error(s, PROTO_ERR_BUSY,
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
	ret = record_file_name(s->name, s->state_name, sizeof(s->state_name));
	if (ret < 0 || (size_t)snprintf(s->state, sizeof(s->state), "%s/%s",
					s->srv->state_dir,
					s->state_name) >= sizeof(s->state))
		return session_error(s, PROTO_ERR_INTERNAL,
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
	if (flags & PROTO_HELLO_REPASS)
		return "copy (hold, another pass from 0)";
	if (flags & PROTO_HELLO_HOLD)
		return flags & PROTO_HELLO_RESTART ? "copy (restart, hold)"
						   : "copy (hold)";
	return flags & PROTO_HELLO_RESTART ? "copy (restart)" : "copy";
}

/* The handshake, then HELLO into s->hello; false when the session ends
 * there (why was logged, and sent where it helps). */
static bool read_hello(struct session *s)
{
	uint8_t buf[HELLO_BUF];
	struct vhdx_error terr;
	struct msg m;
	int ret;

	terr.msg[0] = '\0';
	ret = conn_handshake(s->c, &terr);
	if (ret < 0) {
		serve_log(s->srv, LOG_PRIO_WARNING, "session %u: %s", s->id,
			  terr.msg[0] ? terr.msg : strerror(-ret));
		return false;
	}
	snprintf(s->auth, sizeof(s->auth), "%s", conn_auth(s->c));
	conn_set_timeout(s->c, SESSION_TIMEOUT_MS);
	terr.msg[0] = '\0';
	ret = proto_recv_msg(s->c, &m, buf, sizeof(buf), &terr);
	if (ret == -EPROTONOSUPPORT) {
		session_error(s, PROTO_ERR_UNSUPPORTED, "%s", terr.msg);
		return false;
	}
	if (ret < 0) {
		serve_log(s->srv, LOG_PRIO_WARNING, "session %u: %s", s->id,
			  terr.msg[0] ? terr.msg : strerror(-ret));
		return false;
	}
	if (m.type != PROTO_HELLO) {
		session_protocol_error(s, "%s before HELLO",
				       proto_type_name(m.type));
		return false;
	}
	s->hello = m.u.hello;
	return true;
}

static void serve_session(struct session *s)
{
	const char *result = "failed";
	int ret;

	if (!read_hello(s))
		return;
	s->bs = s->hello.block_size;
	if (claim_export(s) < 0)
		return;
	s->start = mono_seconds();
	S_LOG(s, LOG_PRIO_INFO,
	      "session start (%s): export %s (%s): %s, "
	      "block size %u",
	      s->auth, s->name, s->image, kind_name(s->hello.flags), s->bs);
	ret = disk_lock(s);
	if (!ret)
		ret = disk_probe(s);
	/* MERGE and DISCARD may come without a source disk (size 0). */
	if (!ret &&
	    (s->hello.flags & (PROTO_HELLO_MERGE | PROTO_HELLO_DISCARD)) &&
	    s->hello.virtual_size)
		ret = disk_check_geometry(s);
	if (!ret && (s->hello.flags & PROTO_HELLO_MERGE))
		ret = session_merge(s, &result);
	else if (!ret && (s->hello.flags & PROTO_HELLO_DISCARD))
		ret = session_discard(s, &result);
	else if (!ret)
		ret = session_copy(s, &result);
	S_LOG(s, LOG_PRIO_INFO,
	      "session end: export %s: %s: from %" PRIu64 " of %" PRIu64
	      ", compared %" PRIu64 " bytes, different %" PRIu64
	      ", received %" PRIu64 ", in %.2f s%s",
	      s->name, ret < 0 ? "failed" : result, s->resume, s->size,
	      s->bytes_compared, s->bytes_written, s->bytes_received,
	      mono_seconds() - s->start,
	      s->vhdx && ret < 0 && access(s->child, F_OK) == 0
		      ? " (the image is unchanged; the child is kept for "
			"resume)"
		      : "");
	disk_unlock(s);
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
	case TLS_MODE_PSK:
		return "TLS 1.3, pre-shared key";
	case TLS_MODE_X509:
		return "TLS 1.3, certificates";
	case TLS_MODE_INSECURE:
		return "plain TCP, insecure, loopback only";
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
		serve_log(srv, LOG_PRIO_WARNING,
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
	ret = pthread_create(&(pthread_t){ 0 }, &attr, session_main, s);
	pthread_attr_destroy(&attr);
	if (ret) {
		srv->sessions = s->next;
		srv->nsessions--;
		pthread_mutex_unlock(&srv->lock);
		serve_log(srv, LOG_PRIO_ERR,
			  "peer %s: cannot start a thread: %s", s->peer,
			  strerror(ret));
		conn_close(c);
		free(s);
		return;
	}
	pthread_mutex_unlock(&srv->lock);
}

/* Accept until server_stop(); 0, or -errno when poll() fails. */
static int accept_loop(struct server *srv)
{
	struct pollfd p[2];
	struct vhdx_error terr;
	struct conn *c;
	int ret;

	p[0].fd = tls_listener_fd(srv->l);
	p[0].events = POLLIN;
	p[1].fd = srv->stop_pipe[0];
	p[1].events = POLLIN;
	while (!__atomic_load_n(&srv->stop, __ATOMIC_RELAXED)) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			serve_log(srv, LOG_PRIO_ERR, "poll: %s",
				  strerror(errno));
			return ret;
		}
		if (p[1].revents)
			break;
		if (!p[0].revents)
			continue;
		terr.msg[0] = '\0';
		ret = tls_accept(srv->l, &c, &terr);
		if (ret == -EAGAIN || ret == -EINTR)
			continue;
		if (ret < 0) {
			serve_log(srv, LOG_PRIO_WARNING, "accept: %s",
				  terr.msg[0] ? terr.msg : strerror(-ret));
			/* Out of descriptors, say: do not spin. */
			usleep(100000);
			continue;
		}
		start_session(srv, c);
	}
	return 0;
}

int server_run(struct server *srv)
{
	struct session *s;
	struct export *e;
	char err[512];
	int ret;

	ret = server_listen(srv, err, sizeof(err));
	if (ret < 0) {
		serve_log(srv, LOG_PRIO_ERR, "%s", err);
		return ret;
	}
	serve_log(srv, LOG_PRIO_INFO, "listening on %s (%s), state in %s",
		  srv->addr, mode_name(srv->cfg.tls.mode), srv->state_dir);
	pthread_mutex_lock(&srv->lock);
	for (e = srv->exports; e; e = e->next)
		describe_export(srv, e);
	pthread_mutex_unlock(&srv->lock);
	ret = accept_loop(srv);
	pthread_mutex_lock(&srv->lock);
	for (s = srv->sessions; s; s = s->next)
		conn_abort(s->c);
	while (srv->nsessions)
		pthread_cond_wait(&srv->cond, &srv->lock);
	pthread_mutex_unlock(&srv->lock);
	serve_log(srv, LOG_PRIO_INFO, "stopped");
	return ret;
}
