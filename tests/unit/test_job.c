/* SPDX-License-Identifier: MIT */
/*
 * test_job.c - the job model: CIM_ConcreteJob's RequestStateChange state
 * machine (every state x every request), names, InstanceIDs, the JSON
 * form and its round trip, crash-safe persistence; and the VM state rules
 * and records (vmstate.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent/daemon/cimtime.h"
#include "agent/daemon/job.h"
#include "agent/daemon/vmstate.h"

/* --- the state machine --- */

struct row {
	unsigned state, requested, rv, next;
};

/* The table written out from CIM_ConcreteJob's RequestStateChange
 * description and Hyper-V's resync behaviour (docs/control-api.md). */
static const struct row table[] = {
	/* Start */
	{ 2, 2, 0, 2 },
	{ 3, 2, 0, 3 },
	{ 4, 2, 0, 4 },
	{ 5, 2, 4096, 4 },
	{ 6, 2, 4097, 6 },
	{ 7, 2, 4097, 7 },
	{ 8, 2, 4097, 8 },
	{ 9, 2, 4097, 9 },
	{ 10, 2, 4097, 10 },
	{ 32768, 2, 4097, 32768 },
	/* Suspend */
	{ 2, 3, 4097, 2 },
	{ 3, 3, 4096, 5 },
	{ 4, 3, 4096, 5 },
	{ 5, 3, 0, 5 },
	{ 6, 3, 4097, 6 },
	{ 7, 3, 4097, 7 },
	{ 8, 3, 4097, 8 },
	{ 10, 3, 4097, 10 },
	/* Terminate */
	{ 2, 4, 0, 8 },
	{ 3, 4, 4096, 6 },
	{ 4, 4, 4096, 6 },
	{ 5, 4, 4096, 6 },
	{ 6, 4, 4096, 6 },
	{ 7, 4, 4097, 7 },
	{ 8, 4, 4097, 8 },
	{ 9, 4, 4097, 9 },
	{ 10, 4, 0, 10 }, /* a failed job: its copies are discarded */
	{ 32768, 4, 4097, 32768 },
	/* Kill */
	{ 2, 5, 0, 9 },
	{ 4, 5, 4096, 6 },
	{ 5, 5, 4096, 6 },
	{ 6, 5, 4096, 6 },
	{ 7, 5, 4097, 7 },
	{ 9, 5, 4097, 9 },
	/* Service is not supported; anything else is no RequestedState */
	{ 4, 6, 1, 4 },
	{ 2, 6, 1, 2 },
	{ 4, 0, 5, 4 },
	{ 4, 1, 5, 4 },
	{ 4, 7, 5, 4 },
	{ 4, 32768, 5, 4 },
	{ 7, 0, 5, 7 },
};

static void test_transition_table(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		unsigned next = 12345, rv;

		rv = job_transition(table[i].state, table[i].requested, &next);
		if (rv != table[i].rv || next != table[i].next)
			fail_msg(
				"state %u, request %u: got %u -> %u, want %u -> %u",
				table[i].state, table[i].requested, rv, next,
				table[i].rv, table[i].next);
	}
}

/* Whatever is asked, a finished job stays finished and nothing moves a
 * job into a state CIM does not have. */
static void test_transition_closed(void **state)
{
	static const unsigned states[] = { 2, 3, 4, 5, 6, 7, 8, 9, 10, 32768 };
	size_t i;
	unsigned r;

	(void)state;
	for (i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
		for (r = 0; r < 20; r++) {
			unsigned next, rv = job_transition(states[i], r, &next);

			if (job_state_final(states[i]))
				assert_int_equal(next, states[i]);
			if (rv != 0 && rv != 4096)
				assert_int_equal(next, states[i]);
			assert_true(next == states[i] ||
				    (next >= 2 && next <= 9));
		}
	}
}

static void test_final_and_names(void **state)
{
	(void)state;
	assert_true(job_state_final(7));
	assert_true(job_state_final(8));
	assert_true(job_state_final(9));
	assert_true(job_state_final(10));
	assert_true(job_state_final(32768));
	assert_false(job_state_final(2));
	assert_false(job_state_final(4));
	assert_false(job_state_final(5));
	assert_false(job_state_final(6));
	assert_string_equal(job_state_name(7), "Completed");
	assert_string_equal(job_state_name(32768), "Completed with warnings");
	assert_string_equal(job_state_name(6), "Shutting Down");
	assert_string_equal(job_state_name(99), "Unknown");
	assert_string_equal(job_type_name(107), "Resynchronizing");
	assert_string_equal(job_type_name(121),
			    "Resynchronizing extended replication");
	assert_string_equal(rv_name(4096),
			    "Method parameters checked, job started");
	assert_string_equal(rv_name(32774), "System is in use");
	assert_string_equal(rv_name(32779), "File not found");
	assert_string_equal(rsc_name(4097), "Invalid state transition");
	assert_string_equal(rsc_name(32776), "Incorrect data type");
}

static void test_ids(void **state)
{
	char a[JOB_ID_LEN], b[JOB_ID_LEN];

	(void)state;
	assert_int_equal(job_new_id(a), 0);
	assert_int_equal(job_new_id(b), 0);
	assert_int_equal(strlen(a), 36);
	assert_true(job_id_valid(a));
	assert_string_not_equal(a, b);
	assert_int_equal(a[14], '4'); /* RFC 4122 version 4 */
	assert_non_null(strchr("89AB", a[19]));
	assert_true(job_id_valid("0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a21"));
	assert_false(job_id_valid("{0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a21}"));
	assert_false(job_id_valid("0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a2"));
	assert_false(job_id_valid("0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a2g"));
	assert_false(job_id_valid("../../etc/passwd-0000-0000-0000000000"));
	assert_false(job_id_valid(""));
	assert_false(job_id_valid(NULL));
}

/* --- JSON --- */

#define T0                                         \
	((20781LL * 86400 + 18 * 3600 + 30 * 60) * \
	 1000000LL) /* 2026-11-24 18:30 UTC */

static void sample(struct job *j)
{
	memset(j, 0, sizeof(*j));
	strcpy(j->id, "7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB");
	j->vm = strdup("web01");
	j->vm_id = strdup("0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a21");
	j->peer = strdup("10.0.0.2:7433");
	j->type = 107;
	j->state = 4;
	j->percent = 42;
	j->submitted = T0;
	j->scheduled = T0 + 60 * 1000000LL;
	j->started = T0 + 61 * 1000000LL;
	j->last_change = T0 + 61 * 1000000LL;
	/* 1 day, 12 hours and 32 seconds: HYPERV-FACTS.md's example */
	j->elapsed = (86400LL + 12 * 3600 + 32) * 1000000LL;
	j->retention = 300 * 1000000LL;
	j->cancellable = true;
	j->bytes_compared = 1ULL << 40;
	j->bytes_different = 12345;
	j->bytes_sent = 6789;
	j->phase = JOB_PHASE_SEND;
	j->ndisks = 2;
	j->disks = calloc(2, sizeof(*j->disks));
	j->disks[0].name = strdup("os.vhdx");
	j->disks[0].path = strdup("/srv/vms/web01/os.vhdx");
	j->disks[0].size = 64ULL << 30;
	j->disks[0].done = 64ULL << 30;
	j->disks[0].started = true;
	j->disks[0].sent = true;
	j->disks[1].name = strdup("data \"1\".vhdx");
	j->disks[1].path = strdup("/srv/vms/web01/data \"1\".vhdx");
	j->disks[1].size = 1ULL << 30;
	j->disks[1].done = 4096;
	j->disks[1].resumed = 65536;
	j->disks[1].started = true;
}

static struct jv *to_jv(const struct job *j, int64_t now)
{
	struct json_writer w;
	char *buf = NULL, err[256];
	size_t len = 0;
	struct jv *v;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	json_init(&w, f, 0);
	job_to_json(&w, j, now);
	assert_int_equal(json_end(&w), 0);
	fclose(f);
	if (jv_parse(buf, len, &v, err, sizeof(err)))
		fail_msg("job_to_json wrote bad JSON: %s: %s", err, buf);
	free(buf);
	return v;
}

static const char *str(const struct jv *o, const char *k)
{
	const struct jv *v = jv_get(o, k);

	assert_non_null(v);
	assert_int_equal(v->type, JV_STRING);
	return v->s;
}

static int64_t num(const struct jv *o, const char *k)
{
	const struct jv *v = jv_get(o, k);

	assert_non_null(v);
	assert_int_equal(v->type, JV_NUMBER);
	assert_true(v->is_int);
	return v->i;
}

static void test_json_properties(void **state)
{
	struct job j;
	struct jv *v;
	int64_t t;

	(void)state;
	setenv("TZ", "UTC", 1);
	sample(&j);
	v = to_jv(&j, T0 + 100 * 1000000LL);
	/* Msvm_ConcreteJob's names and CIM formats */
	assert_string_equal(str(v, "InstanceID"),
			    "7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB");
	assert_int_equal(num(v, "JobType"), 107);
	assert_int_equal(num(v, "JobState"), 4);
	assert_int_equal(num(v, "PercentComplete"), 42);
	assert_int_equal(num(v, "ErrorCode"), 0);
	assert_int_equal(jv_get(v, "ErrorDescription")->type, JV_NULL);
	assert_string_equal(str(v, "TimeSubmitted"),
			    "20261124183000.000000+000");
	assert_string_equal(str(v, "ScheduledStartTime"),
			    "20261124183100.000000+000");
	assert_string_equal(str(v, "StartTime"), "20261124183101.000000+000");
	assert_string_equal(str(v, "ElapsedTime"), "00000001120032.000000:000");
	assert_string_equal(str(v, "TimeOfLastStateChange"),
			    "20261124183101.000000+000");
	assert_true(jv_get(v, "Cancellable")->b);
	assert_string_equal(str(v, "TimeBeforeRemoval"),
			    "00000000000500.000000:000");
	/* hvresync's own */
	assert_string_equal(str(v, "ElementName"), "web01");
	assert_string_equal(str(v, "ComputerSystem"),
			    "0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a21");
	assert_true(num(v, "BytesCompared") == (int64_t)(1ULL << 40));
	assert_int_equal(num(v, "BytesDifferent"), 12345);
	assert_int_equal(num(v, "BytesSent"), 6789);
	assert_string_equal(str(v, "Phase"), "send");
	assert_int_equal(jv_get(v, "Disks")->n, 2);
	assert_string_equal(str(&jv_get(v, "Disks")->items[1], "Name"),
			    "data \"1\".vhdx");
	/* every time string is a CIM datetime the parser takes back */
	assert_int_equal(cim_datetime_parse(str(v, "StartTime"), &t), 0);
	assert_true(t == j.started);
	jv_free(v);

	/* a running job's ElapsedTime grows with the clock */
	j.running_since = T0 + 90 * 1000000LL;
	v = to_jv(&j, T0 + 100 * 1000000LL);
	assert_string_equal(str(v, "ElapsedTime"), "00000001120042.000000:000");
	jv_free(v);

	/* a finished job counts its 5 minutes down, then shows zero */
	j.running_since = 0;
	j.state = 7;
	j.finished = T0 + 200 * 1000000LL;
	v = to_jv(&j, T0 + 260 * 1000000LL);
	assert_string_equal(str(v, "TimeBeforeRemoval"),
			    "00000000000400.000000:000");
	jv_free(v);
	v = to_jv(&j, T0 + 2000 * 1000000LL);
	assert_string_equal(str(v, "TimeBeforeRemoval"),
			    "00000000000000.000000:000");
	jv_free(v);
	job_clear(&j);
}

static void test_json_round_trip(void **state)
{
	struct job j, k;
	struct jv *v;
	char err[256];
	unsigned i;

	(void)state;
	sample(&j);
	j.error_code = 32777;
	j.error_desc = strdup("peer 10.0.0.2:7433: connection refused");
	j.error_summary = strdup("Resynchronization failed.");
	j.auto_resync = true;
	v = to_jv(&j, T0);
	assert_int_equal(job_from_json(v, &k, err, sizeof(err)), 0);
	jv_free(v);
	assert_string_equal(k.id, j.id);
	assert_string_equal(k.vm, j.vm);
	assert_string_equal(k.vm_id, j.vm_id);
	assert_string_equal(k.peer, j.peer);
	assert_int_equal(k.type, j.type);
	assert_int_equal(k.state, j.state);
	assert_int_equal(k.percent, j.percent);
	assert_int_equal(k.error_code, 32777);
	assert_string_equal(k.error_desc, j.error_desc);
	assert_string_equal(k.error_summary, j.error_summary);
	assert_true(k.submitted == j.submitted);
	assert_true(k.scheduled == j.scheduled);
	assert_true(k.started == j.started);
	assert_true(k.last_change == j.last_change);
	assert_true(k.elapsed == j.elapsed);
	assert_true(k.finished == 0);
	assert_int_equal(k.cancellable, j.cancellable);
	assert_int_equal(k.auto_resync, 1);
	assert_true(k.bytes_compared == j.bytes_compared);
	assert_true(k.bytes_different == j.bytes_different);
	assert_true(k.bytes_sent == j.bytes_sent);
	assert_int_equal(k.phase, j.phase);
	assert_int_equal(k.ndisks, j.ndisks);
	for (i = 0; i < j.ndisks; i++) {
		assert_string_equal(k.disks[i].name, j.disks[i].name);
		assert_string_equal(k.disks[i].path, j.disks[i].path);
		assert_true(k.disks[i].size == j.disks[i].size);
		assert_true(k.disks[i].done == j.disks[i].done);
		assert_true(k.disks[i].resumed == j.disks[i].resumed);
		assert_int_equal(k.disks[i].started, j.disks[i].started);
		assert_int_equal(k.disks[i].sent, j.disks[i].sent);
		assert_int_equal(k.disks[i].merged, j.disks[i].merged);
	}
	job_clear(&k);
	job_clear(&j);
}

/* eq for strings that may be NULL */
static void same_str(const char *a, const char *b)
{
	if (!a || !b)
		assert_ptr_equal(a, b);
	else
		assert_string_equal(a, b);
}

/* Issue 9's keys: Retries, and per disk where the data came from and
 * what a resume needs, shown and read back as written. */
static void test_json_source_keys(void **state)
{
	const struct jv *d0, *d1;
	struct job j, k;
	struct jv *v;
	char err[256];
	unsigned i;

	(void)state;
	setenv("TZ", "UTC", 1);
	sample(&j);
	j.retries = 3;
	j.disks[0].snap_decided = true;
	j.disks[0].reflink = true;
	j.disks[0].snap_time = T0 + 5 * 1000000LL;
	j.disks[0].clone = strdup(
		"/srv/vms/web01/.hvresync-snap.7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB.os.vhdx");
	j.disks[0].passes = 1;
	j.disks[0].resume = strdup("resumed: the kept snapshot of job X");
	j.disks[1].snap_decided = true;
	j.disks[1].snap_note = strdup("not supported by ext4");
	j.disks[1].passes = 2;
	j.disks[1].ident = strdup("dev=2049,ino=12,size=1073741824");
	j.disks[1].changed = true;
	j.disks[1].repass = true;
	v = to_jv(&j, T0);
	assert_int_equal(num(v, "Retries"), 3);
	d0 = &jv_get(v, "Disks")->items[0];
	d1 = &jv_get(v, "Disks")->items[1];
	assert_string_equal(str(d0, "Snapshot"), "reflink");
	assert_string_equal(str(d0, "SnapshotTime"),
			    "20261124183005.000000+000");
	assert_string_equal(str(d0, "SnapshotNote"), "");
	assert_int_equal(num(d0, "Passes"), 1);
	assert_string_equal(str(d1, "Snapshot"), "none");
	assert_int_equal(jv_get(d1, "SnapshotTime")->type, JV_NULL);
	assert_string_equal(str(d1, "SnapshotNote"), "not supported by ext4");
	assert_int_equal(num(d1, "Passes"), 2);
	assert_true(jv_get(d1, "SourceChanged")->b);
	assert_int_equal(jv_get(d1, "Clone")->type, JV_NULL);
	assert_int_equal(job_from_json(v, &k, err, sizeof(err)), 0);
	jv_free(v);
	assert_int_equal(k.retries, 3);
	for (i = 0; i < j.ndisks; i++) {
		const struct job_disk *a = &j.disks[i], *b = &k.disks[i];

		assert_int_equal(b->snap_decided, a->snap_decided);
		assert_int_equal(b->reflink, a->reflink);
		assert_true(b->snap_time == a->snap_time);
		same_str(b->snap_note, a->snap_note);
		same_str(b->clone, a->clone);
		assert_int_equal(b->passes, a->passes);
		same_str(b->ident, a->ident);
		assert_int_equal(b->changed, a->changed);
		assert_int_equal(b->repass, a->repass);
		same_str(b->resume, a->resume);
	}
	job_clear(&k);

	/* before the job ran, Snapshot is null and reads back undecided */
	j.disks[1].snap_decided = false;
	v = to_jv(&j, T0);
	assert_int_equal(
		jv_get(&jv_get(v, "Disks")->items[1], "Snapshot")->type,
		JV_NULL);
	assert_int_equal(job_from_json(v, &k, err, sizeof(err)), 0);
	assert_false(k.disks[1].snap_decided);
	jv_free(v);
	job_clear(&k);
	job_clear(&j);
}

/* A record written before these keys existed still loads. */
static void test_json_old_record(void **state)
{
	static const char old[] =
		"{\"InstanceID\": \"7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB\", "
		"\"JobType\": 107, \"JobState\": 4, \"PercentComplete\": 5, "
		"\"ErrorCode\": 0, \"ErrorDescription\": null, "
		"\"ErrorSummaryDescription\": null, \"TimeSubmitted\": null, "
		"\"ScheduledStartTime\": null, \"StartTime\": null, "
		"\"ElapsedTime\": \"00000000000000.000000:000\", "
		"\"TimeOfLastStateChange\": null, \"Cancellable\": true, "
		"\"TimeBeforeRemoval\": \"00000000000500.000000:000\", "
		"\"ComputerSystem\": \"web01\", \"ElementName\": \"web01\", "
		"\"Peer\": \"h:1\", \"BytesCompared\": 0, "
		"\"BytesDifferent\": 0, \"BytesSent\": 0, \"Phase\": \"send\", "
		"\"AutoResynchronize\": false, \"TimeFinished\": null, "
		"\"Disks\": [{\"Name\": \"a.vhdx\", \"Path\": \"/a.vhdx\", "
		"\"VirtualSize\": 0, \"BytesCompared\": 0, "
		"\"ResumeOffset\": 0, \"Started\": true, \"Sent\": false, "
		"\"Merged\": false}]}";
	struct job k;
	struct jv *v;
	char err[256];

	(void)state;
	assert_int_equal(jv_parse(old, strlen(old), &v, err, sizeof(err)), 0);
	if (job_from_json(v, &k, err, sizeof(err)))
		fail_msg("%s", err);
	jv_free(v);
	assert_int_equal(k.retries, 0);
	assert_false(k.disks[0].snap_decided);
	assert_null(k.disks[0].clone);
	assert_int_equal(k.disks[0].passes, 0);
	job_clear(&k);
}

static void expect_bad(const char *text, const char *needle)
{
	struct jv *v;
	struct job k;
	char err[256];

	if (jv_parse(text, strlen(text), &v, err, sizeof(err)))
		fail_msg("test input is not JSON: %s", err);
	assert_int_equal(job_from_json(v, &k, err, sizeof(err)), -22);
	if (!strstr(err, needle))
		fail_msg("error '%s' does not name '%s'", err, needle);
	job_clear(&k);
	jv_free(v);
}

/* BUF with the first FROM replaced by TO must be refused naming NEEDLE. */
static void bad_variant(const char *buf, const char *from, const char *to,
			const char *needle)
{
	const char *at = strstr(buf, from);
	char *p;

	if (!at)
		fail_msg("'%s' is not in the record", from);
	p = malloc(strlen(buf) + strlen(to) + 1);
	memcpy(p, buf, (size_t)(at - buf));
	strcpy(p + (at - buf), to);
	strcat(p, at + strlen(from));
	expect_bad(p, needle);
	free(p);
}

static void test_json_reject(void **state)
{
	struct job j;
	char *buf = NULL;
	size_t len = 0;
	struct json_writer w;
	FILE *f;

	(void)state;
	expect_bad("[]", "object");
	expect_bad("{}", "InstanceID");
	sample(&j);
	f = open_memstream(&buf, &len);
	json_init(&w, f, 0);
	job_to_json(&w, &j, T0);
	json_end(&w);
	fclose(f);
	job_clear(&j);

	/* one member wrong at a time, in a record otherwise good */
	bad_variant(buf, "\"7D9D3C8A-", "\"../../..-", "InstanceID");
	bad_variant(buf, "\"JobState\":4", "\"JobState\":\"4\"", "JobState");
	bad_variant(buf, "\"send\"", "\"sand\"", "Phase");
	bad_variant(buf, "\"20261124183000.000000+000\"",
		    "\"2026112418300x.000000+000\"", "TimeSubmitted");
	bad_variant(buf, "\"PercentComplete\":42", "\"PercentComplete\":-4",
		    "PercentComplete");
	bad_variant(buf, "\"PercentComplete\":42", "\"PercentComplete\":420",
		    "PercentComplete");
	bad_variant(buf, "\"ElementName\":\"web01\"", "\"ElementName\":\"\"",
		    "ElementName");
	bad_variant(buf, "\"Disks\":[", "\"Disks\":[7,", "Disks");
	bad_variant(buf, "\"Retries\":0", "\"Retries\":\"0\"", "Retries");
	bad_variant(buf, "\"Passes\":0", "\"Passes\":-1", "Passes");
	bad_variant(buf, "\"Snapshot\":null", "\"Snapshot\":\"lvm\"",
		    "Snapshot");
	free(buf);
}

/* --- persistence --- */

static void test_persist(void **state)
{
	char dir[] = "/tmp/test_job.XXXXXX", err[256], path[512];
	struct job j, k;
	struct dirent *e;
	struct stat st;
	unsigned n = 0;
	DIR *d;

	(void)state;
	assert_non_null(mkdtemp(dir));
	sample(&j);
	assert_int_equal(job_save(dir, &j, T0), 0);
	j.state = 5;
	j.percent = 50;
	assert_int_equal(job_save(dir, &j, T0), 0); /* replaces the first */
	snprintf(path, sizeof(path), "%s/%s.json", dir, j.id);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	d = opendir(dir);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' ||
		    (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")))
			n++;
	closedir(d);
	assert_int_equal(n, 1); /* no temporary file left behind */

	snprintf(path, sizeof(path), "%s.json", j.id);
	assert_int_equal(job_load(dir, path, &k, err, sizeof(err)), 0);
	assert_int_equal(k.state, 5);
	assert_int_equal(k.percent, 50);
	assert_string_equal(k.disks[1].name, j.disks[1].name);
	job_clear(&k);

	assert_int_equal(job_remove(dir, j.id), 0);
	assert_int_equal(job_load(dir, path, &k, err, sizeof(err)), -2);
	job_clear(&k);
	assert_int_equal(job_remove(dir, "../../etc/passwd"), -22);

	/* a torn or foreign file is refused, not half-read */
	snprintf(path, sizeof(path), "%s/%s.json", dir, j.id);
	{
		FILE *f = fopen(path, "w");

		fputs("{\"InstanceID\": \"7D9D3C8A-1F2B-4C3D-8E4F-01234", f);
		fclose(f);
	}
	snprintf(path, sizeof(path), "%s.json", j.id);
	assert_int_equal(job_load(dir, path, &k, err, sizeof(err)), -22);
	job_clear(&k);
	job_remove(dir, j.id);
	job_clear(&j);
	assert_int_equal(rmdir(dir), 0);
}

/* --- VM state --- */

static void test_vm_rules(void **state)
{
	struct vm_config vm = { .name = "web01" };

	(void)state;
	/* resync required is Critical (HYPERV-FACTS.md) */
	assert_int_equal(vm_health_for(RS_RESYNC_REQUIRED), RH_CRITICAL);
	assert_int_equal(vm_health_for(RS_REPLICATING), RH_OK);
	assert_int_equal(vm_health_for(RS_RESYNCHRONIZING), RH_WARNING);
	assert_int_equal(vm_health_for(RS_FAILOVER), RH_WARNING);
	assert_int_equal(vm_health_for(RS_RESYNC_SUSPENDED), RH_CRITICAL);
	assert_true(vm_state_settable(RS_FAILOVER));
	assert_true(vm_state_settable(RS_RESYNC_REQUIRED));
	assert_false(vm_state_settable(RS_RESYNCHRONIZING));
	assert_false(vm_state_settable(RS_RESYNC_SUSPENDED));
	assert_false(vm_state_settable(0));
	assert_false(vm_state_settable(15));
	vm.role = VM_ROLE_PRIMARY;
	assert_int_equal(vm_mode(&vm), RM_PRIMARY);
	vm.role = VM_ROLE_REPLICA;
	assert_int_equal(vm_mode(&vm), RM_REPLICA);
	assert_string_equal(repl_state_name(9),
			    "Waiting to start resynchronization");
	assert_string_equal(repl_state_name(12), "Failover in progress");
	assert_string_equal(repl_mode_name(4), "Extended replica");
}

static void test_vm_record(void **state)
{
	char dir[] = "/tmp/test_vm.XXXXXX", err[256], path[600];
	struct vm_state st, back;
	struct dirent *e;
	unsigned n = 0;
	DIR *d;

	(void)state;
	assert_non_null(mkdtemp(dir));
	/* no record: Ready for replication */
	assert_int_equal(vm_state_load(dir, "web01", &st, err, sizeof(err)), 0);
	assert_int_equal(st.state, RS_READY);
	assert_int_equal(st.health, RH_OK);
	vm_state_set(&st, RS_RESYNC_REQUIRED, T0);
	assert_int_equal(st.health, RH_CRITICAL);
	assert_true(st.last_change == T0);
	strcpy(st.last_job, "7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB");
	st.last_job_state = 8;
	assert_int_equal(vm_state_save(dir, "web01", &st), 0);
	assert_int_equal(vm_state_load(dir, "web01", &back, err, sizeof(err)),
			 0);
	assert_int_equal(back.state, RS_RESYNC_REQUIRED);
	assert_int_equal(back.health, RH_CRITICAL);
	assert_string_equal(back.last_job, st.last_job);
	assert_int_equal(back.last_job_state, 8);
	assert_true(back.last_change == T0);

	/* a VM name is free text but its record stays inside the dir */
	assert_int_equal(vm_state_save(dir, "../evil/..", &st), 0);
	assert_int_equal(vm_state_save(dir, ".hidden", &st), 0);
	assert_int_equal(
		vm_state_load(dir, "../evil/..", &back, err, sizeof(err)), 0);
	assert_int_equal(back.state, RS_RESYNC_REQUIRED);
	snprintf(path, sizeof(path), "%s/../evil", dir);
	assert_int_not_equal(access(path, F_OK), 0);
	d = opendir(dir);
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		assert_null(strchr(e->d_name, '/'));
		assert_int_not_equal(e->d_name[0], '.');
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		unlink(path);
		n++;
	}
	closedir(d);
	assert_int_equal(n, 3);
	assert_int_equal(rmdir(dir), 0);
}

/* GetVM's form of a replica VM with a held copy @ds (NULL: none),
 * parsed back. */
static struct jv *vm_json_of(const struct vm_config *vm,
			     const struct vm_state *st,
			     const struct vm_disk_status *ds)
{
	struct json_writer w;
	struct jv *v = NULL;
	char *buf = NULL, err[256];
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	json_init(&w, f, 0);
	vm_to_json(&w, vm, st, ds);
	assert_int_equal(json_end(&w), 0);
	fclose(f);
	assert_int_equal(jv_parse(buf, len, &v, err, sizeof(err)), 0);
	free(buf);
	return v;
}

static int64_t member_int(const struct jv *o, const char *k)
{
	const struct jv *m = jv_get(o, k);

	assert_non_null(m);
	assert_int_equal(m->type, JV_NUMBER);
	return m->i;
}

static bool member_bool(const struct jv *o, const char *k)
{
	const struct jv *m = jv_get(o, k);

	assert_non_null(m);
	assert_int_equal(m->type, JV_BOOL);
	return m->b;
}

/* A half-merged disk is never Ok: a pending merge no session carries on
 * makes the VM Critical whatever its state; a held copy is listed with
 * its size, age and whether it is complete. */
static void test_vm_held_copies(void **state)
{
	char *disks[] = { "/r/os.vhdx", "/r/data.vhdx" };
	struct vm_config vm = { .name = "web01",
				.role = VM_ROLE_REPLICA,
				.disks = disks,
				.ndisks = 2 };
	struct vm_disk_status ds[2];
	const struct jv *held, *d;
	struct vm_state st;
	struct jv *v;

	(void)state;
	memset(&st, 0, sizeof(st));
	vm_state_set(&st, RS_REPLICATING, T0);

	/* nothing held: Ok, an empty list, no merge pending */
	v = vm_json_of(&vm, &st, NULL);
	assert_int_equal(member_int(v, "ReplicationHealth"), RH_OK);
	held = jv_get(v, "HeldCopies");
	assert_non_null(held);
	assert_int_equal(held->type, JV_ARRAY);
	assert_int_equal(held->n, 0);
	d = &jv_get(v, "Disks")->items[1];
	assert_false(member_bool(d, "MergePending"));
	assert_int_equal(jv_get(d, "MergeNote")->type, JV_NULL);
	jv_free(v);

	/* data.vhdx: a complete copy held, its merge begun and stuck */
	memset(ds, 0, sizeof(ds));
	ds[1].held = true;
	ds[1].held_path = "/r/data.vhdx.hvresync.avhdx";
	ds[1].held_bytes = 270u << 20;
	ds[1].held_since = T0;
	ds[1].held_complete = true;
	ds[1].merge_pending = true;
	ds[1].merge_note = "merge pending: no space left on device";
	v = vm_json_of(&vm, &st, ds);
	assert_int_equal(member_int(v, "ReplicationState"), RS_REPLICATING);
	assert_int_equal(member_int(v, "ReplicationHealth"), RH_CRITICAL);
	d = &jv_get(v, "Disks")->items[1];
	assert_true(member_bool(d, "MergePending"));
	assert_string_equal(jv_get(d, "MergeNote")->s,
			    "merge pending: no space left on device");
	assert_false(
		member_bool(&jv_get(v, "Disks")->items[0], "MergePending"));
	held = jv_get(v, "HeldCopies");
	assert_int_equal(held->n, 1);
	assert_string_equal(jv_get(&held->items[0], "Disk")->s, "data.vhdx");
	assert_string_equal(jv_get(&held->items[0], "Path")->s,
			    "/r/data.vhdx.hvresync.avhdx");
	assert_int_equal(member_int(&held->items[0], "Bytes"), 270 << 20);
	assert_int_equal(jv_get(&held->items[0], "Since")->type, JV_STRING);
	assert_true(member_bool(&held->items[0], "Complete"));
	assert_true(member_bool(&held->items[0], "MergePending"));
	jv_free(v);

	/* the same merge carried on by a session right now: the state's
	 * own health (a merge under way is not stuck) */
	ds[1].in_session = true;
	vm_state_set(&st, RS_RESYNCHRONIZING, T0);
	v = vm_json_of(&vm, &st, ds);
	assert_int_equal(member_int(v, "ReplicationHealth"), RH_WARNING);
	jv_free(v);

	/* a partial copy, no merge: listed, not complete, health as is */
	ds[1].in_session = false;
	ds[1].merge_pending = false;
	ds[1].held_complete = false;
	vm_state_set(&st, RS_RESYNC_REQUIRED, T0);
	v = vm_json_of(&vm, &st, ds);
	assert_int_equal(member_int(v, "ReplicationHealth"), RH_CRITICAL);
	held = jv_get(v, "HeldCopies");
	assert_int_equal(held->n, 1);
	assert_false(member_bool(&held->items[0], "Complete"));
	assert_false(member_bool(&held->items[0], "MergePending"));
	jv_free(v);
	vm_state_set(&st, RS_REPLICATING, T0);
	v = vm_json_of(&vm, &st, ds);
	assert_int_equal(member_int(v, "ReplicationHealth"), RH_OK);
	jv_free(v);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_transition_table),
		cmocka_unit_test(test_transition_closed),
		cmocka_unit_test(test_final_and_names),
		cmocka_unit_test(test_ids),
		cmocka_unit_test(test_json_properties),
		cmocka_unit_test(test_json_round_trip),
		cmocka_unit_test(test_json_source_keys),
		cmocka_unit_test(test_json_old_record),
		cmocka_unit_test(test_json_reject),
		cmocka_unit_test(test_persist),
		cmocka_unit_test(test_vm_rules),
		cmocka_unit_test(test_vm_record),
		cmocka_unit_test(test_vm_held_copies),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
