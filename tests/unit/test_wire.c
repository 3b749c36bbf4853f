/* SPDX-License-Identifier: MIT */
/*
 * test_wire.c - unit tests of protocol frames over a connection
 * (agent/sync/wire.c on tls_conn.c's plain-TCP path): frames received over
 * a socketpair (header refused before the payload is read, bad CRC,
 * truncation), every type sent and received through an echo while two
 * threads share the connection, and the transport's address and key file
 * parsers.  The codec itself is test_proto.c.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent/sync/proto.h"
#include "agent/sync/tls.h"
#include "tests/unit/frame_writer.h"

/* ---- frames over a socket ----------------------------------------------- */

struct pair {
	struct conn *c; /* ours */
	int peer;	/* the raw other end */
};

static void pair_open(struct pair *p)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(conn_from_fd(sv[0], "test", &p->c), 0);
	conn_set_timeout(p->c, 5000);
	p->peer = sv[1];
}

static void pair_close(struct pair *p)
{
	conn_close(p->c);
	if (p->peer >= 0)
		close(p->peer);
}

static void raw_send(int fd, const void *buf, size_t len)
{
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
}

static void test_recv(void **state)
{
	static uint8_t buf[PROTO_MAX_PAYLOAD];
	struct wb p = { .n = 0 }, f;
	struct vhdx_error err;
	struct frame fr;
	struct msg m;
	struct pair s;
	uint8_t marker[8];

	(void)state;
	pair_open(&s);
	w32(&p, 4);
	w64(&p, 8);
	frame_of(&f, PROTO_CREDIT, 0, &p);

	/* a good frame, then one with a bad CRC */
	raw_send(s.peer, f.b, f.n);
	assert_int_equal(proto_recv_msg(s.c, &m, buf, sizeof(buf), &err), 0);
	assert_int_equal(m.u.credit.blocks, 4);
	f.b[PROTO_HDR_LEN + 3] ^= 1;
	raw_send(s.peer, f.b, f.n);
	assert_int_equal(proto_recv(s.c, &fr, buf, sizeof(buf), &err), -EPROTO);
	assert_non_null(strstr(err.msg, "peer test: malformed frame"));
	assert_non_null(strstr(err.msg, "CRC"));
	pair_close(&s);

	/* oversized: refused from the header, the payload left unread */
	pair_open(&s);
	f.b[2] = PROTO_SUBREQ;
	f.b[4] = 9, f.b[5] = f.b[6] = f.b[7] = 0;
	raw_send(s.peer, f.b, PROTO_HDR_LEN);
	raw_send(s.peer, "MARKER!!", 8);
	assert_int_equal(proto_recv(s.c, &fr, buf, sizeof(buf), &err),
			 -EMSGSIZE);
	assert_int_equal(conn_read_full(s.c, marker, 8, &err), 0);
	assert_memory_equal(marker, "MARKER!!", 8);
	/* longer than the caller's buffer: also before reading */
	frame_of(&f, PROTO_CREDIT, 0, &p);
	raw_send(s.peer, f.b, PROTO_HDR_LEN);
	raw_send(s.peer, "MARKER!!", 8);
	assert_int_equal(proto_recv(s.c, &fr, buf, 11, &err), -EMSGSIZE);
	assert_int_equal(conn_read_full(s.c, marker, 8, &err), 0);
	assert_memory_equal(marker, "MARKER!!", 8);
	pair_close(&s);

	/* inner length mismatch with a good CRC: recv passes, decode not */
	pair_open(&s);
	p.n = 0;
	w64(&p, 0);
	w32(&p, 3);
	wbytes(&p, buf, 2 * 17);
	memset(p.b + 12, 1, 2 * 17);
	frame_of(&f, PROTO_HASHES, 0, &p);
	raw_send(s.peer, f.b, f.n);
	assert_int_equal(proto_recv_msg(s.c, &m, buf, sizeof(buf), &err),
			 -EPROTO);
	assert_non_null(strstr(err.msg, "peer test: malformed frame: HASHES"));
	pair_close(&s);

	/* truncated payload, truncated header, clean close */
	pair_open(&s);
	p.n = 0;
	w32(&p, 4);
	w64(&p, 8);
	frame_of(&f, PROTO_CREDIT, 0, &p);
	raw_send(s.peer, f.b, f.n - 5);
	close(s.peer);
	s.peer = -1;
	assert_int_equal(proto_recv(s.c, &fr, buf, sizeof(buf), &err),
			 -ECONNRESET);
	assert_non_null(strstr(err.msg, "after 7 of 12 bytes"));
	pair_close(&s);
	pair_open(&s);
	raw_send(s.peer, f.b, 5);
	close(s.peer);
	s.peer = -1;
	assert_int_equal(proto_recv(s.c, &fr, buf, sizeof(buf), &err),
			 -ECONNRESET);
	pair_close(&s);
	pair_open(&s);
	close(s.peer);
	s.peer = -1;
	assert_int_equal(proto_recv(s.c, &fr, buf, sizeof(buf), &err),
			 -ECONNRESET);
	assert_string_equal(err.msg, "peer test: connection closed");
	pair_close(&s);
}

/* proto_send_msg and proto_recv_msg agree, for each type, in one stream. */
static uint8_t sr_data[PROTO_DATA_MAX];
static uint8_t sr_entries[PROTO_HASHES_MAX * PROTO_HASH_ENTRY_LEN];

static void make_typed(unsigned t, struct msg *m)
{
	memset(m, 0, sizeof(*m));
	m->type = (uint8_t)t;
	switch (t) {
	case PROTO_HELLO:
		m->u.hello.version = 1;
		m->u.hello.block_size = 1 << 22;
		m->u.hello.logical_sector = 512;
		strcpy(m->u.hello.name, "disk");
		break;
	case PROTO_WELCOME:
		m->u.welcome.version = 1;
		m->u.welcome.window = 9;
		break;
	case PROTO_ERROR:
		strcpy(m->u.error.message, "nope");
		break;
	case PROTO_HASHES:
		m->u.hashes.count = PROTO_HASHES_MAX;
		m->u.hashes.entries = sr_entries;
		break;
	case PROTO_SUBHASHES:
		m->u.subhashes.count = PROTO_SUBHASHES_MAX;
		m->u.subhashes.hashes = sr_data;
		break;
	case PROTO_DATA:
		m->u.data.offset = 1 << 30;
		m->u.data.length = PROTO_DATA_MAX;
		m->u.data.data = sr_data;
		m->u.data.data_len = PROTO_DATA_MAX;
		break;
	case PROTO_ZERO:
		m->u.zero.length = 4096;
		break;
	}
}

static void *send_all(void *arg)
{
	struct conn *c = arg;
	struct vhdx_error err;
	struct msg m;
	unsigned t, round;

	for (round = 0; round < 3; round++)
		for (t = 1; t <= PROTO_TYPE_MAX; t++) {
			make_typed(t, &m);
			if (proto_send_msg(c, &m, &err)) {
				fprintf(stderr, "send: %s\n", err.msg);
				return (void *)1;
			}
		}
	return NULL;
}

static void test_send_recv_all_types(void **state)
{
	static uint8_t buf[PROTO_MAX_PAYLOAD];
	struct vhdx_error err;
	struct msg m, got;
	struct conn *c;
	pthread_t th;
	void *th_ret;
	int sv[2];
	pid_t pid;
	unsigned t, round;
	uint32_t i;

	(void)state;
	for (i = 0; i < sizeof(sr_data); i++)
		sr_data[i] = (uint8_t)(i * 31 + 7);
	for (i = 0; i < PROTO_HASHES_MAX; i++)
		sr_entries[i * 17] = i & 1;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	/* A child process echoes the byte stream back. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		ssize_t n;

		close(sv[0]);
		while ((n = read(sv[1], buf, 65536)) > 0)
			if (write(sv[1], buf, (size_t)n) != n)
				_exit(1);
		_exit(0);
	}
	close(sv[1]);
	assert_int_equal(conn_from_fd(sv[0], "echo", &c), 0);
	conn_set_timeout(c, 10000);

	/* One thread writes while this one reads the same connection. */
	assert_int_equal(pthread_create(&th, NULL, send_all, c), 0);
	for (round = 0; round < 3; round++)
		for (t = 1; t <= PROTO_TYPE_MAX; t++) {
			make_typed(t, &m);
			assert_int_equal(
				proto_recv_msg(c, &got, buf, sizeof(buf), &err),
				0);
			assert_int_equal(got.type, t);
			if (t == PROTO_DATA) {
				assert_int_equal(got.u.data.length,
						 PROTO_DATA_MAX);
				assert_memory_equal(got.u.data.data, sr_data,
						    PROTO_DATA_MAX);
			}
			if (t == PROTO_HASHES)
				assert_memory_equal(got.u.hashes.entries,
						    sr_entries,
						    sizeof(sr_entries));
			if (t == PROTO_SUBHASHES)
				assert_memory_equal(got.u.subhashes.hashes,
						    sr_data, 16 * 1024);
			if (t == PROTO_HELLO)
				assert_string_equal(got.u.hello.name, "disk");
			if (t == PROTO_ERROR)
				assert_string_equal(got.u.error.message,
						    "nope");
		}
	assert_int_equal(pthread_join(th, &th_ret), 0);
	assert_null(th_ret);
	conn_close(c);
	assert_int_equal(waitpid(pid, NULL, 0), pid);
}

/* ---- batches ---------------------------------------------------------------
 */

static bool peer_has_bytes(int fd)
{
	char b;

	return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 1;
}

static void test_batch_order_and_flush(void **state)
{
	static uint8_t buf[PROTO_MAX_PAYLOAD];
	struct proto_batch b;
	struct vhdx_error err;
	struct msg m, got;
	struct pair p;
	struct conn *rc;
	uint32_t i;

	(void)state;
	for (i = 0; i < sizeof(sr_data); i++)
		sr_data[i] = (uint8_t)(i * 13 + 1);
	pair_open(&p);
	assert_int_equal(conn_from_fd(p.peer, "peer", &rc), 0);
	conn_set_timeout(rc, 5000);
	p.peer = -1; /* rc owns it now */
	assert_int_equal(proto_batch_init(&b, 4096), 0);
	assert_int_equal(proto_batch_age_ns(&b), 0);

	/* Small frames wait in the batch: nothing reaches the peer. */
	for (i = 0; i < 10; i++) {
		memset(&m, 0, sizeof(m));
		m.type = PROTO_SUBREQ;
		m.u.subreq.block = i;
		assert_int_equal(proto_batch_msg(p.c, &b, &m, &err), 0);
	}
	assert_true(b.len > 0);
	assert_false(peer_has_bytes(conn_fd(rc)));

	/* A frame bigger than the batch goes after what it held. */
	memset(&m, 0, sizeof(m));
	m.type = PROTO_DATA;
	m.u.data.offset = 4096;
	m.u.data.length = 65536;
	m.u.data.data = sr_data;
	m.u.data.data_len = 65536;
	assert_int_equal(proto_batch_msg(p.c, &b, &m, &err), 0);
	assert_int_equal(b.len, 0);

	/* And one more small frame, written out by the flush. */
	memset(&m, 0, sizeof(m));
	m.type = PROTO_CREDIT;
	m.u.credit.blocks = 3;
	m.u.credit.done_through = 65536;
	assert_int_equal(proto_batch_msg(p.c, &b, &m, &err), 0);
	assert_int_equal(proto_batch_flush(p.c, &b, &err), 0);
	assert_int_equal(b.len, 0);

	for (i = 0; i < 10; i++) {
		assert_int_equal(
			proto_recv_msg(rc, &got, buf, sizeof(buf), &err), 0);
		assert_int_equal(got.type, PROTO_SUBREQ);
		assert_int_equal(got.u.subreq.block, i);
	}
	assert_int_equal(proto_recv_msg(rc, &got, buf, sizeof(buf), &err), 0);
	assert_int_equal(got.type, PROTO_DATA);
	assert_int_equal(got.u.data.length, 65536);
	assert_memory_equal(got.u.data.data, sr_data, 65536);
	assert_int_equal(proto_recv_msg(rc, &got, buf, sizeof(buf), &err), 0);
	assert_int_equal(got.type, PROTO_CREDIT);
	assert_int_equal(got.u.credit.done_through, 65536);
	assert_false(peer_has_bytes(conn_fd(rc)));

	/* A frame the peer would refuse is refused here, and not added. */
	memset(&m, 0, sizeof(m));
	m.type = PROTO_SUBREQ;
	assert_int_equal(proto_batch_msg(p.c, &b, &m, &err), 0);
	i = (uint32_t)b.len;
	memset(&m, 0, sizeof(m));
	m.type = PROTO_HASHES;
	m.u.hashes.count = 0; /* a HASHES frame must carry an entry */
	assert_true(proto_batch_msg(p.c, &b, &m, &err) < 0);
	assert_int_equal(b.len, i);
	proto_batch_free(&b);
	conn_close(rc);
	pair_close(&p);
}

/* ---- addresses and key files (tls_addr.c, tls_ctx.c) -------------------- */

static void test_parse_addr(void **state)
{
	char host[64];
	uint16_t port;

	(void)state;
	assert_int_equal(
		tls_parse_addr("10.1.2.3:99", host, sizeof(host), &port), 0);
	assert_string_equal(host, "10.1.2.3");
	assert_int_equal(port, 99);
	assert_int_equal(tls_parse_addr(":7000", host, sizeof(host), &port), 0);
	assert_string_equal(host, "");
	assert_int_equal(port, 7000);
	assert_int_equal(tls_parse_addr("[::1]:8", host, sizeof(host), &port),
			 0);
	assert_string_equal(host, "::1");
	assert_int_equal(port, 8);
	assert_int_equal(tls_parse_addr("[fe80::1]", host, sizeof(host), &port),
			 0);
	assert_int_equal(port, 7433);
	assert_int_equal(tls_parse_addr("fd00::2", host, sizeof(host), &port),
			 0);
	assert_string_equal(host, "fd00::2");
	assert_int_equal(port, 7433);
	assert_int_equal(tls_parse_addr("backup", host, sizeof(host), &port),
			 0);
	assert_int_equal(port, 7433);
	assert_int_equal(tls_parse_addr("h:65536", host, sizeof(host), &port),
			 -EINVAL);
	assert_int_equal(tls_parse_addr("h:", host, sizeof(host), &port),
			 -EINVAL);
	assert_int_equal(tls_parse_addr("h:12a", host, sizeof(host), &port),
			 -EINVAL);
	assert_int_equal(tls_parse_addr("[::1", host, sizeof(host), &port),
			 -EINVAL);
	assert_int_equal(tls_parse_addr("[::1]x", host, sizeof(host), &port),
			 -EINVAL);
	assert_int_equal(tls_parse_addr("", host, sizeof(host), &port),
			 -EINVAL);
}

static void write_key(const char *path, const char *text, mode_t mode)
{
	FILE *f;

	unlink(path);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
}

static void test_load_psk(void **state)
{
	static const char hex[] = "000102030405060708090a0b0c0d0e0f"
				  "101112131415161718191A1B1C1D1E1F";
	char dir[] = "/tmp/test_wire.XXXXXX", path[64], text[80];
	uint8_t psk[TLS_PSK_LEN];
	struct vhdx_error err;
	int i;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/key", dir);

	snprintf(text, sizeof(text), "%s\n", hex);
	write_key(path, text, 0600);
	assert_int_equal(tls_load_psk(path, psk, &err), 0);
	for (i = 0; i < TLS_PSK_LEN; i++)
		assert_int_equal(psk[i], i);
	write_key(path, hex, 0400);
	assert_int_equal(tls_load_psk(path, psk, &err), 0);

	write_key(path, text, 0644);
	assert_int_equal(tls_load_psk(path, psk, &err), -EPERM);
	assert_non_null(strstr(err.msg, "readable by group or others "
					"(mode 0644): run chmod 600"));
	write_key(path, text, 0620);
	assert_int_equal(tls_load_psk(path, psk, &err), -EPERM);

	snprintf(text, sizeof(text), "%s\r\n", hex);
	write_key(path, text, 0600);
	assert_int_equal(tls_load_psk(path, psk, &err), -EINVAL);
	snprintf(text, sizeof(text), "%.62s\n", hex);
	write_key(path, text, 0600);
	assert_int_equal(tls_load_psk(path, psk, &err), -EINVAL);
	assert_non_null(strstr(err.msg, path));
	snprintf(text, sizeof(text), "%s0\n", hex);
	write_key(path, text, 0600);
	assert_int_equal(tls_load_psk(path, psk, &err), -EINVAL);
	snprintf(text, sizeof(text), "%s\n\n", hex);
	write_key(path, text, 0600);
	assert_int_equal(tls_load_psk(path, psk, &err), -EINVAL);
	snprintf(text, sizeof(text), "%s\n", hex);
	text[10] = 'x';
	write_key(path, text, 0600);
	assert_int_equal(tls_load_psk(path, psk, &err), -EINVAL);
	write_key(path, "", 0600);
	assert_int_equal(tls_load_psk(path, psk, &err), -EINVAL);
	unlink(path);
	assert_int_equal(tls_load_psk(path, psk, &err), -ENOENT);
	assert_int_equal(tls_load_psk(dir, psk, &err) < 0, 1);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_recv),
		cmocka_unit_test(test_send_recv_all_types),
		cmocka_unit_test(test_batch_order_and_flush),
		cmocka_unit_test(test_parse_addr),
		cmocka_unit_test(test_load_psk),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
