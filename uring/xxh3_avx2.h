/* SPDX-License-Identifier: MIT */
/* xxh3_avx2.h - XXH3-128 built for AVX2 (xxh3_avx2.c); hash.c's only. */
#ifndef HVRESYNC_URING_XXH3_AVX2_H
#define HVRESYNC_URING_XXH3_AVX2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* XXH3_SECRET_DEFAULT_SIZE: the secret XXH3_generateSecret_fromSeed()
 * makes, which turns _withSecretandSeed() into _withSeed() without
 * deriving the secret again for every block. */
#define UR_XXH3_SECRET_SIZE 192

/* Whether this CPU runs ur_xxh3_avx2_128(). */
bool ur_xxh3_avx2_usable(void);
/* XXH3_128bits_withSeed(@data, @len, @seed) in canonical (big-endian)
 * byte order; @secret from XXH3_generateSecret_fromSeed(@seed). */
void ur_xxh3_avx2_128(const void *data, size_t len, const uint8_t *secret,
		      uint64_t seed, uint8_t out[16]);

#endif
