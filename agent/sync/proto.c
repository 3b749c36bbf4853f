/* SPDX-License-Identifier: MIT */
/*
 * proto.c - hvresync protocol v1 frames as bytes: header and payload
 * checks, one decoder and one encoder per message type.  Pure: no I/O,
 * no TLS (sending and receiving is wire.c), so the fuzzer links this alone.
 * docs/protocol.md is the contract.
 *
 * Every length that comes off the wire is checked against the frame
 * length before it is used; a frame whose parts do not add up exactly is
 * malformed, never "read as far as it goes".
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "agent/sync/common.h"
#include "agent/sync/errmsg.h"
#include "agent/sync/proto.h"
#include "vhdx/le.h"

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
	[PROTO_SUBHASHES] =
		PROTO_SUBHASHES_FIXED + PROTO_HASH_LEN * PROTO_SUBHASHES_MAX,
	[PROTO_DATA] = PROTO_MAX_PAYLOAD,
	[PROTO_ZERO] = PROTO_ZERO_LEN,
	[PROTO_DONE] = 0,
	[PROTO_FINISHED] = PROTO_FINISHED_LEN,
};

bool proto_known_type(unsigned type)
{
	return type >= 1 && type <= PROTO_TYPE_MAX;
}

const char *proto_type_name(unsigned type)
{
	static __thread char buf[16];

	if (proto_known_type(type))
		return type_names[type];
	snprintf(buf, sizeof(buf), "type %u", type);
	return buf;
}

uint32_t proto_limit(unsigned type)
{
	return proto_known_type(type) ? limits[type] : 0;
}

uint8_t proto_known_flags(unsigned type)
{
	return type == PROTO_DATA ? PROTO_DATA_ZSTD : 0;
}

/* ---- header ------------------------------------------------------------- */

void proto_put_header(uint8_t hdr[PROTO_HDR_LEN], uint8_t type, uint8_t flags,
		      uint32_t len, uint32_t crc)
{
	le16_put(hdr, PROTO_MAGIC);
	hdr[2] = type;
	hdr[3] = flags;
	le32_put(hdr + 4, len);
	le32_put(hdr + 8, crc);
}

int proto_parse_header(const uint8_t hdr[PROTO_HDR_LEN], struct frame *f,
		       struct vhdx_error *err)
{
	uint16_t magic = le16_get(hdr);

	f->type = hdr[2];
	f->flags = hdr[3];
	f->length = le32_get(hdr + 4);
	f->crc = le32_get(hdr + 8);
	if (magic != PROTO_MAGIC) {
		/* 0x16 0x03: a TLS record, i.e. the peer speaks TLS. */
		bool tls = hdr[0] == 0x16 && hdr[1] == 0x03;

		sync_seterr(err, "malformed frame: bad magic 0x%04x%s", magic,
			    tls ? " (the peer speaks TLS: is only this side "
				  "--insecure?)"
				: "");
		return -EPROTO;
	}
	if (!proto_known_type(f->type)) {
		sync_seterr(err, "malformed frame: unknown type %u", f->type);
		return -EPROTO;
	}
	if (f->flags & ~proto_known_flags(f->type)) {
		sync_seterr(err,
			    "malformed frame: %s with unknown flags "
			    "0x%02x",
			    type_names[f->type], f->flags);
		return -EPROTO;
	}
	if (f->length > limits[f->type]) {
		sync_seterr(err,
			    "malformed frame: %s of %u bytes, the limit "
			    "is %u",
			    type_names[f->type], f->length, limits[f->type]);
		return -EMSGSIZE;
	}
	return 0;
}

/* ---- payload checks shared by decode and encode ------------------------- */

/* Both ends refuse the same names: the rule is common.c's, not ours. */
static int check_name(const char *s, size_t n, struct vhdx_error *err)
{
	const char *problem = sync_export_name_problem(s, n);

	if (!problem)
		return 0;
	sync_seterr(err, "malformed frame: HELLO name %s", problem);
	return -EPROTO;
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
		sync_seterr(err, "HELLO asks for unknown options 0x%x",
			    h->flags & ~PROTO_HELLO_KNOWN);
		return -EPROTONOSUPPORT;
	}
	if (h->hash != PROTO_HASH_XXH3_128 && h->hash != PROTO_HASH_SHA256) {
		sync_seterr(err, "HELLO asks for unknown hash algorithm %u",
			    h->hash);
		return -EPROTONOSUPPORT;
	}
	if (!pow2(h->block_size) || h->block_size < PROTO_BLOCK_MIN ||
	    h->block_size > PROTO_BLOCK_MAX) {
		sync_seterr(err,
			    "HELLO asks for block size %u (a power of "
			    "two from %u to %u is supported)",
			    h->block_size, PROTO_BLOCK_MIN, PROTO_BLOCK_MAX);
		return -EPROTONOSUPPORT;
	}
	if (!pow2(h->logical_sector) || h->logical_sector < 512 ||
	    h->logical_sector > h->block_size) {
		sync_seterr(err, "HELLO has logical sector size %u",
			    h->logical_sector);
		return -EPROTONOSUPPORT;
	}
	/* REPASS changes where a held copy starts, so it means something
	 * only on a held copy that keeps what it has (not RESTART). */
	if ((h->flags & PROTO_HELLO_REPASS) &&
	    (!(h->flags & PROTO_HELLO_HOLD) ||
	     (h->flags & PROTO_HELLO_RESTART) || action)) {
		sync_seterr(err,
			    "malformed frame: HELLO flags 0x%x: REPASS goes "
			    "with HOLD only, never with RESTART, CHECK, MERGE "
			    "or DISCARD",
			    h->flags);
		return -EPROTO;
	}
	/* A session does one thing. */
	if (action && (!pow2(action) ||
		       (h->flags & (PROTO_HELLO_RESTART | PROTO_HELLO_HOLD)))) {
		sync_seterr(err,
			    "malformed frame: HELLO flags 0x%x ask for "
			    "more than one action",
			    h->flags);
		return -EPROTO;
	}
	return 0;
}

static int check_range(const char *what, uint64_t offset, uint64_t length,
		       uint64_t max, struct vhdx_error *err)
{
	if (!length || length > max) {
		sync_seterr(err,
			    "malformed frame: %s length %llu (1 to %llu "
			    "allowed)",
			    what, (unsigned long long)length,
			    (unsigned long long)max);
		return -EPROTO;
	}
	if (offset > UINT64_MAX - length) {
		sync_seterr(err, "malformed frame: %s range %llu+%llu wraps",
			    what, (unsigned long long)offset,
			    (unsigned long long)length);
		return -EPROTO;
	}
	return 0;
}

/* ---- decode, one function per type -------------------------------------- */

static int want_len(const char *what, size_t len, size_t want,
		    struct vhdx_error *err)
{
	if (len == want)
		return 0;
	sync_seterr(err, "malformed frame: %s of %zu bytes, expected %zu", what,
		    len, want);
	return -EPROTO;
}

static int decode_hello(const uint8_t *p, size_t len, struct msg_hello *h,
			struct vhdx_error *err)
{
	int ret;

	memset(h, 0, sizeof(*h));
	if (len < 4) {
		sync_seterr(err, "malformed frame: HELLO of %zu bytes", len);
		return -EPROTO;
	}
	/*
	 * The version comes first and decides the layout: a peer speaking
	 * another version gets ERROR 4, not "malformed".
	 */
	h->version = le32_get(p);
	if (h->version != PROTO_VERSION) {
		sync_seterr(err,
			    "HELLO for protocol version %u (this side "
			    "speaks version %u)",
			    h->version, PROTO_VERSION);
		return -EPROTONOSUPPORT;
	}
	if (len < PROTO_HELLO_FIXED + 1) {
		sync_seterr(err,
			    "malformed frame: HELLO of %zu bytes, at "
			    "least %u expected",
			    len, PROTO_HELLO_FIXED + 1);
		return -EPROTO;
	}
	h->flags = le32_get(p + 4);
	h->block_size = le32_get(p + 8);
	h->hash = p[12];
	if (p[13] || p[14] || p[15]) {
		sync_seterr(err, "malformed frame: HELLO reserved bytes not "
				 "zero");
		return -EPROTO;
	}
	memcpy(h->seed, p + 16, 16);
	h->virtual_size = le64_get(p + 32);
	h->logical_sector = le32_get(p + 40);
	h->name_len = le16_get(p + 44);
	if (len != PROTO_HELLO_FIXED + (size_t)h->name_len) {
		sync_seterr(err,
			    "malformed frame: HELLO of %zu bytes with a "
			    "%u-byte name, expected %u",
			    len, h->name_len, PROTO_HELLO_FIXED + h->name_len);
		return -EPROTO;
	}
	ret = check_name((const char *)p + PROTO_HELLO_FIXED, h->name_len, err);
	if (ret)
		return ret;
	memcpy(h->name, p + PROTO_HELLO_FIXED, h->name_len);
	h->name[h->name_len] = '\0';
	return check_hello(h, err);
}

static int decode_welcome(const uint8_t *p, size_t len, struct msg_welcome *w,
			  struct vhdx_error *err)
{
	if (want_len("WELCOME", len, PROTO_WELCOME_LEN, err))
		return -EPROTO;
	w->version = le32_get(p);
	w->virtual_size = le64_get(p + 4);
	w->logical_sector = le32_get(p + 12);
	w->resume_offset = le64_get(p + 16);
	w->window = le32_get(p + 24);
	if (w->version != PROTO_VERSION) {
		sync_seterr(err, "WELCOME for protocol version %u", w->version);
		return -EPROTONOSUPPORT;
	}
	return 0;
}

static int decode_error(const uint8_t *p, size_t len, struct msg_error *e,
			struct vhdx_error *err)
{
	size_t i;

	if (len < PROTO_ERROR_FIXED) {
		sync_seterr(err, "malformed frame: ERROR of %zu bytes", len);
		return -EPROTO;
	}
	e->code = le32_get(p);
	e->message_len = le16_get(p + 4);
	if (e->message_len > PROTO_ERRMSG_MAX) {
		sync_seterr(err,
			    "malformed frame: ERROR message of %u bytes "
			    "(at most %u)",
			    e->message_len, PROTO_ERRMSG_MAX);
		return -EPROTO;
	}
	if (len != PROTO_ERROR_FIXED + (size_t)e->message_len) {
		sync_seterr(err,
			    "malformed frame: ERROR of %zu bytes with a "
			    "%u-byte message, expected %u",
			    len, e->message_len,
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
	size_t want;
	uint32_t i;

	if (len < PROTO_HASHES_FIXED) {
		sync_seterr(err, "malformed frame: HASHES of %zu bytes", len);
		return -EPROTO;
	}
	h->first_block = le64_get(p);
	h->count = le32_get(p + 8);
	h->entries = p + PROTO_HASHES_FIXED;
	if (h->count < 1 || h->count > PROTO_HASHES_MAX) {
		sync_seterr(err,
			    "malformed frame: HASHES with %u entries (1 "
			    "to %u allowed)",
			    h->count, PROTO_HASHES_MAX);
		return -EPROTO;
	}
	want = PROTO_HASHES_FIXED + (size_t)h->count * PROTO_HASH_ENTRY_LEN;
	if (len != want) {
		sync_seterr(err,
			    "malformed frame: HASHES of %zu bytes with "
			    "%u entries, expected %zu",
			    len, h->count, want);
		return -EPROTO;
	}
	if (h->first_block > UINT64_MAX - h->count) {
		sync_seterr(err, "malformed frame: HASHES block range wraps");
		return -EPROTO;
	}
	for (i = 0; i < h->count; i++) {
		uint8_t kind = proto_hash_kind(h, i);

		if (kind != PROTO_KIND_ZERO && kind != PROTO_KIND_DATA) {
			sync_seterr(err,
				    "malformed frame: HASHES entry %u "
				    "has unknown kind %u",
				    i, kind);
			return -EPROTO;
		}
	}
	return 0;
}

static int decode_credit(const uint8_t *p, size_t len, struct msg_credit *c,
			 struct vhdx_error *err)
{
	if (want_len("CREDIT", len, PROTO_CREDIT_LEN, err))
		return -EPROTO;
	c->blocks = le32_get(p);
	c->done_through = le64_get(p + 4);
	return 0;
}

static int decode_subreq(const uint8_t *p, size_t len, struct msg_subreq *s,
			 struct vhdx_error *err)
{
	if (want_len("SUBREQ", len, PROTO_SUBREQ_LEN, err))
		return -EPROTO;
	s->block = le64_get(p);
	return 0;
}

static int decode_subhashes(const uint8_t *p, size_t len,
			    struct msg_subhashes *s, struct vhdx_error *err)
{
	size_t want;

	if (len < PROTO_SUBHASHES_FIXED) {
		sync_seterr(err, "malformed frame: SUBHASHES of %zu bytes",
			    len);
		return -EPROTO;
	}
	s->block = le64_get(p);
	s->count = le32_get(p + 8);
	s->hashes = p + PROTO_SUBHASHES_FIXED;
	if (s->count < 1 || s->count > PROTO_SUBHASHES_MAX) {
		sync_seterr(err,
			    "malformed frame: SUBHASHES with %u hashes "
			    "(1 to %u allowed)",
			    s->count, PROTO_SUBHASHES_MAX);
		return -EPROTO;
	}
	want = PROTO_SUBHASHES_FIXED + (size_t)s->count * PROTO_HASH_LEN;
	if (len != want) {
		sync_seterr(err,
			    "malformed frame: SUBHASHES of %zu bytes "
			    "with %u hashes, expected %zu",
			    len, s->count, want);
		return -EPROTO;
	}
	return 0;
}

static int decode_data(uint8_t flags, const uint8_t *p, size_t len,
		       struct msg_data *d, struct vhdx_error *err)
{
	if (len <= PROTO_DATA_FIXED) {
		sync_seterr(err,
			    "malformed frame: DATA of %zu bytes carries "
			    "no data",
			    len);
		return -EPROTO;
	}
	d->offset = le64_get(p);
	d->length = le32_get(p + 8);
	d->compressed = flags & PROTO_DATA_ZSTD;
	d->data = p + PROTO_DATA_FIXED;
	d->data_len = (uint32_t)(len - PROTO_DATA_FIXED);
	if (!d->compressed && d->length != d->data_len) {
		sync_seterr(err,
			    "malformed frame: DATA says %u bytes but "
			    "carries %u",
			    d->length, d->data_len);
		return -EPROTO;
	}
	if (d->compressed && d->data_len > PROTO_DATA_MAX + PROTO_DATA_SLACK) {
		sync_seterr(err, "malformed frame: compressed DATA of %u bytes",
			    d->data_len);
		return -EPROTO;
	}
	return check_range("DATA", d->offset, d->length, PROTO_DATA_MAX, err);
}

static int decode_zero(const uint8_t *p, size_t len, struct msg_zero *z,
		       struct vhdx_error *err)
{
	if (want_len("ZERO", len, PROTO_ZERO_LEN, err))
		return -EPROTO;
	z->offset = le64_get(p);
	z->length = le64_get(p + 8);
	return check_range("ZERO", z->offset, z->length, UINT64_MAX, err);
}

static int decode_finished(const uint8_t *p, size_t len, struct msg_finished *f,
			   struct vhdx_error *err)
{
	if (want_len("FINISHED", len, PROTO_FINISHED_LEN, err))
		return -EPROTO;
	f->bytes_written = le64_get(p);
	f->seconds_merge = le32_get(p + 8);
	return 0;
}

int proto_decode(uint8_t type, uint8_t flags, const void *payload, size_t len,
		 struct msg *out, struct vhdx_error *err)
{
	const uint8_t *p = payload;

	memset(out, 0, offsetof(struct msg, u));
	out->type = type;
	if (!proto_known_type(type)) {
		sync_seterr(err, "malformed frame: unknown type %u", type);
		return -EPROTO;
	}
	if (flags & ~proto_known_flags(type)) {
		sync_seterr(err,
			    "malformed frame: %s with unknown flags "
			    "0x%02x",
			    type_names[type], flags);
		return -EPROTO;
	}
	if (len > limits[type]) {
		sync_seterr(err,
			    "malformed frame: %s of %zu bytes, the limit "
			    "is %u",
			    type_names[type], len, limits[type]);
		return -EMSGSIZE;
	}
	switch (type) {
	case PROTO_HELLO:
		return decode_hello(p, len, &out->u.hello, err);
	case PROTO_WELCOME:
		return decode_welcome(p, len, &out->u.welcome, err);
	case PROTO_ERROR:
		return decode_error(p, len, &out->u.error, err);
	case PROTO_HASHES:
		return decode_hashes(p, len, &out->u.hashes, err);
	case PROTO_CREDIT:
		return decode_credit(p, len, &out->u.credit, err);
	case PROTO_SUBREQ:
		return decode_subreq(p, len, &out->u.subreq, err);
	case PROTO_SUBHASHES:
		return decode_subhashes(p, len, &out->u.subhashes, err);
	case PROTO_DATA:
		return decode_data(flags, p, len, &out->u.data, err);
	case PROTO_ZERO:
		return decode_zero(p, len, &out->u.zero, err);
	case PROTO_DONE:
		return want_len("DONE", len, 0, err);
	case PROTO_FINISHED:
		return decode_finished(p, len, &out->u.finished, err);
	}
	return -EPROTO;
}

/*
 * ---- encode, one function per type --------------------------------------
 *
 * Each writes the fixed part into pp->fixed and points pp->tail at the
 * variable part where it already is, after checking the message is one
 * proto_decode() accepts.  They return 0, or -EINVAL with @why set.
 */

static int encode_hello(const struct msg_hello *h, struct proto_parts *pp,
			struct vhdx_error *why)
{
	size_t n = strnlen(h->name, sizeof(h->name));
	uint8_t *f = pp->fixed;

	if (check_name(h->name, n, why))
		return -EINVAL;
	if (h->version != PROTO_VERSION) {
		sync_seterr(why, "version %u", h->version);
		return -EINVAL;
	}
	if (check_hello(h, why))
		return -EINVAL;
	le32_put(f, h->version);
	le32_put(f + 4, h->flags);
	le32_put(f + 8, h->block_size);
	f[12] = h->hash;
	f[13] = f[14] = f[15] = 0;
	memcpy(f + 16, h->seed, 16);
	le64_put(f + 32, h->virtual_size);
	le32_put(f + 40, h->logical_sector);
	le16_put(f + 44, (uint16_t)n);
	pp->fixed_len = PROTO_HELLO_FIXED;
	pp->tail = h->name;
	pp->tail_len = n;
	return 0;
}

static int encode_welcome(const struct msg_welcome *w, struct proto_parts *pp)
{
	le32_put(pp->fixed, w->version);
	le64_put(pp->fixed + 4, w->virtual_size);
	le32_put(pp->fixed + 12, w->logical_sector);
	le64_put(pp->fixed + 16, w->resume_offset);
	le32_put(pp->fixed + 24, w->window);
	pp->fixed_len = PROTO_WELCOME_LEN;
	return 0;
}

static int encode_error(const struct msg_error *e, struct proto_parts *pp,
			struct vhdx_error *why)
{
	size_t n = strnlen(e->message, sizeof(e->message));

	if (n > PROTO_ERRMSG_MAX) {
		sync_seterr(why, "ERROR message longer than %u bytes",
			    PROTO_ERRMSG_MAX);
		return -EINVAL;
	}
	le32_put(pp->fixed, e->code);
	le16_put(pp->fixed + 4, (uint16_t)n);
	pp->fixed_len = PROTO_ERROR_FIXED;
	pp->tail = e->message;
	pp->tail_len = n;
	return 0;
}

static int encode_hashes(const struct msg_hashes *h, struct proto_parts *pp,
			 struct vhdx_error *why)
{
	uint32_t i;

	if (h->count < 1 || h->count > PROTO_HASHES_MAX || !h->entries ||
	    h->first_block > UINT64_MAX - h->count) {
		sync_seterr(why, "HASHES with %u entries", h->count);
		return -EINVAL;
	}
	for (i = 0; i < h->count; i++)
		if (proto_hash_kind(h, i) > PROTO_KIND_DATA) {
			sync_seterr(why, "HASHES entry %u of kind %u", i,
				    proto_hash_kind(h, i));
			return -EINVAL;
		}
	le64_put(pp->fixed, h->first_block);
	le32_put(pp->fixed + 8, h->count);
	pp->fixed_len = PROTO_HASHES_FIXED;
	pp->tail = h->entries;
	pp->tail_len = (size_t)h->count * PROTO_HASH_ENTRY_LEN;
	return 0;
}

static int encode_credit(const struct msg_credit *c, struct proto_parts *pp)
{
	le32_put(pp->fixed, c->blocks);
	le64_put(pp->fixed + 4, c->done_through);
	pp->fixed_len = PROTO_CREDIT_LEN;
	return 0;
}

static int encode_subreq(const struct msg_subreq *s, struct proto_parts *pp)
{
	le64_put(pp->fixed, s->block);
	pp->fixed_len = PROTO_SUBREQ_LEN;
	return 0;
}

static int encode_subhashes(const struct msg_subhashes *s,
			    struct proto_parts *pp, struct vhdx_error *why)
{
	if (s->count < 1 || s->count > PROTO_SUBHASHES_MAX || !s->hashes) {
		sync_seterr(why, "SUBHASHES with %u hashes", s->count);
		return -EINVAL;
	}
	le64_put(pp->fixed, s->block);
	le32_put(pp->fixed + 8, s->count);
	pp->fixed_len = PROTO_SUBHASHES_FIXED;
	pp->tail = s->hashes;
	pp->tail_len = (size_t)s->count * PROTO_HASH_LEN;
	return 0;
}

static int encode_data(const struct msg_data *d, struct proto_parts *pp,
		       struct vhdx_error *why)
{
	if (check_range("DATA", d->offset, d->length, PROTO_DATA_MAX, why))
		return -EINVAL;
	if (!d->data || !d->data_len ||
	    (!d->compressed && d->data_len != d->length) ||
	    d->data_len > PROTO_DATA_MAX + PROTO_DATA_SLACK) {
		sync_seterr(why, "DATA of %u bytes carrying %u", d->length,
			    d->data_len);
		return -EINVAL;
	}
	le64_put(pp->fixed, d->offset);
	le32_put(pp->fixed + 8, d->length);
	pp->fixed_len = PROTO_DATA_FIXED;
	pp->flags = d->compressed ? PROTO_DATA_ZSTD : 0;
	pp->tail = d->data;
	pp->tail_len = d->data_len;
	return 0;
}

static int encode_zero(const struct msg_zero *z, struct proto_parts *pp,
		       struct vhdx_error *why)
{
	if (check_range("ZERO", z->offset, z->length, UINT64_MAX, why))
		return -EINVAL;
	le64_put(pp->fixed, z->offset);
	le64_put(pp->fixed + 8, z->length);
	pp->fixed_len = PROTO_ZERO_LEN;
	return 0;
}

static int encode_finished(const struct msg_finished *f, struct proto_parts *pp)
{
	le64_put(pp->fixed, f->bytes_written);
	le32_put(pp->fixed + 8, f->seconds_merge);
	pp->fixed_len = PROTO_FINISHED_LEN;
	return 0;
}

static int encode_payload(const struct msg *m, struct proto_parts *pp,
			  struct vhdx_error *why)
{
	switch (m->type) {
	case PROTO_HELLO:
		return encode_hello(&m->u.hello, pp, why);
	case PROTO_WELCOME:
		return encode_welcome(&m->u.welcome, pp);
	case PROTO_ERROR:
		return encode_error(&m->u.error, pp, why);
	case PROTO_HASHES:
		return encode_hashes(&m->u.hashes, pp, why);
	case PROTO_CREDIT:
		return encode_credit(&m->u.credit, pp);
	case PROTO_SUBREQ:
		return encode_subreq(&m->u.subreq, pp);
	case PROTO_SUBHASHES:
		return encode_subhashes(&m->u.subhashes, pp, why);
	case PROTO_DATA:
		return encode_data(&m->u.data, pp, why);
	case PROTO_ZERO:
		return encode_zero(&m->u.zero, pp, why);
	case PROTO_DONE:
		return 0;
	case PROTO_FINISHED:
		return encode_finished(&m->u.finished, pp);
	}
	sync_seterr(why, "unknown type");
	return -EINVAL;
}

int proto_encode_parts(const struct msg *m, struct proto_parts *pp,
		       struct vhdx_error *err)
{
	struct vhdx_error why;

	pp->fixed_len = 0;
	pp->tail = NULL;
	pp->tail_len = 0;
	pp->flags = 0;
	if (!proto_known_type(m->type)) {
		sync_seterr(err, "cannot encode message type %u", m->type);
		return -EINVAL;
	}
	if (encode_payload(m, pp, &why)) {
		/* The checks are the decoder's: drop its "malformed" label. */
		sync_seterr(err, "cannot encode %s: %s", type_names[m->type],
			    strncmp(why.msg, "malformed frame: ", 17)
				    ? why.msg
				    : why.msg + 17);
		return -EINVAL;
	}
	return 0;
}

long proto_encode(const struct msg *m, void *buf, size_t cap, uint8_t *flags,
		  struct vhdx_error *err)
{
	struct proto_parts pp;
	size_t total;
	int ret;

	ret = proto_encode_parts(m, &pp, err);
	*flags = pp.flags;
	if (ret)
		return ret;
	total = pp.fixed_len + pp.tail_len;
	if (total > cap) {
		sync_seterr(err,
			    "cannot encode %s: %zu bytes do not fit in "
			    "%zu",
			    type_names[m->type], total, cap);
		return -EMSGSIZE;
	}
	memcpy(buf, pp.fixed, pp.fixed_len);
	if (pp.tail_len)
		memcpy((uint8_t *)buf + pp.fixed_len, pp.tail, pp.tail_len);
	return (long)total;
}
