/* SPDX-License-Identifier: MIT */
/*
 * methods.h - the pure steps of the control API's methods (methods.c):
 * reading a request into what it asks for, and judging a requested job
 * transition.  They touch no agent state, so the unit tests
 * (tests/unit/test_methods.c) call them directly.  Each returns 0, or the
 * method's ReturnValue (docs/control-api.md) with one line in @msg.
 */
#ifndef HVRESYNC_DAEMON_METHODS_H
#define HVRESYNC_DAEMON_METHODS_H

#include <stddef.h>
#include <stdint.h>

#include "agent/daemon/config.h"
#include "agent/daemon/job.h"
#include "agent/lib/jsonparse.h"

#define START_TIME_SLACK_US (60LL * 1000000) /* "now" may be this late */
#define MAX_AHEAD_US (7LL * 86400 * 1000000) /* farthest StartTime */

/* A Resynchronize request, checked against the configuration.  The
 * pointers point into the request and the configuration. */
struct resync_request {
	const struct vm_config *vm;
	const struct jv *sources; /* NULL, or disk file name -> path */
	const char *start_text;	  /* StartTime as given, or NULL */
	int64_t start;		  /* when to start; 0: now */
};

/* Read a Resynchronize request at time @now (microseconds since the
 * epoch): its members' types, the VM, StartTime, Sources, and whether
 * the VM is one this agent resynchronizes. */
unsigned resync_parse(const struct agent_config *cfg, const struct jv *req,
		      int64_t now, struct resync_request *out, char *msg,
		      size_t len);

/* A RequestStateChange request. */
struct state_change_request {
	const char *job;    /* InstanceID as given */
	unsigned requested; /* RequestedState */
	int64_t timeout;    /* TimeoutPeriod in microseconds; 0: none */
};

unsigned state_change_parse(const struct jv *req,
			    struct state_change_request *out, char *msg,
			    size_t len);

/* May job @j go where @requested leads?  RSC_OK (nothing to do when
 * *@next is its state) or RSC_STARTED with *@next the state it goes to;
 * else the refusal, with @msg.  Beyond job_transition(), a job that is
 * merging can no longer be stopped. */
unsigned state_change_check(const struct job *j, unsigned requested,
			    unsigned *next, char *msg, size_t len);

#endif
