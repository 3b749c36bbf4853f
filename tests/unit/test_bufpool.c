/* SPDX-License-Identifier: MIT */
/* test_bufpool.c - agent/lib/bufpool: the push's pending blocks live in
 * its buffers, so two outstanding buffers must never overlap, a given-back
 * one must come back before a new one is carved, and slabs must grow as
 * far as the outstanding buffers need. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <string.h>
#include <cmocka.h>

#include "agent/lib/bufpool.h"

static void test_init_rounds_and_refuses_zero(void **state)
{
	struct bufpool p;

	(void)state;
	assert_int_equal(bufpool_init(&p, 0, 1 << 20), -EINVAL);
	assert_int_equal(bufpool_init(&p, 65536 + 256, 1 << 20), 0);
	assert_int_equal(p.size % 64, 0);
	assert_true(p.size >= 65536 + 256);
	assert_int_equal(p.per_slab, (1 << 20) / p.size);
	bufpool_free(&p);
	/* a buffer bigger than a slab still gets a slab of its own */
	assert_int_equal(bufpool_init(&p, 3 << 20, 1 << 20), 0);
	assert_int_equal(p.per_slab, 1);
	bufpool_free(&p);
}

/* Many buffers out at once, across several slabs: each one writable to
 * its last byte, none overlapping another (each keeps its own pattern). */
static void test_outstanding_buffers_are_distinct(void **state)
{
	enum { N = 100, SIZE = 10000 };
	struct bufpool p;
	uint8_t *b[N];
	unsigned i, k;

	(void)state;
	assert_int_equal(bufpool_init(&p, SIZE, 64 << 10), 0);
	for (i = 0; i < N; i++) {
		b[i] = bufpool_get(&p);
		assert_non_null(b[i]);
		assert_int_equal((uintptr_t)b[i] % 64, 0);
		memset(b[i], (int)i, SIZE);
	}
	assert_true(p.nslabs >= N / p.per_slab);
	for (i = 0; i < N; i++)
		for (k = 0; k < SIZE; k += 997)
			assert_int_equal(b[i][k], (uint8_t)i);
	for (i = 0; i < N; i++)
		assert_int_equal(b[i][SIZE - 1], (uint8_t)i);
	bufpool_free(&p);
	assert_int_equal(p.nslabs, 0);
}

/* Given back, reused last in, first out, before any new slab. */
static void test_put_then_get_reuses(void **state)
{
	struct bufpool p;
	void *a, *b, *c;
	unsigned slabs;

	(void)state;
	assert_int_equal(bufpool_init(&p, 4096, 8192), 0);
	a = bufpool_get(&p);
	b = bufpool_get(&p);
	assert_non_null(a);
	assert_non_null(b);
	assert_ptr_not_equal(a, b);
	slabs = p.nslabs;
	bufpool_put(&p, a);
	bufpool_put(&p, b);
	bufpool_put(&p, NULL); /* nothing */
	c = bufpool_get(&p);
	assert_ptr_equal(c, b);
	c = bufpool_get(&p);
	assert_ptr_equal(c, a);
	assert_int_equal(p.nslabs, slabs);
	/* the slab is used up: the next one is new */
	c = bufpool_get(&p);
	assert_non_null(c);
	assert_int_equal(p.nslabs, slabs + 1);
	bufpool_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init_rounds_and_refuses_zero),
		cmocka_unit_test(test_outstanding_buffers_are_distinct),
		cmocka_unit_test(test_put_then_get_reuses),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
