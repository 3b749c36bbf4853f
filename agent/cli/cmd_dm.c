/* SPDX-License-Identifier: MIT */
/*
 * cmd_dm.c - the device-mapper view of a VHDX: `hvresync dm-table` prints
 * a dmsetup table that lays the virtual disk over a loop device of the
 * image file, `hvresync map` sets up that loop device and a read-only
 * /dev/mapper/NAME in one step, `hvresync unmap` takes both down.
 *
 * Only images whose every sector is either a byte range of the file or
 * zero can be described this way: fixed and dynamic disks with a clean
 * log.  Differencing disks, partially present blocks and a dirty log
 * (sectors held in memory) are refused; `hvresync mount` serves those.
 * The table is a snapshot of the BAT: a writer that allocates blocks
 * afterwards makes it stale, so the device is read-only and meant for
 * images nobody writes while it exists.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <libdevmapper.h>
#include <linux/loop.h>

#include "agent/cli/cli.h"
#include "vhdx/vhdx.h"

#define SECTOR ((uint64_t)512)
#define DM_CONTROL "/dev/mapper/control"
#define LOOP_CONTROL "/dev/loop-control"
/* Every device `map` makes carries this uuid prefix, so `unmap` never
 * removes a device somebody else set up. */
#define UUID_PREFIX "HVRESYNC-"
#define NAME_MAX_LEN 100
#define DM_UUID_SIZE 129 /* DM_UUID_LEN of <linux/dm-ioctl.h> */

static const char dm_table_usage[] = "hvresync dm-table [--device DEV] IMAGE";
static const char map_usage[] = "hvresync map IMAGE NAME";
static const char unmap_usage[] = "hvresync unmap NAME";

/* One table line, in 512-byte sectors. */
struct dm_line {
	uint64_t start;
	uint64_t len;
	bool linear;
	uint64_t dev_off;
};

struct dm_table {
	struct dm_line *v;
	size_t n;
	size_t cap;
	uint64_t dev_end; /* highest device sector a linear line reaches */
};

static void table_free(struct dm_table *t)
{
	free(t->v);
	memset(t, 0, sizeof(*t));
}

/* Append a run, merging it into the previous line when they continue
 * each other. */
static int table_add(struct dm_table *t, uint64_t start, uint64_t len,
		     bool linear, uint64_t dev_off)
{
	struct dm_line *last = t->n ? &t->v[t->n - 1] : NULL;

	if (linear && dev_off + len > t->dev_end)
		t->dev_end = dev_off + len;
	if (last && last->start + last->len == start &&
	    last->linear == linear &&
	    (!linear || last->dev_off + last->len == dev_off)) {
		last->len += len;
		return 0;
	}
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		struct dm_line *v = realloc(t->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		t->v = v;
		t->cap = cap;
	}
	t->v[t->n++] = (struct dm_line){ start, len, linear, dev_off };
	return 0;
}

/* Whether every sector of the image is a file range or zero, as a table
 * can say; false after the one-line reason. */
static bool mappable(const char *path, const struct vhdx_info *info)
{
	const struct vhdx_header_info *h = &info->header[info->current_header];

	if (info->log_dirty || !vhdx_guid_is_zero(&h->log_guid)) {
		error_msg(
			"%s: the log is dirty (LogGuid is set), so some sectors are only right after a replay; run 'hvresync inspect --replay %s' first",
			path, path);
		return false;
	}
	if (info->has_parent || info->type == VHDX_TYPE_DIFFERENCING) {
		error_msg(
			"%s: a differencing disk needs its parent chain, which device-mapper cannot merge; use 'hvresync mount' instead",
			path);
		return false;
	}
	if (info->block_states[VHDX_PAYLOAD_PARTIALLY_PRESENT]) {
		error_msg(
			"%s: %" PRIu64
			" partially present blocks cannot be mapped by device-mapper; use 'hvresync mount' instead",
			path,
			info->block_states[VHDX_PAYLOAD_PARTIALLY_PRESENT]);
		return false;
	}
	if (!info->virtual_size || info->virtual_size % SECTOR) {
		error_msg("%s: virtual size %" PRIu64
			  " is not a whole number of 512-byte sectors",
			  path, info->virtual_size);
		return false;
	}
	return true;
}

/* One extent of the map as a table line; 0 or -1 after the reason. */
static int add_extent(struct dm_table *t, const char *path,
		      const struct vhdx_info *info, const struct vhdx_extent *e)
{
	bool linear = false;

	switch (e->kind) {
	case VHDX_EXT_DATA:
		linear = true;
		break;
	case VHDX_EXT_ZERO:
	case VHDX_EXT_UNALLOC:
		break;
	case VHDX_EXT_MEM:
		error_msg(
			"%s: virtual offset %" PRIu64
			" is held in a replayed log sector; run 'hvresync inspect --replay %s' first",
			path, e->off, path);
		return -1;
	default:
		error_msg(
			"%s: virtual offset %" PRIu64
			" comes from a parent disk, which device-mapper cannot merge",
			path, e->off);
		return -1;
	}
	if (e->off % SECTOR || e->len % SECTOR ||
	    (linear && e->file_off % SECTOR)) {
		error_msg("%s: the run at virtual offset %" PRIu64 " (%" PRIu64
			  " bytes%s) is not aligned to 512-byte sectors",
			  path, e->off, e->len, linear ? " of file data" : "");
		return -1;
	}
	if (linear && (e->file_off > info->file_size ||
		       e->len > info->file_size - e->file_off)) {
		error_msg("%s: data for virtual offset %" PRIu64
			  " lies past the end of the file (truncated?)",
			  path, e->off);
		return -1;
	}
	if (table_add(t, e->off / SECTOR, e->len / SECTOR, linear,
		      linear ? e->file_off / SECTOR : 0)) {
		error_msg("%s: out of memory", path);
		return -1;
	}
	return 0;
}

/*
 * Open IMAGE and describe it as table lines.  Prints the one-line reason
 * and returns -1 when the image cannot be mapped; 0 on success with the
 * image left open in *imgp (the caller closes it).
 */
static int build_table(const char *path, struct vhdx_image **imgp,
		       struct dm_table *t)
{
	const struct vhdx_info *info;
	struct vhdx_error err = { { 0 } };
	struct vhdx_image *img = NULL;
	struct vhdx_map_iter it;
	struct vhdx_extent e;
	int ret;

	/* A differencing disk is refused below whatever its parent is, so
	 * do not make the open fail on a missing parent first. */
	ret = vhdx_open(path, VHDX_OPEN_NO_PARENT, &img, &err);
	if (ret < 0) {
		if (err.msg[0])
			error_msg("%s", err.msg);
		else
			error_msg("%s: %s", path, strerror(-ret));
		return -1;
	}
	info = vhdx_get_info(img);
	if (!mappable(path, info))
		goto refuse;
	vhdx_map_iter_init(&it, img, 0, info->virtual_size, 0);
	while ((ret = vhdx_map_next(&it, &e)) > 0)
		if (add_extent(t, path, info, &e) < 0)
			goto refuse;
	if (ret < 0) {
		error_msg("%s: cannot map the virtual disk: %s", path,
			  strerror(-ret));
		goto refuse;
	}
	*imgp = img;
	return 0;
refuse:
	table_free(t);
	vhdx_close(img);
	return -1;
}

static int print_table(const struct dm_table *t, const char *dev)
{
	size_t i;

	for (i = 0; i < t->n; i++) {
		const struct dm_line *l = &t->v[i];

		if (l->linear)
			printf("%" PRIu64 " %" PRIu64 " linear %s %" PRIu64
			       "\n",
			       l->start, l->len, dev, l->dev_off);
		else
			printf("%" PRIu64 " %" PRIu64 " zero\n", l->start,
			       l->len);
	}
	if (fflush(stdout) || ferror(stdout))
		return -EIO;
	return 0;
}

/* A sysfs attribute as a string without its newline; "" when unreadable. */
static void read_sysfs(const char *path, char *buf, size_t n)
{
	FILE *f = fopen(path, "re");

	buf[0] = '\0';
	if (!f)
		return;
	if (!fgets(buf, (int)n, f))
		buf[0] = '\0';
	fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
}

/*
 * An existing loop device over the whole of IMAGE (same inode, no offset
 * or size limit), preferring a read-only one, so that `dm-table` after
 * `losetup -r -f --show IMAGE` needs no --device.  Returns 0 and fills
 * DEV, or -ENOENT.
 */
static int find_loop(const char *image, char *dev, size_t n)
{
	struct stat want, got;
	struct dirent *de;
	char p[PATH_MAX], val[PATH_MAX];
	bool found = false, found_ro = false;
	DIR *d;

	if (stat(image, &want) < 0)
		return -errno;
	d = opendir("/sys/block");
	if (!d)
		return -ENOENT;
	while ((de = readdir(d)) != NULL && !found_ro) {
		bool ro;

		if (strncmp(de->d_name, "loop", 4) ||
		    !isdigit((unsigned char)de->d_name[4]))
			continue;
		snprintf(p, sizeof(p), "/sys/block/%s/loop/backing_file",
			 de->d_name);
		read_sysfs(p, val, sizeof(val));
		if (!val[0] || stat(val, &got) < 0 ||
		    got.st_dev != want.st_dev || got.st_ino != want.st_ino)
			continue;
		snprintf(p, sizeof(p), "/sys/block/%s/loop/offset", de->d_name);
		read_sysfs(p, val, sizeof(val));
		if (strcmp(val, "0"))
			continue;
		snprintf(p, sizeof(p), "/sys/block/%s/loop/sizelimit",
			 de->d_name);
		read_sysfs(p, val, sizeof(val));
		if (val[0] && strcmp(val, "0"))
			continue;
		snprintf(p, sizeof(p), "/sys/block/%s/ro", de->d_name);
		read_sysfs(p, val, sizeof(val));
		ro = !strcmp(val, "1");
		if (found && !ro)
			continue;
		snprintf(dev, n, "/dev/%s", de->d_name);
		found = true;
		found_ro = ro;
	}
	closedir(d);
	return found ? 0 : -ENOENT;
}

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
	struct vhdx_image *img = NULL;
	struct dm_table t = { 0 };
	struct dm_table_opts o;
	const char *dev;
	char loopdev[300];
	int ret;

	ret = parse_dm_table(&o, argc, argv);
	if (ret >= 0)
		return ret;
	if (build_table(o.image, &img, &t))
		return EXIT_ERROR;
	dev = o.device;
	if (!dev) {
		if (find_loop(o.image, loopdev, sizeof(loopdev)) == 0) {
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
	ret = print_table(&t, dev);
	if (ret)
		error_msg("dm-table: writing the table: %s", strerror(-ret));
	table_free(&t);
	vhdx_close(img);
	return ret ? EXIT_ERROR : EXIT_OK;
}

/* --- device-mapper and loop plumbing ----------------------------------- */

/* libdevmapper reports errors through a log callback (by default onto
 * stderr, several lines per failure); keep the first error so the command
 * can say it in its own single line. */
#define DMLOG_LEVEL_MASK 0x7 /* libdevmapper's _LOG_* levels */
#define DMLOG_ERR 3

static char dm_last_error[512];

static void dm_log(int level, const char *file, int line, int dm_errno,
		   const char *f, ...) __attribute__((format(printf, 5, 6)));

static void dm_log(int level, const char *file, int line, int dm_errno,
		   const char *f, ...)
{
	va_list ap;

	if ((level & DMLOG_LEVEL_MASK) > DMLOG_ERR || dm_last_error[0])
		return;
	va_start(ap, f);
	vsnprintf(dm_last_error, sizeof(dm_last_error), f, ap);
	va_end(ap);
}

static const char *dm_why(const char *fallback)
{
	return dm_last_error[0] ? dm_last_error : fallback;
}

/* Whether the kernel offers device-mapper: the control node, or failing
 * that the misc device libdevmapper would create the node for. */
static bool have_device_mapper(void)
{
	char line[128];
	bool found = false;
	FILE *f;

	if (access(DM_CONTROL, F_OK) == 0)
		return true;
	f = fopen("/proc/misc", "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, " device-mapper") != NULL;
	fclose(f);
	return found;
}

static bool check_device_mapper(const char *what)
{
	if (have_device_mapper())
		return true;
	error_msg(
		"%s: this kernel has no device-mapper (%s is missing; try 'modprobe dm_mod')",
		what, DM_CONTROL);
	return false;
}

/* Device-mapper names end up as /dev/mapper/NAME and in udev rules; a
 * plain character set keeps them free of mangling. */
static bool valid_name(const char *name)
{
	size_t i, n = strlen(name);

	if (!n || n > NAME_MAX_LEN || name[0] == '.' || name[0] == '-' ||
	    !strcmp(name, "control"))
		return false;
	for (i = 0; i < n; i++)
		if (!isalnum((unsigned char)name[i]) &&
		    !strchr("._+-", name[i]))
			return false;
	return true;
}

/* Run a DM task that changes device nodes, waiting for udev (or letting
 * libdevmapper make the nodes itself when udev is not running). */
static int dm_run_with_udev(struct dm_task *dmt)
{
	uint32_t cookie = 0;
	int ok;

	if (!dm_task_set_cookie(dmt, &cookie, 0))
		return 0;
	ok = dm_task_run(dmt);
	(void)dm_udev_wait(cookie);
	return ok;
}

/* Whether NAME exists; fills UUID (may be "") when it does.  Returns 1, 0
 * or -1 after printing the reason. */
static int dm_lookup(const char *name, char *uuid, size_t n)
{
	struct dm_task *dmt;
	struct dm_info di;
	int ret = -1;

	dmt = dm_task_create(DM_DEVICE_INFO);
	if (!dmt) {
		error_msg("%s: cannot query device-mapper: %s", name,
			  dm_why("out of memory"));
		return -1;
	}
	if (!dm_task_set_name(dmt, name) || !dm_task_run(dmt) ||
	    !dm_task_get_info(dmt, &di)) {
		error_msg("%s: cannot query device-mapper: %s", name,
			  dm_why("the info ioctl failed"));
		goto out;
	}
	ret = di.exists ? 1 : 0;
	if (di.exists && uuid) {
		const char *u = dm_task_get_uuid(dmt);

		snprintf(uuid, n, "%s", u ? u : "");
	}
out:
	dm_task_destroy(dmt);
	return ret;
}

/*
 * Before Linux 5.8 (no LOOP_CONFIGURE): the old two-step setup of the loop
 * device FD.  An O_RDONLY backing fd already makes it read-only.  Returns
 * 0 or a negative errno; *BOUND says the first step worked (and was undone
 * when the second failed), so another device would fare no better.
 */
static int loop_set_fd(int fd, int image_fd, const struct loop_config *cfg,
		       bool *bound)
{
	struct loop_info64 li;
	int ret;

	if (ioctl(fd, LOOP_SET_FD, image_fd) < 0)
		return -errno;
	*bound = true;
	memset(&li, 0, sizeof(li));
	li.lo_flags = LO_FLAGS_AUTOCLEAR;
	memcpy(li.lo_file_name, cfg->info.lo_file_name, LO_NAME_SIZE);
	if (ioctl(fd, LOOP_SET_STATUS64, &li) == 0)
		return 0;
	ret = -errno;
	ioctl(fd, LOOP_CLR_FD, 0);
	return ret;
}

/* Attach IMAGE_FD to a free loop device, read-only, cleared automatically
 * on its last close.  Keeps the loop device open in *LFD: until something
 * else (the DM table) holds it, closing it detaches the device. */
static int loop_attach(int image_fd, const char *image, char *loopdev, size_t n,
		       int *lfd, dev_t *rdev)
{
	struct loop_config cfg;
	struct stat st;
	int ctl, fd = -1, nr, tries, ret = 0;

	ctl = open(LOOP_CONTROL, O_RDWR | O_CLOEXEC);
	if (ctl < 0)
		return -errno;
	memset(&cfg, 0, sizeof(cfg));
	cfg.fd = (uint32_t)image_fd;
	cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
	snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "%s", image);

	/* Another process may take the free device between GET_FREE and
	 * our configure: then the ioctl says EBUSY and we ask again. */
	for (tries = 0; tries < 16; tries++) {
		nr = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (nr < 0) {
			ret = -errno;
			break;
		}
		snprintf(loopdev, n, "/dev/loop%d", nr);
		fd = open(loopdev, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			ret = -errno;
			break;
		}
		if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) {
			ret = 0;
			break;
		}
		ret = -errno;
		if (ret == -EINVAL || ret == -ENOTTY) {
			bool bound = false;

			ret = loop_set_fd(fd, image_fd, &cfg, &bound);
			if (bound || !ret)
				break;
		}
		close(fd);
		fd = -1;
		if (ret != -EBUSY)
			break;
	}
	close(ctl);
	if (ret == 0 && fd < 0)
		ret = -EBUSY;
	if (ret) {
		if (fd >= 0)
			close(fd);
		return ret;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		ioctl(fd, LOOP_CLR_FD, 0);
		close(fd);
		return ret;
	}
	*rdev = st.st_rdev;
	*lfd = fd;
	return 0;
}

/* Detach the loop device behind LFD and close it. */
static void loop_detach(int lfd)
{
	ioctl(lfd, LOOP_CLR_FD, 0);
	close(lfd);
}

/* The command line of map. */
struct map_opts {
	const char *image;
	const char *name;
};

/* Fill O from the command line.  Returns -1 to go on, else the exit
 * status (after --help or an error line). */
static int parse_map(struct map_opts *o, int argc, char **argv)
{
	if (argc == 2 &&
	    (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: %s\n", map_usage);
		return EXIT_OK;
	}
	if (argc != 3 || argv[1][0] == '-') {
		error_msg("map: %s; usage: %s",
			  argc > 1 && argv[1][0] == '-' ? "unknown option"
			  : argc < 3 ? "IMAGE and NAME are needed"
				     : "too many arguments",
			  map_usage);
		return EXIT_ERROR;
	}
	o->image = argv[1];
	o->name = argv[2];
	if (!valid_name(o->name)) {
		error_msg(
			"map: '%s' is not a usable device name (1 to %d of A-Z a-z 0-9 . _ + -, not starting with '.' or '-')",
			o->name, NAME_MAX_LEN);
		return EXIT_ERROR;
	}
	return -1;
}

/* The kernel parts map needs; false after an error line. */
static bool map_possible(const char *name)
{
	if (!check_device_mapper(name))
		return false;
	if (access(LOOP_CONTROL, F_OK) < 0) {
		error_msg(
			"%s: this kernel has no loop devices (%s is missing; try 'modprobe loop')",
			name, LOOP_CONTROL);
		return false;
	}
	return true;
}

/* Create /dev/mapper/NAME, read-only and marked as ours by its uuid,
 * from T over the loop device RDEV.  0, or -1 after an error line. */
static int dm_create(const char *name, dev_t rdev, const struct dm_table *t)
{
	char uuid[DM_UUID_SIZE], params[64];
	struct dm_task *dmt;
	int ret = -1;
	size_t i;

	snprintf(uuid, sizeof(uuid), UUID_PREFIX "%s", name);
	dmt = dm_task_create(DM_DEVICE_CREATE);
	if (!dmt || !dm_task_set_name(dmt, name) ||
	    !dm_task_set_uuid(dmt, uuid) || !dm_task_set_ro(dmt)) {
		error_msg("%s: cannot prepare the device-mapper request: %s",
			  name, dm_why("out of memory"));
		goto out;
	}
	snprintf(params, sizeof(params), "%u:%u", major(rdev), minor(rdev));
	for (i = 0; i < t->n; i++) {
		const struct dm_line *l = &t->v[i];
		char p[96];

		if (l->linear)
			snprintf(p, sizeof(p), "%s %" PRIu64, params,
				 l->dev_off);
		else
			p[0] = '\0';
		if (!dm_task_add_target(dmt, l->start, l->len,
					l->linear ? "linear" : "zero", p)) {
			error_msg(
				"%s: cannot build the device-mapper table: %s",
				name, dm_why("out of memory"));
			goto out;
		}
	}
	if (!dm_run_with_udev(dmt)) {
		error_msg("%s: cannot create /dev/mapper/%s: %s", name, name,
			  dm_why("the create ioctl failed"));
		goto out;
	}
	ret = 0;
out:
	if (dmt)
		dm_task_destroy(dmt);
	return ret;
}

/* A read-only loop device over the image file, big enough for T.  Returns
 * its open descriptor (closing it detaches it) or -1 after an error line. */
static int map_loop(const char *path, const struct dm_table *t, dev_t *rdev)
{
	char loopdev[300];
	char *abspath;
	uint64_t loop_bytes = 0;
	int image_fd, lfd = -1, err;

	image_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (image_fd < 0) {
		error_msg("%s: %s", path, strerror(errno));
		return -1;
	}
	abspath = realpath(path, NULL);
	err = loop_attach(image_fd, abspath ? abspath : path, loopdev,
			  sizeof(loopdev), &lfd, rdev);
	free(abspath);
	/* The loop device holds the file now. */
	close(image_fd);
	if (err) {
		error_msg("%s: cannot set up a loop device: %s", path,
			  strerror(-err));
		return -1;
	}
	if (vhdx_blockdev_geometry(lfd, &loop_bytes, NULL) < 0 ||
	    loop_bytes / SECTOR < t->dev_end) {
		error_msg("%s: %s holds %" PRIu64
			  " sectors, the table needs %" PRIu64,
			  path, loopdev, loop_bytes / SECTOR, t->dev_end);
		loop_detach(lfd);
		return -1;
	}
	return lfd;
}

int cmd_map(int argc, char **argv)
{
	struct vhdx_image *img = NULL;
	struct dm_table t = { 0 };
	struct map_opts o;
	int lfd = -1, ret = EXIT_ERROR, err;
	dev_t rdev = 0;

	err = parse_map(&o, argc, argv);
	if (err >= 0)
		return err;
	/* Everything that can refuse comes before the loop device exists. */
	if (!map_possible(o.name))
		return EXIT_ERROR;
	dm_log_with_errno_init(dm_log);
	if (build_table(o.image, &img, &t))
		goto out;
	err = dm_lookup(o.name, NULL, 0);
	if (err < 0)
		goto out;
	if (err > 0) {
		error_msg("%s: /dev/mapper/%s already exists", o.name, o.name);
		goto out;
	}
	lfd = map_loop(o.image, &t, &rdev);
	/* From here on a failure must detach the loop device again. */
	if (lfd < 0 || dm_create(o.name, rdev, &t) < 0)
		goto out;
	/* The table now holds the loop device open; dropping our reference
	 * lets autoclear detach it when the mapping goes away. */
	close(lfd);
	lfd = -1;
	printf("/dev/mapper/%s\n", o.name);
	fflush(stdout);
	ret = EXIT_OK;
out:
	if (lfd >= 0)
		loop_detach(lfd);
	table_free(&t);
	vhdx_close(img);
	dm_lib_release();
	return ret;
}

/* The loop devices among a DM device's dependencies. */
static int dm_loop_deps(const char *name, dev_t *out, unsigned max,
			unsigned *count)
{
	struct dm_task *dmt;
	struct dm_deps *deps;
	unsigned i;
	int ret = -1;

	*count = 0;
	dmt = dm_task_create(DM_DEVICE_DEPS);
	if (!dmt || !dm_task_set_name(dmt, name) || !dm_task_run(dmt) ||
	    !(deps = dm_task_get_deps(dmt))) {
		error_msg("%s: cannot read its dependencies: %s", name,
			  dm_why("the deps ioctl failed"));
		goto out;
	}
	for (i = 0; i < deps->count && *count < max; i++) {
		dev_t d = (dev_t)deps->device[i];
		char p[PATH_MAX];

		/* A loop device has a loop/ directory in sysfs. */
		snprintf(p, sizeof(p), "/sys/dev/block/%u:%u/loop", major(d),
			 minor(d));
		if (access(p, F_OK) == 0)
			out[(*count)++] = d;
	}
	ret = 0;
out:
	if (dmt)
		dm_task_destroy(dmt);
	return ret;
}

/* Open the device node of block device D. */
static int open_blockdev(dev_t d)
{
	char link[PATH_MAX - 64], p[PATH_MAX];
	const char *base;
	ssize_t n;

	snprintf(p, sizeof(p), "/sys/dev/block/%u:%u", major(d), minor(d));
	n = readlink(p, link, sizeof(link) - 1);
	if (n < 0)
		return -errno;
	link[n] = '\0';
	base = strrchr(link, '/');
	snprintf(p, sizeof(p), "/dev/%s", base ? base + 1 : link);
	n = open(p, O_RDONLY | O_CLOEXEC);
	return n < 0 ? -errno : (int)n;
}

/* The command line of unmap: NAME.  Returns -1 to go on, else the exit
 * status (after --help or an error line). */
static int parse_unmap(const char **name, int argc, char **argv)
{
	if (argc == 2 &&
	    (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: %s\n", unmap_usage);
		return EXIT_OK;
	}
	if (argc != 2 || argv[1][0] == '-') {
		error_msg("unmap: %s; usage: %s",
			  argc > 1 && argv[1][0] == '-' ? "unknown option"
			  : argc < 2			? "no NAME given"
							: "too many arguments",
			  unmap_usage);
		return EXIT_ERROR;
	}
	*name = argv[1];
	if (!valid_name(*name)) {
		error_msg("%s: no such device made by 'hvresync map'", *name);
		return EXIT_ERROR;
	}
	return -1;
}

/* Whether NAME is a device `map` made; false after an error line. */
static bool is_ours(const char *name)
{
	char uuid[DM_UUID_SIZE];
	int err;

	err = dm_lookup(name, uuid, sizeof(uuid));
	if (err < 0)
		return false;
	if (err == 0) {
		error_msg("%s: no such device-mapper device", name);
		return false;
	}
	if (strncmp(uuid, UUID_PREFIX, strlen(UUID_PREFIX))) {
		error_msg(
			"%s: not made by 'hvresync map' (uuid '%s'); remove it with dmsetup",
			name, uuid);
		return false;
	}
	return true;
}

/* Remove /dev/mapper/NAME; 0 or -1 after an error line. */
static int dm_remove(const char *name)
{
	struct dm_task *dmt;
	int ret = -1;

	dmt = dm_task_create(DM_DEVICE_REMOVE);
	if (!dmt || !dm_task_set_name(dmt, name) ||
	    !dm_task_retry_remove(dmt)) {
		error_msg("%s: cannot prepare the device-mapper request: %s",
			  name, dm_why("out of memory"));
		goto out;
	}
	if (!dm_run_with_udev(dmt)) {
		error_msg("%s: cannot remove /dev/mapper/%s: %s", name, name,
			  dm_why("the remove ioctl failed (in use?)"));
		goto out;
	}
	ret = 0;
out:
	if (dmt)
		dm_task_destroy(dmt);
	return ret;
}

/* Detach the loop devices the mapping used (open in LFDS). */
static void loops_detach(const char *name, const dev_t *loops, const int *lfds,
			 unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++) {
		if (lfds[i] < 0)
			continue;
		/* ENXIO: already detached.  With other openers left the
		 * kernel turns this into autoclear on their last close. */
		if (ioctl(lfds[i], LOOP_CLR_FD, 0) < 0 && errno != ENXIO)
			note_msg(
				"%s: loop device %u:%u stays until its last user closes it (%s)",
				name, major(loops[i]), minor(loops[i]),
				strerror(errno));
	}
}

int cmd_unmap(int argc, char **argv)
{
	const char *name;
	dev_t loops[8];
	int lfds[8];
	unsigned nloops = 0, i;
	int ret;

	ret = parse_unmap(&name, argc, argv);
	if (ret >= 0)
		return ret;
	ret = EXIT_ERROR;
	if (!check_device_mapper(name))
		return EXIT_ERROR;
	dm_log_with_errno_init(dm_log);
	if (!is_ours(name) ||
	    dm_loop_deps(name, loops, sizeof(loops) / sizeof(loops[0]),
			 &nloops))
		goto out;
	/* Hold the loop devices open across the removal: autoclear cannot
	 * free them then, so the number cannot pass to somebody else's
	 * loop device before our LOOP_CLR_FD below. */
	for (i = 0; i < nloops; i++)
		lfds[i] = open_blockdev(loops[i]);
	if (dm_remove(name) < 0)
		goto out;
	loops_detach(name, loops, lfds, nloops);
	ret = EXIT_OK;
out:
	for (i = 0; i < nloops; i++)
		if (lfds[i] >= 0)
			close(lfds[i]);
	dm_lib_release();
	return ret;
}
