/* SPDX-License-Identifier: MIT */
/*
 * cmd_keygen.c - `hvresync keygen FILE`: write a new pre-shared key for the
 * push/serve transport (docs/protocol.md): 32 random bytes as one line of
 * 64 hex digits, in a file created with mode 0600 that must not exist yet.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/cli/cli.h"
#include "vhdx/vhdx.h"

#define KEYGEN_USAGE "hvresync keygen FILE"
#define KEY_BYTES 32

/* The command line: FILE, the one operand.  Exits after --help or a
 * mistake. */
static const char *parse_args(int argc, char **argv)
{
	if (argc == 2 &&
	    (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: %s\n\n"
		       "Write a new pre-shared key (32 random bytes as 64 hex "
		       "digits) to FILE,\n"
		       "created with mode 0600; an existing FILE is never "
		       "overwritten.  Copy it\n"
		       "to the other side over a secure channel and pass it "
		       "to push and serve\n"
		       "with --psk-file.\n",
		       KEYGEN_USAGE);
		exit(EXIT_OK);
	}
	if (argc != 2 || argv[1][0] == '-')
		usage_die(KEYGEN_USAGE);
	return argv[1];
}

/* A new key as 64 hex digits and a newline; 0 or a negative errno. */
static int new_key_line(char line[2 * KEY_BYTES + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char key[KEY_BYTES];
	size_t i;
	int ret;

	ret = vhdx_random_bytes(key, sizeof(key));
	if (ret)
		return ret;
	for (i = 0; i < KEY_BYTES; i++) {
		line[2 * i] = hex[key[i] >> 4];
		line[2 * i + 1] = hex[key[i] & 15];
	}
	line[2 * KEY_BYTES] = '\n';
	explicit_bzero(key, sizeof(key));
	return 0;
}

/* Write LEN bytes to FD, then fsync; 0 or -1 with errno. */
static int write_synced(int fd, const char *buf, size_t len)
{
	size_t off = 0;
	ssize_t r;

	/* The umask may only have taken bits away; make it exactly 0600. */
	if (fchmod(fd, 0600))
		return -1;
	while (off < len) {
		r = write(fd, buf + off, len - off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		off += (size_t)r;
	}
	return fsync(fd) ? -1 : 0;
}

/* Create PATH (mode 0600, never over an existing file) holding LINE. */
static int write_key_file(const char *path, const char *line, size_t len)
{
	int fd, ret;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0) {
		ret = errno;
		if (ret == EEXIST)
			error_msg("%s: already exists; not overwriting a key "
				  "(remove it first to replace it)",
				  path);
		else
			error_msg("%s: %s", path, strerror(ret));
		return EXIT_ERROR;
	}
	if (write_synced(fd, line, len) == 0) {
		if (close(fd) == 0) {
			/* So the new name survives a crash. */
			vhdx_fsync_parent_dir(path);
			return EXIT_OK;
		}
		fd = -1;
	}
	ret = errno;
	if (fd >= 0)
		close(fd);
	unlink(path);
	error_msg("%s: %s", path, strerror(ret));
	return EXIT_ERROR;
}

int cmd_keygen(int argc, char **argv)
{
	char line[2 * KEY_BYTES + 1];
	const char *path = parse_args(argc, argv);
	int ret;

	ret = new_key_line(line);
	if (ret) {
		error_msg("%s: cannot get random bytes: %s", path,
			  strerror(-ret));
		return EXIT_ERROR;
	}
	ret = write_key_file(path, line, sizeof(line));
	explicit_bzero(line, sizeof(line));
	return ret;
}
