/* SPDX-License-Identifier: MIT */
/*
 * fuzz_json.c - libFuzzer target for the control API's request parsing:
 * the JSON parser (agent/lib/jsonparse.c) and the pure request readers of
 * agent/daemon/methods.c (Resynchronize, RequestStateChange, and through
 * them the StartTime parser of cimtime.c).
 *
 * An accepted document must re-encode through jv_write into JSON that the
 * parser accepts again as the same tree (strings, keys, integers and
 * booleans exactly; other numbers as numbers), and that second encoding
 * must be a fixed point: the agent writes back what it read.
 *
 * The requests are judged against a small built-in configuration written
 * to a memfd at start-up: parsing never touches the file system.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent/daemon/config.h"
#include "agent/daemon/methods.h"
#include "agent/lib/json.h"
#include "agent/lib/jsonparse.h"

/* A line is at most 64 KiB on the socket (docs/control-api.md). */
#define MAX_LINE (64 * 1024)
#define NOW 1795552200000000LL /* 2026-11-24 18:30 UTC, fixed for repeats */

static const char conf[] = "[agent]\n"
			   "insecure = true\n"
			   "listen = 127.0.0.1:7433\n"
			   "[vm web01]\n"
			   "id = 7D9D3C8A-1F2B-4C3D-8E4F-0123456789AB\n"
			   "role = primary\n"
			   "replica = 10.0.0.2:7433\n"
			   "disk = /srv/vms/web01/os.vhdx\n"
			   "disk = /srv/vms/web01/data.vhdx\n"
			   "exclude = /srv/vms/web01/swap.vhdx\n"
			   "[vm app01]\n"
			   "role = replica\n"
			   "replica = 10.0.0.3:7433\n"
			   "disk = /srv/replica/app01/app.vhdx\n"
			   "[vm last01]\n"
			   "role = extended-replica\n"
			   "disk = /srv/extended/last01/last.vhdx\n";

static struct agent_config cfg;
static bool have_cfg;

static void load_config(void)
{
	char path[64], err[512];
	int fd;

	fd = memfd_create("fuzz_json.conf", MFD_CLOEXEC);
	if (fd < 0 || write(fd, conf, sizeof(conf) - 1) != sizeof(conf) - 1)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (config_load(path, &cfg, err, sizeof(err))) {
		fprintf(stderr, "built-in config: %s\n", err);
		abort();
	}
	close(fd);
	have_cfg = true;
}

static bool same_tree(const struct jv *a, const struct jv *b)
{
	size_t i;

	if (a->type != b->type)
		return false;
	switch (a->type) {
	case JV_NULL:
		return true;
	case JV_BOOL:
		return a->b == b->b;
	case JV_NUMBER:
		/* Non-integers are written with 6 decimals: only the
		 * integers must come back exactly. */
		return a->is_int ? b->is_int && a->i == b->i : true;
	case JV_STRING:
		return !strcmp(a->s, b->s);
	case JV_ARRAY:
	case JV_OBJECT:
		if (a->n != b->n)
			return false;
		for (i = 0; i < a->n; i++) {
			if (a->type == JV_OBJECT &&
			    strcmp(a->keys[i], b->keys[i]))
				return false;
			if (!same_tree(&a->items[i], &b->items[i]))
				return false;
		}
		return true;
	}
	return false;
}

/* jv_write into a malloc'd buffer; NULL when the writer reports an error. */
static char *encode(const struct jv *v, size_t *len)
{
	struct json_writer w;
	char *buf = NULL;
	FILE *f;
	int ret;

	f = open_memstream(&buf, len);
	if (!f)
		abort();
	json_init(&w, f, 0);
	jv_write(&w, v);
	ret = json_end(&w);
	fclose(f);
	if (ret) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* A refusal is one line, whatever the request's strings held (they are
 * quoted in it); a success says which VM. */
static bool one_line(const char *msg)
{
	const unsigned char *p;

	if (!msg[0])
		return false;
	for (p = (const unsigned char *)msg; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return false;
	return true;
}

static void requests(const struct jv *v)
{
	struct resync_request rr;
	struct state_change_request sc;
	char msg[1024];
	unsigned rv;

	rv = resync_parse(&cfg, v, NOW, &rr, msg, sizeof(msg));
	if (rv && !one_line(msg)) {
		fprintf(stderr, "resync_parse %u: not one line: '%s'\n", rv,
			msg);
		abort();
	}
	if (!rv && !rr.vm)
		abort();
	rv = state_change_parse(v, &sc, msg, sizeof(msg));
	if (rv && !one_line(msg)) {
		fprintf(stderr, "state_change_parse %u: not one line: '%s'\n",
			rv, msg);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct jv *v = NULL, *v2 = NULL;
	char err[256], *text, *out1 = NULL, *out2 = NULL;
	size_t n1 = 0, n2 = 0;

	if (!have_cfg)
		load_config();
	if (size > MAX_LINE)
		return 0;
	/* An exact-size copy, so ASan sees any read past the line. */
	text = malloc(size ? size : 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	if (jv_parse(text, size, &v, err, sizeof(err))) {
		if (!err[0] || strchr(err, '\n') || v) {
			fprintf(stderr, "refusal without one line: '%s'\n",
				err);
			abort();
		}
		goto out;
	}
	if (v->type == JV_OBJECT)
		requests(v);
	out1 = encode(v, &n1);
	if (!out1) {
		fprintf(stderr, "accepted, but jv_write fails on it\n");
		abort();
	}
	if (jv_parse(out1, n1, &v2, err, sizeof(err))) {
		fprintf(stderr, "re-encoded form refused: %s\n%s\n", err, out1);
		abort();
	}
	if (!same_tree(v, v2)) {
		fprintf(stderr, "re-encoded form differs:\n%s\n", out1);
		abort();
	}
	out2 = encode(v2, &n2);
	if (!out2 || n1 != n2 || memcmp(out1, out2, n1)) {
		fprintf(stderr, "encoding is not a fixed point:\n%s\n%s\n",
			out1, out2 ? out2 : "(error)");
		abort();
	}
out:
	jv_free(v);
	jv_free(v2);
	free(out1);
	free(out2);
	free(text);
	return 0;
}
