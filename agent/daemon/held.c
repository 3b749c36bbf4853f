/* SPDX-License-Identifier: MIT */
/*
 * held.c - what the recovery side holds of its replica VMs' disks, as
 * the agent sees it: the differencing child a primary's copy goes into
 * (IMAGE.hvresync.avhdx, next to the real image, as serve.c exports it),
 * its progress record in the server's state dir (agent/sync/record.h),
 * and the marker of a merge that has begun (CHILD.merging).
 *
 * Three uses: finishing interrupted merges when the agent starts, before
 * the peer server accepts (a half-merged image must never be served or
 * reported Ok); GetVM's HeldCopies and MergePending; and `vm discard`,
 * which frees the space of copies nobody will finish.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "agent/daemon/internal.h"
#include "agent/lib/fmt.h"
#include "agent/lib/log.h"
#include "agent/sync/common.h"
#include "agent/sync/disk.h"
#include "agent/sync/proto.h"
#include "agent/sync/record.h"
#include "vhdx/vhdx.h"

#define MERGE_REPORT_S 5.0 /* a long merge logs its progress this often */
/* A record's file name: the export name percent-encoded and ".state". */
#define REC_NAME_MAX (PROTO_NAME_MAX * 3 + 16)

/* The files of one replica disk's held copy. */
struct held_files {
	char image[PATH_MAX];	      /* the real image (the export) */
	char child[PATH_MAX + 32];    /* IMAGE.hvresync.avhdx */
	char marker[PATH_MAX + 48];   /* CHILD.merging */
	char record[PATH_MAX + 1024]; /* serve/NAME.state */
	char rec_name[REC_NAME_MAX];
};

/* The paths serve.c uses for disk @i of @vm: the child next to the real
 * path, the record named after the export "VM:FILE".  -errno when the
 * export name breaks the rule or a path is too long. */
static int held_files(const struct agent *a, const struct vm_config *vm,
		      unsigned i, struct held_files *f)
{
	char name[PROTO_NAME_MAX + 1];
	int ret;

	if (!realpath(vm->disks[i], f->image))
		snprintf(f->image, sizeof(f->image), "%s", vm->disks[i]);
	snprintf(f->child, sizeof(f->child), "%s%s", f->image,
		 SERVER_CHILD_SUFFIX);
	snprintf(f->marker, sizeof(f->marker), "%s.merging", f->child);
	ret = jobs_export_name(name, sizeof(name), vm, i);
	if (!ret)
		ret = record_file_name(name, f->rec_name, sizeof(f->rec_name));
	if (ret)
		return ret;
	snprintf(f->record, sizeof(f->record), "%s/%s", a->serve_dir,
		 f->rec_name);
	return 0;
}

static bool exists(const char *path)
{
	return access(path, F_OK) == 0;
}

bool held_merge_pending(const struct vm_config *vm, unsigned i)
{
	char image[PATH_MAX], marker[PATH_MAX + 64];

	if (!realpath(vm->disks[i], image))
		snprintf(image, sizeof(image), "%s", vm->disks[i]);
	snprintf(marker, sizeof(marker), "%s%s.merging", image,
		 SERVER_CHILD_SUFFIX);
	return exists(marker);
}

/* Under the lock: a disk's merge note (NULL clears it). */
static void set_note(struct vmrt *rt, unsigned i, const char *note)
{
	if (!rt->merge_note)
		rt->merge_note = calloc(rt->cfg->ndisks ? rt->cfg->ndisks : 1,
					sizeof(*rt->merge_note));
	if (!rt->merge_note)
		return;
	free(rt->merge_note[i]);
	rt->merge_note[i] = note ? strdup(note) : NULL;
}

/* ---- interrupted merges, at start ---------------------------------------- */

struct merge_progress {
	const char *vm, *disk;
	double last;
};

/* A long merge says how far it is, and tells systemd it is not hung. */
static void on_merge_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct merge_progress *p = ctx;
	double now = mono_seconds();

	if (now - p->last < MERGE_REPORT_S)
		return;
	p->last = now;
	log_msg(LOG_PRIO_INFO, NULL,
		"VM %s: disk %s: finishing the interrupted merge: %" PRIu64
		"%%",
		p->vm, p->disk, total ? done * 100 / total : 0);
	sd_notify(0, "EXTEND_TIMEOUT_USEC=60000000");
}

/* Before the merge can remove the child: a record that outlives it then
 * says the merge finished, not that the child was lost (record.h). */
static void mark_record_merging(const struct agent *a,
				const struct held_files *f)
{
	struct record r;
	int ret;

	if (record_load(a->serve_dir, f->rec_name, &r) < 0 || r.merging)
		return;
	r.merging = true;
	ret = record_save(a->serve_dir, f->rec_name, &r);
	if (ret < 0)
		log_msg(LOG_PRIO_WARNING, NULL, "%s: cannot update: %s",
			f->record, strerror(-ret));
}

/* Finish the interrupted merge of disk @i of @rt; without the lock. */
static void finish_one(struct agent *a, struct vmrt *rt, unsigned i,
		       const struct held_files *f)
{
	const char *disk = config_basename(rt->cfg->disks[i]);
	struct merge_progress p = { rt->cfg->name, disk, mono_seconds() };
	struct vhdx_error verr = { { 0 } };
	char note[1200];
	double t0 = mono_seconds();
	int ret;

	log_msg(LOG_PRIO_WARNING, NULL,
		"VM %s: disk %s: finishing the interrupted merge of %s before serving",
		rt->cfg->name, disk, f->child);
	sd_notifyf(0, "STATUS=finishing the interrupted merge of %s", f->child);
	/* The record stays, saying "merging": the primary's job retries its
	 * cut MERGE session and must hear "merged" (disk.c). */
	mark_record_merging(a, f);
	ret = vhdx_merge(f->child, 0, on_merge_progress, &p, &verr);
	pthread_mutex_lock(&a->lock);
	if (ret) {
		snprintf(
			note, sizeof(note),
			"merge pending: the interrupted merge cannot finish: %s",
			verr.msg[0] ? verr.msg : strerror(-ret));
		set_note(rt, i, note);
	} else {
		set_note(rt, i, NULL);
	}
	pthread_mutex_unlock(&a->lock);
	if (ret)
		log_msg(LOG_PRIO_ERR, NULL,
			"VM %s: disk %s: %s; the disk stays Critical until a merge completes (each session of the export, or `hvresync vm discard`, tries again)",
			rt->cfg->name, disk, note);
	else
		log_msg(LOG_PRIO_NOTICE, NULL,
			"VM %s: disk %s: the interrupted merge finished in %.1f s",
			rt->cfg->name, disk, mono_seconds() - t0);
}

void held_finish_merges(struct agent *a)
{
	struct held_files f;
	unsigned v, i, n = 0;

	for (v = 0; v < a->cfg.nvms; v++) {
		struct vmrt *rt = &a->vms[v];

		if (rt->cfg->role == VM_ROLE_PRIMARY)
			continue;
		for (i = 0; i < rt->cfg->ndisks; i++) {
			if (held_files(a, rt->cfg, i, &f) || !exists(f.marker))
				continue;
			if (!n++) {
				pthread_mutex_lock(&a->lock);
				a->merging = true;
				pthread_mutex_unlock(&a->lock);
			}
			pthread_mutex_lock(&a->lock);
			set_note(
				rt, i,
				"merge pending: the agent is finishing the interrupted merge");
			pthread_mutex_unlock(&a->lock);
		}
	}
	for (v = 0; n && v < a->cfg.nvms; v++) {
		struct vmrt *rt = &a->vms[v];

		if (rt->cfg->role == VM_ROLE_PRIMARY)
			continue;
		for (i = 0; i < rt->cfg->ndisks; i++)
			if (!held_files(a, rt->cfg, i, &f) && exists(f.marker))
				finish_one(a, rt, i, &f);
	}
	pthread_mutex_lock(&a->lock);
	a->merging = false;
	pthread_mutex_unlock(&a->lock);
}

/* ---- GetVM --------------------------------------------------------------- */

/* When @path was made: its birth time where the filesystem keeps one,
 * else its last change.  0 when it cannot be read. */
static int64_t made_at(const char *path)
{
	struct statx sx;

	if (statx(AT_FDCWD, path, 0, STATX_BTIME | STATX_MTIME, &sx))
		return 0;
	if (sx.stx_mask & STATX_BTIME)
		return (int64_t)sx.stx_btime.tv_sec * 1000000 +
		       sx.stx_btime.tv_nsec / 1000;
	return (int64_t)sx.stx_mtime.tv_sec * 1000000 +
	       sx.stx_mtime.tv_nsec / 1000;
}

void held_status_free(struct vm_disk_status *ds, unsigned n)
{
	unsigned i;

	for (i = 0; ds && i < n; i++)
		free((char *)ds[i].held_path);
	free(ds);
}

int held_status(struct agent *a, struct vmrt *rt, struct vm_disk_status **out)
{
	const struct vm_config *vm = rt->cfg;
	struct vm_disk_status *ds;
	struct held_files f;
	struct record r;
	struct stat st;
	unsigned i;

	*out = NULL;
	if (vm->role == VM_ROLE_PRIMARY || !vm->ndisks)
		return 0;
	ds = calloc(vm->ndisks, sizeof(*ds));
	if (!ds)
		return -ENOMEM;
	for (i = 0; i < vm->ndisks; i++) {
		if (held_files(a, vm, i, &f))
			continue;
		ds[i].merge_pending = exists(f.marker);
		ds[i].merge_note = rt->merge_note && rt->merge_note[i]
					   ? rt->merge_note[i]
					   : "merge pending: a merge into the "
					     "image has begun and not finished";
		if (stat(f.child, &st))
			continue;
		ds[i].held = true;
		ds[i].held_path = strdup(f.child);
		ds[i].held_bytes = (uint64_t)st.st_blocks * 512;
		ds[i].held_since = made_at(f.child);
		ds[i].held_complete =
			!record_load(a->serve_dir, f.rec_name, &r) &&
			!strcmp(r.image, f.image) && r.complete;
		if (!ds[i].held_path) {
			held_status_free(ds, vm->ndisks);
			return -ENOMEM;
		}
	}
	*out = ds;
	return 0;
}

/* ---- vm discard ---------------------------------------------------------- */

static void release_all(struct agent *a, const struct vm_config *vm, unsigned n)
{
	char name[PROTO_NAME_MAX + 1];
	unsigned i;

	for (i = 0; a->server && i < n; i++)
		if (!jobs_export_name(name, sizeof(name), vm, i))
			server_hold_export(a->server, name, false);
}

/* Hold every export of @vm so that no session starts on it; under the
 * lock.  0, or -EBUSY naming the disk in @msg (nothing held). */
static int hold_all(struct agent *a, const struct vm_config *vm, char *msg,
		    size_t len)
{
	char name[PROTO_NAME_MAX + 1];
	unsigned i;

	for (i = 0; a->server && i < vm->ndisks; i++) {
		if (jobs_export_name(name, sizeof(name), vm, i) ||
		    server_hold_export(a->server, name, true) != -EBUSY)
			continue;
		snprintf(
			msg, len,
			"VM %s: disk %s is in a session with the primary right now",
			vm->name, config_basename(vm->disks[i]));
		release_all(a, vm, i);
		return -EBUSY;
	}
	return 0;
}

static void reply(struct json_writer *w, unsigned rv, const char *msg)
{
	json_object_begin(w);
	json_kv_u64(w, "ReturnValue", rv);
	json_kv_string(w, "Error", msg);
	json_object_end(w);
}

/*
 * The record of a dropped copy says "discarded" (record.h) instead of
 * going: a primary's job that sent the copy and has yet to merge it must
 * hear an error from its MERGE, not "nothing to merge".  The next copy
 * session replaces it.  A merged copy keeps its "merging" record, so that
 * MERGE answers "merged".  0 or -errno with @msg.
 */
static int leave_tombstone(const struct agent *a, const struct held_files *f,
			   char *msg, size_t len, const char *vm,
			   const char *disk)
{
	struct record r;
	int ret;

	if (record_load(a->serve_dir, f->rec_name, &r) < 0)
		return disk_remove_durably(f->record); /* none, or unreadable */
	r.done = 0;
	r.complete = false;
	r.merging = false;
	r.discarded = true;
	ret = record_save(a->serve_dir, f->rec_name, &r);
	if (ret)
		snprintf(msg, len, "VM %s: disk %s: cannot update %.600s: %s",
			 vm, disk, f->record, strerror(-ret));
	return ret;
}

/* Drop (or, once its merge has begun, complete) the held copy of disk @i;
 * without the lock.  0, or a Resynchronize value with @msg. */
static unsigned discard_one(struct agent *a, struct vmrt *rt, unsigned i,
			    bool *merged, bool *dropped, char *msg, size_t len)
{
	const char *disk = config_basename(rt->cfg->disks[i]);
	struct vhdx_error verr = { { 0 } };
	struct vhdx_lock *lk = NULL;
	struct held_files f;
	int ret;

	*merged = *dropped = false;
	if (held_files(a, rt->cfg, i, &f))
		return 0; /* not an export: nothing is held for it */
	if (!exists(f.child) && !exists(f.marker))
		return 0; /* nothing held (a record alone says so itself) */
	/* another program (a view, qemu, `hvresync serve`) may use it */
	ret = vhdx_lock(f.image, VHDX_LOCK_WRITE, &lk, &verr);
	if (ret) {
		snprintf(msg, len, "VM %s: disk %s: %s", rt->cfg->name, disk,
			 verr.msg[0] ? verr.msg : strerror(-ret));
		return ret == -EBUSY ? RV_IN_USE : RV_FAILED;
	}
	if (exists(f.marker)) {
		mark_record_merging(a, &f);
		ret = vhdx_merge(f.child, 0, NULL, NULL, &verr);
		if (!ret)
			*merged = true;
		else
			snprintf(
				msg, len,
				"VM %s: disk %s: a merge into the image has begun and cannot be undone, and it cannot finish: %s",
				rt->cfg->name, disk, verr.msg);
	} else {
		ret = disk_remove_durably(f.child);
		if (ret)
			snprintf(msg, len,
				 "VM %s: disk %s: cannot remove %.600s: %s",
				 rt->cfg->name, disk, f.child, strerror(-ret));
		else
			*dropped = true;
	}
	if (!ret && !*merged)
		ret = leave_tombstone(a, &f, msg, len, rt->cfg->name, disk);
	vhdx_unlock(lk);
	if (ret)
		return RV_FAILED;
	pthread_mutex_lock(&a->lock);
	set_note(rt, i, NULL);
	pthread_mutex_unlock(&a->lock);
	log_msg(LOG_PRIO_NOTICE, NULL, "VM %s: disk %s: held copy %s%s",
		rt->cfg->name, disk, f.child,
		*merged ? ": its merge had begun, so it was completed"
			: " discarded");
	return 0;
}

void held_discard(struct agent *a, struct vmrt *rt, struct json_writer *w)
{
	const struct vm_config *vm = rt->cfg;
	bool *merged, *dropped;
	struct ajob *aj;
	char msg[1200] = "";
	unsigned i, rv = 0;

	if (vm->role == VM_ROLE_PRIMARY) {
		snprintf(
			msg, sizeof(msg),
			"VM %s is a primary: its copies are held by the recovery agent (cancel its failed job, `hvresync job cancel ID`, to discard them from here)",
			vm->name);
		reply(w, RV_NOT_SUPPORTED, msg);
		return;
	}
	merged = calloc(vm->ndisks + 1, sizeof(*merged));
	dropped = calloc(vm->ndisks + 1, sizeof(*dropped));
	if (!merged || !dropped) {
		free(merged);
		free(dropped);
		reply(w, RV_NO_MEMORY, "out of memory");
		return;
	}
	pthread_mutex_lock(&a->lock);
	aj = jobs_active_of(a, vm->name);
	if (aj) {
		snprintf(msg, sizeof(msg), "VM %s has job %s (%s)", vm->name,
			 aj->j.id, job_state_name(aj->j.state));
		rv = RV_IN_USE;
	} else if (rt->discarding) {
		snprintf(msg, sizeof(msg),
			 "VM %s: its held copies are being discarded already",
			 vm->name);
		rv = RV_IN_USE;
	} else if (hold_all(a, vm, msg, sizeof(msg))) {
		rv = RV_IN_USE;
	} else {
		rt->discarding = true;
	}
	pthread_mutex_unlock(&a->lock);
	if (rv) {
		free(merged);
		free(dropped);
		reply(w, rv, msg);
		return;
	}
	for (i = 0; i < vm->ndisks && !rv; i++)
		rv = discard_one(a, rt, i, &merged[i], &dropped[i], msg,
				 sizeof(msg));
	pthread_mutex_lock(&a->lock);
	release_all(a, vm, vm->ndisks);
	rt->discarding = false;
	pthread_mutex_unlock(&a->lock);
	if (rv) {
		reply(w, rv, msg);
	} else {
		json_object_begin(w);
		json_kv_u64(w, "ReturnValue", RV_OK);
		json_key(w, "Discarded");
		json_array_begin(w);
		for (i = 0; i < vm->ndisks; i++)
			if (dropped[i])
				json_string(w, config_basename(vm->disks[i]));
		json_array_end(w);
		json_key(w, "Merged");
		json_array_begin(w);
		for (i = 0; i < vm->ndisks; i++)
			if (merged[i])
				json_string(w, config_basename(vm->disks[i]));
		json_array_end(w);
		json_object_end(w);
	}
	free(merged);
	free(dropped);
}
