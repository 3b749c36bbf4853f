/* SPDX-License-Identifier: MIT */
/*
 * log.c - the VHDX log (MS-VHDX 2.3): validating entries in the circular
 * buffer, finding the active sequence, replaying it through a callback, and
 * building entries for the writer.  Pure functions over an in-memory copy
 * of the log, so that a read-only open can replay without writing.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Byte I of the entry that starts at OFF, in the circular log. */
static inline const uint8_t *at(const uint8_t *log, uint32_t log_len,
				uint32_t off, uint64_t i)
{
	return log + (off + i) % log_len;
}

/* Pointer to 4 KiB sector K of the entry at OFF (sectors never straddle
 * the end of the log because both are 4 KiB multiples). */
static inline const uint8_t *sector(const uint8_t *log, uint32_t log_len,
				    uint32_t off, uint32_t k)
{
	return at(log, log_len, off, (uint64_t)k * VHDX_LOG_SECTOR);
}

static inline uint32_t header_sectors(uint32_t descriptors)
{
	return (descriptors + 2 + 127) / 128;
}

/* Descriptor slot I of the entry at OFF (slot 0 and 1 hold the header). */
static const uint8_t *descriptor(const uint8_t *log, uint32_t log_len,
				 uint32_t off, uint32_t i)
{
	uint32_t slot = i + 2;

	return sector(log, log_len, off, slot / 128) + (slot % 128) * 32;
}

static void entry_header(const uint8_t *p, struct vhdx_log_entry_hdr *h)
{
	h->checksum = le32_get(p + VHDX_LOGE_CHECKSUM);
	h->entry_length = le32_get(p + VHDX_LOGE_LENGTH);
	h->tail = le32_get(p + VHDX_LOGE_TAIL);
	h->sequence = le64_get(p + VHDX_LOGE_SEQUENCE);
	h->descriptor_count = le32_get(p + VHDX_LOGE_DESC_COUNT);
	vhdx_guid_from_le(p + VHDX_LOGE_LOG_GUID, &h->log_guid);
	h->flushed_file_offset = le64_get(p + VHDX_LOGE_FLUSHED_OFFSET);
	h->last_file_offset = le64_get(p + VHDX_LOGE_LAST_OFFSET);
}

/*
 * vhdx_log_find_active returns 0, -ENOENT (no valid sequence), -ENOMEM, or
 * -E2BIG when the chains of a crafted log would take too long to walk.
 *
 * Checksums of any run of whole sectors of the circular log in O(log n)
 * each, for the scan of vhdx_log_find_active: that scan tries every 4 KiB
 * offset, and an entry's checksum covers up to the whole log, so checking
 * each candidate the plain way costs (log length)^2 / 4 KiB - hours for a
 * crafted log of a few MiB full of entry headers.
 *
 * CRC-32C is linear: with R(r, S) the register after feeding S from r,
 * R(r, A || B) = Z^|B| r ^ R(0, A || B) and R(0, A || B) = Z^|B| R(0, A) ^
 * R(0, B), where Z^k is "feed k zero bytes", a 32x32 bit matrix.  So with
 * pre[i] = R(0, sectors 0..i-1) over the log laid out twice (for entries
 * that wrap), R(0, sectors a..a+k-1) = pre[a+k] ^ Z^k pre[a], and Z^k comes
 * from the matrices of 1, 2, 4, ... sectors.
 */
#define ZMATS 17 /* up to 2^17 - 1 sectors: logs are at most 256 MiB */

struct log_crc {
	uint32_t *pre; /* 2 * sectors + 1 registers */
	uint32_t z[ZMATS][32];
};

static uint32_t mat_apply(const uint32_t m[32], uint32_t v)
{
	uint32_t r = 0;
	unsigned b;

	for (b = 0; v; b++, v >>= 1)
		if (v & 1)
			r ^= m[b];
	return r;
}

/* Z^(k sectors) v */
static uint32_t zshift(const struct log_crc *lc, uint32_t v, uint64_t k)
{
	unsigned j;

	for (j = 0; k && j < ZMATS; j++, k >>= 1)
		if (k & 1)
			v = mat_apply(lc->z[j], v);
	return v;
}

static int log_crc_init(struct log_crc *lc, const uint8_t *log,
			uint32_t log_len)
{
	static const uint8_t zero[VHDX_LOG_SECTOR];
	uint32_t n = log_len / VHDX_LOG_SECTOR, i;
	unsigned j, b;

	if (n >= 1u << ZMATS)
		return -EINVAL;
	lc->pre = malloc(((size_t)2 * n + 1) * sizeof(*lc->pre));
	if (!lc->pre)
		return -ENOMEM;
	for (b = 0; b < 32; b++)
		lc->z[0][b] = vhdx_crc32c_update(1u << b, zero, sizeof(zero));
	for (j = 1; j < ZMATS; j++)
		for (b = 0; b < 32; b++)
			lc->z[j][b] = mat_apply(lc->z[j - 1], lc->z[j - 1][b]);
	lc->pre[0] = 0;
	for (i = 0; i < 2 * n; i++)
		lc->pre[i + 1] = vhdx_crc32c_update(
			lc->pre[i], log + (size_t)(i % n) * VHDX_LOG_SECTOR,
			VHDX_LOG_SECTOR);
	return 0;
}

/* The checksum of the K-sector entry at sector A, its own field as 0. */
static uint32_t log_crc_entry(const struct log_crc *lc, const uint8_t *p,
			      uint32_t a, uint32_t k)
{
	static const uint8_t zero[VHDX_LOG_SECTOR - 8];
	uint8_t d[8] = { 0 };
	uint32_t reg, fix;

	/* What feeding the stored checksum instead of zeros added: the
	 * sector of zeros but for it, fed from 0. */
	memcpy(d + VHDX_LOGE_CHECKSUM, p + VHDX_LOGE_CHECKSUM, 4);
	fix = vhdx_crc32c_update(0, d, sizeof(d));
	fix = vhdx_crc32c_update(fix, zero, sizeof(zero));
	reg = zshift(lc, 0xFFFFFFFFu, k) ^ lc->pre[a + k] ^
	      zshift(lc, lc->pre[a], k) ^ zshift(lc, fix, k - 1);
	return ~reg;
}

static int entry_check(const uint8_t *log, uint32_t log_len, uint32_t off,
		       const struct vhdx_guid *guid,
		       struct vhdx_log_entry_hdr *hdr, const struct log_crc *lc)
{
	const uint8_t *p;
	uint32_t sectors, hs, i, k, data = 0, crc;
	uint64_t seq;

	if (log_len == 0 || log_len % VHDX_LOG_SECTOR ||
	    off % VHDX_LOG_SECTOR || off >= log_len)
		return -EINVAL;
	p = sector(log, log_len, off, 0);
	if (memcmp(p, VHDX_LOG_ENTRY_SIG, 4))
		return -EINVAL;
	entry_header(p, hdr);
	seq = hdr->sequence;
	if (hdr->entry_length == 0 || hdr->entry_length % VHDX_LOG_SECTOR ||
	    hdr->entry_length > log_len || seq == 0 ||
	    hdr->tail % VHDX_LOG_SECTOR || hdr->tail >= log_len)
		return -EINVAL;
	if (!vhdx_guid_equal(&hdr->log_guid, guid))
		return -EINVAL;
	sectors = hdr->entry_length / VHDX_LOG_SECTOR;
	if (hdr->descriptor_count > (uint64_t)sectors * 128)
		return -EINVAL;
	hs = header_sectors(hdr->descriptor_count);
	if (hs > sectors)
		return -EINVAL;

	/* The checksum covers the whole entry with its own field zeroed. */
	if (lc) {
		if (log_crc_entry(lc, p, off / VHDX_LOG_SECTOR, sectors) !=
		    hdr->checksum)
			return -EINVAL;
	} else {
		crc = vhdx_crc32c_update(0xFFFFFFFFu, p, VHDX_LOGE_CHECKSUM);
		crc = vhdx_crc32c_update(crc, "\0\0\0\0", 4);
		crc = vhdx_crc32c_update(crc, p + 8, VHDX_LOG_SECTOR - 8);
		for (k = 1; k < sectors; k++)
			crc = vhdx_crc32c_update(crc,
						 sector(log, log_len, off, k),
						 VHDX_LOG_SECTOR);
		if (~crc != hdr->checksum)
			return -EINVAL;
	}

	for (i = 0; i < hdr->descriptor_count; i++) {
		const uint8_t *d = descriptor(log, log_len, off, i);
		bool is_data = !memcmp(d, VHDX_LOG_DESC_SIG, 4);

		if (!is_data && memcmp(d, VHDX_LOG_ZERO_SIG, 4))
			return -EINVAL;
		if (le64_get(d + VHDX_LOGD_SEQUENCE) != seq ||
		    le64_get(d + VHDX_LOGD_FILE_OFFSET) % VHDX_LOG_SECTOR)
			return -EINVAL;
		if (!is_data) {
			uint64_t zl = le64_get(d + VHDX_LOGD_ZERO_LENGTH);

			/* A range that wraps past 2^64 is no file's. */
			if (zl % VHDX_LOG_SECTOR ||
			    le64_get(d + VHDX_LOGD_FILE_OFFSET) + zl <
				    le64_get(d + VHDX_LOGD_FILE_OFFSET))
				return -EINVAL;
			continue;
		}
		if (hs + data >= sectors)
			return -EINVAL;
		p = sector(log, log_len, off, hs + data);
		if (memcmp(p, VHDX_LOG_DATA_SIG, 4) ||
		    le32_get(p + VHDX_LOGS_SEQ_HIGH) != (uint32_t)(seq >> 32) ||
		    le32_get(p + VHDX_LOGS_SEQ_LOW) != (uint32_t)seq)
			return -EINVAL;
		data++;
	}
	return 0;
}

int vhdx_log_entry_check(const uint8_t *log, uint32_t log_len, uint32_t off,
			 const struct vhdx_guid *guid,
			 struct vhdx_log_entry_hdr *hdr)
{
	return entry_check(log, log_len, off, guid, hdr, NULL);
}

struct found_entry {
	uint32_t off;
	struct vhdx_log_entry_hdr hdr;
};

static int by_sequence_desc(const void *a, const void *b)
{
	const struct found_entry *x = a, *y = b;

	if (x->hdr.sequence == y->hdr.sequence)
		return x->off < y->off ? -1 : x->off > y->off;
	return x->hdr.sequence > y->hdr.sequence ? -1 : 1;
}

/* by_sector[s]: index + 1 in v of the entry at sector s, or 0. */
static const struct found_entry *
find_at(const struct found_entry *v, const unsigned *by_sector, uint32_t off)
{
	unsigned i = by_sector[off / VHDX_LOG_SECTOR];

	return i ? &v[i - 1] : NULL;
}

/*
 * Walk from HEAD's tail forward; every entry on the way must be valid,
 * contiguous and one sequence number further, and the walk must end at
 * HEAD.  Fills SEQ on success.
 */
static bool chain_ok(const struct found_entry *v, const unsigned *by_sector,
		     const struct found_entry *head, uint32_t log_len,
		     unsigned *budget, struct vhdx_log_seq *seq)
{
	const struct found_entry *e = find_at(v, by_sector, head->hdr.tail);
	unsigned count = 1, limit = log_len / VHDX_LOG_SECTOR;
	uint32_t off;

	if (!e)
		return false;
	while (e != head) {
		if (count > limit || !*budget)
			return false;
		--*budget;
		off = (uint32_t)((e->off + (uint64_t)e->hdr.entry_length) %
				 log_len);
		const struct found_entry *next = find_at(v, by_sector, off);

		if (!next || next->hdr.sequence != e->hdr.sequence + 1)
			return false;
		e = next;
		count++;
	}
	seq->tail_off = head->hdr.tail;
	seq->head_off = head->off;
	seq->count = count;
	seq->head_sequence = head->hdr.sequence;
	seq->flushed_file_offset = head->hdr.flushed_file_offset;
	seq->last_file_offset = head->hdr.last_file_offset;
	return true;
}

int vhdx_log_find_active(const uint8_t *log, uint32_t log_len,
			 const struct vhdx_guid *guid, struct vhdx_log_seq *seq)
{
	uint32_t sectors = log_len / VHDX_LOG_SECTOR, off;
	struct found_entry *v = NULL;
	unsigned *by_sector = NULL;
	unsigned n = 0, i, budget;
	struct log_crc lc = { 0 };
	int ret;

	if (log_len == 0 || log_len % VHDX_LOG_SECTOR)
		return -ENOENT;
	ret = log_crc_init(&lc, log, log_len);
	if (ret)
		return ret == -ENOMEM ? -ENOMEM : -ENOENT;
	v = calloc(sectors, sizeof(*v));
	by_sector = calloc(sectors, sizeof(*by_sector));
	if (!v || !by_sector) {
		ret = -ENOMEM;
		goto out;
	}
	for (off = 0; off < log_len; off += VHDX_LOG_SECTOR) {
		if (entry_check(log, log_len, off, guid, &v[n].hdr, &lc) == 0) {
			v[n].off = off;
			n++;
		}
	}
	qsort(v, n, sizeof(*v), by_sequence_desc);
	for (i = 0; i < n; i++)
		by_sector[v[i].off / VHDX_LOG_SECTOR] = i + 1;
	/*
	 * In a real log the newest head's chain holds, or a head or two
	 * before it: walking every head's chain to the end is quadratic in a
	 * crafted log of thousands of entries whose chains all break late.
	 * Past this many steps the log is refused as damaged.
	 */
	budget = 16 * sectors + 1024;
	ret = -ENOENT;
	for (i = 0; i < n; i++) {
		if (chain_ok(v, by_sector, &v[i], log_len, &budget, seq)) {
			ret = 0;
			break;
		}
		if (!budget) {
			ret = -E2BIG;
			break;
		}
	}
out:
	free(lc.pre);
	free(by_sector);
	free(v);
	return ret;
}

int vhdx_log_replay(const uint8_t *log, uint32_t log_len,
		    const struct vhdx_log_seq *seq, vhdx_log_apply_fn fn,
		    void *ctx)
{
	uint8_t *buf = malloc(VHDX_LOG_SECTOR);
	uint32_t off = seq->tail_off;
	unsigned e;
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	for (e = 0; e < seq->count; e++) {
		struct vhdx_log_entry_hdr h;
		const uint8_t *p = sector(log, log_len, off, 0);
		uint32_t hs, i, data = 0;

		entry_header(p, &h);
		hs = header_sectors(h.descriptor_count);
		for (i = 0; i < h.descriptor_count; i++) {
			const uint8_t *d = descriptor(log, log_len, off, i);
			uint64_t foff = le64_get(d + VHDX_LOGD_FILE_OFFSET);

			if (!memcmp(d, VHDX_LOG_ZERO_SIG, 4)) {
				ret = fn(ctx, foff, NULL,
					 le64_get(d + VHDX_LOGD_ZERO_LENGTH));
			} else {
				const uint8_t *s =
					sector(log, log_len, off, hs + data++);

				memcpy(buf, d + VHDX_LOGD_LEADING, 8);
				memcpy(buf + 8, s + VHDX_LOGS_DATA,
				       VHDX_LOGS_DATA_LEN);
				memcpy(buf + 4092, d + VHDX_LOGD_TRAILING, 4);
				ret = fn(ctx, foff, buf, VHDX_LOG_SECTOR);
			}
			if (ret < 0)
				goto out;
		}
		off = (uint32_t)((off + (uint64_t)h.entry_length) % log_len);
	}
out:
	free(buf);
	return ret;
}

/*
 * MS-VHDX 2.3.1.1: LastFileOffset is a size that "all allocated file
 * structures fit into" when the entry was written, and replay extends the
 * file to it.  A descriptor that writes or zeroes past it updates nothing
 * the writer had: a real log never holds one, and honouring it would let a
 * crafted image make the replay write as much as it likes.
 */
int vhdx_log_check_ranges(const uint8_t *log, uint32_t log_len,
			  const struct vhdx_log_seq *seq,
			  struct vhdx_log_bad_range *bad)
{
	uint32_t off = seq->tail_off;
	unsigned e;

	for (e = 0; e < seq->count; e++) {
		struct vhdx_log_entry_hdr h;
		uint32_t i;

		entry_header(sector(log, log_len, off, 0), &h);
		for (i = 0; i < h.descriptor_count; i++) {
			const uint8_t *d = descriptor(log, log_len, off, i);
			uint64_t foff = le64_get(d + VHDX_LOGD_FILE_OFFSET);
			bool zero = !memcmp(d, VHDX_LOG_ZERO_SIG, 4);
			uint64_t len =
				zero ? le64_get(d + VHDX_LOGD_ZERO_LENGTH)
				     : VHDX_LOG_SECTOR;

			if (len <= h.last_file_offset &&
			    foff <= h.last_file_offset - len)
				continue;
			bad->sequence = h.sequence;
			bad->file_offset = foff;
			bad->length = len;
			bad->last_file_offset = h.last_file_offset;
			bad->zero = zero;
			return -ERANGE;
		}
		off = (uint32_t)((off + (uint64_t)h.entry_length) % log_len);
	}
	return 0;
}

uint32_t vhdx_log_entry_build(uint8_t *buf, uint64_t sequence, uint32_t tail,
			      const struct vhdx_guid *guid,
			      uint64_t flushed_file_offset,
			      uint64_t last_file_offset, unsigned count,
			      const uint64_t *file_off,
			      const uint8_t *const *data)
{
	uint32_t len = vhdx_log_entry_size(count);
	uint32_t hs = header_sectors(count);
	unsigned i;

	memset(buf, 0, len);
	memcpy(buf, VHDX_LOG_ENTRY_SIG, 4);
	le32_put(buf + VHDX_LOGE_LENGTH, len);
	le32_put(buf + VHDX_LOGE_TAIL, tail);
	le64_put(buf + VHDX_LOGE_SEQUENCE, sequence);
	le32_put(buf + VHDX_LOGE_DESC_COUNT, count);
	vhdx_guid_to_le(guid, buf + VHDX_LOGE_LOG_GUID);
	le64_put(buf + VHDX_LOGE_FLUSHED_OFFSET, flushed_file_offset);
	le64_put(buf + VHDX_LOGE_LAST_OFFSET, last_file_offset);
	for (i = 0; i < count; i++) {
		uint8_t *d = buf + 64 + (size_t)i * VHDX_LOG_DESC_SIZE;
		uint8_t *s = buf + (size_t)(hs + i) * VHDX_LOG_SECTOR;

		memcpy(d, VHDX_LOG_DESC_SIG, 4);
		memcpy(d + VHDX_LOGD_TRAILING, data[i] + 4092, 4);
		memcpy(d + VHDX_LOGD_LEADING, data[i], 8);
		le64_put(d + VHDX_LOGD_FILE_OFFSET, file_off[i]);
		le64_put(d + VHDX_LOGD_SEQUENCE, sequence);
		memcpy(s, VHDX_LOG_DATA_SIG, 4);
		le32_put(s + VHDX_LOGS_SEQ_HIGH, (uint32_t)(sequence >> 32));
		memcpy(s + VHDX_LOGS_DATA, data[i] + 8, VHDX_LOGS_DATA_LEN);
		le32_put(s + VHDX_LOGS_SEQ_LOW, (uint32_t)sequence);
	}
	le32_put(buf + VHDX_LOGE_CHECKSUM,
		 vhdx_checksum(buf, len, VHDX_LOGE_CHECKSUM));
	return len;
}
