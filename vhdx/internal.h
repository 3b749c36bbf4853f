/* SPDX-License-Identifier: MIT */
/*
 * internal.h - the VHDX library's private interfaces: the pure parsing and
 * arithmetic functions (unit-tested on their own) and struct vhdx_image.
 * Only the vhdx/ sources and tests/unit include it.
 *
 * Who calls whom, lowest first; a file calls only files above it in this
 * list (in brackets: the image-level ones it uses; everything uses the
 * pure functions), so there is no cycle and each file can be read without
 * the ones after it:
 *
 *   crc32c.c guid.c header.c region.c metadata.c log.c
 *                  pure functions over buffers
 *   dirsync.c      fsync of a folder                       (nothing)
 *   file.c         the image file: reads through the replay overlay,
 *                  full writes, header updates, vhdx_fail()
 *   map.c          the extent map and sector bitmaps       (file)
 *   write.c        the writer                              (map, file)
 *   lock.c         hvresync's and qemu's image locks       (file)
 *   parent.c       parent lookup, linkage and loop checks  (file)
 *   image.c        the open pipeline and close  (file, parent, write,
 *                                                 lock)
 *   create.c       new images                   (image, file)
 *   space.c        what a merge takes of the filesystem  (map, write)
 *   merge.c        child into parent     (image, write, map, file, lock,
 *                                         space)
 */
#ifndef HVRESYNC_VHDX_INTERNAL_H
#define HVRESYNC_VHDX_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "format.h"
#include "vhdx.h"

/* --- CRC-32C (crc32c.c) ------------------------------------------------ */

/* Plain CRC-32C of BUF (initial value and final XOR 0xFFFFFFFF). */
uint32_t vhdx_crc32c(const void *buf, size_t len);
/* Incremental form: crc starts at 0xFFFFFFFF and is finished with ~crc. */
uint32_t vhdx_crc32c_update(uint32_t crc, const void *buf, size_t len);
/* The table-driven form vhdx_crc32c_update() uses where the CPU has no
 * crc32 instruction (and tests compare with it where it has). */
uint32_t vhdx_crc32c_table_update(uint32_t crc, const uint8_t *p, size_t len);
/* CRC-32C of BUF as if the 4 bytes at CSUM_OFF were zero. */
uint32_t vhdx_checksum(const uint8_t *buf, size_t len, size_t csum_off);

/* --- GUIDs (guid.c) ---------------------------------------------------- */

void vhdx_guid_from_le(const uint8_t b[16], struct vhdx_guid *g);
void vhdx_guid_to_le(const struct vhdx_guid *g, uint8_t b[16]);
/* Parse one of the *_STR constants of format.h; aborts on a bad literal. */
struct vhdx_guid vhdx_guid_const(const char *s);

/* --- Headers (header.c) ------------------------------------------------ */

/*
 * Parse a 4 KiB header.  Returns 0 when the signature and checksum are
 * right, -EINVAL for a wrong signature, -EBADMSG for a checksum mismatch.
 * H is filled in every case and h->valid says whether it was accepted.
 */
int vhdx_header_parse(const uint8_t *buf, struct vhdx_header_info *h);
/*
 * Choose the current header: the valid one with the greater sequence
 * number.  Equal sequence numbers are accepted only when the two headers
 * are byte-identical (IDENTICAL), as Disk2vhd writes them.  Returns 0 or 1,
 * or -EINVAL with *why set.
 */
int vhdx_header_select(const struct vhdx_header_info *h1,
		       const struct vhdx_header_info *h2, bool identical,
		       const char **why);
/* Serialise H into a 4 KiB buffer with its checksum. */
void vhdx_header_build(const struct vhdx_header_info *h, uint8_t *buf);

/* --- Region table (region.c) ------------------------------------------- */

struct vhdx_regions {
	unsigned count;
	struct vhdx_region_info *entry; /* malloc'd */
	uint64_t bat_offset;
	uint32_t bat_length;
	uint64_t metadata_offset;
	uint32_t metadata_length;
};

/*
 * Parse a 64 KiB region table: signature, checksum, entry count, no
 * unknown required region, both known regions present exactly once,
 * 1 MiB-aligned, past the header section and not overlapping.  FILE_SIZE
 * bounds the regions.  Returns 0, -EBADMSG (checksum), -EINVAL or
 * -ENOTSUP (unknown required region) with *why set.
 */
int vhdx_region_table_parse(const uint8_t *buf, uint64_t file_size,
			    struct vhdx_regions *out, const char **why);
void vhdx_regions_free(struct vhdx_regions *r);

/* --- Metadata (metadata.c) --------------------------------------------- */

struct vhdx_params {
	uint32_t block_size;
	bool leave_blocks_allocated;
	bool has_parent;
	uint64_t virtual_size;
	uint32_t logical_sector_size;
	uint32_t physical_sector_size;
	bool has_page83;
	struct vhdx_guid page83;
	bool has_locator;
	uint32_t locator_offset; /* within the metadata region */
	uint32_t locator_length;
};

/*
 * Parse the metadata table at the start of the metadata region REGION
 * (LEN bytes) and decode the known items into P.  Refuses unknown
 * required items (-ENOTSUP), missing or out-of-range values (-EINVAL).
 * ITEMS (malloc'd) receives the table for display.  *why is set on error
 * and may be printed with the item's name prepended by the caller.
 */
int vhdx_metadata_parse(const uint8_t *region, size_t len,
			struct vhdx_params *p,
			struct vhdx_metadata_info **items, unsigned *count,
			const char **why);

/*
 * How much of a metadata region of LEN bytes its items use, from the
 * 64 KiB table at its start (TABLE): the end of the last item, at least
 * the table, at most LEN.  Reading that much is all vhdx_metadata_parse()
 * needs (an item past LEN it refuses without reading it).
 */
uint64_t vhdx_metadata_used_length(const uint8_t *table, uint64_t len);

/*
 * Parse a parent locator (LEN bytes).  Entries are malloc'd UTF-8 strings.
 * Returns 0, -EINVAL with *why, or -ENOMEM.
 */
int vhdx_locator_parse(const uint8_t *buf, size_t len,
		       struct vhdx_locator_entry **entries, unsigned *count,
		       const char **why);
void vhdx_locator_free(struct vhdx_locator_entry *entries, unsigned count);
const char *vhdx_locator_get(const struct vhdx_locator_entry *entries,
			     unsigned count, const char *key);

/* UTF-16LE (LEN bytes, no terminator needed) to a malloc'd UTF-8 string;
 * unpaired surrogates become U+FFFD.  NULL on allocation failure. */
char *vhdx_utf16le_to_utf8(const uint8_t *s, size_t len);

/* --- BAT arithmetic (2.5) ---------------------------------------------- */

static inline uint64_t vhdx_chunk_ratio(uint32_t block_size,
					uint32_t logical_sector_size)
{
	return (VHDX_SECTORS_PER_CHUNK * logical_sector_size) / block_size;
}

static inline uint64_t vhdx_payload_blocks(uint64_t virtual_size,
					   uint32_t block_size)
{
	return (virtual_size + block_size - 1) / block_size;
}

/* BAT index of payload block J. */
static inline uint64_t vhdx_bat_payload_index(uint64_t j, uint64_t chunk_ratio)
{
	return j + j / chunk_ratio;
}

/* BAT index of the sector-bitmap entry of chunk C. */
static inline uint64_t vhdx_bat_bitmap_index(uint64_t c, uint64_t chunk_ratio)
{
	return c * (chunk_ratio + 1) + chunk_ratio;
}

static inline uint64_t vhdx_bat_entry_count(uint64_t payload_blocks,
					    uint64_t chunk_ratio,
					    bool differencing)
{
	if (payload_blocks == 0)
		return 0;
	if (differencing)
		return (payload_blocks + chunk_ratio - 1) / chunk_ratio *
		       (chunk_ratio + 1);
	return payload_blocks + (payload_blocks - 1) / chunk_ratio;
}

static inline unsigned vhdx_bat_state(uint64_t entry)
{
	return (unsigned)(entry & VHDX_BAT_STATE_MASK);
}

static inline uint64_t vhdx_bat_file_offset(uint64_t entry)
{
	return (entry >> VHDX_BAT_OFFSET_SHIFT) << VHDX_BAT_OFFSET_SHIFT;
}

static inline uint64_t vhdx_bat_make(unsigned state, uint64_t file_offset)
{
	return (file_offset & ~((1ull << VHDX_BAT_OFFSET_SHIFT) - 1)) |
	       (state & VHDX_BAT_STATE_MASK);
}

/* --- Log (log.c) ------------------------------------------------------- */

struct vhdx_log_entry_hdr {
	uint32_t checksum;
	uint32_t entry_length;
	uint32_t tail;
	uint64_t sequence;
	uint32_t descriptor_count;
	struct vhdx_guid log_guid;
	uint64_t flushed_file_offset;
	uint64_t last_file_offset;
};

struct vhdx_log_seq {
	uint32_t tail_off; /* log offset of the first entry to replay */
	uint32_t head_off; /* log offset of the last entry */
	unsigned count;	   /* entries in the sequence */
	uint64_t head_sequence;
	uint64_t flushed_file_offset; /* of the head entry */
	uint64_t last_file_offset;
};

/*
 * Validate the entry at offset OFF of the circular log LOG (LOG_LEN bytes,
 * a multiple of 4 KiB): signature, length, non-zero sequence, checksum,
 * LogGuid equal to GUID, descriptors' sequence, 4 KiB-aligned file offsets,
 * data sectors' sequence halves.  Returns 0 with *hdr filled, or -EINVAL.
 */
int vhdx_log_entry_check(const uint8_t *log, uint32_t log_len, uint32_t off,
			 const struct vhdx_guid *guid,
			 struct vhdx_log_entry_hdr *hdr);
/*
 * Find the active sequence: the run of valid, consecutive entries that ends
 * in the greatest sequence number and starts at that entry's Tail.
 * Returns 0, -ENOENT when the log holds no valid sequence, or -E2BIG
 * when following its chains would take more steps than any real log
 * needs (a crafted log; the open refuses it as damaged).
 */
int vhdx_log_find_active(const uint8_t *log, uint32_t log_len,
			 const struct vhdx_guid *guid,
			 struct vhdx_log_seq *seq);

/* Called for each 4 KiB sector (DATA != NULL, LEN 4096) or zero range
 * (DATA == NULL) the replay writes, in order. */
typedef int (*vhdx_log_apply_fn)(void *ctx, uint64_t file_off,
				 const uint8_t *data, uint64_t len);
int vhdx_log_replay(const uint8_t *log, uint32_t log_len,
		    const struct vhdx_log_seq *seq, vhdx_log_apply_fn fn,
		    void *ctx);

/* The first descriptor of an active sequence that reaches past its
 * entry's LastFileOffset. */
struct vhdx_log_bad_range {
	uint64_t sequence; /* of the entry */
	uint64_t file_offset;
	uint64_t length;
	uint64_t last_file_offset;
	bool zero; /* a zero descriptor, else a data one */
};
/*
 * Check that every descriptor of SEQ writes or zeroes only below its
 * entry's LastFileOffset, so that replay writes no more than the log's
 * writer had in its file.  Returns 0, or -ERANGE with *BAD filled.
 */
int vhdx_log_check_ranges(const uint8_t *log, uint32_t log_len,
			  const struct vhdx_log_seq *seq,
			  struct vhdx_log_bad_range *bad);

/*
 * Build one log entry at BUF (room for its whole length) that writes the
 * COUNT 4 KiB sectors DATA[i] to FILE_OFF[i].  Returns the entry length.
 */
uint32_t vhdx_log_entry_build(uint8_t *buf, uint64_t sequence, uint32_t tail,
			      const struct vhdx_guid *guid,
			      uint64_t flushed_file_offset,
			      uint64_t last_file_offset, unsigned count,
			      const uint64_t *file_off,
			      const uint8_t *const *data);

static inline uint32_t vhdx_log_entry_size(unsigned descriptors)
{
	uint32_t hdr_sectors =
		(descriptors + 2 + 127) / 128; /* 64-byte hdr = 2 slots */
	return (hdr_sectors + descriptors) * VHDX_LOG_SECTOR;
}

/* --- The open image ---------------------------------------------------- */

/* Sectors replayed from a dirty log into memory (read-only opens). */
struct vhdx_overlay {
	unsigned count;
	uint64_t *off;	    /* sorted, 4 KiB aligned file offsets */
	uint8_t **data;	    /* 4 KiB each */
	uint64_t file_size; /* size after replay (LastFileOffset) */
};

struct vhdx_image {
	int fd;
	bool writable;
	char *path;
	struct vhdx_info info;
	struct vhdx_params params;
	uint64_t *bat; /* host order, bat_entries long */
	struct vhdx_overlay overlay;

	pthread_mutex_t bitmap_lock;
	uint8_t **bitmaps; /* per chunk, loaded on demand */
	uint64_t chunks;

	struct vhdx_image *parent;
	struct vhdx_lock *lock; /* a reader's, or a writer's when writable */
	unsigned depth;
	dev_t dev;			/* identity of the file, to catch */
	ino_t ino;			/* a parent chain that loops */
	const struct vhdx_image *below; /* the child opening us (open only) */

	/* Writer state (write.c); all under write_lock. */
	pthread_mutex_t write_lock;
	bool guids_changed;	   /* FileWriteGuid/DataWriteGuid renewed */
	struct vhdx_guid log_guid; /* zero until the first log entry */
	uint64_t log_seq;	   /* next entry's sequence number */
	uint32_t log_pos;	   /* where the next entry goes */
	uint64_t *dirty;	   /* file offsets of 4 KiB sectors to log */
	unsigned ndirty, dirty_cap;
	bool batch;	   /* commit only at a flush (vhdx_writer_batch) */
	uint64_t unkicked; /* batch: written since writeback last started */
	struct vhdx_kicker *kicker; /* batch: starts writeback meanwhile */
	int write_error;	    /* sticky: after a failed commit */
	uint64_t alloc_end; /* next new block goes here (1 MiB aligned) */
};

/* --- Image locks (lock.c) --------------------------------------------- */

/* The lock vhdx_open() takes for one image: a reader's, or a writer's
 * (WRITABLE), refused while this process has the file open for writing
 * already. */
int vhdx_lock_image(const char *path, bool writable, struct vhdx_lock **out,
		    struct vhdx_error *err);

/* --- The image file (file.c) ------------------------------------------ */

/* Fill ERR with "PATH: message" and return RET: the library's one way of
 * reporting a refusal. */
int vhdx_fail(struct vhdx_error *err, int ret, const char *path,
	      const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* pread up to LEN bytes, retrying short reads and EINTR; *GOT is less than
 * LEN only at the end of the file.  Returns 0 or -errno. */
int vhdx_read_full(int fd, void *buf, size_t len, uint64_t off, size_t *got);
/* pwrite all of BUF, retrying short writes and EINTR. */
int vhdx_write_full(int fd, const void *buf, size_t len, uint64_t off);
/* pread through the in-memory overlay; reads past EOF (within the size the
 * replay extended the file to) return zeros.  Returns 0 or -errno
 * (-ENODATA on a short read past the end of the file). */
int vhdx_file_read(const struct vhdx_image *img, void *buf, size_t len,
		   uint64_t off);
/* vhdx_file_read() from the page cache alone: -EAGAIN when some of it
 * would have to come from the disk, or when the filesystem cannot read
 * without waiting (RWF_NOWAIT); the caller then reads it the usual way. */
int vhdx_file_read_cached(const struct vhdx_image *img, void *buf, size_t len,
			  uint64_t off);
/* vhdx_log_apply_fn callbacks of a log replay: into the overlay (CTX is the
 * struct vhdx_overlay) or onto the file (CTX points to the fd). */
int vhdx_replay_to_memory(void *ctx, uint64_t off, const uint8_t *data,
			  uint64_t len);
int vhdx_replay_to_file(void *ctx, uint64_t off, const uint8_t *data,
			uint64_t len);
void vhdx_overlay_free(struct vhdx_overlay *ov);
/* Write H as the new current header (its sequence number is set here). */
int vhdx_header_update(struct vhdx_image *img, struct vhdx_header_info *h);

/* --- The extent map (map.c) -------------------------------------------- */

/* The sector bitmap of CHUNK of a differencing disk, read on first use. */
uint8_t *vhdx_get_bitmap(struct vhdx_image *img, uint64_t chunk, int *err);

/* --- The writer (write.c), set up and finished by image.c --------------- */

int vhdx_writer_init(struct vhdx_image *img);
int vhdx_writer_close(struct vhdx_image *img);
/* From now on BAT and sector-bitmap changes wait for vhdx_flush() or the
 * close instead of committing whenever enough pile up: one commit, in as
 * few log entries as the log holds, for a writer whose whole work is
 * redone after a crash (a merge).  What it needs in memory grows with the
 * sectors it changes, 8 bytes each. */
void vhdx_writer_batch(struct vhdx_image *img);
/* The end of everything IMG's BAT, logs and regions reference, rounded up
 * to 1 MiB: where the writer allocates next, and the size it trims an
 * unreferenced tail back to once the log is clean. */
uint64_t vhdx_referenced_end(const struct vhdx_image *img);

/* --- What a merge takes of the filesystem (space.c) -------------------- */

struct vhdx_space {
	bool known;    /* false: the parent is not a regular file */
	uint64_t need; /* bytes the merge would newly take */
	uint64_t free; /* the filesystem's f_bavail, plus the parent's
			* unreferenced tail the writer gives back */
};

/* Work out what merging CHILD (opened without its parent) into PARENT
 * takes, from CHILD's runs and PARENT's BAT and holes; 0 or -errno. */
int vhdx_merge_space(struct vhdx_image *child, struct vhdx_image *parent,
		     struct vhdx_space *sp);

/* --- The parent of a differencing disk (parent.c) ---------------------- */

/* Refuse IMG when the children opening it (img->below) include its own
 * file: a parent chain that loops. */
int vhdx_parent_check_loop(const struct vhdx_image *img,
			   struct vhdx_error *err);
/* Check the chain depth and parent_linkage, then find the parent file by
 * the parent locator; on success img->info.parent_path holds its path. */
int vhdx_parent_locate(struct vhdx_image *img, struct vhdx_error *err);
/* Is PARENT, opened from img->info.parent_path, the disk IMG was made
 * from (parent_linkage, unless VHDX_OPEN_IGNORE_LINKAGE is in FLAGS), with
 * the same logical sector size? */
int vhdx_parent_check(const struct vhdx_image *img,
		      const struct vhdx_image *parent, unsigned flags,
		      struct vhdx_error *err);

#endif
