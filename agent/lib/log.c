/* SPDX-License-Identifier: MIT */
/* log.c - one logger for the CLI, the server and the daemon (log.h). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <syslog.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "agent/lib/fmt.h"
#include "agent/lib/log.h"

enum log_style { STYLE_PLAIN, STYLE_JOURNAL, STYLE_SYSLOG };

static enum log_style style = STYLE_PLAIN;

void log_use_plain(void)
{
	style = STYLE_PLAIN;
}

void log_use_journal(void)
{
	style = STYLE_JOURNAL;
}

void log_use_syslog(void)
{
	openlog("hvresync", LOG_PID, LOG_DAEMON);
	style = STYLE_SYSLOG;
}

/*
 * Is stderr the journal (systemd sets JOURNAL_STREAM to its "DEV:INODE")?
 * Then plain lines carry a "<N>" priority too, which journald strips and
 * keeps as the record's priority.  Checked once.
 */
static bool stderr_is_journal(void)
{
	static int known = -1;
	unsigned long long dev, ino;
	const char *e;
	struct stat st;

	if (known >= 0)
		return known;
	e = getenv("JOURNAL_STREAM");
	known = e && sscanf(e, "%llu:%llu", &dev, &ino) == 2 &&
		!fstat(STDERR_FILENO, &st) &&
		(unsigned long long)st.st_dev == dev &&
		(unsigned long long)st.st_ino == ino;
	return known;
}

static const char *severity(int prio)
{
	if (prio <= LOG_PRIO_ERR)
		return "error: ";
	if (prio == LOG_PRIO_WARNING)
		return "warning: ";
	return "";
}

/* One field "KEY=VALUE" into @buf (from @*used on) and @iov[@*n]; false
 * when @buf is full (the field is left out, the record still goes). */
static bool add_field(struct iovec *iov, unsigned *n, char *buf, size_t size,
		      size_t *used, const char *key, const char *value)
{
	int len;

	if (!value || *used >= size)
		return false;
	len = snprintf(buf + *used, size - *used, "%s=%s", key, value);
	if (len < 0 || (size_t)len >= size - *used)
		return false;
	iov[*n].iov_base = buf + *used;
	iov[*n].iov_len = (size_t)len;
	(*n)++;
	*used += (size_t)len + 1;
	return true;
}

/*
 * The record to journald's native socket, fields and all.  Returns
 * false when it did not take it (no socket: a test or a container), so
 * the caller writes the "<N>" line instead and nothing is lost.
 */
static bool send_journal(int prio, const char *component, const char *line,
			 const struct log_fields *f)
{
	struct iovec iov[8 + LOG_FIELDS_MAX_DISKS];
	char buf[4096], msg[2200];
	size_t used = 0;
	unsigned n = 0, i;

	snprintf(msg, sizeof(msg), "%s%s%s", component ? component : "",
		 component ? ": " : "", line);
	snprintf(buf, sizeof(buf), "PRIORITY=%d", prio);
	used = strlen(buf) + 1;
	iov[n].iov_base = buf;
	iov[n++].iov_len = used - 1;
	add_field(iov, &n, buf, sizeof(buf), &used, "SYSLOG_IDENTIFIER",
		  "hvresync");
	add_field(iov, &n, buf, sizeof(buf), &used, "MESSAGE", msg);
	if (f) {
		add_field(iov, &n, buf, sizeof(buf), &used, "MESSAGE_ID",
			  f->message_id);
		add_field(iov, &n, buf, sizeof(buf), &used, "HVRESYNC_VM",
			  f->vm);
		add_field(iov, &n, buf, sizeof(buf), &used, "HVRESYNC_JOB",
			  f->job);
		for (i = 0;
		     f->disks && i < f->ndisks && i < LOG_FIELDS_MAX_DISKS; i++)
			add_field(iov, &n, buf, sizeof(buf), &used,
				  "HVRESYNC_DISK", f->disks[i]);
	}
	return sd_journal_sendv(iov, (int)n) >= 0;
}

void log_fields_vmsg(int prio, const char *component,
		     const struct log_fields *f, const char *fmt, va_list ap)
{
	char line[2048];

	vsnprintf(line, sizeof(line), fmt, ap);
	fmt_one_line(line);
	switch (style) {
	case STYLE_SYSLOG:
		if (component)
			syslog(prio, "%s: %s", component, line);
		else
			syslog(prio, "%s", line);
		break;
	case STYLE_JOURNAL:
		if (stderr_is_journal() &&
		    send_journal(prio, component, line, f))
			break;
		fprintf(stderr, "<%d>%s%s%s\n", prio,
			component ? component : "", component ? ": " : "",
			line);
		break;
	case STYLE_PLAIN:
		if (stderr_is_journal())
			fprintf(stderr, "<%d>", prio);
		/* the CLI's own errors need no label: its exit code says so */
		if (component)
			fprintf(stderr, "hvresync %s: %s%s\n", component,
				severity(prio), line);
		else
			fprintf(stderr, "hvresync: %s\n", line);
		break;
	}
}

void log_vmsg(int prio, const char *component, const char *fmt, va_list ap)
{
	log_fields_vmsg(prio, component, NULL, fmt, ap);
}

void log_msg(int prio, const char *component, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(prio, component, fmt, ap);
	va_end(ap);
}

void log_fields_msg(int prio, const char *component, const struct log_fields *f,
		    const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_fields_vmsg(prio, component, f, fmt, ap);
	va_end(ap);
}
