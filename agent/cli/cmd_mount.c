/* SPDX-License-Identifier: MIT */
/*
 * cmd_mount.c - `hvresync mount` shows VHDX images as flat raw files through
 * FUSE; `hvresync umount` ends such a view.
 *
 * Every image is opened, and every argument checked, before anything is
 * mounted: a mistake costs an error line, never a half-made mount.  In the
 * background mode the process forks; the child mounts and tells the parent
 * through a pipe when the mount answers, or why it failed, so the parent's
 * exit status is the mount's.
 *
 * With --rw the images are opened for writing (a dirty log is replayed on
 * disk then) and closed with vhdx_close_checked() when the view ends.  The
 * serving process listens on an abstract socket named after the mount's
 * device; 'hvresync umount' connects to it before unmounting and returns
 * only when the images are closed, with the close's verdict, so a script
 * may use an image as soon as umount returns.
 *
 * Locks keep writers apart: a writable view holds each image it writes
 * with vhdx_lock() (hvresync's exclusive flock(2) and qemu's image locks,
 * taken before the open, which may replay the log) and every view a
 * shared flock (vhdx_flock()) on each other image it reads, parents
 * included.  So no image is written by two views, or by a view and a
 * recovery session or qemu, or written while a view reads it, or written
 * while a child's view reads it as its parent.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/cli/cli.h"
#include "fuse/view.h"
#include "vhdx/vhdx.h"

static const char mount_usage[] =
	"hvresync mount [--rw] [-f] [--ignore-parent-linkage] IMAGE... "
	"MOUNTPOINT\n"
	"  Show each IMAGE as MOUNTPOINT/NAME, a raw file of the disk's\n"
	"  virtual size (NAME: the file name without .vhdx/.avhdx).\n"
	"  -f, --foreground          keep serving in the foreground\n"
	"  --ignore-parent-linkage   accept a parent whose DataWriteGuid does\n"
	"                            not match the child's parent_linkage\n"
	"  --rw                      writable view: writes, fallocate -p/-z\n"
	"                            and fsync go into the images (a child's\n"
	"                            parents stay read-only); fixed size\n"
	"  End the view with 'hvresync umount MOUNTPOINT'.";

static const char umount_usage[] =
	"hvresync umount MOUNTPOINT\n"
	"  End a raw view started by 'hvresync mount'; returns once its\n"
	"  images are closed.";

/* Longest wait for a view's images to close after the unmount. */
#define CLOSE_WAIT_SECS 120

/* The view's file name: the base name without a .vhdx or .avhdx suffix. */
static char *image_name(const char *path)
{
	const char *base = strrchr(path, '/');
	static const char *const exts[] = { ".vhdx", ".avhdx" };
	size_t len, i, el;

	base = base ? base + 1 : path;
	len = strlen(base);
	for (i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
		el = strlen(exts[i]);
		if (len > el && !strcasecmp(base + len - el, exts[i])) {
			len -= el;
			break;
		}
	}
	return strndup(base, len);
}

/* A directory to mount on, made absolute: the daemon leaves its cwd. */
static char *check_mountpoint(const char *mnt)
{
	struct stat st;
	char *real;

	if (stat(mnt, &st) < 0) {
		if (errno == ENOENT)
			error_msg("%s: mountpoint does not exist", mnt);
		else
			error_msg("%s: cannot use as mountpoint: %s", mnt,
				  strerror(errno));
		return NULL;
	}
	if (!S_ISDIR(st.st_mode)) {
		error_msg("%s: mountpoint is not a directory", mnt);
		return NULL;
	}
	real = realpath(mnt, NULL);
	if (!real)
		error_msg("%s: cannot resolve: %s", mnt, strerror(errno));
	return real;
}

/* --- locks ------------------------------------------------------------- */

/*
 * Hold PATH for the writable view's lifetime (vhdx_lock(): hvresync's own
 * lock and qemu's), taken before the open, which may replay the log.
 * Returns NULL after an error line naming the holder.
 */
static struct vhdx_lock *lock_for_write(const char *path)
{
	struct vhdx_error verr = { { 0 } };
	struct vhdx_lock *lk;
	int ret = vhdx_lock(path, VHDX_LOCK_WRITE, &lk, &verr);

	if (ret < 0) {
		error_msg("%s", verr.msg[0] ? verr.msg : strerror(-ret));
		return NULL;
	}
	return lk;
}

/*
 * Shared locks on what IMG's view reads: the image itself unless it is
 * written, and its parents.  Returns 0 or -1 after an error line.
 */
static int lock_for_read(struct vhdx_image *img, bool written)
{
	struct vhdx_image *child = written ? img : NULL;
	struct vhdx_image *p = written ? vhdx_get_parent(img) : img;

	for (; p; child = p, p = vhdx_get_parent(p)) {
		const char *path = vhdx_get_info(p)->path;

		if (vhdx_flock(vhdx_get_fd(p), false) != -EBUSY)
			continue;
		if (child)
			error_msg("%s: is written through a writable hvresync "
				  "view, so it cannot be read as the parent "
				  "of %s",
				  path, vhdx_get_info(child)->path);
		else
			error_msg("%s: is written through a writable hvresync "
				  "view; unmount that first",
				  path);
		return -1;
	}
	return 0;
}

/* --- the close verdict for umount ---------------------------------------- */

/* Abstract socket name of the mount with device MAJ:MIN. */
static socklen_t status_addr(struct sockaddr_un *sa, unsigned maj, unsigned min)
{
	int n;

	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	n = snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1,
		     "hvresync-view:%u:%u", maj, min);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
			   (size_t)n);
}

/*
 * Called by the serving process once mounted.  Nobody is accepted until
 * the images are closed: a connection waits in the backlog until then.
 * Returns the listening socket or -1 (umount then just does not wait).
 */
static int status_listen(const char *mnt)
{
	struct view_mount_info mi;
	struct sockaddr_un sa;
	socklen_t len;
	int fd;

	if (view_find_mount(mnt, &mi) < 0)
		return -1;
	len = status_addr(&sa, mi.major, mi.minor);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&sa, len) < 0 || listen(fd, 16) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Tell everyone waiting in umount how the close went. */
static void status_reply(int lfd, const char *verdict)
{
	char line[1100];
	int n, c;

	if (lfd < 0)
		return;
	n = snprintf(line, sizeof(line), "%s\n", verdict[0] ? verdict : "OK");
	while ((c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
		/* A umount that gave up is gone: no SIGPIPE for that. */
		ssize_t w = send(c, line, (size_t)n, MSG_NOSIGNAL);

		(void)w;
		close(c);
	}
	close(lfd);
}

/*
 * Called by umount before unmounting.  Only a listener run by root or by
 * ourselves is believed.  Returns a connected socket or -1.
 */
static int status_connect(const struct view_mount_info *mi)
{
	struct sockaddr_un sa;
	struct ucred cred;
	socklen_t len = status_addr(&sa, mi->major, mi->minor);
	socklen_t clen = sizeof(cred);
	int fd;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, len) < 0 ||
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 ||
	    (cred.uid != 0 && cred.uid != geteuid())) {
		close(fd);
		return -1;
	}
	return fd;
}

/* After the unmount: wait for the serving process's verdict. */
static int status_wait(int fd, const char *mnt)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char msg[1100];
	size_t used = 0;
	ssize_t n;
	int left = CLOSE_WAIT_SECS * 1000, r;

	while (used < sizeof(msg) - 1) {
		r = poll(&pfd, 1, left > 1000 ? 1000 : left);
		if (r < 0 && errno != EINTR)
			break;
		if (r <= 0) {
			left -= 1000;
			if (left > 0)
				continue;
			error_msg("%s: unmounted, but the serving process has "
				  "not closed the images after %d s; see the "
				  "system log",
				  mnt, CLOSE_WAIT_SECS);
			return EXIT_ERROR;
		}
		n = read(fd, msg + used, sizeof(msg) - 1 - used);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			/* It died before it could say: an image may not be
			 * closed cleanly, and saying nothing is not "OK". */
			error_msg(
				"%s: unmounted, but the serving process ended "
				"without reporting how it closed the images; "
				"a --rw image may keep a dirty log (hvresync "
				"inspect IMAGE tells, --replay replays it)",
				mnt);
			return EXIT_ERROR;
		}
		used += (size_t)n;
		if (memchr(msg, '\n', used))
			break;
	}
	msg[used] = '\0';
	msg[strcspn(msg, "\n")] = '\0';
	if (msg[0] && strcmp(msg, "OK")) {
		error_msg("%s", msg);
		return EXIT_ERROR;
	}
	return EXIT_OK;
}

/* --- serving ------------------------------------------------------------- */

/*
 * Close every image once the view has ended; a writable image is flushed
 * and its log cleared first.  Each failure is logged, and the first is put
 * in VERDICT as a line for umount (left empty when all went well).
 */
static void close_images(struct view_image *images, unsigned count, bool rw,
			 char *verdict, size_t len)
{
	unsigned i;
	int ret;

	verdict[0] = '\0';
	for (i = 0; i < count; i++) {
		if (!images[i].img)
			continue;
		if (!rw) {
			vhdx_close(images[i].img);
			images[i].img = NULL;
			continue;
		}
		ret = vhdx_close_checked(images[i].img);
		images[i].img = NULL;
		if (ret < 0) {
			view_log(LOG_ERR,
				 "%s: closing after writes failed: "
				 "%s; writes since the last successful flush "
				 "may be lost",
				 images[i].path, strerror(-ret));
			if (!verdict[0])
				snprintf(verdict, len,
					 "%s: closing after "
					 "writes failed: %s",
					 images[i].path, strerror(-ret));
		}
	}
}

/*
 * Serve a mounted view until it ends, then close the images and answer
 * umount.  A signal now would cut the close short, so none is taken.
 */
static int serve(struct view *v, const char *mnt, int ready_fd, bool detach,
		 struct view_image *images, unsigned count, bool rw)
{
	char verdict[1024];
	sigset_t stop;
	int lfd, ret;

	lfd = status_listen(mnt);
	ret = view_serve(v, ready_fd, detach);
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGHUP);
	sigprocmask(SIG_BLOCK, &stop, NULL);
	close_images(images, count, rw, verdict, sizeof(verdict));
	status_reply(lfd, verdict);
	return ret < 0 || verdict[0] ? EXIT_ERROR : EXIT_OK;
}

/* Read the child's one-line verdict; EOF without one means it died. */
static int wait_for_child(int fd, pid_t pid, const char *mnt)
{
	char msg[1024];
	size_t used = 0;
	ssize_t n;
	int status;

	for (;;) {
		n = read(fd, msg + used, sizeof(msg) - 1 - used);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		used += (size_t)n;
		if (used == sizeof(msg) - 1)
			break;
	}
	msg[used] = '\0';
	msg[strcspn(msg, "\n")] = '\0';
	if (!strcmp(msg, "OK"))
		return EXIT_OK;
	if (msg[0]) {
		error_msg("%s", msg);
	} else if (waitpid(pid, &status, 0) == pid && WIFSIGNALED(status)) {
		error_msg("%s: the serving process died of signal %d before "
			  "the mount was ready",
			  mnt, WTERMSIG(status));
	} else {
		error_msg("%s: the serving process exited before the mount "
			  "was ready",
			  mnt);
	}
	return EXIT_ERROR;
}

static int run_background(struct view *v, const char *mnt,
			  struct view_image *images, unsigned count, bool rw)
{
	char err[512], line[1024];
	int pfd[2];
	pid_t pid;
	int ret;

	if (pipe2(pfd, O_CLOEXEC) < 0) {
		error_msg("pipe: %s", strerror(errno));
		return EXIT_ERROR;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		error_msg("fork: %s", strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		return EXIT_ERROR;
	}
	if (pid > 0) {
		close(pfd[1]);
		ret = wait_for_child(pfd[0], pid, mnt);
		close(pfd[0]);
		return ret;
	}

	/* The child: its own session, so the caller's terminal and process
	 * group signals do not end the view. */
	close(pfd[0]);
	setsid();
	ret = view_mount(v, mnt, err, sizeof(err));
	if (ret < 0) {
		int n = snprintf(line, sizeof(line), "%s: %s\n", mnt, err);
		ssize_t w = write(pfd[1], line, (size_t)n);

		(void)w; /* the parent reports a silent death too */
		_exit(EXIT_ERROR);
	}
	/* Keep no directory of the caller's busy; "/" cannot fail. */
	if (chdir("/") < 0)
		error_msg("/: %s", strerror(errno));
	return serve(v, mnt, pfd[1], true, images, count, rw);
}

/* The command line of mount. */
struct mount_opts {
	bool rw;
	bool fg;
	unsigned flags; /* VHDX_OPEN_* */
	char **images;	/* COUNT image paths */
	unsigned count;
	const char *mountpoint;
};

/* Fill O from the command line.  Returns -1 to go on, else the exit
 * status (after --help; a mistake exits). */
static int parse_opts(struct mount_opts *o, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "rw", no_argument, NULL, 'w' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "ignore-parent-linkage", no_argument, NULL, 'L' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	optind = 1;
	while ((c = getopt_long(argc, argv, "fh", opts, NULL)) != -1) {
		switch (c) {
		case 'w':
			o->rw = true;
			break;
		case 'f':
			o->fg = true;
			break;
		case 'L':
			o->flags |= VHDX_OPEN_IGNORE_LINKAGE;
			break;
		case 'h':
			printf("usage: %s\n", mount_usage);
			return EXIT_OK;
		default:
			usage_die(mount_usage);
		}
	}
	if (o->rw)
		o->flags |= VHDX_OPEN_RDWR;
	if (argc - optind < 2)
		usage_die(mount_usage);
	o->images = argv + optind;
	o->count = (unsigned)(argc - optind - 1);
	o->mountpoint = argv[argc - 1];
	return -1;
}

/* Each image's view file name, which must be usable and unique; 0 or -1
 * after an error line. */
static int name_images(struct view_image *images, const struct mount_opts *o,
		       const char *mnt)
{
	unsigned i, j;

	for (i = 0; i < o->count; i++) {
		const char *path = o->images[i];
		char *name = image_name(path);

		if (!name) {
			error_msg("out of memory");
			return -1;
		}
		images[i].name = name;
		images[i].path = path;
		if (!name[0] || !strcmp(name, ".") || !strcmp(name, "..")) {
			error_msg("%s: cannot name a view file after it", path);
			return -1;
		}
		for (j = 0; j < i; j++) {
			if (!strcmp(images[j].name, name)) {
				error_msg("%s and %s would both appear as "
					  "%s/%s; rename or link one of them",
					  images[j].path, path, mnt, name);
				return -1;
			}
		}
	}
	return 0;
}

/* Lock (for --rw) and open every image, then take the shared locks on
 * what the views read; 0 or -1 after an error line. */
static int open_images(struct view_image *images, struct vhdx_lock **locks,
		       const struct mount_opts *o)
{
	unsigned i;
	int ret;

	for (i = 0; i < o->count; i++) {
		struct vhdx_error verr = { { 0 } };

		if (o->rw) {
			locks[i] = lock_for_write(images[i].path);
			if (!locks[i])
				return -1;
		}
		ret = vhdx_open(images[i].path, o->flags, &images[i].img,
				&verr);
		if (ret < 0) {
			if (verr.msg[0])
				error_msg("%s", verr.msg);
			else
				error_msg("%s: %s", images[i].path,
					  strerror(-ret));
			return -1;
		}
	}
	for (i = 0; i < o->count; i++)
		if (lock_for_read(images[i].img, o->rw) < 0)
			return -1;
	return 0;
}

/* Mount the views and serve them (in the foreground, or in a child);
 * the exit status. */
static int start_view(struct view_image *images, const struct mount_opts *o,
		      const char *mnt)
{
	struct view_config cfg = { 0 };
	struct view *v = NULL;
	char err[512];
	int ret;

	cfg.log_stderr = true;
	cfg.writable = o->rw;
	if (view_new(images, o->count, &cfg, &v, err, sizeof(err)) < 0) {
		error_msg("%s: %s", mnt, err);
		return EXIT_ERROR;
	}
	if (!o->fg) {
		ret = run_background(v, mnt, images, o->count, o->rw);
	} else if (view_mount(v, mnt, err, sizeof(err)) < 0) {
		error_msg("%s: %s", mnt, err);
		ret = EXIT_ERROR;
	} else {
		ret = serve(v, mnt, -1, false, images, o->count, o->rw);
	}
	view_free(v);
	return ret;
}

/* Close what is still open: a failed start, or the background mode's
 * parent (which wrote nothing; the child serves). */
static void release_images(struct view_image *images, struct vhdx_lock **locks,
			   unsigned count)
{
	unsigned i;

	if (images) {
		for (i = 0; i < count; i++) {
			if (images[i].img)
				vhdx_close(images[i].img);
			free((char *)images[i].name);
		}
		free(images);
	}
	if (locks) {
		for (i = 0; i < count; i++)
			vhdx_unlock(locks[i]);
		free(locks);
	}
}

int cmd_mount(int argc, char **argv)
{
	struct view_mount_info mi;
	struct view_image *images;
	struct mount_opts o;
	struct vhdx_lock **locks;
	char *mnt;
	int ret;

	ret = parse_opts(&o, argc, argv);
	if (ret >= 0)
		return ret;
	mnt = check_mountpoint(o.mountpoint);
	if (!mnt)
		return EXIT_ERROR;
	if (view_find_mount(mnt, &mi) == 0 && !strcmp(mi.fstype, VIEW_FSTYPE)) {
		error_msg("%s: already shows an hvresync view; 'hvresync "
			  "umount %s' first",
			  o.mountpoint, o.mountpoint);
		free(mnt);
		return EXIT_ERROR;
	}

	ret = EXIT_ERROR;
	images = calloc(o.count, sizeof(*images));
	locks = calloc(o.count, sizeof(*locks));
	if (!images || !locks)
		error_msg("out of memory");
	else if (name_images(images, &o, mnt) == 0 &&
		 open_images(images, locks, &o) == 0)
		ret = start_view(images, &o, mnt);
	release_images(images, locks, o.count);
	free(mnt);
	return ret;
}

/*
 * Run fusermount3 -u for a user who may not call umount(2).  Its complaint
 * (first line) goes into WHY so the user still sees one line.
 */
static int fusermount_u(const char *mnt, char *why, size_t whylen)
{
	ssize_t n, used = 0;
	int pfd[2], status;
	pid_t pid;

	why[0] = '\0';
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return -errno;
	}
	if (pid == 0) {
		dup2(pfd[1], STDERR_FILENO);
		dup2(pfd[1], STDOUT_FILENO);
		execlp("fusermount3", "fusermount3", "-u", "--", mnt,
		       (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	while ((n = read(pfd[0], why + used, whylen - 1 - (size_t)used)) > 0 ||
	       (n < 0 && errno == EINTR))
		if (n > 0)
			used += n;
	close(pfd[0]);
	why[used] = '\0';
	why[strcspn(why, "\n")] = '\0';
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
		return -ENOENT;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* The command line of umount: MOUNTPOINT.  Returns -1 to go on, else the
 * exit status (after --help; a mistake exits). */
static int parse_umount(const char **mountpoint, int argc, char **argv)
{
	if (argc == 2 &&
	    (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: %s\n", umount_usage);
		return EXIT_OK;
	}
	if (argc != 2 || argv[1][0] == '-')
		usage_die(umount_usage);
	*mountpoint = argv[1];
	return -1;
}

/* Whether MNT (ARG as given) shows an hvresync view; fills MI. */
static bool is_view(const char *mnt, const char *arg,
		    struct view_mount_info *mi)
{
	int ret = view_find_mount(mnt, mi);

	if (ret == -ENOENT) {
		error_msg("%s: nothing is mounted there", arg);
		return false;
	}
	if (ret < 0) {
		error_msg("/proc/self/mountinfo: %s", strerror(-ret));
		return false;
	}
	if (strcmp(mi->fstype, VIEW_FSTYPE)) {
		error_msg("%s: not an hvresync view (it is a %s mount)", arg,
			  mi->fstype);
		return false;
	}
	return true;
}

/* umount(2) as root, fusermount3 -u otherwise; 0 or -1 after an error
 * line naming ARG. */
static int unmount_view(const char *mnt, const char *arg)
{
	char why[512];
	int ret;

	if (geteuid() == 0) {
		if (umount2(mnt, UMOUNT_NOFOLLOW) == 0)
			return 0;
		if (errno == EBUSY)
			error_msg("%s: busy: a file of the view is "
				  "open or a process works in it",
				  arg);
		else
			error_msg("%s: umount: %s", arg, strerror(errno));
		return -1;
	}
	ret = fusermount_u(mnt, why, sizeof(why));
	if (ret == -ENOENT) {
		error_msg("%s: fusermount3 not found (package fuse3)", arg);
		return -1;
	}
	if (ret < 0) {
		error_msg("%s: fusermount3 -u failed%s%s", arg,
			  why[0] ? ": " : "", why);
		return -1;
	}
	return 0;
}

int cmd_umount(int argc, char **argv)
{
	struct view_mount_info mi;
	const char *arg;
	char *mnt;
	int ret, sfd = -1;

	ret = parse_umount(&arg, argc, argv);
	if (ret >= 0)
		return ret;
	mnt = realpath(arg, NULL);
	if (!mnt) {
		error_msg("%s: %s", arg,
			  errno == ENOENT ? "no such mountpoint"
					  : strerror(errno));
		return EXIT_ERROR;
	}
	ret = EXIT_ERROR;
	if (is_view(mnt, arg, &mi)) {
		struct statfs sfs;
		bool dead;

		/* Connected before the unmount, so the verdict cannot be
		 * missed. */
		sfd = status_connect(&mi);
		/* A view whose process is gone answers ENOTCONN: nobody
		 * closed its images.  statfs, as stat may be answered from
		 * the kernel's attribute cache. */
		dead = sfd < 0 && statfs(mnt, &sfs) < 0 && errno == ENOTCONN;
		if (unmount_view(mnt, arg) == 0) {
			if (dead) {
				error_msg("%s: unmounted, but its serving "
					  "process had died: the images were "
					  "not closed cleanly; a --rw image "
					  "may keep a dirty log (hvresync "
					  "inspect IMAGE tells, --replay "
					  "replays it)",
					  arg);
				ret = EXIT_ERROR;
			} else {
				ret = sfd >= 0 ? status_wait(sfd, arg)
					       : EXIT_OK;
			}
		}
	}
	if (sfd >= 0)
		close(sfd);
	free(mnt);
	return ret;
}
