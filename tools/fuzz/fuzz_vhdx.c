/* SPDX-License-Identifier: MIT */
/*
 * fuzz_vhdx.c - libFuzzer target for the VHDX opener (vhdx/): the file type
 * identifier, both headers, log replay into the in-memory overlay, region
 * tables, metadata, the BAT and its checks, sector bitmaps and the parent
 * locator; then the extent map over the whole virtual disk (resolved and
 * with VHDX_MAP_NO_RESOLVE) and reads through vhdx_pread, plus
 * vhdx_probe_fd and vhdx_read_current_header on the same file.
 *
 * The input is a chunk list (chunks.h) written over a zero-filled memfd,
 * which vhdx_open reaches as /proc/self/fd/N.  The parent of a
 * differencing disk is never looked up (VHDX_OPEN_NO_PARENT): a parent
 * search over the real file system would make runs depend on the machine.
 *
 * Mutated bytes in a header, region table or log entry would almost
 * always just break its CRC-32C, so by default the target recomputes those
 * checksums (where the signature is right) before opening: the fuzzer's
 * changes then reach the checks behind the checksum.  Bit 31 of the file
 * size word (chunks.h) turns this off, so refusals of bad checksums are
 * fuzzed as well.
 *
 * What is checked beyond "no crash, leak or out-of-bounds access": a
 * refusal is a negative errno with one non-empty line in struct vhdx_error,
 * and the extent map tiles the virtual disk (each run starts where the
 * last ended, is non-empty and inside the disk) with known kinds only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tools/fuzz/chunks.h"
#include "vhdx/format.h"
#include "vhdx/vhdx.h"

/* Bounds that keep one input to milliseconds: a virtual disk can be
 * terabytes of alternating block states. */
#define MAX_EXTENTS 2048
#define READ_LEN (64 * 1024)
#define RAW_CHECKSUMS (1u << 31)
#define MAX_FIXED_LOG (8u << 20) /* larger logs keep their checksums */

static int mfd = -1;
static char path[64];
static uint8_t *rbuf;

static int put(void *ctx, uint32_t off, const uint8_t *b, size_t n)
{
	(void)ctx;
	if (pwrite(mfd, b, n, off) != (ssize_t)n)
		abort(); /* a memfd write cannot fail short of memory */
	return 0;
}

/* Set the CRC-32C at @csum of @len bytes at @buf (the field counts as 0). */
static void set_crc(uint8_t *buf, size_t len, size_t csum)
{
	le32_put(buf + csum, 0);
	le32_put(buf + csum, vhdx_crc32c(buf, len));
}

/* Recompute the checksum of the structure of @len bytes at @off when it
 * carries signature @sig. */
static void fix_one(uint64_t off, size_t len, const char *sig, size_t csum)
{
	if (pread(mfd, rbuf, len, (off_t)off) != (ssize_t)len ||
	    memcmp(rbuf, sig, 4))
		return;
	set_crc(rbuf, len, csum);
	if (pwrite(mfd, rbuf, len, (off_t)off) != (ssize_t)len)
		abort();
}

static uint8_t *fix_buf;

/* Log entries of the log the header at @hdr names: an entry's checksum covers
 * its whole length, wrapping around the end of the circular log. */
static void fix_log(uint32_t fsize, off_t hdr)
{
	uint8_t h[VHDX_HEADER_SIZE], *log, *e;
	uint32_t len, off, elen, k, budget = MAX_FIXED_LOG;
	uint64_t at;

	if (pread(mfd, h, sizeof(h), hdr) != sizeof(h))
		return;
	len = le32_get(h + VHDX_HDR_LOG_LENGTH);
	at = le32_get(h + VHDX_HDR_LOG_OFFSET) |
	     (uint64_t)le32_get(h + VHDX_HDR_LOG_OFFSET + 4) << 32;
	if (!len || len > MAX_FIXED_LOG || len % VHDX_LOG_SECTOR ||
	    at > fsize || len > fsize - at)
		return;
	/* Allocated once: fresh megabytes each run cost page faults that
	 * took a quarter of the run time. */
	if (!fix_buf)
		fix_buf = malloc(2 * (size_t)MAX_FIXED_LOG);
	if (!fix_buf)
		abort();
	log = fix_buf;
	e = fix_buf + MAX_FIXED_LOG;
	if (pread(mfd, log, len, (off_t)at) != (ssize_t)len)
		return;
	/* Fixing every header of a log full of them would cost the square
	 * of its length: fix up to MAX_FIXED_LOG bytes' worth, leave the
	 * rest to the library. */
	for (off = 0; off < len; off += VHDX_LOG_SECTOR) {
		if (memcmp(log + off, VHDX_LOG_ENTRY_SIG, 4))
			continue;
		elen = le32_get(log + off + VHDX_LOGE_LENGTH);
		if (!elen || elen > len || elen % VHDX_LOG_SECTOR ||
		    elen > budget)
			continue;
		budget -= elen;
		for (k = 0; k < elen; k += VHDX_LOG_SECTOR)
			memcpy(e + k, log + (off + k) % len, VHDX_LOG_SECTOR);
		set_crc(e, elen, VHDX_LOGE_CHECKSUM);
		memcpy(log + off, e, VHDX_LOG_SECTOR);
	}
	if (pwrite(mfd, log, len, (off_t)at) != (ssize_t)len)
		abort();
}

static void fix_checksums(uint32_t fsize)
{
	fix_one(VHDX_HEADER1_OFFSET, VHDX_HEADER_SIZE, VHDX_HEADER_SIG,
		VHDX_HDR_CHECKSUM);
	fix_one(VHDX_HEADER2_OFFSET, VHDX_HEADER_SIZE, VHDX_HEADER_SIG,
		VHDX_HDR_CHECKSUM);
	fix_one(VHDX_REGION_TABLE1_OFFSET, VHDX_REGION_TABLE_SIZE,
		VHDX_REGION_SIG, 4);
	fix_one(VHDX_REGION_TABLE2_OFFSET, VHDX_REGION_TABLE_SIZE,
		VHDX_REGION_SIG, 4);
	fix_log(fsize, VHDX_HEADER1_OFFSET);
	fix_log(fsize, VHDX_HEADER2_OFFSET);
}

static void check_error_line(int ret, const struct vhdx_error *err,
			     const char *what)
{
	if (ret >= 0)
		return;
	if (!err->msg[0] || strchr(err->msg, '\n')) {
		fprintf(stderr, "%s refused (%d) with a bad message: '%s'\n",
			what, ret, err->msg);
		abort();
	}
}

/* The map must tile [0, virtual size) in non-empty runs of known kinds. */
static void walk(struct vhdx_image *img, uint64_t vsize, unsigned flags)
{
	struct vhdx_map_iter it;
	struct vhdx_extent e;
	uint64_t pos = 0;
	volatile uint8_t sink = 0;
	unsigned n = 0;
	int ret;

	vhdx_map_iter_init(&it, img, 0, vsize, flags);
	while (n++ < MAX_EXTENTS && (ret = vhdx_map_next(&it, &e)) == 1) {
		if (e.off != pos || e.len == 0 || e.off + e.len > vsize ||
		    e.off + e.len < e.off) {
			fprintf(stderr,
				"map run %llu+%llu after %llu (disk %llu)\n",
				(unsigned long long)e.off,
				(unsigned long long)e.len,
				(unsigned long long)pos,
				(unsigned long long)vsize);
			abort();
		}
		switch (e.kind) {
		case VHDX_EXT_DATA:
		case VHDX_EXT_ZERO:
		case VHDX_EXT_UNALLOC:
			break;
		case VHDX_EXT_MEM:
			/* Touch every byte: ASan checks the run is real. */
			for (uint64_t i = 0; i < e.len; i++)
				sink ^= ((const uint8_t *)e.mem)[i];
			break;
		case VHDX_EXT_PARENT:
			if (!(flags & VHDX_MAP_NO_RESOLVE)) {
				fprintf(stderr, "PARENT run while resolving\n");
				abort();
			}
			break;
		default:
			fprintf(stderr, "map run of kind %d\n", e.kind);
			abort();
		}
		pos = e.off + e.len;
	}
	(void)sink;
}

static void read_at(struct vhdx_image *img, uint64_t vsize, uint64_t off,
		    size_t len)
{
	ssize_t got;

	if (off >= vsize)
		return;
	got = vhdx_pread(img, rbuf, len, off);
	if (got > (ssize_t)len) {
		fprintf(stderr, "vhdx_pread returned %zd for %zu bytes\n", got,
			len);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct vhdx_info *in;
	struct vhdx_header_info h;
	struct vhdx_image *img;
	struct vhdx_error err;
	const char *why;
	uint64_t vsize, e, i;
	uint32_t fsize;
	int ret;

	if (mfd < 0) {
		mfd = memfd_create("fuzz_vhdx", MFD_CLOEXEC);
		rbuf = malloc(READ_LEN);
		if (mfd < 0 || !rbuf)
			abort();
		snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
	}
	fsize = fuzz_chunks_file_size(data, size);
	/* Truncating to 0 first zero-fills what the last input wrote. */
	if (ftruncate(mfd, 0) || ftruncate(mfd, fsize))
		abort();
	fuzz_chunks_each(data, size, put, NULL);
	if (size >= 4 && !(le32_get(data) & RAW_CHECKSUMS))
		fix_checksums(fsize);

	vhdx_probe_fd(mfd);
	ret = vhdx_read_current_header(mfd, &h, &why);
	if (ret < 0 && (!why || !why[0] || strchr(why, '\n')))
		abort();

	ret = vhdx_open(path, VHDX_OPEN_NO_PARENT, &img, &err);
	check_error_line(ret, &err, "vhdx_open");
	if (ret)
		return 0;
	in = vhdx_get_info(img);
	vsize = in->virtual_size;
	walk(img, vsize, 0);
	walk(img, vsize, VHDX_MAP_NO_RESOLVE);
	read_at(img, vsize, 0, READ_LEN);
	read_at(img, vsize, 1, 1000);
	if (vsize > READ_LEN)
		read_at(img, vsize, vsize - READ_LEN + 512, READ_LEN);
	read_at(img, vsize, vsize / 2, 4096);
	if (in->block_size)
		read_at(img, vsize, in->block_size - 512, 8192);
	for (i = 0; i < in->bat_entries && i < 4096; i++)
		if (vhdx_bat_entry(img, i, &e))
			abort();
	if (vhdx_bat_entry(img, in->bat_entries, &e) != -ERANGE)
		abort();
	vhdx_close(img);
	return 0;
}
