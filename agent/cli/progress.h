/* SPDX-License-Identifier: MIT */
/*
 * progress.h - a one-line progress bar on stderr for long commands
 * (verify, push, resync).  It draws only when stderr is a terminal, at
 * most a few times a second, and erases itself when done, so logs and
 * pipes never see it.
 */
#ifndef HVRESYNC_PROGRESS_H
#define HVRESYNC_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

struct progress {
	bool enabled;
	bool drawn;
	const char *label;
	uint64_t total;
	uint64_t done;
	double start; /* CLOCK_MONOTONIC seconds */
	double last_draw;
};

/* Start a bar for TOTAL units (bytes); LABEL is shown in front. */
void progress_init(struct progress *p, const char *label, uint64_t total);
/* DONE units are finished; redraws when enough time has passed. */
void progress_update(struct progress *p, uint64_t done);
/* Erase the bar (call before printing anything else on stderr). */
void progress_clear(struct progress *p);
/* Erase the bar for good. */
void progress_finish(struct progress *p);

struct job;

/* A job's bytes: TOTAL of all its disks, DONE compared so far (a disk
 * already sent counts whole), for a bar that follows an agent's job. */
void progress_job_bytes(const struct job *j, uint64_t *total, uint64_t *done);

#endif
