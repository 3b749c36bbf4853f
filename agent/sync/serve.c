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

#include <openssl/crypto.h>
#include <zstd.h>

#include "agent/lib/fmt.h"
#include "agent/lib/fsutil.h"
#include "agent/lib/log.h"
#include "agent/sync/common.h"
#include "agent/sync/disk.h"
#include "agent/sync/proto.h"
#include "agent/sync/record.h"
#include "agent/sync/serve.h"
#include "agent/sync/serve_session.h"
#include "uring/hash.h"
#include "vhdx/vhdx.h"

#define SESSION_TIMEOUT_MS 60000
#define HELLO_BUF 512
/* Refused connections: this many lines in full per period, then one
 * summary line at its end. */
#define REFUSAL_PERIOD 10.0
#define REFUSAL_LINES 5
/* How long a session that sent ERROR waits for the primary to read it
 * and close before closing itself (conn_linger). */
#define LINGER_MS 3000
/* A handshake this old is an idle connection, not one of a burst. */
#define PENDING_STALE_S 1.0

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

/* ---- refused connections ------------------------------------------------- */

static const char *const refusal_names[REFUSED_KINDS] = {
	[REFUSED_PER_ADDR] = "over the per-address handshake cap",
	[REFUSED_PENDING] = "over the handshake cap",
	[REFUSED_EVICTED] = "closed to make room for another address",
	[REFUSED_TIMEOUT] = "no handshake and HELLO within the time limit",
	[REFUSED_HANDSHAKE] = "handshake or HELLO failed",
	[REFUSED_BUSY] = "told busy",
	[REFUSED_NOT_AUTHORIZED] = "not authorized for the VM",
};

/* The period's summary, when lines were held back; under srv->lock, the
 * line goes to @line (empty when there is none). */
static void refusal_period_end(struct server *srv, double now, char *line,
			       size_t len)
{
	size_t n = 0;
	unsigned total = 0, k;

	line[0] = '\0';
	for (k = 0; k < REFUSED_KINDS; k++)
		total += srv->refusals[k];
	if (srv->refusal_hidden) {
		n = (size_t)snprintf(line, len,
				     "%u connections refused or dropped in "
				     "the last %.0f s (%u not logged one by "
				     "one):",
				     total, now - srv->refusal_since,
				     srv->refusal_hidden);
		for (k = 0; k < REFUSED_KINDS && n < len; k++)
			if (srv->refusals[k])
				n += (size_t)snprintf(
					line + n, len - n, " %u %s;",
					srv->refusals[k], refusal_names[k]);
		if (n < len && line[n - 1] == ';')
			line[n - 1] = '\0';
	}
	memset(srv->refusals, 0, sizeof(srv->refusals));
	srv->refusal_lines = 0;
	srv->refusal_hidden = 0;
	srv->refusal_since = now;
}

/* Log the summary of a period that is over (or of the last one, @force). */
static void refusal_flush(struct server *srv, bool force)
{
	double now = mono_seconds();
	char line[1024];

	pthread_mutex_lock(&srv->lock);
	if (!force && now - srv->refusal_since < REFUSAL_PERIOD) {
		pthread_mutex_unlock(&srv->lock);
		return;
	}
	refusal_period_end(srv, now, line, sizeof(line));
	pthread_mutex_unlock(&srv->lock);
	if (line[0])
		serve_log(srv, LOG_PRIO_WARNING, "%s", line);
}

/*
 * A connection that did not become a session.  Under attack there is one
 * per connection, so only the first few of a period are logged in full;
 * the others are counted into one summary line (refusal_flush).
 */
static void refusal(struct server *srv, enum serve_refusal kind,
		    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void refusal(struct server *srv, enum serve_refusal kind,
		    const char *fmt, ...)
{
	double now = mono_seconds();
	char sum[1024], line[1024];
	bool show, last;
	va_list ap;

	pthread_mutex_lock(&srv->lock);
	sum[0] = '\0';
	if (now - srv->refusal_since >= REFUSAL_PERIOD)
		refusal_period_end(srv, now, sum, sizeof(sum));
	srv->refusals[kind]++;
	srv->refused_total++;
	show = srv->refusal_lines < REFUSAL_LINES;
	if (show)
		srv->refusal_lines++;
	else
		srv->refusal_hidden++;
	last = srv->refusal_lines == REFUSAL_LINES;
	pthread_mutex_unlock(&srv->lock);
	if (sum[0])
		serve_log(srv, LOG_PRIO_WARNING, "%s", sum);
	if (!show)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	serve_log(srv, LOG_PRIO_WARNING, "%s%s", line,
		  last ? " (more such lines are summed up every 10 s)" : "");
}

uint64_t server_refused_total(struct server *srv)
{
	uint64_t n;

	pthread_mutex_lock(&srv->lock);
	n = srv->refused_total;
	pthread_mutex_unlock(&srv->lock);
	return n;
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
	unsigned i;

	if (!e)
		return;
	free(e->name);
	free(e->path);
	free((char *)e->auth.vm);
	free((char *)e->auth.key_id);
	for (i = 0; e->allow && i < e->auth.nallow; i++)
		free(e->allow[i]);
	free(e->allow);
	free(e);
}

/* Give @e its own copy of @auth, with the id of the VM's own key when
 * the server holds one. */
static int copy_auth(struct server *srv, struct export *e,
		     const struct sync_vm_auth *auth)
{
	unsigned i;

	e->has_auth = true;
	if (!(e->auth.vm = strdup(auth->vm ? auth->vm : "")))
		return -ENOMEM;
	for (i = 0; i < srv->cfg.tls.nvm_keys; i++)
		if (srv->vm_keys[i].vm &&
		    !strcmp(srv->vm_keys[i].vm, e->auth.vm))
			break;
	if (i < srv->cfg.tls.nvm_keys &&
	    !(e->auth.key_id = strdup(srv->key_ids[i])))
		return -ENOMEM;
	if (!auth->nallow)
		return 0;
	e->allow = calloc(auth->nallow, sizeof(*e->allow));
	if (!e->allow)
		return -ENOMEM;
	e->auth.nallow = auth->nallow;
	for (i = 0; i < auth->nallow; i++)
		if (!(e->allow[i] = strdup(auth->allow[i])))
			return -ENOMEM;
	e->auth.allow = (const char *const *)e->allow;
	return 0;
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
	return server_add_vm_export(srv, name, path, NULL, err, errlen);
}

int server_add_vm_export(struct server *srv, const char *name, const char *path,
			 const struct sync_vm_auth *auth, char *err,
			 size_t errlen)
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
	if (auth && copy_auth(srv, e, auth)) {
		free_export(e);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
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

static void free_vm_keys(struct server *srv)
{
	unsigned i;

	if (srv->vm_keys) {
		for (i = 0; i < srv->cfg.tls.nvm_keys; i++)
			free((char *)srv->vm_keys[i].vm);
		OPENSSL_cleanse(srv->vm_keys,
				srv->cfg.tls.nvm_keys * sizeof(*srv->vm_keys));
	}
	free(srv->vm_keys);
	free(srv->key_ids);
	srv->vm_keys = NULL;
	srv->key_ids = NULL;
	srv->cfg.tls.vm_keys = NULL;
	srv->cfg.tls.nvm_keys = 0;
}

/* The VMs' own keys are the server's to keep: the caller may wipe its. */
static int copy_vm_keys(struct server *srv)
{
	unsigned i, n = srv->cfg.tls.nvm_keys;
	const struct tls_vm_key *from = srv->cfg.tls.vm_keys;

	srv->cfg.tls.vm_keys = NULL;
	if (!n)
		return 0;
	srv->vm_keys = calloc(n, sizeof(*srv->vm_keys));
	srv->key_ids = calloc(n, sizeof(*srv->key_ids));
	if (!srv->vm_keys || !srv->key_ids)
		return -ENOMEM;
	srv->cfg.tls.vm_keys = srv->vm_keys;
	for (i = 0; i < n; i++) {
		srv->vm_keys[i].vm = strdup(from[i].vm ? from[i].vm : "");
		if (!srv->vm_keys[i].vm)
			return -ENOMEM;
		memcpy(srv->vm_keys[i].psk, from[i].psk, TLS_PSK_LEN);
		tls_psk_key_id(from[i].psk, srv->key_ids[i]);
	}
	return 0;
}

struct server *server_new(const struct server_config *cfg, char *err,
			  size_t errlen)
{
	struct server *srv;
	struct stat st;
	int ret;

	srv = calloc(1, sizeof(*srv));
	if (!srv) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->cfg = *cfg;
	if (copy_vm_keys(srv)) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
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
	if (!srv->cfg.max_pending) {
		srv->cfg.max_pending =
			srv->cfg.max_sessions * SERVER_PENDING_PER_SESSION;
		if (srv->cfg.max_pending < SERVER_PENDING_MIN)
			srv->cfg.max_pending = SERVER_PENDING_MIN;
	}
	srv->refusal_since = mono_seconds();
	if (strlen(srv->state_dir) > PATH_MAX - 800) {
		snprintf(err, errlen, "%s: path too long", srv->state_dir);
		goto fail;
	}
	/*
	 * The records are made durable with the directory (fsync of it),
	 * but its own name only by an fsync of its parent, which
	 * fs_mkdir_p() does also when it exists: without it a power cut
	 * takes every record along.
	 */
	ret = fs_mkdir_p(srv->state_dir, 0700);
	if (ret < 0) {
		snprintf(err, errlen,
			 "%s: cannot create the state directory durably: %s",
			 srv->state_dir, strerror(-ret));
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
	free_vm_keys(srv);
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
	free_vm_keys(srv);
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

/*
 * May the session's peer open export @e?  Under srv->lock; when not,
 * @vm gets the export's VM and @why the reason, for refuse().
 */
static bool authorized(struct session *s, const struct export *e, char *vm,
		       size_t vmlen, char *why, size_t whylen)
{
	struct sync_cred cred;

	conn_cred(s->c, &cred);
	if (sync_authorized(e->has_auth ? &e->auth : NULL, &cred, why, whylen))
		return true;
	snprintf(vm, vmlen, "%s", e->has_auth ? e->auth.vm : e->name);
	return false;
}

/*
 * Tell a peer that is not allowed for the VM why (ERROR 9), and log it
 * with its address and identity (rate-limited like the other refusals:
 * the peer authenticated, but may still be a compromised host).
 */
static int refuse(struct session *s, const char *vm, const char *why)
{
	struct msg m;

	sync_error_msg(&m, PROTO_ERR_NOT_AUTHORIZED, "not authorized for VM %s",
		       vm);
	s->error_sent = true;
	session_send(s, &m);
	refusal(s->srv, REFUSED_NOT_AUTHORIZED,
		"session %u: peer %s (%s): not authorized for VM %s: "
		"refused export %s (%s); nothing was read or written",
		s->id, s->peer, conn_identity(s->c), vm, s->hello.name, why);
	return -EACCES;
}

static int claim_export(struct session *s)
{
	char vm[PROTO_NAME_MAX + 1], why[300];
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
	/* Before anything of the disk is looked at, even whether it is
	 * busy: a peer not allowed for the VM learns nothing of it. */
	if (!authorized(s, e, vm, sizeof(vm), why, sizeof(why))) {
		pthread_mutex_unlock(&s->srv->lock);
		return refuse(s, vm, why);
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

/* The handshake or HELLO failed; @what says which. */
static void hello_failed(struct session *s, int ret, const char *what,
			 const struct vhdx_error *terr)
{
	bool evicted;

	pthread_mutex_lock(&s->srv->lock);
	evicted = s->evicted; /* counted when it was closed */
	pthread_mutex_unlock(&s->srv->lock);
	/* The server stopping aborts it: nothing to report. */
	if (evicted || __atomic_load_n(&s->srv->stop, __ATOMIC_RELAXED))
		return;
	refusal(s->srv, ret == -ETIMEDOUT ? REFUSED_TIMEOUT : REFUSED_HANDSHAKE,
		"session %u: %s%s%s", s->id, what,
		terr->msg[0] ? terr->msg : s->peer,
		terr->msg[0] ? "" : ": closed");
}

/*
 * The handshake, then HELLO into s->hello, both within
 * SERVER_HANDSHAKE_MS of the accept however the peer trickles its bytes;
 * false when the session ends there (why was logged, and sent where it
 * helps).
 */
static bool read_hello(struct session *s)
{
	uint8_t buf[HELLO_BUF];
	struct vhdx_error terr;
	struct msg m;
	int ret;

	conn_set_timeout(s->c, SERVER_HANDSHAKE_MS);
	conn_set_deadline(s->c, SERVER_HANDSHAKE_MS);
	terr.msg[0] = '\0';
	ret = conn_handshake(s->c, &terr);
	if (ret < 0) {
		hello_failed(s, ret, "", &terr);
		return false;
	}
	snprintf(s->auth, sizeof(s->auth), "%s", conn_auth(s->c));
	terr.msg[0] = '\0';
	ret = proto_recv_msg(s->c, &m, buf, sizeof(buf), &terr);
	if (ret == -EPROTONOSUPPORT) {
		session_error(s, PROTO_ERR_UNSUPPORTED, "%s", terr.msg);
		return false;
	}
	/* A malformed frame comes from a peer that authenticated (or is
	 * on loopback without TLS): worth its own line.  Silence is not. */
	if (ret < 0 && ret != -ETIMEDOUT && ret != -ECONNRESET) {
		serve_log(s->srv, LOG_PRIO_WARNING, "session %u: %s", s->id,
			  terr.msg[0] ? terr.msg : strerror(-ret));
		return false;
	}
	if (ret < 0) {
		hello_failed(s, ret, "waiting for HELLO: ", &terr);
		return false;
	}
	if (m.type != PROTO_HELLO) {
		session_protocol_error(s, "%s before HELLO",
				       proto_type_name(m.type));
		return false;
	}
	conn_set_deadline(s->c, 0);
	conn_set_timeout(s->c, SESSION_TIMEOUT_MS);
	s->hello = m.u.hello;
	return true;
}

/*
 * An authenticated peer sent HELLO: take a session slot, or tell it the
 * server is busy.  False when the session ends here.
 */
static bool take_slot(struct session *s)
{
	struct server *srv = s->srv;
	unsigned max = srv->cfg.max_sessions;
	struct msg m;

	pthread_mutex_lock(&srv->lock);
	if (s->evicted) {
		pthread_mutex_unlock(&srv->lock);
		return false;
	}
	s->pending = false;
	srv->npending--;
	if (srv->nactive >= max) {
		pthread_mutex_unlock(&srv->lock);
		/* Not session_error(): that logs every time, and this
		 * one is rate-limited like the other refusals. */
		sync_error_msg(&m, PROTO_ERR_BUSY, "busy: %u session%s", max,
			       max == 1 ? "" : "s");
		s->error_sent = true;
		session_send(s, &m);
		refusal(srv, REFUSED_BUSY,
			"session %u: peer %s: export %s: busy: %u sessions "
			"already",
			s->id, s->peer, s->hello.name, max);
		return false;
	}
	s->active = true;
	srv->nactive++;
	pthread_mutex_unlock(&srv->lock);
	return true;
}

static void serve_session(struct session *s)
{
	const char *result = "failed";
	char merge_took[48] = "";
	int ret;

	if (!read_hello(s) || !take_slot(s))
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
	if (s->merge_seconds > 0)
		snprintf(merge_took, sizeof(merge_took), " (the merge %.3f s)",
			 s->merge_seconds);
	S_LOG(s, LOG_PRIO_INFO,
	      "session end: export %s: %s: from %" PRIu64 " of %" PRIu64
	      ", compared %" PRIu64 " bytes, different %" PRIu64
	      ", received %" PRIu64 ", in %.2f s%s%s",
	      s->name, ret < 0 ? "failed" : result, s->resume, s->size,
	      s->bytes_compared, s->bytes_written, s->bytes_received,
	      mono_seconds() - s->start, merge_took, disk_end_note(s, ret));
	disk_unlock(s);
	unclaim_export(s);
}

static void *session_main(void *arg)
{
	struct session *s = arg;
	struct server *srv = s->srv;
	struct session **pp;

	serve_session(s);
	/* The primary may still be sending: let it read why we stop. */
	if (s->error_sent)
		conn_linger(s->c, LINGER_MS);
	free(s->rbuf);
	proto_batch_free(&s->out);
	free(s->ring_sub);
	free(s->ring_zero);
	free(s->ring_fd);
	free(s->ring_off);
	free(s->sub_buf);
	ur_hasher_free(s->sub_hasher);
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
	if (s->pending && !s->evicted)
		srv->npending--;
	if (s->active)
		srv->nactive--;
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

/* The address of "ADDR:PORT" or "[V6]:PORT", without the port. */
static void peer_addr(const char *peer, char *out, size_t len)
{
	const char *colon = strrchr(peer, ':');
	size_t n = colon ? (size_t)(colon - peer) : strlen(peer);

	if (n >= len)
		n = len - 1;
	memcpy(out, peer, n);
	out[n] = '\0';
}

/* Connections of @addr in the handshake for @age seconds or more;
 * under srv->lock. */
static unsigned pending_of(const struct server *srv, const char *addr,
			   double age)
{
	double before = mono_seconds() - age;
	const struct session *o;
	unsigned n = 0;

	for (o = srv->sessions; o; o = o->next)
		n += o->pending && !o->evicted && !strcmp(o->addr, addr) &&
		     o->accepted <= before;
	return n;
}

/*
 * The handshakes are all taken: the oldest connection of the address
 * with the most of them, if that is more than @mine (the newcomer's
 * address has), so that a few addresses cannot keep all the others out.
 * NULL when there is none to drop.  Under srv->lock.
 */
static struct session *make_room(struct server *srv, unsigned mine)
{
	struct session *o, *victim = NULL;
	unsigned n, most = mine;

	for (o = srv->sessions; o; o = o->next) {
		if (!o->pending || o->evicted)
			continue;
		n = pending_of(srv, o->addr, 0);
		if (n > most || (n == most && victim && n > mine &&
				 !strcmp(o->addr, victim->addr) &&
				 o->accepted < victim->accepted)) {
			most = n;
			victim = o;
		}
	}
	return victim;
}

/*
 * A new connection: a thread for its handshake, unless its address or
 * everyone together already have as many handshakes under way as
 * allowed.  Session slots are taken later, after HELLO (take_slot), so
 * connections that never authenticate cannot fill them.
 *
 * The per-address cap counts only connections that have been in the
 * handshake for PENDING_STALE_S or more: a primary that starts many jobs
 * at once (every VM's timer fires at 18:30) opens many connections in a
 * burst, which the accept loop takes faster than any of them completes
 * its handshake, while connections that sit idle are what an attack is.
 */
static void start_session(struct server *srv, struct conn *c)
{
	char addr[sizeof(((struct session *)0)->addr)];
	struct session *victim = NULL;
	char vpeer[128], npeer[128];
	pthread_attr_t attr;
	struct session *s;
	unsigned mine;
	int ret;

	peer_addr(conn_peer(c), addr, sizeof(addr));
	/* For the log after the thread runs, which may free c. */
	snprintf(npeer, sizeof(npeer), "%s", conn_peer(c));
	pthread_mutex_lock(&srv->lock);
	mine = pending_of(srv, addr, PENDING_STALE_S);
	if (mine >= SERVER_PENDING_PER_ADDR) {
		pthread_mutex_unlock(&srv->lock);
		refusal(srv, REFUSED_PER_ADDR,
			"peer %s: closed: %u connections from %s have "
			"been in the handshake for a second or more",
			conn_peer(c), mine, addr);
		conn_close(c);
		return;
	}
	if (srv->npending >= srv->cfg.max_pending) {
		victim = make_room(srv, pending_of(srv, addr, 0));
		if (!victim) {
			pthread_mutex_unlock(&srv->lock);
			refusal(srv, REFUSED_PENDING,
				"peer %s: closed: %u connections are in the "
				"handshake already",
				conn_peer(c), srv->cfg.max_pending);
			conn_close(c);
			return;
		}
		/* Its thread sees the handshake fail and ends. */
		victim->evicted = true;
		srv->npending--;
		conn_abort(victim->c);
		snprintf(vpeer, sizeof(vpeer), "%s", victim->peer);
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
	s->pending = true;
	s->accepted = mono_seconds();
	snprintf(s->peer, sizeof(s->peer), "%s", conn_peer(c));
	snprintf(s->addr, sizeof(s->addr), "%s", addr);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	pthread_mutex_init(&s->send_lock, NULL);
	s->next = srv->sessions;
	srv->sessions = s;
	srv->nsessions++;
	srv->npending++;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	ret = pthread_create(&(pthread_t){ 0 }, &attr, session_main, s);
	pthread_attr_destroy(&attr);
	if (ret) {
		srv->sessions = s->next;
		srv->nsessions--;
		srv->npending--;
		pthread_mutex_unlock(&srv->lock);
		serve_log(srv, LOG_PRIO_ERR,
			  "peer %s: cannot start a thread: %s", s->peer,
			  strerror(ret));
		conn_close(c);
		pthread_mutex_destroy(&s->lock);
		pthread_cond_destroy(&s->cond);
		pthread_mutex_destroy(&s->send_lock);
		free(s);
		return;
	}
	pthread_mutex_unlock(&srv->lock);
	if (victim)
		refusal(srv, REFUSED_EVICTED,
			"peer %s: closed in the handshake to make room for "
			"%s (%u connections in the handshake)",
			vpeer, npeer, srv->cfg.max_pending);
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
		refusal_flush(srv, false);
		/* Wake up now and then for the refusals' summary line. */
		if (poll(p, 2, 1000) < 0) {
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

/*
 * A merge cut by a crash or a power cut leaves CHILD.merging next to the
 * image, which is then neither the old disk nor the new one: finish every
 * such merge before serving, so the image is whole again as soon as the
 * server is back, not only when a session next names the export (the
 * agent does the same at start, agent/daemon/held.c).  The record stays,
 * saying "merging", so that a MERGE retrying a cut one hears "merged"
 * (disk.c).  A merge that fails here is retried by the export's next
 * session, which reports the error to the primary.
 */
static void finish_merge(struct server *srv, const char *export,
			 const char *child)
{
	char name[SERVE_STATE_NAME_MAX];
	struct vhdx_error verr;
	struct record r;
	double t0 = mono_seconds();
	int ret;

	serve_log(srv, LOG_PRIO_WARNING,
		  "export %s: finishing the interrupted merge of %s before "
		  "serving",
		  export, child);
	if (!record_file_name(export, name, sizeof(name)) &&
	    !record_load(srv->state_dir, name, &r) && !r.merging) {
		r.merging = true;
		ret = record_save(srv->state_dir, name, &r);
		if (ret < 0)
			serve_log(srv, LOG_PRIO_WARNING,
				  "%s/%s: cannot update: %s", srv->state_dir,
				  name, strerror(-ret));
	}
	ret = vhdx_merge(child, 0, NULL, NULL, &verr);
	if (ret < 0)
		serve_log(srv, LOG_PRIO_ERR,
			  "export %s: the interrupted merge cannot finish: "
			  "%s (the next session tries again)",
			  export, verr.msg);
	else
		serve_log(srv, LOG_PRIO_NOTICE,
			  "export %s: the interrupted merge finished in %.1f s",
			  export, mono_seconds() - t0);
}

static void finish_merges(struct server *srv)
{
	char child[PATH_MAX], marker[PATH_MAX + 16], name[PROTO_NAME_MAX + 1];
	struct export *e;

	/* No session runs yet; an export being merged is marked busy so
	 * that server_remove_export() leaves it (and the walk) alone. */
	pthread_mutex_lock(&srv->lock);
	for (e = srv->exports; e; e = e->next) {
		if (!e->vhdx || e->busy ||
		    (size_t)snprintf(child, sizeof(child), "%s%s", e->path,
				     SERVER_CHILD_SUFFIX) >= sizeof(child))
			continue;
		snprintf(marker, sizeof(marker), "%s.merging", child);
		if (access(marker, F_OK))
			continue;
		e->busy = true;
		snprintf(name, sizeof(name), "%s", e->name);
		pthread_mutex_unlock(&srv->lock);
		finish_merge(srv, name, child);
		pthread_mutex_lock(&srv->lock);
		e->busy = false;
	}
	pthread_mutex_unlock(&srv->lock);
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
	if (!srv->cfg.merges_finished)
		finish_merges(srv);
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
	refusal_flush(srv, true);
	serve_log(srv, LOG_PRIO_INFO, "stopped");
	return ret;
}
