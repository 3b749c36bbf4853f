/* SPDX-License-Identifier: MIT */
/*
 * metadata.c - the metadata region (MS-VHDX 2.6): the table, the known
 * system items, the parent locator, and the UTF-16LE strings it holds.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum md_item {
	MD_FILE_PARAMETERS,
	MD_VIRTUAL_DISK_SIZE,
	MD_PAGE83,
	MD_LOGICAL_SECTOR,
	MD_PHYSICAL_SECTOR,
	MD_PARENT_LOCATOR,
	MD_KNOWN_COUNT,
};

static const struct {
	const char *guid;
	const char *name;
	uint32_t length; /* exact length, 0 = variable */
} known_items[MD_KNOWN_COUNT] = {
	[MD_FILE_PARAMETERS] = { VHDX_MD_FILE_PARAMETERS_STR, "file parameters",
				 8 },
	[MD_VIRTUAL_DISK_SIZE] = { VHDX_MD_VIRTUAL_DISK_SIZE_STR,
				   "virtual disk size", 8 },
	[MD_PAGE83] = { VHDX_MD_PAGE83_STR, "page 83 data", 16 },
	[MD_LOGICAL_SECTOR] = { VHDX_MD_LOGICAL_SECTOR_STR,
				"logical sector size", 4 },
	[MD_PHYSICAL_SECTOR] = { VHDX_MD_PHYSICAL_SECTOR_STR,
				 "physical sector size", 4 },
	[MD_PARENT_LOCATOR] = { VHDX_MD_PARENT_LOCATOR_STR, "parent locator",
				0 },
};

static int known_index(const struct vhdx_guid *g)
{
	int i;

	for (i = 0; i < MD_KNOWN_COUNT; i++) {
		struct vhdx_guid k = vhdx_guid_const(known_items[i].guid);

		if (vhdx_guid_equal(g, &k))
			return i;
	}
	return -1;
}

static bool is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* 2.6.1.2: table entry @i, and the item offset and length it gives */
static const uint8_t *entry_at(const uint8_t *table, unsigned i,
			       uint32_t *offset, uint32_t *length)
{
	const uint8_t *e = table + VHDX_METADATA_HDR_SIZE +
			   (size_t)i * VHDX_METADATA_ENTRY_SIZE;

	*offset = le32_get(e + 16);
	*length = le32_get(e + 20);
	return e;
}

uint64_t vhdx_metadata_used_length(const uint8_t *table, uint64_t len)
{
	uint64_t end = VHDX_METADATA_TABLE_SIZE;
	unsigned n = le16_get(table + 10), i;
	uint32_t o, l;

	for (i = 0; i < n && i < VHDX_METADATA_MAX_ENTRIES; i++) {
		entry_at(table, i, &o, &l);
		if (l && (uint64_t)o + l > end)
			end = (uint64_t)o + l;
	}
	return end < len ? end : len;
}

int vhdx_metadata_parse(const uint8_t *region, size_t len,
			struct vhdx_params *p,
			struct vhdx_metadata_info **items, unsigned *count,
			const char **why)
{
	const uint8_t *item[MD_KNOWN_COUNT] = { 0 };
	uint32_t item_len[MD_KNOWN_COUNT] = { 0 };
	struct vhdx_metadata_info *t = NULL;
	unsigned n, i;
	int ret = -EINVAL, k;
	uint32_t fp;

	memset(p, 0, sizeof(*p));
	*items = NULL;
	*count = 0;
	if (len < VHDX_METADATA_TABLE_SIZE) {
		*why = "metadata region is smaller than its 64 KiB table";
		return -EINVAL;
	}
	if (memcmp(region, VHDX_METADATA_SIG, 8)) {
		*why = "metadata table has a bad signature";
		return -EINVAL;
	}
	n = le16_get(region + 10);
	if (n > VHDX_METADATA_MAX_ENTRIES) {
		*why = "metadata table has more than 2047 entries";
		return -EINVAL;
	}
	t = calloc(n ? n : 1, sizeof(*t));
	if (!t) {
		*why = "out of memory";
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		const uint8_t *e =
			entry_at(region, i, &t[i].offset, &t[i].length);
		uint32_t flags;

		vhdx_guid_from_le(e, &t[i].item_id);
		flags = le32_get(e + 24);
		t[i].is_user = flags & VHDX_MD_IS_USER;
		t[i].is_virtual_disk = flags & VHDX_MD_IS_VIRTUAL_DISK;
		t[i].is_required = flags & VHDX_MD_IS_REQUIRED;
		k = known_index(&t[i].item_id);
		t[i].name = k >= 0 ? known_items[k].name : "unknown";
		if (t[i].length &&
		    (t[i].offset < VHDX_METADATA_TABLE_SIZE ||
		     (uint64_t)t[i].offset + t[i].length > len)) {
			*why = "a metadata item lies outside the metadata region";
			goto out;
		}
		if (k < 0 || t[i].is_user) {
			if (t[i].is_required) {
				*why = "metadata has an unknown item marked required";
				ret = -ENOTSUP;
				goto out;
			}
			continue;
		}
		if (item[k]) {
			*why = "a metadata item is listed twice";
			goto out;
		}
		if (known_items[k].length &&
		    t[i].length != known_items[k].length) {
			*why = "a metadata item has the wrong length";
			goto out;
		}
		item[k] = region + t[i].offset;
		item_len[k] = t[i].length;
	}

	if (!item[MD_FILE_PARAMETERS] || !item[MD_VIRTUAL_DISK_SIZE] ||
	    !item[MD_LOGICAL_SECTOR] || !item[MD_PHYSICAL_SECTOR]) {
		*why = "metadata lacks a required item (file parameters, virtual disk size or sector sizes)";
		goto out;
	}
	p->block_size = le32_get(item[MD_FILE_PARAMETERS]);
	fp = le32_get(item[MD_FILE_PARAMETERS] + 4);
	p->leave_blocks_allocated = fp & VHDX_FP_LEAVE_BLOCKS_ALLOCATED;
	p->has_parent = fp & VHDX_FP_HAS_PARENT;
	p->virtual_size = le64_get(item[MD_VIRTUAL_DISK_SIZE]);
	p->logical_sector_size = le32_get(item[MD_LOGICAL_SECTOR]);
	p->physical_sector_size = le32_get(item[MD_PHYSICAL_SECTOR]);
	if (item[MD_PAGE83]) {
		p->has_page83 = true;
		vhdx_guid_from_le(item[MD_PAGE83], &p->page83);
	}
	if (item[MD_PARENT_LOCATOR]) {
		p->has_locator = true;
		p->locator_offset =
			(uint32_t)(item[MD_PARENT_LOCATOR] - region);
		p->locator_length = item_len[MD_PARENT_LOCATOR];
	}

	if (!is_pow2(p->block_size) || p->block_size < VHDX_MIN_BLOCK_SIZE ||
	    p->block_size > VHDX_MAX_BLOCK_SIZE) {
		*why = "block size is not a power of two from 1 MiB to 256 MiB";
		goto out;
	}
	if (p->logical_sector_size != 512 && p->logical_sector_size != 4096) {
		*why = "logical sector size is neither 512 nor 4096";
		goto out;
	}
	if (p->physical_sector_size != 512 && p->physical_sector_size != 4096) {
		*why = "physical sector size is neither 512 nor 4096";
		goto out;
	}
	if (p->virtual_size == 0 || p->virtual_size % p->logical_sector_size) {
		*why = "virtual disk size is zero or not a multiple of the logical sector size";
		goto out;
	}
	if (p->virtual_size > VHDX_MAX_VIRTUAL_SIZE) {
		*why = "virtual disk size is larger than 64 TiB";
		goto out;
	}
	if (p->has_parent && !p->has_locator) {
		*why = "differencing disk without a parent locator";
		goto out;
	}
	*items = t;
	*count = n;
	return 0;
out:
	free(t);
	return ret;
}

char *vhdx_utf16le_to_utf8(const uint8_t *s, size_t len)
{
	size_t n = len / 2, i, o = 0;
	char *out = malloc(n * 3 + 1);

	if (!out)
		return NULL;
	for (i = 0; i < n; i++) {
		uint32_t c = le16_get(s + 2 * i);

		if (c >= 0xD800 && c <= 0xDBFF && i + 1 < n) {
			uint32_t lo = le16_get(s + 2 * i + 2);

			if (lo >= 0xDC00 && lo <= 0xDFFF) {
				c = 0x10000 + ((c - 0xD800) << 10) +
				    (lo - 0xDC00);
				i++;
			} else {
				c = 0xFFFD;
			}
		} else if (c >= 0xD800 && c <= 0xDFFF) {
			c = 0xFFFD;
		}
		if (c == 0)
			break;
		if (c < 0x80) {
			out[o++] = (char)c;
		} else if (c < 0x800) {
			out[o++] = (char)(0xC0 | (c >> 6));
			out[o++] = (char)(0x80 | (c & 0x3F));
		} else if (c < 0x10000) {
			out[o++] = (char)(0xE0 | (c >> 12));
			out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
			out[o++] = (char)(0x80 | (c & 0x3F));
		} else {
			/* 4 bytes: two UTF-16 units gave us 6 bytes of room */
			out[o++] = (char)(0xF0 | (c >> 18));
			out[o++] = (char)(0x80 | ((c >> 12) & 0x3F));
			out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
			out[o++] = (char)(0x80 | (c & 0x3F));
		}
	}
	out[o] = '\0';
	return out;
}

int vhdx_locator_parse(const uint8_t *buf, size_t len,
		       struct vhdx_locator_entry **entries, unsigned *count,
		       const char **why)
{
	struct vhdx_guid type = vhdx_guid_const(VHDX_PARENT_LOCATOR_TYPE_STR);
	struct vhdx_guid got;
	struct vhdx_locator_entry *e;
	unsigned n, i;

	*entries = NULL;
	*count = 0;
	if (len < VHDX_LOCATOR_HDR_SIZE) {
		*why = "parent locator is too short";
		return -EINVAL;
	}
	vhdx_guid_from_le(buf, &got);
	if (!vhdx_guid_equal(&got, &type)) {
		*why = "parent locator has an unknown locator type";
		return -EINVAL;
	}
	n = le16_get(buf + 18);
	if ((uint64_t)VHDX_LOCATOR_HDR_SIZE +
		    (uint64_t)n * VHDX_LOCATOR_ENTRY_SIZE >
	    len) {
		*why = "parent locator entries run past its end";
		return -EINVAL;
	}
	e = calloc(n ? n : 1, sizeof(*e));
	if (!e) {
		*why = "out of memory";
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		const uint8_t *p = buf + VHDX_LOCATOR_HDR_SIZE +
				   (size_t)i * VHDX_LOCATOR_ENTRY_SIZE;
		uint32_t ko = le32_get(p), vo = le32_get(p + 4);
		uint16_t kl = le16_get(p + 8), vl = le16_get(p + 10);

		if ((uint64_t)ko + kl > len || (uint64_t)vo + vl > len ||
		    kl == 0 || (kl | vl) & 1) {
			*why = "a parent locator key or value lies outside the locator";
			vhdx_locator_free(e, i);
			return -EINVAL;
		}
		e[i].key = vhdx_utf16le_to_utf8(buf + ko, kl);
		e[i].value = vhdx_utf16le_to_utf8(buf + vo, vl);
		if (!e[i].key || !e[i].value) {
			vhdx_locator_free(e, i + 1);
			*why = "out of memory";
			return -ENOMEM;
		}
	}
	*entries = e;
	*count = n;
	return 0;
}

void vhdx_locator_free(struct vhdx_locator_entry *entries, unsigned count)
{
	unsigned i;

	if (!entries)
		return;
	for (i = 0; i < count; i++) {
		free(entries[i].key);
		free(entries[i].value);
	}
	free(entries);
}

const char *vhdx_locator_get(const struct vhdx_locator_entry *entries,
			     unsigned count, const char *key)
{
	unsigned i;

	for (i = 0; i < count; i++)
		if (!strcmp(entries[i].key, key))
			return entries[i].value;
	return NULL;
}
