/* SPDX-License-Identifier: MIT */
/*
 * control.c - the control API's UNIX socket: the server (peer credentials,
 * one thread per connection, newline-delimited JSON); the client side is
 * the CLI's (agent/cli/control_client.c).  See control.h and
 * docs/control-api.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent/daemon/cimtime.h"
#include "agent/daemon/config.h"
#include "agent/daemon/control.h"
#include "agent/daemon/metrics.h"
#include "agent/lib/fmt.h"
#include "agent/lib/fsutil.h"
#include "agent/lib/log.h"

/* --- server --- */

struct control_server {
	int lfd;
	int wake[2];
	char *path;
	gid_t admin_gid;
	control_handler fn;
	void *ctx;
	pthread_t accept_thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stopping;
	unsigned nconn;
	int fds[CONTROL_MAX_CLIENTS];
};

struct client {
	struct control_server *srv;
	int fd;
	struct control_caller who;
	bool authorized;
};

static bool in_groups(const gid_t *g, int n, gid_t want)
{
	int i;

	for (i = 0; i < n; i++)
		if (g[i] == want)
			return true;
	return false;
}

/* Supplementary groups the kernel recorded when the caller connected. */
static int peer_groups(int fd, gid_t *g, int max)
{
	socklen_t len = (socklen_t)(max * (int)sizeof(gid_t));

#ifdef SO_PEERGROUPS
	if (fd >= 0 && !getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len))
		return (int)(len / sizeof(gid_t));
#endif
	return -1;
}

static bool proc_groups_have(pid_t pid, gid_t want)
{
	char path[64], line[4096];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		char *p, *end;

		if (strncmp(line, "Groups:", 7))
			continue;
		for (p = line + 7;;) {
			unsigned long v = strtoul(p, &end, 10);

			if (end == p)
				break;
			if ((gid_t)v == want)
				found = true;
			p = end;
		}
		break;
	}
	fclose(f);
	return found;
}

static bool db_groups_have(uid_t uid, gid_t want)
{
	struct passwd pw, *res = NULL;
	char buf[4096];
	gid_t groups[256];
	int n = 256;

	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) || !res)
		return false;
	if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n) < 0)
		return false;
	return in_groups(groups, n, want);
}

static bool authorized_fd(int fd, const struct control_caller *c,
			  gid_t admin_gid)
{
	gid_t groups[1024];
	int n;

	if (c->uid == 0)
		return true;
	if (admin_gid == (gid_t)-1)
		return false;
	if (c->gid == admin_gid)
		return true;
	n = peer_groups(fd, groups, 1024);
	if (n >= 0)
		return in_groups(groups, n, admin_gid);
	if (c->pid > 0 && proc_groups_have(c->pid, admin_gid))
		return true;
	return db_groups_have(c->uid, admin_gid);
}

bool control_caller_authorized(const struct control_caller *c, gid_t admin_gid)
{
	return authorized_fd(-1, c, admin_gid);
}

int control_send_all(int fd, const char *buf, size_t len, int timeout_ms)
{
	int64_t deadline = mono_ms() + timeout_ms;
	ssize_t n;

	while (len) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		int64_t left = deadline - mono_ms();

		if (left <= 0)
			return -ETIMEDOUT;
		if (poll(&p, 1, (int)left) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * A reply of our own ({"ReturnValue": N, "Error": "..."}), built on the
 * stack: it must get out when memory is what ran short.
 */
static int reply_simple(int fd, unsigned rv, const char *msg)
{
	char buf[1024];
	size_t o;
	const unsigned char *p;

	o = (size_t)snprintf(buf, sizeof(buf),
			     "{\"ReturnValue\":%u,\"Error\":\"", rv);
	for (p = (const unsigned char *)msg; *p && o < sizeof(buf) - 16; p++) {
		if (*p == '"' || *p == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)*p;
		} else if (*p < 0x20 || *p >= 0x7f) {
			/* our messages are ASCII; anything else is not worth
			 * the risk of breaking the line */
			buf[o++] = '?';
		} else {
			buf[o++] = (char)*p;
		}
	}
	memcpy(buf + o, "\"}\n", 3);
	return control_send_all(fd, buf, o + 3, 10000);
}

static int answer(struct client *cl, const char *line, size_t len)
{
	char err[256], msg[320];
	struct json_writer w;
	const struct jv *m;
	struct jv *req = NULL;
	char *buf = NULL;
	size_t blen = 0;
	FILE *f;
	int ret;

	if (!cl->authorized) {
		snprintf(
			msg, sizeof(msg),
			"access denied: uid %u is neither root nor in the agent's admin group",
			(unsigned)cl->who.uid);
		return reply_simple(cl->fd, RV_ACCESS_DENIED, msg);
	}
	ret = jv_parse(line, len, &req, err, sizeof(err));
	if (ret == -ENOMEM)
		return reply_simple(cl->fd, RV_NO_MEMORY, "out of memory");
	if (ret) {
		snprintf(msg, sizeof(msg), "malformed request: %s", err);
		return reply_simple(cl->fd, RV_INVALID_PARAMETER, msg);
	}
	if (req->type != JV_OBJECT) {
		jv_free(req);
		return reply_simple(cl->fd, RV_BAD_TYPE,
				    "a request is a JSON object");
	}
	m = jv_get(req, "Method");
	if (!m || m->type != JV_STRING) {
		jv_free(req);
		return reply_simple(cl->fd,
				    m ? RV_BAD_TYPE : RV_INVALID_PARAMETER,
				    m ? "Method is not a string"
				      : "the request names no Method");
	}
	f = open_memstream(&buf, &blen);
	if (!f) {
		jv_free(req);
		return reply_simple(cl->fd, RV_NO_MEMORY, "out of memory");
	}
	json_init(&w, f, 0);
	cl->srv->fn(cl->srv->ctx, &cl->who, req, &w);
	ret = json_end(&w);
	if (fclose(f) && !ret)
		ret = -ENOMEM;
	jv_free(req);
	if (ret) {
		free(buf);
		return reply_simple(cl->fd,
				    ret == -ENOMEM ? RV_NO_MEMORY : RV_FAILED,
				    "the agent could not write its reply");
	}
	ret = control_send_all(cl->fd, buf, blen, 10000);
	free(buf);
	return ret;
}

static void *client_thread(void *arg)
{
	struct client *cl = arg;
	struct control_server *s = cl->srv;
	/* an unauthorised caller gets one answer, and little patience */
	int idle_ms = cl->authorized ? 600000 : 10000;
	size_t have = 0, i;
	char *buf = malloc(CONTROL_MAX_LINE + 1);
	ssize_t n;

	if (!buf) {
		reply_simple(cl->fd, RV_NO_MEMORY, "out of memory");
		goto out;
	}
	for (;;) {
		struct pollfd p = { .fd = cl->fd, .events = POLLIN };
		char *nl;
		int r = poll(&p, 1, idle_ms);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n = recv(cl->fd, buf + have, CONTROL_MAX_LINE + 1 - have,
			 MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			break;
		have += (size_t)n;
		while ((nl = memchr(buf, '\n', have))) {
			size_t len = (size_t)(nl - buf);

			if (len && buf[len - 1] == '\r')
				len--;
			for (i = 0;
			     i < len && (buf[i] == ' ' || buf[i] == '\t'); i++)
				;
			if (i < len && answer(cl, buf, len))
				goto out;
			have -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, have);
			if (!cl->authorized)
				goto out;
		}
		if (have > CONTROL_MAX_LINE) {
			reply_simple(cl->fd, RV_INVALID_PARAMETER,
				     "request line longer than 64 KiB");
			break;
		}
	}
out:
	free(buf);
	pthread_mutex_lock(&s->lock);
	for (i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (s->fds[i] == cl->fd)
			s->fds[i] = -1;
	close(cl->fd);
	s->nconn--;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	free(cl);
	return NULL;
}

static void start_client(struct control_server *s, int fd)
{
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	struct client *cl;
	pthread_attr_t attr;
	pthread_t th;
	unsigned i;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen)) {
		log_msg(LOG_PRIO_WARNING, NULL,
			"control: cannot identify a caller: %s",
			strerror(errno));
		close(fd);
		return;
	}
	cl = calloc(1, sizeof(*cl));
	if (!cl) {
		reply_simple(fd, RV_NO_MEMORY, "out of memory");
		close(fd);
		return;
	}
	cl->srv = s;
	cl->fd = fd;
	cl->who.uid = cred.uid;
	cl->who.gid = cred.gid;
	cl->who.pid = cred.pid;
	cl->authorized = authorized_fd(fd, &cl->who, s->admin_gid);
	if (!cl->authorized) {
		metrics_count_refused_control();
		log_msg(LOG_PRIO_NOTICE, NULL,
			"control: refused uid %u (pid %d): not root, not in the admin group",
			(unsigned)cred.uid, (int)cred.pid);
	}

	pthread_mutex_lock(&s->lock);
	if (s->nconn >= CONTROL_MAX_CLIENTS || s->stopping) {
		pthread_mutex_unlock(&s->lock);
		reply_simple(fd, RV_IN_USE, "too many control connections");
		close(fd);
		free(cl);
		return;
	}
	for (i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (s->fds[i] < 0) {
			s->fds[i] = fd;
			break;
		}
	s->nconn++;
	pthread_mutex_unlock(&s->lock);

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&th, &attr, client_thread, cl)) {
		pthread_mutex_lock(&s->lock);
		s->fds[i] = -1;
		s->nconn--;
		pthread_mutex_unlock(&s->lock);
		reply_simple(fd, RV_NO_MEMORY, "cannot start a thread");
		close(fd);
		free(cl);
	}
	pthread_attr_destroy(&attr);
}

static void *accept_thread(void *arg)
{
	struct control_server *s = arg;

	for (;;) {
		struct pollfd p[2] = {
			{ .fd = s->lfd, .events = POLLIN },
			{ .fd = s->wake[0], .events = POLLIN },
		};
		int fd;

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_msg(LOG_PRIO_ERR, NULL, "control: poll: %s",
				strerror(errno));
			break;
		}
		if (p[1].revents)
			break;
		fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == EAGAIN ||
			    errno == ECONNABORTED)
				continue;
			log_msg(LOG_PRIO_ERR, NULL, "control: accept: %s",
				strerror(errno));
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOMEM)
				usleep(100000);
			continue;
		}
		start_client(s, fd);
	}
	return NULL;
}

static bool someone_listens(const struct sockaddr_un *sa)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool yes;

	if (fd < 0)
		return false;
	yes = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0;
	close(fd);
	return yes;
}

/* The folder the socket lives in (/run/hvresync), if it is not there. */
static int make_socket_dir(const char *path, char *err, size_t errlen)
{
	char *dir = strdup(path), *slash;
	int ret = 0;

	if (!dir) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		ret = fs_mkdir_p(dir, 0755);
		if (ret)
			snprintf(err, errlen, "%s: cannot create directory: %s",
				 dir, strerror(-ret));
	}
	free(dir);
	return ret;
}

static gid_t admin_gid_of(const char *admin_group)
{
	struct group gr, *gres = NULL;
	char grbuf[16384];

	if (admin_group && admin_group[0] &&
	    !getgrnam_r(admin_group, &gr, grbuf, sizeof(grbuf), &gres) && gres)
		return gr.gr_gid;
	return (gid_t)-1;
}

/* Replace a stale socket at @sa, but never a live agent's nor a file. */
static int take_path(const struct sockaddr_un *sa, char *err, size_t errlen)
{
	const char *path = sa->sun_path;
	struct stat st;

	if (lstat(path, &st))
		return 0;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "%s: exists and is not a socket", path);
		return -EEXIST;
	}
	if (someone_listens(sa)) {
		snprintf(err, errlen,
			 "%s: another agent is already listening there", path);
		return -EADDRINUSE;
	}
	unlink(path);
	return 0;
}

/* Listen on @sa as mode 0660, group s->admin_gid.  On failure after the
 * bind the socket file is removed again. */
static int listen_on(struct control_server *s, const struct sockaddr_un *sa,
		     char *err, size_t errlen)
{
	const char *path = sa->sun_path;
	int ret;

	s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s->lfd < 0 ||
	    bind(s->lfd, (const struct sockaddr *)sa, sizeof(*sa)) ||
	    listen(s->lfd, 64)) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot listen: %s", path,
			 strerror(errno));
		return ret;
	}
	/* SO_PEERCRED checks every caller anyway; the mode keeps others
	 * from even connecting. */
	if (chmod(path, 0660) ||
	    (s->admin_gid != (gid_t)-1 && chown(path, 0, s->admin_gid))) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot set mode and group: %s", path,
			 strerror(errno));
		unlink(path);
		return ret;
	}
	return 0;
}

/* The wake-up pipe and the accept thread. */
static int start_accepting(struct control_server *s, char *err, size_t errlen)
{
	int ret;

	if (pipe2(s->wake, O_CLOEXEC)) {
		ret = -errno;
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return ret;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	ret = pthread_create(&s->accept_thread, NULL, accept_thread, s);
	if (ret) {
		snprintf(err, errlen, "cannot start the control thread: %s",
			 strerror(ret));
		pthread_mutex_destroy(&s->lock);
		pthread_cond_destroy(&s->cond);
		return -ret;
	}
	return 0;
}

static void free_server(struct control_server *s)
{
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->wake[0] >= 0) {
		close(s->wake[0]);
		close(s->wake[1]);
	}
	free(s->path);
	free(s);
}

int control_server_start(const char *path, const char *admin_group,
			 control_handler fn, void *ctx,
			 struct control_server **out, char *err, size_t errlen)
{
	struct control_server *s;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	unsigned i;
	int ret;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, errlen,
			 "%s: control socket path longer than %zu bytes", path,
			 sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	s = calloc(1, sizeof(*s));
	if (!s || !(s->path = strdup(path))) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	s->lfd = -1;
	s->wake[0] = s->wake[1] = -1;
	s->fn = fn;
	s->ctx = ctx;
	for (i = 0; i < CONTROL_MAX_CLIENTS; i++)
		s->fds[i] = -1;
	ret = make_socket_dir(path, err, errlen);
	if (ret)
		goto fail;
	s->admin_gid = admin_gid_of(admin_group);
	ret = take_path(&sa, err, errlen);
	if (!ret)
		ret = listen_on(s, &sa, err, errlen);
	if (ret)
		goto fail;
	if (s->admin_gid == (gid_t)-1)
		log_msg(LOG_PRIO_WARNING, NULL,
			"control: admin group '%s' does not exist: only root may use %s",
			admin_group ? admin_group : "", path);
	ret = start_accepting(s, err, errlen);
	if (ret) {
		unlink(path);
		goto fail;
	}
	*out = s;
	return 0;
fail:
	free_server(s);
	return ret;
}

void control_server_stop(struct control_server *s)
{
	unsigned i;
	char c = 1;

	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	pthread_mutex_unlock(&s->lock);
	if (write(s->wake[1], &c, 1) < 0)
		log_msg(LOG_PRIO_WARNING, NULL,
			"control: cannot wake the accept thread");
	pthread_join(s->accept_thread, NULL);
	close(s->lfd);
	unlink(s->path);
	pthread_mutex_lock(&s->lock);
	for (i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (s->fds[i] >= 0)
			shutdown(s->fds[i], SHUT_RDWR);
	while (s->nconn)
		pthread_cond_wait(&s->cond, &s->lock);
	pthread_mutex_unlock(&s->lock);
	close(s->wake[0]);
	close(s->wake[1]);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s->path);
	free(s);
}
