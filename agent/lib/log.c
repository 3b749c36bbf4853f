/* SPDX-License-Identifier: MIT */
/* log.c - one logger for the CLI, the server and the daemon (log.h). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <syslog.h>
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

void log_vmsg(int prio, const char *component, const char *fmt, va_list ap)
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

void log_msg(int prio, const char *component, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(prio, component, fmt, ap);
	va_end(ap);
}
