/* SPDX-License-Identifier: MIT */
/*
 * log.c - how the raw view reports: its own lines ("hvresync: ..." on
 * stderr until view_serve() detaches, then syslog), libfuse's messages
 * folded into the same stream, and one line per image for the first read
 * or write that fails.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include "fuse/internal.h"

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

static void fuse_logger(enum fuse_log_level level, const char *fmt, va_list ap)
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

void view_log_start(bool to_stderr)
{
	log_stderr = to_stderr;
	fuse_set_log_func(fuse_logger);
}

void view_log_detach(void)
{
	log_stderr = false;
}

void view_capture_start(char *err, size_t errlen)
{
	if (err && errlen) {
		pthread_mutex_lock(&log_lock);
		err[0] = '\0';
		log_capture = err;
		log_capture_len = errlen;
		pthread_mutex_unlock(&log_lock);
	}
}

void view_capture_stop(void)
{
	pthread_mutex_lock(&log_lock);
	log_capture = NULL;
	log_capture_len = 0;
	pthread_mutex_unlock(&log_lock);
}

void view_set_err(char *err, size_t errlen, const char *fmt, ...)
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
void view_report_error(struct view_file *f, const char *op, uint64_t off,
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
void view_report_write_error(struct view_file *f, const char *op, uint64_t off,
			     uint64_t len, int err)
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
		 "lost)",
		 f->path, op, where, strerror(-err));
}
