/* SPDX-License-Identifier: MIT */
/*
 * frame_writer.h - the unit tests' own writer of the wire layout in
 * docs/protocol.md, byte by byte, so that expected frames never come
 * from the encoder under test.  Shared by test_proto.c and test_wire.c.
 */
#ifndef HVRESYNC_TEST_FRAME_WRITER_H
#define HVRESYNC_TEST_FRAME_WRITER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "agent/sync/proto.h"
#include "tests/unit/oracle.h"

struct wb {
	uint8_t b[PROTO_HDR_LEN + 80000];
	size_t n;
};

static inline void w8(struct wb *w, uint8_t v)
{
	w->b[w->n++] = v;
}

static inline void w16(struct wb *w, uint16_t v)
{
	w8(w, v & 0xff);
	w8(w, v >> 8);
}

static inline void w32(struct wb *w, uint32_t v)
{
	w16(w, v & 0xffff);
	w16(w, v >> 16);
}

static inline void w64(struct wb *w, uint64_t v)
{
	w32(w, (uint32_t)v);
	w32(w, (uint32_t)(v >> 32));
}

static inline void wbytes(struct wb *w, const void *p, size_t n)
{
	memcpy(w->b + w->n, p, n);
	w->n += n;
}

/* Header bytes for a payload, per the table in docs/protocol.md. */
static inline void frame_of(struct wb *out, uint8_t type, uint8_t flags,
			    const struct wb *payload)
{
	out->n = 0;
	w8(out, 'H'); /* magic 0x5248 little-endian is "HR" */
	w8(out, 'R');
	w8(out, type);
	w8(out, flags);
	w32(out, (uint32_t)payload->n);
	w32(out, ref_crc32c(payload->b, payload->n));
	wbytes(out, payload->b, payload->n);
}

#endif
