/* SPDX-License-Identifier: MIT */
/*
 * agent.h - the hvresync agent as a library call: `hvresync agent` parses
 * its options and calls agent_run().  The daemon serves its replica VMs'
 * disks to peers, answers the control API and runs resynchronization jobs.
 */
#ifndef HVRESYNC_DAEMON_AGENT_H
#define HVRESYNC_DAEMON_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct agent_options {
	const char *config;   /* configuration file */
	bool foreground;      /* stay attached, log to stderr for journald */
	uint64_t bwlimit;     /* bytes/s per send; 0: unlimited */
	int64_t retention_us; /* how long finished jobs stay visible */
};

/* Run until SIGTERM/SIGINT.  0, or a negative errno with @err set (the
 * configuration does not load, the agent cannot start). */
int agent_run(const struct agent_options *o, char *err, size_t errlen);

#endif
