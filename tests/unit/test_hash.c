/* SPDX-License-Identifier: MIT */
/*
 * test_hash.c - the compare-block hashes give the values the protocol
 * defines whichever code computes them: the AVX2 build of XXH3-128
 * (xxh3_avx2.c) against libxxhash's XXH3_128bits_withSeed() as the
 * oracle, over every length class XXH3 treats differently, several
 * seeds, unaligned buffers and zero blocks; the baseline switch; SHA-256
 * against OpenSSL's one-shot digest.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/sha.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_generateSecret_fromSeed */
#include <xxhash.h>

#include "uring/hash.h"
#include "uring/xxh3_avx2.h"

#define BUF_MAX (4u << 20)

static uint8_t *buf;

static void fill(uint8_t *p, size_t n, uint32_t x)
{
	size_t i;

	for (i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (uint8_t)x;
	}
}

/* What the wire carries for XXH3: the canonical (big-endian) digest. */
static void oracle(const void *p, size_t len, uint64_t seed, uint8_t out[16])
{
	XXH128_canonical_t c;

	XXH128_canonicalFromHash(&c, XXH3_128bits_withSeed(p, len, seed));
	memcpy(out, c.digest, 16);
}

static void check_lengths(uint64_t seed, size_t misalign)
{
	static const size_t lens[] = {
		0,    1,    3,	   4,	  8,	 16,	   17,
		128,  129,  240,   241,	  1023,	 1024,	   4095,
		4096, 4097, 65535, 65536, 65537, 1u << 20, BUF_MAX - 64
	};
	struct ur_hasher *h;
	struct ur_hash got;
	uint8_t want[16];
	unsigned i;

	assert_int_equal(ur_hasher_new(UR_HASH_XXH3_128, seed, &h), 0);
	for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		const uint8_t *p = buf + misalign;

		oracle(p, lens[i], seed, want);
		assert_int_equal(ur_hasher_hash(h, p, lens[i], &got), 0);
		if (memcmp(got.b, want, 16))
			fail_msg("seed %#llx length %zu offset %zu: the "
				 "hash differs from libxxhash's",
				 (unsigned long long)seed, lens[i], misalign);
		/* the unused tail stays zero: whole-struct memcmp works */
		for (unsigned k = 16; k < UR_HASH_MAX; k++)
			assert_int_equal(got.b[k], 0);
	}
	ur_hasher_free(h);
}

static void test_xxh3_equals_library(void **state)
{
	static const uint64_t seeds[] = { 0, 1, 0x9e3779b97f4a7c15ull, ~0ull };
	unsigned i;

	(void)state;
	for (i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
		check_lengths(seeds[i], 0);
		check_lengths(seeds[i], 7);
	}
}

static void test_avx2_path_direct(void **state)
{
	uint8_t secret[UR_XXH3_SECRET_SIZE], got[16], want[16];
	size_t len;

	(void)state;
	if (!ur_xxh3_avx2_usable()) {
		print_message("SKIP: this CPU has no AVX2; the library's "
			      "code is what runs here\n");
		skip();
	}
	XXH3_generateSecret_fromSeed(secret, 42);
	for (len = 0; len < 5000; len += 37) {
		ur_xxh3_avx2_128(buf + 3, len, secret, 42, got);
		oracle(buf + 3, len, 42, want);
		assert_memory_equal(got, want, 16);
	}
}

static void test_zero_blocks(void **state)
{
	static const size_t lens[] = { 512, 4096, 65536, 4u << 20 };
	struct ur_hasher *h;
	struct ur_hash got;
	uint8_t *z = calloc(1, 4u << 20), want[16];
	unsigned i;

	(void)state;
	assert_non_null(z);
	assert_int_equal(ur_hasher_new(UR_HASH_XXH3_128, 77, &h), 0);
	for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		oracle(z, lens[i], 77, want);
		assert_int_equal(ur_hasher_zero(h, lens[i], &got), 0);
		assert_memory_equal(got.b, want, 16);
	}
	ur_hasher_free(h);
	free(z);
}

static void test_baseline_switch(void **state)
{
	struct ur_hasher *h;
	struct ur_hash got;
	uint8_t want[16];

	(void)state;
	setenv("HVRESYNC_XXH3", "baseline", 1);
	assert_int_equal(ur_hasher_new(UR_HASH_XXH3_128, 5, &h), 0);
	unsetenv("HVRESYNC_XXH3");
	assert_int_equal(ur_hasher_hash(h, buf, 65536, &got), 0);
	oracle(buf, 65536, 5, want);
	assert_memory_equal(got.b, want, 16);
	ur_hasher_free(h);
}

static void test_sha256(void **state)
{
	struct ur_hasher *h;
	struct ur_hash got;
	uint8_t want[SHA256_DIGEST_LENGTH];

	(void)state;
	assert_int_equal(ur_hasher_new(UR_HASH_SHA256, 123, &h), 0);
	assert_int_equal(ur_hasher_hash(h, buf, 65536, &got), 0);
	SHA256(buf, 65536, want);
	assert_memory_equal(got.b, want, sizeof(want));
	ur_hasher_free(h);
}

static int setup(void **state)
{
	(void)state;
	buf = malloc(BUF_MAX);
	if (!buf)
		return -1;
	fill(buf, BUF_MAX, 2463534242u);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	free(buf);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_xxh3_equals_library),
		cmocka_unit_test(test_avx2_path_direct),
		cmocka_unit_test(test_zero_blocks),
		cmocka_unit_test(test_baseline_switch),
		cmocka_unit_test(test_sha256),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
