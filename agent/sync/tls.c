/* SPDX-License-Identifier: MIT */
/*
 * tls.c - hvresync's transport: TCP listeners and connections under
 * TLS 1.3 (external pre-shared key or X.509) or loopback-only plain TCP.
 *
 * Sockets are non-blocking and every OpenSSL call on a connection runs
 * under the connection's mutex; waiting happens in poll() outside it.
 * That lets one thread read while another writes the same connection,
 * which a single SSL object does not allow on its own.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "agent/sync/tls.h"

#define ACCEPT_TIMEOUT_MS 30000
#define PEER_LEN (INET6_ADDRSTRLEN + 16)

struct tls_listener {
	int fd;
	SSL_CTX *ctx;		/* NULL for plain TCP */
	enum tls_mode mode;
	uint8_t psk[TLS_PSK_LEN];
	char addr[PEER_LEN];
};

struct conn {
	int fd;
	SSL *ssl;		/* NULL for plain TCP */
	pthread_mutex_t lock;	/* serialises every call on ssl */
	int timeout_ms;
	enum tls_mode mode;
	bool server;
	bool handshaken;
	bool broken;		/* fatal TLS error: no more I/O */
	bool quiet;		/* socket error: no close_notify */
	int fatal;		/* what broke it: 0 (EOF) or -errno */
	char fatal_msg[200];
	bool bad_identity;	/* peer offered a PSK identity not ours */
	uint8_t psk[TLS_PSK_LEN];
	char peer[PEER_LEN];
	char auth[256];
};

/* TLS_AES_256_GCM_SHA384, the one suite the PSK mode allows. */
static const unsigned char psk_suite_id[2] = { 0x13, 0x02 };

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
	OPENSSL_init_ssl(0, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static void tls_init(void)
{
	pthread_once(&init_once, global_init);
}

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

static void __attribute__((format(printf, 3, 4)))
peer_err(const struct conn *c, struct vhdx_error *err, const char *fmt, ...)
{
	size_t n;
	va_list ap;

	if (!err)
		return;
	n = (size_t)snprintf(err->msg, sizeof(err->msg), "peer %s: ", c->peer);
	if (n >= sizeof(err->msg))
		return;
	va_start(ap, fmt);
	vsnprintf(err->msg + n, sizeof(err->msg) - n, fmt, ap);
	va_end(ap);
}

/* The reason of the last OpenSSL error on this thread, or "". */
static const char *ssl_reason(void)
{
	unsigned long e = ERR_peek_last_error();
	const char *r;

	if (!e)
		return "";
	r = ERR_reason_error_string(e);
	return r ? r : "unknown TLS error";
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- addresses ---------------------------------------------------------- */

bool tls_addr_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		const uint8_t *b = in6->sin6_addr.s6_addr;

		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return true;
		return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && b[12] == 127;
	}
	return false;
}

/* "1.2.3.4:7433" or "[::1]:7433"; a v4-mapped v6 address shows as v4. */
static void format_sockaddr(const struct sockaddr *sa, char *out, size_t len)
{
	char host[INET6_ADDRSTRLEN];
	uint16_t port;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(out, len, "%s:%u", host, ntohs(in->sin_port));
		return;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;

		port = ntohs(in6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host,
				  sizeof(host));
			snprintf(out, len, "%s:%u", host, port);
		} else {
			inet_ntop(AF_INET6, &in6->sin6_addr, host,
				  sizeof(host));
			snprintf(out, len, "[%s]:%u", host, port);
		}
		return;
	}
	snprintf(out, len, "(address family %d)", sa->sa_family);
}

static int parse_port(const char *s, uint16_t *port)
{
	unsigned long v = 0;

	if (!*s || strlen(s) > 5)
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -EINVAL;
		v = v * 10 + (unsigned long)(*s - '0');
	}
	if (v > 65535)
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

int tls_parse_addr(const char *addr, char *host, size_t hostlen,
		   uint16_t *port)
{
	const char *h = addr, *p = NULL, *colon;
	size_t hl;

	if (!addr || !*addr)
		return -EINVAL;
	*port = TLS_DEFAULT_PORT;
	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');

		if (!end || end == addr + 1)
			return -EINVAL;
		h = addr + 1;
		hl = (size_t)(end - h);
		if (end[1] == ':')
			p = end + 2;
		else if (end[1])
			return -EINVAL;
	} else {
		colon = strchr(addr, ':');
		if (colon && !strchr(colon + 1, ':')) {
			hl = (size_t)(colon - addr);
			p = colon + 1;
		} else {
			/* no colon, or a bare IPv6 address */
			hl = strlen(addr);
		}
	}
	if (hl >= hostlen)
		return -EINVAL;
	memcpy(host, h, hl);
	host[hl] = '\0';
	if (p && parse_port(p, port))
		return -EINVAL;
	return 0;
}

/* ---- pre-shared key file ------------------------------------------------ */

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

int tls_load_psk(const char *path, uint8_t psk[TLS_PSK_LEN],
		 struct vhdx_error *err)
{
	char buf[2 * TLS_PSK_LEN + 2];
	struct stat st;
	size_t n = 0, i;
	ssize_t r;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		ret = -errno;
		seterr(err, "key file %s: %s", path, strerror(errno));
		return ret;
	}
	if (fstat(fd, &st)) {
		ret = -errno;
		seterr(err, "key file %s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EINVAL;
		seterr(err, "key file %s: not a regular file", path);
		goto out;
	}
	/* Like ssh with private keys: a key others can read is no secret. */
	if (st.st_mode & 077) {
		ret = -EPERM;
		seterr(err, "key file %s is %s by group or others (mode %04o): "
		       "run chmod 600 %s", path,
		       (st.st_mode & 044) ? "readable" : "writable",
		       (unsigned)(st.st_mode & 07777), path);
		goto out;
	}
	/* Read one byte more than a valid file can hold, to see overlong. */
	while (n < sizeof(buf)) {
		r = read(fd, buf + n, sizeof(buf) - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			ret = -errno;
			seterr(err, "key file %s: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n == 2 * TLS_PSK_LEN + 1 && buf[n - 1] == '\n')
		n--;
	ret = -EINVAL;
	for (i = 0; i < n && i < 2 * TLS_PSK_LEN; i++)
		if (hexval(buf[i]) < 0) {
			seterr(err, "key file %s: character %zu is not a hex "
			       "digit (the file must hold one line of 64 hex "
			       "digits; hvresync keygen writes one)", path,
			       i + 1);
			goto out;
		}
	if (n != 2 * TLS_PSK_LEN) {
		seterr(err, "key file %s: %s (the file must hold one line of "
		       "64 hex digits; hvresync keygen writes one)", path,
		       n < 2 * TLS_PSK_LEN ? "too short" : "too long");
		goto out;
	}
	for (i = 0; i < TLS_PSK_LEN; i++)
		psk[i] = (uint8_t)(hexval(buf[2 * i]) << 4 |
				   hexval(buf[2 * i + 1]));
	ret = 0;
out:
	OPENSSL_cleanse(buf, sizeof(buf));
	close(fd);
	return ret;
}

/* ---- TLS contexts ------------------------------------------------------- */

static SSL_SESSION *psk_session(const struct conn *c, const SSL_CIPHER *ciph)
{
	SSL_SESSION *s = SSL_SESSION_new();

	if (!s)
		return NULL;
	if (!SSL_SESSION_set1_master_key(s, c->psk, TLS_PSK_LEN) ||
	    !SSL_SESSION_set_cipher(s, ciph) ||
	    !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
		SSL_SESSION_free(s);
		return NULL;
	}
	return s;
}

/* Client: offer the key under our identity; OpenSSL owns the session. */
static int psk_use_cb(SSL *ssl, const EVP_MD *md, const unsigned char **id,
		      size_t *idlen, SSL_SESSION **sess)
{
	const struct conn *c = SSL_get_app_data(ssl);
	const SSL_CIPHER *ciph = SSL_CIPHER_find(ssl, psk_suite_id);

	*sess = NULL;
	*id = NULL;
	*idlen = 0;
	if (!c || !ciph)
		return 0;
	/* After a HelloRetryRequest md is fixed; ours must match it. */
	if (md && EVP_MD_get_type(md) !=
		  EVP_MD_get_type(SSL_CIPHER_get_handshake_digest(ciph)))
		return 1;
	*sess = psk_session(c, ciph);
	if (!*sess)
		return 0;
	*id = (const unsigned char *)TLS_PSK_IDENTITY;
	*idlen = strlen(TLS_PSK_IDENTITY);
	return 1;
}

/*
 * Server: the key for our identity, nothing for any other.  With no
 * certificate configured, a handshake without the PSK cannot complete.
 */
static int psk_find_cb(SSL *ssl, const unsigned char *id, size_t idlen,
		       SSL_SESSION **sess)
{
	struct conn *c = SSL_get_app_data(ssl);
	const SSL_CIPHER *ciph = SSL_CIPHER_find(ssl, psk_suite_id);

	*sess = NULL;
	if (!c || !ciph)
		return 0;
	if (idlen != strlen(TLS_PSK_IDENTITY) ||
	    memcmp(id, TLS_PSK_IDENTITY, idlen)) {
		c->bad_identity = true;
		return 1;
	}
	*sess = psk_session(c, ciph);
	return *sess ? 1 : 0;
}

static SSL_CTX *make_ctx(const struct tls_config *cfg, bool server,
			 struct vhdx_error *err)
{
	STACK_OF(X509_NAME) *names;
	SSL_CTX *ctx;

	ERR_clear_error();
	ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!ctx) {
		seterr(err, "cannot set up TLS: %s", ssl_reason());
		return NULL;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION)) {
		seterr(err, "cannot set up TLS 1.3: %s", ssl_reason());
		goto fail;
	}
	/* One session per connection: no tickets, no resumption. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_num_tickets(ctx, 0);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
			 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

	if (cfg->mode == TLS_MODE_PSK) {
		if (!SSL_CTX_set_ciphersuites(ctx, "TLS_AES_256_GCM_SHA384")) {
			seterr(err, "cannot set up TLS: %s", ssl_reason());
			goto fail;
		}
		if (server) {
			SSL_CTX_set_psk_find_session_callback(ctx,
							      psk_find_cb);
			SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
		} else {
			SSL_CTX_set_psk_use_session_callback(ctx, psk_use_cb);
			/*
			 * Nothing is trusted, so a server that answers with
			 * a certificate instead of the key fails here.
			 */
			SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		}
		return ctx;
	}

	if (!cfg->cert || !cfg->key || !cfg->ca) {
		seterr(err, "X.509 mode needs --cert, --key and --ca");
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert) != 1) {
		seterr(err, "certificate %s: %s", cfg->cert, ssl_reason());
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key, SSL_FILETYPE_PEM) != 1) {
		if (ERR_GET_REASON(ERR_peek_last_error()) ==
		    X509_R_KEY_VALUES_MISMATCH)
			seterr(err, "private key %s does not match certificate "
			       "%s", cfg->key, cfg->cert);
		else
			seterr(err, "private key %s: %s", cfg->key,
			       ssl_reason());
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		seterr(err, "private key %s does not match certificate %s",
		       cfg->key, cfg->cert);
		goto fail;
	}
	if (SSL_CTX_load_verify_locations(ctx, cfg->ca, NULL) != 1) {
		seterr(err, "CA file %s: %s", cfg->ca, ssl_reason());
		goto fail;
	}
	if (server) {
		names = SSL_load_client_CA_file(cfg->ca);
		if (names)
			SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER |
				   SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* ---- connections -------------------------------------------------------- */

static struct conn *conn_new(int fd, const struct sockaddr *peer,
			     enum tls_mode mode, const uint8_t *psk,
			     bool server)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->fd = fd;
	c->mode = mode;
	c->server = server;
	c->timeout_ms = ACCEPT_TIMEOUT_MS;
	if (psk)
		memcpy(c->psk, psk, TLS_PSK_LEN);
	pthread_mutex_init(&c->lock, NULL);
	format_sockaddr(peer, c->peer, sizeof(c->peer));
	snprintf(c->auth, sizeof(c->auth), "%s",
		 mode == TLS_MODE_INSECURE ? "plain TCP (insecure)" :
		 "TLS handshake not done");
	return c;
}

static void set_sockopts(int fd)
{
	int one = 1, idle = 60, intvl = 10, cnt = 6;

	/* Small frames (CREDIT, SUBREQ) gate the peer's progress. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/*
	 * A vanished peer shows within about two minutes even while a side
	 * waits without a timeout (the primary during a long merge).
	 */
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* Wait for @events on the socket for at most @ms (< 0: forever). */
static int wait_fd(struct conn *c, short events, int ms, struct vhdx_error *err)
{
	struct pollfd p = { .fd = c->fd, .events = events };
	int r;

	for (;;) {
		r = poll(&p, 1, ms);
		if (r > 0)
			return 0;	/* errors show in the next I/O call */
		if (r == 0) {
			peer_err(c, err, "timed out (nothing sent or received "
				 "for %d s)", (ms + 999) / 1000);
			return -ETIMEDOUT;
		}
		if (errno != EINTR) {
			r = -errno;
			peer_err(c, err, "poll: %s", strerror(errno));
			return r;
		}
	}
}

static int io_timeout(const struct conn *c)
{
	return c->timeout_ms > 0 ? c->timeout_ms : -1;
}

/* Does this OpenSSL reason mean "the other side is not who we expect"? */
static bool auth_reason(int reason)
{
	switch (reason) {
	case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
	case SSL_R_BINDER_DOES_NOT_VERIFY:
	case SSL_R_BAD_PSK:
	case SSL_R_BAD_PSK_IDENTITY:
	case SSL_R_PSK_IDENTITY_NOT_FOUND:
	case SSL_R_NO_SHARED_CIPHER:
	case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
	case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
	case SSL_R_CERTIFICATE_VERIFY_FAILED:
	case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
	case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
	case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
	case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
	case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
	case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
		return true;
	}
	return false;
}

/*
 * Explain a failed handshake.  Called with c->lock held, right after the
 * failing call, so the error queue and verify result are ours.
 */
static int handshake_failed(struct conn *c, int sslerr, int sys_errno,
			    struct vhdx_error *err)
{
	unsigned long e = ERR_peek_last_error();
	int reason = ERR_GET_REASON(e);
	long vr = SSL_get_verify_result(c->ssl);
	const char *hint = c->mode == TLS_MODE_PSK ?
		"the two sides do not hold the same pre-shared key" :
		"certificate not accepted";

	c->broken = true;
	c->fatal = -EPROTO;
	snprintf(c->fatal_msg, sizeof(c->fatal_msg), "TLS handshake failed");
	if (sslerr == SSL_ERROR_ZERO_RETURN ||
	    (sslerr == SSL_ERROR_SYSCALL && !e &&
	     (!sys_errno || sys_errno == ECONNRESET)) ||
	    (e && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
		peer_err(c, err, "TLS handshake failed: connection closed by "
			 "the peer (does it use TLS, and the same kind of "
			 "authentication?)");
		return -ECONNRESET;
	}
	if (sslerr == SSL_ERROR_SYSCALL && !e) {
		peer_err(c, err, "TLS handshake failed: %s",
			 strerror(sys_errno));
		return -sys_errno;
	}
	if (c->bad_identity) {
		peer_err(c, err, "authentication failed (the peer offered a "
			 "pre-shared key identity other than %s)",
			 TLS_PSK_IDENTITY);
		return -EACCES;
	}
	if (vr != X509_V_OK && c->mode == TLS_MODE_X509) {
		peer_err(c, err, "authentication failed (peer certificate: "
			 "%s)", X509_verify_cert_error_string(vr));
		return -EACCES;
	}
	if (vr != X509_V_OK && c->mode == TLS_MODE_PSK) {
		peer_err(c, err, "authentication failed (the peer did not use "
			 "the pre-shared key but sent a certificate)");
		return -EACCES;
	}
	/*
	 * OpenSSL answers a PSK binder that does not verify with an
	 * illegal_parameter alert: for a PSK client that means "wrong key".
	 */
	if (e && ERR_GET_LIB(e) == ERR_LIB_SSL && (auth_reason(reason) ||
	    (c->mode == TLS_MODE_PSK &&
	     reason == SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER))) {
		peer_err(c, err, "authentication failed (%s; TLS: %s)", hint,
			 ssl_reason());
		return -EACCES;
	}
	if (e && reason == SSL_R_WRONG_VERSION_NUMBER) {
		peer_err(c, err, "TLS handshake failed: the peer does not "
			 "speak TLS (is it using --insecure?)");
		return -EPROTO;
	}
	peer_err(c, err, "TLS handshake failed: %s",
		 e ? ssl_reason() : "unknown error");
	return -EPROTO;
}

static void describe_auth(struct conn *c)
{
	const char *suite = SSL_get_cipher_name(c->ssl);
	X509 *cert;
	char subj[160] = "";

	if (c->mode == TLS_MODE_PSK) {
		snprintf(c->auth, sizeof(c->auth),
			 "TLS 1.3 (%s), pre-shared key", suite);
		return;
	}
	cert = SSL_get1_peer_certificate(c->ssl);
	if (cert) {
		X509_NAME_oneline(X509_get_subject_name(cert), subj,
				  sizeof(subj));
		X509_free(cert);
	}
	snprintf(c->auth, sizeof(c->auth), "TLS 1.3 (%s), certificate %s",
		 suite, subj);
}

/* Drive SSL_do_handshake until done or @deadline (ms, 0: none). */
static int do_handshake(struct conn *c, int64_t deadline, struct vhdx_error *err)
{
	int ret, sslerr, sys_errno, ms;
	short ev;

	for (;;) {
		pthread_mutex_lock(&c->lock);
		ERR_clear_error();
		errno = 0;
		ret = SSL_do_handshake(c->ssl);
		sys_errno = errno;
		sslerr = ret == 1 ? SSL_ERROR_NONE :
			 SSL_get_error(c->ssl, ret);
		if (sslerr != SSL_ERROR_NONE && sslerr != SSL_ERROR_WANT_READ &&
		    sslerr != SSL_ERROR_WANT_WRITE) {
			ret = handshake_failed(c, sslerr, sys_errno, err);
			pthread_mutex_unlock(&c->lock);
			return ret;
		}
		if (sslerr == SSL_ERROR_NONE) {
			/*
			 * In PSK mode the key must be what authenticated
			 * the handshake, never something else.
			 */
			if (c->mode == TLS_MODE_PSK &&
			    !SSL_session_reused(c->ssl)) {
				c->broken = true;
				c->fatal = -EACCES;
				snprintf(c->fatal_msg, sizeof(c->fatal_msg),
					 "authentication failed");
				pthread_mutex_unlock(&c->lock);
				peer_err(c, err, "authentication failed (the "
					 "pre-shared key was not used)");
				return -EACCES;
			}
			describe_auth(c);
			c->handshaken = true;
			pthread_mutex_unlock(&c->lock);
			return 0;
		}
		pthread_mutex_unlock(&c->lock);
		ev = sslerr == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
		ms = -1;
		if (deadline) {
			int64_t left = deadline - now_ms();

			ms = left > 0 ? (int)left : 0;
		}
		ret = wait_fd(c, ev, ms, err);
		if (ret == -ETIMEDOUT)
			peer_err(c, err, "TLS handshake timed out");
		if (ret)
			return ret;
	}
}

int conn_handshake(struct conn *c, struct vhdx_error *err)
{
	int64_t deadline = 0;

	if (!c->ssl || c->handshaken)
		return 0;
	if (c->timeout_ms > 0)
		deadline = now_ms() + c->timeout_ms;
	return do_handshake(c, deadline, err);
}

/*
 * One step of I/O.  Returns bytes moved (> 0), 0 at end of stream, or
 * -EAGAIN with *ev set to what to wait for, or another -errno.
 */
static ssize_t io_step(struct conn *c, void *buf, size_t len, bool wr,
		       short *ev, struct vhdx_error *err)
{
	size_t done = 0;
	ssize_t r;
	int ok, sslerr, sys_errno;
	unsigned long e;

	if (!c->ssl) {
		r = wr ? send(c->fd, buf, len, MSG_NOSIGNAL) :
			 recv(c->fd, buf, len, 0);
		if (r >= 0)
			return r;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
			*ev = wr ? POLLOUT : POLLIN;
			return -EAGAIN;
		}
		r = -errno;
		peer_err(c, err, "%s: %s", wr ? "send" : "receive",
			 strerror(errno));
		return r;
	}

	pthread_mutex_lock(&c->lock);
	if (c->broken) {
		/* Both directions report the error that broke the session. */
		r = c->fatal;
		if (r)
			peer_err(c, err, "%s", c->fatal_msg);
		pthread_mutex_unlock(&c->lock);
		return r;
	}
	ERR_clear_error();
	errno = 0;
	ok = wr ? SSL_write_ex(c->ssl, buf, len, &done) :
		  SSL_read_ex(c->ssl, buf, len, &done);
	sys_errno = errno;
	sslerr = ok ? SSL_ERROR_NONE : SSL_get_error(c->ssl, 0);
	e = ERR_peek_last_error();
	switch (sslerr) {
	case SSL_ERROR_NONE:
		pthread_mutex_unlock(&c->lock);
		return (ssize_t)done;
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		pthread_mutex_unlock(&c->lock);
		*ev = sslerr == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
		return -EAGAIN;
	case SSL_ERROR_ZERO_RETURN:
		pthread_mutex_unlock(&c->lock);
		return 0;
	}
	if (sslerr == SSL_ERROR_SYSCALL && !e) {
		/*
		 * A socket error in one direction leaves the TLS state
		 * intact: the other direction may still read the alert
		 * that explains it.  Just never send close_notify.
		 */
		c->quiet = true;
		pthread_mutex_unlock(&c->lock);
		if (!sys_errno)
			return 0;	/* TCP closed without close_notify */
		peer_err(c, err, "%s: %s", wr ? "send" : "receive",
			 strerror(sys_errno));
		return -sys_errno;
	}
	c->broken = true;
	if (e && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
		c->fatal = 0;
	} else if (e && ERR_GET_LIB(e) == ERR_LIB_SSL &&
		   auth_reason(ERR_GET_REASON(e))) {
		/*
		 * In TLS 1.3 the server judges a client certificate after
		 * the client's handshake is done: its verdict arrives here.
		 */
		c->fatal = -EACCES;
		snprintf(c->fatal_msg, sizeof(c->fatal_msg),
			 "authentication failed (certificate not accepted; "
			 "TLS: %s)", ssl_reason());
	} else {
		c->fatal = -EPROTO;
		snprintf(c->fatal_msg, sizeof(c->fatal_msg), "TLS error: %s",
			 e ? ssl_reason() : "unknown");
	}
	r = c->fatal;
	if (r)
		peer_err(c, err, "%s", c->fatal_msg);
	pthread_mutex_unlock(&c->lock);
	return r;
}

int conn_read_full(struct conn *c, void *buf, size_t len,
		   struct vhdx_error *err)
{
	uint8_t *p = buf;
	size_t got = 0;
	ssize_t r;
	short ev = POLLIN;
	int ret;

	while (got < len) {
		r = io_step(c, p + got, len - got, false, &ev, err);
		if (r > 0) {
			got += (size_t)r;
			continue;
		}
		if (r == 0) {
			if (got)
				peer_err(c, err, "connection closed after %zu "
					 "of %zu bytes", got, len);
			else
				peer_err(c, err, "connection closed");
			return -ECONNRESET;
		}
		if (r != -EAGAIN)
			return (int)r;
		ret = wait_fd(c, ev, io_timeout(c), err);
		if (ret)
			return ret;
	}
	return 0;
}

int conn_write_full(struct conn *c, const void *buf, size_t len,
		    struct vhdx_error *err)
{
	const uint8_t *p = buf;
	size_t put = 0;
	ssize_t r;
	short ev = POLLOUT;
	int ret;

	while (put < len) {
		r = io_step(c, (void *)(p + put), len - put, true, &ev, err);
		if (r > 0) {
			put += (size_t)r;
			continue;
		}
		if (r == 0) {
			peer_err(c, err, "connection closed");
			return -EPIPE;
		}
		if (r == -ECONNRESET || r == -EPIPE)
			return (int)r;
		if (r != -EAGAIN)
			return (int)r;
		ret = wait_fd(c, ev, io_timeout(c), err);
		if (ret)
			return ret;
	}
	return 0;
}

int conn_from_fd(int fd, const char *peer, struct conn **out)
{
	struct sockaddr_storage ss = { .ss_family = AF_UNSPEC };
	struct conn *c;
	int fl;

	tls_init();
	*out = NULL;
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	c = conn_new(fd, (struct sockaddr *)&ss, TLS_MODE_INSECURE, NULL,
		     false);
	if (!c)
		return -ENOMEM;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	c->timeout_ms = 0;
	*out = c;
	return 0;
}

void conn_set_timeout(struct conn *c, int ms)
{
	c->timeout_ms = ms;
}

const char *conn_peer(const struct conn *c)
{
	return c->peer;
}

const char *conn_auth(const struct conn *c)
{
	return c->auth;
}

int conn_fd(const struct conn *c)
{
	return c->fd;
}

void conn_abort(struct conn *c)
{
	shutdown(c->fd, SHUT_RDWR);
}

void conn_close(struct conn *c)
{
	if (!c)
		return;
	if (c->ssl) {
		pthread_mutex_lock(&c->lock);
		if (c->handshaken && !c->broken && !c->quiet) {
			ERR_clear_error();
			SSL_shutdown(c->ssl);	/* best effort, no waiting */
		}
		SSL_free(c->ssl);
		ERR_clear_error();
		pthread_mutex_unlock(&c->lock);
	}
	close(c->fd);
	OPENSSL_cleanse(c->psk, sizeof(c->psk));
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* Give @c its SSL object (client or server side). */
static int conn_attach_ssl(struct conn *c, SSL_CTX *ctx, struct vhdx_error *err)
{
	ERR_clear_error();
	c->ssl = SSL_new(ctx);
	if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) {
		peer_err(c, err, "cannot set up TLS: %s", ssl_reason());
		return -ENOMEM;
	}
	SSL_set_app_data(c->ssl, c);
	if (c->server)
		SSL_set_accept_state(c->ssl);
	else
		SSL_set_connect_state(c->ssl);
	return 0;
}

/* ---- listener ----------------------------------------------------------- */

static int listen_on(const struct sockaddr *sa, socklen_t salen, bool dual,
		     int *fdp)
{
	int fd, one = 1, zero = 0, ret;

	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (dual)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (bind(fd, sa, salen) || listen(fd, 64)) {
		ret = -errno;
		close(fd);
		return ret;
	}
	*fdp = fd;
	return 0;
}

int tls_listen(const char *addr, const struct tls_config *cfg,
	       struct tls_listener **out, struct vhdx_error *err)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL, *ai;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	struct tls_listener *l;
	char host[256], portstr[8];
	uint16_t port;
	int ret, fd = -1;

	tls_init();
	*out = NULL;
	if (tls_parse_addr(addr, host, sizeof(host), &port)) {
		seterr(err, "listen address '%s': expected HOST:PORT, :PORT "
		       "or [IPV6]:PORT", addr);
		return -EINVAL;
	}
	l = calloc(1, sizeof(*l));
	if (!l) {
		seterr(err, "listen %s: out of memory", addr);
		return -ENOMEM;
	}
	l->fd = -1;
	l->mode = cfg->mode;
	if (cfg->mode == TLS_MODE_PSK)
		memcpy(l->psk, cfg->psk, TLS_PSK_LEN);

	if (cfg->mode == TLS_MODE_INSECURE && !*host) {
		seterr(err, "listen %s: --insecure (plain TCP) is only allowed "
		       "on a loopback address such as 127.0.0.1:%u or "
		       "[::1]:%u, not on every address", addr, port, port);
		ret = -EPERM;
		goto fail;
	}

	snprintf(portstr, sizeof(portstr), "%u", port);
	if (!*host) {
		/* Every address: one IPv6 socket that takes IPv4 too. */
		struct sockaddr_in6 in6 = { .sin6_family = AF_INET6,
					    .sin6_port = htons(port),
					    .sin6_addr = IN6ADDR_ANY_INIT };
		struct sockaddr_in in = { .sin_family = AF_INET,
					  .sin_port = htons(port),
					  .sin_addr.s_addr = INADDR_ANY };

		ret = listen_on((struct sockaddr *)&in6, sizeof(in6), true,
				&fd);
		if (ret == -EAFNOSUPPORT)
			ret = listen_on((struct sockaddr *)&in, sizeof(in),
					false, &fd);
		if (ret) {
			seterr(err, "listen %s: %s", addr, strerror(-ret));
			goto fail;
		}
	} else {
		ret = getaddrinfo(host, portstr, &hints, &res);
		if (ret) {
			seterr(err, "listen %s: %s", addr, gai_strerror(ret));
			ret = -EINVAL;
			goto fail;
		}
		ret = -EADDRNOTAVAIL;
		for (ai = res; ai; ai = ai->ai_next) {
			if (cfg->mode == TLS_MODE_INSECURE &&
			    !tls_addr_is_loopback(ai->ai_addr)) {
				char a[PEER_LEN];

				format_sockaddr(ai->ai_addr, a, sizeof(a));
				seterr(err, "listen %s: --insecure (plain "
				       "TCP) is only allowed on a loopback "
				       "address, and %s is not one", addr, a);
				ret = -EPERM;
				goto fail;
			}
		}
		for (ai = res; ai; ai = ai->ai_next) {
			ret = listen_on(ai->ai_addr, ai->ai_addrlen, false,
					&fd);
			if (!ret)
				break;
		}
		if (ret) {
			seterr(err, "listen %s: %s", addr, strerror(-ret));
			goto fail;
		}
	}
	l->fd = fd;
	if (getsockname(fd, (struct sockaddr *)&ss, &sslen) == 0)
		format_sockaddr((struct sockaddr *)&ss, l->addr,
				sizeof(l->addr));
	else
		snprintf(l->addr, sizeof(l->addr), "%s", addr);

	if (cfg->mode != TLS_MODE_INSECURE) {
		l->ctx = make_ctx(cfg, true, err);
		if (!l->ctx) {
			ret = -EINVAL;
			goto fail;
		}
	}
	if (res)
		freeaddrinfo(res);
	*out = l;
	return 0;
fail:
	if (res)
		freeaddrinfo(res);
	tls_listener_close(l);
	return ret;
}

const char *tls_listener_addr(const struct tls_listener *l)
{
	return l->addr;
}

int tls_listener_fd(const struct tls_listener *l)
{
	return l->fd;
}

void tls_listener_close(struct tls_listener *l)
{
	if (!l)
		return;
	if (l->fd >= 0)
		close(l->fd);
	SSL_CTX_free(l->ctx);
	OPENSSL_cleanse(l->psk, sizeof(l->psk));
	free(l);
}

int tls_accept(struct tls_listener *l, struct conn **out,
	       struct vhdx_error *err)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct pollfd p = { .fd = l->fd, .events = POLLIN };
	struct conn *c;
	int fd, ret;

	*out = NULL;
	for (;;) {
		len = sizeof(ss);
		fd = accept4(l->fd, (struct sockaddr *)&ss, &len,
			     SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0)
			break;
		switch (errno) {
		case EAGAIN:
#if EAGAIN != EWOULDBLOCK
		case EWOULDBLOCK:
#endif
			if (poll(&p, 1, -1) < 0 && errno == EINTR) {
				seterr(err, "listen %s: interrupted", l->addr);
				return -EINTR;
			}
			continue;
		case EINTR:
			seterr(err, "listen %s: interrupted", l->addr);
			return -EINTR;
		case ECONNABORTED:
		case EPROTO:
			seterr(err, "listen %s: a connection went away before "
			       "it was accepted", l->addr);
			return -EAGAIN;
		default:
			ret = -errno;
			seterr(err, "listen %s: accept: %s", l->addr,
			       strerror(errno));
			return ret;
		}
	}
	set_sockopts(fd);
	c = conn_new(fd, (struct sockaddr *)&ss, l->mode,
		     l->mode == TLS_MODE_PSK ? l->psk : NULL, true);
	if (!c) {
		close(fd);
		seterr(err, "listen %s: out of memory", l->addr);
		return -ENOMEM;
	}
	if (l->ctx) {
		ret = conn_attach_ssl(c, l->ctx, err);
		if (ret) {
			conn_close(c);
			return ret;
		}
	}
	*out = c;
	return 0;
}

/* ---- client ------------------------------------------------------------- */

/* Non-blocking connect to one address, waiting at most @ms. */
static int connect_one(const struct addrinfo *ai, int ms, int *fdp)
{
	struct pollfd p;
	socklen_t len = sizeof(int);
	int fd, soerr = 0, r;

	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    0);
	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
		goto done;
	if (errno != EINPROGRESS) {
		r = -errno;
		close(fd);
		return r;
	}
	p.fd = fd;
	p.events = POLLOUT;
	do
		r = poll(&p, 1, ms);
	while (r < 0 && errno == EINTR);
	if (r <= 0) {
		close(fd);
		return r == 0 ? -ETIMEDOUT : -errno;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) || soerr) {
		close(fd);
		return soerr ? -soerr : -EIO;
	}
done:
	*fdp = fd;
	return 0;
}

int tls_connect(const char *addr, const struct tls_config *cfg,
		int timeout_ms, struct conn **out, struct vhdx_error *err)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL, *ai;
	int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
	char host[256], portstr[8], tried[PEER_LEN] = "";
	SSL_CTX *ctx = NULL;
	struct conn *c = NULL;
	uint16_t port;
	int ret, fd = -1, ms;
	bool any = false;

	tls_init();
	*out = NULL;
	if (tls_parse_addr(addr, host, sizeof(host), &port) || !*host ||
	    !port) {
		seterr(err, "peer address '%s': expected HOST:PORT or "
		       "[IPV6]:PORT", addr);
		return -EINVAL;
	}
	/* Bad certificate files are found before any network traffic. */
	if (cfg->mode != TLS_MODE_INSECURE) {
		ctx = make_ctx(cfg, false, err);
		if (!ctx)
			return -EINVAL;
	}
	snprintf(portstr, sizeof(portstr), "%u", port);
	ret = getaddrinfo(host, portstr, &hints, &res);
	if (ret) {
		seterr(err, "peer %s: cannot resolve %s: %s", addr, host,
		       gai_strerror(ret));
		SSL_CTX_free(ctx);
		return ret == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
	}
	ret = -EHOSTUNREACH;
	for (ai = res; ai; ai = ai->ai_next) {
		if (cfg->mode == TLS_MODE_INSECURE &&
		    !tls_addr_is_loopback(ai->ai_addr)) {
			if (!any && !*tried)
				format_sockaddr(ai->ai_addr, tried,
						sizeof(tried));
			continue;
		}
		any = true;
		format_sockaddr(ai->ai_addr, tried, sizeof(tried));
		ms = -1;
		if (deadline) {
			int64_t left = deadline - now_ms();

			ms = left > 0 ? (int)left : 0;
		}
		ret = connect_one(ai, ms, &fd);
		if (!ret)
			break;
	}
	if (cfg->mode == TLS_MODE_INSECURE && !any) {
		seterr(err, "peer %s: --insecure (plain TCP) is only allowed "
		       "to a loopback address, and %s is not one", addr,
		       tried);
		ret = -EPERM;
		goto fail;
	}
	if (ret) {
		seterr(err, "peer %s: connect: %s", *tried ? tried : addr,
		       strerror(-ret));
		goto fail;
	}
	set_sockopts(fd);
	c = conn_new(fd, ai->ai_addr, cfg->mode,
		     cfg->mode == TLS_MODE_PSK ? cfg->psk : NULL, false);
	if (!c) {
		close(fd);
		seterr(err, "peer %s: out of memory", addr);
		ret = -ENOMEM;
		goto fail;
	}
	c->timeout_ms = timeout_ms;
	if (ctx) {
		ret = conn_attach_ssl(c, ctx, err);
		if (ret)
			goto fail;
		ret = do_handshake(c, deadline, err);
		if (ret)
			goto fail;
	}
	SSL_CTX_free(ctx);	/* the SSL object keeps its own reference */
	freeaddrinfo(res);
	*out = c;
	return 0;
fail:
	SSL_CTX_free(ctx);
	conn_close(c);
	freeaddrinfo(res);
	return ret;
}
