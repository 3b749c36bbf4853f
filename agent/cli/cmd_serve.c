/* SPDX-License-Identifier: MIT */
/*
 * cmd_serve.c - `hvresync serve`: the recovery side of `hvresync push`
 * as a foreground server.  The work is the server library
 * (agent/sync/serve.c); this file is options and signals.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/cli/cli.h"
#include "agent/sync/push.h"
#include "agent/sync/serve.h"

static const char serve_usage[] =
	"hvresync serve [--listen ADDR:PORT] --export NAME=PATH ...\n"
	"                      [--psk-file F | --cert C --key K --ca CA | "
	"--insecure]\n"
	"                      [--state-dir DIR] [--window N] "
	"[--max-sessions N]";

static const char serve_help[] =
	"Serve recovery disks to 'hvresync push'.  Each --export names a\n"
	"disk (a VHDX, raw image or block device); clients ask for it by\n"
	"that name only.  A VHDX export receives data in a differencing\n"
	"child next to it (IMAGE.hvresync.avhdx), merged when a push\n"
	"completes, so a cancelled or failed push leaves it unchanged and\n"
	"the next one resumes.  Raw exports are written in place.\n"
	"\n"
	"  --listen ADDR:PORT  where to listen (default 0.0.0.0:7433)\n"
	"  --export NAME=PATH  a disk to serve (any number; NAME may hold\n"
	"                      ':' but not '/' or '=')\n"
	"  --psk-file F        pre-shared key file (64 hex digits, mode 0600)\n"
	"  --cert C --key K --ca CA\n"
	"                      X.509 instead of a pre-shared key\n"
	"  --insecure          plain TCP, loopback addresses only (tests)\n"
	"  --state-dir DIR     where progress is recorded for resume\n"
	"                      (default " SERVER_DEFAULT_STATE_DIR ")\n"
	"  --window N          flow-control window in bytes (default 256M)\n"
	"  --max-sessions N    authenticated sessions at once (default 16;\n"
	"                      one more is told \"busy\"); connections still\n"
	"                      in the TLS handshake have 10 s, at most 4 x N\n"
	"                      of them (at least 16), 8 idle ones per address\n"
	"\n"
	"Runs until SIGINT or SIGTERM; sessions in progress are stopped and\n"
	"keep their progress.  Exit status: 0 after a signal, 2 on error.\n";

static struct server *the_server;

static void on_signal(int sig)
{
	int e = errno;

	(void)sig;
	if (the_server)
		server_stop(the_server);
	errno = e;
}

/* The command line. */
struct serve_opts {
	struct server_config cfg;
	const char *psk, *cert, *key, *ca;
	bool insecure;
	char **exports; /* NAME=PATH, NEXP of them */
	int nexp;
};

/* --window and --max-sessions; false after an error line. */
static bool parse_number(struct serve_opts *o, int c, const char *arg)
{
	uint64_t v;

	if (c == 'w') {
		if (parse_size(arg, &v) < 0 || v < 4096 || v > (256u << 20)) {
			error_msg("--window: '%s' is not a size from "
				  "4K to 256M",
				  arg);
			return false;
		}
		o->cfg.window_bytes = v;
		return true;
	}
	if (parse_size(arg, &v) < 0 || v < 1 || v > 1024) {
		error_msg("--max-sessions: '%s' is not a number "
			  "from 1 to 1024",
			  arg);
		return false;
	}
	o->cfg.max_sessions = (unsigned)v;
	return true;
}

/* Fill O from the command line.  Returns -1 to go on, else the exit
 * status (after --help or an error line). */
static int parse_opts(struct serve_opts *o, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "export", required_argument, NULL, 'e' },
		{ "psk-file", required_argument, NULL, 'p' },
		{ "cert", required_argument, NULL, 'C' },
		{ "key", required_argument, NULL, 'K' },
		{ "ca", required_argument, NULL, 'A' },
		{ "insecure", no_argument, NULL, 'I' },
		{ "state-dir", required_argument, NULL, 's' },
		{ "window", required_argument, NULL, 'w' },
		{ "max-sessions", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			o->cfg.listen = optarg;
			break;
		case 'e':
			o->exports[o->nexp++] = optarg;
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
		case 's':
			o->cfg.state_dir = optarg;
			break;
		case 'w':
		case 'n':
			if (!parse_number(o, c, optarg))
				return EXIT_ERROR;
			break;
		case 'h':
			printf("usage: %s\n\n%s", serve_usage, serve_help);
			return EXIT_OK;
		default:
			if (optopt)
				error_msg("serve: option '%s' needs a value or "
					  "is unknown; see 'hvresync serve "
					  "--help'",
					  argv[optind - 1]);
			else
				error_msg("serve: unknown option '%s'; see "
					  "'hvresync serve --help'",
					  argv[optind - 1]);
			return EXIT_ERROR;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "usage: %s\n", serve_usage);
		return EXIT_ERROR;
	}
	if (!o->nexp) {
		error_msg("serve: no disks to serve: give --export NAME=PATH");
		return EXIT_ERROR;
	}
	return -1;
}

/* Each --export NAME=PATH; 0 or -1 after an error line. */
static int add_exports(struct server *srv, const struct serve_opts *o)
{
	char err[1024];
	int i, ret;

	for (i = 0; i < o->nexp; i++) {
		char *eq = strchr(o->exports[i], '=');

		if (!eq || eq == o->exports[i] || !eq[1]) {
			error_msg("--export: '%s' is not NAME=PATH",
				  o->exports[i]);
			return -1;
		}
		*eq = '\0';
		ret = server_add_export(srv, o->exports[i], eq + 1, err,
					sizeof(err));
		*eq = '=';
		if (ret < 0) {
			error_msg("--export: %s", err);
			return -1;
		}
	}
	return 0;
}

/* Serve until a signal; the exit status. */
static int run(struct server *srv)
{
	struct sigaction sa;
	char err[1024];
	int ret;

	if (server_listen(srv, err, sizeof(err)) < 0) {
		error_msg("%s", err);
		return EXIT_ERROR;
	}
	the_server = srv;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	ret = server_run(srv);
	the_server = NULL;
	return ret < 0 ? EXIT_ERROR : EXIT_OK;
}

int cmd_serve(int argc, char **argv)
{
	struct serve_opts o;
	struct server *srv;
	char err[1024];
	int rc;

	memset(&o, 0, sizeof(o));
	o.exports = calloc((size_t)argc + 1, sizeof(*o.exports));
	if (!o.exports)
		die("out of memory");
	rc = parse_opts(&o, argc, argv);
	if (rc >= 0)
		goto out;
	rc = EXIT_ERROR;
	if (push_security_config(&o.cfg.tls, o.psk, o.cert, o.key, o.ca,
				 o.insecure, err, sizeof(err)) < 0) {
		error_msg("%s", err);
		goto out;
	}
	srv = server_new(&o.cfg, err, sizeof(err));
	memset(o.cfg.tls.psk, 0, sizeof(o.cfg.tls.psk));
	if (!srv) {
		error_msg("%s", err);
		goto out;
	}
	if (add_exports(srv, &o) == 0)
		rc = run(srv);
	server_free(srv);
out:
	free(o.exports);
	return rc;
}
