/* SPDX-License-Identifier: MIT */
/*
 * plan.h - turning an extent map into reads of compare blocks.
 *
 * A source describes its virtual disk as runs (bytes in a file, bytes in
 * memory, or zeros); the planner walks them in order and says, per compare
 * block, whether it reads as zeros in full (no I/O at all: its hash is
 * known) or which reads, copies and zero fills assemble it in a buffer.
 * Reads of adjacent blocks that are contiguous in one file are merged, so
 * a chunk of several blocks from one data run costs a single large read.
 *
 * Pure: the map is a callback, so the unit tests feed it made-up runs.
 */
#ifndef HVRESYNC_URING_PLAN_H
#define HVRESYNC_URING_PLAN_H

#include <stdbool.h>
#include <stdint.h>

enum ur_run_kind {
	UR_RUN_DATA, /* LEN bytes at FILE_OFF in FD */
	UR_RUN_MEM,  /* LEN bytes at MEM */
	UR_RUN_ZERO, /* reads as zeros: zero, unmapped, unallocated, hole */
};

struct ur_run {
	uint64_t off; /* virtual offset */
	uint64_t len;
	enum ur_run_kind kind;
	int fd;		   /* DATA */
	uint64_t file_off; /* DATA */
	const char *path;  /* DATA: the file named in error messages */
	const void *mem;   /* MEM */
};

/*
 * Describe the run that starts at virtual offset OFF, at most LEN bytes
 * (OFF < disk size, LEN > 0).  Returns 0 or a negative errno.
 */
typedef int (*ur_map_fn)(void *ctx, uint64_t off, uint64_t len,
			 struct ur_run *run);

/* Remembers the last run so consecutive blocks cost one map call. */
struct ur_cursor {
	ur_map_fn map;
	void *ctx;
	uint64_t size;
	struct ur_run run;
	bool valid;
};

static inline void ur_cursor_init(struct ur_cursor *c, ur_map_fn map, void *ctx,
				  uint64_t size)
{
	c->map = map;
	c->ctx = ctx;
	c->size = size;
	c->valid = false;
}

/* The run covering POS (< size), clipped to the disk.  0 or -errno
 * (-EIO when the map breaks its contract). */
int ur_cursor_at(struct ur_cursor *c, uint64_t pos, const struct ur_run **run);

/*
 * How many compare blocks from block-aligned POS on read as zeros in full,
 * at most MAX.  The disk's short last block counts when its bytes are all
 * in zero runs.  Returns the count or a negative errno.
 */
int64_t ur_zero_blocks(struct ur_cursor *c, uint64_t pos, uint32_t bs,
		       uint64_t max);

enum ur_op_kind {
	UR_OP_READ, /* read LEN bytes at FILE_OFF of FD into BUF_OFF */
	UR_OP_COPY, /* copy LEN bytes from MEM to BUF_OFF */
	UR_OP_FILL, /* zero LEN bytes at BUF_OFF */
};

struct ur_op {
	enum ur_op_kind kind;
	uint32_t buf_off;
	uint32_t len;
	int fd;
	uint64_t file_off;
	const char *path;
	const void *mem;

	/* Used by the reader while the op is in flight. */
	uint32_t done;
	uint32_t piece; /* largest read to ask for; 0: all that is left */
	unsigned retries;
	int fixed_fd; /* fd actually read (O_DIRECT twin or FD) */
	void *twin;   /* direct_uncached: FD's twin, whose cache probe the
		       * lane asks outside the engine's lock */
	void *chunk;
	struct ur_op *next;
};

/* The operations that assemble one chunk buffer. */
struct ur_oplist {
	struct ur_op *v;
	unsigned n, cap;
	uint64_t read_bytes;
	uint64_t data_bytes; /* bytes from DATA or MEM runs */
};

void ur_oplist_reset(struct ur_oplist *l);
void ur_oplist_free(struct ur_oplist *l);

/*
 * Append the operations that fill virtual [POS, POS + LEN) into a buffer at
 * BUF_OFF, merging with the previous operation where contiguous.  Returns
 * 0 or a negative errno (-ENOMEM, or a map error).
 */
int ur_plan_block(struct ur_cursor *c, uint64_t pos, uint32_t len,
		  uint32_t buf_off, struct ur_oplist *ops);

/*
 * Whether one read of OPS, through the page cache (its fixed_fd is its
 * fd: no O_DIRECT twin), brought all LEN bytes at BUF_OFF of the buffer;
 * then *FD and *FILE_OFF say where they lie.
 */
bool ur_oplist_locate(const struct ur_oplist *ops, uint32_t buf_off,
		      uint32_t len, int *fd, uint64_t *file_off);

#endif
