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
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/cli.h"
#include "fuse/view.h"
#include "vhdx/vhdx.h"

static const char mount_usage[] =
	"hvresync mount [--rw] [-f] [--ignore-parent-linkage] IMAGE... "
	"MOUNTPOINT\n"
	"  Show each IMAGE as MOUNTPOINT/NAME, a read-only raw file of the\n"
	"  disk's virtual size (NAME: the file name without .vhdx/.avhdx).\n"
	"  -f, --foreground          keep serving in the foreground\n"
	"  --ignore-parent-linkage   accept a parent whose DataWriteGuid does\n"
	"                            not match the child's parent_linkage\n"
	"  --rw                      writable view (not available yet)\n"
	"  End the view with 'hvresync umount MOUNTPOINT'.";

static const char umount_usage[] =
	"hvresync umount MOUNTPOINT\n"
	"  End a raw view started by 'hvresync mount'.";

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
			  "the mount was ready", mnt, WTERMSIG(status));
	} else {
		error_msg("%s: the serving process exited before the mount "
			  "was ready", mnt);
	}
	return EXIT_ERROR;
}

static int run_background(struct view *v, const char *mnt)
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
	ret = view_serve(v, pfd[1], true);
	return ret < 0 ? EXIT_ERROR : EXIT_OK;
}

int cmd_mount(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "rw", no_argument, NULL, 'w' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "ignore-parent-linkage", no_argument, NULL, 'L' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct view_config cfg = { 0 };
	struct view_mount_info mi;
	struct view_image *images = NULL;
	struct view *v = NULL;
	bool rw = false, fg = false;
	unsigned flags = 0, count = 0, i, j;
	char *mnt = NULL;
	char err[512];
	int c, ret = EXIT_ERROR;

	optind = 1;
	while ((c = getopt_long(argc, argv, "fh", opts, NULL)) != -1) {
		switch (c) {
		case 'w':
			rw = true;
			break;
		case 'f':
			fg = true;
			break;
		case 'L':
			flags |= VHDX_OPEN_IGNORE_LINKAGE;
			break;
		case 'h':
			printf("usage: %s\n", mount_usage);
			return EXIT_OK;
		default:
			usage_die(mount_usage);
		}
	}
	if (rw) {
		error_msg("--rw: writing through the view needs the VHDX "
			  "writer, which is not built yet; mount read-only");
		return EXIT_ERROR;
	}
	if (argc - optind < 2)
		usage_die(mount_usage);

	mnt = check_mountpoint(argv[argc - 1]);
	if (!mnt)
		return EXIT_ERROR;
	if (view_find_mount(mnt, &mi) == 0 && !strcmp(mi.fstype, VIEW_FSTYPE)) {
		error_msg("%s: already shows an hvresync view; 'hvresync "
			  "umount %s' first", argv[argc - 1], argv[argc - 1]);
		free(mnt);
		return EXIT_ERROR;
	}

	count = (unsigned)(argc - optind - 1);
	images = calloc(count, sizeof(*images));
	if (!images) {
		error_msg("out of memory");
		goto out;
	}
	for (i = 0; i < count; i++) {
		const char *path = argv[optind + i];
		char *name = image_name(path);

		if (!name) {
			error_msg("out of memory");
			goto out;
		}
		images[i].name = name;
		images[i].path = path;
		if (!name[0] || !strcmp(name, ".") || !strcmp(name, "..")) {
			error_msg("%s: cannot name a view file after it", path);
			goto out;
		}
		for (j = 0; j < i; j++) {
			if (!strcmp(images[j].name, name)) {
				error_msg("%s and %s would both appear as "
					  "%s/%s; rename or link one of them",
					  images[j].path, path, mnt, name);
				goto out;
			}
		}
	}
	for (i = 0; i < count; i++) {
		struct vhdx_error verr = { { 0 } };

		ret = vhdx_open(images[i].path, flags, &images[i].img, &verr);
		if (ret < 0) {
			if (verr.msg[0])
				error_msg("%s", verr.msg);
			else
				error_msg("%s: %s", images[i].path,
					  strerror(-ret));
			ret = EXIT_ERROR;
			goto out;
		}
	}

	cfg.log_stderr = true;
	if (view_new(images, count, &cfg, &v, err, sizeof(err)) < 0) {
		error_msg("%s: %s", mnt, err);
		ret = EXIT_ERROR;
		goto out;
	}

	if (fg) {
		if (view_mount(v, mnt, err, sizeof(err)) < 0) {
			error_msg("%s: %s", mnt, err);
			ret = EXIT_ERROR;
			goto out;
		}
		ret = view_serve(v, -1, false) < 0 ? EXIT_ERROR : EXIT_OK;
	} else {
		ret = run_background(v, mnt);
	}
out:
	view_free(v);
	if (images) {
		for (i = 0; i < count; i++) {
			if (images[i].img)
				vhdx_close(images[i].img);
			free((char *)images[i].name);
		}
		free(images);
	}
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

int cmd_umount(int argc, char **argv)
{
	struct view_mount_info mi;
	char *mnt;
	int ret;

	if (argc == 2 && (!strcmp(argv[1], "--help") ||
			  !strcmp(argv[1], "-h"))) {
		printf("usage: %s\n", umount_usage);
		return EXIT_OK;
	}
	if (argc != 2 || argv[1][0] == '-')
		usage_die(umount_usage);

	mnt = realpath(argv[1], NULL);
	if (!mnt) {
		error_msg("%s: %s", argv[1], errno == ENOENT ?
			  "no such mountpoint" : strerror(errno));
		return EXIT_ERROR;
	}
	ret = view_find_mount(mnt, &mi);
	if (ret == -ENOENT) {
		error_msg("%s: nothing is mounted there", argv[1]);
		goto fail;
	}
	if (ret < 0) {
		error_msg("/proc/self/mountinfo: %s", strerror(-ret));
		goto fail;
	}
	if (strcmp(mi.fstype, VIEW_FSTYPE)) {
		error_msg("%s: not an hvresync view (it is a %s mount)",
			  argv[1], mi.fstype);
		goto fail;
	}

	if (geteuid() == 0) {
		if (umount2(mnt, UMOUNT_NOFOLLOW) < 0) {
			if (errno == EBUSY)
				error_msg("%s: busy: a file of the view is "
					  "open or a process works in it",
					  argv[1]);
			else
				error_msg("%s: umount: %s", argv[1],
					  strerror(errno));
			goto fail;
		}
	} else {
		char why[512];

		ret = fusermount_u(mnt, why, sizeof(why));
		if (ret == -ENOENT) {
			error_msg("%s: fusermount3 not found (package fuse3)",
				  argv[1]);
			goto fail;
		}
		if (ret < 0) {
			error_msg("%s: fusermount3 -u failed%s%s", argv[1],
				  why[0] ? ": " : "", why);
			goto fail;
		}
	}
	free(mnt);
	return EXIT_OK;
fail:
	free(mnt);
	return EXIT_ERROR;
}
