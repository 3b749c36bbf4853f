/* SPDX-License-Identifier: MIT */
/*
 * fmt.h - how the agent shows sizes and measures time: human-readable
 * sizes in powers of 1024 up to PiB, and the monotonic and wall clocks.
 */
#ifndef HVRESYNC_LIB_FMT_H
#define HVRESYNC_LIB_FMT_H

#include <stddef.h>
#include <stdint.h>

/* "512 B", "1.5 MiB", "2.0 TiB" (one decimal above bytes).  Returns @out. */
const char *fmt_size(char *out, size_t len, double v);

/* Exact where it can be: "512 bytes", "4 MiB" for whole units, else
 * "1.5 GiB"; for reports that also print the exact byte count. */
const char *fmt_size_exact(char *out, size_t len, uint64_t v);

/* snprintf() for one-line messages, where cutting a long line short is
 * fine (so the compiler need not warn that it might happen). */
void fmt_line(char *out, size_t len, const char *f, ...)
	__attribute__((format(printf, 3, 4)));

/* Make @s one line in place: every control character (newline, tab,
 * escape, DEL...) becomes a space, so that text a peer or a client chose
 * cannot end a message early or forge another line.  Returns @s. */
char *fmt_one_line(char *s);

/* CLOCK_MONOTONIC in microseconds and in seconds; CLOCK_REALTIME in
 * microseconds since the epoch. */
int64_t mono_us(void);
int64_t mono_ms(void);
double mono_seconds(void);
int64_t wall_us(void);

#endif
