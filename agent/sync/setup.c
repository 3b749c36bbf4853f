/* SPDX-License-Identifier: MIT */
/* setup.c - what both ends of a session set up the same way (setup.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "agent/sync/common.h"
#include "agent/sync/setup.h"
#include "agent/sync/tls.h"
#include "uring/hash.h"
#include "uring/reader.h"

/* ---- transport security -------------------------------------------------- */

int push_security_config(struct tls_config *cfg, const char *psk_file,
			 const char *cert, const char *key, const char *ca,
			 bool insecure, char *err, size_t errlen)
{
	struct vhdx_error terr;
	int kinds = !!psk_file + !!(cert || key || ca) + !!insecure;
	int ret;

	memset(cfg, 0, sizeof(*cfg));
	if (kinds == 0) {
		snprintf(err, errlen,
			 "no authentication: give --psk-file "
			 "FILE, or --cert/--key/--ca, or --insecure "
			 "(loopback only)");
		return -EINVAL;
	}
	if (kinds > 1) {
		snprintf(err, errlen,
			 "--psk-file, --cert/--key/--ca and "
			 "--insecure exclude each other");
		return -EINVAL;
	}
	if (insecure) {
		cfg->mode = TLS_MODE_INSECURE;
		return 0;
	}
	if (psk_file) {
		cfg->mode = TLS_MODE_PSK;
		terr.msg[0] = '\0';
		ret = tls_load_psk(psk_file, cfg->psk, &terr);
		if (ret < 0)
			snprintf(err, errlen, "%s", terr.msg);
		return ret;
	}
	if (!cert || !key || !ca) {
		snprintf(err, errlen, "--cert, --key and --ca go together");
		return -EINVAL;
	}
	cfg->mode = TLS_MODE_X509;
	cfg->cert = cert;
	cfg->key = key;
	cfg->ca = ca;
	return 0;
}

/* ---- the reader ---------------------------------------------------------- */

void sync_reader_config(struct ur_config *cfg, uint32_t block_size,
			uint8_t hash_id, const uint8_t seed[16])
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->block_size = block_size;
	cfg->hash = sync_hash_algo(hash_id);
	/* The primary's seed keys both sides' hashes. */
	cfg->seed = sync_seed_key(seed);
	cfg->seed_set = true;
}

/* Hash @len zero bytes into @out; a zero @len (no short end) is skipped. */
static int zero_hash(struct ur_engine *eng, uint64_t len, uint8_t *out)
{
	struct ur_hash h;
	int ret;

	if (!len)
		return 0;
	ret = ur_engine_zero_hash(eng, (size_t)len, &h);
	if (ret < 0)
		return ret;
	memcpy(out, h.b, PROTO_HASH_LEN);
	return 0;
}

static int zero_hashes(struct sync_reader *r, uint32_t bs, uint64_t size)
{
	struct sync_zero_hashes *z = &r->zero;
	int ret;

	ret = zero_hash(r->eng, bs, z->block);
	if (!ret)
		ret = zero_hash(r->eng, size % bs, z->block_last);
	if (!ret)
		ret = zero_hash(r->eng, PROTO_SUBBLOCK, z->sub);
	if (!ret)
		ret = zero_hash(r->eng, size % PROTO_SUBBLOCK, z->sub_last);
	return ret;
}

int sync_reader_start(struct sync_reader *r, const struct ur_config *cfg,
		      struct ur_source *src, uint64_t first_block,
		      uint64_t size, enum sync_reader_step *step, char *msg,
		      size_t msglen)
{
	int ret;

	*step = SYNC_READER_CONFIG;
	ret = ur_engine_new(cfg, &r->eng, msg, msglen);
	if (ret < 0) {
		r->eng = NULL;
		return ret;
	}
	*step = SYNC_READER_ADD;
	ret = ur_engine_add_from(r->eng, src, first_block, &r->stream);
	if (ret < 0) {
		snprintf(msg, msglen, "%s",
			 *ur_engine_error(r->eng) ? ur_engine_error(r->eng)
						  : strerror(-ret));
		return ret;
	}
	*step = SYNC_READER_READ;
	ret = ur_engine_start(r->eng);
	if (ret < 0) {
		snprintf(msg, msglen, "%s",
			 *ur_engine_error(r->eng) ? ur_engine_error(r->eng)
						  : strerror(-ret));
		return ret;
	}
	*step = SYNC_READER_ZEROS;
	ret = zero_hashes(r, cfg->block_size, size);
	if (ret < 0)
		snprintf(msg, msglen, "cannot hash zeros: %s", strerror(-ret));
	return ret;
}

void sync_reader_free(struct sync_reader *r)
{
	ur_engine_free(r->eng);
	r->eng = NULL;
	r->stream = NULL;
}

int sync_pread_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
	ssize_t n;

	while (len) {
		n = pread(fd, buf, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ENODATA;
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

const char *sync_pread_error(int ret)
{
	/* a file cut short while it is read (truncated by another program) */
	if (ret == -ENODATA)
		return "the file ended: it was shortened while it was read";
	return strerror(-ret);
}

int sync_hash_pieces(struct ur_hasher *h, const uint8_t *data, uint32_t len,
		     uint8_t *out)
{
	struct ur_hash x;
	uint32_t off, n;
	int ret;

	for (off = 0; off < len; off += PROTO_SUBBLOCK) {
		n = len - off < PROTO_SUBBLOCK ? len - off : PROTO_SUBBLOCK;
		ret = ur_hasher_hash(h, data + off, n, &x);
		if (ret < 0)
			return ret;
		memcpy(out + (size_t)(off / PROTO_SUBBLOCK) * PROTO_HASH_LEN,
		       x.b, PROTO_HASH_LEN);
	}
	return 0;
}
