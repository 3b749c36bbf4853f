/* SPDX-License-Identifier: MIT */
/* test_cimtime.c - CIM datetime/interval and ISO 8601 parsing and formatting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "agent/daemon/cimtime.h"

/* 2026-11-24 18:30:00 UTC, worked out by hand: 20781 days after 1970-01-01
 * (56 years incl. 14 leap days = 20454, + 327 days to Nov 24) */
#define T_20261124_1830 ((20781LL * 86400 + 18 * 3600 + 30 * 60) * 1000000LL)

static void test_datetime_parse(void **state)
{
	int64_t t;

	(void)state;
	assert_int_equal(cim_datetime_parse("20261124183000.000000+000", &t),
			 0);
	assert_true(t == T_20261124_1830);
	/* the same instant written at UTC+1 (60 minutes east) */
	assert_int_equal(cim_datetime_parse("20261124193000.000000+060", &t),
			 0);
	assert_true(t == T_20261124_1830);
	assert_int_equal(cim_datetime_parse("20261124173000.000000-060", &t),
			 0);
	assert_true(t == T_20261124_1830);
	assert_int_equal(cim_datetime_parse("20261124183000.250000+000", &t),
			 0);
	assert_true(t == T_20261124_1830 + 250000);
	assert_int_equal(cim_datetime_parse("19700101000000.000000+000", &t),
			 0);
	assert_true(t == 0);
	assert_int_equal(cim_datetime_parse("20240229120000.000000+000", &t),
			 0);
}

static void test_datetime_reject(void **state)
{
	static const char *bad[] = {
		"",
		"2026112418300.000000+000",
		"20261124183000.000000+0000",
		"20261124183000,000000+000",
		"20261124183000.000000*000",
		"20261324183000.000000+000",
		"20261131183000.000000+000",
		"20230229120000.000000+000",
		"20261124243000.000000+000",
		"20261124186000.000000+000",
		"2026112418300a.000000+000",
		"20261124183000.000000+999",
		"20261124183000.******+000",
	};
	size_t i;
	int64_t t;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(cim_datetime_parse(bad[i], &t), -22);
	assert_int_equal(cim_datetime_parse(NULL, &t), -22);
}

static void test_datetime_format(void **state)
{
	char out[CIM_DATETIME_LEN];
	int64_t t;

	(void)state;
	cim_datetime_format(T_20261124_1830, 0, out);
	assert_string_equal(out, "20261124183000.000000+000");
	cim_datetime_format(T_20261124_1830 + 123456, 60, out);
	assert_string_equal(out, "20261124193000.123456+060");
	cim_datetime_format(T_20261124_1830, -300, out);
	assert_string_equal(out, "20261124133000.000000-300");
	/* round trip over month and year ends */
	assert_int_equal(cim_datetime_parse("20251231235959.999999+000", &t),
			 0);
	cim_datetime_format(t, 0, out);
	assert_string_equal(out, "20251231235959.999999+000");
	cim_datetime_format(t + 1, 0, out);
	assert_string_equal(out, "20260101000000.000000+000");
}

static void test_interval(void **state)
{
	char out[CIM_DATETIME_LEN];
	int64_t t;

	(void)state;
	/* the example from HYPERV-FACTS: 1 day, 12 hours and 32 seconds */
	assert_int_equal(cim_interval_parse("00000001120032.000000:000", &t),
			 0);
	assert_true(t == (86400LL + 12 * 3600 + 32) * 1000000LL);
	cim_interval_format(t, out);
	assert_string_equal(out, "00000001120032.000000:000");
	cim_interval_format(1500000, out);
	assert_string_equal(out, "00000000000001.500000:000");
	cim_interval_format(0, out);
	assert_string_equal(out, "00000000000000.000000:000");
	assert_int_equal(cim_interval_parse("00000001120032.000000+000", &t),
			 -22);
	assert_int_equal(cim_interval_parse("00000001250032.000000:000", &t),
			 -22);
	assert_int_equal(cim_interval_parse("0000001120032.000000:000", &t),
			 -22);
}

static void test_iso8601(void **state)
{
	int64_t t;

	(void)state;
	assert_int_equal(iso8601_parse("2026-11-24T18:30:00Z", &t), 0);
	assert_true(t == T_20261124_1830);
	assert_int_equal(iso8601_parse("2026-11-24T19:30:00+01:00", &t), 0);
	assert_true(t == T_20261124_1830);
	assert_int_equal(iso8601_parse("2026-11-24 13:30-0500", &t), 0);
	assert_true(t == T_20261124_1830);
	assert_int_equal(iso8601_parse("2026-11-24T18:30:00.5Z", &t), 0);
	assert_true(t == T_20261124_1830 + 500000);
	setenv("TZ", "UTC", 1);
	assert_int_equal(iso8601_parse("2026-11-24T18:30", &t), 0);
	assert_true(t == T_20261124_1830);
	assert_int_equal(iso8601_parse("2026-11-24T18:30:00+25:00", &t), -22);
	assert_int_equal(iso8601_parse("2026-02-30T18:30:00Z", &t), -22);
	assert_int_equal(iso8601_parse("tomorrow", &t), -22);
	assert_int_equal(iso8601_parse("2026-11-24T18:30:00Zjunk", &t), -22);
	/* start_time_parse takes either form */
	assert_int_equal(start_time_parse("20261124183000.000000+000", &t), 0);
	assert_true(t == T_20261124_1830);
	assert_int_equal(start_time_parse("2026-11-24T18:30:00Z", &t), 0);
	assert_true(t == T_20261124_1830);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_datetime_parse),
		cmocka_unit_test(test_datetime_reject),
		cmocka_unit_test(test_datetime_format),
		cmocka_unit_test(test_interval),
		cmocka_unit_test(test_iso8601),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
