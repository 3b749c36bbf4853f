/* SPDX-License-Identifier: MIT */
/* errmsg.c - the one setter of struct vhdx_error in agent/sync/. */
#include <stdarg.h>
#include <stdio.h>

#include "agent/sync/errmsg.h"

void sync_seterr(struct vhdx_error *err, const char *fmt, ...)
{
	va_list ap;

	/* Callers that only want the return code pass NULL. */
	if (!err)
		return;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
}
