/* SPDX-License-Identifier: MIT */
/*
 * cmd_keygen.c - `hvresync keygen FILE`: write a new pre-shared key for the
 * push/serve transport (docs/protocol.md): 32 random bytes as one line of
 * 64 hex digits, in a file created with mode 0600 that must not exist yet.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/cli/cli.h"

#define KEYGEN_USAGE "hvresync keygen FILE"
#define KEY_BYTES 32

static int get_random(unsigned char *buf, size_t len)
{
	size_t got = 0;
	ssize_t r;

	while (got < len) {
		r = getrandom(buf + got, len - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		got += (size_t)r;
	}
	return 0;
}

/* fsync the directory holding @path so the new name survives a crash. */
static void sync_parent(const char *path)
{
	char *copy = strdup(path);
	int fd;

	if (!copy)
		return;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	free(copy);
}

int cmd_keygen(int argc, char **argv)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char key[KEY_BYTES];
	char line[2 * KEY_BYTES + 1];
	const char *path;
	size_t i, off = 0;
	ssize_t r;
	int fd, ret;

	if (argc == 2 && (!strcmp(argv[1], "--help") ||
			  !strcmp(argv[1], "-h"))) {
		printf("usage: %s\n\n"
		       "Write a new pre-shared key (32 random bytes as 64 hex "
		       "digits) to FILE,\n"
		       "created with mode 0600; an existing FILE is never "
		       "overwritten.  Copy it\n"
		       "to the other side over a secure channel and pass it "
		       "to push and serve\n"
		       "with --psk-file.\n", KEYGEN_USAGE);
		return EXIT_OK;
	}
	if (argc != 2 || argv[1][0] == '-')
		usage_die(KEYGEN_USAGE);
	path = argv[1];

	ret = get_random(key, sizeof(key));
	if (ret) {
		error_msg("%s: cannot get random bytes: %s", path,
			  strerror(-ret));
		return EXIT_ERROR;
	}
	for (i = 0; i < KEY_BYTES; i++) {
		line[2 * i] = hex[key[i] >> 4];
		line[2 * i + 1] = hex[key[i] & 15];
	}
	line[2 * KEY_BYTES] = '\n';
	explicit_bzero(key, sizeof(key));

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0) {
		ret = errno;
		explicit_bzero(line, sizeof(line));
		if (ret == EEXIST)
			error_msg("%s: already exists; not overwriting a key "
				  "(remove it first to replace it)", path);
		else
			error_msg("%s: %s", path, strerror(ret));
		return EXIT_ERROR;
	}
	/* The umask may only have taken bits away; make it exactly 0600. */
	if (fchmod(fd, 0600))
		goto fail;
	while (off < sizeof(line)) {
		r = write(fd, line + off, sizeof(line) - off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			goto fail;
		off += (size_t)r;
	}
	if (fsync(fd))
		goto fail;
	if (close(fd)) {
		fd = -1;
		goto fail;
	}
	explicit_bzero(line, sizeof(line));
	sync_parent(path);
	return EXIT_OK;
fail:
	ret = errno;
	explicit_bzero(line, sizeof(line));
	if (fd >= 0)
		close(fd);
	unlink(path);
	error_msg("%s: %s", path, strerror(ret));
	return EXIT_ERROR;
}
