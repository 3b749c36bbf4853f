/* SPDX-License-Identifier: MIT */
/*
 * prom.h - the Prometheus text exposition format (version 0.0.4), as
 * node_exporter's textfile collector reads it: families with their HELP
 * and TYPE lines, samples with escaped label values, and the atomic
 * replacement of a .prom file.  It knows nothing of the agent.
 *
 *	struct prom p;
 *	prom_init(&p);
 *	prom_family(&p, "x_sent_bytes_total", PROM_COUNTER, "Bytes sent.");
 *	prom_sample(&p, 4096, "vm", "web01", "peer", "10.0.0.2:7433", NULL);
 *	ret = prom_finish(&p, &buf, &len);	(0 or the first error)
 *	ret = prom_write_file("/var/lib/.../x.prom", buf, len, err, errlen);
 *
 * A family is written once, all its samples right after its TYPE line;
 * names must be valid metric and label names.  The first misuse (a bad
 * name, a family repeated, a sample before any family, out of memory) is
 * kept and returned by prom_finish(), so callers need not check each call.
 */
#ifndef HVRESYNC_LIB_PROM_H
#define HVRESYNC_LIB_PROM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum prom_type { PROM_GAUGE, PROM_COUNTER };

#define PROM_MAX_FAMILIES 128

struct prom {
	FILE *f;
	char *buf;
	size_t len;
	int err; /* the first error, 0 */
	unsigned nfamilies;
	char *families[PROM_MAX_FAMILIES]; /* names written so far */
};

int prom_init(struct prom *p);
/* Start family @name: "# HELP" (escaped) and "# TYPE" lines. */
void prom_family(struct prom *p, const char *name, enum prom_type type,
		 const char *help);
/* One sample of the current family: @v, then label name/value pairs
 * ending with NULL.  A pair whose value is NULL is left out. */
void prom_sample(struct prom *p, double v, ...) __attribute__((sentinel));
/* The text (malloc()ed, the caller frees it) or the first error; @p is
 * done with in both cases. */
int prom_finish(struct prom *p, char **buf, size_t *len);

/* Is @s a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)?  A label name
 * (@label: no ':', no leading "__")? */
int prom_name_ok(const char *s, int label);
/* Write @v as a sample value: integers exactly, NaN and infinities as
 * Prometheus spells them. */
void prom_write_value(FILE *f, double v);
/* @s as a label value (\\, \" and \n escaped). */
void prom_write_label_value(FILE *f, const char *s);

/*
 * Replace @path with @len bytes atomically: a temporary ".NAME.PID.tmp"
 * in the same folder (mode 0644: the collector runs as another user; the
 * name does not end in .prom, so the collector never reads it half
 * written), fsync, rename over @path, fsync of the folder.  A reader sees
 * the old file or the new one, never a mixture.  0 or a negative errno
 * with @err naming the file.
 */
int prom_write_file(const char *path, const char *buf, size_t len, char *err,
		    size_t errlen);

#endif
