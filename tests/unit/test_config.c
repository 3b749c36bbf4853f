/* SPDX-License-Identifier: MIT */
/*
 * test_config.c - hvresync.conf parsing (config.c): the documented keys
 * and defaults, VM lookup by name and id, the auto-resync window, and that
 * every mistake is refused as "FILE:LINE: problem" with the right line.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent/daemon/config.h"

static char dir[] = "/tmp/test_config.XXXXXX";
static char path[600];

static int setup(void **state)
{
	(void)state;
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof(path), "%s/hvresync.conf", dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	unlink(path);
	return rmdir(dir);
}

static void write_conf(const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static const char example[] =
	"; the example of issue 5\n"
	"[agent]\n"
	"listen = 0.0.0.0:7500          ; peers, TLS\n"
	"control = /run/hvresync/control.sock\n"
	"state-dir = /var/lib/hvresync\n"
	"psk-file = /etc/hvresync/psk   ; or cert-file / key-file / ca-file\n"
	"admin-group = hvresync         ; besides root, who may call the control API\n"
	"\n"
	"[vm web01]\n"
	"id = 0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a21\n"
	"role = primary                 ; primary | replica\n"
	"replica = 10.0.0.2:7433        ; the recovery agent\n"
	"disk = /srv/vms/web01/os.vhdx  ; replication-enabled disks, any number\n"
	"disk = /srv/vms/web01/data.vhdx\n"
	"exclude = /srv/vms/web01/swap.vhdx   ; never read or sent\n"
	"auto-resync = 18:30-06:00      ; optional window, local time\n"
	"\n"
	"[vm db01]\n"
	"role = replica\n"
	"disk = /srv/replica/db01/db.vhdx\n";

static void test_example(void **state)
{
	struct agent_config c;
	const struct vm_config *vm;
	char err[512];

	(void)state;
	write_conf(example);
	if (config_load(path, &c, err, sizeof(err)))
		fail_msg("%s", err);
	assert_string_equal(c.listen, "0.0.0.0:7500");
	assert_string_equal(c.control, "/run/hvresync/control.sock");
	assert_string_equal(c.state_dir, "/var/lib/hvresync");
	assert_string_equal(c.psk_file, "/etc/hvresync/psk");
	assert_string_equal(c.admin_group, "hvresync");
	assert_false(c.insecure);
	assert_int_equal(c.nvms, 2);

	vm = config_find_vm(&c, "web01");
	assert_non_null(vm);
	assert_int_equal(vm->role, VM_ROLE_PRIMARY);
	assert_string_equal(vm->replica, "10.0.0.2:7433");
	assert_int_equal(vm->ndisks, 2);
	assert_string_equal(vm->disks[0], "/srv/vms/web01/os.vhdx");
	assert_string_equal(vm->disks[1], "/srv/vms/web01/data.vhdx");
	assert_int_equal(vm->nexcludes, 1);
	assert_string_equal(vm->excludes[0], "/srv/vms/web01/swap.vhdx");
	assert_true(vm->auto_resync);
	assert_int_equal(vm->window_start, 18 * 60 + 30);
	assert_int_equal(vm->window_end, 6 * 60);

	/* by id: plain, braced, any case */
	assert_ptr_equal(
		config_find_vm(&c, "0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a21"), vm);
	assert_ptr_equal(
		config_find_vm(&c, "{0B5E1F3C-6A57-4D0E-9D43-0C1A3E5F7A21}"),
		vm);
	assert_null(config_find_vm(&c, "0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a22"));
	assert_null(config_find_vm(&c, "web"));
	assert_null(config_find_vm(&c, "WEB01")); /* names are exact */
	assert_null(config_find_vm(&c, NULL));

	vm = config_find_vm(&c, "db01");
	assert_non_null(vm);
	assert_int_equal(vm->role, VM_ROLE_REPLICA);
	assert_null(vm->replica);
	assert_false(vm->auto_resync);
	assert_string_equal(config_basename(vm->disks[0]), "db.vhdx");
	config_free(&c);
}

static void test_defaults(void **state)
{
	struct agent_config c;
	char err[512];

	(void)state;
	write_conf("[vm a]\nrole = replica\n");
	if (config_load(path, &c, err, sizeof(err)))
		fail_msg("%s", err);
	assert_string_equal(c.listen, "0.0.0.0:7433");
	assert_string_equal(c.control, "/run/hvresync/control.sock");
	assert_string_equal(c.state_dir, "/var/lib/hvresync");
	assert_string_equal(c.psk_file, "/etc/hvresync/psk");
	assert_string_equal(c.admin_group, "hvresync");
	assert_int_equal(c.vms[0].ndisks, 0);
	config_free(&c);

	/* insecure = true or certificates: no default key file */
	write_conf("[agent]\ninsecure = true\nlisten = 127.0.0.1:9\n");
	if (config_load(path, &c, err, sizeof(err)))
		fail_msg("%s", err);
	assert_true(c.insecure);
	assert_null(c.psk_file);
	config_free(&c);
	write_conf("[agent]\ncert-file = /c\nkey-file = /k\nca-file = /ca\n");
	if (config_load(path, &c, err, sizeof(err)))
		fail_msg("%s", err);
	assert_null(c.psk_file);
	assert_string_equal(c.cert_file, "/c");
	config_free(&c);
}

static void test_window(void **state)
{
	struct vm_config vm = { .auto_resync = true };

	(void)state;
	vm.window_start = 18 * 60 + 30; /* across midnight */
	vm.window_end = 6 * 60;
	assert_true(config_in_window(&vm, 18 * 60 + 30));
	assert_true(config_in_window(&vm, 23 * 60 + 59));
	assert_true(config_in_window(&vm, 0));
	assert_true(config_in_window(&vm, 5 * 60 + 59));
	assert_false(config_in_window(&vm, 6 * 60));
	assert_false(config_in_window(&vm, 12 * 60));
	assert_false(config_in_window(&vm, 18 * 60 + 29));
	vm.window_start = 1 * 60; /* inside one day */
	vm.window_end = 3 * 60;
	assert_true(config_in_window(&vm, 2 * 60));
	assert_false(config_in_window(&vm, 3 * 60));
	assert_false(config_in_window(&vm, 0));
	vm.auto_resync = false;
	assert_false(config_in_window(&vm, 2 * 60));
}

/* TEXT must be refused with "PATH:LINE: " and NEEDLE in the message. */
static void refuse(const char *text, int line, const char *needle)
{
	struct agent_config c;
	char err[512], want[700];

	write_conf(text);
	if (!config_load(path, &c, err, sizeof(err)))
		fail_msg("accepted:\n%s", text);
	config_free(&c);
	if (line > 0)
		snprintf(want, sizeof(want), "%s:%d: ", path, line);
	else if (line < 0) /* some line of the section, which is named */
		snprintf(want, sizeof(want), "%s:", path);
	else
		snprintf(want, sizeof(want), "%s: ", path);
	if (strncmp(err, want, strlen(want)))
		fail_msg("'%s' does not start with '%s'", err, want);
	if (!strstr(err, needle))
		fail_msg("'%s' does not say '%s'", err, needle);
	assert_null(strchr(err, '\n'));
}

static void test_errors(void **state)
{
	(void)state;
	refuse("[agent]\nlisten = 0.0.0.0:7433\ncolour = blue\n", 3, "colour");
	refuse("[agent]\nlisten = nowhere\n", 2, "listen");
	refuse("[agent]\nlisten = 1.2.3.4:70000\n", 2, "listen");
	refuse("[agent]\ninsecure = yes\n", 2, "insecure");
	refuse("[agnet]\nlisten = 1.2.3.4:5\n", 2, "agnet");
	refuse("[vm]\nrole = primary\n", 2, "[vm]");
	refuse("[vm a]\nrole = master\n", 2, "role");
	refuse("[vm a]\nrole = replica\nreplica = host\n", 3, "replica");
	refuse("[vm a]\nrole = replica\ndisk = relative.vhdx\n", 3, "absolute");
	refuse("[vm a]\nrole = replica\nexclude = x.vhdx\n", 3, "absolute");
	refuse("[vm a]\nrole = replica\nid = not-a-guid\n", 3, "GUID");
	refuse("[vm a]\nrole = replica\nauto-resync = 18:30\n", 3, "window");
	refuse("[vm a]\nrole = replica\nauto-resync = 25:00-06:00\n", 3,
	       "window");
	refuse("[vm a]\nrole = replica\nauto-resync = 18:60-06:00\n", 3,
	       "window");
	refuse("[vm a]\nrole = replica\nspeed = 3\n", 3, "speed");
	refuse("[vm a]\nrole = replica\n[vm b]\nrole = replica\n[vm a]\ndisk = /x\n",
	       6, "twice");
	refuse("[agent]\nthis line has no equals sign\n", 2,
	       "not a valid line");
	/* checks over a whole section name the section and a line of it */
	refuse("[agent]\ninsecure = true\n\n[vm web01]\nrole = primary\ndisk = /a.vhdx\n",
	       -1, "[vm web01] is primary but names no replica");
	refuse("[vm a]\nrole = replica\ndisk = /x/os.vhdx\ndisk = /y/os.vhdx\n",
	       -1, "[vm a] has two disks named os.vhdx");
	refuse("[vm a]\nrole = replica\ndisk = /x/os.vhdx\nexclude = /x/os.vhdx\n",
	       -1, "both");
	refuse("[agent]\ncert-file = /c\n", 0, "key-file");
}

/* snapshot, max-passes, retries, retry-interval: defaults, [agent] as
 * the default for every VM (also when it comes after them), [vm] keys
 * override one by one, and bad values are refused on their line. */
static void test_job_settings(void **state)
{
	struct agent_config c;
	const struct vm_config *a, *b;
	char err[512];

	(void)state;
	write_conf("[vm a]\nrole = replica\n");
	if (config_load(path, &c, err, sizeof(err)))
		fail_msg("%s", err);
	assert_int_equal(c.vms[0].job.snapshot, SNAP_AUTO);
	assert_int_equal(c.vms[0].job.max_passes, 3);
	assert_int_equal(c.vms[0].job.retries, 5);
	assert_int_equal(c.vms[0].job.retry_interval, 10);
	config_free(&c);

	write_conf("[vm a]\nrole = replica\nsnapshot = none\nretries = 0\n"
		   "[agent]\nsnapshot = reflink\nmax-passes = 7\n"
		   "retries = 1000\nretry-interval = 300\n"
		   "[vm b]\nrole = replica\nmax-passes = 1\n"
		   "retry-interval = 1\n");
	if (config_load(path, &c, err, sizeof(err)))
		fail_msg("%s", err);
	a = config_find_vm(&c, "a");
	b = config_find_vm(&c, "b");
	assert_non_null(a);
	assert_non_null(b);
	/* a set two keys, the rest come from [agent], written after it */
	assert_int_equal(a->job.snapshot, SNAP_NONE);
	assert_int_equal(a->job.retries, 0);
	assert_int_equal(a->job.max_passes, 7);
	assert_int_equal(a->job.retry_interval, 300);
	assert_int_equal(b->job.snapshot, SNAP_REFLINK);
	assert_int_equal(b->job.max_passes, 1);
	assert_int_equal(b->job.retries, 1000);
	assert_int_equal(b->job.retry_interval, 1);
	config_free(&c);

	refuse("[vm a]\nrole = replica\nsnapshot = lvm\n", 3, "snapshot");
	refuse("[agent]\nsnapshot = Reflink\n", 2, "auto, reflink or none");
	refuse("[vm a]\nrole = replica\nmax-passes = 0\n", 3, "max-passes");
	refuse("[agent]\nmax-passes = 101\n", 2, "1 to 100");
	refuse("[vm a]\nrole = replica\nmax-passes = 3x\n", 3, "'3x'");
	refuse("[agent]\nretries = -1\n", 2, "retries");
	refuse("[vm a]\nrole = replica\nretries = 1001\n", 3, "0 to 1000");
	refuse("[agent]\nretries =\n", 2, "retries");
	refuse("[agent]\nretry-interval = 0\n", 2, "retry-interval");
	refuse("[vm a]\nrole = replica\nretry-interval = 301\n", 3, "1 to 300");
	refuse("[agent]\nretry-interval = 1.5\n", 2, "seconds");
	refuse("[agent]\nretry-interval = 99999999999999999999\n", 2,
	       "retry-interval");
}

/* parallel-disks: one disk per online CPU unless set, [agent] for every
 * VM, [vm] overriding it, and only 1 to 64. */
static void test_parallel_disks(void **state)
{
	struct agent_config c;
	const struct vm_config *a, *b;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	char err[512];

	(void)state;
	if (ncpu < 1)
		ncpu = 1;
	if (ncpu > 64)
		ncpu = 64;
	write_conf("[vm a]\nrole = replica\n");
	if (config_load(path, &c, err, sizeof(err)))
		fail_msg("%s", err);
	assert_int_equal(c.job.parallel_disks, ncpu);
	assert_int_equal(c.vms[0].job.parallel_disks, ncpu);
	config_free(&c);

	write_conf("[vm a]\nrole = replica\nparallel-disks = 1\n"
		   "[vm b]\nrole = replica\n"
		   "[agent]\nparallel-disks = 64\n");
	if (config_load(path, &c, err, sizeof(err)))
		fail_msg("%s", err);
	a = config_find_vm(&c, "a");
	b = config_find_vm(&c, "b");
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(a->job.parallel_disks, 1);
	assert_int_equal(b->job.parallel_disks, 64);
	config_free(&c);

	refuse("[agent]\nparallel-disks = 0\n", 2, "parallel-disks: '0'");
	refuse("[vm a]\nrole = replica\nparallel-disks = 65\n", 3, "1 to 64");
	refuse("[agent]\nlisten = 1.2.3.4:5\nparallel-disks = abc\n", 3,
	       "parallel-disks: 'abc'");
	refuse("[vm a]\nrole = replica\nparallel-disks = -2\n", 3,
	       "parallel-disks");
	refuse("[agent]\nparallel-disks =\n", 2, "parallel-disks");
}

static void test_missing_file(void **state)
{
	struct agent_config c;
	char err[512], p[700];

	(void)state;
	snprintf(p, sizeof(p), "%s/none.conf", dir);
	assert_int_equal(config_load(p, &c, err, sizeof(err)), -2);
	assert_non_null(strstr(err, p));
	config_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_example),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_window),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_job_settings),
		cmocka_unit_test(test_parallel_disks),
		cmocka_unit_test(test_missing_file),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
