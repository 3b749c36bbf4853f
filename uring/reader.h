/* SPDX-License-Identifier: MIT */
/*
 * reader.h - the io_uring reader: streams one or more virtual disks as
 * fixed-size compare blocks, in order, each with its hash.
 *
 * Each source's extent map is walked once.  Blocks that read as zeros in
 * full cost no I/O (their hash is known in advance); the others are read
 * into registered buffers, several compare blocks per read when the data is
 * contiguous in the file, with many reads in flight.  A few worker threads
 * ("lanes", one per CPU by default), each with its own ring, read and then
 * hash what they read while it is still in their cache, so both cores stay
 * busy whether reading or hashing is the bottleneck.  Memory is bounded by
 * the buffer window, whatever the disk size.
 *
 * The consumer pulls blocks in order from each stream:
 *
 *	while ((ret = ur_stream_peek(s, &b)) > 0) {
 *		use(b.hash, b.data);       // data valid until the release
 *		ur_stream_release(s, 1);   // or b.run to skip a zero run
 *	}
 *
 * All streams of one engine advance together: the lanes keep them within
 * the window of each other, so a consumer that walks two streams in step
 * (verify) never waits on a buffer it holds itself.
 */
#ifndef HVRESYNC_URING_READER_H
#define HVRESYNC_URING_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uring/blocks.h"
#include "uring/hash.h"
#include "uring/source.h"

#define UR_MAX_STREAMS 4
#define UR_SUB_BLOCK 4096u

#define UR_DEFAULT_BLOCK (64u << 10)
#define UR_DEFAULT_QUEUE_DEPTH 16
#define UR_DEFAULT_CHUNK (256u << 10)
/* For a source on FUSE, where each read is a request to a server (and
 * hvresync's raw views take up to 1 MiB per request): a quarter of the
 * requests, and of the server's time spent per request. */
#define UR_FUSE_CHUNK (1u << 20)
#define UR_DEFAULT_WINDOW (16u << 20)

struct ur_config {
	uint32_t block_size; /* compare block: a power of two >= 512 */
	enum ur_hash_algo hash;
	uint64_t seed; /* XXH3 key; random unless seed_set */
	bool seed_set;
	unsigned queue_depth;	   /* reads in flight per stream; 0: default */
	uint32_t chunk_size;	   /* largest read; 0: default (>= block) */
	uint64_t window;	   /* buffer bytes per stream; 0: default */
	unsigned threads;	   /* lanes; 0: one per online CPU */
	bool direct;		   /* O_DIRECT where offsets allow it */
	bool direct_views;	   /* the same, for views only: files on FUSE
				    * and block devices made of loop devices
				    * (their data is cached already, in the
				    * files behind them) */
	bool direct_uncached;	   /* a read the page cache holds whole
				    * goes through it, any other one with
				    * O_DIRECT: a cold disk is read without
				    * filling the cache */
	bool sub_hashes;	   /* also hash each 4 KiB of data blocks */
	bool sub_hashes_unlocated; /* with sub_hashes: only of the blocks
				    * ur_block.fd cannot place (a consumer
				    * reads the others again if it needs
				    * their pieces' hashes) */
	bool no_uring;		   /* plain pread() instead (tests; used by
				    * itself where io_uring is not allowed) */
};

/* One compare block, as ur_stream_peek() hands it out. */
struct ur_block {
	uint64_t index;
	uint64_t off;	     /* virtual offset: index * block_size */
	uint32_t len;	     /* block_size, less for the disk's last block */
	bool zero;	     /* reads as zeros in full; nothing was read */
	struct ur_hash hash; /* of the block's LEN bytes */
	const uint8_t *data; /* NULL when zero; else valid until released */
	const struct ur_hash *sub; /* sub_hashes: one per 4 KiB (the last may
				    * be short); NULL when zero, or placed
				    * under sub_hashes_unlocated */
	unsigned nsub;
	uint64_t run; /* zero: zero blocks from here on (>= 1);
		       * data: 1 */
	/* Where all of DATA was read from through the page cache, for a
	 * consumer that wants some of it again after the release (a read
	 * there then costs a copy of what it asks for, not a disk read):
	 * FD (the source's own descriptor, open as long as the source) at
	 * FILE_OFF.  FD is -1 when the block was put together from several
	 * runs, memory or zeros, or read with O_DIRECT. */
	int fd;
	uint64_t file_off;
};

struct ur_stream_stats {
	uint64_t bytes_read;  /* read from files */
	uint64_t bytes_data;  /* in blocks that were read (or copied) */
	uint64_t blocks_data; /* blocks assembled in a buffer and hashed */
	uint64_t blocks_zero; /* blocks known to be zeros, never read */
};

struct ur_engine;
struct ur_stream;

/* Read the views among the N sources SRC as they read best: around the
 * page cache (direct_views), and a file on FUSE in UR_FUSE_CHUNK reads
 * unless CFG already names a chunk size.  For readers of what
 * mount-and-resync shows (push, verify); before ur_engine_new(). */
void ur_config_views(struct ur_config *cfg, struct ur_source *const *src,
		     unsigned n);

/* Checks CFG (block size, hash) and fills in defaults; ERR gets one line. */
int ur_engine_new(const struct ur_config *cfg, struct ur_engine **out,
		  char *err, size_t errlen);
/* Add a source to stream (before ur_engine_start); the engine does not
 * own SRC, which must stay open until ur_engine_free(). */
int ur_engine_add(struct ur_engine *e, struct ur_source *src,
		  struct ur_stream **out);
/* The same, streaming from block FIRST_BLOCK on (a resumed session reads
 * nothing below it); blocks keep their indexes. */
int ur_engine_add_from(struct ur_engine *e, struct ur_source *src,
		       uint64_t first_block, struct ur_stream **out);
/* Allocate and register the buffers and start the lanes. */
int ur_engine_start(struct ur_engine *e);
/* Stop the lanes, wait for reads in flight, free everything. */
void ur_engine_free(struct ur_engine *e);

/* The first error, as one line naming the file and offset ("" if none). */
const char *ur_engine_error(const struct ur_engine *e);
/* The configuration in effect (defaults filled, seed chosen). */
const struct ur_config *ur_engine_config(const struct ur_engine *e);
/* Lanes and buffer bytes actually used, for reports. */
unsigned ur_engine_threads(const struct ur_engine *e);
uint64_t ur_engine_buffer_bytes(const struct ur_engine *e);
/* False when the lanes fell back to pread() (io_uring not permitted). */
bool ur_engine_uses_io_uring(const struct ur_engine *e);

/*
 * The hash of LEN zero bytes under the engine's algorithm and seed (what a
 * zero block of that length hashes to).  Consumer thread only.
 */
int ur_engine_zero_hash(struct ur_engine *e, size_t len, struct ur_hash *out);

/*
 * The next block of S, waiting for it if needed.  Returns 1 with *B
 * filled, 0 at the end of the disk, or a negative errno (the message is in
 * ur_engine_error()).  Peeking again without a release returns the same
 * block.
 */
int ur_stream_peek(struct ur_stream *s, struct ur_block *b);
/* Done with the next N blocks (N may cover a whole zero run). */
void ur_stream_release(struct ur_stream *s, uint64_t n);

uint64_t ur_stream_size(const struct ur_stream *s);
uint64_t ur_stream_blocks(const struct ur_stream *s);
void ur_stream_stats(struct ur_stream *s, struct ur_stream_stats *st);

#endif
