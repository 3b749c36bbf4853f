/* SPDX-License-Identifier: MIT */
/*
 * test_proto.c - unit tests of the protocol frame codec
 * (agent/sync/proto.c): every message type built byte by byte from the
 * layout in docs/protocol.md and checked against decode and encode, every
 * malformed case refused, header checks, and a deterministic mutation
 * loop: no crash under ASan/UBSan, and nothing accepted whose lengths
 * disagree.  Frames over a connection are test_wire.c.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "agent/sync/proto.h"
#include "tests/unit/frame_writer.h"

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void hello_bytes(struct wb *w, uint32_t version, uint32_t flags,
			const char *name, size_t name_len)
{
	uint8_t seed[16];
	int i;

	for (i = 0; i < 16; i++)
		seed[i] = (uint8_t)(0xA0 + i);
	w->n = 0;
	w32(w, version);
	w32(w, flags);
	w32(w, 65536); /* block_size */
	w8(w, 1);      /* hash: sha256 */
	w8(w, 0), w8(w, 0), w8(w, 0);
	wbytes(w, seed, 16);
	w64(w, 0x0000001234567000ull); /* virtual_size */
	w32(w, 4096);		       /* logical_sector */
	w16(w, (uint16_t)name_len);
	wbytes(w, name, name_len);
}

static void assert_decode(uint8_t type, uint8_t flags, const struct wb *w,
			  int want, struct msg *m)
{
	struct vhdx_error err = { "" };
	uint8_t *exact = malloc(w->n ? w->n : 1);
	int ret;

	assert_non_null(exact);
	memcpy(exact, w->b, w->n); /* ASan sees any read past the end */
	ret = proto_decode(type, flags, exact, w->n, m, &err);
	if (ret != want)
		fprintf(stderr, "decode %s (%zu bytes): got %d want %d: %s\n",
			proto_type_name(type), w->n, ret, want, err.msg);
	assert_int_equal(ret, want);
	if (want)
		assert_true(err.msg[0] != '\0');
	/* Pointers into the payload must stay valid for the caller. */
	if (!ret) {
		static uint8_t keep[PROTO_HDR_LEN + 80000];

		memcpy(keep, exact, w->n);
		if (m->type == PROTO_HASHES)
			m->u.hashes.entries =
				keep + (m->u.hashes.entries - exact);
		if (m->type == PROTO_SUBHASHES)
			m->u.subhashes.hashes =
				keep + (m->u.subhashes.hashes - exact);
		if (m->type == PROTO_DATA)
			m->u.data.data = keep + (m->u.data.data - exact);
	}
	free(exact);
}

/* Encoding @m must give exactly the documented bytes @w. */
static void assert_encodes_to(const struct msg *m, uint8_t flags,
			      const struct wb *w)
{
	static uint8_t buf[PROTO_MAX_PAYLOAD];
	struct vhdx_error err;
	uint8_t got_flags = 0xff;
	long n;

	n = proto_encode(m, buf, sizeof(buf), &got_flags, &err);
	assert_int_equal(n, (long)w->n);
	assert_int_equal(got_flags, flags);
	assert_memory_equal(buf, w->b, w->n);
}

/* ---- round trips, each type against its documented layout -------------- */

static void test_limits_match_the_doc(void **state)
{
	(void)state;
	/* The table in docs/protocol.md; HELLO: 46 + a 255-byte name. */
	assert_int_equal(proto_limit(PROTO_HELLO), 301);
	assert_int_equal(proto_limit(PROTO_WELCOME), 64);
	assert_int_equal(proto_limit(PROTO_ERROR), 1100);
	assert_int_equal(proto_limit(PROTO_HASHES), 16 + 17 * 4096);
	assert_int_equal(proto_limit(PROTO_CREDIT), 12);
	assert_int_equal(proto_limit(PROTO_SUBREQ), 8);
	assert_int_equal(proto_limit(PROTO_SUBHASHES), 12 + 16 * 1024);
	assert_int_equal(proto_limit(PROTO_DATA), 12 + (4 << 20) + (64 << 10));
	assert_int_equal(proto_limit(PROTO_ZERO), 16);
	assert_int_equal(proto_limit(PROTO_DONE), 0);
	assert_int_equal(proto_limit(PROTO_FINISHED), 12);
	assert_int_equal(proto_limit(0), 0);
	assert_int_equal(proto_limit(12), 0);
	assert_int_equal(PROTO_MAX_PAYLOAD, proto_limit(PROTO_DATA));
}

static void test_hello(void **state)
{
	struct wb w;
	struct msg m;
	char name[256];

	(void)state;
	hello_bytes(&w, 1, PROTO_HELLO_RESTART | PROTO_HELLO_HOLD,
		    "vm1-disk0.vhdx", 14);
	assert_int_equal(w.n, 46 + 14);
	assert_decode(PROTO_HELLO, 0, &w, 0, &m);
	assert_int_equal(m.type, PROTO_HELLO);
	assert_int_equal(m.u.hello.version, 1);
	assert_int_equal(m.u.hello.flags, 0x05);
	assert_int_equal(m.u.hello.block_size, 65536);
	assert_int_equal(m.u.hello.hash, PROTO_HASH_SHA256);
	assert_int_equal(m.u.hello.seed[0], 0xA0);
	assert_int_equal(m.u.hello.seed[15], 0xAF);
	assert_true(m.u.hello.virtual_size == 0x0000001234567000ull);
	assert_int_equal(m.u.hello.logical_sector, 4096);
	assert_int_equal(m.u.hello.name_len, 14);
	assert_string_equal(m.u.hello.name, "vm1-disk0.vhdx");
	assert_encodes_to(&m, 0, &w);

	/* The longest name, UTF-8. */
	memset(name, 'a', 255);
	memcpy(name, "\xc3\xa9t\xc3\xa9", 5);
	hello_bytes(&w, 1, 0, name, 255);
	assert_int_equal(w.n, 301);
	assert_decode(PROTO_HELLO, 0, &w, 0, &m);
	assert_int_equal(strlen(m.u.hello.name), 255);
	assert_encodes_to(&m, 0, &w);

	/* Each single action flag is fine. */
	hello_bytes(&w, 1, PROTO_HELLO_CHECK, "d", 1);
	assert_decode(PROTO_HELLO, 0, &w, 0, &m);
	hello_bytes(&w, 1, PROTO_HELLO_MERGE, "d", 1);
	assert_decode(PROTO_HELLO, 0, &w, 0, &m);
	hello_bytes(&w, 1, PROTO_HELLO_DISCARD, "d", 1);
	assert_decode(PROTO_HELLO, 0, &w, 0, &m);
}

static void test_welcome(void **state)
{
	struct wb w = { .n = 0 };
	struct msg m;

	(void)state;
	w32(&w, 1);
	w64(&w, 0x123456789000ull);
	w32(&w, 512);
	w64(&w, 0xABCDEF0000ull);
	w32(&w, 4096);
	assert_int_equal(w.n, 28);
	assert_decode(PROTO_WELCOME, 0, &w, 0, &m);
	assert_int_equal(m.u.welcome.version, 1);
	assert_true(m.u.welcome.virtual_size == 0x123456789000ull);
	assert_int_equal(m.u.welcome.logical_sector, 512);
	assert_true(m.u.welcome.resume_offset == 0xABCDEF0000ull);
	assert_int_equal(m.u.welcome.window, 4096);
	assert_encodes_to(&m, 0, &w);
}

static void test_error(void **state)
{
	static const char text[] = "export 'x' is busy";
	char big[1024];
	struct wb w = { .n = 0 };
	struct msg m;

	(void)state;
	w32(&w, PROTO_ERR_BUSY);
	w16(&w, sizeof(text) - 1);
	wbytes(&w, text, sizeof(text) - 1);
	assert_decode(PROTO_ERROR, 0, &w, 0, &m);
	assert_int_equal(m.u.error.code, 2);
	assert_int_equal(m.u.error.message_len, sizeof(text) - 1);
	assert_string_equal(m.u.error.message, text);
	assert_encodes_to(&m, 0, &w);

	/* Empty and longest messages. */
	w.n = 0;
	w32(&w, 7);
	w16(&w, 0);
	assert_decode(PROTO_ERROR, 0, &w, 0, &m);
	assert_string_equal(m.u.error.message, "");
	assert_encodes_to(&m, 0, &w);
	memset(big, 'e', sizeof(big));
	w.n = 0;
	w32(&w, 5);
	w16(&w, 1024);
	wbytes(&w, big, 1024);
	assert_decode(PROTO_ERROR, 0, &w, 0, &m);
	assert_int_equal(strlen(m.u.error.message), 1024);
	assert_encodes_to(&m, 0, &w);

	/* Control characters never reach a log line. */
	w.n = 0;
	w32(&w, 6);
	w16(&w, 5);
	wbytes(&w, "a\nb\033c", 5);
	assert_decode(PROTO_ERROR, 0, &w, 0, &m);
	assert_string_equal(m.u.error.message, "a?b?c");
}

static void test_hashes(void **state)
{
	struct wb w = { .n = 0 };
	struct msg m;
	uint64_t s = 99;
	uint32_t i, n = 4096;
	uint8_t h[16];

	(void)state;
	w64(&w, 1000);
	w32(&w, n);
	for (i = 0; i < n; i++) {
		w8(&w, i % 3 ? PROTO_KIND_DATA : PROTO_KIND_ZERO);
		memset(h, 0, 16);
		memcpy(h, &i, 4);
		h[15] = (uint8_t)xs(&s);
		wbytes(&w, h, 16);
	}
	assert_int_equal(w.n, 12 + 17 * 4096);
	assert_decode(PROTO_HASHES, 0, &w, 0, &m);
	assert_true(m.u.hashes.first_block == 1000);
	assert_int_equal(m.u.hashes.count, 4096);
	assert_int_equal(proto_hash_kind(&m.u.hashes, 0), PROTO_KIND_ZERO);
	assert_int_equal(proto_hash_kind(&m.u.hashes, 1), PROTO_KIND_DATA);
	i = 4095;
	assert_memory_equal(proto_hash_at(&m.u.hashes, 4095), &i, 4);
	assert_encodes_to(&m, 0, &w);
}

static void test_small_fixed_types(void **state)
{
	struct wb w = { .n = 0 };
	struct msg m;

	(void)state;
	w32(&w, 4096);
	w64(&w, 0x7777000ull);
	assert_decode(PROTO_CREDIT, 0, &w, 0, &m);
	assert_int_equal(m.u.credit.blocks, 4096);
	assert_true(m.u.credit.done_through == 0x7777000ull);
	assert_encodes_to(&m, 0, &w);

	w.n = 0;
	w64(&w, 0xFEDCBA9876543210ull);
	assert_decode(PROTO_SUBREQ, 0, &w, 0, &m);
	assert_true(m.u.subreq.block == 0xFEDCBA9876543210ull);
	assert_encodes_to(&m, 0, &w);

	w.n = 0;
	w64(&w, 1ull << 40);
	w64(&w, 3ull << 30);
	assert_decode(PROTO_ZERO, 0, &w, 0, &m);
	assert_true(m.u.zero.offset == 1ull << 40);
	assert_true(m.u.zero.length == 3ull << 30);
	assert_encodes_to(&m, 0, &w);

	w.n = 0;
	assert_decode(PROTO_DONE, 0, &w, 0, &m);
	assert_int_equal(m.type, PROTO_DONE);
	assert_encodes_to(&m, 0, &w);

	w.n = 0;
	w64(&w, 5ull << 30);
	w32(&w, 17);
	assert_decode(PROTO_FINISHED, 0, &w, 0, &m);
	assert_true(m.u.finished.bytes_written == 5ull << 30);
	assert_int_equal(m.u.finished.seconds_merge, 17);
	assert_encodes_to(&m, 0, &w);
}

static void test_subhashes(void **state)
{
	struct wb w = { .n = 0 };
	struct msg m;
	uint32_t i;

	(void)state;
	w64(&w, 77);
	w32(&w, 1024);
	for (i = 0; i < 1024 * 16; i++)
		w8(&w, (uint8_t)(i * 7));
	assert_int_equal(w.n, 12 + 16 * 1024);
	assert_decode(PROTO_SUBHASHES, 0, &w, 0, &m);
	assert_true(m.u.subhashes.block == 77);
	assert_int_equal(m.u.subhashes.count, 1024);
	assert_int_equal(m.u.subhashes.hashes[16], (uint8_t)(16 * 7));
	assert_encodes_to(&m, 0, &w);
}

static void test_data(void **state)
{
	static struct wb w;
	struct msg m;
	uint32_t i;

	(void)state;
	w.n = 0;
	w64(&w, 1 << 20);
	w32(&w, 8192);
	for (i = 0; i < 8192; i++)
		w8(&w, (uint8_t)i);
	assert_decode(PROTO_DATA, 0, &w, 0, &m);
	assert_true(m.u.data.offset == 1 << 20);
	assert_int_equal(m.u.data.length, 8192);
	assert_false(m.u.data.compressed);
	assert_int_equal(m.u.data.data_len, 8192);
	assert_int_equal(m.u.data.data[300], 300 & 0xff);
	assert_encodes_to(&m, 0, &w);

	/* Compressed: length is what it covers, the payload is shorter. */
	w.n = 0;
	w64(&w, 0);
	w32(&w, 4 << 20);
	wbytes(&w, "\x28\xb5\x2f\xfd zstd-ish", 13);
	assert_decode(PROTO_DATA, PROTO_DATA_ZSTD, &w, 0, &m);
	assert_true(m.u.data.compressed);
	assert_int_equal(m.u.data.length, 4 << 20);
	assert_int_equal(m.u.data.data_len, 13);
	assert_encodes_to(&m, PROTO_DATA_ZSTD, &w);
}

/* ---- malformed payloads ------------------------------------------------- */

static void test_malformed_hello(void **state)
{
	struct wb w;
	struct msg m;

	(void)state;
	/* name_len disagrees with the frame length, both ways */
	hello_bytes(&w, 1, 0, "disk", 4);
	w.b[44] = 5;
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	w.b[44] = 3;
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	w.b[44] = 4;
	w.b[45] = 1; /* 260 */
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	/* truncated */
	hello_bytes(&w, 1, 0, "disk", 4);
	w.n = 45;
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	w.n = 3;
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	/* names */
	hello_bytes(&w, 1, 0, "", 0);
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	hello_bytes(&w, 1, 0, "a/b", 3);
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	hello_bytes(&w, 1, 0, "..", 2);
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	hello_bytes(&w, 1, 0, "a\0b", 3);
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	hello_bytes(&w, 1, 0, "a\nb", 3);
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	hello_bytes(&w, 1, 0, "\xc3(", 2);
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	hello_bytes(&w, 1, 0, "\xc0\xaf", 2); /* overlong '/' */
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	hello_bytes(&w, 1, 0, "\xed\xa0\x80", 3); /* surrogate */
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	/* reserved bytes */
	hello_bytes(&w, 1, 0, "disk", 4);
	w.b[14] = 1;
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	/* two actions at once */
	hello_bytes(&w, 1, PROTO_HELLO_CHECK | PROTO_HELLO_MERGE, "d", 1);
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	hello_bytes(&w, 1, PROTO_HELLO_DISCARD | PROTO_HELLO_RESTART, "d", 1);
	assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
	/* frame flags: HELLO has none */
	hello_bytes(&w, 1, 0, "disk", 4);
	assert_decode(PROTO_HELLO, 1, &w, -EPROTO, &m);
}

/* REPASS: a further pass over a held copy; with HOLD and nothing else. */
static void test_hello_repass(void **state)
{
	static const uint32_t bad[] = {
		PROTO_HELLO_REPASS,
		PROTO_HELLO_REPASS | PROTO_HELLO_RESTART,
		PROTO_HELLO_REPASS | PROTO_HELLO_HOLD | PROTO_HELLO_RESTART,
		PROTO_HELLO_REPASS | PROTO_HELLO_HOLD | PROTO_HELLO_CHECK,
		PROTO_HELLO_REPASS | PROTO_HELLO_HOLD | PROTO_HELLO_MERGE,
		PROTO_HELLO_REPASS | PROTO_HELLO_HOLD | PROTO_HELLO_DISCARD,
		PROTO_HELLO_REPASS | PROTO_HELLO_CHECK,
		PROTO_HELLO_REPASS | PROTO_HELLO_MERGE,
		PROTO_HELLO_REPASS | PROTO_HELLO_DISCARD,
	};
	static uint8_t buf[PROTO_MAX_PAYLOAD];
	struct vhdx_error err;
	struct wb w;
	struct msg m;
	uint8_t flags;
	size_t i;

	(void)state;
	assert_int_equal(PROTO_HELLO_REPASS, 0x20);
	assert_true(PROTO_HELLO_KNOWN & PROTO_HELLO_REPASS);
	hello_bytes(&w, 1, PROTO_HELLO_REPASS | PROTO_HELLO_HOLD, "d", 1);
	assert_decode(PROTO_HELLO, 0, &w, 0, &m);
	assert_int_equal(m.u.hello.flags, 0x24);
	assert_encodes_to(&m, 0, &w);

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		hello_bytes(&w, 1, bad[i], "d", 1);
		assert_decode(PROTO_HELLO, 0, &w, -EPROTO, &m);
		/* and the encoder will not send it */
		memset(&m, 0, sizeof(m));
		m.type = PROTO_HELLO;
		m.u.hello.version = 1;
		m.u.hello.flags = bad[i];
		m.u.hello.block_size = 65536;
		m.u.hello.logical_sector = 512;
		strcpy(m.u.hello.name, "d");
		assert_int_equal(
			proto_encode(&m, buf, sizeof(buf), &flags, &err),
			-EINVAL);
		assert_non_null(strstr(err.msg, "REPASS"));
	}
}

static void test_hello_unsupported(void **state)
{
	struct wb w;
	struct msg m;

	(void)state;
	/* Another version: whatever follows, ERROR 4 material. */
	hello_bytes(&w, 2, 0, "disk", 4);
	w.n = 20;
	assert_decode(PROTO_HELLO, 0, &w, -EPROTONOSUPPORT, &m);
	assert_int_equal(m.u.hello.version, 2);
	/* The first flag bit past the known ones. */
	hello_bytes(&w, 1, PROTO_HELLO_KNOWN + 1, "disk", 4);
	assert_decode(PROTO_HELLO, 0, &w, -EPROTONOSUPPORT, &m);
	hello_bytes(&w, 1, 0x80000000u | PROTO_HELLO_HOLD, "disk", 4);
	assert_decode(PROTO_HELLO, 0, &w, -EPROTONOSUPPORT, &m);
	hello_bytes(&w, 1, 0, "disk", 4);
	w.b[12] = 2; /* hash */
	assert_decode(PROTO_HELLO, 0, &w, -EPROTONOSUPPORT, &m);
	hello_bytes(&w, 1, 0, "disk", 4);
	w.b[8] = 0, w.b[9] = 0x30; /* block size 12 KiB */
	assert_decode(PROTO_HELLO, 0, &w, -EPROTONOSUPPORT, &m);
	w.b[9] = 0, w.b[10] = 0x80; /* 8 MiB */
	assert_decode(PROTO_HELLO, 0, &w, -EPROTONOSUPPORT, &m);
}

static void test_malformed_others(void **state)
{
	struct wb w = { .n = 0 };
	struct msg m;
	uint32_t i;

	(void)state;
	/* fixed sizes, one byte off either way */
	for (i = 0; i < 40; i++)
		w8(&w, 0);
	w.n = 27;
	assert_decode(PROTO_WELCOME, 0, &w, -EPROTO, &m);
	w.n = 29;
	assert_decode(PROTO_WELCOME, 0, &w, -EPROTO, &m);
	w.n = 11;
	assert_decode(PROTO_CREDIT, 0, &w, -EPROTO, &m);
	w.n = 13;
	assert_decode(PROTO_CREDIT, 0, &w, -EMSGSIZE, &m);
	w.n = 7;
	assert_decode(PROTO_SUBREQ, 0, &w, -EPROTO, &m);
	w.n = 15;
	assert_decode(PROTO_ZERO, 0, &w, -EPROTO, &m);
	w.n = 1;
	assert_decode(PROTO_DONE, 0, &w, -EMSGSIZE, &m);
	w.n = 11;
	assert_decode(PROTO_FINISHED, 0, &w, -EPROTO, &m);

	/* ERROR: message_len vs length, and over 1024 */
	w.n = 0;
	w32(&w, 1);
	w16(&w, 4);
	wbytes(&w, "abc", 3);
	assert_decode(PROTO_ERROR, 0, &w, -EPROTO, &m);
	wbytes(&w, "de", 2);
	assert_decode(PROTO_ERROR, 0, &w, -EPROTO, &m);
	w.n = 0;
	w32(&w, 1);
	w16(&w, 1025);
	for (i = 0; i < 1025; i++)
		w8(&w, 'x');
	assert_decode(PROTO_ERROR, 0, &w, -EPROTO, &m);
	w.n = 5;
	assert_decode(PROTO_ERROR, 0, &w, -EPROTO, &m);

	/* HASHES: count x 17 + 12 must be the length */
	w.n = 0;
	w64(&w, 0);
	w32(&w, 2);
	for (i = 0; i < 2 * 17; i++)
		w8(&w, 1);
	assert_decode(PROTO_HASHES, 0, &w, 0, &m);
	w.n--;
	assert_decode(PROTO_HASHES, 0, &w, -EPROTO, &m);
	w.n += 2;
	assert_decode(PROTO_HASHES, 0, &w, -EPROTO, &m);
	w.n--;
	w.b[8] = 0; /* count 0 */
	assert_decode(PROTO_HASHES, 0, &w, -EPROTO, &m);
	w.b[8] = 2;
	w.b[12 + 17] = 2; /* unknown kind */
	assert_decode(PROTO_HASHES, 0, &w, -EPROTO, &m);
	w.b[12 + 17] = 1;
	w.b[8] = 0x01, w.b[9] = 0x10; /* 4097 entries */
	assert_decode(PROTO_HASHES, 0, &w, -EPROTO, &m);
	w.b[8] = 2, w.b[9] = 0;
	for (i = 0; i < 8; i++)
		w.b[i] = 0xff; /* first_block + count wraps */
	assert_decode(PROTO_HASHES, 0, &w, -EPROTO, &m);
	w.n = 11;
	assert_decode(PROTO_HASHES, 0, &w, -EPROTO, &m);

	/* SUBHASHES */
	w.n = 0;
	w64(&w, 0);
	w32(&w, 3);
	for (i = 0; i < 3 * 16; i++)
		w8(&w, 9);
	assert_decode(PROTO_SUBHASHES, 0, &w, 0, &m);
	w.n -= 16;
	assert_decode(PROTO_SUBHASHES, 0, &w, -EPROTO, &m);
	w.n += 17;
	assert_decode(PROTO_SUBHASHES, 0, &w, -EPROTO, &m);
	w.n -= 1;
	w.b[8] = 0;
	assert_decode(PROTO_SUBHASHES, 0, &w, -EPROTO, &m);
	w.b[8] = 1, w.b[9] = 4; /* 1025 */
	assert_decode(PROTO_SUBHASHES, 0, &w, -EPROTO, &m);

	/* DATA: length must equal payload - 12 unless compressed */
	w.n = 0;
	w64(&w, 4096);
	w32(&w, 100);
	for (i = 0; i < 100; i++)
		w8(&w, 7);
	assert_decode(PROTO_DATA, 0, &w, 0, &m);
	w.n--;
	assert_decode(PROTO_DATA, 0, &w, -EPROTO, &m);
	assert_decode(PROTO_DATA, PROTO_DATA_ZSTD, &w, 0, &m);
	assert_decode(PROTO_DATA, 0x02, &w, -EPROTO, &m); /* flag */
	w.n = 12;
	assert_decode(PROTO_DATA, 0, &w, -EPROTO, &m); /* no data */
	w.n = 0;
	w64(&w, 0);
	w32(&w, 0); /* covers nothing */
	w8(&w, 1);
	assert_decode(PROTO_DATA, PROTO_DATA_ZSTD, &w, -EPROTO, &m);
	w.n = 0;
	w64(&w, 0);
	w32(&w, (4 << 20) + 1); /* more than 4 MiB */
	w8(&w, 1);
	assert_decode(PROTO_DATA, PROTO_DATA_ZSTD, &w, -EPROTO, &m);
	w.n = 0;
	w64(&w, UINT64_MAX - 10);
	w32(&w, 100); /* wraps */
	for (i = 0; i < 100; i++)
		w8(&w, 7);
	assert_decode(PROTO_DATA, 0, &w, -EPROTO, &m);

	/* ZERO: empty or wrapping */
	w.n = 0;
	w64(&w, 4096);
	w64(&w, 0);
	assert_decode(PROTO_ZERO, 0, &w, -EPROTO, &m);
	w.n = 0;
	w64(&w, UINT64_MAX - 4095);
	w64(&w, 8192);
	assert_decode(PROTO_ZERO, 0, &w, -EPROTO, &m);

	/* flags on types that have none, unknown types */
	w.n = 12;
	assert_decode(PROTO_CREDIT, 0x80, &w, -EPROTO, &m);
	assert_decode(0, 0, &w, -EPROTO, &m);
	assert_decode(12, 0, &w, -EPROTO, &m);
	assert_decode(255, 0, &w, -EPROTO, &m);
}

static void test_encode_refuses(void **state)
{
	static uint8_t buf[PROTO_MAX_PAYLOAD];
	uint8_t entries[17] = { 5 };
	struct vhdx_error err;
	struct msg m;
	uint8_t flags;

	(void)state;
	memset(&m, 0, sizeof(m));
	m.type = PROTO_HELLO;
	m.u.hello.version = 1;
	m.u.hello.block_size = 65536;
	m.u.hello.logical_sector = 512;
	strcpy(m.u.hello.name, "a/b");
	assert_int_equal(proto_encode(&m, buf, sizeof(buf), &flags, &err),
			 -EINVAL);
	strcpy(m.u.hello.name, "ab");
	assert_int_equal(proto_encode(&m, buf, sizeof(buf), &flags, &err),
			 46 + 2);
	assert_int_equal(proto_encode(&m, buf, 47, &flags, &err), -EMSGSIZE);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_HASHES;
	m.u.hashes.count = 1;
	m.u.hashes.entries = entries; /* kind 5 */
	assert_int_equal(proto_encode(&m, buf, sizeof(buf), &flags, &err),
			 -EINVAL);
	m.u.hashes.count = 0;
	assert_int_equal(proto_encode(&m, buf, sizeof(buf), &flags, &err),
			 -EINVAL);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_DATA;
	m.u.data.length = 10;
	m.u.data.data = buf;
	m.u.data.data_len = 9;
	assert_int_equal(proto_encode(&m, buf + 100, 1000, &flags, &err),
			 -EINVAL);
	m.u.data.compressed = true;
	assert_int_equal(proto_encode(&m, buf + 100, 1000, &flags, &err), 21);
	assert_int_equal(flags, PROTO_DATA_ZSTD);

	m.type = 42;
	assert_int_equal(proto_encode(&m, buf, sizeof(buf), &flags, &err),
			 -EINVAL);
}

/* ---- headers ------------------------------------------------------------ */

static void test_header(void **state)
{
	struct wb p = { .n = 0 }, f;
	struct frame fr;
	struct vhdx_error err;
	unsigned t;

	(void)state;
	w32(&p, 4);
	w64(&p, 8);
	frame_of(&f, PROTO_CREDIT, 0, &p);
	assert_int_equal(proto_parse_header(f.b, &fr, &err), 0);
	assert_int_equal(fr.type, PROTO_CREDIT);
	assert_int_equal(fr.flags, 0);
	assert_int_equal(fr.length, 12);
	assert_int_equal(fr.crc, ref_crc32c(p.b, 12));

	/* our writer agrees with the documented one */
	{
		uint8_t hdr[PROTO_HDR_LEN];

		proto_put_header(hdr, PROTO_CREDIT, 0, 12, fr.crc);
		assert_memory_equal(hdr, f.b, PROTO_HDR_LEN);
	}

	f.b[0] = 'h';
	assert_int_equal(proto_parse_header(f.b, &fr, &err), -EPROTO);
	assert_non_null(strstr(err.msg, "magic"));
	f.b[0] = 'H';
	f.b[2] = 0;
	assert_int_equal(proto_parse_header(f.b, &fr, &err), -EPROTO);
	f.b[2] = 12;
	assert_int_equal(proto_parse_header(f.b, &fr, &err), -EPROTO);
	f.b[2] = PROTO_CREDIT;
	f.b[3] = 1;
	assert_int_equal(proto_parse_header(f.b, &fr, &err), -EPROTO);
	f.b[3] = 0;

	/* every type: its limit passes, one more byte does not */
	for (t = 1; t <= PROTO_TYPE_MAX; t++) {
		f.b[2] = (uint8_t)t;
		f.b[4] = f.b[5] = f.b[6] = f.b[7] = 0;
		memcpy(f.b + 4, &(uint32_t){ proto_limit(t) }, 4);
		assert_int_equal(proto_parse_header(f.b, &fr, &err), 0);
		memcpy(f.b + 4, &(uint32_t){ proto_limit(t) + 1 }, 4);
		assert_int_equal(proto_parse_header(f.b, &fr, &err), -EMSGSIZE);
		f.b[4] = f.b[5] = f.b[6] = f.b[7] = 0xff;
		assert_int_equal(proto_parse_header(f.b, &fr, &err), -EMSGSIZE);
	}
	f.b[2] = PROTO_DATA;
	f.b[3] = PROTO_DATA_ZSTD;
	f.b[4] = 1, f.b[5] = f.b[6] = f.b[7] = 0;
	assert_int_equal(proto_parse_header(f.b, &fr, &err), 0);
	f.b[3] = 0x81;
	assert_int_equal(proto_parse_header(f.b, &fr, &err), -EPROTO);
}

/* ---- mutation loop ------------------------------------------------------ */

/* Re-derive the payload length from what decode accepted. */
static size_t implied_len(const struct msg *m)
{
	switch (m->type) {
	case PROTO_HELLO:
		return 46 + (size_t)m->u.hello.name_len;
	case PROTO_WELCOME:
		return 28;
	case PROTO_ERROR:
		return 6 + (size_t)m->u.error.message_len;
	case PROTO_HASHES:
		return 12 + 17 * (size_t)m->u.hashes.count;
	case PROTO_CREDIT:
		return 12;
	case PROTO_SUBREQ:
		return 8;
	case PROTO_SUBHASHES:
		return 12 + 16 * (size_t)m->u.subhashes.count;
	case PROTO_DATA:
		return 12 + (size_t)m->u.data.data_len;
	case PROTO_ZERO:
		return 16;
	case PROTO_DONE:
		return 0;
	case PROTO_FINISHED:
		return 12;
	}
	return (size_t)-1;
}

struct seed {
	uint8_t type, flags;
	struct wb p;
};

static void test_mutations(void **state)
{
	static struct seed seeds[13];
	static uint8_t enc[PROTO_MAX_PAYLOAD];
	static const uint32_t interesting[] = {
		0,	    1,		2,	    3,		11,
		12,	    13,		16,	    17,		45,
		46,	    47,		255,	    256,	1024,
		1025,	    4095,	4096,	    4097,	0x7fff,
		0x8000,	    0xffff,	0x10000,    0x400000,	0x400001,
		0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff,
	};
	unsigned nseeds = 0, i, k, iters = 200000, accepted = 0;
	uint64_t rs = 0x1234567887654321ull;
	struct vhdx_error err;
	struct msg m;
	struct wb w;
	uint8_t *exact, flags;
	long n;

	(void)state;
	/* One valid payload of each type (two DATA, small HASHES). */
	hello_bytes(&seeds[nseeds].p, 1, 1, "disk-\xc3\xa9", 7);
	seeds[nseeds++].type = PROTO_HELLO;
	w.n = 0;
	w32(&w, 1), w64(&w, 1 << 30), w32(&w, 512), w64(&w, 0), w32(&w, 64);
	seeds[nseeds].p = w, seeds[nseeds++].type = PROTO_WELCOME;
	w.n = 0;
	w32(&w, 3), w16(&w, 8), wbytes(&w, "mismatch", 8);
	seeds[nseeds].p = w, seeds[nseeds++].type = PROTO_ERROR;
	w.n = 0;
	w64(&w, 5), w32(&w, 3);
	for (i = 0; i < 3 * 17; i++)
		w8(&w, i % 17 ? (uint8_t)i : 1);
	seeds[nseeds].p = w, seeds[nseeds++].type = PROTO_HASHES;
	w.n = 0;
	w32(&w, 100), w64(&w, 77);
	seeds[nseeds].p = w, seeds[nseeds++].type = PROTO_CREDIT;
	w.n = 0;
	w64(&w, 3);
	seeds[nseeds].p = w, seeds[nseeds++].type = PROTO_SUBREQ;
	w.n = 0;
	w64(&w, 3), w32(&w, 2);
	for (i = 0; i < 32; i++)
		w8(&w, (uint8_t)i);
	seeds[nseeds].p = w, seeds[nseeds++].type = PROTO_SUBHASHES;
	w.n = 0;
	w64(&w, 4096), w32(&w, 20), wbytes(&w, "0123456789abcdefghij", 20);
	seeds[nseeds].p = w, seeds[nseeds++].type = PROTO_DATA;
	w.n = 0;
	w64(&w, 4096), w32(&w, 65536), wbytes(&w, "zstd!", 5);
	seeds[nseeds].p = w, seeds[nseeds].flags = PROTO_DATA_ZSTD;
	seeds[nseeds++].type = PROTO_DATA;
	w.n = 0;
	w64(&w, 0), w64(&w, 1 << 20);
	seeds[nseeds].p = w, seeds[nseeds++].type = PROTO_ZERO;
	w.n = 0;
	seeds[nseeds].p = w, seeds[nseeds++].type = PROTO_DONE;
	w.n = 0;
	w64(&w, 1), w32(&w, 2);
	seeds[nseeds].p = w, seeds[nseeds++].type = PROTO_FINISHED;

	for (i = 0; i < nseeds; i++)
		assert_int_equal(proto_decode(seeds[i].type, seeds[i].flags,
					      seeds[i].p.b, seeds[i].p.n, &m,
					      &err),
				 0);

	for (i = 0; i < iters; i++) {
		const struct seed *sd = &seeds[xs(&rs) % nseeds];
		uint8_t type = sd->type, fl = sd->flags;
		unsigned ops = 1 + xs(&rs) % 4;
		bool had_ctl = false;
		int ret;

		w.n = sd->p.n;
		memcpy(w.b, sd->p.b, w.n);
		for (k = 0; k < ops; k++) {
			uint64_t r = xs(&rs);
			size_t at = w.n ? (size_t)(r >> 8) % w.n : 0;
			uint32_t v = interesting[(r >> 40) %
						 (sizeof(interesting) /
						  sizeof(interesting[0]))];

			switch (r % 9) {
			case 0: /* flip a bit */
				if (w.n)
					w.b[at] ^=
						(uint8_t)(1u << (r >> 60) % 8);
				break;
			case 1: /* a random byte */
				if (w.n)
					w.b[at] = (uint8_t)(r >> 32);
				break;
			case 2: /* an interesting u16 */
				if (w.n >= 2 && at <= w.n - 2)
					memcpy(w.b + at, &v, 2);
				break;
			case 3: /* an interesting u32 */
				if (w.n >= 4 && at <= w.n - 4)
					memcpy(w.b + at, &v, 4);
				break;
			case 4: /* truncate */
				w.n = w.n ? (size_t)(r >> 16) % w.n : 0;
				break;
			case 5: /* grow */
				for (k = (unsigned)((r >> 16) % 40);
				     k && w.n < sizeof(w.b); k--)
					w.b[w.n++] = (uint8_t)xs(&rs);
				k = ops;
				break;
			case 6: /* another type */
				type = (uint8_t)((r >> 16) % 14);
				break;
			case 7: /* other flags */
				fl = (uint8_t)(r >> 16);
				break;
			case 8: /* exact length fields at known places */
				if (w.n >= 12)
					memcpy(w.b + 8, &v, 4);
				break;
			}
		}
		exact = malloc(w.n ? w.n : 1);
		assert_non_null(exact);
		memcpy(exact, w.b, w.n);
		ret = proto_decode(type, fl, exact, w.n, &m, &err);
		assert_true(ret == 0 || ret == -EPROTO || ret == -EMSGSIZE ||
			    ret == -EPROTONOSUPPORT);
		if (ret) {
			free(exact);
			continue;
		}
		accepted++;
		assert_int_equal(m.type, type);
		assert_true(w.n <= proto_limit(type));
		assert_int_equal(fl & ~proto_known_flags(type), 0);
		if (implied_len(&m) != w.n)
			fail_msg("iteration %u: %s of %zu bytes accepted, its "
				 "fields imply %zu",
				 i, proto_type_name(type), w.n,
				 implied_len(&m));
		if (type == PROTO_ERROR)
			for (k = 6; k < w.n; k++)
				had_ctl |= exact[k] < 0x20 || exact[k] == 0x7f;
		/* Accepted means canonical: encoding gives the same bytes. */
		n = proto_encode(&m, enc, sizeof(enc), &flags, &err);
		if (n != (long)w.n)
			fail_msg("iteration %u: %s re-encodes to %ld bytes, "
				 "not %zu: %s",
				 i, proto_type_name(type), n, w.n, err.msg);
		assert_int_equal(flags, fl);
		if (!had_ctl)
			assert_memory_equal(enc, exact, w.n);
		free(exact);
	}
	/* Sanity: the mutations both pass and fail the decoder. */
	fprintf(stderr, "mutations: %u of %u accepted\n", accepted, iters);
	assert_true(accepted > iters / 50);
	assert_true(accepted < iters / 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_limits_match_the_doc),
		cmocka_unit_test(test_hello),
		cmocka_unit_test(test_welcome),
		cmocka_unit_test(test_error),
		cmocka_unit_test(test_hashes),
		cmocka_unit_test(test_small_fixed_types),
		cmocka_unit_test(test_subhashes),
		cmocka_unit_test(test_data),
		cmocka_unit_test(test_malformed_hello),
		cmocka_unit_test(test_hello_repass),
		cmocka_unit_test(test_hello_unsupported),
		cmocka_unit_test(test_malformed_others),
		cmocka_unit_test(test_encode_refuses),
		cmocka_unit_test(test_header),
		cmocka_unit_test(test_mutations),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
