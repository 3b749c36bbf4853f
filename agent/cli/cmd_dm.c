/* SPDX-License-Identifier: MIT */
/*
 * cmd_dm.c - the device-mapper view of a VHDX, over fuse/dmview.c:
 * `hvresync dm-table` prints a dmsetup table that lays the virtual disk
 * over a loop device of the image file, `hvresync map` sets up that loop
 * device and a read-only /dev/mapper/NAME in one step, `hvresync unmap`
 * takes both down.  Options, one call down, printing.
 *
 * Only images whose every sector is either a byte range of the file or
 * zero can be described this way: fixed and dynamic disks with a clean
 * log.  Differencing disks, partially present blocks and a dirty log
 * (sectors held in memory) are refused; `hvresync mount` serves those.
 * The table is a snapshot of the BAT: a writer that allocates blocks
 * afterwards makes it stale, so the device is read-only and meant for
 * images nobody writes while it exists.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/cli/cli.h"
#include "fuse/dmview.h"
#include "vhdx/vhdx.h"

#define UDEV_TIMEOUT_MAX 3600

static const char dm_table_usage[] = "hvresync dm-table [--device DEV] IMAGE";
static const char map_usage[] =
	"hvresync map [--noudevsync] [--udev-timeout S] IMAGE NAME";
static const char unmap_usage[] =
	"hvresync unmap [--noudevsync] [--udev-timeout S] NAME";

/* The command line of dm-table. */
struct dm_table_opts {
	const char *device; /* --device, or NULL: find a loop device */
	const char *image;
};

/* Fill O from the command line.  Returns -1 to go on, else the exit
 * status (after --help or an error line). */
static int parse_dm_table(struct dm_table_opts *o, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "device", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *dev;
	int c;

	memset(o, 0, sizeof(*o));
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "hd:", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			o->device = optarg;
			break;
		case 'h':
			printf("usage: %s\n", dm_table_usage);
			return EXIT_OK;
		default:
			error_msg("dm-table: %s '%s'; usage: %s",
				  optopt == 'd' ? "missing value for"
						: "unknown option",
				  argv[optind - 1], dm_table_usage);
			return EXIT_ERROR;
		}
	}
	if (argc - optind != 1) {
		error_msg("dm-table: %s; usage: %s",
			  argc == optind ? "no IMAGE given"
					 : "only one IMAGE at a time",
			  dm_table_usage);
		return EXIT_ERROR;
	}
	o->image = argv[optind];
	dev = o->device;
	if (dev && (!*dev || dev[strcspn(dev, " \t\n")])) {
		error_msg("dm-table: --device '%s' is not a device path", dev);
		return EXIT_ERROR;
	}
	return -1;
}

int cmd_dm_table(int argc, char **argv)
{
	struct vhdx_error err = { { 0 } };
	struct vhdx_image *img = NULL;
	struct dmview_table t = { 0 };
	struct dm_table_opts o;
	const char *dev;
	char loopdev[300];
	int ret;

	ret = parse_dm_table(&o, argc, argv);
	if (ret >= 0)
		return ret;
	if (dmview_build(o.image, &img, &t, &err)) {
		error_msg("%s", err.msg);
		return EXIT_ERROR;
	}
	dev = o.device;
	if (!dev) {
		if (dmview_find_loop(o.image, loopdev, sizeof(loopdev)) == 0) {
			dev = loopdev;
		} else {
			/* A table naming a regular file does not load;
			 * the note says how to get a device for it. */
			dev = o.image;
			note_msg(
				"%s: no loop device backs this file; the table names the file itself (set one up with 'losetup -r -f --show %s' and pass --device)",
				o.image, o.image);
		}
	}
	ret = dmview_print(stdout, &t, dev);
	if (ret)
		error_msg("dm-table: writing the table: %s", strerror(-ret));
	dmview_table_free(&t);
	vhdx_close(img);
	return ret ? EXIT_ERROR : EXIT_OK;
}

/* --- map and unmap --- */

/* The command line of map and unmap. */
struct map_opts {
	struct dmview_opts dm;
	const char *image; /* map only */
	const char *name;
};

/*
 * Fill O from the command line of CMD (map takes IMAGE NAME, unmap NAME).
 * Returns -1 to go on, else the exit status (after --help or an error
 * line).
 */
static int parse_map(struct map_opts *o, const char *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "noudevsync", no_argument, NULL, 'n' },
		{ "udev-timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool is_map = !strcmp(cmd, "map");
	const char *usage = is_map ? map_usage : unmap_usage;
	int c, want = is_map ? 2 : 1, got;
	unsigned long v;
	char *end;

	memset(o, 0, sizeof(*o));
	o->dm.udev_timeout = DMVIEW_UDEV_TIMEOUT_DEFAULT;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			o->dm.noudevsync = true;
			break;
		case 't':
			errno = 0;
			v = strtoul(optarg, &end, 10);
			if (errno || end == optarg || *end ||
			    optarg[0] == '-' || v < 1 || v > UDEV_TIMEOUT_MAX) {
				error_msg(
					"%s: --udev-timeout '%s' is not a whole number of seconds from 1 to %d",
					cmd, optarg, UDEV_TIMEOUT_MAX);
				return EXIT_ERROR;
			}
			o->dm.udev_timeout = (unsigned)v;
			break;
		case 'h':
			printf("usage: %s\n", usage);
			return EXIT_OK;
		default:
			error_msg("%s: %s '%s'; usage: %s", cmd,
				  optopt == 't' ? "missing value for"
						: "unknown option",
				  argv[optind - 1], usage);
			return EXIT_ERROR;
		}
	}
	got = argc - optind;
	if (got != want) {
		error_msg("%s: %s; usage: %s", cmd,
			  got > want ? "too many arguments"
			  : is_map   ? "IMAGE and NAME are needed"
				     : "no NAME given",
			  usage);
		return EXIT_ERROR;
	}
	o->image = is_map ? argv[optind] : NULL;
	o->name = argv[optind + want - 1];
	if (dmview_valid_name(o->name))
		return -1;
	if (is_map)
		error_msg(
			"map: '%s' is not a usable device name (1 to %d of A-Z a-z 0-9 . _ + -, not starting with '.' or '-')",
			o->name, DMVIEW_NAME_MAX);
	else
		error_msg("%s: no such device made by 'hvresync map'", o->name);
	return EXIT_ERROR;
}

int cmd_map(int argc, char **argv)
{
	struct vhdx_error err = { { 0 } };
	struct map_opts o;
	int ret;

	ret = parse_map(&o, "map", argc, argv);
	if (ret >= 0)
		return ret;
	ret = dmview_map(o.image, o.name, &o.dm, &err);
	dmview_release();
	if (ret) {
		error_msg("%s", err.msg);
		return EXIT_ERROR;
	}
	printf("/dev/mapper/%s\n", o.name);
	fflush(stdout);
	return EXIT_OK;
}

int cmd_unmap(int argc, char **argv)
{
	struct vhdx_error err = { { 0 } };
	struct map_opts o;
	int ret;

	ret = parse_map(&o, "unmap", argc, argv);
	if (ret >= 0)
		return ret;
	ret = dmview_unmap(o.name, &o.dm, &err);
	dmview_release();
	if (ret) {
		error_msg("%s", err.msg);
		return EXIT_ERROR;
	}
	if (err.msg[0])
		note_msg("%s", err.msg);
	return EXIT_OK;
}
