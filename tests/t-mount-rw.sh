#!/bin/bash
# t-mount-rw.sh - `hvresync mount --rw`: writes through the raw view reach
# the images.  For dynamic and fixed qemu-made images of several block
# sizes (and a 4 KiB-sector image), random writes at random offsets and
# lengths (unaligned, cross-block), whole zero blocks written with dd,
# `fallocate -p` and `fallocate -z` ranges go through the view and, in the
# same order, into a plain raw model made by `qemu-img convert` before the
# mount.  Every operation is read back through the view at once (no
# remount).  After `hvresync umount`: `qemu-img check` is clean, `qemu-img
# convert -O raw` equals the model, whole-zeroed blocks are ZERO in the BAT
# (read by an independent Python parser) and `hvresync inspect --json`
# counts the same block states.  Also: reads beside writes, a differencing
# child (checked by a Python chain reader following the spec and by
# vhdimount), ENOSPC and EPERM at the fixed size, a full filesystem under
# the image (sticky error, logged once), the three other ways to end a view,
# flock refusals, and SIGKILL of the serving process in the middle of
# writes: the log replays, `qemu-img check -r all` is clean and every
# written 512-byte sector reads old or new (new if fsync returned); and
# `hvresync umount` of a view whose serving process died (before umount,
# or while umount waited for its verdict) exits 2 with one line.
# Random choices are seeded: SEED=N tests/t-mount-rw.sh repeats a run.
. "$(dirname "$0")/lib.sh"

for t in qemu-img qemu-io fusermount3 python3 fallocate pgrep; do
	command -v "$t" >/dev/null || skip "$t not installed"
done
[ -c /dev/fuse ] || skip "/dev/fuse not available"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }

SEED=${SEED:-$(( $(date +%s) % 100000 ))}
RANDOM=$SEED
say "seed $SEED (rerun with SEED=$SEED $0)"
HELP=$TOP/tests/helpers
PY=$SCRATCH/rw.py
T=timeout
MiB=1048576

mounted() { grep -q " $1 fuse.hvresync " /proc/self/mounts; }
daemon_pids() { pgrep -f -- "hvresync mount .*$1\$"; }

# wait_gone MNT: up to 30 s for the mount and its serving process to go.
wait_gone() {
	local i
	for i in $(seq 300); do
		if ! mounted "$1" && [ -z "$(daemon_pids "$1")" ]; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# mount_rw MNT IMAGE...: background writable mount, remembered for cleanup.
mount_rw() {
	local mnt=$1; shift
	mkdir -p "$mnt"
	$T 30 "$HVRESYNC" mount --rw "$@" "$mnt" >"$SCRATCH/mount.err" 2>&1 || {
		fail "mount --rw $*: $(head -n 3 "$SCRATCH/mount.err")"
		return 1
	}
	_mounts+=("$mnt")
}

# umount_ok MNT: hvresync umount, which returns once the images are closed.
umount_ok() {
	cli_run "$HVRESYNC" umount "$1"
	if [ "$CLI_RC" -ne 0 ] || [ -s "$SCRATCH/cli.err" ]; then
		fail "hvresync umount $1: exit $CLI_RC: $(head -n 2 "$SCRATCH/cli.err")"
		return 1
	fi
	wait_gone "$1" || { fail "$1: serving process still there"; return 1; }
}

# qcheck IMG: qemu-img check finds nothing wrong.
qcheck() {
	$T 60 qemu-img check -f vhdx "$1" >"$SCRATCH/qc.out" 2>&1 || {
		echo "    $(tr '\n' ' ' <"$SCRATCH/qc.out" | cut -c 1-300)"
		return 1
	}
	grep -q "No errors were found" "$SCRATCH/qc.out"
}

cat >"$PY" <<'EOF'
# rw.py - the Python side of t-mount-rw.sh.  Uses tests/helpers/vhdxlib.py,
# an independent VHDX parser, for the block-level checks.
import errno, json, os, random, subprocess, sys, threading, time

sys.path.insert(0, os.environ["HELP"])
import vhdxlib

MiB = 1 << 20


def die(msg):
    print("  " + msg)
    sys.exit(1)


def pread_all(fd, n, off):
    out = bytearray()
    while len(out) < n:
        b = os.pread(fd, n - len(out), off + len(out))
        if not b:
            break
        out += b
    return bytes(out)


def sh(*argv):
    r = subprocess.run([str(a) for a in argv], capture_output=True,
                       text=True, timeout=60)
    if r.returncode:
        die("%s failed (%d): %s" % (" ".join(map(str, argv)), r.returncode,
                                    r.stderr.strip()))


def pick_range(rng, size, bs, lss):
    """A write range: sector-aligned, unaligned, or crossing a block end."""
    kind = rng.randrange(4)
    maxlen = min(3 * bs, 6 * MiB)
    if kind == 0:                                   # whole sectors
        off = rng.randrange(0, size // lss) * lss
        n = rng.randrange(1, maxlen // lss + 1) * lss
    elif kind == 1:                                 # any byte, short
        off = rng.randrange(0, size)
        n = rng.randrange(1, 3 * lss)
    elif kind == 2:                                 # across a block end
        edge = rng.randrange(1, max(2, size // bs)) * bs
        off = max(0, edge - rng.randrange(1, min(bs, 2 * MiB)))
        n = edge - off + rng.randrange(1, min(bs, 2 * MiB))
    else:                                           # any byte, long
        off = rng.randrange(0, size)
        n = rng.randrange(1, maxlen)
    return off, max(1, min(n, size - off))


def cmd_apply(view, model, seed, bs, lss, nops, zlist):
    """Random writes, dd, fallocate -p/-z through the view and into the
    model; each range read back through a fresh descriptor at once."""
    rng = random.Random(seed)
    size = os.path.getsize(model)
    vfd = os.open(view, os.O_RDWR)
    mfd = os.open(model, os.O_RDWR)
    full = size // bs                      # blocks that are whole
    counts = {}
    whole = {}

    def read_back(what, off, n):
        fd = os.open(view, os.O_RDONLY)
        got = pread_all(fd, n, off)
        os.close(fd)
        want = pread_all(mfd, n, off)
        if got != want:
            bad = next(i for i in range(min(len(got), len(want)))
                       if got[i] != want[i]) if len(got) == len(want) else -1
            die("%s at %d+%d: read back differs (first bad byte %d)"
                % (what, off, n, off + bad))

    ops = ["pwrite"] * 5 + ["dd"] * 2 + ["ddzero", "punch", "zrange",
                                         "punchblk", "zblk"]
    for i in range(nops):
        op = rng.choice(ops)
        counts[op] = counts.get(op, 0) + 1
        if op in ("ddzero", "punchblk", "zblk"):
            j = rng.randrange(0, full)
            off, n = j * bs, bs
        else:
            off, n = pick_range(rng, size, bs, lss)
        if op in ("pwrite", "dd"):
            data = rng.randbytes(n)
            if op == "pwrite":
                if os.pwrite(vfd, data, off) != n:
                    die("short pwrite at %d+%d" % (off, n))
            else:
                tmp = os.environ["SCRATCH"] + "/dd.in"
                with open(tmp, "wb") as f:
                    f.write(data)
                sh("dd", "if=" + tmp, "of=" + view, "bs=65536",
                   "seek=%d" % off, "oflag=seek_bytes", "conv=notrunc",
                   "status=none")
            os.pwrite(mfd, data, off)
        elif op == "ddzero":
            sh("dd", "if=/dev/zero", "of=" + view, "bs=%d" % bs,
               "seek=%d" % (off // bs), "count=1", "conv=notrunc",
               "status=none")
            os.pwrite(mfd, bytes(n), off)
        else:
            sh("fallocate", "-p" if op.startswith("punch") else "-z",
               "-o", off, "-l", n, view)
            os.pwrite(mfd, bytes(n), off)
        # whole: block -> the zeroing op that last covered all of it
        for j in range(off // bs, (off + n - 1) // bs + 1):
            whole.pop(j, None)
        if op not in ("pwrite", "dd"):
            for j in range(-(-off // bs), min((off + n) // bs, full)):
                whole[j] = op
        read_back(op, off, n)
        if i % 10 == 9:
            read_back("whole file after op %d" % i, 0, size)
    read_back("whole file", 0, size)
    # dd writes a whole block in requests of at most max_write (1 MiB):
    # only then does one request cover the block and make it ZERO.
    with open(zlist, "w") as f:
        for j, op in sorted(whole.items()):
            f.write("%d %s\n" % (j, op))
    print("  %d operations %s; %d blocks end zeroed as a whole"
          % (nops, json.dumps(counts, sort_keys=True), len(whole)))


def cmd_edges(view, size):
    """The size is fixed: ENOSPC at the end, a short write across it."""
    fd = os.open(view, os.O_RDWR)
    for off in (size, size + 4096, size + 10 * MiB):
        try:
            os.pwrite(fd, b"x" * 512, off)
            die("write at %d (the end is %d) succeeded" % (off, size))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                die("write at %d: %s, want ENOSPC" % (off, e))
    before = pread_all(fd, 100, size - 100)
    n = os.pwrite(fd, b"y" * 1000, size - 100)
    if n != 100:
        die("write across the end wrote %d bytes, want 100" % n)
    if pread_all(fd, 200, size - 100) != b"y" * 100:
        die("the 100 bytes before the end do not read back")
    os.pwrite(fd, before, size - 100)
    for fn, what in ((lambda: os.ftruncate(fd, size - 512), "ftruncate"),
                     (lambda: os.ftruncate(fd, size + 512), "ftruncate up")):
        try:
            fn()
            die("%s succeeded" % what)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EINVAL):
                die("%s: %s, want EPERM" % (what, e))
    os.ftruncate(fd, size)                  # no change: fine
    try:
        os.posix_fallocate(fd, size - 4096, 8192)
    except OSError:
        pass
    if os.fstat(fd).st_size != size:
        die("the size changed to %d" % os.fstat(fd).st_size)
    os.close(fd)
    try:
        os.close(os.open(view, os.O_WRONLY | os.O_APPEND))
        die("O_APPEND open succeeded")
    except OSError as e:
        if e.errno != errno.EPERM:
            die("O_APPEND open: %s, want EPERM" % e)
    print("  ENOSPC at and past the end, short write across it, "
          "EPERM for size changes")


def cmd_concurrent(view, model, seed, bs):
    """Readers of the first half beside a writer of the second half."""
    rng = random.Random(seed)
    size = os.path.getsize(model)
    half = size // 2 // bs * bs
    mfd = os.open(model, os.O_RDWR)
    stable = pread_all(mfd, half, 0)
    stop, errs, reads = threading.Event(), [], [0]

    def reader(k):
        r = random.Random(seed * 31 + k)
        fd = os.open(view, os.O_RDONLY)
        while not stop.is_set():
            off = r.randrange(0, half)
            n = min(r.choice((512, 4096, 65536, 1 << 20, 3 << 20)),
                    half - off)
            if pread_all(fd, n, off) != stable[off:off + n]:
                errs.append("read at %d+%d differs while writing" % (off, n))
                break
            reads[0] += 1
        os.close(fd)

    th = [threading.Thread(target=reader, args=(k,)) for k in range(3)]
    for t in th:
        t.start()
    vfd = os.open(view, os.O_RDWR)
    t0 = time.time()
    nw = 0
    while time.time() - t0 < 3 and not errs:
        off = rng.randrange(half, size)
        n = min(rng.randrange(1, 3 * bs), size - off)
        data = rng.randbytes(n)
        os.pwrite(vfd, data, off)
        os.pwrite(mfd, data, off)
        nw += 1
        if nw % 5 == 0:
            os.fsync(vfd)
    stop.set()
    for t in th:
        t.join()
    if errs:
        die(errs[0])
    if pread_all(vfd, size, 0) != pread_all(mfd, size, 0):
        die("view differs from the model after the concurrent phase")
    print("  %d writes beside %d reads, all reads right" % (nw, reads[0]))


def cmd_bat(img, zlist, fixed, inspect_json):
    """Whole-zeroed blocks in the BAT, and inspect's counts, against an
    independent parse of the file."""
    v = vhdxlib.Vhdx(img)
    if v.header["log_guid"].strip("{}0-"):
        die("LogGuid %s is still set after a clean close" % v.header["log_guid"])
    bad = []
    n = 0
    for line in open(zlist):
        j, op = line.split()
        j = int(j)
        st = v.bat[v.payload_index(j)] & 7
        want = vhdxlib.FULLY_PRESENT if fixed else vhdxlib.ZERO
        if op == "ddzero" and v.block_size > MiB and not fixed:
            want = None                 # zeroed by several requests
        # A base disk's block that was never allocated reads as zero
        # already: a writer may leave it NOT_PRESENT rather than ZERO.
        # (In a differencing child NOT_PRESENT would show the parent.)
        if want == vhdxlib.ZERO and not v.has_parent and st == vhdxlib.NOT_PRESENT:
            want = st
        if want is not None and st != want:
            bad.append("block %d (zeroed by %s) in state %d, want %d"
                       % (j, op, st, want))
        n += want is not None
    tally = {}
    for j in range(v.payload_blocks):
        st = v.bat[v.payload_index(j)] & 7
        tally[st] = tally.get(st, 0) + 1
    doc = json.load(open(inspect_json))
    names = {0: "not_present", 1: "undefined", 2: "zero", 3: "unmapped",
             6: "fully_present", 7: "partially_present"}
    for st, name in names.items():
        if doc["block_states"].get(name, 0) != tally.get(st, 0):
            bad.append("inspect says %d %s blocks, the BAT holds %d"
                       % (doc["block_states"].get(name, 0), name,
                          tally.get(st, 0)))
    if bad:
        die("; ".join(bad[:5]))
    print("  %d whole-zeroed blocks checked; states %s"
          % (n, json.dumps({names.get(k, k): c for k, c in tally.items()})))


def cmd_child(img, parent_raw, out):
    """Read a differencing child by the spec: BAT, sector bitmaps, parent."""
    v = vhdxlib.Vhdx(img)
    bs, lss, size = v.block_size, v.logical_sector_size, v.virtual_size
    spb = bs // lss
    data = bytearray(open(parent_raw, "rb").read()[:size])
    data += bytes(size - len(data))
    f = open(img, "rb")
    states = {}
    for j in range(v.payload_blocks):
        e = v.bat[v.payload_index(j)]
        st, foff = e & 7, (e >> 20) << 20
        a, n = j * bs, min(bs, size - j * bs)
        states[st] = states.get(st, 0) + 1
        if st == vhdxlib.NOT_PRESENT:
            continue
        if st == vhdxlib.ZERO:
            data[a:a + n] = bytes(n)
        elif st == vhdxlib.FULLY_PRESENT:
            f.seek(foff)
            data[a:a + n] = f.read(n)
        elif st == vhdxlib.PARTIALLY_PRESENT:
            c = j // v.chunk_ratio
            sb = v.bat[v.bitmap_index(c)]
            if sb & 7 != vhdxlib.SB_PRESENT:
                die("block %d partially present without a sector bitmap" % j)
            f.seek((sb >> 20) << 20)
            bm = f.read(MiB)
            first = (j % v.chunk_ratio) * spb
            for k in range(n // lss):
                i = first + k
                if bm[i >> 3] >> (i & 7) & 1:
                    f.seek(foff + k * lss)
                    data[a + k * lss:a + (k + 1) * lss] = f.read(lss)
        else:
            die("block %d in unexpected state %d" % (j, st))
    open(out, "wb").write(data)
    print("  child read by the spec: block states %s" % json.dumps(states))


def cmd_vhdicmp(vhdi, model, img):
    """libvhdi (20210425) reads a differencing child's blocks through the
    sector bitmap unless they are FULLY_PRESENT: it ignores the ZERO state
    (reading the parent instead of zeros) and, without a sector-bitmap
    block, takes file offset 0 for one.  Compare the blocks it reads as
    the spec says; count the others."""
    v = vhdxlib.Vhdx(img)
    bs, size = v.block_size, v.virtual_size
    a, m = open(vhdi, "rb"), open(model, "rb")
    cmp_n, skipped = 0, {}
    for j in range(v.payload_blocks):
        st = v.bat[v.payload_index(j)] & 7
        sb = v.bat[v.bitmap_index(j // v.chunk_ratio)] & 7
        if st == vhdxlib.ZERO or (st != vhdxlib.FULLY_PRESENT and
                                  sb != vhdxlib.SB_PRESENT):
            skipped[st] = skipped.get(st, 0) + 1
            continue
        a.seek(j * bs)
        m.seek(j * bs)
        n = min(bs, size - j * bs)
        if a.read(n) != m.read(n):
            die("block %d (state %d): vhdimount differs from the model"
                % (j, st))
        cmp_n += 1
    print("  %d blocks equal; not compared (state: count) %s"
          % (cmp_n, json.dumps(skipped)))


def kill_data(seed, i, n):
    return random.Random(seed * 100003 + i).randbytes(n)


def kill_ops(seed, size, bs):
    """Disjoint ranges in 64 KiB cells, some crossing block ends."""
    rng = random.Random(seed)
    cell = 32 * 1024
    free = list(range(size // cell))
    rng.shuffle(free)
    used, ops = set(), []
    for c in free:
        span = rng.randrange(1, 24)
        if any(x in used for x in range(c, c + span)) or \
                (c + span) * cell > size:
            continue
        used.update(range(c, c + span))
        a = c * cell + rng.randrange(0, cell)
        b = (c + span) * cell - rng.randrange(0, cell)
        if rng.randrange(3) == 0:
            a, b = a - a % 512, b - b % 512
        if b > a:
            ops.append((a, b - a))
    return ops


def cmd_killwriter(view, seed, bs, journal, go):
    """Write until the view dies; journal what returned and what fsync
    made durable."""
    size = os.path.getsize(view)
    ops = kill_ops(seed, size, bs)
    j = open(journal, "w", buffering=1)
    fd = os.open(view, os.O_RDWR)
    try:
        for i, (off, n) in enumerate(ops):
            j.write("start %d\n" % i)
            os.pwrite(fd, kill_data(seed, i, n), off)
            j.write("done %d\n" % i)
            if i % 6 == 5:
                os.fsync(fd)
                j.write("synced %d\n" % i)
            if i == go:
                open(journal + ".go", "w").close()
    except OSError as e:
        j.write("error %s\n" % e.strerror)
    j.close()


def cmd_killcheck(raw, old, seed, bs, journal):
    size = os.path.getsize(old)
    ops = kill_ops(seed, size, bs)
    started, done, synced = -1, -1, -1
    for line in open(journal):
        w = line.split()
        if w[0] == "start":
            started = int(w[1])
        elif w[0] == "done":
            done = int(w[1])
        elif w[0] == "synced":
            synced = int(w[1])
    r, o = open(raw, "rb").read(), open(old, "rb").read()
    if len(r) != size:
        die("image reads %d bytes, want %d" % (len(r), size))
    written = bytearray(size)
    new_sec = old_sec = 0
    for i, (off, n) in enumerate(ops[:started + 1]):
        d = kill_data(seed, i, n)
        written[off:off + n] = b"\1" * n
        # 512-byte sectors of the virtual disk, clipped to the range
        s = off - off % 512
        while s < off + n:
            a, b = max(s, off), min(s + 512, off + n)
            got = r[a:b]
            if got == d[a - off:b - off] and got != o[a:b]:
                new_sec += 1
            elif got == o[a:b] and got != d[a - off:b - off]:
                if i <= synced:
                    die("op %d [%d, %d): sector at %d is old although "
                        "fsync returned after it" % (i, off, off + n, s))
                old_sec += 1
            elif got != o[a:b]:
                die("op %d [%d, %d): sector at %d is neither old nor new"
                    % (i, off, off + n, s))
            s += 512
    for a in range(0, size, 65536):
        if not any(written[a:a + 65536]) and r[a:a + 65536] != o[a:a + 65536]:
            die("unwritten range at %d changed" % a)
    print("  %d ops started, %d returned, fsync covered %d; sectors: %d new,"
          " %d old" % (started + 1, done + 1, synced + 1, new_sec, old_sec))


def cmd_fill(view, log):
    """Fill a dynamic image on a small filesystem until a write fails."""
    fd = os.open(view, os.O_RDWR)
    size = os.fstat(fd).st_size
    rng = random.Random(7)
    first = None
    i = 0
    for off in range(0, size, MiB):
        try:
            os.pwrite(fd, rng.randbytes(MiB), off)
        except OSError as e:
            first = (off, e.errno)
            break
        i += 1
        if i == 2:
            os.fsync(fd)
    if first is None:
        die("no write failed on the full filesystem")
    if first[1] != errno.ENOSPC:
        die("the failed write gave %s, want ENOSPC" % errno.errorcode[first[1]])
    for what, fn in (("rewrite of block 0", lambda: os.pwrite(fd, b"z" * 512, 0)),
                     ("fsync", lambda: os.fsync(fd))):
        try:
            fn()
            die("%s succeeded after the failure; the error should stick" % what)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                die("%s: %s, want the same ENOSPC" % (what, e))
    print("  write %d (at %d MiB) failed with ENOSPC; later write and fsync "
          "too" % (i, first[0] // MiB))
    with open(log, "w") as f:
        f.write("%d\n" % i)


if __name__ == "__main__":
    a = sys.argv[1:]
    {"apply": lambda: cmd_apply(a[1], a[2], int(a[3]), int(a[4]), int(a[5]),
                                int(a[6]), a[7]),
     "edges": lambda: cmd_edges(a[1], int(a[2])),
     "concurrent": lambda: cmd_concurrent(a[1], a[2], int(a[3]), int(a[4])),
     "bat": lambda: cmd_bat(a[1], a[2], a[3] == "fixed", a[4]),
     "child": lambda: cmd_child(a[1], a[2], a[3]),
     "killwriter": lambda: cmd_killwriter(a[1], int(a[2]), int(a[3]), a[4],
                                          int(a[5])),
     "killcheck": lambda: cmd_killcheck(a[1], a[2], int(a[3]), int(a[4]),
                                        a[5]),
     "fill": lambda: cmd_fill(a[1], a[2]),
     "vhdicmp": lambda: cmd_vhdicmp(a[1], a[2], a[3]),
     }[a[0]]()
EOF
export HELP SCRATCH

# --- images -------------------------------------------------------------

mkdir -p "$SCRATCH/img"
declare -A BS LSS KIND
NAMES=""

# make_image NAME SUB BLOCK SIZE [create-with]: a prefilled image and its
# raw model.
make_image() {
	local name=$1 sub=$2 bs=$3 size=$4 how=${5:-qemu}
	local img=$SCRATCH/img/$name.vhdx b cmds=() i off
	b=$(numfmt --from=iec "$bs")
	BS[$name]=$b
	if [ "$how" != qemu ]; then
		# qemu cannot open 4 KiB-sector VHDX: start empty, check later
		# with the spec reader and libvhdi.
		"$HVRESYNC" create --block-size "$bs" --sector-size 4096 \
			"$img" "$size" || { fail "hvresync create $name"; return 1; }
		truncate -s "$size" "$SCRATCH/img/$name.raw"
		LSS[$name]=4096
		KIND[$name]=$sub
		NAMES="$NAMES $name"
		return 0
	fi
	qemu-img create -q -f vhdx -o "subformat=$sub,block_size=$bs" \
		"$img" "$size" || { fail "qemu-img create $name"; return 1; }
	for ((i = 0; i < 6; i++)); do
		off=$(( (RANDOM * 32768 + RANDOM) % size / 512 * 512 ))
		cmds+=(-c "write -q -P $((i * 40 + 7)) $off $(( (size - off) < b * 3 / 2 ? size - off : b * 3 / 2 ))")
	done
	qemu-io -f vhdx "${cmds[@]}" "$img" || { fail "qemu-io $name"; return 1; }
	qemu-img convert -f vhdx -O raw "$img" "$SCRATCH/img/$name.raw" ||
		{ fail "qemu-img convert $name"; return 1; }
	LSS[$name]=512
	KIND[$name]=$sub
	NAMES="$NAMES $name"
}

say "making images"
make_image dyn1m dynamic 1M $((24 * MiB))
make_image dyn8m dynamic 8M $((42 * MiB))        # a 2 MiB last block
make_image fix2m fixed 2M $((16 * MiB))
make_image dyn4k dynamic 1M $((12 * MiB)) hvresync  # 4 KiB logical sectors

# --- random writes through one writable view of all images ---------------

say "writes through one writable view of all images"
# Refused mounts would land here, never on anything that matters.
X=$SCRATCH/x
mkdir -p "$X"
_mounts+=("$X")
M=$SCRATCH/m
args=()
for n in $NAMES; do args+=("$SCRATCH/img/$n.vhdx"); done
if mount_rw "$M" "${args[@]}"; then
	check "the view's files are mode 0644" \
		test "$(stat -c %a "$M"/* | sort -u)" = 644
	check "dyn1m: reads beside writes see the right data" \
		$T 60 python3 "$PY" concurrent "$M/dyn1m" "$SCRATCH/img/dyn1m.raw" \
		"$SEED" "${BS[dyn1m]}"
	i=0
	for n in $NAMES; do
		i=$((i + 1))
		check "$n: random writes, dd, fallocate -p/-z read back at once" \
			$T 120 python3 "$PY" apply "$M/$n" "$SCRATCH/img/$n.raw" \
			$((SEED + i)) "${BS[$n]}" "${LSS[$n]}" 60 "$SCRATCH/img/$n.zero"
	done
	check "dyn8m: ENOSPC past the end, EPERM for size changes" \
		$T 30 python3 "$PY" edges "$M/dyn8m" $((42 * MiB))
	check "dd past the end fails with 'No space left on device'" \
		bash -c "! dd if=/dev/zero of='$M/dyn1m' bs=1M seek=24 count=1 conv=notrunc 2>'$SCRATCH/dd.err' && grep -q 'No space left' '$SCRATCH/dd.err'"
	check "truncate fails" bash -c "! truncate -s 1M '$M/dyn1m' 2>/dev/null"
	check "fallocate -z past the end fails" \
		bash -c "! fallocate -z -o $((23 * MiB)) -l 2M '$M/dyn1m' 2>/dev/null"
	check "creating a file in the view is refused" \
		bash -c "! touch '$M/newfile' 2>/dev/null"
	expect_error "a second writable mount of an image is refused" "dyn1m.vhdx" "in use" -- \
		"$HVRESYNC" mount --rw "$SCRATCH/img/dyn1m.vhdx" "$X"
	expect_error "a read-only mount of an image being written is refused" "dyn1m.vhdx" "writable" -- \
		"$HVRESYNC" mount "$SCRATCH/img/dyn1m.vhdx" "$X"
	umount_ok "$M"
fi

for n in $NAMES; do
	img=$SCRATCH/img/$n.vhdx
	if [ "${LSS[$n]}" = 512 ]; then
		check "$n: qemu-img check is clean" qcheck "$img"
		$T 60 qemu-img convert -f vhdx -O raw "$img" "$SCRATCH/img/$n.out" ||
			fail "qemu-img convert $n"
		check "$n: qemu-img convert -O raw equals the model" \
			cmp "$SCRATCH/img/$n.out" "$SCRATCH/img/$n.raw"
	else
		truncate -s 0 "$SCRATCH/img/$n.out"
		truncate -s "$(stat -c %s "$SCRATCH/img/$n.raw")" "$SCRATCH/img/$n.out"
		check "$n: read by the spec (Python; qemu has no 4 KiB sectors) equals the model" \
			bash -c "python3 '$PY' child '$img' '$SCRATCH/img/$n.out' '$SCRATCH/img/$n.spec' && cmp '$SCRATCH/img/$n.spec' '$SCRATCH/img/$n.raw'"
		if command -v vhdimount >/dev/null; then
			mkdir -p "$SCRATCH/vh"
			if $T 30 vhdimount -X allow_root "$img" "$SCRATCH/vh" >/dev/null 2>&1; then
				_mounts+=("$SCRATCH/vh")
				check "$n: vhdimount (libvhdi) equals the model" \
					cmp "$SCRATCH/vh/vhdi1" "$SCRATCH/img/$n.raw"
				fusermount3 -u "$SCRATCH/vh"
			else
				fail "$n: vhdimount cannot open it"
			fi
		fi
		rm -f "$SCRATCH/img/$n.spec"
	fi
	rm -f "$SCRATCH/img/$n.out"
	cli_run "$HVRESYNC" inspect --json "$img"
	cp "$SCRATCH/cli.out" "$SCRATCH/img/$n.json"
	check "$n: whole-zeroed blocks are $( [ "${KIND[$n]}" = fixed ] && echo 'kept allocated (fixed)' || echo ZERO ), inspect agrees with the BAT" \
		python3 "$PY" bat "$img" "$SCRATCH/img/$n.zero" "${KIND[$n]}" \
		"$SCRATCH/img/$n.json"
	check "$n: inspect shows a clean log" \
		grep -q '"log_state": "clean"' "$SCRATCH/img/$n.json"
done

# The read-only view agrees too (another reader of what was written).
if mount_view "$SCRATCH/ro" "$SCRATCH/img/dyn8m.vhdx"; then
	check "dyn8m: read-only view after the writes equals the model" \
		cmp "$SCRATCH/ro/dyn8m" "$SCRATCH/img/dyn8m.raw"
	umount_ok "$SCRATCH/ro"
fi

# --- a differencing child ----------------------------------------------------

say "writes into a differencing child"
D=$SCRATCH/diff
mkdir -p "$D"
qemu-img create -q -f vhdx -o subformat=dynamic,block_size=2M "$D/p.vhdx" 20M
qemu-io -f vhdx -c "write -q -P 0x5a 0 7M" -c "write -q -P 0x3c 9M 5M" \
	"$D/p.vhdx" >/dev/null || fail "qemu-io parent"
qemu-img convert -f vhdx -O raw "$D/p.vhdx" "$D/p.raw"
psha=$(sha "$D/p.vhdx")
"$HVRESYNC" create --parent "$D/p.vhdx" "$D/c.avhdx" || fail "hvresync create --parent"
cp "$D/p.raw" "$D/c.model"
cbs=$(python3 -c "import sys; sys.path.insert(0, '$HELP'); import vhdxlib; print(vhdxlib.Vhdx('$D/c.avhdx').block_size)")
if mount_rw "$D/m" "$D/c.avhdx"; then
	check "child: random writes, dd, fallocate -p/-z read back at once" \
		$T 120 python3 "$PY" apply "$D/m/c" "$D/c.model" $((SEED + 50)) \
		"$cbs" 512 60 "$D/c.zero"
	expect_error "a writable mount of the parent of a mounted child is refused" "p.vhdx" "in use" -- \
		"$HVRESYNC" mount --rw "$D/p.vhdx" "$X"
	umount_ok "$D/m"
fi
expect_error "a parent and its child in one writable view are refused" \
	"p.vhdx" "parent of" -- \
	"$HVRESYNC" mount --rw "$D/c.avhdx" "$D/p.vhdx" "$X"
check "child: the parent is unchanged" test "$(sha "$D/p.vhdx")" = "$psha"
check "child: read by the spec (Python) equals the model" \
	python3 "$PY" child "$D/c.avhdx" "$D/p.raw" "$D/c.spec"
cmp -s "$D/c.spec" "$D/c.model" || fail "child: spec reading differs from the model: $(cmp "$D/c.spec" "$D/c.model" 2>&1)"
cli_run "$HVRESYNC" inspect --json "$D/c.avhdx"
cp "$SCRATCH/cli.out" "$D/c.json"
check "child: whole-zeroed blocks are ZERO, inspect agrees with the BAT" \
	python3 "$PY" bat "$D/c.avhdx" "$D/c.zero" differencing "$D/c.json"
if mount_view "$D/ro" "$D/c.avhdx"; then
	check "child: read-only view equals the model" cmp "$D/ro/c" "$D/c.model"
	umount_ok "$D/ro"
fi
if command -v vhdimount >/dev/null; then
	mkdir -p "$D/vhdi"
	if $T 30 vhdimount -X allow_root "$D/c.avhdx" "$D/vhdi" >"$D/vhdi.out" 2>&1; then
		_mounts+=("$D/vhdi")
		last=$(ls "$D/vhdi" | sort -V | tail -n 1)
		check "child: vhdimount ($last) equals the model where libvhdi follows the spec" \
			python3 "$PY" vhdicmp "$D/vhdi/$last" "$D/c.model" "$D/c.avhdx"
		fusermount3 -u "$D/vhdi"
	else
		fail "vhdimount cannot open the child: $(head -n 3 "$D/vhdi.out")"
	fi
fi

# --- the other ways to end a writable view -------------------------------

say "fusermount3 -u and SIGTERM close the images"
E=$SCRATCH/end
mkdir -p "$E/m"
qemu-img create -q -f vhdx -o block_size=1M "$E/e.vhdx" 8M
for how in fusermount SIGTERM foreground-SIGINT; do
	if [ "$how" = foreground-SIGINT ]; then
		python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' "$HVRESYNC" mount -f --rw "$E/e.vhdx" "$E/m" \
			2>"$E/fg.err" &
		fpid=$!
		_mounts+=("$E/m")
		for i in $(seq 100); do mounted "$E/m" && break; sleep 0.1; done
	else
		mount_rw "$E/m" "$E/e.vhdx" || continue
	fi
	head -c 3000000 /dev/urandom >"$E/data"
	dd if="$E/data" of="$E/m/e" bs=1M seek=2 conv=notrunc status=none ||
		fail "$how: dd into the view"
	case $how in
	fusermount) fusermount3 -u "$E/m" ;;
	SIGTERM) kill -TERM "$(daemon_pids "$E/m")" ;;
	*) kill -INT $fpid; wait $fpid
	   check "$how: exit status 0, nothing logged" \
		   bash -c "[ $? -eq 0 ] && [ ! -s '$E/fg.err' ]" ;;
	esac
	check "$how: no mount and no serving process left" wait_gone "$E/m"
	check "$how: qemu-img check clean" qcheck "$E/e.vhdx"
	check "$how: the data is in the image" \
		bash -c "qemu-img convert -f vhdx -O raw '$E/e.vhdx' '$E/e.raw' && cmp -n 3000000 -i 0:$((2 * MiB)) '$E/data' '$E/e.raw'"
	check "$how: the log is clean" \
		bash -c "'$HVRESYNC' inspect --json '$E/e.vhdx' | grep -q '\"log_state\": \"clean\"'"
done

# --- a full filesystem under the image --------------------------------------

say "a full filesystem under the image: sticky ENOSPC, logged once"
F=$SCRATCH/full
mkdir -p "$F/fs"
if mount -t tmpfs -o size=12m tmpfs "$F/fs" 2>/dev/null; then
	_mounts+=("$F/fs")
	qemu-img create -q -f vhdx -o block_size=1M "$F/fs/f.vhdx" 64M
	mkdir -p "$F/m"
	_mounts+=("$F/m")
	"$HVRESYNC" mount -f --rw "$F/fs/f.vhdx" "$F/m" 2>"$F/log" &
	fpid=$!
	for i in $(seq 100); do mounted "$F/m" && break; sleep 0.1; done
	check "full fs: the failed write gets ENOSPC, and so do later writes" \
		$T 60 python3 "$PY" fill "$F/m/f" "$F/n"
	cli_run "$HVRESYNC" umount "$F/m"
	check "full fs: umount reports that the close failed (exit 2, one line)" \
		bash -c "[ $CLI_RC -eq 2 ] && [ \$(wc -l <'$SCRATCH/cli.err') -eq 1 ] && grep -q 'f.vhdx: closing after writes failed' '$SCRATCH/cli.err'"
	wait $fpid
	check "full fs: one log line for the write error, saying it is sticky" \
		bash -c "[ \$(grep -c 'failed: No space left on device; the error is sticky' '$F/log') -eq 1 ]"
	sed 's/^/    log: /' "$F/log" | head -n 4
	# What fsync made durable must be there after replaying the log.
	cp "$F/fs/f.vhdx" "$F/f.vhdx"
	umount "$F/fs"
	check "full fs: qemu-img check -r all repairs the copy" \
		$T 60 qemu-img check -q -r all -f vhdx "$F/f.vhdx"
	check "full fs: then qemu-img check is clean" qcheck "$F/f.vhdx"
	check "full fs: the two blocks written before fsync are there" \
		python3 -c "
import random, sys
r = random.Random(7)
want = r.randbytes(1 << 20) + r.randbytes(1 << 20)
import subprocess
subprocess.run(['qemu-img', 'convert', '-f', 'vhdx', '-O', 'raw', '$F/f.vhdx', '$F/f.raw'], check=True)
sys.exit(open('$F/f.raw', 'rb').read(2 << 20) != want)"
else
	echo "note: cannot mount a tmpfs here; full-filesystem case not run"
fi

# --- SIGKILL in the middle of writes -----------------------------------------

say "SIGKILL of the serving process in the middle of writes"
K=$SCRATCH/kill
mkdir -p "$K"
for round in 1 2; do
	img=$K/k$round.vhdx
	qemu-img create -q -f vhdx -o block_size=1M "$img" 48M
	qemu-io -f vhdx -c "write -q -P 0x77 3M 5M" -c "write -q -P 0x21 17M 2M" \
		"$img" >/dev/null
	qemu-img convert -f vhdx -O raw "$img" "$K/old.raw"
	mount_rw "$K/m" "$img" || continue
	pid=$(daemon_pids "$K/m")
	rm -f "$K/j" "$K/j.go"
	# The writer says when it has done 8 to 40 writes; the kill follows
	# within 50 ms, while it keeps writing.
	$T 60 python3 "$PY" killwriter "$K/m/k$round" $((SEED + round)) $MiB \
		"$K/j" $((8 + RANDOM % 33)) &
	wpid=$!
	for i in $(seq 400); do [ -e "$K/j.go" ] && break; sleep 0.01; done
	sleep "0.0$((RANDOM % 5))"
	kill -KILL $pid
	wait $wpid
	umount -l "$K/m" 2>/dev/null
	grep -q '^error' "$K/j" ||
		echo "note: round $round: the writer finished before the kill"
	cli_run "$HVRESYNC" inspect --json "$img"
	check "kill $round: hvresync inspect opens the image (log: $(sed -n 's/^ *"log_state": "\(.*\)",$/\1/p' "$SCRATCH/cli.out"))" \
		test "$CLI_RC" -eq 0
	cp --sparse=always "$img" "$K/copy.vhdx"
	check "kill $round: qemu-img check -r all on a copy succeeds" \
		$T 60 qemu-img check -q -r all -f vhdx "$K/copy.vhdx"
	check "kill $round: then qemu-img check is clean" qcheck "$K/copy.vhdx"
	qemu-img convert -f vhdx -O raw "$K/copy.vhdx" "$K/after.raw"
	check "kill $round: every written 512-byte sector is old or new, new if fsync returned" \
		python3 "$PY" killcheck "$K/after.raw" "$K/old.raw" $((SEED + round)) $MiB "$K/j"
	if mount_view "$K/ro" "$img"; then
		check "kill $round: the read-only view (log replayed in memory) agrees with qemu" \
			cmp "$K/ro/k$round" "$K/after.raw"
		umount_ok "$K/ro"
	fi
	if mount_rw "$K/m" "$img"; then
		umount_ok "$K/m"
		check "kill $round: a writable open replays the log on disk: qemu-img check clean" \
			qcheck "$img"
		check "kill $round: and the data is unchanged by the replay" \
			bash -c "qemu-img convert -f vhdx -O raw '$img' '$K/r.raw' && cmp '$K/r.raw' '$K/after.raw'"
	fi
	rm -f "$K"/*.raw "$K/copy.vhdx"
done

# --- umount of a view whose serving process died ---------------------------
# Nobody closed its images, so umount must not say all went well: exit 2
# and one line, whether the process died before umount ran or while umount
# waited for its verdict.
say "umount of a view whose serving process died"
img=$K/dead.vhdx
qemu-img create -q -f vhdx -o block_size=1M "$img" 16M
# gone_pid PID: up to 10 s for PID to die (a zombie counts as dead).
gone_pid() {
	local i
	for i in $(seq 100); do
		case $(ps -o stat= -p "$1" 2>/dev/null) in '' | Z*) return 0 ;; esac
		sleep 0.1
	done
	return 1
}
if mount_rw "$K/m" "$img"; then
	pid=$(daemon_pids "$K/m")
	dd if=/dev/urandom of="$K/m/dead" bs=4k count=8 conv=notrunc,fsync \
		status=none
	kill -KILL $pid
	gone_pid "$pid"
	expect_error "umount after the serving process was killed" \
		"$K/m" "serving process had died" "dirty log" -- \
		"$HVRESYNC" umount "$K/m"
	check "and the view is unmounted" wait_gone "$K/m"
fi
if mount_rw "$K/m" "$img"; then
	pid=$(daemon_pids "$K/m")
	kill -STOP $pid
	"$HVRESYNC" umount "$K/m" >"$K/um.out" 2>"$K/um.err" &
	upid=$!
	sleep 1
	kill -KILL $pid
	gone_pid "$pid"
	$T 30 tail --pid=$upid -f /dev/null
	wait $upid
	rc=$?
	check "umount whose serving process died before its verdict: exit 2 (got $rc)" \
		test "$rc" -eq 2
	check "with one line saying so" \
		bash -c "[ \$(wc -l <'$K/um.err') -eq 1 ] && grep -q 'ended without reporting' '$K/um.err'"
	check "and the view is unmounted" wait_gone "$K/m"
fi

finish
