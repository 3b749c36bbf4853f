/* SPDX-License-Identifier: MIT */
/*
 * vhdx2chunks.c - turn an image file into a fuzz_vhdx input (chunks.h):
 * its size and its non-zero runs, so that a seed of a 4 MiB image is a few
 * kilobytes.  Zero gaps shorter than MERGE_GAP stay inside a chunk (a
 * chunk header costs 6 bytes).  The structures (header section, log,
 * BAT, metadata, found from the first header and region table) are kept
 * whole; of anything else, payload data, only the first DATA_KEEP
 * non-zero bytes of each 1 MiB: the target cares that a block holds
 * something, not what, and a seed must stay small for libFuzzer.
 *
 *	vhdx2chunks IMAGE OUT
 */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/fuzz/chunks.h"

#define MERGE_GAP 64
#define MiB (1u << 20)
#define DATA_KEEP 4096u
#define MAX_KEEP 32 /* ranges kept whole */

struct range {
	uint64_t off, len;
};

/* The file ranges that are metadata, from the first header and region
 * table as they are (no checksums checked: a damaged image still makes a
 * seed). */
static unsigned structures(const uint8_t *img, uint64_t size, struct range *r)
{
	unsigned n = 0, i, count;
	const uint8_t *h, *rt;

	r[n++] = (struct range){ 0, MiB };
	if (size < MiB)
		return n;
	h = img + 64 * 1024;
	r[n++] = (struct range){ le64_get(h + 72), le32_get(h + 68) };
	h = img + 128 * 1024;
	r[n++] = (struct range){ le64_get(h + 72), le32_get(h + 68) };
	for (rt = img + 192 * 1024; rt <= img + 256 * 1024; rt += 64 * 1024) {
		count = le32_get(rt + 8);
		for (i = 0; i < count && i < 16 && n < MAX_KEEP; i++)
			r[n++] = (struct range){
				le64_get(rt + 16 + i * 32 + 16),
				le32_get(rt + 16 + i * 32 + 24)
			};
	}
	return n;
}

static bool in_structure(const struct range *r, unsigned n, uint64_t off)
{
	unsigned i;

	for (i = 0; i < n; i++)
		if (off >= r[i].off && off - r[i].off < r[i].len)
			return true;
	return false;
}

static int emit(FILE *out, const uint8_t *img, uint32_t off, uint32_t len)
{
	uint8_t hdr[FUZZ_CHUNK_HDR];

	while (len) {
		uint32_t n = len > FUZZ_CHUNK_MAX ? FUZZ_CHUNK_MAX : len;

		le32_put(hdr, off);
		le16_put(hdr + 4, (uint16_t)n);
		if (fwrite(hdr, sizeof(hdr), 1, out) != 1 ||
		    fwrite(img + off, n, 1, out) != 1)
			return -EIO;
		off += n;
		len -= n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	uint8_t *img = NULL, sz[4];
	struct stat st;
	FILE *in = NULL, *out = NULL;
	uint64_t i, start, zeros, kept = 0, window = ~0ull;
	struct range keep[MAX_KEEP];
	unsigned nkeep;
	int ret = 1;

	if (argc != 3) {
		fprintf(stderr, "usage: vhdx2chunks IMAGE OUT\n");
		return 2;
	}
	in = fopen(argv[1], "rb");
	if (!in || fstat(fileno(in), &st)) {
		fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
		goto out;
	}
	if ((uint64_t)st.st_size > FUZZ_CHUNKS_MAX_FILE) {
		fprintf(stderr,
			"%s: %lld bytes, more than the %u a seed holds\n",
			argv[1], (long long)st.st_size, FUZZ_CHUNKS_MAX_FILE);
		goto out;
	}
	img = malloc(st.st_size ? st.st_size : 1);
	if (!img || fread(img, 1, st.st_size, in) != (size_t)st.st_size) {
		fprintf(stderr, "%s: cannot read\n", argv[1]);
		goto out;
	}
	out = fopen(argv[2], "wb");
	if (!out) {
		fprintf(stderr, "%s: %s\n", argv[2], strerror(errno));
		goto out;
	}
	le32_put(sz, (uint32_t)st.st_size);
	if (fwrite(sz, 4, 1, out) != 1)
		goto werr;
	nkeep = structures(img, (uint64_t)st.st_size, keep);
	/* A run starts at a non-zero byte and ends after MERGE_GAP zeros, at
	 * a structure's edge or when its 1 MiB's data allowance is spent. */
	for (i = 0; i < (uint64_t)st.st_size;) {
		bool whole = in_structure(keep, nkeep, i);

		if (i / MiB != window) {
			window = i / MiB;
			kept = 0;
		}
		if (!img[i] || (!whole && kept >= DATA_KEEP)) {
			i++;
			continue;
		}
		start = i;
		zeros = 0;
		for (; i < (uint64_t)st.st_size && zeros < MERGE_GAP &&
		       in_structure(keep, nkeep, i) == whole &&
		       i / MiB == window && (whole || kept < DATA_KEEP);
		     i++) {
			zeros = img[i] ? 0 : zeros + 1;
			kept++;
		}
		if (emit(out, img, (uint32_t)start,
			 (uint32_t)(i - zeros - start)))
			goto werr;
	}
	if (fclose(out)) {
		out = NULL;
		goto werr;
	}
	out = NULL;
	ret = 0;
	goto out;
werr:
	fprintf(stderr, "%s: write failed\n", argv[2]);
out:
	if (out)
		fclose(out);
	if (in)
		fclose(in);
	free(img);
	return ret;
}
