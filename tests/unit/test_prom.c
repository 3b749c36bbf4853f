/* SPDX-License-Identifier: MIT */
/* test_prom.c - agent/lib/prom.c, the Prometheus text format writer: what
 * node_exporter's textfile collector must parse (escaping, values, one
 * family at a time, valid names) and the atomic .prom file a polling
 * collector must never see half written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent/lib/prom.h"

/* The text of @p, finished; the caller frees it. */
static char *finish_ok(struct prom *p)
{
	char *buf = NULL;
	size_t len = 0;

	assert_int_equal(prom_finish(p, &buf, &len), 0);
	assert_non_null(buf);
	assert_int_equal(strlen(buf), len);
	return buf;
}

static void test_family_and_samples(void **state)
{
	struct prom p;
	char *t;

	(void)state;
	assert_int_equal(prom_init(&p), 0);
	prom_family(&p, "hvresync_jobs_failed_total", PROM_COUNTER,
		    "Jobs that failed.");
	prom_sample(&p, 3, NULL);
	prom_family(&p, "hvresync_vm_replication_state", PROM_GAUGE, "State.");
	prom_sample(&p, 9, "vm", "web01", "role", "primary", "peer",
		    "10.0.0.2:7433", NULL);
	/* a NULL value leaves the label out */
	prom_sample(&p, 1, "vm", "db", "peer", NULL, NULL);
	t = finish_ok(&p);
	assert_string_equal(
		t,
		"# HELP hvresync_jobs_failed_total Jobs that failed.\n"
		"# TYPE hvresync_jobs_failed_total counter\n"
		"hvresync_jobs_failed_total 3\n"
		"# HELP hvresync_vm_replication_state State.\n"
		"# TYPE hvresync_vm_replication_state gauge\n"
		"hvresync_vm_replication_state{vm=\"web01\",role=\"primary\",peer=\"10.0.0.2:7433\"} 9\n"
		"hvresync_vm_replication_state{vm=\"db\"} 1\n");
	free(t);
}

static void test_escaping(void **state)
{
	struct prom p;
	char *t;

	(void)state;
	assert_int_equal(prom_init(&p), 0);
	/* HELP escapes backslash and newline, not quotes */
	prom_family(&p, "x", PROM_GAUGE, "a \"q\" \\ b\nc");
	/* a VM name is free text: every special character escaped */
	prom_sample(&p, 1, "vm", "we\"b\\0\n1", NULL);
	t = finish_ok(&p);
	assert_string_equal(t, "# HELP x a \"q\" \\\\ b\\nc\n"
			       "# TYPE x gauge\n"
			       "x{vm=\"we\\\"b\\\\0\\n1\"} 1\n");
	free(t);
}

static void test_values(void **state)
{
	struct prom p;
	char *t;

	(void)state;
	assert_int_equal(prom_init(&p), 0);
	prom_family(&p, "v", PROM_GAUGE, "values");
	prom_sample(&p, 0, "k", "zero", NULL);
	prom_sample(&p, -7, "k", "neg", NULL);
	prom_sample(&p, 0.25, "k", "frac", NULL);
	/* a byte count below 2^53 is written exactly, not as 1e+15 */
	prom_sample(&p, 4503599627370497.0, "k", "big", NULL);
	prom_sample(&p, 1777777777.125, "k", "time", NULL);
	prom_sample(&p, NAN, "k", "nan", NULL);
	prom_sample(&p, INFINITY, "k", "inf", NULL);
	prom_sample(&p, -INFINITY, "k", "ninf", NULL);
	t = finish_ok(&p);
	assert_non_null(strstr(t, "v{k=\"zero\"} 0\n"));
	assert_non_null(strstr(t, "v{k=\"neg\"} -7\n"));
	assert_non_null(strstr(t, "v{k=\"frac\"} 0.25\n"));
	assert_non_null(strstr(t, "v{k=\"big\"} 4503599627370497\n"));
	assert_non_null(strstr(t, "v{k=\"time\"} 1777777777.125\n"));
	assert_non_null(strstr(t, "v{k=\"nan\"} NaN\n"));
	assert_non_null(strstr(t, "v{k=\"inf\"} +Inf\n"));
	assert_non_null(strstr(t, "v{k=\"ninf\"} -Inf\n"));
	free(t);
}

static void test_names(void **state)
{
	(void)state;
	assert_true(prom_name_ok("hvresync_vm_state", 0));
	assert_true(prom_name_ok("ns:rule_name", 0));
	assert_true(prom_name_ok("_x9", 1));
	assert_false(prom_name_ok("", 0));
	assert_false(prom_name_ok("9lives", 0));
	assert_false(prom_name_ok("has-dash", 0));
	assert_false(prom_name_ok("has space", 0));
	assert_false(prom_name_ok("a:b", 1)); /* labels take no ':' */
	assert_false(prom_name_ok("__name__", 1));
	assert_false(prom_name_ok(NULL, 0));
}

/* Each misuse makes prom_finish() fail: a file promtool would refuse is
 * never written. */
static void test_misuse(void **state)
{
	struct prom p;
	char *buf = NULL;
	size_t len;

	(void)state;
	assert_int_equal(prom_init(&p), 0);
	prom_sample(&p, 1, NULL); /* before any family */
	assert_int_equal(prom_finish(&p, &buf, &len), -EINVAL);

	assert_int_equal(prom_init(&p), 0);
	prom_family(&p, "bad-name", PROM_GAUGE, "x");
	assert_int_equal(prom_finish(&p, &buf, &len), -EINVAL);

	assert_int_equal(prom_init(&p), 0);
	prom_family(&p, "a", PROM_GAUGE, "x");
	prom_sample(&p, 1, "__bad", "v", NULL);
	assert_int_equal(prom_finish(&p, &buf, &len), -EINVAL);

	/* a family split in two is not valid exposition */
	assert_int_equal(prom_init(&p), 0);
	prom_family(&p, "a", PROM_GAUGE, "x");
	prom_sample(&p, 1, NULL);
	prom_family(&p, "b", PROM_GAUGE, "x");
	prom_family(&p, "a", PROM_GAUGE, "x");
	assert_int_equal(prom_finish(&p, &buf, &len), -EEXIST);
	assert_null(buf);
}

static void test_write_file(void **state)
{
	char dir[] = "/tmp/test_prom.XXXXXX", path[256], err[512];
	char *got = NULL;
	struct stat st;
	struct dirent *e;
	FILE *f;
	DIR *d;
	long n;
	mode_t old;
	unsigned entries = 0;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/hvresync.prom", dir);
	old = umask(077); /* the file is 0644 whatever the umask */
	assert_int_equal(prom_write_file(path, "a 1\n", 4, err, sizeof(err)),
			 0);
	assert_int_equal(prom_write_file(path, "b 2\n", 4, err, sizeof(err)),
			 0);
	umask(old);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0644);
	f = fopen(path, "r");
	assert_non_null(f);
	got = calloc(1, 64);
	n = (long)fread(got, 1, 63, f);
	fclose(f);
	assert_int_equal(n, 4);
	assert_string_equal(got, "b 2\n");
	free(got);
	/* no temporary file is left next to it */
	d = opendir(dir);
	assert_non_null(d);
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			entries++;
	closedir(d);
	assert_int_equal(entries, 1);
	unlink(path);
	rmdir(dir);

	/* a folder that is not there: the error names the file */
	assert_int_equal(prom_write_file("/nonexistent-dir/x.prom", "a 1\n", 4,
					 err, sizeof(err)),
			 -ENOENT);
	assert_non_null(strstr(err, "/nonexistent-dir/"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_family_and_samples),
		cmocka_unit_test(test_escaping),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_misuse),
		cmocka_unit_test(test_write_file),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
