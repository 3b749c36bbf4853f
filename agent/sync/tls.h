/* SPDX-License-Identifier: MIT */
/*
 * tls.h - the network transport of the hvresync protocol: TCP listeners
 * and connections, authenticated with TLS 1.3 (pre-shared key or X.509) or,
 * on loopback only, plain TCP.  See docs/protocol.md, "Transport".
 *
 * Every function returns 0 or a negative errno.  When it fails and @err is
 * not NULL, err->msg holds one line naming what failed, e.g.
 * "peer 127.0.0.1:7433: authentication failed (...)" or
 * "key file /etc/hvresync/key: ...", ready for error_msg("%s", err->msg).
 *
 * Sockets are non-blocking underneath; reads and writes wait in poll() and
 * give up with -ETIMEDOUT after the connection's timeout without progress.
 * One thread may read a connection while another writes it (the session
 * pipelines HASHES against DATA); each direction must have a single user.
 *
 * The first call into this module sets SIGPIPE to SIG_IGN: a peer that
 * vanishes must show up as -EPIPE, not kill the daemon.
 */
#ifndef HVRESYNC_TLS_H
#define HVRESYNC_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/sync/common.h"
#include "vhdx/vhdx.h"

#define TLS_DEFAULT_PORT 7433
#define TLS_PSK_LEN 32
#define TLS_PSK_IDENTITY "hvresync/1"
/*
 * A key other than the agent-wide one (a VM's own, issue 15) is offered
 * under the identity TLS_PSK_KEY_PREFIX + its key id: 32 hex digits of
 * SHA-256("hvresync key id" NUL, key), which names the key without
 * revealing it.  The server picks the key by that id, so a primary need
 * not know whose key it holds, and the server knows which key
 * authenticated the connection.
 */
#define TLS_PSK_KEY_PREFIX "hvresync/1 key "
#define TLS_KEY_ID_LEN 32

enum tls_mode {
	TLS_MODE_PSK,	   /* TLS 1.3 external PSK, no certificates */
	TLS_MODE_X509,	   /* certificates both ways, checked against ca */
	TLS_MODE_INSECURE, /* plain TCP, loopback addresses only */
};

/* A VM's own pre-shared key, which a server admits besides its own. */
struct tls_vm_key {
	const char *vm; /* whose key it is, for logs */
	uint8_t psk[TLS_PSK_LEN];
};

struct tls_config {
	enum tls_mode mode;
	uint8_t psk[TLS_PSK_LEN]; /* TLS_MODE_PSK: see tls_load_psk() */
	/* Client, TLS_MODE_PSK: @psk is not the agent-wide key but a VM's
	 * own: offer it under its key id, not TLS_PSK_IDENTITY. */
	bool psk_by_id;
	/* Server, TLS_MODE_PSK: more keys to admit, picked by their key id
	 * (copied by tls_listen()); conn_cred() says which one it was. */
	const struct tls_vm_key *vm_keys;
	unsigned nvm_keys;
	const char *cert; /* TLS_MODE_X509: PEM chain of this side */
	const char *key;  /* TLS_MODE_X509: PEM private key */
	const char *ca;	  /* TLS_MODE_X509: PEM CA(s) to trust */
};

struct tls_listener;
struct conn;

/*
 * Read a pre-shared key file: one line of exactly 64 hex digits (a final
 * newline is allowed), not accessible by group or others.  The message
 * names @path and never shows key material.
 */
int tls_load_psk(const char *path, uint8_t psk[TLS_PSK_LEN],
		 struct vhdx_error *err);

/* The key id of @psk (TLS_KEY_ID_LEN hex digits and a NUL): not secret. */
void tls_psk_key_id(const uint8_t psk[TLS_PSK_LEN],
		    char id[TLS_KEY_ID_LEN + 1]);

/*
 * Split "HOST:PORT", ":PORT", "[V6]:PORT", "HOST" or a bare IPv6 address
 * into @host (empty for ":PORT") and @port (TLS_DEFAULT_PORT when absent).
 * Returns -EINVAL for an empty or malformed address or a bad port.
 */
int tls_parse_addr(const char *addr, char *host, size_t hostlen,
		   uint16_t *port);

/*
 * Bind and listen on @addr (see tls_parse_addr; ":PORT" means every
 * address, IPv6 and IPv4).  Port 0 picks a free port: tls_listener_addr()
 * tells which.  TLS_MODE_INSECURE is refused unless @addr is loopback.
 * The certificate files are loaded (and checked) here, once.
 */
int tls_listen(const char *addr, const struct tls_config *cfg,
	       struct tls_listener **out, struct vhdx_error *err);
/* The bound address, "127.0.0.1:7433" or "[::]:7433". */
const char *tls_listener_addr(const struct tls_listener *l);
/* The listening socket (non-blocking), for poll() in a server loop. */
int tls_listener_fd(const struct tls_listener *l);
void tls_listener_close(struct tls_listener *l);

/*
 * Wait for and accept one TCP connection.  No TLS yet: run
 * conn_handshake() on it, typically in the session's own thread so a slow
 * client cannot stall the accept loop.  Returns -EINTR when a signal
 * interrupts the wait (so the server can check its stop flag), -EAGAIN
 * when a connection went away before it was accepted.  The connection's
 * timeout starts at 30 s.
 */
int tls_accept(struct tls_listener *l, struct conn **out,
	       struct vhdx_error *err);
/* Server side TLS handshake (a no-op in insecure mode). */
int conn_handshake(struct conn *c, struct vhdx_error *err);

/*
 * Resolve @addr (tls_parse_addr form), connect to the first address that
 * answers and complete the TLS handshake, all within @timeout_ms (<= 0: no
 * limit).  The connection keeps @timeout_ms as its I/O timeout.
 * TLS_MODE_INSECURE is refused unless the resolved address is loopback.
 */
int tls_connect(const char *addr, const struct tls_config *cfg, int timeout_ms,
		struct conn **out, struct vhdx_error *err);

/*
 * Read exactly @len bytes.  -ECONNRESET when the peer closed the
 * connection (the message says after how many bytes), -ETIMEDOUT, -EPROTO
 * for a TLS failure, other -errno from the socket.
 */
int conn_read_full(struct conn *c, void *buf, size_t len,
		   struct vhdx_error *err);
/* Write all @len bytes.  -EPIPE/-ECONNRESET when the peer is gone. */
int conn_write_full(struct conn *c, const void *buf, size_t len,
		    struct vhdx_error *err);

/*
 * Wrap an already connected stream socket (socketpair, socket activation
 * of a test harness) as a plain-TCP connection; it takes over @fd (made
 * non-blocking) and names the peer @peer.  No TLS, no loopback check.
 */
int conn_from_fd(int fd, const char *peer, struct conn **out);

/* Give up waiting after @ms without progress (<= 0: wait forever). */
void conn_set_timeout(struct conn *c, int ms);
/*
 * A hard limit on top of the timeout: from @ms after now, the handshake,
 * every read and every write fail with -ETIMEDOUT whatever progress they
 * make (<= 0: no limit).  A server bounds how long an unauthenticated
 * peer can hold a connection with it, one byte at a time or not at all.
 */
void conn_set_deadline(struct conn *c, int ms);
/* "127.0.0.1:7433" or "[::1]:7433": the numeric peer address. */
const char *conn_peer(const struct conn *c);
/* How the peer was authenticated, for logs: "TLS 1.3, pre-shared key",
 * "TLS 1.3, certificate CN=...", "plain TCP (insecure)". */
const char *conn_auth(const struct conn *c);
/*
 * Who the peer is, for authorization (server side, after the handshake):
 * the key it used (its id, whether it is the agent-wide key), or the
 * names of its certificate (subject CN, then its DNS SANs), or plain TCP.
 * The strings live as long as @c.
 */
void conn_cred(const struct conn *c, struct sync_cred *out);
/* The peer's identity in a few words for logs, no secrets: "key of VM
 * a (id 3f2a...)", "the agent key", "certificate CN=host1". */
const char *conn_identity(const struct conn *c);
/* The socket, for poll() (data may also wait inside TLS: read first). */
int conn_fd(const struct conn *c);
/* Whether bytes from the peer wait in the TLS layer (read ahead), so a
 * read may not need the socket; false for plain TCP. */
bool conn_input_buffered(struct conn *c);
/*
 * Make every blocked and later read or write on @c fail (shutdown(2) of
 * the socket); safe to call from another thread.  conn_close() still
 * frees it.
 */
void conn_abort(struct conn *c);
/* Send a TLS close_notify if possible (never waits), close and free. */
void conn_close(struct conn *c);
/*
 * Close gracefully after a last frame: send close_notify, shut our
 * direction, then read and drop what the peer still sends until it
 * closes or @ms pass.  Closing a socket with unread data makes the kernel
 * send a reset, which a relay on the way may pass on before the frame
 * itself, so the peer would see "reset" instead of the ERROR that says
 * why.  conn_close() must still be called.
 */
void conn_linger(struct conn *c, int ms);

/* Whether a numeric or resolved address is loopback (127/8, ::1,
 * ::ffff:127.0.0.0/104). */
struct sockaddr;
bool tls_addr_is_loopback(const struct sockaddr *sa);

#endif
