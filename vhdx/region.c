/* SPDX-License-Identifier: MIT */
/*
 * region.c - the region table (MS-VHDX 2.2.3): where the BAT and the
 * metadata region live, and the refusal of unknown required regions.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

int vhdx_region_table_parse(const uint8_t *buf, uint64_t file_size,
			    struct vhdx_regions *out, const char **why)
{
	struct vhdx_guid bat_guid = vhdx_guid_const(VHDX_BAT_GUID_STR);
	struct vhdx_guid md_guid = vhdx_guid_const(VHDX_METADATA_GUID_STR);
	struct vhdx_region_info *e;
	uint32_t count, i, j;
	bool have_bat = false, have_md = false;

	memset(out, 0, sizeof(*out));
	if (memcmp(buf, VHDX_REGION_SIG, 4)) {
		*why = "region table has a bad signature";
		return -EINVAL;
	}
	if (le32_get(buf + 4) !=
	    vhdx_checksum(buf, VHDX_REGION_TABLE_SIZE, 4)) {
		*why = "region table checksum mismatch";
		return -EBADMSG;
	}
	count = le32_get(buf + 8);
	if (count > VHDX_REGION_MAX_ENTRIES) {
		*why = "region table has more than 2047 entries";
		return -EINVAL;
	}
	e = calloc(count ? count : 1, sizeof(*e));
	if (!e) {
		*why = "out of memory";
		return -ENOMEM;
	}
	for (i = 0; i < count; i++) {
		const uint8_t *p = buf + VHDX_REGION_HDR_SIZE +
				   (size_t)i * VHDX_REGION_ENTRY_SIZE;

		vhdx_guid_from_le(p, &e[i].guid);
		e[i].file_offset = le64_get(p + 16);
		e[i].length = le32_get(p + 24);
		e[i].required = le32_get(p + 28) & VHDX_REGION_REQUIRED;
		if (vhdx_guid_equal(&e[i].guid, &bat_guid)) {
			e[i].name = "BAT";
			if (have_bat) {
				*why = "region table lists the BAT twice";
				goto bad;
			}
			have_bat = true;
			out->bat_offset = e[i].file_offset;
			out->bat_length = e[i].length;
		} else if (vhdx_guid_equal(&e[i].guid, &md_guid)) {
			e[i].name = "metadata";
			if (have_md) {
				*why = "region table lists the metadata region twice";
				goto bad;
			}
			have_md = true;
			out->metadata_offset = e[i].file_offset;
			out->metadata_length = e[i].length;
		} else {
			e[i].name = "unknown";
			if (e[i].required) {
				*why = "region table has an unknown region marked required";
				free(e);
				return -ENOTSUP;
			}
		}
		if (e[i].file_offset % VHDX_ALIGN || e[i].length % VHDX_ALIGN ||
		    e[i].length == 0) {
			*why = "a region is not a non-empty multiple of 1 MiB at a 1 MiB boundary";
			goto bad;
		}
		if (e[i].file_offset < VHDX_HEADER_SECTION_SIZE) {
			*why = "a region overlaps the header section";
			goto bad;
		}
		if (e[i].length > file_size ||
		    e[i].file_offset > file_size - e[i].length) {
			*why = "a region extends past the end of the file (truncated?)";
			goto bad;
		}
		for (j = 0; j < i; j++)
			if (overlaps(e[i].file_offset, e[i].length,
				     e[j].file_offset, e[j].length)) {
				*why = "two regions overlap";
				goto bad;
			}
	}
	if (!have_bat) {
		*why = "region table has no BAT region";
		goto bad;
	}
	if (!have_md) {
		*why = "region table has no metadata region";
		goto bad;
	}
	out->count = count;
	out->entry = e;
	return 0;
bad:
	free(e);
	memset(out, 0, sizeof(*out));
	return -EINVAL;
}

void vhdx_regions_free(struct vhdx_regions *r)
{
	free(r->entry);
	memset(r, 0, sizeof(*r));
}
