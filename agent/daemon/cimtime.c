/* SPDX-License-Identifier: MIT */
/*
 * cimtime.c - parsing and formatting CIM datetimes and intervals
 * (DMTF DSP0004) and ISO 8601 start times.  Days are counted with a
 * civil-from-days formula so no time zone database or timegm() quirks
 * enter the conversion; only "local time" without a zone asks mktime().
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/daemon/cimtime.h"

#define USEC 1000000LL

/* Days from 1970-01-01 to Y-M-D in the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	int64_t era;
	unsigned yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned)(y - era * 400);
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d)
{
	int64_t era, yy;
	unsigned doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = (unsigned)(z - era * 146097);
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	yy = (int64_t)yoe + era * 400;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = (int)(yy + (*m <= 2));
}

static unsigned days_in_month(int y, unsigned m)
{
	static const unsigned dim[] = { 31, 28, 31, 30, 31, 30,
					31, 31, 30, 31, 30, 31 };
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : dim[m - 1];
}

/* N decimal digits at S. */
static int digits(const char *s, unsigned n, int64_t *v)
{
	unsigned i;

	*v = 0;
	for (i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -EINVAL;
		*v = *v * 10 + (s[i] - '0');
	}
	return 0;
}

static int civil_valid(int64_t y, int64_t mo, int64_t d, int64_t h, int64_t mi,
		       int64_t s)
{
	if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 ||
	    d > days_in_month((int)y, (unsigned)mo) || h > 23 || mi > 59 ||
	    s > 59)
		return -EINVAL;
	return 0;
}

int cim_datetime_parse(const char *s, int64_t *usec)
{
	int64_t y, mo, d, h, mi, se, us, off;

	if (!s || strlen(s) != 25 || s[14] != '.' ||
	    (s[21] != '+' && s[21] != '-'))
		return -EINVAL;
	if (digits(s, 4, &y) || digits(s + 4, 2, &mo) || digits(s + 6, 2, &d) ||
	    digits(s + 8, 2, &h) || digits(s + 10, 2, &mi) ||
	    digits(s + 12, 2, &se) || digits(s + 15, 6, &us) ||
	    digits(s + 22, 3, &off))
		return -EINVAL;
	if (civil_valid(y, mo, d, h, mi, se) || off > 720)
		return -EINVAL;
	if (s[21] == '-')
		off = -off;
	*usec = ((days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 +
		  h * 3600 + mi * 60 + se - off * 60) *
		 USEC) +
		us;
	return 0;
}

void cim_datetime_format(int64_t usec, int offset_min,
			 char out[CIM_DATETIME_LEN])
{
	int64_t t = usec / USEC + (int64_t)offset_min * 60, us = usec % USEC;
	int64_t days, rem;
	unsigned m, d;
	int y;

	if (us < 0) {
		us += USEC;
		t--;
	}
	days = t / 86400;
	rem = t % 86400;
	if (rem < 0) {
		rem += 86400;
		days--;
	}
	char tmp[96];

	civil_from_days(days, &y, &m, &d);
	snprintf(tmp, sizeof(tmp), "%04d%02u%02u%02d%02d%02d.%06d%c%03d",
		 y % 10000, m % 100, d % 100, (int)(rem / 3600),
		 (int)(rem / 60 % 60), (int)(rem % 60), (int)us,
		 offset_min < 0 ? '-' : '+', abs(offset_min) % 1000);
	memcpy(out, tmp, CIM_DATETIME_LEN - 1);
	out[CIM_DATETIME_LEN - 1] = '\0';
}

int cim_interval_parse(const char *s, int64_t *usec)
{
	int64_t d, h, mi, se, us;

	if (!s || strlen(s) != 25 || s[14] != '.' || strcmp(s + 21, ":000"))
		return -EINVAL;
	if (digits(s, 8, &d) || digits(s + 8, 2, &h) ||
	    digits(s + 10, 2, &mi) || digits(s + 12, 2, &se) ||
	    digits(s + 15, 6, &us))
		return -EINVAL;
	if (h > 23 || mi > 59 || se > 59)
		return -EINVAL;
	*usec = ((d * 86400 + h * 3600 + mi * 60 + se) * USEC) + us;
	return 0;
}

void cim_interval_format(int64_t usec, char out[CIM_DATETIME_LEN])
{
	int64_t t, us;

	if (usec < 0)
		usec = 0;
	char tmp[96];

	t = usec / USEC;
	us = usec % USEC;
	snprintf(tmp, sizeof(tmp), "%08lld%02d%02d%02d.%06d:000",
		 (long long)(t / 86400 % 100000000), (int)(t / 3600 % 24),
		 (int)(t / 60 % 60), (int)(t % 60), (int)us);
	memcpy(out, tmp, CIM_DATETIME_LEN - 1);
	out[CIM_DATETIME_LEN - 1] = '\0';
}

int local_offset_min(int64_t usec)
{
	time_t t = (time_t)(usec / USEC);
	struct tm tm;

	if (!localtime_r(&t, &tm))
		return 0;
	return (int)(tm.tm_gmtoff / 60);
}

int iso8601_parse(const char *s, int64_t *usec)
{
	int64_t y, mo, d, h = 0, mi = 0, se = 0, us = 0, oh = 0, om = 0;
	const char *p = s;
	bool zone = false;
	int sign = 1;

	if (!s || strlen(s) < 10 || p[4] != '-' || p[7] != '-')
		return -EINVAL;
	if (digits(p, 4, &y) || digits(p + 5, 2, &mo) || digits(p + 8, 2, &d))
		return -EINVAL;
	p += 10;
	if (*p == 'T' || *p == 't' || *p == ' ') {
		p++;
		if (digits(p, 2, &h) || p[2] != ':' || digits(p + 3, 2, &mi))
			return -EINVAL;
		p += 5;
		if (*p == ':') {
			if (digits(p + 1, 2, &se))
				return -EINVAL;
			p += 3;
			if (*p == '.' || *p == ',') {
				int64_t scale = USEC / 10;

				p++;
				if (!isdigit((unsigned char)*p))
					return -EINVAL;
				for (; isdigit((unsigned char)*p);
				     p++, scale /= 10)
					us += (*p - '0') * scale;
			}
		}
	}
	if (*p == 'Z' || *p == 'z') {
		zone = true;
		p++;
	} else if (*p == '+' || *p == '-') {
		zone = true;
		sign = *p == '-' ? -1 : 1;
		if (digits(p + 1, 2, &oh))
			return -EINVAL;
		p += 3;
		if (*p == ':')
			p++;
		if (isdigit((unsigned char)*p)) {
			if (digits(p, 2, &om))
				return -EINVAL;
			p += 2;
		}
		if (oh > 14 || om > 59)
			return -EINVAL;
	}
	if (*p || civil_valid(y, mo, d, h, mi, se))
		return -EINVAL;
	if (zone) {
		*usec = (days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 +
			 h * 3600 + mi * 60 + se -
			 sign * (oh * 3600 + om * 60)) *
				USEC +
			us;
	} else {
		struct tm tm = { 0 };
		time_t t;

		tm.tm_year = (int)y - 1900;
		tm.tm_mon = (int)mo - 1;
		tm.tm_mday = (int)d;
		tm.tm_hour = (int)h;
		tm.tm_min = (int)mi;
		tm.tm_sec = (int)se;
		tm.tm_isdst = -1;
		t = mktime(&tm);
		if (t == (time_t)-1)
			return -EINVAL;
		*usec = (int64_t)t * USEC + us;
	}
	return 0;
}

int start_time_parse(const char *s, int64_t *usec)
{
	if (s && strlen(s) == 25 && s[14] == '.')
		return cim_datetime_parse(s, usec);
	return iso8601_parse(s, usec);
}
