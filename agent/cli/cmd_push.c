/* SPDX-License-Identifier: MIT */
/*
 * cmd_push.c - `hvresync push`: bring a recovery disk exported by
 * `hvresync serve` (or the agent) in line with a local disk, sending only
 * the 4 KiB pieces that differ.  The work is passes_push() (a snapshot or
 * watched passes, agent/sync/passes.c) over push_disk() (agent/sync/push.c);
 * this file is options, a progress bar, Ctrl-C and the summary.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/cli/cli.h"
#include "agent/cli/progress.h"
#include "agent/daemon/metrics.h"
#include "agent/lib/fmt.h"
#include "agent/lib/json.h"
#include "agent/lib/snapshot.h"
#include "agent/lib/svgmap.h"
#include "agent/sync/passes.h"
#include "agent/sync/push.h"
#include "uring/blocks.h"

/* The copy's result when the source changed during every pass. */
#define EXIT_SOURCE_CHANGED 3

static const char push_usage[] =
	"hvresync push [--json] [--verbose] [--psk-file F | --vm-psk-file F |\n"
	"                     --cert C --key K --ca CA | --insecure]\n"
	"                     [--block-size N] [--hash H]\n"
	"                     [--compress] [--bwlimit RATE] [--restart]\n"
	"                     [--hold | --check] [--snapshot auto|reflink|none]\n"
	"                     [--max-passes N] [--map FILE.svg]\n"
	"                     [--metrics-file FILE.prom] SRC "
	"HOST:PORT/NAME\n"
	"       hvresync push [security options] --merge | --discard "
	"HOST:PORT/NAME";

static const char push_help[] =
	"Make the recovery disk exported as NAME at HOST:PORT identical to\n"
	"SRC (a VHDX, raw image, block device or raw view from 'hvresync\n"
	"mount').  Both sides read their disk at once; only the 4 KiB pieces\n"
	"that differ cross the network.  A VHDX export is written through a\n"
	"differencing child and merged at the end, so an interrupted push\n"
	"leaves it unchanged; the next push resumes where it stopped.\n"
	"\n"
	"SRC may be in use (a running VM): the push reads one moment of it.\n"
	"On XFS (reflink=1) or btrfs it reads a reflink clone made at the\n"
	"start, next to SRC as .hvresync-snap.push-PID.NAME, removed at the\n"
	"end.  Elsewhere it reads SRC itself and watches it; when SRC was\n"
	"written during a pass, another pass sends what still differs.\n"
	"\n"
	"  --json            print one JSON object on stdout\n"
	"  --verbose         say how SRC was read (snapshot, passes)\n"
	"  --psk-file F      pre-shared key file (64 hex digits, mode 0600)\n"
	"  --vm-psk-file F   a VM's own key (the psk-file of its [vm] section\n"
	"                    on the recovery agent), offered under its key id\n"
	"  --cert C --key K --ca CA\n"
	"                    X.509 instead of a pre-shared key\n"
	"  --insecure        plain TCP, loopback addresses only (tests)\n"
	"  --block-size N    compare block: a power of two from 4K to 4M\n"
	"                    (default 64K)\n"
	"  --hash H          xxh3 (keyed XXH3-128, default) or sha256\n"
	"  --compress        zstd-compress the data sent\n"
	"  --bwlimit RATE    send at most RATE bytes/s (K, M, G suffixes)\n"
	"  --restart         drop a partial earlier push instead of resuming\n"
	"  --hold            copy but leave the result unmerged on the\n"
	"                    recovery side (for a later --merge)\n"
	"  --check           only check that the geometry matches\n"
	"  --merge           merge a held copy now\n"
	"  --discard         drop a held or partial copy\n"
	"  --timeout SECS    give up after SECS without an answer (default 60)"
	"\n"
	"  --snapshot MODE   auto (default): a reflink clone where the\n"
	"                    filesystem can make one, else the live file;\n"
	"                    reflink: a clone or fail; none: the live file\n"
	"  --max-passes N    passes over a live SRC that keeps changing, 1 to\n"
	"                    100 (default 3)\n"
	"  --map FILE.svg    draw SRC as an SVG picture: what was zero on both\n"
	"                    sides, identical, or sent\n"
	"\n"
	"Exit status: 0 when the recovery disk is now identical (or the\n"
	"requested step is done), 2 on any error, 3 when SRC changed during\n"
	"every pass (the recovery disk is then a mixture of moments).\n";

static volatile int stop_flag;

static void on_signal(int sig)
{
	int e = errno;

	(void)sig;
	/* Lock-free atomics are async-signal-safe; push_disk()'s threads
	 * read the flag with atomic loads. */
	__atomic_store_n(&stop_flag, 1, __ATOMIC_RELAXED);
	errno = e;
}

struct ui {
	struct progress bar;
	bool started;
};

/* A line from passes_push(): another pass, an unwatched source. */
static void on_note(void *ctx, const char *line)
{
	struct ui *ui = ctx;

	if (ui->started) {
		/* The next pass draws its own bar from 0. */
		progress_finish(&ui->bar);
		ui->started = false;
	}
	note_msg("%s", line);
}

static void on_progress(void *ctx, const struct push_stats *st)
{
	struct ui *ui = ctx;

	if (!ui->started) {
		progress_init(&ui->bar, "push", st->virtual_size);
		ui->started = true;
	}
	progress_update(&ui->bar, st->position);
}

static void json_kv_seconds(struct json_writer *w, const char *key, double s)
{
	json_key(w, key);
	json_double(w, s, 3);
}

static const char *result_word(unsigned flags, const struct passes_result *r)
{
	if (r->source_changed)
		return "source-changed";
	if (flags & PUSH_CHECK)
		return "checked";
	if (flags & PUSH_MERGE)
		return "merged";
	if (flags & PUSH_DISCARD)
		return "discarded";
	if (flags & PUSH_HOLD)
		return "held";
	return "identical";
}

/* ISO-8601 UTC of wall-clock @usec: "2026-01-31T18:30:00.123Z". */
static void iso_time(char *out, size_t len, int64_t usec)
{
	time_t t = (time_t)(usec / 1000000);
	struct tm tm;
	char day[32];

	gmtime_r(&t, &tm);
	strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, len, "%s.%03dZ", day, (int)(usec % 1000000 / 1000));
}

static void print_json(const struct push_params *p, const char *target,
		       const struct passes_result *r, int ret, const char *err)
{
	const struct push_stats *st = &r->st;
	struct json_writer w;
	char when[48];

	json_init(&w, stdout, 2);
	json_object_begin(&w);
	json_kv_string(&w, "source", p->src);
	json_kv_string(&w, "target", target);
	json_kv_string(&w, "export", p->export_name);
	json_kv_string(&w, "result", ret ? "error" : result_word(p->flags, r));
	if (ret)
		json_kv_string(&w, "error", err);
	if (!ret && r->source_changed)
		json_kv_string(&w, "source_change", r->change);
	json_kv_string(&w, "snapshot", snap_mode_name(r->snapshot));
	if (r->snapshot_time) {
		iso_time(when, sizeof(when), r->snapshot_time);
		json_kv_string(&w, "snapshot_time", when);
	} else {
		json_kv_null(&w, "snapshot_time");
	}
	if (r->fallback[0])
		json_kv_string(&w, "snapshot_fallback", r->fallback);
	json_kv_bool(&w, "source_watched", r->watched);
	json_kv_u64(&w, "passes", r->passes);
	json_kv_u64(&w, "virtual_size", st->virtual_size);
	json_kv_u64(&w, "block_size", p->block_size);
	json_kv_u64(&w, "resume_offset", st->resume_offset);
	json_kv_u64(&w, "bytes_compared", st->bytes_compared);
	json_kv_u64(&w, "blocks_different", st->blocks_different);
	json_kv_u64(&w, "bytes_different", st->bytes_different);
	json_kv_u64(&w, "bytes_sent", st->bytes_sent);
	json_kv_u64(&w, "bytes_data", st->bytes_data);
	json_kv_u64(&w, "bytes_zeroed", st->bytes_zeroed);
	json_kv_u64(&w, "wire_bytes", st->wire_bytes);
	json_kv_u64(&w, "recovery_bytes_written", st->recovery_bytes_written);
	json_kv_seconds(&w, "merge_seconds", st->merge_seconds);
	json_kv_seconds(&w, "seconds", st->seconds);
	json_object_end(&w);
	if (json_end(&w) < 0)
		error_msg("push: cannot write the JSON output");
}

static void print_summary(const struct push_params *p, const char *target,
			  const struct passes_result *r)
{
	const struct push_stats *st = &r->st;
	char a[32], b[32], c[32], d[32], e[32], when[48], merge[64];

	if (p->flags & (PUSH_CHECK | PUSH_MERGE | PUSH_DISCARD)) {
		printf("%s: %s\n", target, result_word(p->flags, r));
		return;
	}
	fmt_size(a, sizeof(a), st->bytes_compared);
	fmt_size(b, sizeof(b), st->bytes_different);
	fmt_size(c, sizeof(c), st->bytes_sent);
	fmt_size(d, sizeof(d), st->bytes_zeroed);
	fmt_size(e, sizeof(e), st->wire_bytes);
	printf("%s -> %s: %s\n", p->src, target,
	       r->source_changed      ? "copied, but the source changed "
					"during every pass"
	       : p->flags & PUSH_HOLD ? "copied, held unmerged"
				      : "identical now");
	if (r->snapshot_time) {
		iso_time(when, sizeof(when), r->snapshot_time);
		printf("read a reflink snapshot taken at %s\n", when);
	}
	if (r->passes > 1)
		printf("%u passes: the source changed while it was read "
		       "(figures below add them up)\n",
		       r->passes);
	if (st->resume_offset)
		printf("resumed at offset %" PRIu64 "\n", st->resume_offset);
	printf("compared %s; %s differed (in %" PRIu64 " block%s)\n", a, b,
	       st->blocks_different, st->blocks_different == 1 ? "" : "s");
	printf("sent %s of data and %s as zero instructions; %s on the wire\n",
	       c, d, e);
	/* FINISHED carries whole seconds of merging */
	if (p->flags & PUSH_HOLD)
		snprintf(merge, sizeof(merge),
			 "the copy waits unmerged on the recovery side");
	else if (st->merge_seconds < 1)
		snprintf(merge, sizeof(merge),
			 "the recovery side merged in under 1 s");
	else
		snprintf(merge, sizeof(merge),
			 "the recovery side merged in %.0f s",
			 st->merge_seconds);
	printf("took %.2f s (%s)\n", st->seconds, merge);
}

/* The command line: push_disk()'s parameters and what sets up the rest. */
struct push_opts {
	struct push_params p;
	enum snap_mode snapshot;
	unsigned max_passes;
	bool json, verbose;
	const char *map_path;	  /* --map */
	const char *metrics_path; /* --metrics-file */
	bool vm_key;		  /* --vm-psk-file: o->psk is a VM's own key */
	const char *psk, *cert, *key, *ca;
	bool insecure;
	const char *target; /* HOST:PORT/NAME */
};

/* --block-size, --bwlimit, --max-passes and --timeout; false after an
 * error line. */
static bool parse_number(struct push_opts *o, int c, const char *arg)
{
	uint64_t v;

	switch (c) {
	case 'b':
		if (parse_size(arg, &v) < 0 || !ur_is_pow2(v) ||
		    v < PROTO_BLOCK_MIN || v > PROTO_BLOCK_MAX) {
			error_msg("--block-size: '%s' is not a power "
				  "of two from 4K to 4M",
				  arg);
			return false;
		}
		o->p.block_size = (uint32_t)v;
		return true;
	case 'l':
		if (parse_size(arg, &v) < 0 || v < 1024) {
			error_msg("--bwlimit: '%s' is not a rate of at "
				  "least 1K bytes per second",
				  arg);
			return false;
		}
		o->p.bwlimit = v;
		return true;
	case 'P':
		if (parse_size(arg, &v) < 0 || v < 1 || v > PASSES_MAX ||
		    strpbrk(arg, "KMGTkmgt")) {
			error_msg("--max-passes: '%s' is not a number from 1 "
				  "to %d",
				  arg, PASSES_MAX);
			return false;
		}
		o->max_passes = (unsigned)v;
		return true;
	default: /* 't' */
		if (parse_size(arg, &v) < 0 || v < 1 || v > 86400) {
			error_msg("--timeout: '%s' is not a number of "
				  "seconds from 1 to 86400",
				  arg);
			return false;
		}
		o->p.timeout_ms = (int)v * 1000;
		return true;
	}
}

/* The operands: SRC HOST:PORT/NAME, or HOST:PORT/NAME alone for --merge
 * and --discard. */
static void parse_operands(struct push_opts *o, int argc, char **argv)
{
	int npos = argc - optind;

	if (npos == 1 && (o->p.flags & (PUSH_MERGE | PUSH_DISCARD))) {
		o->target = argv[optind];
	} else if (npos == 2) {
		o->p.src = argv[optind];
		o->target = argv[optind + 1];
	} else {
		usage_die(push_usage);
	}
}

/* Fill O from the command line.  Returns -1 to go on, else the exit
 * status (after --help or an error line). */
static int parse_opts(struct push_opts *o, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "psk-file", required_argument, NULL, 'p' },
		{ "cert", required_argument, NULL, 'C' },
		{ "key", required_argument, NULL, 'K' },
		{ "ca", required_argument, NULL, 'A' },
		{ "insecure", no_argument, NULL, 'I' },
		{ "block-size", required_argument, NULL, 'b' },
		{ "hash", required_argument, NULL, 'H' },
		{ "compress", no_argument, NULL, 'z' },
		{ "bwlimit", required_argument, NULL, 'l' },
		{ "restart", no_argument, NULL, 'r' },
		{ "hold", no_argument, NULL, 'o' },
		{ "check", no_argument, NULL, 'c' },
		{ "merge", no_argument, NULL, 'm' },
		{ "discard", no_argument, NULL, 'd' },
		{ "timeout", required_argument, NULL, 't' },
		{ "snapshot", required_argument, NULL, 's' },
		{ "max-passes", required_argument, NULL, 'P' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "map", required_argument, NULL, 'M' },
		{ "vm-psk-file", required_argument, NULL, 'V' },
		{ "metrics-file", required_argument, NULL, 'E' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->p.block_size = PUSH_DEFAULT_BLOCK;
	o->p.hash = UR_HASH_XXH3_128;
	o->snapshot = SNAP_AUTO;
	o->max_passes = PASSES_DEFAULT;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			o->json = true;
			break;
		case 'p':
			if (o->vm_key) {
				error_msg(
					"--vm-psk-file and --psk-file: give one "
					"key");
				return EXIT_ERROR;
			}
			o->psk = optarg;
			break;
		case 'C':
			o->cert = optarg;
			break;
		case 'K':
			o->key = optarg;
			break;
		case 'A':
			o->ca = optarg;
			break;
		case 'I':
			o->insecure = true;
			break;
		case 'b':
		case 'l':
		case 'P':
		case 't':
			if (!parse_number(o, c, optarg))
				return EXIT_ERROR;
			break;
		case 'H':
			if (ur_hash_parse(optarg, &o->p.hash) < 0) {
				error_msg("--hash: '%s' is not a known hash "
					  "(xxh3 or sha256)",
					  optarg);
				return EXIT_ERROR;
			}
			break;
		case 'z':
			o->p.compress = true;
			break;
		case 's':
			if (snap_mode_parse(optarg, &o->snapshot) < 0) {
				error_msg("--snapshot: '%s' is not auto, "
					  "reflink or none",
					  optarg);
				return EXIT_ERROR;
			}
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'M':
			o->map_path = optarg;
			break;
		case 'V':
			if (o->psk && !o->vm_key) {
				error_msg(
					"--vm-psk-file and --psk-file: give one "
					"key");
				return EXIT_ERROR;
			}
			o->psk = optarg;
			o->vm_key = true;
			break;
		case 'E':
			o->metrics_path = optarg;
			break;
		case 'r':
			o->p.flags |= PUSH_RESTART;
			break;
		case 'o':
			o->p.flags |= PUSH_HOLD;
			break;
		case 'c':
			o->p.flags |= PUSH_CHECK;
			break;
		case 'm':
			o->p.flags |= PUSH_MERGE;
			break;
		case 'd':
			o->p.flags |= PUSH_DISCARD;
			break;
		case 'h':
			printf("usage: %s\n\n%s", push_usage, push_help);
			return EXIT_OK;
		default:
			if (optopt)
				error_msg("push: option '%s' needs a value or "
					  "is unknown; see 'hvresync push "
					  "--help'",
					  argv[optind - 1]);
			else
				error_msg("push: unknown option '%s'; see "
					  "'hvresync push --help'",
					  argv[optind - 1]);
			return EXIT_ERROR;
		}
	}
	parse_operands(o, argc, argv);
	if (o->map_path &&
	    (o->p.flags & (PUSH_CHECK | PUSH_MERGE | PUSH_DISCARD))) {
		error_msg("push: --map draws what a copy compared: it goes "
			  "with neither --check, --merge nor --discard");
		return EXIT_ERROR;
	}
	return -1;
}

static void install_handlers(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* Remove clones that killed pushes left next to SRC; say so if any. */
static void sweep_stale(const struct push_opts *o)
{
	unsigned removed = 0;
	int ret;

	if (!o->p.src ||
	    (o->p.flags & (PUSH_CHECK | PUSH_MERGE | PUSH_DISCARD)))
		return;
	ret = passes_sweep_stale(o->p.src, &removed);
	if (removed)
		note_msg("%s: removed %u snapshot clone%s left by a push that "
			 "no longer runs",
			 o->p.src, removed, removed == 1 ? "" : "s");
	else if (ret < 0 && ret != -ENOENT && o->verbose)
		note_msg("%s: cannot look for stale snapshot clones in its "
			 "folder: %s",
			 o->p.src, strerror(-ret));
}

/* --verbose: how SRC was read. */
static void say_how(const struct push_opts *o, const struct passes_result *r)
{
	if (!o->verbose || !o->p.src ||
	    (o->p.flags & (PUSH_CHECK | PUSH_MERGE | PUSH_DISCARD)))
		return;
	if (r->snapshot == SNAP_REFLINK)
		note_msg("%s: read from a reflink snapshot, in one pass",
			 o->p.src);
	else
		note_msg("%s: read live (snapshot none%s%s), %u pass%s%s",
			 o->p.src, r->fallback[0] ? ": " : "", r->fallback,
			 r->passes, r->passes == 1 ? "" : "es",
			 r->watched ? "" : ", not watched");
}

/* --map: the picture of SRC, what every pass compared and sent.  After
 * a failure it shows what was compared before it (the rest as not
 * compared); nothing when the session never learnt the disk's size. */
static int write_map(const struct push_opts *o, const struct svgmap *map,
		     const struct passes_result *r, int ret)
{
	struct svgmap_panel p = { .name = o->p.src,
				  .size = r->st.virtual_size,
				  .map = map,
				  .sent = true };
	char title[1200], err[1200];

	if (!p.size)
		return 0;
	fmt_line(title, sizeof(title), "hvresync push to %s: %s", o->target,
		 ret < 0 ? "failed" : "done");
	if (svgmap_write(o->map_path, title, &p, 1, err, sizeof(err)) < 0) {
		error_msg("push: %s", err);
		return -1;
	}
	return 0;
}

/* --metrics-file: the push's outcome for node_exporter.  A file that
 * cannot be written is said, but the push's own exit status stands. */
static void write_metrics(const struct push_opts *o,
			  const struct passes_result *r, int ret, int status,
			  int64_t t0)
{
	struct metrics_result m = {
		.command = "push",
		.disk = o->p.export_name,
		.peer = o->p.addr,
		.ok = ret == 0 && status == EXIT_OK,
		.exit_code = status,
		.started = t0,
		.finished = wall_us(),
		.compared = r->st.bytes_compared,
		.different = r->st.bytes_different,
		.sent = r->st.bytes_sent,
	};
	char err[1024];

	if (metrics_write_result(o->metrics_path, &m, err, sizeof(err)))
		error_msg("--metrics-file: %s", err);
}

/* Push and print what happened; the exit status. */
static int run(struct push_opts *o, struct tls_config *tls)
{
	struct passes_params pp;
	struct passes_result r;
	struct svgmap map;
	struct ui ui;
	char err[1024], owner[32];
	int ret, map_ret = 0, status;
	int64_t t0;

	memset(&ui, 0, sizeof(ui));
	memset(&pp, 0, sizeof(pp));
	memset(&map, 0, sizeof(map));
	if (o->map_path)
		o->p.map = &map;
	snprintf(owner, sizeof(owner), "push-%ld", (long)getpid());
	o->p.tls = tls;
	o->p.stop = &stop_flag;
	o->p.progress = on_progress;
	o->p.ctx = &ui;
	pp.push = o->p;
	pp.snapshot = o->snapshot;
	pp.max_passes = o->max_passes;
	pp.owner = owner;
	pp.note = on_note;
	pp.note_ctx = &ui;
	install_handlers();
	sweep_stale(o);

	t0 = wall_us();
	ret = passes_push(&pp, &r, err, sizeof(err));
	if (ui.started)
		progress_finish(&ui.bar);
	memset(tls, 0, sizeof(*tls));
	if (ret < 0) {
		if (ret == -ECANCELED)
			error_msg("push: %s: cancelled (the recovery side "
				  "keeps what it received for the next push)",
				  o->target);
		else
			error_msg("push: %s", err);
	}
	say_how(o, &r);
	if (!ret && r.source_changed)
		error_msg("%s changed during every one of the %u passes (%s): "
			  "the recovery disk is a mixture of moments, not "
			  "identical to any state of %s; read a snapshot "
			  "(--snapshot reflink on XFS or btrfs, or an LVM "
			  "snapshot) or stop the writer",
			  o->p.src, r.passes, r.change, o->p.src);
	if (o->json)
		print_json(&o->p, o->target, &r, ret, err);
	else if (!ret)
		print_summary(&o->p, o->target, &r);
	if (o->map_path)
		map_ret = write_map(o, &map, &r, ret);
	svgmap_free(&map);
	if (fflush(stdout) == EOF || ferror(stdout)) {
		error_msg("push: cannot write to stdout: %s", strerror(errno));
		return EXIT_ERROR;
	}
	if (ret < 0 || map_ret < 0)
		status = EXIT_ERROR;
	else
		status = r.source_changed ? EXIT_SOURCE_CHANGED : EXIT_OK;
	if (o->metrics_path)
		write_metrics(o, &r, ret, status, t0);
	return status;
}

int cmd_push(int argc, char **argv)
{
	char addr[300], name[PROTO_NAME_MAX + 1], err[1024];
	struct push_opts o;
	struct tls_config tls;
	int ret;

	ret = parse_opts(&o, argc, argv);
	if (ret >= 0)
		return ret;
	if (push_parse_target(o.target, addr, sizeof(addr), name, sizeof(name),
			      err, sizeof(err)) < 0) {
		error_msg("%s", err);
		return EXIT_ERROR;
	}
	if (push_security_config(&tls, o.psk, o.cert, o.key, o.ca, o.insecure,
				 err, sizeof(err)) < 0) {
		error_msg("%s", err);
		return EXIT_ERROR;
	}
	tls.psk_by_id = o.vm_key;
	o.p.addr = addr;
	o.p.export_name = name;
	return run(&o, &tls);
}
