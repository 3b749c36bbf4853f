/* SPDX-License-Identifier: MIT */
/*
 * create.c - making new fixed, dynamic and differencing images.
 *
 * Layout: header section (1 MiB), log at 1 MiB (1 MiB), metadata region at
 * 2 MiB (1 MiB), BAT at 3 MiB, payload blocks after it.  The file is built
 * under its final name with O_EXCL and removed again on any failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define LOG_OFFSET (1 * MiB)
#define LOG_LENGTH (1 * MiB)
#define METADATA_OFFSET (2 * MiB)
#define METADATA_LENGTH (1 * MiB)
#define BAT_OFFSET (3 * MiB)
/* one buffer for the header section, then the metadata region */
#define BUF_LENGTH                                                             \
	(VHDX_HEADER_SECTION_SIZE > METADATA_LENGTH ? VHDX_HEADER_SECTION_SIZE \
						    : METADATA_LENGTH)
#define CREATOR "hvresync"

/* ASCII/UTF-8 to UTF-16LE; returns bytes written.  Non-ASCII bytes of the
 * UTF-8 input are decoded to their code points (BMP only). */
static size_t put_utf16(uint8_t *out, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = 0;
	uint32_t c;

	while (*p) {
		if (*p < 0x80) {
			c = *p++;
		} else if ((*p & 0xE0) == 0xC0 && p[1]) {
			c = ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
			p += 2;
		} else if ((*p & 0xF0) == 0xE0 && p[1] && p[2]) {
			c = ((uint32_t)(p[0] & 0x0F) << 12) |
			    ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
			p += 3;
		} else {
			c = 0xFFFD;
			p++;
		}
		le16_put(out + n, (uint16_t)c);
		n += 2;
	}
	return n;
}

static void put_guid_str(uint8_t *buf, const char *s)
{
	struct vhdx_guid g = vhdx_guid_const(s);

	vhdx_guid_to_le(&g, buf);
}

/* Relative Windows-style path from the directory of CHILD to PARENT. */
static char *relative_path(const char *child, const char *parent)
{
	char cdir[PATH_MAX], pabs[PATH_MAX], *tmp, *out, *o;
	const char *a, *b;
	size_t common = 0, i, ups = 0;

	tmp = strdup(child);
	if (!tmp)
		return NULL;
	if (!realpath(dirname(tmp), cdir) || !realpath(parent, pabs)) {
		free(tmp);
		return NULL;
	}
	free(tmp);
	/* longest common directory prefix */
	for (i = 0; cdir[i] && cdir[i] == pabs[i]; i++)
		if (cdir[i] == '/')
			common = i;
	if (!cdir[i] && pabs[i] == '/')
		common = i;
	a = cdir + common;
	b = pabs + common + 1;
	for (; *a; a++)
		if (*a == '/')
			ups++;
	out = malloc(strlen(b) + 3 * ups + 3);
	if (!out)
		return NULL;
	o = out;
	if (!ups) {
		memcpy(o, ".\\", 2);
		o += 2;
	}
	for (i = 0; i < ups; i++) {
		memcpy(o, "..\\", 3);
		o += 3;
	}
	for (; *b; b++)
		*o++ = *b == '/' ? '\\' : *b;
	*o = '\0';
	return out;
}

/* Build the parent locator for PARENT_PATH at BUF; returns its length. */
static size_t build_locator(uint8_t *buf, size_t cap,
			    const struct vhdx_guid *linkage, const char *rel,
			    const char *abs)
{
	const char *keys[3] = { "parent_linkage", "relative_path",
				"absolute_win32_path" };
	char link[VHDX_GUID_STR_LEN + 2], g[VHDX_GUID_STR_LEN];
	const char *vals[3];
	size_t pos, i, n = abs ? 3 : 2;

	vhdx_guid_format(linkage, g);
	/* Windows writes the linkage in lower case, and libvhdi reads only that
	 */
	for (i = 0; g[i]; i++)
		if (g[i] >= 'A' && g[i] <= 'F')
			g[i] = (char)(g[i] - 'A' + 'a');
	snprintf(link, sizeof(link), "{%s}", g);
	vals[0] = link;
	vals[1] = rel;
	vals[2] = abs;
	memset(buf, 0, cap);
	put_guid_str(buf, VHDX_PARENT_LOCATOR_TYPE_STR);
	le16_put(buf + 18, (uint16_t)n);
	pos = VHDX_LOCATOR_HDR_SIZE + n * VHDX_LOCATOR_ENTRY_SIZE;
	for (i = 0; i < n; i++) {
		uint8_t *e = buf + VHDX_LOCATOR_HDR_SIZE +
			     i * VHDX_LOCATOR_ENTRY_SIZE;
		size_t kl, vl;

		kl = put_utf16(buf + pos, keys[i]);
		le32_put(e, (uint32_t)pos);
		le16_put(e + 8, (uint16_t)kl);
		pos += kl;
		vl = put_utf16(buf + pos, vals[i]);
		le32_put(e + 4, (uint32_t)pos);
		le16_put(e + 10, (uint16_t)vl);
		pos += vl;
	}
	return pos;
}

static void md_entry(uint8_t *table, unsigned i, const char *guid, uint32_t off,
		     uint32_t len, uint32_t flags)
{
	uint8_t *e =
		table + VHDX_METADATA_HDR_SIZE + i * VHDX_METADATA_ENTRY_SIZE;

	put_guid_str(e, guid);
	le32_put(e + 16, off);
	le32_put(e + 20, len);
	le32_put(e + 24, flags);
}

/* What every section of a new image is built from. */
struct layout {
	struct vhdx_create_opts opts; /* defaults filled in */
	uint64_t blocks;	      /* payload blocks */
	uint64_t cr;		      /* chunk ratio */
	uint64_t bat_len;
	uint64_t data_off; /* first payload block */
	struct vhdx_guid file_write_guid, data_write_guid, page83;
	unsigned nmd;		  /* metadata items */
	struct vhdx_guid linkage; /* child only: the parent's ... */
	char *rel;		  /* ... relative_path ... */
	char pabs[PATH_MAX];	  /* ... and absolute path */
};

/* A child takes its parent's geometry: Hyper-V refuses a chain whose
 * sizes or sectors differ. */
static int take_parent(const char *path, struct layout *l,
		       struct vhdx_error *err)
{
	struct vhdx_create_opts *opts = &l->opts;
	struct vhdx_image *parent;
	struct vhdx_error perr;
	int ret;

	ret = vhdx_open(opts->parent, 0, &parent, &perr);
	if (ret)
		return vhdx_fail(err, ret, path, "parent %s", perr.msg);
	opts->virtual_size = parent->info.virtual_size;
	opts->logical_sector_size = parent->info.logical_sector_size;
	if (!opts->physical_sector_size)
		opts->physical_sector_size = parent->info.physical_sector_size;
	if (!opts->block_size)
		opts->block_size = 2 * MiB;
	l->linkage = parent->info.header[parent->info.current_header]
			     .data_write_guid;
	opts->fixed = false;
	l->rel = relative_path(path, opts->parent);
	if (!l->rel || !realpath(opts->parent, l->pabs))
		ret = vhdx_fail(err, -errno ? -errno : -EINVAL, path,
				"cannot work out the path to parent %s",
				opts->parent);
	l->nmd = 6;
	vhdx_close(parent);
	return ret;
}

static int check_geometry(const char *path, struct vhdx_create_opts *opts,
			  struct vhdx_error *err)
{
	if (!opts->block_size)
		opts->block_size = 32 * MiB;
	if (!opts->logical_sector_size)
		opts->logical_sector_size = 512;
	if (!opts->physical_sector_size)
		opts->physical_sector_size = 4096;
	if (opts->block_size < VHDX_MIN_BLOCK_SIZE ||
	    opts->block_size > VHDX_MAX_BLOCK_SIZE ||
	    (opts->block_size & (opts->block_size - 1)))
		return vhdx_fail(
			err, -EINVAL, path,
			"block size %u is not a power of two from 1 MiB to 256 MiB",
			opts->block_size);
	if ((opts->logical_sector_size != 512 &&
	     opts->logical_sector_size != 4096) ||
	    (opts->physical_sector_size != 512 &&
	     opts->physical_sector_size != 4096))
		return vhdx_fail(err, -EINVAL, path,
				 "sector sizes must be 512 or 4096");
	if (opts->virtual_size == 0 ||
	    opts->virtual_size % opts->logical_sector_size ||
	    opts->virtual_size > VHDX_MAX_VIRTUAL_SIZE)
		return vhdx_fail(
			err, -EINVAL, path,
			"size %llu is not a multiple of the %u-byte sector from one sector to 64 TiB",
			(unsigned long long)opts->virtual_size,
			opts->logical_sector_size);
	return 0;
}

/* Everything that can be refused is refused here, before the file exists. */
static int plan(const char *path, struct layout *l, struct vhdx_error *err)
{
	int ret;

	l->nmd = 5;
	if (l->opts.parent) {
		ret = take_parent(path, l, err);
		if (ret)
			return ret;
	}
	ret = check_geometry(path, &l->opts, err);
	if (ret)
		return ret;
	l->blocks =
		vhdx_payload_blocks(l->opts.virtual_size, l->opts.block_size);
	l->cr = vhdx_chunk_ratio(l->opts.block_size,
				 l->opts.logical_sector_size);
	/* Room for a differencing child's full interleave either way. */
	l->bat_len = ((l->blocks + l->cr - 1) / l->cr * (l->cr + 1) * 8 +
		      VHDX_ALIGN - 1) /
		     VHDX_ALIGN * VHDX_ALIGN;
	if (l->bat_len > UINT32_MAX)
		return vhdx_fail(err, -EINVAL, path,
				 "BAT would be larger than 4 GiB");
	l->data_off = BAT_OFFSET + l->bat_len;
	return 0;
}

static int new_guids(struct layout *l, const char *path, struct vhdx_error *err)
{
	int ret;

	ret = vhdx_guid_generate(&l->file_write_guid);
	if (!ret)
		ret = vhdx_guid_generate(&l->data_write_guid);
	if (!ret)
		ret = vhdx_guid_generate(&l->page83);
	if (ret)
		return vhdx_fail(err, ret, path, "cannot generate GUIDs: %s",
				 strerror(-ret));
	return 0;
}

static int write_failed(struct vhdx_error *err, const char *path, int ret)
{
	return vhdx_fail(err, ret, path, "write failed: %s", strerror(-ret));
}

/* 2.2.1 File Type Identifier */
static void put_file_id(uint8_t *buf)
{
	memcpy(buf, VHDX_FILE_ID_SIG, 8);
	put_utf16(buf + VHDX_CREATOR_OFFSET, CREATOR);
}

/* 2.2.2 Headers: both valid, so a reader that loses one still opens the
 * file; the second (sequence 1) is current. */
static void put_headers(uint8_t *buf, const struct layout *l)
{
	struct vhdx_header_info h;

	memset(&h, 0, sizeof(h));
	h.version = VHDX_VERSION;
	h.log_version = VHDX_LOG_VERSION;
	h.log_offset = LOG_OFFSET;
	h.log_length = LOG_LENGTH;
	h.file_write_guid = l->file_write_guid;
	h.data_write_guid = l->data_write_guid;
	h.sequence = 0;
	vhdx_header_build(&h, buf + VHDX_HEADER1_OFFSET);
	h.sequence = 1;
	vhdx_header_build(&h, buf + VHDX_HEADER2_OFFSET);
}

/* 2.2.3 Region Table, twice: a reader falls back to the second copy. */
static void put_region_tables(uint8_t *buf, const struct layout *l)
{
	uint8_t *rt = buf + VHDX_REGION_TABLE1_OFFSET;

	memcpy(rt, VHDX_REGION_SIG, 4);
	le32_put(rt + 8, 2);
	put_guid_str(rt + 16, VHDX_BAT_GUID_STR);
	le64_put(rt + 16 + 16, BAT_OFFSET);
	le32_put(rt + 16 + 24, (uint32_t)l->bat_len);
	le32_put(rt + 16 + 28, VHDX_REGION_REQUIRED);
	put_guid_str(rt + 48, VHDX_METADATA_GUID_STR);
	le64_put(rt + 48 + 16, METADATA_OFFSET);
	le32_put(rt + 48 + 24, METADATA_LENGTH);
	le32_put(rt + 48 + 28, VHDX_REGION_REQUIRED);
	le32_put(rt + 4, vhdx_checksum(rt, VHDX_REGION_TABLE_SIZE, 4));
	memcpy(buf + VHDX_REGION_TABLE2_OFFSET, rt, VHDX_REGION_TABLE_SIZE);
}

/* 2.6.2.6 Parent Locator, after the fixed-size items.  Returns 0 or
 * -ENOMEM. */
static int put_parent_locator(uint8_t *md, const struct layout *l)
{
	char *abs = NULL, *c;
	size_t loclen;

	/* absolute_win32_path: the parent's file name is all a
	 * Windows host or our own lookup can use from a Linux path */
	if (asprintf(&abs, "C:%s", l->pabs) < 0)
		return -ENOMEM;
	for (c = abs; *c; c++)
		if (*c == '/')
			*c = '\\';
	loclen = build_locator(md + 64 * KiB + 64,
			       METADATA_LENGTH - 64 * KiB - 64, &l->linkage,
			       l->rel, abs);
	free(abs);
	md_entry(md, 5, VHDX_MD_PARENT_LOCATOR_STR, 64 * KiB + 64,
		 (uint32_t)loclen, VHDX_MD_IS_REQUIRED);
	return 0;
}

/* 2.6 Metadata Region: the table, then the items from 64 KiB.  Returns 0
 * or -ENOMEM. */
static int put_metadata(uint8_t *md, const struct layout *l)
{
	const struct vhdx_create_opts *opts = &l->opts;

	memset(md, 0, METADATA_LENGTH);
	memcpy(md, VHDX_METADATA_SIG, 8);
	le16_put(md + 10, (uint16_t)l->nmd);
	md_entry(md, 0, VHDX_MD_FILE_PARAMETERS_STR, 64 * KiB, 8,
		 VHDX_MD_IS_REQUIRED);
	le32_put(md + 64 * KiB, opts->block_size);
	le32_put(md + 64 * KiB + 4,
		 (opts->fixed ? VHDX_FP_LEAVE_BLOCKS_ALLOCATED : 0) |
			 (opts->parent ? VHDX_FP_HAS_PARENT : 0));
	md_entry(md, 1, VHDX_MD_VIRTUAL_DISK_SIZE_STR, 64 * KiB + 8, 8,
		 VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK);
	le64_put(md + 64 * KiB + 8, opts->virtual_size);
	md_entry(md, 2, VHDX_MD_PAGE83_STR, 64 * KiB + 16, 16,
		 VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK);
	vhdx_guid_to_le(&l->page83, md + 64 * KiB + 16);
	md_entry(md, 3, VHDX_MD_LOGICAL_SECTOR_STR, 64 * KiB + 32, 4,
		 VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK);
	le32_put(md + 64 * KiB + 32, opts->logical_sector_size);
	md_entry(md, 4, VHDX_MD_PHYSICAL_SECTOR_STR, 64 * KiB + 36, 4,
		 VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK);
	le32_put(md + 64 * KiB + 36, opts->physical_sector_size);
	if (opts->parent)
		return put_parent_locator(md, l);
	return 0;
}

/*
 * The new file is sparse: only its 4 KiB pages that hold something are
 * written, the rest reads as zeros (a hole, or what size_file() reserves
 * for a fixed disk).  Most of the 3 MiB of structures are zeros, and a
 * differencing child is made at the start of every push session.
 */
static int write_used(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
	static const uint8_t zero[4 * KiB];
	size_t i = 0, run;
	int ret;

	while (i < len) {
		size_t n = len - i < sizeof(zero) ? len - i : sizeof(zero);

		if (!memcmp(buf + i, zero, n)) {
			i += n;
			continue;
		}
		for (run = i + n; run < len; run += n) {
			n = len - run < sizeof(zero) ? len - run : sizeof(zero);
			if (!memcmp(buf + run, zero, n))
				break;
		}
		ret = vhdx_write_full(fd, buf + i, run - i, off + i);
		if (ret)
			return ret;
		i = run;
	}
	return 0;
}

/* Zeroed memory with its pages present: filling and scanning a fresh
 * 1 MiB buffer otherwise costs a page fault per 4 KiB. */
static void *zero_pages(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* 2.5 BAT: every block NOT_PRESENT, except that a fixed disk's blocks lie
 * one after another from data_off. */
static int write_bat(int fd, const struct layout *l, const char *path,
		     struct vhdx_error *err)
{
	uint8_t *raw = zero_pages(l->bat_len);
	uint64_t j;
	int ret;

	if (!raw)
		return vhdx_fail(err, -ENOMEM, path, "out of memory");
	for (j = 0; l->opts.fixed && j < l->blocks; j++)
		le64_put(raw + vhdx_bat_payload_index(j, l->cr) * 8,
			 vhdx_bat_make(VHDX_PAYLOAD_FULLY_PRESENT,
				       l->data_off + j * l->opts.block_size));
	ret = write_used(fd, raw, l->bat_len, BAT_OFFSET);
	munmap(raw, l->bat_len);
	return ret ? write_failed(err, path, ret) : 0;
}

/* The payload area ends the file: reserved for a fixed disk so that it
 * never fails for lack of space later, sparse where that is not
 * supported; a dynamic disk grows block by block from data_off. */
static int size_file(int fd, const struct layout *l, const char *path,
		     struct vhdx_error *err)
{
	if (l->opts.fixed) {
		uint64_t end = l->data_off + l->blocks * l->opts.block_size;

		if (posix_fallocate(fd, 0, (off_t)end) &&
		    ftruncate(fd, (off_t)end))
			return write_failed(err, path, -errno);
	} else if (ftruncate(fd, (off_t)l->data_off)) {
		return write_failed(err, path, -errno);
	}
	if (fsync(fd))
		return write_failed(err, path, -errno);
	return 0;
}

/* 2.2: the file type identifier, headers and region tables are written
 * as one 1 MiB header section. */
static int write_header_section(int fd, uint8_t *buf, const struct layout *l,
				const char *path, struct vhdx_error *err)
{
	int ret;

	put_file_id(buf);
	put_headers(buf, l);
	put_region_tables(buf, l);
	ret = write_used(fd, buf, VHDX_HEADER_SECTION_SIZE, 0);
	return ret ? write_failed(err, path, ret) : 0;
}

static int write_metadata(int fd, uint8_t *buf, const struct layout *l,
			  const char *path, struct vhdx_error *err)
{
	int ret;

	ret = put_metadata(buf, l);
	if (ret)
		return vhdx_fail(err, ret, path, "out of memory");
	ret = write_used(fd, buf, METADATA_LENGTH, METADATA_OFFSET);
	return ret ? write_failed(err, path, ret) : 0;
}

int vhdx_create(const char *path, const struct vhdx_create_opts *o,
		struct vhdx_error *err)
{
	struct layout l = { .opts = *o };
	uint8_t *buf = NULL;
	int fd = -1, ret;

	if (err)
		err->msg[0] = '\0';
	ret = plan(path, &l, err);
	if (ret)
		goto out_noclean;
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		ret = vhdx_fail(err, -errno, path, "cannot create: %s",
				strerror(errno));
		goto out_noclean;
	}
	buf = zero_pages(BUF_LENGTH);
	if (!buf)
		ret = vhdx_fail(err, -ENOMEM, path, "out of memory");
	if (!ret)
		ret = new_guids(&l, path, err);
	if (!ret)
		ret = write_header_section(fd, buf, &l, path, err);
	if (!ret)
		ret = write_metadata(fd, buf, &l, path, err);
	if (!ret)
		ret = write_bat(fd, &l, path, err);
	if (!ret)
		ret = size_file(fd, &l, path, err);
	/* The new name is durable only once the folder is: a create that
	 * returned 0 must not lose its image to a power cut. */
	if (!ret) {
		ret = vhdx_fsync_parent_dir(path);
		if (ret)
			vhdx_fail(
				err, ret, path,
				"cannot make it durable (fsync of its folder): %s",
				strerror(-ret));
	}
	close(fd);
	if (ret)
		unlink(path);
out_noclean:
	if (buf)
		munmap(buf, BUF_LENGTH);
	free(l.rel);
	return ret;
}
