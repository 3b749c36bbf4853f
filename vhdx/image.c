/* SPDX-License-Identifier: MIT */
/*
 * image.c - opening a VHDX, as a chain of steps in the order MS-VHDX
 * implies (open_one): file type identifier, headers, log replay (in memory
 * for a read-only open, on disk for a read-write one), region table,
 * metadata, BAT validation and the parent chain; and closing it.  Each step
 * may rely on what the steps before it checked, so none re-validates.
 * Every refusal is one line in struct vhdx_error naming the file and the
 * problem.  Reading the file is file.c's, finding the parent parent.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* Logs and metadata regions are 1 MiB in practice; refuse absurd sizes
 * rather than allocate them. */
#define VHDX_MAX_LOG_LENGTH (256 * MiB)
#define VHDX_MAX_METADATA_LENGTH (256 * MiB)

const char *vhdx_payload_state_name(unsigned state)
{
	switch (state) {
	case VHDX_PAYLOAD_NOT_PRESENT:
		return "not_present";
	case VHDX_PAYLOAD_UNDEFINED:
		return "undefined";
	case VHDX_PAYLOAD_ZERO:
		return "zero";
	case VHDX_PAYLOAD_UNMAPPED:
		return "unmapped";
	case VHDX_PAYLOAD_UNMAPPED_V1:
		return "unmapped_v1";
	case VHDX_PAYLOAD_FULLY_PRESENT:
		return "fully_present";
	case VHDX_PAYLOAD_PARTIALLY_PRESENT:
		return "partially_present";
	default:
		return "invalid";
	}
}

const char *vhdx_type_name(enum vhdx_type t)
{
	switch (t) {
	case VHDX_TYPE_FIXED:
		return "fixed";
	case VHDX_TYPE_DYNAMIC:
		return "dynamic";
	case VHDX_TYPE_DIFFERENCING:
		return "differencing";
	}
	return "unknown";
}

/* --- Open -------------------------------------------------------------- */

/* 2.2.1, first of all: a raw disk is then refused as "not a VHDX file"
 * rather than as one with damaged headers. */
static int check_file_id(struct vhdx_image *img, struct vhdx_error *err)
{
	int ret;

	if (img->info.file_size < 8)
		return vhdx_fail(err, -EINVAL, img->path,
				 "not a VHDX file (only %llu bytes)",
				 (unsigned long long)img->info.file_size);
	ret = vhdx_probe_fd(img->fd);
	if (ret < 0)
		return vhdx_fail(err, ret, img->path, "cannot read: %s",
				 strerror(-ret));
	if (!ret)
		return vhdx_fail(
			err, -EINVAL, img->path,
			"not a VHDX file (no 'vhdxfile' signature at offset 0)");
	return 0;
}

/* 2.2.1 creator string and 2.2.2 headers.  Only the three 4 KiB pieces
 * that hold them are read: a whole 1 MiB section in a fresh buffer costs a
 * page fault per 4 KiB, at every open of every image in a chain. */
static int read_header_section(struct vhdx_image *img, struct vhdx_error *err)
{
	static const uint64_t piece_off[3] = { 0, VHDX_HEADER1_OFFSET,
					       VHDX_HEADER2_OFFSET };
	struct vhdx_info *in = &img->info;
	uint8_t *buf = NULL, *h1, *h2;
	const char *why = NULL;
	int ret = 0, r1, r2;
	size_t got = 0;
	unsigned i;
	char *creator;

	if (in->file_size < VHDX_HEADER_SECTION_SIZE)
		return vhdx_fail(
			err, -EINVAL, img->path,
			"truncated: %llu bytes, shorter than the 1 MiB header section",
			(unsigned long long)in->file_size);
	buf = malloc(3 * VHDX_HEADER_SIZE);
	if (!buf)
		return vhdx_fail(err, -ENOMEM, img->path, "out of memory");
	for (i = 0; i < 3 && !ret; i++) {
		ret = vhdx_read_full(img->fd, buf + i * VHDX_HEADER_SIZE,
				     VHDX_HEADER_SIZE, piece_off[i], &got);
		if (!ret && got < VHDX_HEADER_SIZE)
			ret = -ENODATA;
	}
	if (ret == -ENODATA) {
		ret = vhdx_fail(
			err, -EINVAL, img->path,
			"truncated: shorter than the 1 MiB header section");
		goto out;
	}
	if (ret < 0) {
		vhdx_fail(err, ret, img->path, "cannot read: %s",
			  strerror(-ret));
		goto out;
	}
	creator = vhdx_utf16le_to_utf8(buf + VHDX_CREATOR_OFFSET,
				       VHDX_CREATOR_BYTES);
	if (creator) {
		snprintf(in->creator, sizeof(in->creator), "%s", creator);
		free(creator);
	}
	h1 = buf + VHDX_HEADER_SIZE;
	h2 = buf + 2 * VHDX_HEADER_SIZE;
	r1 = vhdx_header_parse(h1, &in->header[0]);
	r2 = vhdx_header_parse(h2, &in->header[1]);
	ret = vhdx_header_select(&in->header[0], &in->header[1],
				 !memcmp(h1, h2, VHDX_HEADER_SIZE), &why);
	if (ret < 0) {
		if (!in->header[0].valid)
			vhdx_fail(err, ret, img->path,
				  "%s (header 1: %s; header 2: %s)", why,
				  r1 == -EBADMSG ? "checksum mismatch"
						 : "bad signature",
				  r2 == -EBADMSG ? "checksum mismatch"
						 : "bad signature");
		else
			vhdx_fail(err, ret, img->path, "%s", why);
		goto out;
	}
	in->current_header = ret;
	ret = 0;
out:
	free(buf);
	return ret;
}

static int check_current_header(struct vhdx_image *img, struct vhdx_error *err)
{
	const struct vhdx_header_info *h =
		&img->info.header[img->info.current_header];

	if (h->version != VHDX_VERSION)
		return vhdx_fail(err, -ENOTSUP, img->path,
				 "unsupported VHDX version %u (header %d)",
				 h->version, img->info.current_header + 1);
	if (h->log_version != VHDX_LOG_VERSION)
		return vhdx_fail(err, -ENOTSUP, img->path,
				 "unsupported log version %u", h->log_version);
	if (h->log_length % VHDX_ALIGN || h->log_offset % VHDX_ALIGN)
		return vhdx_fail(
			err, -EINVAL, img->path,
			"log offset %llu or length %u is not a multiple of 1 MiB",
			(unsigned long long)h->log_offset, h->log_length);
	if (h->log_length && h->log_offset < VHDX_HEADER_SECTION_SIZE)
		return vhdx_fail(err, -EINVAL, img->path,
				 "log overlaps the header section");
	if (h->log_length &&
	    (h->log_offset > img->info.file_size ||
	     h->log_length > img->info.file_size - h->log_offset))
		return vhdx_fail(
			err, -EINVAL, img->path,
			"log (%u bytes at %llu) extends past the end of the file (%llu bytes; truncated?)",
			h->log_length, (unsigned long long)h->log_offset,
			(unsigned long long)img->info.file_size);
	return 0;
}

/* Replay a dirty log: into memory, or onto the file when writable. */
static int replay_log(struct vhdx_image *img, struct vhdx_error *err)
{
	struct vhdx_info *in = &img->info;
	struct vhdx_header_info h = in->header[in->current_header];
	struct vhdx_log_seq seq;
	struct vhdx_log_bad_range bad;
	uint8_t *log = NULL;
	size_t got;
	int ret;

	if (vhdx_guid_is_zero(&h.log_guid))
		return 0;
	in->log_dirty = true;
	if (h.log_length == 0)
		return vhdx_fail(
			err, -EINVAL, img->path,
			"header names a log (LogGuid set) but the log length is zero");
	if (h.log_length > VHDX_MAX_LOG_LENGTH)
		return vhdx_fail(err, -EINVAL, img->path,
				 "log of %u bytes is too large", h.log_length);
	log = malloc(h.log_length);
	if (!log)
		return vhdx_fail(err, -ENOMEM, img->path,
				 "out of memory reading the log");
	ret = vhdx_read_full(img->fd, log, h.log_length, h.log_offset, &got);
	if (ret < 0 || got < h.log_length) {
		ret = vhdx_fail(err, ret < 0 ? ret : -EINVAL, img->path,
				"cannot read the log: %s",
				ret < 0 ? strerror(-ret) : "file too short");
		goto out;
	}
	ret = vhdx_log_find_active(log, h.log_length, &h.log_guid, &seq);
	if (ret == -ENOMEM) {
		vhdx_fail(err, ret, img->path,
			  "out of memory searching the log");
		goto out;
	}
	if (ret == -E2BIG) {
		ret = vhdx_fail(
			err, -EINVAL, img->path,
			"log is damaged: too many entries whose chains break to search");
		goto out;
	}
	if (ret == -ENOENT) {
		/* No valid entry for this LogGuid: nothing was logged that
		 * is not already in place. */
		seq.count = 0;
		seq.flushed_file_offset = 0;
		seq.last_file_offset = 0;
		ret = 0;
	}
	if (seq.count && seq.flushed_file_offset > in->file_size) {
		ret = vhdx_fail(
			err, -EINVAL, img->path,
			"file is %llu bytes, shorter than the log's FlushedFileOffset %llu (truncated?)",
			(unsigned long long)in->file_size,
			(unsigned long long)seq.flushed_file_offset);
		goto out;
	}
	/* Checked before anything is written, so a refused log leaves the
	 * file as it was, and for a read-only open too, so that the same
	 * image is not fine one way and refused the other. */
	if (seq.count && vhdx_log_check_ranges(log, h.log_length, &seq, &bad)) {
		ret = vhdx_fail(
			err, -EINVAL, img->path,
			"log is damaged: entry %llu %s %llu bytes at file offset %llu, past its LastFileOffset %llu",
			(unsigned long long)bad.sequence,
			bad.zero ? "zeroes" : "writes",
			(unsigned long long)bad.length,
			(unsigned long long)bad.file_offset,
			(unsigned long long)bad.last_file_offset);
		goto out;
	}
	in->log_entries_replayed = seq.count;
	in->log_sequence_head = seq.count ? seq.head_sequence : 0;

	if (!img->writable) {
		img->overlay.file_size = in->file_size;
		if (seq.count) {
			ret = vhdx_log_replay(log, h.log_length, &seq,
					      vhdx_replay_to_memory,
					      &img->overlay);
			if (ret == -E2BIG) {
				ret = vhdx_fail(
					err, -EINVAL, img->path,
					"the log zeroes more than a read-only open replays in memory; replay it on disk (inspect --replay)");
				goto out;
			}
			if (ret < 0) {
				vhdx_fail(err, ret, img->path,
					  "cannot replay the log in memory: %s",
					  strerror(-ret));
				goto out;
			}
			if (seq.last_file_offset > in->file_size)
				img->overlay.file_size = seq.last_file_offset;
		}
		goto out;
	}

	/* On disk: a new FileWriteGuid first, as for any change. */
	ret = vhdx_guid_generate(&h.file_write_guid);
	if (!ret)
		ret = vhdx_header_update(img, &h);
	if (!ret && seq.count)
		ret = vhdx_log_replay(log, h.log_length, &seq,
				      vhdx_replay_to_file, &img->fd);
	if (!ret && seq.count && seq.last_file_offset > in->file_size) {
		if (ftruncate(img->fd, (off_t)seq.last_file_offset))
			ret = -errno;
		else
			in->file_size = seq.last_file_offset;
	}
	if (!ret && fsync(img->fd))
		ret = -errno;
	if (!ret) {
		memset(&h.log_guid, 0, sizeof(h.log_guid));
		ret = vhdx_header_update(img, &h);
	}
	if (ret) {
		vhdx_fail(err, ret, img->path, "log replay on disk failed: %s",
			  strerror(-ret));
		goto out;
	}
	in->log_replayed_on_disk = true;
out:
	free(log);
	return ret;
}

static int read_regions(struct vhdx_image *img, struct vhdx_regions *r,
			struct vhdx_error *err)
{
	uint64_t size = img->overlay.file_size;
	uint8_t *buf = malloc(VHDX_REGION_TABLE_SIZE);
	const char *why1 = NULL, *why2 = NULL;
	int ret;

	if (!buf)
		return vhdx_fail(err, -ENOMEM, img->path, "out of memory");
	ret = vhdx_file_read(img, buf, VHDX_REGION_TABLE_SIZE,
			     VHDX_REGION_TABLE1_OFFSET);
	if (!ret)
		ret = vhdx_region_table_parse(buf, size, r, &why1);
	if (ret == 0) {
		img->info.region_table = 0;
		goto out;
	}
	if (ret == -ENOTSUP || ret == -ENOMEM) {
		vhdx_fail(err, ret, img->path, "%s", why1);
		goto out;
	}
	ret = vhdx_file_read(img, buf, VHDX_REGION_TABLE_SIZE,
			     VHDX_REGION_TABLE2_OFFSET);
	if (!ret)
		ret = vhdx_region_table_parse(buf, size, r, &why2);
	if (ret == 0) {
		img->info.region_table = 1;
		goto out;
	}
	vhdx_fail(err, ret, img->path, "region table 1: %s; region table 2: %s",
		  why1 ? why1 : "unreadable", why2 ? why2 : "unreadable");
out:
	free(buf);
	return ret;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

struct span {
	uint64_t off, len;
	uint64_t index; /* BAT index */
};

static int by_offset(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

/* A BAT entry's file range must lie inside the file, past the header
 * section and clear of the log, BAT and metadata regions and of every
 * other block: otherwise a write to one could change another. */
static int check_bat(struct vhdx_image *img, struct vhdx_error *err)
{
	struct vhdx_info *in = &img->info;
	const struct vhdx_header_info *h = &in->header[in->current_header];
	uint64_t cr = in->chunk_ratio, i, j, n = 0,
		 size = img->overlay.file_size;
	bool diff = in->has_parent;
	struct span *sp;
	int ret = 0;

	sp = calloc(in->bat_entries ? in->bat_entries : 1, sizeof(*sp));
	if (!sp)
		return vhdx_fail(err, -ENOMEM, img->path,
				 "out of memory checking the BAT");
	for (i = 0; i < in->bat_entries; i++) {
		uint64_t e = img->bat[i], off = vhdx_bat_file_offset(e), len;
		unsigned st = vhdx_bat_state(e);
		bool bitmap = (i % (cr + 1)) == cr;

		if (bitmap) {
			if (st != VHDX_SB_STATE_NOT_PRESENT &&
			    st != VHDX_SB_STATE_PRESENT) {
				ret = vhdx_fail(
					err, -EINVAL, img->path,
					"BAT entry %llu (sector bitmap) has invalid state %u",
					(unsigned long long)i, st);
				goto out;
			}
			if (st != VHDX_SB_STATE_PRESENT)
				continue;
			in->bitmap_blocks_present++;
			if (!diff)
				continue; /* never read for a non-differencing
					     disk */
			len = VHDX_SECTOR_BITMAP_SIZE;
		} else {
			j = i - i / (cr + 1);
			if (j >= in->payload_blocks)
				continue; /* padding entry of the last chunk */
			switch (st) {
			case VHDX_PAYLOAD_PARTIALLY_PRESENT:
				if (!diff) {
					ret = vhdx_fail(
						err, -EINVAL, img->path,
						"BAT entry %llu is partially present in a disk that has no parent",
						(unsigned long long)i);
					goto out;
				}
				if (vhdx_bat_state(
					    img->bat[vhdx_bat_bitmap_index(
						    j / cr, cr)]) !=
				    VHDX_SB_STATE_PRESENT) {
					ret = vhdx_fail(
						err, -EINVAL, img->path,
						"block %llu is partially present but its chunk has no sector bitmap",
						(unsigned long long)j);
					goto out;
				}
				/* fall through */
			case VHDX_PAYLOAD_FULLY_PRESENT:
				break;
			case VHDX_PAYLOAD_NOT_PRESENT:
			case VHDX_PAYLOAD_UNDEFINED:
			case VHDX_PAYLOAD_ZERO:
			case VHDX_PAYLOAD_UNMAPPED:
			case VHDX_PAYLOAD_UNMAPPED_V1:
				in->block_states[st]++;
				continue;
			default:
				ret = vhdx_fail(
					err, -EINVAL, img->path,
					"BAT entry %llu has invalid state %u",
					(unsigned long long)i, st);
				goto out;
			}
			in->block_states[st]++;
			/* The last block may be short of a whole block. */
			len = in->virtual_size - j * in->block_size;
			if (len > in->block_size)
				len = in->block_size;
		}
		if (off < VHDX_HEADER_SECTION_SIZE || off > size ||
		    len > size - off) {
			ret = vhdx_fail(
				err, -EINVAL, img->path,
				"BAT entry %llu points to %llu, %s (file is %llu bytes)",
				(unsigned long long)i, (unsigned long long)off,
				off < VHDX_HEADER_SECTION_SIZE
					? "inside the header section"
					: "past the end of the file (truncated?)",
				(unsigned long long)size);
			goto out;
		}
		if (overlaps(off, len, in->bat_offset, in->bat_length) ||
		    overlaps(off, len, in->metadata_offset,
			     in->metadata_length) ||
		    (h->log_length &&
		     overlaps(off, len, h->log_offset, h->log_length))) {
			ret = vhdx_fail(
				err, -EINVAL, img->path,
				"BAT entry %llu (file offset %llu) overlaps the %s",
				(unsigned long long)i, (unsigned long long)off,
				overlaps(off, len, in->bat_offset,
					 in->bat_length)
					? "BAT region"
				: overlaps(off, len, in->metadata_offset,
					   in->metadata_length)
					? "metadata region"
					: "log");
			goto out;
		}
		for (j = 0; j < in->region_count; j++)
			if (overlaps(off, len, in->regions[j].file_offset,
				     in->regions[j].length)) {
				ret = vhdx_fail(
					err, -EINVAL, img->path,
					"BAT entry %llu (file offset %llu) overlaps a region",
					(unsigned long long)i,
					(unsigned long long)off);
				goto out;
			}
		sp[n].off = off;
		sp[n].len = len;
		sp[n].index = i;
		n++;
	}
	qsort(sp, n, sizeof(*sp), by_offset);
	for (i = 1; i < n; i++)
		if (sp[i - 1].off + sp[i - 1].len > sp[i].off) {
			ret = vhdx_fail(
				err, -EINVAL, img->path,
				"BAT entries %llu and %llu share file space at %llu",
				(unsigned long long)sp[i - 1].index,
				(unsigned long long)sp[i].index,
				(unsigned long long)sp[i].off);
			goto out;
		}
out:
	free(sp);
	return ret;
}

/*
 * 2.6.1: the metadata region's table, then the region up to the end of
 * its last item (a few KiB past the table, as writers place them), not
 * the whole region (usually 1 MiB): the pages of @md past that are never
 * touched, so they cost no page faults.
 */
static int read_metadata_used(struct vhdx_image *img, uint8_t *md,
			      const struct vhdx_regions *r)
{
	uint64_t len = r->metadata_length, end;
	int ret;

	if (len <= VHDX_METADATA_TABLE_SIZE)
		return vhdx_file_read(img, md, len, r->metadata_offset);
	ret = vhdx_file_read(img, md, VHDX_METADATA_TABLE_SIZE,
			     r->metadata_offset);
	if (ret)
		return ret;
	end = vhdx_metadata_used_length(md, len);
	if (end == VHDX_METADATA_TABLE_SIZE)
		return 0;
	return vhdx_file_read(img, md + VHDX_METADATA_TABLE_SIZE,
			      end - VHDX_METADATA_TABLE_SIZE,
			      r->metadata_offset + VHDX_METADATA_TABLE_SIZE);
}

static int read_metadata_and_bat(struct vhdx_image *img, struct vhdx_error *err)
{
	struct vhdx_info *in = &img->info;
	const struct vhdx_header_info *h = &in->header[in->current_header];
	struct vhdx_regions r;
	const char *why = NULL;
	uint8_t *md = NULL, *bat = NULL;
	uint64_t i;
	int ret;

	ret = read_regions(img, &r, err);
	if (ret)
		return ret;
	in->region_count = r.count;
	in->regions = r.entry;
	in->bat_offset = r.bat_offset;
	in->bat_length = r.bat_length;
	in->metadata_offset = r.metadata_offset;
	in->metadata_length = r.metadata_length;
	for (i = 0; h->log_length && i < r.count; i++)
		if (overlaps(h->log_offset, h->log_length,
			     r.entry[i].file_offset, r.entry[i].length))
			return vhdx_fail(err, -EINVAL, img->path,
					 "the log overlaps the %s region",
					 r.entry[i].name);

	if (r.metadata_length > VHDX_MAX_METADATA_LENGTH)
		return vhdx_fail(err, -EINVAL, img->path,
				 "metadata region of %u bytes is too large",
				 r.metadata_length);
	md = malloc(r.metadata_length);
	if (!md)
		return vhdx_fail(err, -ENOMEM, img->path, "out of memory");
	ret = read_metadata_used(img, md, &r);
	if (ret) {
		vhdx_fail(err, ret, img->path,
			  "cannot read the metadata region: %s",
			  strerror(-ret));
		goto out;
	}
	ret = vhdx_metadata_parse(md, r.metadata_length, &img->params,
				  &in->metadata, &in->metadata_count, &why);
	if (ret) {
		vhdx_fail(err, ret, img->path, "%s", why);
		goto out;
	}
	in->virtual_size = img->params.virtual_size;
	in->block_size = img->params.block_size;
	in->logical_sector_size = img->params.logical_sector_size;
	in->physical_sector_size = img->params.physical_sector_size;
	in->leave_blocks_allocated = img->params.leave_blocks_allocated;
	in->has_parent = img->params.has_parent;
	in->has_page83 = img->params.has_page83;
	in->page83 = img->params.page83;
	in->type = in->has_parent		? VHDX_TYPE_DIFFERENCING
		   : in->leave_blocks_allocated ? VHDX_TYPE_FIXED
						: VHDX_TYPE_DYNAMIC;
	if (img->params.has_locator) {
		ret = vhdx_locator_parse(md + img->params.locator_offset,
					 img->params.locator_length,
					 &in->locator, &in->locator_count,
					 &why);
		if (ret) {
			vhdx_fail(err, ret, img->path, "%s", why);
			goto out;
		}
	}

	in->chunk_ratio =
		vhdx_chunk_ratio(in->block_size, in->logical_sector_size);
	in->payload_blocks =
		vhdx_payload_blocks(in->virtual_size, in->block_size);
	in->bat_entries = vhdx_bat_entry_count(in->payload_blocks,
					       in->chunk_ratio, in->has_parent);
	/* A differencing disk always reads its last chunk's bitmap entry;
	 * other disks may omit the padding entries after the last block. */
	if (in->bat_entries * 8 > r.bat_length) {
		ret = vhdx_fail(
			err, -EINVAL, img->path,
			"BAT region (%u bytes) is too small for %llu entries",
			r.bat_length, (unsigned long long)in->bat_entries);
		goto out;
	}
	bat = malloc(in->bat_entries * 8 + 8);
	img->bat = calloc(in->bat_entries + 1, sizeof(*img->bat));
	if (!bat || !img->bat) {
		ret = vhdx_fail(err, -ENOMEM, img->path,
				"out of memory reading the BAT");
		goto out;
	}
	ret = vhdx_file_read(img, bat, in->bat_entries * 8, r.bat_offset);
	if (ret) {
		vhdx_fail(err, ret, img->path, "cannot read the BAT: %s",
			  strerror(-ret));
		goto out;
	}
	for (i = 0; i < in->bat_entries; i++)
		img->bat[i] = le64_get(bat + i * 8);
	ret = check_bat(img, err);
out:
	free(md);
	free(bat);
	return ret;
}

/* Open the file itself, refuse a chain that comes back to it and learn
 * its size. */
static int open_file(struct vhdx_image *img, unsigned flags,
		     const struct vhdx_image *below, struct vhdx_error *err)
{
	bool rw = flags & VHDX_OPEN_RDWR;
	struct stat st;
	int ret;

	img->fd = open(img->path, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (img->fd < 0)
		return vhdx_fail(err, -errno, img->path, "cannot open: %s",
				 strerror(errno));
	img->writable = rw;
	if (fstat(img->fd, &st))
		return vhdx_fail(err, -errno, img->path, "cannot stat: %s",
				 strerror(errno));
	img->dev = st.st_dev;
	img->ino = st.st_ino;
	img->below = below;
	ret = vhdx_parent_check_loop(img, err);
	if (ret)
		return ret;
	/* Before anything is written: a dirty log is replayed at open. */
	ret = vhdx_lock_image(img->path, rw, &img->lock, err);
	if (ret)
		return ret;
	if (S_ISBLK(st.st_mode)) {
		ret = vhdx_blockdev_geometry(img->fd, &img->info.file_size,
					     NULL);
		if (ret)
			return vhdx_fail(err, ret, img->path,
					 "cannot size device: %s",
					 strerror(-ret));
	} else if (S_ISREG(st.st_mode)) {
		img->info.file_size = (uint64_t)st.st_size;
	} else {
		return vhdx_fail(err, -EINVAL, img->path,
				 "not a regular file or block device");
	}
	img->overlay.file_size = img->info.file_size;
	return 0;
}

/* A read-only open asked to replay on disk (inspect --replay) needs a
 * writable descriptor for the replay alone. */
static int replay_on_disk(struct vhdx_image *img, struct vhdx_error *err)
{
	struct vhdx_lock *lk;
	int wfd, rfd, ret;

	ret = vhdx_lock(img->path, VHDX_LOCK_WRITE, &lk, err);
	if (ret)
		return ret;
	wfd = open(img->path, O_RDWR | O_CLOEXEC);
	if (wfd < 0) {
		ret = -errno;
		vhdx_unlock(lk);
		return vhdx_fail(err, ret, img->path,
				 "cannot open for log replay: %s",
				 strerror(-ret));
	}
	close(img->fd);
	img->fd = wfd;
	img->writable = true;
	ret = replay_log(img, err);
	img->writable = false;
	vhdx_unlock(lk);
	if (ret)
		return ret;
	rfd = open(img->path, O_RDONLY | O_CLOEXEC);
	if (rfd < 0)
		return vhdx_fail(err, -errno, img->path, "cannot reopen: %s",
				 strerror(errno));
	close(img->fd);
	img->fd = rfd;
	img->overlay.file_size = img->info.file_size;
	return 0;
}

/* 2.3 */
static int open_log(struct vhdx_image *img, unsigned flags,
		    struct vhdx_error *err)
{
	if ((flags & VHDX_OPEN_REPLAY) && !(flags & VHDX_OPEN_RDWR) &&
	    !vhdx_guid_is_zero(
		    &img->info.header[img->info.current_header].log_guid))
		return replay_on_disk(img, err);
	return replay_log(img, err);
}

static int open_one(const char *path, unsigned flags, unsigned depth,
		    const struct vhdx_image *below, struct vhdx_image **out,
		    struct vhdx_error *err);

static int open_parent(struct vhdx_image *img, unsigned flags,
		       struct vhdx_error *err)
{
	struct vhdx_image *parent = NULL;
	struct vhdx_error perr;
	int ret;

	ret = vhdx_parent_locate(img, err);
	if (ret)
		return ret;
	/* Parents are only ever read: whatever writes goes to the child. */
	ret = open_one(img->info.parent_path, flags & VHDX_OPEN_IGNORE_LINKAGE,
		       img->depth + 1, img, &parent, &perr);
	if (ret)
		return vhdx_fail(err, ret, img->path, "parent %s", perr.msg);
	ret = vhdx_parent_check(img, parent, flags, err);
	if (ret) {
		vhdx_close(parent);
		return ret;
	}
	img->parent = parent;
	return 0;
}

/* 2.5.1 sector bitmaps (read on first use) and the parent chain. */
static int open_differencing(struct vhdx_image *img, unsigned flags,
			     struct vhdx_error *err)
{
	img->chunks = (img->info.payload_blocks + img->info.chunk_ratio - 1) /
		      img->info.chunk_ratio;
	if (!img->info.has_parent)
		return 0;
	img->bitmaps =
		calloc(img->chunks ? img->chunks : 1, sizeof(*img->bitmaps));
	if (!img->bitmaps)
		return vhdx_fail(err, -ENOMEM, img->path, "out of memory");
	if (flags & VHDX_OPEN_NO_PARENT)
		return 0;
	return open_parent(img, flags, err);
}

static int open_writer(struct vhdx_image *img, unsigned flags,
		       struct vhdx_error *err)
{
	int ret;

	if (!(flags & VHDX_OPEN_RDWR))
		return 0;
	ret = vhdx_writer_init(img);
	if (ret)
		return vhdx_fail(err, ret, img->path,
				 "cannot prepare for writing: %s",
				 strerror(-ret));
	return 0;
}

static int open_one(const char *path, unsigned flags, unsigned depth,
		    const struct vhdx_image *below, struct vhdx_image **out,
		    struct vhdx_error *err)
{
	struct vhdx_image *img;
	int ret;

	*out = NULL;
	img = calloc(1, sizeof(*img));
	if (!img)
		return vhdx_fail(err, -ENOMEM, path, "out of memory");
	img->fd = -1;
	img->depth = depth;
	pthread_mutex_init(&img->bitmap_lock, NULL);
	pthread_mutex_init(&img->write_lock, NULL);
	img->path = strdup(path);
	if (!img->path) {
		ret = vhdx_fail(err, -ENOMEM, path, "out of memory");
		goto bad;
	}
	img->info.path = img->path;

	ret = open_file(img, flags, below, err);
	if (!ret)
		ret = check_file_id(img, err);
	if (!ret)
		ret = read_header_section(img, err);
	if (!ret)
		ret = check_current_header(img, err);
	if (!ret)
		ret = open_log(img, flags, err);
	if (!ret)
		ret = read_metadata_and_bat(img, err);
	if (!ret)
		ret = open_differencing(img, flags, err);
	if (!ret)
		ret = open_writer(img, flags, err);
	if (ret)
		goto bad;
	img->below = NULL;
	*out = img;
	return 0;
bad:
	img->writable = false; /* nothing to commit on the way out */
	vhdx_close(img);
	return ret;
}

int vhdx_open(const char *path, unsigned flags, struct vhdx_image **out,
	      struct vhdx_error *err)
{
	if (err)
		err->msg[0] = '\0';
	return open_one(path, flags, 0, NULL, out, err);
}

void vhdx_close(struct vhdx_image *img)
{
	uint64_t i;

	if (!img)
		return;
	if (img->writable)
		vhdx_writer_close(img);
	vhdx_close(img->parent);
	if (img->fd >= 0)
		close(img->fd);
	vhdx_unlock(img->lock);
	if (img->bitmaps) {
		for (i = 0; i < img->chunks; i++)
			free(img->bitmaps[i]);
		free(img->bitmaps);
	}
	vhdx_overlay_free(&img->overlay);
	vhdx_locator_free(img->info.locator, img->info.locator_count);
	free(img->info.regions);
	free(img->info.metadata);
	free(img->info.parent_path);
	free(img->bat);
	free(img->dirty);
	pthread_mutex_destroy(&img->write_lock);
	pthread_mutex_destroy(&img->bitmap_lock);
	free(img->path);
	free(img);
}

int vhdx_close_checked(struct vhdx_image *img)
{
	int ret = 0;

	if (!img)
		return 0;
	if (img->writable)
		ret = vhdx_writer_close(img);
	vhdx_close(img);
	return ret;
}

const struct vhdx_info *vhdx_get_info(const struct vhdx_image *img)
{
	return &img->info;
}

struct vhdx_image *vhdx_get_parent(const struct vhdx_image *img)
{
	return img->parent;
}

int vhdx_get_fd(const struct vhdx_image *img)
{
	return img->fd;
}

int vhdx_bat_entry(const struct vhdx_image *img, uint64_t i, uint64_t *entry)
{
	if (i >= img->info.bat_entries)
		return -ERANGE;
	*entry = img->bat[i];
	return 0;
}
