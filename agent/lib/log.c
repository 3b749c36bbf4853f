/* SPDX-License-Identifier: MIT */
/* log.c - one logger for the CLI, the server and the daemon (log.h). */
#include <stdio.h>
#include <syslog.h>

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
	char line[2048], *p;

	vsnprintf(line, sizeof(line), fmt, ap);
	for (p = line; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
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
