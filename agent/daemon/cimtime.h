/* SPDX-License-Identifier: MIT */
/*
 * cimtime.h - CIM datetime and interval strings, and ISO 8601, as the
 * Resynchronize API and Msvm_ConcreteJob use them.  Times are microseconds
 * since the Unix epoch, UTC.
 */
#ifndef HVRESYNC_CIMTIME_H
#define HVRESYNC_CIMTIME_H

#include <stdint.h>

#define CIM_DATETIME_LEN 26 /* 25 characters and the NUL */

/* "yyyymmddHHMMSS.mmmmmmsUUU" (s is + or -, UUU minutes east of UTC). */
int cim_datetime_parse(const char *s, int64_t *usec);
/* Format USEC as seen at OFFSET_MIN minutes east of UTC. */
void cim_datetime_format(int64_t usec, int offset_min,
			 char out[CIM_DATETIME_LEN]);
/* "ddddddddHHMMSS.mmmmmm:000" */
int cim_interval_parse(const char *s, int64_t *usec);
void cim_interval_format(int64_t usec, char out[CIM_DATETIME_LEN]);
/* ISO 8601: YYYY-MM-DD[THH:MM[:SS[.frac]]][Z|+HH[:MM]|-HH[:MM]]; without a
 * zone the time is local time.  A space may stand for the T. */
int iso8601_parse(const char *s, int64_t *usec);
/* A StartTime as the API takes it: CIM datetime or ISO 8601. */
int start_time_parse(const char *s, int64_t *usec);
/* Minutes east of UTC of the local zone at USEC. */
int local_offset_min(int64_t usec);

#endif
