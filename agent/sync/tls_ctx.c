/* SPDX-License-Identifier: MIT */
/*
 * tls_ctx.c - the transport's OpenSSL set-up: the pre-shared key file,
 * and the TLS 1.3 contexts for the PSK and X.509 modes, which decide who
 * may connect.  Everything here happens before any byte is exchanged.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "agent/sync/tls_internal.h"

/* TLS_AES_256_GCM_SHA384, the one suite the PSK mode allows. */
static const unsigned char psk_suite_id[2] = { 0x13, 0x02 };

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
	OPENSSL_init_ssl(0, NULL);
	signal(SIGPIPE, SIG_IGN);
}

void tls_init(void)
{
	pthread_once(&init_once, global_init);
}

const char *tls_ssl_reason(void)
{
	unsigned long e = ERR_peek_last_error();
	const char *r;

	if (!e)
		return "";
	r = ERR_reason_error_string(e);
	return r ? r : "unknown TLS error";
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
		sync_seterr(err, "key file %s: %s", path, strerror(errno));
		return ret;
	}
	if (fstat(fd, &st)) {
		ret = -errno;
		sync_seterr(err, "key file %s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EINVAL;
		sync_seterr(err, "key file %s: not a regular file", path);
		goto out;
	}
	/* Like ssh with private keys: a key others can read is no secret. */
	if (st.st_mode & 077) {
		ret = -EPERM;
		sync_seterr(err,
			    "key file %s is %s by group or others "
			    "(mode %04o): run chmod 600 %s",
			    path, (st.st_mode & 044) ? "readable" : "writable",
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
			sync_seterr(err, "key file %s: %s", path,
				    strerror(errno));
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
			sync_seterr(err,
				    "key file %s: character %zu is not a "
				    "hex digit (the file must hold one line of "
				    "64 hex digits; hvresync keygen writes "
				    "one)",
				    path, i + 1);
			goto out;
		}
	if (n != 2 * TLS_PSK_LEN) {
		sync_seterr(err,
			    "key file %s: %s (the file must hold one "
			    "line of 64 hex digits; hvresync keygen writes "
			    "one)",
			    path,
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

void tls_psk_key_id(const uint8_t psk[TLS_PSK_LEN], char id[TLS_KEY_ID_LEN + 1])
{
	/* A label of our own, so the id is no hash anyone else computes
	 * of the key; the NUL ends the label. */
	static const char label[] = "hvresync key id";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0, i;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	memset(md, 0, sizeof(md));
	if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
	    EVP_DigestUpdate(ctx, label, sizeof(label)) &&
	    EVP_DigestUpdate(ctx, psk, TLS_PSK_LEN))
		EVP_DigestFinal_ex(ctx, md, &mdlen);
	EVP_MD_CTX_free(ctx);
	for (i = 0; i < TLS_KEY_ID_LEN / 2; i++)
		snprintf(id + 2 * i, 3, "%02x", md[i]);
	id[TLS_KEY_ID_LEN] = '\0';
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
	if (md &&
	    EVP_MD_get_type(md) !=
		    EVP_MD_get_type(SSL_CIPHER_get_handshake_digest(ciph)))
		return 1;
	*sess = psk_session(c, ciph);
	if (!*sess)
		return 0;
	/* TLS_PSK_IDENTITY, or a VM key's prefix and id (tls_connect). */
	*id = (const unsigned char *)c->offer;
	*idlen = strlen(c->offer);
	return 1;
}

/* The identity a client offered, printable and short, for the log. */
static void note_bad_identity(struct conn *c, const unsigned char *id,
			      size_t idlen)
{
	size_t i, n = 0;

	c->bad_identity = true;
	for (i = 0; i < idlen && n + 4 < sizeof(c->bad_id); i++)
		c->bad_id[n++] =
			(char)(id[i] < 0x20 || id[i] >= 0x7F ? '?' : id[i]);
	if (i < idlen)
		c->bad_id[n++] = '~';
	c->bad_id[n] = '\0';
}

/* Server: which of its keys the identity names, NULL for none. */
static const struct tls_key_entry *
find_key(const struct conn *c, const unsigned char *id, size_t idlen)
{
	size_t plen = strlen(TLS_PSK_KEY_PREFIX);
	unsigned i;

	if (idlen == strlen(TLS_PSK_IDENTITY) &&
	    !memcmp(id, TLS_PSK_IDENTITY, idlen)) {
		/* Entry 0 is the agent-wide key when there is one. */
		for (i = 0; i < c->nkeys; i++)
			if (!c->keys[i].vm)
				return &c->keys[i];
		return NULL;
	}
	if (idlen != plen + TLS_KEY_ID_LEN ||
	    memcmp(id, TLS_PSK_KEY_PREFIX, plen))
		return NULL;
	for (i = 0; i < c->nkeys; i++)
		if (!memcmp(id + plen, c->keys[i].id, TLS_KEY_ID_LEN))
			return &c->keys[i];
	return NULL;
}

/*
 * Server: the key the identity names (the agent's for TLS_PSK_IDENTITY,
 * any admitted key by its id), nothing for any other.  With no
 * certificate configured, a handshake without a PSK cannot complete, and
 * one with the wrong key for the identity fails its binder.
 */
static int psk_find_cb(SSL *ssl, const unsigned char *id, size_t idlen,
		       SSL_SESSION **sess)
{
	struct conn *c = SSL_get_app_data(ssl);
	const SSL_CIPHER *ciph = SSL_CIPHER_find(ssl, psk_suite_id);
	const struct tls_key_entry *k;

	*sess = NULL;
	if (!c || !ciph)
		return 0;
	k = find_key(c, id, idlen);
	if (!k) {
		note_bad_identity(c, id, idlen);
		return 1;
	}
	memcpy(c->psk, k->psk, TLS_PSK_LEN);
	memcpy(c->key_id, k->id, sizeof(c->key_id));
	c->agent_key = !k->vm;
	snprintf(c->key_vm, sizeof(c->key_vm), "%s", k->vm ? k->vm : "");
	*sess = psk_session(c, ciph);
	return *sess ? 1 : 0;
}

SSL_CTX *tls_make_ctx(const struct tls_config *cfg, bool server,
		      struct vhdx_error *err)
{
	STACK_OF(X509_NAME) * names;
	SSL_CTX *ctx;

	ERR_clear_error();
	ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!ctx) {
		sync_seterr(err, "cannot set up TLS: %s", tls_ssl_reason());
		return NULL;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION)) {
		sync_seterr(err, "cannot set up TLS 1.3: %s", tls_ssl_reason());
		goto fail;
	}
	/* One session per connection: no tickets, no resumption. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_num_tickets(ctx, 0);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
				      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* Read what the socket has, not a record header and then its body:
	 * a 4 KiB DATA frame otherwise costs two read()s, and a system call
	 * is dear on a virtual machine.  Readers always call SSL_read before
	 * they poll (tls_conn.c), so buffered records are never missed. */
	SSL_CTX_set_read_ahead(ctx, 1);
	SSL_CTX_set_default_read_buffer_len(ctx, 64u << 10);

	if (cfg->mode == TLS_MODE_PSK) {
		if (!SSL_CTX_set_ciphersuites(ctx, "TLS_AES_256_GCM_SHA384")) {
			sync_seterr(err, "cannot set up TLS: %s",
				    tls_ssl_reason());
			goto fail;
		}
		if (server) {
			SSL_CTX_set_psk_find_session_callback(ctx, psk_find_cb);
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
		sync_seterr(err, "X.509 mode needs --cert, --key and --ca");
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert) != 1) {
		sync_seterr(err, "certificate %s: %s", cfg->cert,
			    tls_ssl_reason());
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key, SSL_FILETYPE_PEM) != 1) {
		if (ERR_GET_REASON(ERR_peek_last_error()) ==
		    X509_R_KEY_VALUES_MISMATCH)
			sync_seterr(err,
				    "private key %s does not match "
				    "certificate %s",
				    cfg->key, cfg->cert);
		else
			sync_seterr(err, "private key %s: %s", cfg->key,
				    tls_ssl_reason());
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		sync_seterr(err, "private key %s does not match certificate %s",
			    cfg->key, cfg->cert);
		goto fail;
	}
	if (SSL_CTX_load_verify_locations(ctx, cfg->ca, NULL) != 1) {
		sync_seterr(err, "CA file %s: %s", cfg->ca, tls_ssl_reason());
		goto fail;
	}
	if (server) {
		names = SSL_load_client_CA_file(cfg->ca);
		if (names)
			SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(
			ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
			NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}
