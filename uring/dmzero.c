/* SPDX-License-Identifier: MIT */
/*
 * dmzero.c - where a device-mapper device reads as zeros: the ranges of
 * its table's "zero" targets, asked of the kernel (DM_TABLE_STATUS).
 *
 * A block device has no SEEK_DATA, so a reader would read and hash every
 * byte of it.  A dm view of a dynamic VHDX (fuse/dmview.c) maps each
 * block the image does not hold to dm-zero; knowing those ranges, the
 * reader skips them as it skips a file's holes, and a sparse disk read
 * through a dm view costs what its data costs.  A dm-zero target reads
 * zeros by definition, whoever made the table.  The table is read once,
 * when the source is opened: hvresync's views never load another, and a
 * device whose table an admin reloads under a running read changes under
 * it like any block device being written.
 *
 * Talks to /dev/mapper/control directly (the ioctl ABI is stable, and the
 * uring layer sits below the one that links libdevmapper); needs
 * CAP_SYS_ADMIN, like the views themselves.  Anything that fails means
 * "no zero ranges known": the device is then read whole, as before.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <linux/dm-ioctl.h>

#include "uring/source.h"

#define DM_SECTOR 512u
#define TABLE_BUF_MIN (16u << 10)
#define TABLE_BUF_MAX (16u << 20) /* a table of ~400,000 targets */

/* The kernel's own encoding of a device number (huge_decode_dev). */
static uint64_t dm_dev(dev_t d)
{
	uint64_t ma = major(d), mi = minor(d);

	return (mi & 0xff) | (ma << 8) | ((mi & ~0xffull) << 12);
}

/* The table of the device FD, its dm_ioctl in a buffer the caller frees;
 * NULL when it is not a dm device or cannot be read. */
static struct dm_ioctl *table_status(int fd)
{
	struct dm_ioctl *dmi = NULL;
	size_t size = TABLE_BUF_MIN;
	struct stat st;
	int ctl;

	if (fstat(fd, &st) || !S_ISBLK(st.st_mode))
		return NULL;
	ctl = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
	if (ctl < 0)
		return NULL;
	for (;;) {
		free(dmi);
		dmi = calloc(1, size);
		if (!dmi)
			break;
		dmi->version[0] = DM_VERSION_MAJOR;
		dmi->version[1] = 0;
		dmi->version[2] = 0;
		dmi->data_size = (uint32_t)size;
		dmi->data_start = sizeof(*dmi);
		dmi->dev = dm_dev(st.st_rdev);
		dmi->flags = DM_STATUS_TABLE_FLAG;
		if (ioctl(ctl, DM_TABLE_STATUS, dmi)) {
			/* ENXIO: not a dm device */
			free(dmi);
			dmi = NULL;
			break;
		}
		if (!(dmi->flags & DM_BUFFER_FULL_FLAG))
			break;
		if (size >= TABLE_BUF_MAX) {
			free(dmi);
			dmi = NULL;
			break;
		}
		size *= 4;
	}
	close(ctl);
	return dmi;
}

int ur_dm_zero_ranges(int fd, struct ur_range **out, unsigned *n)
{
	struct dm_ioctl *dmi = table_status(fd);
	struct ur_range *r = NULL, *grown;
	const char *data;
	uint32_t i, at = 0;
	unsigned cnt = 0, cap = 0;

	*out = NULL;
	*n = 0;
	if (!dmi)
		return -ENODEV;
	data = (const char *)dmi + dmi->data_start;
	for (i = 0; i < dmi->target_count; i++) {
		struct dm_target_spec sp;

		/* each spec lies where the one before said ("next" counts
		 * from the first spec), with its parameters after it */
		if (at > dmi->data_size - dmi->data_start ||
		    dmi->data_size - dmi->data_start - at < sizeof(sp))
			goto bad;
		memcpy(&sp, data + at, sizeof(sp));
		if (!strncmp(sp.target_type, "zero", sizeof(sp.target_type)) &&
		    sp.length) {
			if (cnt && r[cnt - 1].off + r[cnt - 1].len ==
					   sp.sector_start * DM_SECTOR) {
				r[cnt - 1].len += sp.length * DM_SECTOR;
			} else {
				if (cnt == cap) {
					cap = cap ? cap * 2 : 16;
					grown = realloc(r, cap * sizeof(*r));
					if (!grown)
						goto bad;
					r = grown;
				}
				r[cnt].off = sp.sector_start * DM_SECTOR;
				r[cnt].len = sp.length * DM_SECTOR;
				cnt++;
			}
		}
		if (i + 1 < dmi->target_count) {
			if (sp.next <= at)
				goto bad; /* would not move on */
			at = sp.next;
		}
	}
	free(dmi);
	*out = r;
	*n = cnt;
	return 0;
bad:
	free(dmi);
	free(r);
	return -EIO;
}
