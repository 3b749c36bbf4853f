/* SPDX-License-Identifier: MIT */
/* progress.c - the stderr progress bar (see progress.h). */
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "agent/cli/progress.h"
#include "agent/daemon/job.h"
#include "agent/lib/fmt.h"

#define REDRAW_INTERVAL 0.2

void progress_init(struct progress *p, const char *label, uint64_t total)
{
	memset(p, 0, sizeof(*p));
	p->label = label;
	p->total = total;
	p->enabled = isatty(STDERR_FILENO) == 1;
	p->start = mono_seconds();
	p->last_draw = p->start;
}

static unsigned term_width(void)
{
	struct winsize ws;

	if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
		return ws.ws_col;
	return 80;
}

static void draw(struct progress *p, double now)
{
	char done[32], total[32], rate[32], eta[32], tail[160], bar[256];
	double secs = now - p->start, frac, speed;
	unsigned width, barw, fill, i;
	int n;

	frac = p->total ? (double)p->done / (double)p->total : 1.0;
	if (frac > 1)
		frac = 1;
	speed = secs > 0 ? (double)p->done / secs : 0;
	fmt_size(done, sizeof(done), (double)p->done);
	fmt_size(total, sizeof(total), (double)p->total);
	fmt_size(rate, sizeof(rate), speed);
	if (speed > 0 && p->done < p->total)
		snprintf(eta, sizeof(eta), " ETA %.0fs",
			 (double)(p->total - p->done) / speed);
	else
		eta[0] = '\0';
	n = snprintf(tail, sizeof(tail), " %3.0f%% %s/%s %s/s%s", frac * 100,
		     done, total, rate, eta);
	width = term_width() - 1;
	barw = width > (unsigned)n + strlen(p->label) + 3
		       ? width - (unsigned)n - (unsigned)strlen(p->label) - 3
		       : 0;
	if (barw > sizeof(bar) - 1)
		barw = sizeof(bar) - 1;
	fill = (unsigned)(frac * barw);
	for (i = 0; i < barw; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[barw] = '\0';
	fprintf(stderr, "\r%s [%s]%s\033[K", p->label, bar, tail);
	fflush(stderr);
	p->drawn = true;
	p->last_draw = now;
}

void progress_update(struct progress *p, uint64_t done)
{
	double now;

	p->done = done;
	if (!p->enabled)
		return;
	now = mono_seconds();
	if (now - p->last_draw < REDRAW_INTERVAL)
		return;
	draw(p, now);
}

void progress_clear(struct progress *p)
{
	if (!p->enabled || !p->drawn)
		return;
	fprintf(stderr, "\r\033[K");
	fflush(stderr);
	p->drawn = false;
}

void progress_finish(struct progress *p)
{
	progress_clear(p);
	p->enabled = false;
}

void progress_job_bytes(const struct job *j, uint64_t *total, uint64_t *done)
{
	unsigned i;

	*total = 0;
	*done = 0;
	for (i = 0; i < j->ndisks; i++) {
		*total += j->disks[i].size;
		*done += j->disks[i].sent ? j->disks[i].size : j->disks[i].done;
	}
}
