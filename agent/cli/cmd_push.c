/* SPDX-License-Identifier: MIT */
/*
 * cmd_push.c - `hvresync push`: bring a recovery disk exported by
 * `hvresync serve` (or the agent) in line with a local disk, sending only
 * the 4 KiB pieces that differ.  The work is push_disk() (agent/sync/push.c);
 * this file is options, a progress bar, Ctrl-C and the summary.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/cli/cli.h"
#include "agent/cli/progress.h"
#include "agent/lib/fmt.h"
#include "agent/lib/json.h"
#include "agent/sync/push.h"
#include "uring/blocks.h"

static const char push_usage[] =
	"hvresync push [--json] [--psk-file F | --cert C --key K --ca CA |\n"
	"                     --insecure] [--block-size N] [--hash H] "
	"[--compress]\n"
	"                     [--bwlimit RATE] [--restart] [--hold | --check]"
	"\n                     SRC HOST:PORT/NAME\n"
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
	"  --json            print one JSON object on stdout\n"
	"  --psk-file F      pre-shared key file (64 hex digits, mode 0600)\n"
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
	"\n\n"
	"Exit status: 0 when the recovery disk is now identical (or the\n"
	"requested step is done), 2 on any error.\n";

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

static const char *result_word(unsigned flags)
{
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

static void print_json(const struct push_params *p, const char *target,
		       const struct push_stats *st, int ret, const char *err)
{
	struct json_writer w;

	json_init(&w, stdout, 2);
	json_object_begin(&w);
	json_kv_string(&w, "source", p->src);
	json_kv_string(&w, "target", target);
	json_kv_string(&w, "export", p->export_name);
	json_kv_string(&w, "result", ret ? "error" : result_word(p->flags));
	if (ret)
		json_kv_string(&w, "error", err);
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
			  const struct push_stats *st)
{
	char a[32], b[32], c[32], d[32], e[32];

	if (p->flags & (PUSH_CHECK | PUSH_MERGE | PUSH_DISCARD)) {
		printf("%s: %s\n", target, result_word(p->flags));
		return;
	}
	fmt_size(a, sizeof(a), st->bytes_compared);
	fmt_size(b, sizeof(b), st->bytes_different);
	fmt_size(c, sizeof(c), st->bytes_sent);
	fmt_size(d, sizeof(d), st->bytes_zeroed);
	fmt_size(e, sizeof(e), st->wire_bytes);
	printf("%s -> %s: %s\n", p->src, target,
	       p->flags & PUSH_HOLD ? "copied, held unmerged"
				    : "identical now");
	if (st->resume_offset)
		printf("resumed at offset %" PRIu64 "\n", st->resume_offset);
	printf("compared %s; %s differed (in %" PRIu64 " block%s)\n", a, b,
	       st->blocks_different, st->blocks_different == 1 ? "" : "s");
	printf("sent %s of data and %s as zero instructions; %s on the wire\n",
	       c, d, e);
	printf("took %.2f s (the recovery side merged in %.0f s)\n",
	       st->seconds, st->merge_seconds);
}

/* The command line: push_disk()'s parameters and what sets up the rest. */
struct push_opts {
	struct push_params p;
	bool json;
	const char *psk, *cert, *key, *ca;
	bool insecure;
	const char *target; /* HOST:PORT/NAME */
};

/* --block-size, --bwlimit and --timeout; false after an error line. */
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
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->p.block_size = PUSH_DEFAULT_BLOCK;
	o->p.hash = UR_HASH_XXH3_128;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			o->json = true;
			break;
		case 'p':
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

/* Push and print what happened; the exit status. */
static int run(struct push_opts *o, struct tls_config *tls)
{
	struct push_params *p = &o->p;
	struct push_stats st;
	struct ui ui;
	char err[1024];
	int ret;

	memset(&ui, 0, sizeof(ui));
	p->tls = tls;
	p->stop = &stop_flag;
	p->progress = on_progress;
	p->ctx = &ui;
	install_handlers();

	ret = push_disk(p, &st, err, sizeof(err));
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
	if (o->json)
		print_json(p, o->target, &st, ret, err);
	else if (!ret)
		print_summary(p, o->target, &st);
	if (fflush(stdout) == EOF || ferror(stdout)) {
		error_msg("push: cannot write to stdout: %s", strerror(errno));
		return EXIT_ERROR;
	}
	return ret < 0 ? EXIT_ERROR : EXIT_OK;
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
	o.p.addr = addr;
	o.p.export_name = name;
	return run(&o, &tls);
}
