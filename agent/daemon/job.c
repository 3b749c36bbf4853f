/* SPDX-License-Identifier: MIT */
/*
 * job.c - the resynchronization job model: CIM_ConcreteJob's state
 * machine, names, JSON form and crash-safe persistence (see job.h).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/daemon/cimtime.h"
#include "agent/daemon/job.h"
#include "agent/lib/fsutil.h"
#include "vhdx/vhdx.h"

unsigned job_transition(unsigned current, unsigned requested, unsigned *next)
{
	*next = current;
	switch (requested) {
	case REQ_START:
	case REQ_SUSPEND:
	case REQ_TERMINATE:
	case REQ_KILL:
		break;
	case REQ_SERVICE:
		return RSC_NOT_SUPPORTED;
	default:
		return RSC_INVALID_PARAMETER;
	}
	/* Terminate of a failed job discards the copies it left on the
	 * recovery side (the caller does that); it stays Exception. */
	if (current == JS_EXCEPTION && requested == REQ_TERMINATE)
		return RSC_OK;
	if (job_state_final(current))
		return RSC_INVALID_TRANSITION;

	switch (requested) {
	case REQ_START:
		switch (current) {
		case JS_SUSPENDED:
			*next = JS_RUNNING;
			return RSC_STARTED;
		case JS_NEW:
		case JS_STARTING:
		case JS_RUNNING:
			return RSC_OK;
		}
		return RSC_INVALID_TRANSITION;
	case REQ_SUSPEND:
		switch (current) {
		case JS_STARTING:
		case JS_RUNNING:
			*next = JS_SUSPENDED;
			return RSC_STARTED;
		case JS_SUSPENDED:
			return RSC_OK;
		}
		return RSC_INVALID_TRANSITION;
	case REQ_TERMINATE:
		switch (current) {
		case JS_NEW:
			*next = JS_TERMINATED;
			return RSC_OK;
		case JS_STARTING:
		case JS_RUNNING:
		case JS_SUSPENDED:
		case JS_SHUTTING_DOWN:
			*next = JS_SHUTTING_DOWN;
			return RSC_STARTED;
		}
		return RSC_INVALID_TRANSITION;
	case REQ_KILL:
		switch (current) {
		case JS_NEW:
			*next = JS_KILLED;
			return RSC_OK;
		case JS_STARTING:
		case JS_RUNNING:
		case JS_SUSPENDED:
		case JS_SHUTTING_DOWN:
			*next = JS_SHUTTING_DOWN;
			return RSC_STARTED;
		}
		return RSC_INVALID_TRANSITION;
	}
	return RSC_INVALID_PARAMETER;
}

bool job_state_final(unsigned s)
{
	return s == JS_COMPLETED || s == JS_TERMINATED || s == JS_KILLED ||
	       s == JS_EXCEPTION || s == JS_COMPLETED_WARNINGS;
}

const char *job_state_name(unsigned s)
{
	switch (s) {
	case JS_NEW:
		return "New";
	case JS_STARTING:
		return "Starting";
	case JS_RUNNING:
		return "Running";
	case JS_SUSPENDED:
		return "Suspended";
	case JS_SHUTTING_DOWN:
		return "Shutting Down";
	case JS_COMPLETED:
		return "Completed";
	case JS_TERMINATED:
		return "Terminated";
	case JS_KILLED:
		return "Killed";
	case JS_EXCEPTION:
		return "Exception";
	case JS_SERVICE:
		return "Service";
	case JS_COMPLETED_WARNINGS:
		return "Completed with warnings";
	}
	return "Unknown";
}

const char *job_type_name(unsigned t)
{
	switch (t) {
	case JT_RESYNC:
		return "Resynchronizing";
	case JT_STOP_RESYNC:
		return "Stop resynchronizing";
	case JT_RESYNC_EXTENDED:
		return "Resynchronizing extended replication";
	}
	return "Unknown";
}

const char *rv_name(unsigned rv)
{
	switch (rv) {
	case RV_OK:
		return "Completed with no error";
	case RV_JOB_STARTED:
		return "Method parameters checked, job started";
	case RV_FAILED:
		return "Failed";
	case RV_ACCESS_DENIED:
		return "Access denied";
	case RV_NOT_SUPPORTED:
		return "Not supported";
	case RV_UNKNOWN:
		return "Status is unknown";
	case RV_TIMEOUT:
		return "Timeout";
	case RV_INVALID_PARAMETER:
		return "Invalid parameter";
	case RV_IN_USE:
		return "System is in use";
	case RV_INVALID_STATE:
		return "Invalid state for this operation";
	case RV_BAD_TYPE:
		return "Incorrect data type";
	case RV_NOT_AVAILABLE:
		return "System is not available";
	case RV_NO_MEMORY:
		return "Out of memory";
	case RV_NOT_FOUND:
		return "File not found";
	}
	return "Unknown return value";
}

const char *rsc_name(unsigned rv)
{
	switch (rv) {
	case RSC_OK:
		return "Completed with no error";
	case RSC_NOT_SUPPORTED:
		return "Not supported";
	case RSC_UNKNOWN:
		return "Unknown or unspecified error";
	case RSC_TIMEOUT:
		return "Cannot complete within timeout period";
	case RSC_FAILED:
		return "Failed";
	case RSC_INVALID_PARAMETER:
		return "Invalid parameter";
	case RSC_IN_USE:
		return "In use";
	case RSC_STARTED:
		return "Method parameters checked, transition started";
	case RSC_INVALID_TRANSITION:
		return "Invalid state transition";
	case RSC_TIMEOUT_UNSUPPORTED:
		return "Use of timeout parameter not supported";
	case RSC_BUSY:
		return "Busy";
	}
	/* the control API answers type and access errors with 327xx */
	return rv_name(rv);
}

static const char *const phase_names[] = {
	[JOB_PHASE_CHECK] = "check", [JOB_PHASE_SEND] = "send",
	[JOB_PHASE_MERGE] = "merge", [JOB_PHASE_DISCARD] = "discard",
	[JOB_PHASE_DONE] = "done",
};

const char *job_phase_name(enum job_phase p)
{
	if ((unsigned)p < sizeof(phase_names) / sizeof(phase_names[0]))
		return phase_names[p];
	return "unknown";
}

/* vhdx_guid_format() writes the form InstanceIDs have always had: 8-4-4-4-12
 * uppercase hex digits, version 4. */
int job_new_id(char out[JOB_ID_LEN])
{
	struct vhdx_guid g;
	int ret = vhdx_guid_generate(&g);

	if (ret)
		return ret;
	vhdx_guid_format(&g, out);
	return 0;
}

bool job_id_valid(const char *s)
{
	size_t i;

	if (!s || strlen(s) != 36)
		return false;
	for (i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return false;
		} else if (!isxdigit((unsigned char)s[i])) {
			return false;
		}
	}
	return true;
}

int64_t job_elapsed(const struct job *j, int64_t now)
{
	int64_t e = j->elapsed;

	if (j->running_since && now > j->running_since)
		e += now - j->running_since;
	return e;
}

void job_kv_time(struct json_writer *w, const char *k, int64_t t)
{
	char s[CIM_DATETIME_LEN];

	json_key(w, k);
	if (!t) {
		json_null(w);
		return;
	}
	cim_datetime_format(t, local_offset_min(t), s);
	json_string(w, s);
}

static void kv_interval(struct json_writer *w, const char *k, int64_t usec)
{
	char s[CIM_DATETIME_LEN];

	cim_interval_format(usec, s);
	json_kv_string(w, k, s);
}

/* One extent set of a map as its text (svgmap.h); false when there is
 * no memory for it. */
static bool kv_extents(struct json_writer *w, const char *k,
		       const struct extset *s)
{
	char *text;

	if (extset_format(s, &text) < 0)
		return false;
	json_kv_string(w, k, text);
	free(text);
	return true;
}

/*
 * "Map": where the disk differed, as three extent lists (everything
 * compared, the part of it holding data, the part sent), or null before
 * anything was compared.  A record without its map is still a good
 * record, so a map that cannot be formatted for lack of memory is
 * written as incomplete rather than failing the save.
 */
static void kv_map(struct json_writer *w, const struct svgmap *m)
{
	bool ok;

	json_key(w, "Map");
	if (!m->covered.n) {
		json_null(w);
		return;
	}
	json_object_begin(w);
	ok = kv_extents(w, "Covered", &m->covered);
	ok &= kv_extents(w, "Data", &m->data);
	ok &= kv_extents(w, "Differing", &m->diff);
	json_kv_bool(w, "Merged", svgmap_merged(m));
	json_kv_bool(w, "Incomplete", m->failed || !ok);
	json_object_end(w);
}

void job_to_json(struct json_writer *w, const struct job *j, int64_t now)
{
	int64_t left = j->retention;
	unsigned i;

	if (j->finished) {
		left = j->finished + j->retention - now;
		if (left < 0)
			left = 0;
	}
	json_object_begin(w);
	json_kv_string(w, "InstanceID", j->id);
	json_kv_u64(w, "JobType", j->type);
	json_kv_string(w, "Caption", job_type_name(j->type));
	json_kv_u64(w, "JobState", j->state);
	json_kv_u64(w, "PercentComplete", j->percent);
	json_kv_u64(w, "ErrorCode", j->error_code);
	json_kv_string(w, "ErrorDescription", j->error_desc);
	json_kv_string(w, "ErrorSummaryDescription", j->error_summary);
	job_kv_time(w, "TimeSubmitted", j->submitted);
	job_kv_time(w, "ScheduledStartTime", j->scheduled);
	job_kv_time(w, "StartTime", j->started);
	kv_interval(w, "ElapsedTime", job_elapsed(j, now));
	job_kv_time(w, "TimeOfLastStateChange", j->last_change);
	json_kv_bool(w, "Cancellable", j->cancellable);
	kv_interval(w, "TimeBeforeRemoval", left);
	/* hvresync's own */
	json_kv_string(w, "ComputerSystem", j->vm_id ? j->vm_id : j->vm);
	json_kv_string(w, "ElementName", j->vm);
	json_kv_string(w, "Peer", j->peer);
	json_kv_u64(w, "BytesCompared", j->bytes_compared);
	json_kv_u64(w, "BytesDifferent", j->bytes_different);
	json_kv_u64(w, "BytesSent", j->bytes_sent);
	json_kv_u64(w, "Retries", j->retries);
	json_kv_string(w, "Phase", job_phase_name(j->phase));
	json_kv_bool(w, "AutoResynchronize", j->auto_resync);
	job_kv_time(w, "TimeFinished", j->finished);
	json_key(w, "Disks");
	json_array_begin(w);
	for (i = 0; i < j->ndisks; i++) {
		const struct job_disk *d = &j->disks[i];

		json_object_begin(w);
		json_kv_string(w, "Name", d->name);
		json_kv_string(w, "Path", d->path);
		json_kv_u64(w, "VirtualSize", d->size);
		json_kv_u64(w, "BytesCompared", d->done);
		json_kv_u64(w, "ResumeOffset", d->resumed);
		json_kv_bool(w, "Started", d->started);
		json_kv_bool(w, "Sent", d->sent);
		json_kv_bool(w, "Merged", d->merged);
		json_key(w, "Snapshot");
		if (d->snap_decided)
			json_string(w, d->reflink ? "reflink" : "none");
		else
			json_null(w);
		job_kv_time(w, "SnapshotTime", d->snap_time);
		json_kv_string(w, "SnapshotNote",
			       d->snap_note ? d->snap_note : "");
		json_kv_u64(w, "Passes", d->passes);
		json_kv_string(w, "Clone", d->clone);
		json_kv_string(w, "SourceIdentity", d->ident);
		json_kv_bool(w, "SourceChanged", d->changed);
		json_kv_bool(w, "Repass", d->repass);
		json_kv_string(w, "Resume", d->resume);
		kv_map(w, &d->map);
		json_object_end(w);
	}
	json_array_end(w);
	json_object_end(w);
}

/* --- reading a job back --- */

struct rd {
	const struct jv *obj;
	char *err;
	size_t errlen;
	int ret;
};

static const struct jv *member(struct rd *r, const struct jv *obj,
			       const char *k, enum jv_type t, bool nullable)
{
	const struct jv *v;

	if (r->ret)
		return NULL;
	v = jv_get(obj, k);
	if (!v) {
		snprintf(r->err, r->errlen, "member %s is missing", k);
		r->ret = -EINVAL;
		return NULL;
	}
	if (nullable && v->type == JV_NULL)
		return NULL;
	if (v->type != t) {
		snprintf(r->err, r->errlen, "member %s is %s, not %s", k,
			 jv_type_name(v->type), jv_type_name(t));
		r->ret = -EINVAL;
		return NULL;
	}
	return v;
}

static uint64_t get_u64(struct rd *r, const struct jv *obj, const char *k)
{
	const struct jv *v = member(r, obj, k, JV_NUMBER, false);

	if (!v)
		return 0;
	if (!v->is_int || v->i < 0) {
		snprintf(r->err, r->errlen, "member %s is not a whole number",
			 k);
		r->ret = -EINVAL;
		return 0;
	}
	return (uint64_t)v->i;
}

static bool get_bool(struct rd *r, const struct jv *obj, const char *k)
{
	const struct jv *v = member(r, obj, k, JV_BOOL, false);

	return v ? v->b : false;
}

static char *get_str(struct rd *r, const struct jv *obj, const char *k,
		     bool nullable)
{
	const struct jv *v = member(r, obj, k, JV_STRING, nullable);
	char *s;

	if (!v)
		return NULL;
	s = strdup(v->s);
	if (!s)
		r->ret = -ENOMEM;
	return s;
}

static int64_t get_time(struct rd *r, const struct jv *obj, const char *k)
{
	const struct jv *v = member(r, obj, k, JV_STRING, true);
	int64_t t;

	if (!v)
		return 0;
	if (cim_datetime_parse(v->s, &t)) {
		snprintf(r->err, r->errlen, "member %s is not a CIM datetime",
			 k);
		r->ret = -EINVAL;
		return 0;
	}
	return t;
}

/*
 * Members added after jobs were first persisted (issue 9): a record an
 * older agent wrote lacks them and reads as "nothing known yet".
 */
static bool has(const struct jv *obj, const char *k)
{
	return jv_get(obj, k) != NULL;
}

static void read_extents(struct rd *r, const struct jv *map, const char *k,
			 struct extset *s)
{
	const struct jv *v = member(r, map, k, JV_STRING, false);
	int ret;

	if (!v)
		return;
	s->limit = JOB_MAP_LIMIT;
	ret = extset_parse(s, v->s);
	if (ret == -EINVAL)
		snprintf(r->err, r->errlen,
			 "member Map.%s is not a list of extents", k);
	if (ret)
		r->ret = ret;
}

static void read_map(struct rd *r, const struct jv *d, struct job_disk *jd)
{
	const struct jv *m = member(r, d, "Map", JV_OBJECT, true);

	if (!m)
		return;
	read_extents(r, m, "Covered", &jd->map.covered);
	read_extents(r, m, "Data", &jd->map.data);
	read_extents(r, m, "Differing", &jd->map.diff);
	/* the sets only say they over-cover when they merged themselves */
	jd->map.diff.merged |= get_bool(r, m, "Merged");
	jd->map.failed = get_bool(r, m, "Incomplete");
}

static void read_source_keys(struct rd *r, const struct jv *d,
			     struct job_disk *jd)
{
	const struct jv *v;

	if (has(d, "Snapshot")) {
		v = member(r, d, "Snapshot", JV_STRING, true);
		if (v && strcmp(v->s, "reflink") && strcmp(v->s, "none")) {
			snprintf(r->err, r->errlen,
				 "Snapshot '%.20s' is neither reflink nor none",
				 v->s);
			r->ret = -EINVAL;
		}
		jd->snap_decided = v != NULL;
		jd->reflink = v && !strcmp(v->s, "reflink");
	}
	if (has(d, "SnapshotTime"))
		jd->snap_time = get_time(r, d, "SnapshotTime");
	if (has(d, "SnapshotNote")) {
		jd->snap_note = get_str(r, d, "SnapshotNote", true);
		if (jd->snap_note && !jd->snap_note[0]) {
			free(jd->snap_note);
			jd->snap_note = NULL;
		}
	}
	if (has(d, "Passes"))
		jd->passes = (unsigned)get_u64(r, d, "Passes");
	if (has(d, "Clone"))
		jd->clone = get_str(r, d, "Clone", true);
	if (has(d, "SourceIdentity"))
		jd->ident = get_str(r, d, "SourceIdentity", true);
	if (has(d, "SourceChanged"))
		jd->changed = get_bool(r, d, "SourceChanged");
	if (has(d, "Repass"))
		jd->repass = get_bool(r, d, "Repass");
	if (has(d, "Resume"))
		jd->resume = get_str(r, d, "Resume", true);
	if (has(d, "Map"))
		read_map(r, d, jd);
}

static int64_t get_interval(struct rd *r, const struct jv *obj, const char *k)
{
	const struct jv *v = member(r, obj, k, JV_STRING, false);
	int64_t t;

	if (!v)
		return 0;
	if (cim_interval_parse(v->s, &t)) {
		snprintf(r->err, r->errlen, "member %s is not a CIM interval",
			 k);
		r->ret = -EINVAL;
		return 0;
	}
	return t;
}

int job_from_json(const struct jv *v, struct job *j, char *err, size_t errlen)
{
	struct rd r = { .obj = v, .err = err, .errlen = errlen };
	const struct jv *s, *disks;
	char *phase;
	unsigned i;

	memset(j, 0, sizeof(*j));
	err[0] = '\0';
	if (v->type != JV_OBJECT) {
		snprintf(err, errlen, "not a JSON object");
		return -EINVAL;
	}
	s = member(&r, v, "InstanceID", JV_STRING, false);
	if (s && !job_id_valid(s->s)) {
		snprintf(err, errlen, "InstanceID '%.40s' is not a GUID", s->s);
		return -EINVAL;
	}
	if (s)
		memcpy(j->id, s->s, JOB_ID_LEN);
	j->type = (unsigned)get_u64(&r, v, "JobType");
	j->state = (unsigned)get_u64(&r, v, "JobState");
	j->percent = (unsigned)get_u64(&r, v, "PercentComplete");
	j->error_code = (unsigned)get_u64(&r, v, "ErrorCode");
	j->error_desc = get_str(&r, v, "ErrorDescription", true);
	j->error_summary = get_str(&r, v, "ErrorSummaryDescription", true);
	j->submitted = get_time(&r, v, "TimeSubmitted");
	j->scheduled = get_time(&r, v, "ScheduledStartTime");
	j->started = get_time(&r, v, "StartTime");
	j->elapsed = get_interval(&r, v, "ElapsedTime");
	j->last_change = get_time(&r, v, "TimeOfLastStateChange");
	j->cancellable = get_bool(&r, v, "Cancellable");
	j->vm = get_str(&r, v, "ElementName", false);
	s = member(&r, v, "ComputerSystem", JV_STRING, false);
	if (s && j->vm && strcmp(s->s, j->vm)) {
		j->vm_id = strdup(s->s);
		if (!j->vm_id)
			r.ret = -ENOMEM;
	}
	j->peer = get_str(&r, v, "Peer", true);
	j->bytes_compared = get_u64(&r, v, "BytesCompared");
	j->bytes_different = get_u64(&r, v, "BytesDifferent");
	j->bytes_sent = get_u64(&r, v, "BytesSent");
	if (has(v, "Retries"))
		j->retries = (unsigned)get_u64(&r, v, "Retries");
	j->auto_resync = get_bool(&r, v, "AutoResynchronize");
	j->finished = get_time(&r, v, "TimeFinished");
	phase = get_str(&r, v, "Phase", false);
	if (phase) {
		for (i = 0; i < sizeof(phase_names) / sizeof(phase_names[0]);
		     i++)
			if (!strcmp(phase, phase_names[i]))
				break;
		if (i == sizeof(phase_names) / sizeof(phase_names[0]) &&
		    !r.ret) {
			snprintf(err, errlen, "Phase '%.20s' is not a phase",
				 phase);
			r.ret = -EINVAL;
		}
		j->phase = (enum job_phase)i;
		free(phase);
	}
	/* a finished job keeps what is left of its TimeBeforeRemoval */
	j->retention = (int64_t)JOB_DEFAULT_RETENTION_SEC * 1000000;
	disks = member(&r, v, "Disks", JV_ARRAY, false);
	if (disks && disks->n) {
		j->disks = calloc(disks->n, sizeof(*j->disks));
		if (!j->disks)
			r.ret = -ENOMEM;
		else
			j->ndisks = (unsigned)disks->n;
	}
	for (i = 0; i < j->ndisks && !r.ret; i++) {
		const struct jv *d = &disks->items[i];
		struct job_disk *jd = &j->disks[i];

		if (d->type != JV_OBJECT) {
			snprintf(err, errlen, "Disks[%u] is not an object", i);
			r.ret = -EINVAL;
			break;
		}
		jd->name = get_str(&r, d, "Name", false);
		jd->path = get_str(&r, d, "Path", false);
		jd->size = get_u64(&r, d, "VirtualSize");
		jd->done = get_u64(&r, d, "BytesCompared");
		jd->resumed = get_u64(&r, d, "ResumeOffset");
		jd->started = get_bool(&r, d, "Started");
		jd->sent = get_bool(&r, d, "Sent");
		jd->merged = get_bool(&r, d, "Merged");
		read_source_keys(&r, d, jd);
	}
	if (!r.ret && (!j->vm || !j->vm[0])) {
		snprintf(err, errlen, "ElementName is empty");
		r.ret = -EINVAL;
	}
	if (!r.ret && j->percent > 100) {
		snprintf(err, errlen, "PercentComplete %u is over 100",
			 j->percent);
		r.ret = -EINVAL;
	}
	if (r.ret == -ENOMEM)
		snprintf(err, errlen, "out of memory");
	return r.ret;
}

void job_clear(struct job *j)
{
	unsigned i;

	for (i = 0; i < j->ndisks; i++) {
		free(j->disks[i].name);
		free(j->disks[i].path);
		free(j->disks[i].snap_note);
		free(j->disks[i].clone);
		free(j->disks[i].ident);
		free(j->disks[i].resume);
		svgmap_free(&j->disks[i].map);
	}
	free(j->disks);
	free(j->vm);
	free(j->vm_id);
	free(j->peer);
	free(j->error_desc);
	free(j->error_summary);
	memset(j, 0, sizeof(*j));
}

/* --- persistence --- */

int job_save(const char *dir, const struct job *j, int64_t now)
{
	struct json_writer w;
	char name[JOB_ID_LEN + 8];
	char *buf = NULL;
	size_t len = 0;
	FILE *f;
	int ret;

	f = open_memstream(&buf, &len);
	if (!f)
		return -ENOMEM;
	json_init(&w, f, 2);
	job_to_json(&w, j, now);
	ret = json_end(&w);
	if (fclose(f) && !ret)
		ret = -ENOMEM;
	if (!ret) {
		snprintf(name, sizeof(name), "%s.json", j->id);
		ret = fs_write_atomic(dir, name, buf, len);
	}
	free(buf);
	return ret;
}

int job_remove(const char *dir, const char *id)
{
	char path[4096];

	if (!job_id_valid(id))
		return -EINVAL;
	snprintf(path, sizeof(path), "%s/%s.json", dir, id);
	if (unlink(path) && errno != ENOENT)
		return -errno;
	return vhdx_fsync_dir(dir);
}

int job_load(const char *dir, const char *name, struct job *j, char *err,
	     size_t errlen)
{
	struct jv *v = NULL;
	char *buf = NULL;
	size_t len;
	int ret;

	memset(j, 0, sizeof(*j));
	ret = fs_read_small(dir, name, &buf, &len);
	if (ret) {
		snprintf(err, errlen, "%s", strerror(-ret));
		return ret;
	}
	ret = jv_parse(buf, len, &v, err, errlen);
	free(buf);
	if (ret)
		return ret;
	ret = job_from_json(v, j, err, errlen);
	jv_free(v);
	return ret;
}
