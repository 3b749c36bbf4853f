/* SPDX-License-Identifier: MIT */
/*
 * setup.h - what both ends of a resync session set up the same way: the
 * transport-security options of `hvresync push`, `hvresync serve` and the
 * agent, and the io_uring reader each end runs over its own disk, with the
 * hashes of zeros under the session's key.  Apart from common.h because
 * these need OpenSSL and io_uring, which the frame fuzzer does without.
 */
#ifndef HVRESYNC_SYNC_SETUP_H
#define HVRESYNC_SYNC_SETUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/sync/common.h"
#include "agent/sync/tls.h"
#include "uring/reader.h"

/*
 * Build a tls_config from the usual options (shared by push, serve and
 * the agent): exactly one of @psk_file, @cert+@key+@ca, @insecure.  The
 * strings must outlive the config.  Loads and checks the key file.
 */
int push_security_config(struct tls_config *cfg, const char *psk_file,
			 const char *cert, const char *key, const char *ca,
			 bool insecure, char *err, size_t errlen);

/* The io_uring reader over one end's disk, and its zero hashes. */
struct sync_reader {
	struct ur_engine *eng;
	struct ur_stream *stream;
	struct sync_zero_hashes zero;
};

/* Which step of sync_reader_start() failed: the two ends report them
 * differently (a bad configuration is not an I/O error). */
enum sync_reader_step {
	SYNC_READER_CONFIG, /* ur_engine_new() refused the configuration */
	SYNC_READER_ADD,    /* the disk cannot be added (@msg: strerror) */
	SYNC_READER_READ,   /* the disk cannot be read */
	SYNC_READER_ZEROS,  /* the zero hashes */
};

/* A reader configuration for @block_size blocks keyed by HELLO's @hash_id
 * and @seed; the caller may set more (sub_hashes) before starting. */
void sync_reader_config(struct ur_config *cfg, uint32_t block_size,
			uint8_t hash_id, const uint8_t seed[16]);

/*
 * Start reading @src (@size bytes) from block @first_block on and compute
 * the zero hashes.  0, or a negative errno with @step and one line in @msg.
 * On failure too, sync_reader_free() is the way out.
 */
int sync_reader_start(struct sync_reader *r, const struct ur_config *cfg,
		      struct ur_source *src, uint64_t first_block,
		      uint64_t size, enum sync_reader_step *step, char *msg,
		      size_t msglen);
void sync_reader_free(struct sync_reader *r);

struct ur_hasher;

/* Both ends read a compare block again where the reader placed it
 * (ur_block.fd): pread() all @len bytes at @off.  0, or -errno (-ENODATA
 * when the file ends first). */
int sync_pread_full(int fd, uint8_t *buf, size_t len, uint64_t off);
/* What went wrong, for a message, from sync_pread_full()'s @ret. */
const char *sync_pread_error(int ret);

/* The sub-block hashes of @len bytes of one block (one PROTO_HASH_LEN
 * hash per 4 KiB, the last piece may be short) into @out.  0 or -errno. */
int sync_hash_pieces(struct ur_hasher *h, const uint8_t *data, uint32_t len,
		     uint8_t *out);

#endif
