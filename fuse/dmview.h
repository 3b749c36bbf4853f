/* SPDX-License-Identifier: MIT */
/*
 * dmview.h - the device-mapper raw view: a VHDX laid out as a read-only
 * /dev/mapper device of `linear` lines over a loop device of the image
 * file and `zero` lines for what the image does not store.  The kernel
 * reads it at block-device speed, with no FUSE hop.
 *
 * Only images whose every sector is a byte range of the file or zero can
 * be described so: fixed and dynamic disks with a clean log.  The table
 * is a snapshot of the BAT, so nobody may write the image while it is
 * mapped: callers hold the image's shared lock for as long as the
 * mapping exists.
 *
 * Every device made here carries a uuid starting DMVIEW_UUID_PREFIX;
 * unmapping and sweeping refuse anything else.  libdevmapper waits for
 * udev to confirm node changes, without bound when udev runs without
 * dmsetup's rules; here the wait is bounded (struct dmview_opts).
 *
 * Functions return 0 or a negative errno and fill ERR with one line
 * naming the image or device.  This layer knows nothing of agent/.
 */
#ifndef HVRESYNC_DMVIEW_H
#define HVRESYNC_DMVIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "vhdx/vhdx.h"

#define DMVIEW_UUID_PREFIX "HVRESYNC-"
/* Longest name `hvresync map` accepts; dmview_name() stays within
 * DMVIEW_DERIVED_MAX so that a uuid prefix of 32 still fits DM_UUID_LEN. */
#define DMVIEW_NAME_MAX 100
#define DMVIEW_DERIVED_MAX 96
#define DMVIEW_UUID_LEN 129 /* DM_UUID_LEN of <linux/dm-ioctl.h> */
#define DMVIEW_UDEV_TIMEOUT_DEFAULT 30

/* One table line, in 512-byte sectors. */
struct dmview_line {
	uint64_t start;
	uint64_t len;
	bool linear; /* else zero */
	uint64_t dev_off;
};

struct dmview_table {
	struct dmview_line *v;
	size_t n;
	size_t cap;
	uint64_t dev_end; /* highest device sector a linear line reaches */
};

struct dmview_opts {
	/* Let libdevmapper make and remove the nodes itself; no udev wait. */
	bool noudevsync;
	/* Seconds to wait for udev's confirmation; 0 means the default.
	 * Past it: -ETIMEDOUT, and nothing of the request is left. */
	unsigned udev_timeout;
	/* The device's uuid for dmview_map(); NULL: DMVIEW_UUID_PREFIX NAME.
	 * Must start with DMVIEW_UUID_PREFIX. */
	const char *uuid;
};

void dmview_table_free(struct dmview_table *t);

/*
 * Whether INFO's image can be laid out as a table: 0, or -ENOTSUP with
 * the reason (dirty log, differencing disk, partially present blocks,
 * odd size) naming PATH and what to use instead.
 */
int dmview_mappable(const char *path, const struct vhdx_info *info,
		    struct vhdx_error *err);

/* The table of an open image (its own extents only). */
int dmview_table_of(struct vhdx_image *img, struct dmview_table *t,
		    struct vhdx_error *err);

/*
 * Open PATH read-only (a differencing disk is refused without looking
 * for its parent) and build its table; the image is left open in *IMGP
 * for the caller to close.
 */
int dmview_build(const char *path, struct vhdx_image **imgp,
		 struct dmview_table *t, struct vhdx_error *err);

/* Print T in dmsetup's format, linear lines naming DEV. */
int dmview_print(FILE *f, const struct dmview_table *t, const char *dev);

/* An existing loop device over the whole of IMAGE, a read-only one
 * preferred: 0 with DEV filled, or -ENOENT. */
int dmview_find_loop(const char *image, char *dev, size_t n);

/* A name dmview_map() accepts: 1 to DMVIEW_NAME_MAX of A-Z a-z 0-9 . _ + -,
 * not starting with '.' or '-', not "control". */
bool dmview_valid_name(const char *name);

/*
 * The device name for disk file DISK of VM: "hvresync-VM-STEM" (STEM is
 * DISK without .vhdx/.avhdx), characters outside the valid set made '_';
 * too long a name keeps its start and ends in '-' and 8 hex digits of a
 * hash of VM and DISK.  Always valid and at most DMVIEW_DERIVED_MAX.
 */
void dmview_name(const char *vm, const char *disk, char *out, size_t n);

/* A 64-bit FNV-1a of S, for uuid prefixes that identify an owner. */
uint64_t dmview_hash(const char *s);

/*
 * Whether the kernel offers device-mapper (and, with NEED_LOOP, loop
 * devices): 0, or -ENODEV with the module to load.  NAME starts the line.
 */
int dmview_kernel_check(const char *name, bool need_loop,
			struct vhdx_error *err);

/*
 * Whether the kernel lists target TARGET ("zero", "linear"): 1, 0, or a
 * negative errno when it cannot be asked.  A missing target may still
 * be loaded on demand by the kernel when modprobe works.
 */
int dmview_kernel_has_target(const char *target);

/*
 * Map the open image IMG (PATH, for messages and the loop device's name)
 * as /dev/mapper/NAME: a read-only loop device over the file and a
 * read-only device-mapper device of its table.  On any failure nothing
 * is left: no device, no loop device, no udev semaphore.  -EEXIST when
 * NAME exists, -ETIMEDOUT when udev did not confirm in time.
 */
int dmview_map_image(struct vhdx_image *img, const char *path, const char *name,
		     const struct dmview_opts *o, struct vhdx_error *err);

/* Open PATH (as dmview_build()) and map it. */
int dmview_map(const char *path, const char *name, const struct dmview_opts *o,
	       struct vhdx_error *err);

/*
 * Remove /dev/mapper/NAME, one of ours, and detach its loop devices.
 * -ENOENT when there is no such device, -EPERM when it is not ours,
 * -EBUSY when it is open, -ETIMEDOUT when udev did not confirm (the
 * device is gone all the same).  On success ERR may still hold a note
 * worth showing (a loop device another program keeps open).
 */
int dmview_unmap(const char *name, const struct dmview_opts *o,
		 struct vhdx_error *err);

/*
 * Remove every device whose uuid starts with UUID_PREFIX (which itself
 * starts with DMVIEW_UUID_PREFIX).  A device still open is made to fail
 * every read (its table becomes `error`, so it no longer reads an image
 * nobody may be locking any more) and removed by the kernel on its last
 * close (deferred remove).  FOUND (if given) is called once per device
 * before it goes.  *LEFT (if given) counts the deferred ones.  Returns 0
 * or the first error.
 */
int dmview_sweep(const char *uuid_prefix, const struct dmview_opts *o,
		 void (*found)(const char *name, bool busy, void *ctx),
		 void *ctx, unsigned *left, struct vhdx_error *err);

/*
 * Whether a device with a uuid starting UUID_PREFIX exists: 1, 0, or a
 * negative errno.  A deferred removal is done once this says 0; then
 * dmview_forget_node() drops a node libdevmapper made for NAME.
 */
int dmview_any(const char *uuid_prefix);
void dmview_forget_node(const char *name);

/* Release libdevmapper's caches (dm_lib_release). */
void dmview_release(void);

#endif
