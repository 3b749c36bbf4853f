/* SPDX-License-Identifier: MIT */
/*
 * cli.h - the hvresync command line: subcommand entry points and the one
 * error-reporting convention every command uses.
 *
 * Exit codes: 0 success, 1 "differs" (verify), 2 any error.  Every error is
 * one line on stderr: "hvresync: <what>: <why>", naming the file or peer.
 */
#ifndef HVRESYNC_CLI_H
#define HVRESYNC_CLI_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#define EXIT_OK 0
#define EXIT_DIFFER 1
#define EXIT_ERROR 2

/* Print "hvresync: " + message + newline on stderr. */
void error_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* error_msg() then exit(EXIT_ERROR). */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Print the usage string on stderr and exit(EXIT_ERROR). */
void usage_die(const char *usage) __attribute__((noreturn));
/* Informational line on stderr (progress notes), "hvresync: " prefixed. */
void note_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parse a size with an optional K, M, G, T suffix (powers of 1024).
 * Returns 0 or -EINVAL. */
int parse_size(const char *s, uint64_t *out);

/* The commands, by file: one file per command or command group. */
int cmd_inspect(int argc, char **argv); /* cmd_inspect.c */
int cmd_mount(int argc, char **argv);	/* cmd_mount.c */
int cmd_umount(int argc, char **argv);
int cmd_create(int argc, char **argv); /* cmd_create.c */
int cmd_merge(int argc, char **argv);
int cmd_dm_table(int argc, char **argv); /* cmd_dm.c */
int cmd_map(int argc, char **argv);
int cmd_unmap(int argc, char **argv);
int cmd_verify(int argc, char **argv); /* cmd_verify.c */
int cmd_serve(int argc, char **argv);  /* cmd_serve.c */
int cmd_push(int argc, char **argv);   /* cmd_push.c */
int cmd_keygen(int argc, char **argv); /* cmd_keygen.c */
int cmd_agent(int argc, char **argv);  /* cmd_agent.c */
int cmd_resync(int argc, char **argv); /* cmd_control.c */
int cmd_job(int argc, char **argv);
int cmd_vm(int argc, char **argv);
int cmd_mount_resync(int argc, char **argv); /* cmd_mount_resync.c */
int cmd_status(int argc, char **argv);	     /* cmd_status.c */

#endif
