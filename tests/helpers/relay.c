/* SPDX-License-Identifier: MIT */
/*
 * relay.c - a TCP relay on loopback that plays a flaky link, for
 * tests/t-agent-flaky-link.sh (issue 9: a job that survives a flaky link).
 *
 *   relay LISTEN_PORT TARGET_HOST:TARGET_PORT [--cut-after BYTES[,BYTES...]]
 *	   [--stats FILE]
 *
 * Listens on 127.0.0.1:LISTEN_PORT (0: any free port) and prints
 * "listening 127.0.0.1:PORT" on stdout once it accepts.  Each accepted
 * connection is forwarded to the target; a target that cannot be reached
 * resets the accepted connection, as a peer that is down refuses it.
 * Bytes forwarded in both directions are counted together over all
 * connections.  When that count reaches each BYTES of --cut-after (given
 * in increasing order), every connection open at that moment is cut;
 * SIGUSR1 cuts every open connection at once.  A cut resets both sides
 * (SO_LINGER 0): the ends see "connection reset", as when a router or
 * firewall on the way drops the link, rather than waiting minutes for a
 * silent link to time out.  An end that closes or fails is passed on to
 * the other as it happened (FIN as FIN, error as reset).
 *
 * --stats FILE is rewritten atomically (temporary file and rename) with
 * "bytes N\ncuts K\nconnections C\n": bytes forwarded, cuts that closed at
 * least one connection, connections accepted.  It is written at start-up,
 * at once on every connection and cut, and for byte counts at most every
 * STATS_DELAY_MS while bytes flow, so a reader is never more than that
 * behind.  SIGTERM or SIGINT: close everything, write the stats, exit 0.
 *
 * Exit status: 0 after SIGTERM, 2 with one line on stderr for bad
 * arguments or a failure to set up.  Only libc: no project code.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (64u << 10) /* per direction of a connection */
#define MAX_CUTS 64
#define STATS_DELAY_MS 20
#define TAG_LISTEN UINT64_MAX
#define TAG_SIGNAL (UINT64_MAX - 1)

static const char usage[] =
	"usage: relay LISTEN_PORT TARGET_HOST:TARGET_PORT [--cut-after BYTES[,BYTES...]] [--stats FILE]";

/* One direction of a connection: bytes read from one end, not yet all
 * written to the other. */
struct flow {
	char buf[BUF_SIZE];
	size_t len, off;
	bool eof;  /* the source end sent FIN; passed on once buf is empty */
	bool shut; /* ... and the destination was shut for writing */
};

/* A relayed connection: end 0 is the accepted client, end 1 the target.
 * flow[0] runs client to target, flow[1] target to client. */
struct conn {
	int fd[2];
	bool connecting;    /* the target's connect() is still under way */
	uint32_t events[2]; /* what epoll watches on each end now */
	struct flow flow[2];
};

static struct {
	int ep, lfd, sfd;
	struct sockaddr_storage target;
	socklen_t target_len;
	const char *target_name;
	uint64_t cut_at[MAX_CUTS];
	unsigned ncut, next_cut;
	const char *stats;
	uint64_t bytes, cuts, accepted;
	uint64_t pending; /* bytes read but not yet written, all flows */
	struct conn **conns;
	size_t nconns; /* slots; NULL slots are free */
	bool stats_dirty;
	double stats_time;
	bool held; /* some read waits for writes to reach the next cut */
} R;

static void __attribute__((noreturn, format(printf, 1, 2)))
die(const char *fmt, ...)
{
	va_list ap;

	fputs("relay: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* --- arguments --- */

static bool parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

static void parse_cuts(const char *arg)
{
	char *copy = strdup(arg), *tok, *save = NULL;

	if (!copy)
		die("out of memory");
	for (tok = strtok_r(copy, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		uint64_t v;

		if (R.ncut == MAX_CUTS)
			die("--cut-after: more than %u thresholds", MAX_CUTS);
		if (!parse_u64(tok, &v) || v == 0)
			die("--cut-after: '%s' is not a byte count above 0",
			    tok);
		if (R.ncut && v <= R.cut_at[R.ncut - 1])
			die("--cut-after: %s is not above the threshold before it",
			    tok);
		R.cut_at[R.ncut++] = v;
	}
	free(copy);
	if (!R.ncut)
		die("--cut-after: no byte counts in '%s'", arg);
}

/* HOST:PORT or [V6]:PORT; resolved once, now. */
static void parse_target(const char *arg)
{
	char host[256];
	const char *colon = strrchr(arg, ':'), *h = arg;
	size_t hlen;
	struct addrinfo hints, *ai;
	uint64_t port;
	int ret;

	if (!colon || colon == arg || !parse_u64(colon + 1, &port) ||
	    port == 0 || port > 65535)
		die("target '%s' is not HOST:PORT", arg);
	hlen = (size_t)(colon - arg);
	if (*h == '[' && hlen >= 2 && h[hlen - 1] == ']') {
		h++;
		hlen -= 2;
	}
	if (hlen == 0 || hlen >= sizeof(host))
		die("target '%s' is not HOST:PORT", arg);
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	ret = getaddrinfo(host, colon + 1, &hints, &ai);
	if (ret)
		die("target '%s': %s", arg, gai_strerror(ret));
	memcpy(&R.target, ai->ai_addr, ai->ai_addrlen);
	R.target_len = ai->ai_addrlen;
	freeaddrinfo(ai);
	R.target_name = arg;
}

/* --- stats --- */

static void write_stats(void)
{
	char tmp[PATH_MAX];
	FILE *f;

	R.stats_dirty = false;
	R.stats_time = now_ms();
	if (!R.stats)
		return;
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", R.stats, (int)getpid()) >=
	    (int)sizeof(tmp))
		die("%s: path too long", R.stats);
	f = fopen(tmp, "w");
	if (!f)
		die("%s: %s", tmp, strerror(errno));
	fprintf(f, "bytes %llu\ncuts %llu\nconnections %llu\n",
		(unsigned long long)R.bytes, (unsigned long long)R.cuts,
		(unsigned long long)R.accepted);
	if (fclose(f))
		die("%s: %s", tmp, strerror(errno));
	if (rename(tmp, R.stats))
		die("%s: %s", R.stats, strerror(errno));
}

/* Bytes moved: write now if the last write is old enough, else later. */
static void stats_bytes_changed(void)
{
	if (now_ms() - R.stats_time >= STATS_DELAY_MS)
		write_stats();
	else
		R.stats_dirty = true;
}

/* --- connections --- */

static void set_events(struct conn *c, size_t slot, int end, uint32_t ev)
{
	struct epoll_event e = { .events = ev, .data.u64 = slot << 1 | end };

	if (c->fd[end] < 0 || c->events[end] == ev)
		return;
	if (epoll_ctl(R.ep, EPOLL_CTL_MOD, c->fd[end], &e))
		die("epoll_ctl: %s", strerror(errno));
	c->events[end] = ev;
}

static void close_end(struct conn *c, int end, bool reset)
{
	if (c->fd[end] < 0)
		return;
	if (reset) {
		struct linger l = { .l_onoff = 1, .l_linger = 0 };

		setsockopt(c->fd[end], SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	}
	close(c->fd[end]); /* also leaves the epoll set */
	c->fd[end] = -1;
}

/* Forget connection @slot; @reset: both ends see a reset, not a FIN. */
static void drop(size_t slot, bool reset)
{
	struct conn *c = R.conns[slot];

	close_end(c, 0, reset);
	close_end(c, 1, reset);
	R.pending -= c->flow[0].len - c->flow[0].off;
	R.pending -= c->flow[1].len - c->flow[1].off;
	free(c);
	R.conns[slot] = NULL;
}

/* Cut every open connection; counts as a cut when there was one. */
static void cut_all(const char *why)
{
	size_t i;
	unsigned n = 0;

	for (i = 0; i < R.nconns; i++) {
		if (!R.conns[i])
			continue;
		drop(i, true);
		n++;
	}
	if (!n)
		return;
	R.cuts++;
	fprintf(stderr, "relay: cut %u connection(s) at %llu bytes (%s)\n", n,
		(unsigned long long)R.bytes, why);
	write_stats();
}

/* How many bytes a read may take now: up to the next cut threshold, so
 * a cut falls on the threshold and not a buffer later. */
static size_t read_allowance(void)
{
	uint64_t room;

	if (R.next_cut == R.ncut)
		return BUF_SIZE;
	room = R.cut_at[R.next_cut] - R.bytes;
	if (room <= R.pending)
		return 0;
	room -= R.pending;
	return room < BUF_SIZE ? (size_t)room : BUF_SIZE;
}

/* What each end of @c waits for, from the state of its two flows. */
static void update_events(struct conn *c, size_t slot)
{
	int end;

	for (end = 0; end < 2; end++) {
		struct flow *in = &c->flow[end], *out = &c->flow[!end];
		uint32_t ev = 0;

		if (end == 1 && c->connecting) {
			set_events(c, slot, 1, EPOLLOUT);
			continue;
		}
		/* read only into an empty buffer, not from a client whose
		 * target is not there yet, and not past the next cut */
		if (!in->eof && in->off == in->len &&
		    !(end == 0 && c->connecting)) {
			if (read_allowance())
				ev |= EPOLLIN;
			else
				R.held = true;
		}
		if (out->off < out->len)
			ev |= EPOLLOUT;
		set_events(c, slot, end, ev);
	}
}

/*
 * Move what can move on flow @dir of @slot.  Returns false when the
 * connection is gone (closed by its ends, failed, or cut).
 */
static bool pump(size_t slot, int dir)
{
	struct conn *c = R.conns[slot];
	struct flow *f = &c->flow[dir];
	int src = c->fd[dir], dst = c->fd[!dir];
	ssize_t n;
	size_t want;

	for (;;) {
		if (f->off < f->len) {
			n = send(dst, f->buf + f->off, f->len - f->off,
				 MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					return true;
				/* the destination failed: so does the source */
				drop(slot, true);
				return false;
			}
			f->off += (size_t)n;
			R.pending -= (uint64_t)n;
			R.bytes += (uint64_t)n;
			stats_bytes_changed();
			if (R.next_cut < R.ncut &&
			    R.bytes >= R.cut_at[R.next_cut]) {
				char why[64];

				while (R.next_cut < R.ncut &&
				       R.bytes >= R.cut_at[R.next_cut])
					R.next_cut++;
				snprintf(why, sizeof(why), "--cut-after %llu",
					 (unsigned long long)
						 R.cut_at[R.next_cut - 1]);
				cut_all(why);
				return false;
			}
			continue;
		}
		f->off = f->len = 0;
		if (f->eof) {
			if (!f->shut) {
				shutdown(dst, SHUT_WR);
				f->shut = true;
			}
			if (c->flow[!dir].shut) {
				drop(slot, false); /* both ways done */
				return false;
			}
			return true;
		}
		want = read_allowance();
		if (!want) {
			R.held = true; /* other writes reach the cut first */
			return true;
		}
		n = recv(src, f->buf, want, 0);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return true;
			drop(slot, true); /* a reset stays a reset */
			return false;
		}
		if (n == 0) {
			f->eof = true;
			continue;
		}
		f->len = (size_t)n;
		R.pending += (uint64_t)n;
	}
}

static void add_fd(int fd, uint64_t tag, uint32_t ev)
{
	struct epoll_event e = { .events = ev, .data.u64 = tag };

	if (epoll_ctl(R.ep, EPOLL_CTL_ADD, fd, &e))
		die("epoll_ctl: %s", strerror(errno));
}

static size_t free_slot(void)
{
	size_t i, n;
	struct conn **p;

	for (i = 0; i < R.nconns; i++)
		if (!R.conns[i])
			return i;
	n = R.nconns ? R.nconns * 2 : 16;
	p = realloc(R.conns, n * sizeof(*p));
	if (!p)
		die("out of memory");
	memset(p + R.nconns, 0, (n - R.nconns) * sizeof(*p));
	R.conns = p;
	i = R.nconns;
	R.nconns = n;
	return i;
}

static void accept_one(void)
{
	struct conn *c;
	size_t slot;
	int cfd, tfd, one = 1;

	cfd = accept4(R.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (cfd < 0) {
		if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
			fprintf(stderr, "relay: accept: %s\n", strerror(errno));
		return;
	}
	R.accepted++;
	tfd = socket(R.target.ss_family,
		     SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (tfd < 0)
		die("socket: %s", strerror(errno));
	setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(tfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c = calloc(1, sizeof(*c));
	if (!c)
		die("out of memory");
	c->fd[0] = cfd;
	c->fd[1] = tfd;
	slot = free_slot();
	R.conns[slot] = c;
	add_fd(cfd, slot << 1, 0);
	add_fd(tfd, slot << 1 | 1, 0);
	if (connect(tfd, (struct sockaddr *)&R.target, R.target_len) == 0) {
		c->connecting = false;
	} else if (errno == EINPROGRESS) {
		c->connecting = true;
	} else {
		fprintf(stderr, "relay: %s: %s\n", R.target_name,
			strerror(errno));
		drop(slot, true);
		write_stats();
		return;
	}
	update_events(c, slot);
	write_stats();
}

/* The target's connect() finished, one way or the other. */
static bool connected(size_t slot)
{
	struct conn *c = R.conns[slot];
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) || err) {
		fprintf(stderr, "relay: %s: %s\n", R.target_name,
			strerror(err ? err : errno));
		drop(slot, true); /* the client sees a refusal as a reset */
		return false;
	}
	c->connecting = false;
	return true;
}

static void on_conn_event(uint64_t tag, uint32_t ev)
{
	size_t slot = (size_t)(tag >> 1);
	int end = (int)(tag & 1);
	struct conn *c;

	if (slot >= R.nconns || !R.conns[slot])
		return; /* dropped earlier in this batch of events */
	c = R.conns[slot];
	if (c->fd[end] < 0)
		return;
	if (ev & EPOLLERR) {
		drop(slot, true); /* a reset end resets the other */
		return;
	}
	if (c->connecting) {
		/* only the target's connect() result matters until then */
		if (end == 0 || !connected(slot))
			return;
	}
	/* a hang-up surfaces as end of file or a failed send in pump() */
	if (!pump(slot, end) || !pump(slot, !end))
		return;
	update_events(c, slot);
}

static bool on_signal(void)
{
	struct signalfd_siginfo si;

	while (read(R.sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGUSR1) {
			cut_all("SIGUSR1");
			continue;
		}
		return false; /* SIGTERM, SIGINT */
	}
	return true;
}

/* Reads held back for a cut may go on once the writes before them have
 * reached it without crossing it: resume every connection. */
static void pump_all(void)
{
	size_t i;
	int d;

	R.held = false;
	for (i = 0; i < R.nconns; i++) {
		for (d = 0; d < 2 && R.conns[i]; d++)
			if (!R.conns[i]->connecting && !pump(i, d))
				break;
		if (R.conns[i])
			update_events(R.conns[i], i);
	}
}

static void setup(uint64_t port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	sigset_t set;
	int one = 1;

	R.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (R.lfd < 0)
		die("socket: %s", strerror(errno));
	setsockopt(R.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((uint16_t)port);
	if (bind(R.lfd, (struct sockaddr *)&sin, sizeof(sin)) ||
	    listen(R.lfd, 64))
		die("127.0.0.1:%llu: %s", (unsigned long long)port,
		    strerror(errno));
	if (getsockname(R.lfd, (struct sockaddr *)&sin, &len))
		die("getsockname: %s", strerror(errno));

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		die("sigprocmask: %s", strerror(errno));
	R.sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (R.sfd < 0)
		die("signalfd: %s", strerror(errno));
	R.ep = epoll_create1(EPOLL_CLOEXEC);
	if (R.ep < 0)
		die("epoll_create1: %s", strerror(errno));
	add_fd(R.lfd, TAG_LISTEN, EPOLLIN);
	add_fd(R.sfd, TAG_SIGNAL, EPOLLIN);
	write_stats();
	printf("listening 127.0.0.1:%u\n", ntohs(sin.sin_port));
	fflush(stdout);
}

int main(int argc, char **argv)
{
	struct epoll_event evs[64];
	uint64_t port;
	int i, n, timeout;
	size_t k;

	if (argc < 3)
		die("missing arguments (%s)", usage);
	if (!parse_u64(argv[1], &port) || port > 65535)
		die("LISTEN_PORT '%s' is not a port number", argv[1]);
	for (i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "--cut-after") && i + 1 < argc) {
			if (R.ncut)
				die("--cut-after given twice");
			parse_cuts(argv[++i]);
		} else if (!strcmp(argv[i], "--stats") && i + 1 < argc) {
			R.stats = argv[++i];
		} else {
			die("unexpected argument '%s' (%s)", argv[i], usage);
		}
	}
	parse_target(argv[2]);
	setup(port);

	for (;;) {
		timeout = -1;
		if (R.stats_dirty) {
			double left =
				STATS_DELAY_MS - (now_ms() - R.stats_time);

			timeout = left > 0 ? (int)left + 1 : 0;
		}
		n = epoll_wait(R.ep, evs, 64, timeout);
		if (n < 0 && errno != EINTR)
			die("epoll_wait: %s", strerror(errno));
		for (i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;

			if (tag == TAG_LISTEN)
				accept_one();
			else if (tag == TAG_SIGNAL) {
				if (!on_signal())
					goto out;
			} else {
				on_conn_event(tag, evs[i].events);
			}
		}
		if (R.held && read_allowance())
			pump_all();
		if (R.stats_dirty && now_ms() - R.stats_time >= STATS_DELAY_MS)
			write_stats();
	}
out:
	for (k = 0; k < R.nconns; k++)
		if (R.conns[k])
			drop(k, false);
	write_stats();
	free(R.conns);
	return 0;
}
