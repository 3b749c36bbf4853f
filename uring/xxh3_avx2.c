/* SPDX-License-Identifier: MIT */
/*
 * xxh3_avx2.c - XXH3-128 compiled for AVX2, which Debian's libxxhash
 * (built for the x86-64 baseline, SSE2) does not use: hashing is most of
 * what verify and push spend their CPU on, and AVX2 halves it for 64 KiB
 * blocks.  xxHash gives the same values on every vector path, so a hash
 * made here equals the library's; hash.c calls this only when the CPU has
 * AVX2, and tests/unit/test_hash.c checks the two agree.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "uring/xxh3_avx2.h"

/* GCC's target pragma also turns on __AVX2__, which xxhash.h keys its
 * AVX2 code on; clang's does not (the fuzz build): there the library's
 * code runs. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2")
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

void ur_xxh3_avx2_128(const void *data, size_t len, const uint8_t *secret,
		      uint64_t seed, uint8_t out[16])
{
	XXH128_hash_t x = XXH3_128bits_withSecretandSeed(
		data, len, secret, UR_XXH3_SECRET_SIZE, seed);
	XXH128_canonical_t c;

	XXH128_canonicalFromHash(&c, x);
	memcpy(out, c.digest, sizeof(c.digest));
}
#pragma GCC pop_options

bool ur_xxh3_avx2_usable(void)
{
	return __builtin_cpu_supports("avx2");
}
#else
void ur_xxh3_avx2_128(const void *data, size_t len, const uint8_t *secret,
		      uint64_t seed, uint8_t out[16])
{
	(void)data, (void)len, (void)secret, (void)seed;
	memset(out, 0, 16);
}

bool ur_xxh3_avx2_usable(void)
{
	return false;
}
#endif
