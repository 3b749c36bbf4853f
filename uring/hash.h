/* SPDX-License-Identifier: MIT */
/*
 * hash.h - compare-block hashes.  The default is XXH3-128 keyed with a
 * per-run random seed, so a guest that knows the algorithm still cannot
 * plant two different blocks with the same hash; SHA-256 (OpenSSL) is
 * there for those who want a cryptographic hash.  A hash depends on the
 * bytes of the block only, never on where an image stores them.
 */
#ifndef HVRESYNC_URING_HASH_H
#define HVRESYNC_URING_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ur_hash_algo {
	UR_HASH_XXH3_128,
	UR_HASH_SHA256,
};

#define UR_HASH_MAX 32

/* Unused trailing bytes are zero, so memcmp of the whole struct works. */
struct ur_hash {
	uint8_t b[UR_HASH_MAX];
};

/* "xxh3" (also "xxh3-128", "xxh128") or "sha256"; 0 or -EINVAL. */
int ur_hash_parse(const char *name, enum ur_hash_algo *out);
const char *ur_hash_name(enum ur_hash_algo algo);
unsigned ur_hash_len(enum ur_hash_algo algo);

/* A random 64-bit seed from getrandom(); 0 or a negative errno. */
int ur_hash_random_seed(uint64_t *seed);

/*
 * One hasher per thread: it keeps the OpenSSL context between blocks.
 * The seed keys XXH3; SHA-256 is unkeyed.
 */
struct ur_hasher;

int ur_hasher_new(enum ur_hash_algo algo, uint64_t seed,
		  struct ur_hasher **out);
void ur_hasher_free(struct ur_hasher *h);
/* 0 or a negative errno (only SHA-256 can fail). */
int ur_hasher_hash(struct ur_hasher *h, const void *data, size_t len,
		   struct ur_hash *out);
/* The hash of LEN zero bytes (what an unallocated block hashes to). */
int ur_hasher_zero(struct ur_hasher *h, size_t len, struct ur_hash *out);

static inline bool ur_hash_equal(const struct ur_hash *a,
				 const struct ur_hash *b)
{
	unsigned i;

	for (i = 0; i < UR_HASH_MAX; i++)
		if (a->b[i] != b->b[i])
			return false;
	return true;
}

/* Lower-case hex of the algorithm's length; OUT holds 2 * UR_HASH_MAX + 1. */
void ur_hash_hex(enum ur_hash_algo algo, const struct ur_hash *h, char *out);

#endif
