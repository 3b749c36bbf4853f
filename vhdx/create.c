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
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define LOG_OFFSET (1 * MiB)
#define LOG_LENGTH (1 * MiB)
#define METADATA_OFFSET (2 * MiB)
#define METADATA_LENGTH (1 * MiB)
#define BAT_OFFSET (3 * MiB)
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
			c = ((uint32_t)(p[0] & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) |
			    (p[2] & 0x3F);
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
static size_t build_locator(uint8_t *buf, size_t cap, const struct vhdx_guid *linkage,
			    const char *rel, const char *abs)
{
	const char *keys[3] = { "parent_linkage", "relative_path", "absolute_win32_path" };
	char link[VHDX_GUID_STR_LEN + 2], g[VHDX_GUID_STR_LEN];
	const char *vals[3];
	size_t pos, i, n = abs ? 3 : 2;

	vhdx_guid_format(linkage, g);
	/* Windows writes the linkage in lower case, and libvhdi reads only that */
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
		uint8_t *e = buf + VHDX_LOCATOR_HDR_SIZE + i * VHDX_LOCATOR_ENTRY_SIZE;
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
	uint8_t *e = table + VHDX_METADATA_HDR_SIZE + i * VHDX_METADATA_ENTRY_SIZE;

	put_guid_str(e, guid);
	le32_put(e + 16, off);
	le32_put(e + 20, len);
	le32_put(e + 24, flags);
}

int vhdx_create(const char *path, const struct vhdx_create_opts *o,
		struct vhdx_error *err)
{
	struct vhdx_create_opts opts = *o;
	struct vhdx_image *parent = NULL;
	struct vhdx_header_info h;
	struct vhdx_guid page83, linkage;
	uint64_t blocks, cr, entries, bat_len, data_off, j, *bat = NULL;
	uint8_t *buf = NULL, *md;
	char *rel = NULL, pabs[PATH_MAX];
	unsigned nmd = 5;
	size_t loclen = 0;
	int fd = -1, ret;

	if (err)
		err->msg[0] = '\0';
	if (opts.parent) {
		struct vhdx_error perr;

		ret = vhdx_open(opts.parent, 0, &parent, &perr);
		if (ret)
			return vhdx_fail(err, ret, path, "parent %s", perr.msg);
		opts.virtual_size = parent->info.virtual_size;
		opts.logical_sector_size = parent->info.logical_sector_size;
		if (!opts.physical_sector_size)
			opts.physical_sector_size = parent->info.physical_sector_size;
		if (!opts.block_size)
			opts.block_size = 2 * MiB;
		linkage = parent->info.header[parent->info.current_header].data_write_guid;
		opts.fixed = false;
		rel = relative_path(path, opts.parent);
		if (!rel || !realpath(opts.parent, pabs)) {
			ret = vhdx_fail(err, -errno ? -errno : -EINVAL, path,
				   "cannot work out the path to parent %s", opts.parent);
			goto out_noclean;
		}
		nmd = 6;
	}
	if (!opts.block_size)
		opts.block_size = 32 * MiB;
	if (!opts.logical_sector_size)
		opts.logical_sector_size = 512;
	if (!opts.physical_sector_size)
		opts.physical_sector_size = 4096;
	if (opts.block_size < VHDX_MIN_BLOCK_SIZE || opts.block_size > VHDX_MAX_BLOCK_SIZE ||
	    (opts.block_size & (opts.block_size - 1))) {
		ret = vhdx_fail(err, -EINVAL, path,
			   "block size %u is not a power of two from 1 MiB to 256 MiB",
			   opts.block_size);
		goto out_noclean;
	}
	if ((opts.logical_sector_size != 512 && opts.logical_sector_size != 4096) ||
	    (opts.physical_sector_size != 512 && opts.physical_sector_size != 4096)) {
		ret = vhdx_fail(err, -EINVAL, path, "sector sizes must be 512 or 4096");
		goto out_noclean;
	}
	if (opts.virtual_size == 0 || opts.virtual_size % opts.logical_sector_size ||
	    opts.virtual_size > VHDX_MAX_VIRTUAL_SIZE) {
		ret = vhdx_fail(err, -EINVAL, path,
			   "size %llu is not a multiple of the %u-byte sector from one sector to 64 TiB",
			   (unsigned long long)opts.virtual_size, opts.logical_sector_size);
		goto out_noclean;
	}

	blocks = vhdx_payload_blocks(opts.virtual_size, opts.block_size);
	cr = vhdx_chunk_ratio(opts.block_size, opts.logical_sector_size);
	entries = vhdx_bat_entry_count(blocks, cr, opts.parent != NULL);
	/* Room for a differencing child's full interleave either way. */
	bat_len = ((blocks + cr - 1) / cr * (cr + 1) * 8 + VHDX_ALIGN - 1) / VHDX_ALIGN * VHDX_ALIGN;
	if (bat_len > UINT32_MAX) {
		ret = vhdx_fail(err, -EINVAL, path, "BAT would be larger than 4 GiB");
		goto out_noclean;
	}
	data_off = BAT_OFFSET + bat_len;

	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		ret = vhdx_fail(err, -errno, path, "cannot create: %s", strerror(errno));
		goto out_noclean;
	}
	buf = calloc(1, VHDX_HEADER_SECTION_SIZE > METADATA_LENGTH ? VHDX_HEADER_SECTION_SIZE
								  : METADATA_LENGTH);
	bat = calloc(entries ? entries : 1, sizeof(*bat));
	if (!buf || !bat) {
		ret = vhdx_fail(err, -ENOMEM, path, "out of memory");
		goto out;
	}

	/* 2.2.1 file type identifier */
	memcpy(buf, VHDX_FILE_ID_SIG, 8);
	put_utf16(buf + VHDX_CREATOR_OFFSET, CREATOR);
	/* 2.2.2 headers */
	memset(&h, 0, sizeof(h));
	h.version = VHDX_VERSION;
	h.log_version = VHDX_LOG_VERSION;
	h.log_offset = LOG_OFFSET;
	h.log_length = LOG_LENGTH;
	ret = vhdx_guid_generate(&h.file_write_guid);
	if (!ret)
		ret = vhdx_guid_generate(&h.data_write_guid);
	if (!ret)
		ret = vhdx_guid_generate(&page83);
	if (ret) {
		vhdx_fail(err, ret, path, "cannot generate GUIDs: %s", strerror(-ret));
		goto out;
	}
	h.sequence = 0;
	vhdx_header_build(&h, buf + VHDX_HEADER1_OFFSET);
	h.sequence = 1;
	vhdx_header_build(&h, buf + VHDX_HEADER2_OFFSET);
	/* 2.2.3 region table, twice */
	{
		uint8_t *rt = buf + VHDX_REGION_TABLE1_OFFSET;

		memcpy(rt, VHDX_REGION_SIG, 4);
		le32_put(rt + 8, 2);
		put_guid_str(rt + 16, VHDX_BAT_GUID_STR);
		le64_put(rt + 16 + 16, BAT_OFFSET);
		le32_put(rt + 16 + 24, (uint32_t)bat_len);
		le32_put(rt + 16 + 28, VHDX_REGION_REQUIRED);
		put_guid_str(rt + 48, VHDX_METADATA_GUID_STR);
		le64_put(rt + 48 + 16, METADATA_OFFSET);
		le32_put(rt + 48 + 24, METADATA_LENGTH);
		le32_put(rt + 48 + 28, VHDX_REGION_REQUIRED);
		le32_put(rt + 4, vhdx_checksum(rt, VHDX_REGION_TABLE_SIZE, 4));
		memcpy(buf + VHDX_REGION_TABLE2_OFFSET, rt, VHDX_REGION_TABLE_SIZE);
	}
	ret = vhdx_write_full(fd, buf, VHDX_HEADER_SECTION_SIZE, 0);
	if (ret)
		goto io;

	/* 2.6 metadata region: table, then items from 64 KiB */
	memset(buf, 0, METADATA_LENGTH);
	md = buf;
	memcpy(md, VHDX_METADATA_SIG, 8);
	le16_put(md + 10, (uint16_t)nmd);
	md_entry(md, 0, VHDX_MD_FILE_PARAMETERS_STR, 64 * KiB, 8, VHDX_MD_IS_REQUIRED);
	le32_put(md + 64 * KiB, opts.block_size);
	le32_put(md + 64 * KiB + 4, (opts.fixed ? VHDX_FP_LEAVE_BLOCKS_ALLOCATED : 0) |
					    (opts.parent ? VHDX_FP_HAS_PARENT : 0));
	md_entry(md, 1, VHDX_MD_VIRTUAL_DISK_SIZE_STR, 64 * KiB + 8, 8,
		 VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK);
	le64_put(md + 64 * KiB + 8, opts.virtual_size);
	md_entry(md, 2, VHDX_MD_PAGE83_STR, 64 * KiB + 16, 16,
		 VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK);
	vhdx_guid_to_le(&page83, md + 64 * KiB + 16);
	md_entry(md, 3, VHDX_MD_LOGICAL_SECTOR_STR, 64 * KiB + 32, 4,
		 VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK);
	le32_put(md + 64 * KiB + 32, opts.logical_sector_size);
	md_entry(md, 4, VHDX_MD_PHYSICAL_SECTOR_STR, 64 * KiB + 36, 4,
		 VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VIRTUAL_DISK);
	le32_put(md + 64 * KiB + 36, opts.physical_sector_size);
	if (opts.parent) {
		char *abs = NULL, *c;

		/* absolute_win32_path: the parent's file name is all a
		 * Windows host or our own lookup can use from a Linux path */
		if (asprintf(&abs, "C:%s", pabs) < 0) {
			ret = vhdx_fail(err, -ENOMEM, path, "out of memory");
			goto out;
		}
		for (c = abs; *c; c++)
			if (*c == '/')
				*c = '\\';
		loclen = build_locator(md + 64 * KiB + 64, METADATA_LENGTH - 64 * KiB - 64,
				       &linkage, rel, abs);
		free(abs);
		md_entry(md, 5, VHDX_MD_PARENT_LOCATOR_STR, 64 * KiB + 64, (uint32_t)loclen,
			 VHDX_MD_IS_REQUIRED);
	}
	ret = vhdx_write_full(fd, md, METADATA_LENGTH, METADATA_OFFSET);
	if (ret)
		goto io;

	/* 2.5 BAT */
	for (j = 0; opts.fixed && j < blocks; j++)
		bat[vhdx_bat_payload_index(j, cr)] =
			vhdx_bat_make(VHDX_PAYLOAD_FULLY_PRESENT, data_off + j * opts.block_size);
	{
		uint8_t *raw = calloc(1, bat_len);

		if (!raw) {
			ret = vhdx_fail(err, -ENOMEM, path, "out of memory");
			goto out;
		}
		for (j = 0; j < entries; j++)
			le64_put(raw + j * 8, bat[j]);
		ret = vhdx_write_full(fd, raw, bat_len, BAT_OFFSET);
		free(raw);
		if (ret)
			goto io;
	}
	if (opts.fixed) {
		uint64_t end = data_off + blocks * opts.block_size;

		/* Reserve the space so a fixed disk never fails for lack of
		 * it later; fall back to a sparse file where not supported. */
		if (posix_fallocate(fd, 0, (off_t)end) && ftruncate(fd, (off_t)end)) {
			ret = -errno;
			goto io;
		}
	} else if (ftruncate(fd, (off_t)data_off)) {
		ret = -errno;
		goto io;
	}
	if (fsync(fd)) {
		ret = -errno;
		goto io;
	}
	ret = 0;
	goto out;
io:
	vhdx_fail(err, ret, path, "write failed: %s", strerror(-ret));
out:
	if (fd >= 0) {
		close(fd);
		if (ret)
			unlink(path);
	}
out_noclean:
	free(buf);
	free(bat);
	free(rel);
	vhdx_close(parent);
	return ret;
}
