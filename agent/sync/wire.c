/* SPDX-License-Identifier: MIT */
/*
 * wire.c - protocol frames over a struct conn: the header and CRC-32C put
 * around a payload on the way out, and on the way in a header checked
 * before a single payload byte is read.  The bytes themselves are
 * proto.c's business; the connection is tls.c's.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/sync/errmsg.h"
#include "agent/sync/proto.h"
#include "agent/sync/tls.h"
#include "vhdx/vhdx.h"

/* Coalesce small frames into one TLS record / one send(). */
#define STAGE_LEN (16u << 10)

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t proto_batch_age_ns(const struct proto_batch *b)
{
	return b->len ? mono_ns() - b->since : 0;
}

/* Refuse what the peer would refuse, before a byte of it is sent. */
static int check_outgoing(struct conn *c, uint8_t type, uint8_t flags,
			  size_t total, struct vhdx_error *err)
{
	bool known = proto_known_type(type);

	if (known && !(flags & ~proto_known_flags(type)) &&
	    total <= proto_limit(type))
		return 0;
	sync_seterr(err,
		    "peer %s: refusing to send a %s of %zu bytes with "
		    "flags 0x%02x",
		    conn_peer(c), proto_type_name(type), total, flags);
	return known && total > proto_limit(type) ? -EMSGSIZE : -EINVAL;
}

/* Header and payload of a frame of @total bytes, into @out (which has
 * room for PROTO_HDR_LEN + @total bytes). */
static void put_frame(uint8_t *out, uint8_t type, uint8_t flags,
		      const struct iovec *iov, int n, size_t total,
		      uint32_t crc)
{
	size_t used = PROTO_HDR_LEN;
	int i;

	proto_put_header(out, type, flags, (uint32_t)total, ~crc);
	for (i = 0; i < n; i++) {
		if (iov[i].iov_len)
			memcpy(out + used, iov[i].iov_base, iov[i].iov_len);
		used += iov[i].iov_len;
	}
}

/* Check an outgoing frame; its payload's length and CRC-32C. */
static int prepare(struct conn *c, uint8_t type, uint8_t flags,
		   const struct iovec *iov, int n, size_t *total, uint32_t *crc,
		   struct vhdx_error *err)
{
	int i;

	*total = 0;
	*crc = 0xFFFFFFFFu;
	for (i = 0; i < n; i++) {
		*total += iov[i].iov_len;
		*crc = vhdx_crc32c_update(*crc, iov[i].iov_base,
					  iov[i].iov_len);
	}
	return check_outgoing(c, type, flags, *total, err);
}

int proto_sendv(struct conn *c, uint8_t type, uint8_t flags,
		const struct iovec *iov, int n, struct vhdx_error *err)
{
	static __thread uint8_t stage[STAGE_LEN];
	uint32_t crc;
	size_t total, used;
	int i, ret;

	ret = prepare(c, type, flags, iov, n, &total, &crc, err);
	if (ret)
		return ret;
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

int proto_send(struct conn *c, uint8_t type, uint8_t flags, const void *payload,
	       size_t len, struct vhdx_error *err)
{
	struct iovec iov = { .iov_base = (void *)payload, .iov_len = len };

	return proto_sendv(c, type, flags, &iov, 1, err);
}

/* @m's payload as two pieces: the encoded fixed part and the variable
 * tail where it is (never copied). */
static int msg_iov(const struct msg *m, struct proto_parts *pp,
		   struct iovec iov[2], struct vhdx_error *err)
{
	int ret = proto_encode_parts(m, pp, err);

	if (ret)
		return ret;
	iov[0].iov_base = pp->fixed;
	iov[0].iov_len = pp->fixed_len;
	iov[1].iov_base = (void *)pp->tail;
	iov[1].iov_len = pp->tail_len;
	return 0;
}

int proto_send_msg(struct conn *c, const struct msg *m, struct vhdx_error *err)
{
	struct proto_parts pp;
	struct iovec iov[2];
	int ret;

	ret = msg_iov(m, &pp, iov, err);
	if (ret)
		return ret;
	return proto_sendv(c, m->type, pp.flags, iov, 2, err);
}

/* ---- batches ------------------------------------------------------------ */

int proto_batch_init(struct proto_batch *b, size_t cap)
{
	b->buf = malloc(cap);
	b->len = 0;
	b->cap = b->buf ? cap : 0;
	b->since = 0;
	return b->buf ? 0 : -ENOMEM;
}

void proto_batch_free(struct proto_batch *b)
{
	free(b->buf);
	b->buf = NULL;
	b->len = b->cap = 0;
}

int proto_batch_flush(struct conn *c, struct proto_batch *b,
		      struct vhdx_error *err)
{
	size_t n = b->len;

	if (!n)
		return 0;
	b->len = 0;
	return conn_write_full(c, b->buf, n, err);
}

int proto_batch_msg(struct conn *c, struct proto_batch *b, const struct msg *m,
		    struct vhdx_error *err)
{
	struct proto_parts pp;
	struct iovec iov[2];
	uint32_t crc;
	size_t total;
	int ret;

	ret = msg_iov(m, &pp, iov, err);
	if (ret)
		return ret;
	ret = prepare(c, m->type, pp.flags, iov, 2, &total, &crc, err);
	if (ret)
		return ret;
	if (b->len + PROTO_HDR_LEN + total > b->cap) {
		ret = proto_batch_flush(c, b, err);
		if (ret)
			return ret;
		if (PROTO_HDR_LEN + total > b->cap)
			return proto_sendv(c, m->type, pp.flags, iov, 2, err);
	}
	if (!b->len)
		b->since = mono_ns();
	put_frame(b->buf + b->len, m->type, pp.flags, iov, 2, total, crc);
	b->len += PROTO_HDR_LEN + total;
	return 0;
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
		sync_seterr(err, "peer %s: %s", conn_peer(c), why.msg);
		return ret;
	}
	if (f->length > cap) {
		sync_seterr(err,
			    "peer %s: %s of %u bytes does not fit the "
			    "%zu-byte receive buffer",
			    conn_peer(c), proto_type_name(f->type), f->length,
			    cap);
		return -EMSGSIZE;
	}
	if (f->length) {
		ret = conn_read_full(c, buf, f->length, err);
		if (ret)
			return ret;
	}
	crc = vhdx_crc32c(buf, f->length);
	if (crc != f->crc) {
		sync_seterr(err,
			    "peer %s: malformed frame: %s of %u bytes "
			    "fails its CRC-32C (0x%08x, computed 0x%08x)",
			    conn_peer(c), proto_type_name(f->type), f->length,
			    f->crc, crc);
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
		sync_seterr(err, "peer %s: %s", conn_peer(c), why.msg);
	return ret;
}
