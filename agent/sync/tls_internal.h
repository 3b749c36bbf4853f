/* SPDX-License-Identifier: MIT */
/*
 * tls_internal.h - what the transport's files share and nobody else sees:
 * the connection itself and the helpers that build one.
 *
 *   tls_addr.c  address parsing and printing, the loopback test
 *   tls_ctx.c   OpenSSL set-up: the key file, PSK and X.509 contexts
 *   tls_conn.c  one connection: handshake, byte I/O, close
 *   tls.c       listeners and the client's connect
 */
#ifndef HVRESYNC_TLS_INTERNAL_H
#define HVRESYNC_TLS_INTERNAL_H

#include <arpa/inet.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "agent/sync/errmsg.h"
#include "agent/sync/tls.h"

#define ACCEPT_TIMEOUT_MS 30000
#define PEER_LEN (INET6_ADDRSTRLEN + 16)

struct conn {
	int fd;
	SSL *ssl;	      /* NULL for plain TCP */
	pthread_mutex_t lock; /* serialises every call on ssl */
	int timeout_ms;
	int64_t deadline; /* mono_ms after which all I/O fails; 0: none */
	enum tls_mode mode;
	bool server;
	bool handshaken;
	bool broken; /* fatal TLS error: no more I/O */
	bool quiet;  /* socket error: no close_notify */
	int fatal;   /* what broke it: 0 (EOF) or -errno */
	char fatal_msg[200];
	bool bad_identity; /* peer offered a PSK identity not ours */
	uint8_t psk[TLS_PSK_LEN];
	/* Server: the keys it admits besides c->psk (the listener's copy,
	 * which outlives its connections), and which one authenticated. */
	const struct tls_key_entry *keys;
	unsigned nkeys;
	bool have_agent_key; /* c->psk holds the agent-wide key */
	bool agent_key;	     /* the agent key authenticated the peer */
	char key_id[TLS_KEY_ID_LEN + 1];
	char key_vm[128];  /* whose key, for logs; "" for the agent's */
	char bad_id[64];   /* the refused identity, printable, for logs */
	char **cert_names; /* the peer certificate's CN and DNS SANs */
	unsigned ncert_names;
	char identity[200]; /* conn_identity() */
	char offer[64];	    /* client: the PSK identity it offers */
	char peer[PEER_LEN];
	char auth[256];
};

/* A key a listener admits, with its id computed once. */
struct tls_key_entry {
	char *vm; /* NULL: the agent-wide key */
	uint8_t psk[TLS_PSK_LEN];
	char id[TLS_KEY_ID_LEN + 1];
};

/* tls_addr.c: "1.2.3.4:7433" or "[::1]:7433"; v4-mapped shows as v4. */
void tls_format_sockaddr(const struct sockaddr *sa, char *out, size_t len);

/* tls_ctx.c: OpenSSL and SIGPIPE set up once per process. */
void tls_init(void);
/* The reason of the last OpenSSL error on this thread, or "". */
const char *tls_ssl_reason(void);
/* A context for @cfg's mode, its files loaded and checked. */
SSL_CTX *tls_make_ctx(const struct tls_config *cfg, bool server,
		      struct vhdx_error *err);

/* tls_conn.c */
struct conn *tls_conn_new(int fd, const struct sockaddr *peer,
			  enum tls_mode mode, const uint8_t *psk, bool server);
/* Keepalive and no Nagle on a TCP socket. */
void tls_set_sockopts(int fd);
/* Give @c its SSL object (client or server side, as c->server says). */
int tls_conn_attach_ssl(struct conn *c, SSL_CTX *ctx, struct vhdx_error *err);
/* Milliseconds left until @deadline (mono_ms), for poll(): -1 if 0. */
int tls_ms_left(int64_t deadline);
/* Drive the handshake until done or @deadline (mono_ms; 0: none). */
int tls_do_handshake(struct conn *c, int64_t deadline, struct vhdx_error *err);

#endif
