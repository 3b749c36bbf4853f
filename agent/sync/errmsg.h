/* SPDX-License-Identifier: MIT */
/*
 * errmsg.h - filling a struct vhdx_error, the one way a message leaves a
 * call in agent/sync/: every function that fails says why in one line.
 */
#ifndef HVRESYNC_SYNC_ERRMSG_H
#define HVRESYNC_SYNC_ERRMSG_H

#include "vhdx/vhdx.h"

/* printf into err->msg (truncated to fit); nothing when @err is NULL. */
void __attribute__((format(printf, 2, 3)))
sync_seterr(struct vhdx_error *err, const char *fmt, ...);

#endif
