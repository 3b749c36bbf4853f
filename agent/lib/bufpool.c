/* SPDX-License-Identifier: MIT */
/*
 * bufpool.c - equal-sized buffers from prefaulted slabs (bufpool.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "agent/lib/bufpool.h"

int bufpool_init(struct bufpool *p, size_t size, size_t slab_bytes)
{
	*p = (struct bufpool){ 0 };
	if (!size)
		return -EINVAL;
	p->size = (size + 63) & ~(size_t)63;
	p->per_slab = slab_bytes / p->size;
	if (!p->per_slab)
		p->per_slab = 1;
	p->carved = p->per_slab; /* no slab yet */
	return 0;
}

/* The free list grows with the slabs, so that giving back never fails. */
static int new_slab(struct bufpool *p)
{
	size_t want = (p->nslabs + 1) * p->per_slab;
	void *s;

	if (p->nslabs == p->slabs_cap) {
		unsigned cap = p->slabs_cap ? 2 * p->slabs_cap : 8;
		void **n = realloc(p->slabs, cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		p->slabs = n;
		p->slabs_cap = cap;
	}
	if (p->free_cap < want) {
		void **n = realloc(p->free, want * sizeof(*n));

		if (!n)
			return -ENOMEM;
		p->free = n;
		p->free_cap = want;
	}
	s = mmap(NULL, p->size * p->per_slab, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (s == MAP_FAILED)
		return -ENOMEM;
	p->slabs[p->nslabs++] = s;
	p->carved = 0;
	return 0;
}

void *bufpool_get(struct bufpool *p)
{
	if (p->nfree)
		return p->free[--p->nfree];
	if (p->carved == p->per_slab && new_slab(p) < 0)
		return NULL;
	return (char *)p->slabs[p->nslabs - 1] + p->size * p->carved++;
}

void bufpool_put(struct bufpool *p, void *buf)
{
	if (buf)
		p->free[p->nfree++] = buf;
}

void bufpool_free(struct bufpool *p)
{
	unsigned i;

	for (i = 0; i < p->nslabs; i++)
		munmap(p->slabs[i], p->size * p->per_slab);
	free(p->slabs);
	free(p->free);
	*p = (struct bufpool){ 0 };
}
