/* SPDX-License-Identifier: MIT */
/*
 * watch.c - noticing writes to a source disk read live (watch.h): an
 * inotify watch for what the kernel sees, and the file's identity
 * (inode, size, times, VHDX headers) for what it may not (mmap, other
 * hosts of a shared filesystem, a write in the same clock tick).
 */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/lib/watch.h"
/* The header parser and checker are the format library's own
 * (vhdx_read_current_header()), so a header hvresync would not accept is
 * not accepted here either. */
#include "vhdx/vhdx.h"

/* "Written or replaced": data (IN_MODIFY, also truncate), times and
 * attributes (IN_ATTRIB), and the file going away from its name. */
#define WATCH_MASK (IN_MODIFY | IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF)

struct watch {
	char *path;
	int ifd;
	struct src_ident start;
	unsigned seen; /* inotify events seen so far (mask) */
};

/* The GUID as 16 bytes, for the identity and its text form; the record
 * never leaves this host, so the in-memory layout will do. */
static void guid_bytes(const struct vhdx_guid *g, uint8_t out[16])
{
	_Static_assert(sizeof(*g) == 16, "a GUID is 16 bytes");
	memcpy(out, g, 16);
}

/* The current header of the VHDX open at @fd, straight from the two
 * 4 KiB copies (no log replay, no locks: it is a look, not an open). */
static int read_vhdx_header(int fd, const char *path, struct src_ident *id,
			    char *err, size_t errlen)
{
	struct vhdx_header_info h;
	const char *why;
	int ret;

	ret = vhdx_read_current_header(fd, &h, &why);
	if (ret < 0) {
		snprintf(err, errlen, "%s: VHDX headers: %s%s%s", path, why,
			 ret == -EINVAL ? "" : ": ",
			 ret == -EINVAL ? "" : strerror(-ret));
		return ret;
	}
	id->vhdx = true;
	id->seq = h.sequence;
	guid_bytes(&h.file_write_guid, id->file_write_guid);
	guid_bytes(&h.data_write_guid, id->data_write_guid);
	guid_bytes(&h.log_guid, id->log_guid);
	return 0;
}

static int ident_from_fd(int fd, const char *path, struct src_ident *id,
			 char *err, size_t errlen)
{
	struct stat st;
	int ret;

	memset(id, 0, sizeof(*id));
	if (fstat(fd, &st)) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot stat: %s", path,
			 strerror(-ret));
		return ret;
	}
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	id->size = (uint64_t)st.st_size;
	id->mtime_ns =
		(int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	id->ctime_ns =
		(int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
	if (!S_ISREG(st.st_mode))
		return 0;
	ret = vhdx_probe_fd(fd);
	if (ret < 0) {
		snprintf(err, errlen, "%s: cannot read at offset 0: %s", path,
			 strerror(-ret));
		return ret;
	}
	if (!ret)
		return 0;
	return read_vhdx_header(fd, path, id, err, errlen);
}

int src_ident_read(const char *path, struct src_ident *id, char *err,
		   size_t errlen)
{
	int fd, ret;

	memset(id, 0, sizeof(*id));
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot open: %s", path,
			 strerror(-ret));
		return ret;
	}
	ret = ident_from_fd(fd, path, id, err, errlen);
	close(fd);
	return ret;
}

static void fmt_time(int64_t ns, bool precise, char *out, size_t len)
{
	time_t s = (time_t)(ns / 1000000000);
	long frac = (long)(ns % 1000000000);
	struct tm tm;
	char day[48];

	if (frac < 0) {
		frac += 1000000000;
		s--;
	}
	if (!localtime_r(&s, &tm) ||
	    !strftime(day, sizeof(day), "%Y-%m-%d %H:%M:%S", &tm)) {
		snprintf(out, len, "%" PRId64 " ns after 1970", ns);
		return;
	}
	/* Milliseconds tell two writes apart for a person; nanoseconds
	 * only when two times within one millisecond are shown. */
	if (precise)
		snprintf(out, len, "%s.%09ld", day, frac);
	else
		snprintf(out, len, "%s.%03ld", day, frac / 1000000);
}

static void fmt_guid(const uint8_t b[16], char out[VHDX_GUID_STR_LEN])
{
	struct vhdx_guid g;

	memcpy(&g, b, sizeof(g)); /* guid_bytes() in reverse */
	vhdx_guid_format(&g, out);
}

/* The header GUIDs a writer changes, and what a change means (MS-VHDX
 * 2.2.2.1). */
static const struct {
	size_t off;
	const char *name, *meaning;
} guids[] = {
	{ offsetof(struct src_ident, file_write_guid), "FileWriteGuid",
	  "a program opened it for writing" },
	{ offsetof(struct src_ident, data_write_guid), "DataWriteGuid",
	  "its data was written" },
	{ offsetof(struct src_ident, log_guid), "LogGuid",
	  "a write went through its log" },
};

bool src_ident_equal(const struct src_ident *a, const struct src_ident *b,
		     char *why, size_t whylen)
{
	char t1[64], t2[64], g1[VHDX_GUID_STR_LEN], g2[VHDX_GUID_STR_LEN];
	char tmp[1];
	size_t k;

	if (!why) {
		why = tmp;
		whylen = sizeof(tmp);
	}
	if (whylen)
		why[0] = '\0';
	if (a->dev != b->dev || a->ino != b->ino) {
		snprintf(why, whylen,
			 "it is another file now (replaced, or renamed over)");
		return false;
	}
	if (a->vhdx != b->vhdx) {
		snprintf(
			why, whylen, "%s",
			a->vhdx ? "it is no longer a VHDX (its header was overwritten)"
				: "it became a VHDX");
		return false;
	}
	if (a->vhdx) {
		if (a->seq != b->seq) {
			snprintf(
				why, whylen,
				"its VHDX header was rewritten (sequence number %" PRIu64
				" to %" PRIu64
				"): a program opened it for writing",
				a->seq, b->seq);
			return false;
		}
		for (k = 0; k < sizeof(guids) / sizeof(guids[0]); k++) {
			const uint8_t *ga = (const uint8_t *)a + guids[k].off;
			const uint8_t *gb = (const uint8_t *)b + guids[k].off;

			if (!memcmp(ga, gb, 16))
				continue;
			fmt_guid(ga, g1);
			fmt_guid(gb, g2);
			snprintf(
				why, whylen,
				"its VHDX header's %s changed from %s to %s: %s",
				guids[k].name, g1, g2, guids[k].meaning);
			return false;
		}
	}
	if (a->size != b->size) {
		snprintf(why, whylen,
			 "its size changed from %" PRIu64 " to %" PRIu64
			 " bytes",
			 a->size, b->size);
		return false;
	}
	if (a->mtime_ns != b->mtime_ns) {
		bool same_ms = a->mtime_ns / 1000000 == b->mtime_ns / 1000000;

		fmt_time(a->mtime_ns, same_ms, t1, sizeof(t1));
		fmt_time(b->mtime_ns, same_ms, t2, sizeof(t2));
		snprintf(why, whylen,
			 "it was modified at %s (last modified %s before)", t2,
			 t1);
		return false;
	}
	if (a->ctime_ns != b->ctime_ns) {
		fmt_time(b->ctime_ns, false, t2, sizeof(t2));
		snprintf(why, whylen,
			 "its times, permissions or links were changed at %s",
			 t2);
		return false;
	}
	return true;
}

/*
 * The text: comma-separated key=value, no spaces.  d, i, s: device,
 * inode, size; m, c: mtime and ctime in ns (signed); for a VHDX q: the
 * sequence number and f, w, l: FileWriteGuid, DataWriteGuid, LogGuid as
 * 32 hex digits of their on-disk bytes.  At most 241 characters.
 */
static void hex16(const uint8_t b[16], char out[33])
{
	static const char hx[] = "0123456789abcdef";
	int i;

	for (i = 0; i < 16; i++) {
		out[2 * i] = hx[b[i] >> 4];
		out[2 * i + 1] = hx[b[i] & 15];
	}
	out[32] = '\0';
}

int src_ident_format(const struct src_ident *id, char *out, size_t len)
{
	char f[33], w[33], l[33];
	int n;

	if (id->vhdx) {
		hex16(id->file_write_guid, f);
		hex16(id->data_write_guid, w);
		hex16(id->log_guid, l);
		n = snprintf(out, len,
			     "d=%" PRIu64 ",i=%" PRIu64 ",s=%" PRIu64
			     ",m=%" PRId64 ",c=%" PRId64 ",q=%" PRIu64
			     ",f=%s,w=%s,l=%s",
			     id->dev, id->ino, id->size, id->mtime_ns,
			     id->ctime_ns, id->seq, f, w, l);
	} else {
		n = snprintf(out, len,
			     "d=%" PRIu64 ",i=%" PRIu64 ",s=%" PRIu64
			     ",m=%" PRId64 ",c=%" PRId64,
			     id->dev, id->ino, id->size, id->mtime_ns,
			     id->ctime_ns);
	}
	if (n < 0 || (size_t)n >= len)
		return -ENOSPC;
	return 0;
}

static int parse_u64(const char *s, size_t len, uint64_t *v)
{
	char buf[24], *end;

	if (!len || len >= sizeof(buf) || s[0] < '0' || s[0] > '9')
		return -EINVAL;
	memcpy(buf, s, len);
	buf[len] = '\0';
	errno = 0;
	*v = strtoull(buf, &end, 10);
	return errno || *end ? -EINVAL : 0;
}

static int parse_i64(const char *s, size_t len, int64_t *v)
{
	char buf[24], *end;
	long long x;

	if (!len || len >= sizeof(buf) ||
	    !((s[0] >= '0' && s[0] <= '9') || s[0] == '-'))
		return -EINVAL;
	memcpy(buf, s, len);
	buf[len] = '\0';
	errno = 0;
	x = strtoll(buf, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*v = x;
	return 0;
}

static int parse_hex16(const char *s, size_t len, uint8_t b[16])
{
	int i, hi = 0, lo;

	if (len != 32)
		return -EINVAL;
	for (i = 0; i < 32; i++) {
		char c = s[i];
		int v = c >= '0' && c <= '9'   ? c - '0'
			: c >= 'a' && c <= 'f' ? c - 'a' + 10
			: c >= 'A' && c <= 'F' ? c - 'A' + 10
					       : -1;

		if (v < 0)
			return -EINVAL;
		if (i & 1) {
			lo = v;
			b[i / 2] = (uint8_t)(hi << 4 | lo);
		} else {
			hi = v;
		}
	}
	return 0;
}

int src_ident_parse(const char *text, struct src_ident *id)
{
	static const char keys[] = "dismcqfwl";
	unsigned have = 0, bit;
	const char *p = text;
	struct src_ident r;
	int ret;

	memset(&r, 0, sizeof(r));
	while (*p) {
		const char *eq = p + 1, *end, *k;
		size_t vlen;

		k = strchr(keys, *p);
		if (!k || *eq != '=')
			return -EINVAL;
		bit = 1u << (k - keys);
		if (have & bit)
			return -EINVAL;
		have |= bit;
		end = strchr(eq + 1, ',');
		if (!end)
			end = eq + 1 + strlen(eq + 1);
		vlen = (size_t)(end - (eq + 1));
		switch (*p) {
		case 'd':
			ret = parse_u64(eq + 1, vlen, &r.dev);
			break;
		case 'i':
			ret = parse_u64(eq + 1, vlen, &r.ino);
			break;
		case 's':
			ret = parse_u64(eq + 1, vlen, &r.size);
			break;
		case 'm':
			ret = parse_i64(eq + 1, vlen, &r.mtime_ns);
			break;
		case 'c':
			ret = parse_i64(eq + 1, vlen, &r.ctime_ns);
			break;
		case 'q':
			ret = parse_u64(eq + 1, vlen, &r.seq);
			break;
		case 'f':
			ret = parse_hex16(eq + 1, vlen, r.file_write_guid);
			break;
		case 'w':
			ret = parse_hex16(eq + 1, vlen, r.data_write_guid);
			break;
		default:
			ret = parse_hex16(eq + 1, vlen, r.log_guid);
			break;
		}
		if (ret < 0)
			return ret;
		p = end;
		if (*p == ',' && !*++p)
			return -EINVAL; /* a trailing comma */
	}
	/* d i s m c always; q f w l all or none. */
	if ((have & 0x1f) != 0x1f ||
	    ((have & 0x1e0) && (have & 0x1e0) != 0x1e0))
		return -EINVAL;
	r.vhdx = have & 0x1e0;
	*id = r;
	return 0;
}

int watch_start(const char *path, struct watch **out, char *err, size_t errlen)
{
	char proc[64];
	struct watch *w;
	struct stat st;
	int fd, ret;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot open: %s", path,
			 strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st)) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot stat: %s", path,
			 strerror(-ret));
		goto out_fd;
	}
	if (S_ISBLK(st.st_mode)) {
		snprintf(
			err, errlen,
			"%s: a block device cannot be watched for writes during a resync; read an LVM snapshot of it instead",
			path);
		ret = -ENOTSUP;
		goto out_fd;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: not a regular file or block device",
			 path);
		ret = -EINVAL;
		goto out_fd;
	}
	w = calloc(1, sizeof(*w));
	if (!w || !(w->path = strdup(path))) {
		free(w);
		snprintf(err, errlen, "%s: out of memory", path);
		ret = -ENOMEM;
		goto out_fd;
	}
	w->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->ifd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot start inotify: %s", path,
			 strerror(-ret));
		goto out_w;
	}
	/*
	 * Watch the file we opened, not whatever the name points to a
	 * moment later: /proc/self/fd/N names exactly that inode.  The
	 * watch comes before the identity is read, so a write between the
	 * two is seen by one or the other.
	 */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if (inotify_add_watch(w->ifd, proc, WATCH_MASK) < 0 &&
	    inotify_add_watch(w->ifd, path, WATCH_MASK) < 0) {
		ret = -errno;
		snprintf(
			err, errlen, "%s: cannot watch it with inotify: %s",
			path,
			ret == -ENOSPC
				? "too many watches (raise fs.inotify.max_user_watches)"
				: strerror(-ret));
		goto out_w;
	}
	ret = ident_from_fd(fd, path, &w->start, err, errlen);
	if (ret < 0)
		goto out_w;
	close(fd);
	*out = w;
	return 0;

out_w:
	watch_stop(w);
out_fd:
	close(fd);
	return ret;
}

const struct src_ident *watch_ident(const struct watch *w)
{
	return &w->start;
}

/* Read every pending inotify event and remember what they said. */
static int drain(struct watch *w)
{
	char buf[4096]
		__attribute__((aligned(__alignof__(struct inotify_event))));
	const struct inotify_event *ev;
	ssize_t n;
	char *p;

	for (;;) {
		n = read(w->ifd, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			return -errno;
		}
		if (!n)
			return 0;
		for (p = buf; p < buf + n; p += sizeof(*ev) + ev->len) {
			ev = (const struct inotify_event *)p;
			w->seen |= ev->mask;
		}
	}
}

int watch_changed(struct watch *w, char *why, size_t whylen)
{
	struct src_ident now;
	char what[512], err[512];
	const char *ev = NULL;
	int ret;

	ret = drain(w);
	if (ret < 0) {
		snprintf(why, whylen, "%s: cannot read inotify events: %s",
			 w->path, strerror(-ret));
		return ret;
	}
	ret = src_ident_read(w->path, &now, err, sizeof(err));
	if (ret == -ENOENT) {
		snprintf(
			why, whylen,
			"%s: changed during the resync: it is gone (deleted, or renamed away)",
			w->path);
		return 1;
	}
	if (ret < 0) {
		snprintf(why, whylen, "%s", err);
		return ret;
	}
	if (!src_ident_equal(&w->start, &now, what, sizeof(what))) {
		snprintf(why, whylen, "%s: changed during the resync: %s",
			 w->path, what);
		return 1;
	}
	/* The identity may hide a write: mtime ticks coarsely and a write
	 * in place keeps the size.  The kernel's word settles it. */
	if (w->seen & IN_Q_OVERFLOW)
		ev = "so many events came that inotify dropped some";
	else if (w->seen & IN_MODIFY)
		ev = "a process wrote to it (inotify)";
	else if (w->seen & (IN_DELETE_SELF | IN_IGNORED))
		ev = "it was deleted (inotify)";
	else if (w->seen & IN_MOVE_SELF)
		ev = "it was renamed or moved (inotify)";
	else if (w->seen & IN_ATTRIB)
		ev = "its times or attributes were changed (inotify)";
	if (ev) {
		snprintf(why, whylen, "%s: changed during the resync: %s",
			 w->path, ev);
		return 1;
	}
	if (why && whylen)
		why[0] = '\0';
	return 0;
}

void watch_stop(struct watch *w)
{
	if (!w)
		return;
	if (w->ifd >= 0)
		close(w->ifd);
	free(w->path);
	free(w);
}
