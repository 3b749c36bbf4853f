/* SPDX-License-Identifier: MIT */
/*
 * test_conn_limits.c - unit tests of what the transport gives a server
 * against peers that misbehave (agent/sync/tls_conn.c, plain-TCP path):
 * the hard deadline that a peer trickling one byte at a time cannot
 * stretch, and the graceful close after a last frame (conn_linger), which
 * lets a peer that is still sending read that frame and a clean end of
 * stream instead of a reset.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent/sync/common.h"
#include "agent/sync/proto.h"
#include "agent/sync/tls.h"

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the deadline ------------------------------------------------------- */

struct trickle {
	int fd;
	int bytes;
	int gap_ms;
};

/* Send one byte every gap_ms: progress, so a plain timeout never fires. */
static void *trickle_main(void *arg)
{
	struct trickle *t = arg;
	struct timespec ts = { .tv_sec = 0,
			       .tv_nsec = (long)t->gap_ms * 1000000L };
	int i;

	for (i = 0; i < t->bytes; i++) {
		nanosleep(&ts, NULL);
		if (send(t->fd, "x", 1, MSG_NOSIGNAL) != 1)
			break;
	}
	return NULL;
}

/* Read @t->bytes trickled bytes from a connection with @timeout_ms and
 * @deadline_ms; returns conn_read_full()'s result, @secs how long. */
static int read_trickle(struct trickle *t, int timeout_ms, int deadline_ms,
			double *secs, char *msg, size_t msglen)
{
	struct vhdx_error err = { .msg = "" };
	char buf[64];
	struct conn *c;
	pthread_t th;
	double t0;
	int sv[2], ret;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(conn_from_fd(sv[0], "trickler", &c), 0);
	conn_set_timeout(c, timeout_ms);
	conn_set_deadline(c, deadline_ms);
	t->fd = sv[1];
	assert_int_equal(pthread_create(&th, NULL, trickle_main, t), 0);
	t0 = now_s();
	ret = conn_read_full(c, buf, (size_t)t->bytes, &err);
	*secs = now_s() - t0;
	snprintf(msg, msglen, "%s", err.msg);
	shutdown(sv[1], SHUT_RDWR);
	pthread_join(th, NULL);
	conn_close(c);
	close(sv[1]);
	return ret;
}

static void test_deadline_beats_trickle(void **state)
{
	struct trickle t = { .bytes = 20, .gap_ms = 50 };
	char msg[300];
	double secs;
	int ret;

	(void)state;
	/* Without a deadline, a byte every 50 ms keeps a 300 ms timeout
	 * from ever firing: the whole second of trickle gets through. */
	ret = read_trickle(&t, 300, 0, &secs, msg, sizeof(msg));
	assert_int_equal(ret, 0);
	assert_true(secs >= 0.9);

	/* With a 400 ms deadline it ends there, progress or not. */
	ret = read_trickle(&t, 300, 400, &secs, msg, sizeof(msg));
	assert_int_equal(ret, -ETIMEDOUT);
	assert_true(secs >= 0.35 && secs < 0.9);
	assert_non_null(strstr(msg, "trickler"));
	assert_non_null(strstr(msg, "time limit"));
}

static void test_deadline_cleared(void **state)
{
	struct trickle t = { .bytes = 10, .gap_ms = 50 };
	struct vhdx_error err = { .msg = "" };
	char buf[16];
	struct conn *c;
	pthread_t th;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(conn_from_fd(sv[0], "p", &c), 0);
	conn_set_timeout(c, 2000);
	conn_set_deadline(c, 100);
	conn_set_deadline(c, 0); /* a session that authenticated */
	t.fd = sv[1];
	assert_int_equal(pthread_create(&th, NULL, trickle_main, &t), 0);
	assert_int_equal(conn_read_full(c, buf, 10, &err), 0);
	pthread_join(th, NULL);
	conn_close(c);
	close(sv[1]);
}

/* ---- the graceful close -------------------------------------------------- */

struct flood {
	int fd;
	bool stop;
	int err; /* a send failed before the reader was done: -errno */
};

/* The primary, still sending DATA as fast as it can. */
static void *flood_main(void *arg)
{
	struct flood *f = arg;
	static char buf[65536];

	while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
		if (send(f->fd, buf, sizeof(buf), MSG_NOSIGNAL) < 0) {
			if (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED))
				f->err = -errno;
			break;
		}
	}
	return NULL;
}

struct closer {
	struct conn *c;
	bool linger;
	double secs;
};

/* The recovery side: ERROR, then close, gracefully or not. */
static void *closer_main(void *arg)
{
	struct closer *k = arg;
	struct vhdx_error err;
	struct msg m;
	double t0;

	sync_error_msg(&m, PROTO_ERR_IO, "export x: No space left on device");
	assert_int_equal(proto_send_msg(k->c, &m, &err), 0);
	t0 = now_s();
	if (k->linger)
		conn_linger(k->c, 3000);
	k->secs = now_s() - t0;
	conn_close(k->c);
	return NULL;
}

/* A TCP pair on loopback: @srv wrapped as a connection, @cli raw. */
static void tcp_pair(struct conn **srv, int *cli)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int l, s;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(l >= 0);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&a, &len), 0);
	*cli = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(*cli, (struct sockaddr *)&a, sizeof(a)), 0);
	s = accept(l, NULL, NULL);
	assert_true(s >= 0);
	close(l);
	assert_int_equal(conn_from_fd(s, "primary", srv), 0);
	conn_set_timeout(*srv, 5000);
}

/*
 * The primary floods the recovery side, which answers ERROR and closes
 * (@linger: through conn_linger).  Returns what the primary's last read
 * said: 0 for a clean end of stream, -errno otherwise; @got the bytes it
 * read before that, @send_err how its sending failed before it had read
 * everything (0: it did not).
 */
static int error_then_close(bool linger, size_t *got, double *linger_secs,
			    int *send_err)
{
	struct closer k = { .linger = linger };
	struct flood f = { 0 };
	pthread_t tf, tk;
	uint8_t buf[4096];
	ssize_t n;
	int cli, ret;

	tcp_pair(&k.c, &cli);
	f.fd = cli;
	assert_int_equal(pthread_create(&tf, NULL, flood_main, &f), 0);
	/* Let the flood fill the recovery side's receive buffer. */
	usleep(100000);
	assert_int_equal(pthread_create(&tk, NULL, closer_main, &k), 0);
	*got = 0;
	for (;;) {
		n = recv(cli, buf, sizeof(buf), 0);
		if (n > 0) {
			*got += (size_t)n;
			continue;
		}
		ret = n == 0 ? 0 : -errno;
		break;
	}
	/* A reset shows in the sends at once; a lingering peer still
	 * takes them. */
	usleep(200000);
	__atomic_store_n(&f.stop, true, __ATOMIC_RELAXED);
	shutdown(cli, SHUT_RDWR);
	pthread_join(tf, NULL);
	close(cli);
	pthread_join(tk, NULL);
	*linger_secs = k.secs;
	*send_err = f.err;
	return ret;
}

static void test_linger_ends_cleanly(void **state)
{
	size_t frame = PROTO_HDR_LEN + PROTO_ERROR_FIXED +
		       strlen("export x: No space left on device");
	double secs;
	size_t got;
	int ret, send_err;

	(void)state;
	/* A plain close with the flood unread is a reset (Linux sends
	 * RST): the primary's sends fail while the ERROR may still be on
	 * its way, and a relay that sees its send fail resets the other
	 * side too, dropping what it had not passed on. */
	error_then_close(false, &got, &secs, &send_err);
	assert_true(send_err == -ECONNRESET || send_err == -EPIPE);

	/* Gracefully: the primary's sends go on until it has read the
	 * whole ERROR and a clean end of stream, and the linger ends when
	 * the primary closes, not at its limit. */
	ret = error_then_close(true, &got, &secs, &send_err);
	assert_int_equal(send_err, 0);
	assert_int_equal(ret, 0);
	assert_int_equal(got, frame);
	assert_true(secs < 2.0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_deadline_beats_trickle),
		cmocka_unit_test(test_deadline_cleared),
		cmocka_unit_test(test_linger_ends_cleanly),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
