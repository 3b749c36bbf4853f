/* SPDX-License-Identifier: MIT */
/*
 * dmview.c - the device-mapper raw view of a VHDX (see dmview.h): the
 * table from the extent map, the loop device under it, the device itself,
 * and taking all of it down again, with udev's confirmations awaited for
 * a bounded time only.
 *
 * libdevmapper's dm_udev_wait() waits on a SysV semaphore that udev's
 * 95-dm-notify.rules decrements; with udev running but without those
 * rules nobody ever does, and the wait never ends.  We poll with
 * dm_udev_wait_immediate() instead and, past the deadline, do udev's part
 * ourselves (dm_udev_complete) so the semaphore is removed and
 * libdevmapper falls back to making or removing the node itself.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <libdevmapper.h>
#include <linux/loop.h>

#include "fuse/dmview.h"

#define SECTOR ((uint64_t)512)
#define DM_CONTROL "/dev/mapper/control"
#define DM_DIR_PATH "/dev/mapper/"
#define LOOP_CONTROL "/dev/loop-control"
#define UDEV_POLL_NS 20000000L
#define MAX_LOOP_DEPS 8

static int fail(struct vhdx_error *err, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct vhdx_error *err, int ret, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return ret;
}

static void clear_err(struct vhdx_error *err)
{
	if (err)
		err->msg[0] = '\0';
}

/* --- the table --------------------------------------------------------- */

void dmview_table_free(struct dmview_table *t)
{
	free(t->v);
	memset(t, 0, sizeof(*t));
}

/* Append a run, merging it into the previous line when they continue
 * each other. */
static int table_add(struct dmview_table *t, uint64_t start, uint64_t len,
		     bool linear, uint64_t dev_off)
{
	struct dmview_line *last = t->n ? &t->v[t->n - 1] : NULL;

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
		struct dmview_line *v = realloc(t->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		t->v = v;
		t->cap = cap;
	}
	t->v[t->n++] = (struct dmview_line){ start, len, linear, dev_off };
	return 0;
}

int dmview_mappable(const char *path, const struct vhdx_info *info,
		    struct vhdx_error *err)
{
	const struct vhdx_header_info *h = &info->header[info->current_header];

	if (info->log_dirty || !vhdx_guid_is_zero(&h->log_guid))
		return fail(
			err, -ENOTSUP,
			"%s: the log is dirty (LogGuid is set), so some sectors are only right after a replay; run 'hvresync inspect --replay %s' first",
			path, path);
	if (info->has_parent || info->type == VHDX_TYPE_DIFFERENCING)
		return fail(
			err, -ENOTSUP,
			"%s: a differencing disk needs its parent chain, which device-mapper cannot merge; use 'hvresync mount' instead",
			path);
	if (info->block_states[VHDX_PAYLOAD_PARTIALLY_PRESENT])
		return fail(
			err, -ENOTSUP,
			"%s: %" PRIu64
			" partially present blocks cannot be mapped by device-mapper; use 'hvresync mount' instead",
			path,
			info->block_states[VHDX_PAYLOAD_PARTIALLY_PRESENT]);
	if (!info->virtual_size || info->virtual_size % SECTOR)
		return fail(err, -ENOTSUP,
			    "%s: virtual size %" PRIu64
			    " is not a whole number of 512-byte sectors",
			    path, info->virtual_size);
	return 0;
}

/* One extent of the map as a table line. */
static int add_extent(struct dmview_table *t, const char *path,
		      const struct vhdx_info *info, const struct vhdx_extent *e,
		      struct vhdx_error *err)
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
		return fail(
			err, -ENOTSUP,
			"%s: virtual offset %" PRIu64
			" is held in a replayed log sector; run 'hvresync inspect --replay %s' first",
			path, e->off, path);
	default:
		return fail(
			err, -ENOTSUP,
			"%s: virtual offset %" PRIu64
			" comes from a parent disk, which device-mapper cannot merge",
			path, e->off);
	}
	if (e->off % SECTOR || e->len % SECTOR ||
	    (linear && e->file_off % SECTOR))
		return fail(
			err, -ENOTSUP,
			"%s: the run at virtual offset %" PRIu64 " (%" PRIu64
			" bytes%s) is not aligned to 512-byte sectors",
			path, e->off, e->len, linear ? " of file data" : "");
	if (linear && (e->file_off > info->file_size ||
		       e->len > info->file_size - e->file_off))
		return fail(err, -EIO,
			    "%s: data for virtual offset %" PRIu64
			    " lies past the end of the file (truncated?)",
			    path, e->off);
	if (table_add(t, e->off / SECTOR, e->len / SECTOR, linear,
		      linear ? e->file_off / SECTOR : 0))
		return fail(err, -ENOMEM, "%s: out of memory", path);
	return 0;
}

int dmview_table_of(struct vhdx_image *img, struct dmview_table *t,
		    struct vhdx_error *err)
{
	const struct vhdx_info *info = vhdx_get_info(img);
	const char *path = info->path;
	struct vhdx_map_iter it;
	struct vhdx_extent e;
	int ret;

	clear_err(err);
	memset(t, 0, sizeof(*t));
	ret = dmview_mappable(path, info, err);
	if (ret)
		return ret;
	vhdx_map_iter_init(&it, img, 0, info->virtual_size, 0);
	while ((ret = vhdx_map_next(&it, &e)) > 0) {
		ret = add_extent(t, path, info, &e, err);
		if (ret)
			goto refuse;
	}
	if (ret < 0) {
		fail(err, ret, "%s: cannot map the virtual disk: %s", path,
		     strerror(-ret));
		goto refuse;
	}
	return 0;
refuse:
	dmview_table_free(t);
	return ret;
}

int dmview_build(const char *path, struct vhdx_image **imgp,
		 struct dmview_table *t, struct vhdx_error *err)
{
	struct vhdx_image *img = NULL;
	int ret;

	clear_err(err);
	*imgp = NULL;
	/* A differencing disk is refused below whatever its parent is, so
	 * do not make the open fail on a missing parent first. */
	ret = vhdx_open(path, VHDX_OPEN_NO_PARENT, &img, err);
	if (ret < 0) {
		if (!err || !err->msg[0])
			fail(err, ret, "%s: %s", path, strerror(-ret));
		return ret;
	}
	ret = dmview_table_of(img, t, err);
	if (ret) {
		vhdx_close(img);
		return ret;
	}
	*imgp = img;
	return 0;
}

int dmview_print(FILE *f, const struct dmview_table *t, const char *dev)
{
	size_t i;

	for (i = 0; i < t->n; i++) {
		const struct dmview_line *l = &t->v[i];

		if (l->linear)
			fprintf(f,
				"%" PRIu64 " %" PRIu64 " linear %s %" PRIu64
				"\n",
				l->start, l->len, dev, l->dev_off);
		else
			fprintf(f, "%" PRIu64 " %" PRIu64 " zero\n", l->start,
				l->len);
	}
	if (fflush(f) || ferror(f))
		return -EIO;
	return 0;
}

/* --- names ------------------------------------------------------------- */

bool dmview_valid_name(const char *name)
{
	size_t i, n = strlen(name);

	if (!n || n > DMVIEW_NAME_MAX || name[0] == '.' || name[0] == '-' ||
	    !strcmp(name, "control"))
		return false;
	for (i = 0; i < n; i++)
		if (!isalnum((unsigned char)name[i]) &&
		    !strchr("._+-", name[i]))
			return false;
	return true;
}

uint64_t dmview_hash(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* Append S to OUT at *LEN, characters outside the name set made '_'. */
static void name_put(char *out, size_t cap, size_t *len, const char *s,
		     size_t n)
{
	size_t i;

	for (i = 0; i < n && *len + 1 < cap; i++) {
		unsigned char c = (unsigned char)s[i];

		out[(*len)++] = isalnum(c) || strchr("._+-", c) ? (char)c : '_';
	}
	out[*len] = '\0';
}

void dmview_name(const char *vm, const char *disk, char *out, size_t n)
{
	char buf[4 * DMVIEW_NAME_MAX + 64], key[2 * PATH_MAX];
	size_t len = 0, stem = strlen(disk), cut;
	const char *dot = strrchr(disk, '.');

	if (dot && dot != disk &&
	    (!strcasecmp(dot, ".vhdx") || !strcasecmp(dot, ".avhdx")))
		stem = (size_t)(dot - disk);
	name_put(buf, sizeof(buf), &len, "hvresync-", 9);
	name_put(buf, sizeof(buf), &len, vm, strlen(vm));
	name_put(buf, sizeof(buf), &len, "-", 1);
	name_put(buf, sizeof(buf), &len, disk, stem);
	if (len > DMVIEW_DERIVED_MAX) {
		/* Keep the start, which says whose it is, and make the end
		 * tell apart names that share it. */
		snprintf(key, sizeof(key), "%s/%s", vm, disk);
		cut = DMVIEW_DERIVED_MAX - 9;
		snprintf(buf + cut, sizeof(buf) - cut, "-%08" PRIx32,
			 (uint32_t)(dmview_hash(key) ^ dmview_hash(key) >> 32));
	}
	snprintf(out, n, "%s", buf);
}

/* --- the kernel -------------------------------------------------------- */

/* libdevmapper reports errors through a log callback (by default onto
 * stderr, several lines per failure); keep the first error of each
 * request so the caller can say it in its own single line. */
#define DMLOG_LEVEL_MASK 0x7 /* libdevmapper's _LOG_* levels */
#define DMLOG_ERR 3

static char dm_last_error[512];
static bool dm_log_set;

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

/* Start a request: our logger, and no error of an earlier one. */
static void dm_begin(void)
{
	if (!dm_log_set) {
		dm_log_with_errno_init(dm_log);
		dm_log_set = true;
	}
	dm_last_error[0] = '\0';
}

static const char *dm_why(const char *fallback)
{
	return dm_last_error[0] ? dm_last_error : fallback;
}

void dmview_release(void)
{
	if (dm_log_set)
		dm_lib_release();
}

/* The control node, or failing that the misc device libdevmapper would
 * create the node for. */
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

int dmview_kernel_check(const char *name, bool need_loop,
			struct vhdx_error *err)
{
	clear_err(err);
	if (!have_device_mapper())
		return fail(
			err, -ENODEV,
			"%s: this kernel has no device-mapper (%s is missing; try 'modprobe dm_mod')",
			name, DM_CONTROL);
	if (need_loop && access(LOOP_CONTROL, F_OK) < 0)
		return fail(
			err, -ENODEV,
			"%s: this kernel has no loop devices (%s is missing; try 'modprobe loop')",
			name, LOOP_CONTROL);
	return 0;
}

int dmview_kernel_has_target(const char *target)
{
	struct dm_versions *v, *last;
	struct dm_task *dmt;
	int found = 0;

	if (!have_device_mapper())
		return -ENODEV;
	dm_begin();
	dmt = dm_task_create(DM_DEVICE_LIST_VERSIONS);
	if (!dmt)
		return -ENOMEM;
	if (!dm_task_run(dmt) || !(v = dm_task_get_versions(dmt))) {
		dm_task_destroy(dmt);
		return -EIO;
	}
	do {
		last = v;
		if (!strcmp(v->name, target))
			found = 1;
		v = (struct dm_versions *)((char *)v + v->next);
	} while (!found && last != v);
	dm_task_destroy(dmt);
	return found;
}

static double mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned udev_secs(const struct dmview_opts *o)
{
	return o && o->udev_timeout ? o->udev_timeout
				    : DMVIEW_UDEV_TIMEOUT_DEFAULT;
}

/*
 * Wait for udev's confirmation of COOKIE for at most SECS.  Past it, do
 * udev's part ourselves, which removes the semaphore and lets
 * libdevmapper make or remove the node itself; then -ETIMEDOUT.
 */
static int udev_wait(uint32_t cookie, unsigned secs)
{
	struct timespec ts = { 0, UDEV_POLL_NS };
	double deadline = mono_now() + secs;
	int ready;

	/* No cookie: no udev sync; dm_udev_wait() only runs the node
	 * changes (dm_udev_wait_immediate() would never say ready). */
	if (!cookie) {
		dm_udev_wait(0);
		return 0;
	}
	for (;;) {
		ready = 0;
		if (!dm_udev_wait_immediate(cookie, &ready) || ready)
			return 0;
		if (mono_now() >= deadline)
			break;
		nanosleep(&ts, NULL);
	}
	dm_udev_complete(cookie);
	ready = 0;
	dm_udev_wait_immediate(cookie, &ready);
	return -ETIMEDOUT;
}

/* Run a request that changes device nodes; *OK says whether the ioctl
 * worked.  0 or -ETIMEDOUT (the ioctl's effect stays). */
static int run_synced(struct dm_task *dmt, const struct dmview_opts *o,
		      bool *ok)
{
	uint32_t cookie = 0;

	dm_udev_set_sync_support(!(o && o->noudevsync));
	*ok = false;
	if (!dm_task_set_cookie(dmt, &cookie, 0))
		return 0;
	*ok = dm_task_run(dmt);
	return udev_wait(cookie, udev_secs(o));
}

static int udev_timeout_msg(struct vhdx_error *err, const char *name,
			    const struct dmview_opts *o)
{
	return fail(
		err, -ETIMEDOUT,
		"%s: udev did not confirm /dev/mapper/%s within %u s (dmsetup's udev rules 55-dm.rules and 95-dm-notify.rules may be missing); try --noudevsync",
		name, name, udev_secs(o));
}

/* Whether NAME exists: 1 (UUID filled, may be ""), 0, or a negative
 * errno.  OPEN gets its open count. */
static int dm_lookup(const char *name, char *uuid, size_t n, int *open,
		     struct vhdx_error *err)
{
	struct dm_task *dmt;
	struct dm_info di;
	int ret = -EIO;

	dm_begin();
	dmt = dm_task_create(DM_DEVICE_INFO);
	if (!dmt)
		return fail(err, -ENOMEM, "%s: cannot query device-mapper: %s",
			    name, dm_why("out of memory"));
	if (!dm_task_set_name(dmt, name) || !dm_task_run(dmt) ||
	    !dm_task_get_info(dmt, &di)) {
		fail(err, -EIO, "%s: cannot query device-mapper: %s", name,
		     dm_why("the info ioctl failed"));
		goto out;
	}
	ret = di.exists ? 1 : 0;
	if (di.exists && uuid) {
		const char *u = dm_task_get_uuid(dmt);

		snprintf(uuid, n, "%s", u ? u : "");
	}
	if (open)
		*open = di.exists ? di.open_count : 0;
out:
	dm_task_destroy(dmt);
	return ret;
}

/* --- loop devices ------------------------------------------------------ */

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

int dmview_find_loop(const char *image, char *dev, size_t n)
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

/*
 * Before Linux 5.8 (no LOOP_CONFIGURE): the old two-step setup of the loop
 * device FD.  An O_RDONLY backing fd already makes it read-only.  *BOUND
 * says the first step worked (and was undone when the second failed), so
 * another device would fare no better.
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

/*
 * A read-only loop device over IMG's file, big enough for T.  The file is
 * reopened through the image's own descriptor, so the loop device backs
 * the very file whose table we built even if PATH was replaced since.
 * Returns its open descriptor (closing it detaches it) or a negative errno.
 */
static int map_loop(struct vhdx_image *img, const char *path,
		    const struct dmview_table *t, dev_t *rdev,
		    struct vhdx_error *err)
{
	char loopdev[300], self[64];
	char *abspath;
	uint64_t loop_bytes = 0;
	int image_fd, lfd = -1, ret;

	snprintf(self, sizeof(self), "/proc/self/fd/%d", vhdx_get_fd(img));
	image_fd = open(self, O_RDONLY | O_CLOEXEC);
	if (image_fd < 0)
		image_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (image_fd < 0)
		return fail(err, -errno, "%s: %s", path, strerror(errno));
	abspath = realpath(path, NULL);
	ret = loop_attach(image_fd, abspath ? abspath : path, loopdev,
			  sizeof(loopdev), &lfd, rdev);
	free(abspath);
	/* The loop device holds the file now. */
	close(image_fd);
	if (ret)
		return fail(err, ret, "%s: cannot set up a loop device: %s",
			    path, strerror(-ret));
	if (vhdx_blockdev_geometry(lfd, &loop_bytes, NULL) < 0 ||
	    loop_bytes / SECTOR < t->dev_end) {
		loop_detach(lfd);
		return fail(err, -EIO,
			    "%s: %s holds %" PRIu64
			    " sectors, the table needs %" PRIu64,
			    path, loopdev, loop_bytes / SECTOR, t->dev_end);
	}
	return lfd;
}

/* --- map --------------------------------------------------------------- */

/* After a refused table: say which target the kernel lacks, if one. */
static bool missing_target_msg(const char *name, const struct dmview_table *t,
			       struct vhdx_error *err)
{
	static const char *const targets[][2] = {
		{ "zero", "dm-zero" },
		{ "linear", "dm-mod" },
	};
	bool need_zero = false, need_linear = false;
	size_t i;

	for (i = 0; i < t->n; i++) {
		if (t->v[i].linear)
			need_linear = true;
		else
			need_zero = true;
	}
	for (i = 0; i < 2; i++) {
		if (!(i == 0 ? need_zero : need_linear) ||
		    dmview_kernel_has_target(targets[i][0]) != 0)
			continue;
		fail(err, -ENODEV,
		     "%s: the kernel has no device-mapper '%s' target: load it with 'modprobe %s'",
		     name, targets[i][0], targets[i][1]);
		return true;
	}
	return false;
}

static int dm_remove_task(const char *name, bool deferred,
			  const struct dmview_opts *o, struct vhdx_error *err);

/* Create /dev/mapper/NAME, read-only and marked as ours by its uuid,
 * from T over the loop device RDEV. */
static int dm_create(const char *name, const char *uuid, dev_t rdev,
		     const struct dmview_table *t, const struct dmview_opts *o,
		     struct vhdx_error *err)
{
	char params[64];
	struct dm_task *dmt;
	bool ok;
	int ret = -ENOMEM;
	size_t i;

	dm_begin();
	dmt = dm_task_create(DM_DEVICE_CREATE);
	if (!dmt || !dm_task_set_name(dmt, name) ||
	    !dm_task_set_uuid(dmt, uuid) || !dm_task_set_ro(dmt)) {
		fail(err, -ENOMEM,
		     "%s: cannot prepare the device-mapper request: %s", name,
		     dm_why("out of memory"));
		goto out;
	}
	snprintf(params, sizeof(params), "%u:%u", major(rdev), minor(rdev));
	for (i = 0; i < t->n; i++) {
		const struct dmview_line *l = &t->v[i];
		char p[96];

		if (l->linear)
			snprintf(p, sizeof(p), "%s %" PRIu64, params,
				 l->dev_off);
		else
			p[0] = '\0';
		if (!dm_task_add_target(dmt, l->start, l->len,
					l->linear ? "linear" : "zero", p)) {
			fail(err, -ENOMEM,
			     "%s: cannot build the device-mapper table: %s",
			     name, dm_why("out of memory"));
			goto out;
		}
	}
	ret = run_synced(dmt, o, &ok);
	if (ret == -ETIMEDOUT) {
		struct dmview_opts quick = { .noudevsync = true };

		/* The device exists but udev never said so: take it down
		 * again without waiting for udev a second time. */
		udev_timeout_msg(err, name, o);
		if (ok)
			dm_remove_task(name, false, &quick, NULL);
		goto out;
	}
	if (!ok) {
		char why[512];

		snprintf(why, sizeof(why), "%s",
			 dm_why("the create ioctl failed"));
		ret = -EIO;
		if (!missing_target_msg(name, t, err))
			fail(err, -EIO, "%s: cannot create /dev/mapper/%s: %s",
			     name, name, why);
		goto out;
	}
	ret = 0;
out:
	if (dmt)
		dm_task_destroy(dmt);
	return ret;
}

int dmview_map_image(struct vhdx_image *img, const char *path, const char *name,
		     const struct dmview_opts *o, struct vhdx_error *err)
{
	char uuid[DMVIEW_UUID_LEN];
	struct dmview_table t = { 0 };
	dev_t rdev = 0;
	int lfd = -1, ret;

	clear_err(err);
	if (!dmview_valid_name(name))
		return fail(err, -EINVAL, "%s: not a usable device name", name);
	snprintf(uuid, sizeof(uuid), "%s",
		 o && o->uuid ? o->uuid : DMVIEW_UUID_PREFIX);
	if (!(o && o->uuid) && strlen(uuid) + strlen(name) < sizeof(uuid))
		strcat(uuid, name);
	ret = dmview_kernel_check(name, true, err);
	if (ret)
		return ret;
	ret = dmview_table_of(img, &t, err);
	if (ret)
		return ret;
	ret = dm_lookup(name, NULL, 0, NULL, err);
	if (ret < 0)
		goto out;
	if (ret > 0) {
		ret = fail(err, -EEXIST, "%s: /dev/mapper/%s already exists",
			   name, name);
		goto out;
	}
	lfd = map_loop(img, path, &t, &rdev, err);
	if (lfd < 0) {
		ret = lfd;
		goto out;
	}
	/* From here on a failure must detach the loop device again. */
	ret = dm_create(name, uuid, rdev, &t, o, err);
	if (ret)
		goto out;
	/* The table now holds the loop device open; dropping our reference
	 * lets autoclear detach it when the mapping goes away. */
	close(lfd);
	lfd = -1;
out:
	if (lfd >= 0)
		loop_detach(lfd);
	dmview_table_free(&t);
	return ret;
}

int dmview_map(const char *path, const char *name, const struct dmview_opts *o,
	       struct vhdx_error *err)
{
	struct vhdx_image *img = NULL;
	struct dmview_table t = { 0 };
	int ret;

	clear_err(err);
	/* Everything that can refuse comes before the loop device exists. */
	ret = dmview_kernel_check(name, true, err);
	if (ret)
		return ret;
	ret = dmview_build(path, &img, &t, err);
	if (ret)
		return ret;
	dmview_table_free(&t);
	ret = dmview_map_image(img, path, name, o, err);
	vhdx_close(img);
	return ret;
}

/* --- unmap and sweep --------------------------------------------------- */

/* The loop devices among a DM device's dependencies. */
static int dm_loop_deps(const char *name, dev_t *out, unsigned max,
			unsigned *count, struct vhdx_error *err)
{
	struct dm_task *dmt;
	struct dm_deps *deps;
	unsigned i;
	int ret = -EIO;

	*count = 0;
	dm_begin();
	dmt = dm_task_create(DM_DEVICE_DEPS);
	if (!dmt || !dm_task_set_name(dmt, name) || !dm_task_run(dmt) ||
	    !(deps = dm_task_get_deps(dmt))) {
		fail(err, -EIO, "%s: cannot read its dependencies: %s", name,
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

/* Remove /dev/mapper/NAME (DEFERRED: on its last close). */
static int dm_remove_task(const char *name, bool deferred,
			  const struct dmview_opts *o, struct vhdx_error *err)
{
	struct dm_task *dmt;
	bool ok;
	int ret = -ENOMEM;

	dm_begin();
	dmt = dm_task_create(DM_DEVICE_REMOVE);
	if (!dmt || !dm_task_set_name(dmt, name) ||
	    (deferred ? !dm_task_deferred_remove(dmt)
		      : !dm_task_retry_remove(dmt))) {
		fail(err, -ENOMEM,
		     "%s: cannot prepare the device-mapper request: %s", name,
		     dm_why("out of memory"));
		goto out;
	}
	ret = run_synced(dmt, o, &ok);
	if (!ok) {
		ret = fail(err, -EBUSY, "%s: cannot remove /dev/mapper/%s: %s",
			   name, name,
			   dm_why("the remove ioctl failed (in use?)"));
		goto out;
	}
	if (ret == -ETIMEDOUT)
		udev_timeout_msg(err, name, o);
out:
	if (dmt)
		dm_task_destroy(dmt);
	return ret;
}

/* Detach the loop devices the mapping used (open in LFDS); a note in ERR
 * for one somebody else keeps open. */
static void loops_detach(const char *name, const dev_t *loops, const int *lfds,
			 unsigned n, struct vhdx_error *err)
{
	unsigned i;

	for (i = 0; i < n; i++) {
		if (lfds[i] < 0)
			continue;
		/* ENXIO: already detached.  With other openers left the
		 * kernel turns this into autoclear on their last close. */
		if (ioctl(lfds[i], LOOP_CLR_FD, 0) < 0 && errno != ENXIO &&
		    err && !err->msg[0])
			fail(err, 0,
			     "%s: loop device %u:%u stays until its last user closes it (%s)",
			     name, major(loops[i]), minor(loops[i]),
			     strerror(errno));
	}
}

/* Remove NAME, known to be ours, and detach its loop devices. */
static int remove_ours(const char *name, const struct dmview_opts *o,
		       struct vhdx_error *err)
{
	dev_t loops[MAX_LOOP_DEPS];
	int lfds[MAX_LOOP_DEPS];
	unsigned nloops = 0, i;
	int ret;

	ret = dm_loop_deps(name, loops, MAX_LOOP_DEPS, &nloops, err);
	if (ret)
		return ret;
	/* Hold the loop devices open across the removal: autoclear cannot
	 * free them then, so the number cannot pass to somebody else's
	 * loop device before our LOOP_CLR_FD below. */
	for (i = 0; i < nloops; i++)
		lfds[i] = open_blockdev(loops[i]);
	ret = dm_remove_task(name, false, o, err);
	/* A udev timeout still removed the device. */
	if (ret == 0 || ret == -ETIMEDOUT)
		loops_detach(name, loops, lfds, nloops, ret ? NULL : err);
	for (i = 0; i < nloops; i++)
		if (lfds[i] >= 0)
			close(lfds[i]);
	return ret;
}

int dmview_unmap(const char *name, const struct dmview_opts *o,
		 struct vhdx_error *err)
{
	char uuid[DMVIEW_UUID_LEN];
	int ret;

	clear_err(err);
	ret = dmview_kernel_check(name, false, err);
	if (ret)
		return ret;
	ret = dm_lookup(name, uuid, sizeof(uuid), NULL, err);
	if (ret < 0)
		return ret;
	if (ret == 0)
		return fail(err, -ENOENT, "%s: no such device-mapper device",
			    name);
	if (strncmp(uuid, DMVIEW_UUID_PREFIX, strlen(DMVIEW_UUID_PREFIX)))
		return fail(
			err, -EPERM,
			"%s: not made by 'hvresync map' (uuid '%s'); remove it with dmsetup",
			name, uuid);
	return remove_ours(name, o, err);
}

/* The length of NAME's live table in sectors, or 0. */
static uint64_t table_sectors(const char *name)
{
	uint64_t start, len, end = 0;
	char *type, *params;
	struct dm_task *dmt;
	void *next = NULL;

	dm_begin();
	dmt = dm_task_create(DM_DEVICE_TABLE);
	if (!dmt)
		return 0;
	if (dm_task_set_name(dmt, name) && dm_task_run(dmt)) {
		do {
			type = params = NULL;
			next = dm_get_next_target(dmt, next, &start, &len,
						  &type, &params);
			if (type && start + len > end)
				end = start + len;
		} while (next);
	}
	dm_task_destroy(dmt);
	return end;
}

/*
 * NAME is open: make every read fail from now on (it no longer reads the
 * image, which the caller is about to stop locking, and lets go of the
 * loop device, which autoclear then detaches) and have the kernel remove
 * it on its last close.
 */
static int retire_busy(const char *name, const struct dmview_opts *o,
		       struct vhdx_error *err)
{
	struct dmview_opts quick = { .noudevsync = true };
	uint64_t sectors = table_sectors(name);
	struct dm_task *dmt;
	bool ok;
	int ret;

	if (sectors) {
		dm_begin();
		dmt = dm_task_create(DM_DEVICE_RELOAD);
		ok = dmt && dm_task_set_name(dmt, name) &&
		     dm_task_set_ro(dmt) &&
		     dm_task_add_target(dmt, 0, sectors, "error", "") &&
		     dm_task_run(dmt);
		if (dmt)
			dm_task_destroy(dmt);
		if (!ok)
			return fail(err, -EIO,
				    "%s: cannot load an error table: %s", name,
				    dm_why("the reload ioctl failed"));
		dm_begin();
		dmt = dm_task_create(DM_DEVICE_RESUME);
		if (!dmt || !dm_task_set_name(dmt, name)) {
			if (dmt)
				dm_task_destroy(dmt);
			return fail(err, -ENOMEM, "%s: out of memory", name);
		}
		ret = run_synced(dmt, o, &ok);
		dm_task_destroy(dmt);
		if (!ok)
			return fail(err, -EIO,
				    "%s: cannot switch to the error table: %s",
				    name, dm_why("the resume ioctl failed"));
		/* udev is not answering: do not wait for it again. */
		if (ret == -ETIMEDOUT)
			o = &quick;
	}
	return dm_remove_task(name, true, o, err);
}

/* The names of every device-mapper device whose uuid starts with PREFIX,
 * NUL-separated in *OUT (free it); their number, or a negative errno. */
static int list_ours(const char *prefix, char **out, struct vhdx_error *err)
{
	struct dm_names *nm;
	struct dm_task *dmt;
	size_t used = 0, cap = 0;
	unsigned next = 0;
	char *buf = NULL, uuid[DMVIEW_UUID_LEN];
	int count = 0, ret;

	*out = NULL;
	dm_begin();
	dmt = dm_task_create(DM_DEVICE_LIST);
	if (!dmt)
		return fail(err, -ENOMEM, "device-mapper: out of memory");
	if (!dm_task_run(dmt) || !(nm = dm_task_get_names(dmt))) {
		ret = fail(err, -EIO, "device-mapper: cannot list devices: %s",
			   dm_why("the list ioctl failed"));
		dm_task_destroy(dmt);
		return ret;
	}
	if (nm->dev) {
		do {
			size_t n;

			nm = (struct dm_names *)((char *)nm + next);
			n = strlen(nm->name) + 1;
			next = nm->next;
			if (used + n > cap) {
				char *b;

				cap = (used + n) * 2 + 256;
				b = realloc(buf, cap);
				if (!b) {
					free(buf);
					dm_task_destroy(dmt);
					return fail(
						err, -ENOMEM,
						"device-mapper: out of memory");
				}
				buf = b;
			}
			memcpy(buf + used, nm->name, n);
			used += n;
		} while (next);
	}
	dm_task_destroy(dmt);
	/* Keep only ours (the list holds no uuids). */
	{
		size_t r = 0, w = 0;

		while (r < used) {
			size_t n = strlen(buf + r) + 1;

			if (dm_lookup(buf + r, uuid, sizeof(uuid), NULL,
				      NULL) == 1 &&
			    !strncmp(uuid, prefix, strlen(prefix))) {
				memmove(buf + w, buf + r, n);
				w += n;
				count++;
			}
			r += n;
		}
	}
	*out = buf;
	if (!count) {
		free(buf);
		*out = NULL;
	}
	return count;
}

int dmview_any(const char *uuid_prefix)
{
	char *names;
	int n;

	if (!have_device_mapper())
		return 0;
	n = list_ours(uuid_prefix, &names, NULL);
	free(names);
	return n < 0 ? n : n > 0;
}

void dmview_forget_node(const char *name)
{
	char p[PATH_MAX];
	struct stat st;

	if (!dmview_valid_name(name))
		return;
	snprintf(p, sizeof(p), DM_DIR_PATH "%s", name);
	if (lstat(p, &st) == 0 && S_ISBLK(st.st_mode) &&
	    dm_lookup(name, NULL, 0, NULL, NULL) == 0)
		unlink(p);
}

int dmview_sweep(const char *uuid_prefix, const struct dmview_opts *o,
		 void (*found)(const char *name, bool busy, void *ctx),
		 void *ctx, unsigned *left, struct vhdx_error *err)
{
	struct vhdx_error one;
	char *names, *name;
	int n, i, ret = 0, r, open;

	clear_err(err);
	if (left)
		*left = 0;
	if (strncmp(uuid_prefix, DMVIEW_UUID_PREFIX,
		    strlen(DMVIEW_UUID_PREFIX)))
		return fail(err, -EINVAL, "%s: not a prefix of ours",
			    uuid_prefix);
	if (!have_device_mapper())
		return 0;
	n = list_ours(uuid_prefix, &names, err);
	if (n <= 0)
		return n;
	for (i = 0, name = names; i < n; i++, name += strlen(name) + 1) {
		one.msg[0] = '\0';
		if (dm_lookup(name, NULL, 0, &open, &one) != 1)
			continue;
		if (found)
			found(name, open > 0, ctx);
		r = open > 0 ? -EBUSY : remove_ours(name, o, &one);
		if (r == -EBUSY) {
			/* Still read by somebody (the agent's job after
			 * our parent died): never leave it readable. */
			one.msg[0] = '\0';
			r = retire_busy(name, o, &one);
			if (r == 0 && left)
				(*left)++;
		}
		if (r && !ret) {
			ret = r;
			if (err)
				*err = one;
		}
	}
	free(names);
	return ret;
}
