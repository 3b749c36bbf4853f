/* SPDX-License-Identifier: MIT */
/*
 * log.h - the one logger of hvresync, used by the CLI, the server and the
 * daemon.  A line goes to one of three places, chosen once per process:
 *
 *   plain    stderr, "hvresync: MSG" or "hvresync COMPONENT: [error: ]MSG"
 *            (the CLI; the default), with a "<N>" priority in front when
 *            stderr is the journal (a command run by a systemd unit);
 *   journal  stderr, "<N>[COMPONENT: ]MSG" with N the syslog priority, which
 *            journald turns into the record's priority (the agent in the
 *            foreground, as systemd runs it);
 *   syslog   syslog(3) with ident "hvresync" (the agent once detached).
 *
 * Every record is one line: newlines in a message (a peer's text, say)
 * become spaces.
 */
#ifndef HVRESYNC_LIB_LOG_H
#define HVRESYNC_LIB_LOG_H

#include <stdarg.h>

/* Priorities: the syslog(3) values. */
#define LOG_PRIO_ERR 3
#define LOG_PRIO_WARNING 4
#define LOG_PRIO_NOTICE 5
#define LOG_PRIO_INFO 6
#define LOG_PRIO_DEBUG 7

void log_use_plain(void);
void log_use_journal(void);
void log_use_syslog(void);

/* Log one line at @prio; @component ("serve") or NULL. */
void log_msg(int prio, const char *component, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void log_vmsg(int prio, const char *component, const char *fmt, va_list ap);

#endif
