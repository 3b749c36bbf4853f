/* SPDX-License-Identifier: MIT */
/*
 * mount_resync_views.c - the views of `hvresync mount-and-resync`: the
 * per-VM lock, the mountpoint, the serving child and the unmount that
 * must happen whatever else went wrong (see cmd_mount_resync.c).
 *
 * The views are served by a child of ours rather than by a detached
 * `hvresync mount`: the child asks the kernel for SIGTERM when we die
 * (PR_SET_PDEATHSIG), and SIGTERM makes the view unmount itself, so not
 * even a SIGKILL of the command leaves a mount behind.  The child sits in
 * its own process group, so a Ctrl-C reaches only the command, which
 * decides the order: cancel the job first (it reads the views), then
 * unmount.
 */
#include <errno.h>
#include <fcntl.h>
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
void mr_unmount_views(struct mr *m)
{
	struct view_mount_info mi;
	int ret;

	if (!m->mounted)
		return;
	if (m->server > 0) {
		kill(m->server, SIGTERM);
		if (!reap_server(m, SERVER_STOP_SECS)) {
			error_msg("%s: the view's server did not stop in %d s; "
				  "killing it",
				  m->mnt, SERVER_STOP_SECS);
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
		mr_set_err(m, "%s: the view is still mounted", m->mnt);
		return;
	}
	m->mounted = false;
	m->unmounted = true;
	if (rmdir(m->mnt) < 0 && errno != ENOENT)
		error_msg("%s: cannot remove: %s", m->mnt, strerror(errno));
	note_msg("%s: unmounted", m->mnt);
}
