/* SPDX-License-Identifier: MIT */
/*
 * test_log_bounds.c - what a log replay may write: a descriptor that
 * reaches past its entry's LastFileOffset (a crafted zero descriptor of a
 * TiB, say) makes every open refuse the image with one line naming it,
 * before anything is written; and a zero range the log may hold is
 * replayed on disk without taking space the image did not already have.
 * Real images are made with vhdx_create and given a dirty log by hand.
 */
#include "tests/unit/log_entries.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vhdx/vhdx.h"

#define MB (1024ull * 1024)
#define TB (MB * MB)

struct env {
	char dir[64];
	char path[96];
};

static int env_up(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	struct vhdx_create_opts o = { .virtual_size = 64 * MB,
				      .block_size = 1 * MB };
	struct vhdx_error err;

	if (!e || setup(state))
		return -1;
	strcpy(e->dir, "/tmp/test_log_bounds.XXXXXX");
	if (!mkdtemp(e->dir))
		return -1;
	snprintf(e->path, sizeof(e->path), "%s/img.vhdx", e->dir);
	if (vhdx_create(e->path, &o, &err)) {
		fprintf(stderr, "vhdx_create: %s\n", err.msg);
		return -1;
	}
	*state = e;
	return 0;
}

static int env_down(void **state)
{
	struct env *e = *state;

	unlink(e->path);
	rmdir(e->dir);
	free(e);
	return teardown(state);
}

static uint64_t size_of(const char *path, uint64_t *allocated)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	if (allocated)
		*allocated = (uint64_t)st.st_blocks * 512;
	return (uint64_t)st.st_size;
}

static uint8_t *slurp(const char *path, uint64_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;

	assert_non_null(f);
	*len = size_of(path, NULL);
	buf = malloc(*len);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, *len, f), *len);
	fclose(f);
	return buf;
}

/* Put entry E at the start of the image's log and name its LogGuid in a
 * new current header, as a writer that crashed mid-update leaves it. */
static void make_dirty(const char *path, const struct entry *e)
{
	struct vhdx_header_info h;
	const char *why = NULL;
	uint8_t *hb = calloc(1, VHDX_HEADER_SIZE);
	uint8_t *eb = calloc(1, BIG_LOG);
	uint32_t len;
	int fd = open(path, O_RDWR);

	assert_non_null(hb);
	assert_non_null(eb);
	assert_true(fd >= 0);
	assert_int_equal(vhdx_read_current_header(fd, &h, &why), 0);
	len = layout(eb, e);
	assert_true(len <= h.log_length);
	assert_int_equal(pwrite(fd, eb, len, (off_t)h.log_offset),
			 (ssize_t)len);
	vhdx_guid_from_le(e->guid, &h.log_guid);
	h.sequence++;
	vhdx_header_build(&h, hb);
	/* greater than both old sequences: current in either slot */
	assert_int_equal(pwrite(fd, hb, VHDX_HEADER_SIZE,
				h.sequence % 2 ? VHDX_HEADER1_OFFSET
					       : VHDX_HEADER2_OFFSET),
			 VHDX_HEADER_SIZE);
	assert_int_equal(fsync(fd), 0);
	close(fd);
	free(hb);
	free(eb);
}

/* Open with FLAGS must fail with one line naming the file and
 * LastFileOffset, and leave the file byte for byte as it was. */
static void expect_refused(const char *path, unsigned flags)
{
	struct vhdx_image *img = NULL;
	struct vhdx_error err = { 0 };
	uint64_t len, len2, alloc, alloc2;
	uint8_t *before = slurp(path, &len), *after;
	int ret;

	size_of(path, &alloc);
	ret = vhdx_open(path, flags, &img, &err);
	assert_int_equal(ret, -EINVAL);
	assert_null(img);
	assert_non_null(strstr(err.msg, path));
	assert_non_null(strstr(err.msg, "LastFileOffset"));
	assert_null(strchr(err.msg, '\n'));
	after = slurp(path, &len2);
	size_of(path, &alloc2);
	assert_int_equal(len2, len);
	assert_int_equal(alloc2, alloc);
	assert_memory_equal(after, before, len);
	free(before);
	free(after);
}

/* A zero descriptor of 1 TiB starting at the end of the file, in an entry
 * whose LastFileOffset is the file's size: refused by a read-write open,
 * by a read-only one asked to replay on disk (inspect --replay) and by a
 * plain read-only one. */
static void test_huge_zero_refused(void **state)
{
	struct env *e = *state;
	uint64_t size = size_of(e->path, NULL);
	struct desc d[] = { { true, size, 1 * TB, 0 } };
	struct entry en = { 1, 0, GUID_A, size, size, 1, d };

	make_dirty(e->path, &en);
	expect_refused(e->path, VHDX_OPEN_RDWR);
	expect_refused(e->path, VHDX_OPEN_REPLAY);
	expect_refused(e->path, 0);
}

/* One sector past LastFileOffset is as bad, for data as for zeros; and a
 * range whose end would wrap past 2^64 does not slip through. */
static void test_just_past_refused(void **state)
{
	struct env *e = *state;
	uint64_t size = size_of(e->path, NULL);
	struct desc zd[] = { { true, size - SEC, 2 * SEC, 0 } };
	struct desc dd[] = { { false, size, 0, 5 } };
	struct desc wd[] = { { false, UINT64_MAX - SEC + 1, 0, 6 } };
	struct entry en = { 1, 0, GUID_A, size, size, 1, zd };

	make_dirty(e->path, &en);
	expect_refused(e->path, VHDX_OPEN_RDWR);
	en.seq = 2;
	en.d = dd;
	make_dirty(e->path, &en);
	expect_refused(e->path, VHDX_OPEN_RDWR);
	en.seq = 3;
	en.d = wd;
	make_dirty(e->path, &en);
	expect_refused(e->path, VHDX_OPEN_REPLAY);
}

/*
 * What the log may do is still done: a payload block written through the
 * writer, then an entry that zeroes it and 8 MiB past the end of the file,
 * up to a LastFileOffset that far out.  The open replays it: the block
 * reads as zeros, the file is LastFileOffset long, and the space the file
 * takes did not grow by the 8 MiB of zeros (they are a hole).
 */
static void test_zero_within_last_replays(void **state)
{
	struct env *e = *state;
	struct vhdx_image *img = NULL;
	struct vhdx_error err;
	uint8_t *buf = malloc(MB), *zero = calloc(1, MB);
	uint64_t bat, blk, size, alloc, alloc2, last;
	int ret;

	assert_non_null(buf);
	assert_non_null(zero);
	memset(buf, 0x5A, MB);
	assert_int_equal(vhdx_open(e->path, VHDX_OPEN_RDWR, &img, &err), 0);
	assert_int_equal(vhdx_pwrite(img, buf, MB, 0), 0);
	assert_int_equal(vhdx_close_checked(img), 0);
	assert_int_equal(vhdx_open(e->path, 0, &img, &err), 0);
	assert_int_equal(vhdx_bat_entry(img, 0, &bat), 0);
	vhdx_close(img);
	assert_int_equal(vhdx_bat_state(bat), VHDX_PAYLOAD_FULLY_PRESENT);
	blk = vhdx_bat_file_offset(bat);
	size = size_of(e->path, &alloc);
	assert_true(blk + MB <= size);
	last = size + 8 * MB;
	{
		struct desc d[] = { { true, blk, last - blk, 0 } };
		struct entry en = { 1, 0, GUID_A, size, last, 1, d };

		make_dirty(e->path, &en);
	}
	ret = vhdx_open(e->path, VHDX_OPEN_RDWR, &img, &err);
	if (ret)
		fprintf(stderr, "vhdx_open: %s\n", err.msg);
	assert_int_equal(ret, 0);
	assert_int_equal(vhdx_pread(img, buf, MB, 0), (ssize_t)MB);
	assert_memory_equal(buf, zero, MB);
	vhdx_close(img);
	assert_int_equal(size_of(e->path, &alloc2), last);
	assert_true(alloc2 < alloc + MB);
	free(buf);
	free(zero);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_huge_zero_refused, env_up,
						env_down),
		cmocka_unit_test_setup_teardown(test_just_past_refused, env_up,
						env_down),
		cmocka_unit_test_setup_teardown(test_zero_within_last_replays,
						env_up, env_down),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
