/* SPDX-License-Identifier: MIT */
/*
 * source.h - what the reader reads: a VHDX (through its extent map) or a
 * raw image, block device or FUSE raw view (an identity map whose holes
 * come from SEEK_DATA/SEEK_HOLE).  A file is a VHDX when it starts with
 * the "vhdxfile" signature; anything else is raw.
 */
#ifndef HVRESYNC_URING_SOURCE_H
#define HVRESYNC_URING_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uring/blocks.h"
#include "uring/plan.h"
#include "vhdx/vhdx.h"

enum ur_source_type {
	UR_SRC_VHDX,
	UR_SRC_FILE,	 /* raw regular file (a FUSE view is one too) */
	UR_SRC_BLOCKDEV, /* raw block device */
};

struct ur_source {
	char *path;
	enum ur_source_type type;
	uint64_t size;		/* virtual size in bytes */
	uint32_t sector_size;	/* logical sector size */
	struct vhdx_image *img; /* VHDX */
	bool own_img;
	int fd;			/* raw: the file, read-only */
	bool no_seek_data;	/* raw: SEEK_DATA unsupported, all data */
	struct ur_range *zeros; /* no_seek_data: where it reads as zeros */
	unsigned nzeros; /* (a dm device's zero targets; freed at close) */
};

/* Open PATH read-only, telling VHDX from raw by its signature.  On error
 * ERR holds one line naming the file. */
int ur_source_open(const char *path, struct ur_source **out, char *err,
		   size_t errlen);
/* Wrap an image the caller opened (and keeps open; not closed here). */
int ur_source_from_vhdx(struct vhdx_image *img, struct ur_source **out);
void ur_source_close(struct ur_source *s);

const char *ur_source_type_name(enum ur_source_type t);

/* Where the device-mapper device FD reads as zeros (its table's "zero"
 * targets), sorted, neighbours joined; in *OUT (the caller frees it).
 * 0, or a negative errno when FD is no dm device or its table cannot be
 * read (dmzero.c).  A block device source skips these as holes. */
int ur_dm_zero_ranges(int fd, struct ur_range **out, unsigned *n);

/* Is FD a file on FUSE (a raw view, or an image on a FUSE filesystem)?
 * Each of its reads is then a request to a server process. */
bool ur_fd_on_fuse(int fd);
/* The same for the file SRC reads. */
bool ur_source_on_fuse(const struct ur_source *src);
/* Is FD a block device made of loop devices only: a loop device, or a
 * device-mapper device (such as an hvresync dm view) whose underlying
 * devices are all loop devices?  Its data lives in files, which the page
 * cache holds already. */
bool ur_fd_over_loop(int fd);

/* The ur_map_fn of a source (CTX is the struct ur_source). */
int ur_source_map(void *ctx, uint64_t off, uint64_t len, struct ur_run *run);

#endif
