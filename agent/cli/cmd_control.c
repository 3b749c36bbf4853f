/* SPDX-License-Identifier: MIT */
/*
 * cmd_control.c - the control API's command line: `hvresync resync`,
 * `hvresync job ...` and `hvresync vm ...` (docs/control-api.md).  Each
 * is one or a few requests to the local agent's control socket.
 *
 * Exit status: 0 when the ReturnValue is 0 or 4096 (with --wait: when the
 * job ended Completed), 2 otherwise, with one error line on stderr.  The
 * ReturnValue is printed in every case, so scripts read it from stdout;
 * a socket that cannot be reached is 32777 (32769 when its permissions
 * keep the caller out), a wait or call that times out is 32772.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/cli/cli.h"
#include "agent/cli/control_client.h"
#include "agent/cli/progress.h"
#include "agent/daemon/job.h"
#include "agent/daemon/vmstate.h"
#include "agent/lib/fmt.h"
#include "agent/lib/svgmap.h"

#define RESYNC_USAGE                                                            \
	"hvresync resync VM [--start-time T] [--wait] [--timeout S] [--json]\n" \
	"                [--config FILE | --control SOCKET]"
#define JOB_USAGE                                                              \
	"hvresync job list [--vm VM] | show [--map FILE.svg] ID | cancel ID\n" \
	"                | suspend ID | resume ID\n"                           \
	"                [--wait] [--timeout S] [--json] [--config FILE | --control SOCKET]"
#define VM_USAGE                                                         \
	"hvresync vm list | show VM | set-state VM STATE | discard VM\n" \
	"                [--json] [--config FILE | --control SOCKET]"

#define DEFAULT_CALL_MS 30000
#define DISCARD_CALL_S 600 /* `vm discard` may complete a merge */

struct opts {
	const char *config;
	const char *control;
	const char *start_time;
	const char *vm_filter;
	const char *map; /* job show --map */
	bool wait;
	bool json;
	double timeout; /* seconds, 0: none given */
	char *sock;
};

static int call_ms(const struct opts *o)
{
	if (o->timeout > 0 && !o->wait)
		return (int)(o->timeout * 1000);
	return DEFAULT_CALL_MS;
}

/* Parse the options every command shares; leaves operands in argv. */
static int parse_opts(int argc, char **argv, struct opts *o, const char *usage,
		      bool resync)
{
	static const struct option lo[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "control", required_argument, NULL, 'S' },
		{ "start-time", required_argument, NULL, 's' },
		{ "wait", no_argument, NULL, 'w' },
		{ "timeout", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' },
		{ "vm", required_argument, NULL, 'v' },
		{ "map", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char err[1024], *end;
	int c, ret;

	memset(o, 0, sizeof(*o));
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 'c':
			o->config = optarg;
			break;
		case 'S':
			o->control = optarg;
			break;
		case 's':
			if (!resync)
				usage_die(usage);
			o->start_time = optarg;
			break;
		case 'w':
			o->wait = true;
			break;
		case 't':
			o->timeout = strtod(optarg, &end);
			if (*end || end == optarg || !(o->timeout > 0) ||
			    o->timeout > 86400 * 8)
				die("--timeout: '%s' is not a number of seconds",
				    optarg);
			break;
		case 'j':
			o->json = true;
			break;
		case 'v':
			o->vm_filter = optarg;
			break;
		case 'm':
			o->map = optarg;
			break;
		case 'h':
			printf("usage: %s\n", usage);
			exit(EXIT_OK);
		default:
			usage_die(usage);
		}
	}
	if (o->config && o->control)
		die("--config and --control name the socket twice: give one");
	ret = control_resolve_socket(o->config, o->control, &o->sock, err,
				     sizeof(err));
	if (ret)
		die("%s", err);
	return optind;
}

/* --- printing replies --- */

static void print_json(const struct jv *v)
{
	struct json_writer w;

	json_init(&w, stdout, 2);
	jv_write(&w, v);
	if (json_end(&w))
		die("stdout: cannot write");
}

/* The name that goes with a numeric property, or NULL. */
static const char *enum_name(const char *key, int64_t v)
{
	unsigned u = (unsigned)v;

	if (!strcmp(key, "JobState") || !strcmp(key, "LastJobState"))
		return v ? job_state_name(u) : NULL;
	if (!strcmp(key, "JobType"))
		return job_type_name(u);
	if (!strcmp(key, "ReplicationState"))
		return repl_state_name(u);
	if (!strcmp(key, "ReplicationHealth"))
		return repl_health_name(u);
	if (!strcmp(key, "ReplicationMode"))
		return repl_mode_name(u);
	if (!strcmp(key, "ErrorCode") || !strcmp(key, "ReturnValue"))
		return v ? rv_name(u) : NULL;
	return NULL;
}

static void print_scalar(FILE *f, const char *key, const struct jv *v)
{
	const char *name;

	switch (v->type) {
	case JV_NULL:
		fputs("-", f);
		break;
	case JV_BOOL:
		fputs(v->b ? "true" : "false", f);
		break;
	case JV_NUMBER:
		if (!v->is_int) {
			fprintf(f, "%g", v->num);
			break;
		}
		fprintf(f, "%lld", (long long)v->i);
		name = key ? enum_name(key, v->i) : NULL;
		if (name)
			fprintf(f, " (%s)", name);
		break;
	case JV_STRING:
		fputs(v->s, f);
		break;
	default:
		fputs("...", f);
	}
}

/*
 * Members of a job's disk that say nothing to a person reading `job
 * show`: what a resume needs (the clone's path, the source's identity)
 * and empty notes.  --json shows them all.
 */
static bool hidden_member(const char *key, const struct jv *v)
{
	static const char *const internal[] = { "Clone", "SourceIdentity",
						"Repass", "Map" };
	size_t i;

	for (i = 0; i < sizeof(internal) / sizeof(internal[0]); i++)
		if (!strcmp(key, internal[i]))
			return true;
	if (!strcmp(key, "SnapshotNote") || !strcmp(key, "Resume") ||
	    !strcmp(key, "SnapshotTime") || !strcmp(key, "MergeNote"))
		return v->type == JV_NULL || (v->type == JV_STRING && !v->s[0]);
	return false;
}

/* "Key: value" lines; arrays of objects one item per line. */
static void print_object(const struct jv *o)
{
	size_t i, k, m;

	if (!o || o->type != JV_OBJECT)
		die("the agent's reply has no object to show");
	for (i = 0; i < o->n; i++) {
		const struct jv *v = &o->items[i];

		printf("%-24s ", o->keys[i]);
		if (v->type != JV_ARRAY) {
			print_scalar(stdout, o->keys[i], v);
			putchar('\n');
			continue;
		}
		if (!v->n)
			fputs("-", stdout);
		for (k = 0; k < v->n; k++) {
			const struct jv *it = &v->items[k];

			if (it->type != JV_OBJECT) {
				if (k)
					fputs(", ", stdout);
				print_scalar(stdout, NULL, it);
				continue;
			}
			printf("\n  -");
			for (m = 0; m < it->n; m++) {
				if (hidden_member(it->keys[m], &it->items[m]))
					continue;
				printf(" %s=", it->keys[m]);
				print_scalar(stdout, it->keys[m],
					     &it->items[m]);
			}
		}
		putchar('\n');
	}
}

/* The ReturnValue line (text) or nothing (JSON prints whole replies). */
static void print_rv(unsigned rv, bool rsc)
{
	printf("ReturnValue: %u (%s)\n", rv, rsc ? rsc_name(rv) : rv_name(rv));
}

/* Call and check; on a failure print and exit 2. */
static struct jv *call_or_die(const struct opts *o, const char *what,
			      const char *req)
{
	struct jv *reply = NULL;
	char err[1024];
	unsigned rv;
	int ret;

	ret = control_call(o->sock, req, call_ms(o), &reply, err, sizeof(err));
	if (ret) {
		rv = control_rv_for_error(ret);
		if (o->json)
			printf("{\n  \"ReturnValue\": %u\n}\n", rv);
		else
			print_rv(rv, false);
		die("%s: %s", what, err);
	}
	rv = control_reply_rv(reply);
	if (rv != RV_OK && rv != RV_JOB_STARTED) {
		const char *e = control_reply_error(reply);

		if (o->json)
			print_json(reply);
		else
			print_rv(rv, false);
		die("%s: %u (%s)%s%s", what, rv, rv_name(rv), e ? ": " : "",
		    e ? e : "");
	}
	return reply;
}

/* JSON-escape a string argument into a request. */
static char *request(const char *method, const char *k1, const char *v1,
		     const char *k2, const char *v2)
{
	struct json_writer w;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		die("out of memory");
	json_init(&w, f, 0);
	json_object_begin(&w);
	json_kv_string(&w, "Method", method);
	if (k1)
		json_kv_string(&w, k1, v1);
	if (k2)
		json_kv_string(&w, k2, v2);
	json_object_end(&w);
	if (json_end(&w) || fclose(f))
		die("out of memory");
	if (len && buf[len - 1] == '\n')
		buf[len - 1] = '\0';
	return buf;
}

/* --- resync --- */

struct waitbar {
	struct progress bar;
	bool started;
	char label[300];
};

static void on_poll(void *arg, const struct job *j)
{
	struct waitbar *wb = arg;
	uint64_t total, done;

	progress_job_bytes(j, &total, &done);
	if (!wb->started) {
		progress_init(&wb->bar, wb->label, total);
		wb->started = true;
	}
	wb->bar.total = total;
	progress_update(&wb->bar, done);
}

static int show_final_job(const struct opts *o, const char *id,
			  unsigned rv_call)
{
	struct jv *reply;
	const struct jv *inst, *st;
	char *req = request("GetJob", "Job", id, NULL, NULL);
	unsigned state;

	reply = call_or_die(o, "GetJob", req);
	free(req);
	inst = jv_get(reply, "Instance");
	if (!inst || inst->type != JV_OBJECT)
		die("GetJob %s: the agent's reply has no Instance", id);
	st = jv_get(inst, "JobState");
	state = st && st->is_int ? (unsigned)st->i : 0;
	if (o->json) {
		struct json_writer w;

		json_init(&w, stdout, 2);
		json_object_begin(&w);
		json_kv_u64(&w, "ReturnValue", rv_call);
		json_kv_string(&w, "Job", id);
		json_key(&w, "Instance");
		jv_write(&w, inst);
		json_object_end(&w);
		if (json_end(&w))
			die("stdout: cannot write");
	} else {
		print_rv(rv_call, false);
		printf("Job: %s\n", id);
		print_object(inst);
	}
	if (state != JS_COMPLETED) {
		const struct jv *d = jv_get(inst, "ErrorDescription");

		error_msg("job %s ended %s%s%s", id, job_state_name(state),
			  d && d->type == JV_STRING ? ": " : "",
			  d && d->type == JV_STRING ? d->s : "");
		jv_free(reply);
		return EXIT_ERROR;
	}
	jv_free(reply);
	return EXIT_OK;
}

int cmd_resync(int argc, char **argv)
{
	struct control_resync args = { 0 };
	char job[JOB_ID_LEN], err[1024];
	struct waitbar wb;
	struct job final;
	struct opts o;
	unsigned rv;
	int i;

	i = parse_opts(argc, argv, &o, RESYNC_USAGE, true);
	if (o.map)
		usage_die(RESYNC_USAGE);
	if (argc - i != 1)
		usage_die(RESYNC_USAGE);
	args.vm = argv[i];
	args.start_time = o.start_time;
	rv = control_resynchronize(o.sock, &args, call_ms(&o), job, err,
				   sizeof(err));
	if (rv != RV_JOB_STARTED && rv != RV_OK) {
		if (o.json)
			printf("{\"ReturnValue\": %u, \"Job\": null}\n", rv);
		else
			print_rv(rv, false);
		die("resync %s: %u (%s): %s", args.vm, rv, rv_name(rv), err);
	}
	if (!o.wait) {
		if (o.json) {
			printf("{\"ReturnValue\": %u, \"Job\": \"%s\"}\n", rv,
			       job);
		} else {
			print_rv(rv, false);
			printf("Job: %s\n", job);
		}
		free(o.sock);
		return EXIT_OK;
	}
	memset(&wb, 0, sizeof(wb));
	snprintf(wb.label, sizeof(wb.label), "resync %s", args.vm);
	rv = control_wait_job(o.sock, job, (int)(o.timeout * 1000), on_poll,
			      &wb, &final, err, sizeof(err));
	if (wb.started)
		progress_finish(&wb.bar);
	job_clear(&final);
	if (rv) {
		if (o.json)
			printf("{\"ReturnValue\": %u, \"Job\": \"%s\"}\n", rv,
			       job);
		else {
			print_rv(rv, false);
			printf("Job: %s\n", job);
		}
		die("resync %s: %u (%s): %s", args.vm, rv, rv_name(rv), err);
	}
	rv = (unsigned)show_final_job(&o, job, RV_JOB_STARTED);
	free(o.sock);
	return (int)rv;
}

/* --- job --- */

static void print_job_table(const struct jv *jobs)
{
	size_t i;

	printf("%-36s  %-16s  %-4s  %-24s  %4s  %s\n", "INSTANCEID", "VM",
	       "TYPE", "STATE", "%", "SUBMITTED");
	for (i = 0; jobs && i < jobs->n; i++) {
		const struct jv *j = &jobs->items[i];
		const struct jv *id = jv_get(j, "InstanceID"),
				*vm = jv_get(j, "ElementName"),
				*t = jv_get(j, "JobType"),
				*s = jv_get(j, "JobState"),
				*p = jv_get(j, "PercentComplete"),
				*sub = jv_get(j, "TimeSubmitted");
		char state[40];

		snprintf(state, sizeof(state), "%lld %s",
			 s ? (long long)s->i : 0LL,
			 job_state_name(s ? (unsigned)s->i : 0));
		printf("%-36s  %-16s  %-4lld  %-24s  %4lld  %s\n",
		       id && id->type == JV_STRING ? id->s : "?",
		       vm && vm->type == JV_STRING ? vm->s : "?",
		       t ? (long long)t->i : 0LL, state,
		       p ? (long long)p->i : 0LL,
		       sub && sub->type == JV_STRING ? sub->s : "-");
	}
}

static int job_change(struct opts *o, const char *id, unsigned requested,
		      const char *verb)
{
	char err[1024];
	int64_t timeout = 0;
	unsigned rv;

	if (o->wait || o->timeout > 0)
		timeout = (int64_t)((o->timeout > 0 ? o->timeout : 300) * 1e6);
	rv = control_job_state_change(o->sock, id, requested, timeout, err,
				      sizeof(err));
	if (o->json)
		printf("{\"ReturnValue\": %u, \"Job\": \"%s\"}\n", rv, id);
	else
		print_rv(rv, rv < RV_FAILED);
	if (rv != RSC_OK && rv != RSC_STARTED) {
		if (rv == RSC_TIMEOUT)
			rv = RV_TIMEOUT;
		die("job %s %s: %u (%s)%s%s", verb, id, rv,
		    rv < RV_FAILED ? rsc_name(rv) : rv_name(rv),
		    err[0] ? ": " : "", err);
	}
	return EXIT_OK;
}

/* "cancel", "suspend", "resume": the RequestedState, or 0 for none. */
static unsigned job_verb_state(const char *verb)
{
	if (!strcmp(verb, "cancel"))
		return REQ_TERMINATE;
	if (!strcmp(verb, "suspend"))
		return REQ_SUSPEND;
	if (!strcmp(verb, "resume"))
		return REQ_START;
	return 0;
}

/*
 * job show --map: one SVG, one panel per disk, of what the job's send
 * sessions compared and sent (the Map the agent keeps with the job, also
 * after it finished and across agent restarts).  A disk the job did not
 * compare (yet) shows as not compared.
 */
static void write_job_map(const char *path, const struct jv *inst)
{
	struct svgmap_panel *p;
	struct job j;
	char err[1200], title[400];
	unsigned i;
	int ret;

	if (!inst || job_from_json(inst, &j, err, sizeof(err)))
		die("job show: the agent's job is not readable: %s",
		    inst ? err : "no Instance");
	p = calloc(j.ndisks ? j.ndisks : 1, sizeof(*p));
	if (!p)
		die("out of memory");
	for (i = 0; i < j.ndisks; i++) {
		p[i].name = j.disks[i].name;
		p[i].size = j.disks[i].size;
		p[i].map = &j.disks[i].map;
		p[i].sent = true;
	}
	fmt_line(title, sizeof(title), "hvresync job %s, VM %s: %s", j.id, j.vm,
		 job_state_name(j.state));
	ret = svgmap_write(path, title, p, j.ndisks, err, sizeof(err));
	free(p);
	job_clear(&j);
	if (ret < 0)
		die("job show: %s", err);
}

int cmd_job(int argc, char **argv)
{
	struct jv *reply;
	struct opts o;
	const char *verb;
	unsigned requested;
	char *req;
	int i;

	i = parse_opts(argc, argv, &o, JOB_USAGE, false);
	if (i >= argc)
		usage_die(JOB_USAGE);
	verb = argv[i++];
	if (o.map && strcmp(verb, "show"))
		die("job %s: --map goes with 'job show' only", verb);
	if (!strcmp(verb, "list")) {
		if (i != argc)
			usage_die(JOB_USAGE);
		req = request("ListJobs", o.vm_filter ? "ComputerSystem" : NULL,
			      o.vm_filter, NULL, NULL);
		reply = call_or_die(&o, "job list", req);
		if (o.json)
			print_json(reply);
		else
			print_job_table(jv_get(reply, "Jobs"));
	} else if (!strcmp(verb, "show")) {
		if (argc - i != 1)
			usage_die(JOB_USAGE);
		req = request("GetJob", "Job", argv[i], NULL, NULL);
		reply = call_or_die(&o, "job show", req);
		if (o.json)
			print_json(reply);
		else
			print_object(jv_get(reply, "Instance"));
		if (o.map)
			write_job_map(o.map, jv_get(reply, "Instance"));
	} else {
		if (argc - i != 1)
			usage_die(JOB_USAGE);
		requested = job_verb_state(verb);
		if (!requested)
			usage_die(JOB_USAGE);
		i = job_change(&o, argv[i], requested, verb);
		free(o.sock);
		return i;
	}
	free(req);
	jv_free(reply);
	free(o.sock);
	return EXIT_OK;
}

/* --- vm --- */

static void print_vm_table(const struct jv *vms)
{
	size_t i;

	printf("%-16s  %-8s  %-40s  %-8s  %s\n", "VM", "MODE",
	       "REPLICATIONSTATE", "HEALTH", "LASTJOB");
	for (i = 0; vms && i < vms->n; i++) {
		const struct jv *v = &vms->items[i];
		const struct jv *n = jv_get(v, "ElementName"),
				*s = jv_get(v, "ReplicationState"),
				*h = jv_get(v, "ReplicationHealth"),
				*m = jv_get(v, "ReplicationMode"),
				*l = jv_get(v, "LastJob");
		char state[64];

		snprintf(state, sizeof(state), "%lld %s",
			 s ? (long long)s->i : 0LL,
			 repl_state_name(s ? (unsigned)s->i : 0));
		printf("%-16s  %-8s  %-40s  %-8s  %s\n",
		       n && n->type == JV_STRING ? n->s : "?",
		       repl_mode_name(m ? (unsigned)m->i : 0), state,
		       repl_health_name(h ? (unsigned)h->i : 0),
		       l && l->type == JV_STRING ? l->s : "-");
	}
}

/* GetVM's Authorization: how peers may reach the VM (no secrets). */
static void print_authorization(const struct jv *auth)
{
	const struct jv *d = jv_get(auth, "Description");

	/* An older agent does not say. */
	if (d && d->type == JV_STRING)
		printf("%-24s %s\n", "Authorization", d->s);
}

/* What `vm discard` did: each disk's copy dropped, or its merge (which
 * had begun and cannot be undone) completed. */
static void print_discarded(const struct jv *reply)
{
	const struct jv *d = jv_get(reply, "Discarded"),
			*m = jv_get(reply, "Merged");
	size_t i;

	print_rv(control_reply_rv(reply), false);
	for (i = 0; d && d->type == JV_ARRAY && i < d->n; i++)
		if (d->items[i].type == JV_STRING)
			printf("discarded the held copy of %s\n",
			       d->items[i].s);
	for (i = 0; m && m->type == JV_ARRAY && i < m->n; i++)
		if (m->items[i].type == JV_STRING)
			printf("completed the merge %s had begun (it cannot be undone)\n",
			       m->items[i].s);
	if ((!d || !d->n) && (!m || !m->n))
		printf("nothing was held\n");
}

/* RequestReplicationStateChange of VM to STATE (a number). */
static char *set_state_request(const char *vm, const char *state)
{
	struct json_writer w;
	size_t len = 0;
	char *end, *req = NULL;
	long st;
	FILE *f;

	st = strtol(state, &end, 10);
	if (*end || end == state || st < 0 || st > 65535)
		die("vm set-state: '%s' is not a ReplicationState number",
		    state);
	f = open_memstream(&req, &len);
	if (!f)
		die("out of memory");
	json_init(&w, f, 0);
	json_object_begin(&w);
	json_kv_string(&w, "Method", "RequestReplicationStateChange");
	json_kv_string(&w, "ComputerSystem", vm);
	json_kv_u64(&w, "RequestedState", (uint64_t)st);
	json_object_end(&w);
	if (json_end(&w) || fclose(f))
		die("out of memory");
	req[len - 1] = '\0';
	return req;
}

int cmd_vm(int argc, char **argv)
{
	struct jv *reply;
	struct opts o;
	const char *verb;
	char *req;
	int i;

	i = parse_opts(argc, argv, &o, VM_USAGE, false);
	if (o.map)
		usage_die(VM_USAGE);
	if (i >= argc)
		usage_die(VM_USAGE);
	verb = argv[i++];
	if (!strcmp(verb, "list")) {
		if (i != argc)
			usage_die(VM_USAGE);
		req = request("ListVMs", NULL, NULL, NULL, NULL);
		reply = call_or_die(&o, "vm list", req);
		if (o.json)
			print_json(reply);
		else
			print_vm_table(jv_get(reply, "VMs"));
	} else if (!strcmp(verb, "show")) {
		if (argc - i != 1)
			usage_die(VM_USAGE);
		req = request("GetVM", "ComputerSystem", argv[i], NULL, NULL);
		reply = call_or_die(&o, "vm show", req);
		if (o.json) {
			print_json(reply);
		} else {
			print_object(jv_get(reply, "Instance"));
			print_authorization(jv_get(reply, "Authorization"));
		}
	} else if (!strcmp(verb, "discard")) {
		/* finishing a merge that had begun may take a while */
		if (argc - i != 1)
			usage_die(VM_USAGE);
		if (o.timeout <= 0)
			o.timeout = DISCARD_CALL_S;
		req = request("DiscardHeldCopies", "ComputerSystem", argv[i],
			      NULL, NULL);
		reply = call_or_die(&o, "vm discard", req);
		if (o.json)
			print_json(reply);
		else
			print_discarded(reply);
	} else if (!strcmp(verb, "set-state")) {
		if (argc - i != 2)
			usage_die(VM_USAGE);
		req = set_state_request(argv[i], argv[i + 1]);
		reply = call_or_die(&o, "vm set-state", req);
		if (o.json)
			print_json(reply);
		else
			print_rv(control_reply_rv(reply), false);
	} else {
		usage_die(VM_USAGE);
	}
	free(req);
	jv_free(reply);
	free(o.sock);
	return EXIT_OK;
}
