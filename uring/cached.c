/* SPDX-License-Identifier: MIT */
/*
 * cached.c - whether a range of a file is in the page cache: cachestat(2)
 * where the kernel has it (6.5 on), else mincore(2) on a shared mapping
 * of the file that is never touched (so it cannot fault, nor SIGBUS when
 * the file shrinks).  Neither reads the file or starts read-ahead.  The
 * mincore() answer is only exact for a caller that may write the file
 * (the kernel hides other files' cache since 5.0); a caller that may not
 * is told "not cached" and so reads with O_DIRECT, which is correct, only
 * slower when the data was cached.
 */
#include <errno.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uring/cached.h"

#ifndef SYS_cachestat
#define SYS_cachestat 451 /* the same number on every architecture */
#endif

/* include/uapi/linux/mman.h, Linux 6.5 */
struct cs_range {
	uint64_t off;
	uint64_t len;
};

struct cs_stat {
	uint64_t nr_cache;
	uint64_t nr_dirty;
	uint64_t nr_writeback;
	uint64_t nr_evicted;
	uint64_t nr_recently_evicted;
};

/* cachestat() answered ENOSYS once: the kernel is older than 6.5 */
static bool no_cachestat;

int ur_cache_probe_init(struct ur_cache_probe *p, int fd)
{
	uint64_t size = 0;
	struct stat st;
	void *m;

	memset(p, 0, sizeof(*p));
	p->fd = fd;
	p->page = (size_t)sysconf(_SC_PAGESIZE);
	/* Mapped even where cachestat() answers: a mapping that is never
	 * touched costs address space only. */
	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISREG(st.st_mode))
		size = (uint64_t)st.st_size;
	else if (S_ISBLK(st.st_mode) && ioctl(fd, BLKGETSIZE64, &size) < 0)
		return -errno;
	if (!size || size > SIZE_MAX)
		return 0;
	m = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return -errno;
	p->map = m;
	p->map_len = (size_t)size;
	return 0;
}

void ur_cache_probe_fini(struct ur_cache_probe *p)
{
	if (p->map)
		munmap(p->map, p->map_len);
	p->map = NULL;
}

static int by_cachestat(struct ur_cache_probe *p, uint64_t off, uint64_t len)
{
	struct cs_range r = { off, len };
	struct cs_stat cs;
	uint64_t pages;

	if (syscall(SYS_cachestat, p->fd, &r, &cs, 0) < 0) {
		if (errno == ENOSYS)
			__atomic_store_n(&no_cachestat, true, __ATOMIC_RELAXED);
		return -errno;
	}
	pages = (off + len + p->page - 1) / p->page - off / p->page;
	return cs.nr_cache >= pages;
}

static int by_mincore(struct ur_cache_probe *p, uint64_t off, uint64_t len)
{
	size_t pg = p->page;
	unsigned char vec[256];
	uint64_t start, end;
	size_t i, n;

	if (!p->map || off >= p->map_len)
		return -ENOTSUP;
	if (len > p->map_len - off)
		len = p->map_len - off;
	start = off / pg * pg;
	end = off + len;
	while (start < end) {
		n = (size_t)((end - start + pg - 1) / pg);
		if (n > sizeof(vec))
			n = sizeof(vec);
		if (mincore((char *)p->map + start, n * pg, vec) < 0)
			return -errno;
		for (i = 0; i < n; i++)
			if (!(vec[i] & 1))
				return 0;
		start += (uint64_t)n * pg;
	}
	return 1;
}

int ur_range_cached_mincore(struct ur_cache_probe *p, uint64_t off,
			    uint64_t len)
{
	return len ? by_mincore(p, off, len) : 1;
}

int ur_range_cached(struct ur_cache_probe *p, uint64_t off, uint64_t len)
{
	int ret;

	if (!len)
		return 1;
	if (!__atomic_load_n(&no_cachestat, __ATOMIC_RELAXED)) {
		ret = by_cachestat(p, off, len);
		if (ret != -ENOSYS)
			return ret;
	}
	return by_mincore(p, off, len);
}
