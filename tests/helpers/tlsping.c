/* SPDX-License-Identifier: MIT */
/*
 * tlsping.c - exercise the hvresync transport (agent/sync/tls*.c, wire.c)
 * for real, for tests/t-tls.sh.
 *
 *   tlsping server ADDR:PORT SECURITY [--max N]
 *	Print "listening ADDR:PORT" on stdout, then accept connections one
 *	after another and echo every well-formed frame back.  A malformed
 *	frame or failed handshake closes that connection (reason on stderr)
 *	and the next one is served.  With --max, exit after N connections:
 *	0 if all of them ended cleanly, 2 otherwise.
 *
 *   tlsping client ADDR:PORT SECURITY [--frames N] [--size BYTES]
 *	Send N frames of every message type (DATA up to BYTES) from one
 *	thread while another reads the echoes and compares each with what
 *	was sent.  Exit 0 when all match, 2 on any error (one line).
 *
 *   SECURITY: --psk-file F | --cert C --key K --ca CA | --insecure
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/sync/proto.h"
#include "agent/sync/tls.h"

#define IO_TIMEOUT_MS 10000

static const char usage[] =
	"usage: tlsping server ADDR:PORT SECURITY [--max N]\n"
	"       tlsping client ADDR:PORT SECURITY [--frames N] [--size BYTES]\n"
	"SECURITY: --psk-file F | --cert C --key K --ca CA | --insecure\n";

static void __attribute__((noreturn)) fail(const char *msg)
{
	fprintf(stderr, "tlsping: %s\n", msg);
	exit(2);
}

/* xorshift64*: deterministic bytes both threads can regenerate. */
static uint64_t rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ull;
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;

	while (n--)
		*p++ = (uint8_t)rnd(&s);
}

/*
 * Frame @i of a session: every type in turn, contents derived from @i.
 * @store holds variable parts (at least PROTO_MAX_PAYLOAD bytes).
 */
static void make_msg(unsigned i, size_t max_data, struct msg *m, uint8_t *store)
{
	uint64_t s = i + 1;
	uint32_t k, n;

	memset(m, 0, sizeof(*m));
	m->type = (uint8_t)(i % PROTO_TYPE_MAX + 1);
	switch (m->type) {
	case PROTO_HELLO:
		m->u.hello.version = PROTO_VERSION;
		m->u.hello.flags = i & 1 ? PROTO_HELLO_RESTART : 0;
		m->u.hello.block_size = 65536;
		m->u.hello.hash = i & 1;
		fill(m->u.hello.seed, 16, i);
		m->u.hello.virtual_size = rnd(&s);
		m->u.hello.logical_sector = 512;
		snprintf(m->u.hello.name, sizeof(m->u.hello.name),
			 "disk-%u-\xc3\xa9t\xc3\xa9", i);
		break;
	case PROTO_WELCOME:
		m->u.welcome.version = PROTO_VERSION;
		m->u.welcome.virtual_size = rnd(&s);
		m->u.welcome.logical_sector = 4096;
		m->u.welcome.resume_offset = rnd(&s);
		m->u.welcome.window = (uint32_t)rnd(&s);
		break;
	case PROTO_ERROR:
		m->u.error.code = (uint32_t)(i % 7 + 1);
		snprintf(m->u.error.message, sizeof(m->u.error.message),
			 "error number %u", i);
		break;
	case PROTO_HASHES:
		n = (uint32_t)(rnd(&s) % PROTO_HASHES_MAX + 1);
		fill(store, (size_t)n * PROTO_HASH_ENTRY_LEN, i);
		for (k = 0; k < n; k++)
			store[k * PROTO_HASH_ENTRY_LEN] &= 1;
		m->u.hashes.first_block = rnd(&s) >> 20;
		m->u.hashes.count = n;
		m->u.hashes.entries = store;
		break;
	case PROTO_CREDIT:
		m->u.credit.blocks = (uint32_t)rnd(&s);
		m->u.credit.done_through = rnd(&s);
		break;
	case PROTO_SUBREQ:
		m->u.subreq.block = rnd(&s);
		break;
	case PROTO_SUBHASHES:
		n = (uint32_t)(rnd(&s) % PROTO_SUBHASHES_MAX + 1);
		fill(store, (size_t)n * PROTO_HASH_LEN, i);
		m->u.subhashes.block = rnd(&s);
		m->u.subhashes.count = n;
		m->u.subhashes.hashes = store;
		break;
	case PROTO_DATA:
		n = (uint32_t)(rnd(&s) % max_data + 1);
		fill(store, n, i);
		m->u.data.offset = (rnd(&s) >> 24) * 4096;
		m->u.data.length = n;
		/* Not real zstd: the transport does not care what it is. */
		m->u.data.compressed = i & 2;
		m->u.data.data = store;
		m->u.data.data_len = n;
		break;
	case PROTO_ZERO:
		m->u.zero.offset = (rnd(&s) >> 24) * 4096;
		m->u.zero.length = 4096 * (1 + rnd(&s) % 1000);
		break;
	case PROTO_FINISHED:
		m->u.finished.bytes_written = rnd(&s);
		m->u.finished.seconds_merge = (uint32_t)rnd(&s);
		break;
	}
}

/* ---- server ------------------------------------------------------------- */

static int serve_one(struct conn *c, uint8_t *buf)
{
	struct vhdx_error err;
	struct frame f;
	struct msg m;
	unsigned frames = 0;
	int ret;

	conn_set_timeout(c, IO_TIMEOUT_MS);
	ret = conn_handshake(c, &err);
	if (ret) {
		fprintf(stderr, "tlsping: %s\n", err.msg);
		return ret;
	}
	fprintf(stderr, "tlsping: peer %s: connected, %s\n", conn_peer(c),
		conn_auth(c));
	for (;;) {
		ret = proto_recv(c, &f, buf, PROTO_MAX_PAYLOAD, &err);
		if (ret == -ECONNRESET && !strstr(err.msg, " after ")) {
			fprintf(stderr,
				"tlsping: peer %s: closed after %u "
				"frames\n",
				conn_peer(c), frames);
			return 0;
		}
		if (!ret) {
			ret = proto_decode(f.type, f.flags, buf, f.length, &m,
					   &err);
			if (ret)
				fprintf(stderr, "tlsping: peer %s: %s\n",
					conn_peer(c), err.msg);
		} else {
			fprintf(stderr, "tlsping: %s\n", err.msg);
		}
		if (ret)
			return ret;
		ret = proto_send(c, f.type, f.flags, buf, f.length, &err);
		if (ret) {
			fprintf(stderr, "tlsping: %s\n", err.msg);
			return ret;
		}
		frames++;
	}
}

static int run_server(const char *addr, const struct tls_config *cfg, long max)
{
	struct tls_listener *l;
	struct vhdx_error err;
	struct conn *c;
	uint8_t *buf = malloc(PROTO_MAX_PAYLOAD);
	long n = 0;
	int bad = 0, ret;

	if (!buf)
		fail("out of memory");
	if (tls_listen(addr, cfg, &l, &err))
		fail(err.msg);
	printf("listening %s\n", tls_listener_addr(l));
	fflush(stdout);
	while (max <= 0 || n < max) {
		ret = tls_accept(l, &c, &err);
		if (ret == -EAGAIN || ret == -EINTR)
			continue;
		if (ret)
			fail(err.msg);
		n++;
		if (serve_one(c, buf))
			bad++;
		conn_close(c);
	}
	tls_listener_close(l);
	free(buf);
	return bad ? 2 : 0;
}

/* ---- client ------------------------------------------------------------- */

struct client {
	struct conn *c;
	unsigned frames;
	size_t max_data;
	int ret;
	struct vhdx_error err;
};

static void *writer(void *arg)
{
	struct client *cl = arg;
	uint8_t *store = malloc(PROTO_MAX_PAYLOAD);
	struct msg m;
	unsigned i;

	cl->ret = -ENOMEM;
	if (!store)
		return NULL;
	cl->ret = 0;
	for (i = 0; i < cl->frames && !cl->ret; i++) {
		make_msg(i, cl->max_data, &m, store);
		cl->ret = proto_send_msg(cl->c, &m, &cl->err);
	}
	if (cl->ret)
		conn_abort(cl->c); /* unblock the reader */
	free(store);
	return NULL;
}

static int run_client(const char *addr, const struct tls_config *cfg,
		      unsigned frames, size_t max_data)
{
	struct client cl = { .frames = frames, .max_data = max_data };
	uint8_t *buf = malloc(PROTO_MAX_PAYLOAD);
	uint8_t *store = malloc(PROTO_MAX_PAYLOAD);
	uint8_t *want = malloc(PROTO_MAX_PAYLOAD);
	struct vhdx_error err;
	struct frame f;
	struct msg m;
	unsigned long long bytes = 0;
	pthread_t t;
	uint8_t flags;
	long n;
	unsigned i;
	int ret;

	if (!buf || !store || !want)
		fail("out of memory");
	if (tls_connect(addr, cfg, IO_TIMEOUT_MS, &cl.c, &err))
		fail(err.msg);
	if (pthread_create(&t, NULL, writer, &cl))
		fail("cannot start a thread");
	for (i = 0; i < frames; i++) {
		ret = proto_recv(cl.c, &f, buf, PROTO_MAX_PAYLOAD, &err);
		if (ret)
			break;
		make_msg(i, max_data, &m, store);
		n = proto_encode(&m, want, PROTO_MAX_PAYLOAD, &flags, &err);
		if (n < 0)
			break;
		if (f.type != m.type || f.flags != flags ||
		    f.length != (uint32_t)n || memcmp(buf, want, (size_t)n)) {
			snprintf(err.msg, sizeof(err.msg),
				 "peer %s: echo of "
				 "frame %u (%s) differs from what was sent",
				 conn_peer(cl.c), i, proto_type_name(m.type));
			ret = -EBADMSG;
			break;
		}
		bytes += PROTO_HDR_LEN + f.length;
	}
	if (i < frames)
		conn_abort(cl.c); /* unblock the writer */
	pthread_join(t, NULL);
	/*
	 * The reader sees the peer's alerts where the writer sees only a
	 * reset; the writer's own errors are worth more than a reset.
	 */
	if (i < frames && cl.ret && (ret == -ECONNRESET || ret == -EPIPE))
		fail(cl.err.msg);
	if (i < frames)
		fail(err.msg);
	if (cl.ret)
		fail(cl.err.msg);
	printf("tlsping: %u frames (%llu bytes) echoed by %s over %s\n", frames,
	       bytes, conn_peer(cl.c), conn_auth(cl.c));
	conn_close(cl.c);
	free(buf);
	free(store);
	free(want);
	return 0;
}

int main(int argc, char **argv)
{
	struct tls_config cfg = { .mode = TLS_MODE_PSK };
	struct vhdx_error err;
	const char *psk_file = NULL;
	bool insecure = false;
	unsigned long frames = 100, size = 1 << 20;
	long max = 0;
	int i;

	if (argc < 3 ||
	    (strcmp(argv[1], "server") && strcmp(argv[1], "client"))) {
		fputs(usage, stderr);
		return 2;
	}
	for (i = 3; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--insecure")) {
			insecure = true;
			continue;
		}
		if (!v) {
			fputs(usage, stderr);
			return 2;
		}
		i++;
		if (!strcmp(a, "--psk-file"))
			psk_file = v;
		else if (!strcmp(a, "--cert"))
			cfg.cert = v;
		else if (!strcmp(a, "--key"))
			cfg.key = v;
		else if (!strcmp(a, "--ca"))
			cfg.ca = v;
		else if (!strcmp(a, "--max"))
			max = strtol(v, NULL, 10);
		else if (!strcmp(a, "--frames"))
			frames = strtoul(v, NULL, 10);
		else if (!strcmp(a, "--size"))
			size = strtoul(v, NULL, 10);
		else {
			fputs(usage, stderr);
			return 2;
		}
	}
	if (!size || size > PROTO_DATA_MAX)
		fail("--size must be 1 to 4194304");
	if (insecure + !!psk_file + !!(cfg.cert || cfg.key || cfg.ca) != 1)
		fail("give exactly one of --psk-file, --cert/--key/--ca, "
		     "--insecure");
	if (insecure) {
		cfg.mode = TLS_MODE_INSECURE;
	} else if (psk_file) {
		if (tls_load_psk(psk_file, cfg.psk, &err))
			fail(err.msg);
	} else {
		cfg.mode = TLS_MODE_X509;
	}
	if (!strcmp(argv[1], "server"))
		return run_server(argv[2], &cfg, max);
	return run_client(argv[2], &cfg, (unsigned)frames, size);
}
