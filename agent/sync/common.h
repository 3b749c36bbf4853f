/* SPDX-License-Identifier: MIT */
/*
 * common.h - what both ends of the resync protocol must agree on
 * (docs/protocol.md), written once: the export-name rule and the "VM:disk"
 * names the agent gives its exports, the hash ids and seed of HELLO, the
 * window limits, the hashes of zeros and ERROR frames.  Pure functions
 * only, so the frame fuzzer links them without OpenSSL or io_uring; what
 * both ends set up the same way (TLS options, the reader) is in setup.h.
 */
#ifndef HVRESYNC_SYNC_COMMON_H
#define HVRESYNC_SYNC_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/sync/proto.h"
#include "uring/hash.h"

/*
 * The export-name rule, the only copy: 1-255 bytes of UTF-8, no '/', no
 * '=' (NAME=PATH on the command line), no control characters, not "." or
 * "..".  Returns NULL when @name (@len bytes, not NUL-terminated) obeys
 * it, else a short phrase saying what is wrong ("has a '/' or a control
 * character").
 */
const char *sync_export_name_problem(const char *name, size_t len);
bool sync_export_name_ok(const char *name);

/* The agent's export name of a VM's disk: "VM:FILE" with FILE the last
 * component of @disk_path.  0, -ENAMETOOLONG, or -EINVAL when the result
 * breaks the export-name rule. */
int sync_export_name(char *out, size_t outlen, const char *vm,
		     const char *disk_path);

/* HELLO's hash id (PROTO_HASH_*) of a reader algorithm, and back. */
uint8_t sync_hash_id(enum ur_hash_algo algo);
enum ur_hash_algo sync_hash_algo(uint8_t id);

/* The key both ends hash with: the first 8 bytes of HELLO's seed,
 * little-endian (docs/protocol.md). */
uint64_t sync_seed_key(const uint8_t seed[16]);

/*
 * The flow-control window in blocks: the recovery side announces one
 * within these bounds and the primary refuses anything larger, since the
 * window bounds the memory of both.
 */
#define SYNC_WINDOW_MIN 8u
#define SYNC_WINDOW_MAX (1u << 16)
#define SYNC_WINDOW_BYTES_MAX (256u << 20)

/* 4 KiB pieces in a block of @len bytes (the last piece may be short). */
static inline unsigned sync_nsub(uint32_t len)
{
	return (len + PROTO_SUBBLOCK - 1) / PROTO_SUBBLOCK;
}

/*
 * What zeros hash to under the session's key.  A block or piece that reads
 * as zeros is never read nor hashed, so both ends need these to compare
 * it; the disk's last block and last piece may be short.
 */
struct sync_zero_hashes {
	uint8_t block[PROTO_HASH_LEN];
	uint8_t block_last[PROTO_HASH_LEN];
	uint8_t sub[PROTO_HASH_LEN];
	uint8_t sub_last[PROTO_HASH_LEN];
};

/* The zero hash of a block of @len bytes (@bs: the block size), and of a
 * 4 KiB piece with @left bytes of its block from its start on (the piece
 * is short when @left is). */
const uint8_t *sync_zero_block_hash(const struct sync_zero_hashes *z,
				    uint32_t bs, uint32_t len);
const uint8_t *sync_zero_sub_hash(const struct sync_zero_hashes *z,
				  uint32_t left);

/* Fill @m as an ERROR frame with @code and a message (cut to fit). */
void sync_error_msg(struct msg *m, uint32_t code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void sync_error_vmsg(struct msg *m, uint32_t code, const char *fmt, va_list ap);

#endif
