/* SPDX-License-Identifier: MIT */
/*
 * proto.c - hvresync protocol v1 frames: header and payload checks,
 * encode/decode of every message type, sending and receiving frames over
 * a struct conn.  docs/protocol.md is the contract.
 *
 * Every length that comes off the wire is checked against the frame
 * length before it is used; a frame whose parts do not add up exactly is
 * malformed, never "read as far as it goes".
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "agent/sync/proto.h"
#include "agent/sync/tls.h"
#include "vhdx/vhdx.h"

/* Coalesce small frames into one TLS record / one send(). */
#define STAGE_LEN (16u << 10)

static void __attribute__((format(printf, 2, 3)))
seterr(struct vhdx_error *err, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
}

/* ---- little-endian access ----------------------------------------------- */

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

/* ---- types and limits --------------------------------------------------- */

static const char *const type_names[PROTO_TYPE_MAX + 1] = {
	[PROTO_HELLO] = "HELLO",	 [PROTO_WELCOME] = "WELCOME",
	[PROTO_ERROR] = "ERROR",	 [PROTO_HASHES] = "HASHES",
	[PROTO_CREDIT] = "CREDIT",	 [PROTO_SUBREQ] = "SUBREQ",
	[PROTO_SUBHASHES] = "SUBHASHES", [PROTO_DATA] = "DATA",
	[PROTO_ZERO] = "ZERO",		 [PROTO_DONE] = "DONE",
	[PROTO_FINISHED] = "FINISHED",
};

/*
 * HELLO's limit is its fixed part plus the longest name: 46 + 255 = 301
 * (docs/protocol.md rounds it to 300, one byte short for a 255-byte name).
 */
static const uint32_t limits[PROTO_TYPE_MAX + 1] = {
	[PROTO_HELLO] = PROTO_HELLO_FIXED + PROTO_NAME_MAX,
	[PROTO_WELCOME] = 64,
	[PROTO_ERROR] = 1100,
	[PROTO_HASHES] = 16 + PROTO_HASH_ENTRY_LEN * PROTO_HASHES_MAX,
	[PROTO_CREDIT] = PROTO_CREDIT_LEN,
	[PROTO_SUBREQ] = PROTO_SUBREQ_LEN,
	[PROTO_SUBHASHES] = PROTO_SUBHASHES_FIXED +
			    PROTO_HASH_LEN * PROTO_SUBHASHES_MAX,
	[PROTO_DATA] = PROTO_MAX_PAYLOAD,
	[PROTO_ZERO] = PROTO_ZERO_LEN,
	[PROTO_DONE] = 0,
	[PROTO_FINISHED] = PROTO_FINISHED_LEN,
};

static bool known_type(unsigned type)
{
	return type >= 1 && type <= PROTO_TYPE_MAX;
}

const char *proto_type_name(unsigned type)
{
	static __thread char buf[16];

	if (known_type(type))
		return type_names[type];
	snprintf(buf, sizeof(buf), "type %u", type);
	return buf;
}

uint32_t proto_limit(unsigned type)
{
	return known_type(type) ? limits[type] : 0;
}

uint8_t proto_known_flags(unsigned type)
{
	return type == PROTO_DATA ? PROTO_DATA_ZSTD : 0;
}

/* ---- header ------------------------------------------------------------- */

void proto_put_header(uint8_t hdr[PROTO_HDR_LEN], uint8_t type,
		      uint8_t flags, uint32_t len, uint32_t crc)
{
	put16(hdr, PROTO_MAGIC);
	hdr[2] = type;
	hdr[3] = flags;
	put32(hdr + 4, len);
	put32(hdr + 8, crc);
}

int proto_parse_header(const uint8_t hdr[PROTO_HDR_LEN], struct frame *f,
		       struct vhdx_error *err)
{
	uint16_t magic = get16(hdr);

	f->type = hdr[2];
	f->flags = hdr[3];
	f->length = get32(hdr + 4);
	f->crc = get32(hdr + 8);
	if (magic != PROTO_MAGIC) {
		/* 0x16 0x03: a TLS record, i.e. the peer speaks TLS. */
		seterr(err, "malformed frame: bad magic 0x%04x%s", magic,
		       hdr[0] == 0x16 && hdr[1] == 0x03 ?
		       " (the peer speaks TLS: is only this side --insecure?)" :
		       "");
		return -EPROTO;
	}
	if (!known_type(f->type)) {
		seterr(err, "malformed frame: unknown type %u", f->type);
		return -EPROTO;
	}
	if (f->flags & ~proto_known_flags(f->type)) {
		seterr(err, "malformed frame: %s with unknown flags 0x%02x",
		       type_names[f->type], f->flags);
		return -EPROTO;
	}
	if (f->length > limits[f->type]) {
		seterr(err, "malformed frame: %s of %u bytes, the limit is %u",
		       type_names[f->type], f->length, limits[f->type]);
		return -EMSGSIZE;
	}
	return 0;
}

/* ---- payload checks shared by decode and encode ------------------------- */

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

/* An export name: 1-255 bytes of UTF-8, no '/', no control characters. */
static int check_name(const uint8_t *s, size_t n, struct vhdx_error *err)
{
	size_t i;

	if (n < 1 || n > PROTO_NAME_MAX) {
		seterr(err, "malformed frame: HELLO name of %zu bytes "
		       "(1 to %u allowed)", n, PROTO_NAME_MAX);
		return -EPROTO;
	}
	for (i = 0; i < n; i++) {
		if (s[i] == '/' || s[i] < 0x20 || s[i] == 0x7F) {
			seterr(err, "malformed frame: HELLO name has a '/' or "
			       "a control character at byte %zu", i);
			return -EPROTO;
		}
	}
	if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) {
		seterr(err, "malformed frame: HELLO name is '.' or '..'");
		return -EPROTO;
	}
	if (!utf8_ok(s, n)) {
		seterr(err, "malformed frame: HELLO name is not UTF-8");
		return -EPROTO;
	}
	return 0;
}

static bool pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* HELLO fields other than the name, once the version is known to be 1. */
static int check_hello(const struct msg_hello *h, struct vhdx_error *err)
{
	uint32_t action = h->flags & (PROTO_HELLO_CHECK | PROTO_HELLO_MERGE |
				      PROTO_HELLO_DISCARD);

	if (h->flags & ~PROTO_HELLO_KNOWN) {
		seterr(err, "HELLO asks for unknown options 0x%x",
		       h->flags & ~PROTO_HELLO_KNOWN);
		return -EPROTONOSUPPORT;
	}
	if (h->hash != PROTO_HASH_XXH3_128 && h->hash != PROTO_HASH_SHA256) {
		seterr(err, "HELLO asks for unknown hash algorithm %u",
		       h->hash);
		return -EPROTONOSUPPORT;
	}
	if (!pow2(h->block_size) || h->block_size < PROTO_BLOCK_MIN ||
	    h->block_size > PROTO_BLOCK_MAX) {
		seterr(err, "HELLO asks for block size %u (a power of two "
		       "from %u to %u is supported)", h->block_size,
		       PROTO_BLOCK_MIN, PROTO_BLOCK_MAX);
		return -EPROTONOSUPPORT;
	}
	if (!pow2(h->logical_sector) || h->logical_sector < 512 ||
	    h->logical_sector > h->block_size) {
		seterr(err, "HELLO has logical sector size %u",
		       h->logical_sector);
		return -EPROTONOSUPPORT;
	}
	/* A session does one thing. */
	if (action && (!pow2(action) ||
		       (h->flags & (PROTO_HELLO_RESTART | PROTO_HELLO_HOLD)))) {
		seterr(err, "malformed frame: HELLO flags 0x%x ask for more "
		       "than one action", h->flags);
		return -EPROTO;
	}
	return 0;
}

static int check_range(const char *what, uint64_t offset, uint64_t length,
		       uint64_t max, struct vhdx_error *err)
{
	if (!length || length > max) {
		seterr(err, "malformed frame: %s length %llu (1 to %llu "
		       "allowed)", what, (unsigned long long)length,
		       (unsigned long long)max);
		return -EPROTO;
	}
	if (offset > UINT64_MAX - length) {
		seterr(err, "malformed frame: %s range %llu+%llu wraps",
		       what, (unsigned long long)offset,
		       (unsigned long long)length);
		return -EPROTO;
	}
	return 0;
}

/* ---- decode ------------------------------------------------------------- */

static int want_len(const char *what, size_t len, size_t want,
		    struct vhdx_error *err)
{
	if (len == want)
		return 0;
	seterr(err, "malformed frame: %s of %zu bytes, expected %zu", what,
	       len, want);
	return -EPROTO;
}

static int decode_hello(const uint8_t *p, size_t len, struct msg_hello *h,
			struct vhdx_error *err)
{
	int ret;

	memset(h, 0, sizeof(*h));
	if (len < 4) {
		seterr(err, "malformed frame: HELLO of %zu bytes", len);
		return -EPROTO;
	}
	/*
	 * The version comes first and decides the layout: a peer speaking
	 * another version gets ERROR 4, not "malformed".
	 */
	h->version = get32(p);
	if (h->version != PROTO_VERSION) {
		seterr(err, "HELLO for protocol version %u (this side speaks "
		       "version %u)", h->version, PROTO_VERSION);
		return -EPROTONOSUPPORT;
	}
	if (len < PROTO_HELLO_FIXED + 1) {
		seterr(err, "malformed frame: HELLO of %zu bytes, at least "
		       "%u expected", len, PROTO_HELLO_FIXED + 1);
		return -EPROTO;
	}
	h->flags = get32(p + 4);
	h->block_size = get32(p + 8);
	h->hash = p[12];
	if (p[13] || p[14] || p[15]) {
		seterr(err, "malformed frame: HELLO reserved bytes not zero");
		return -EPROTO;
	}
	memcpy(h->seed, p + 16, 16);
	h->virtual_size = get64(p + 32);
	h->logical_sector = get32(p + 40);
	h->name_len = get16(p + 44);
	if (len != PROTO_HELLO_FIXED + (size_t)h->name_len) {
		seterr(err, "malformed frame: HELLO of %zu bytes with a "
		       "%u-byte name, expected %u", len, h->name_len,
		       PROTO_HELLO_FIXED + h->name_len);
		return -EPROTO;
	}
	ret = check_name(p + PROTO_HELLO_FIXED, h->name_len, err);
	if (ret)
		return ret;
	memcpy(h->name, p + PROTO_HELLO_FIXED, h->name_len);
	h->name[h->name_len] = '\0';
	return check_hello(h, err);
}

static int decode_error(const uint8_t *p, size_t len, struct msg_error *e,
			struct vhdx_error *err)
{
	size_t i;

	if (len < PROTO_ERROR_FIXED) {
		seterr(err, "malformed frame: ERROR of %zu bytes", len);
		return -EPROTO;
	}
	e->code = get32(p);
	e->message_len = get16(p + 4);
	if (e->message_len > PROTO_ERRMSG_MAX) {
		seterr(err, "malformed frame: ERROR message of %u bytes "
		       "(at most %u)", e->message_len, PROTO_ERRMSG_MAX);
		return -EPROTO;
	}
	if (len != PROTO_ERROR_FIXED + (size_t)e->message_len) {
		seterr(err, "malformed frame: ERROR of %zu bytes with a "
		       "%u-byte message, expected %u", len, e->message_len,
		       PROTO_ERROR_FIXED + e->message_len);
		return -EPROTO;
	}
	/* The message ends up in logs: no control characters get there. */
	for (i = 0; i < e->message_len; i++) {
		uint8_t ch = p[PROTO_ERROR_FIXED + i];

		e->message[i] = (char)(ch < 0x20 || ch == 0x7F ? '?' : ch);
	}
	e->message[e->message_len] = '\0';
	return 0;
}

static int decode_hashes(const uint8_t *p, size_t len, struct msg_hashes *h,
			 struct vhdx_error *err)
{
	uint32_t i;

	if (len < PROTO_HASHES_FIXED) {
		seterr(err, "malformed frame: HASHES of %zu bytes", len);
		return -EPROTO;
	}
	h->first_block = get64(p);
	h->count = get32(p + 8);
	h->entries = p + PROTO_HASHES_FIXED;
	if (h->count < 1 || h->count > PROTO_HASHES_MAX) {
		seterr(err, "malformed frame: HASHES with %u entries (1 to %u "
		       "allowed)", h->count, PROTO_HASHES_MAX);
		return -EPROTO;
	}
	if (len != PROTO_HASHES_FIXED + (size_t)h->count * PROTO_HASH_ENTRY_LEN) {
		seterr(err, "malformed frame: HASHES of %zu bytes with %u "
		       "entries, expected %zu", len, h->count,
		       PROTO_HASHES_FIXED +
		       (size_t)h->count * PROTO_HASH_ENTRY_LEN);
		return -EPROTO;
	}
	if (h->first_block > UINT64_MAX - h->count) {
		seterr(err, "malformed frame: HASHES block range wraps");
		return -EPROTO;
	}
	for (i = 0; i < h->count; i++) {
		uint8_t kind = proto_hash_kind(h, i);

		if (kind != PROTO_KIND_ZERO && kind != PROTO_KIND_DATA) {
			seterr(err, "malformed frame: HASHES entry %u has "
			       "unknown kind %u", i, kind);
			return -EPROTO;
		}
	}
	return 0;
}

static int decode_subhashes(const uint8_t *p, size_t len,
			    struct msg_subhashes *s, struct vhdx_error *err)
{
	if (len < PROTO_SUBHASHES_FIXED) {
		seterr(err, "malformed frame: SUBHASHES of %zu bytes", len);
		return -EPROTO;
	}
	s->block = get64(p);
	s->count = get32(p + 8);
	s->hashes = p + PROTO_SUBHASHES_FIXED;
	if (s->count < 1 || s->count > PROTO_SUBHASHES_MAX) {
		seterr(err, "malformed frame: SUBHASHES with %u hashes (1 to "
		       "%u allowed)", s->count, PROTO_SUBHASHES_MAX);
		return -EPROTO;
	}
	if (len != PROTO_SUBHASHES_FIXED + (size_t)s->count * PROTO_HASH_LEN) {
		seterr(err, "malformed frame: SUBHASHES of %zu bytes with %u "
		       "hashes, expected %zu", len, s->count,
		       PROTO_SUBHASHES_FIXED + (size_t)s->count * PROTO_HASH_LEN);
		return -EPROTO;
	}
	return 0;
}

static int decode_data(uint8_t flags, const uint8_t *p, size_t len,
		       struct msg_data *d, struct vhdx_error *err)
{
	if (len <= PROTO_DATA_FIXED) {
		seterr(err, "malformed frame: DATA of %zu bytes carries no "
		       "data", len);
		return -EPROTO;
	}
	d->offset = get64(p);
	d->length = get32(p + 8);
	d->compressed = flags & PROTO_DATA_ZSTD;
	d->data = p + PROTO_DATA_FIXED;
	d->data_len = (uint32_t)(len - PROTO_DATA_FIXED);
	if (!d->compressed && d->length != d->data_len) {
		seterr(err, "malformed frame: DATA says %u bytes but carries "
		       "%u", d->length, d->data_len);
		return -EPROTO;
	}
	if (d->compressed && d->data_len > PROTO_DATA_MAX + PROTO_DATA_SLACK) {
		seterr(err, "malformed frame: compressed DATA of %u bytes",
		       d->data_len);
		return -EPROTO;
	}
	return check_range("DATA", d->offset, d->length, PROTO_DATA_MAX, err);
}

int proto_decode(uint8_t type, uint8_t flags, const void *payload,
		 size_t len, struct msg *out, struct vhdx_error *err)
{
	const uint8_t *p = payload;

	memset(out, 0, offsetof(struct msg, u));
	out->type = type;
	if (!known_type(type)) {
		seterr(err, "malformed frame: unknown type %u", type);
		return -EPROTO;
	}
	if (flags & ~proto_known_flags(type)) {
		seterr(err, "malformed frame: %s with unknown flags 0x%02x",
		       type_names[type], flags);
		return -EPROTO;
	}
	if (len > limits[type]) {
		seterr(err, "malformed frame: %s of %zu bytes, the limit is %u",
		       type_names[type], len, limits[type]);
		return -EMSGSIZE;
	}
	switch (type) {
	case PROTO_HELLO:
		return decode_hello(p, len, &out->u.hello, err);
	case PROTO_WELCOME:
		if (want_len("WELCOME", len, PROTO_WELCOME_LEN, err))
			return -EPROTO;
		out->u.welcome.version = get32(p);
		out->u.welcome.virtual_size = get64(p + 4);
		out->u.welcome.logical_sector = get32(p + 12);
		out->u.welcome.resume_offset = get64(p + 16);
		out->u.welcome.window = get32(p + 24);
		if (out->u.welcome.version != PROTO_VERSION) {
			seterr(err, "WELCOME for protocol version %u",
			       out->u.welcome.version);
			return -EPROTONOSUPPORT;
		}
		return 0;
	case PROTO_ERROR:
		return decode_error(p, len, &out->u.error, err);
	case PROTO_HASHES:
		return decode_hashes(p, len, &out->u.hashes, err);
	case PROTO_CREDIT:
		if (want_len("CREDIT", len, PROTO_CREDIT_LEN, err))
			return -EPROTO;
		out->u.credit.blocks = get32(p);
		out->u.credit.done_through = get64(p + 4);
		return 0;
	case PROTO_SUBREQ:
		if (want_len("SUBREQ", len, PROTO_SUBREQ_LEN, err))
			return -EPROTO;
		out->u.subreq.block = get64(p);
		return 0;
	case PROTO_SUBHASHES:
		return decode_subhashes(p, len, &out->u.subhashes, err);
	case PROTO_DATA:
		return decode_data(flags, p, len, &out->u.data, err);
	case PROTO_ZERO:
		if (want_len("ZERO", len, PROTO_ZERO_LEN, err))
			return -EPROTO;
		out->u.zero.offset = get64(p);
		out->u.zero.length = get64(p + 8);
		return check_range("ZERO", out->u.zero.offset,
				   out->u.zero.length, UINT64_MAX, err);
	case PROTO_DONE:
		return want_len("DONE", len, 0, err);
	case PROTO_FINISHED:
		if (want_len("FINISHED", len, PROTO_FINISHED_LEN, err))
			return -EPROTO;
		out->u.finished.bytes_written = get64(p);
		out->u.finished.seconds_merge = get32(p + 8);
		return 0;
	}
	return -EPROTO;
}

/* ---- encode ------------------------------------------------------------- */

/*
 * Split @m into a fixed prefix (written to @fixed, at most 64 bytes) and a
 * variable tail (@tail/@tail_len, pointing into @m), after checking it is
 * something proto_decode() accepts.  Returns the prefix length.
 */
static long split_msg(const struct msg *m, uint8_t *fixed,
		      const void **tail, size_t *tail_len, uint8_t *flags,
		      struct vhdx_error *err)
{
	struct vhdx_error why;
	size_t n;
	uint32_t i;
	int ret;

	*tail = NULL;
	*tail_len = 0;
	*flags = 0;
	switch (m->type) {
	case PROTO_HELLO: {
		const struct msg_hello *h = &m->u.hello;

		n = strnlen(h->name, sizeof(h->name));
		ret = check_name((const uint8_t *)h->name, n, &why);
		if (!ret && h->version != PROTO_VERSION) {
			snprintf(why.msg, sizeof(why.msg), "version %u",
				 h->version);
			ret = -EINVAL;
		}
		if (!ret)
			ret = check_hello(h, &why);
		if (ret)
			goto invalid;
		put32(fixed, h->version);
		put32(fixed + 4, h->flags);
		put32(fixed + 8, h->block_size);
		fixed[12] = h->hash;
		fixed[13] = fixed[14] = fixed[15] = 0;
		memcpy(fixed + 16, h->seed, 16);
		put64(fixed + 32, h->virtual_size);
		put32(fixed + 40, h->logical_sector);
		put16(fixed + 44, (uint16_t)n);
		*tail = h->name;
		*tail_len = n;
		return PROTO_HELLO_FIXED;
	}
	case PROTO_WELCOME:
		put32(fixed, m->u.welcome.version);
		put64(fixed + 4, m->u.welcome.virtual_size);
		put32(fixed + 12, m->u.welcome.logical_sector);
		put64(fixed + 16, m->u.welcome.resume_offset);
		put32(fixed + 24, m->u.welcome.window);
		return PROTO_WELCOME_LEN;
	case PROTO_ERROR:
		n = strnlen(m->u.error.message, sizeof(m->u.error.message));
		if (n > PROTO_ERRMSG_MAX) {
			snprintf(why.msg, sizeof(why.msg), "ERROR message "
				 "longer than %u bytes", PROTO_ERRMSG_MAX);
			goto invalid;
		}
		put32(fixed, m->u.error.code);
		put16(fixed + 4, (uint16_t)n);
		*tail = m->u.error.message;
		*tail_len = n;
		return PROTO_ERROR_FIXED;
	case PROTO_HASHES: {
		const struct msg_hashes *h = &m->u.hashes;

		if (h->count < 1 || h->count > PROTO_HASHES_MAX ||
		    !h->entries || h->first_block > UINT64_MAX - h->count) {
			snprintf(why.msg, sizeof(why.msg), "HASHES with %u "
				 "entries", h->count);
			goto invalid;
		}
		for (i = 0; i < h->count; i++)
			if (proto_hash_kind(h, i) > PROTO_KIND_DATA) {
				snprintf(why.msg, sizeof(why.msg), "HASHES "
					 "entry %u of kind %u", i,
					 proto_hash_kind(h, i));
				goto invalid;
			}
		put64(fixed, h->first_block);
		put32(fixed + 8, h->count);
		*tail = h->entries;
		*tail_len = (size_t)h->count * PROTO_HASH_ENTRY_LEN;
		return PROTO_HASHES_FIXED;
	}
	case PROTO_CREDIT:
		put32(fixed, m->u.credit.blocks);
		put64(fixed + 4, m->u.credit.done_through);
		return PROTO_CREDIT_LEN;
	case PROTO_SUBREQ:
		put64(fixed, m->u.subreq.block);
		return PROTO_SUBREQ_LEN;
	case PROTO_SUBHASHES: {
		const struct msg_subhashes *s = &m->u.subhashes;

		if (s->count < 1 || s->count > PROTO_SUBHASHES_MAX ||
		    !s->hashes) {
			snprintf(why.msg, sizeof(why.msg), "SUBHASHES with %u "
				 "hashes", s->count);
			goto invalid;
		}
		put64(fixed, s->block);
		put32(fixed + 8, s->count);
		*tail = s->hashes;
		*tail_len = (size_t)s->count * PROTO_HASH_LEN;
		return PROTO_SUBHASHES_FIXED;
	}
	case PROTO_DATA: {
		const struct msg_data *d = &m->u.data;

		if (check_range("DATA", d->offset, d->length, PROTO_DATA_MAX,
				&why))
			goto invalid;
		if (!d->data || !d->data_len ||
		    (!d->compressed && d->data_len != d->length) ||
		    d->data_len > PROTO_DATA_MAX + PROTO_DATA_SLACK) {
			snprintf(why.msg, sizeof(why.msg), "DATA of %u bytes "
				 "carrying %u", d->length, d->data_len);
			goto invalid;
		}
		put64(fixed, d->offset);
		put32(fixed + 8, d->length);
		*flags = d->compressed ? PROTO_DATA_ZSTD : 0;
		*tail = d->data;
		*tail_len = d->data_len;
		return PROTO_DATA_FIXED;
	}
	case PROTO_ZERO:
		if (check_range("ZERO", m->u.zero.offset, m->u.zero.length,
				UINT64_MAX, &why))
			goto invalid;
		put64(fixed, m->u.zero.offset);
		put64(fixed + 8, m->u.zero.length);
		return PROTO_ZERO_LEN;
	case PROTO_DONE:
		return 0;
	case PROTO_FINISHED:
		put64(fixed, m->u.finished.bytes_written);
		put32(fixed + 8, m->u.finished.seconds_merge);
		return PROTO_FINISHED_LEN;
	}
	seterr(err, "cannot encode message type %u", m->type);
	return -EINVAL;
invalid:
	seterr(err, "cannot encode %s: %s", proto_type_name(m->type),
	       strncmp(why.msg, "malformed frame: ", 17) ? why.msg :
	       why.msg + 17);
	return -EINVAL;
}

long proto_encode(const struct msg *m, void *buf, size_t cap,
		  uint8_t *flags, struct vhdx_error *err)
{
	uint8_t fixed[64];
	const void *tail;
	size_t tail_len;
	long n;

	n = split_msg(m, fixed, &tail, &tail_len, flags, err);
	if (n < 0)
		return n;
	if ((size_t)n + tail_len > cap) {
		seterr(err, "cannot encode %s: %zu bytes do not fit in %zu",
		       proto_type_name(m->type), (size_t)n + tail_len, cap);
		return -EMSGSIZE;
	}
	memcpy(buf, fixed, (size_t)n);
	if (tail_len)
		memcpy((uint8_t *)buf + n, tail, tail_len);
	return n + (long)tail_len;
}

/* ---- send and receive --------------------------------------------------- */

int proto_sendv(struct conn *c, uint8_t type, uint8_t flags,
		const struct iovec *iov, int n, struct vhdx_error *err)
{
	static __thread uint8_t stage[STAGE_LEN];
	uint32_t crc = 0xFFFFFFFFu;
	size_t total = 0, used;
	int i, ret;

	for (i = 0; i < n; i++) {
		total += iov[i].iov_len;
		crc = vhdx_crc32c_update(crc, iov[i].iov_base, iov[i].iov_len);
	}
	if (!known_type(type) || (flags & ~proto_known_flags(type)) ||
	    total > limits[type]) {
		seterr(err, "peer %s: refusing to send a %s of %zu bytes "
		       "with flags 0x%02x", conn_peer(c),
		       proto_type_name(type), total, flags);
		return known_type(type) && total > limits[type] ? -EMSGSIZE :
								 -EINVAL;
	}
	proto_put_header(stage, type, flags, (uint32_t)total, ~crc);
	used = PROTO_HDR_LEN;
	/* Small pieces ride along with the header; big ones go directly. */
	for (i = 0; i < n; i++) {
		if (!iov[i].iov_len)
			continue;
		if (used + iov[i].iov_len <= STAGE_LEN) {
			memcpy(stage + used, iov[i].iov_base, iov[i].iov_len);
			used += iov[i].iov_len;
			continue;
		}
		if (used) {
			ret = conn_write_full(c, stage, used, err);
			if (ret)
				return ret;
			used = 0;
		}
		ret = conn_write_full(c, iov[i].iov_base, iov[i].iov_len, err);
		if (ret)
			return ret;
	}
	return used ? conn_write_full(c, stage, used, err) : 0;
}

int proto_send(struct conn *c, uint8_t type, uint8_t flags,
	       const void *payload, size_t len, struct vhdx_error *err)
{
	struct iovec iov = { .iov_base = (void *)payload, .iov_len = len };

	return proto_sendv(c, type, flags, &iov, 1, err);
}

int proto_send_msg(struct conn *c, const struct msg *m, struct vhdx_error *err)
{
	uint8_t fixed[64], flags;
	struct iovec iov[2];
	const void *tail;
	size_t tail_len;
	long n;

	n = split_msg(m, fixed, &tail, &tail_len, &flags, err);
	if (n < 0)
		return (int)n;
	iov[0].iov_base = fixed;
	iov[0].iov_len = (size_t)n;
	iov[1].iov_base = (void *)tail;
	iov[1].iov_len = tail_len;
	return proto_sendv(c, m->type, flags, iov, 2, err);
}

int proto_recv(struct conn *c, struct frame *f, void *buf, size_t cap,
	       struct vhdx_error *err)
{
	uint8_t hdr[PROTO_HDR_LEN];
	struct vhdx_error why;
	uint32_t crc;
	int ret;

	ret = conn_read_full(c, hdr, sizeof(hdr), err);
	if (ret)
		return ret;
	ret = proto_parse_header(hdr, f, &why);
	if (ret) {
		seterr(err, "peer %s: %s", conn_peer(c), why.msg);
		return ret;
	}
	if (f->length > cap) {
		seterr(err, "peer %s: %s of %u bytes does not fit the %zu-byte "
		       "receive buffer", conn_peer(c), type_names[f->type],
		       f->length, cap);
		return -EMSGSIZE;
	}
	if (f->length) {
		ret = conn_read_full(c, buf, f->length, err);
		if (ret)
			return ret;
	}
	crc = vhdx_crc32c(buf, f->length);
	if (crc != f->crc) {
		seterr(err, "peer %s: malformed frame: %s of %u bytes fails "
		       "its CRC-32C (0x%08x, computed 0x%08x)", conn_peer(c),
		       type_names[f->type], f->length, f->crc, crc);
		return -EPROTO;
	}
	return 0;
}

int proto_recv_msg(struct conn *c, struct msg *m, void *buf, size_t cap,
		   struct vhdx_error *err)
{
	struct vhdx_error why;
	struct frame f;
	int ret;

	ret = proto_recv(c, &f, buf, cap, err);
	if (ret)
		return ret;
	ret = proto_decode(f.type, f.flags, buf, f.length, m, &why);
	if (ret)
		seterr(err, "peer %s: %s", conn_peer(c), why.msg);
	return ret;
}
