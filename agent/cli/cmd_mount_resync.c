/* SPDX-License-Identifier: MIT */
/*
 * cmd_mount_resync.c - `hvresync mount-and-resync VM`, what the systemd
 * timer runs: show the VM's replication-enabled disks as raw views, ask
 * the local agent to resynchronize the VM from those views (Resynchronize
 * with Sources), follow the job, then check with libblkid that each
 * recovery disk shows the partition table and filesystem UUIDs of its
 * primary.  A view is a read-only device-mapper device
 * /dev/mapper/hvresync-VM-DISK (kernel speed) where the kernel has
 * device-mapper and the image can be laid out as a table, else a FUSE
 * file under RUN-DIR/VM/ (--view picks; auto says which per disk).  The
 * views go in every case (mount_resync_views.c: children of ours serve or
 * keep them and take them down when we go, whatever the way).
 *
 * Only the primary side is known to this host's configuration; the
 * recovery disks are named in the recovery agent's.  When that file is
 * given (--recovery-config) and its disks are reachable from here (the
 * same host, or the recovery storage mounted here) they are probed;
 * otherwise the recovery side of the check is skipped with one line, and
 * the exit status rests on the job and the probe of the primary views.
 *
 * Exit status: 0 when the job Completed, every check that ran matched and
 * the views are gone; 1 when a recovery disk's table or filesystems differ
 * from its primary's; 2 on anything else.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "agent/cli/cli.h"
#include "agent/cli/control_client.h"
#include "agent/cli/mount_resync.h"
#include "agent/cli/progress.h"
#include "agent/daemon/cimtime.h"
#include "agent/daemon/config.h"
#include "agent/daemon/job.h"
#include "agent/daemon/metrics.h"
#include "agent/lib/fmt.h"
#include "agent/lib/fsutil.h"
#include "agent/lib/json.h"
#include "agent/lib/probe.h"

#define MR_USAGE                                                                    \
	"hvresync mount-and-resync VM [--config FILE] [--json] [--timeout S]\n"     \
	"                [--run-dir DIR] [--recovery-config FILE]\n"                \
	"                [--view auto|fuse|dm] [--noudevsync] [--udev-timeout S]\n" \
	"                [--metrics-file FILE.prom]\n"                              \
	"  Show the VM's replication-enabled disks as raw views (read-only\n"       \
	"  /dev/mapper/hvresync-VM-DISK devices, or FUSE files under\n"             \
	"  RUN-DIR/VM/, RUN-DIR: /run/hvresync), resynchronize the VM from\n"       \
	"  them through the agent and wait, check with libblkid that each\n"        \
	"  recovery disk shows its primary's partition table and filesystem\n"      \
	"  UUIDs, and remove the views.\n"                                          \
	"  --config FILE           the agent's configuration (VM, disks, socket)\n" \
	"  --json                  print one JSON object at the end\n"              \
	"  --timeout S             cancel the job if it has not finished in S s\n"  \
	"  --run-dir DIR           where the FUSE views are mounted\n"              \
	"  --recovery-config FILE  the recovery agent's configuration: its\n"       \
	"                          disks are probed when reachable from here\n"     \
	"  --view KIND             dm: device-mapper views only; fuse: FUSE\n"      \
	"                          only; auto (default): dm where possible\n"       \
	"  --noudevsync            dm views: make the nodes without udev\n"         \
	"  --udev-timeout S        dm views: wait at most S s for udev (30)\n"      \
	"  --metrics-file F        write the run's result for node_exporter\n"      \
	"  Exit status: 0 all well, 1 a recovery disk differs, 2 an error."

#define DEFAULT_RUN_DIR "/run/hvresync"
#define CALL_MS 30000
#define POLL_NS 200000000L
#define PLAIN_EVERY_SEC 10.0
#define CANCEL_WAIT_USEC (60 * 1000000LL)

volatile sig_atomic_t mr_got_signal;

static void on_signal(int sig)
{
	mr_got_signal = sig;
}

void mr_set_err(struct mr *m, const char *fmt, ...)
{
	va_list ap;

	if (m->err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(m->err, sizeof(m->err), fmt, ap);
	va_end(ap);
}

static bool name_usable(const char *n)
{
	return n[0] && strcmp(n, ".") && strcmp(n, "..") && !strchr(n, '/');
}

/* --- the job --- */

struct follow {
	struct progress bar;
	bool bar_on;
	double last_line;
	enum job_phase last_phase;
	unsigned last_state;
	char label[300];
};

static void show_progress(struct mr *m, struct follow *f, const struct job *j)
{
	uint64_t total, done;
	char a[32], b[32], c[32];
	double now = mono_seconds();

	progress_job_bytes(j, &total, &done);
	if (f->bar.enabled || !f->bar_on) {
		if (!f->bar_on) {
			progress_init(&f->bar, f->label, total);
			f->bar_on = true;
		}
		f->bar.total = total;
		progress_update(&f->bar, done);
		if (f->bar.enabled)
			return;
	}
	/* Not a terminal: a plain line now and then, and at every change
	 * of state or phase, for the journal. */
	if (now - f->last_line < PLAIN_EVERY_SEC && j->phase == f->last_phase &&
	    j->state == f->last_state)
		return;
	f->last_line = now;
	f->last_phase = j->phase;
	f->last_state = j->state;
	fmt_size(a, sizeof(a), done);
	fmt_size(b, sizeof(b), total);
	fmt_size(c, sizeof(c), j->bytes_sent);
	note_msg("%s: job %s %s, %s, %u%%: %s of %s compared, %s sent",
		 m->vm->name, j->id, job_state_name(j->state),
		 job_phase_name(j->phase), j->percent, a, b, c);
}

/* Terminate the job (it reads our views) and wait for it to end. */
static void cancel_job(struct mr *m, const char *why)
{
	char err[1024];
	unsigned rv;

	note_msg("%s: cancelling job %s (%s)", m->vm->name, m->job, why);
	rv = control_job_state_change(m->sock, m->job, REQ_TERMINATE,
				      CANCEL_WAIT_USEC, err, sizeof(err));
	if (rv != RSC_OK && rv != RSC_STARTED)
		error_msg("job %s: cancel: %u (%s)%s%s", m->job, rv,
			  rv < RV_FAILED ? rsc_name(rv) : rv_name(rv),
			  err[0] ? ": " : "", err);
	job_clear(&m->final);
	m->have_final = control_get_job(m->sock, m->job, CALL_MS, &m->final,
					err, sizeof(err)) == 0;
}

/* Poll until the job is finished, we are told to stop, or time is up. */
static int follow_job(struct mr *m)
{
	struct timespec ts = { 0, POLL_NS };
	double deadline = m->o.timeout > 0 ? mono_seconds() + m->o.timeout : 0;
	struct follow f = { .last_phase = (enum job_phase) - 1 };
	char err[1024];
	struct job cur;
	unsigned rv;

	snprintf(f.label, sizeof(f.label), "resync %s", m->vm->name);
	for (;;) {
		if (mr_got_signal)
			break;
		if (deadline && mono_seconds() > deadline) {
			if (f.bar_on)
				progress_finish(&f.bar);
			m->rv = RV_TIMEOUT;
			mr_set_err(m, "job %s did not finish within %g s",
				   m->job, m->o.timeout);
			cancel_job(m, "--timeout");
			return -1;
		}
		rv = control_get_job(m->sock, m->job, CALL_MS, &cur, err,
				     sizeof(err));
		if (rv) {
			if (f.bar_on)
				progress_finish(&f.bar);
			mr_set_err(m, "job %s: cannot follow it: %u (%s): %s",
				   m->job, rv, rv_name(rv), err);
			return -1;
		}
		job_clear(&m->final);
		m->final = cur;
		m->have_final = true;
		show_progress(m, &f, &cur);
		if (job_state_final(cur.state))
			break;
		nanosleep(&ts, NULL);
	}
	if (f.bar_on)
		progress_finish(&f.bar);
	if (mr_got_signal) {
		m->signal = mr_got_signal;
		mr_set_err(m, "stopped by SIG%s", sigabbrev_np(m->signal));
		cancel_job(m, "stopped by a signal");
		return -1;
	}
	return 0;
}

/* --- the libblkid check --- */

/* Pair each disk with the recovery agent's disk of the same file name. */
static int find_recovery_disks(struct mr *m)
{
	char err[1024];
	const struct vm_config *rv;
	unsigned i, k;

	if (!m->o.recovery_config) {
		snprintf(m->skip_why, sizeof(m->skip_why),
			 "the recovery disks are on %s, not known here (give "
			 "--recovery-config FILE when they are reachable "
			 "from this host)",
			 m->vm->replica ?: "the peer");
		return 0;
	}
	if (config_load(m->o.recovery_config, &m->rcfg, err, sizeof(err))) {
		config_free(&m->rcfg); /* what it parsed before the error */
		mr_set_err(m, "--recovery-config: %s", err);
		return -1;
	}
	m->have_rcfg = true;
	rv = config_find_vm(&m->rcfg, m->vm->name);
	if (!rv && m->vm->id)
		rv = config_find_vm(&m->rcfg, m->vm->id);
	if (!rv) {
		mr_set_err(m, "%s: no [vm %s] to find the recovery disks in",
			   m->o.recovery_config, m->vm->name);
		return -1;
	}
	for (i = 0; i < m->ndisks; i++) {
		for (k = 0; k < rv->ndisks; k++)
			if (!strcmp(config_basename(rv->disks[k]),
				    m->disks[i].name))
				break;
		if (k == rv->ndisks) {
			mr_set_err(m, "%s: [vm %s] has no disk named %s",
				   m->o.recovery_config, rv->name,
				   m->disks[i].name);
			return -1;
		}
		m->disks[i].recovery = rv->disks[k];
	}
	return 0;
}

/* libblkid on one disk's view and its recovery disk: 0 they match (or
 * the recovery disk was not checked), 1 they differ, 2 a probe failed. */
static int check_disk(struct mr_disk *d)
{
	char why[1024], pa[1024];

	if (probe_raw_path(d->view, d->sector, &d->p, why, sizeof(why))) {
		d->check = CHECK_ERROR;
		snprintf(d->what, sizeof(d->what), "%s", why);
		return 2;
	}
	d->probed_p = true;
	probe_describe(&d->p, pa, sizeof(pa));
	if (!d->recovery) {
		d->check = CHECK_SKIPPED;
		fmt_line(d->what, sizeof(d->what),
			 "%s (the recovery disk "
			 "was not checked)",
			 pa);
		return 0;
	}
	if (probe_path(d->recovery, d->sector, &d->r, why, sizeof(why))) {
		d->check = CHECK_ERROR;
		snprintf(d->what, sizeof(d->what), "%s", why);
		return 2;
	}
	d->probed_r = true;
	if (probe_differ(&d->p, &d->r, why, sizeof(why))) {
		d->check = CHECK_DIFFER;
		fmt_line(d->what, sizeof(d->what),
			 "%s differs from its "
			 "primary: %s",
			 d->recovery, why);
		return 1;
	}
	d->check = CHECK_MATCH;
	fmt_line(d->what, sizeof(d->what), "%s; the same on %s", pa,
		 d->recovery);
	return 0;
}

/* The worst outcome of check_disk() over every disk. */
static int check_disks(struct mr *m)
{
	int worst = 0, r;
	unsigned i;

	for (i = 0; i < m->ndisks; i++) {
		r = check_disk(&m->disks[i]);
		if (r > worst)
			worst = r;
	}
	return worst;
}

/* --- output --- */

static const char *check_name(enum check c)
{
	switch (c) {
	case CHECK_NOT_RUN:
		return "not run";
	case CHECK_SKIPPED:
		return "skipped";
	case CHECK_MATCH:
		return "match";
	case CHECK_DIFFER:
		return "differ";
	case CHECK_ERROR:
		return "error";
	}
	return "?";
}

static void json_probe(struct json_writer *w, const char *key,
		       const struct probe_result *r, bool have)
{
	unsigned i;

	json_key(w, key);
	if (!have) {
		json_null(w);
		return;
	}
	json_object_begin(w);
	if (r->table_found) {
		json_kv_string(w, "PTTYPE", r->table_type);
		json_kv_string(w, "PTUUID", r->table_id);
	} else {
		json_kv_null(w, "PTTYPE");
		json_kv_null(w, "PTUUID");
	}
	json_key(w, "Filesystem");
	if (r->disk_fs.found) {
		json_object_begin(w);
		json_kv_string(w, "TYPE", r->disk_fs.type);
		json_kv_string(w, "UUID", r->disk_fs.uuid);
		json_object_end(w);
	} else {
		json_null(w);
	}
	json_key(w, "Partitions");
	json_array_begin(w);
	for (i = 0; i < r->nparts; i++) {
		const struct probe_part *p = &r->parts[i];

		json_object_begin(w);
		json_kv_i64(w, "Number", p->number);
		json_kv_u64(w, "Start", p->start);
		json_kv_u64(w, "Size", p->size);
		json_kv_string(w, "Type", p->type);
		json_kv_string(w, "PARTUUID", p->uuid);
		if (p->fs.found) {
			json_kv_string(w, "TYPE", p->fs.type);
			json_kv_string(w, "UUID", p->fs.uuid);
		} else {
			json_kv_null(w, "TYPE");
			json_kv_null(w, "UUID");
		}
		json_object_end(w);
	}
	json_array_end(w);
	json_object_end(w);
}

/* The job as the agent shows it now (GetJob's Instance), or null. */
static void json_instance(struct json_writer *w, struct mr *m)
{
	const struct jv *inst = NULL;
	struct jv *reply = NULL;
	char req[128], err[1024];

	if (m->job[0]) {
		snprintf(req, sizeof(req),
			 "{\"Method\": \"GetJob\", \"Job\": \"%s\"}", m->job);
		if (!control_call(m->sock, req, CALL_MS, &reply, err,
				  sizeof(err)) &&
		    control_reply_rv(reply) == RV_OK)
			inst = jv_get(reply, "Instance");
	}
	json_key(w, "Instance");
	if (inst)
		jv_write(w, inst);
	else
		json_null(w);
	jv_free(reply);
}

static void print_json(struct mr *m, int status)
{
	struct json_writer w;
	unsigned i;

	json_init(&w, stdout, 2);
	json_object_begin(&w);
	json_kv_u64(&w, "ReturnValue", m->rv);
	if (m->job[0])
		json_kv_string(&w, "Job", m->job);
	else
		json_kv_null(&w, "Job");
	json_instance(&w, m);
	json_kv_string(&w, "MountPoint", m->mnt);
	json_kv_bool(&w, "Unmounted", m->unmounted || !m->mounted);
	if (m->signal)
		json_kv_i64(&w, "Signal", m->signal);
	else
		json_kv_null(&w, "Signal");
	json_key(&w, "Disks");
	json_array_begin(&w);
	for (i = 0; i < m->ndisks; i++) {
		const struct mr_disk *d = &m->disks[i];

		json_object_begin(&w);
		json_kv_string(&w, "Name", d->name);
		json_kv_string(&w, "Path", d->path);
		json_kv_string(&w, "View", d->view);
		json_kv_string(&w, "ViewKind", mr_view_kind(d));
		json_kv_string(&w, "ViewWhy",
			       d->view_why[0] ? d->view_why : NULL);
		json_kv_string(&w, "Recovery", d->recovery);
		json_kv_string(&w, "Check", check_name(d->check));
		json_kv_string(&w, "Description", d->what[0] ? d->what : NULL);
		json_probe(&w, "Primary", &d->p, d->probed_p);
		json_probe(&w, "RecoveryProbe", &d->r, d->probed_r);
		json_object_end(&w);
	}
	json_array_end(&w);
	json_kv_string(&w, "Error", m->err[0] ? m->err : NULL);
	json_kv_i64(&w, "ExitStatus", status);
	json_object_end(&w);
	if (json_end(&w))
		error_msg("stdout: cannot write");
}

static void print_final_job(struct mr *m)
{
	char a[32], b[32], c[32], el[CIM_DATETIME_LEN];
	const struct job *j = &m->final;

	if (!m->have_final || m->final_printed || m->o.json)
		return;
	m->final_printed = true;
	fmt_size(a, sizeof(a), j->bytes_compared);
	fmt_size(b, sizeof(b), j->bytes_different);
	fmt_size(c, sizeof(c), j->bytes_sent);
	cim_interval_format(job_elapsed(j, wall_us()), el);
	printf("JobState: %u (%s)\n", j->state, job_state_name(j->state));
	if (j->error_code)
		printf("ErrorCode: %u (%s)\n", j->error_code,
		       rv_name(j->error_code));
	if (j->error_desc)
		printf("ErrorDescription: %s\n", j->error_desc);
	printf("ElapsedTime: %s\n", el);
	printf("Compared: %s, different: %s, sent: %s\n", a, b, c);
	fflush(stdout);
}

/* --- the command --- */

static void install_handlers(void)
{
	struct sigaction sa = { .sa_handler = on_signal };

	/* No SA_RESTART: a blocking read or sleep returns to look at the
	 * flag. */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* Fill O from the command line; exits on a mistake or --help. */
static void parse_opts(struct mr_opts *o, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "timeout", required_argument, NULL, 't' },
		{ "run-dir", required_argument, NULL, 'r' },
		{ "recovery-config", required_argument, NULL, 'R' },
		{ "view", required_argument, NULL, 'v' },
		{ "noudevsync", no_argument, NULL, 'n' },
		{ "udev-timeout", required_argument, NULL, 'u' },
		{ "metrics-file", required_argument, NULL, 'M' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long u;
	char *end;
	int c;

	*o = (struct mr_opts){
		.config_path = HVRESYNC_DEFAULT_CONFIG,
		.run_dir = DEFAULT_RUN_DIR,
		.view = MR_VIEW_AUTO,
		.dm = { .udev_timeout = DMVIEW_UDEV_TIMEOUT_DEFAULT },
	};
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 'c':
			o->config_path = optarg;
			break;
		case 'j':
			o->json = true;
			break;
		case 't':
			o->timeout = strtod(optarg, &end);
			if (*end || end == optarg || !(o->timeout > 0) ||
			    o->timeout > 86400 * 8)
				die("--timeout: '%s' is not a number of "
				    "seconds",
				    optarg);
			break;
		case 'r':
			o->run_dir = optarg;
			break;
		case 'R':
			o->recovery_config = optarg;
			break;
		case 'v':
			if (!strcmp(optarg, "auto"))
				o->view = MR_VIEW_AUTO;
			else if (!strcmp(optarg, "fuse"))
				o->view = MR_VIEW_FUSE;
			else if (!strcmp(optarg, "dm"))
				o->view = MR_VIEW_DM;
			else
				die("--view: '%s' is not auto, fuse or dm",
				    optarg);
			break;
		case 'n':
			o->dm.noudevsync = true;
			break;
		case 'u':
			errno = 0;
			u = strtoul(optarg, &end, 10);
			if (errno || end == optarg || *end ||
			    optarg[0] == '-' || u < 1 || u > 3600)
				die("--udev-timeout: '%s' is not a whole number "
				    "of seconds from 1 to 3600",
				    optarg);
			o->dm.udev_timeout = (unsigned)u;
			break;
		case 'M':
			o->metrics_path = optarg;
			break;
		case 'h':
			printf("usage: %s\n", MR_USAGE);
			exit(EXIT_OK);
		default:
			usage_die(MR_USAGE);
		}
	}
	if (argc - optind != 1)
		usage_die(MR_USAGE);
	o->vm = argv[optind];
}

/* RUN-DIR (made if missing), RUN-DIR/VM and RUN-DIR/VM.lock. */
static int prepare_paths(struct mr *m)
{
	if (fs_mkdir_p(m->o.run_dir, 0755) < 0 ||
	    !(m->run_dir = realpath(m->o.run_dir, NULL))) {
		mr_set_err(m, "%s: cannot create: %s", m->o.run_dir,
			   strerror(errno));
		return -1;
	}
	m->mnt = fs_path_join(m->run_dir, m->vm->name);
	if (!m->mnt)
		return -ENOMEM;
	if (asprintf(&m->lock_path, "%s/%s.lock", m->run_dir, m->vm->name) <
	    0) {
		m->lock_path = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* Each configured disk, which must exist, and its view's path. */
static int prepare_disks(struct mr *m)
{
	unsigned i;

	for (i = 0; i < m->ndisks; i++) {
		struct mr_disk *d = &m->disks[i];
		struct stat st;

		d->path = m->vm->disks[i];
		d->name = config_basename(d->path);
		d->view = fs_path_join(m->mnt, d->name);
		if (!d->view)
			return -ENOMEM;
		if (stat(d->path, &st) < 0) {
			m->rv = errno == ENOENT || errno == ENOTDIR
					? RV_NOT_FOUND
					: RV_FAILED;
			mr_set_err(m, "VM %s: disk %s: %s", m->vm->name,
				   d->path, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* Configuration, VM, disks and paths; 0 or -1 with m->err (and m->rv). */
static int prepare(struct mr *m)
{
	char err[1024];
	int ret;

	if (config_load(m->o.config_path, &m->cfg, err, sizeof(err))) {
		mr_set_err(m, "%s", err);
		return -1;
	}
	m->sock = m->cfg.control;
	m->vm = config_find_vm(&m->cfg, m->o.vm);
	if (!m->vm) {
		m->rv = RV_INVALID_PARAMETER;
		mr_set_err(m, "no VM named '%s' in %s", m->o.vm,
			   m->o.config_path);
		return -1;
	}
	if (!name_usable(m->vm->name)) {
		mr_set_err(m, "VM name '%s' cannot name a directory under %s",
			   m->vm->name, m->o.run_dir);
		return -1;
	}
	m->ndisks = m->vm->ndisks;
	m->disks = calloc(m->ndisks ? m->ndisks : 1, sizeof(*m->disks));
	ret = m->disks ? prepare_paths(m) : -ENOMEM;
	if (!ret)
		ret = prepare_disks(m);
	if (ret == -ENOMEM) {
		m->rv = RV_NO_MEMORY;
		mr_set_err(m, "out of memory");
	}
	return ret < 0 ? -1 : find_recovery_disks(m);
}

/* Submit the resync with the views as sources. */
static int submit(struct mr *m)
{
	const char **names, **paths;
	struct control_resync a = { .vm = m->vm->name };
	char err[1024];
	unsigned i;

	names = calloc(m->ndisks + 1, sizeof(*names));
	paths = calloc(m->ndisks + 1, sizeof(*paths));
	if (!names || !paths) {
		free(names);
		free(paths);
		m->rv = RV_NO_MEMORY;
		mr_set_err(m, "out of memory");
		return -1;
	}
	for (i = 0; i < m->ndisks; i++) {
		names[i] = m->disks[i].name;
		paths[i] = m->disks[i].view;
	}
	/* No views (no disks): the agent reads nothing and says why. */
	a.nsources = m->mounted || m->ndm ? m->ndisks : 0;
	a.source_names = names;
	a.source_paths = paths;
	m->rv = control_resynchronize(m->sock, &a, CALL_MS, m->job, err,
				      sizeof(err));
	free(names);
	free(paths);
	if (!m->o.json)
		printf("ReturnValue: %u (%s)\n", m->rv, rv_name(m->rv));
	m->rv_printed = true;
	if (m->rv != RV_JOB_STARTED) {
		mr_set_err(m, "resync %s: %u (%s): %s", m->vm->name, m->rv,
			   rv_name(m->rv), err);
		m->job[0] = '\0';
		return -1;
	}
	if (!m->o.json)
		printf("Job: %s\n", m->job);
	fflush(stdout);
	return 0;
}

static void mr_free(struct mr *m)
{
	unsigned i;

	for (i = 0; m->disks && i < m->ndisks; i++) {
		free(m->disks[i].view);
		probe_result_free(&m->disks[i].p);
		probe_result_free(&m->disks[i].r);
	}
	mr_close_disks(m);
	free(m->disks);
	job_clear(&m->final);
	free(m->mnt);
	free(m->lock_path);
	free(m->run_dir);
	if (m->have_rcfg)
		config_free(&m->rcfg);
	config_free(&m->cfg);
}

/* Which view each disk is read through, and why. */
static void say_views(struct mr *m)
{
	unsigned i;

	for (i = 0; i < m->ndisks && m->o.view != MR_VIEW_FUSE; i++) {
		const struct mr_disk *d = &m->disks[i];

		if (d->dm)
			note_msg("%s: disk %s: dm view %s (%s)", m->vm->name,
				 d->name, d->view, d->view_why);
		else
			note_msg("%s: disk %s: FUSE view (%s)", m->vm->name,
				 d->name, d->view_why);
	}
	if (m->nfuse)
		note_msg("%s: %u view%s mounted under %s", m->vm->name,
			 m->nfuse, m->nfuse == 1 ? "" : "s", m->mnt);
}

/* Mount, resync, wait, check: the exit status as far as it goes. */
static int run(struct mr *m)
{
	int worst;
	unsigned i;

	if (prepare(m) < 0 || mr_take_lock(m) < 0 || mr_got_signal)
		return EXIT_ERROR;
	if (m->ndisks) {
		/* No disks: nothing to mount; the agent says why (32775).
		 * Every refusal comes before anything is mapped. */
		if (mr_clear_mountpoint(m) < 0 || mr_clear_dm(m) < 0 ||
		    mr_open_disks(m) < 0 || mr_choose_views(m) < 0 ||
		    mr_map_views(m) < 0 || (m->nfuse && mr_mount_views(m) < 0))
			return EXIT_ERROR;
		/* The children serve or keep from their copies of the images
		 * (and hold the shared locks); ours go. */
		mr_close_disks(m);
		say_views(m);
	}
	if (mr_got_signal || submit(m) < 0 || follow_job(m) < 0)
		return EXIT_ERROR;
	print_final_job(m);
	if (m->final.state != JS_COMPLETED) {
		mr_set_err(m, "job %s ended %s%s%s", m->job,
			   job_state_name(m->final.state),
			   m->final.error_desc ? ": " : "",
			   m->final.error_desc ? m->final.error_desc : "");
		return EXIT_ERROR;
	}
	if (!m->o.recovery_config)
		note_msg("%s: blkid check of the recovery disks skipped: %s",
			 m->vm->name, m->skip_why);
	worst = check_disks(m);
	for (i = 0; i < m->ndisks && !m->o.json; i++)
		printf("blkid %s: %s: %s\n", m->disks[i].name,
		       check_name(m->disks[i].check), m->disks[i].what);
	fflush(stdout);
	if (worst == 1)
		mr_set_err(m,
			   "VM %s: a recovery disk does not show its "
			   "primary's partition table and filesystems",
			   m->vm->name);
	else if (worst == 2)
		mr_set_err(m, "VM %s: libblkid could not check every disk",
			   m->vm->name);
	return worst == 0 ? EXIT_OK : worst == 1 ? EXIT_DIFFER : EXIT_ERROR;
}

/* --metrics-file: the run's result for node_exporter.  A file that
 * cannot be written is said; the run's own exit status stands. */
static void write_metrics(const struct mr *m, int status, int64_t t0)
{
	const struct job *j = m->have_final ? &m->final : NULL;
	struct metrics_result r = {
		.command = "mount-and-resync",
		.vm = m->vm ? m->vm->name : m->o.vm,
		.peer = j ? j->peer : NULL,
		.ok = status == EXIT_OK,
		.exit_code = status,
		.started = j && j->started ? j->started : t0,
		.finished = wall_us(),
		.compared = j ? j->bytes_compared : 0,
		.different = j ? j->bytes_different : 0,
		.sent = j ? j->bytes_sent : 0,
	};
	char err[1024];

	if (metrics_write_result(m->o.metrics_path, &r, err, sizeof(err)))
		error_msg("--metrics-file: %s", err);
}

/* Whatever happened: unmount, unlock, report.  Returns the exit status. */
static int finish(struct mr *m, int status, int64_t t0)
{
	if (mr_got_signal && !m->signal) {
		m->signal = mr_got_signal;
		mr_set_err(m, "stopped by SIG%s", sigabbrev_np(m->signal));
	}
	print_final_job(m);
	mr_unmount_views(m);
	mr_unmap_views(m);
	mr_drop_lock(m);
	if (m->mounted || m->dm_left) /* still there: never report success */
		status = EXIT_ERROR;
	if (status == EXIT_OK && m->err[0])
		status = EXIT_ERROR;
	if (m->o.json)
		print_json(m, status);
	else if (!m->rv_printed)
		printf("ReturnValue: %u (%s)\n", m->rv, rv_name(m->rv));
	if (status != EXIT_OK)
		error_msg("mount-and-resync %s: %s", m->o.vm,
			  m->err[0] ? m->err : "failed");
	if (m->o.metrics_path)
		write_metrics(m, status, t0);
	return status;
}

int cmd_mount_resync(int argc, char **argv)
{
	struct mr m = {
		.lock_fd = -1,
		.rv = RV_FAILED,
	};
	int64_t t0 = wall_us();
	int status;

	parse_opts(&m.o, argc, argv);
	install_handlers();
	status = finish(&m, run(&m), t0);
	mr_free(&m);
	return status;
}
