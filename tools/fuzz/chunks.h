/* SPDX-License-Identifier: MIT */
/*
 * chunks.h - the compact input encoding of fuzz_vhdx, shared by the target
 * and by vhdx2chunks, which turns real images into seeds.
 *
 * A VHDX is at least a few MiB of mostly zeros, which libFuzzer can neither
 * hold well nor mutate usefully.  An input is therefore a file size and a
 * list of chunks written over a zero-filled file of that size:
 *
 *	u32 file size (little-endian; capped at FUZZ_CHUNKS_MAX_FILE; bit 31
 *	    is left to the target, see fuzz_vhdx.c)
 *	repeated: u32 file offset, u16 length, LENGTH bytes
 *
 * A chunk cut short by the end of the input keeps the bytes it has; bytes
 * past the file size are dropped, so every input decodes to some file.
 */
#ifndef HVRESYNC_FUZZ_CHUNKS_H
#define HVRESYNC_FUZZ_CHUNKS_H

#include <stddef.h>
#include <stdint.h>

#include "vhdx/le.h"

#define FUZZ_CHUNKS_MAX_FILE (512u << 20)
#define FUZZ_CHUNK_HDR 6
#define FUZZ_CHUNK_MAX 0xffffu

/* The file size an input asks for, or 0 when it is too short to say. */
static inline uint32_t fuzz_chunks_file_size(const uint8_t *in, size_t len)
{
	uint32_t size;

	if (len < 4)
		return 0;
	size = le32_get(in) & 0x7fffffffu;
	return size > FUZZ_CHUNKS_MAX_FILE ? FUZZ_CHUNKS_MAX_FILE : size;
}

/*
 * Call @put(ctx, offset, bytes, length) for each chunk of the input, clipped
 * to the file size.  Stops early when @put returns non-zero and returns that.
 */
static inline int fuzz_chunks_each(const uint8_t *in, size_t len,
				   int (*put)(void *ctx, uint32_t off,
					      const uint8_t *b, size_t n),
				   void *ctx)
{
	uint32_t size = fuzz_chunks_file_size(in, len), off;
	size_t pos = 4, n;
	int ret;

	while (pos + FUZZ_CHUNK_HDR <= len) {
		off = le32_get(in + pos);
		n = le16_get(in + pos + 4);
		pos += FUZZ_CHUNK_HDR;
		if (n > len - pos)
			n = len - pos;
		if (off < size) {
			size_t keep = n < size - off ? n : size - off;

			ret = put(ctx, off, in + pos, keep);
			if (ret)
				return ret;
		}
		pos += n;
	}
	return 0;
}

#endif
