/* SPDX-License-Identifier: MIT */
/* prom.c - Prometheus text format writer and atomic .prom files (prom.h). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/lib/fsutil.h"
#include "agent/lib/prom.h"
#include "vhdx/vhdx.h"

int prom_init(struct prom *p)
{
	memset(p, 0, sizeof(*p));
	p->f = open_memstream(&p->buf, &p->len);
	return p->f ? 0 : -ENOMEM;
}

static void prom_fail(struct prom *p, int err)
{
	if (!p->err)
		p->err = err;
}

int prom_name_ok(const char *s, int label)
{
	const char *c;

	if (!s || !*s || (*s >= '0' && *s <= '9'))
		return 0;
	if (label && s[0] == '_' && s[1] == '_')
		return 0; /* reserved for Prometheus itself */
	for (c = s; *c; c++) {
		if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		    (*c >= '0' && *c <= '9') || *c == '_')
			continue;
		if (*c == ':' && !label)
			continue;
		return 0;
	}
	return 1;
}

/* HELP text escapes backslash and newline; label values also '"'. */
static void write_escaped(FILE *f, const char *s, bool quote)
{
	for (; *s; s++) {
		if (*s == '\\')
			fputs("\\\\", f);
		else if (*s == '\n')
			fputs("\\n", f);
		else if (*s == '"' && quote)
			fputs("\\\"", f);
		else
			fputc(*s, f);
	}
}

void prom_write_label_value(FILE *f, const char *s)
{
	write_escaped(f, s, true);
}

void prom_write_value(FILE *f, double v)
{
	if (isnan(v))
		fputs("NaN", f);
	else if (isinf(v))
		fputs(v > 0 ? "+Inf" : "-Inf", f);
	else if (v > -9007199254740992.0 && v < 9007199254740992.0 &&
		 v == (double)(int64_t)v)
		fprintf(f, "%lld", (long long)v); /* exact below 2^53 */
	else
		fprintf(f, "%.17g", v);
}

void prom_family(struct prom *p, const char *name, enum prom_type type,
		 const char *help)
{
	unsigned i;

	if (!p->f || p->err)
		return;
	if (!prom_name_ok(name, 0)) {
		prom_fail(p, -EINVAL);
		return;
	}
	for (i = 0; i < p->nfamilies; i++)
		if (!strcmp(p->families[i], name)) {
			/* a family split in two is invalid exposition */
			prom_fail(p, -EEXIST);
			return;
		}
	if (p->nfamilies == PROM_MAX_FAMILIES) {
		prom_fail(p, -E2BIG);
		return;
	}
	p->families[p->nfamilies] = strdup(name);
	if (!p->families[p->nfamilies]) {
		prom_fail(p, -ENOMEM);
		return;
	}
	p->nfamilies++;
	fprintf(p->f, "# HELP %s ", name);
	write_escaped(p->f, help ? help : "", false);
	fprintf(p->f, "\n# TYPE %s %s\n", name,
		type == PROM_COUNTER ? "counter" : "gauge");
}

void prom_sample(struct prom *p, double v, ...)
{
	const char *k, *val;
	bool first = true;
	va_list ap;

	if (!p->f || p->err)
		return;
	if (!p->nfamilies) {
		prom_fail(p, -EINVAL);
		return;
	}
	fputs(p->families[p->nfamilies - 1], p->f);
	va_start(ap, v);
	while ((k = va_arg(ap, const char *))) {
		val = va_arg(ap, const char *);
		if (!val)
			continue;
		if (!prom_name_ok(k, 1)) {
			prom_fail(p, -EINVAL);
			break;
		}
		fprintf(p->f, "%s%s=\"", first ? "{" : ",", k);
		prom_write_label_value(p->f, val);
		fputc('"', p->f);
		first = false;
	}
	va_end(ap);
	if (!first)
		fputc('}', p->f);
	fputc(' ', p->f);
	prom_write_value(p->f, v);
	fputc('\n', p->f);
}

int prom_finish(struct prom *p, char **buf, size_t *len)
{
	unsigned i;
	int ret = p->err;

	if (p->f && fclose(p->f) && !ret)
		ret = -ENOMEM;
	if (!p->f && !ret)
		ret = -ENOMEM;
	p->f = NULL;
	for (i = 0; i < p->nfamilies; i++)
		free(p->families[i]);
	p->nfamilies = 0;
	if (ret) {
		free(p->buf);
		p->buf = NULL;
		return ret;
	}
	*buf = p->buf;
	*len = p->len;
	p->buf = NULL;
	return 0;
}

int prom_write_file(const char *path, const char *buf, size_t len, char *err,
		    size_t errlen)
{
	char dir[4096];
	const char *base, *slash = strrchr(path, '/');
	int ret;

	if (slash) {
		if ((size_t)(slash - path) >= sizeof(dir)) {
			snprintf(err, errlen, "%s: path too long", path);
			return -ENAMETOOLONG;
		}
		memcpy(dir, path, (size_t)(slash - path));
		dir[slash - path] = '\0';
		if (!dir[0])
			strcpy(dir, "/");
		base = slash + 1;
	} else {
		strcpy(dir, ".");
		base = path;
	}
	if (!*base) {
		snprintf(err, errlen, "%s: not a file name", path);
		return -EINVAL;
	}
	ret = fs_write_shared(dir, base, buf, len, 0644);
	if (ret)
		snprintf(err, errlen, "%s: %s", path, strerror(-ret));
	return ret;
}
