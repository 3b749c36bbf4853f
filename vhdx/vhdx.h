/* SPDX-License-Identifier: MIT */
/*
 * vhdx.h - public API of hvresync's VHDX format library (MS-VHDX).
 *
 * Functions return 0 (or a count) on success and a negative errno on
 * failure.  Functions that can fail on bad input also fill a struct
 * vhdx_error with one line naming the file and what is wrong with it.
 *
 * The extent map (vhdx_map) is the central API: it describes a virtual range
 * as runs of "bytes in file F at offset X", "zero", "unallocated", "held in
 * memory" (a sector replayed from a dirty log) or "from the parent".  Every
 * reader (FUSE view, io_uring engine, writer) is built on it.
 *
 * This layer knows nothing of uring/, fuse/ or agent/.
 */
#ifndef HVRESYNC_VHDX_H
#define HVRESYNC_VHDX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define VHDX_ERR_LEN 1024

struct vhdx_error {
	char msg[VHDX_ERR_LEN];
};

/* A GUID in host order; converted from the on-disk layout at the boundary. */
struct vhdx_guid {
	uint32_t d1;
	uint16_t d2;
	uint16_t d3;
	uint8_t d4[8];
};

/* CRC-32C (Castagnoli), as VHDX checksums use it; also used by the
 * network protocol's frames.  The _update form starts at 0xFFFFFFFF and is
 * finished with ~crc. */
uint32_t vhdx_crc32c(const void *buf, size_t len);
uint32_t vhdx_crc32c_update(uint32_t crc, const void *buf, size_t len);

#define VHDX_GUID_STR_LEN                                  \
	37 /* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" + NUL \
	    */

void vhdx_guid_format(const struct vhdx_guid *g, char out[VHDX_GUID_STR_LEN]);
/* Accepts the plain or {braced} form; returns 0 or -EINVAL. */
int vhdx_guid_parse(const char *s, struct vhdx_guid *g);
/* Fill @buf with @len bytes from getrandom(2), the one source of random
 * bytes (GUIDs, hash seeds, keys); 0 or -errno. */
int vhdx_random_bytes(void *buf, size_t len);
/* A random (version-4) GUID, the one source of them; 0 or -errno. */
int vhdx_guid_generate(struct vhdx_guid *g);
bool vhdx_guid_equal(const struct vhdx_guid *a, const struct vhdx_guid *b);
bool vhdx_guid_is_zero(const struct vhdx_guid *g);

/* Payload block states (MS-VHDX 2.5.1.1). */
enum vhdx_payload_state {
	VHDX_PAYLOAD_NOT_PRESENT = 0,
	VHDX_PAYLOAD_UNDEFINED = 1,
	VHDX_PAYLOAD_ZERO = 2,
	VHDX_PAYLOAD_UNMAPPED = 3,
	VHDX_PAYLOAD_UNMAPPED_V1 = 5, /* written by old implementations */
	VHDX_PAYLOAD_FULLY_PRESENT = 6,
	VHDX_PAYLOAD_PARTIALLY_PRESENT = 7,
};

const char *vhdx_payload_state_name(unsigned state);

enum vhdx_type {
	VHDX_TYPE_FIXED,
	VHDX_TYPE_DYNAMIC,
	VHDX_TYPE_DIFFERENCING,
};

const char *vhdx_type_name(enum vhdx_type t);

struct vhdx_region_info {
	struct vhdx_guid guid;
	uint64_t file_offset;
	uint32_t length;
	bool required;
	const char *name; /* "BAT", "metadata" or "unknown" */
};

struct vhdx_metadata_info {
	struct vhdx_guid item_id;
	uint32_t offset; /* from the metadata region's start */
	uint32_t length;
	bool is_user;
	bool is_virtual_disk;
	bool is_required;
	const char *name; /* known item name or "unknown" */
};

struct vhdx_locator_entry {
	char *key;   /* UTF-8 */
	char *value; /* UTF-8 */
};

struct vhdx_header_info {
	bool valid;
	uint64_t sequence;
	struct vhdx_guid file_write_guid;
	struct vhdx_guid data_write_guid;
	struct vhdx_guid log_guid;
	uint16_t log_version;
	uint16_t version;
	uint32_t log_length;
	uint64_t log_offset;
};

/* Everything inspect shows; filled at open, read-only afterwards. */
struct vhdx_info {
	const char *path;
	uint64_t file_size;
	char creator[1024]; /* UTF-8, from the file type identifier */

	struct vhdx_header_info header[2];
	int current_header; /* 0 or 1 */
	int region_table;   /* which region table was used: 0 or 1 */

	/* Log state as found on disk. */
	bool log_dirty;
	unsigned log_entries_replayed;
	uint64_t log_sequence_head; /* sequence number of the active head */
	bool log_replayed_on_disk;

	unsigned region_count;
	struct vhdx_region_info *regions;
	unsigned metadata_count;
	struct vhdx_metadata_info *metadata;

	uint64_t virtual_size;
	uint32_t block_size;
	uint32_t logical_sector_size;
	uint32_t physical_sector_size;
	bool leave_blocks_allocated;
	bool has_parent;
	bool has_page83;
	struct vhdx_guid page83;
	enum vhdx_type type;

	uint64_t bat_offset;
	uint32_t bat_length;
	uint64_t metadata_offset;
	uint32_t metadata_length;
	uint64_t chunk_ratio;
	uint64_t payload_blocks;
	uint64_t bat_entries;
	uint64_t block_states[8];	/* payload blocks by state */
	uint64_t bitmap_blocks_present; /* sector-bitmap entries in state 6 */

	/* Parent locator (differencing disks only). */
	unsigned locator_count;
	struct vhdx_locator_entry *locator;
	char *parent_path; /* the path the parent was found at, or NULL */
};

/* --- Probing a file before opening it (file.c) ------------------------- */

/*
 * int vhdx_probe_fd(int fd);
 *
 * Does FD start with the VHDX file type identifier, the 8 bytes "vhdxfile"
 * at offset 0 (MS-VHDX 2.2.1)?  Returns 1 if it does, 0 if it does not
 * (including a file shorter than 8 bytes), or a negative errno when the
 * read fails.  Reads with pread (EINTR and short reads retried), so the
 * file offset is left alone.  Only the signature is looked at: the rest
 * of the file is checked by vhdx_open(), which refuses a file without it.
 */
int vhdx_probe_fd(int fd);

/*
 * Read the two headers of the VHDX open as @fd (MS-VHDX 2.2.2) and fill
 * @h with the current one: the valid one with the greater sequence
 * number.  No image is opened and nothing is locked, so a caller can tell
 * cheaply whether a writer updated the file (a new sequence number or
 * FileWriteGuid).  0, or a negative errno with *why saying what is wrong
 * (-EINVAL: no usable header).
 */
int vhdx_read_current_header(int fd, struct vhdx_header_info *h,
			     const char **why);

/*
 * int vhdx_blockdev_geometry(int fd, uint64_t *size_bytes,
 *                            uint32_t *logical_sector);
 *
 * Size in bytes (BLKGETSIZE64) and logical sector size (BLKSSZGET) of the
 * block device open at FD.  Either pointer may be NULL to skip that query.
 * Returns 0, or a negative errno (-ENOTTY for a regular file) and then
 * leaves both outputs untouched.
 */
int vhdx_blockdev_geometry(int fd, uint64_t *size_bytes,
			   uint32_t *logical_sector);

enum {
	/* Open for writing.  A dirty log is replayed on disk. */
	VHDX_OPEN_RDWR = 1u << 0,
	/* Replay a dirty log on disk (opens read-write for the replay only). */
	VHDX_OPEN_REPLAY = 1u << 1,
	/* Accept a parent whose DataWriteGuid differs from parent_linkage. */
	VHDX_OPEN_IGNORE_LINKAGE = 1u << 2,
	/* Do not look for the parent of a differencing disk; reads of sectors
	 * the child does not hold then fail with -ENOENT. */
	VHDX_OPEN_NO_PARENT = 1u << 3,
};

struct vhdx_image;

/*
 * Open IMAGE and, for a differencing disk, its parent chain.  A read-only
 * open of a file with a dirty log replays it into memory and never writes
 * the file.  On failure returns a negative errno, *out is NULL and err
 * holds one line: "PATH: what is wrong".
 */
int vhdx_open(const char *path, unsigned flags, struct vhdx_image **out,
	      struct vhdx_error *err);
void vhdx_close(struct vhdx_image *img);

const struct vhdx_info *vhdx_get_info(const struct vhdx_image *img);
/* Next image down the chain, or NULL. */
struct vhdx_image *vhdx_get_parent(const struct vhdx_image *img);
/* File descriptor of this image (read-only unless opened RDWR). */
int vhdx_get_fd(const struct vhdx_image *img);

/* Raw BAT entry i (host order, after any log replay); -ERANGE if past end. */
int vhdx_bat_entry(const struct vhdx_image *img, uint64_t i, uint64_t *entry);

/* --- The extent map ---------------------------------------------------- */

enum vhdx_ext_kind {
	VHDX_EXT_DATA,	  /* bytes at file_off in fd */
	VHDX_EXT_MEM,	  /* bytes at mem (a sector replayed from the log) */
	VHDX_EXT_ZERO,	  /* reads as zeros: ZERO, UNMAPPED, UNDEFINED blocks */
	VHDX_EXT_UNALLOC, /* never allocated (NOT_PRESENT at the chain's base)
			   */
	VHDX_EXT_PARENT,  /* from the parent (only with VHDX_MAP_NO_RESOLVE) */
};

struct vhdx_extent {
	uint64_t off; /* virtual offset */
	uint64_t len;
	enum vhdx_ext_kind kind;
	int fd;		   /* DATA */
	uint64_t file_off; /* DATA */
	const void *mem;   /* MEM */
	const struct vhdx_image
		*source; /* image in the chain that supplies it */
};

enum {
	/* Stop at this image: report from-parent runs as VHDX_EXT_PARENT. */
	VHDX_MAP_NO_RESOLVE = 1u << 0,
};

/*
 * Describe the longest uniform run that starts at virtual offset OFF and is
 * at most LEN bytes long (clipped to the virtual size).  Adjacent blocks
 * that are contiguous in one file are merged into one DATA run.  Returns 0,
 * -EINVAL when OFF is at or past the end, or another negative errno (for
 * example -EIO when a sector bitmap cannot be read).  Thread-safe.
 */
int vhdx_map(struct vhdx_image *img, uint64_t off, uint64_t len, unsigned flags,
	     struct vhdx_extent *ext);

struct vhdx_map_iter {
	struct vhdx_image *img;
	uint64_t pos;
	uint64_t end;
	unsigned flags;
};

static inline void vhdx_map_iter_init(struct vhdx_map_iter *it,
				      struct vhdx_image *img, uint64_t off,
				      uint64_t len, unsigned flags)
{
	it->img = img;
	it->pos = off;
	it->end = off + len;
	it->flags = flags;
}

/* Returns 1 with the next run in *ext, 0 at the end, or a negative errno. */
static inline int vhdx_map_next(struct vhdx_map_iter *it,
				struct vhdx_extent *ext)
{
	int ret;

	if (it->pos >= it->end)
		return 0;
	ret = vhdx_map(it->img, it->pos, it->end - it->pos, it->flags, ext);
	if (ret < 0)
		return ret;
	it->pos = ext->off + ext->len;
	return 1;
}

/* Read LEN virtual bytes at OFF (clipped to the virtual size) through the
 * extent map.  Returns the number of bytes read or a negative errno. */
ssize_t vhdx_pread(struct vhdx_image *img, void *buf, size_t len, uint64_t off);

/* --- Creating and writing (create.c, write.c, merge.c) ------------------ */

struct vhdx_create_opts {
	uint64_t virtual_size; /* bytes; ignored for a child (parent's) */
	uint32_t block_size;   /* 0: 32 MiB (2 MiB for a child) */
	uint32_t logical_sector_size;  /* 0: 512 (a child takes its parent's) */
	uint32_t physical_sector_size; /* 0: 4096 */
	bool fixed;		       /* allocate every block up front */
	const char *parent;	       /* make a differencing child of this */
};

/*
 * Create a new image at PATH (never over an existing file).  A child gets
 * a parent locator with parent_linkage (the parent's DataWriteGuid) and a
 * relative_path from the child's directory.  Returns 0 or a negative errno
 * with err filled; on failure nothing is left at PATH.
 */
int vhdx_create(const char *path, const struct vhdx_create_opts *opts,
		struct vhdx_error *err);

/*
 * Write LEN bytes at virtual offset OFF of an image opened with
 * VHDX_OPEN_RDWR.  New payload blocks are allocated after the last block
 * anything references (1 MiB aligned), so space a failed writer appended
 * is reused; a write that turns a whole block into zeros marks it
 * ZERO instead of storing zeros.  BAT and sector-bitmap changes reach the
 * file only through the log, at vhdx_flush() (or when enough pile up), so
 * a crash at any point leaves each block with its old or its new content.
 * Returns 0 or a negative errno.
 */
int vhdx_pwrite(struct vhdx_image *img, const void *buf, size_t len,
		uint64_t off);
/* Make LEN bytes at OFF read as zeros; whole blocks become ZERO. */
int vhdx_write_zeroes(struct vhdx_image *img, uint64_t off, uint64_t len);
/* Commit pending BAT and bitmap changes through the log and make all
 * written data durable. */
int vhdx_flush(struct vhdx_image *img);
/* Flush, clear the LogGuid and close: vhdx_close() does this for a
 * writable image and reports nothing; call this to see the error. */
int vhdx_close_checked(struct vhdx_image *img);

typedef void (*vhdx_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/*
 * Merge the differencing disk CHILD into its parent and delete CHILD.
 * Crash-safe and idempotent: a marker file CHILD.merging records the
 * parent's identity before the parent is touched, so an interrupted merge
 * completes when run again (the parent must not be used until then).
 * Before anything is written, the space the merge needs is compared with
 * the filesystem's free space: when short, -ENOSPC with both figures in
 * @err, and the parent, the child and the marker are left as they were.
 */
int vhdx_merge(const char *child, unsigned flags, vhdx_progress_fn progress,
	       void *ctx, struct vhdx_error *err);

/* --- Image locks (lock.c) ----------------------------------------------- */

/*
 * hvresync's own lock and qemu's image locks (its file-posix driver's
 * byte-range OFD locks), as one.  vhdx_open() takes them itself (a
 * reader's, or a writer's with VHDX_OPEN_RDWR, held until vhdx_close()),
 * vhdx_merge() and the log replay of VHDX_OPEN_REPLAY too; a caller takes
 * one to hold an image across several opens (a recovery session).
 *
 * READ: qemu's shared "consistent read"; never stands in a writer's way.
 * WRITE: hvresync's exclusive flock(2) and qemu's write and resize
 * permissions, shared with nobody: refused while another process (qemu,
 * a VM, an hvresync view or session) writes the image or keeps others
 * from writing it, and keeps qemu from opening it for writing.
 *
 * Within one process, locks on one file nest (a session holds its image
 * and merges into it); only two images open for writing at once are
 * refused.  Returns 0, or -EBUSY with err naming the image and, where
 * /proc tells it, the holder: "PATH: in use by qemu-io (pid 123), which
 * has it open for writing; left untouched".  A filesystem without these
 * locks does not hold anyone up.
 */
enum vhdx_lock_mode {
	VHDX_LOCK_READ,
	VHDX_LOCK_WRITE,
};

struct vhdx_lock;

int vhdx_lock(const char *path, enum vhdx_lock_mode mode,
	      struct vhdx_lock **out, struct vhdx_error *err);
void vhdx_unlock(struct vhdx_lock *lk);

/* hvresync's own lock alone, on an open image: flock(2), exclusive or
 * shared, not waiting.  0, or -EBUSY when another descriptor holds a lock
 * in the way; a filesystem without flock(2) is not held up. */
int vhdx_flock(int fd, bool exclusive);

/* fsync a folder, or the folder that holds @path, so that the entries
 * created or renamed in it survive a power cut; 0 or a negative errno
 * (dirsync.c). */
int vhdx_fsync_dir(const char *dir);
int vhdx_fsync_parent_dir(const char *path);

#endif
