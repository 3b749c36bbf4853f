/* SPDX-License-Identifier: MIT */
/*
 * test_metadata.c - unit tests of the metadata region parser (MS-VHDX 2.6),
 * the parent locator (2.6.2.6) and the UTF-16LE to UTF-8 conversion.
 * Tables, items and locators are built byte by byte here; GUIDs and
 * UTF-16 strings are encoded by this file's own helpers.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "vhdx/internal.h"
#include "tests/unit/oracle.h"

#define K 1024u
#define M (1024u * 1024u)
#define REGION_LEN (1 * M)
#define TABLE 0x10000u /* items start after the 64 KiB table */

#define FP_GUID "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
#define VDS_GUID "2FA54224-CD1B-4876-B211-5DBED83BF4B8"
#define P83_GUID "BECA12AB-B2E6-4523-93EF-C309E000C746"
#define LSS_GUID "8141BF1D-A96F-4709-BA47-F233A8FAAB5F"
#define PSS_GUID "CDA348C7-445D-4471-9CC9-E9885251C556"
#define PL_GUID "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"
#define LOCTYPE_GUID "B04AEFB7-D19E-4A81-B789-25B8E9445913"
#define UNK_GUID "00112233-4455-6677-8899-AABBCCDDEEFF"
#define PAGE83_VALUE "6B9C4BB0-0E0B-4B6D-A2E4-0F1B6C1D2E3F"

#define IS_USER 1u
#define IS_VDISK 2u
#define IS_REQ 4u

static unsigned hex(char c)
{
	if (c >= '0' && c <= '9')
		return (unsigned)(c - '0');
	if (c >= 'a' && c <= 'f')
		return (unsigned)(c - 'a' + 10);
	return (unsigned)(c - 'A' + 10);
}

/* "XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX" to the Microsoft on-disk form:
 * the first three groups little-endian, the last eight bytes in order. */
static void guid_le(const char *s, uint8_t out[16])
{
	uint8_t b[16];
	unsigned i = 0;

	for (; *s; s++) {
		if (*s == '-')
			continue;
		b[i / 2] = (uint8_t)((i & 1) ? (b[i / 2] | hex(*s))
					     : (hex(*s) << 4));
		i++;
	}
	out[0] = b[3];
	out[1] = b[2];
	out[2] = b[1];
	out[3] = b[0];
	out[4] = b[5];
	out[5] = b[4];
	out[6] = b[7];
	out[7] = b[6];
	memcpy(out + 8, b + 8, 8);
}

/* UTF-8 (well-formed, test literals only) to UTF-16LE; returns bytes. */
static size_t utf16(const char *s, uint8_t *out)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t o = 0;

	while (*p) {
		uint32_t c;

		if (*p < 0x80) {
			c = *p++;
		} else if ((*p & 0xE0) == 0xC0) {
			c = (uint32_t)(*p++ & 0x1F) << 6;
			c |= *p++ & 0x3F;
		} else if ((*p & 0xF0) == 0xE0) {
			c = (uint32_t)(*p++ & 0x0F) << 12;
			c |= (uint32_t)(*p++ & 0x3F) << 6;
			c |= *p++ & 0x3F;
		} else {
			c = (uint32_t)(*p++ & 0x07) << 18;
			c |= (uint32_t)(*p++ & 0x3F) << 12;
			c |= (uint32_t)(*p++ & 0x3F) << 6;
			c |= *p++ & 0x3F;
		}
		if (c >= 0x10000) {
			c -= 0x10000;
			put16(out + o, (uint16_t)(0xD800 | (c >> 10)));
			put16(out + o + 2, (uint16_t)(0xDC00 | (c & 0x3FF)));
			o += 4;
		} else {
			put16(out + o, (uint16_t)c);
			o += 2;
		}
	}
	return o;
}

/* --- building a metadata region ---------------------------------------- */

static uint8_t *md;
static unsigned md_count;

static int setup(void **state)
{
	(void)state;
	md = malloc(REGION_LEN);
	return md ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	free(md);
	return 0;
}

static void md_reset(void)
{
	memset(md, 0, REGION_LEN);
	memcpy(md, "metadata", 8);
	md_count = 0;
	put16(md + 10, 0);
}

static void md_entry(const char *guid, uint32_t off, uint32_t len,
		     uint32_t flags)
{
	uint8_t *e = md + 32 + 32 * md_count;

	guid_le(guid, e);
	put32(e + 16, off);
	put32(e + 20, len);
	put32(e + 24, flags);
	md_count++;
	put16(md + 10, (uint16_t)md_count);
}

struct layout {
	uint32_t fp, vds, p83, lss, pss; /* item offsets, 0 = leave out */
};

static const struct layout default_layout = {
	TABLE, TABLE + 8, TABLE + 16, TABLE + 32, TABLE + 36,
};

struct values {
	uint32_t block_size, fp_flags;
	uint64_t vsize;
	uint32_t lss, pss;
};

static const struct values default_values = {
	32 * M, 0, 10ull * 1024 * M, 512, 4096,
};

/* Items in the order Hyper-V writes them (entry order and value order are
 * independent: the layout says where each value goes). */
static void md_build(const struct layout *l, const struct values *v)
{
	md_reset();
	if (l->fp) {
		md_entry(FP_GUID, l->fp, 8, IS_REQ);
		put32(md + l->fp, v->block_size);
		put32(md + l->fp + 4, v->fp_flags);
	}
	if (l->vds) {
		md_entry(VDS_GUID, l->vds, 8, IS_VDISK | IS_REQ);
		put64(md + l->vds, v->vsize);
	}
	if (l->p83) {
		md_entry(P83_GUID, l->p83, 16, IS_VDISK | IS_REQ);
		guid_le(PAGE83_VALUE, md + l->p83);
	}
	if (l->lss) {
		md_entry(LSS_GUID, l->lss, 4, IS_VDISK | IS_REQ);
		put32(md + l->lss, v->lss);
	}
	if (l->pss) {
		md_entry(PSS_GUID, l->pss, 4, IS_VDISK | IS_REQ);
		put32(md + l->pss, v->pss);
	}
}

struct parsed {
	int ret;
	struct vhdx_params p;
	struct vhdx_metadata_info *items;
	unsigned count;
	const char *why;
};

static struct parsed parse_len(size_t len)
{
	struct parsed r;

	memset(&r, 0, sizeof(r));
	memset(&r.p, 0xA5, sizeof(r.p));
	r.ret = vhdx_metadata_parse(md, len, &r.p, &r.items, &r.count, &r.why);
	return r;
}

static struct parsed parse(void)
{
	return parse_len(REGION_LEN);
}

static void expect_fail(int err)
{
	struct parsed r = parse();

	if (r.ret == 0)
		free(r.items);
	assert_int_equal(r.ret, err);
	assert_non_null(r.why);
	assert_true(strlen(r.why) > 0);
}

static bool guid_is(const struct vhdx_guid *g, const char *s)
{
	uint8_t a[16], b[16];

	guid_le(s, a);
	vhdx_guid_to_le(g, b);
	return !memcmp(a, b, 16);
}

/* --- metadata table tests ---------------------------------------------- */

static void test_valid_all_items(void **state)
{
	struct parsed r;
	unsigned i;

	(void)state;
	md_build(&default_layout, &default_values);
	r = parse();
	assert_int_equal(r.ret, 0);
	assert_int_equal(r.p.block_size, 32 * M);
	assert_false(r.p.leave_blocks_allocated);
	assert_false(r.p.has_parent);
	assert_int_equal(r.p.virtual_size, 10ull * 1024 * M);
	assert_int_equal(r.p.logical_sector_size, 512);
	assert_int_equal(r.p.physical_sector_size, 4096);
	assert_true(r.p.has_page83);
	assert_true(guid_is(&r.p.page83, PAGE83_VALUE));
	assert_false(r.p.has_locator);

	assert_int_equal(r.count, 5);
	assert_non_null(r.items);
	assert_true(guid_is(&r.items[0].item_id, FP_GUID));
	assert_int_equal(r.items[0].offset, TABLE);
	assert_int_equal(r.items[0].length, 8);
	assert_false(r.items[0].is_user);
	assert_false(r.items[0].is_virtual_disk);
	assert_true(r.items[0].is_required);
	assert_true(guid_is(&r.items[1].item_id, VDS_GUID));
	assert_true(r.items[1].is_virtual_disk);
	assert_int_equal(r.items[3].offset, TABLE + 32);
	assert_int_equal(r.items[3].length, 4);
	for (i = 0; i < r.count; i++) {
		assert_non_null(r.items[i].name);
		assert_string_not_equal(r.items[i].name, "unknown");
	}
	free(r.items);
}

static void test_flags_and_sizes_decoded(void **state)
{
	struct values v = { 1 * M, 1, 4096ull * 3, 4096, 512 };
	struct parsed r;

	(void)state;
	md_build(&default_layout, &v);
	r = parse();
	assert_int_equal(r.ret, 0);
	assert_int_equal(r.p.block_size, 1 * M);
	assert_true(r.p.leave_blocks_allocated);
	assert_int_equal(r.p.virtual_size, 4096ull * 3);
	assert_int_equal(r.p.logical_sector_size, 4096);
	assert_int_equal(r.p.physical_sector_size, 512);
	free(r.items);

	v.block_size = 256 * M;
	v.vsize = 64ull * 1024 * 1024 * M; /* 64 TiB, the maximum */
	md_build(&default_layout, &v);
	r = parse();
	assert_int_equal(r.ret, 0);
	assert_int_equal(r.p.block_size, 256 * M);
	assert_int_equal(r.p.virtual_size, 64ull * 1024 * 1024 * M);
	free(r.items);
}

/* Values in reverse order, far apart, entries listed in another order. */
static void test_offsets_any_order(void **state)
{
	struct parsed r;

	(void)state;
	md_reset();
	md_entry(PSS_GUID, TABLE, 4, IS_VDISK | IS_REQ);
	put32(md + TABLE, 512);
	md_entry(VDS_GUID, 200 * K, 8, IS_VDISK | IS_REQ);
	put64(md + 200 * K, 123456ull * 512);
	md_entry(LSS_GUID, TABLE + 4096, 4, IS_VDISK | IS_REQ);
	put32(md + TABLE + 4096, 512);
	md_entry(FP_GUID, REGION_LEN - 8, 8, IS_REQ); /* ends at region end */
	put32(md + REGION_LEN - 8, 2 * M);
	put32(md + REGION_LEN - 4, 0);
	md_entry(P83_GUID, 300 * K, 16, IS_VDISK | IS_REQ);
	guid_le(PAGE83_VALUE, md + 300 * K);
	r = parse();
	assert_int_equal(r.ret, 0);
	assert_int_equal(r.p.block_size, 2 * M);
	assert_int_equal(r.p.virtual_size, 123456ull * 512);
	assert_int_equal(r.p.logical_sector_size, 512);
	assert_int_equal(r.p.physical_sector_size, 512);
	assert_true(guid_is(&r.p.page83, PAGE83_VALUE));
	assert_int_equal(r.count, 5);
	assert_int_equal(r.items[3].offset, REGION_LEN - 8);
	free(r.items);
}

static void test_unknown_required(void **state)
{
	(void)state;
	md_build(&default_layout, &default_values);
	md_entry(UNK_GUID, TABLE + 4096, 16, IS_REQ);
	expect_fail(-ENOTSUP);

	md_build(&default_layout, &default_values);
	md_entry(UNK_GUID, TABLE + 4096, 16, IS_USER | IS_REQ);
	expect_fail(-ENOTSUP);
}

static void test_unknown_optional(void **state)
{
	struct parsed r;

	(void)state;
	md_build(&default_layout, &default_values);
	md_entry(UNK_GUID, TABLE + 4096, 16, IS_VDISK);
	md_entry(UNK_GUID, TABLE + 8192, 100, IS_USER);
	r = parse();
	assert_int_equal(r.ret, 0);
	assert_int_equal(r.count, 7);
	assert_string_equal(r.items[5].name, "unknown");
	assert_true(r.items[5].is_virtual_disk);
	assert_false(r.items[5].is_required);
	assert_true(r.items[6].is_user);
	assert_int_equal(r.items[6].length, 100);
	assert_int_equal(r.p.block_size, 32 * M);
	free(r.items);
}

static void test_block_size_range(void **state)
{
	static const uint32_t bad[] = { 0,	     512 * K,	   1 * M - 1,
					3 * M,	     1 * M + 4096, 512 * M,
					0x80000000u, 0xFFFFFFFFu };
	static const uint32_t good[] = { 1 * M,	 2 * M,	  8 * M,
					 32 * M, 128 * M, 256 * M };
	struct values v = default_values;
	struct parsed r;
	unsigned i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v.block_size = bad[i];
		md_build(&default_layout, &v);
		expect_fail(-EINVAL);
	}
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		v.block_size = good[i];
		md_build(&default_layout, &v);
		r = parse();
		assert_int_equal(r.ret, 0);
		assert_int_equal(r.p.block_size, good[i]);
		free(r.items);
	}
}

static void test_sector_sizes(void **state)
{
	static const uint32_t bad[] = { 0, 256, 1024, 2048, 8192, 520 };
	struct values v = default_values;
	unsigned i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = default_values;
		v.lss = bad[i];
		md_build(&default_layout, &v);
		expect_fail(-EINVAL);
		v = default_values;
		v.pss = bad[i];
		md_build(&default_layout, &v);
		expect_fail(-EINVAL);
	}
}

static void test_virtual_size_multiple(void **state)
{
	struct values v = default_values;

	(void)state;
	v.vsize = 10ull * 1024 * M + 1;
	md_build(&default_layout, &v);
	expect_fail(-EINVAL);

	v.vsize = 10ull * 1024 * M + 256;
	md_build(&default_layout, &v);
	expect_fail(-EINVAL);

	/* a multiple of 512 but not of a 4096-byte logical sector */
	v.lss = 4096;
	v.vsize = 10ull * 1024 * M + 512;
	md_build(&default_layout, &v);
	expect_fail(-EINVAL);

	/* past the 64 TiB maximum */
	v.vsize = 64ull * 1024 * 1024 * M + 4096;
	md_build(&default_layout, &v);
	expect_fail(-EINVAL);
}

static void test_missing_required_item(void **state)
{
	struct layout l;

	(void)state;
	l = default_layout;
	l.fp = 0;
	md_build(&l, &default_values);
	expect_fail(-EINVAL);
	l = default_layout;
	l.vds = 0;
	md_build(&l, &default_values);
	expect_fail(-EINVAL);
	l = default_layout;
	l.lss = 0;
	md_build(&l, &default_values);
	expect_fail(-EINVAL);
	l = default_layout;
	l.pss = 0;
	md_build(&l, &default_values);
	expect_fail(-EINVAL);
	md_reset();
	expect_fail(-EINVAL);
}

static void test_item_outside_region(void **state)
{
	struct layout l;
	struct parsed r;

	(void)state;
	/* value runs one byte past the region (entry 0: file parameters) */
	md_build(&default_layout, &default_values);
	put32(md + 32 + 16, REGION_LEN - 7);
	expect_fail(-EINVAL);
	/* wholly past it */
	md_build(&default_layout, &default_values);
	put32(md + 32 + 16, REGION_LEN + 4096);
	expect_fail(-EINVAL);
	/* offset + length wrapping past 2^32 */
	md_build(&default_layout, &default_values);
	put32(md + 32 + 16, 0xFFFFFFFCu);
	expect_fail(-EINVAL);
	/* inside the 64 KiB table, even holding a good value */
	md_build(&default_layout, &default_values);
	put32(md + 32 + 16, 0x8000);
	put32(md + 0x8000, 32 * M);
	expect_fail(-EINVAL);
	/* the same table is fine in a bigger region, wrong in a smaller one */
	l = default_layout;
	l.pss = 200 * K;
	md_build(&l, &default_values);
	r = parse_len(200 * K + 4);
	assert_int_equal(r.ret, 0);
	free(r.items);
	r = parse_len(200 * K + 3);
	if (r.ret == 0)
		free(r.items);
	assert_int_equal(r.ret, -EINVAL);
}

static void test_short_items(void **state)
{
	(void)state;
	/* values shorter than their type: reading them would overrun */
	md_build(&default_layout, &default_values);
	put32(md + 32 + 20, 4); /* file parameters, 4 bytes */
	expect_fail(-EINVAL);
	md_build(&default_layout, &default_values);
	put32(md + 32 + 32 + 20, 4); /* virtual disk size, 4 bytes */
	expect_fail(-EINVAL);
	md_build(&default_layout, &default_values);
	put32(md + 32 + 3 * 32 + 20, 2); /* logical sector size, 2 bytes */
	expect_fail(-EINVAL);
}

static void test_table_header(void **state)
{
	struct parsed r;

	(void)state;
	md_build(&default_layout, &default_values);
	memcpy(md, "METADATA", 8);
	expect_fail(-EINVAL);

	md_build(&default_layout, &default_values);
	put16(md + 10, 2048);
	expect_fail(-EINVAL);

	md_build(&default_layout, &default_values);
	r = parse_len(64 * K - 1);
	if (r.ret == 0)
		free(r.items);
	assert_int_equal(r.ret, -EINVAL);

	/* a duplicate known item */
	md_build(&default_layout, &default_values);
	md_entry(FP_GUID, TABLE + 4096, 8, IS_REQ);
	put32(md + TABLE + 4096, 1 * M);
	expect_fail(-EINVAL);
}

/* --- parent locator ---------------------------------------------------- */

struct kv {
	const char *key, *value;
};

/* A locator as 2.6.2.6.1 lays it out: header, entries, then the strings,
 * values before keys to show the offsets are followed, not assumed. */
static size_t make_locator(uint8_t *buf, const struct kv *kv, unsigned n)
{
	size_t o = 20 + 12 * (size_t)n;
	unsigned i;

	guid_le(LOCTYPE_GUID, buf);
	put16(buf + 16, 0);
	put16(buf + 18, (uint16_t)n);
	for (i = 0; i < n; i++) {
		uint8_t *e = buf + 20 + 12 * i;
		size_t kl, vl;

		vl = utf16(kv[i].value, buf + o);
		put32(e + 4, (uint32_t)o);
		put16(e + 10, (uint16_t)vl);
		o += vl;
		kl = utf16(kv[i].key, buf + o);
		put32(e, (uint32_t)o);
		put16(e + 8, (uint16_t)kl);
		o += kl;
	}
	return o;
}

static const struct kv diff_kv[] = {
	{ "parent_linkage", "{83DB1F0A-5C1E-4F4B-9A3D-1F2E3D4C5B6A}" },
	{ "parent_linkage2", "{00000000-0000-0000-0000-000000000000}" },
	{ "relative_path", "..\\base\\parent.vhdx" },
	{ "volume_path",
	  "\\\\?\\Volume{26A21BDA-A627-11D7-9931-806E6F6E6963}\\VMs\\parent.vhdx" },
	{ "absolute_win32_path", "C:\\VMs\\Donn\xC3\xA9"
				 "es\\parent.vhdx" },
};

static void test_locator_parse(void **state)
{
	struct vhdx_locator_entry *e;
	uint8_t buf[2048];
	const char *why = NULL;
	unsigned n, i;
	size_t len;

	(void)state;
	memset(buf, 0, sizeof(buf));
	len = make_locator(buf, diff_kv, 5);
	assert_int_equal(vhdx_locator_parse(buf, len, &e, &n, &why), 0);
	assert_int_equal(n, 5);
	for (i = 0; i < 5; i++) {
		assert_string_equal(e[i].key, diff_kv[i].key);
		assert_string_equal(e[i].value, diff_kv[i].value);
	}
	assert_string_equal(vhdx_locator_get(e, n, "parent_linkage"),
			    "{83DB1F0A-5C1E-4F4B-9A3D-1F2E3D4C5B6A}");
	assert_string_equal(vhdx_locator_get(e, n, "relative_path"),
			    "..\\base\\parent.vhdx");
	assert_string_equal(vhdx_locator_get(e, n, "absolute_win32_path"),
			    "C:\\VMs\\Donn\xC3\xA9"
			    "es\\parent.vhdx");
	assert_null(vhdx_locator_get(e, n, "parent"));
	assert_null(vhdx_locator_get(e, n, "relative_path2"));
	assert_null(vhdx_locator_get(e, n, ""));
	vhdx_locator_free(e, n);
}

static void test_locator_empty_and_free_null(void **state)
{
	struct vhdx_locator_entry *e;
	uint8_t buf[64];
	const char *why = NULL;
	unsigned n = 99;

	(void)state;
	memset(buf, 0, sizeof(buf));
	make_locator(buf, NULL, 0);
	assert_int_equal(vhdx_locator_parse(buf, 20, &e, &n, &why), 0);
	assert_int_equal(n, 0);
	assert_null(vhdx_locator_get(e, n, "parent_linkage"));
	vhdx_locator_free(e, n);
	vhdx_locator_free(NULL, 0);
}

static void expect_locator_fail(const uint8_t *buf, size_t len)
{
	struct vhdx_locator_entry *e = NULL;
	const char *why = NULL;
	unsigned n = 0;
	int ret = vhdx_locator_parse(buf, len, &e, &n, &why);

	if (ret == 0)
		vhdx_locator_free(e, n);
	assert_int_equal(ret, -EINVAL);
	assert_non_null(why);
}

static void test_locator_bad(void **state)
{
	static const struct kv one[] = { { "relative_path", "a\\b.vhdx" } };
	uint8_t buf[512];
	size_t len;

	(void)state;
	memset(buf, 0, sizeof(buf));
	len = make_locator(buf, one, 1);
	/* the value ends 2 bytes past the locator */
	expect_locator_fail(buf, len - 2 - 26);
	/* key offset past the end */
	len = make_locator(buf, one, 1);
	put32(buf + 20, (uint32_t)len);
	expect_locator_fail(buf, len);
	/* value offset + length past the end */
	len = make_locator(buf, one, 1);
	put32(buf + 24, (uint32_t)len - 4);
	expect_locator_fail(buf, len);
	/* offsets that wrap 32 bits */
	len = make_locator(buf, one, 1);
	put32(buf + 20, 0xFFFFFFF0u);
	put16(buf + 28, 0x20);
	expect_locator_fail(buf, len);
	len = make_locator(buf, one, 1);
	put32(buf + 24, 0xFFFFFFFEu);
	expect_locator_fail(buf, len);
	/* more entries than fit */
	len = make_locator(buf, one, 1);
	put16(buf + 18, 40);
	expect_locator_fail(buf, len);
	/* shorter than its header */
	expect_locator_fail(buf, 19);
	/* an unknown locator type */
	len = make_locator(buf, one, 1);
	buf[0] ^= 1;
	expect_locator_fail(buf, len);
}

/* A differencing disk: HasParent set, locator item present, and the
 * locator found through the table parses. */
static void test_has_parent_with_locator(void **state)
{
	struct vhdx_locator_entry *e;
	struct values v = default_values;
	const uint32_t loc_off = TABLE + 8192;
	const char *why = NULL;
	struct parsed r;
	size_t loc_len;
	unsigned n;

	(void)state;
	v.fp_flags = 2;
	md_build(&default_layout, &v);
	loc_len = make_locator(md + loc_off, diff_kv, 5);
	md_entry(PL_GUID, loc_off, (uint32_t)loc_len, IS_REQ);
	r = parse();
	assert_int_equal(r.ret, 0);
	assert_true(r.p.has_parent);
	assert_false(r.p.leave_blocks_allocated);
	assert_true(r.p.has_locator);
	assert_int_equal(r.p.locator_offset, loc_off);
	assert_int_equal(r.p.locator_length, loc_len);
	assert_int_equal(r.count, 6);
	free(r.items);

	assert_int_equal(vhdx_locator_parse(md + r.p.locator_offset,
					    r.p.locator_length, &e, &n, &why),
			 0);
	assert_int_equal(n, 5);
	assert_string_equal(vhdx_locator_get(e, n, "relative_path"),
			    "..\\base\\parent.vhdx");
	vhdx_locator_free(e, n);

	/* HasParent without a locator item */
	md_build(&default_layout, &v);
	expect_fail(-EINVAL);
}

/* --- UTF-16LE to UTF-8 ------------------------------------------------- */

static void check_utf8(const uint16_t *units, size_t n, const char *want)
{
	uint8_t b[64];
	char *s;
	size_t i;

	for (i = 0; i < n; i++)
		put16(b + 2 * i, units[i]);
	s = vhdx_utf16le_to_utf8(b, 2 * n);
	assert_non_null(s);
	assert_string_equal(s, want);
	free(s);
}

static void test_utf16(void **state)
{
	static const uint16_t ascii[] = { 'a', '\\', 'Z' };
	static const uint16_t two[] = { 0x80, 0xE9, 0x7FF };
	static const uint16_t three[] = { 0x800, 0x20AC, 0xFFFD, 0xFFFF };
	static const uint16_t pair[] = { 'x', 0xD83D, 0xDE00, 'y' };
	static const uint16_t edges[] = { 0xD800, 0xDC00, 0xDBFF, 0xDFFF };
	static const uint16_t lone_hi_end[] = { 'a', 0xD83D };
	static const uint16_t lone_lo[] = { 0xDE00, 'b' };
	static const uint16_t hi_then_ascii[] = { 0xD83D, 'c' };
	static const uint16_t hi_hi_lo[] = { 0xD83D, 0xD83D, 0xDE00 };
	char *s;

	(void)state;
	check_utf8(ascii, 3, "a\\Z");
	check_utf8(two, 3, "\xC2\x80\xC3\xA9\xDF\xBF");
	check_utf8(three, 4,
		   "\xE0\xA0\x80\xE2\x82\xAC\xEF\xBF\xBD\xEF\xBF\xBF");
	check_utf8(pair, 4, "x\xF0\x9F\x98\x80y");
	/* U+10000 and U+10FFFF */
	check_utf8(edges, 4, "\xF0\x90\x80\x80\xF4\x8F\xBF\xBF");
	/* unpaired surrogates become U+FFFD */
	check_utf8(lone_hi_end, 2, "a\xEF\xBF\xBD");
	check_utf8(lone_lo, 2,
		   "\xEF\xBF\xBD"
		   "b");
	check_utf8(hi_then_ascii, 2,
		   "\xEF\xBF\xBD"
		   "c");
	check_utf8(hi_hi_lo, 3, "\xEF\xBF\xBD\xF0\x9F\x98\x80");
	/* empty */
	s = vhdx_utf16le_to_utf8((const uint8_t *)"", 0);
	assert_non_null(s);
	assert_string_equal(s, "");
	free(s);
}

/* The worst case for output room: every unit a 3-byte character, and a
 * long string of surrogate pairs, through a non-terminated buffer. */
static void test_utf16_long(void **state)
{
	uint8_t *b = malloc(4096);
	char *s;
	size_t i;

	(void)state;
	assert_non_null(b);
	for (i = 0; i < 2048; i++)
		put16(b + 2 * i, 0x20AC);
	s = vhdx_utf16le_to_utf8(b, 4096);
	assert_non_null(s);
	assert_int_equal(strlen(s), 2048 * 3);
	for (i = 0; i < 2048; i++)
		assert_memory_equal(s + 3 * i, "\xE2\x82\xAC", 3);
	free(s);
	for (i = 0; i < 2048; i += 2) {
		put16(b + 2 * i, 0xDBFF);
		put16(b + 2 * i + 2, 0xDFFF);
	}
	s = vhdx_utf16le_to_utf8(b, 4096);
	assert_non_null(s);
	assert_int_equal(strlen(s), 1024 * 4);
	free(s);
	free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_all_items),
		cmocka_unit_test(test_flags_and_sizes_decoded),
		cmocka_unit_test(test_offsets_any_order),
		cmocka_unit_test(test_unknown_required),
		cmocka_unit_test(test_unknown_optional),
		cmocka_unit_test(test_block_size_range),
		cmocka_unit_test(test_sector_sizes),
		cmocka_unit_test(test_virtual_size_multiple),
		cmocka_unit_test(test_missing_required_item),
		cmocka_unit_test(test_item_outside_region),
		cmocka_unit_test(test_short_items),
		cmocka_unit_test(test_table_header),
		cmocka_unit_test(test_locator_parse),
		cmocka_unit_test(test_locator_empty_and_free_null),
		cmocka_unit_test(test_locator_bad),
		cmocka_unit_test(test_has_parent_with_locator),
		cmocka_unit_test(test_utf16),
		cmocka_unit_test(test_utf16_long),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
