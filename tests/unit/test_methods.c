/* SPDX-License-Identifier: MIT */
/*
 * test_methods.c - the pure steps of the control API's methods
 * (agent/daemon/methods.h): reading Resynchronize and RequestStateChange
 * requests, and judging a requested job transition.  The numbers are the
 * ReturnValues of docs/control-api.md, which scripts test, so they are
 * written out rather than taken from job.h.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent/daemon/config.h"
#include "agent/daemon/job.h"
#include "agent/daemon/methods.h"
#include "agent/lib/jsonparse.h"

/* 2026-11-24 18:00:00 UTC: every StartTime below is relative to it. */
#define NOW (1795543200LL * 1000000)
#define MINUTE (60LL * 1000000)

static const char conf[] = "[vm web01]\n"
			   "id = 0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a21\n"
			   "role = primary\n"
			   "replica = 10.0.0.2:7433\n"
			   "disk = /srv/vms/web01/os.vhdx\n"
			   "disk = /srv/vms/web01/data.vhdx\n"
			   "\n"
			   "[vm db01]\n"
			   "role = replica\n"
			   "disk = /srv/replica/db01/db.vhdx\n"
			   "\n"
			   "[vm app01]\n"
			   "role = replica\n"
			   "replica = 10.0.0.3:7433\n"
			   "disk = /srv/replica/app01/app.vhdx\n"
			   "\n"
			   "[vm last01]\n"
			   "role = extended-replica\n"
			   "disk = /srv/extended/last01/last.vhdx\n";

static struct agent_config cfg;
static char msg[1024];
/* The last request parsed: what a parse returns points into it, so it
 * lives until the next one. */
static struct jv *req;

static int setup(void **state)
{
	char dir[] = "/tmp/test_methods.XXXXXX", path[64], err[512];
	FILE *f;
	int ret;

	(void)state;
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof(path), "%s/hvresync.conf", dir);
	f = fopen(path, "w");
	if (!f)
		return -1;
	fputs(conf, f);
	fclose(f);
	ret = config_load(path, &cfg, err, sizeof(err));
	if (ret)
		fprintf(stderr, "%s\n", err);
	unlink(path);
	rmdir(dir);
	return ret;
}

static int teardown(void **state)
{
	(void)state;
	jv_free(req);
	config_free(&cfg);
	return 0;
}

static struct jv *parse(const char *text)
{
	char err[256];

	jv_free(req);
	req = NULL;
	if (jv_parse(text, strlen(text), &req, err, sizeof(err)))
		fail_msg("test JSON does not parse: %s: %s", err, text);
	return req;
}

/* Resynchronize @text at NOW: its ReturnValue (0: accepted), the
 * request in *@r. */
static unsigned resync(const char *text, struct resync_request *r)
{
	struct jv *v = parse(text);
	unsigned rv;

	msg[0] = '\0';
	rv = resync_parse(&cfg, v, NOW, r, msg, sizeof(msg));
	if (rv)
		assert_true(msg[0] != '\0');
	return rv;
}

static void test_resync_valid(void **state)
{
	struct resync_request r;

	(void)state;
	assert_int_equal(
		resync("{\"Method\": \"Resynchronize\", \"ComputerSystem\": \"web01\"}",
		       &r),
		0);
	assert_non_null(r.vm);
	assert_string_equal(r.vm->name, "web01");
	assert_null(r.sources);
	assert_int_equal(r.start, 0);

	/* by id, any case, braces; null and "" StartTime mean now */
	assert_int_equal(
		resync("{\"ComputerSystem\": \"{0B5E1F3C-6A57-4D0E-9D43-0C1A3E5F7A21}\","
		       " \"StartTime\": null, \"Sources\": null}",
		       &r),
		0);
	assert_string_equal(r.vm->name, "web01");
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\", \"StartTime\": \"\"}",
		       &r),
		0);
	assert_int_equal(r.start, 0);

	/* a replica that names an extended replica sends on to it */
	assert_int_equal(resync("{\"ComputerSystem\": \"app01\"}", &r), 0);
	assert_string_equal(r.vm->name, "app01");
}

static void test_resync_missing_and_types(void **state)
{
	struct resync_request r;

	(void)state;
	assert_int_equal(resync("{\"Method\": \"Resynchronize\"}", &r), 32773);
	assert_non_null(strstr(msg, "ComputerSystem is missing"));
	assert_int_equal(resync("{\"ComputerSystem\": null}", &r), 32773);
	assert_int_equal(resync("{\"ComputerSystem\": 5}", &r), 32776);
	assert_non_null(strstr(msg, "ComputerSystem is number, not string"));
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\", \"StartTime\": 20261124}",
		       &r),
		32776);
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\", \"Sources\": [\"/x\"]}",
		       &r),
		32776);
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\", \"Sources\": {\"os.vhdx\": 1}}",
		       &r),
		32776);
	assert_non_null(strstr(msg, "Sources.os.vhdx is number, not string"));
	/* a type error is found before the VM is looked up */
	assert_int_equal(
		resync("{\"ComputerSystem\": \"nosuch\", \"Sources\": 1}", &r),
		32776);
}

static void test_resync_unknown_vm(void **state)
{
	struct resync_request r;

	(void)state;
	assert_int_equal(resync("{\"ComputerSystem\": \"nosuch\"}", &r), 32773);
	assert_non_null(strstr(msg, "no VM named 'nosuch'"));
	assert_int_equal(resync("{\"ComputerSystem\": \"WEB01\"}", &r), 32773);
	assert_null(r.vm);
}

static void test_resync_start_time(void **state)
{
	struct resync_request r;

	(void)state;
	/* CIM datetime and ISO 8601, half an hour ahead */
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\","
		       " \"StartTime\": \"20261124183000.000000+000\"}",
		       &r),
		0);
	assert_int_equal(r.start, NOW + 30 * MINUTE);
	assert_string_equal(r.start_text, "20261124183000.000000+000");
	assert_int_equal(resync("{\"ComputerSystem\": \"web01\","
				" \"StartTime\": \"2026-11-24T18:30:00Z\"}",
				&r),
			 0);
	assert_int_equal(r.start, NOW + 30 * MINUTE);
	/* up to a minute late counts as now */
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\","
		       " \"StartTime\": \"20261124175930.000000+000\"}",
		       &r),
		0);
	assert_int_equal(r.start, 0);
	/* malformed, in the past, too far ahead */
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\", \"StartTime\": \"tomorrow\"}",
		       &r),
		32773);
	assert_non_null(strstr(msg, "neither a CIM datetime"));
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\","
		       " \"StartTime\": \"20261124170000.000000+000\"}",
		       &r),
		32773);
	assert_non_null(strstr(msg, "in the past"));
	assert_int_equal(resync("{\"ComputerSystem\": \"web01\","
				" \"StartTime\": \"2026-12-02T18:00:00Z\"}",
				&r),
			 32773);
	assert_non_null(strstr(msg, "more than 7 days ahead"));
	/* seven days exactly is allowed */
	assert_int_equal(resync("{\"ComputerSystem\": \"web01\","
				" \"StartTime\": \"2026-12-01T18:00:00Z\"}",
				&r),
			 0);
	assert_int_equal(r.start, NOW + 7 * 24 * 60 * MINUTE);
}

static void test_resync_sources(void **state)
{
	struct resync_request r;
	const struct jv *s;

	(void)state;
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\", \"Sources\":"
		       " {\"os.vhdx\": \"/run/hvresync/web01/os.vhdx\"}}",
		       &r),
		0);
	assert_non_null(r.sources);
	s = jv_get(r.sources, "os.vhdx");
	assert_non_null(s);
	assert_string_equal(s->s, "/run/hvresync/web01/os.vhdx");
	assert_null(jv_get(r.sources, "data.vhdx"));

	/* both disks, in any order; an empty object reads the disks */
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\", \"Sources\":"
		       " {\"data.vhdx\": \"/v/d\", \"os.vhdx\": \"/v/o\"}}",
		       &r),
		0);
	assert_int_equal(
		resync("{\"ComputerSystem\": \"web01\", \"Sources\": {}}", &r),
		0);

	/* a key that pairs with no disk; the key is a file name, not a path */
	assert_int_equal(resync("{\"ComputerSystem\": \"web01\", \"Sources\":"
				" {\"swap.vhdx\": \"/v/s\"}}",
				&r),
			 32773);
	assert_non_null(
		strstr(msg, "no replication-enabled disk named 'swap.vhdx'"));
	assert_int_equal(resync("{\"ComputerSystem\": \"web01\", \"Sources\":"
				" {\"/srv/vms/web01/os.vhdx\": \"/v/o\"}}",
				&r),
			 32773);
	/* a disk of another VM */
	assert_int_equal(resync("{\"ComputerSystem\": \"web01\", \"Sources\":"
				" {\"db.vhdx\": \"/v/d\"}}",
				&r),
			 32773);
	/* values are absolute paths */
	assert_int_equal(resync("{\"ComputerSystem\": \"web01\", \"Sources\":"
				" {\"os.vhdx\": \"views/os.vhdx\"}}",
				&r),
			 32773);
	assert_non_null(strstr(msg, "is not an absolute path"));
	assert_int_equal(resync("{\"ComputerSystem\": \"web01\", \"Sources\":"
				" {\"os.vhdx\": \"\"}}",
				&r),
			 32773);
}

static void test_resync_roles(void **state)
{
	struct resync_request r;

	(void)state;
	/* a replica without an extended replica: its primary resyncs it */
	assert_int_equal(resync("{\"ComputerSystem\": \"db01\"}", &r), 32770);
	assert_non_null(strstr(msg, "its primary resynchronizes it"));
	/* the last hop of a chain never sends */
	assert_int_equal(resync("{\"ComputerSystem\": \"last01\"}", &r), 32770);
	/* a bad StartTime is reported before the role */
	assert_int_equal(
		resync("{\"ComputerSystem\": \"db01\", \"StartTime\": \"x\"}",
		       &r),
		32773);
}

/* RequestStateChange @text: its ReturnValue, the request in *@r. */
static unsigned rsc(const char *text, struct state_change_request *r)
{
	struct jv *v = parse(text);
	unsigned rv;

	msg[0] = '\0';
	rv = state_change_parse(v, r, msg, sizeof(msg));
	if (!rv)
		assert_string_equal(r->job,
				    "7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB");
	return rv;
}

static void test_state_change_parse(void **state)
{
	struct state_change_request r;

	(void)state;
	assert_int_equal(
		rsc("{\"Job\": \"7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB\","
		    " \"RequestedState\": 3}",
		    &r),
		0);
	assert_int_equal(r.requested, 3);
	assert_int_equal(r.timeout, 0);
	assert_int_equal(
		rsc("{\"Job\": \"7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB\","
		    " \"RequestedState\": 4,"
		    " \"TimeoutPeriod\": \"00000000000100.000000:000\"}",
		    &r),
		0);
	assert_int_equal(r.requested, 4);
	assert_int_equal(r.timeout, MINUTE);
	/* a state job_transition() refuses still parses: 6 Service is 1 later
	 */
	assert_int_equal(
		rsc("{\"Job\": \"7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB\","
		    " \"RequestedState\": 6}",
		    &r),
		0);

	/* a missing member is RequestStateChange's 5, a type error 32776 */
	assert_int_equal(rsc("{\"RequestedState\": 3}", &r), 5);
	assert_int_equal(
		rsc("{\"Job\": \"7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB\"}", &r),
		5);
	assert_int_equal(rsc("{\"Job\": 7, \"RequestedState\": 3}", &r), 32776);
	assert_int_equal(rsc("{\"Job\": \"x\", \"RequestedState\": \"3\"}", &r),
			 32776);
	assert_int_equal(
		rsc("{\"Job\": \"x\", \"RequestedState\": 3, \"TimeoutPeriod\": 60}",
		    &r),
		32776);
	/* not a state number, not an interval */
	assert_int_equal(rsc("{\"Job\": \"x\", \"RequestedState\": 3.5}", &r),
			 5);
	assert_non_null(strstr(msg, "is not a state"));
	assert_int_equal(rsc("{\"Job\": \"x\", \"RequestedState\": -1}", &r),
			 5);
	assert_int_equal(rsc("{\"Job\": \"x\", \"RequestedState\": 65536}", &r),
			 5);
	assert_int_equal(rsc("{\"Job\": \"x\", \"RequestedState\": 3,"
			     " \"TimeoutPeriod\": \"1 minute\"}",
			     &r),
			 5);
	assert_non_null(strstr(msg, "not a CIM interval"));
}

static void test_state_change_check(void **state)
{
	struct job j;
	unsigned next;

	(void)state;
	memset(&j, 0, sizeof(j));
	strcpy(j.id, "7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB");
	j.cancellable = true;

	j.state = JS_RUNNING;
	assert_int_equal(
		state_change_check(&j, REQ_SUSPEND, &next, msg, sizeof(msg)),
		4096);
	assert_int_equal(next, JS_SUSPENDED);
	assert_string_equal(msg, "");
	assert_int_equal(
		state_change_check(&j, REQ_START, &next, msg, sizeof(msg)), 0);
	assert_int_equal(next, JS_RUNNING); /* already there */
	assert_int_equal(
		state_change_check(&j, REQ_SERVICE, &next, msg, sizeof(msg)),
		1);
	assert_non_null(strstr(msg, "RequestedState 6"));

	/* merging: it can no longer be stopped, but Start is still fine */
	j.cancellable = false;
	assert_int_equal(
		state_change_check(&j, REQ_TERMINATE, &next, msg, sizeof(msg)),
		4097);
	assert_non_null(strstr(msg, "is merging and can no longer be stopped"));
	assert_int_equal(
		state_change_check(&j, REQ_SUSPEND, &next, msg, sizeof(msg)),
		4097);
	assert_int_equal(
		state_change_check(&j, REQ_START, &next, msg, sizeof(msg)), 0);
	/* a suspended job that is not cancellable (suspended in its merge)
	 * may still be killed */
	j.state = JS_SUSPENDED;
	assert_int_equal(
		state_change_check(&j, REQ_KILL, &next, msg, sizeof(msg)),
		4096);
	assert_int_equal(next, JS_SHUTTING_DOWN);

	/* finished jobs refuse everything with 4097 */
	j.state = JS_COMPLETED;
	assert_int_equal(
		state_change_check(&j, REQ_TERMINATE, &next, msg, sizeof(msg)),
		4097);
	assert_non_null(strstr(msg, "is Completed: RequestedState 4"));
	assert_int_equal(next, JS_COMPLETED);

	/* but a failed job may be cancelled: that discards the copies it
	 * left on the recovery side, and it stays Exception */
	j.state = JS_EXCEPTION;
	assert_int_equal(
		state_change_check(&j, REQ_TERMINATE, &next, msg, sizeof(msg)),
		0);
	assert_int_equal(next, JS_EXCEPTION);
	assert_string_equal(msg, "");
	assert_int_equal(
		state_change_check(&j, REQ_KILL, &next, msg, sizeof(msg)),
		4097);
	assert_int_equal(
		state_change_check(&j, REQ_START, &next, msg, sizeof(msg)),
		4097);
	j.state = JS_TERMINATED;
	assert_int_equal(
		state_change_check(&j, REQ_TERMINATE, &next, msg, sizeof(msg)),
		4097);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_resync_valid),
		cmocka_unit_test(test_resync_missing_and_types),
		cmocka_unit_test(test_resync_unknown_vm),
		cmocka_unit_test(test_resync_start_time),
		cmocka_unit_test(test_resync_sources),
		cmocka_unit_test(test_resync_roles),
		cmocka_unit_test(test_state_change_parse),
		cmocka_unit_test(test_state_change_check),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
