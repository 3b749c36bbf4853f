/* SPDX-License-Identifier: MIT */
/*
 * svgmap.c - a picture of a virtual disk (svgmap.h): bounded extent sets
 * and the SVG writer.
 *
 * The picture is drawn at cell resolution, so the sets need not be exact
 * below it: when a set outgrows its limit it merges its closest
 * neighbours, which costs detail where extents crowd together and keeps
 * every differing byte inside some extent (over-cover, never under-
 * cover).  The drawing walks the three sets at once, so it costs the
 * number of extents plus the number of cells, whatever the disk size.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/lib/fmt.h"
#include "agent/lib/svgmap.h"

/* ---- extent sets --------------------------------------------------------- */

static uint32_t limit_of(struct extset *s)
{
	if (!s->limit)
		s->limit = EXTSET_DEFAULT_LIMIT;
	return s->limit;
}

static uint64_t end_of(const struct extset_ext *e)
{
	return e->off + e->len;
}

/* Room for one more extent (the set may hold limit + 1 for a moment,
 * before it merges). */
static int reserve(struct extset *s)
{
	uint32_t want, max = limit_of(s) + 1;
	struct extset_ext *v;

	if (s->n < s->cap)
		return 0;
	want = s->cap ? s->cap * 2 : 16;
	if (want > max || want < s->cap)
		want = max;
	if (want <= s->n)
		return -ENOMEM; /* cannot happen: compact() keeps n <= limit */
	v = realloc(s->v, (size_t)want * sizeof(*v));
	if (!v)
		return -ENOMEM;
	s->v = v;
	s->cap = want;
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Merge every other pair: halves the set without memory to sort in. */
static void compact_pairs(struct extset *s)
{
	uint32_t i, out = 0;

	for (i = 0; i < s->n; i += 2, out++) {
		s->v[out] = s->v[i];
		if (i + 1 < s->n)
			s->v[out].len = end_of(&s->v[i + 1]) - s->v[i].off;
	}
	s->n = out;
}

/* Over the limit: close the smallest gaps until three quarters of the
 * limit are left. */
static void compact(struct extset *s)
{
	uint32_t target = limit_of(s) / 4 * 3, i, k, out, lt = 0, eq;
	uint64_t thr;

	if (!target)
		target = 1;
	if (s->n <= target)
		return;
	s->merged = true;
	if (!s->gaps)
		s->gaps = malloc((size_t)s->cap * sizeof(*s->gaps));
	if (!s->gaps) {
		while (s->n > target)
			compact_pairs(s);
		return;
	}
	k = s->n - target; /* gaps to close */
	for (i = 0; i + 1 < s->n; i++)
		s->gaps[i] = s->v[i + 1].off - end_of(&s->v[i]);
	qsort(s->gaps, s->n - 1, sizeof(*s->gaps), cmp_u64);
	thr = s->gaps[k - 1];
	for (i = 0; i < k; i++)
		lt += s->gaps[i] < thr;
	eq = k - lt; /* gaps equal to the threshold that still close */
	out = 0;
	for (i = 1; i < s->n; i++) {
		uint64_t g = s->v[i].off - end_of(&s->v[out]);

		if (g < thr || (g == thr && eq && eq--)) {
			s->v[out].len = end_of(&s->v[i]) - s->v[out].off;
			continue;
		}
		s->v[++out] = s->v[i];
	}
	s->n = out + 1;
}

int extset_add(struct extset *s, uint64_t off, uint64_t len)
{
	uint32_t lo, hi, mid;
	uint64_t end;

	if (!len)
		return 0;
	if (len > UINT64_MAX - off)
		len = UINT64_MAX - off;
	end = off + len;
	/* In order, the common case: grow the last extent or append. */
	if (s->n && off >= s->v[s->n - 1].off) {
		struct extset_ext *last = &s->v[s->n - 1];

		if (off <= end_of(last)) {
			if (end > end_of(last))
				last->len = end - last->off;
			return 0;
		}
	}
	if (!s->n || off > end_of(&s->v[s->n - 1])) {
		if (reserve(s) < 0)
			return -ENOMEM;
		s->v[s->n].off = off;
		s->v[s->n].len = len;
		s->n++;
		if (s->n > limit_of(s))
			compact(s);
		return 0;
	}
	/* lo: the first extent that ends at or after off (touching joins) */
	lo = 0;
	hi = s->n;
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (end_of(&s->v[mid]) < off)
			lo = mid + 1;
		else
			hi = mid;
	}
	/* hi: the first extent that starts after end */
	hi = lo;
	while (hi < s->n && s->v[hi].off <= end)
		hi++;
	if (lo == hi) {
		if (reserve(s) < 0)
			return -ENOMEM;
		memmove(&s->v[lo + 1], &s->v[lo],
			(size_t)(s->n - lo) * sizeof(*s->v));
		s->v[lo].off = off;
		s->v[lo].len = len;
		s->n++;
		if (s->n > limit_of(s))
			compact(s);
		return 0;
	}
	if (s->v[lo].off < off)
		off = s->v[lo].off;
	if (end_of(&s->v[hi - 1]) > end)
		end = end_of(&s->v[hi - 1]);
	s->v[lo].off = off;
	s->v[lo].len = end - off;
	memmove(&s->v[lo + 1], &s->v[hi], (size_t)(s->n - hi) * sizeof(*s->v));
	s->n -= hi - lo - 1;
	return 0;
}

uint64_t extset_bytes(const struct extset *s)
{
	uint64_t sum = 0;
	uint32_t i;

	for (i = 0; i < s->n; i++)
		sum += s->v[i].len;
	return sum;
}

void extset_reset(struct extset *s)
{
	s->n = 0;
	s->merged = false;
}

void extset_free(struct extset *s)
{
	free(s->v);
	free(s->gaps);
	memset(s, 0, sizeof(*s));
}

int extset_format(const struct extset *s, char **out)
{
	/* two hex numbers of at most 16 digits, '+' and a space each */
	size_t cap = (size_t)s->n * 34 + 1, len = 0;
	uint64_t prev = 0;
	uint32_t i;
	char *buf;

	buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	buf[0] = '\0';
	for (i = 0; i < s->n; i++) {
		len += (size_t)snprintf(buf + len, cap - len,
					"%s%" PRIx64 "+%" PRIx64, i ? " " : "",
					s->v[i].off - prev, s->v[i].len);
		prev = end_of(&s->v[i]);
	}
	*out = buf;
	return 0;
}

/* One hex number of 1 to 16 digits at *p; advances *p. */
static int parse_hex(const char **p, uint64_t *out)
{
	const char *q = *p;
	uint64_t v = 0;
	int n = 0;

	for (;; q++, n++) {
		int d;

		if (*q >= '0' && *q <= '9')
			d = *q - '0';
		else if (*q >= 'a' && *q <= 'f')
			d = *q - 'a' + 10;
		else
			break;
		if (n == 16)
			return -EINVAL;
		v = v << 4 | (uint64_t)d;
	}
	if (!n)
		return -EINVAL;
	*p = q;
	*out = v;
	return 0;
}

int extset_parse(struct extset *s, const char *text)
{
	const char *p = text;
	uint64_t prev = 0, gap, len;
	int ret;

	while (*p) {
		if (p != text && *p++ != ' ')
			return -EINVAL;
		if (parse_hex(&p, &gap) < 0 || *p++ != '+' ||
		    parse_hex(&p, &len) < 0 || !len)
			return -EINVAL;
		if (gap > UINT64_MAX - prev || len > UINT64_MAX - prev - gap)
			return -EINVAL;
		ret = extset_add(s, prev + gap, len);
		if (ret < 0)
			return ret;
		prev += gap + len;
	}
	return 0;
}

/* ---- maps ---------------------------------------------------------------- */

void svgmap_set_limit(struct svgmap *m, uint32_t limit)
{
	m->covered.limit = limit;
	m->data.limit = limit;
	m->diff.limit = limit;
}

void svgmap_add(struct svgmap *m, uint64_t off, uint64_t len,
		enum svgmap_class c)
{
	int ret = 0;

	if (c == SVGMAP_NONE)
		return;
	ret |= extset_add(&m->covered, off, len);
	if (c >= SVGMAP_SAME)
		ret |= extset_add(&m->data, off, len);
	if (c == SVGMAP_DIFF)
		ret |= extset_add(&m->diff, off, len);
	if (ret)
		m->failed = true;
}

static void merge_set(struct svgmap *dst, struct extset *d,
		      const struct extset *s)
{
	uint32_t i;

	for (i = 0; i < s->n; i++)
		if (extset_add(d, s->v[i].off, s->v[i].len) < 0)
			dst->failed = true;
	d->merged |= s->merged;
}

void svgmap_merge(struct svgmap *dst, const struct svgmap *src)
{
	merge_set(dst, &dst->covered, &src->covered);
	merge_set(dst, &dst->data, &src->data);
	merge_set(dst, &dst->diff, &src->diff);
	dst->failed |= src->failed;
}

bool svgmap_merged(const struct svgmap *m)
{
	return m->covered.merged || m->data.merged || m->diff.merged;
}

void svgmap_reset(struct svgmap *m)
{
	extset_reset(&m->covered);
	extset_reset(&m->data);
	extset_reset(&m->diff);
	m->failed = false;
}

void svgmap_free(struct svgmap *m)
{
	extset_free(&m->covered);
	extset_free(&m->data);
	extset_free(&m->diff);
	m->failed = false;
}

/* ---- walking a map ------------------------------------------------------- */

struct cursor {
	const struct extset *s;
	uint32_t i;
};

/* Whether @pos lies in the cursor's set; lowers *next to the set's next
 * boundary after @pos.  Positions only grow. */
static bool cursor_at(struct cursor *c, uint64_t pos, uint64_t *next)
{
	const struct extset_ext *e;

	while (c->i < c->s->n && end_of(&c->s->v[c->i]) <= pos)
		c->i++;
	if (c->i == c->s->n)
		return false;
	e = &c->s->v[c->i];
	if (e->off <= pos) {
		if (end_of(e) < *next)
			*next = end_of(e);
		return true;
	}
	if (e->off < *next)
		*next = e->off;
	return false;
}

/* Call @fn for each run of one class from 0 to @size. */
static void sweep(const struct svgmap *m, uint64_t size,
		  void (*fn)(void *ctx, uint64_t off, uint64_t end,
			     enum svgmap_class c),
		  void *ctx)
{
	struct cursor cd = { &m->diff, 0 }, cn = { &m->data, 0 },
		      cc = { &m->covered, 0 };
	uint64_t pos = 0;

	while (pos < size) {
		uint64_t next = size;
		bool d = cursor_at(&cd, pos, &next);
		bool n = cursor_at(&cn, pos, &next);
		bool c = cursor_at(&cc, pos, &next);

		fn(ctx, pos, next,
		   d   ? SVGMAP_DIFF
		   : n ? SVGMAP_SAME
		   : c ? SVGMAP_ZERO
		       : SVGMAP_NONE);
		pos = next;
	}
}

static void add_total(void *ctx, uint64_t off, uint64_t end,
		      enum svgmap_class c)
{
	uint64_t *t = ctx;

	t[c] += end - off;
}

void svgmap_totals(const struct svgmap *m, uint64_t size, uint64_t out[4])
{
	memset(out, 0, 4 * sizeof(*out));
	sweep(m, size, add_total, out);
}

uint64_t svgmap_cell_size(uint64_t size)
{
	uint64_t cell = SVGMAP_MIN_CELL;

	while (size / cell + (size % cell != 0) > SVGMAP_MAX_CELLS)
		cell <<= 1;
	return cell;
}

struct cellfill {
	uint8_t *cells;
	uint64_t cell;
};

static void fill_cells(void *ctx, uint64_t off, uint64_t end,
		       enum svgmap_class c)
{
	struct cellfill *f = ctx;
	uint64_t i;

	/* a cell shows the worst class of the bytes it covers */
	for (i = off / f->cell; i <= (end - 1) / f->cell; i++)
		if (f->cells[i] < c)
			f->cells[i] = (uint8_t)c;
}

size_t svgmap_cells(const struct svgmap *m, uint64_t size, uint8_t *cells)
{
	struct cellfill f = { cells, svgmap_cell_size(size) };
	size_t n = (size_t)(size / f.cell + (size % f.cell != 0));

	memset(cells, SVGMAP_NONE, n);
	sweep(m, size, fill_cells, &f);
	return n;
}

/* ---- the SVG ------------------------------------------------------------- */

#define CELL_PX 12
#define MARGIN 16
#define AXIS_W 84 /* left of the grid: row offsets */
#define GRID_X (MARGIN + AXIS_W)
#define WIDTH (GRID_X + SVGMAP_COLUMNS * CELL_PX + MARGIN)
#define LINE 18
/* A row offset every LABEL_ROWS rows (every row up to that many): a
 * power of two of rows keeps the offsets ones fmt_size_exact() shows
 * exactly. */
#define LABEL_ROWS 8
#define LABEL_COLS 16

static const char *const class_color[] = {
	[SVGMAP_NONE] = SVGMAP_COLOR_NONE,
	[SVGMAP_ZERO] = SVGMAP_COLOR_ZERO,
	[SVGMAP_SAME] = SVGMAP_COLOR_SAME,
	[SVGMAP_DIFF] = SVGMAP_COLOR_DIFF,
};

static const char *const class_label[] = {
	[SVGMAP_NONE] = "not compared",
	[SVGMAP_ZERO] = "unallocated or zero on both sides",
	[SVGMAP_SAME] = "identical data",
	[SVGMAP_DIFF] = "differing data",
};

/* Length of the valid UTF-8 sequence at @p, or 0. */
static int utf8_len(const unsigned char *p)
{
	int n, i;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4;
	else
		return 0;
	for (i = 1; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	/* overlong forms, surrogates, past U+10FFFF */
	if ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] > 0x9f) ||
	    (p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] > 0x8f))
		return 0;
	return n;
}

/* @s as XML character data: markup escaped, control characters (which
 * XML 1.0 forbids) as spaces, bytes that are not UTF-8 as U+FFFD. */
static void xml_text(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p) {
		int n = utf8_len(p);

		if (!n) {
			fputs("\xef\xbf\xbd", f);
			p++;
			continue;
		}
		switch (*p) {
		case '&':
			fputs("&amp;", f);
			break;
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		default:
			if (*p < 0x20 || *p == 0x7f)
				fputc(' ', f);
			else
				fwrite(p, 1, (size_t)n, f);
		}
		p += n;
	}
}

static void text(FILE *f, int x, int y, const char *attrs, const char *s)
{
	fprintf(f, "<text x=\"%d\" y=\"%d\"%s%s>", x, y, *attrs ? " " : "",
		attrs);
	xml_text(f, s);
	fputs("</text>\n", f);
}

/* "12.5 MiB (13107200 bytes)" */
static const char *size_both(char *out, size_t len, uint64_t v)
{
	char h[32];

	fmt_size_exact(h, sizeof(h), v);
	if (v < 1024)
		fmt_line(out, len, "%s", h);
	else
		fmt_line(out, len, "%s (%" PRIu64 " bytes)", h, v);
	return out;
}

static int draw_legend(FILE *f, int y, bool sent)
{
	static const enum svgmap_class order[] = { SVGMAP_DIFF, SVGMAP_SAME,
						   SVGMAP_ZERO, SVGMAP_NONE };
	int x = MARGIN, i;

	for (i = 0; i < 4; i++) {
		enum svgmap_class c = order[i];

		fprintf(f,
			"<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
			"fill=\"%s\" stroke=\"#666666\" stroke-width=\"1\"/>\n",
			x, y - CELL_PX + 2, CELL_PX, CELL_PX, class_color[c]);
		const char *label = c == SVGMAP_DIFF && sent
					    ? "differing data (sent)"
					    : class_label[c];

		text(f, x + CELL_PX + 5, y, "class=\"legend\"", label);
		x += CELL_PX + 5 + 7 * (int)strlen(label) + 18;
	}
	y += LINE;
	text(f, MARGIN, y, "class=\"note\"",
	     "Each cell shows the worst of what it covers: differing, then "
	     "identical, then zero, then not compared.");
	return y + LINE;
}

/* One run of @n cells of class @c from cell (@row, @col). */
static void draw_run(FILE *f, int gy, unsigned row, unsigned col, unsigned n,
		     uint8_t c)
{
	fprintf(f,
		"<rect x=\"%d\" y=\"%d\" width=\"%u\" height=\"%d\" "
		"fill=\"%s\"/>\n",
		GRID_X + (int)col * CELL_PX, gy + (int)row * CELL_PX,
		n * CELL_PX, CELL_PX, class_color[c]);
}

/* The totals lines of a panel. */
static int draw_totals(FILE *f, int y, const struct svgmap_panel *p)
{
	uint64_t t[4];
	char a[96], b[96], c[96], line[400];
	bool merged = svgmap_merged(p->map);

	svgmap_totals(p->map, p->size, t);
	fmt_line(line, sizeof(line),
		 "differing%s: %s%s  \xc2\xb7  identical: %s",
		 p->sent ? " (sent)" : "", merged ? "at most " : "",
		 size_both(a, sizeof(a), t[SVGMAP_DIFF]),
		 size_both(b, sizeof(b), t[SVGMAP_SAME]));
	text(f, MARGIN, y, "class=\"totals\"", line);
	y += LINE;
	fmt_line(line, sizeof(line), "unallocated or zero: %s%s%s",
		 size_both(a, sizeof(a), t[SVGMAP_ZERO]),
		 t[SVGMAP_NONE] ? "  \xc2\xb7  not compared: " : "",
		 t[SVGMAP_NONE] ? size_both(c, sizeof(c), t[SVGMAP_NONE]) : "");
	text(f, MARGIN, y, "class=\"totals\"", line);
	y += LINE;
	if (merged) {
		text(f, MARGIN, y, "class=\"note\"",
		     "Extents were merged to bound memory: differing cells "
		     "may over-cover the differing data, never under-cover "
		     "it.");
		y += LINE;
	}
	if (p->map->failed) {
		text(f, MARGIN, y, "class=\"note\"",
		     "Incomplete: some extents were lost for lack of memory.");
		y += LINE;
	}
	return y;
}

/* One disk: its name and size, totals, the grid and its axes. */
static int draw_panel(FILE *f, int y, const struct svgmap_panel *p,
		      uint8_t *cells)
{
	uint64_t cell = svgmap_cell_size(p->size);
	size_t n = svgmap_cells(p->map, p->size, cells);
	unsigned cols = n < SVGMAP_COLUMNS ? (unsigned)n : SVGMAP_COLUMNS;
	unsigned rows = cols ? (unsigned)((n + cols - 1) / cols) : 0;
	char a[96], b[32], line[600];
	unsigned r, c, i;
	int gy;

	fmt_line(line, sizeof(line), "%s: %s", p->name,
		 size_both(a, sizeof(a), p->size));
	text(f, MARGIN, y, "class=\"disk\"", line);
	y += LINE;
	fmt_size_exact(b, sizeof(b), cell);
	fmt_line(line, sizeof(line), "%zu cells of %s, %u per row", n, b, cols);
	text(f, MARGIN, y, "class=\"note\"", line);
	y += LINE;
	y = draw_totals(f, y, p);
	if (!n)
		return y + LINE;
	/* column offsets within a row */
	y += 4;
	for (c = 0; c < cols; c += LABEL_COLS) {
		fmt_size_exact(b, sizeof(b), c * cell);
		fmt_line(line, sizeof(line), "+%s", c ? b : "0");
		text(f, GRID_X + (int)c * CELL_PX, y, "class=\"axis\"", line);
	}
	gy = y + 6;
	fprintf(f,
		"<g class=\"grid\" data-cell-bytes=\"%" PRIu64
		"\" data-cells=\"%zu\" data-columns=\"%u\" data-x=\"%d\" "
		"data-y=\"%d\" data-cell-px=\"%d\">\n",
		cell, n, cols, GRID_X, gy, CELL_PX);
	for (r = 0; r < rows; r++) {
		size_t base = (size_t)r * cols;
		unsigned len = (unsigned)(n - base < cols ? n - base : cols);

		for (c = 0; c < len; c = i) {
			for (i = c + 1;
			     i < len && cells[base + i] == cells[base + c]; i++)
				;
			draw_run(f, gy, r, c, i - c, cells[base + c]);
		}
	}
	/* faint lines every 8 cells and between rows, to count by */
	fputs("<path fill=\"none\" stroke=\"#ffffff\" stroke-opacity=\"0.5\" "
	      "stroke-width=\"1\" d=\"",
	      f);
	for (c = 8; c < cols; c += 8)
		fprintf(f, "M%d %dv%u", GRID_X + (int)c * CELL_PX, gy,
			rows * CELL_PX);
	for (r = 1; r < rows; r++)
		fprintf(f, "M%d %dh%u", GRID_X, gy + (int)r * CELL_PX,
			cols * CELL_PX);
	fputs("\"/>\n</g>\n", f);
	fprintf(f,
		"<rect x=\"%d\" y=\"%d\" width=\"%u\" height=\"%u\" "
		"fill=\"none\" stroke=\"#444444\" stroke-width=\"1\"/>\n",
		GRID_X, gy, cols * CELL_PX, rows * CELL_PX);
	/* row offsets on the left, and where the disk ends */
	for (r = 0; r < rows; r += rows <= LABEL_ROWS ? 1 : LABEL_ROWS) {
		fmt_size_exact(b, sizeof(b), (uint64_t)r * cols * cell);
		if (!r)
			strcpy(b, "0");
		text(f, GRID_X - 6, gy + (int)r * CELL_PX + CELL_PX - 2,
		     "class=\"axis\" text-anchor=\"end\"", b);
	}
	y = gy + (int)(rows * CELL_PX) + 14;
	fmt_size_exact(b, sizeof(b), p->size);
	fmt_line(line, sizeof(line), "end of disk at %s", b);
	text(f, GRID_X, y, "class=\"axis\"", line);
	return y + LINE + 8;
}

static int panel_height(const struct svgmap_panel *p)
{
	uint64_t cell = svgmap_cell_size(p->size);
	uint64_t n = p->size / cell + (p->size % cell != 0);
	uint64_t cols = n < SVGMAP_COLUMNS ? n : SVGMAP_COLUMNS;
	uint64_t rows = cols ? (n + cols - 1) / cols : 0;

	/* name, cell line, up to four totals lines, axis, grid, end */
	return 6 * LINE + 10 + (int)rows * CELL_PX + 14 + LINE + 8 + LINE;
}

static void write_svg(FILE *f, const char *title, const struct svgmap_panel *p,
		      size_t n, uint8_t *cells)
{
	int height = 3 * LINE + 2 * MARGIN + LINE, y;
	bool sent = false;
	size_t i;

	for (i = 0; i < n; i++) {
		height += panel_height(&p[i]);
		sent |= p[i].sent;
	}
	fprintf(f,
		"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
		"height=\"%d\" viewBox=\"0 0 %d %d\" "
		"font-family=\"sans-serif\" font-size=\"12\">\n<title>",
		WIDTH, height, WIDTH, height);
	xml_text(f, title);
	fputs("</title>\n<style>.title{font-size:17px;font-weight:bold}"
	      ".disk{font-size:14px;font-weight:bold}"
	      ".axis{font-size:10px;fill:#333333}"
	      ".note{fill:#555555}</style>\n",
	      f);
	fprintf(f,
		"<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" "
		"fill=\"#ffffff\"/>\n",
		WIDTH, height);
	y = MARGIN + 14;
	text(f, MARGIN, y, "class=\"title\"", title);
	y += LINE + 8;
	y = draw_legend(f, y, sent);
	y += 8;
	for (i = 0; i < n; i++)
		y = draw_panel(f, y, &p[i], cells);
	fputs("</svg>\n", f);
}

int svgmap_write(const char *path, const char *title,
		 const struct svgmap_panel *p, size_t n, char *err,
		 size_t errlen)
{
	uint8_t *cells = malloc(SVGMAP_MAX_CELLS);
	FILE *f;
	int ret = 0;

	if (!cells) {
		fmt_line(err, errlen, "%s: cannot write: out of memory", path);
		return -ENOMEM;
	}
	f = fopen(path, "w");
	if (!f) {
		ret = -errno;
		fmt_line(err, errlen, "%s: cannot write: %s", path,
			 strerror(errno));
		goto out;
	}
	write_svg(f, title, p, n, cells);
	if (fflush(f) == EOF || ferror(f))
		ret = -(errno ? errno : EIO);
	if (fclose(f) == EOF && !ret)
		ret = -(errno ? errno : EIO);
	if (ret)
		fmt_line(err, errlen, "%s: cannot write: %s", path,
			 strerror(-ret));
out:
	free(cells);
	return ret;
}
