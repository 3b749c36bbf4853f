/* SPDX-License-Identifier: MIT */
/*
 * fuzz_config.c - libFuzzer target for the agent's configuration parser
 * (agent/daemon/config.c, hvresync.conf(5)) over libinih.
 *
 * config_load takes a path, so the input is written to a memfd and read
 * as /proc/self/fd/N.  config_load only reads the file: key, certificate
 * and disk paths it names are stored, never opened.  Beyond "no crash or
 * leak": a refusal is a negative errno with one line, an accepted file
 * has every VM findable by name, and the window helper answers for every
 * minute of the day.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent/daemon/config.h"

#define MAX_FILE (64 * 1024)

static int mfd = -1;
static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct agent_config cfg;
	char err[1024];
	unsigned i;
	int ret, m;

	if (size > MAX_FILE)
		return 0;
	if (mfd < 0) {
		mfd = memfd_create("fuzz_config", MFD_CLOEXEC);
		if (mfd < 0)
			abort();
		snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
	}
	if (ftruncate(mfd, 0) ||
	    (size && pwrite(mfd, data, size, 0) != (ssize_t)size))
		abort();
	ret = config_load(path, &cfg, err, sizeof(err));
	if (ret) {
		if (ret > 0 || !err[0] || strchr(err, '\n')) {
			fprintf(stderr, "refused (%d) without one line: '%s'\n",
				ret, err);
			abort();
		}
		goto out;
	}
	for (i = 0; i < cfg.nvms; i++) {
		const struct vm_config *vm = &cfg.vms[i];

		if (!vm->name || config_find_vm(&cfg, vm->name) == NULL) {
			fprintf(stderr, "[vm %s] not found by its name\n",
				vm->name ? vm->name : "(null)");
			abort();
		}
		if (vm->id)
			config_find_vm(&cfg, vm->id);
		for (m = 0; m < 24 * 60; m += 7)
			config_in_window(vm, m);
		for (unsigned k = 0; k < vm->ndisks; k++)
			config_basename(vm->disks[k]);
	}
out:
	config_free(&cfg);
	return 0;
}
