/* SPDX-License-Identifier: MIT */
/*
 * mountinfo.c - what is mounted where, from /proc/self/mountinfo, so the
 * callers can tell our own mounts (VIEW_FSTYPE) from anything else before
 * they mount over or unmount a directory.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuse/view.h"

/* Undo mountinfo's octal escapes (\040 for a space) in place. */
static void unescape(char *s)
{
	char *o = s;

	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' &&
		    s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*o++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 +
				      (s[3] - '0'));
			s += 4;
		} else {
			*o++ = *s++;
		}
	}
	*o = '\0';
}

int view_find_mount(const char *path, struct view_mount_info *mi)
{
	FILE *fp = fopen("/proc/self/mountinfo", "re");
	char *line = NULL, *save, *tok, *mnt;
	size_t cap = 0;
	bool found = false;
	unsigned maj, min;
	int field;

	if (!fp)
		return -errno;
	while (getline(&line, &cap, fp) > 0) {
		line[strcspn(line, "\n")] = '\0';
		mnt = NULL;
		maj = min = 0;
		/* id parent maj:min root mountpoint opts [optional...] - fstype
		 * source superopts */
		for (field = 0, tok = strtok_r(line, " ", &save); tok;
		     field++, tok = strtok_r(NULL, " ", &save)) {
			if (field == 2 && sscanf(tok, "%u:%u", &maj, &min) != 2)
				break;
			if (field == 4) {
				unescape(tok);
				mnt = tok;
				if (strcmp(mnt, path))
					break;
			}
			if (field > 5 && !strcmp(tok, "-")) {
				char *fstype = strtok_r(NULL, " ", &save);
				char *source = strtok_r(NULL, " ", &save);

				if (!fstype)
					break;
				/* Later lines are mounted on top: keep the
				 * last. */
				found = true;
				snprintf(mi->fstype, sizeof(mi->fstype), "%s",
					 fstype);
				if (source)
					unescape(source);
				snprintf(mi->source, sizeof(mi->source), "%s",
					 source ? source : "");
				mi->major = maj;
				mi->minor = min;
				break;
			}
		}
	}
	free(line);
	fclose(fp);
	return found ? 0 : -ENOENT;
}
