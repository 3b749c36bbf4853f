/* SPDX-License-Identifier: MIT */
/* fsutil.c - mkdir -p, durable atomic writes, small reads (fsutil.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/lib/fsutil.h"
#include "vhdx/vhdx.h"

#define READ_SMALL_MAX (1 << 20)

/*
 * mkdir @path; a folder's name is durable only once the folder holding
 * it is fsynced, and whatever is later written and synced inside it (a
 * job record, say) would vanish with it at a power cut.  So its parent
 * is synced when it was made, and for @last always: a run that crashed
 * between its mkdir and that fsync left a name nobody made durable.
 */
static int mkdir_durable(const char *path, mode_t mode, bool last)
{
	if (mkdir(path, mode)) {
		if (errno != EEXIST)
			return -errno;
		if (!last)
			return 0;
	}
	return vhdx_fsync_parent_dir(path);
}

int fs_mkdir_p(const char *path, mode_t mode)
{
	char *p, *copy = strdup(path);
	size_t len;
	int ret = 0;

	if (!copy)
		return -ENOMEM;
	/* "a/b/" names "a/b": its parent is "a" */
	len = strlen(copy);
	while (len > 1 && copy[len - 1] == '/')
		copy[--len] = '\0';
	for (p = copy + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		ret = mkdir_durable(copy, 0755, false);
		*p = '/';
		if (ret)
			goto out;
	}
	ret = mkdir_durable(copy, mode, true);
out:
	free(copy);
	return ret;
}

char *fs_path_join(const char *a, const char *b)
{
	char *s;

	if (asprintf(&s, "%s/%s", a, b) < 0)
		return NULL;
	return s;
}

static int write_all(int fd, const char *p, size_t len)
{
	ssize_t n;

	while (len) {
		n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Write @buf to @tmp (created with @mode whatever the umask), fsync,
 * rename over @dst, fsync of @dir. */
static int replace_file(const char *dir, const char *tmp, const char *dst,
			const void *buf, size_t len, mode_t mode)
{
	int fd, ret;

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
		  mode);
	if (fd < 0)
		return -errno;
	ret = fchmod(fd, mode) ? -errno : 0;
	if (!ret)
		ret = write_all(fd, buf, len);
	if (!ret && fsync(fd))
		ret = -errno;
	if (close(fd) && !ret)
		ret = -errno;
	if (!ret && rename(tmp, dst))
		ret = -errno;
	if (ret) {
		unlink(tmp);
		return ret;
	}
	return vhdx_fsync_dir(dir);
}

int fs_write_atomic(const char *dir, const char *name, const void *buf,
		    size_t len)
{
	char tmp[4096], dst[4096];

	if ((size_t)snprintf(dst, sizeof(dst), "%s/%s", dir, name) >=
		    sizeof(dst) ||
	    (size_t)snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name) >=
		    sizeof(tmp))
		return -ENAMETOOLONG;
	return replace_file(dir, tmp, dst, buf, len, 0600);
}

int fs_write_shared(const char *dir, const char *name, const void *buf,
		    size_t len, mode_t mode)
{
	char tmp[4096], dst[4096];

	if ((size_t)snprintf(dst, sizeof(dst), "%s/%s", dir, name) >=
		    sizeof(dst) ||
	    (size_t)snprintf(tmp, sizeof(tmp), "%s/.%s.%ld.tmp", dir, name,
			     (long)getpid()) >= sizeof(tmp))
		return -ENAMETOOLONG;
	return replace_file(dir, tmp, dst, buf, len, mode);
}

int fs_read_small(const char *dir, const char *name, char **out, size_t *len)
{
	char path[4096];
	struct stat st;
	char *buf;
	size_t got = 0;
	ssize_t n;
	int fd, ret;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >=
	    sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		ret = -errno;
		close(fd);
		return ret;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > READ_SMALL_MAX) {
		close(fd);
		return -EINVAL;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (got < (size_t)st.st_size) {
		n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	buf[got] = '\0';
	*out = buf;
	*len = got;
	return 0;
}
