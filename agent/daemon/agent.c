/* SPDX-License-Identifier: MIT */
/*
 * agent.c - `hvresync agent`'s lifecycle: set up (state dir, control
 * socket, peer server, restored jobs), the scheduler thread (scheduled
 * starts, auto-resync windows, expiry of finished jobs, exports that
 * could not be added yet), and teardown on SIGTERM.  The daemon serves
 * its replica VMs' disks to peers (serve.h), answers the control API
 * (methods.c) and runs resynchronization jobs (runner.c); jobs and VM
 * states are kept by jobs.c.  See internal.h for the locking.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "agent/daemon/agent.h"
#include "agent/daemon/internal.h"
#include "agent/daemon/metrics.h"
#include "agent/lib/fmt.h"
#include "agent/lib/fsutil.h"
#include "agent/lib/log.h"
#include "agent/sync/proto.h"
#include "agent/sync/push.h"

#define AUTO_RETRY_US (600LL * 1000000) /* after a failed auto-resync */

/* --- scheduler: scheduled starts, auto-resync, expiry, exports --- */

/* Export every disk of the replica VMs; one that cannot be exported yet
 * (its file is not there, say) is tried again every minute. */
static void add_exports(struct agent *a, bool first)
{
	char name[PROTO_NAME_MAX + 1], err[512];
	unsigned i, k;
	int ret;

	if (!a->server)
		return;
	for (i = 0; i < a->cfg.nvms; i++) {
		struct vmrt *rt = &a->vms[i];
		/* Who may open its disks; the server knows its own key. */
		struct sync_vm_auth auth = {
			.vm = rt->cfg->name,
			.allow = (const char *const *)rt->cfg->allow,
			.nallow = rt->cfg->nallow,
		};
		bool all = true;

		if (rt->cfg->role == VM_ROLE_PRIMARY || rt->exported)
			continue;
		for (k = 0; k < rt->cfg->ndisks; k++) {
			ret = jobs_export_name(name, sizeof(name), rt->cfg, k);
			if (ret)
				snprintf(
					err, sizeof(err),
					"export name %s:%s %s", rt->cfg->name,
					config_basename(rt->cfg->disks[k]),
					ret == -ENAMETOOLONG
						? "is too long"
						: "breaks the export-name rule");
			else
				ret = server_add_vm_export(
					a->server, name, rt->cfg->disks[k],
					&auth, err, sizeof(err));
			if (ret == -EEXIST)
				continue;
			if (ret) {
				all = false;
				if (first)
					log_msg(LOG_PRIO_WARNING, NULL,
						"VM %s: cannot export %s (tried again every minute): %s",
						rt->cfg->name,
						rt->cfg->disks[k], err);
				continue;
			}
			log_msg(LOG_PRIO_INFO, NULL,
				"VM %s: exporting %s as %s", rt->cfg->name,
				rt->cfg->disks[k], name);
		}
		rt->exported = all;
	}
}

static int local_minute(int64_t now)
{
	time_t t = (time_t)(now / 1000000);
	struct tm tm;

	if (!localtime_r(&t, &tm))
		return 0;
	return tm.tm_hour * 60 + tm.tm_min;
}

/* Under the lock: drop finished jobs whose TimeBeforeRemoval passed and
 * start scheduled jobs that are due.  Returns when to look again. */
static int64_t run_job_list(struct agent *a, int64_t now, int64_t wake)
{
	struct ajob **pp, *aj;
	int ret;

	for (pp = &a->jobs; (aj = *pp);) {
		runner_reap(aj);
		if (aj->j.finished && !aj->has_thread && !aj->discarding &&
		    now >= aj->j.finished + aj->j.retention) {
			log_msg(LOG_PRIO_INFO, NULL,
				"job %s (VM %s, %s) removed: its TimeBeforeRemoval passed",
				aj->j.id, aj->j.vm,
				job_state_name(aj->j.state));
			jobs_drop_clones(a, aj);
			job_remove(a->jobs_dir, aj->j.id);
			*pp = aj->next;
			jobs_free(aj);
			continue;
		}
		if (aj->j.finished && aj->j.finished + aj->j.retention < wake)
			wake = aj->j.finished + aj->j.retention;
		if (aj->j.state == JS_NEW && !aj->has_thread) {
			if (aj->j.scheduled <= now) {
				ret = runner_start(a, aj);
				if (ret)
					log_msg(LOG_PRIO_ERR, NULL,
						"job %s: cannot start: %s",
						aj->j.id, strerror(-ret));
			} else if (aj->j.scheduled < wake) {
				wake = aj->j.scheduled;
			}
		}
		pp = &aj->next;
	}
	return wake;
}

/* Does @rt need a job from the auto-resync window at local minute @min? */
static bool auto_resync_due(struct agent *a, struct vmrt *rt, int64_t now,
			    int min)
{
	const struct vm_config *vm = rt->cfg;

	return vm->auto_resync && rt->st.state == RS_RESYNC_REQUIRED &&
	       config_in_window(vm, min) && !jobs_active_of(a, vm->name) &&
	       vm->ndisks && vm->replica &&
	       vm_mode(vm) != RM_EXTENDED_REPLICA &&
	       !(rt->last_auto && now - rt->last_auto < AUTO_RETRY_US);
}

/* Under the lock: start a job for every VM that needs a resync and is
 * inside its window. */
static void auto_resync(struct agent *a, int64_t now)
{
	int min = local_minute(now);
	struct ajob *aj;
	unsigned i;

	for (i = 0; i < a->cfg.nvms; i++) {
		struct vmrt *rt = &a->vms[i];
		const struct vm_config *vm = rt->cfg;

		if (!auto_resync_due(a, rt, now, min))
			continue;
		aj = jobs_new(a, vm, NULL, 0, true);
		if (!aj) {
			log_msg(LOG_PRIO_ERR, NULL,
				"VM %s: auto-resync: out of memory", vm->name);
			continue;
		}
		rt->last_auto = now;
		if (job_save(a->jobs_dir, &aj->j, now) || runner_start(a, aj)) {
			log_msg(LOG_PRIO_ERR, NULL,
				"VM %s: auto-resync: cannot start a job",
				vm->name);
			job_remove(a->jobs_dir, aj->j.id);
			jobs_free(aj);
			continue;
		}
		jobs_add(a, aj);
		log_msg(LOG_PRIO_INFO, NULL,
			"VM %s: auto-resync inside its window: job %s",
			vm->name, aj->j.id);
	}
}

static void *scheduler(void *arg)
{
	struct agent *a = arg;
	int64_t next_minute = 0;

	pthread_mutex_lock(&a->lock);
	while (!a->stopping) {
		int64_t now = wall_us();
		int64_t wake = run_job_list(a, now, now + 60 * 1000000LL);
		struct timespec ts;

		if (now >= next_minute || a->recheck) {
			a->recheck = false;
			next_minute = now + 60 * 1000000LL;
			auto_resync(a, now);
			pthread_mutex_unlock(&a->lock);
			add_exports(a, false);
			pthread_mutex_lock(&a->lock);
			jobs_notify_status(a);
			continue; /* look at the jobs again before sleeping */
		}
		if (next_minute < wake)
			wake = next_minute;
		ts.tv_sec = wake / 1000000;
		ts.tv_nsec = (wake % 1000000) * 1000;
		pthread_cond_timedwait(&a->cond, &a->lock, &ts);
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

/* --- start and stop --- */

static void *server_main(void *arg)
{
	struct agent *a = arg;
	int ret = server_run(a->server);

	if (ret)
		log_msg(LOG_PRIO_ERR, NULL, "serve: stopped: %s",
			strerror(-ret));
	return NULL;
}

/* Jobs that were running when the agent stopped run again; a VM whose
 * job vanished is left "resynchronization required". */
static void resume_jobs(struct agent *a)
{
	struct ajob *aj;
	unsigned i;

	pthread_mutex_lock(&a->lock);
	for (aj = a->jobs; aj; aj = aj->next) {
		unsigned s = aj->j.state;

		if (s == JS_STARTING || s == JS_RUNNING ||
		    s == JS_SHUTTING_DOWN) {
			int ret = runner_start(a, aj);

			if (ret)
				log_msg(LOG_PRIO_ERR, NULL,
					"job %s: cannot resume: %s", aj->j.id,
					strerror(-ret));
		}
	}
	for (i = 0; i < a->cfg.nvms; i++) {
		struct vmrt *rt = &a->vms[i];
		struct ajob *act = jobs_active_of(a, rt->cfg->name);

		if (!act && (rt->st.state == RS_RESYNCHRONIZING ||
			     rt->st.state == RS_RESYNC_SUSPENDED))
			jobs_set_vm(a, rt, RS_RESYNC_REQUIRED);
		if (act && act->j.state == JS_SUSPENDED)
			jobs_set_vm(a, rt, RS_RESYNC_SUSPENDED);
	}
	jobs_notify_status(a);
	pthread_mutex_unlock(&a->lock);
}

/* The state dir and its folders, and its lock: one agent per state dir. */
static int open_state_dir(struct agent *a, char *err, size_t errlen)
{
	char *lk;
	int ret;

	a->jobs_dir = fs_path_join(a->cfg.state_dir, "jobs");
	a->vms_dir = fs_path_join(a->cfg.state_dir, "vms");
	a->serve_dir = fs_path_join(a->cfg.state_dir, "serve");
	if (!a->jobs_dir || !a->vms_dir || !a->serve_dir) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if ((ret = fs_mkdir_p(a->cfg.state_dir, 0700)) ||
	    (ret = fs_mkdir_p(a->jobs_dir, 0700)) ||
	    (ret = fs_mkdir_p(a->vms_dir, 0700))) {
		snprintf(err, errlen,
			 "%s: cannot create the state directory: %s",
			 a->cfg.state_dir, strerror(-ret));
		return ret;
	}
	lk = fs_path_join(a->cfg.state_dir, "agent.lock");
	a->lock_fd = lk ? open(lk, O_RDWR | O_CREAT | O_CLOEXEC, 0600) : -1;
	free(lk);
	if (a->lock_fd < 0 || flock(a->lock_fd, LOCK_EX | LOCK_NB)) {
		snprintf(err, errlen, "%s: %s", a->cfg.state_dir,
			 errno == EWOULDBLOCK
				 ? "another agent uses this state directory"
				 : strerror(errno));
		return -EBUSY;
	}
	/* the lock file names the agent, for scripts and kill(1) */
	if (!ftruncate(a->lock_fd, 0))
		dprintf(a->lock_fd, "%d\n", (int)getpid());
	return 0;
}

/* Every VM's state as the last run left it; an unreadable record starts
 * over from 1 (Ready for replication). */
static void load_vm_states(struct agent *a, char *err, size_t errlen)
{
	struct vmrt *rt;
	unsigned i;

	for (i = 0; i < a->cfg.nvms; i++) {
		rt = &a->vms[i];
		rt->cfg = &a->cfg.vms[i];
		if (!vm_state_load(a->vms_dir, rt->cfg->name, &rt->st, err,
				   errlen))
			continue;
		log_msg(LOG_PRIO_WARNING, NULL,
			"VM %s: state record unreadable, starting from 1: %s",
			rt->cfg->name, err);
		vm_state_load("/nonexistent", rt->cfg->name, &rt->st, err,
			      errlen);
	}
}

/*
 * The own keys (psk-file) of the VMs this agent serves, for the server,
 * which admits each for its VM only.  A key that cannot be read stops
 * the agent: serving the VM to the agent key instead would open it.
 */
static int load_vm_keys(struct agent *a, struct tls_vm_key **keys, unsigned *n,
			char *err, size_t errlen)
{
	struct vhdx_error terr;
	unsigned i;
	int ret;

	*n = 0;
	*keys = calloc(a->cfg.nvms ? a->cfg.nvms : 1, sizeof(**keys));
	if (!*keys) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (i = 0; i < a->cfg.nvms; i++) {
		const struct vm_config *vm = &a->cfg.vms[i];

		if (!vm->psk_file || vm->role == VM_ROLE_PRIMARY)
			continue;
		terr.msg[0] = '\0';
		ret = tls_load_psk(vm->psk_file, (*keys)[*n].psk, &terr);
		if (ret) {
			snprintf(err, errlen, "[vm %s] %s", vm->name, terr.msg);
			return ret;
		}
		(*keys)[(*n)++].vm = vm->name;
	}
	return 0;
}

/*
 * One line at start naming the VMs this agent serves that have no
 * credentials of their own, so an admin sees which VMs any peer holding
 * the agent key (or a certificate of the CA) may overwrite.
 */
static void log_open_vms(struct agent *a)
{
	char list[1024];
	size_t n = 0;
	unsigned i;

	list[0] = '\0';
	for (i = 0; i < a->cfg.nvms; i++) {
		const struct vm_config *vm = &a->cfg.vms[i];

		if (vm->role == VM_ROLE_PRIMARY || vm->psk_file || vm->nallow)
			continue;
		if (n < sizeof(list))
			n += (size_t)snprintf(list + n, sizeof(list) - n,
					      "%s%s", n ? ", " : "", vm->name);
	}
	if (!list[0])
		return;
	log_msg(LOG_PRIO_NOTICE, NULL,
		"authorization: VMs any authenticated peer may write (%s): %s",
		a->cfg.insecure	   ? "plain TCP, no authentication"
		: a->cfg.cert_file ? "any certificate of the CA, no allow"
				   : "the agent key, no psk-file of their own",
		list);
}

/* The peer server: listen, export the replica VMs' disks, serve. */
static int start_server(struct agent *a, char *err, size_t errlen)
{
	struct server_config scfg;
	struct tls_vm_key *keys = NULL;
	struct server *srv;
	unsigned nkeys = 0;
	int ret;

	memset(&scfg, 0, sizeof(scfg));
	scfg.listen = a->cfg.listen;
	scfg.tls = a->tls;
	scfg.state_dir = a->serve_dir;
	scfg.merges_finished = true; /* held_finish_merges(), below */
	ret = load_vm_keys(a, &keys, &nkeys, err, errlen);
	scfg.tls.vm_keys = keys;
	scfg.tls.nvm_keys = nkeys;
	srv = ret ? NULL : server_new(&scfg, err, errlen); /* copies keys */
	if (keys)
		explicit_bzero(keys,
			       (a->cfg.nvms ? a->cfg.nvms : 1) * sizeof(*keys));
	free(keys);
	explicit_bzero(scfg.tls.psk, sizeof(scfg.tls.psk));
	if (ret)
		return ret;
	if (!srv)
		return -EINVAL;
	pthread_mutex_lock(&a->lock);
	a->server = srv;
	pthread_mutex_unlock(&a->lock);
	ret = server_listen(a->server, err, errlen);
	if (ret)
		return ret;
	/* Bound but not accepting: a primary that connects now waits in
	 * the backlog (and its handshake timeout) instead of being refused,
	 * while a merge a crash interrupted is finished first.  No session
	 * may see a half-merged image. */
	held_finish_merges(a);
	add_exports(a, true);
	ret = pthread_create(&a->server_thread, NULL, server_main, a);
	if (ret) {
		snprintf(err, errlen, "cannot start the server thread: %s",
			 strerror(ret));
		return -ret;
	}
	a->server_running = true;
	log_msg(LOG_PRIO_INFO, NULL, "serving peers on %s (%s)",
		server_addr(a->server),
		a->cfg.insecure	   ? "plain TCP, loopback only"
		: a->cfg.cert_file ? "TLS 1.3, certificates"
				   : "TLS 1.3, pre-shared key");
	log_open_vms(a);
	return 0;
}

static int setup(struct agent *a, char *err, size_t errlen)
{
	int ret;

	a->vms = calloc(a->cfg.nvms ? a->cfg.nvms : 1, sizeof(*a->vms));
	if (!a->vms) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	ret = open_state_dir(a, err, errlen);
	if (ret)
		return ret;
	load_vm_states(a, err, errlen);
	ret = jobs_load(a);
	if (ret) {
		snprintf(err, errlen, "%s: cannot read jobs: %s", a->jobs_dir,
			 strerror(-ret));
		return ret;
	}
	jobsnap_sweep(a);
	ret = push_security_config(&a->tls, a->cfg.psk_file, a->cfg.cert_file,
				   a->cfg.key_file, a->cfg.ca_file,
				   a->cfg.insecure, err, errlen);
	if (ret)
		return ret;

	/* The control socket first: a second agent on it stops here,
	 * before it binds the peer port. */
	ret = control_server_start(a->cfg.control, a->cfg.admin_group,
				   methods_handle, a, &a->ctl, err, errlen);
	if (ret)
		return ret;
	log_msg(LOG_PRIO_INFO, NULL, "control API on %s", a->cfg.control);
	ret = start_server(a, err, errlen);
	if (ret)
		return ret;

	resume_jobs(a);
	ret = pthread_create(&a->sched_thread, NULL, scheduler, a);
	if (ret) {
		snprintf(err, errlen, "cannot start the scheduler: %s",
			 strerror(ret));
		return -ret;
	}
	a->sched_running = true;
	pthread_mutex_lock(&a->lock);
	a->ready = true;
	pthread_mutex_unlock(&a->lock);
	return metrics_start(a, err, errlen);
}

/* Stop every running job where it is (it resumes at the next start) and
 * wait for the runners. */
static void stop_runners(struct agent *a)
{
	struct ajob *aj;

	pthread_mutex_lock(&a->lock);
	for (aj = a->jobs; aj; aj = aj->next)
		if (aj->has_thread && !aj->thread_done) {
			aj->stop_req = STOP_SHUTDOWN;
			aj->stop = 1;
		}
	pthread_mutex_unlock(&a->lock);
	for (aj = a->jobs; aj; aj = aj->next)
		if (aj->has_thread) {
			pthread_join(aj->thread, NULL);
			aj->has_thread = false;
		}
}

static void teardown(struct agent *a)
{
	struct ajob *aj;
	unsigned i, k;

	pthread_mutex_lock(&a->lock);
	a->stopping = true;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	metrics_stop(); /* it reads the job list, freed below */
	if (a->ctl)
		control_server_stop(a->ctl);
	if (a->sched_running)
		pthread_join(a->sched_thread, NULL);
	stop_runners(a);
	if (a->server_running) {
		server_stop(a->server);
		pthread_join(a->server_thread, NULL);
	}
	if (a->server)
		server_free(a->server);
	while ((aj = a->jobs)) {
		a->jobs = aj->next;
		jobs_free(aj);
	}
	for (i = 0; a->vms && i < a->cfg.nvms; i++) {
		for (k = 0; a->vms[i].merge_note && k < a->cfg.vms[i].ndisks;
		     k++)
			free(a->vms[i].merge_note[k]);
		free(a->vms[i].merge_note);
	}
	free(a->vms);
	free(a->jobs_dir);
	free(a->vms_dir);
	free(a->serve_dir);
	if (a->lock_fd >= 0)
		close(a->lock_fd);
	config_free(&a->cfg);
}

/* --- agent_run() --- */

/*
 * Fork; the parent waits for the child to write one byte to @ready[1]
 * (it is set up and serving), then exits 0, or 2 when the child died
 * first.  Returns in the child, detached from the terminal's session; 0
 * or -errno with @err set.
 */
static int detach(int ready[2], char *err, size_t errlen)
{
	pid_t pid;
	char ok;
	int ret, status;

	if (pipe2(ready, O_CLOEXEC)) {
		ret = -errno;
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return ret;
	}
	pid = fork();
	if (pid < 0) {
		ret = -errno;
		snprintf(err, errlen, "fork: %s", strerror(errno));
		return ret;
	}
	if (pid > 0) {
		close(ready[1]);
		if (read(ready[0], &ok, 1) == 1)
			_exit(0);
		waitpid(pid, &status, 0);
		_exit(2);
	}
	close(ready[0]);
	setsid();
	return 0;
}

/* The detached child is ready: log to syslog, let go of the terminal,
 * and let the waiting parent exit. */
static void detached_ready(int ready_fd)
{
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

	log_use_syslog();
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		close(fd);
	}
	if (write(ready_fd, "R", 1) != 1)
		log_msg(LOG_PRIO_WARNING, NULL,
			"cannot tell the parent we are ready");
	close(ready_fd);
}

/* Until SIGTERM or SIGINT; SIGHUP only says what to do instead. */
static int wait_for_stop(const sigset_t *set)
{
	int sig;

	for (;;) {
		if (sigwait(set, &sig))
			continue;
		if (sig != SIGHUP)
			return sig;
		log_msg(LOG_PRIO_NOTICE, NULL,
			"SIGHUP: the configuration is read at start only; restart the agent to reload it");
	}
}

/*
 * Run the agent until SIGTERM or SIGINT: load the configuration, detach
 * unless @o->foreground (the parent returns once the child is ready, so
 * systemd's Type=forking and a shell both see setup errors), serve, stop.
 */
int agent_run(const struct agent_options *o, char *err, size_t errlen)
{
	struct agent a;
	int ret, sig, ready[2] = { -1, -1 };
	sigset_t set;

	memset(&a, 0, sizeof(a));
	a.lock_fd = -1;
	a.bwlimit = o->bwlimit;
	a.retention = o->retention_us;
	metrics_reset();

	ret = config_load(o->config, &a.cfg, err, errlen);
	if (ret) {
		config_free(&a.cfg);
		return ret;
	}
	log_use_journal();
	if (!o->foreground) {
		ret = detach(ready, err, errlen);
		if (ret) {
			config_free(&a.cfg);
			return ret;
		}
	}

	/* Signals are taken by this thread alone, with sigwait(). */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	pthread_mutex_init(&a.lock, NULL);
	pthread_cond_init(&a.cond, NULL);

	ret = setup(&a, err, errlen);
	if (ret) {
		teardown(&a);
		log_use_plain(); /* the caller reports @err as the CLI does */
		return ret < 0 ? ret : -EINVAL;
	}
	log_msg(LOG_PRIO_INFO, NULL,
		"agent ready: %u VM(s) from %s, state in %s", a.cfg.nvms,
		o->config, a.cfg.state_dir);
	sd_notify(0, "READY=1");
	if (!o->foreground)
		detached_ready(ready[1]);
	sig = wait_for_stop(&set);
	log_msg(LOG_PRIO_INFO, NULL,
		"signal %d: stopping (running jobs resume at the next start)",
		sig);
	sd_notify(0, "STOPPING=1");
	teardown(&a);
	pthread_mutex_destroy(&a.lock);
	pthread_cond_destroy(&a.cond);
	log_msg(LOG_PRIO_INFO, NULL, "agent stopped");
	return 0;
}
