/* SPDX-License-Identifier: MIT */
/*
 * cached.h - whether a range of a file is in the page cache, asked
 * without reading it (the reader's direct_uncached).
 */
#ifndef HVRESYNC_URING_CACHED_H
#define HVRESYNC_URING_CACHED_H

#include <stddef.h>
#include <stdint.h>

struct ur_cache_probe {
	int fd;
	void *map; /* the file mapped, never touched: for mincore() */
	size_t map_len;
	size_t page; /* the kernel's page: what both calls count in */
};

/* Set up @p for @fd (which it does not own); 0 or a negative errno. */
int ur_cache_probe_init(struct ur_cache_probe *p, int fd);
void ur_cache_probe_fini(struct ur_cache_probe *p);
/* 1 when every page of [@off, @off + @len) is in the page cache, 0 when
 * one is not, a negative errno when the kernel cannot tell. */
int ur_range_cached(struct ur_cache_probe *p, uint64_t off, uint64_t len);
/* The same by mincore() alone: what kernels before 6.5 answer (tests). */
int ur_range_cached_mincore(struct ur_cache_probe *p, uint64_t off,
			    uint64_t len);

#endif
