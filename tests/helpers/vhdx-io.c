/* SPDX-License-Identifier: MIT */
/*
 * vhdx-io.c - test helper driving the VHDX writer directly, like qemu-io:
 *   vhdx-io create IMAGE SIZE [fixed] [bs=N] [lss=N] [parent=P]
 *   vhdx-io IMAGE CMD...      CMD: w:OFF:LEN:BYTE  z:OFF:LEN  f (flush)
 *                                  r:SEED:COUNT:MAXLEN (random writes)
 *                                  hang (stop here, for crash tests)
 * After each command it prints "done N" and flushes stdout, so a crash
 * test knows how far the writer got before it killed it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vhdx/vhdx.h"

static uint64_t num(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 0);

	switch (*end) {
	case 'K':
	case 'k':
		v <<= 10;
		break;
	case 'M':
	case 'm':
		v <<= 20;
		break;
	case 'G':
	case 'g':
		v <<= 30;
		break;
	default:
		break;
	}
	return v;
}

static int do_create(int argc, char **argv)
{
	struct vhdx_create_opts o = { 0 };
	struct vhdx_error err;
	int i;

	if (argc < 3)
		return 2;
	o.virtual_size = num(argv[2]);
	for (i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "fixed"))
			o.fixed = true;
		else if (!strncmp(argv[i], "bs=", 3))
			o.block_size = (uint32_t)num(argv[i] + 3);
		else if (!strncmp(argv[i], "lss=", 4))
			o.logical_sector_size = (uint32_t)num(argv[i] + 4);
		else if (!strncmp(argv[i], "parent=", 7))
			o.parent = argv[i] + 7;
	}
	if (vhdx_create(argv[1], &o, &err)) {
		fprintf(stderr, "vhdx-io: %s\n", err.msg);
		return 2;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct vhdx_image *img;
	struct vhdx_error err;
	unsigned flags = VHDX_OPEN_RDWR;
	int i = 1, ret = 0;
	uint8_t *buf = NULL;

	if (argc > 1 && !strcmp(argv[1], "create"))
		return do_create(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "--ignore-parent-linkage")) {
		flags |= VHDX_OPEN_IGNORE_LINKAGE;
		i++;
	}
	if (i >= argc) {
		fprintf(stderr, "usage: vhdx-io [create ...] IMAGE CMD...\n");
		return 2;
	}
	if (vhdx_open(argv[i], flags, &img, &err)) {
		fprintf(stderr, "vhdx-io: %s\n", err.msg);
		return 2;
	}
	for (i++; i < argc && !ret; i++) {
		char *a = argv[i];

		if (a[0] == 'w' && a[1] == ':') {
			uint64_t off = num(strtok(a + 2, ":")),
				 len = num(strtok(NULL, ":"));
			int byte = (int)num(strtok(NULL, ":"));

			buf = realloc(buf, len ? len : 1);
			memset(buf, byte, len);
			ret = vhdx_pwrite(img, buf, len, off);
		} else if (a[0] == 'z' && a[1] == ':') {
			uint64_t off = num(strtok(a + 2, ":")),
				 len = num(strtok(NULL, ":"));

			ret = vhdx_write_zeroes(img, off, len);
		} else if (a[0] == 'r' && a[1] == ':') {
			/* seeded random writes; the test replays the same
			 * sequence with its own generator (xorshift64) */
			uint64_t seed = num(strtok(a + 2, ":")),
				 count = num(strtok(NULL, ":"));
			uint64_t maxlen = num(strtok(NULL, ":")), size, k;
			const struct vhdx_info *in = vhdx_get_info(img);

			size = in->virtual_size / 512;
			buf = realloc(buf, maxlen);
			for (k = 0; k < count && !ret; k++) {
				uint64_t off, len;

				seed ^= seed << 13;
				seed ^= seed >> 7;
				seed ^= seed << 17;
				off = (seed % size) * 512;
				seed ^= seed << 13;
				seed ^= seed >> 7;
				seed ^= seed << 17;
				len = (seed % (maxlen / 512) + 1) * 512;
				if (len > in->virtual_size - off)
					len = in->virtual_size - off;
				memset(buf, (int)(k % 255) + 1, len);
				ret = vhdx_pwrite(img, buf, len, off);
			}
		} else if (!strcmp(a, "f")) {
			ret = vhdx_flush(img);
		} else if (!strcmp(a, "hang")) {
			printf("hang\n");
			fflush(stdout);
			pause();
		} else {
			fprintf(stderr, "vhdx-io: unknown command %s\n", a);
			ret = -EINVAL;
		}
		if (!ret) {
			printf("done %d\n", i);
			fflush(stdout);
		}
	}
	free(buf);
	if (ret) {
		fprintf(stderr, "vhdx-io: %s\n", strerror(-ret));
		vhdx_close(img);
		return 2;
	}
	ret = vhdx_close_checked(img);
	if (ret) {
		fprintf(stderr, "vhdx-io: close: %s\n", strerror(-ret));
		return 2;
	}
	return 0;
}
