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

/* The command line of create: the image and how to make it. */
struct create_opts {
	struct vhdx_create_opts o;
	const char *image;
};

/* --sector-size or --physical-sector-size (C says which): 512 or 4096. */
static uint32_t parse_sector_size(int c, const char *arg)
{
	if (strcmp(arg, "512") && strcmp(arg, "4096"))
		die("--%s: must be 512 or 4096, not '%s'",
		    c == 's' ? "sector-size" : "physical-sector-size", arg);
	return (uint32_t)atoi(arg);
}

/* Fill C from the command line; exits after --help or a mistake. */
static void parse_create(struct create_opts *c, int argc, char **argv)
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
	struct vhdx_create_opts *o = &c->o;
	uint64_t v;
	int ch;

	memset(c, 0, sizeof(*c));
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case 'f':
			o->fixed = true;
			break;
		case 'b':
			if (parse_size(optarg, &v) || v > UINT32_MAX)
				die("--block-size: '%s' is not a size", optarg);
			o->block_size = (uint32_t)v;
			break;
		case 's':
			o->logical_sector_size = parse_sector_size(ch, optarg);
			break;
		case 'p':
			o->physical_sector_size = parse_sector_size(ch, optarg);
			break;
		case 'P':
			o->parent = optarg;
			break;
		case 'h':
			printf("usage: %s\n", create_usage);
			exit(EXIT_OK);
		default:
			usage_die(create_usage);
		}
	}
	if (o->parent) {
		if (argc - optind != 1)
			usage_die(create_usage);
		if (o->fixed || o->logical_sector_size)
			die("--parent: a child takes its size and sector size from its parent");
	} else {
		if (argc - optind != 2)
			usage_die(create_usage);
		if (parse_size(argv[optind + 1], &o->virtual_size))
			die("'%s' is not a size (bytes, or with K, M, G, T)",
			    argv[optind + 1]);
	}
	c->image = argv[optind];
}

int cmd_create(int argc, char **argv)
{
	struct create_opts c;
	struct vhdx_error err;

	parse_create(&c, argc, argv);
	if (vhdx_create(c.image, &c.o, &err))
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

static const char merge_usage[] =
	"hvresync merge [--ignore-parent-linkage] CHILD";

/* The command line of merge. */
struct merge_opts {
	unsigned flags; /* VHDX_OPEN_* */
	const char *child;
};

/* Fill O from the command line; exits after --help or a mistake. */
static void parse_merge(struct merge_opts *o, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "ignore-parent-linkage", no_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	int c;

	memset(o, 0, sizeof(*o));
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'i':
			o->flags |= VHDX_OPEN_IGNORE_LINKAGE;
			break;
		case 'h':
			printf("usage: %s\n", merge_usage);
			exit(EXIT_OK);
		default:
			usage_die(merge_usage);
		}
	}
	if (argc - optind != 1)
		usage_die(merge_usage);
	o->child = argv[optind];
}

int cmd_merge(int argc, char **argv)
{
	struct merge_opts o;
	struct vhdx_error err;
	int last = -1, ret;
	bool tty = isatty(STDERR_FILENO);

	parse_merge(&o, argc, argv);
	ret = vhdx_merge(o.child, o.flags, tty ? merge_progress : NULL, &last,
			 &err);
	if (tty && last >= 0)
		fputc('\n', stderr);
	if (ret)
		die("%s", err.msg);
	return EXIT_OK;
}
