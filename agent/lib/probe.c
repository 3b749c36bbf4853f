/* SPDX-License-Identifier: MIT */
/*
 * probe.c - partition table and filesystem detection on a VHDX's raw view.
 *
 * libblkid probes file descriptors, not callbacks, so it needs the view's
 * bytes in a file.  Rather than mount the FUSE view (root or fusermount,
 * and a mount left behind if we are killed) or attach a device, we build a
 * sparse stand-in: a memfd as long as the virtual disk holding only the
 * areas libblkid looks at - the first and last 2 MiB of the disk (MBR, GPT
 * and its backup) and of each partition (superblocks live near the start,
 * RAID and some labels near the end) - copied through vhdx_pread(), the
 * same extent map every reader uses, so the bytes are exactly what the
 * view shows, log replay and parent chain included.  Everything else reads
 * as zeros, which no prober takes for a signature.  The memfd is anonymous
 * memory that vanishes with the process; all-zero pages are never written,
 * and each partition's pages are freed once it has been probed, so a disk
 * with 128 partitions costs a few MiB, not hundreds.
 *
 * A few structures outside those windows are copied too, found by
 * following pointers the way libblkid will: the chain of MBR extended boot
 * records anywhere inside an extended partition, and the NTFS $MFT and the
 * FAT32/exFAT root directory that hold volume labels.
 *
 * A raw disk (an image, a view file, a block device) needs no stand-in:
 * libblkid reads it in place, through the same steps.  Comparing two
 * probes - does a recovery disk show what its primary shows? - is here
 * too, so every command judges the same way.
 */
#include <blkid/blkid.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/lib/fmt.h"
#include "agent/lib/probe.h"
#include "vhdx/le.h"

#define WINDOW (2ull << 20)
#define COPY_CHUNK (256u << 10)
#define PAGE_LEN 4096u
#define MAX_EBRS 1024 /* more logical partitions than any tool makes */

struct view {
	struct vhdx_image *img; /* NULL: FD is a raw disk, probed in place */
	uint64_t size;
	unsigned sector;
	int fd;	      /* what libblkid reads */
	uint8_t *buf; /* COPY_CHUNK bytes (a VHDX only) */
	char *why;
	size_t why_len;
};

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static bool all_zero(const uint8_t *p, size_t len)
{
	return len == 0 || (p[0] == 0 && !memcmp(p, p + 1, len - 1));
}

static int write_all(int fd, const uint8_t *p, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, p, len, off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= n;
		off += n;
	}
	return 0;
}

/* Copy virtual bytes [OFF, OFF+LEN) (clipped to the disk) into the memfd. */
static int copy_range(struct view *v, uint64_t off, uint64_t len)
{
	if (off >= v->size)
		return 0;
	len = min_u64(len, v->size - off);
	while (len) {
		size_t want = min_u64(len, COPY_CHUNK), p;
		ssize_t n = vhdx_pread(v->img, v->buf, want, off);
		int ret;

		if (n <= 0) {
			ret = n < 0 ? (int)n : -EIO;
			snprintf(v->why, v->why_len,
				 "reading the raw view at byte %llu: %s",
				 (unsigned long long)off, strerror(-ret));
			return ret;
		}
		for (p = 0; p < (size_t)n; p += PAGE_LEN) {
			size_t pl = min_u64(PAGE_LEN, n - p);

			if (all_zero(v->buf + p, pl))
				continue;
			ret = write_all(v->fd, v->buf + p, pl, off + p);
			if (ret) {
				snprintf(v->why, v->why_len,
					 "writing the probe buffer: %s",
					 strerror(-ret));
				return ret;
			}
		}
		off += n;
		len -= n;
	}
	return 0;
}

/* The first and last 2 MiB of [START, START+SIZE). */
static int copy_windows(struct view *v, uint64_t start, uint64_t size)
{
	uint64_t w = min_u64(WINDOW, size);
	int ret;

	ret = copy_range(v, start, w);
	if (!ret && size > w)
		ret = copy_range(v, start + size - w, w);
	return ret;
}

/* Free the memory a probed partition used: only memory is at stake, so a
 * failure just leaves the pages in place. */
static void drop_range(struct view *v, uint64_t start, uint64_t size)
{
	if (!v->img)
		return; /* the fd is the raw disk itself: never punch it */
	fallocate(v->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start,
		  size);
}

static int open_buffer(uint64_t size)
{
	int fd;

	fd = memfd_create("hvresync-probe", MFD_CLOEXEC);
	/* memfd forbidden (seccomp, old kernel): an unnamed file in /tmp */
	if (fd < 0)
		fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, size) < 0) {
		int ret = -errno;

		close(fd);
		return ret;
	}
	return fd;
}

static void set_str(char *dst, size_t len, const char *src)
{
	snprintf(dst, len, "%s", src ? src : "");
}

static blkid_probe new_probe(struct view *v, uint64_t off, uint64_t size)
{
	blkid_probe pr = blkid_new_probe();

	if (!pr)
		return NULL;
	if (blkid_probe_set_device(pr, v->fd, off, size) < 0) {
		blkid_free_probe(pr);
		return NULL;
	}
	/* libblkid assumes 512 for a regular file; a 4Kn disk keeps its GPT
	 * header at byte 4096 and counts MBR sectors in 4 KiB units. */
	blkid_probe_set_sectorsize(pr, v->sector);
	return pr;
}

static int probe_fail(struct view *v, const char *what)
{
	snprintf(v->why, v->why_len, "libblkid could not %s", what);
	return -EIO;
}

/* Superblock chain on [OFF, OFF+SIZE): TYPE, LABEL, UUID. */
static int probe_fs(struct view *v, uint64_t off, uint64_t size,
		    struct probe_fs *fs)
{
	const char *val;
	blkid_probe pr;
	int rc;

	memset(fs, 0, sizeof(*fs));
	if (size < 512)
		return 0;
	pr = new_probe(v, off, size);
	if (!pr)
		return probe_fail(v, "set up a probe");
	blkid_probe_enable_partitions(pr, 0);
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(
		pr, BLKID_SUBLKS_LABEL | BLKID_SUBLKS_UUID | BLKID_SUBLKS_TYPE |
			    BLKID_SUBLKS_USAGE | BLKID_SUBLKS_VERSION);
	rc = blkid_do_safeprobe(pr);
	if (rc == -2) {
		fs->ambivalent = true;
	} else if (rc == 0 &&
		   !blkid_probe_lookup_value(pr, "TYPE", &val, NULL)) {
		fs->found = true;
		set_str(fs->type, sizeof(fs->type), val);
		if (!blkid_probe_lookup_value(pr, "LABEL", &val, NULL))
			set_str(fs->label, sizeof(fs->label), val);
		if (!blkid_probe_lookup_value(pr, "UUID", &val, NULL))
			set_str(fs->uuid, sizeof(fs->uuid), val);
		if (!blkid_probe_lookup_value(pr, "VERSION", &val, NULL))
			set_str(fs->version, sizeof(fs->version), val);
		if (!blkid_probe_lookup_value(pr, "USAGE", &val, NULL))
			set_str(fs->usage, sizeof(fs->usage), val);
	}
	blkid_free_probe(pr);
	return rc == -1 ? probe_fail(v, "probe for a filesystem") : 0;
}

/* Byte offset of the area a boot sector points at, or 0 if there is none
 * worth copying.  *LEN receives how much to copy. */
static uint64_t fs_extra_area(const uint8_t *bs, uint64_t *len)
{
	uint64_t cluster, off;
	unsigned bps, spc;
	int8_t cpr;

	bps = le16_get(bs + 0x0b);
	spc = bs[0x0d];
	if (!memcmp(bs + 3, "NTFS    ", 8)) {
		/* Cluster counts above 128 are stored as a negative shift. */
		if (spc > 0x80)
			spc = spc < 0xa0 ? 1u << (256 - spc) : 0;
		cluster = (uint64_t)bps * spc;
		cpr = (int8_t)bs[0x40];
		if (cpr > 0)
			*len = (uint64_t)cpr * cluster;
		else if (cpr > -24)
			*len = 1ull << -cpr;
		else
			return 0;
		/* $MFT is record 0, $Volume (with the label) record 3. */
		*len *= 8;
		return le64_get(bs + 0x30) * cluster;
	}
	if (!memcmp(bs + 3, "EXFAT   ", 8)) {
		unsigned bshift = bs[0x6c], cshift = bs[0x6d];
		uint32_t heap = le32_get(bs + 0x58), root = le32_get(bs + 0x60);

		if (bshift < 9 || bshift > 12 || cshift > 25 - bshift ||
		    root < 2)
			return 0;
		*len = 1ull << (bshift + cshift);
		return ((uint64_t)heap << bshift) +
		       ((uint64_t)(root - 2) << (bshift + cshift));
	}
	if (le16_get(bs + 0x16) == 0 && le32_get(bs + 0x24) &&
	    !memcmp(bs + 0x52, "FAT32   ", 8)) {
		uint32_t root = le32_get(bs + 0x2c);

		if (root < 2)
			return 0;
		cluster = (uint64_t)bps * spc;
		off = ((uint64_t)le16_get(bs + 0x0e) +
		       (uint64_t)bs[0x10] * le32_get(bs + 0x24)) *
		      bps;
		*len = cluster;
		return off + (uint64_t)(root - 2) * cluster;
	}
	return 0;
}

/*
 * A few probers read far from the windows: NTFS checks its $MFT and takes
 * the label from the $Volume record wherever the MFT lives (gigabytes into
 * a large volume); FAT32 and exFAT keep the label in the root directory,
 * after the FATs.  The boot sector (already copied) says where; copy that
 * too, so the results match what blkid says on the real device.
 */
static int copy_fs_extras(struct view *v, uint64_t start, uint64_t size)
{
	uint64_t off, len = 0;
	ssize_t n;

	n = pread(v->fd, v->buf, 512, start);
	if (n != 512)
		return 0;
	off = fs_extra_area(v->buf, &len);
	if (!off || !len || off >= size)
		return 0;
	len = min_u64(min_u64(len, 1u << 20), size - off);
	return copy_range(v, start + off, len);
}

static bool is_ext_type(uint8_t t)
{
	return t == 0x05 || t == 0x0f || t == 0x85;
}

/*
 * Copy the extended boot records of the extended partition at START so
 * that libblkid finds the logical partitions.  Each EBR's second entry
 * links to the next one, relative to the extended partition's start.
 */
static int copy_ebr_chain(struct view *v, uint64_t start, uint64_t size)
{
	uint64_t rel = 0, next;
	const uint8_t *link;
	unsigned i;
	ssize_t n;
	int ret;

	for (i = 0; i < MAX_EBRS; i++) {
		if (rel >= size || start + rel + v->sector > v->size)
			break;
		ret = copy_range(v, start + rel, v->sector);
		if (ret)
			return ret;
		n = pread(v->fd, v->buf, 512, start + rel);
		if (n != 512 || v->buf[510] != 0x55 || v->buf[511] != 0xaa)
			break;
		link = v->buf + 446 + 16;
		if (!is_ext_type(link[4]) || !le32_get(link + 8))
			break;
		next = (uint64_t)le32_get(link + 8) * v->sector;
		if (next <= rel) /* a loop, or garbage: stop here */
			break;
		rel = next;
	}
	return 0;
}

static void fill_part(struct view *v, blkid_partition par, struct probe_part *p)
{
	const char *s;

	memset(p, 0, sizeof(*p));
	p->number = blkid_partition_get_partno(par);
	/* libblkid counts in 512-byte units whatever the sector size. */
	p->start = (uint64_t)blkid_partition_get_start(par) * 512;
	p->size = (uint64_t)blkid_partition_get_size(par) * 512;
	s = blkid_partition_get_type_string(par);
	if (s)
		set_str(p->type, sizeof(p->type), s);
	else
		snprintf(p->type, sizeof(p->type), "0x%x",
			 (unsigned)blkid_partition_get_type(par));
	set_str(p->uuid, sizeof(p->uuid), blkid_partition_get_uuid(par));
	set_str(p->name, sizeof(p->name), blkid_partition_get_name(par));
	p->extended = blkid_partition_is_extended(par);
	p->logical = blkid_partition_is_logical(par);
	if (p->start >= v->size || p->size > v->size - p->start)
		p->past_end = true;
}

/*
 * Partition chain on the whole disk.  *EXTENDED is set when the table has
 * an MBR extended partition whose EBR chain still has to be copied.
 */
static int probe_table(struct view *v, struct probe_result *res, bool *extended)
{
	blkid_partlist ls;
	blkid_parttable tab;
	blkid_probe pr;
	int rc, n, i, ret = 0;

	*extended = false;
	free(res->parts);
	res->parts = NULL;
	res->nparts = 0;
	res->table_found = false;
	res->table_ambivalent = false;

	pr = new_probe(v, 0, v->size);
	if (!pr)
		return probe_fail(v, "set up a probe");
	blkid_probe_enable_superblocks(pr, 0);
	blkid_probe_enable_partitions(pr, 1);
	blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
	rc = blkid_do_safeprobe(pr);
	if (rc == -2) {
		res->table_ambivalent = true;
		goto out;
	}
	if (rc == -1) {
		ret = probe_fail(v, "probe for a partition table");
		goto out;
	}
	if (rc == 1)
		goto out;

	ls = blkid_probe_get_partitions(pr);
	tab = ls ? blkid_partlist_get_table(ls) : NULL;
	if (!tab)
		goto out;
	res->table_found = true;
	set_str(res->table_type, sizeof(res->table_type),
		blkid_parttable_get_type(tab));
	set_str(res->table_id, sizeof(res->table_id),
		blkid_parttable_get_id(tab));
	n = blkid_partlist_numof_partitions(ls);
	if (n <= 0)
		goto out;
	res->parts = calloc(n, sizeof(*res->parts));
	if (!res->parts) {
		ret = -ENOMEM;
		snprintf(v->why, v->why_len, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		blkid_partition par = blkid_partlist_get_partition(ls, i);

		if (!par)
			continue;
		fill_part(v, par, &res->parts[res->nparts]);
		if (res->parts[res->nparts].extended)
			*extended = true;
		res->nparts++;
	}
out:
	blkid_free_probe(pr);
	return ret;
}

/*
 * A VHDX's view is copied into the buffer piece by piece, just before
 * libblkid reads it; a raw disk (V->img NULL) is read in place and has
 * every byte already.
 */
static int fetch_area(struct view *v, uint64_t start, uint64_t size)
{
	int ret;

	if (!v->img)
		return 0;
	ret = copy_windows(v, start, size);
	if (!ret)
		ret = copy_fs_extras(v, start, size);
	return ret;
}

/* The table once more, now that the logical partitions' EBRs are there. */
static int probe_logical(struct view *v, struct probe_result *res)
{
	bool extended;
	unsigned i;
	int ret;

	for (i = 0; i < res->nparts; i++) {
		struct probe_part *p = &res->parts[i];

		if (!p->extended || p->past_end)
			continue;
		ret = copy_ebr_chain(v, p->start, p->size);
		if (ret)
			return ret;
	}
	return probe_table(v, res, &extended);
}

/* A filesystem in each partition that lies (at least partly) on the disk. */
static int probe_partitions(struct view *v, struct probe_result *res)
{
	unsigned i;
	int ret;

	for (i = 0; i < res->nparts; i++) {
		struct probe_part *p = &res->parts[i];
		uint64_t size;

		if (p->extended || p->start >= v->size)
			continue;
		size = min_u64(p->size, v->size - p->start);
		ret = fetch_area(v, p->start, size);
		if (!ret)
			ret = probe_fs(v, p->start, size, &p->fs);
		if (ret)
			return ret;
		drop_range(v, p->start, size);
	}
	return 0;
}

/* The table, a filesystem on the whole disk, one in each partition. */
static int probe_view(struct view *v, struct probe_result *res)
{
	bool extended;
	int ret;

	if (v->img) {
		ret = copy_windows(v, 0, v->size);
		if (ret)
			return ret;
	}
	ret = probe_table(v, res, &extended);
	if (!ret && extended && v->img)
		ret = probe_logical(v, res);
	if (!ret && v->img)
		ret = copy_fs_extras(v, 0, v->size);
	if (!ret)
		ret = probe_fs(v, 0, v->size, &res->disk_fs);
	if (!ret)
		ret = probe_partitions(v, res);
	return ret;
}

/* libblkid reads 512- or 4096-byte sectors; anything else as 512. */
static unsigned usable_sector(unsigned sector)
{
	return sector == 512 || sector == 4096 ? sector : 512;
}

int probe_image(struct vhdx_image *img, struct probe_result *res, char *why,
		size_t why_len)
{
	const struct vhdx_info *info = vhdx_get_info(img);
	struct view v = {
		.img = img,
		.size = info->virtual_size,
		.sector = usable_sector(info->logical_sector_size),
		.fd = -1,
		.why = why,
		.why_len = why_len,
	};
	int ret;

	memset(res, 0, sizeof(*res));
	if (why_len)
		why[0] = '\0';
	if (v.size < 512)
		return 0; /* nothing a table or superblock could fit in */

	v.buf = malloc(COPY_CHUNK);
	if (!v.buf) {
		snprintf(why, why_len, "out of memory");
		return -ENOMEM;
	}
	v.fd = open_buffer(v.size);
	if (v.fd < 0) {
		ret = v.fd;
		snprintf(why, why_len, "cannot make a probe buffer: %s",
			 strerror(-ret));
	} else {
		ret = probe_view(&v, res);
		close(v.fd);
	}
	free(v.buf);
	return ret;
}

/* probe_raw_path() on an open FD; PATH only names it in messages. */
static int probe_raw_fd(int fd, const char *path, unsigned sector,
			struct probe_result *res, char *why, size_t why_len)
{
	struct view v = { .fd = fd, .why = why, .why_len = why_len };
	uint32_t ssz = sector;
	struct stat st;
	int ret;

	if (fstat(fd, &st) < 0) {
		ret = -errno;
		snprintf(why, why_len, "%s: cannot open: %s", path,
			 strerror(-ret));
		return ret;
	}
	v.size = (uint64_t)st.st_size;
	if (S_ISBLK(st.st_mode)) {
		ret = vhdx_blockdev_geometry(fd, &v.size, &ssz);
		if (ret < 0) {
			snprintf(why, why_len,
				 "%s: cannot read the device's "
				 "geometry: %s",
				 path, strerror(-ret));
			return ret;
		}
	}
	v.sector = usable_sector(ssz);
	if (v.size < 512)
		return 0;
	ret = probe_view(&v, res);
	if (ret && why_len) {
		char tmp[1024];

		snprintf(tmp, sizeof(tmp), "%s", why);
		snprintf(why, why_len, "%s: %s", path, tmp);
	}
	return ret;
}

/* Clear @res and @why and open @path for reading; the descriptor, or a
 * negative errno with @why saying so. */
static int open_probed(const char *path, struct probe_result *res, char *why,
		       size_t why_len)
{
	int fd, ret;

	memset(res, 0, sizeof(*res));
	if (why_len)
		why[0] = '\0';
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		snprintf(why, why_len, "%s: cannot open: %s", path,
			 strerror(-ret));
		return ret;
	}
	return fd;
}

int probe_raw_path(const char *path, unsigned sector, struct probe_result *res,
		   char *why, size_t why_len)
{
	int fd, ret;

	fd = open_probed(path, res, why, why_len);
	if (fd < 0)
		return fd;
	ret = probe_raw_fd(fd, path, sector, res, why, why_len);
	close(fd);
	return ret;
}

int probe_path(const char *path, unsigned sector, struct probe_result *res,
	       char *why, size_t why_len)
{
	struct vhdx_error verr = { { 0 } };
	struct vhdx_image *img;
	char tmp[1024];
	int fd, ret;

	fd = open_probed(path, res, why, why_len);
	if (fd < 0)
		return fd;
	/* A file too short or unreadable for the signature is no VHDX. */
	if (vhdx_probe_fd(fd) != 1) {
		ret = probe_raw_fd(fd, path, sector, res, why, why_len);
		close(fd);
		return ret;
	}
	close(fd);
	ret = vhdx_open(path, 0, &img, &verr);
	if (ret < 0) {
		snprintf(why, why_len, "%s",
			 verr.msg[0] ? verr.msg : strerror(-ret));
		return ret;
	}
	ret = probe_image(img, res, why, why_len);
	if (ret < 0 && why_len && why[0]) {
		snprintf(tmp, sizeof(tmp), "%s", why);
		snprintf(why, why_len, "%s: %s", path, tmp);
	}
	vhdx_close(img);
	return ret;
}

/* --- Saying what a probe found, and comparing two ---------------------- */

/* "ext4 UUID=..." for a filesystem, into BUF. */
static void fs_text(const struct probe_fs *fs, char *buf, size_t len)
{
	if (fs->ambivalent)
		snprintf(buf, len, "more than one signature");
	else if (!fs->found)
		snprintf(buf, len, "no filesystem");
	else
		fmt_line(buf, len, "%s%s%s", fs->type,
			 fs->uuid[0] ? " UUID=" : "", fs->uuid);
}

void probe_describe(const struct probe_result *r, char *buf, size_t len)
{
	char fs[700];
	size_t used;
	unsigned i;

	if (r->table_ambivalent)
		used = (size_t)snprintf(buf, len,
					"an ambivalent partition table");
	else if (r->table_found)
		used = (size_t)snprintf(buf, len, "%s table %s, %u partition%s",
					r->table_type, r->table_id, r->nparts,
					r->nparts == 1 ? "" : "s");
	else
		used = (size_t)snprintf(buf, len, "no partition table");
	if (r->disk_fs.found || r->disk_fs.ambivalent) {
		fs_text(&r->disk_fs, fs, sizeof(fs));
		if (used < len)
			fmt_line(buf + used, len - used, ", whole disk %s", fs);
	}
	for (i = 0; i < r->nparts && used < len; i++) {
		if (r->parts[i].extended)
			continue;
		fs_text(&r->parts[i].fs, fs, sizeof(fs));
		fmt_line(buf + used, len - used, ", %d: %s", r->parts[i].number,
			 fs);
		used += strlen(buf + used);
	}
}

static bool fs_differs(const struct probe_fs *a, const struct probe_fs *b,
		       const char *where, char *why, size_t len)
{
	char fa[700], fb[700];

	if (a->found == b->found && a->ambivalent == b->ambivalent &&
	    !strcmp(a->type, b->type) && !strcmp(a->uuid, b->uuid))
		return false;
	fs_text(a, fa, sizeof(fa));
	fs_text(b, fb, sizeof(fb));
	fmt_line(why, len, "%s: %s on the primary, %s on the recovery disk",
		 where, fa, fb);
	return true;
}

static bool part_differs(const struct probe_part *p, const struct probe_part *q,
			 char *why, size_t len)
{
	if (p->number == q->number && p->start == q->start &&
	    p->size == q->size && !strcmp(p->type, q->type) &&
	    !strcmp(p->uuid, q->uuid) && !strcmp(p->name, q->name))
		return false;
	fmt_line(why, len,
		 "partition %d: start %llu size %llu type %s PARTUUID %s "
		 "on the primary, partition %d: start %llu size %llu type %s "
		 "PARTUUID %s on the recovery disk",
		 p->number, (unsigned long long)p->start,
		 (unsigned long long)p->size, p->type, p->uuid, q->number,
		 (unsigned long long)q->start, (unsigned long long)q->size,
		 q->type, q->uuid);
	return true;
}

bool probe_differ(const struct probe_result *a, const struct probe_result *b,
		  char *why, size_t len)
{
	char where[64];
	unsigned i;

	if (a->table_found != b->table_found ||
	    a->table_ambivalent != b->table_ambivalent ||
	    strcmp(a->table_type, b->table_type) ||
	    strcmp(a->table_id, b->table_id)) {
		fmt_line(why, len,
			 "partition table: %s %s on the primary, %s %s on "
			 "the recovery disk",
			 a->table_found ? a->table_type : "none", a->table_id,
			 b->table_found ? b->table_type : "none", b->table_id);
		return true;
	}
	if (a->nparts != b->nparts) {
		snprintf(why, len,
			 "%u partitions on the primary, %u on the "
			 "recovery disk",
			 a->nparts, b->nparts);
		return true;
	}
	if (fs_differs(&a->disk_fs, &b->disk_fs, "whole disk", why, len))
		return true;
	for (i = 0; i < a->nparts; i++) {
		const struct probe_part *p = &a->parts[i], *q = &b->parts[i];

		if (part_differs(p, q, why, len))
			return true;
		snprintf(where, sizeof(where), "partition %d", p->number);
		if (fs_differs(&p->fs, &q->fs, where, why, len))
			return true;
	}
	return false;
}

void probe_result_free(struct probe_result *res)
{
	free(res->parts);
	res->parts = NULL;
	res->nparts = 0;
}
