/* SPDX-License-Identifier: MIT */
/* fmt.c - sizes for people and the clocks (fmt.h). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "agent/lib/fmt.h"

static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
#define NUNITS (sizeof(units) / sizeof(units[0]))

const char *fmt_size(char *out, size_t len, double v)
{
	unsigned u = 0;

	while (v >= 1024 && u < NUNITS - 1) {
		v /= 1024;
		u++;
	}
	snprintf(out, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
	return out;
}

const char *fmt_size_exact(char *out, size_t len, uint64_t v)
{
	unsigned u = 0;

	while (u < NUNITS - 1 && v >= (1ull << (10 * (u + 1))))
		u++;
	if (u == 0)
		snprintf(out, len, "%" PRIu64 " bytes", v);
	else if (!(v & ((1ull << (10 * u)) - 1)))
		snprintf(out, len, "%" PRIu64 " %s", v >> (10 * u), units[u]);
	else
		snprintf(out, len, "%.1f %s", (double)v / (1ull << (10 * u)),
			 units[u]);
	return out;
}

void fmt_line(char *out, size_t len, const char *f, ...)
{
	va_list ap;

	va_start(ap, f);
	vsnprintf(out, len, f, ap);
	va_end(ap);
}

char *fmt_one_line(char *s)
{
	unsigned char *p;

	for (p = (unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			*p = ' ';
	return s;
}

int64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t mono_ms(void)
{
	return mono_us() / 1000;
}

double mono_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int64_t wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
