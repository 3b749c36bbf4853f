/* SPDX-License-Identifier: MIT */
/*
 * mount_resync_views.c - the views of `hvresync mount-and-resync`: the
 * per-VM lock, the mountpoint, the serving child and the unmount that
 * must happen whatever else went wrong (see cmd_mount_resync.c), and the
 * device-mapper views (fuse/dmview.c) with the child that keeps them.
 *
 * The views are served by a child of ours rather than by a detached
 * `hvresync mount`: the child asks the kernel for SIGTERM when we die
 * (PR_SET_PDEATHSIG), and SIGTERM makes the view unmount itself, so not
 * even a SIGKILL of the command leaves a mount behind.  The child sits in
 * its own process group, so a Ctrl-C reaches only the command, which
 * decides the order: cancel the job first (it reads the views), then
 * unmount.
 *
 * Device-mapper views have no process serving them, so a child of ours,
 * the keeper, stands in for one: forked before the first mapping, it
 * holds the images (and so their shared locks) and the VM's lock, and
 * on SIGTERM (ours, or the kernel's when we die, even by SIGKILL) removes
 * every dm view of this run.  One still open (the agent's job reading it
 * after we were killed) is switched to an `error` table, so nothing reads
 * an image nobody locks any more, and goes on its last close.  The views
 * carry a uuid prefix made from our lock file's path, so the next run of
 * the VM finds and removes any left by a run whose keeper died too.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/cli/cli.h"
#include "agent/cli/mount_resync.h"
#include "fuse/view.h"
#include "vhdx/vhdx.h"

#define SERVER_STOP_SECS 30
/* How long the keeper waits for the kernel to drop a dm view that was
 * still open (deferred removal) before it leaves, to remove its node. */
#define KEEPER_DEFERRED_SECS 30

static const char *child_mnt; /* the serving child's mountpoint */

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

/* --- the lock: one run per VM at a time --- */

/*
 * Hold RUN-DIR/VM.lock exclusively.  The file is unlinked before it is
 * released, so a run that locked a file after that sees it is no longer
 * the one at the path and tries again; no lock file stays behind.
 */
int mr_take_lock(struct mr *m)
{
	struct stat a, b;
	int tries;

	for (tries = 0; tries < 5; tries++) {
		int fd = open(m->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

		if (fd < 0) {
			mr_set_err(m, "%s: cannot create: %s", m->lock_path,
				   strerror(errno));
			return -1;
		}
		if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
			if (errno == EWOULDBLOCK)
				mr_set_err(m,
					   "%s: another mount-and-resync of VM "
					   "%s is running",
					   m->lock_path, m->vm->name);
			else
				mr_set_err(m, "%s: cannot lock: %s",
					   m->lock_path, strerror(errno));
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
	mr_set_err(m, "%s: keeps changing under us", m->lock_path);
	return -1;
}

void mr_drop_lock(struct mr *m)
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
int mr_clear_mountpoint(struct mr *m)
{
	struct view_mount_info mi;
	struct stat st;
	int ret, i;

	for (i = 0; i < 8; i++) {
		ret = view_find_mount(m->mnt, &mi);
		if (ret == -ENOENT)
			break;
		if (ret < 0) {
			mr_set_err(m, "/proc/self/mountinfo: %s",
				   strerror(-ret));
			return -1;
		}
		if (strcmp(mi.fstype, VIEW_FSTYPE)) {
			mr_set_err(m,
				   "%s: a %s filesystem is mounted there; it "
				   "is not ours to remove",
				   m->mnt, mi.fstype);
			return -1;
		}
		note_msg("%s: removing a view left behind by an earlier run",
			 m->mnt);
		if (umount2(m->mnt, MNT_DETACH) < 0) {
			mr_set_err(m, "%s: cannot remove the old view: %s",
				   m->mnt, strerror(errno));
			return -1;
		}
	}
	if (mkdir(m->mnt, 0755) < 0 && errno != EEXIST) {
		mr_set_err(m, "%s: cannot create: %s", m->mnt, strerror(errno));
		return -1;
	}
	if (stat(m->mnt, &st) < 0 || !S_ISDIR(st.st_mode)) {
		mr_set_err(m, "%s: not a directory", m->mnt);
		return -1;
	}
	m->mnt_made = true;
	return 0;
}

/*
 * Shared locks on what a view reads, as `hvresync mount` takes them: no
 * writable view may write these images while we send from them.
 */
static int lock_images(struct mr *m, struct mr_disk *d)
{
	struct vhdx_image *p;

	for (p = d->img; p; p = vhdx_get_parent(p)) {
		if (vhdx_flock(vhdx_get_fd(p), false) != -EBUSY)
			continue;
		mr_set_err(m,
			   "%s: is written through a writable hvresync view; "
			   "unmount that first",
			   vhdx_get_info(p)->path);
		return -1;
	}
	return 0;
}

int mr_open_disks(struct mr *m)
{
	unsigned i;

	for (i = 0; i < m->ndisks; i++) {
		struct mr_disk *d = &m->disks[i];
		struct vhdx_error verr = { { 0 } };
		int ret = vhdx_open(d->path, 0, &d->img, &verr);

		if (ret < 0) {
			mr_set_err(m, "%s",
				   verr.msg[0] ? verr.msg : strerror(-ret));
			return -1;
		}
		d->sector = vhdx_get_info(d->img)->logical_sector_size;
		if (lock_images(m, d) < 0)
			return -1;
	}
	return 0;
}

void mr_close_disks(struct mr *m)
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
	for (i = 0, n = 0; i < m->ndisks; i++) {
		if (m->disks[i].dm)
			continue;
		imgs[n].name = m->disks[i].name;
		imgs[n].path = m->disks[i].path;
		imgs[n].img = m->disks[i].img;
		n++;
	}
	if (view_new(imgs, (unsigned)n, &cfg, &v, err, sizeof(err)) < 0 ||
	    view_mount(v, m->mnt, err, sizeof(err)) < 0)
		goto fail;
	/* libfuse installs its own handlers (which end the loop and
	 * unmount) only over the default ones. */
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	n = view_serve(v, ready_fd, false);
	view_free(v);
	mr_close_disks(m);
	_exit(n < 0 ? EXIT_ERROR : EXIT_OK);
fail:
	n = snprintf(line, sizeof(line), "%s: %s\n", m->mnt, err);
	if (write(ready_fd, line, (size_t)n) < 0)
		_exit(EXIT_ERROR);
	view_free(v);
	_exit(EXIT_ERROR);
}

/* Fork the server and wait until the mount answers. */
int mr_mount_views(struct mr *m)
{
	pid_t parent = getpid();
	char msg[1024];
	size_t used = 0;
	int pfd[2], status;
	ssize_t n;

	if (pipe2(pfd, O_CLOEXEC) < 0) {
		mr_set_err(m, "pipe: %s", strerror(errno));
		return -1;
	}
	fflush(NULL);
	m->server = fork();
	if (m->server < 0) {
		mr_set_err(m, "fork: %s", strerror(errno));
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
	m->mounted = true; /* from here on, mr_unmount_views() has work */
	while (used < sizeof(msg) - 1) {
		n = read(pfd[0], msg + used, sizeof(msg) - 1 - used);
		if (n < 0 && errno == EINTR) {
			if (mr_got_signal)
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
	if (mr_got_signal)
		return -1;
	if (!strcmp(msg, "OK"))
		return 0;
	if (msg[0])
		mr_set_err(m, "%s", msg);
	else if (waitpid(m->server, &status, 0) == m->server) {
		m->server = 0;
		mr_set_err(m,
			   "%s: the view's serving process %s before the "
			   "mount was ready",
			   m->mnt,
			   WIFSIGNALED(status) ? "was killed" : "exited");
	} else {
		mr_set_err(m,
			   "%s: the view's serving process ended before the "
			   "mount was ready",
			   m->mnt);
	}
	return -1;
}

/* Wait up to SECS for our child *PID (the server or the keeper); true,
 * with *PID cleared, when it is gone. */
static bool reap_child(pid_t *pid, int secs)
{
	struct timespec ts = { 0, 50000000L };
	int i, status;

	for (i = 0; i < secs * 20; i++) {
		pid_t r = waitpid(*pid, &status, WNOHANG);

		if (r == *pid || (r < 0 && errno == ECHILD)) {
			*pid = 0;
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
void mr_unmount_views(struct mr *m)
{
	struct view_mount_info mi;
	int ret;

	if (!m->mounted) {
		/* Every disk was a dm view: only the directory to go. */
		if (m->mnt_made && !m->unmounted && rmdir(m->mnt) == 0)
			m->unmounted = true;
		return;
	}
	if (m->server > 0) {
		kill(m->server, SIGTERM);
		if (!reap_child(&m->server, SERVER_STOP_SECS)) {
			error_msg("%s: the view's server did not stop in %d s; "
				  "killing it",
				  m->mnt, SERVER_STOP_SECS);
			kill(m->server, SIGKILL);
			reap_child(&m->server, 5);
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
		mr_set_err(m, "%s: the view is still mounted", m->mnt);
		return;
	}
	m->mounted = false;
	m->unmounted = true;
	if (rmdir(m->mnt) < 0 && errno != ENOENT)
		error_msg("%s: cannot remove: %s", m->mnt, strerror(errno));
	note_msg("%s: unmounted", m->mnt);
}

/* --- the device-mapper views --- */

const char *mr_view_kind(const struct mr_disk *d)
{
	return d->dm ? "dm" : "fuse";
}

/* The reason in a dmview message, without "PATH: " and the advice that
 * names other commands ("; use 'hvresync mount'...", "; run ..."). */
static void reason_of(const char *msg, const char *path, char *out, size_t n)
{
	static const char *const advice[] = { "; use '", "; run '" };
	size_t plen = strlen(path), len, i;
	const char *a;

	if (!strncmp(msg, path, plen) && !strncmp(msg + plen, ": ", 2))
		msg += plen + 2;
	len = strlen(msg);
	for (i = 0; i < sizeof(advice) / sizeof(advice[0]); i++) {
		a = strstr(msg, advice[i]);
		if (a && (size_t)(a - msg) < len)
			len = (size_t)(a - msg);
	}
	snprintf(out, n, "%.*s", (int)len, msg);
}

/* Make disk I's dm name differ from the earlier disks' names. */
static void unique_name(struct mr *m, unsigned i)
{
	struct mr_disk *d = &m->disks[i];
	size_t len;
	unsigned k;

	for (k = 0; k < i; k++) {
		if (!m->disks[k].dm || strcmp(m->disks[k].dm_name, d->dm_name))
			continue;
		len = strlen(d->dm_name);
		if (len > DMVIEW_DERIVED_MAX - 11)
			len = DMVIEW_DERIVED_MAX - 11;
		snprintf(d->dm_name + len, sizeof(d->dm_name) - len, "-%u", i);
		k = (unsigned)-1; /* check again from the first */
	}
}

int mr_choose_views(struct mr *m)
{
	struct vhdx_error err = { { 0 } };
	char why[512];
	bool kernel = false;
	unsigned i;

	if (m->o.view != MR_VIEW_FUSE) {
		kernel = dmview_kernel_check(m->vm->name, true, &err) == 0;
		if (!kernel && m->o.view == MR_VIEW_DM) {
			mr_set_err(m, "--view dm: %s", err.msg);
			return -1;
		}
		reason_of(err.msg, m->vm->name, why, sizeof(why));
	}
	m->ndm = m->nfuse = 0;
	for (i = 0; i < m->ndisks; i++) {
		struct mr_disk *d = &m->disks[i];

		d->dm = false;
		if (m->o.view == MR_VIEW_FUSE) {
			snprintf(d->view_why, sizeof(d->view_why),
				 "--view fuse");
		} else if (!kernel) {
			snprintf(d->view_why, sizeof(d->view_why), "%s", why);
		} else if (dmview_mappable(d->path, vhdx_get_info(d->img),
					   &err)) {
			if (m->o.view == MR_VIEW_DM) {
				mr_set_err(m, "--view dm: %s", err.msg);
				return -1;
			}
			reason_of(err.msg, d->path, d->view_why,
				  sizeof(d->view_why));
		} else {
			d->dm = true;
			dmview_name(m->vm->name, d->name, d->dm_name,
				    sizeof(d->dm_name));
			unique_name(m, i);
			snprintf(d->view_why, sizeof(d->view_why), "kernel");
		}
		if (d->dm)
			m->ndm++;
		else
			m->nfuse++;
	}
	return 0;
}

/* Our views' uuids: DMVIEW_UUID_PREFIX "MR-" and a hash of the lock
 * file's path, which is what one run of one VM holds. */
static void set_prefix(struct mr *m)
{
	snprintf(m->dm_prefix, sizeof(m->dm_prefix),
		 DMVIEW_UUID_PREFIX "MR-%016" PRIx64 "-",
		 dmview_hash(m->lock_path));
}

static void note_stale(const char *name, bool busy, void *ctx)
{
	struct mr *m = ctx;

	note_msg("%s: removing dm view /dev/mapper/%s left behind by an "
		 "earlier run%s",
		 m->vm->name, name,
		 busy ? " (still open: on its last close)" : "");
}

int mr_clear_dm(struct mr *m)
{
	struct vhdx_error err = { { 0 } };

	set_prefix(m);
	if (!dmview_sweep(m->dm_prefix, &m->o.dm, note_stale, m, NULL, &err))
		return 0;
	/* Only a run that must map cannot go on; FUSE views do not meet
	 * an old dm view, and auto falls back to them. */
	if (m->o.view == MR_VIEW_DM) {
		mr_set_err(m, "%s", err.msg);
		return -1;
	}
	note_msg("%s", err.msg);
	return 0;
}

/* The keeper: waits for SIGTERM (ours, or the kernel's when we die) and
 * removes this run's dm views.  Never returns. */
static void keeper_child(struct mr *m, pid_t parent)
{
	struct vhdx_error err = { { 0 } };
	struct timespec ts = { 0, 100000000L };
	unsigned left = 0, i;
	sigset_t set;
	int sig, fd;

	/* The mask was set before the fork: a signal now waits for
	 * sigwait() instead of running our parent's handler. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	setpgid(0, 0);
	fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		dup2(fd, STDOUT_FILENO);
		close(fd);
	}
	/* Not pinning the caller's folder; where we stay does not matter. */
	if (chdir("/") < 0)
		fd = -1;
	/* Our parent may have died before the prctl: then go at once. */
	if (getppid() == parent)
		sigwait(&set, &sig);
	if (dmview_sweep(m->dm_prefix, &m->o.dm, NULL, NULL, &left, &err))
		error_msg("%s", err.msg);
	/* A view still open goes on its last close; wait a while for it,
	 * holding the locks, then drop a node libdevmapper made for it. */
	for (i = 0; left && i < KEEPER_DEFERRED_SECS * 10; i++) {
		if (dmview_any(m->dm_prefix) <= 0)
			break;
		nanosleep(&ts, NULL);
	}
	for (i = 0; i < m->ndisks; i++)
		if (m->disks[i].dm)
			dmview_forget_node(m->disks[i].dm_name);
	dmview_release();
	_exit(EXIT_OK);
}

static int fork_keeper(struct mr *m)
{
	pid_t parent = getpid();
	sigset_t set, old;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	fflush(NULL);
	sigprocmask(SIG_BLOCK, &set, &old);
	m->keeper = fork();
	if (m->keeper == 0)
		keeper_child(m, parent);
	sigprocmask(SIG_SETMASK, &old, NULL);
	if (m->keeper < 0) {
		m->keeper = 0;
		mr_set_err(m, "fork: %s", strerror(errno));
		return -1;
	}
	return 0;
}

int mr_map_views(struct mr *m)
{
	struct vhdx_error err = { { 0 } };
	char uuid[DMVIEW_UUID_LEN + DMVIEW_NAME_MAX], why[512];
	struct dmview_opts o = m->o.dm;
	bool udev_dead = false;
	unsigned i;
	int ret;

	if (!m->ndm)
		return 0;
	if (!m->dm_prefix[0])
		set_prefix(m);
	if (fork_keeper(m) < 0)
		return -1;
	for (i = 0; i < m->ndisks && !mr_got_signal; i++) {
		struct mr_disk *d = &m->disks[i];
		char *dev;

		if (!d->dm)
			continue;
		snprintf(uuid, sizeof(uuid), "%s%s", m->dm_prefix, d->dm_name);
		o.uuid = uuid;
		/* udev did not answer for an earlier disk: it will not for
		 * this one either. */
		ret = udev_dead ? -ETIMEDOUT
				: dmview_map_image(d->img, d->path, d->dm_name,
						   &o, &err);
		if (ret == -ETIMEDOUT)
			udev_dead = true;
		if (ret) {
			if (m->o.view == MR_VIEW_DM) {
				mr_set_err(m, "--view dm: %s", err.msg);
				return -1;
			}
			reason_of(err.msg, d->dm_name, why, sizeof(why));
			snprintf(d->view_why, sizeof(d->view_why), "%s", why);
			d->dm = false;
			m->ndm--;
			m->nfuse++;
			continue;
		}
		d->dm_mapped = true;
		if (asprintf(&dev, "/dev/mapper/%s", d->dm_name) < 0) {
			mr_set_err(m, "out of memory");
			return -1;
		}
		free(d->view);
		d->view = dev;
	}
	return mr_got_signal ? -1 : 0;
}

void mr_unmap_views(struct mr *m)
{
	struct vhdx_error err = { { 0 } };
	unsigned left = 0, i, n = 0;

	if (!m->keeper)
		return;
	/* Ours first, so errors are said here; the keeper then finds
	 * nothing left.  The job no longer reads the views (it ended or
	 * was cancelled), unless its cancel did not finish in time. */
	if (dmview_sweep(m->dm_prefix, &m->o.dm, NULL, NULL, &left, &err)) {
		error_msg("%s", err.msg);
		mr_set_err(m, "%s", err.msg);
	}
	for (i = 0; i < m->ndisks; i++) {
		if (!m->disks[i].dm_mapped)
			continue;
		m->disks[i].dm_mapped = false;
		n++;
	}
	if (left) {
		m->dm_left = true;
		mr_set_err(m,
			   "VM %s: %u dm view%s still open; each fails every "
			   "read now and goes on its last close",
			   m->vm->name, left, left == 1 ? " is" : "s are");
	}
	kill(m->keeper, SIGTERM);
	if (!reap_child(&m->keeper, KEEPER_DEFERRED_SECS + 30)) {
		kill(m->keeper, SIGKILL);
		reap_child(&m->keeper, 5);
	}
	dmview_release();
	if (n && !left)
		note_msg("%s: %u dm view%s removed", m->vm->name, n,
			 n == 1 ? "" : "s");
}
