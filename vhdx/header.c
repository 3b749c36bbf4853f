/* SPDX-License-Identifier: MIT */
/*
 * header.c - the two VHDX headers (MS-VHDX 2.2.2): parsing, choosing the
 * current one, and building one for a header update.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int vhdx_header_parse(const uint8_t *buf, struct vhdx_header_info *h)
{
	uint32_t stored;

	memset(h, 0, sizeof(*h));
	h->sequence = le64_get(buf + VHDX_HDR_SEQUENCE);
	vhdx_guid_from_le(buf + VHDX_HDR_FILE_WRITE_GUID, &h->file_write_guid);
	vhdx_guid_from_le(buf + VHDX_HDR_DATA_WRITE_GUID, &h->data_write_guid);
	vhdx_guid_from_le(buf + VHDX_HDR_LOG_GUID, &h->log_guid);
	h->log_version = le16_get(buf + VHDX_HDR_LOG_VERSION);
	h->version = le16_get(buf + VHDX_HDR_VERSION);
	h->log_length = le32_get(buf + VHDX_HDR_LOG_LENGTH);
	h->log_offset = le64_get(buf + VHDX_HDR_LOG_OFFSET);
	if (memcmp(buf, VHDX_HEADER_SIG, 4))
		return -EINVAL;
	stored = le32_get(buf + VHDX_HDR_CHECKSUM);
	if (stored != vhdx_checksum(buf, VHDX_HEADER_SIZE, VHDX_HDR_CHECKSUM))
		return -EBADMSG;
	h->valid = true;
	return 0;
}

int vhdx_header_select(const struct vhdx_header_info *h1,
		       const struct vhdx_header_info *h2, bool identical,
		       const char **why)
{
	if (!h1->valid && !h2->valid) {
		*why = "neither header is valid (bad signature or checksum)";
		return -EINVAL;
	}
	if (!h2->valid)
		return 0;
	if (!h1->valid)
		return 1;
	if (h1->sequence > h2->sequence)
		return 0;
	if (h2->sequence > h1->sequence)
		return 1;
	/* Equal sequence numbers are invalid by the spec, but Disk2vhd writes
	 * two byte-identical headers; either one then says the same thing. */
	if (identical)
		return 0;
	*why = "both headers are valid with the same sequence number but differ";
	return -EINVAL;
}

void vhdx_header_build(const struct vhdx_header_info *h, uint8_t *buf)
{
	memset(buf, 0, VHDX_HEADER_SIZE);
	memcpy(buf, VHDX_HEADER_SIG, 4);
	le64_put(buf + VHDX_HDR_SEQUENCE, h->sequence);
	vhdx_guid_to_le(&h->file_write_guid, buf + VHDX_HDR_FILE_WRITE_GUID);
	vhdx_guid_to_le(&h->data_write_guid, buf + VHDX_HDR_DATA_WRITE_GUID);
	vhdx_guid_to_le(&h->log_guid, buf + VHDX_HDR_LOG_GUID);
	le16_put(buf + VHDX_HDR_LOG_VERSION, h->log_version);
	le16_put(buf + VHDX_HDR_VERSION, h->version);
	le32_put(buf + VHDX_HDR_LOG_LENGTH, h->log_length);
	le64_put(buf + VHDX_HDR_LOG_OFFSET, h->log_offset);
	le32_put(buf + VHDX_HDR_CHECKSUM,
		 vhdx_checksum(buf, VHDX_HEADER_SIZE, VHDX_HDR_CHECKSUM));
}

int vhdx_read_current_header(int fd, struct vhdx_header_info *h,
			     const char **why)
{
	static const uint64_t where[2] = { VHDX_HEADER1_OFFSET,
					   VHDX_HEADER2_OFFSET };
	struct vhdx_header_info hi[2];
	uint8_t *buf;
	size_t got;
	int i, ret, cur;

	*why = "";
	buf = calloc(2, VHDX_HEADER_SIZE);
	if (!buf)
		return -ENOMEM;
	for (i = 0; i < 2; i++) {
		/* a short file leaves zeros: an invalid header */
		ret = vhdx_read_full(fd, buf + i * VHDX_HEADER_SIZE,
				     VHDX_HEADER_SIZE, where[i], &got);
		if (ret < 0) {
			*why = "cannot read the headers";
			goto out;
		}
		vhdx_header_parse(buf + i * VHDX_HEADER_SIZE, &hi[i]);
	}
	cur = vhdx_header_select(
		&hi[0], &hi[1],
		!memcmp(buf, buf + VHDX_HEADER_SIZE, VHDX_HEADER_SIZE), why);
	ret = cur < 0 ? cur : 0;
	if (cur >= 0)
		*h = hi[cur];
out:
	free(buf);
	return ret;
}
