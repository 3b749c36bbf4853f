/* SPDX-License-Identifier: MIT */
/*
 * guid.c - GUIDs as VHDX stores them: u32, u16, u16 little-endian, then
 * eight bytes in order (MS-VHDX 2.1.1).  Converted to host order here only.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "internal.h"

void vhdx_guid_from_le(const uint8_t b[16], struct vhdx_guid *g)
{
	g->d1 = le32_get(b);
	g->d2 = le16_get(b + 4);
	g->d3 = le16_get(b + 6);
	memcpy(g->d4, b + 8, 8);
}

void vhdx_guid_to_le(const struct vhdx_guid *g, uint8_t b[16])
{
	le32_put(b, g->d1);
	le16_put(b + 4, g->d2);
	le16_put(b + 6, g->d3);
	memcpy(b + 8, g->d4, 8);
}

void vhdx_guid_format(const struct vhdx_guid *g, char out[VHDX_GUID_STR_LEN])
{
	snprintf(out, VHDX_GUID_STR_LEN,
		 "%08X-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X", g->d1,
		 g->d2, g->d3, g->d4[0], g->d4[1], g->d4[2], g->d4[3], g->d4[4],
		 g->d4[5], g->d4[6], g->d4[7]);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Read N hex digits into *v. */
static int hexn(const char *s, unsigned n, uint64_t *v)
{
	unsigned i;
	int d;

	*v = 0;
	for (i = 0; i < n; i++) {
		d = hexval(s[i]);
		if (d < 0)
			return -EINVAL;
		*v = (*v << 4) | (unsigned)d;
	}
	return 0;
}

int vhdx_guid_parse(const char *s, struct vhdx_guid *g)
{
	struct vhdx_guid r;
	bool braced = false;
	uint64_t v;
	unsigned i;

	if (!s)
		return -EINVAL;
	if (*s == '{') {
		braced = true;
		s++;
	}
	if (strlen(s) != 36u + (braced ? 1 : 0))
		return -EINVAL;
	if (braced && s[36] != '}')
		return -EINVAL;
	if (s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
		return -EINVAL;
	if (hexn(s, 8, &v))
		return -EINVAL;
	r.d1 = (uint32_t)v;
	if (hexn(s + 9, 4, &v))
		return -EINVAL;
	r.d2 = (uint16_t)v;
	if (hexn(s + 14, 4, &v))
		return -EINVAL;
	r.d3 = (uint16_t)v;
	for (i = 0; i < 2; i++) {
		if (hexn(s + 19 + 2 * i, 2, &v))
			return -EINVAL;
		r.d4[i] = (uint8_t)v;
	}
	for (i = 0; i < 6; i++) {
		if (hexn(s + 24 + 2 * i, 2, &v))
			return -EINVAL;
		r.d4[2 + i] = (uint8_t)v;
	}
	*g = r;
	return 0;
}

bool vhdx_guid_equal(const struct vhdx_guid *a, const struct vhdx_guid *b)
{
	return a->d1 == b->d1 && a->d2 == b->d2 && a->d3 == b->d3 &&
	       !memcmp(a->d4, b->d4, 8);
}

bool vhdx_guid_is_zero(const struct vhdx_guid *g)
{
	static const struct vhdx_guid zero;

	return vhdx_guid_equal(g, &zero);
}

struct vhdx_guid vhdx_guid_const(const char *s)
{
	struct vhdx_guid g;

	if (vhdx_guid_parse(s, &g)) {
		fprintf(stderr, "vhdx: bad GUID literal %s\n", s);
		abort();
	}
	return g;
}

int vhdx_random_bytes(void *buf, size_t len)
{
	uint8_t *p = buf;
	size_t got = 0;
	ssize_t n;

	while (got < len) {
		n = getrandom(p + got, len - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		got += (size_t)n;
	}
	return 0;
}

int vhdx_guid_generate(struct vhdx_guid *g)
{
	uint8_t b[16];
	int ret;

	ret = vhdx_random_bytes(b, sizeof(b));
	if (ret < 0)
		return ret;
	/* version 4 (d3's high nibble), RFC 4122 variant */
	b[7] = (uint8_t)((b[7] & 0x0f) | 0x40);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
	vhdx_guid_from_le(b, g);
	return 0;
}
