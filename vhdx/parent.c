/* SPDX-License-Identifier: MIT */
/*
 * parent.c - the parent of a differencing disk: where to find it from the
 * parent locator (hvresync(8), PARENT LOOKUP), whether the file found is
 * the one the child was made from (parent_linkage), and refusing a chain
 * that loops or never ends.  Opening the parent is image.c's job: keeping
 * it there means this file needs nothing from the open pipeline.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

#define VHDX_MAX_CHAIN 64

static char *win_to_posix(const char *s)
{
	char *p = strdup(s), *c;

	if (!p)
		return NULL;
	for (c = p; *c; c++)
		if (*c == '\\')
			*c = '/';
	return p;
}

static char *join(const char *dir, const char *rel)
{
	char *out;

	if (asprintf(&out, "%s/%s", dir, rel) < 0)
		return NULL;
	return out;
}

static bool is_file(const char *p)
{
	struct stat st;

	return p && stat(p, &st) == 0 &&
	       (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode));
}

/*
 * Find the parent: relative_path against the child's directory, then the
 * file name of absolute_win32_path in the child's directory, then the path
 * inside volume_path (after \\?\Volume{GUID}\) against the child's
 * directory and each of its ancestors, as if the Windows volume were
 * mounted there.  Returns a malloc'd path, or NULL with DESCR describing
 * where it looked.
 */
static char *find_parent(const struct vhdx_image *img, char *descr, size_t dlen)
{
	const struct vhdx_info *in = &img->info;
	const char *rel = vhdx_locator_get(in->locator, in->locator_count,
					   "relative_path");
	const char *abs = vhdx_locator_get(in->locator, in->locator_count,
					   "absolute_win32_path");
	const char *vol =
		vhdx_locator_get(in->locator, in->locator_count, "volume_path");
	char *tmp = strdup(img->path), *dir, *cand = NULL, *conv;
	size_t used = 0;

	descr[0] = '\0';
	if (!tmp)
		return NULL;
	dir = dirname(tmp);
	if (rel) {
		conv = win_to_posix(rel);
		cand = conv ? (conv[0] == '/' ? strdup(conv) : join(dir, conv))
			    : NULL;
		free(conv);
		if (is_file(cand))
			goto found;
		used += (size_t)snprintf(descr + used, dlen - used,
					 "relative_path '%s' (%s)", rel,
					 cand ? cand : "?");
		free(cand);
		cand = NULL;
	}
	if (abs && used < dlen) {
		const char *base = strrchr(abs, '\\');

		base = base ? base + 1 : abs;
		cand = join(dir, base);
		if (is_file(cand))
			goto found;
		used += (size_t)snprintf(descr + used, dlen - used,
					 "%sabsolute_win32_path '%s' (%s)",
					 used ? ", " : "", abs,
					 cand ? cand : "?");
		free(cand);
		cand = NULL;
	}
	if (vol && used < dlen) {
		const char *p = vol;
		char *d = strdup(dir);

		if (!strncmp(p, "\\\\?\\Volume{", 11) && (p = strchr(p, '}')))
			p = *(p + 1) == '\\' ? p + 2 : p + 1;
		else
			p = vol;
		conv = win_to_posix(p);
		while (d && conv) {
			cand = join(d, conv);
			if (is_file(cand)) {
				free(d);
				free(conv);
				goto found;
			}
			free(cand);
			cand = NULL;
			if (!strcmp(d, "/") || !strcmp(d, "."))
				break;
			char *up = strdup(dirname(d));

			free(d);
			d = up;
		}
		free(d);
		free(conv);
		used += (size_t)snprintf(
			descr + used, dlen - used,
			"%svolume_path '%s' (its path under %s and each parent directory)",
			used ? ", " : "", vol, dir);
	}
	if (!rel && !abs && !vol)
		snprintf(
			descr, dlen,
			"the parent locator has no relative_path, absolute_win32_path or volume_path");
	free(tmp);
	return NULL;
found:
	free(tmp);
	/* Report and reopen the parent by its canonical path. */
	conv = realpath(cand, NULL);
	if (conv) {
		free(cand);
		cand = conv;
	}
	return cand;
}

int vhdx_parent_locate(struct vhdx_image *img, struct vhdx_error *err)
{
	const struct vhdx_info *in = &img->info;
	const char *link1 = vhdx_locator_get(in->locator, in->locator_count,
					     "parent_linkage");
	char where[VHDX_ERR_LEN - 64];
	struct vhdx_guid g1;
	char *ppath;

	if (img->depth + 1 >= VHDX_MAX_CHAIN)
		return vhdx_fail(err, -ELOOP, img->path,
				 "parent chain is deeper than %d (a loop?)",
				 VHDX_MAX_CHAIN);
	if (!link1 || vhdx_guid_parse(link1, &g1))
		return vhdx_fail(
			err, -EINVAL, img->path,
			"parent locator has no valid parent_linkage GUID");
	ppath = find_parent(img, where, sizeof(where));
	if (!ppath)
		return vhdx_fail(err, -ENOENT, img->path,
				 "parent not found: looked for %s", where);
	img->info.parent_path = ppath;
	return 0;
}

int vhdx_parent_check(const struct vhdx_image *img,
		      const struct vhdx_image *parent, unsigned flags,
		      struct vhdx_error *err)
{
	const struct vhdx_info *in = &img->info;
	const char *link1 = vhdx_locator_get(in->locator, in->locator_count,
					     "parent_linkage");
	const char *link2 = vhdx_locator_get(in->locator, in->locator_count,
					     "parent_linkage2");
	const char *ppath = in->parent_path;
	struct vhdx_guid g1, g2, pdw;

	/* vhdx_parent_locate() refused a missing or malformed link1 */
	vhdx_guid_parse(link1, &g1);
	pdw = parent->info.header[parent->info.current_header].data_write_guid;
	if (!vhdx_guid_equal(&g1, &pdw) &&
	    !(link2 && !vhdx_guid_parse(link2, &g2) &&
	      vhdx_guid_equal(&g2, &pdw)) &&
	    !(flags & VHDX_OPEN_IGNORE_LINKAGE)) {
		char a[VHDX_GUID_STR_LEN];

		vhdx_guid_format(&pdw, a);
		return vhdx_fail(
			err, -ESTALE, img->path,
			"parent %s has DataWriteGuid {%s} but parent_linkage is %s: the parent changed since this disk was made (--ignore-parent-linkage reads it anyway)",
			ppath, a, link1);
	}
	if (parent->info.logical_sector_size != in->logical_sector_size)
		return vhdx_fail(
			err, -EINVAL, img->path,
			"parent %s has %u-byte logical sectors, this disk %u",
			ppath, parent->info.logical_sector_size,
			in->logical_sector_size);
	return 0;
}

int vhdx_parent_check_loop(const struct vhdx_image *img, struct vhdx_error *err)
{
	const struct vhdx_image *b;

	for (b = img->below; b; b = b->below)
		if (b->dev == img->dev && b->ino == img->ino)
			return vhdx_fail(err, -ELOOP, img->path,
					 "the parent chain loops back to %s",
					 b->path);
	return 0;
}
