/* SPDX-License-Identifier: MIT */
/*
 * tls_conn.c - one connection of the transport: the TLS handshake and the
 * verdict on who the peer is, then reading and writing whole buffers.
 *
 * Sockets are non-blocking and every OpenSSL call on a connection runs
 * under the connection's mutex; waiting happens in poll() outside it.
 * That lets one thread read while another writes the same connection,
 * which a single SSL object does not allow on its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "agent/lib/fmt.h"
#include "agent/sync/tls_internal.h"

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

struct conn *tls_conn_new(int fd, const struct sockaddr *peer,
			  enum tls_mode mode, const uint8_t *psk, bool server)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->fd = fd;
	c->mode = mode;
	c->server = server;
	c->timeout_ms = ACCEPT_TIMEOUT_MS;
	if (psk) {
		memcpy(c->psk, psk, TLS_PSK_LEN);
		c->have_agent_key = server;
	}
	snprintf(c->offer, sizeof(c->offer), "%s", TLS_PSK_IDENTITY);
	pthread_mutex_init(&c->lock, NULL);
	tls_format_sockaddr(peer, c->peer, sizeof(c->peer));
	snprintf(c->auth, sizeof(c->auth), "%s",
		 mode == TLS_MODE_INSECURE ? "plain TCP (insecure)"
					   : "TLS handshake not done");
	return c;
}

void tls_set_sockopts(int fd)
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
			return 0; /* errors show in the next I/O call */
		if (r == 0) {
			peer_err(c, err,
				 "timed out (nothing sent or received "
				 "for %d s)",
				 (ms + 999) / 1000);
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

/* Wait for I/O under the timeout and, when one is set, the deadline. */
static int io_wait(struct conn *c, short events, struct vhdx_error *err)
{
	int ms = io_timeout(c), left, ret;

	if (c->deadline) {
		left = tls_ms_left(c->deadline);
		if (!left) {
			peer_err(c, err, "time limit reached");
			return -ETIMEDOUT;
		}
		if (ms < 0 || left < ms) {
			ret = wait_fd(c, events, left, err);
			if (ret == -ETIMEDOUT)
				peer_err(c, err, "time limit reached");
			return ret;
		}
	}
	return wait_fd(c, events, ms, err);
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
	const char *hint =
		c->mode == TLS_MODE_PSK
			? "the two sides do not hold the same pre-shared key"
			: "certificate not accepted";

	c->broken = true;
	c->fatal = -EPROTO;
	snprintf(c->fatal_msg, sizeof(c->fatal_msg), "TLS handshake failed");
	if (sslerr == SSL_ERROR_ZERO_RETURN ||
	    (sslerr == SSL_ERROR_SYSCALL && !e &&
	     (!sys_errno || sys_errno == ECONNRESET)) ||
	    (e && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
		peer_err(c, err,
			 "TLS handshake failed: connection closed by "
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
		peer_err(c, err,
			 "authentication failed (the peer offered a "
			 "pre-shared key this side does not hold: identity "
			 "'%s')",
			 c->bad_id);
		return -EACCES;
	}
	if (vr != X509_V_OK && c->mode == TLS_MODE_X509) {
		peer_err(c, err,
			 "authentication failed (peer certificate: "
			 "%s)",
			 X509_verify_cert_error_string(vr));
		return -EACCES;
	}
	if (vr != X509_V_OK && c->mode == TLS_MODE_PSK) {
		peer_err(c, err,
			 "authentication failed (the peer did not use "
			 "the pre-shared key but sent a certificate)");
		return -EACCES;
	}
	/*
	 * OpenSSL answers a PSK binder that does not verify with an
	 * illegal_parameter alert: for a PSK client that means "wrong key".
	 */
	if (e && ERR_GET_LIB(e) == ERR_LIB_SSL &&
	    (auth_reason(reason) ||
	     (c->mode == TLS_MODE_PSK &&
	      reason == SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER))) {
		peer_err(c, err, "authentication failed (%s; TLS: %s)", hint,
			 tls_ssl_reason());
		return -EACCES;
	}
	if (e && reason == SSL_R_WRONG_VERSION_NUMBER) {
		peer_err(c, err,
			 "TLS handshake failed: the peer does not "
			 "speak TLS (is it using --insecure?)");
		return -EPROTO;
	}
	peer_err(c, err, "TLS handshake failed: %s",
		 e ? tls_ssl_reason() : "unknown error");
	return -EPROTO;
}

/* Keep one certificate name; one with a NUL inside (a forgery trick)
 * or control characters is left out, so it can match no pattern. */
static void add_cert_name(struct conn *c, const unsigned char *p, int len)
{
	char **names;
	char *n;
	int i;

	if (len <= 0 || len > 255)
		return;
	for (i = 0; i < len; i++)
		if (p[i] < 0x20 || p[i] >= 0x7F)
			return;
	names = realloc(c->cert_names,
			(c->ncert_names + 1) * sizeof(*c->cert_names));
	if (!names)
		return;
	c->cert_names = names;
	n = malloc((size_t)len + 1);
	if (!n)
		return;
	memcpy(n, p, (size_t)len);
	n[len] = '\0';
	c->cert_names[c->ncert_names++] = n;
}

/* The verified peer certificate's subject CN and DNS SANs, which per-VM
 * `allow` patterns are matched against. */
static void collect_cert_names(struct conn *c, X509 *cert)
{
	X509_NAME *subj = X509_get_subject_name(cert);
	GENERAL_NAMES *sans;
	const GENERAL_NAME *g;
	ASN1_STRING *d;
	unsigned char *utf8;
	int i, len;

	for (i = X509_NAME_get_index_by_NID(subj, NID_commonName, -1); i >= 0;
	     i = X509_NAME_get_index_by_NID(subj, NID_commonName, i)) {
		d = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, i));
		len = ASN1_STRING_to_UTF8(&utf8, d);
		if (len < 0)
			continue;
		add_cert_name(c, utf8, len);
		OPENSSL_free(utf8);
	}
	sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	for (i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
		g = sk_GENERAL_NAME_value(sans, i);
		if (g->type != GEN_DNS)
			continue;
		add_cert_name(c, ASN1_STRING_get0_data(g->d.dNSName),
			      ASN1_STRING_length(g->d.dNSName));
	}
	GENERAL_NAMES_free(sans);
}

static void describe_auth(struct conn *c)
{
	const char *suite = SSL_get_cipher_name(c->ssl);
	X509 *cert;
	char subj[160] = "";

	if (c->mode == TLS_MODE_PSK) {
		if (!c->server)
			snprintf(c->identity, sizeof(c->identity),
				 "pre-shared key");
		else if (c->agent_key)
			snprintf(c->identity, sizeof(c->identity),
				 "the agent key");
		else
			snprintf(c->identity, sizeof(c->identity),
				 "the key of VM %s (key id %.8s...)", c->key_vm,
				 c->key_id);
		snprintf(c->auth, sizeof(c->auth),
			 "TLS 1.3 (%s), pre-shared key%s%s", suite,
			 c->server ? ": " : "", c->server ? c->identity : "");
		return;
	}
	cert = SSL_get1_peer_certificate(c->ssl);
	if (cert) {
		X509_NAME_oneline(X509_get_subject_name(cert), subj,
				  sizeof(subj));
		if (c->server)
			collect_cert_names(c, cert);
		X509_free(cert);
	}
	snprintf(c->identity, sizeof(c->identity), "certificate %s", subj);
	snprintf(c->auth, sizeof(c->auth), "TLS 1.3 (%s), certificate %s",
		 suite, subj);
}

/*
 * The handshake completed: check it authenticated the way the mode says
 * and note how, for logs.  Called with c->lock held.
 */
static int handshake_done(struct conn *c, struct vhdx_error *err)
{
	/* In PSK mode the key must be what authenticated, nothing else. */
	if (c->mode == TLS_MODE_PSK && !SSL_session_reused(c->ssl)) {
		c->broken = true;
		c->fatal = -EACCES;
		snprintf(c->fatal_msg, sizeof(c->fatal_msg),
			 "authentication failed");
		peer_err(c, err,
			 "authentication failed (the pre-shared key "
			 "was not used)");
		return -EACCES;
	}
	describe_auth(c);
	c->handshaken = true;
	return 0;
}

int tls_ms_left(int64_t deadline)
{
	int64_t left;

	if (!deadline)
		return -1;
	left = deadline - mono_ms();
	return left > 0 ? (int)left : 0;
}

int tls_do_handshake(struct conn *c, int64_t deadline, struct vhdx_error *err)
{
	int ret, sslerr, sys_errno;

	for (;;) {
		pthread_mutex_lock(&c->lock);
		ERR_clear_error();
		errno = 0;
		ret = SSL_do_handshake(c->ssl);
		sys_errno = errno;
		sslerr = ret == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, ret);
		if (sslerr == SSL_ERROR_NONE)
			ret = handshake_done(c, err);
		else if (sslerr != SSL_ERROR_WANT_READ &&
			 sslerr != SSL_ERROR_WANT_WRITE)
			ret = handshake_failed(c, sslerr, sys_errno, err);
		pthread_mutex_unlock(&c->lock);
		if (sslerr != SSL_ERROR_WANT_READ &&
		    sslerr != SSL_ERROR_WANT_WRITE)
			return ret;
		ret = wait_fd(c,
			      sslerr == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
			      tls_ms_left(deadline), err);
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
		deadline = mono_ms() + c->timeout_ms;
	if (c->deadline && (!deadline || c->deadline < deadline))
		deadline = c->deadline;
	return tls_do_handshake(c, deadline, err);
}

/* One send() or recv() on a plain TCP connection: as io_step(). */
static ssize_t plain_step(struct conn *c, void *buf, size_t len, bool wr,
			  short *ev, struct vhdx_error *err)
{
	ssize_t r;

	r = wr ? send(c->fd, buf, len, MSG_NOSIGNAL) : recv(c->fd, buf, len, 0);
	if (r >= 0)
		return r;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
		*ev = wr ? POLLOUT : POLLIN;
		return -EAGAIN;
	}
	r = -errno;
	peer_err(c, err, "%s: %s", wr ? "send" : "receive", strerror(errno));
	return r;
}

/*
 * SSL_read_ex/SSL_write_ex failed for good (not "want read/write", not a
 * clean close_notify): decide what the connection has become and what to
 * return.  Called with c->lock held, right after the failing call.
 */
static ssize_t ssl_step_failed(struct conn *c, int sslerr, int sys_errno,
			       bool wr, struct vhdx_error *err)
{
	unsigned long e = ERR_peek_last_error();

	if (sslerr == SSL_ERROR_SYSCALL && !e) {
		/*
		 * A socket error in one direction leaves the TLS state
		 * intact: the other direction may still read the alert
		 * that explains it.  Just never send close_notify.
		 */
		c->quiet = true;
		if (!sys_errno)
			return 0; /* TCP closed without close_notify */
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
			 "TLS: %s)",
			 tls_ssl_reason());
	} else {
		c->fatal = -EPROTO;
		snprintf(c->fatal_msg, sizeof(c->fatal_msg), "TLS error: %s",
			 e ? tls_ssl_reason() : "unknown");
	}
	if (c->fatal)
		peer_err(c, err, "%s", c->fatal_msg);
	return c->fatal;
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

	if (!c->ssl)
		return plain_step(c, buf, len, wr, ev, err);

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
	ok = wr ? SSL_write_ex(c->ssl, buf, len, &done)
		: SSL_read_ex(c->ssl, buf, len, &done);
	sys_errno = errno;
	sslerr = ok ? SSL_ERROR_NONE : SSL_get_error(c->ssl, 0);
	switch (sslerr) {
	case SSL_ERROR_NONE:
		r = (ssize_t)done;
		break;
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		*ev = sslerr == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
		r = -EAGAIN;
		break;
	case SSL_ERROR_ZERO_RETURN:
		r = 0;
		break;
	default:
		r = ssl_step_failed(c, sslerr, sys_errno, wr, err);
		break;
	}
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
				peer_err(c, err,
					 "connection closed after %zu "
					 "of %zu bytes",
					 got, len);
			else
				peer_err(c, err, "connection closed");
			return -ECONNRESET;
		}
		if (r != -EAGAIN)
			return (int)r;
		ret = io_wait(c, ev, err);
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
		ret = io_wait(c, ev, err);
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
	c = tls_conn_new(fd, (struct sockaddr *)&ss, TLS_MODE_INSECURE, NULL,
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

void conn_set_deadline(struct conn *c, int ms)
{
	c->deadline = ms > 0 ? mono_ms() + ms : 0;
}

const char *conn_peer(const struct conn *c)
{
	return c->peer;
}

const char *conn_auth(const struct conn *c)
{
	return c->auth;
}

void conn_cred(const struct conn *c, struct sync_cred *out)
{
	memset(out, 0, sizeof(*out));
	if (c->mode == TLS_MODE_INSECURE || !c->ssl) {
		out->kind = SYNC_CRED_PLAIN;
		return;
	}
	if (c->mode == TLS_MODE_PSK) {
		out->kind = SYNC_CRED_KEY;
		out->key_id = c->key_id;
		out->agent_key = c->agent_key;
		return;
	}
	out->kind = SYNC_CRED_CERT;
	out->names = (const char *const *)c->cert_names;
	out->nnames = c->ncert_names;
}

const char *conn_identity(const struct conn *c)
{
	if (c->mode == TLS_MODE_INSECURE)
		return "plain TCP (insecure)";
	return c->identity[0] ? c->identity : "not authenticated";
}

bool conn_input_buffered(struct conn *c)
{
	bool r;

	if (!c->ssl)
		return false;
	pthread_mutex_lock(&c->lock);
	r = SSL_has_pending(c->ssl);
	pthread_mutex_unlock(&c->lock);
	return r;
}

int conn_fd(const struct conn *c)
{
	return c->fd;
}

void conn_abort(struct conn *c)
{
	shutdown(c->fd, SHUT_RDWR);
}

void conn_linger(struct conn *c, int ms)
{
	int64_t end = mono_ms() + (ms > 0 ? ms : 0);
	struct pollfd p = { .fd = c->fd, .events = POLLIN };
	char sink[4096];
	ssize_t r;
	int left;

	if (c->ssl) {
		pthread_mutex_lock(&c->lock);
		if (c->handshaken && !c->broken && !c->quiet) {
			ERR_clear_error();
			SSL_shutdown(c->ssl);
		}
		/* Nothing more goes out, close_notify included. */
		c->quiet = true;
		ERR_clear_error();
		pthread_mutex_unlock(&c->lock);
	}
	if (shutdown(c->fd, SHUT_WR) < 0)
		return; /* not connected any more: nothing to wait for */
	/* Raw bytes: what the peer sends now is dropped unread anyway. */
	for (;;) {
		left = tls_ms_left(end);
		if (!left)
			return;
		r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return;
		r = recv(c->fd, sink, sizeof(sink), 0);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
			return;
	}
}

void conn_close(struct conn *c)
{
	if (!c)
		return;
	if (c->ssl) {
		pthread_mutex_lock(&c->lock);
		if (c->handshaken && !c->broken && !c->quiet) {
			ERR_clear_error();
			SSL_shutdown(c->ssl); /* best effort, no waiting */
		}
		SSL_free(c->ssl);
		ERR_clear_error();
		pthread_mutex_unlock(&c->lock);
	}
	close(c->fd);
	OPENSSL_cleanse(c->psk, sizeof(c->psk));
	while (c->ncert_names)
		free(c->cert_names[--c->ncert_names]);
	free(c->cert_names);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

int tls_conn_attach_ssl(struct conn *c, SSL_CTX *ctx, struct vhdx_error *err)
{
	ERR_clear_error();
	c->ssl = SSL_new(ctx);
	if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) {
		peer_err(c, err, "cannot set up TLS: %s", tls_ssl_reason());
		return -ENOMEM;
	}
	SSL_set_app_data(c->ssl, c);
	if (c->server)
		SSL_set_accept_state(c->ssl);
	else
		SSL_set_connect_state(c->ssl);
	return 0;
}
