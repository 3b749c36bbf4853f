/* SPDX-License-Identifier: MIT */
/* hash.c - compare-block hashes: seeded XXH3-128 or SHA-256. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <openssl/evp.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_generateSecret_fromSeed */
#include <xxhash.h>

#include "uring/hash.h"
#include "uring/xxh3_avx2.h"
#include "vhdx/vhdx.h"

struct ur_hasher {
	enum ur_hash_algo algo;
	uint64_t seed;
	bool avx2; /* XXH3 through xxh3_avx2.c */
	uint8_t secret[UR_XXH3_SECRET_SIZE];
	EVP_MD *md;
	EVP_MD_CTX *ctx;
};

/* HVRESYNC_XXH3=baseline keeps the library's code (for comparing). */
static bool want_avx2(void)
{
	const char *v = getenv("HVRESYNC_XXH3");

	return ur_xxh3_avx2_usable() && !(v && !strcmp(v, "baseline"));
}

int ur_hash_parse(const char *name, enum ur_hash_algo *out)
{
	if (!strcmp(name, "xxh3") || !strcmp(name, "xxh3-128") ||
	    !strcmp(name, "xxh128")) {
		*out = UR_HASH_XXH3_128;
		return 0;
	}
	if (!strcmp(name, "sha256") || !strcmp(name, "sha-256")) {
		*out = UR_HASH_SHA256;
		return 0;
	}
	return -EINVAL;
}

const char *ur_hash_name(enum ur_hash_algo algo)
{
	return algo == UR_HASH_SHA256 ? "sha256" : "xxh3";
}

unsigned ur_hash_len(enum ur_hash_algo algo)
{
	return algo == UR_HASH_SHA256 ? 32 : 16;
}

int ur_hash_random_seed(uint64_t *seed)
{
	return vhdx_random_bytes(seed, sizeof(*seed));
}

int ur_hasher_new(enum ur_hash_algo algo, uint64_t seed, struct ur_hasher **out)
{
	struct ur_hasher *h;

	*out = NULL;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->algo = algo;
	h->seed = seed;
	if (algo == UR_HASH_XXH3_128 && want_avx2()) {
		_Static_assert(UR_XXH3_SECRET_SIZE == XXH3_SECRET_DEFAULT_SIZE,
			       "the secret's size");
		h->avx2 = true;
		XXH3_generateSecret_fromSeed(h->secret, seed);
	}
	if (algo == UR_HASH_SHA256) {
		/* Fetch once: EVP_sha256() would look the provider up on
		 * every block. */
		h->md = EVP_MD_fetch(NULL, "SHA256", NULL);
		h->ctx = EVP_MD_CTX_new();
		if (!h->md || !h->ctx) {
			ur_hasher_free(h);
			return -ENOMEM;
		}
	}
	*out = h;
	return 0;
}

void ur_hasher_free(struct ur_hasher *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	EVP_MD_free(h->md);
	free(h);
}

int ur_hasher_hash(struct ur_hasher *h, const void *data, size_t len,
		   struct ur_hash *out)
{
	memset(out, 0, sizeof(*out));
	if (h->avx2) {
		ur_xxh3_avx2_128(data, len, h->secret, h->seed, out->b);
		return 0;
	}
	if (h->algo == UR_HASH_XXH3_128) {
		XXH128_hash_t x = XXH3_128bits_withSeed(data, len, h->seed);
		XXH128_canonical_t c;

		XXH128_canonicalFromHash(&c, x);
		memcpy(out->b, c.digest, sizeof(c.digest));
		return 0;
	}
	if (EVP_DigestInit_ex2(h->ctx, h->md, NULL) != 1 ||
	    EVP_DigestUpdate(h->ctx, data, len) != 1 ||
	    EVP_DigestFinal_ex(h->ctx, out->b, NULL) != 1)
		return -EIO;
	return 0;
}

int ur_hasher_zero(struct ur_hasher *h, size_t len, struct ur_hash *out)
{
	void *zeros;
	int ret;

	if (!len)
		return ur_hasher_hash(h, "", 0, out);
	/* Untouched anonymous memory reads as the shared zero page: hashing
	 * even a 4 MiB block of zeros costs no resident memory. */
	zeros = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (zeros == MAP_FAILED)
		return -errno;
	ret = ur_hasher_hash(h, zeros, len, out);
	munmap(zeros, len);
	return ret;
}

void ur_hash_hex(enum ur_hash_algo algo, const struct ur_hash *h, char *out)
{
	static const char hex[] = "0123456789abcdef";
	unsigned i, n = ur_hash_len(algo);

	for (i = 0; i < n; i++) {
		out[2 * i] = hex[h->b[i] >> 4];
		out[2 * i + 1] = hex[h->b[i] & 15];
	}
	out[2 * n] = '\0';
}
