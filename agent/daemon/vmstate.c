/* SPDX-License-Identifier: MIT */
/* vmstate.c - VM replication state, its rules and its record (vmstate.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent/daemon/cimtime.h"
#include "agent/daemon/vmstate.h"
#include "agent/lib/fsutil.h"
#include "agent/lib/jsonparse.h"

static const char *const state_names[] = {
	"Disabled",
	"Ready for replication",
	"Waiting to complete initial replication",
	"Replicating",
	"Synced replication complete",
	"Recovered",
	"Committed",
	"Suspended",
	"Critical",
	"Waiting to start resynchronization",
	"Resynchronizing",
	"Resynchronization suspended",
	"Failover in progress",
	"Failback in progress",
	"Failback complete",
};

const char *repl_state_name(unsigned s)
{
	return s <= RS_MAX ? state_names[s] : "Unknown";
}

const char *repl_health_name(unsigned h)
{
	switch (h) {
	case RH_NOT_APPLICABLE:
		return "Not applicable";
	case RH_OK:
		return "Ok";
	case RH_WARNING:
		return "Warning";
	case RH_CRITICAL:
		return "Critical";
	}
	return "Unknown";
}

const char *repl_mode_name(unsigned m)
{
	switch (m) {
	case RM_NONE:
		return "None";
	case RM_PRIMARY:
		return "Primary";
	case RM_REPLICA:
		return "Replica";
	case RM_TEST_REPLICA:
		return "Test replica";
	case RM_EXTENDED_REPLICA:
		return "Extended replica";
	}
	return "Unknown";
}

unsigned vm_mode(const struct vm_config *vm)
{
	/* Any role past replica (config.h's extended-replica, once it has
	 * one) is the target of an extended replication. */
	switch (vm->role) {
	case VM_ROLE_PRIMARY:
		return RM_PRIMARY;
	case VM_ROLE_REPLICA:
		return RM_REPLICA;
	default:
		return RM_EXTENDED_REPLICA;
	}
}

unsigned vm_health_for(unsigned s)
{
	switch (s) {
	case RS_DISABLED:
		return RH_NOT_APPLICABLE;
	case RS_CRITICAL:
	case RS_RESYNC_REQUIRED:
	case RS_RESYNC_SUSPENDED:
		return RH_CRITICAL;
	case RS_SUSPENDED:
	case RS_RESYNCHRONIZING:
	case RS_FAILOVER:
	case RS_FAILBACK:
		return RH_WARNING;
	}
	return RH_OK;
}

bool vm_state_settable(unsigned s)
{
	return s >= 1 && s <= RS_MAX && s != RS_RESYNCHRONIZING &&
	       s != RS_RESYNC_SUSPENDED;
}

void vm_state_set(struct vm_state *st, unsigned s, int64_t now)
{
	if (st->state != s)
		st->last_change = now;
	st->state = s;
	st->health = vm_health_for(s);
}

void vm_state_success(struct vm_state *st, const struct job *j, int64_t now)
{
	st->last_success = now;
	st->last_success_elapsed = job_elapsed(j, now);
	st->last_success_compared = j->bytes_compared;
	st->last_success_different = j->bytes_different;
	st->last_success_sent = j->bytes_sent;
}

/* The last successful resync's figures, as the record and GetVM show
 * them; all null when there was none. */
static void success_json(struct json_writer *w, const struct vm_state *st)
{
	if (!st->last_success) {
		json_kv_null(w, "LastSuccessfulResyncSeconds");
		json_kv_null(w, "LastSuccessfulResyncBytesCompared");
		json_kv_null(w, "LastSuccessfulResyncBytesDifferent");
		json_kv_null(w, "LastSuccessfulResyncBytesSent");
		return;
	}
	json_key(w, "LastSuccessfulResyncSeconds");
	json_double(w, (double)st->last_success_elapsed / 1e6, 3);
	json_kv_u64(w, "LastSuccessfulResyncBytesCompared",
		    st->last_success_compared);
	json_kv_u64(w, "LastSuccessfulResyncBytesDifferent",
		    st->last_success_different);
	json_kv_u64(w, "LastSuccessfulResyncBytesSent", st->last_success_sent);
}

/* A counter of the record: absent (an older record) reads as 0. */
static uint64_t record_u64(const struct jv *v, const char *k)
{
	const struct jv *m = jv_get(v, k);

	return m && m->type == JV_NUMBER && m->is_int && m->i >= 0
		       ? (uint64_t)m->i
		       : 0;
}

/* VM names are free text: keep [A-Za-z0-9._-] and %XX the rest. */
static void file_name(const char *name, char *out, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	const unsigned char *p;

	for (p = (const unsigned char *)name; *p && o + 4 < len; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' ||
		    (*p == '.' && p != (const unsigned char *)name)) {
			out[o++] = (char)*p;
		} else {
			out[o++] = '%';
			out[o++] = hex[*p >> 4];
			out[o++] = hex[*p & 15];
		}
	}
	out[o] = '\0';
	strncat(out, ".json", len - o - 1);
}

int vm_state_load(const char *dir, const char *name, struct vm_state *st,
		  char *err, size_t errlen)
{
	char fname[1024], perr[256];
	const struct jv *m;
	struct jv *v = NULL;
	char *buf = NULL;
	size_t len;
	int64_t t;
	int ret;

	memset(st, 0, sizeof(*st));
	st->state = RS_READY;
	st->health = vm_health_for(RS_READY);
	err[0] = '\0';
	file_name(name, fname, sizeof(fname));
	ret = fs_read_small(dir, fname, &buf, &len);
	if (ret == -ENOENT)
		return 0;
	if (ret) {
		snprintf(err, errlen, "%s/%s: %s", dir, fname, strerror(-ret));
		return ret;
	}
	ret = jv_parse(buf, len, &v, perr, sizeof(perr));
	free(buf);
	if (ret) {
		/* a torn or empty record: the log must say which file */
		snprintf(err, errlen, "%s/%s: %s", dir, fname, perr);
		return ret;
	}
	ret = -EINVAL;
	m = jv_get(v, "ReplicationState");
	if (!m || m->type != JV_NUMBER || !m->is_int || m->i < 0 ||
	    m->i > RS_MAX) {
		snprintf(err, errlen,
			 "%s/%s: ReplicationState is missing or wrong", dir,
			 fname);
		goto out;
	}
	st->state = (unsigned)m->i;
	st->health = vm_health_for(st->state);
	m = jv_get(v, "LastJob");
	if (m && m->type == JV_STRING && job_id_valid(m->s))
		memcpy(st->last_job, m->s, JOB_ID_LEN);
	m = jv_get(v, "LastJobState");
	if (m && m->type == JV_NUMBER && m->is_int && m->i >= 0 && m->i < 65536)
		st->last_job_state = (unsigned)m->i;
	m = jv_get(v, "TimeOfLastStateChange");
	if (m && m->type == JV_STRING && !cim_datetime_parse(m->s, &t))
		st->last_change = t;
	m = jv_get(v, "LastSuccessfulResync");
	if (m && m->type == JV_STRING && !cim_datetime_parse(m->s, &t))
		st->last_success = t;
	m = jv_get(v, "LastSuccessfulResyncSeconds");
	if (st->last_success && m && m->type == JV_NUMBER && m->num >= 0 &&
	    m->num < 1e12)
		st->last_success_elapsed = (int64_t)(m->num * 1e6 + 0.5);
	if (st->last_success) {
		st->last_success_compared =
			record_u64(v, "LastSuccessfulResyncBytesCompared");
		st->last_success_different =
			record_u64(v, "LastSuccessfulResyncBytesDifferent");
		st->last_success_sent =
			record_u64(v, "LastSuccessfulResyncBytesSent");
	}
	ret = 0;
out:
	jv_free(v);
	return ret;
}

int vm_state_save(const char *dir, const char *name, const struct vm_state *st)
{
	struct json_writer w;
	char fname[1024];
	char *buf = NULL;
	size_t len = 0;
	FILE *f;
	int ret;

	f = open_memstream(&buf, &len);
	if (!f)
		return -ENOMEM;
	json_init(&w, f, 2);
	json_object_begin(&w);
	json_kv_string(&w, "ElementName", name);
	json_kv_u64(&w, "ReplicationState", st->state);
	json_kv_u64(&w, "ReplicationHealth", st->health);
	job_kv_time(&w, "TimeOfLastStateChange", st->last_change);
	json_kv_string(&w, "LastJob", st->last_job[0] ? st->last_job : NULL);
	json_kv_u64(&w, "LastJobState", st->last_job_state);
	job_kv_time(&w, "LastSuccessfulResync", st->last_success);
	success_json(&w, st);
	json_object_end(&w);
	ret = json_end(&w);
	if (fclose(f) && !ret)
		ret = -ENOMEM;
	if (!ret) {
		file_name(name, fname, sizeof(fname));
		ret = fs_write_atomic(dir, fname, buf, len);
	}
	free(buf);
	return ret;
}

static void hhmm(struct json_writer *w, const char *k, int min)
{
	char s[8];

	snprintf(s, sizeof(s), "%02d:%02d", (min / 60) % 24, min % 60);
	json_kv_string(w, k, s);
}

/* The held copies: one object per disk whose child is there. */
static void held_copies(struct json_writer *w, const struct vm_config *vm,
			const struct vm_disk_status *ds)
{
	unsigned i;

	json_key(w, "HeldCopies");
	json_array_begin(w);
	for (i = 0; ds && i < vm->ndisks; i++) {
		if (!ds[i].held)
			continue;
		json_object_begin(w);
		json_kv_string(w, "Disk", config_basename(vm->disks[i]));
		json_kv_string(w, "Path", ds[i].held_path);
		json_kv_u64(w, "Bytes", ds[i].held_bytes);
		job_kv_time(w, "Since", ds[i].held_since);
		json_kv_bool(w, "Complete", ds[i].held_complete);
		json_kv_bool(w, "MergePending", ds[i].merge_pending);
		json_object_end(w);
	}
	json_array_end(w);
}

void vm_to_json(struct json_writer *w, const struct vm_config *vm,
		const struct vm_state *st, const struct vm_disk_status *ds)
{
	unsigned i, mode = vm_mode(vm), health = st->health;
	struct stat sb;

	for (i = 0; ds && i < vm->ndisks; i++)
		if (ds[i].merge_pending && !ds[i].in_session)
			health = RH_CRITICAL;
	json_object_begin(w);
	json_kv_string(w, "ElementName", vm->name);
	json_kv_string(w, "Name", vm->id);
	json_kv_u64(w, "ReplicationState", st->state);
	json_kv_u64(w, "ReplicationHealth", health);
	json_kv_u64(w, "ReplicationMode", mode);
	job_kv_time(w, "TimeOfLastStateChange", st->last_change);
	json_kv_string(w, "Role",
		       mode == RM_PRIMARY   ? "primary"
		       : mode == RM_REPLICA ? "replica"
					    : "extended-replica");
	json_kv_string(w, "Replica", vm->replica);
	json_key(w, "Disks");
	json_array_begin(w);
	for (i = 0; i < vm->ndisks; i++) {
		bool exists = stat(vm->disks[i], &sb) == 0;

		json_object_begin(w);
		json_kv_string(w, "Name", config_basename(vm->disks[i]));
		json_kv_string(w, "Path", vm->disks[i]);
		json_kv_bool(w, "Exists", exists);
		json_kv_bool(w, "MergePending", ds && ds[i].merge_pending);
		json_kv_string(w, "MergeNote",
			       ds && ds[i].merge_pending ? ds[i].merge_note
							 : NULL);
		json_object_end(w);
	}
	json_array_end(w);
	held_copies(w, vm, ds);
	json_key(w, "ExcludedDisks");
	json_array_begin(w);
	for (i = 0; i < vm->nexcludes; i++)
		json_string(w, vm->excludes[i]);
	json_array_end(w);
	json_kv_bool(w, "AutoResynchronizeEnabled", vm->auto_resync);
	if (vm->auto_resync) {
		hhmm(w, "AutoResynchronizeIntervalStart", vm->window_start);
		hhmm(w, "AutoResynchronizeIntervalEnd", vm->window_end);
	} else {
		json_kv_null(w, "AutoResynchronizeIntervalStart");
		json_kv_null(w, "AutoResynchronizeIntervalEnd");
	}
	json_kv_string(w, "LastJob", st->last_job[0] ? st->last_job : NULL);
	json_kv_u64(w, "LastJobState", st->last_job_state);
	job_kv_time(w, "LastSuccessfulResync", st->last_success);
	success_json(w, st);
	json_object_end(w);
}
