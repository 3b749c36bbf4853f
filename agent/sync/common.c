/* SPDX-License-Identifier: MIT */
/* common.c - what both protocol ends agree on (common.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "agent/sync/common.h"
#include "agent/sync/proto.h"
#include "vhdx/le.h"

/* Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
static bool utf8_ok(const uint8_t *s, size_t n)
{
	size_t i = 0, k, need;
	uint32_t cp, min;

	while (i < n) {
		uint8_t b = s[i++];

		if (b < 0x80)
			continue;
		if ((b & 0xE0) == 0xC0) {
			need = 1, cp = b & 0x1F, min = 0x80;
		} else if ((b & 0xF0) == 0xE0) {
			need = 2, cp = b & 0x0F, min = 0x800;
		} else if ((b & 0xF8) == 0xF0) {
			need = 3, cp = b & 0x07, min = 0x10000;
		} else {
			return false;
		}
		if (n - i < need)
			return false;
		for (k = 0; k < need; k++) {
			if ((s[i] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (s[i++] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
	}
	return true;
}

const char *sync_export_name_problem(const char *name, size_t len)
{
	const uint8_t *s = (const uint8_t *)name;
	size_t i;

	if (len < 1 || len > PROTO_NAME_MAX)
		return "is not 1 to 255 bytes long";
	for (i = 0; i < len; i++)
		if (s[i] == '/' || s[i] == '=' || s[i] < 0x20 || s[i] == 0x7F)
			return "has a '/', a '=' or a control character";
	if ((len == 1 && s[0] == '.') ||
	    (len == 2 && s[0] == '.' && s[1] == '.'))
		return "is '.' or '..'";
	if (!utf8_ok(s, len))
		return "is not UTF-8";
	return NULL;
}

bool sync_export_name_ok(const char *name)
{
	return name && !sync_export_name_problem(name, strlen(name));
}

int sync_export_name(char *out, size_t outlen, const char *vm,
		     const char *disk_path)
{
	const char *slash = strrchr(disk_path, '/');
	const char *file = slash ? slash + 1 : disk_path;

	if ((size_t)snprintf(out, outlen, "%s:%s", vm, file) >= outlen)
		return -ENAMETOOLONG;
	return sync_export_name_ok(out) ? 0 : -EINVAL;
}

/* ---- hashing ------------------------------------------------------------- */

uint8_t sync_hash_id(enum ur_hash_algo algo)
{
	return algo == UR_HASH_SHA256 ? PROTO_HASH_SHA256 : PROTO_HASH_XXH3_128;
}

enum ur_hash_algo sync_hash_algo(uint8_t id)
{
	return id == PROTO_HASH_SHA256 ? UR_HASH_SHA256 : UR_HASH_XXH3_128;
}

uint64_t sync_seed_key(const uint8_t seed[16])
{
	return le64_get(seed);
}

const uint8_t *sync_zero_block_hash(const struct sync_zero_hashes *z,
				    uint32_t bs, uint32_t len)
{
	return len == bs ? z->block : z->block_last;
}

const uint8_t *sync_zero_sub_hash(const struct sync_zero_hashes *z,
				  uint32_t left)
{
	return left >= PROTO_SUBBLOCK ? z->sub : z->sub_last;
}

/* ---- ERROR frames -------------------------------------------------------- */

int sync_error_errno(uint32_t code)
{
	switch (code) {
	case PROTO_ERR_UNKNOWN_EXPORT:
		return -ENOENT;
	case PROTO_ERR_BUSY:
		return -EBUSY;
	case PROTO_ERR_IN_USE: /* not -EBUSY: that one is retried */
		return -ETXTBSY;
	case PROTO_ERR_GEOMETRY:
		return -EXDEV;
	case PROTO_ERR_UNSUPPORTED:
		return -EPROTONOSUPPORT;
	case PROTO_ERR_PROTOCOL:
		return -EPROTO;
	case PROTO_ERR_NOT_AUTHORIZED:
		return -EACCES;
	}
	return -EIO;
}

void sync_error_vmsg(struct msg *m, uint32_t code, const char *fmt, va_list ap)
{
	memset(m, 0, sizeof(*m));
	m->type = PROTO_ERROR;
	m->u.error.code = code;
	vsnprintf(m->u.error.message, sizeof(m->u.error.message), fmt, ap);
	m->u.error.message_len = (uint16_t)strlen(m->u.error.message);
}

void sync_error_msg(struct msg *m, uint32_t code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	sync_error_vmsg(m, code, fmt, ap);
	va_end(ap);
}

/* ---- per-VM authorization ------------------------------------------------ */

static char ascii_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool equal_nocase(const char *a, const char *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (ascii_lower(a[i]) != ascii_lower(b[i]))
			return false;
	return true;
}

bool sync_name_match(const char *pattern, const char *name)
{
	size_t plen, nlen, rest, label;

	if (!pattern || !name || !*pattern || !*name)
		return false;
	plen = strlen(pattern);
	nlen = strlen(name);
	if (pattern[0] != '*')
		return plen == nlen && equal_nocase(pattern, name, nlen);
	/* "*.REST": one label, then ".REST" exactly. */
	if (plen < 3 || pattern[1] != '.')
		return false;
	rest = plen - 1; /* ".REST" */
	if (nlen <= rest)
		return false;
	label = nlen - rest;
	if (!equal_nocase(pattern + 1, name + label, rest))
		return false;
	/* The label a '*' stands for: no dot (one label only), and no '*'
	 * of the certificate's own. */
	return !memchr(name, '.', label) && !memchr(name, '*', label);
}

const char *sync_name_pattern_problem(const char *pattern)
{
	const char *p;

	if (!pattern || !*pattern)
		return "is empty";
	for (p = pattern; *p; p++)
		if ((unsigned char)*p <= 0x20 || *p == 0x7F || *p == ',')
			return "has a space, a comma or a control character";
	if (pattern[0] == '*') {
		if (pattern[1] != '.' || !pattern[2] || pattern[2] == '.')
			return "has a '*' that is not a whole leftmost label "
			       "('*.example.com')";
		if (strchr(pattern + 1, '*'))
			return "has a '*' past its leftmost label";
		return NULL;
	}
	if (strchr(pattern, '*'))
		return "has a '*' that is not a whole leftmost label "
		       "('*.example.com')";
	return NULL;
}

static void say(char *why, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void say(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!why || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
}

bool sync_authorized(const struct sync_vm_auth *auth,
		     const struct sync_cred *cred, char *why, size_t whylen)
{
	const char *vm = auth ? auth->vm : "(none)";
	unsigned i, k;

	switch (cred->kind) {
	case SYNC_CRED_PLAIN:
		/* --insecure, loopback only: nothing to tell peers apart. */
		return true;
	case SYNC_CRED_KEY:
		if (auth && auth->key_id) {
			/* The VM's own key, whatever else the peer holds. */
			if (cred->key_id && !strcmp(cred->key_id, auth->key_id))
				return true;
			say(why, whylen,
			    "VM %s admits its own key only, and the peer "
			    "used %s",
			    vm,
			    cred->agent_key ? "the agent key"
					    : "another VM's key");
			return false;
		}
		if (cred->agent_key)
			return true;
		say(why, whylen,
		    "the peer used another VM's key, and VM %s has no key of "
		    "its own (it admits the agent key)",
		    vm);
		return false;
	case SYNC_CRED_CERT:
		if (!auth || !auth->nallow)
			return true;
		for (i = 0; i < auth->nallow; i++)
			for (k = 0; k < cred->nnames; k++)
				if (sync_name_match(auth->allow[i],
						    cred->names[k]))
					return true;
		say(why, whylen,
		    "no name of the peer's certificate matches an allow "
		    "pattern of VM %s",
		    vm);
		return false;
	}
	say(why, whylen, "unknown kind of authentication");
	return false;
}
