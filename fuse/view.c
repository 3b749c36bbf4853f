/* SPDX-License-Identifier: MIT */
/*
 * view.c - the FUSE raw view of VHDX images (see view.h): the session's
 * life from view_new() through mount and serve to view_free().
 *
 * The files' contents are served by read.c and, for a writable view,
 * write.c; the namespace and the table of operations are in ops.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "fuse/internal.h"

static uint64_t image_alloc(const struct vhdx_info *info)
{
	uint64_t blocks = info->block_states[VHDX_PAYLOAD_FULLY_PRESENT] +
			  info->block_states[VHDX_PAYLOAD_PARTIALLY_PRESENT];
	uint64_t bytes;

	if (info->block_size && blocks > UINT64_MAX / info->block_size)
		return info->virtual_size;
	bytes = blocks * info->block_size;
	return bytes < info->virtual_size ? bytes : info->virtual_size;
}

static int file_init(struct view_file *f, const struct view_image *im)
{
	const struct vhdx_info *info = vhdx_get_info(im->img);

	f->name = strdup(im->name);
	f->path = strdup(im->path);
	if (!f->name || !f->path)
		return -ENOMEM;
	f->img = im->img;
	f->fd = vhdx_get_fd(im->img);
	f->size = info->virtual_size;
	f->alloc = image_alloc(info);
	atomic_init(&f->error_logged, false);
	atomic_init(&f->write_error_logged, false);
	return 0;
}

int view_new(const struct view_image *images, unsigned count,
	     const struct view_config *cfg, struct view **out, char *err,
	     size_t errlen)
{
	char mopts[128];
	char *fargv[] = { "hvresync", "-o", mopts, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	struct view *v;
	unsigned i;
	int ret = -ENOMEM;

	*out = NULL;
	view_max_read = view_pick_max_read();
	/* subtype: /proc/mounts shows VIEW_FSTYPE, which umount checks. */
	snprintf(mopts, sizeof(mopts),
		 "%s,fsname=hvresync,subtype=hvresync,max_read=%u",
		 cfg && cfg->writable ? "rw" : "ro", view_max_read);
	if (err && errlen)
		err[0] = '\0';
	view_log_start(cfg ? cfg->log_stderr : true);

	v = calloc(1, sizeof(*v));
	if (!v)
		goto fail;
	v->files = calloc(count ? count : 1, sizeof(*v->files));
	if (!v->files)
		goto fail;
	v->count = count;
	v->writable = cfg && cfg->writable;
	v->uid = getuid();
	v->gid = getgid();
	clock_gettime(CLOCK_REALTIME, &v->created);
	for (i = 0; i < count; i++)
		if (file_init(&v->files[i], &images[i]) < 0)
			goto fail;

	view_capture_start(err, errlen);
	v->se = fuse_session_new(&args, &view_ops, sizeof(view_ops), v);
	view_capture_stop();
	fuse_opt_free_args(&args);
	if (!v->se) {
		ret = -EINVAL;
		view_set_err(err, errlen, "cannot set up the FUSE session");
		goto fail;
	}
	*out = v;
	return 0;
fail:
	if (ret == -ENOMEM)
		view_set_err(err, errlen, "out of memory");
	view_free(v);
	return ret;
}

int view_mount(struct view *v, const char *mountpoint, char *err, size_t errlen)
{
	int ret;

	if (err && errlen)
		err[0] = '\0';
	v->mountpoint = strdup(mountpoint);
	if (!v->mountpoint) {
		view_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	view_capture_start(err, errlen);
	ret = fuse_session_mount(v->se, mountpoint);
	view_capture_stop();
	if (ret) {
		view_set_err(err, errlen, "mount failed");
		return -EIO;
	}
	v->mounted = true;
	return 0;
}

struct ready_ctx {
	struct view *v;
	int fd;
	bool detach;
	bool no_probe; /* no thread: the loop cannot answer a probe yet */
	char msg[512]; /* libfuse's first complaint before the mount answered */
};

static void tune_readahead(dev_t dev)
{
	char path[128], val[32];
	int fd, n;

	/* A FUSE mount's bdi is named after its anonymous device number. */
	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/read_ahead_kb",
		 major(dev), minor(dev));
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return; /* not root, or no sysfs: keep the default */
	n = snprintf(val, sizeof(val), "%u\n", VIEW_READAHEAD_KB);
	if (write(fd, val, (size_t)n) != n)
		view_log(LOG_WARNING, "%s: cannot raise readahead: %s", path,
			 strerror(errno));
	close(fd);
}

static void detach_stdio(void)
{
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return;
	dup2(fd, STDIN_FILENO);
	dup2(fd, STDOUT_FILENO);
	dup2(fd, STDERR_FILENO);
	if (fd > STDERR_FILENO)
		close(fd);
}

/*
 * Runs beside the loop: the stat below is answered by the loop only after
 * the kernel's INIT, and INIT's reply would overwrite a readahead setting
 * made before it.  Only then is the mount reported ready.
 */
static void *ready_thread(void *arg)
{
	struct ready_ctx *c = arg;
	char line[1024];
	struct stat st;
	sigset_t all;
	int ret = 0;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	if (c->no_probe)
		memset(&st, 0, sizeof(st));
	else if (stat(c->v->mountpoint, &st) < 0)
		ret = -errno;
	view_capture_stop();
	if (ret == 0 && !c->no_probe)
		tune_readahead(st.st_dev);
	snprintf(line, sizeof(line), "OK\n");
	if (ret < 0)
		snprintf(line, sizeof(line),
			 "%s: the mount does not answer: %s\n",
			 c->v->mountpoint, c->msg[0] ? c->msg : strerror(-ret));
	if (c->detach) {
		view_log_detach();
		detach_stdio();
	}
	if (c->fd >= 0) {
		ssize_t n = write(c->fd, line, strlen(line));

		(void)n;
		close(c->fd);
	} else if (ret < 0) {
		view_log(LOG_ERR, "%.*s", (int)strlen(line) - 1, line);
	}
	return NULL;
}

int view_serve(struct view *v, int ready_fd, bool detach)
{
	struct fuse_loop_config lc = {
		/* One /dev/fuse descriptor per worker: no shared queue lock. */
		.clone_fd = 1,
		.max_idle_threads = VIEW_IDLE_THREADS,
	};
	struct ready_ctx ctx = { .v = v, .fd = ready_fd, .detach = detach };
	pthread_t th;
	bool thread;
	int ret;

	if (fuse_set_signal_handlers(v->se)) {
		view_log(LOG_ERR, "cannot install signal handlers");
		if (ready_fd >= 0)
			close(ready_fd);
		return -EIO;
	}
	if (detach)
		openlog("hvresync", LOG_PID, LOG_DAEMON);
	view_capture_start(ctx.msg, sizeof(ctx.msg));
	thread = pthread_create(&th, NULL, ready_thread, &ctx) == 0;
	if (!thread) {
		ctx.no_probe = true;
		ready_thread(&ctx);
	}

	ret = fuse_session_loop_mt(v->se, &lc);

	fuse_remove_signal_handlers(v->se);
	if (v->mounted) {
		fuse_session_unmount(v->se);
		v->mounted = false;
	}
	/*
	 * Closing /dev/fuse aborts a request the ready thread may still be
	 * waiting on, if the loop ended before it was answered.
	 */
	fuse_session_destroy(v->se);
	v->se = NULL;
	if (thread)
		pthread_join(th, NULL);
	/* A positive value is the signal that ended the loop: a clean stop. */
	return ret < 0 ? -EIO : 0;
}

void view_free(struct view *v)
{
	unsigned i;

	if (!v)
		return;
	if (v->se) {
		if (v->mounted)
			fuse_session_unmount(v->se);
		fuse_session_destroy(v->se);
	}
	if (v->files) {
		for (i = 0; i < v->count; i++) {
			free(v->files[i].name);
			free(v->files[i].path);
		}
		free(v->files);
	}
	free(v->mountpoint);
	free(v);
}
