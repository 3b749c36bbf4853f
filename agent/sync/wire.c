/* SPDX-License-Identifier: MIT */
/*
 * wire.c - protocol frames over a struct conn: the header and CRC-32C put
 * around a payload on the way out, and on the way in a header checked
 * before a single payload byte is read.  The bytes themselves are
 * proto.c's business; the connection is tls.c's.
 */
#include <errno.h>
#include <string.h>

#include "agent/sync/errmsg.h"
#include "agent/sync/proto.h"
#include "agent/sync/tls.h"
#include "vhdx/vhdx.h"

/* Coalesce small frames into one TLS record / one send(). */
#define STAGE_LEN (16u << 10)

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
	ret = check_outgoing(c, type, flags, total, err);
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

int proto_send_msg(struct conn *c, const struct msg *m, struct vhdx_error *err)
{
	struct proto_parts pp;
	struct iovec iov[2];
	int ret;

	ret = proto_encode_parts(m, &pp, err);
	if (ret)
		return ret;
	iov[0].iov_base = pp.fixed;
	iov[0].iov_len = pp.fixed_len;
	iov[1].iov_base = (void *)pp.tail;
	iov[1].iov_len = pp.tail_len;
	return proto_sendv(c, m->type, pp.flags, iov, 2, err);
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
