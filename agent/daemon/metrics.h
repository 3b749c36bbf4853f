/* SPDX-License-Identifier: MIT */
/*
 * metrics.h - the agent's Prometheus metrics (issue 13), for
 * node_exporter's textfile collector: `metrics-file = PATH` in [agent]
 * makes the agent rewrite PATH atomically at every job or VM state change
 * and every 10 s while a job runs (every 60 s otherwise, so the write
 * time shows the agent is alive).  The families are listed in
 * hvresync(8), METRICS.  Counters (failed jobs, refused connections) are
 * per agent process and start from 0, as Prometheus counters may.
 *
 * metrics_write_result() is the same for one finished command
 * (`push --metrics-file`, `mount-and-resync --metrics-file`).
 */
#ifndef HVRESYNC_DAEMON_METRICS_H
#define HVRESYNC_DAEMON_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct agent;

#define METRICS_RUNNING_INTERVAL_US (10LL * 1000000)
#define METRICS_IDLE_INTERVAL_US (60LL * 1000000)

/* Start the counters from 0 (at agent start, before anything counts). */
void metrics_reset(void);
/* Start the writer thread when @a has a metrics file; 0 or -errno
 * (@err set).  metrics_stop() ends it (it is safe without a start). */
int metrics_start(struct agent *a, char *err, size_t errlen);
void metrics_stop(void);
/* Something shown changed: write the file soon.  Any thread, with or
 * without the agent lock. */
void metrics_poke(void);
/* A job reached the final JobState @state. */
void metrics_count_finished(unsigned state);
/* The control socket refused a caller (neither root nor admin group). */
void metrics_count_refused_control(void);

struct metrics_counters {
	int64_t started;	 /* usec since the epoch */
	uint64_t jobs_failed;	 /* ended Exception */
	uint64_t jobs_completed; /* ended Completed (with warnings too) */
	uint64_t jobs_cancelled; /* ended Terminated or Killed */
	uint64_t refused_control;
};
void metrics_get_counters(struct metrics_counters *c);

/* Under the agent lock: protocol sessions now, received (a primary
 * sends to one of our exports) and sent (a job of ours runs). */
void metrics_sessions(struct agent *a, unsigned *in, unsigned *out);

/* Under the agent lock: the whole metrics text at @now (malloc()ed). */
int metrics_render(struct agent *a, int64_t now, char **buf, size_t *len);

/*
 * One finished command's result, for `push` and `mount-and-resync`:
 *
 *	struct metrics_result r = { .command = "push", .disk = "VM:os.vhdx",
 *		.peer = "10.0.0.2:7433", .ok = ret == 0, .exit_code = 0,
 *		.started = t0, .finished = wall_us(),
 *		.compared = st.bytes_compared, .different = st.bytes_different,
 *		.sent = st.bytes_sent };
 *	if (metrics_write_result(path, &r, err, sizeof(err)))
 *		error_msg("%s", err);	(the command's result stands)
 *
 * Labels left NULL are left out.  The file is replaced atomically; one
 * file per command and VM (the timer's instance name, say), since each
 * run replaces it.  0 or a negative errno with @err naming the file.
 */
struct metrics_result {
	const char *command; /* "push", "mount-and-resync" */
	const char *vm;	     /* NULL when not a VM's */
	const char *disk;    /* NULL for several */
	const char *peer;    /* HOST:PORT */
	bool ok;	     /* it succeeded */
	int exit_code;
	int64_t started, finished; /* usec since the epoch */
	uint64_t compared, different, sent;
};
int metrics_write_result(const char *path, const struct metrics_result *r,
			 char *err, size_t errlen);

#endif
