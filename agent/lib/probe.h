/* SPDX-License-Identifier: MIT */
/*
 * probe.h - find the partition table and filesystems of a disk with
 * libblkid: inside a VHDX's raw view (without a mount and without
 * privileges), or on a raw disk (an image, a view file, a block device);
 * and compare what two disks show.
 */
#ifndef HVRESYNC_PROBE_H
#define HVRESYNC_PROBE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vhdx/vhdx.h"

#define PROBE_STR_LEN 512

/* What libblkid's superblock chain said about one area. */
struct probe_fs {
	bool found;
	bool ambivalent; /* more than one signature; nothing reported */
	char type[64];	 /* "ext4", "vfat", "ntfs", ... */
	char version[64];
	char usage[32]; /* "filesystem", "raid", "crypto", "other" */
	char label[PROBE_STR_LEN];
	char uuid[128];
};

struct probe_part {
	int number;	/* as libblkid numbers it: 1.. (5.. for logical) */
	uint64_t start; /* bytes from the start of the disk */
	uint64_t size;	/* bytes */
	char type[64];	/* "0x83" (MBR) or the GPT type GUID */
	char uuid[64];	/* PARTUUID */
	char name[PROBE_STR_LEN]; /* GPT partition name, or "" */
	bool extended;		  /* an MBR extended container */
	bool logical;
	bool past_end; /* the table says it runs past the virtual size */
	struct probe_fs fs;
};

struct probe_result {
	bool table_found;
	bool table_ambivalent;
	char table_type[16]; /* "dos", "gpt", ... */
	char table_id[64];   /* PTUUID: disk signature or disk GUID */
	unsigned nparts;
	struct probe_part *parts;
	struct probe_fs disk_fs; /* a filesystem on the whole disk */
};

/*
 * Probe the raw view of IMG.  Returns 0 with RES filled, or a negative
 * errno with WHY (WHY_LEN bytes) saying what failed; RES then holds what
 * was found before the failure.  Free RES with probe_result_free() in
 * both cases.
 */
int probe_image(struct vhdx_image *img, struct probe_result *res, char *why,
		size_t why_len);
void probe_result_free(struct probe_result *res);

/*
 * The same for the raw disk at PATH: a raw image, a view file or a block
 * device (which says its own sector size; for a file SECTOR is assumed).
 * Messages in WHY start with PATH.
 */
int probe_raw_path(const char *path, unsigned sector, struct probe_result *res,
		   char *why, size_t why_len);

/* PATH as a VHDX when it has the signature (probe_image()), else raw. */
int probe_path(const char *path, unsigned sector, struct probe_result *res,
	       char *why, size_t why_len);

/* One line for people: the table, then each filesystem's type and UUID. */
void probe_describe(const struct probe_result *r, char *buf, size_t len);

/*
 * Whether disk B (a recovery disk) shows what disk A (its primary) shows:
 * the same table, partitions, filesystem types and UUIDs (labels are not
 * compared).  When not, WHY gets the first difference in one line.
 */
bool probe_differ(const struct probe_result *a, const struct probe_result *b,
		  char *why, size_t len);

#endif
