/* SPDX-License-Identifier: MIT */
/*
 * control_client.c - the CLI's side of the control API (control_client.h,
 * docs/control-api.md): find the socket, send one request line, read the
 * reply, and the typed calls resync, job and vm are built from.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent/cli/control_client.h"
#include "agent/daemon/cimtime.h"
#include "agent/daemon/config.h"
#include "agent/lib/fmt.h"

/* --- client --- */

int control_resolve_socket(const char *config, const char *control, char **out,
			   char *err, size_t errlen)
{
	struct agent_config cfg;
	const char *path = config;
	int ret;

	err[0] = '\0';
	if (control) {
		*out = strdup(control);
		goto done;
	}
	if (!path && access(HVRESYNC_DEFAULT_CONFIG, R_OK) == 0)
		path = HVRESYNC_DEFAULT_CONFIG;
	if (!path) {
		*out = strdup(CONTROL_DEFAULT_SOCKET);
		goto done;
	}
	ret = config_load(path, &cfg, err, errlen);
	if (ret) {
		config_free(&cfg);
		return ret;
	}
	*out = strdup(cfg.control ? cfg.control : CONTROL_DEFAULT_SOCKET);
	config_free(&cfg);
done:
	if (!*out) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

int control_call(const char *sock, const char *request, int timeout_ms,
		 struct jv **reply, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int64_t deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 3600000);
	size_t cap = 4096, have = 0, rlen = strlen(request);
	char *buf = NULL, *nl = NULL, jerr[256];
	const struct jv *rv;
	int fd, ret;
	ssize_t n;

	*reply = NULL;
	if (strlen(sock) >= sizeof(sa.sun_path)) {
		snprintf(err, errlen, "%s: control socket path too long", sock);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return ret;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		ret = -errno;
		snprintf(err, errlen,
			 "%s: cannot connect to the control socket: %s%s", sock,
			 strerror(errno),
			 errno == EACCES
				 ? " (root or the agent's admin group only)"
			 : errno == ENOENT || errno == ECONNREFUSED
				 ? " (is the agent running?)"
				 : "");
		goto out;
	}
	ret = control_send_all(fd, request, rlen, (int)(deadline - mono_ms()));
	if (!ret)
		ret = control_send_all(fd, "\n", 1,
				       (int)(deadline - mono_ms()));
	/* An agent that refuses a caller (or has no memory for one)
	 * answers and closes without reading: its answer may be waiting. */
	if (ret && ret != -EPIPE && ret != -ECONNRESET) {
		snprintf(err, errlen, "%s: cannot send the request: %s", sock,
			 strerror(-ret));
		goto out;
	}
	buf = malloc(cap);
	if (!buf)
		goto nomem;
	while (!(nl = memchr(buf, '\n', have))) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int64_t left = deadline - mono_ms();
		int r;

		if (left <= 0) {
			ret = -ETIMEDOUT;
			snprintf(err, errlen,
				 "%s: no answer from the agent within %d s",
				 sock, (timeout_ms + 999) / 1000);
			goto out;
		}
		r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		if (have == cap) {
			char *nb;

			if (cap >= CONTROL_MAX_LINE * 64) {
				ret = -EPROTO;
				snprintf(err, errlen,
					 "%s: the agent's reply is too long",
					 sock);
				goto out;
			}
			nb = realloc(buf, cap * 2);
			if (!nb)
				goto nomem;
			buf = nb;
			cap *= 2;
		}
		n = recv(fd, buf + have, cap - have, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			ret = n < 0 ? -errno : -ECONNRESET;
			snprintf(
				err, errlen,
				"%s: the agent closed the connection without answering",
				sock);
			goto out;
		}
		have += (size_t)n;
	}
	ret = jv_parse(buf, (size_t)(nl - buf), reply, jerr, sizeof(jerr));
	if (ret == -ENOMEM)
		goto nomem;
	if (ret) {
		ret = -EPROTO;
		snprintf(err, errlen, "%s: the agent's reply is not JSON: %s",
			 sock, jerr);
		goto out;
	}
	rv = jv_get(*reply, "ReturnValue");
	if ((*reply)->type != JV_OBJECT || !rv || rv->type != JV_NUMBER ||
	    !rv->is_int) {
		jv_free(*reply);
		*reply = NULL;
		ret = -EPROTO;
		snprintf(err, errlen,
			 "%s: the agent's reply has no ReturnValue", sock);
		goto out;
	}
	ret = 0;
	goto out;
nomem:
	ret = -ENOMEM;
	snprintf(err, errlen, "out of memory");
out:
	free(buf);
	close(fd);
	return ret;
}

unsigned control_rv_for_error(int err)
{
	switch (err) {
	case -EACCES:
	case -EPERM:
		return RV_ACCESS_DENIED;
	case -ETIMEDOUT:
		return RV_TIMEOUT;
	case -ENOMEM:
		return RV_NO_MEMORY;
	case -ENOENT:
	case -ECONNREFUSED:
	case -ECONNRESET:
	case -EPIPE:
	case -ENOTDIR:
	case -ENAMETOOLONG:
		return RV_NOT_AVAILABLE;
	}
	return RV_FAILED;
}

unsigned control_reply_rv(const struct jv *reply)
{
	const struct jv *rv = reply ? jv_get(reply, "ReturnValue") : NULL;

	if (!rv || rv->type != JV_NUMBER || !rv->is_int || rv->i < 0 ||
	    rv->i > 0xffffffffLL)
		return RV_FAILED;
	return (unsigned)rv->i;
}

const char *control_reply_error(const struct jv *reply)
{
	const struct jv *e = reply ? jv_get(reply, "Error") : NULL;

	return e && e->type == JV_STRING ? e->s : NULL;
}

/* Build a request with the writer; *out is malloc()ed. */
static int build(char **out,
		 void (*fill)(struct json_writer *w, const void *arg),
		 const void *arg)
{
	struct json_writer w;
	size_t len = 0;
	FILE *f;
	int ret;

	*out = NULL;
	f = open_memstream(out, &len);
	if (!f)
		return -ENOMEM;
	json_init(&w, f, 0);
	fill(&w, arg);
	ret = json_end(&w);
	if (fclose(f) && !ret)
		ret = -ENOMEM;
	if (ret) {
		free(*out);
		*out = NULL;
		return ret;
	}
	/* json_end() added a newline; control_call() adds its own */
	if (len && (*out)[len - 1] == '\n')
		(*out)[len - 1] = '\0';
	return 0;
}

static void fill_resync(struct json_writer *w, const void *arg)
{
	const struct control_resync *a = arg;
	unsigned i;

	json_object_begin(w);
	json_kv_string(w, "Method", "Resynchronize");
	json_kv_string(w, "ComputerSystem", a->vm);
	json_kv_string(w, "StartTime", a->start_time);
	if (a->nsources) {
		json_key(w, "Sources");
		json_object_begin(w);
		for (i = 0; i < a->nsources; i++)
			json_kv_string(w, a->source_names[i],
				       a->source_paths[i]);
		json_object_end(w);
	}
	json_object_end(w);
}

static unsigned call_rv(const char *sock, const char *req, int timeout_ms,
			struct jv **reply, char *err, size_t errlen)
{
	const char *e;
	unsigned rv;
	int ret;

	ret = control_call(sock, req, timeout_ms, reply, err, errlen);
	if (ret)
		return control_rv_for_error(ret);
	rv = control_reply_rv(*reply);
	e = control_reply_error(*reply);
	if (e)
		snprintf(err, errlen, "%s", e);
	else if (rv != RV_OK && rv != RV_JOB_STARTED)
		snprintf(err, errlen, "the agent answered %u (%s)", rv,
			 rv_name(rv));
	return rv;
}

unsigned control_resynchronize(const char *sock, const struct control_resync *a,
			       int timeout_ms, char job[JOB_ID_LEN], char *err,
			       size_t errlen)
{
	struct jv *reply = NULL;
	const struct jv *id;
	char *req;
	unsigned rv;

	job[0] = '\0';
	err[0] = '\0';
	if (build(&req, fill_resync, a)) {
		snprintf(err, errlen, "out of memory");
		return RV_NO_MEMORY;
	}
	rv = call_rv(sock, req, timeout_ms, &reply, err, errlen);
	free(req);
	id = reply ? jv_get(reply, "Job") : NULL;
	if (id && id->type == JV_STRING && job_id_valid(id->s))
		memcpy(job, id->s, JOB_ID_LEN);
	else if (rv == RV_JOB_STARTED) {
		snprintf(err, errlen,
			 "%s: the agent accepted the request but named no job",
			 sock);
		rv = RV_FAILED;
	}
	jv_free(reply);
	return rv;
}

struct idreq {
	const char *method;
	const char *id;
	unsigned requested;
	int64_t timeout_usec;
};

static void fill_id(struct json_writer *w, const void *arg)
{
	const struct idreq *r = arg;
	char iv[CIM_DATETIME_LEN];

	json_object_begin(w);
	json_kv_string(w, "Method", r->method);
	json_kv_string(w, "Job", r->id);
	if (r->requested)
		json_kv_u64(w, "RequestedState", r->requested);
	if (r->timeout_usec > 0) {
		cim_interval_format(r->timeout_usec, iv);
		json_kv_string(w, "TimeoutPeriod", iv);
	}
	json_object_end(w);
}

unsigned control_get_job(const char *sock, const char *id, int timeout_ms,
			 struct job *j, char *err, size_t errlen)
{
	struct idreq r = { .method = "GetJob", .id = id };
	struct jv *reply = NULL;
	const struct jv *inst;
	char *req, jerr[256];
	unsigned rv;

	memset(j, 0, sizeof(*j));
	err[0] = '\0';
	if (build(&req, fill_id, &r)) {
		snprintf(err, errlen, "out of memory");
		return RV_NO_MEMORY;
	}
	rv = call_rv(sock, req, timeout_ms, &reply, err, errlen);
	free(req);
	if (rv == RV_OK) {
		inst = jv_get(reply, "Instance");
		if (!inst || job_from_json(inst, j, jerr, sizeof(jerr))) {
			job_clear(j);
			snprintf(err, errlen,
				 "%s: the agent's job is not readable: %s",
				 sock, inst ? jerr : "no Instance");
			rv = RV_FAILED;
		}
	}
	jv_free(reply);
	return rv;
}

unsigned control_job_state_change(const char *sock, const char *id,
				  unsigned requested, int64_t timeout_usec,
				  char *err, size_t errlen)
{
	struct idreq r = { .method = "RequestStateChange",
			   .id = id,
			   .requested = requested,
			   .timeout_usec = timeout_usec };
	struct jv *reply = NULL;
	int timeout_ms = 30000 + (int)(timeout_usec / 1000);
	char *req;
	unsigned rv;

	err[0] = '\0';
	if (build(&req, fill_id, &r)) {
		snprintf(err, errlen, "out of memory");
		return RV_NO_MEMORY;
	}
	rv = call_rv(sock, req, timeout_ms, &reply, err, errlen);
	if (rv != RSC_OK && rv != RSC_STARTED && !control_reply_error(reply) &&
	    reply)
		snprintf(err, errlen, "the agent answered %u (%s)", rv,
			 rsc_name(rv));
	free(req);
	jv_free(reply);
	return rv;
}

unsigned control_wait_job(const char *sock, const char *id, int timeout_ms,
			  void (*progress)(void *arg, const struct job *j),
			  void *arg, struct job *j, char *err, size_t errlen)
{
	int64_t deadline = mono_ms() + timeout_ms;
	struct job cur;
	unsigned rv;

	memset(j, 0, sizeof(*j));
	for (;;) {
		int64_t left = timeout_ms > 0 ? deadline - mono_ms() : 30000;

		if (left <= 0) {
			snprintf(err, errlen,
				 "job %s did not finish within %d s", id,
				 (timeout_ms + 999) / 1000);
			return RV_TIMEOUT;
		}
		rv = control_get_job(sock, id, left < 30000 ? (int)left : 30000,
				     &cur, err, errlen);
		if (rv == RV_TIMEOUT && timeout_ms > 0 &&
		    deadline - mono_ms() <= 0) {
			snprintf(err, errlen,
				 "job %s did not finish within %d s", id,
				 (timeout_ms + 999) / 1000);
			return RV_TIMEOUT;
		}
		if (rv)
			return rv;
		job_clear(j);
		*j = cur;
		if (progress)
			progress(arg, j);
		if (job_state_final(j->state))
			return 0;
		usleep(100000);
	}
}
