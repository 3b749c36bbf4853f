/* SPDX-License-Identifier: MIT */
/*
 * lock.c - image locks: hvresync's own and qemu's, taken together.
 *
 * Here, in the format library, because every open for writing (the
 * writer, the log replay, the merge) is here: nothing above can forget it.
 *
 * qemu's file-posix driver (block/file-posix.c, raw_apply_lock_bytes and
 * raw_check_lock_bytes) marks an image with shared open-file-description
 * byte-range locks: byte 100 + P while it holds permission P, byte
 * 200 + P while it does not let others have P, where P is the bit index
 * of BLK_PERM_CONSISTENT_READ (0), WRITE (1), WRITE_UNCHANGED (2) or
 * RESIZE (3).  It takes its bytes first and then tests, with F_OFD_GETLK
 * for an exclusive lock, that nobody else holds 200 + P for a P it holds
 * or 100 + P for a P it does not share.  We do the same:
 *   - a reader holds CONSISTENT_READ and shares everything, so it never
 *     stands in a VM's way;
 *   - a writer holds CONSISTENT_READ, WRITE and RESIZE and shares neither
 *     WRITE nor RESIZE: it is refused while anyone else writes the image
 *     (or refuses to let it be written), and qemu-io, qemu-img and a VM
 *     cannot open it for writing while it holds them.
 * A writer also holds hvresync's own lock, an exclusive flock(2); views
 * hold it shared on what they read (vhdx_flock()), so no view reads an
 * image hvresync writes.
 *
 * The locks live on a descriptor of their own, one per file and process,
 * counted: OFD locks and flock(2) conflict between two descriptors of one
 * process too, and a session that holds its recovery image must still be
 * able to open it (through a child, or to merge into it).  Two images
 * open for writing at once on one file are refused all the same.
 *
 * Locks are only ever given up by closing that descriptor, when the last
 * handle goes: after a fork (the background mount) parent and child share
 * it, and an explicit unlock by one would drop the other's locks.
 *
 * A refusal names the holder where /proc tells it: OFD locks show pid -1
 * in /proc/locks, so every process's /proc/PID/fdinfo is searched for the
 * descriptor that holds the lock.  Filesystems without the locks (the
 * calls fail with anything but a conflict) are not held up, as qemu's
 * "locking=auto" does.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "internal.h"

/* qemu's lock bytes and permission bits (include/block/block-common.h). */
#define QEMU_PERM_BASE 100
#define QEMU_SHARED_BASE 200
#define QEMU_PERM_CONSISTENT_READ 0
#define QEMU_PERM_WRITE 1
#define QEMU_PERM_RESIZE 3
#define QEMU_PERMS 4

#define BIT(p) (1u << (p))
#define READER_PERM BIT(QEMU_PERM_CONSISTENT_READ)
#define WRITER_PERM (READER_PERM | BIT(QEMU_PERM_WRITE) | BIT(QEMU_PERM_RESIZE))
#define WRITER_UNSHARE (BIT(QEMU_PERM_WRITE) | BIT(QEMU_PERM_RESIZE))

/* One file's locks in this process. */
struct lock_file {
	struct lock_file *next;
	dev_t dev;
	ino_t ino;
	int fd;		  /* holds the locks; -1: not lockable here */
	unsigned readers; /* handles of each mode; once a writer's, the */
	unsigned writers; /* locks stay so until the last handle goes */
	unsigned images;  /* images open for writing under it */
};

struct vhdx_lock {
	struct lock_file *f;
	enum vhdx_lock_mode mode;
	bool image; /* counted in f->images */
};

static pthread_mutex_t files_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lock_file *files;

int vhdx_flock(int fd, bool exclusive)
{
	if (flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0)
		return 0;
	return errno == EWOULDBLOCK ? -EBUSY : 0;
}

/* --- qemu's bytes ------------------------------------------------------ */

/* 0, -EBUSY (someone holds it exclusively), or another -errno. */
static int byte_lock(int fd, int off, short type)
{
	struct flock fl = {
		.l_type = type,
		.l_whence = SEEK_SET,
		.l_start = off,
		.l_len = 1,
	};

	if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
		return 0;
	return errno == EAGAIN || errno == EACCES ? -EBUSY : -errno;
}

/* Does another descriptor hold byte OFF? */
static bool byte_taken(int fd, int off)
{
	struct flock fl = {
		.l_type = F_WRLCK,
		.l_whence = SEEK_SET,
		.l_start = off,
		.l_len = 1,
	};

	return fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
}

static void bytes_release(int fd, unsigned perm, unsigned unshare)
{
	int p;

	for (p = 0; p < QEMU_PERMS; p++) {
		if (perm & BIT(p))
			byte_lock(fd, QEMU_PERM_BASE + p, F_UNLCK);
		if (unshare & BIT(p))
			byte_lock(fd, QEMU_SHARED_BASE + p, F_UNLCK);
	}
}

/*
 * Take the bytes for PERM and UNSHARE, then check nobody else is in the
 * way.  0; -EBUSY with *byte the contended byte (the new bytes are
 * released again); -ENOLCK when the filesystem has no OFD locks.
 */
static int bytes_take(int fd, unsigned perm, unsigned unshare, int *byte)
{
	int p, ret = 0;

	*byte = -1;
	for (p = 0; p < QEMU_PERMS && !ret; p++) {
		if (perm & BIT(p))
			ret = byte_lock(fd, QEMU_PERM_BASE + p, F_RDLCK);
		if (!ret && (unshare & BIT(p)))
			ret = byte_lock(fd, QEMU_SHARED_BASE + p, F_RDLCK);
		if (ret == -EBUSY)
			*byte = QEMU_PERM_BASE + p;
	}
	/* Someone writing first: it names the holder best. */
	for (p = 0; p < QEMU_PERMS && !ret; p++) {
		if ((unshare & BIT(p)) && byte_taken(fd, QEMU_PERM_BASE + p))
			*byte = QEMU_PERM_BASE + p;
		else if ((perm & BIT(p)) &&
			 byte_taken(fd, QEMU_SHARED_BASE + p))
			*byte = QEMU_SHARED_BASE + p;
		if (*byte >= 0)
			ret = -EBUSY;
	}
	if (ret == -EBUSY)
		bytes_release(fd, perm, unshare);
	else if (ret)
		ret = -ENOLCK;
	return ret;
}

/* --- who holds it ------------------------------------------------------ */

/* Does a "lock:" line of fdinfo describe a lock of ours to look for? */
static bool lock_line_matches(const char *line, dev_t dev, ino_t ino, int byte)
{
	char kind[16], start[24], end[24];
	unsigned maj, min;
	unsigned long long i;
	int pid;

	if (sscanf(line, "lock: %*d: %15s %*s %*s %d %x:%x:%llu %23s %23s",
		   kind, &pid, &maj, &min, &i, start, end) != 7)
		return false;
	if (maj != major(dev) || min != minor(dev) ||
	    i != (unsigned long long)ino)
		return false;
	if (byte < 0)
		return !strcmp(kind, "FLOCK");
	if (strcmp(kind, "OFDLCK") && strcmp(kind, "POSIX"))
		return false;
	return strtoll(start, NULL, 10) <= byte &&
	       (!strcmp(end, "EOF") || strtoll(end, NULL, 10) >= byte);
}

/* Does /proc/PID/fdinfo/FD show such a lock? */
static bool fd_holds(const char *pid, const char *fd, dev_t dev, ino_t ino,
		     int byte)
{
	char path[600], line[256];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%s/fdinfo/%s", pid, fd);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = !strncmp(line, "lock:", 5) &&
			lock_line_matches(line, dev, ino, byte);
	fclose(f);
	return found;
}

static bool pid_holds(const char *pid, int self_fd, dev_t dev, ino_t ino,
		      int byte)
{
	char path[320];
	struct dirent *de;
	bool found = false;
	bool self = atoi(pid) == getpid();
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%s/fdinfo", pid);
	d = opendir(path);
	if (!d)
		return false;
	while (!found && (de = readdir(d))) {
		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		if (self && atoi(de->d_name) == self_fd)
			continue;
		found = fd_holds(pid, de->d_name, dev, ino, byte);
	}
	closedir(d);
	return found;
}

/* "qemu-io (pid 123)" for the process that holds the lock, or "". */
static void find_holder(int self_fd, dev_t dev, ino_t ino, int byte, char *out,
			size_t len)
{
	char path[320], comm[64] = "";
	struct dirent *de;
	DIR *d;
	FILE *f;

	out[0] = '\0';
	d = opendir("/proc");
	if (!d)
		return;
	while ((de = readdir(d))) {
		if (!isdigit((unsigned char)de->d_name[0]) ||
		    !pid_holds(de->d_name, self_fd, dev, ino, byte))
			continue;
		snprintf(path, sizeof(path), "/proc/%s/comm", de->d_name);
		f = fopen(path, "re");
		if (f) {
			if (fgets(comm, sizeof(comm), f))
				comm[strcspn(comm, "\n")] = '\0';
			fclose(f);
		}
		snprintf(out, len, "%s (pid %s)", comm[0] ? comm : "a process",
			 de->d_name);
		break;
	}
	closedir(d);
}

static int refuse(struct vhdx_error *err, const char *path,
		  const struct lock_file *f, int byte)
{
	char who[400];
	const char *what;

	find_holder(f->fd, f->dev, f->ino, byte, who, sizeof(who));
	if (byte < 0) /* hvresync's own lock: a view or a session */
		return vhdx_fail(
			err, -EBUSY, path,
			"in use by another hvresync view or session%s%s; "
			"a writer needs the image to itself",
			who[0] ? ", " : "", who);
	if (byte == QEMU_SHARED_BASE + QEMU_PERM_CONSISTENT_READ)
		what = "which lets nobody else read it";
	else if (byte >= QEMU_SHARED_BASE)
		what = "which lets nobody else write it";
	else
		what = "which has it open for writing";
	return vhdx_fail(err, -EBUSY, path, "in use by %s, %s; left untouched",
			 who[0] ? who : "another program", what);
}

/* --- the handles --------------------------------------------------------- */

static struct lock_file *file_get(const struct stat *st, const char *path)
{
	struct lock_file *f;

	for (f = files; f; f = f->next)
		if (f->dev == st->st_dev && f->ino == st->st_ino)
			return f;
	f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->dev = st->st_dev;
	f->ino = st->st_ino;
	f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	f->next = files;
	files = f;
	return f;
}

static void file_put(struct lock_file *f)
{
	struct lock_file **pp;

	if (f->readers || f->writers)
		return;
	for (pp = &files; *pp; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			break;
		}
	}
	if (f->fd >= 0)
		close(f->fd); /* releases its locks, unless a child has it */
	free(f);
}

/* Make F a writer's: hvresync's exclusive lock, then qemu's bytes. */
static int file_upgrade(struct lock_file *f, const char *path,
			struct vhdx_error *err)
{
	int ret, byte;

	if (f->writers || f->fd < 0)
		return 0;
	if (vhdx_flock(f->fd, true) == -EBUSY)
		return refuse(err, path, f, -1);
	ret = bytes_take(f->fd, WRITER_PERM, WRITER_UNSHARE, &byte);
	if (ret == -EBUSY) {
		flock(f->fd, LOCK_UN);
		if (f->readers) /* released with the rest: the readers' own */
			byte_lock(f->fd, QEMU_PERM_BASE, F_RDLCK);
		return refuse(err, path, f, byte);
	}
	return 0;
}

static int lock_take(const char *path, enum vhdx_lock_mode mode, bool image,
		     struct vhdx_lock **out, struct vhdx_error *err)
{
	struct vhdx_lock *lk;
	struct lock_file *f;
	struct stat st;
	int ret = 0, byte;

	*out = NULL;
	if (stat(path, &st))
		return vhdx_fail(err, -errno, path, "cannot open: %s",
				 strerror(errno));
	lk = calloc(1, sizeof(*lk));
	if (!lk)
		return vhdx_fail(err, -ENOMEM, path, "out of memory");
	pthread_mutex_lock(&files_lock);
	f = file_get(&st, path);
	if (!f) {
		ret = vhdx_fail(err, -ENOMEM, path, "out of memory");
	} else if (image && f->images) {
		ret = vhdx_fail(err, -EBUSY, path,
				"already open for writing in this process");
	} else if (mode == VHDX_LOCK_WRITE) {
		ret = file_upgrade(f, path, err);
	} else if (!f->readers && !f->writers && f->fd >= 0) {
		ret = bytes_take(f->fd, READER_PERM, 0, &byte);
		ret = ret == -EBUSY ? refuse(err, path, f, byte) : 0;
	}
	if (ret) {
		if (f)
			file_put(f);
		pthread_mutex_unlock(&files_lock);
		free(lk);
		return ret;
	}
	if (mode == VHDX_LOCK_WRITE)
		f->writers++;
	else
		f->readers++;
	f->images += image;
	pthread_mutex_unlock(&files_lock);
	lk->f = f;
	lk->mode = mode;
	lk->image = image;
	*out = lk;
	return 0;
}

int vhdx_lock(const char *path, enum vhdx_lock_mode mode,
	      struct vhdx_lock **out, struct vhdx_error *err)
{
	return lock_take(path, mode, false, out, err);
}

int vhdx_lock_image(const char *path, bool writable, struct vhdx_lock **out,
		    struct vhdx_error *err)
{
	return lock_take(path, writable ? VHDX_LOCK_WRITE : VHDX_LOCK_READ,
			 writable, out, err);
}

void vhdx_unlock(struct vhdx_lock *lk)
{
	struct lock_file *f;

	if (!lk)
		return;
	f = lk->f;
	pthread_mutex_lock(&files_lock);
	f->images -= lk->image;
	if (lk->mode == VHDX_LOCK_WRITE)
		f->writers--;
	else
		f->readers--;
	file_put(f);
	pthread_mutex_unlock(&files_lock);
	free(lk);
}
