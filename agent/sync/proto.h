/* SPDX-License-Identifier: MIT */
/*
 * proto.h - hvresync protocol version 1 frames and messages (the contract
 * is docs/protocol.md): the 12-byte header, per-type limits, message
 * structs, pure encode/decode (proto.c, no I/O and no TLS), and
 * sending/receiving over a struct conn (wire.c, which links tls.c).
 *
 * Decoding never trusts a length: the header is checked (magic, type, flag
 * bits, length against the type's limit) before any payload is read, and
 * each payload's inner counts and lengths must add up to exactly the
 * frame length.  Errors: -EPROTO (malformed; err->msg says why),
 * -EMSGSIZE (longer than the type allows or than the caller's buffer),
 * -EPROTONOSUPPORT (a well-formed HELLO asking for a version or option we
 * do not have: answer ERROR 4), -ECONNRESET/-EPIPE (connection closed),
 * or another -errno from the transport.
 */
#ifndef HVRESYNC_PROTO_H
#define HVRESYNC_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vhdx/vhdx.h"

struct conn; /* agent/sync/tls.h */

#define PROTO_MAGIC 0x5248u /* "HR" little-endian */
#define PROTO_VERSION 1u
#define PROTO_HDR_LEN 12u

enum proto_type {
	PROTO_HELLO = 1,
	PROTO_WELCOME = 2,
	PROTO_ERROR = 3,
	PROTO_HASHES = 4,
	PROTO_CREDIT = 5,
	PROTO_SUBREQ = 6,
	PROTO_SUBHASHES = 7,
	PROTO_DATA = 8,
	PROTO_ZERO = 9,
	PROTO_DONE = 10,
	PROTO_FINISHED = 11,
};
#define PROTO_TYPE_MAX 11

/* Frame flags (header byte 3). */
#define PROTO_DATA_ZSTD 0x01u /* DATA: payload data is zstd */

/* HELLO flags (payload field). */
#define PROTO_HELLO_RESTART 0x01u
#define PROTO_HELLO_CHECK 0x02u
#define PROTO_HELLO_HOLD 0x04u
#define PROTO_HELLO_MERGE 0x08u
#define PROTO_HELLO_DISCARD 0x10u
/* With HOLD: keep the held child but compare from offset 0 again (a
 * further pass after the source changed during the last one). */
#define PROTO_HELLO_REPASS 0x20u
#define PROTO_HELLO_KNOWN 0x3Fu

/* HELLO hash algorithms. */
#define PROTO_HASH_XXH3_128 0
#define PROTO_HASH_SHA256 1

/* HASHES block kinds. */
#define PROTO_KIND_ZERO 0
#define PROTO_KIND_DATA 1

/* ERROR codes. */
#define PROTO_ERR_UNKNOWN_EXPORT 1
#define PROTO_ERR_BUSY 2
#define PROTO_ERR_GEOMETRY 3
#define PROTO_ERR_UNSUPPORTED 4
#define PROTO_ERR_IO 5
#define PROTO_ERR_PROTOCOL 6
#define PROTO_ERR_INTERNAL 7
/* The recovery image is held by another program, view or session
 * (vhdx_lock()): not retried. */
#define PROTO_ERR_IN_USE 8
/* The peer authenticated, but its key or certificate is not allowed for
 * the VM of the export it named (issue 15): nothing was read or written,
 * and trying again will not help. */
#define PROTO_ERR_NOT_AUTHORIZED 9

/* Sizes from docs/protocol.md. */
#define PROTO_HASH_LEN 16u
#define PROTO_HASH_ENTRY_LEN 17u  /* kind u8 + hash u8[16] */
#define PROTO_HASHES_MAX 4096u	  /* entries per HASHES frame */
#define PROTO_SUBBLOCK 4096u	  /* SUBHASHES granularity */
#define PROTO_SUBHASHES_MAX 1024u /* so blocks are at most 4 MiB */
#define PROTO_BLOCK_MIN 4096u
#define PROTO_BLOCK_MAX (PROTO_SUBBLOCK * PROTO_SUBHASHES_MAX)
#define PROTO_DATA_MAX (4u << 20)    /* bytes one DATA frame covers */
#define PROTO_DATA_SLACK (64u << 10) /* zstd's worst-case growth */
#define PROTO_NAME_MAX 255u
#define PROTO_ERRMSG_MAX 1024u
#define PROTO_SECTOR 512u /* DATA/ZERO alignment */

/* Fixed payload parts. */
#define PROTO_HELLO_FIXED 46u
#define PROTO_WELCOME_LEN 28u
#define PROTO_ERROR_FIXED 6u
#define PROTO_HASHES_FIXED 12u
#define PROTO_CREDIT_LEN 12u
#define PROTO_SUBREQ_LEN 8u
#define PROTO_SUBHASHES_FIXED 12u
#define PROTO_DATA_FIXED 12u
#define PROTO_ZERO_LEN 16u
#define PROTO_FINISHED_LEN 12u

/* The largest payload of any type: a receive buffer of this size fits all. */
#define PROTO_MAX_PAYLOAD (PROTO_DATA_FIXED + PROTO_DATA_MAX + PROTO_DATA_SLACK)

/* A frame header, decoded. */
struct frame {
	uint8_t type;
	uint8_t flags;
	uint32_t length; /* payload bytes */
	uint32_t crc;	 /* CRC-32C of the payload */
};

struct msg_hello {
	uint32_t version;
	uint32_t flags; /* PROTO_HELLO_* */
	uint32_t block_size;
	uint8_t hash; /* PROTO_HASH_* */
	uint8_t seed[16];
	uint64_t virtual_size;
	uint32_t logical_sector;
	uint16_t name_len;
	char name[PROTO_NAME_MAX + 1]; /* NUL-terminated copy */
};

struct msg_welcome {
	uint32_t version;
	uint64_t virtual_size;
	uint32_t logical_sector;
	uint64_t resume_offset;
	uint32_t window; /* blocks */
};

struct msg_error {
	uint32_t code; /* PROTO_ERR_* */
	uint16_t message_len;
	char message[PROTO_ERRMSG_MAX + 1]; /* NUL-terminated copy */
};

/*
 * count entries of PROTO_HASH_ENTRY_LEN bytes each (kind, hash[16]),
 * pointing into the payload buffer (decode) or the caller's (encode).
 */
struct msg_hashes {
	uint64_t first_block;
	uint32_t count;
	const uint8_t *entries;
};

struct msg_credit {
	uint32_t blocks;
	uint64_t done_through;
};

struct msg_subreq {
	uint64_t block;
};

/* count hashes of PROTO_HASH_LEN bytes, one per 4 KiB of the block. */
struct msg_subhashes {
	uint64_t block;
	uint32_t count;
	const uint8_t *hashes;
};

/*
 * length is what the data covers on disk; data/data_len is the payload
 * part as sent (equal to length unless compressed).
 */
struct msg_data {
	uint64_t offset;
	uint32_t length;
	bool compressed; /* frame flag PROTO_DATA_ZSTD */
	const uint8_t *data;
	uint32_t data_len;
};

struct msg_zero {
	uint64_t offset;
	uint64_t length;
};

struct msg_finished {
	uint64_t bytes_written;
	uint32_t seconds_merge;
};

struct msg {
	uint8_t type; /* enum proto_type */
	union {
		struct msg_hello hello;
		struct msg_welcome welcome;
		struct msg_error error;
		struct msg_hashes hashes;
		struct msg_credit credit;
		struct msg_subreq subreq;
		struct msg_subhashes subhashes;
		struct msg_data data;
		struct msg_zero zero;
		struct msg_finished finished;
	} u;
};

/* Whether @type is one of enum proto_type. */
bool proto_known_type(unsigned type);
/* "HELLO", "DATA", ... or "type 42". */
const char *proto_type_name(unsigned type);
/* Largest payload a frame of @type may carry (0 for DONE); 0 if unknown. */
uint32_t proto_limit(unsigned type);
/* Flag bits defined for frames of @type. */
uint8_t proto_known_flags(unsigned type);

/* Write a 12-byte header for @type/@flags/@len with @crc. */
void proto_put_header(uint8_t hdr[PROTO_HDR_LEN], uint8_t type, uint8_t flags,
		      uint32_t len, uint32_t crc);
/*
 * Parse and check a header: magic, known type, no unknown flag bits,
 * length within the type's limit (-EMSGSIZE when over).
 */
int proto_parse_header(const uint8_t hdr[PROTO_HDR_LEN], struct frame *f,
		       struct vhdx_error *err);

/*
 * Check and decode a payload of @len bytes.  Pure: no I/O, no allocation;
 * pointers in @out (entries, hashes, data) point into @payload.  For a
 * HELLO with another version, unknown flag bits or an unknown hash,
 * returns -EPROTONOSUPPORT with out->u.hello.version (and as much as could
 * be read) filled in, so the caller can answer ERROR 4.
 */
int proto_decode(uint8_t type, uint8_t flags, const void *payload, size_t len,
		 struct msg *out, struct vhdx_error *err);

/*
 * Encode @m's payload into @buf (at most @cap bytes) and report the frame
 * flags.  Returns the payload length, or -EINVAL (with err->msg) for a
 * message proto_decode() would refuse, -EMSGSIZE when @cap is too small.
 */
long proto_encode(const struct msg *m, void *buf, size_t cap, uint8_t *flags,
		  struct vhdx_error *err);

/* The largest fixed part of any payload (HELLO's 46 bytes, rounded up). */
#define PROTO_FIXED_MAX 64u

/*
 * A payload as two pieces, so a sender need not copy the variable part:
 * the fixed fields encoded in @fixed, then @tail_len bytes at @tail
 * (name, message, entries, hashes or data, pointing into the message).
 */
struct proto_parts {
	uint8_t fixed[PROTO_FIXED_MAX];
	size_t fixed_len;
	const void *tail;
	size_t tail_len;
	uint8_t flags; /* frame flags */
};

/* proto_encode() without the copy: 0 or -EINVAL (with err->msg). */
int proto_encode_parts(const struct msg *m, struct proto_parts *pp,
		       struct vhdx_error *err);

/*
 * ---- frames over a connection (wire.c) ----
 *
 * These need the transport (tls.c); everything above is pure.
 */

/* Send one frame whose payload is @len bytes at @payload. */
int proto_send(struct conn *c, uint8_t type, uint8_t flags, const void *payload,
	       size_t len, struct vhdx_error *err);
/* Send one frame whose payload is the concatenation of @iov[0..n). */
int proto_sendv(struct conn *c, uint8_t type, uint8_t flags,
		const struct iovec *iov, int n, struct vhdx_error *err);
/*
 * Send @m (checked as by proto_encode).  Variable parts (name, message,
 * entries, hashes, data) are sent from where they are, not copied.
 */
int proto_send_msg(struct conn *c, const struct msg *m, struct vhdx_error *err);

/*
 * A batch gathers small frames into one write: one system call and one
 * TLS record instead of one per frame.  Whoever batches must flush before
 * it waits for the peer, or both sides wait.  A frame too big for the
 * batch goes out at once, after what the batch held.
 */
struct proto_batch {
	uint8_t *buf;
	size_t len, cap;
	uint64_t since; /* CLOCK_MONOTONIC ns of the oldest frame held */
};

int proto_batch_init(struct proto_batch *b, size_t cap);
void proto_batch_free(struct proto_batch *b);
/* Add @m (checked as by proto_encode); writes the batch out when full. */
int proto_batch_msg(struct conn *c, struct proto_batch *b, const struct msg *m,
		    struct vhdx_error *err);
int proto_batch_flush(struct conn *c, struct proto_batch *b,
		      struct vhdx_error *err);
/* How long the oldest frame held has waited (0: empty). */
uint64_t proto_batch_age_ns(const struct proto_batch *b);

/*
 * Receive one frame: header checked before the payload is read (-EMSGSIZE
 * when longer than @cap), then the payload and its CRC.  Does not decode
 * the payload.  Messages read "peer ADDR: malformed frame: ...".
 */
int proto_recv(struct conn *c, struct frame *f, void *buf, size_t cap,
	       struct vhdx_error *err);
/* proto_recv() then proto_decode(); @m points into @buf. */
int proto_recv_msg(struct conn *c, struct msg *m, void *buf, size_t cap,
		   struct vhdx_error *err);

/* The kind and hash of HASHES entry @i (no bounds check: i < count). */
static inline uint8_t proto_hash_kind(const struct msg_hashes *h, uint32_t i)
{
	return h->entries[(size_t)i * PROTO_HASH_ENTRY_LEN];
}

static inline const uint8_t *proto_hash_at(const struct msg_hashes *h,
					   uint32_t i)
{
	return h->entries + (size_t)i * PROTO_HASH_ENTRY_LEN + 1;
}

#endif
