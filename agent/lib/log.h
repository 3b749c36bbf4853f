/* SPDX-License-Identifier: MIT */
/*
 * log.h - the one logger of hvresync, used by the CLI, the server and the
 * daemon.  A line goes to one of three places, chosen once per process:
 *
 *   plain    stderr, "hvresync: MSG" or "hvresync COMPONENT: [error: ]MSG"
 *            (the CLI; the default), with a "<N>" priority in front when
 *            stderr is the journal (a command run by a systemd unit);
 *   journal  the agent in the foreground, as systemd runs it: when stderr
 *            is the journal's stream (JOURNAL_STREAM names it), each
 *            record goes through sd_journal_sendv() with PRIORITY,
 *            MESSAGE and the structured fields of log_fields below; else
 *            (or when the journal socket refuses) stderr,
 *            "<N>[COMPONENT: ]MSG" with N the syslog priority, which
 *            journald turns into the record's priority;
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

/*
 * Structured fields of one record, each NULL when it does not apply.  In
 * the journal they become HVRESYNC_VM=, HVRESYNC_JOB=, one HVRESYNC_DISK=
 * per disk (a field may repeat) and MESSAGE_ID= (32 lowercase hex
 * digits), so `journalctl MESSAGE_ID=...` or `journalctl HVRESYNC_VM=web01`
 * finds them; elsewhere the line is the same as log_msg()'s.
 */
#define LOG_FIELDS_MAX_DISKS 16
struct log_fields {
	const char *vm;
	const char *job;
	const char *const *disks; /* @ndisks names */
	unsigned ndisks;
	const char *message_id;
};

void log_fields_msg(int prio, const char *component, const struct log_fields *f,
		    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void log_fields_vmsg(int prio, const char *component,
		     const struct log_fields *f, const char *fmt, va_list ap);

#endif
