/* SPDX-License-Identifier: MIT */
/*
 * config.c - parsing hvresync.conf with libinih.  libinih does not pass line
 * numbers to the handler in Debian's build, so the reader callback counts
 * the lines it hands over: the handler always runs for the last line read.
 */
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "agent/daemon/config.h"
#include "agent/sync/common.h"
#include "vhdx/vhdx.h"

struct parse {
	struct agent_config *cfg;
	FILE *f;
	int line;
	char *err;
	size_t errlen;
	struct vm_config *vm; /* the [vm] section being read */
};

static char *reader(char *str, int num, void *stream)
{
	struct parse *p = stream;
	char *r = fgets(str, num, p->f);

	if (r)
		p->line++;
	return r;
}

static int bad(struct parse *p, const char *fmt, const char *a, const char *b)
{
	char what[512];

	snprintf(what, sizeof(what), fmt, a, b);
	snprintf(p->err, p->errlen, "%s:%d: %s", p->cfg->path, p->line, what);
	return 0;
}

static int set_str(char **dst, const char *v)
{
	char *s = strdup(v);

	if (!s)
		return -ENOMEM;
	free(*dst);
	*dst = s;
	return 0;
}

static int push_str(char ***arr, unsigned *n, const char *v)
{
	char **a = realloc(*arr, (*n + 1) * sizeof(**arr));

	if (!a)
		return -ENOMEM;
	*arr = a;
	a[*n] = strdup(v);
	if (!a[*n])
		return -ENOMEM;
	(*n)++;
	return 0;
}

/* "HH:MM" -> minutes after midnight */
static int parse_hhmm(const char *s, int *min)
{
	unsigned h, m;
	char tail;

	if (sscanf(s, "%2u:%2u%c", &h, &m, &tail) != 2 || h > 23 || m > 59)
		return -EINVAL;
	*min = (int)(h * 60 + m);
	return 0;
}

static int parse_window(const char *v, struct vm_config *vm)
{
	char a[16], b[16];
	const char *dash = strchr(v, '-');

	if (!dash || dash - v >= (long)sizeof(a) ||
	    strlen(dash + 1) >= sizeof(b))
		return -EINVAL;
	memcpy(a, v, (size_t)(dash - v));
	a[dash - v] = '\0';
	strcpy(b, dash + 1);
	if (parse_hhmm(a, &vm->window_start) || parse_hhmm(b, &vm->window_end))
		return -EINVAL;
	vm->auto_resync = true;
	return 0;
}

static bool valid_hostport(const char *v)
{
	const char *colon = strrchr(v, ':');
	char *end;
	long port;

	if (!colon || colon == v)
		return false;
	port = strtol(colon + 1, &end, 10);
	return *end == '\0' && port > 0 && port < 65536;
}

/* A whole number in [min, max], nothing else on the value. */
static int parse_uint(const char *v, unsigned min, unsigned max, unsigned *out)
{
	unsigned long n;
	char *end;

	if (v[0] < '0' || v[0] > '9')
		return -EINVAL;
	errno = 0;
	n = strtoul(v, &end, 10);
	if (errno || *end || n < min || n > max)
		return -EINVAL;
	*out = (unsigned)n;
	return 0;
}

#define JOB_SET_SNAPSHOT 1u
#define JOB_SET_MAX_PASSES 2u
#define JOB_SET_RETRIES 4u
#define JOB_SET_RETRY_INTERVAL 8u
#define JOB_SET_PARALLEL_DISKS 16u

/*
 * The keys a job takes from its VM, or from [agent] as the default:
 * 1 when @name is one of them and its value is good, 0 after an error,
 * -1 when @name is another key.
 */
static int job_key(struct parse *p, struct job_settings *js, unsigned *set,
		   const char *name, const char *value)
{
	char range[64];

	if (!strcmp(name, "snapshot")) {
		if (snap_mode_parse(value, &js->snapshot))
			return bad(
				p,
				"snapshot: expected auto, reflink or none, not '%s'",
				value, "");
		*set |= JOB_SET_SNAPSHOT;
		return 1;
	}
	if (!strcmp(name, "max-passes")) {
		snprintf(range, sizeof(range), "1 to %u",
			 CONFIG_MAX_PASSES_MAX);
		if (parse_uint(value, 1, CONFIG_MAX_PASSES_MAX,
			       &js->max_passes))
			return bad(
				p,
				"max-passes: '%s' is not a whole number from %s",
				value, range);
		*set |= JOB_SET_MAX_PASSES;
		return 1;
	}
	if (!strcmp(name, "retries")) {
		snprintf(range, sizeof(range), "0 to %u", CONFIG_RETRIES_MAX);
		if (parse_uint(value, 0, CONFIG_RETRIES_MAX, &js->retries))
			return bad(
				p,
				"retries: '%s' is not a whole number from %s",
				value, range);
		*set |= JOB_SET_RETRIES;
		return 1;
	}
	if (!strcmp(name, "retry-interval")) {
		snprintf(range, sizeof(range), "1 to %u",
			 CONFIG_RETRY_INTERVAL_MAX);
		if (parse_uint(value, 1, CONFIG_RETRY_INTERVAL_MAX,
			       &js->retry_interval))
			return bad(
				p,
				"retry-interval: '%s' is not a number of seconds from %s",
				value, range);
		*set |= JOB_SET_RETRY_INTERVAL;
		return 1;
	}
	if (!strcmp(name, "parallel-disks")) {
		snprintf(range, sizeof(range), "1 to %u",
			 CONFIG_PARALLEL_DISKS_MAX);
		if (parse_uint(value, 1, CONFIG_PARALLEL_DISKS_MAX,
			       &js->parallel_disks))
			return bad(
				p,
				"parallel-disks: '%s' is not a whole number from %s",
				value, range);
		*set |= JOB_SET_PARALLEL_DISKS;
		return 1;
	}
	return -1;
}

static int agent_key(struct parse *p, const char *name, const char *value)
{
	struct agent_config *c = p->cfg;
	static const struct {
		const char *key;
		size_t off;
	} keys[] = {
		{ "listen", offsetof(struct agent_config, listen) },
		{ "control", offsetof(struct agent_config, control) },
		{ "state-dir", offsetof(struct agent_config, state_dir) },
		{ "psk-file", offsetof(struct agent_config, psk_file) },
		{ "cert-file", offsetof(struct agent_config, cert_file) },
		{ "key-file", offsetof(struct agent_config, key_file) },
		{ "ca-file", offsetof(struct agent_config, ca_file) },
		{ "admin-group", offsetof(struct agent_config, admin_group) },
		{ "metrics-file", offsetof(struct agent_config, metrics_file) },
	};
	unsigned set = 0;
	size_t i;
	int r;

	r = job_key(p, &c->job, &set, name, value);
	if (r >= 0)
		return r;
	if (!strcmp(name, "insecure")) {
		if (strcmp(value, "true") && strcmp(value, "false"))
			return bad(p,
				   "insecure: expected true or false, not '%s'",
				   value, "");
		c->insecure = !strcmp(value, "true");
		return 1;
	}
	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (strcmp(name, keys[i].key))
			continue;
		if (!strcmp(name, "listen") && !valid_hostport(value))
			return bad(p, "listen: '%s' is not ADDR:PORT", value,
				   "");
		/* empty switches the metrics file off; a relative path would
		 * depend on where the agent was started */
		if (!strcmp(name, "metrics-file") && value[0] &&
		    value[0] != '/')
			return bad(p,
				   "metrics-file: '%s' is not an absolute path",
				   value, "");
		if (set_str((char **)((char *)c + keys[i].off), value))
			return bad(p, "out of memory", "", "");
		return 1;
	}
	return bad(p, "unknown key '%s' in [agent]", name, "");
}

static int vm_key(struct parse *p, const char *name, const char *value)
{
	struct vm_config *vm = p->vm;
	struct vhdx_guid g;
	int r;

	r = job_key(p, &vm->job, &vm->job_set, name, value);
	if (r >= 0)
		return r;
	if (!strcmp(name, "id")) {
		if (vhdx_guid_parse(value, &g))
			return bad(p, "id: '%s' is not a GUID", value, "");
		return set_str(&vm->id, value) ? bad(p, "out of memory", "", "")
					       : 1;
	}
	if (!strcmp(name, "role")) {
		if (!strcmp(value, "primary"))
			vm->role = VM_ROLE_PRIMARY;
		else if (!strcmp(value, "replica"))
			vm->role = VM_ROLE_REPLICA;
		else if (!strcmp(value, "extended-replica"))
			vm->role = VM_ROLE_EXTENDED_REPLICA;
		else
			return bad(
				p,
				"role: expected primary, replica or extended-replica, not '%s'",
				value, "");
		return 1;
	}
	if (!strcmp(name, "replica")) {
		if (!valid_hostport(value))
			return bad(p, "replica: '%s' is not HOST:PORT", value,
				   "");
		return set_str(&vm->replica, value)
			       ? bad(p, "out of memory", "", "")
			       : 1;
	}
	if (!strcmp(name, "disk") || !strcmp(name, "exclude")) {
		if (value[0] != '/')
			return bad(p, "%s: '%s' is not an absolute path", name,
				   value);
		if (!strcmp(name, "disk")
			    ? push_str(&vm->disks, &vm->ndisks, value)
			    : push_str(&vm->excludes, &vm->nexcludes, value))
			return bad(p, "out of memory", "", "");
		return 1;
	}
	if (!strcmp(name, "psk-file")) {
		if (value[0] != '/')
			return bad(p, "psk-file: '%s' is not an absolute path",
				   value, "");
		return set_str(&vm->psk_file, value)
			       ? bad(p, "out of memory", "", "")
			       : 1;
	}
	if (!strcmp(name, "allow")) {
		const char *problem = sync_name_pattern_problem(value);

		if (problem)
			return bad(p, "allow: '%s' %s", value, problem);
		if (push_str(&vm->allow, &vm->nallow, value))
			return bad(p, "out of memory", "", "");
		return 1;
	}
	if (!strcmp(name, "auto-resync")) {
		if (parse_window(value, vm))
			return bad(
				p,
				"auto-resync: '%s' is not a window HH:MM-HH:MM",
				value, "");
		return 1;
	}
	return bad(p, "unknown key '%s' in [vm %s]", name, vm->name);
}

static int handler(void *user, const char *section, const char *name,
		   const char *value)
{
	struct parse *p = user;
	struct agent_config *c = p->cfg;
	unsigned i;

	if (p->err[0])
		return 0;
	if (!name) /* a section header alone (inih with
		      INI_CALL_HANDLER_ON_NEW_SECTION) */
		return 1;
	if (!strcmp(section, "agent"))
		return agent_key(p, name, value);
	if (strncmp(section, "vm ", 3) || !section[3])
		return bad(
			p,
			"unknown section [%s] (expected [agent] or [vm NAME])",
			section, "");
	if (!p->vm || strcmp(p->vm->name, section + 3)) {
		struct vm_config *v;

		for (i = 0; i < c->nvms; i++)
			if (!strcmp(c->vms[i].name, section + 3))
				return bad(p, "[vm %s] appears twice",
					   section + 3, "");
		v = realloc(c->vms, (c->nvms + 1) * sizeof(*v));
		if (!v)
			return bad(p, "out of memory", "", "");
		c->vms = v;
		p->vm = &c->vms[c->nvms++];
		memset(p->vm, 0, sizeof(*p->vm));
		p->vm->name = strdup(section + 3);
		p->vm->line = p->line;
		if (!p->vm->name)
			return bad(p, "out of memory", "", "");
	}
	return vm_key(p, name, value);
}

static int defaults(struct agent_config *c)
{
	char port[32];

	snprintf(port, sizeof(port), "0.0.0.0:%d", HVRESYNC_DEFAULT_PORT);
	if ((!c->listen && set_str(&c->listen, port)) ||
	    (!c->control &&
	     set_str(&c->control, "/run/hvresync/control.sock")) ||
	    (!c->state_dir && set_str(&c->state_dir, "/var/lib/hvresync")) ||
	    (!c->admin_group && set_str(&c->admin_group, "hvresync")) ||
	    (!c->psk_file && !c->cert_file && !c->insecure &&
	     set_str(&c->psk_file, "/etc/hvresync/psk")))
		return -ENOMEM;
	return 0;
}

/* [agent] may come after the [vm] sections: a VM takes the defaults for
 * the keys it did not set once the whole file is read. */
static void inherit_job_settings(struct vm_config *vm,
				 const struct job_settings *def)
{
	if (!(vm->job_set & JOB_SET_SNAPSHOT))
		vm->job.snapshot = def->snapshot;
	if (!(vm->job_set & JOB_SET_MAX_PASSES))
		vm->job.max_passes = def->max_passes;
	if (!(vm->job_set & JOB_SET_RETRIES))
		vm->job.retries = def->retries;
	if (!(vm->job_set & JOB_SET_RETRY_INTERVAL))
		vm->job.retry_interval = def->retry_interval;
	if (!(vm->job_set & JOB_SET_PARALLEL_DISKS))
		vm->job.parallel_disks = def->parallel_disks;
}

/* One disk per CPU: a send session's reader hashes on every lane it has,
 * so more disks than CPUs at once only share them. */
static unsigned default_parallel_disks(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 1;
	return n > CONFIG_PARALLEL_DISKS_MAX ? CONFIG_PARALLEL_DISKS_MAX
					     : (unsigned)n;
}

int config_load(const char *path, struct agent_config *cfg, char *err,
		size_t errlen)
{
	struct parse p = { .cfg = cfg, .err = err, .errlen = errlen };
	unsigned i, j, k;
	int ret;

	memset(cfg, 0, sizeof(*cfg));
	err[0] = '\0';
	cfg->job.snapshot = SNAP_AUTO;
	cfg->job.max_passes = CONFIG_DEFAULT_MAX_PASSES;
	cfg->job.retries = CONFIG_DEFAULT_RETRIES;
	cfg->job.retry_interval = CONFIG_DEFAULT_RETRY_INTERVAL;
	cfg->job.parallel_disks = default_parallel_disks();
	cfg->path = strdup(path);
	if (!cfg->path)
		return -ENOMEM;
	p.f = fopen(path, "re");
	if (!p.f) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot read: %s", path,
			 strerror(errno));
		return ret;
	}
	ret = ini_parse_stream(reader, &p, handler, &p);
	fclose(p.f);
	if (ret > 0 && !err[0])
		snprintf(
			err, errlen,
			"%s:%d: not a valid line (expected [section], key = value or a ; comment)",
			path, ret);
	if (err[0])
		return -EINVAL;
	if (defaults(cfg)) {
		snprintf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	if (cfg->cert_file && (!cfg->key_file || !cfg->ca_file)) {
		snprintf(err, errlen,
			 "%s: cert-file needs key-file and ca-file too", path);
		return -EINVAL;
	}
	for (i = 0; i < cfg->nvms; i++)
		inherit_job_settings(&cfg->vms[i], &cfg->job);
	for (i = 0; i < cfg->nvms; i++) {
		struct vm_config *vm = &cfg->vms[i];

		if (vm->role == VM_ROLE_EXTENDED_REPLICA && vm->replica) {
			snprintf(
				err, errlen,
				"%s:%d: [vm %s] is an extended replica, the last hop: it cannot name a replica",
				path, vm->line, vm->name);
			return -EINVAL;
		}
		/* Per-VM credentials belong to one kind of authentication;
		 * silently ignoring one would leave the VM open. */
		if (vm->psk_file && (cfg->cert_file || cfg->insecure)) {
			snprintf(
				err, errlen,
				"%s:%d: [vm %s] has a psk-file, but the agent does not use pre-shared keys (%s)",
				path, vm->line, vm->name,
				cfg->insecure ? "insecure = true"
					      : "cert-file");
			return -EINVAL;
		}
		if (vm->nallow && !cfg->cert_file) {
			snprintf(
				err, errlen,
				"%s:%d: [vm %s] has allow patterns, but the agent does not use certificates (no cert-file)",
				path, vm->line, vm->name);
			return -EINVAL;
		}
		if (vm->role == VM_ROLE_PRIMARY && !vm->replica) {
			snprintf(
				err, errlen,
				"%s:%d: [vm %s] is primary but names no replica = HOST:PORT",
				path, vm->line, vm->name);
			return -EINVAL;
		}
		for (j = 0; j < vm->ndisks; j++) {
			for (k = 0; k < j; k++)
				if (!strcmp(config_basename(vm->disks[j]),
					    config_basename(vm->disks[k]))) {
					snprintf(
						err, errlen,
						"%s:%d: [vm %s] has two disks named %s: disks are paired by file name",
						path, vm->line, vm->name,
						config_basename(vm->disks[j]));
					return -EINVAL;
				}
			for (k = 0; k < vm->nexcludes; k++)
				if (!strcmp(vm->disks[j], vm->excludes[k])) {
					snprintf(
						err, errlen,
						"%s:%d: [vm %s] lists %s as both disk and exclude",
						path, vm->line, vm->name,
						vm->disks[j]);
					return -EINVAL;
				}
		}
	}
	return 0;
}

static void free_strs(char **a, unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++)
		free(a[i]);
	free(a);
}

void config_free(struct agent_config *c)
{
	unsigned i;

	for (i = 0; i < c->nvms; i++) {
		free(c->vms[i].name);
		free(c->vms[i].id);
		free(c->vms[i].replica);
		free_strs(c->vms[i].disks, c->vms[i].ndisks);
		free_strs(c->vms[i].excludes, c->vms[i].nexcludes);
		free(c->vms[i].psk_file);
		free_strs(c->vms[i].allow, c->vms[i].nallow);
	}
	free(c->vms);
	free(c->path);
	free(c->listen);
	free(c->control);
	free(c->state_dir);
	free(c->psk_file);
	free(c->cert_file);
	free(c->key_file);
	free(c->ca_file);
	free(c->admin_group);
	free(c->metrics_file);
	memset(c, 0, sizeof(*c));
}

const struct vm_config *config_find_vm(const struct agent_config *cfg,
				       const char *key)
{
	unsigned i;
	const char *k = key;
	size_t len;

	if (!key)
		return NULL;
	for (i = 0; i < cfg->nvms; i++)
		if (!strcmp(cfg->vms[i].name, key))
			return &cfg->vms[i];
	if (*k == '{')
		k++;
	len = strlen(k);
	if (len && k[len - 1] == '}')
		len--;
	for (i = 0; i < cfg->nvms; i++) {
		const char *id = cfg->vms[i].id;

		if (!id)
			continue;
		if (*id == '{')
			id++;
		if (len >= 36 && !strncasecmp(id, k, 36))
			return &cfg->vms[i];
	}
	return NULL;
}

const char *config_basename(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

bool config_in_window(const struct vm_config *vm, int min)
{
	if (!vm->auto_resync)
		return false;
	if (vm->window_start <= vm->window_end)
		return min >= vm->window_start && min < vm->window_end;
	return min >= vm->window_start ||
	       min < vm->window_end; /* across midnight */
}
