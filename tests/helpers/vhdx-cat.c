/* SPDX-License-Identifier: MIT */
/*
 * vhdx-cat.c - test helper: write an image's virtual disk to stdout
 * through vhdx_pread(), or with --map print its extent map, so tests can
 * check the library without a FUSE mount in between.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vhdx/vhdx.h"

static const char *kind_name(enum vhdx_ext_kind k)
{
	static const char *names[] = { "data", "mem", "zero", "unalloc",
				       "parent" };

	return k <= VHDX_EXT_PARENT ? names[k] : "?";
}

int main(int argc, char **argv)
{
	unsigned flags = 0;
	bool map = false;
	struct vhdx_image *img;
	struct vhdx_error err;
	const char *path = NULL;
	uint64_t off, size;
	char *buf;
	int i, ret;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--ignore-parent-linkage"))
			flags |= VHDX_OPEN_IGNORE_LINKAGE;
		else if (!strcmp(argv[i], "--map"))
			map = true;
		else
			path = argv[i];
	}
	if (!path) {
		fprintf(stderr,
			"usage: vhdx-cat [--map] [--ignore-parent-linkage] IMAGE\n");
		return 2;
	}
	ret = vhdx_open(path, flags, &img, &err);
	if (ret) {
		fprintf(stderr, "vhdx-cat: %s\n", err.msg);
		return 2;
	}
	size = vhdx_get_info(img)->virtual_size;
	if (map) {
		struct vhdx_map_iter it;
		struct vhdx_extent e;

		vhdx_map_iter_init(&it, img, 0, size, 0);
		while ((ret = vhdx_map_next(&it, &e)) > 0)
			printf("%llu %llu %s %llu depth=%s\n",
			       (unsigned long long)e.off,
			       (unsigned long long)e.len, kind_name(e.kind),
			       (unsigned long long)e.file_off,
			       vhdx_get_info(e.source)->path);
		vhdx_close(img);
		return ret < 0 ? 2 : 0;
	}
	buf = malloc(4 << 20);
	for (off = 0; off < size; off += 4 << 20) {
		ssize_t n = vhdx_pread(img, buf, 4 << 20, off);

		if (n < 0) {
			fprintf(stderr, "vhdx-cat: %s: read at %llu: %s\n",
				path, (unsigned long long)off,
				strerror((int)-n));
			return 2;
		}
		if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
			return 2;
	}
	free(buf);
	vhdx_close(img);
	return 0;
}
