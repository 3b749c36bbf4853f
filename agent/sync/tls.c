/* SPDX-License-Identifier: MIT */
/*
 * tls.c - hvresync's transport, the two ways a connection starts: a
 * listener that accepts them (the replica) and a client that connects
 * (the primary), under TLS 1.3 (external pre-shared key or X.509) or
 * loopback-only plain TCP.  What a connection does once it exists is
 * tls_conn.c; the TLS contexts are tls_ctx.c.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "agent/lib/fmt.h"
#include "agent/sync/tls_internal.h"

struct tls_listener {
	int fd;
	SSL_CTX *ctx; /* NULL for plain TCP */
	enum tls_mode mode;
	uint8_t psk[TLS_PSK_LEN];
	/* PSK: every key it admits, the agent key first; its connections
	 * point here, and all of them are closed before the listener. */
	struct tls_key_entry *keys;
	unsigned nkeys;
	char addr[PEER_LEN];
};

/* The keys a PSK listener admits, with their ids: the agent-wide key,
 * then each VM's own. */
static int copy_keys(struct tls_listener *l, const struct tls_config *cfg)
{
	unsigned i;

	l->keys = calloc(cfg->nvm_keys + 1, sizeof(*l->keys));
	if (!l->keys)
		return -ENOMEM;
	memcpy(l->keys[0].psk, cfg->psk, TLS_PSK_LEN);
	tls_psk_key_id(cfg->psk, l->keys[0].id);
	l->nkeys = 1;
	for (i = 0; i < cfg->nvm_keys; i++) {
		struct tls_key_entry *k = &l->keys[l->nkeys];

		k->vm = strdup(cfg->vm_keys[i].vm ? cfg->vm_keys[i].vm : "?");
		if (!k->vm)
			return -ENOMEM;
		memcpy(k->psk, cfg->vm_keys[i].psk, TLS_PSK_LEN);
		tls_psk_key_id(k->psk, k->id);
		l->nkeys++;
	}
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

/* Every address: one IPv6 socket that takes IPv4 too, or IPv4 alone. */
static int listen_any(uint16_t port, int *fdp)
{
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6,
				    .sin6_port = htons(port),
				    .sin6_addr = IN6ADDR_ANY_INIT };
	struct sockaddr_in in = { .sin_family = AF_INET,
				  .sin_port = htons(port),
				  .sin_addr.s_addr = INADDR_ANY };
	int ret;

	ret = listen_on((struct sockaddr *)&in6, sizeof(in6), true, fdp);
	if (ret == -EAFNOSUPPORT)
		ret = listen_on((struct sockaddr *)&in, sizeof(in), false, fdp);
	return ret;
}

/*
 * The first of @host's addresses that binds.  In insecure mode every one
 * of them must be loopback: a name that also resolves to a public address
 * is refused rather than half trusted.
 */
static int listen_host(const char *addr, const char *host, uint16_t port,
		       enum tls_mode mode, int *fdp, struct vhdx_error *err)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL, *ai;
	char portstr[8], a[PEER_LEN];
	int ret;

	snprintf(portstr, sizeof(portstr), "%u", port);
	ret = getaddrinfo(host, portstr, &hints, &res);
	if (ret) {
		sync_seterr(err, "listen %s: %s", addr, gai_strerror(ret));
		return -EINVAL;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		if (mode == TLS_MODE_INSECURE &&
		    !tls_addr_is_loopback(ai->ai_addr)) {
			tls_format_sockaddr(ai->ai_addr, a, sizeof(a));
			sync_seterr(err,
				    "listen %s: --insecure (plain TCP) is "
				    "only allowed on a loopback address, and "
				    "%s is not one",
				    addr, a);
			freeaddrinfo(res);
			return -EPERM;
		}
	}
	ret = -EADDRNOTAVAIL;
	for (ai = res; ai; ai = ai->ai_next) {
		ret = listen_on(ai->ai_addr, ai->ai_addrlen, false, fdp);
		if (!ret)
			break;
	}
	if (ret)
		sync_seterr(err, "listen %s: %s", addr, strerror(-ret));
	freeaddrinfo(res);
	return ret;
}

int tls_listen(const char *addr, const struct tls_config *cfg,
	       struct tls_listener **out, struct vhdx_error *err)
{
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	struct tls_listener *l;
	char host[256];
	uint16_t port;
	int ret;

	tls_init();
	*out = NULL;
	if (tls_parse_addr(addr, host, sizeof(host), &port)) {
		sync_seterr(err,
			    "listen address '%s': expected HOST:PORT, "
			    ":PORT or [IPV6]:PORT",
			    addr);
		return -EINVAL;
	}
	l = calloc(1, sizeof(*l));
	if (!l) {
		sync_seterr(err, "listen %s: out of memory", addr);
		return -ENOMEM;
	}
	l->fd = -1;
	l->mode = cfg->mode;
	if (cfg->mode == TLS_MODE_PSK) {
		memcpy(l->psk, cfg->psk, TLS_PSK_LEN);
		if (copy_keys(l, cfg)) {
			sync_seterr(err, "listen %s: out of memory", addr);
			ret = -ENOMEM;
			goto fail;
		}
	}

	if (cfg->mode == TLS_MODE_INSECURE && !*host) {
		sync_seterr(err,
			    "listen %s: --insecure (plain TCP) is only "
			    "allowed on a loopback address such as "
			    "127.0.0.1:%u or [::1]:%u, not on every address",
			    addr, port, port);
		ret = -EPERM;
		goto fail;
	}
	if (*host) {
		ret = listen_host(addr, host, port, cfg->mode, &l->fd, err);
	} else {
		ret = listen_any(port, &l->fd);
		if (ret)
			sync_seterr(err, "listen %s: %s", addr, strerror(-ret));
	}
	if (ret)
		goto fail;
	if (getsockname(l->fd, (struct sockaddr *)&ss, &sslen) == 0)
		tls_format_sockaddr((struct sockaddr *)&ss, l->addr,
				    sizeof(l->addr));
	else
		snprintf(l->addr, sizeof(l->addr), "%s", addr);

	if (cfg->mode != TLS_MODE_INSECURE) {
		l->ctx = tls_make_ctx(cfg, true, err);
		if (!l->ctx) {
			ret = -EINVAL;
			goto fail;
		}
	}
	*out = l;
	return 0;
fail:
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
	unsigned i;

	if (!l)
		return;
	if (l->fd >= 0)
		close(l->fd);
	SSL_CTX_free(l->ctx);
	OPENSSL_cleanse(l->psk, sizeof(l->psk));
	if (l->keys) {
		for (i = 0; i < l->nkeys; i++)
			free(l->keys[i].vm);
		OPENSSL_cleanse(l->keys, sizeof(*l->keys) * l->nkeys);
		free(l->keys);
	}
	free(l);
}

/* accept4() until a connection comes, a signal, or a real error. */
static int accept_fd(struct tls_listener *l, struct sockaddr_storage *ss,
		     int *fdp, struct vhdx_error *err)
{
	struct pollfd p = { .fd = l->fd, .events = POLLIN };
	socklen_t len;
	int fd, ret;

	for (;;) {
		len = sizeof(*ss);
		fd = accept4(l->fd, (struct sockaddr *)ss, &len,
			     SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			*fdp = fd;
			return 0;
		}
		switch (errno) {
		case EAGAIN:
#if EAGAIN != EWOULDBLOCK
		case EWOULDBLOCK:
#endif
			if (poll(&p, 1, -1) < 0 && errno == EINTR) {
				sync_seterr(err, "listen %s: interrupted",
					    l->addr);
				return -EINTR;
			}
			continue;
		case EINTR:
			sync_seterr(err, "listen %s: interrupted", l->addr);
			return -EINTR;
		case ECONNABORTED:
		case EPROTO:
			sync_seterr(err,
				    "listen %s: a connection went away "
				    "before it was accepted",
				    l->addr);
			return -EAGAIN;
		default:
			ret = -errno;
			sync_seterr(err, "listen %s: accept: %s", l->addr,
				    strerror(errno));
			return ret;
		}
	}
}

int tls_accept(struct tls_listener *l, struct conn **out,
	       struct vhdx_error *err)
{
	struct sockaddr_storage ss;
	struct conn *c;
	int fd = -1, ret;

	*out = NULL;
	ret = accept_fd(l, &ss, &fd, err);
	if (ret)
		return ret;
	tls_set_sockopts(fd);
	c = tls_conn_new(fd, (struct sockaddr *)&ss, l->mode,
			 l->mode == TLS_MODE_PSK ? l->psk : NULL, true);
	if (!c) {
		close(fd);
		sync_seterr(err, "listen %s: out of memory", l->addr);
		return -ENOMEM;
	}
	c->keys = l->keys;
	c->nkeys = l->nkeys;
	if (l->ctx) {
		ret = tls_conn_attach_ssl(c, l->ctx, err);
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

/*
 * Resolve @host and connect to the first address that answers before
 * @deadline (mono_ms; 0: none), skipping non-loopback ones in insecure
 * mode.  The address connected to goes to @peer.
 */
static int connect_host(const char *addr, const char *host, uint16_t port,
			enum tls_mode mode, int64_t deadline, int *fdp,
			struct sockaddr_storage *peer, struct vhdx_error *err)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL, *ai;
	char portstr[8], tried[PEER_LEN] = "";
	bool any = false;
	int ret;

	snprintf(portstr, sizeof(portstr), "%u", port);
	ret = getaddrinfo(host, portstr, &hints, &res);
	if (ret) {
		sync_seterr(err, "peer %s: cannot resolve %s: %s", addr, host,
			    gai_strerror(ret));
		return ret == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
	}
	ret = -EHOSTUNREACH;
	for (ai = res; ai; ai = ai->ai_next) {
		if (mode == TLS_MODE_INSECURE &&
		    !tls_addr_is_loopback(ai->ai_addr)) {
			if (!any && !*tried)
				tls_format_sockaddr(ai->ai_addr, tried,
						    sizeof(tried));
			continue;
		}
		any = true;
		tls_format_sockaddr(ai->ai_addr, tried, sizeof(tried));
		ret = connect_one(ai, tls_ms_left(deadline), fdp);
		if (!ret)
			break;
	}
	if (mode == TLS_MODE_INSECURE && !any) {
		sync_seterr(err,
			    "peer %s: --insecure (plain TCP) is only "
			    "allowed to a loopback address, and %s is not one",
			    addr, tried);
		ret = -EPERM;
	} else if (ret) {
		sync_seterr(err, "peer %s: connect: %s", *tried ? tried : addr,
			    strerror(-ret));
	} else {
		memcpy(peer, ai->ai_addr, ai->ai_addrlen);
	}
	freeaddrinfo(res);
	return ret;
}

int tls_connect(const char *addr, const struct tls_config *cfg, int timeout_ms,
		struct conn **out, struct vhdx_error *err)
{
	int64_t deadline = timeout_ms > 0 ? mono_ms() + timeout_ms : 0;
	struct sockaddr_storage peer;
	char host[256];
	SSL_CTX *ctx = NULL;
	struct conn *c = NULL;
	uint16_t port;
	int ret, fd = -1;

	tls_init();
	*out = NULL;
	if (tls_parse_addr(addr, host, sizeof(host), &port) || !*host ||
	    !port) {
		sync_seterr(err,
			    "peer address '%s': expected HOST:PORT or "
			    "[IPV6]:PORT",
			    addr);
		return -EINVAL;
	}
	/* Bad certificate files are found before any network traffic. */
	if (cfg->mode != TLS_MODE_INSECURE) {
		ctx = tls_make_ctx(cfg, false, err);
		if (!ctx)
			return -EINVAL;
	}
	ret = connect_host(addr, host, port, cfg->mode, deadline, &fd, &peer,
			   err);
	if (ret)
		goto fail;
	tls_set_sockopts(fd);
	c = tls_conn_new(fd, (struct sockaddr *)&peer, cfg->mode,
			 cfg->mode == TLS_MODE_PSK ? cfg->psk : NULL, false);
	if (!c) {
		close(fd);
		sync_seterr(err, "peer %s: out of memory", addr);
		ret = -ENOMEM;
		goto fail;
	}
	c->timeout_ms = timeout_ms;
	/* A VM's own key goes under its id, so the server knows which
	 * one it is; the agent key keeps the identity of old. */
	if (cfg->mode == TLS_MODE_PSK && cfg->psk_by_id) {
		char id[TLS_KEY_ID_LEN + 1];

		tls_psk_key_id(cfg->psk, id);
		snprintf(c->offer, sizeof(c->offer), "%s%s", TLS_PSK_KEY_PREFIX,
			 id);
	}
	if (ctx) {
		ret = tls_conn_attach_ssl(c, ctx, err);
		if (ret)
			goto fail;
		ret = tls_do_handshake(c, deadline, err);
		if (ret)
			goto fail;
	}
	SSL_CTX_free(ctx); /* the SSL object keeps its own reference */
	*out = c;
	return 0;
fail:
	SSL_CTX_free(ctx);
	conn_close(c);
	return ret;
}
