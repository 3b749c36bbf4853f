/* SPDX-License-Identifier: MIT */
/*
 * dirsync.c - making a folder's entries durable.  A new or renamed file
 * survives a power cut only once its folder is fsynced; the merge marker
 * needs it here, and the agent's atomic writes (agent/lib/fsutil.c) use
 * the same function rather than a copy.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "vhdx/vhdx.h"

int vhdx_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int ret = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd))
		ret = -errno;
	close(fd);
	return ret;
}

int vhdx_fsync_parent_dir(const char *path)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/');

	if (!slash)
		return vhdx_fsync_dir(".");
	if (slash == path)
		return vhdx_fsync_dir("/");
	if ((size_t)(slash - path) >= sizeof(dir))
		return -ENAMETOOLONG;
	snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	return vhdx_fsync_dir(dir);
}
