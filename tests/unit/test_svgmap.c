/* SPDX-License-Identifier: MIT */
/* test_svgmap.c - agent/lib/svgmap: the bounded extent sets a job keeps of
 * where its disks differed, their text form in the job record, the cells
 * a picture shows and the SVG itself. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent/lib/svgmap.h"

#define KiB 1024ull
#define MiB (1024 * KiB)
#define GiB (1024 * MiB)
#define TiB (1024 * GiB)

/* Is [off, off + len) inside one extent of @s? */
static bool covered(const struct extset *s, uint64_t off, uint64_t len)
{
	uint32_t i;

	for (i = 0; i < s->n; i++)
		if (s->v[i].off <= off &&
		    off + len <= s->v[i].off + s->v[i].len)
			return true;
	return false;
}

/* Sorted, disjoint and not touching: what every user of a set assumes. */
static void assert_canonical(const struct extset *s)
{
	uint32_t i;

	for (i = 0; i < s->n; i++) {
		assert_true(s->v[i].len > 0);
		if (i)
			assert_true(s->v[i - 1].off + s->v[i - 1].len <
				    s->v[i].off);
	}
}

static void test_extset_joins(void **state)
{
	struct extset s = { 0 };

	(void)state;
	/* in order: touching extents become one */
	assert_int_equal(extset_add(&s, 0, 4096), 0);
	assert_int_equal(extset_add(&s, 4096, 4096), 0);
	assert_int_equal(extset_add(&s, 16384, 4096), 0);
	assert_int_equal(s.n, 2);
	assert_int_equal(extset_bytes(&s), 12288);
	/* out of order: before, between (bridging both) and overlapping */
	assert_int_equal(extset_add(&s, 1 * MiB, 4096), 0);
	assert_int_equal(extset_add(&s, 65536, 100), 0);
	assert_int_equal(s.n, 4);
	assert_int_equal(extset_add(&s, 8192, 8192), 0); /* 8K..16K */
	assert_int_equal(s.n, 3);
	assert_int_equal(s.v[0].off, 0);
	assert_int_equal(s.v[0].len, 20480);
	assert_int_equal(extset_add(&s, 60000, 2 * MiB), 0);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.v[1].off, 60000);
	assert_int_equal(s.v[1].len, 2 * MiB);
	assert_int_equal(extset_add(&s, 0, 0), 0); /* nothing */
	assert_int_equal(s.n, 2);
	assert_false(s.merged);
	assert_canonical(&s);
	/* an extent that would pass 2^64 ends there */
	assert_int_equal(extset_add(&s, UINT64_MAX - 10, 100), 0);
	assert_int_equal(s.v[s.n - 1].off + s.v[s.n - 1].len, UINT64_MAX);
	extset_free(&s);
}

/* Past its limit a set merges its closest neighbours: it stays bounded,
 * never loses a byte it was given, and keeps the large gaps. */
static void test_extset_bounded(void **state)
{
	struct extset s = { .limit = 64 };
	uint64_t i, off;

	(void)state;
	/* 2000 small extents in the first GiB, with a gap growing with i,
	 * then one far away: the gap before it is the largest */
	for (i = 0, off = 0; i < 2000; i++) {
		assert_int_equal(extset_add(&s, off, 4096), 0);
		assert_true(s.n <= 64);
		off += 4096 + 4096 * (i % 7 + 1);
	}
	assert_int_equal(extset_add(&s, 3 * TiB, 4096), 0);
	assert_true(s.merged);
	assert_true(s.n <= 64);
	assert_canonical(&s);
	for (i = 0, off = 0; i < 2000; i++) {
		assert_true(covered(&s, off, 4096));
		off += 4096 + 4096 * (i % 7 + 1);
	}
	/* the far extent was not merged with the rest: the picture of the
	 * disk between them stays clean */
	assert_true(covered(&s, 3 * TiB, 4096));
	assert_false(covered(&s, 2 * TiB, 4096));
	assert_int_equal(s.v[s.n - 1].off, 3 * TiB);
	assert_int_equal(s.v[s.n - 1].len, 4096);
	extset_free(&s);

	/* out of order too (a job's second pass, a resume) */
	s = (struct extset){ .limit = 16 };
	for (i = 0; i < 500; i++) {
		off = (i * 7919 % 500) * 3 * 4096;
		assert_int_equal(extset_add(&s, off, 4096), 0);
		assert_true(s.n <= 16);
	}
	assert_canonical(&s);
	for (i = 0; i < 500; i++)
		assert_true(covered(&s, i * 3 * 4096, 4096));
	extset_free(&s);
}

static void test_extset_text(void **state)
{
	struct extset s = { 0 }, t = { 0 };
	char *text;
	uint32_t i;

	(void)state;
	assert_int_equal(extset_format(&s, &text), 0);
	assert_string_equal(text, "");
	free(text);
	extset_add(&s, 4096, 8192);
	extset_add(&s, 1 * MiB, 65536);
	extset_add(&s, 4 * TiB - 4096, 4096);
	assert_int_equal(extset_format(&s, &text), 0);
	assert_string_equal(text, "1000+2000 fd000+10000 3ffffeef000+1000");
	assert_int_equal(extset_parse(&t, text), 0);
	free(text);
	assert_int_equal(t.n, s.n);
	for (i = 0; i < s.n; i++) {
		assert_int_equal(t.v[i].off, s.v[i].off);
		assert_int_equal(t.v[i].len, s.v[i].len);
	}
	extset_free(&t);
	/* what a damaged or hostile record may hold */
	static const char *const bad[] = {
		"1+",
		"+1",
		"1+0",
		"1-2",
		"0x1+2",
		"1+2 ",
		" 1+2",
		"1+2  3+4",
		"A+1",
		"g+1",
		"1+2,3+4",
		"11111111111111111+1",
		"ffffffffffffffff+ffffffffffffffff",
		"-1+2",
	};
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		t = (struct extset){ 0 };
		assert_int_equal(extset_parse(&t, bad[i]), -EINVAL);
		extset_free(&t);
	}
	extset_free(&s);
}

static void test_cell_size(void **state)
{
	(void)state;
	assert_int_equal(svgmap_cell_size(1 * MiB), 4096); /* 256 cells */
	assert_int_equal(svgmap_cell_size(16 * MiB), 4096);
	assert_int_equal(svgmap_cell_size(16 * MiB + 1), 8192);
	assert_int_equal(svgmap_cell_size(4 * TiB), 1 * GiB);
	assert_int_equal(svgmap_cell_size(4 * TiB + 1), 2 * GiB);
	assert_int_equal(svgmap_cell_size(0), 4096);
	assert_int_equal(svgmap_cell_size(UINT64_MAX), 1ull << 52);
}

/* A cell shows the worst class it touches; totals are exact bytes. */
static void test_cells_and_totals(void **state)
{
	struct svgmap m = { 0 };
	uint8_t cells[SVGMAP_MAX_CELLS];
	uint64_t t[4];
	size_t n, i;

	(void)state;
	/* a 1 MiB disk, 64 KiB blocks as verify tells them */
	for (i = 0; i < 15; i++) /* block 15 is never told */
		svgmap_add(&m, i * 65536, 65536,
			   i < 4    ? SVGMAP_ZERO
			   : i == 5 ? SVGMAP_DIFF
				    : SVGMAP_SAME);
	/* one 512-byte piece differing in block 8 */
	svgmap_add(&m, 8 * 65536 + 4096 + 512, 512, SVGMAP_DIFF);
	n = svgmap_cells(&m, 1 * MiB, cells);
	assert_int_equal(n, 256);
	for (i = 0; i < 64; i++)
		assert_int_equal(cells[i], SVGMAP_ZERO);
	for (i = 64; i < 80; i++)
		assert_int_equal(cells[i], SVGMAP_SAME);
	for (i = 80; i < 96; i++)
		assert_int_equal(cells[i], SVGMAP_DIFF);
	assert_int_equal(cells[128], SVGMAP_SAME);
	assert_int_equal(cells[129], SVGMAP_DIFF); /* 512 bytes of it */
	assert_int_equal(cells[130], SVGMAP_SAME);
	for (i = 240; i < 256; i++)
		assert_int_equal(cells[i], SVGMAP_NONE);
	svgmap_totals(&m, 1 * MiB, t);
	assert_int_equal(t[SVGMAP_ZERO], 4 * 65536);
	assert_int_equal(t[SVGMAP_DIFF], 65536 + 512);
	assert_int_equal(t[SVGMAP_SAME], 10 * 65536 - 512);
	assert_int_equal(t[SVGMAP_NONE], 65536);
	assert_false(svgmap_merged(&m));
	svgmap_free(&m);

	/* 4 TiB: 4096 cells of 1 GiB; one 4 KiB difference is one cell */
	svgmap_add(&m, 0, 4 * TiB, SVGMAP_ZERO);
	svgmap_add(&m, 3 * TiB + 5 * MiB, 4096, SVGMAP_DIFF);
	svgmap_add(&m, 1 * TiB, 1 * GiB + 1, SVGMAP_SAME);
	n = svgmap_cells(&m, 4 * TiB, cells);
	assert_int_equal(n, 4096);
	for (i = 0; i < n; i++) {
		uint8_t want = i == 3072		? SVGMAP_DIFF
			       : i == 1024 || i == 1025 ? SVGMAP_SAME
							: SVGMAP_ZERO;

		assert_int_equal(cells[i], want);
	}
	svgmap_free(&m);
}

/* A session's map goes into its job's; what a job records reads back. */
static void test_merge(void **state)
{
	struct svgmap job = { 0 }, sess = { 0 };
	uint64_t t[4];

	(void)state;
	svgmap_add(&sess, 0, 8 * MiB, SVGMAP_SAME);
	svgmap_add(&sess, 1 * MiB, 4096, SVGMAP_DIFF);
	svgmap_merge(&job, &sess);
	svgmap_reset(&sess);
	/* a second pass from 0: one more difference, the rest the same */
	svgmap_add(&sess, 0, 8 * MiB, SVGMAP_SAME);
	svgmap_add(&sess, 5 * MiB, 8192, SVGMAP_DIFF);
	svgmap_merge(&job, &sess);
	svgmap_totals(&job, 16 * MiB, t);
	assert_int_equal(t[SVGMAP_DIFF], 4096 + 8192);
	assert_int_equal(t[SVGMAP_SAME], 8 * MiB - 4096 - 8192);
	assert_int_equal(t[SVGMAP_NONE], 8 * MiB);
	svgmap_free(&sess);
	svgmap_free(&job);
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	*len = (size_t)n;
	return buf;
}

/* The SVG names the disk (escaped), shows its size, the legend and the
 * totals, and stays small for the worst 4 TiB disk: alternating classes
 * in every cell. */
static void test_write(void **state)
{
	char path[] = "/tmp/test_svgmap.XXXXXX";
	struct svgmap m = { 0 }, empty = { 0 };
	struct svgmap_panel p[2] = {
		{ "vm<1>&\"disk\"\xff\x01.vhdx", 4 * TiB, &m, true },
		{ "tiny", 1 * MiB, &empty, false },
	};
	char err[256], *svg;
	size_t len;
	uint64_t i;
	int fd;

	(void)state;
	fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	for (i = 0; i < 4096; i++)
		svgmap_add(&m, i * GiB + (i % 3) * 4096, 4096,
			   (enum svgmap_class)(1 + i % 3));
	assert_int_equal(svgmap_write(path, "job <x>", p, 2, err, sizeof(err)),
			 0);
	svg = slurp(path, &len);
	assert_true(len < 1024 * 1024);
	assert_non_null(strstr(svg, "<title>job &lt;x&gt;</title>"));
	assert_non_null(strstr(
		svg, "vm&lt;1&gt;&amp;&quot;disk&quot;\xef\xbf\xbd .vhdx: "
		     "4 TiB (4398046511104 bytes)"));
	assert_non_null(strstr(svg, "tiny: 1 MiB (1048576 bytes)"));
	assert_non_null(strstr(svg, "differing data (sent)"));
	/* 4096 scattered extents went past the sets' limit: merged, and
	 * the picture says what that means */
	assert_true(svgmap_merged(&m));
	assert_non_null(strstr(svg, "differing (sent): at most "));
	assert_non_null(strstr(svg, "never under-cover"));
	assert_non_null(strstr(svg, "tiny: 1 MiB"));
	assert_non_null(strstr(svg, "differing: 0 bytes"));
	assert_non_null(strstr(svg, "identical data"));
	assert_non_null(strstr(svg, "unallocated or zero on both sides"));
	assert_non_null(strstr(svg, "4096 cells of 1 GiB"));
	assert_non_null(strstr(svg, "256 cells of 4 KiB"));
	assert_non_null(strstr(svg, "not compared: 1 MiB"));
	assert_non_null(strstr(svg, ">+16 GiB<")); /* column axis */
	assert_non_null(strstr(svg, ">512 GiB<")); /* row axis */
	assert_non_null(strstr(svg, ">1.5 TiB<"));
	assert_non_null(strstr(svg, SVGMAP_COLOR_DIFF));
	assert_non_null(strstr(svg, "</svg>\n"));
	free(svg);
	unlink(path);

	assert_int_equal(svgmap_write("/nonexistent/dir/x.svg", "t", p, 2, err,
				      sizeof(err)),
			 -ENOENT);
	assert_non_null(strstr(err, "/nonexistent/dir/x.svg: cannot write"));
	svgmap_free(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_extset_joins),
		cmocka_unit_test(test_extset_bounded),
		cmocka_unit_test(test_extset_text),
		cmocka_unit_test(test_cell_size),
		cmocka_unit_test(test_cells_and_totals),
		cmocka_unit_test(test_merge),
		cmocka_unit_test(test_write),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
