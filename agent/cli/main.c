/* SPDX-License-Identifier: MIT */
/* main.c - hvresync's command dispatcher. */
#include <stdio.h>
#include <string.h>

#include "agent/cli/cli.h"

#ifndef HVRESYNC_VERSION
#define HVRESYNC_VERSION "0.1.0"
#endif

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
};

static const struct command commands[] = {
	{ "inspect", cmd_inspect,
	  "show a VHDX's structures, partitions and filesystems" },
	{ "mount", cmd_mount,
	  "show VHDX images as flat raw files through FUSE" },
	{ "umount", cmd_umount, "end a raw view started by 'hvresync mount'" },
	{ "create", cmd_create,
	  "create a fixed, dynamic or differencing VHDX" },
	{ "merge", cmd_merge, "merge a differencing VHDX into its parent" },
	{ "dm-table", cmd_dm_table,
	  "print a dmsetup table mapping a VHDX onto a loop device" },
	{ "map", cmd_map, "create a read-only /dev/mapper device for a VHDX" },
	{ "unmap", cmd_unmap, "remove a device made by 'hvresync map'" },
	{ "verify", cmd_verify,
	  "compare two disks block by block and report where they differ" },
	{ "serve", cmd_serve, "serve recovery disks to 'hvresync push' (TLS)" },
	{ "push", cmd_push,
	  "bring a recovery disk in line with a local disk over the network" },
	{ "keygen", cmd_keygen, "write a new pre-shared key file (mode 0600)" },
	{ "agent", cmd_agent,
	  "run the agent daemon: serve peers, jobs and the control API" },
	{ "resync", cmd_resync,
	  "resynchronize a VM through the agent (Hyper-V's Resynchronize)" },
	{ "job", cmd_job,
	  "list, show, cancel, suspend or resume the agent's jobs" },
	{ "vm", cmd_vm,
	  "list or show the agent's VMs and their replication state" },
	{ "status", cmd_status,
	  "one screen for the agent: VMs, last resyncs, running jobs" },
	{ "mount-and-resync", cmd_mount_resync,
	  "mount a VM's disks as views, resync from them, check, unmount" },
};

static void print_help(FILE *f)
{
	size_t i;

	fprintf(f, "usage: hvresync <command> [options] [args]\n\n");
	fprintf(f, "commands:\n");
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-17s %s\n", commands[i].name,
			commands[i].summary);
	fprintf(f, "\n'hvresync <command> --help' describes one command; "
		   "see hvresync(8).\n");
}

int main(int argc, char **argv)
{
	size_t i;

	if (argc < 2) {
		print_help(stderr);
		return EXIT_ERROR;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		print_help(stdout);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
		printf("hvresync %s\n", HVRESYNC_VERSION);
		return EXIT_OK;
	}
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	error_msg("'%s' is not a command; see 'hvresync --help'", argv[1]);
	return EXIT_ERROR;
}
