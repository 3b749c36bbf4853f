/* SPDX-License-Identifier: MIT */
/* cmd_create.c - `hvresync create` and `hvresync merge`. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/cli/cli.h"
#include "vhdx/vhdx.h"

static const char create_usage[] =
	"hvresync create [--fixed] [--block-size N] [--sector-size 512|4096]\n"
	"                       [--physical-sector-size 512|4096] IMAGE SIZE\n"
	"       hvresync create --parent PARENT [--block-size N] IMAGE";

int cmd_create(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "fixed", no_argument, NULL, 'f' },
		{ "block-size", required_argument, NULL, 'b' },
		{ "sector-size", required_argument, NULL, 's' },
		{ "physical-sector-size", required_argument, NULL, 'p' },
		{ "parent", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct vhdx_create_opts o = { 0 };
	struct vhdx_error err;
	uint64_t v;
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			o.fixed = true;
			break;
		case 'b':
			if (parse_size(optarg, &v) || v > UINT32_MAX)
				die("--block-size: '%s' is not a size", optarg);
			o.block_size = (uint32_t)v;
			break;
		case 's':
		case 'p':
			if (strcmp(optarg, "512") && strcmp(optarg, "4096"))
				die("--%s: must be 512 or 4096, not '%s'",
				    c == 's' ? "sector-size" : "physical-sector-size", optarg);
			if (c == 's')
				o.logical_sector_size = (uint32_t)atoi(optarg);
			else
				o.physical_sector_size = (uint32_t)atoi(optarg);
			break;
		case 'P':
			o.parent = optarg;
			break;
		case 'h':
			printf("usage: %s\n", create_usage);
			return EXIT_OK;
		default:
			usage_die(create_usage);
		}
	}
	if (o.parent) {
		if (argc - optind != 1)
			usage_die(create_usage);
		if (o.fixed || o.logical_sector_size)
			die("--parent: a child takes its size and sector size from its parent");
	} else {
		if (argc - optind != 2)
			usage_die(create_usage);
		if (parse_size(argv[optind + 1], &o.virtual_size))
			die("'%s' is not a size (bytes, or with K, M, G, T)", argv[optind + 1]);
	}
	if (vhdx_create(argv[optind], &o, &err))
		die("%s", err.msg);
	return EXIT_OK;
}

static void merge_progress(void *ctx, uint64_t done, uint64_t total)
{
	int *last = ctx, pct = total ? (int)(done * 100 / total) : 100;

	if (pct != *last) {
		fprintf(stderr, "\rmerging: %3d%%", pct);
		*last = pct;
	}
}

static const char merge_usage[] = "hvresync merge [--ignore-parent-linkage] CHILD";

int cmd_merge(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "ignore-parent-linkage", no_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct vhdx_error err;
	unsigned flags = 0;
	int c, last = -1, ret;
	bool tty = isatty(STDERR_FILENO);

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'i':
			flags |= VHDX_OPEN_IGNORE_LINKAGE;
			break;
		case 'h':
			printf("usage: %s\n", merge_usage);
			return EXIT_OK;
		default:
			usage_die(merge_usage);
		}
	}
	if (argc - optind != 1)
		usage_die(merge_usage);
	ret = vhdx_merge(argv[optind], flags, tty ? merge_progress : NULL, &last, &err);
	if (tty && last >= 0)
		fputc('\n', stderr);
	if (ret)
		die("%s", err.msg);
	return EXIT_OK;
}
