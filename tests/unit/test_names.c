/* SPDX-License-Identifier: MIT */
/* test_names.c - the one export-name rule both protocol ends apply, and
 * the "VM:disk" names the agent gives its exports. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "agent/sync/common.h"

static bool ok(const char *s)
{
	return sync_export_name_problem(s, strlen(s)) == NULL;
}

static void test_rule_accepts(void **state)
{
	char max[256];

	(void)state;
	assert_true(ok("web01:os.vhdx"));
	assert_true(ok("a"));
	assert_true(ok("...")); /* only "." and ".." are special */
	assert_true(ok("caf\xc3\xa9:d\xc3\xa4ta.vhdx"));
	memset(max, 'x', 255);
	max[255] = '\0';
	assert_true(ok(max));
}

static void test_rule_refuses(void **state)
{
	char long_name[257];

	(void)state;
	assert_false(ok(""));
	assert_false(ok("."));
	assert_false(ok(".."));
	assert_false(ok("a/b"));
	assert_false(ok("a=b")); /* NAME=PATH on the command line */
	assert_false(ok("a\nb"));
	assert_false(ok("a\x7f"));
	assert_false(ok("\xc3"));	  /* cut UTF-8 sequence */
	assert_false(ok("\xc0\xaf"));	  /* overlong '/' */
	assert_false(ok("\xed\xa0\x80")); /* a surrogate */
	memset(long_name, 'x', 256);
	long_name[256] = '\0';
	assert_false(ok(long_name));
	/* a NUL inside the bytes is a control character */
	assert_non_null(sync_export_name_problem("a\0b", 3));
	assert_false(sync_export_name_ok(NULL));
}

static void test_vm_disk_name(void **state)
{
	char out[300], small[8];

	(void)state;
	assert_int_equal(sync_export_name(out, sizeof(out), "web01",
					  "/srv/vms/web01/os.vhdx"),
			 0);
	assert_string_equal(out, "web01:os.vhdx");
	assert_int_equal(sync_export_name(out, sizeof(out), "db", "data.vhdx"),
			 0);
	assert_string_equal(out, "db:data.vhdx");
	assert_int_equal(
		sync_export_name(small, sizeof(small), "web01", "/x/os.vhdx"),
		-ENAMETOOLONG);
	assert_int_equal(
		sync_export_name(out, sizeof(out), "a=b", "/x/os.vhdx"),
		-EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rule_accepts),
		cmocka_unit_test(test_rule_refuses),
		cmocka_unit_test(test_vm_disk_name),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
