/* SPDX-License-Identifier: MIT */
/*
 * cmd_status.c - `hvresync status`: one screen for the local agent, like
 * `drbdadm status`: the agent (role, listening address, sessions,
 * counters), every VM with its ReplicationState, health, last successful
 * resync (when, how long, bytes sent) and held copies, and the running
 * jobs with a progress bar and an ETA.  Three read-only control-API calls
 * (GetAgent, ListVMs, ListJobs); `--json` prints them as one object,
 * `--watch` redraws every 2 s until Ctrl-C.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/cli/cli.h"
#include "agent/cli/control_client.h"
#include "agent/cli/progress.h"
#include "agent/daemon/cimtime.h"
#include "agent/daemon/job.h"
#include "agent/daemon/vmstate.h"
#include "agent/lib/fmt.h"

#define STATUS_USAGE                                          \
	"hvresync status [--json] [--watch] [--interval S]\n" \
	"                [--config FILE | --control SOCKET]"
#define STATUS_CALL_MS 10000
#define BAR_WIDTH 20

struct status_opts {
	const char *config;
	const char *control;
	bool json;
	bool watch;
	double interval; /* seconds between redraws */
	char *sock;
};

/* The three replies one screen is drawn from. */
struct status {
	struct jv *agent, *vms, *jobs;
	unsigned rv;	/* the first failed call's ReturnValue, 0 */
	char err[1024]; /* and its line */
};

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
	interrupted = 1;
}

static void parse(int argc, char **argv, struct status_opts *o)
{
	static const struct option lo[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "control", required_argument, NULL, 'S' },
		{ "json", no_argument, NULL, 'j' },
		{ "watch", no_argument, NULL, 'w' },
		{ "interval", required_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char err[1024], *end;
	int c;

	memset(o, 0, sizeof(*o));
	o->interval = 2;
	optind = 1;
	while ((c = getopt_long(argc, argv, "hjw", lo, NULL)) != -1) {
		switch (c) {
		case 'c':
			o->config = optarg;
			break;
		case 'S':
			o->control = optarg;
			break;
		case 'j':
			o->json = true;
			break;
		case 'w':
			o->watch = true;
			break;
		case 'i':
			o->interval = strtod(optarg, &end);
			if (*end || end == optarg || !(o->interval >= 0.1) ||
			    o->interval > 3600)
				die("--interval: '%s' is not a number of seconds (0.1 to 3600)",
				    optarg);
			break;
		case 'h':
			printf("usage: %s\n", STATUS_USAGE);
			exit(EXIT_OK);
		default:
			usage_die(STATUS_USAGE);
		}
	}
	if (optind != argc)
		usage_die(STATUS_USAGE);
	if (o->config && o->control)
		die("--config and --control name the socket twice: give one");
	if (control_resolve_socket(o->config, o->control, &o->sock, err,
				   sizeof(err)))
		die("%s", err);
}

/* One call; on failure the status keeps the first error. */
static struct jv *call(const char *sock, const char *req, struct status *s)
{
	struct jv *reply = NULL;
	char err[1024];
	unsigned rv;
	int ret;

	if (s->rv)
		return NULL;
	ret = control_call(sock, req, STATUS_CALL_MS, &reply, err, sizeof(err));
	if (ret) {
		s->rv = control_rv_for_error(ret);
		snprintf(s->err, sizeof(s->err), "%s", err);
		return NULL;
	}
	rv = control_reply_rv(reply);
	if (rv) {
		s->rv = rv;
		snprintf(s->err, sizeof(s->err), "%s: %s", sock,
			 control_reply_error(reply) ? control_reply_error(reply)
						    : rv_name(rv));
		jv_free(reply);
		return NULL;
	}
	return reply;
}

static void status_get(const char *sock, struct status *s)
{
	memset(s, 0, sizeof(*s));
	s->agent = call(sock, "{\"Method\":\"GetAgent\"}", s);
	s->vms = call(sock, "{\"Method\":\"ListVMs\"}", s);
	s->jobs = call(sock, "{\"Method\":\"ListJobs\"}", s);
}

static void status_free(struct status *s)
{
	jv_free(s->agent);
	jv_free(s->vms);
	jv_free(s->jobs);
}

/* --- reading members --- */

static const char *str(const struct jv *o, const char *k)
{
	const struct jv *v = o ? jv_get(o, k) : NULL;

	return v && v->type == JV_STRING ? v->s : NULL;
}

/* A string member, or @def when it is missing or null. */
static const char *str_or(const struct jv *o, const char *k, const char *def)
{
	const char *v = str(o, k);

	return v ? v : def;
}

static uint64_t num(const struct jv *o, const char *k)
{
	const struct jv *v = o ? jv_get(o, k) : NULL;

	return v && v->type == JV_NUMBER && v->num > 0 ? (uint64_t)v->num : 0;
}

static bool has_num(const struct jv *o, const char *k)
{
	const struct jv *v = o ? jv_get(o, k) : NULL;

	return v && v->type == JV_NUMBER;
}

/* A CIM datetime as local "YYYY-MM-DD HH:MM:SS", or @none. */
static const char *when(const char *cim, char *out, size_t len,
			const char *none)
{
	struct tm tm;
	int64_t us;
	time_t t;

	if (!cim || cim_datetime_parse(cim, &us)) {
		snprintf(out, len, "%s", none);
		return out;
	}
	t = (time_t)(us / 1000000);
	localtime_r(&t, &tm);
	strftime(out, len, "%Y-%m-%d %H:%M:%S", &tm);
	return out;
}

/* Seconds as "42 s", "3 min 05 s", "2 h 07 min". */
static const char *duration(double s, char *out, size_t len)
{
	unsigned long t = (unsigned long)(s + 0.5);

	if (s < 10)
		snprintf(out, len, "%.1f s", s);
	else if (t < 60)
		snprintf(out, len, "%lu s", t);
	else if (t < 3600)
		snprintf(out, len, "%lu min %02lu s", t / 60, t % 60);
	else
		snprintf(out, len, "%lu h %02lu min", t / 3600, t / 60 % 60);
	return out;
}

/* --- the screen --- */

static void print_agent(const struct jv *reply)
{
	const struct jv *a = jv_get(reply, "Instance");
	char since[64];

	printf("agent: %s, pid %llu, listening on %s (%s)\n",
	       str_or(a, "Role", "?"), (unsigned long long)num(a, "ProcessID"),
	       str_or(a, "Listen", "?"), str_or(a, "Security", "?"));
	printf("       control %s, up since %s\n", str_or(a, "Control", "?"),
	       when(str(a, "StartTime"), since, sizeof(since), "?"));
	printf("       %llu active job(s); peer sessions: %llu in, %llu out; since start: %llu completed, %llu failed, %llu cancelled, %llu refused control connection(s)\n",
	       (unsigned long long)num(a, "ActiveJobs"),
	       (unsigned long long)num(a, "PeerSessionsIn"),
	       (unsigned long long)num(a, "PeerSessionsOut"),
	       (unsigned long long)num(a, "JobsCompleted"),
	       (unsigned long long)num(a, "JobsFailed"),
	       (unsigned long long)num(a, "JobsCancelled"),
	       (unsigned long long)num(a, "RefusedControlConnections"));
	if (str(a, "MetricsFile"))
		printf("       metrics in %s\n", str(a, "MetricsFile"));
}

/* The held copies of a VM: "-", or "N, SIZE". */
static const char *held(const struct jv *vm, char *out, size_t len)
{
	const struct jv *h = jv_get(vm, "HeldCopies");
	uint64_t bytes = 0;
	char size[32];
	size_t i;

	if (!h || h->type != JV_ARRAY || !h->n) {
		snprintf(out, len, "-");
		return out;
	}
	for (i = 0; i < h->n; i++)
		bytes += num(&h->items[i], "Bytes");
	snprintf(out, len, "%zu, %s", h->n,
		 fmt_size(size, sizeof(size), (double)bytes));
	return out;
}

static void print_vms(const struct jv *reply)
{
	const struct jv *vms = jv_get(reply, "VMs");
	char state[64], last[64], took[32], sent[32], hc[64];
	size_t i;

	printf("\n%-16s %-42s %-9s %-19s %-12s %-10s %s\n", "VM",
	       "REPLICATION STATE", "HEALTH", "LAST RESYNC", "TOOK", "SENT",
	       "HELD");
	for (i = 0; vms && vms->type == JV_ARRAY && i < vms->n; i++) {
		const struct jv *v = &vms->items[i];
		unsigned rs = (unsigned)num(v, "ReplicationState");
		const char *ls = str(v, "LastSuccessfulResync");

		snprintf(state, sizeof(state), "%u %s", rs,
			 repl_state_name(rs));
		took[0] = sent[0] = '\0';
		if (ls && has_num(v, "LastSuccessfulResyncSeconds")) {
			const struct jv *sec =
				jv_get(v, "LastSuccessfulResyncSeconds");

			duration(sec->num, took, sizeof(took));
			fmt_size(sent, sizeof(sent),
				 (double)num(v,
					     "LastSuccessfulResyncBytesSent"));
		}
		printf("%-16s %-42s %-9s %-19s %-12s %-10s %s\n",
		       str_or(v, "ElementName", "?"), state,
		       repl_health_name((unsigned)num(v, "ReplicationHealth")),
		       when(ls, last, sizeof(last), "never"),
		       took[0] ? took : "-", sent[0] ? sent : "-",
		       held(v, hc, sizeof(hc)));
	}
}

/* "[#####-----]  45%  ETA 1 min 05 s" for a job that runs. */
static void print_progress(const struct job *j)
{
	char bar[BAR_WIDTH + 1], eta[48] = "-", rate[32];
	uint64_t total, done;
	double secs = (double)j->elapsed / 1e6, bps;
	unsigned i, fill = j->percent * BAR_WIDTH / 100;

	for (i = 0; i < BAR_WIDTH; i++)
		bar[i] = i < fill ? '#' : '-';
	bar[BAR_WIDTH] = '\0';
	progress_job_bytes(j, &total, &done);
	if (j->state == JS_RUNNING && j->phase == JOB_PHASE_SEND && total &&
	    done && secs > 0.5) {
		bps = (double)done / secs;
		duration((double)(total - done) / bps, eta, sizeof(eta));
		printf("    [%s] %3u%%  ETA %s  (%s/s, %s phase)\n", bar,
		       j->percent, eta, fmt_size(rate, sizeof(rate), bps),
		       job_phase_name(j->phase));
		return;
	}
	printf("    [%s] %3u%%  ETA %s  (%s phase)\n", bar, j->percent, eta,
	       job_phase_name(j->phase));
}

static void print_jobs(const struct jv *reply)
{
	const struct jv *jobs = jv_get(reply, "Jobs");
	char err[512], done[64], took[32];
	unsigned shown = 0;
	struct job j;
	size_t i;

	printf("\n");
	for (i = 0; jobs && jobs->type == JV_ARRAY && i < jobs->n; i++) {
		if (job_from_json(&jobs->items[i], &j, err, sizeof(err))) {
			job_clear(&j);
			continue;
		}
		if (!shown++)
			printf("%-36s %-16s %s\n", "JOB", "VM", "STATE");
		printf("%-36s %-16s %-22s", j.id, j.vm ? j.vm : "?",
		       job_state_name(j.state));
		if (!job_state_final(j.state)) {
			printf("\n");
			print_progress(&j);
		} else {
			when(str(&jobs->items[i], "TimeFinished"), done,
			     sizeof(done), "?");
			printf(" ended %s after %s\n", done,
			       duration((double)j.elapsed / 1e6, took,
					sizeof(took)));
		}
		job_clear(&j);
	}
	if (!shown)
		printf("no jobs\n");
}

/* --watch --json prints one line per frame, for a script to read. */
static void print_json_status(const struct status *s, bool one_line)
{
	struct json_writer w;

	json_init(&w, stdout, one_line ? 0 : 2);
	json_object_begin(&w);
	json_kv_u64(&w, "ReturnValue", s->rv);
	if (s->rv)
		json_kv_string(&w, "Error", s->err);
	json_key(&w, "Agent");
	if (s->agent && jv_get(s->agent, "Instance"))
		jv_write(&w, jv_get(s->agent, "Instance"));
	else
		json_null(&w);
	json_key(&w, "VMs");
	if (s->vms && jv_get(s->vms, "VMs"))
		jv_write(&w, jv_get(s->vms, "VMs"));
	else
		json_null(&w);
	json_key(&w, "Jobs");
	if (s->jobs && jv_get(s->jobs, "Jobs"))
		jv_write(&w, jv_get(s->jobs, "Jobs"));
	else
		json_null(&w);
	json_object_end(&w);
	if (json_end(&w))
		die("stdout: cannot write");
}

/* One screen; returns the ReturnValue of the first failed call, 0. */
static unsigned draw(const struct status_opts *o)
{
	struct status s;
	unsigned rv;

	status_get(o->sock, &s);
	if (o->json) {
		print_json_status(&s, o->watch);
	} else if (s.rv) {
		/* --watch keeps going: the agent may come back */
		if (o->watch)
			printf("ReturnValue %u (%s): %s\n", s.rv, rv_name(s.rv),
			       s.err);
	} else {
		print_agent(s.agent);
		print_vms(s.vms);
		print_jobs(s.jobs);
	}
	fflush(stdout);
	rv = s.rv;
	if (rv && !o->watch)
		error_msg("%s", s.err);
	status_free(&s);
	return rv;
}

int cmd_status(int argc, char **argv)
{
	struct status_opts o;
	struct sigaction sa;
	struct timespec ts;
	bool tty;
	unsigned rv;

	parse(argc, argv, &o);
	if (!o.watch) {
		rv = draw(&o);
		free(o.sock);
		return rv ? EXIT_ERROR : EXIT_OK;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigint;
	sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: the sleep ends */
	sigaction(SIGTERM, &sa, NULL);
	tty = isatty(STDOUT_FILENO) == 1;
	while (!interrupted) {
		/* home and clear only on a terminal; a log gets frames one
		 * after the other */
		if (tty)
			printf("\033[H\033[2J");
		draw(&o);
		if (!tty && !o.json)
			printf("\n");
		fflush(stdout);
		ts.tv_sec = (time_t)o.interval;
		ts.tv_nsec = (long)((o.interval - (double)ts.tv_sec) * 1e9);
		while (!interrupted && nanosleep(&ts, &ts) && errno == EINTR)
			;
	}
	free(o.sock);
	return EXIT_OK;
}
