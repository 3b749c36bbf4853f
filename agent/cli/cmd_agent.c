/* SPDX-License-Identifier: MIT */
/* cmd_agent.c - `hvresync agent`: options, then the daemon (agent_run()). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/cli/cli.h"
#include "agent/daemon/agent.h"
#include "agent/daemon/config.h"
#include "agent/daemon/job.h"

#define AGENT_USAGE \
	"hvresync agent [--config FILE] [-f] [--bwlimit RATE] [--job-retention SECONDS]"

static void agent_usage(FILE *f)
{
	fprintf(f,
		"usage: %s\n\n"
		"Run the hvresync agent: serve this host's replica disks to peers and\n"
		"answer the control API (resync, job, vm) on its UNIX socket.\n\n"
		"  --config FILE         configuration (default %s)\n"
		"  -f, --foreground      stay in the foreground, log to stderr\n"
		"                        (journald's <N> priority prefixes)\n"
		"  --bwlimit RATE        limit each send to RATE bytes/s (K, M, G suffixes)\n"
		"  --job-retention SECS  how long finished jobs stay visible (default 300)\n",
		AGENT_USAGE, HVRESYNC_DEFAULT_CONFIG);
}

/* Fills @o from argv; returns -1 to go on, else the exit code. */
static int parse_options(int argc, char **argv, struct agent_options *o)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "bwlimit", required_argument, NULL, 'b' },
		{ "job-retention", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	long secs = JOB_DEFAULT_RETENTION_SEC;
	char *end;
	int c;

	memset(o, 0, sizeof(*o));
	o->config = HVRESYNC_DEFAULT_CONFIG;
	optind = 1;
	while ((c = getopt_long(argc, argv, "c:fh", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			o->config = optarg;
			break;
		case 'f':
			o->foreground = true;
			break;
		case 'b':
			if (parse_size(optarg, &o->bwlimit))
				die("--bwlimit: '%s' is not a rate in bytes per second",
				    optarg);
			break;
		case 'r':
			secs = strtol(optarg, &end, 10);
			if (*end || end == optarg || secs < 0 ||
			    secs > 86400 * 7)
				die("--job-retention: '%s' is not a number of seconds (0-604800)",
				    optarg);
			break;
		case 'h':
			agent_usage(stdout);
			return EXIT_OK;
		default:
			usage_die(AGENT_USAGE);
		}
	}
	if (optind != argc)
		usage_die(AGENT_USAGE);
	o->retention_us = (int64_t)secs * 1000000;
	return -1;
}

int cmd_agent(int argc, char **argv)
{
	struct agent_options o;
	char err[1024];
	int rc;

	rc = parse_options(argc, argv, &o);
	if (rc >= 0)
		return rc;
	if (agent_run(&o, err, sizeof(err))) {
		error_msg("%s", err);
		return EXIT_ERROR;
	}
	return EXIT_OK;
}
