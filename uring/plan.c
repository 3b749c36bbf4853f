/* SPDX-License-Identifier: MIT */
/* plan.c - walking runs block by block (see plan.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "uring/plan.h"

int ur_cursor_at(struct ur_cursor *c, uint64_t pos, const struct ur_run **run)
{
	int ret;

	if (pos >= c->size)
		return -EINVAL;
	if (c->valid && pos >= c->run.off && pos < c->run.off + c->run.len) {
		*run = &c->run;
		return 0;
	}
	c->valid = false;
	ret = c->map(c->ctx, pos, c->size - pos, &c->run);
	if (ret < 0)
		return ret;
	/* A run must start where asked and make progress, or the walk
	 * would loop forever. */
	if (c->run.off != pos || !c->run.len || c->run.kind > UR_RUN_ZERO)
		return -EIO;
	if (c->run.len > c->size - pos)
		c->run.len = c->size - pos;
	c->valid = true;
	*run = &c->run;
	return 0;
}

int64_t ur_zero_blocks(struct ur_cursor *c, uint64_t pos, uint32_t bs,
		       uint64_t max)
{
	const struct ur_run *r;
	uint64_t end = pos, n;
	int ret;

	/* Stop looking once MAX blocks are known to be zero. */
	while (end < c->size && (end - pos) / bs < max) {
		ret = ur_cursor_at(c, end, &r);
		if (ret < 0)
			return ret;
		if (r->kind != UR_RUN_ZERO)
			break;
		end = r->off + r->len;
	}
	if (end >= c->size)
		n = (c->size - pos) / bs + ((c->size - pos) % bs ? 1 : 0);
	else
		n = (end - pos) / bs;
	return (int64_t)(n < max ? n : max);
}

void ur_oplist_reset(struct ur_oplist *l)
{
	l->n = 0;
	l->read_bytes = 0;
	l->data_bytes = 0;
}

void ur_oplist_free(struct ur_oplist *l)
{
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

static struct ur_op *oplist_push(struct ur_oplist *l)
{
	struct ur_op *op;

	if (l->n == l->cap) {
		unsigned cap = l->cap ? l->cap * 2 : 8;
		struct ur_op *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return NULL;
		l->v = v;
		l->cap = cap;
	}
	op = &l->v[l->n++];
	memset(op, 0, sizeof(*op));
	return op;
}

static int add_op(struct ur_oplist *l, const struct ur_run *r, uint64_t pos,
		  uint32_t len, uint32_t buf_off)
{
	struct ur_op *prev = l->n ? &l->v[l->n - 1] : NULL;
	uint64_t delta = pos - r->off;
	enum ur_op_kind kind;
	struct ur_op *op;

	kind = r->kind == UR_RUN_DATA  ? UR_OP_READ
	       : r->kind == UR_RUN_MEM ? UR_OP_COPY
				       : UR_OP_FILL;
	if (kind == UR_OP_READ)
		l->read_bytes += len;
	if (kind != UR_OP_FILL)
		l->data_bytes += len;
	if (prev && prev->kind == kind &&
	    prev->buf_off + prev->len == buf_off) {
		switch (kind) {
		case UR_OP_READ:
			if (prev->fd == r->fd &&
			    prev->file_off + prev->len == r->file_off + delta) {
				prev->len += len;
				return 0;
			}
			break;
		case UR_OP_COPY:
			if ((const char *)prev->mem + prev->len ==
			    (const char *)r->mem + delta) {
				prev->len += len;
				return 0;
			}
			break;
		case UR_OP_FILL:
			prev->len += len;
			return 0;
		}
	}
	op = oplist_push(l);
	if (!op)
		return -ENOMEM;
	op->kind = kind;
	op->buf_off = buf_off;
	op->len = len;
	op->fd = -1;
	if (kind == UR_OP_READ) {
		op->fd = r->fd;
		op->file_off = r->file_off + delta;
		op->path = r->path;
	} else if (kind == UR_OP_COPY) {
		op->mem = (const char *)r->mem + delta;
	}
	return 0;
}

int ur_plan_block(struct ur_cursor *c, uint64_t pos, uint32_t len,
		  uint32_t buf_off, struct ur_oplist *ops)
{
	const struct ur_run *r;
	uint64_t end = pos + len;
	int ret;

	while (pos < end) {
		uint64_t n;

		ret = ur_cursor_at(c, pos, &r);
		if (ret < 0)
			return ret;
		n = r->off + r->len - pos;
		if (n > end - pos)
			n = end - pos;
		ret = add_op(ops, r, pos, (uint32_t)n, buf_off);
		if (ret < 0)
			return ret;
		pos += n;
		buf_off += (uint32_t)n;
	}
	return 0;
}

bool ur_oplist_locate(const struct ur_oplist *ops, uint32_t buf_off,
		      uint32_t len, int *fd, uint64_t *file_off)
{
	const struct ur_op *op;
	unsigned k;

	/* in buffer order, and few: reads of neighbouring blocks in one
	 * file are merged */
	for (k = 0; k < ops->n; k++) {
		op = &ops->v[k];
		if (op->buf_off > buf_off)
			return false;
		if (op->kind != UR_OP_READ ||
		    (uint64_t)op->buf_off + op->len < (uint64_t)buf_off + len)
			continue;
		if (op->fixed_fd != op->fd)
			return false;
		*fd = op->fd;
		*file_off = op->file_off + (buf_off - op->buf_off);
		return true;
	}
	return false;
}
