/* SPDX-License-Identifier: MIT */
/*
 * common.h - what both ends of the resync protocol must agree on
 * (docs/protocol.md): the export-name rule and the "VM:disk" names the
 * agent gives its exports.
 */
#ifndef HVRESYNC_SYNC_COMMON_H
#define HVRESYNC_SYNC_COMMON_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The export-name rule, the only copy: 1-255 bytes of UTF-8, no '/', no
 * '=' (NAME=PATH on the command line), no control characters, not "." or
 * "..".  Returns NULL when @name (@len bytes, not NUL-terminated) obeys
 * it, else a short phrase saying what is wrong ("has a '/' or a control
 * character").
 */
const char *sync_export_name_problem(const char *name, size_t len);
bool sync_export_name_ok(const char *name);

/* The agent's export name of a VM's disk: "VM:FILE" with FILE the last
 * component of @disk_path.  0, -ENAMETOOLONG, or -EINVAL when the result
 * breaks the export-name rule. */
int sync_export_name(char *out, size_t outlen, const char *vm,
		     const char *disk_path);

#endif
