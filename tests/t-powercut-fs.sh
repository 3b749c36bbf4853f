#!/bin/bash
# t-powercut-fs.sh - self-test of the power-cut file system
# (tests/helpers/powercut.c and powercut.sh): it passes everything
# through and a clean unmount keeps it all; a cut keeps exactly what fsync
# and fsyncdir made durable (data, sizes, modes, names, renames, unlinks,
# truncates, holes); --cut-at fails the Nth barrier and everything after
# it; torn mode keeps a seeded mix of old and new pages; --freeze holds
# requests after the cut (killable) until pc_umount ends it; a killed
# powercut leaves no mount; bad arguments get one line and exit 2.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/powercut.sh"

[ -x "$POWERCUT" ] || { fail "$POWERCUT not built"; finish; }
[ -c /dev/fuse ] || skip "/dev/fuse missing"
command -v fusermount3 >/dev/null || skip "fusermount3 not installed"
command -v python3 >/dev/null || skip "python3 not installed"

BK=$SCRATCH/bk
MNT=$SCRATCH/mnt
mkdir -p "$MNT"

# Python helpers for the syscalls: content made from seeds, writes with or
# without fsync, fsync of folders, checks that name what differs.  Python
# starts slowly on a loaded machine, so each section runs it at most three
# times and the cut-point loop not at all.
cat >"$SCRATCH/pcops.py" <<'PY'
import os, random, sys

def data(seed, n):
    return random.Random(seed).randbytes(n)

def put(path, b, mode=0o644):
    with open(path, "wb") as f:
        f.write(b)
    os.chmod(path, mode)

def get(path):
    with open(path, "rb") as f:
        return f.read()

def w(path, off, b, sync=None, flags=0):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    os.pwrite(fd, b, off)
    if sync == "fsync":
        os.fsync(fd)
    elif sync == "fdatasync":
        os.fdatasync(fd)
    os.close(fd)

def fsync(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)

def patch(b, off, new):
    b = bytearray(b)
    if len(b) < off:
        b += bytes(off - len(b))
    b[off:off + len(new)] = new
    return bytes(b)

def expect(path, want):
    if not os.path.exists(path):
        sys.exit("%s: missing" % path)
    got = get(path)
    if got != want:
        diff = next((i for i in range(min(len(got), len(want)))
                     if got[i] != want[i]), min(len(got), len(want)))
        sys.exit("%s: %d bytes, want %d; first difference at %d"
                 % (path, len(got), len(want), diff))

def absent(path):
    if os.path.lexists(path):
        sys.exit("%s: exists" % path)

def mode_is(path, m):
    got = os.stat(path).st_mode & 0o7777
    if got != m:
        sys.exit("%s: mode %o, want %o" % (path, got, m))

def chk(desc, fn, *args):
    """One check: prints ok: or FAIL: (pybatch counts the FAILs)."""
    try:
        if fn(*args) is False:
            raise AssertionError("false")
        print("ok: " + desc)
    except (SystemExit, AssertionError, OSError) as e:
        print("FAIL: %s: %s" % (desc, e))
PY
# py CODE: run CODE with the helpers above (exit status is CODE's).
py() { PYTHONPATH=$SCRATCH python3 -c "from pcops import *
$1"; }
# pybatch CODE: CODE makes chk() calls; its FAIL lines count as failures.
pybatch() {
	local out rc n
	out=$(py "$1" 2>&1)
	rc=$?
	echo "$out"
	n=$(grep -c '^FAIL' <<<"$out")
	_fails=$((_fails + n))
	[ "$rc" -eq 0 ] || fail "python checks ended with status $rc"
}
# fresh: an empty backing folder.
fresh() { rm -rf "$BK" "$BK.powercut"; mkdir -p "$BK"; }
# cut_and_umount: cut, then unmount; both must work.
cut_and_umount() {
	check "pc_cut reports the cut" pc_cut "$MNT"
	check "unmounts after the cut" pc_umount "$MNT"
}

say "pass-through and clean unmount"
fresh
head -c 10000 /dev/urandom >"$SCRATCH/pre"
cp "$SCRATCH/pre" "$BK/pre"
if pc_mount "$BK" "$MNT"; then
	check "the backing's file reads through the mount" cmp -s "$BK/pre" "$MNT/pre"
	mkdir -p "$MNT/d1/d2"
	head -c 300000 /dev/urandom >"$SCRATCH/rand"
	cp "$SCRATCH/rand" "$MNT/d1/d2/r"
	ln -s d1/d2/r "$MNT/sym"
	ln "$MNT/d1/d2/r" "$MNT/hard"
	check "a copied file reads back identically" cmp -s "$SCRATCH/rand" "$MNT/d1/d2/r"
	check "it appears in the backing folder" cmp -s "$SCRATCH/rand" "$BK/d1/d2/r"
	check "a symlink reads back" test "$(readlink "$MNT/sym")" = d1/d2/r
	check "a hard link shares the inode" test "$(stat -c %i "$BK/hard")" = "$(stat -c %i "$BK/d1/d2/r")"
	check "ls of the mount lists the backing's entries" \
		test "$(ls "$MNT" | tr '\n' ' ')" = "d1 hard pre sym "
	printf unsynced | dd of="$MNT/pre" bs=1 seek=5000 conv=notrunc status=none
	{ head -c 5000 "$SCRATCH/pre"; printf unsynced; tail -c +5009 "$SCRATCH/pre"; } >"$SCRATCH/pre.new"
	check "clean unmount" pc_umount "$MNT"
	check "report: cut none" grep -qx 'cut none' "$PC_REPORT"
	check "after a clean unmount the unsynced files stay" cmp -s "$SCRATCH/rand" "$BK/d1/d2/r"
	check "after a clean unmount an unsynced write stays" cmp -s "$SCRATCH/pre.new" "$BK/pre"
	check "the state folder is gone" test ! -e "$BK.powercut"
else
	fail "powercut did not mount"
fi

say "file data: durable at fsync/fdatasync only"
fresh
if py "
for i, n in enumerate([10000, 20000, 30000, 12288, 5000]):
    put('$BK/f%d' % i, data(10 + i, n))
" && pc_mount "$BK" "$MNT"; then
	py "
w('$MNT/f0', 5000, b'0123456789')                 # partial page, unsynced
w('$MNT/f1', 4000, data(99, 5000), 'fsync')       # spans 3 pages, fsync
w('$MNT/f2', 8190, data(98, 9000), 'fdatasync')   # fdatasync counts
w('$MNT/f3', 12288, data(97, 10000))              # grows, unsynced
w('$MNT/f4', 100, b'synced', 'fsync')             # synced, then more
w('$MNT/f4', 4000, data(96, 2000))                # ... unsynced
chk('before the cut the mount shows the new bytes', expect, '$MNT/f0',
    patch(data(10, 10000), 5000, b'0123456789'))
" || fail "writes through the mount failed"
	cut_and_umount
	check "report: mode plain" grep -qx 'mode plain' "$PC_REPORT"
	pybatch "
chk('an unsynced partial-page write is gone', expect, '$BK/f0', data(10, 10000))
chk('an fsynced write spanning pages survives', expect, '$BK/f1',
    patch(data(11, 20000), 4000, data(99, 5000)))
chk('an fdatasynced write survives', expect, '$BK/f2',
    patch(data(12, 30000), 8190, data(98, 9000)))
chk('an unsynced write past the end: size and bytes revert', expect,
    '$BK/f3', data(13, 12288))
chk('synced then unsynced: exactly the synced part stays', expect,
    '$BK/f4', patch(data(14, 5000), 100, b'synced'))
"
else
	fail "setup or mount"
fi

say "names: durable at fsync of their folder only"
fresh
mkdir "$BK/a" "$BK/b"
if pc_mount "$BK" "$MNT"; then
	py "
w('$MNT/a/new', 0, b'data-a', 'fsync')   # file synced, folder not
w('$MNT/b/new', 0, b'data-b', 'fsync')
os.mkdir('$MNT/b/sub')
w('$MNT/b/sub/inner', 0, b'x', 'fsync')  # inside a folder never fsynced
fsync('$MNT/b')                          # names new and sub
w('$MNT/b/new', 6, b'-more')             # unsynced
w('$MNT/b/late', 0, b'late', 'fsync')    # after the fsyncdir
" || fail "operations through the mount failed"
	cut_and_umount
	check "report: names_after counts the durable tree" grep -qx 'names_after 4' "$PC_REPORT"
	pybatch "
chk('a new fsynced file in an unsynced folder is gone', absent, '$BK/a/new')
chk('with fsyncdir it stays, with its synced data only', expect, '$BK/b/new',
    b'data-b')
chk('a new folder named by fsyncdir stays', os.path.isdir, '$BK/b/sub')
chk('... empty: its own entries were never synced', absent, '$BK/b/sub/inner')
chk('a file created after the fsyncdir is gone', absent, '$BK/b/late')
"
fi

say "renames, unlinks, truncates, holes, modes"
fresh
mkdir -p "$BK/r1" "$BK/r2" "$BK/tree/deep" "$BK/s1/dm1" "$BK/s2/dm2" "$BK/dA" "$BK/dB"
echo one >"$BK/s1/dm1/x"
echo two >"$BK/s2/dm2/y"
if py "
put('$BK/r1/t', b'old-1'); put('$BK/r2/t', b'old-2')
put('$BK/gone', data(20, 9000)); put('$BK/shrink', data(21, 20000))
put('$BK/grow', data(22, 5000)); put('$BK/punch', data(23, 40000))
put('$BK/mode', b'm', 0o640); put('$BK/tree/deep/f', data(24, 7000))
put('$BK/zero', data(25, 16384)); put('$BK/trunc0', data(26, 6000))
put('$BK/synced-mode', b's', 0o640)
" && pc_mount "$BK" "$MNT"; then
	py "
import ctypes
w('$MNT/r1/tmp', 0, b'new-1', 'fsync'); os.rename('$MNT/r1/tmp', '$MNT/r1/t')
w('$MNT/r2/tmp', 0, b'new-2', 'fsync'); os.rename('$MNT/r2/tmp', '$MNT/r2/t')
fsync('$MNT/r2')
os.unlink('$MNT/gone')
os.truncate('$MNT/shrink', 3000)
os.truncate('$MNT/grow', 100000)
fd = os.open('$MNT/punch', os.O_RDWR)
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long,
                           ctypes.c_long]
# FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE over 8192 .. 30000
if libc.fallocate(fd, 3, 8192, 30000 - 8192):
    sys.exit('punch: errno %d' % ctypes.get_errno())
os.close(fd)
chk('the hole reads as zeros before the cut', lambda:
    get('$MNT/punch')[8192:30000] == bytes(30000 - 8192))
os.chmod('$MNT/mode', 0o600)
os.chmod('$MNT/synced-mode', 0o600); fsync('$MNT/synced-mode')
fd = os.open('$MNT/zero', os.O_RDWR); os.posix_fallocate(fd, 0, 65536); os.close(fd)
fd = os.open('$MNT/trunc0', os.O_WRONLY | os.O_TRUNC); os.write(fd, b'short'); os.close(fd)
" || fail "operations through the mount failed"
	rm -r "$MNT/tree"
	mv "$MNT/s1/dm1" "$MNT/dA/moved1"
	mv "$MNT/s2/dm2" "$MNT/dB/moved2" && sync "$MNT/s2" "$MNT/dB"
	cut_and_umount
	check "a folder moved without fsyncdir is back, with its files" \
		test "$(cat "$BK/s1/dm1/x" 2>&1)" = one -a ! -e "$BK/dA/moved1"
	check "a folder moved with fsyncdir of both folders stays moved" \
		test "$(cat "$BK/dB/moved2/y" 2>&1)" = two -a ! -e "$BK/s2/dm2"
	check "the graveyard is gone after the cut" test ! -e "$BK.powercut/grave"
	pybatch "
chk('rename over a durable file, no fsyncdir: old content under the old name',
    expect, '$BK/r1/t', b'old-1')
chk('... and the temporary name is gone', absent, '$BK/r1/tmp')
chk('rename with fsyncdir holds', expect, '$BK/r2/t', b'new-2')
chk('... without the temporary name', absent, '$BK/r2/tmp')
chk('an unlinked durable file comes back whole', expect, '$BK/gone',
    data(20, 9000))
chk('an unsynced shrink reverts', expect, '$BK/shrink', data(21, 20000))
chk('an unsynced grow reverts', expect, '$BK/grow', data(22, 5000))
chk('an unsynced punch hole reverts', expect, '$BK/punch', data(23, 40000))
chk('an unsynced chmod reverts', mode_is, '$BK/mode', 0o640)
chk('an fsynced chmod stays', mode_is, '$BK/synced-mode', 0o600)
chk('an unsynced posix_fallocate leaves size and bytes', expect, '$BK/zero',
    data(25, 16384))
chk('an unsynced O_TRUNC rewrite reverts', expect, '$BK/trunc0',
    data(26, 6000))
chk('rm -r of a durable tree comes back', expect, '$BK/tree/deep/f',
    data(24, 7000))
"
else
	fail "setup or mount"
fi

say "--cut-at: the Nth barrier fails, and everything after it"
# five: five files, each written and fsynced by dd (conv=fsync); prints
# ok or the error per file.
five() {
	local i out=()
	for i in 0 1 2 3 4; do
		if printf "x$i" | dd of="$MNT/f$i" conv=fsync status=none 2>"$SCRATCH/dd.err"; then
			out+=(ok)
		elif grep -q 'Input/output error' "$SCRATCH/dd.err"; then
			out+=(EIO)
		else
			out+=(other)
		fi
	done
	echo "${out[*]}"
}
fresh
if pc_mount "$BK" "$MNT"; then
	got=$(five)
	check "without --cut-at five fsyncs succeed ($got)" test "$got" = "ok ok ok ok ok"
	check "unmount" pc_umount "$MNT"
	check "a run of exactly 5 barriers reports barriers 5" test "$(pc_barriers)" = 5
fi
fresh
if pc_mount "$BK" "$MNT" --cut-at 3; then
	got=$(five)
	check "with --cut-at 3 the 3rd fsync and all later fail: $got" test "$got" = "ok ok EIO EIO EIO"
	check "pc_cut_done after the automatic cut" pc_cut_done
	check "report: cut 3" grep -qx 'cut 3' "$PC_REPORT"
	check "report: barriers 2" test "$(pc_barriers)" = 2
	check "reading through the mount fails after the cut" bash -c "! cat '$MNT/f0' 2>/dev/null"
	check "listing fails after the cut" bash -c "! ls '$MNT' >/dev/null 2>&1"
	check "pc_cut after the cut is a no-op" pc_cut "$MNT"
	check "unmount" pc_umount "$MNT"
	check "report still says cut 3" grep -qx 'cut 3' "$PC_REPORT"
	# f0 and f1 were fsynced, but no fsyncdir ever named them.
	check "fsynced files never named by fsyncdir are gone" test ! -e "$BK/f0"
fi
fresh
if pc_mount "$BK" "$MNT" --cut-at 4; then
	py "
fd = os.open('$MNT/s', os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o644)
os.write(fd, b'one'); os.write(fd, b'two')
os.close(fd)
fsync('$MNT')
try:
    os.write(os.open('$MNT/s', os.O_WRONLY | os.O_SYNC), b'X')
    sys.exit('the 4th barrier (an O_SYNC write) did not fail')
except OSError:
    pass
" || fail "O_DSYNC/O_SYNC writes"
	check "O_DSYNC writes are barriers: cut 4 after 3" grep -qx 'barriers 3' "$PC_REPORT"
	pc_umount "$MNT"
	check "O_DSYNC writes are durable, the cut O_SYNC write is not" \
		test "$(cat "$BK/s")" = onetwo
fi

say "atomic write-and-rename at every cut point"
# The work: write tmp and fsync it, rename it over f, fsync the folder;
# then an unsynced write to f.  f must be old until the folder's fsync
# took effect, new after (in torn mode the last write may stick).
head -c 7000 /dev/urandom >"$SCRATCH/old"
head -c 9000 /dev/urandom >"$SCRATCH/new"
{ printf junk; tail -c +5 "$SCRATCH/new"; } >"$SCRATCH/new+junk"
work() {
	dd if="$SCRATCH/new" of="$MNT/tmp" conv=fsync status=none &&
		mv "$MNT/tmp" "$MNT/f" && sync "$MNT" &&
		printf junk | dd of="$MNT/f" conv=notrunc status=none
}
restore() { fresh; cp "$SCRATCH/old" "$BK/f"; }
restore
if pc_mount "$BK" "$MNT"; then
	work || fail "the work failed without a cut"
	pc_umount "$MNT"
	N=$(pc_barriers)
	check "the work has 2 barriers" test "$N" = 2
	states=0 damaged=0
	for k in $(pc_points "$N"); do
		for mode in plain torn; do
			restore
			opts=(--cut-at "$k")
			[ "$mode" = torn ] && opts+=(--torn "$k")
			pc_mount "$BK" "$MNT" "${opts[@]}" || { damaged=$((damaged + 1)); continue; }
			work 2>/dev/null
			pc_cut_done || pc_cut "$MNT"
			pc_umount "$MNT"
			states=$((states + 1))
			bad=""
			if [ "$k" -le "$N" ]; then
				cmp -s "$SCRATCH/old" "$BK/f" || bad="f is not the old file"
			elif [ "$mode" = plain ]; then
				cmp -s "$SCRATCH/new" "$BK/f" || bad="f is not the new file"
			else
				cmp -s "$SCRATCH/new" "$BK/f" || cmp -s "$SCRATCH/new+junk" "$BK/f" ||
					bad="f is neither new nor new with the last write"
			fi
			[ -e "$BK/tmp" ] && bad="$bad; tmp exists"
			if [ -n "$bad" ]; then
				echo "  k=$k $mode: $bad"
				damaged=$((damaged + 1))
			fi
		done
	done
	check "3 points x 2 modes tried" test "$states" = 6
	pc_summary "$states" "$damaged"
fi

say "torn mode: a seeded mix of old and new pages"
py "
put('$SCRATCH/t.old', data(40, 64 * 4096)); put('$SCRATCH/t.new', data(41, 64 * 4096))
put('$SCRATCH/g.old', data(42, 8192)); put('$SCRATCH/g.new', data(43, 4 * 4096))
"
# torn_run SEED: t (64 pages) rewritten, g grown from 2 to 6 pages, no
# fsync, then the cut; prints t's pages (o old, n new, ? neither) and
# whether g is a valid old or new-size state.
torn_run() {
	fresh
	cp "$SCRATCH/t.old" "$BK/t"
	cp "$SCRATCH/g.old" "$BK/g"
	pc_mount "$BK" "$MNT" --torn "$1" || return 1
	dd if="$SCRATCH/t.new" of="$MNT/t" bs=64K conv=notrunc status=none &&
		dd if="$SCRATCH/g.new" of="$MNT/g" bs=4096 seek=2 conv=notrunc status=none ||
		return 1
	pc_cut "$MNT" && pc_umount "$MNT" || return 1
	cp "$BK/t" "$SCRATCH/t.$1.$2"
	cp "$BK/g" "$SCRATCH/g.$1.$2"
}
classify='
for run in sys.argv[1:]:
    old, new, b = get(S + "/t.old"), get(S + "/t.new"), get(S + "/t." + run)
    assert len(b) == len(old), "t changed size"
    s = "".join("o" if b[i:i+4096] == old[i:i+4096] else
                "n" if b[i:i+4096] == new[i:i+4096] else "?"
                for i in range(0, len(b), 4096))
    g, go, gn = get(S + "/g." + run), get(S + "/g.old"), get(S + "/g.new")
    if len(g) == 8192:
        gs = "old-size:" + ("ok" if g == go else "BAD")
    elif len(g) == 6 * 4096:
        good = g[:8192] == go and all(
            g[i:i+4096] in (gn[i-8192:i-4096], bytes(4096))
            for i in range(8192, 6 * 4096, 4096))
        gs = "new-size:" + ("ok" if good else "BAD")
    else:
        gs = "size-%d:BAD" % len(g)
    print(s, gs)
'
if torn_run 7 a && torn_run 7 b && torn_run 8 a; then
	mapfile -t res < <(PYTHONPATH=$SCRATCH python3 -c "from pcops import *
S = '$SCRATCH'
$classify" 7.a 7.b 8.a)
	r1=${res[0]:-} r2=${res[1]:-} r3=${res[2]:-}
	pages=${r1%% *}
	echo "  seed 7: $r1"
	echo "  seed 8: $r3"
	check "torn: every page holds its old or its new content" test -n "$pages" -a "${pages//[on]/}" = ""
	check "torn: some pages keep new content" test "${pages//o/}" != ""
	check "torn: some pages revert" test "${pages//n/}" != ""
	check "torn: a grown file is old, or new-size with new-or-zero pages" \
		test "${r1##*:}" = ok -a "${r3##*:}" = ok
	check "report: mode torn" grep -qx 'mode torn' "$PC_REPORT"
	check "torn: the same seed gives the same result" test "$r1" = "$r2"
	check "torn: the same seed gives the same bytes" cmp -s "$SCRATCH/t.7.a" "$SCRATCH/t.7.b"
	check "torn: another seed gives another mix" test "${r1%% *}" != "${r3%% *}"
else
	fail "torn runs"
fi

say "random operations against a reference model"
# pcmodel.py does a few hundred random writes, truncates, punches, chmods,
# creates, mkdirs, renames, links, unlinks, rmdirs, fsyncs and fsyncdirs
# through the mount while keeping its own model of what is durable, cuts
# the power (SIGUSR1) and compares the backing folder with the model:
# entries, bytes (torn: each page old or new), modes, hard links.
cat >"$SCRATCH/pcmodel.py" <<'PY'
# Random operations through a powercut mount, checked after a cut against
# a reference model of what fsync and fsyncdir made durable.
import os, random, signal, stat, sys, time

PAGE = 4096

class F:
    def __init__(self, cur=b"", dur=b"", mode=0o644):
        self.cur, self.dur = bytearray(cur), bytes(dur)
        self.mode = self.dmode = mode

class D:
    def __init__(self, entries=None, dur=None):
        self.cur = dict(entries or {})
        self.dur = dict(dur if dur is not None else {})

def main(seed, mnt, bk, pid, report, nops, torn):
    rnd = random.Random(seed)
    root = D()
    # What the backing holds at mount is durable.
    def scan(path, d):
        for name in sorted(os.listdir(path)):
            p = os.path.join(path, name)
            if os.path.isdir(p):
                sub = D()
                scan(p, sub)
                sub.dur = dict(sub.cur)
                d.cur[name] = sub
            else:
                b = open(p, "rb").read()
                d.cur[name] = F(b, b, os.stat(p).st_mode & 0o7777)
        d.dur = dict(d.cur)
    scan(bk, root)

    def walk(d, prefix=""):
        for name, n in d.cur.items():
            p = prefix + "/" + name
            yield p, n, d, name
            if isinstance(n, D):
                yield from walk(n, p)

    def pick(kind):
        c = [x for x in walk(root) if isinstance(x[1], kind)]
        return rnd.choice(c) if c else None

    def pick_dir():
        c = [("", root, None, None)] + [x for x in walk(root) if isinstance(x[1], D)]
        return rnd.choice(c)

    def newname():
        return "n%d" % rnd.randrange(1000)

    log = []
    for i in range(nops):
        op = rnd.choice(["write"] * 6 + ["trunc", "fsync", "fsync", "fsyncdir",
                         "fsyncdir", "create", "mkdir", "rename", "unlink",
                         "link", "rmdir", "chmod", "punch"])
        try:
            if op in ("write", "trunc", "fsync", "unlink", "chmod", "punch"):
                x = pick(F)
                if not x:
                    continue
                p, f, d, name = x
                if op == "write":
                    off = rnd.randrange(0, max(1, len(f.cur) + 3 * PAGE))
                    b = rnd.randbytes(rnd.choice([1, 100, PAGE, 3 * PAGE + 7]))
                    fd = os.open(mnt + p, os.O_WRONLY)
                    os.pwrite(fd, b, off)
                    os.close(fd)
                    if len(f.cur) < off:
                        f.cur += bytes(off - len(f.cur))
                    f.cur[off:off + len(b)] = b
                elif op == "trunc":
                    size = rnd.randrange(0, len(f.cur) + 2 * PAGE + 1)
                    os.truncate(mnt + p, size)
                    if size < len(f.cur):
                        del f.cur[size:]
                    else:
                        f.cur += bytes(size - len(f.cur))
                elif op == "punch":
                    import ctypes
                    libc = ctypes.CDLL(None, use_errno=True)
                    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int,
                                               ctypes.c_long, ctypes.c_long]
                    off = rnd.randrange(0, len(f.cur) + 1)
                    ln = rnd.randrange(1, 3 * PAGE)
                    fd = os.open(mnt + p, os.O_RDWR)
                    r = libc.fallocate(fd, 3, off, ln)
                    os.close(fd)
                    assert r == 0, "punch failed"
                    end = min(off + ln, len(f.cur))
                    if end > off:
                        f.cur[off:end] = bytes(end - off)
                elif op == "fsync":
                    fd = os.open(mnt + p, os.O_RDONLY)
                    (os.fsync if rnd.random() < 0.5 else os.fdatasync)(fd)
                    os.close(fd)
                    f.dur, f.dmode = bytes(f.cur), f.mode
                elif op == "unlink":
                    os.unlink(mnt + p)
                    del d.cur[name]
                elif op == "chmod":
                    m = rnd.choice([0o600, 0o640, 0o644, 0o755])
                    os.chmod(mnt + p, m)
                    f.mode = m
            elif op == "fsyncdir":
                p, d, _, _ = pick_dir()
                fd = os.open(mnt + p + "/", os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
                d.dur = dict(d.cur)
            elif op in ("create", "mkdir"):
                p, d, _, _ = pick_dir()
                name = newname()
                if name in d.cur:
                    continue
                if op == "create":
                    b = rnd.randbytes(rnd.randrange(0, 3 * PAGE))
                    fd = os.open(mnt + p + "/" + name,
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    os.write(fd, b)
                    os.close(fd)
                    d.cur[name] = F(b, b"", 0o644)
                else:
                    os.mkdir(mnt + p + "/" + name, 0o755)
                    d.cur[name] = D()
            elif op in ("rename", "link"):
                x = pick(F)
                if not x:
                    continue
                sp, f, sd, sname = x
                dp, dd, _, _ = pick_dir()
                dname = rnd.choice([newname()] + list(dd.cur))
                t = dd.cur.get(dname)
                if isinstance(t, D):
                    continue
                if op == "link":
                    if t is not None:
                        continue
                    os.link(mnt + sp, mnt + dp + "/" + dname)
                    dd.cur[dname] = f
                else:
                    os.rename(mnt + sp, mnt + dp + "/" + dname)
                    if t is f:
                        continue  # hard links of one inode: no-op
                    del sd.cur[sname]
                    dd.cur[dname] = f
            elif op == "rmdir":
                x = pick(D)
                if not x or x[1].cur:
                    continue
                os.rmdir(mnt + x[0])
                del x[2].cur[x[3]]
            log.append(op)
        except OSError as e:
            sys.exit("op %d %s: %s" % (i, op, e))

    os.kill(pid, signal.SIGUSR1)
    for _ in range(600):
        if any(l.startswith("cut ") and l.split()[1] != "none"
               for l in open(report).read().splitlines()):
            break
        time.sleep(0.05)
    else:
        sys.exit("no cut reported")

    # The durable tree, from the root's durable entries.
    bad = []
    inode_of = {}
    def check(d, path):
        want = set(d.dur)
        got = set(os.listdir(path))
        if want != got:
            bad.append("%s: entries %s, want %s" % (path, sorted(got), sorted(want)))
        for name, n in d.dur.items():
            p = os.path.join(path, name)
            if not os.path.lexists(p):
                continue
            if isinstance(n, D):
                if not os.path.isdir(p):
                    bad.append(p + ": not a folder")
                else:
                    check(n, p)
                continue
            st = os.lstat(p)
            if id(n) in inode_of and inode_of[id(n)] != st.st_ino:
                bad.append(p + ": hard links split")
            inode_of[id(n)] = st.st_ino
            b = open(p, "rb").read()
            if st.st_mode & 0o7777 != n.dmode:
                bad.append("%s: mode %o want %o" % (p, st.st_mode & 0o7777, n.dmode))
            if not torn:
                if b != n.dur:
                    bad.append("%s: %d bytes, want %d durable" % (p, len(b), len(n.dur)))
                continue
            L = len(b)
            if L not in (len(n.dur), len(n.cur)):
                bad.append("%s: size %d, neither %d nor %d" % (p, L, len(n.dur), len(n.cur)))
                continue
            cur = bytes(n.cur[:L]) + bytes(max(0, L - len(n.cur)))
            dur = n.dur[:L] + bytes(max(0, L - len(n.dur)))
            for o in range(0, L, PAGE):
                if b[o:o + PAGE] not in (cur[o:o + PAGE], dur[o:o + PAGE]):
                    bad.append("%s: page %d neither old nor new" % (p, o // PAGE))
                    break
    check(root, bk)
    if len(set(inode_of.values())) != len(inode_of):
        bad.append("distinct files share an inode")
    for b in bad[:10]:
        print("  " + b)
    print("seed %d: %d ops (%s), %d problems" % (seed, len(log),
          " ".join("%s=%d" % (o, log.count(o)) for o in sorted(set(log))), len(bad)))
    sys.exit(1 if bad else 0)

if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), a[1], a[2], int(a[3]), a[4], int(a[5]), a[6] == "torn")
PY
for seed in 1 2; do
	for mode in plain torn; do
		fresh
		mkdir "$BK/sub"
		head -c 20000 /dev/urandom >"$BK/a"
		head -c 5000 /dev/urandom >"$BK/sub/b"
		opts=()
		[ "$mode" = torn ] && opts=(--torn "$seed")
		if pc_mount "$BK" "$MNT" "${opts[@]}"; then
			check "model, seed $seed, $mode" python3 "$SCRATCH/pcmodel.py" \
				"$seed" "$MNT" "$BK" "$PC_PID" "$PC_REPORT" 400 "$mode"
			pc_umount "$MNT"
		else
			fail "mount for the model run"
		fi
	done
done

say "--freeze: after the cut requests hang, killable, until powercut ends"
fresh
echo data >"$BK/f"
if pc_mount "$BK" "$MNT" --freeze; then
	check "reads before the cut work" test "$(cat "$MNT/f")" = data
	check "pc_cut reports the cut" pc_cut "$MNT"
	check "stat of the root still answers (mountpoint)" mountpoint -q "$MNT"
	cat "$MNT/f" >/dev/null 2>&1 &
	r1=$!
	sleep 1
	check "a read after the cut blocks: still running after 1 s" kill -0 "$r1"
	cat "$MNT/f" >/dev/null 2>&1 &
	r2=$!
	sleep 0.3
	check "a second reader queued behind it blocks too" kill -0 "$r2"
	kill -KILL "$r2" 2>/dev/null
	check "SIGKILL ends the queued reader" _pc_wait "$r2" 50
	kill -KILL "$r1" 2>/dev/null
	check "SIGKILL ends the reader whose request powercut holds" _pc_wait "$r1" 50
	wait "$r1" "$r2" 2>/dev/null
	ls "$MNT" >/dev/null 2>"$SCRATCH/frozen.err" &
	r3=$!
	sleep 0.5
	check "a lister after that blocks too" kill -0 "$r3"
	pid=$PC_PID
	check "pc_umount ends the frozen powercut" pc_umount "$MNT"
	check "... no powercut process is left" bash -c "! kill -0 $pid 2>/dev/null"
	check "... no mount is left" bash -c "! grep -q ' $MNT fuse.powercut ' /proc/mounts"
	check "... and the held lister ends" _pc_wait "$r3" 50
	wait "$r3"
	check "... with an error, not with a listing" test $? -ne 0
	check "report: cut 1, unmounted after it" \
		bash -c "grep -qx 'cut 1' '$PC_REPORT' && grep -qx 'state cut-unmounted' '$PC_REPORT'"
	check "the backing holds what was durable" test "$(cat "$BK/f")" = data
else
	fail "mount with --freeze"
fi
fresh
if pc_mount "$BK" "$MNT" --freeze --cut-at 2; then
	printf one | dd of="$MNT/a" conv=fsync status=none 2>/dev/null
	check "barrier 1 passes" test $? -eq 0
	printf two | dd of="$MNT/b" conv=fsync status=none 2>/dev/null &
	r1=$!
	sleep 1
	check "--cut-at 2: the cutting fsync is held, not failed" kill -0 "$r1"
	check "... and the cut is reported" grep -qx 'cut 2' "$PC_REPORT"
	pid=$PC_PID
	check "pc_umount ends it" pc_umount "$MNT"
	check "... no powercut process is left" bash -c "! kill -0 $pid 2>/dev/null"
	check "... the held fsync ends" _pc_wait "$r1" 50
	wait "$r1"
	check "... with an error" test $? -ne 0
	check "... and nothing after barrier 1 is durable" test ! -e "$BK/b"
else
	fail "mount with --freeze --cut-at 2"
fi

say "teardown and bad arguments"
fresh
"$POWERCUT" -f "$BK" "$MNT" &
pid=$!
disown "$pid"
for _ in $(seq 100); do mountpoint -q "$MNT" && break; sleep 0.05; done
check "-f mounts" mountpoint -q "$MNT"
echo x >"$MNT/x"
mkdir -p "$SCRATCH/mnt2"
expect_error "a second powercut on the same backing" "already used" -- \
	"$POWERCUT" "$BK" "$SCRATCH/mnt2"
kill -KILL "$pid" 2>/dev/null
for _ in $(seq 100); do grep -q " $MNT fuse.powercut " /proc/mounts || break; sleep 0.05; done
check "a killed powercut leaves no mount (auto_unmount)" \
	bash -c "! grep -q ' $MNT fuse.powercut ' /proc/mounts"
check "... and the backing keeps what was written" test -s "$BK/x"
touch "$SCRATCH/plain"
expect_error "BACKING not a directory" "not a directory" -- \
	"$POWERCUT" "$SCRATCH/plain" "$MNT"
expect_error "missing BACKING" "$SCRATCH/none" -- "$POWERCUT" "$SCRATCH/none" "$MNT"
expect_error "no mountpoint" "MOUNTPOINT" -- "$POWERCUT" "$BK"
expect_error "bad --cut-at" "--cut-at" -- "$POWERCUT" --cut-at 0 "$BK" "$MNT"
expect_error "bad --torn" "--torn" -- "$POWERCUT" --torn x "$BK" "$MNT"
expect_error "unknown option" "--bogus" -- "$POWERCUT" --bogus "$BK" "$MNT"
if [ "$(stat -c %d /dev/shm)" != "$(stat -c %d "$SCRATCH")" ]; then
	expect_error "state folder on another file system" "/dev/shm" "file system" -- \
		"$POWERCUT" --state "/dev/shm/pc-state-$$" "$BK" "$MNT"
	rmdir "/dev/shm/pc-state-$$" 2>/dev/null
fi
expect_error "state folder inside BACKING" "contain" -- \
	"$POWERCUT" --state "$BK/st" "$BK" "$MNT"
check "... and nothing made inside BACKING" test ! -e "$BK/st"
mkdir -p "$BK/inner"
expect_error "mountpoint inside BACKING" "inside" -- "$POWERCUT" "$BK" "$BK/inner"
check "nothing left mounted" bash -c "! grep -q ' $MNT fuse.powercut ' /proc/mounts"
finish
