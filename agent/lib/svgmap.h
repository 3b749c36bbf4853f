/* SPDX-License-Identifier: MIT */
/*
 * svgmap.h - a picture of a virtual disk: where two copies differ.
 *
 * A comparison (verify, push, an agent's job) tells a struct svgmap what
 * each range it decided turned out to be: zero on both sides, identical
 * data, or differing data.  The map keeps three bounded extent sets
 * (struct extset), so memory stays bounded whatever the disk size or the
 * number of differences, and svgmap_write() draws one or more maps as an
 * SVG: each disk a grid of at most SVGMAP_MAX_CELLS cells of a power of
 * two bytes, each cell in the colour of the "worst" class it touches
 * (differing > identical > zero > not compared), with a legend, offsets
 * along the axes, the disk's name and size and the totals.
 *
 * Nothing here knows about the agent: names and sizes come from the
 * caller.
 */
#ifndef HVRESYNC_LIB_SVGMAP_H
#define HVRESYNC_LIB_SVGMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a range of the disk turned out to be. */
enum svgmap_class {
	SVGMAP_NONE, /* not compared (never told) */
	SVGMAP_ZERO, /* unallocated or zero on both sides */
	SVGMAP_SAME, /* identical data */
	SVGMAP_DIFF, /* differing data (for a push: sent) */
};

/* The colours of the classes, "#rrggbb" (the tests read them back). */
#define SVGMAP_COLOR_NONE "#ffffff"
#define SVGMAP_COLOR_ZERO "#d9d9d9"
#define SVGMAP_COLOR_SAME "#4e79a7"
#define SVGMAP_COLOR_DIFF "#e8412c"

#define SVGMAP_MIN_CELL 4096u	  /* bytes: the protocol's piece */
#define SVGMAP_MAX_CELLS 4096u	  /* per disk */
#define SVGMAP_COLUMNS 64u	  /* cells per row, at most */
#define EXTSET_DEFAULT_LIMIT 1024 /* extents a set keeps, by default */

struct extset_ext {
	uint64_t off, len;
};

/*
 * A sorted set of disjoint, non-touching byte ranges holding at most
 * @limit extents.  An extent that would go past the limit makes the set
 * merge its closest neighbours (the smallest gaps first) down to three
 * quarters of the limit: the set then covers a little more than it was
 * given (@merged says so), never less.
 */
struct extset {
	struct extset_ext *v;
	uint64_t *gaps; /* scratch for merging, as large as @v */
	uint32_t n, cap;
	uint32_t limit; /* 0 until first use: EXTSET_DEFAULT_LIMIT */
	bool merged;	/* over-covers what it was given */
};

/* Add [off, off + len).  0 or -ENOMEM (the set is left as it was). */
int extset_add(struct extset *s, uint64_t off, uint64_t len);
/* Bytes the set covers. */
uint64_t extset_bytes(const struct extset *s);
/* Empty the set, keeping its memory and limit. */
void extset_reset(struct extset *s);
void extset_free(struct extset *s);
/*
 * The set as text, for a JSON record: "GAP+LEN GAP+LEN ..." in hex, each
 * GAP counted from the end of the previous extent (from 0 for the
 * first); "" when empty.  *out is malloc()ed.  0 or -ENOMEM.
 */
int extset_format(const struct extset *s, char **out);
/* Add the extents of text written by extset_format() to @s.  0, -EINVAL
 * (not that form, or past 2^64) or -ENOMEM. */
int extset_parse(struct extset *s, const char *text);

/* What one comparison found on one disk.  All zeros is an empty map. */
struct svgmap {
	struct extset covered; /* every range told */
	struct extset data;    /* told SAME or DIFF */
	struct extset diff;    /* told DIFF */
	bool failed;	       /* an extent was lost for lack of memory */
};

/* Set the extent limit of all three sets (before the first add). */
void svgmap_set_limit(struct svgmap *m, uint32_t limit);
/* Tell the map what [off, off + len) is.  Out of memory marks the map
 * failed (the picture says so) rather than failing the comparison. */
void svgmap_add(struct svgmap *m, uint64_t off, uint64_t len,
		enum svgmap_class c);
/* Add everything @src holds to @dst (a session's map into a job's). */
void svgmap_merge(struct svgmap *dst, const struct svgmap *src);
/* Whether any set over-covers (its totals are then upper bounds). */
bool svgmap_merged(const struct svgmap *m);
void svgmap_reset(struct svgmap *m);
void svgmap_free(struct svgmap *m);

/* Bytes of each class up to @size, as the picture shows them
 * (SVGMAP_NONE: not compared). */
void svgmap_totals(const struct svgmap *m, uint64_t size, uint64_t out[4]);

/* The cell size svgmap_write() picks for a disk of @size bytes: the
 * smallest power of two from SVGMAP_MIN_CELL on that needs at most
 * SVGMAP_MAX_CELLS cells. */
uint64_t svgmap_cell_size(uint64_t size);
/* The class of each cell (svgmap_cell_size(@size) bytes) of the disk:
 * @cells gets ceil(size / cell) entries (at most SVGMAP_MAX_CELLS). */
size_t svgmap_cells(const struct svgmap *m, uint64_t size, uint8_t *cells);

/* One disk of a picture. */
struct svgmap_panel {
	const char *name; /* shown as given (escaped) */
	uint64_t size;	  /* virtual size in bytes */
	const struct svgmap *map;
	bool sent; /* differing data was sent (push, job), not only found */
};

/*
 * Write the picture of @n disks to @path (replaced): @title on top, then
 * one panel per disk, one under the other.  0 or -errno with @err "PATH:
 * cannot write: why".
 */
int svgmap_write(const char *path, const char *title,
		 const struct svgmap_panel *p, size_t n, char *err,
		 size_t errlen);

#endif
