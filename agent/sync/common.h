/* SPDX-License-Identifier: MIT */
/*
 * common.h - what both ends of the resync protocol must agree on
 * (docs/protocol.md), written once: the export-name rule and the "VM:disk"
 * names the agent gives its exports, the hash ids and seed of HELLO, the
 * window limits, the hashes of zeros, ERROR frames and who may open which
 * VM's exports (per-VM authorization).  Pure functions
 * only, so the frame fuzzer links them without OpenSSL or io_uring; what
 * both ends set up the same way (TLS options, the reader) is in setup.h.
 */
#ifndef HVRESYNC_SYNC_COMMON_H
#define HVRESYNC_SYNC_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/sync/proto.h"
#include "uring/hash.h"

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

/* HELLO's hash id (PROTO_HASH_*) of a reader algorithm, and back. */
uint8_t sync_hash_id(enum ur_hash_algo algo);
enum ur_hash_algo sync_hash_algo(uint8_t id);

/* The key both ends hash with: the first 8 bytes of HELLO's seed,
 * little-endian (docs/protocol.md). */
uint64_t sync_seed_key(const uint8_t seed[16]);

/*
 * The flow-control window in blocks: the recovery side announces one
 * within these bounds and the primary refuses anything larger, since the
 * window bounds the memory of both.
 */
#define SYNC_WINDOW_MIN 8u
#define SYNC_WINDOW_MAX (1u << 16)
#define SYNC_WINDOW_BYTES_MAX (256u << 20)

/* 4 KiB pieces in a block of @len bytes (the last piece may be short). */
static inline unsigned sync_nsub(uint32_t len)
{
	return (len + PROTO_SUBBLOCK - 1) / PROTO_SUBBLOCK;
}

/*
 * What zeros hash to under the session's key.  A block or piece that reads
 * as zeros is never read nor hashed, so both ends need these to compare
 * it; the disk's last block and last piece may be short.
 */
struct sync_zero_hashes {
	uint8_t block[PROTO_HASH_LEN];
	uint8_t block_last[PROTO_HASH_LEN];
	uint8_t sub[PROTO_HASH_LEN];
	uint8_t sub_last[PROTO_HASH_LEN];
};

/* The zero hash of a block of @len bytes (@bs: the block size), and of a
 * 4 KiB piece with @left bytes of its block from its start on (the piece
 * is short when @left is). */
const uint8_t *sync_zero_block_hash(const struct sync_zero_hashes *z,
				    uint32_t bs, uint32_t len);
const uint8_t *sync_zero_sub_hash(const struct sync_zero_hashes *z,
				  uint32_t left);

/*
 * The errno a primary reports for an ERROR code from the recovery side:
 * -ENOENT unknown export, -EBUSY busy (retried), -ETXTBSY in use (not
 * retried), -EXDEV geometry, -EPROTONOSUPPORT version or option, -EPROTO
 * protocol error, -EACCES not authorized for the export's VM (a refusal,
 * not a transient failure: never retried), -EIO anything else.
 */
int sync_error_errno(uint32_t code);

/* ---- per-VM authorization (issue 15) ------------------------------------ */

/* How a connection authenticated, as the recovery side judges it. */
enum sync_cred_kind {
	SYNC_CRED_PLAIN, /* plain TCP on loopback: tests, no identity */
	SYNC_CRED_KEY,	 /* a pre-shared key (the agent's or a VM's) */
	SYNC_CRED_CERT,	 /* an X.509 certificate the CA signed */
};

struct sync_cred {
	enum sync_cred_kind kind;
	/* SYNC_CRED_KEY: the key's id (tls_psk_key_id(), not secret), and
	 * whether it is the agent-wide key. */
	const char *key_id;
	bool agent_key;
	const char *const *names; /* SYNC_CRED_CERT: subject CN, DNS SANs */
	unsigned nnames;
};

/* Who may open the exports of one VM ([vm NAME] of hvresync.conf). */
struct sync_vm_auth {
	const char *vm;
	const char *key_id;	  /* psk-file: the id of the VM's own key,
				   * the only key it admits; NULL: none */
	const char *const *allow; /* allow = PATTERN: certificate names */
	unsigned nallow;
};

/*
 * Does certificate name @name match @pattern: equal ignoring ASCII case,
 * or @pattern is "*.REST" and @name is exactly one more label (not empty,
 * no '.', no '*') in front of REST: "*.example.com" matches
 * "a.example.com", not "a.b.example.com" nor "example.com".
 */
bool sync_name_match(const char *pattern, const char *name);
/* NULL when @pattern is a valid allow pattern, else what is wrong. */
const char *sync_name_pattern_problem(const char *pattern);

/*
 * May @cred open an export of the VM @auth describes (NULL: an export
 * with no VM, `hvresync serve`'s own)?  A VM with its own key admits
 * that key only; the agent key admits only VMs without their own key, so
 * a VM's key admits no other VM; a VM with allow patterns admits only
 * certificates with a name matching one, one without admits any the CA
 * signed; plain TCP (loopback tests) admits everything.  When refused, @why (if
 * not NULL) gets the reason for the log, without secrets.
 */
bool sync_authorized(const struct sync_vm_auth *auth,
		     const struct sync_cred *cred, char *why, size_t whylen);

/* Fill @m as an ERROR frame with @code and a message (cut to fit). */
void sync_error_msg(struct msg *m, uint32_t code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void sync_error_vmsg(struct msg *m, uint32_t code, const char *fmt, va_list ap);

#endif
