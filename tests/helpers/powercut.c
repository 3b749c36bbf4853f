/* SPDX-License-Identifier: MIT */
/*
 * powercut.c - test helper: a pass-through FUSE file system over a backing
 * folder that can simulate a power cut, so tests see exactly what a
 * program made durable (issue 11).
 *
 * usage: powercut [-f] [--cut-at N] [--torn SEED] [--freeze]
 *                 [--report FILE] [--state DIR] BACKING MOUNTPOINT
 *
 * The model (what is durable when):
 *   - a file's data (write, fallocate, truncate), its size and its mode and
 *     owner become durable at fsync/fdatasync of that file; a write to a
 *     file opened O_SYNC/O_DSYNC counts as write + fsync;
 *   - a folder's entries (create, mknod, mkdir, rename, unlink, rmdir,
 *     link, symlink) become durable at fsync of that folder (fsyncdir), as
 *     do the folder's own mode and owner.  Strict: fsync of a new file
 *     does not make its name durable;
 *   - what BACKING holds at mount is durable.
 * A barrier is each fsync, fdatasync or fsyncdir request and each write to
 * an O_SYNC/O_DSYNC file, numbered from 1.  --cut-at N cuts the power when
 * barrier N arrives, before it takes effect (that request fails with EIO);
 * SIGUSR1 cuts at once.  After a cut every request fails with EIO (but
 * stat of the mount's root, which mountpoint(1) needs), BACKING
 * holds only what was durable and the report says `cut K`.  A clean
 * unmount keeps everything.  --torn SEED: at the cut a seeded random half
 * of the unsynced 4 KiB pages keeps its new content and a grown or shrunk
 * file keeps its new size with probability 1/2 (new bytes of a page that
 * does not survive are zeros); otherwise every unsynced page reverts.
 *
 * --freeze: after the cut, requests (but that stat of the root) are held
 * instead of failing with EIO, the barrier request that cut included, as
 * on a machine whose power is gone: a program sees no error, it hangs, and
 * its peers see it die when it is killed.  The one request powercut holds
 * is answered EIO once powercut is told to end (SIGTERM, SIGINT, or the
 * connection goes: unmount, abort), or once its caller is dying (a fatal
 * signal pending, or exiting: the kernel does not let a caller whose
 * request was read go before it is answered, so that is what keeps a held
 * program killable; it never sees the answer).  The requests behind it
 * wait in the kernel's queue, where SIGKILL ends them.  To end a frozen
 * powercut: lazy unmount, then SIGTERM (tests/helpers/powercut.sh's
 * pc_umount does so).
 *
 * How: changes go to BACKING at once, so reads are plain pass-through.
 * Before the first change of a page since the file's last fsync its
 * durable bytes are saved in memory (a hole is remembered as a hole), with
 * the durable size and attributes; fsync drops them.  Each folder's
 * durable entries (name -> inode) are kept in memory; an inode that a
 * durable entry names is linked into STATE/grave before its last name
 * goes, and a removed folder is held open, so inode numbers stay unique.
 * The cut restores the saved pages, sizes and attributes, builds the
 * durable tree in STATE/rebuild from hard links and moves it into BACKING.
 *
 *   --report FILE  rewritten atomically at mount, at the cut and at
 *                  unmount: `barriers N`, `cut K` or `cut none`, `mode
 *                  plain|torn`, `state`, `pid` and counts of what the cut
 *                  reverted (pages, sizes, attributes, names before/after)
 *   --state DIR    the graveyard and the rebuild, on BACKING's file system
 *                  (default BACKING.powercut, removed at unmount); its lock
 *                  file refuses a second powercut on the same BACKING
 *
 * Limits: mmap writes are not seen (files are served direct_io, so shared
 * writable mmap is refused); xattrs, timestamps and symlink owners are not
 * modelled; sync(2)/syncfs make nothing durable (FUSE does not pass them);
 * everything that one fsync makes durable becomes durable at once (no
 * ordering inside a barrier); RENAME_WHITEOUT and fallocate's collapse
 * and insert range are refused; a folder that renames left durably named
 * twice is placed once; changes made to BACKING behind the mount's back,
 * and anything below a mount inside BACKING, are not modelled.  After a
 * cut, folders are new inodes (files keep theirs).  SIGTERM or SIGINT is
 * a clean unmount.
 *
 * Requests are served one at a time (fuse_loop), under one mutex that the
 * SIGUSR1 thread takes too (a held request waits without it).  Without -f
 * powercut returns once mounted; it mounts with auto_unmount, so a killed
 * powercut leaves no mount.
 */
#define FUSE_USE_VERSION 35

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/falloc.h>
#include <poll.h>
#include <pthread.h>
#include <search.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u

/* One 4 KiB page of a file changed since its last fsync. */
struct page {
	uint64_t idx;
	char *old;    /* its durable bytes, NULL when none or a hole */
	uint32_t len; /* bytes of the page below the durable size */
	bool hole;    /* the durable bytes were a hole */
};

/* A durable folder entry. */
struct dent {
	char *name;
	ino_t ino;
};

/* What powercut knows of one backing inode. */
struct node {
	ino_t ino;
	mode_t type; /* S_IFMT bits */
	unsigned nd; /* durable entries naming it */
	/* Regular files: O_RDWR shadow while dirty.  Folders: held open once
	 * removed while durably named, so the inode number stays theirs. */
	int fd;
	bool grave; /* linked as STATE/grave/<ino> */
	bool built; /* folder already placed by this rebuild */
	/* Regular files, while dirty: the durable state. */
	bool dirty;
	uint64_t seq; /* when it became dirty: the torn mode's key */
	off_t dur_size;
	void *pages;
	/* Durable attributes: of dirty files, and always of folders. */
	mode_t dur_mode;
	uid_t dur_uid;
	gid_t dur_gid;
	/* Folders: the durable entries. */
	bool has_dents;
	struct dent *dents;
	size_t ndents;
};

static struct {
	pthread_mutex_t lock;
	int bfd;  /* BACKING */
	int sfd;  /* the state folder */
	int gfd;  /* STATE/grave */
	int lfd;  /* STATE/lock */
	int rdfd; /* the report's folder, or -1 */
	const char *rname;
	char *state;
	dev_t dev;
	ino_t root;
	void *nodes;
	uint64_t barriers, cut_at, cut_k, seed, seq;
	bool torn, dead, finished, freeze;
	/* what the cut did, for the report */
	uint64_t pages_reverted, pages_kept, sizes_reverted, attrs_reverted;
	uint64_t names_before, names_after, lost;
} pc = { .lock = PTHREAD_MUTEX_INITIALIZER,
	 .bfd = -1,
	 .sfd = -1,
	 .gfd = -1,
	 .lfd = -1,
	 .rdfd = -1 };

static const char usage[] =
	"usage: powercut [-f] [--cut-at N] [--torn SEED] [--freeze]\n"
	"                [--report FILE] [--state DIR] BACKING MOUNTPOINT\n";

/* ---- small helpers ---- */

/* A FUSE path as a path relative to BACKING. */
static const char *rel(const char *path)
{
	if (!path || !path[0] || !path[1])
		return ".";
	return path + 1;
}

/* fi->fh: the backing fd in the low half, the open flags in the high. */
static int fh_fd(const struct fuse_file_info *fi)
{
	return (int)(uint32_t)(fi->fh & 0xffffffffu);
}

static int fh_flags(const struct fuse_file_info *fi)
{
	return (int)(uint32_t)(fi->fh >> 32);
}

static uint64_t make_fh(int fd, int flags)
{
	return (uint64_t)(uint32_t)fd | ((uint64_t)(uint32_t)flags << 32);
}

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* The torn mode's coin for page @idx of the file dirtied @seq-th: the same
 * seed and the same sequence of changes give the same coins. */
static bool coin(uint64_t seq, uint64_t idx)
{
	return mix64(pc.seed ^ mix64(seq * 0x100000001b3ull ^ mix64(idx))) & 1;
}

static int write_full(int fd, const void *buf, size_t len, off_t off)
{
	const char *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

static int zero_range(int fd, off_t off, off_t len)
{
	static const char zeros[PAGE];

	while (len > 0) {
		size_t n = len > (off_t)PAGE ? PAGE : (size_t)len;
		int r = write_full(fd, zeros, n, off);

		if (r)
			return r;
		off += (off_t)n;
		len -= (off_t)n;
	}
	return 0;
}

/* Calls @fn for each entry of folder @dfd (not "." or ".."), with the
 * entry's lstat; an entry that vanished meanwhile is skipped.  Stops at
 * the first non-zero return of @fn and returns it; -errno when the folder
 * cannot be read. */
static int walk_dir(int dfd,
		    int (*fn)(int fd, const char *name, const struct stat *st,
			      void *arg),
		    void *arg)
{
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	int ret = 0;
	DIR *d;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		ret = -errno;
		close(fd);
		return ret;
	}
	while (!ret && (de = readdir(d))) {
		struct stat st;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW))
			continue;
		ret = fn(fd, de->d_name, &st, arg);
	}
	closedir(d);
	return ret;
}

/* Opens subfolder @name of @fd without following a symlink. */
static int open_subdir(int fd, const char *name)
{
	return openat(fd, name,
		      O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

static int empty_dir(int dfd);

/* empty_dir's step: removes one entry, remembering the first error. */
static int remove_entry(int fd, const char *name, const struct stat *st,
			void *arg)
{
	int *ret = arg;

	if (S_ISDIR(st->st_mode)) {
		int sub = open_subdir(fd, name);

		if (sub >= 0) {
			empty_dir(sub);
			close(sub);
		}
		if (unlinkat(fd, name, AT_REMOVEDIR) && !*ret)
			*ret = -errno;
	} else if (unlinkat(fd, name, 0) && !*ret) {
		*ret = -errno;
	}
	return 0;
}

/* Removes everything inside the folder @dfd (not the folder itself). */
static int empty_dir(int dfd)
{
	int ret = 0, r;

	r = walk_dir(dfd, remove_entry, &ret);
	return r ? r : ret;
}

/* count_entries' step. */
static int count_entry(int fd, const char *name, const struct stat *st,
		       void *arg)
{
	uint64_t *n = arg;

	++*n;
	if (S_ISDIR(st->st_mode)) {
		int sub = open_subdir(fd, name);

		if (sub >= 0) {
			walk_dir(sub, count_entry, n);
			close(sub);
		}
	}
	return 0;
}

/* Counts the entries below folder @dfd, recursively. */
static uint64_t count_entries(int dfd)
{
	uint64_t n = 0;

	walk_dir(dfd, count_entry, &n);
	return n;
}

/* ---- inodes ---- */

static int cmp_node(const void *a, const void *b)
{
	ino_t x = ((const struct node *)a)->ino;
	ino_t y = ((const struct node *)b)->ino;

	return x < y ? -1 : x > y;
}

static int cmp_page(const void *a, const void *b)
{
	uint64_t x = ((const struct page *)a)->idx;
	uint64_t y = ((const struct page *)b)->idx;

	return x < y ? -1 : x > y;
}

static struct node *node_find(ino_t ino)
{
	struct node key = { .ino = ino };
	void *p = tfind(&key, &pc.nodes, cmp_node);

	return p ? *(struct node **)p : NULL;
}

/* The node of the inode @st describes, made when new (a folder's durable
 * attributes are taken from @st then). */
static struct node *node_get(const struct stat *st)
{
	struct node *n = node_find(st->st_ino);

	if (n)
		return n;
	n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->ino = st->st_ino;
	n->type = st->st_mode & S_IFMT;
	n->fd = -1;
	n->dur_mode = st->st_mode & 07777;
	n->dur_uid = st->st_uid;
	n->dur_gid = st->st_gid;
	if (!tsearch(n, &pc.nodes, cmp_node)) {
		free(n);
		return NULL;
	}
	return n;
}

static void free_page(void *p)
{
	free(((struct page *)p)->old);
	free(p);
}

static void free_dents(struct dent *d, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(d[i].name);
	free(d);
}

static void node_free(struct node *n)
{
	tdelete(n, &pc.nodes, cmp_node);
	if (n->fd >= 0)
		close(n->fd);
	tdestroy(n->pages, free_page);
	free_dents(n->dents, n->ndents);
	free(n);
}

static void grave_name(ino_t ino, char *buf, size_t len)
{
	snprintf(buf, len, "%ju", (uintmax_t)ino);
}

static void unref(struct node *n);

/* A removed folder no durable entry names: its own entries go too. */
static void dir_drop(struct node *n)
{
	struct dent *d = n->dents;
	size_t i, cnt = n->ndents;

	n->dents = NULL;
	n->ndents = 0;
	node_free(n);
	for (i = 0; i < cnt; i++) {
		struct node *c = node_find(d[i].ino);

		if (c)
			unref(c);
	}
	free_dents(d, cnt);
}

/* Forgets what nothing needs any more about @n, once no durable entry
 * names it: its graveyard link, and the node when its inode is gone or it
 * holds nothing to undo. */
static void settle(struct node *n)
{
	struct stat st;

	if (n->nd || n->ino == pc.root)
		return;
	if (n->grave) {
		char name[32];

		grave_name(n->ino, name, sizeof(name));
		unlinkat(pc.gfd, name, 0);
		n->grave = false;
	}
	if (n->type == S_IFDIR) {
		/* A removed folder is held open; one still present keeps its
		 * durable entries, it may be named again. */
		if (n->fd >= 0 && !fstat(n->fd, &st) && st.st_nlink == 0)
			dir_drop(n);
		return;
	}
	if (!n->dirty || n->fd < 0 || (!fstat(n->fd, &st) && st.st_nlink == 0))
		node_free(n);
}

static void unref(struct node *n)
{
	if (n->nd)
		n->nd--;
	settle(n);
}

/* Keeps the inode that @path names alive before its last name may go,
 * when a durable entry still names it. */
static int preserve(struct node *n, const char *path)
{
	char name[32];

	if (!n || !n->nd)
		return 0;
	if (n->type == S_IFDIR) {
		if (n->fd < 0) {
			n->fd = openat(pc.bfd, path,
				       O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					       O_CLOEXEC);
			if (n->fd < 0)
				return -errno;
		}
		return 0;
	}
	if (n->grave)
		return 0;
	grave_name(n->ino, name, sizeof(name));
	if (linkat(pc.bfd, path, pc.gfd, name, 0)) {
		int e = errno;

		fprintf(stderr,
			"powercut: %s: cannot keep it in %s/grave: %s\n", path,
			pc.state, strerror(e));
		return -e;
	}
	n->grave = true;
	return 0;
}

/* Starts undo tracking of the regular file @n, opened as @fd (or -1 and
 * named @path), unless it runs already. */
static int begin_change(struct node *n, int fd, const char *path)
{
	struct stat st;

	if (n->dirty)
		return 0;
	if (n->fd < 0) {
		if (fd >= 0) {
			char proc[64];

			snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
			n->fd = open(proc, O_RDWR | O_CLOEXEC);
		} else {
			n->fd = openat(pc.bfd, path,
				       O_RDWR | O_NOFOLLOW | O_CLOEXEC);
		}
		if (n->fd < 0)
			return -errno;
	}
	if (fstat(n->fd, &st))
		return -errno;
	n->dirty = true;
	n->seq = ++pc.seq;
	n->dur_size = st.st_size;
	n->dur_mode = st.st_mode & 07777;
	n->dur_uid = st.st_uid;
	n->dur_gid = st.st_gid;
	return 0;
}

/* Saves the durable bytes of every page of [start, end) not saved since
 * the last fsync, before they change. */
static int save_range(struct node *n, off_t start, off_t end)
{
	off_t next_data = -1;
	uint64_t p;

	if (end <= start)
		return 0;
	for (p = (uint64_t)start / PAGE; (off_t)(p * PAGE) < end; p++) {
		struct page key = { .idx = p }, *pg;
		off_t base = (off_t)(p * PAGE);

		if (tfind(&key, &n->pages, cmp_page))
			continue;
		pg = calloc(1, sizeof(*pg));
		if (!pg)
			return -ENOMEM;
		pg->idx = p;
		if (base < n->dur_size) {
			off_t left = n->dur_size - base;

			pg->len = left < (off_t)PAGE ? (uint32_t)left : PAGE;
			if (next_data < base) {
				next_data = lseek(n->fd, base, SEEK_DATA);
				if (next_data < 0)
					next_data = errno == ENXIO ? INT64_MAX
								   : base;
			}
			if (next_data >= base + (off_t)pg->len) {
				pg->hole = true;
			} else {
				ssize_t got;

				pg->old = calloc(1, pg->len);
				if (!pg->old) {
					free(pg);
					return -ENOMEM;
				}
				got = pread(n->fd, pg->old, pg->len, base);
				if (got < 0) {
					int e = -errno;

					free_page(pg);
					return e;
				}
			}
		}
		if (!tsearch(pg, &n->pages, cmp_page)) {
			free_page(pg);
			return -ENOMEM;
		}
	}
	return 0;
}

/* fsync of @n: what it holds now is durable. */
static void commit(struct node *n)
{
	tdestroy(n->pages, free_page);
	n->pages = NULL;
	n->dirty = false;
	if (n->type != S_IFDIR && n->fd >= 0) {
		close(n->fd);
		n->fd = -1;
	}
	settle(n);
}

struct entries {
	struct dent *d;
	struct stat *s;
	size_t n, cap;
};

/* read_entries' step. */
static int add_entry(int fd, const char *name, const struct stat *st, void *arg)
{
	struct entries *e = arg;

	(void)fd;
	if (e->n == e->cap) {
		size_t nc = e->cap ? e->cap * 2 : 16;
		struct dent *nd = realloc(e->d, nc * sizeof(*nd));
		struct stat *ns;

		if (!nd)
			return -ENOMEM;
		e->d = nd;
		ns = realloc(e->s, nc * sizeof(*ns));
		if (!ns)
			return -ENOMEM;
		e->s = ns;
		e->cap = nc;
	}
	e->d[e->n].name = strdup(name);
	if (!e->d[e->n].name)
		return -ENOMEM;
	e->d[e->n].ino = st->st_ino;
	e->s[e->n] = *st;
	e->n++;
	return 0;
}

/* Reads folder @dfd's entries, lstat'ing each. */
static int read_entries(int dfd, struct dent **out, size_t *cnt,
			struct stat **sts)
{
	struct entries e = { 0 };
	int r = walk_dir(dfd, add_entry, &e);

	if (r) {
		free_dents(e.d, e.n);
		free(e.s);
		return r;
	}
	*out = e.d;
	*cnt = e.n;
	*sts = e.s;
	return 0;
}

/* fsyncdir of (or the mount-time scan of) folder @dfd: its entries now
 * are durable.  With @deep, does the same in every subfolder. */
static int sync_dir(int dfd, bool deep)
{
	struct dent *d, *old;
	struct stat st, *sts;
	struct node *n;
	size_t i, cnt, ocnt;
	int r;

	if (fstat(dfd, &st))
		return -errno;
	n = node_get(&st);
	if (!n)
		return -ENOMEM;
	r = read_entries(dfd, &d, &cnt, &sts);
	if (r)
		return r;
	/* A folder's own attributes are durable at its fsync too. */
	n->dur_mode = st.st_mode & 07777;
	n->dur_uid = st.st_uid;
	n->dur_gid = st.st_gid;
	n->nd++; /* so that no cascade below frees it */
	for (i = 0; i < cnt; i++) {
		struct node *c = node_get(&sts[i]);

		if (!c) {
			r = -ENOMEM;
			continue;
		}
		c->nd++;
		if (deep && S_ISDIR(sts[i].st_mode) &&
		    sts[i].st_dev == pc.dev) {
			int sub = openat(dfd, d[i].name,
					 O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
						 O_CLOEXEC);

			if (sub >= 0) {
				int e = sync_dir(sub, true);

				if (e && !r)
					r = e;
				close(sub);
			}
		}
	}
	old = n->dents;
	ocnt = n->ndents;
	n->dents = d;
	n->ndents = cnt;
	n->has_dents = true;
	for (i = 0; i < ocnt; i++) {
		struct node *c = node_find(old[i].ino);

		if (c)
			unref(c);
	}
	free_dents(old, ocnt);
	free(sts);
	unref(n);
	return r;
}

/* ---- the report ---- */

static void write_report(const char *state)
{
	char tmp[PATH_MAX], buf[1024], cut[32];
	int fd, len;

	if (pc.rdfd < 0)
		return;
	if (pc.cut_k)
		snprintf(cut, sizeof(cut), "%" PRIu64, pc.cut_k);
	else
		snprintf(cut, sizeof(cut), "none");
	len = snprintf(buf, sizeof(buf),
		       "barriers %" PRIu64 "\ncut %s\nmode %s\n"
		       "seed %" PRIu64 "\npid %d\nstate %s\n"
		       "pages_reverted %" PRIu64 "\npages_kept %" PRIu64 "\n"
		       "sizes_reverted %" PRIu64 "\nattrs_reverted %" PRIu64
		       "\nnames_before %" PRIu64 "\nnames_after %" PRIu64
		       "\nlost %" PRIu64 "\n",
		       pc.barriers, cut, pc.torn ? "torn" : "plain", pc.seed,
		       (int)getpid(), state, pc.pages_reverted, pc.pages_kept,
		       pc.sizes_reverted, pc.attrs_reverted, pc.names_before,
		       pc.names_after, pc.lost);
	snprintf(tmp, sizeof(tmp), ".%s.tmp", pc.rname);
	fd = openat(pc.rdfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
		    0644);
	if (fd < 0 || write_full(fd, buf, (size_t)len, 0) ||
	    renameat(pc.rdfd, tmp, pc.rdfd, pc.rname))
		fprintf(stderr, "powercut: report %s: %s\n", pc.rname,
			strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* ---- the cut ---- */

struct vec {
	void **v;
	size_t n, cap;
};

static struct vec walk_vec;

static void walk_collect(const void *nodep, VISIT which, int depth)
{
	if (which != postorder && which != leaf)
		return;
	if (walk_vec.n == walk_vec.cap) {
		size_t nc = walk_vec.cap ? walk_vec.cap * 2 : 64;
		void **nv = realloc(walk_vec.v, nc * sizeof(*nv));

		if (!nv)
			return;
		walk_vec.v = nv;
		walk_vec.cap = nc;
	}
	walk_vec.v[walk_vec.n++] = *(void *const *)nodep;
}

/* The tree @root's items in order. */
static struct vec collect(const void *root)
{
	struct vec v;

	walk_vec = (struct vec){ 0 };
	twalk(root, walk_collect);
	v = walk_vec;
	walk_vec = (struct vec){ 0 };
	return v;
}

/* Puts the regular file @n back to its durable state (in torn mode, to a
 * seeded mix of durable and new pages). */
static void restore_file(struct node *n)
{
	struct stat st;
	struct vec pages;
	off_t final;
	size_t i;
	int fd = n->fd;

	if (fstat(fd, &st)) {
		fprintf(stderr, "powercut: inode %ju: %s\n", (uintmax_t)n->ino,
			strerror(errno));
		return;
	}
	final = n->dur_size;
	if (pc.torn && coin(n->seq, UINT64_MAX))
		final = st.st_size;
	if (final != st.st_size) {
		if (ftruncate(fd, final))
			fprintf(stderr, "powercut: inode %ju: truncate: %s\n",
				(uintmax_t)n->ino, strerror(errno));
		pc.sizes_reverted++;
	}
	pages = collect(n->pages);
	for (i = 0; i < pages.n; i++) {
		struct page *pg = pages.v[i];
		off_t base = (off_t)(pg->idx * PAGE), end, old_end;
		int r = 0;

		if (pc.torn && coin(n->seq, pg->idx)) {
			pc.pages_kept++;
			continue;
		}
		pc.pages_reverted++;
		if (base >= final)
			continue;
		end = base + PAGE < final ? base + (off_t)PAGE : final;
		old_end = base + (off_t)pg->len < end ? base + (off_t)pg->len
						      : end;
		if (pg->hole && old_end > base) {
			if (fallocate(fd,
				      FALLOC_FL_PUNCH_HOLE |
					      FALLOC_FL_KEEP_SIZE,
				      base, old_end - base))
				r = zero_range(fd, base, old_end - base);
		} else if (old_end > base) {
			r = write_full(fd, pg->old, (size_t)(old_end - base),
				       base);
		}
		/* Bytes past the durable size in a page that does not
		 * survive: never written, as far as the disk knows. */
		if (!r && end > old_end)
			r = zero_range(fd, old_end, end - old_end);
		if (r)
			fprintf(stderr,
				"powercut: inode %ju: page %" PRIu64 ": %s\n",
				(uintmax_t)n->ino, pg->idx, strerror(-r));
	}
	free(pages.v);
	if ((st.st_mode & 07777) != n->dur_mode || st.st_uid != n->dur_uid ||
	    st.st_gid != n->dur_gid) {
		if (fchown(fd, n->dur_uid, n->dur_gid) ||
		    fchmod(fd, n->dur_mode))
			fprintf(stderr, "powercut: inode %ju: attributes: %s\n",
				(uintmax_t)n->ino, strerror(errno));
		pc.attrs_reverted++;
	}
}

/* Current path of each inode in BACKING (not folders), for the rebuild. */
struct where {
	ino_t ino;
	char *path;
};

static int cmp_where(const void *a, const void *b)
{
	ino_t x = ((const struct where *)a)->ino;
	ino_t y = ((const struct where *)b)->ino;

	return x < y ? -1 : x > y;
}

static void free_where(void *p)
{
	free(((struct where *)p)->path);
	free(p);
}

struct scan {
	const char *prefix;
	void **map;
};

static void scan_paths(int dfd, const char *prefix, void **map);

/* scan_paths' step. */
static int scan_entry(int fd, const char *name, const struct stat *st,
		      void *arg)
{
	struct scan *sc = arg;
	struct where *w;
	char *path;

	pc.names_before++;
	if (asprintf(&path, "%s%s%s", sc->prefix, *sc->prefix ? "/" : "",
		     name) < 0)
		return 0;
	if (S_ISDIR(st->st_mode)) {
		int sub = open_subdir(fd, name);

		if (sub >= 0) {
			scan_paths(sub, path, sc->map);
			close(sub);
		}
		free(path);
		return 0;
	}
	w = malloc(sizeof(*w));
	if (!w) {
		free(path);
		return 0;
	}
	w->ino = st->st_ino;
	w->path = path;
	if (*(struct where **)tsearch(w, sc->map, cmp_where) != w)
		free_where(w);
	return 0;
}

static void scan_paths(int dfd, const char *prefix, void **map)
{
	struct scan sc = { prefix, map };

	walk_dir(dfd, scan_entry, &sc);
}

/* Makes a link to the durable file @n as @name in @pfd. */
static void link_file(struct node *n, void *map, int pfd, const char *name)
{
	struct where key = { .ino = n->ino }, **w;
	char gname[32];

	if (n->grave) {
		grave_name(n->ino, gname, sizeof(gname));
		if (!linkat(pc.gfd, gname, pfd, name, 0))
			return;
	}
	w = tfind(&key, &map, cmp_where);
	if (w && !linkat(pc.bfd, (*w)->path, pfd, name, 0))
		return;
	if (n->fd >= 0 && !linkat(n->fd, "", pfd, name, AT_EMPTY_PATH))
		return;
	pc.lost++;
	fprintf(stderr,
		"powercut: durable entry %s (inode %ju) has no inode "
		"left to link\n",
		name, (uintmax_t)n->ino);
}

/* Fills the new folder @pfd with folder @n's durable entries. */
static void build_dir(struct node *n, void *map, int pfd)
{
	size_t i;

	for (i = 0; i < n->ndents; i++) {
		struct node *c = node_find(n->dents[i].ino);
		const char *name = n->dents[i].name;
		int sub;

		if (!c) {
			pc.lost++;
			continue;
		}
		if (c->type != S_IFDIR) {
			link_file(c, map, pfd, name);
			continue;
		}
		/* A folder is placed once, even if renames left it named
		 * twice (or inside itself) in the durable entries. */
		if (c->built) {
			pc.lost++;
			continue;
		}
		c->built = true;
		if (mkdirat(pfd, name, 0700)) {
			pc.lost++;
			continue;
		}
		sub = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (sub < 0) {
			pc.lost++;
			continue;
		}
		build_dir(c, map, sub);
		if (fchown(sub, c->dur_uid, c->dur_gid) ||
		    fchmod(sub, c->dur_mode))
			fprintf(stderr, "powercut: folder %s: %s\n", name,
				strerror(errno));
		close(sub);
	}
}

/* The power cut, before barrier @k takes effect. */
static void do_cut(uint64_t k)
{
	struct node *root = node_find(pc.root);
	void *map = NULL;
	struct vec nodes;
	size_t i;
	int rfd;

	pc.dead = true;
	pc.cut_k = k;

	/* 1. file contents, sizes and attributes */
	nodes = collect(pc.nodes);
	for (i = 0; i < nodes.n; i++) {
		struct node *n = nodes.v[i];

		if (n->type == S_IFREG && n->dirty && n->fd >= 0)
			restore_file(n);
	}
	free(nodes.v);

	/* 2. the durable tree, built aside from hard links */
	scan_paths(pc.bfd, "", &map);
	rfd = openat(pc.sfd, "rebuild", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rfd >= 0) {
		empty_dir(rfd);
		close(rfd);
		unlinkat(pc.sfd, "rebuild", AT_REMOVEDIR);
	}
	if (mkdirat(pc.sfd, "rebuild", 0700) ||
	    (rfd = openat(pc.sfd, "rebuild",
			  O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "powercut: %s/rebuild: %s\n", pc.state,
			strerror(errno));
		goto out;
	}
	if (root)
		build_dir(root, map, rfd);

	/* 3. BACKING becomes the durable tree */
	if (empty_dir(pc.bfd))
		fprintf(stderr, "powercut: cannot empty the backing folder\n");
	{
		struct dent *d;
		struct stat *sts;
		size_t cnt;

		if (!read_entries(rfd, &d, &cnt, &sts)) {
			for (i = 0; i < cnt; i++)
				if (renameat(rfd, d[i].name, pc.bfd, d[i].name))
					fprintf(stderr, "powercut: %s: %s\n",
						d[i].name, strerror(errno));
			free_dents(d, cnt);
			free(sts);
		}
	}
	if (root && (fchown(pc.bfd, root->dur_uid, root->dur_gid) ||
		     fchmod(pc.bfd, root->dur_mode)))
		fprintf(stderr, "powercut: backing folder: %s\n",
			strerror(errno));
	close(rfd);
	unlinkat(pc.sfd, "rebuild", AT_REMOVEDIR);
	pc.names_after = count_entries(pc.bfd);
out:
	tdestroy(map, free_where);
	empty_dir(pc.gfd);
	write_report("cut");
}

/* A barrier arrives: true when the power is cut at it (the caller fails
 * with EIO). */
static bool barrier_cuts(void)
{
	if (pc.cut_at && pc.barriers + 1 == pc.cut_at) {
		do_cut(pc.cut_at);
		return true;
	}
	return false;
}

/* ---- after the cut ---- */

/* True when thread @tid is going: gone, a zombie, exiting (PF_EXITING: a
 * killed program's close() during exit sends FLUSH) or with SIGKILL
 * pending (the kernel turns every fatal signal into SIGKILL in each
 * thread).  /proc reads never touch our mount. */
static bool caller_dying(pid_t tid)
{
	char path[64], buf[4096], state, *p;
	unsigned long long pnd;
	unsigned long flags;
	FILE *f;
	bool dying = false;

	if (tid <= 0)
		return true; /* nobody waits for it */
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)tid);
	f = fopen(path, "re");
	if (!f)
		return true;
	p = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
	fclose(f);
	/* after the command's ")": state ppid pgrp session tty tpgid flags */
	if (!p ||
	    sscanf(p + 1, " %c %*d %*d %*d %*d %*d %lu", &state, &flags) != 2)
		return true;
	if (state == 'Z' || state == 'X' || (flags & 0x4 /* PF_EXITING */))
		return true;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)tid);
	f = fopen(path, "re");
	if (!f)
		return true;
	while (!dying && fgets(buf, sizeof(buf), f)) {
		if ((!strncmp(buf, "SigPnd:", 7) ||
		     !strncmp(buf, "ShdPnd:", 7)) &&
		    sscanf(buf + 7, "%llx", &pnd) == 1 &&
		    (pnd & (1ull << (SIGKILL - 1))))
			dying = true;
	}
	fclose(f);
	return dying;
}

/*
 * The answer to a request after the cut: EIO at once, or with --freeze
 * only once powercut is told to end, its connection is gone or the caller
 * is dying (see the top comment).  Called without the lock, so that the
 * SIGUSR1 thread never waits for a held request.  Polled: libfuse's
 * SIGTERM handler only sets a flag, and the caller's death sends nothing
 * we could read while the one loop thread is here.
 */
static int after_cut(void)
{
	struct fuse_context *ctx = fuse_get_context();
	struct fuse_session *se;
	struct timespec ts = { 0, 20 * 1000 * 1000 };
	struct pollfd pfd;

	if (!pc.freeze || !ctx || !ctx->fuse)
		return -EIO;
	se = fuse_get_session(ctx->fuse);
	pfd.fd = fuse_session_fd(se);
	for (;;) {
		if (fuse_session_exited(se) || caller_dying(ctx->pid))
			return -EIO;
		pfd.events = 0;
		pfd.revents = 0;
		if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLERR | POLLHUP)))
			return -EIO; /* unmounted or aborted */
		nanosleep(&ts, NULL);
	}
}

/* ---- FUSE operations ---- */

#define ENTER()                                         \
	do {                                            \
		pthread_mutex_lock(&pc.lock);           \
		if (pc.dead) {                          \
			pthread_mutex_unlock(&pc.lock); \
			return after_cut();             \
		}                                       \
	} while (0)
#define LEAVE(r)                                \
	do {                                    \
		pthread_mutex_unlock(&pc.lock); \
		return (r);                     \
	} while (0)
/* The request that met the cut (a barrier) fails or is held like any
 * request after it. */
#define LEAVE_CUT()                             \
	do {                                    \
		pthread_mutex_unlock(&pc.lock); \
		return after_cut();             \
	} while (0)

static void *pc_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	cfg->use_ino = 1;
	cfg->readdir_ino = 1;
	cfg->hard_remove = 1;
	cfg->nullpath_ok = 1;
	cfg->direct_io = 1;
	cfg->kernel_cache = 0;
	cfg->entry_timeout = 0;
	cfg->attr_timeout = 0;
	cfg->negative_timeout = 0;
	/* No writeback cache: every write must reach us in order. */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	return NULL;
}

static int pc_getattr(const char *path, struct stat *st,
		      struct fuse_file_info *fi)
{
	int r;

	pthread_mutex_lock(&pc.lock);
	if (pc.dead) {
		/* The one request that works after a cut: stat of the root,
		 * so that mountpoint(1) and cleanup code still see a mount
		 * there.  It reads nothing a program could rely on. */
		if (!path || strcmp(path, "/") || fi)
			LEAVE_CUT();
		LEAVE(fstat(pc.bfd, st) ? -errno : 0);
	}
	if (fi)
		r = fstat(fh_fd(fi), st);
	else
		r = fstatat(pc.bfd, rel(path), st, AT_SYMLINK_NOFOLLOW);
	LEAVE(r ? -errno : 0);
}

static int pc_access(const char *path, int mask)
{
	int r;

	ENTER();
	r = faccessat(pc.bfd, rel(path), mask, 0);
	LEAVE(r ? -errno : 0);
}

static int pc_readlink(const char *path, char *buf, size_t size)
{
	ssize_t n;

	ENTER();
	n = readlinkat(pc.bfd, rel(path), buf, size - 1);
	if (n < 0)
		LEAVE(-errno);
	buf[n] = 0;
	LEAVE(0);
}

static int pc_opendir(const char *path, struct fuse_file_info *fi)
{
	int fd;

	ENTER();
	fd = openat(pc.bfd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		LEAVE(-errno);
	fi->fh = make_fh(fd, 0);
	LEAVE(0);
}

static int pc_readdir(const char *path, void *buf, fuse_fill_dir_t fill,
		      off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags flags)
{
	struct dirent *de;
	DIR *d;
	int fd;

	ENTER();
	fd = openat(fh_fd(fi), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		LEAVE(-errno);
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		LEAVE(-errno);
	}
	while ((de = readdir(d))) {
		struct stat st = { .st_ino = de->d_ino,
				   .st_mode = (mode_t)de->d_type << 12 };

		if (fill(buf, de->d_name, &st, 0, 0))
			break;
	}
	closedir(d);
	LEAVE(0);
}

static int pc_releasedir(const char *path, struct fuse_file_info *fi)
{
	close(fh_fd(fi));
	return 0;
}

static int pc_fsyncdir(const char *path, int datasync,
		       struct fuse_file_info *fi)
{
	int r;

	ENTER();
	if (barrier_cuts())
		LEAVE_CUT();
	r = sync_dir(fh_fd(fi), false);
	pc.barriers++;
	LEAVE(r);
}

/* Chowns a new entry to the caller, as a kernel file system would. */
static void own(const char *path)
{
	struct fuse_context *ctx = fuse_get_context();

	if (ctx && (ctx->uid != geteuid() || ctx->gid != getegid()))
		fchownat(pc.bfd, path, ctx->uid, ctx->gid, AT_SYMLINK_NOFOLLOW);
}

static int pc_mkdir(const char *path, mode_t mode)
{
	ENTER();
	if (mkdirat(pc.bfd, rel(path), mode))
		LEAVE(-errno);
	own(rel(path));
	LEAVE(0);
}

static int pc_symlink(const char *target, const char *path)
{
	ENTER();
	if (symlinkat(target, pc.bfd, rel(path)))
		LEAVE(-errno);
	own(rel(path));
	LEAVE(0);
}

static int pc_link(const char *from, const char *to)
{
	ENTER();
	if (linkat(pc.bfd, rel(from), pc.bfd, rel(to), 0))
		LEAVE(-errno);
	LEAVE(0);
}

/* A new regular file: durable empty once named. */
static int track_new(int fd)
{
	struct stat st;
	struct node *n;

	if (fstat(fd, &st))
		return -errno;
	n = node_get(&st);
	if (!n)
		return -ENOMEM;
	return begin_change(n, fd, NULL);
}

static int pc_mknod(const char *path, mode_t mode, dev_t dev)
{
	int fd, r;

	ENTER();
	if (!S_ISREG(mode)) {
		if (mknodat(pc.bfd, rel(path), mode, dev))
			LEAVE(-errno);
		own(rel(path));
		LEAVE(0);
	}
	fd = openat(pc.bfd, rel(path), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
		    mode & 07777);
	if (fd < 0)
		LEAVE(-errno);
	own(rel(path));
	r = track_new(fd);
	close(fd);
	LEAVE(r);
}

static int pc_unlink(const char *path)
{
	struct node *n = NULL;
	struct stat st;
	int r;

	ENTER();
	if (fstatat(pc.bfd, rel(path), &st, AT_SYMLINK_NOFOLLOW))
		LEAVE(-errno);
	n = node_find(st.st_ino);
	r = preserve(n, rel(path));
	if (r)
		LEAVE(r);
	if (unlinkat(pc.bfd, rel(path), 0))
		LEAVE(-errno);
	if (n)
		settle(n);
	LEAVE(0);
}

static int pc_rmdir(const char *path)
{
	struct node *n;
	struct stat st;
	bool held;
	int r;

	ENTER();
	if (fstatat(pc.bfd, rel(path), &st, AT_SYMLINK_NOFOLLOW))
		LEAVE(-errno);
	n = node_find(st.st_ino);
	held = n && n->fd >= 0;
	r = preserve(n, rel(path));
	if (r)
		LEAVE(r);
	if (unlinkat(pc.bfd, rel(path), AT_REMOVEDIR)) {
		r = -errno;
		if (n && !held && n->fd >= 0) {
			close(n->fd);
			n->fd = -1;
		}
		LEAVE(r);
	}
	if (n && !n->nd)
		dir_drop(n);
	LEAVE(0);
}

static int pc_rename(const char *from, const char *to, unsigned int flags)
{
	struct node *n = NULL;
	struct stat st, sst;
	bool held = false;
	int r;

	ENTER();
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		LEAVE(-EINVAL);
	if (flags & RENAME_EXCHANGE) {
		/* Both inodes keep a name: nothing to preserve. */
		if (renameat2(pc.bfd, rel(from), pc.bfd, rel(to), flags))
			LEAVE(-errno);
		LEAVE(0);
	}
	if (fstatat(pc.bfd, rel(from), &sst, AT_SYMLINK_NOFOLLOW))
		LEAVE(-errno);
	if (!fstatat(pc.bfd, rel(to), &st, AT_SYMLINK_NOFOLLOW) &&
	    st.st_ino != sst.st_ino && !(flags & RENAME_NOREPLACE)) {
		n = node_find(st.st_ino);
		held = n && n->fd >= 0;
		r = preserve(n, rel(to));
		if (r)
			LEAVE(r);
	}
	if (renameat2(pc.bfd, rel(from), pc.bfd, rel(to), flags)) {
		r = -errno;
		if (n && n->type == S_IFDIR && !held && n->fd >= 0) {
			close(n->fd);
			n->fd = -1;
		}
		LEAVE(r);
	}
	if (n) {
		if (n->type == S_IFDIR && !n->nd)
			dir_drop(n);
		else
			settle(n);
	}
	LEAVE(0);
}

/* An attribute change of @path (or @fi) is about to happen: a regular
 * file's durable attributes are saved first.  Under the lock. */
static int begin_attr_change(const char *path, struct fuse_file_info *fi)
{
	struct stat st;
	struct node *n;

	if (fi ? fstat(fh_fd(fi), &st)
	       : fstatat(pc.bfd, rel(path), &st, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (!S_ISREG(st.st_mode))
		return 0;
	n = node_get(&st);
	if (!n)
		return -ENOMEM;
	return begin_change(n, fi ? fh_fd(fi) : -1, rel(path));
}

static int pc_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	int r;

	ENTER();
	r = begin_attr_change(path, fi);
	if (r)
		LEAVE(r);
	r = fi ? fchmod(fh_fd(fi), mode) : fchmodat(pc.bfd, rel(path), mode, 0);
	LEAVE(r ? -errno : 0);
}

static int pc_chown(const char *path, uid_t uid, gid_t gid,
		    struct fuse_file_info *fi)
{
	int r;

	ENTER();
	r = begin_attr_change(path, fi);
	if (r)
		LEAVE(r);
	r = fi ? fchown(fh_fd(fi), uid, gid)
	       : fchownat(pc.bfd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW);
	LEAVE(r ? -errno : 0);
}

/* Truncates the file @fd (or @path when @fd is -1) to @size, saving what
 * a shrink takes. */
static int do_truncate(int fd, const char *path, off_t size)
{
	struct stat st;
	struct node *n;
	off_t lim;
	int r;

	r = fd >= 0 ? fstat(fd, &st)
		    : fstatat(pc.bfd, path, &st, AT_SYMLINK_NOFOLLOW);
	if (r)
		return -errno;
	if (S_ISDIR(st.st_mode))
		return -EISDIR;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	n = node_get(&st);
	if (!n)
		return -ENOMEM;
	r = begin_change(n, fd, path);
	if (r)
		return r;
	lim = st.st_size < n->dur_size ? st.st_size : n->dur_size;
	if (size < lim) {
		r = save_range(n, size, lim);
		if (r)
			return r;
	}
	return ftruncate(fd >= 0 ? fd : n->fd, size) ? -errno : 0;
}

static int pc_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	int r;

	ENTER();
	r = do_truncate(fi ? fh_fd(fi) : -1, rel(path), size);
	LEAVE(r);
}

static int pc_utimens(const char *path, const struct timespec tv[2],
		      struct fuse_file_info *fi)
{
	int r;

	ENTER();
	r = fi ? futimens(fh_fd(fi), tv)
	       : utimensat(pc.bfd, rel(path), tv, AT_SYMLINK_NOFOLLOW);
	LEAVE(r ? -errno : 0);
}

/* The backing open flags for a client's: no O_DIRECT (our own page copies
 * need no alignment) and no O_SYNC (the model, not the disk, is what
 * counts); O_TRUNC is done by us, to save what it drops. */
static int backing_flags(int flags)
{
	return (flags & ~(O_TRUNC | O_DIRECT | O_SYNC | O_DSYNC | O_CREAT |
			  O_EXCL | O_NOCTTY)) |
	       O_CLOEXEC;
}

static int pc_open(const char *path, struct fuse_file_info *fi)
{
	int fd, r;

	ENTER();
	fd = openat(pc.bfd, rel(path), backing_flags(fi->flags) | O_NOFOLLOW);
	if (fd < 0)
		LEAVE(-errno);
	if ((fi->flags & O_TRUNC) && (fi->flags & O_ACCMODE) != O_RDONLY) {
		r = do_truncate(fd, NULL, 0);
		if (r) {
			close(fd);
			LEAVE(r);
		}
	}
	fi->fh = make_fh(fd, fi->flags);
	fi->direct_io = 1;
	fi->keep_cache = 0;
	LEAVE(0);
}

static int pc_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	int fd, r;

	ENTER();
	fd = openat(pc.bfd, rel(path),
		    backing_flags(fi->flags) | O_CREAT | O_EXCL | O_NOFOLLOW,
		    mode & 07777);
	if (fd >= 0) {
		own(rel(path));
		r = track_new(fd);
		if (r) {
			close(fd);
			LEAVE(r);
		}
	} else if (errno == EEXIST && !(fi->flags & O_EXCL)) {
		/* It appeared since the kernel looked: a plain open. */
		pthread_mutex_unlock(&pc.lock);
		return pc_open(path, fi);
	} else {
		LEAVE(-errno);
	}
	fi->fh = make_fh(fd, fi->flags);
	fi->direct_io = 1;
	fi->keep_cache = 0;
	LEAVE(0);
}

static int pc_read(const char *path, char *buf, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	size_t got = 0;

	ENTER();
	while (got < size) {
		ssize_t n = pread(fh_fd(fi), buf + got, size - got,
				  off + (off_t)got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			LEAVE(got ? (int)got : -errno);
		if (n == 0)
			break;
		got += (size_t)n;
	}
	LEAVE((int)got);
}

static int pc_write(const char *path, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	int fd = fh_fd(fi), flags = fh_flags(fi), r;
	bool sync = flags & (O_SYNC | O_DSYNC);
	struct stat st;
	struct node *n;
	off_t woff = off;
	ssize_t w;

	ENTER();
	if (sync && barrier_cuts())
		LEAVE_CUT();
	if (fstat(fd, &st))
		LEAVE(-errno);
	n = node_get(&st);
	if (!n)
		LEAVE(-ENOMEM);
	r = begin_change(n, fd, NULL);
	if (r)
		LEAVE(r);
	if (flags & O_APPEND)
		woff = st.st_size; /* where pwrite on O_APPEND writes */
	r = save_range(n, woff, woff + (off_t)size);
	if (r)
		LEAVE(r);
	w = pwrite(fd, buf, size, off);
	if (w < 0)
		LEAVE(-errno);
	if (sync) {
		pc.barriers++;
		commit(n);
	}
	LEAVE((int)w);
}

static int pc_fallocate(const char *path, int mode, off_t off, off_t len,
			struct fuse_file_info *fi)
{
	int fd = fh_fd(fi), r;
	struct stat st;
	struct node *n;

	ENTER();
	if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE |
		     FALLOC_FL_ZERO_RANGE))
		LEAVE(-EOPNOTSUPP);
	if (fstat(fd, &st))
		LEAVE(-errno);
	n = node_get(&st);
	if (!n)
		LEAVE(-ENOMEM);
	r = begin_change(n, fd, NULL);
	if (r)
		LEAVE(r);
	/* Plain allocation changes no byte; punching and zeroing do (pages
	 * past EOF hold nothing durable that is not saved already). */
	if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
		off_t end = off + len < st.st_size ? off + len : st.st_size;

		r = save_range(n, off, end);
		if (r)
			LEAVE(r);
	}
	r = fallocate(fd, mode, off, len);
	LEAVE(r ? -errno : 0);
}

static off_t pc_lseek(const char *path, off_t off, int whence,
		      struct fuse_file_info *fi)
{
	off_t r;

	ENTER();
	r = lseek(fh_fd(fi), off, whence);
	LEAVE(r < 0 ? -errno : r);
}

static int pc_flush(const char *path, struct fuse_file_info *fi)
{
	ENTER();
	LEAVE(0);
}

static int pc_release(const char *path, struct fuse_file_info *fi)
{
	close(fh_fd(fi));
	return 0;
}

static int pc_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	struct stat st;
	struct node *n;

	ENTER();
	if (barrier_cuts())
		LEAVE_CUT();
	pc.barriers++;
	if (fi && !fstat(fh_fd(fi), &st)) {
		n = node_find(st.st_ino);
		if (n && n->dirty)
			commit(n);
	}
	LEAVE(0);
}

static int pc_statfs(const char *path, struct statvfs *sv)
{
	ENTER();
	LEAVE(fstatvfs(pc.bfd, sv) ? -errno : 0);
}

static const struct fuse_operations pc_ops = {
	.init = pc_init,
	.getattr = pc_getattr,
	.access = pc_access,
	.readlink = pc_readlink,
	.opendir = pc_opendir,
	.readdir = pc_readdir,
	.releasedir = pc_releasedir,
	.fsyncdir = pc_fsyncdir,
	.mkdir = pc_mkdir,
	.symlink = pc_symlink,
	.link = pc_link,
	.mknod = pc_mknod,
	.unlink = pc_unlink,
	.rmdir = pc_rmdir,
	.rename = pc_rename,
	.chmod = pc_chmod,
	.chown = pc_chown,
	.truncate = pc_truncate,
	.utimens = pc_utimens,
	.open = pc_open,
	.create = pc_create,
	.read = pc_read,
	.write = pc_write,
	.fallocate = pc_fallocate,
	.lseek = pc_lseek,
	.flush = pc_flush,
	.release = pc_release,
	.fsync = pc_fsync,
	.statfs = pc_statfs,
};

/* ---- setup ---- */

/* SIGUSR1 cuts the power; blocked everywhere, taken here. */
static void *cut_thread(void *arg)
{
	sigset_t *set = arg;
	int sig;

	for (;;) {
		if (sigwait(set, &sig))
			continue;
		pthread_mutex_lock(&pc.lock);
		if (!pc.dead && !pc.finished)
			do_cut(pc.barriers + 1);
		pthread_mutex_unlock(&pc.lock);
	}
	return NULL;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(s, &end, 10);
	return errno || end == s || *end || *s == '-' ? -EINVAL : 0;
}

/* True when path @a is @b or inside it. */
static bool inside(const char *a, const char *b)
{
	size_t n = strlen(b);

	if (n == 1 && b[0] == '/')
		return true;
	return !strncmp(a, b, n) && (a[n] == '/' || !a[n]);
}

/* The absolute path of @path, which may not exist yet (its folder must). */
static char *resolve(const char *path)
{
	char *dup1 = strdup(path), *slash, *dir, *out = NULL;
	const char *base;

	if (!dup1)
		return NULL;
	out = realpath(path, NULL);
	if (out || errno != ENOENT) {
		free(dup1);
		return out;
	}
	while ((slash = strrchr(dup1, '/')) && slash != dup1 && !slash[1])
		*slash = 0; /* trailing slashes */
	slash = strrchr(dup1, '/');
	if (slash) {
		*slash = 0;
		base = slash + 1;
		dir = realpath(slash == dup1 ? "/" : dup1, NULL);
	} else {
		base = dup1;
		dir = realpath(".", NULL);
	}
	if (dir && *base &&
	    asprintf(&out, "%s/%s", strcmp(dir, "/") ? dir : "", base) < 0)
		out = NULL;
	free(dir);
	free(dup1);
	return out;
}

/* Clears what a killed powercut may have left in the state folder. */
static int open_state(void)
{
	int fd;

	fd = openat(pc.sfd, "grave", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		empty_dir(fd);
		close(fd);
		unlinkat(pc.sfd, "grave", AT_REMOVEDIR);
	}
	fd = openat(pc.sfd, "rebuild", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		empty_dir(fd);
		close(fd);
		unlinkat(pc.sfd, "rebuild", AT_REMOVEDIR);
	}
	if (mkdirat(pc.sfd, "grave", 0700))
		return -errno;
	pc.gfd = openat(pc.sfd, "grave", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return pc.gfd < 0 ? -errno : 0;
}

static void close_state(void)
{
	if (pc.gfd >= 0) {
		empty_dir(pc.gfd);
		close(pc.gfd);
		pc.gfd = -1;
	}
	unlinkat(pc.sfd, "grave", AT_REMOVEDIR);
	unlinkat(pc.sfd, "lock", 0);
	if (pc.lfd >= 0)
		close(pc.lfd);
	pc.lfd = -1;
	close(pc.sfd);
	pc.sfd = -1;
	/* Only when empty: a --state folder may hold other things. */
	rmdir(pc.state);
}

int main(int argc, char **argv)
{
	char opts[] = "auto_unmount,allow_other,fsname=powercut,"
		      "subtype=powercut";
	char *fargv[] = { argv[0], "-o", opts, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	const char *backing = NULL, *mnt = NULL, *report = NULL;
	const char *state_opt = NULL;
	char *absmnt = NULL, *absb = NULL, *abss = NULL;
	struct stat bst, sst;
	struct fuse_session *se;
	struct fuse *f = NULL;
	bool foreground = false, locked = false;
	static sigset_t set;
	struct rlimit rl;
	pthread_t th;
	int i, ret = 2;

	/* Before anything can send it: a SIGUSR1 that arrives early must
	 * wait for the cut thread, not kill us. */
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-f") || !strcmp(a, "--foreground")) {
			foreground = true;
		} else if (!strcmp(a, "--cut-at") && i + 1 < argc) {
			if (parse_u64(argv[++i], &pc.cut_at) || !pc.cut_at) {
				fprintf(stderr, "powercut: bad --cut-at '%s'\n",
					argv[i]);
				return 2;
			}
		} else if (!strcmp(a, "--torn") && i + 1 < argc) {
			if (parse_u64(argv[++i], &pc.seed)) {
				fprintf(stderr, "powercut: bad --torn '%s'\n",
					argv[i]);
				return 2;
			}
			pc.torn = true;
		} else if (!strcmp(a, "--freeze")) {
			pc.freeze = true;
		} else if (!strcmp(a, "--report") && i + 1 < argc) {
			report = argv[++i];
		} else if (!strcmp(a, "--state") && i + 1 < argc) {
			state_opt = argv[++i];
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(usage, stdout);
			return 0;
		} else if (a[0] == '-' || (backing && mnt)) {
			fprintf(stderr,
				"powercut: bad argument '%s' (usage: "
				"powercut [-f] [--cut-at N] [--torn "
				"SEED] [--freeze] [--report FILE] [--state DIR] "
				"BACKING MOUNTPOINT)\n",
				a);
			return 2;
		} else if (!backing) {
			backing = a;
		} else {
			mnt = a;
		}
	}
	if (!backing || !mnt) {
		fprintf(stderr,
			"powercut: need BACKING and MOUNTPOINT (usage: "
			"powercut [-f] [--cut-at N] [--torn SEED] "
			"[--freeze] [--report FILE] [--state DIR] BACKING "
			"MOUNTPOINT)\n");
		return 2;
	}
	umask(0); /* modes reach the backing folder as the caller gave them */
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	absb = realpath(backing, NULL);
	if (!absb || stat(absb, &bst)) {
		fprintf(stderr, "powercut: %s: %s\n", backing, strerror(errno));
		goto out;
	}
	if (!S_ISDIR(bst.st_mode)) {
		fprintf(stderr, "powercut: %s: not a directory\n", backing);
		goto out;
	}
	absmnt = realpath(mnt, NULL);
	if (!absmnt) {
		fprintf(stderr, "powercut: %s: %s\n", mnt, strerror(errno));
		goto out;
	}
	if (state_opt) {
		pc.state = strdup(state_opt);
	} else if (asprintf(&pc.state, "%s.powercut", absb) < 0) {
		pc.state = NULL;
	}
	if (!pc.state)
		goto out;
	abss = resolve(pc.state);
	if (!abss) {
		fprintf(stderr, "powercut: state folder %s: %s\n", pc.state,
			strerror(errno));
		goto out;
	}
	if (inside(abss, absb) || inside(absb, abss)) {
		fprintf(stderr,
			"powercut: state folder %s and %s must not "
			"contain each other\n",
			pc.state, backing);
		goto out;
	}
	/* Our own walks of BACKING must never enter the mount: its requests
	 * would wait for the lock the walk holds. */
	if ((inside(absmnt, absb) && strcmp(absmnt, absb)) ||
	    inside(absmnt, abss)) {
		fprintf(stderr, "powercut: mountpoint %s is inside %s\n", mnt,
			inside(absmnt, abss) ? pc.state : backing);
		goto out;
	}
	if (mkdir(abss, 0700) && errno != EEXIST) {
		fprintf(stderr, "powercut: state folder %s: %s\n", pc.state,
			strerror(errno));
		goto out;
	}
	if (stat(abss, &sst) || !S_ISDIR(sst.st_mode)) {
		fprintf(stderr, "powercut: state folder %s: %s\n", pc.state,
			errno ? strerror(errno) : "not a directory");
		goto out;
	}
	if (sst.st_dev != bst.st_dev) {
		fprintf(stderr,
			"powercut: state folder %s is not on the file "
			"system of %s (hard links need one)\n",
			pc.state, backing);
		rmdir(abss);
		goto out;
	}
	pc.dev = bst.st_dev;
	pc.root = bst.st_ino;
	pc.bfd = open(absb, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	pc.sfd = open(abss, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pc.bfd < 0 || pc.sfd < 0) {
		fprintf(stderr, "powercut: %s: %s\n",
			pc.bfd < 0 ? backing : pc.state, strerror(errno));
		goto out;
	}
	pc.lfd = openat(pc.sfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (pc.lfd < 0 || flock(pc.lfd, LOCK_EX | LOCK_NB) ||
	    flock(pc.bfd, LOCK_EX | LOCK_NB)) {
		fprintf(stderr, "powercut: %s: %s\n", backing,
			errno == EWOULDBLOCK
				? "already used by another powercut"
				: strerror(errno));
		if (pc.lfd >= 0)
			close(pc.lfd);
		pc.lfd = -1;
		goto out;
	}
	locked = true;
	if (open_state()) {
		fprintf(stderr, "powercut: state folder %s: %s\n", pc.state,
			strerror(errno));
		goto out;
	}
	if (report) {
		char *dup1 = strdup(report), *slash;

		if (!dup1)
			goto out;
		slash = strrchr(dup1, '/');
		if (slash) {
			*slash = 0;
			pc.rdfd = open(*dup1 ? dup1 : "/",
				       O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			pc.rname = report + (slash - dup1) + 1;
		} else {
			pc.rdfd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			pc.rname = report;
		}
		free(dup1);
		if (pc.rdfd < 0 || !*pc.rname) {
			fprintf(stderr, "powercut: report %s: %s\n", report,
				pc.rdfd < 0 ? strerror(errno) : "not a file");
			goto out;
		}
	}
	/* What BACKING holds now is durable. */
	if (sync_dir(pc.bfd, true)) {
		fprintf(stderr, "powercut: %s: cannot read it all\n", backing);
		goto out;
	}
	node_find(pc.root)->nd = 1; /* the root is named by the mount */

	ret = 1;
	f = fuse_new(&args, &pc_ops, sizeof(pc_ops), NULL);
	if (!f) {
		fprintf(stderr, "powercut: cannot set up FUSE\n");
		goto out;
	}
	if (fuse_mount(f, absmnt)) {
		fprintf(stderr, "powercut: %s: cannot mount\n", mnt);
		goto out;
	}
	se = fuse_get_session(f);
	if (fuse_daemonize(foreground) || fuse_set_signal_handlers(se)) {
		fuse_unmount(f);
		goto out;
	}
	/* After the fork of fuse_daemonize: threads do not survive it. */
	if (pthread_create(&th, NULL, cut_thread, &set)) {
		fprintf(stderr, "powercut: cannot start the cut thread\n");
		fuse_remove_signal_handlers(se);
		fuse_unmount(f);
		goto out;
	}
	pthread_detach(th);
	write_report("mounted");
	ret = fuse_loop(f) ? 1 : 0;
	fuse_remove_signal_handlers(se);
	fuse_unmount(f);
	pthread_mutex_lock(&pc.lock);
	pc.finished = true;
	close_state();
	locked = false;
	write_report(pc.dead ? "cut-unmounted" : "unmounted");
	pthread_mutex_unlock(&pc.lock);
out:
	if (locked)
		close_state();
	if (f)
		fuse_destroy(f);
	fuse_opt_free_args(&args);
	free(absmnt);
	free(absb);
	free(abss);
	return ret;
}
