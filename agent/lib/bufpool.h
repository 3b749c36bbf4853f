/* SPDX-License-Identifier: MIT */
/*
 * bufpool.h - a pool of equal-sized buffers carved from slabs that are
 * mapped with their pages already present (MAP_POPULATE): one system call
 * per slab instead of a page fault per 4 KiB the first time each buffer is
 * written, which costs several microseconds apiece on a virtual machine.
 * Buffers are given back to the pool (which cannot fail), and the slabs
 * only at its end.
 * Not thread-safe: one owner.
 */
#ifndef HVRESYNC_LIB_BUFPOOL_H
#define HVRESYNC_LIB_BUFPOOL_H

#include <stddef.h>

struct bufpool {
	size_t size;	 /* of a buffer, rounded up to 64 bytes */
	size_t per_slab; /* buffers in one slab */
	void **slabs;	 /* mapped slabs */
	unsigned nslabs, slabs_cap;
	void **free; /* given back, ready again */
	size_t nfree, free_cap;
	size_t carved; /* buffers taken from the newest slab */
};

/* A pool of @size-byte buffers in slabs of about @slab_bytes (at least one
 * buffer each).  0 or -EINVAL. */
int bufpool_init(struct bufpool *p, size_t size, size_t slab_bytes);

/* A buffer (its contents left over from an earlier use), or NULL when
 * memory ran out. */
void *bufpool_get(struct bufpool *p);

/* Give @buf, from bufpool_get() on this pool (or NULL), back. */
void bufpool_put(struct bufpool *p, void *buf);

/* Unmap every slab: every buffer of the pool is gone. */
void bufpool_free(struct bufpool *p);

#endif
