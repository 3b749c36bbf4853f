/* SPDX-License-Identifier: MIT */
/*
 * cmd_verify.c - `hvresync verify`: compare two virtual disks block by
 * block (each a VHDX, raw image, block device or FUSE raw view) and report
 * where they differ.
 *
 * Both disks are read at once by the io_uring reader; blocks that are
 * unallocated or zero on both sides are never read.  The differing blocks
 * are merged into extents as they are found and printed straight away, so
 * memory does not grow with the disk or with the number of differences.
 * With --map, every block's class (zero on both sides, identical,
 * differing) also goes into a bounded map (agent/lib/svgmap.h) drawn as
 * an SVG at the end.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/cli/cli.h"
#include "agent/cli/progress.h"
#include "agent/lib/fmt.h"
#include "agent/lib/json.h"
#include "agent/lib/svgmap.h"
#include "uring/reader.h"

static const char verify_usage[] =
	"hvresync verify [--json] [--map FILE.svg] [--block-size N]\n"
	"                       [--hash xxh3|sha256] [--queue-depth N]\n"
	"                       [--threads N] [--direct] A B";

static const char verify_help[] =
	"Compare two disks block by block and report where they differ.\n"
	"A and B are each a VHDX (by its 'vhdxfile' signature), a raw image,\n"
	"a block device or a raw view from 'hvresync mount'.\n"
	"\n"
	"  --json            print one JSON object on stdout\n"
	"  --map FILE.svg    also draw where the disks differ as an SVG\n"
	"                    picture (written even when they are identical)\n"
	"  --block-size N    compare block: a power of two from 4K to 4M\n"
	"                    (default 64K)\n"
	"  --hash H          xxh3 (XXH3-128 with a random per-run seed, the\n"
	"                    default) or sha256\n"
	"  --queue-depth N   reads in flight per disk (default 16)\n"
	"  --threads N       reading and hashing threads (default: CPUs)\n"
	"  --direct          read with O_DIRECT where the offsets allow it\n"
	"\n"
	"Exit status: 0 identical, 1 different, 2 error.\n";

struct side {
	const char *name; /* "A" or "B" */
	struct ur_source *src;
	struct ur_stream *st;
	struct ur_stream_stats stats;
};

struct verify {
	/* the command line */
	bool json;
	const char *map_path; /* --map */
	struct ur_config cfg;
	const char *path[2];
	/* the run */
	uint32_t bs;
	struct side s[2];
	struct ur_engine *e;
	struct json_writer w;
	struct progress bar;
	struct ur_acc acc;
	uint64_t size;
	uint64_t compared, skipped, different;
	double seconds;
	/* --map: each block's class, and the zero hashes of a full and of
	 * the disk's short last block (0: not computed yet) */
	struct svgmap map;
	struct ur_hash zero_hash[2];
	uint32_t zero_len[2];
};

static void emit_extent(struct verify *v, const struct ur_range *r)
{
	char off[32], len[32];

	if (v->json) {
		json_object_begin(&v->w);
		json_kv_u64(&v->w, "offset", r->off);
		json_kv_u64(&v->w, "length", r->len);
		json_object_end(&v->w);
		return;
	}
	progress_clear(&v->bar);
	fmt_size(off, sizeof(off), r->off);
	fmt_size(len, sizeof(len), r->len);
	printf("differ offset=%" PRIu64 " length=%" PRIu64 " (at %s, %s)\n",
	       r->off, r->len, off, len);
}

static void json_side(struct json_writer *w, const char *key,
		      const struct side *s)
{
	json_key(w, key);
	json_object_begin(w);
	json_kv_string(w, "path", s->src->path);
	json_kv_string(w, "type", ur_source_type_name(s->src->type));
	json_kv_u64(w, "virtual_size", s->src->size);
	json_kv_u64(w, "logical_sector_size", s->src->sector_size);
	json_object_end(w);
}

/* Bytes in N blocks from block INDEX on, the disk's short end included. */
static uint64_t span_bytes(const struct verify *v, uint64_t index, uint64_t n)
{
	return ur_clip(v->size, index * v->bs, n * v->bs);
}

/* The hash of @len zero bytes, computed once per length. */
static const struct ur_hash *zero_hash(struct verify *v, uint32_t len)
{
	int i = len == v->bs ? 0 : 1;

	if (v->zero_len[i] != len) {
		if (ur_engine_zero_hash(v->e, len, &v->zero_hash[i]) < 0)
			return NULL;
		v->zero_len[i] = len;
	}
	return &v->zero_hash[i];
}

/* --map: what block @a (equal or not, as @same says) is. */
static void map_block(struct verify *v, const struct ur_block *a, bool same)
{
	const struct ur_hash *z;
	enum svgmap_class c = SVGMAP_DIFF;

	if (same) {
		/* allocated zeros on both sides count as zero too */
		z = zero_hash(v, a->len);
		c = a->zero || (z && ur_hash_equal(&a->hash, z)) ? SVGMAP_ZERO
								 : SVGMAP_SAME;
	}
	svgmap_add(&v->map, a->off, a->len, c);
}

static int compare(struct verify *v)
{
	struct ur_block a, b;
	struct ur_range r;
	uint64_t next_draw = 0;
	int ra, rb;

	ur_acc_init(&v->acc);
	for (;;) {
		uint64_t n = 1;

		ra = ur_stream_peek(v->s[0].st, &a);
		if (ra < 0)
			return ra;
		rb = ur_stream_peek(v->s[1].st, &b);
		if (rb < 0)
			return rb;
		if (!ra || !rb) {
			if (ra != rb)
				goto out_of_step;
			break;
		}
		if (a.index != b.index || a.len != b.len)
			goto out_of_step;
		if (a.zero && b.zero) {
			n = a.run < b.run ? a.run : b.run;
			v->skipped += span_bytes(v, a.index, n);
			if (v->map_path)
				svgmap_add(&v->map, a.off,
					   span_bytes(v, a.index, n),
					   SVGMAP_ZERO);
		} else {
			bool same = ur_hash_equal(&a.hash, &b.hash);

			v->compared += a.len;
			if (!same) {
				v->different += a.len;
				if (ur_acc_add(&v->acc, a.off, a.len, &r))
					emit_extent(v, &r);
			}
			if (v->map_path)
				map_block(v, &a, same);
		}
		ur_stream_release(v->s[0].st, n);
		ur_stream_release(v->s[1].st, n);
		if (v->compared + v->skipped >= next_draw) {
			progress_update(&v->bar, v->compared + v->skipped);
			next_draw = v->compared + v->skipped + (64u << 20);
		}
	}
	if (ur_acc_flush(&v->acc, &r))
		emit_extent(v, &r);
	return 0;

out_of_step:
	return -EPROTO;
}

static void print_summary(struct verify *v)
{
	char c[32], s[32], d[32], ra[32], rb[32], rate[32];
	uint64_t total = v->s[0].stats.bytes_read + v->s[1].stats.bytes_read;
	uint64_t bps = v->seconds > 0 ? (uint64_t)(total / v->seconds) : 0;
	uint64_t vps = v->seconds > 0 ? (uint64_t)(v->size / v->seconds) : 0;
	bool same = v->different == 0;

	if (v->json) {
		json_kv_bool(&v->w, "identical", same);
		json_kv_u64(&v->w, "bytes_compared", v->compared);
		json_kv_u64(&v->w, "bytes_skipped", v->skipped);
		json_kv_u64(&v->w, "bytes_different", v->different);
		json_kv_u64(&v->w, "extent_count", v->acc.count);
		json_kv_u64(&v->w, "bytes_read_a", v->s[0].stats.bytes_read);
		json_kv_u64(&v->w, "bytes_read_b", v->s[1].stats.bytes_read);
		/* The writer has no floats; milliseconds are enough. */
		json_kv_u64(&v->w, "milliseconds",
			    (uint64_t)(v->seconds * 1000 + 0.5));
		json_kv_u64(&v->w, "throughput_bytes_per_second", bps);
		json_kv_u64(&v->w, "virtual_bytes_per_second", vps);
		json_kv_bool(&v->w, "io_uring", ur_engine_uses_io_uring(v->e));
		json_object_end(&v->w);
		return;
	}
	fmt_size(c, sizeof(c), v->compared);
	fmt_size(s, sizeof(s), v->skipped);
	fmt_size(d, sizeof(d), v->different);
	fmt_size(ra, sizeof(ra), v->s[0].stats.bytes_read);
	fmt_size(rb, sizeof(rb), v->s[1].stats.bytes_read);
	fmt_size(rate, sizeof(rate), bps);
	printf("bytes compared:  %" PRIu64 " (%s)\n", v->compared, c);
	printf("bytes skipped:   %" PRIu64 " (%s, unallocated or zero on "
	       "both sides)\n",
	       v->skipped, s);
	printf("bytes different: %" PRIu64 " (%s in %" PRIu64 " extent%s)\n",
	       v->different, d, v->acc.count, v->acc.count == 1 ? "" : "s");
	printf("read %s from A and %s from B in %.2f s (%s/s)\n", ra, rb,
	       v->seconds, rate);
	printf("%s\n", same ? "identical" : "differ");
}

static int open_side(struct side *s, const char *name, const char *path)
{
	char err[1024];
	int ret;

	s->name = name;
	ret = ur_source_open(path, &s->src, err, sizeof(err));
	if (ret < 0)
		error_msg("%s", err);
	return ret;
}

static int parse_block_size(const char *arg, uint32_t *out)
{
	uint64_t v;

	if (parse_size(arg, &v) < 0) {
		error_msg("--block-size: '%s' is not a size (try 64K)", arg);
		return -EINVAL;
	}
	if (!ur_is_pow2(v) || v < UR_MIN_BLOCK || v > UR_MAX_BLOCK) {
		error_msg("--block-size: %s is not a power of two from 4K to "
			  "4M",
			  arg);
		return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

static int parse_count(const char *opt, const char *arg, unsigned max,
		       unsigned *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(arg, &end, 10);
	if (errno || end == arg || *end || v < 1 || v > max) {
		error_msg("%s: '%s' is not a number from 1 to %u", opt, arg,
			  max);
		return -EINVAL;
	}
	*out = (unsigned)v;
	return 0;
}

/* Whether getopt_long's '?' was for a known option lacking its value. */
static bool needs_value(const struct option *opts, int opt)
{
	for (; opts->name; opts++)
		if (opts->val == opt && opts->has_arg == required_argument)
			return true;
	return false;
}

/* Fill V's options from the command line.  Returns -1 to go on, else the
 * exit status (after --help or an error line). */
static int parse_opts(struct verify *v, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "map", required_argument, NULL, 'm' },
		{ "block-size", required_argument, NULL, 'b' },
		{ "hash", required_argument, NULL, 'H' },
		{ "queue-depth", required_argument, NULL, 'q' },
		{ "threads", required_argument, NULL, 't' },
		{ "direct", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	v->cfg.block_size = UR_DEFAULT_BLOCK;
	v->cfg.hash = UR_HASH_XXH3_128;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			v->json = true;
			break;
		case 'm':
			v->map_path = optarg;
			break;
		case 'b':
			if (parse_block_size(optarg, &v->cfg.block_size) < 0)
				return EXIT_ERROR;
			break;
		case 'H':
			if (ur_hash_parse(optarg, &v->cfg.hash) < 0) {
				error_msg("--hash: '%s' is not a known hash "
					  "(xxh3 or sha256)",
					  optarg);
				return EXIT_ERROR;
			}
			break;
		case 'q':
			if (parse_count("--queue-depth", optarg, 1024,
					&v->cfg.queue_depth) < 0)
				return EXIT_ERROR;
			break;
		case 't':
			if (parse_count("--threads", optarg, 64,
					&v->cfg.threads) < 0)
				return EXIT_ERROR;
			break;
		case 'd':
			v->cfg.direct = true;
			break;
		case 'h':
			printf("usage: %s\n\n%s", verify_usage, verify_help);
			return EXIT_OK;
		default:
			if (needs_value(opts, optopt))
				error_msg("verify: option '%s' needs a value; "
					  "see 'hvresync verify --help'",
					  argv[optind - 1]);
			else
				error_msg("verify: unknown option '%s'; see "
					  "'hvresync verify --help'",
					  argv[optind - 1]);
			return EXIT_ERROR;
		}
	}
	if (argc - optind != 2)
		usage_die(verify_usage);
	v->path[0] = argv[optind];
	v->path[1] = argv[optind + 1];
	v->bs = v->cfg.block_size;
	v->cfg.window = 0;
	return -1;
}

/* Open both disks, which must have the same geometry. */
static int open_sides(struct verify *v)
{
	if (open_side(&v->s[0], "A", v->path[0]) < 0 ||
	    open_side(&v->s[1], "B", v->path[1]) < 0)
		return -1;
	if (v->s[0].src->size != v->s[1].src->size ||
	    v->s[0].src->sector_size != v->s[1].src->sector_size) {
		error_msg("%s and %s differ in geometry: A has virtual size "
			  "%" PRIu64 " and logical sector size %u, B has "
			  "virtual size %" PRIu64 " and logical sector size %u",
			  v->s[0].src->path, v->s[1].src->path,
			  v->s[0].src->size, v->s[0].src->sector_size,
			  v->s[1].src->size, v->s[1].src->sector_size);
		return -1;
	}
	v->size = v->s[0].src->size;
	return 0;
}

/* The reader with both disks, not started yet. */
static int new_engine(struct verify *v)
{
	struct ur_source *src[2] = { v->s[0].src, v->s[1].src };
	char err[1024];
	int i, ret;

	/* views are read as push reads them */
	ur_config_views(&v->cfg, src, 2);
	ret = ur_engine_new(&v->cfg, &v->e, err, sizeof(err));
	if (ret < 0) {
		error_msg("verify: %s", err);
		return -1;
	}
	for (i = 0; i < 2; i++) {
		ret = ur_engine_add(v->e, v->s[i].src, &v->s[i].st);
		if (ret < 0) {
			error_msg("verify: %s: %s", v->s[i].src->path,
				  strerror(-ret));
			return -1;
		}
	}
	return 0;
}

static void json_begin(struct verify *v)
{
	json_init(&v->w, stdout, 2);
	json_object_begin(&v->w);
	json_side(&v->w, "a", &v->s[0]);
	json_side(&v->w, "b", &v->s[1]);
	json_kv_u64(&v->w, "virtual_size", v->size);
	json_kv_u64(&v->w, "block_size", v->bs);
	json_kv_string(&v->w, "hash", ur_hash_name(v->cfg.hash));
	json_key(&v->w, "extents");
	json_array_begin(&v->w);
}

/* compare() failed with RET: say why, and close the JSON document with
 * what was found so far (the exit status still says 2). */
static void report_failure(struct verify *v, int ret)
{
	/* The reader's message names the file and offset. */
	const char *why = ur_engine_error(v->e);

	if (!*why)
		why = ret == -EPROTO ? "internal error: the two "
				       "disks' blocks came out of step"
				     : strerror(-ret);
	error_msg("%s", why);
	if (v->json) {
		json_array_end(&v->w);
		json_kv_string(&v->w, "error", why);
		json_object_end(&v->w);
		json_end(&v->w);
		fflush(stdout);
	}
}

/* --map: draw the picture, named after both disks. */
static int write_map(struct verify *v)
{
	struct svgmap_panel p = { .size = v->size, .map = &v->map };
	char name[1024], title[1200], err[1200];

	fmt_line(name, sizeof(name), "%s vs %s", v->path[0], v->path[1]);
	p.name = name;
	fmt_line(title, sizeof(title), "hvresync verify: %s",
		 v->different ? "the disks differ" : "the disks are identical");
	if (svgmap_write(v->map_path, title, &p, 1, err, sizeof(err)) < 0) {
		error_msg("%s", err);
		return -1;
	}
	return 0;
}

/* Compare and report; the exit status. */
static int run(struct verify *v)
{
	double start;
	int ret;

	if (new_engine(v) < 0)
		return EXIT_ERROR;
	start = mono_seconds();
	ret = ur_engine_start(v->e);
	if (ret < 0) {
		error_msg("verify: %s", ur_engine_error(v->e));
		return EXIT_ERROR;
	}
	if (v->json)
		json_begin(v);
	progress_init(&v->bar, "verify", v->size);
	ret = compare(v);
	progress_finish(&v->bar);
	if (ret < 0) {
		report_failure(v, ret);
		return EXIT_ERROR;
	}
	v->seconds = mono_seconds() - start;
	ur_stream_stats(v->s[0].st, &v->s[0].stats);
	ur_stream_stats(v->s[1].st, &v->s[1].stats);
	if (v->json)
		json_array_end(&v->w);
	print_summary(v);
	/* after the summary, which stays whole even if the map fails */
	if (v->map_path && write_map(v) < 0)
		return EXIT_ERROR;
	if (v->json && json_end(&v->w) < 0) {
		error_msg("verify: cannot write the JSON output");
		return EXIT_ERROR;
	}
	if (fflush(stdout) == EOF || ferror(stdout)) {
		error_msg("verify: cannot write to stdout: %s",
			  strerror(errno));
		return EXIT_ERROR;
	}
	return v->different ? EXIT_DIFFER : EXIT_OK;
}

int cmd_verify(int argc, char **argv)
{
	struct verify v;
	int rc;

	memset(&v, 0, sizeof(v));
	rc = parse_opts(&v, argc, argv);
	if (rc >= 0)
		return rc;
	/* a block per extent at the most: the picture's cells are coarser */
	svgmap_set_limit(&v.map, 4 * SVGMAP_MAX_CELLS);
	rc = open_sides(&v) < 0 ? EXIT_ERROR : run(&v);
	ur_engine_free(v.e);
	ur_source_close(v.s[0].src);
	ur_source_close(v.s[1].src);
	svgmap_free(&v.map);
	return rc;
}
