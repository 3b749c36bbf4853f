/* SPDX-License-Identifier: MIT */
/*
 * test_authz.c - per-VM authorization (issue 15): the certificate-name
 * patterns of `allow`, the rule of which credential opens which VM, the
 * ERROR code a primary maps a refusal to, and, over real TLS on
 * loopback, that a server picks a VM's own key by its key id and says
 * which key authenticated the peer.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "agent/sync/common.h"
#include "agent/sync/proto.h"
#include "agent/sync/tls.h"

/* ---- allow patterns ------------------------------------------------------ */

static void test_exact_names(void **state)
{
	(void)state;
	assert_true(sync_name_match("host1.example.com", "host1.example.com"));
	assert_true(sync_name_match("Host1.Example.COM", "host1.example.com"));
	assert_false(sync_name_match("host1.example.com", "host2.example.com"));
	assert_false(sync_name_match("host1.example.com", "host1.example.co"));
	assert_false(sync_name_match("host1", "host1.example.com"));
	assert_false(sync_name_match("host1.example.com", ""));
	assert_false(sync_name_match("", ""));
	assert_false(sync_name_match(NULL, "a"));
	assert_false(sync_name_match("a", NULL));
}

static void test_wildcard_one_label(void **state)
{
	(void)state;
	assert_true(sync_name_match("*.example.com", "a.example.com"));
	assert_true(sync_name_match("*.example.com", "HV-07.Example.com"));
	/* one label only: not two, not none */
	assert_false(sync_name_match("*.example.com", "a.b.example.com"));
	assert_false(sync_name_match("*.example.com", "example.com"));
	assert_false(sync_name_match("*.example.com", ".example.com"));
	/* the rest must match whole, at a label boundary */
	assert_false(sync_name_match("*.example.com", "aexample.com"));
	assert_false(sync_name_match("*.example.com", "a.example.com.evil"));
	assert_false(sync_name_match("*.example.com", "a.xexample.com"));
	/* a certificate's own '*' is no label to match */
	assert_false(sync_name_match("*.example.com", "*.example.com"));
}

static void test_pattern_rules(void **state)
{
	(void)state;
	assert_null(sync_name_pattern_problem("host1.example.com"));
	assert_null(sync_name_pattern_problem("*.example.com"));
	assert_null(sync_name_pattern_problem("primary-a"));
	assert_non_null(sync_name_pattern_problem(""));
	assert_non_null(sync_name_pattern_problem("*"));
	assert_non_null(sync_name_pattern_problem("*."));
	assert_non_null(sync_name_pattern_problem("*example.com"));
	assert_non_null(sync_name_pattern_problem("a*.example.com"));
	assert_non_null(sync_name_pattern_problem("*.*.example.com"));
	assert_non_null(sync_name_pattern_problem("*..example.com"));
	assert_non_null(sync_name_pattern_problem("a b"));
	assert_non_null(sync_name_pattern_problem("a,b"));
}

/* ---- who opens which VM -------------------------------------------------- */

#define ID_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define ID_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define ID_AGENT "cccccccccccccccccccccccccccccccc"

static const struct sync_vm_auth vm_a = { .vm = "a", .key_id = ID_A };
static const struct sync_vm_auth vm_b = { .vm = "b", .key_id = ID_B };
static const struct sync_vm_auth vm_open = { .vm = "c" };

static const struct sync_cred key_a = { .kind = SYNC_CRED_KEY, .key_id = ID_A };
static const struct sync_cred key_b = { .kind = SYNC_CRED_KEY, .key_id = ID_B };
static const struct sync_cred key_agent = { .kind = SYNC_CRED_KEY,
					    .key_id = ID_AGENT,
					    .agent_key = true };

static void test_keys(void **state)
{
	char why[300];

	(void)state;
	/* each VM's key opens its VM */
	assert_true(sync_authorized(&vm_a, &key_a, NULL, 0));
	assert_true(sync_authorized(&vm_b, &key_b, NULL, 0));
	/* and no other */
	why[0] = '\0';
	assert_false(sync_authorized(&vm_b, &key_a, why, sizeof(why)));
	assert_non_null(strstr(why, "VM b"));
	assert_false(sync_authorized(&vm_a, &key_b, NULL, 0));
	assert_false(sync_authorized(&vm_open, &key_a, why, sizeof(why)));
	/* the agent key: not a VM with its own key, yes one without */
	assert_false(sync_authorized(&vm_a, &key_agent, why, sizeof(why)));
	assert_non_null(strstr(why, "agent key"));
	assert_true(sync_authorized(&vm_open, &key_agent, NULL, 0));
	/* an export of no VM (hvresync serve) takes the agent key */
	assert_true(sync_authorized(NULL, &key_agent, NULL, 0));
	assert_false(sync_authorized(NULL, &key_a, NULL, 0));
}

static void test_own_key_equal_to_agent_key(void **state)
{
	/* an admin who gives a VM the agent key's file: the key is what
	 * counts, so the agent key opens it (it is that key) */
	struct sync_vm_auth same = { .vm = "d", .key_id = ID_AGENT };

	(void)state;
	assert_true(sync_authorized(&same, &key_agent, NULL, 0));
	assert_false(sync_authorized(&same, &key_a, NULL, 0));
}

static void test_certificates(void **state)
{
	const char *allow_a[] = { "primary-a.example.com" };
	const char *allow_w[] = { "nope", "*.hv.example.com" };
	const struct sync_vm_auth a = { .vm = "a",
					.allow = allow_a,
					.nallow = 1 };
	const struct sync_vm_auth w = { .vm = "w",
					.allow = allow_w,
					.nallow = 2 };
	const char *n1[] = { "primary-a.example.com" };
	const char *n2[] = { "primary-b.example.com", "h7.hv.example.com" };
	const char *n3[] = { "x.h7.hv.example.com" };
	struct sync_cred c1 = { .kind = SYNC_CRED_CERT,
				.names = n1,
				.nnames = 1 };
	struct sync_cred c2 = { .kind = SYNC_CRED_CERT,
				.names = n2,
				.nnames = 2 };
	struct sync_cred c3 = { .kind = SYNC_CRED_CERT,
				.names = n3,
				.nnames = 1 };
	struct sync_cred none = { .kind = SYNC_CRED_CERT };
	char why[300];

	(void)state;
	assert_true(sync_authorized(&a, &c1, NULL, 0));
	assert_false(sync_authorized(&a, &c2, why, sizeof(why)));
	assert_non_null(strstr(why, "VM a"));
	/* a DNS SAN matches as well as the CN does */
	assert_true(sync_authorized(&w, &c2, NULL, 0));
	assert_false(sync_authorized(&w, &c1, NULL, 0));
	assert_false(sync_authorized(&w, &c3, NULL, 0));
	assert_false(sync_authorized(&a, &none, NULL, 0));
	/* no allow: any certificate of the CA, as before issue 15 */
	assert_true(sync_authorized(&vm_open, &c3, NULL, 0));
	assert_true(sync_authorized(&vm_open, &none, NULL, 0));
}

static void test_plain_tcp(void **state)
{
	const struct sync_cred plain = { .kind = SYNC_CRED_PLAIN };

	(void)state;
	assert_true(sync_authorized(&vm_a, &plain, NULL, 0));
}

static void test_error_code(void **state)
{
	(void)state;
	/* a refusal is -EACCES: Access denied (32769), never retried */
	assert_int_equal(sync_error_errno(PROTO_ERR_NOT_AUTHORIZED), -EACCES);
	assert_int_equal(sync_error_errno(PROTO_ERR_BUSY), -EBUSY);
	assert_int_equal(sync_error_errno(PROTO_ERR_IN_USE), -ETXTBSY);
	assert_int_equal(sync_error_errno(PROTO_ERR_UNKNOWN_EXPORT), -ENOENT);
	assert_int_equal(sync_error_errno(1000), -EIO);
}

/* ---- key ids and the handshake ------------------------------------------ */

static void fill(uint8_t k[TLS_PSK_LEN], uint8_t v)
{
	memset(k, v, TLS_PSK_LEN);
}

static void test_key_id(void **state)
{
	uint8_t k1[TLS_PSK_LEN], k2[TLS_PSK_LEN];
	char a[TLS_KEY_ID_LEN + 1], b[TLS_KEY_ID_LEN + 1],
		c[TLS_KEY_ID_LEN + 1];
	size_t i;

	(void)state;
	fill(k1, 1);
	fill(k2, 1);
	k2[31] = 2;
	tls_psk_key_id(k1, a);
	tls_psk_key_id(k1, b);
	tls_psk_key_id(k2, c);
	assert_int_equal(strlen(a), TLS_KEY_ID_LEN);
	for (i = 0; i < TLS_KEY_ID_LEN; i++)
		assert_non_null(strchr("0123456789abcdef", a[i]));
	assert_string_equal(a, b);
	assert_string_not_equal(a, c);
}

struct srv {
	struct tls_listener *l;
	int ret;
	char key_id[TLS_KEY_ID_LEN + 1];
	bool agent_key;
	enum sync_cred_kind kind;
	char identity[200];
};

static void *accept_one(void *arg)
{
	struct srv *s = arg;
	struct vhdx_error err;
	struct sync_cred cred;
	struct conn *c = NULL;
	char byte = 'x';

	s->ret = tls_accept(s->l, &c, &err);
	if (s->ret)
		return NULL;
	s->ret = conn_handshake(c, &err);
	if (!s->ret) {
		conn_cred(c, &cred);
		s->kind = cred.kind;
		s->agent_key = cred.agent_key;
		snprintf(s->key_id, sizeof(s->key_id), "%s",
			 cred.key_id ? cred.key_id : "");
		snprintf(s->identity, sizeof(s->identity), "%s",
			 conn_identity(c));
		/* one byte, so the client's handshake is surely over */
		conn_write_full(c, &byte, 1, &err);
	}
	conn_close(c);
	return NULL;
}

/* Connect with @client to a server holding the agent key 0x11.. and VM
 * "a"'s key 0x22..; returns the client's result, the server's in @s. */
static int handshake(struct tls_config *client, struct srv *s)
{
	struct tls_vm_key vk = { .vm = "a" };
	struct tls_config scfg = { .mode = TLS_MODE_PSK,
				   .vm_keys = &vk,
				   .nvm_keys = 1 };
	struct vhdx_error err;
	struct conn *c = NULL;
	pthread_t th;
	char byte;
	int ret;

	fill(scfg.psk, 0x11);
	fill(vk.psk, 0x22);
	memset(s, 0, sizeof(*s));
	assert_int_equal(tls_listen("127.0.0.1:0", &scfg, &s->l, &err), 0);
	assert_int_equal(pthread_create(&th, NULL, accept_one, s), 0);
	client->mode = TLS_MODE_PSK;
	ret = tls_connect(tls_listener_addr(s->l), client, 5000, &c, &err);
	if (!ret)
		ret = conn_read_full(c, &byte, 1, &err);
	conn_close(c);
	pthread_join(th, NULL);
	tls_listener_close(s->l);
	return ret;
}

static void test_handshake_picks_key(void **state)
{
	struct tls_config cl;
	char id_a[TLS_KEY_ID_LEN + 1], id_agent[TLS_KEY_ID_LEN + 1];
	uint8_t k[TLS_PSK_LEN];
	struct srv s;

	(void)state;
	fill(k, 0x22);
	tls_psk_key_id(k, id_a);
	fill(k, 0x11);
	tls_psk_key_id(k, id_agent);

	/* the agent key under the identity of old */
	memset(&cl, 0, sizeof(cl));
	fill(cl.psk, 0x11);
	assert_int_equal(handshake(&cl, &s), 0);
	assert_int_equal(s.ret, 0);
	assert_int_equal(s.kind, SYNC_CRED_KEY);
	assert_true(s.agent_key);
	assert_string_equal(s.key_id, id_agent);

	/* VM a's key under its id: the server knows it is a's */
	memset(&cl, 0, sizeof(cl));
	fill(cl.psk, 0x22);
	cl.psk_by_id = true;
	assert_int_equal(handshake(&cl, &s), 0);
	assert_int_equal(s.ret, 0);
	assert_false(s.agent_key);
	assert_string_equal(s.key_id, id_a);
	assert_non_null(strstr(s.identity, "VM a"));

	/* VM a's key under the agent identity: the binder fails */
	memset(&cl, 0, sizeof(cl));
	fill(cl.psk, 0x22);
	assert_int_not_equal(handshake(&cl, &s), 0);
	assert_int_not_equal(s.ret, 0);

	/* a key the server does not hold, under its id: refused */
	memset(&cl, 0, sizeof(cl));
	fill(cl.psk, 0x33);
	cl.psk_by_id = true;
	assert_int_not_equal(handshake(&cl, &s), 0);
	assert_int_equal(s.ret, -EACCES);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exact_names),
		cmocka_unit_test(test_wildcard_one_label),
		cmocka_unit_test(test_pattern_rules),
		cmocka_unit_test(test_keys),
		cmocka_unit_test(test_own_key_equal_to_agent_key),
		cmocka_unit_test(test_certificates),
		cmocka_unit_test(test_plain_tcp),
		cmocka_unit_test(test_error_code),
		cmocka_unit_test(test_key_id),
		cmocka_unit_test(test_handshake_picks_key),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
