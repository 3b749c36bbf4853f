/* SPDX-License-Identifier: MIT */
/*
 * cmd_mount_resync.c - `hvresync mount-and-resync VM`, what the systemd
 * timer runs: show the VM's replication-enabled disks as FUSE raw views
 * under RUN-DIR/VM/, ask the local agent to resynchronize the VM from
 * those views (Resynchronize with Sources), follow the job, then check
 * with libblkid that each recovery disk shows the partition table and
 * filesystem UUIDs of its primary.  The views are unmounted in every case.
 *
 * The views are served by a child of ours rather than by a detached
 * `hvresync mount`: the child asks the kernel for SIGTERM when we die
 * (PR_SET_PDEATHSIG), and SIGTERM makes the view unmount itself, so not
 * even a SIGKILL of this process leaves a mount behind.  The child sits
 * in its own process group, so a Ctrl-C reaches only us and we decide
 * the order: cancel the job first (it reads the views), then unmount.
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
#include <blkid/blkid.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/daemon/cimtime.h"
#include "agent/cli/cli.h"
#include "agent/daemon/config.h"
#include "agent/cli/control_client.h"
#include "agent/daemon/job.h"
#include "agent/lib/json.h"
#include "agent/lib/probe.h"
#include "agent/cli/progress.h"
#include "fuse/view.h"
#include "vhdx/vhdx.h"

#define MR_USAGE \
	"hvresync mount-and-resync VM [--config FILE] [--json] [--timeout S]\n" \
	"                [--run-dir DIR] [--recovery-config FILE]\n" \
	"  Mount the VM's replication-enabled disks as raw views under\n" \
	"  RUN-DIR/VM/ (RUN-DIR: /run/hvresync), resynchronize the VM from\n" \
	"  them through the agent and wait, check with libblkid that each\n" \
	"  recovery disk shows its primary's partition table and filesystem\n" \
	"  UUIDs, and unmount.\n" \
	"  --config FILE           the agent's configuration (VM, disks, socket)\n" \
	"  --json                  print one JSON object at the end\n" \
	"  --timeout S             cancel the job if it has not finished in S s\n" \
	"  --run-dir DIR           where the views are mounted\n" \
	"  --recovery-config FILE  the recovery agent's configuration: its\n" \
	"                          disks are probed when reachable from here\n" \
	"  Exit status: 0 all well, 1 a recovery disk differs, 2 an error."

#define DEFAULT_RUN_DIR "/run/hvresync"
#define CALL_MS 30000
#define POLL_NS 200000000L
#define PLAIN_EVERY_SEC 10.0
#define CANCEL_WAIT_USEC (60 * 1000000LL)
#define SERVER_STOP_SECS 30

static volatile sig_atomic_t got_signal;
static const char *child_mnt; /* the serving child's mountpoint */

static void on_signal(int sig)
{
	got_signal = sig;
}

/*
 * The serving child's handler while it sets the view up: a SIGTERM (our
 * parent's death) just after the mount must not leave it behind.  Before
 * the mount nothing of anyone's is there (we hold the VM's lock and
 * cleared the mountpoint), so the umount2() cannot hit another mount.
 */
static void on_child_signal(int sig)
{
	(void)sig;
	umount2(child_mnt, MNT_DETACH);
	_exit(EXIT_ERROR);
}

enum check {
	CHECK_NOT_RUN,   /* the job did not complete */
	CHECK_SKIPPED,   /* the recovery disk is not reachable from here */
	CHECK_MATCH,
	CHECK_DIFFER,
	CHECK_ERROR,
};

struct mr_disk {
	const char *path;    /* the configured primary disk */
	const char *name;    /* its file name: the view's name, Sources' key */
	char *view;          /* RUN-DIR/VM/NAME */
	struct vhdx_image *img;
	uint32_t sector;
	char *recovery;      /* from --recovery-config, or NULL */
	struct probe_result p, r;
	bool probed_p, probed_r;
	enum check check;
	char what[1024];     /* the check's verdict in one line */
};

struct mr {
	const char *config_path;
	const char *recovery_config;
	const char *run_dir_opt;
	bool json;
	double timeout;
	struct agent_config cfg;
	struct agent_config rcfg;
	bool have_rcfg;
	const struct vm_config *vm;
	const char *sock;
	char *run_dir;
	char *mnt;
	char *lock_path;
	int lock_fd;
	bool mounted;
	bool unmounted;      /* ours is gone and nothing is left there */
	pid_t server;
	struct mr_disk *disks;
	unsigned ndisks;
	unsigned rv;         /* Resynchronize's ReturnValue, or 32772 */
	char job[JOB_ID_LEN];
	struct job final;
	bool have_final;
	int signal;
	char err[1024];      /* the first failure, for the last line */
	bool rv_printed;
	bool final_printed;
	char skip_why[512];
};

/* --- small helpers --- */

static void human(char *out, size_t len, uint64_t v)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double d = (double)v;
	unsigned u = 0;

	while (d >= 1024 && u < sizeof(units) / sizeof(units[0]) - 1) {
		d /= 1024;
		u++;
	}
	snprintf(out, len, u ? "%.1f %s" : "%.0f %s", d, units[u]);
}

static int64_t wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Remember the first failure; later ones are consequences. */
static void set_err(struct mr *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void set_err(struct mr *m, const char *fmt, ...)
{
	va_list ap;

	if (m->err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(m->err, sizeof(m->err), fmt, ap);
	va_end(ap);
}

/* snprintf() for messages, where cutting a long line short is fine. */
static void fmt(char *buf, size_t len, const char *f, ...)
	__attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t len, const char *f, ...)
{
	va_list ap;

	va_start(ap, f);
	vsnprintf(buf, len, f, ap);
	va_end(ap);
}

static bool name_usable(const char *n)
{
	return n[0] && strcmp(n, ".") && strcmp(n, "..") && !strchr(n, '/');
}

/* --- the lock: one run per VM at a time --- */

/*
 * Hold RUN-DIR/VM.lock exclusively.  The file is unlinked before it is
 * released, so a run that locked a file after that sees it is no longer
 * the one at the path and tries again; no lock file stays behind.
 */
static int take_lock(struct mr *m)
{
	struct stat a, b;
	int tries;

	for (tries = 0; tries < 5; tries++) {
		int fd = open(m->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

		if (fd < 0) {
			set_err(m, "%s: cannot create: %s", m->lock_path,
				strerror(errno));
			return -1;
		}
		if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
			if (errno == EWOULDBLOCK)
				set_err(m, "%s: another mount-and-resync of VM "
					"%s is running", m->lock_path,
					m->vm->name);
			else
				set_err(m, "%s: cannot lock: %s", m->lock_path,
					strerror(errno));
			close(fd);
			return -1;
		}
		if (fstat(fd, &a) == 0 && stat(m->lock_path, &b) == 0 &&
		    a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
			m->lock_fd = fd;
			return 0;
		}
		close(fd);
	}
	set_err(m, "%s: keeps changing under us", m->lock_path);
	return -1;
}

static void drop_lock(struct mr *m)
{
	if (m->lock_fd < 0)
		return;
	unlink(m->lock_path);
	close(m->lock_fd);
	m->lock_fd = -1;
}

/* --- the views --- */

/*
 * A view left on our mountpoint by a run that is gone (we hold the lock,
 * so nobody serves it any more): detach it.  Anything else mounted there
 * is not ours to touch.
 */
static int clear_mountpoint(struct mr *m)
{
	struct view_mount_info mi;
	struct stat st;
	int ret, i;

	for (i = 0; i < 8; i++) {
		ret = view_find_mount(m->mnt, &mi);
		if (ret == -ENOENT)
			break;
		if (ret < 0) {
			set_err(m, "/proc/self/mountinfo: %s", strerror(-ret));
			return -1;
		}
		if (strcmp(mi.fstype, VIEW_FSTYPE)) {
			set_err(m, "%s: a %s filesystem is mounted there; it "
				"is not ours to remove", m->mnt, mi.fstype);
			return -1;
		}
		note_msg("%s: removing a view left behind by an earlier run",
			 m->mnt);
		if (umount2(m->mnt, MNT_DETACH) < 0) {
			set_err(m, "%s: cannot remove the old view: %s",
				m->mnt, strerror(errno));
			return -1;
		}
	}
	if (mkdir(m->mnt, 0755) < 0 && errno != EEXIST) {
		set_err(m, "%s: cannot create: %s", m->mnt, strerror(errno));
		return -1;
	}
	if (stat(m->mnt, &st) < 0 || !S_ISDIR(st.st_mode)) {
		set_err(m, "%s: not a directory", m->mnt);
		return -1;
	}
	return 0;
}

/* mkdir -p for the run dir; the last component must end up a directory. */
static int make_dirs(const char *path)
{
	char *p = strdup(path), *s;
	int ret = 0;

	if (!p)
		return -ENOMEM;
	for (s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0755) < 0 && errno != EEXIST)
			ret = -errno;
		*s = '/';
		if (ret)
			break;
	}
	if (!ret && mkdir(p, 0755) < 0 && errno != EEXIST)
		ret = -errno;
	free(p);
	return ret;
}

/*
 * Shared locks on what a view reads, as `hvresync mount` takes them: no
 * writable view may write these images while we send from them.
 */
static int lock_images(struct mr *m, struct mr_disk *d)
{
	struct vhdx_image *p;

	for (p = d->img; p; p = vhdx_get_parent(p)) {
		if (flock(vhdx_get_fd(p), LOCK_SH | LOCK_NB) == 0 ||
		    errno != EWOULDBLOCK)
			continue;
		set_err(m, "%s: is written through a writable hvresync view; "
			"unmount that first", vhdx_get_info(p)->path);
		return -1;
	}
	return 0;
}

static int open_disks(struct mr *m)
{
	unsigned i;

	for (i = 0; i < m->ndisks; i++) {
		struct mr_disk *d = &m->disks[i];
		struct vhdx_error verr = { { 0 } };
		int ret = vhdx_open(d->path, 0, &d->img, &verr);

		if (ret < 0) {
			set_err(m, "%s", verr.msg[0] ? verr.msg :
				strerror(-ret));
			return -1;
		}
		d->sector = vhdx_get_info(d->img)->logical_sector_size;
		if (lock_images(m, d) < 0)
			return -1;
	}
	return 0;
}

static void close_disks(struct mr *m)
{
	unsigned i;

	for (i = 0; i < m->ndisks; i++) {
		if (m->disks[i].img)
			vhdx_close(m->disks[i].img);
		m->disks[i].img = NULL;
	}
}

/* The serving child.  Never returns. */
static void serve_child(struct mr *m, pid_t parent, int ready_fd)
{
	struct view_config cfg = { .log_stderr = true };
	struct view_image *imgs;
	struct view *v = NULL;
	char err[512], line[1024];
	sigset_t none;
	unsigned i;
	int n, fd;

	child_mnt = m->mnt;
	signal(SIGTERM, on_child_signal);
	signal(SIGINT, on_child_signal);
	signal(SIGHUP, on_child_signal);
	/* Our parent's death, even by SIGKILL, ends the view. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		_exit(EXIT_ERROR);
	setpgid(0, 0);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (m->lock_fd >= 0)
		close(m->lock_fd);
	/* Nothing for stdout: a caller reading it sees only our parent's. */
	fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		dup2(fd, STDOUT_FILENO);
		close(fd);
	}
	if (chdir("/") < 0)
		_exit(EXIT_ERROR);

	imgs = calloc(m->ndisks, sizeof(*imgs));
	if (!imgs) {
		snprintf(err, sizeof(err), "out of memory");
		goto fail;
	}
	for (i = 0; i < m->ndisks; i++) {
		imgs[i].name = m->disks[i].name;
		imgs[i].path = m->disks[i].path;
		imgs[i].img = m->disks[i].img;
	}
	if (view_new(imgs, m->ndisks, &cfg, &v, err, sizeof(err)) < 0 ||
	    view_mount(v, m->mnt, err, sizeof(err)) < 0)
		goto fail;
	/* libfuse installs its own handlers (which end the loop and
	 * unmount) only over the default ones. */
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	n = view_serve(v, ready_fd, false);
	view_free(v);
	close_disks(m);
	_exit(n < 0 ? EXIT_ERROR : EXIT_OK);
fail:
	n = snprintf(line, sizeof(line), "%s: %s\n", m->mnt, err);
	if (write(ready_fd, line, (size_t)n) < 0)
		_exit(EXIT_ERROR);
	view_free(v);
	_exit(EXIT_ERROR);
}

/* Fork the server and wait until the mount answers. */
static int mount_views(struct mr *m)
{
	pid_t parent = getpid();
	char msg[1024];
	size_t used = 0;
	int pfd[2], status;
	ssize_t n;

	if (pipe2(pfd, O_CLOEXEC) < 0) {
		set_err(m, "pipe: %s", strerror(errno));
		return -1;
	}
	fflush(NULL);
	m->server = fork();
	if (m->server < 0) {
		set_err(m, "fork: %s", strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		m->server = 0;
		return -1;
	}
	if (m->server == 0) {
		close(pfd[0]);
		serve_child(m, parent, pfd[1]);
	}
	close(pfd[1]);
	m->mounted = true; /* from here on, unmount_views() has work */
	while (used < sizeof(msg) - 1) {
		n = read(pfd[0], msg + used, sizeof(msg) - 1 - used);
		if (n < 0 && errno == EINTR) {
			if (got_signal)
				break;
			continue;
		}
		if (n <= 0)
			break;
		used += (size_t)n;
		if (memchr(msg, '\n', used))
			break;
	}
	close(pfd[0]);
	msg[used] = '\0';
	msg[strcspn(msg, "\n")] = '\0';
	if (got_signal)
		return -1;
	if (!strcmp(msg, "OK"))
		return 0;
	if (msg[0])
		set_err(m, "%s", msg);
	else if (waitpid(m->server, &status, 0) == m->server) {
		m->server = 0;
		set_err(m, "%s: the view's serving process %s before the "
			"mount was ready", m->mnt, WIFSIGNALED(status) ?
			"was killed" : "exited");
	} else {
		set_err(m, "%s: the view's serving process ended before the "
			"mount was ready", m->mnt);
	}
	return -1;
}

/* Wait up to SECS for the server; true when it is gone. */
static bool reap_server(struct mr *m, int secs)
{
	struct timespec ts = { 0, 50000000L };
	int i, status;

	for (i = 0; i < secs * 20; i++) {
		pid_t r = waitpid(m->server, &status, WNOHANG);

		if (r == m->server || (r < 0 && errno == ECHILD)) {
			m->server = 0;
			return true;
		}
		nanosleep(&ts, NULL);
	}
	return false;
}

/*
 * End the views: SIGTERM makes the server unmount (lazily, so a reader
 * that still holds a file cannot keep the mount) and exit.  A server that
 * does not go in time is killed and its mount detached by us.
 */
static void unmount_views(struct mr *m)
{
	struct view_mount_info mi;
	int ret;

	if (!m->mounted)
		return;
	if (m->server > 0) {
		kill(m->server, SIGTERM);
		if (!reap_server(m, SERVER_STOP_SECS)) {
			error_msg("%s: the view's server did not stop in %d s; "
				  "killing it", m->mnt, SERVER_STOP_SECS);
			kill(m->server, SIGKILL);
			reap_server(m, 5);
		}
	}
	ret = view_find_mount(m->mnt, &mi);
	if (ret == 0 && !strcmp(mi.fstype, VIEW_FSTYPE)) {
		if (umount2(m->mnt, MNT_DETACH) < 0)
			error_msg("%s: cannot unmount: %s", m->mnt,
				  strerror(errno));
		ret = view_find_mount(m->mnt, &mi);
	}
	if (ret == 0 && !strcmp(mi.fstype, VIEW_FSTYPE)) {
		set_err(m, "%s: the view is still mounted", m->mnt);
		return;
	}
	m->mounted = false;
	m->unmounted = true;
	if (rmdir(m->mnt) < 0 && errno != ENOENT)
		error_msg("%s: cannot remove: %s", m->mnt, strerror(errno));
	note_msg("%s: unmounted", m->mnt);
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
	uint64_t total = 0, done = 0;
	char a[32], b[32], c[32];
	double now = progress_now();
	unsigned i;

	for (i = 0; i < j->ndisks; i++) {
		total += j->disks[i].size;
		done += j->disks[i].sent ? j->disks[i].size : j->disks[i].done;
	}
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
	human(a, sizeof(a), done);
	human(b, sizeof(b), total);
	human(c, sizeof(c), j->bytes_sent);
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
	double deadline = m->timeout > 0 ? progress_now() + m->timeout : 0;
	struct follow f = { .last_phase = (enum job_phase)-1 };
	char err[1024];
	struct job cur;
	unsigned rv;

	snprintf(f.label, sizeof(f.label), "resync %s", m->vm->name);
	for (;;) {
		if (got_signal)
			break;
		if (deadline && progress_now() > deadline) {
			if (f.bar_on)
				progress_finish(&f.bar);
			m->rv = RV_TIMEOUT;
			set_err(m, "job %s did not finish within %g s", m->job,
				m->timeout);
			cancel_job(m, "--timeout");
			return -1;
		}
		rv = control_get_job(m->sock, m->job, CALL_MS, &cur, err,
				     sizeof(err));
		if (rv) {
			if (f.bar_on)
				progress_finish(&f.bar);
			set_err(m, "job %s: cannot follow it: %u (%s): %s",
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
	if (got_signal) {
		m->signal = got_signal;
		set_err(m, "stopped by SIG%s", sigabbrev_np(m->signal));
		cancel_job(m, "stopped by a signal");
		return -1;
	}
	return 0;
}

/* --- libblkid check --- */

static void fs_from_probe(blkid_probe pr, int rc, struct probe_fs *fs)
{
	const char *val;

	memset(fs, 0, sizeof(*fs));
	if (rc == -2) {
		fs->ambivalent = true;
		return;
	}
	if (rc != 0 || blkid_probe_lookup_value(pr, "TYPE", &val, NULL))
		return;
	fs->found = true;
	snprintf(fs->type, sizeof(fs->type), "%s", val);
	if (!blkid_probe_lookup_value(pr, "UUID", &val, NULL))
		snprintf(fs->uuid, sizeof(fs->uuid), "%s", val);
	if (!blkid_probe_lookup_value(pr, "LABEL", &val, NULL))
		snprintf(fs->label, sizeof(fs->label), "%s", val);
	if (!blkid_probe_lookup_value(pr, "USAGE", &val, NULL))
		snprintf(fs->usage, sizeof(fs->usage), "%s", val);
}

static blkid_probe raw_probe(int fd, uint64_t off, uint64_t size,
			     unsigned sector)
{
	blkid_probe pr = blkid_new_probe();

	if (!pr)
		return NULL;
	if (blkid_probe_set_device(pr, fd, (blkid_loff_t)off,
				   (blkid_loff_t)size) < 0) {
		blkid_free_probe(pr);
		return NULL;
	}
	/* A file has no sector size: a 4Kn disk's GPT is at byte 4096. */
	blkid_probe_set_sectorsize(pr, sector);
	return pr;
}

static int raw_fs(int fd, uint64_t off, uint64_t size, unsigned sector,
		  struct probe_fs *fs)
{
	blkid_probe pr;
	int rc;

	memset(fs, 0, sizeof(*fs));
	if (size < 512)
		return 0;
	pr = raw_probe(fd, off, size, sector);
	if (!pr)
		return -ENOMEM;
	blkid_probe_enable_partitions(pr, 0);
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_LABEL |
				BLKID_SUBLKS_UUID | BLKID_SUBLKS_TYPE |
				BLKID_SUBLKS_USAGE);
	rc = blkid_do_safeprobe(pr);
	fs_from_probe(pr, rc, fs);
	blkid_free_probe(pr);
	return rc == -1 ? -EIO : 0;
}

/*
 * What libblkid finds in a raw disk (a view file, a raw recovery image or
 * a block device), probed the way probe_image() probes a VHDX: the
 * partition table, a filesystem on the whole disk, one in each partition.
 */
static int probe_raw(const char *path, unsigned sector, struct probe_result *res,
		     char *why, size_t whylen)
{
	blkid_partlist ls;
	blkid_parttable tab;
	blkid_probe pr = NULL;
	struct stat st;
	uint64_t size;
	int fd, rc, n, i, ret = 0;

	memset(res, 0, sizeof(*res));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		ret = -errno;
		snprintf(why, whylen, "%s: cannot open: %s", path,
			 strerror(errno));
		goto out;
	}
	size = (uint64_t)st.st_size;
	if (S_ISBLK(st.st_mode)) {
		int ssz;

		if (ioctl(fd, BLKGETSIZE64, &size) < 0 ||
		    ioctl(fd, BLKSSZGET, &ssz) < 0) {
			ret = -errno;
			snprintf(why, whylen, "%s: cannot read the device's "
				 "geometry: %s", path, strerror(errno));
			goto out;
		}
		sector = (unsigned)ssz;
	}
	if (sector != 512 && sector != 4096)
		sector = 512;
	if (size < 512)
		goto out;

	pr = raw_probe(fd, 0, size, sector);
	if (!pr) {
		ret = -ENOMEM;
		snprintf(why, whylen, "%s: libblkid could not set up a probe",
			 path);
		goto out;
	}
	blkid_probe_enable_superblocks(pr, 0);
	blkid_probe_enable_partitions(pr, 1);
	blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
	rc = blkid_do_safeprobe(pr);
	if (rc == -1) {
		ret = -EIO;
		snprintf(why, whylen, "%s: libblkid could not probe for a "
			 "partition table", path);
		goto out;
	}
	res->table_ambivalent = rc == -2;
	ls = rc == 0 ? blkid_probe_get_partitions(pr) : NULL;
	tab = ls ? blkid_partlist_get_table(ls) : NULL;
	if (tab) {
		res->table_found = true;
		snprintf(res->table_type, sizeof(res->table_type), "%s",
			 blkid_parttable_get_type(tab) ?: "");
		snprintf(res->table_id, sizeof(res->table_id), "%s",
			 blkid_parttable_get_id(tab) ?: "");
		n = blkid_partlist_numof_partitions(ls);
		res->parts = n > 0 ? calloc((size_t)n, sizeof(*res->parts)) :
				     NULL;
		if (n > 0 && !res->parts) {
			ret = -ENOMEM;
			snprintf(why, whylen, "out of memory");
			goto out;
		}
		for (i = 0; i < n; i++) {
			blkid_partition par = blkid_partlist_get_partition(ls, i);
			struct probe_part *p = &res->parts[res->nparts];
			const char *s;

			if (!par)
				continue;
			p->number = blkid_partition_get_partno(par);
			p->start = (uint64_t)blkid_partition_get_start(par) * 512;
			p->size = (uint64_t)blkid_partition_get_size(par) * 512;
			s = blkid_partition_get_type_string(par);
			if (s)
				snprintf(p->type, sizeof(p->type), "%s", s);
			else
				snprintf(p->type, sizeof(p->type), "0x%x",
					 (unsigned)blkid_partition_get_type(par));
			snprintf(p->uuid, sizeof(p->uuid), "%s",
				 blkid_partition_get_uuid(par) ?: "");
			snprintf(p->name, sizeof(p->name), "%s",
				 blkid_partition_get_name(par) ?: "");
			p->extended = blkid_partition_is_extended(par);
			p->logical = blkid_partition_is_logical(par);
			p->past_end = p->start >= size ||
				      p->size > size - p->start;
			res->nparts++;
		}
	}
	blkid_free_probe(pr);
	pr = NULL;

	ret = raw_fs(fd, 0, size, sector, &res->disk_fs);
	for (i = 0; !ret && i < (int)res->nparts; i++) {
		struct probe_part *p = &res->parts[i];

		if (p->extended || p->start >= size)
			continue;
		ret = raw_fs(fd, p->start, p->size < size - p->start ?
			     p->size : size - p->start, sector, &p->fs);
	}
	if (ret)
		snprintf(why, whylen, "%s: libblkid could not probe for a "
			 "filesystem: %s", path, strerror(-ret));
out:
	if (pr)
		blkid_free_probe(pr);
	if (fd >= 0)
		close(fd);
	return ret;
}

/* A recovery disk: a VHDX through probe_image(), anything else raw. */
static int probe_recovery(const char *path, unsigned sector,
			  struct probe_result *res, char *why, size_t whylen)
{
	struct vhdx_error verr = { { 0 } };
	struct vhdx_image *img;
	char sig[8];
	ssize_t n;
	int fd, ret;

	memset(res, 0, sizeof(*res));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, whylen, "%s: cannot open: %s", path,
			 strerror(errno));
		return -errno;
	}
	n = pread(fd, sig, sizeof(sig), 0);
	close(fd);
	if (n != (ssize_t)sizeof(sig) || memcmp(sig, "vhdxfile", 8))
		return probe_raw(path, sector, res, why, whylen);
	ret = vhdx_open(path, 0, &img, &verr);
	if (ret < 0) {
		snprintf(why, whylen, "%s", verr.msg[0] ? verr.msg :
			 strerror(-ret));
		return ret;
	}
	ret = probe_image(img, res, why, whylen);
	if (ret < 0 && why[0]) {
		char tmp[1024];

		fmt(tmp, sizeof(tmp), "%s: %s", path, why);
		snprintf(why, whylen, "%s", tmp);
	}
	vhdx_close(img);
	return ret;
}

/* "ext4 UUID=..." for a filesystem, into BUF. */
static void fs_text(const struct probe_fs *fs, char *buf, size_t len)
{
	if (fs->ambivalent)
		snprintf(buf, len, "more than one signature");
	else if (!fs->found)
		snprintf(buf, len, "no filesystem");
	else
		snprintf(buf, len, "%s%s%s", fs->type, fs->uuid[0] ?
			 " UUID=" : "", fs->uuid);
}

/* One line saying what a probe found. */
static void probe_text(const struct probe_result *r, char *buf, size_t len)
{
	char fs[700];
	size_t used;
	unsigned i;

	if (r->table_ambivalent)
		used = (size_t)snprintf(buf, len, "an ambivalent partition table");
	else if (r->table_found)
		used = (size_t)snprintf(buf, len, "%s table %s, %u partition%s",
					r->table_type, r->table_id, r->nparts,
					r->nparts == 1 ? "" : "s");
	else
		used = (size_t)snprintf(buf, len, "no partition table");
	if (r->disk_fs.found || r->disk_fs.ambivalent) {
		fs_text(&r->disk_fs, fs, sizeof(fs));
		if (used < len)
			fmt(buf + used, len - used, ", whole disk %s", fs);
	}
	for (i = 0; i < r->nparts && used < len; i++) {
		if (r->parts[i].extended)
			continue;
		fs_text(&r->parts[i].fs, fs, sizeof(fs));
		fmt(buf + used, len - used, ", %d: %s", r->parts[i].number,
		    fs);
		used += strlen(buf + used);
	}
}

static bool fs_differs(const struct probe_fs *a, const struct probe_fs *b,
		       const char *where, char *why, size_t len)
{
	char fa[700], fb[700];

	if (a->found == b->found && a->ambivalent == b->ambivalent &&
	    !strcmp(a->type, b->type) && !strcmp(a->uuid, b->uuid))
		return false;
	fs_text(a, fa, sizeof(fa));
	fs_text(b, fb, sizeof(fb));
	fmt(why, len, "%s: %s on the primary, %s on the recovery disk", where,
	    fa, fb);
	return true;
}

/* The first difference that matters (table, partitions, filesystem
 * types and UUIDs; labels are not compared), or false. */
static bool probes_differ(const struct probe_result *a,
			  const struct probe_result *b, char *why, size_t len)
{
	char where[64];
	unsigned i;

	if (a->table_found != b->table_found ||
	    a->table_ambivalent != b->table_ambivalent ||
	    strcmp(a->table_type, b->table_type) ||
	    strcmp(a->table_id, b->table_id)) {
		snprintf(why, len, "partition table: %s %s on the primary, "
			 "%s %s on the recovery disk",
			 a->table_found ? a->table_type : "none", a->table_id,
			 b->table_found ? b->table_type : "none", b->table_id);
		return true;
	}
	if (a->nparts != b->nparts) {
		snprintf(why, len, "%u partitions on the primary, %u on the "
			 "recovery disk", a->nparts, b->nparts);
		return true;
	}
	if (fs_differs(&a->disk_fs, &b->disk_fs, "whole disk", why, len))
		return true;
	for (i = 0; i < a->nparts; i++) {
		const struct probe_part *p = &a->parts[i], *q = &b->parts[i];

		if (p->number != q->number || p->start != q->start ||
		    p->size != q->size || strcmp(p->type, q->type) ||
		    strcmp(p->uuid, q->uuid) || strcmp(p->name, q->name)) {
			snprintf(why, len, "partition %d: start %llu size %llu "
				 "type %s PARTUUID %s on the primary, "
				 "partition %d: start %llu size %llu type %s "
				 "PARTUUID %s on the recovery disk", p->number,
				 (unsigned long long)p->start,
				 (unsigned long long)p->size, p->type, p->uuid,
				 q->number, (unsigned long long)q->start,
				 (unsigned long long)q->size, q->type, q->uuid);
			return true;
		}
		snprintf(where, sizeof(where), "partition %d", p->number);
		if (fs_differs(&p->fs, &q->fs, where, why, len))
			return true;
	}
	return false;
}

/* Pair each disk with the recovery agent's disk of the same file name. */
static int find_recovery_disks(struct mr *m)
{
	char err[1024];
	const struct vm_config *rv;
	unsigned i, k;

	if (!m->recovery_config) {
		snprintf(m->skip_why, sizeof(m->skip_why),
			 "the recovery disks are on %s, not known here (give "
			 "--recovery-config FILE when they are reachable "
			 "from this host)", m->vm->replica ?: "the peer");
		return 0;
	}
	if (config_load(m->recovery_config, &m->rcfg, err, sizeof(err))) {
		set_err(m, "--recovery-config: %s", err);
		return -1;
	}
	m->have_rcfg = true;
	rv = config_find_vm(&m->rcfg, m->vm->name);
	if (!rv && m->vm->id)
		rv = config_find_vm(&m->rcfg, m->vm->id);
	if (!rv) {
		set_err(m, "%s: no [vm %s] to find the recovery disks in",
			m->recovery_config, m->vm->name);
		return -1;
	}
	for (i = 0; i < m->ndisks; i++) {
		for (k = 0; k < rv->ndisks; k++)
			if (!strcmp(config_basename(rv->disks[k]),
				    m->disks[i].name))
				break;
		if (k == rv->ndisks) {
			set_err(m, "%s: [vm %s] has no disk named %s",
				m->recovery_config, rv->name, m->disks[i].name);
			return -1;
		}
		m->disks[i].recovery = rv->disks[k];
	}
	return 0;
}

/* Returns the worst outcome: 0 all matched or skipped, 1 a difference,
 * 2 a probe failed. */
static int check_disks(struct mr *m)
{
	char why[1024], pa[1024], pb[1024];
	int worst = 0;
	unsigned i;

	for (i = 0; i < m->ndisks; i++) {
		struct mr_disk *d = &m->disks[i];

		if (probe_raw(d->view, d->sector, &d->p, why, sizeof(why))) {
			d->check = CHECK_ERROR;
			snprintf(d->what, sizeof(d->what), "%s", why);
			worst = 2;
			continue;
		}
		d->probed_p = true;
		probe_text(&d->p, pa, sizeof(pa));
		if (!d->recovery) {
			d->check = CHECK_SKIPPED;
			fmt(d->what, sizeof(d->what), "%s (the recovery disk "
			    "was not checked)", pa);
			continue;
		}
		if (probe_recovery(d->recovery, d->sector, &d->r, why,
				   sizeof(why))) {
			d->check = CHECK_ERROR;
			snprintf(d->what, sizeof(d->what), "%s", why);
			worst = 2;
			continue;
		}
		d->probed_r = true;
		if (probes_differ(&d->p, &d->r, why, sizeof(why))) {
			probe_text(&d->r, pb, sizeof(pb));
			d->check = CHECK_DIFFER;
			fmt(d->what, sizeof(d->what), "%s differs from its "
			    "primary: %s", d->recovery, why);
			if (worst < 1)
				worst = 1;
			continue;
		}
		d->check = CHECK_MATCH;
		fmt(d->what, sizeof(d->what), "%s; the same on %s", pa,
		    d->recovery);
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

	if (!m->have_final || m->final_printed || m->json)
		return;
	m->final_printed = true;
	human(a, sizeof(a), j->bytes_compared);
	human(b, sizeof(b), j->bytes_different);
	human(c, sizeof(c), j->bytes_sent);
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

static void parse(struct mr *m, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "timeout", required_argument, NULL, 't' },
		{ "run-dir", required_argument, NULL, 'r' },
		{ "recovery-config", required_argument, NULL, 'R' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char *end;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 'c':
			m->config_path = optarg;
			break;
		case 'j':
			m->json = true;
			break;
		case 't':
			m->timeout = strtod(optarg, &end);
			if (*end || end == optarg || !(m->timeout > 0) ||
			    m->timeout > 86400 * 8)
				die("--timeout: '%s' is not a number of "
				    "seconds", optarg);
			break;
		case 'r':
			m->run_dir_opt = optarg;
			break;
		case 'R':
			m->recovery_config = optarg;
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
}

/* Configuration, VM, disks and paths; 0 or -1 with m->err (and m->rv). */
static int prepare(struct mr *m, const char *key)
{
	char err[1024];
	unsigned i;

	if (config_load(m->config_path, &m->cfg, err, sizeof(err))) {
		set_err(m, "%s", err);
		return -1;
	}
	m->sock = m->cfg.control;
	m->vm = config_find_vm(&m->cfg, key);
	if (!m->vm) {
		m->rv = RV_INVALID_PARAMETER;
		set_err(m, "no VM named '%s' in %s", key, m->config_path);
		return -1;
	}
	if (!name_usable(m->vm->name)) {
		set_err(m, "VM name '%s' cannot name a directory under %s",
			m->vm->name, m->run_dir_opt);
		return -1;
	}
	m->ndisks = m->vm->ndisks;
	m->disks = calloc(m->ndisks ? m->ndisks : 1, sizeof(*m->disks));
	if (!m->disks)
		goto nomem;
	if (make_dirs(m->run_dir_opt) < 0 ||
	    !(m->run_dir = realpath(m->run_dir_opt, NULL))) {
		set_err(m, "%s: cannot create: %s", m->run_dir_opt,
			strerror(errno));
		return -1;
	}
	if (asprintf(&m->mnt, "%s/%s", m->run_dir, m->vm->name) < 0) {
		m->mnt = NULL;
		goto nomem;
	}
	if (asprintf(&m->lock_path, "%s/%s.lock", m->run_dir,
		     m->vm->name) < 0) {
		m->lock_path = NULL;
		goto nomem;
	}
	for (i = 0; i < m->ndisks; i++) {
		struct mr_disk *d = &m->disks[i];
		struct stat st;

		d->path = m->vm->disks[i];
		d->name = config_basename(d->path);
		if (asprintf(&d->view, "%s/%s", m->mnt, d->name) < 0) {
			d->view = NULL;
			goto nomem;
		}
		if (stat(d->path, &st) < 0) {
			m->rv = errno == ENOENT || errno == ENOTDIR ?
				RV_NOT_FOUND : RV_FAILED;
			set_err(m, "VM %s: disk %s: %s", m->vm->name, d->path,
				strerror(errno));
			return -1;
		}
	}
	return find_recovery_disks(m);
nomem:
	m->rv = RV_NO_MEMORY;
	set_err(m, "out of memory");
	return -1;
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
		set_err(m, "out of memory");
		return -1;
	}
	for (i = 0; i < m->ndisks; i++) {
		names[i] = m->disks[i].name;
		paths[i] = m->disks[i].view;
	}
	a.nsources = m->mounted ? m->ndisks : 0;
	a.source_names = names;
	a.source_paths = paths;
	m->rv = control_resynchronize(m->sock, &a, CALL_MS, m->job, err,
				      sizeof(err));
	free(names);
	free(paths);
	if (!m->json)
		printf("ReturnValue: %u (%s)\n", m->rv, rv_name(m->rv));
	m->rv_printed = true;
	if (m->rv != RV_JOB_STARTED) {
		set_err(m, "resync %s: %u (%s): %s", m->vm->name, m->rv,
			rv_name(m->rv), err);
		m->job[0] = '\0';
		return -1;
	}
	if (!m->json)
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
	close_disks(m);
	free(m->disks);
	job_clear(&m->final);
	free(m->mnt);
	free(m->lock_path);
	free(m->run_dir);
	if (m->have_rcfg)
		config_free(&m->rcfg);
	config_free(&m->cfg);
}

int cmd_mount_resync(int argc, char **argv)
{
	struct mr m = {
		.config_path = HVRESYNC_DEFAULT_CONFIG,
		.run_dir_opt = DEFAULT_RUN_DIR,
		.lock_fd = -1,
		.rv = RV_FAILED,
	};
	int status = EXIT_ERROR, worst;
	unsigned i;

	parse(&m, argc, argv);
	install_handlers();
	if (prepare(&m, argv[optind]) < 0)
		goto out;
	if (take_lock(&m) < 0)
		goto out;
	if (got_signal)
		goto out;
	if (m.ndisks) {
		/* No disks: nothing to mount; the agent says why (32775). */
		if (clear_mountpoint(&m) < 0 || open_disks(&m) < 0 ||
		    mount_views(&m) < 0)
			goto out;
		/* The child serves from its copies of the images (and holds
		 * the shared locks); ours go. */
		close_disks(&m);
		note_msg("%s: %u view%s mounted under %s", m.vm->name,
			 m.ndisks, m.ndisks == 1 ? "" : "s", m.mnt);
	}
	if (got_signal)
		goto out;
	if (submit(&m) < 0)
		goto out;
	if (follow_job(&m) < 0)
		goto out;
	print_final_job(&m);
	if (m.final.state != JS_COMPLETED) {
		set_err(&m, "job %s ended %s%s%s", m.job,
			job_state_name(m.final.state),
			m.final.error_desc ? ": " : "",
			m.final.error_desc ? m.final.error_desc : "");
		goto out;
	}
	if (!m.recovery_config)
		note_msg("%s: blkid check of the recovery disks skipped: %s",
			 m.vm->name, m.skip_why);
	worst = check_disks(&m);
	for (i = 0; i < m.ndisks && !m.json; i++)
		printf("blkid %s: %s: %s\n", m.disks[i].name,
		       check_name(m.disks[i].check), m.disks[i].what);
	fflush(stdout);
	if (worst == 1)
		set_err(&m, "VM %s: a recovery disk does not show its "
			"primary's partition table and filesystems",
			m.vm->name);
	else if (worst == 2)
		set_err(&m, "VM %s: libblkid could not check every disk",
			m.vm->name);
	status = worst == 0 ? EXIT_OK : worst == 1 ? EXIT_DIFFER : EXIT_ERROR;
out:
	if (got_signal && !m.signal) {
		m.signal = got_signal;
		set_err(&m, "stopped by SIG%s", sigabbrev_np(m.signal));
	}
	print_final_job(&m);
	unmount_views(&m);
	drop_lock(&m);
	if (m.mounted) /* still there: never report success */
		status = EXIT_ERROR;
	if (status == EXIT_OK && m.err[0])
		status = EXIT_ERROR;
	if (m.json)
		print_json(&m, status);
	else if (!m.rv_printed)
		printf("ReturnValue: %u (%s)\n", m.rv, rv_name(m.rv));
	if (status != EXIT_OK)
		error_msg("mount-and-resync %s: %s", argv[optind],
			  m.err[0] ? m.err : "failed");
	mr_free(&m);
	return status;
}
