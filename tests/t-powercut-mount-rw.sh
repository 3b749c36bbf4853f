#!/bin/bash
# t-powercut-mount-rw.sh - the crash matrix of writes through `hvresync
# mount --rw` (issue 11, item 2).  A qemu-made dynamic VHDX lives on the
# power-cut file system (tests/helpers/powercut.c), with a dirty log left
# by a killed writer, so that the view's open replays it onto the file
# under the power cut too.  A writable view of it is mounted (itself a
# FUSE mount whose image sits on the power-cut one) and a python writer
# puts a planned sequence through it: distinct 4 KiB
# patterns at known offsets (over data and holes, some sectors written
# twice), a few larger writes (across a block edge, a whole block), a hole
# punched over data (a whole block and part of one) and a range zeroed,
# with fsync after some of them and one close and reopen.  Each time an
# fsync or the close returned 0 the writer notes it in a journal OUTSIDE
# the power-cut file system (itself fsynced); `hvresync umount` returning
# 0 is noted too.  The power is cut at the k-th barrier of the power-cut
# file system (the view's own fsyncs and fdatasyncs of the image), in
# plain and torn mode; the writer and the view are killed and both mounts
# go.  On what was durable:
#   - `hvresync inspect` opens the image (log replayed in memory);
#   - a copy passes `qemu-img check -r all` (qemu's own replay);
#   - `hvresync inspect --replay` (the product's own replay onto the file)
#     succeeds, after which a plain `qemu-img check` is clean and
#     `qemu-img compare` finds it equal to the copy qemu replayed;
#   - every 4 KiB sector holds what it held when the last fsync (or close,
#     or umount) the journal names was called, or a content written to it
#     after that: old or new, and new wherever a sync returned;
#   - when umount returned 0, the log is clean and the image is the whole
#     plan.
# POWERCUT_FULL=1 cuts at every barrier (tools/crash/run); the short form
# at ${POWERCUT_SHORT:-8} points per mode.
. "$(dirname "$0")/lib.sh"
[ -f "$TOP/tests/helpers/powercut.sh" ] ||
	{ fail "tests/helpers/powercut.sh is missing"; finish; }
. "$TOP/tests/helpers/powercut.sh"

PCBIN=${POWERCUT:-$TOP/build/helpers/powercut}
IO=${VHDX_IO:-$(dirname "$HVRESYNC")/helpers/vhdx-io}
for t in qemu-img qemu-io fusermount3 python3 strace; do
	command -v "$t" >/dev/null || skip "$t not installed"
done
[ -c /dev/fuse ] || skip "/dev/fuse not available"
[ "$(id -u)" -eq 0 ] || skip "needs root (FUSE mounts)"
for b in "$HVRESYNC" "$IO" "$PCBIN"; do
	[ -x "$b" ] || { fail "$b not built (make -j2 all)"; finish; }
done

S=$SCRATCH
T="timeout -s KILL"
PRISTINE=$S/pristine # the backing folder as it is before each run
BACK=$S/back         # the power-cut file system's backing folder
MNT=$S/mnt           # where it is mounted
VIEW=$S/view         # the writable view of MNT/img.vhdx
J=$S/journal         # the writer's journal, outside the power-cut FS
PY=$S/rw.py
mkdir -p "$PRISTINE" "$BACK" "$MNT" "$VIEW"

cat >"$PY" <<'EOF'
# rw.py - the plan, the writer and the old-or-new check of
# t-powercut-mount-rw.sh.
#   rw.py write FILE JOURNAL        run the plan through FILE (the view)
#   rw.py check RAW OLD JOURNAL     the verdict on RAW after a cut
import ctypes
import os
import struct
import sys

MiB = 1 << 20
SEC = 4096
PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
ZERO_RANGE = 0x10    # FALLOC_FL_ZERO_RANGE

# The image: 16 MiB, 1 MiB blocks, data (0x77) at 2-6 MiB and (0x21) at
# 9-10 MiB.  ("w", off, len) writes, ("p", off, len) punches a hole,
# ("z", off, len) zeroes a range, ("s",) is fsync, ("c",) close + reopen.
PLAN = [
    ("w", 2 * MiB + 8 * SEC, SEC), ("w", 0, SEC), ("w", 7 * MiB + 3 * SEC, SEC),
    ("s",),
    ("w", 12 * MiB, SEC), ("w", 2 * MiB + 8 * SEC, SEC),   # rewrite after sync
    ("w", 4 * MiB - 8 * SEC, 16 * SEC),                    # across a block edge
    ("s",),
    ("w", 11 * MiB, MiB),                                   # a whole new block
    ("w", 9 * MiB + 100 * SEC, SEC), ("p", 3 * MiB, MiB),   # whole block over data
    ("w", 13 * MiB + 5 * SEC, SEC),
    ("s",),
    ("w", 1 * MiB + 17 * SEC, SEC), ("p", 9 * MiB + 4 * SEC, 8 * SEC),
    ("w", 15 * MiB + 255 * SEC, SEC),
    ("c",),
    ("w", 5 * MiB + 64 * SEC, 64 * SEC), ("w", 0, SEC),     # sector 0 again
    ("z", 2 * MiB + 100 * SEC, 3 * SEC),
    ("s",),
    ("w", 8 * MiB, SEC), ("w", 12 * MiB, SEC), ("w", 14 * MiB + 9 * SEC, 2 * SEC),
    ("s",),
    ("w", 6 * MiB + 33 * SEC, SEC), ("w", 4 * MiB - 8 * SEC, 2 * SEC),
    ("s",),
    ("w", 10 * MiB + 7 * SEC, SEC), ("w", 15 * MiB, 4 * SEC),  # unsynced till close
]


def pattern(i, off, n):
    """Op I's bytes for [OFF, OFF + N): each 4 KiB sector its own."""
    out = bytearray()
    for s in range(off // SEC, (off + n) // SEC):
        out += struct.pack("<4sII", b"PCRW", i, s) * (SEC // 12) + b"\xee" * (SEC % 12)
    return bytes(out)


def note(jfd, line):
    os.write(jfd, (line + "\n").encode())
    os.fsync(jfd)


def cmd_write(path, journal):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    jfd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    note(jfd, "start")
    fd = os.open(path, os.O_RDWR)
    for i, op in enumerate(PLAN):
        try:
            if op[0] == "w":
                if os.pwrite(fd, pattern(i, op[1], op[2]), op[1]) != op[2]:
                    raise OSError(5, "short write")
            elif op[0] in "pz":
                mode = PUNCH if op[0] == "p" else ZERO_RANGE
                if libc.fallocate(fd, mode, op[1], op[2]):
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e))
            elif op[0] == "s":
                os.fsync(fd)
                note(jfd, "sync %d" % i)
            elif op[0] == "c":
                os.close(fd)
                fd = -1
                note(jfd, "sync %d" % i)
                fd = os.open(path, os.O_RDWR)
        except OSError as e:
            note(jfd, "error %d %s" % (i, e))
            sys.exit(1)
    os.close(fd)
    note(jfd, "sync %d" % len(PLAN))  # the close flushes (hvresync(8))
    note(jfd, "done")


def cmd_check(raw, old, journal):
    """Every 4 KiB sector of RAW: its content at the last sync the journal
    names, or something written to it after that sync was called."""
    last = -1
    for line in open(journal):
        w = line.split()
        if w and w[0] == "sync":
            last = int(w[1])
        elif w and w[0] == "umount":
            last = len(PLAN)
    cur = {}   # sector -> its content at the last sync
    later = {}  # sector -> the contents written after it
    for i, op in enumerate(PLAN):
        if op[0] not in "wpz":
            continue
        data = pattern(i, op[1], op[2]) if op[0] == "w" else bytes(op[2])
        for k in range(op[2] // SEC):
            s = op[1] // SEC + k
            d = data[k * SEC:(k + 1) * SEC]
            if i < last:
                cur[s] = d
            else:
                later.setdefault(s, []).append(d)
    a = memoryview(open(raw, "rb").read())
    o = memoryview(open(old, "rb").read())
    if len(a) != len(o):
        print("the disk is %d bytes, was %d" % (len(a), len(o)))
        sys.exit(1)
    bad, lost = [], []
    for s in range(len(a) // SEC):
        r = a[s * SEC:(s + 1) * SEC]
        want = cur.get(s, o[s * SEC:(s + 1) * SEC])
        if r != want and not any(r == d for d in later.get(s, ())):
            (lost if s in cur else bad).append(s)
    if bad or lost:
        if lost:
            print("%d synced sectors lost (first at %s)" % (
                len(lost), ", ".join("%#x" % (x * SEC) for x in lost[:4])), end="; ")
        if bad:
            print("%d sectors neither old nor written (first at %s)" % (
                len(bad), ", ".join("%#x" % (x * SEC) for x in bad[:4])), end="")
        print(" [last sync: op %d of %d]" % (last, len(PLAN)))
        sys.exit(1)
    print("last sync: op %d of %d" % (last, len(PLAN)))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        cmd_write(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "check":
        cmd_check(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("rw.py: unknown command %s" % sys.argv[1])
EOF

# The image starts with a dirty log, as a crashed writer leaves it: data
# from qemu-io, then hvresync's writer (vhdx-io) killed by strace at its
# 9th pwrite, after its second commit's log entry and before that entry's
# BAT sector is written in place: a block at 12 MiB exists only through
# the log.  So the view's open replays the log onto the file, under the
# power cut too.  Its old contents: qemu's reading after qemu's replay.
qemu-img create -q -f vhdx -o block_size=1M "$PRISTINE/img.vhdx" 16M
qemu-io -f vhdx -c 'write -q -P 0x77 2M 4M' -c 'write -q -P 0x21 9M 1M' \
	"$PRISTINE/img.vhdx" >/dev/null || { fail "qemu-io on the image"; finish; }
(strace -o /dev/null -e trace=pwrite64 -e inject=pwrite64:signal=KILL:when=9 \
	"$IO" "$PRISTINE/img.vhdx" w:1M:8192:0x31 f w:12M:4096:0x32 \
	w:2M:4096:0x33 f >/dev/null 2>&1) 2>/dev/null
"$HVRESYNC" inspect --json "$PRISTINE/img.vhdx" >"$S/i.json" 2>&1
grep -q '"log_entries_replayed": [1-9]' "$S/i.json" ||
	{ fail "setup: the image has no dirty log: $(grep -m1 log_entries "$S/i.json")"; finish; }
cp "$PRISTINE/img.vhdx" "$S/copy.vhdx"
if ! qemu-img check -q -r all -f vhdx "$S/copy.vhdx" >/dev/null 2>&1 ||
	! qemu-img convert -f vhdx -O raw "$S/copy.vhdx" "$S/old.raw"; then
	fail "setup: qemu cannot replay the image's log"
	finish
fi
python3 -c '
import sys
d = open(sys.argv[1], "rb").read()
sys.exit(0 if d[12 << 20:(12 << 20) + 4096] == b"2" * 4096 else 1)' "$S/old.raw" ||
	{ fail "setup: the logged block at 12 MiB does not read back"; finish; }
rm -f "$S/copy.vhdx"

restore() {
	rm -rf "$BACK"
	mkdir -p "$BACK"
	cp -a --sparse=always "$PRISTINE/." "$BACK/"
}

view_mounted() { grep -q " $VIEW fuse.hvresync " /proc/self/mounts; }

# work: mount the view, run the writer, unmount the view.  Leaves VPID
# (the serving process) and the writer's and umount's verdicts in the
# journal and in WROTE.
work() {
	rm -f "$J"
	"$HVRESYNC" mount --rw -f "$MNT/img.vhdx" "$VIEW" 2>"$S/view.err" &
	VPID=$!
	for _ in $(seq 300); do
		view_mounted && break
		kill -0 $VPID 2>/dev/null || break
		sleep 0.05
	done
	if ! view_mounted; then
		WROTE="the view did not mount: $(head -n1 "$S/view.err")"
		return
	fi
	_mounts+=("$VIEW")
	$T 60 python3 -S "$PY" write "$VIEW/img" "$J" >"$S/w.out" 2>&1
	WROTE="writer exit $?"
	# umount exits 0 once the view closed its images (flushed, log
	# cleared); the view's own exit status says the same, and counts
	# too: umount does not wait for a view it cannot reach
	if $T 60 "$HVRESYNC" umount "$VIEW" >"$S/um.out" 2>&1 &&
		wait "$VPID"; then
		echo umount >>"$J"
		sync "$J"
		WROTE="$WROTE, umount ok"
	else
		WROTE="$WROTE, umount failed"
	fi
}

# stop: the power is out: SIGKILL what used the mounts, unmount both.
stop() {
	kill -KILL "$VPID" 2>/dev/null
	wait "$VPID" 2>/dev/null
	if view_mounted; then
		fusermount3 -u "$VIEW" 2>/dev/null || umount -l "$VIEW"
	fi
	pc_umount "$MNT"
}

BAD=""
bad() { BAD="$BAD${BAD:+; }$1"; }

# qclean IMAGE: qemu-img check finds nothing wrong.
qclean() {
	$T 60 qemu-img check -f vhdx "$1" >"$S/qc.out" 2>&1 &&
		grep -q "No errors were found" "$S/qc.out"
}

# check_state: every check of the image BACK holds after a cut.
check_state() {
	local img=$BACK/img.vhdx dirty
	BAD=""
	[ -e "$J" ] || : >"$J"
	if ! $T 60 "$HVRESYNC" inspect --json "$img" >"$S/i.json" 2>"$S/i.err"; then
		bad "hvresync inspect: $(head -n1 "$S/i.err")"
		return 1
	fi
	dirty=$(sed -n 's/.*"log_dirty": \([a-z]*\).*/\1/p' "$S/i.json" | head -n1)
	STATE="log_dirty $dirty, $(grep -c '^sync' "$J") syncs journaled"
	if grep -q '^umount' "$J" && [ "$dirty" != false ]; then
		bad "umount returned 0, yet the log is dirty"
	fi
	# qemu's replay, on a copy
	cp --sparse=always "$img" "$S/copy.vhdx"
	$T 60 qemu-img check -q -r all -f vhdx "$S/copy.vhdx" >"$S/qr.out" 2>&1 ||
		bad "qemu-img check -r all on a copy: $(head -n2 "$S/qr.out" | tr '\n' ' ')"
	# the product's replay, on the image
	if ! $T 60 "$HVRESYNC" inspect --replay "$img" >/dev/null 2>"$S/i.err"; then
		bad "hvresync inspect --replay: $(head -n1 "$S/i.err")"
		return 1
	fi
	if ! qclean "$img"; then
		bad "after hvresync's replay, qemu-img check: $(grep -v '^$' "$S/qc.out" | head -n2 | tr '\n' ' ')"
		return 1
	fi
	$T 60 qemu-img convert -t unsafe -f vhdx -O raw "$img" "$S/p.raw"
	$T 60 qemu-img compare -q -f vhdx -F vhdx "$S/copy.vhdx" "$img" ||
		bad "qemu's replay and hvresync's replay give different disks"
	python3 -S "$PY" check "$S/p.raw" "$S/old.raw" "$J" >"$S/c.out" 2>&1 ||
		bad "$(cat "$S/c.out")"
	STATE="$STATE, $(tail -n1 "$S/c.out")"
	rm -f "$S/p.raw" "$S/copy.vhdx"
	[ -z "$BAD" ]
}

# --- a run without a cut: its barriers, and the oracle itself ---------------
say "an uncut run on the power-cut file system"
restore
pc_mount "$BACK" "$MNT" || { fail "pc_mount"; finish; }
t0=$SECONDS
work
stop
N=$(pc_barriers)
case "$WROTE" in
*"writer exit 0, umount ok") ;;
*) fail "uncut run: $WROTE: $(tail -n1 "$S/w.out") $(head -n1 "$S/um.out")"; finish ;;
esac
if check_state; then
	ok "uncut run ($N barriers, $((SECONDS - t0)) s): $STATE"
else
	fail "uncut run: $BAD"
	finish
fi
[ "${N:-0}" -gt 0 ] 2>/dev/null || { fail "no barriers counted ($N)"; finish; }

# --- the matrix -----------------------------------------------------------------
say "power cuts at the barriers of the writes (N=$N)"
# The writer's journal says what the view acknowledged: part of the state.
check_rw() {
	local r=0
	check_state || r=1
	STATE="$WROTE; $STATE"
	return $r
}
pc_matrix "" "$N" "$BACK" "$MNT" restore work stop check_rw
pc_summary
finish
