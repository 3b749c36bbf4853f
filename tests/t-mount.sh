#!/bin/bash
# t-mount.sh - `hvresync mount` / `hvresync umount` on qemu-made images:
# every view byte-identical to `qemu-img convert -O raw`, SEEK_DATA and
# SEEK_HOLE consistent with what was written (unwritten blocks of a dynamic
# image are holes), many small reads, several images in one mount, the
# background mode, the four ways to end a view leaving no mount or process
# behind, refusals with one error line, EIO (not a hang) for an image
# truncated under the view, and images unchanged by a read-only session.
# Random writes are seeded: SEED=N tests/t-mount.sh repeats a run.
. "$(dirname "$0")/lib.sh"

for t in qemu-img qemu-io fusermount3 python3 sha256sum; do
	command -v "$t" >/dev/null || skip "$t not installed"
done
[ -c /dev/fuse ] || skip "/dev/fuse not available"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }

SEED=${SEED:-$(( $(date +%s) % 100000 ))}
RANDOM=$SEED
say "seed $SEED (rerun with SEED=$SEED $0)"

# rnd N: R = a random number in [0, N), N up to 2^45.  No $(...): a
# subshell would not advance the seeded sequence.
rnd() { R=$(( ((RANDOM << 30) | (RANDOM << 15) | RANDOM) % $1 )); }

mounted() { grep -q " $1 fuse.hvresync " /proc/self/mounts; }
daemon_pids() { pgrep -f -- "hvresync mount .*$1\$"; }

# wait_gone MNT: up to 10 s for the mount and its serving process to go.
wait_gone() {
	local i
	for i in $(seq 100); do
		if ! mounted "$1" && [ -z "$(daemon_pids "$1")" ]; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# wait_mounted MNT: up to 10 s for a foreground mount to answer.
wait_mounted() {
	local i
	for i in $(seq 100); do
		mounted "$1" && timeout 5 stat "$1" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

# one_line FILE: the file holds exactly one line, starting "hvresync: ".
one_line() {
	[ "$(wc -l <"$1")" -eq 1 ] && grep -q '^hvresync: ' "$1"
}

# --- images -------------------------------------------------------------

mkdir -p "$SCRATCH/img"
declare -A SIZE BLOCK SUB
NAMES=""

# make_image NAME SUBFORMAT BLOCK SIZE NWRITES [EXTRA-OPTS]: create with
# qemu-img, write NWRITES random patterns with qemu-io, remember the ranges.
make_image() {
	local name=$1 sub=$2 bs=$3 size=$4 n=$5 extra=${6:-}
	local img=$SCRATCH/img/$name.vhdx cmds=() i off len pat maxlen
	qemu-img create -q -f vhdx \
		-o "subformat=$sub,block_size=$bs${extra:+,$extra}" "$img" "$size" ||
		{ fail "qemu-img create $name"; return 1; }
	: >"$img.ranges"
	maxlen=$(( $(numfmt --from=iec "$bs") * 5 / 2 ))
	for ((i = 0; i < n; i++)); do
		rnd "$size"; off=$R
		rnd "$maxlen"; len=$(( 1 + R ))
		# Half the writes sector-aligned, half at any byte.
		if ((i % 2)); then
			off=$(( off / 512 * 512 ))
			len=$(( (len + 511) / 512 * 512 ))
		fi
		(( off + len > size )) && len=$(( size - off ))
		rnd 255; pat=$(( 1 + R ))
		cmds+=(-c "write -q -P $pat $off $len")
		echo "$off $len" >>"$img.ranges"
	done
	if ((n)); then
		qemu-io -f vhdx "${cmds[@]}" "$img" ||
			{ fail "qemu-io writes to $name"; return 1; }
	fi
	SIZE[$name]=$size
	BLOCK[$name]=$(numfmt --from=iec "$bs")
	SUB[$name]=$sub
	NAMES="$NAMES $name"
}

say "making images"
make_image dyn1m dynamic 1M $((100 * 1048576 + 512)) 12
make_image dyn8m dynamic 8M $((64 * 1048576 + 1536)) 8 log_size=2M
make_image dyn32m dynamic 32M $((160 * 1048576 + 4096)) 6 log_size=4M
make_image fix8m fixed 8M $((40 * 1048576 + 512)) 6
make_image fix1m fixed 1M $((20 * 1048576)) 5 block_state_zero=off
make_image empty dynamic 8M $((30 * 1048576)) 0
make_image sparse dynamic 1M $((64 * 1048576)) 2

for n in $NAMES; do
	qemu-img convert -f vhdx -O raw "$SCRATCH/img/$n.vhdx" "$SCRATCH/img/$n.raw" ||
		fail "qemu-img convert $n"
	sha256sum "$SCRATCH/img/$n.vhdx" >"$SCRATCH/img/$n.sha"
done

cat >"$SCRATCH/seek.py" <<'EOF'
# seek.py VIEW SIZE BLOCK SUBFORMAT RANGES: the view's data runs as
# SEEK_DATA/SEEK_HOLE report them must cover every written range, and for
# a dynamic image no block that no write touched may hold data.
import errno, os, sys

path, size, block, sub, ranges = sys.argv[1], int(sys.argv[2]), \
    int(sys.argv[3]), sys.argv[4], sys.argv[5]
writes = [tuple(map(int, l.split())) for l in open(ranges) if l.strip()]
fd = os.open(path, os.O_RDONLY)
bad = []

data, off = [], 0
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    if not (off <= d < h <= size):
        bad.append("SEEK_DATA %d -> %d, SEEK_HOLE -> %d" % (off, d, h))
        break
    data.append((d, h))
    off = h

for whence, name in ((os.SEEK_DATA, "SEEK_DATA"), (os.SEEK_HOLE, "SEEK_HOLE")):
    try:
        r = os.lseek(fd, size, whence)
        bad.append("%s at the end gave %d, not ENXIO" % (name, r))
    except OSError as e:
        if e.errno != errno.ENXIO:
            bad.append("%s at the end: %s" % (name, e))
if data and os.lseek(fd, data[-1][1] - 1, os.SEEK_HOLE) != data[-1][1]:
    bad.append("SEEK_HOLE inside the last data run is inconsistent")

def in_data(a, b):
    for d, h in data:
        if d <= a < h:
            if b <= h:
                return True
            a = h
    return False

for o, l in writes:
    if l and not in_data(o, o + l):
        bad.append("written range [%d, %d) is not all data" % (o, o + l))

if sub == "dynamic":
    touched = set()
    for o, l in writes:
        touched.update(range(o // block, (o + l - 1) // block + 1))
    for b in range((size + block - 1) // block):
        if b in touched:
            continue
        a, e = b * block, min((b + 1) * block, size)
        for d, h in data:
            if d < e and a < h:
                bad.append("unwritten block %d [%d, %d) has data [%d, %d)"
                           % (b, a, e, d, h))
                break

print("%s: %d data runs, %d bytes of data" %
      (os.path.basename(path), len(data), sum(h - d for d, h in data)))
for m in bad[:10]:
    print("  " + m)
sys.exit(1 if bad else 0)
EOF

cat >"$SCRATCH/small.py" <<'EOF'
# small.py VIEW RAW SEED: thousands of small reads at random offsets, each
# compared with the same bytes of qemu's raw conversion.
import os, random, sys

view, raw, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
vf, rf = os.open(view, os.O_RDONLY), os.open(raw, os.O_RDONLY)
size = os.fstat(rf).st_size
for i in range(3000):
    n = rng.choice((1, 511, 512, 4096, 65536, rng.randrange(1, 300000)))
    off = rng.randrange(0, size + 4096)
    a, b = os.pread(vf, n, off), os.pread(rf, n, off)
    if a != b:
        print("read of %d at %d differs (view %d bytes, raw %d)" %
              (n, off, len(a), len(b)))
        sys.exit(1)
print("3000 small reads match")
EOF

# --- several images in one background mount ---------------------------------

say "mounting all images in one view (background mode)"
M1=$SCRATCH/m1
mkdir "$M1"
args=()
for n in $NAMES; do args+=("$SCRATCH/img/$n.vhdx"); done
if "$HVRESYNC" mount "${args[@]}" "$M1" >"$SCRATCH/mount.out" 2>&1; then
	_mounts+=("$M1")
	check "mount returns with the mount already live" mounted "$M1"
	check "mount prints nothing on success" test ! -s "$SCRATCH/mount.out"
else
	fail "hvresync mount of all images: $(cat "$SCRATCH/mount.out")"
	finish
fi

check "the view lists exactly the image names" \
	test "$(ls "$M1" | sort | tr '\n' ' ')" = "$(echo $NAMES | tr ' ' '\n' | sort | tr '\n' ' ')"

for n in $NAMES; do
	v=$M1/$n
	check "$n: regular file, mode 0444, virtual size ${SIZE[$n]}" \
		test "$(stat -c '%F %a %s' "$v")" = "regular file 444 ${SIZE[$n]}"
	check "$n: view == qemu-img convert -O raw" \
		timeout 120 cmp "$v" "$SCRATCH/img/$n.raw"
	check "$n: SEEK_DATA/SEEK_HOLE match the written ranges" \
		timeout 60 python3 "$SCRATCH/seek.py" "$v" "${SIZE[$n]}" \
		"${BLOCK[$n]}" "${SUB[$n]}" "$SCRATCH/img/$n.vhdx.ranges"
done
check "many small reads match (dyn1m)" \
	timeout 120 python3 "$SCRATCH/small.py" "$M1/dyn1m" "$SCRATCH/img/dyn1m.raw" "$SEED"
check "many small reads match (dyn32m)" \
	timeout 120 python3 "$SCRATCH/small.py" "$M1/dyn32m" "$SCRATCH/img/dyn32m.raw" "$SEED"

# Two writes of at most 2.5 MiB touch at most 8 of the 64 blocks: cp sees
# a sparse file (st_blocks) and must skip the holes SEEK_HOLE reports.
check "cp --sparse=auto of a view equals the raw image" \
	bash -c "cp --sparse=auto '$M1/sparse' '$SCRATCH/cp.raw' && cmp '$SCRATCH/cp.raw' '$SCRATCH/img/sparse.raw'"
a=$(du -k "$SCRATCH/cp.raw" | cut -f1)
check "cp --sparse=auto keeps the holes ($a KiB allocated of 65536)" \
	test "$a" -le $((8 * 1024 + 64))
rm -f "$SCRATCH/cp.raw"

check "writing to a view is refused" \
	bash -c "! (echo x >'$M1/dyn1m') 2>/dev/null"
check "creating a file in the view is refused" \
	bash -c "! touch '$M1/newfile' 2>/dev/null"

check "hvresync umount ends the view" "$HVRESYNC" umount "$M1"
check "no mount and no serving process left after hvresync umount" \
	wait_gone "$M1"

for n in $NAMES; do
	check "$n: image unchanged by the read-only session" \
		sha256sum --quiet -c "$SCRATCH/img/$n.sha"
done

# --- the ways to end a view ---------------------------------------------

say "fusermount3 -u, SIGTERM and SIGINT"
M2=$SCRATCH/m2
mkdir "$M2"
img=$SCRATCH/img/dyn1m.vhdx
if mount_view "$M2" "$img"; then
	check "fusermount3 -u ends the view" fusermount3 -u "$M2"
	check "no mount and no serving process left after fusermount3 -u" \
		wait_gone "$M2"
else
	fail "mount for the fusermount3 test"
fi

if mount_view "$M2" "$img"; then
	pid=$(daemon_pids "$M2")
	check "the background view has one serving process" \
		test "$(echo "$pid" | wc -w)" -eq 1
	[ -n "$pid" ] && kill -TERM $pid
	check "no mount and no serving process left after SIGTERM" \
		wait_gone "$M2"
else
	fail "mount for the SIGTERM test"
fi

# Scripts start background jobs with SIGINT ignored; restore the default so
# the view sees the signal as an interactive ^C would deliver it.
python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' "$HVRESYNC" mount -f "$img" "$M2" \
	2>"$SCRATCH/fg.err" &
fpid=$!
_mounts+=("$M2")
if wait_mounted "$M2"; then
	check "-f: the view answers from the foreground process" \
		cmp "$M2/dyn1m" "$SCRATCH/img/dyn1m.raw"
	kill -INT $fpid
	wait $fpid
	check "-f: SIGINT ends the foreground view with status 0" test $? -eq 0
	check "no mount left after SIGINT" wait_gone "$M2"
	check "-f: nothing logged for a clean session" test ! -s "$SCRATCH/fg.err"
else
	fail "-f mount did not come up: $(cat "$SCRATCH/fg.err")"
	kill $fpid 2>/dev/null
fi

# A caller capturing the output (as $(...) does) must not wait for the
# serving process, which keeps running after the parent exits.
( "$HVRESYNC" mount "$img" "$M2" 2>&1 | cat >"$SCRATCH/piped.out" ) &
ppid=$!
for i in $(seq 100); do kill -0 $ppid 2>/dev/null || break; sleep 0.1; done
if kill -0 $ppid 2>/dev/null; then
	fail "mount keeps its caller's stdout/stderr open"
else
	ok "mount releases its caller's stdout/stderr"
fi
check "the view started through a pipe is live" mounted "$M2"
"$HVRESYNC" umount "$M2" 2>/dev/null
wait_gone "$M2" || fail "view started through a pipe did not end"

# --- refusals -------------------------------------------------------------

say "refusals"
M3=$SCRATCH/m3
mkdir "$M3"
# expect_refusal DESC PATTERN ARGS...: exit 2, one line matching PATTERN,
# and nothing mounted on M3.
expect_refusal() {
	local desc=$1 pat=$2 rc
	shift 2
	timeout 30 "$HVRESYNC" "$@" >"$SCRATCH/ref.out" 2>"$SCRATCH/ref.err"
	rc=$?
	if [ $rc -ne 2 ]; then
		fail "$desc: exit $rc, not 2 ($(head -c 300 "$SCRATCH/ref.err"))"
	elif ! one_line "$SCRATCH/ref.err"; then
		fail "$desc: not one error line: $(head -c 300 "$SCRATCH/ref.err")"
	elif ! grep -qiE -- "$pat" "$SCRATCH/ref.err"; then
		fail "$desc: message lacks /$pat/: $(cat "$SCRATCH/ref.err")"
	elif mounted "$M3"; then
		fail "$desc: something was mounted"
		"$HVRESYNC" umount "$M3"
	else
		ok "$desc: $(cat "$SCRATCH/ref.err")"
	fi
}
expect_refusal "missing image" "nothere\\.vhdx" \
	mount "$img" "$SCRATCH/nothere.vhdx" "$M3"
expect_refusal "nonexistent mountpoint" "nomnt.*(exist|no such)" \
	mount "$img" "$SCRATCH/nomnt"
expect_refusal "mountpoint is a file" "not a directory" \
	mount "$img" "$SCRATCH/img/dyn1m.raw"
mkdir -p "$SCRATCH/other"
cp --reflink=auto "$SCRATCH/img/dyn8m.vhdx" "$SCRATCH/other/dyn1m.avhdx"
expect_refusal "two images with the same name" "dyn1m" \
	mount "$img" "$SCRATCH/other/dyn1m.avhdx" "$M3"
head -c 1048576 /dev/urandom >"$SCRATCH/junk.vhdx"
expect_refusal "not a VHDX" "junk\\.vhdx" mount "$SCRATCH/junk.vhdx" "$M3"
if mount_view "$M2" "$img"; then
	expect_refusal "mounting over a live view" "already" \
		mount "$img" "$M2"
	check "the first view survives the refused second mount" \
		cmp "$M2/dyn1m" "$SCRATCH/img/dyn1m.raw"
	"$HVRESYNC" umount "$M2"
	wait_gone "$M2" || fail "view on m2 did not end"
fi
expect_refusal "umount of a directory with no view" "m3" umount "$M3"
expect_refusal "umount of a nonexistent path" "nomnt" umount "$SCRATCH/nomnt"
if mount_view "$M2" "$img"; then
	exec 7<"$M2/dyn1m"
	expect_refusal "umount while a file of the view is open" "busy" \
		umount "$M2"
	check "the busy view is still mounted" mounted "$M2"
	exec 7<&-
	check "umount works once the file is closed" "$HVRESYNC" umount "$M2"
	wait_gone "$M2" || fail "view on m2 did not end"
fi
check "the refused mounts left no serving process" \
	test -z "$(daemon_pids "$M3")"

# --- an image truncated under the view ------------------------------------

say "image truncated while mounted"
M4=$SCRATCH/m4
mkdir "$M4"
cp "$SCRATCH/img/dyn1m.vhdx" "$SCRATCH/trunc.vhdx"
"$HVRESYNC" mount -f "$SCRATCH/trunc.vhdx" "$M4" 2>"$SCRATCH/trunc.log" &
tpid=$!
_mounts+=("$M4")
if wait_mounted "$M4"; then
	# Keep the headers, log, BAT and metadata; drop every payload block.
	truncate -s 4M "$SCRATCH/trunc.vhdx"
	timeout 60 dd if="$M4/trunc" of=/dev/null bs=1M 2>"$SCRATCH/dd.err"
	rc=$?
	check "reading the truncated image fails (dd exit $rc, not a timeout)" \
		test $rc -ne 0 -a $rc -ne 124
	check "the failure is EIO" grep -q "Input/output error" "$SCRATCH/dd.err"
	timeout 60 dd if="$M4/trunc" of=/dev/null bs=64k skip=1000 2>/dev/null
	rc=$?
	check "a second read fails too (dd exit $rc)" test $rc -ne 0 -a $rc -ne 124
	check "the view still answers" \
		bash -c "timeout 10 stat '$M4/trunc' >/dev/null"
	check "one log line names the image and EIO" \
		bash -c "[ \$(grep -c 'trunc.vhdx' '$SCRATCH/trunc.log') -eq 1 ] &&
			grep -q 'EIO' '$SCRATCH/trunc.log'"
	kill -TERM $tpid
	wait $tpid
	check "-f: SIGTERM ends the view with status 0" test $? -eq 0
	check "no mount left after SIGTERM" wait_gone "$M4"
else
	fail "-f mount of trunc.vhdx did not come up: $(cat "$SCRATCH/trunc.log")"
	kill $tpid 2>/dev/null
fi
sed 's/^/    log: /' "$SCRATCH/trunc.log"

# --- an image whose reads fail (a failing disk) -----------------------------

say "image that cannot be read (failfs injects EIO)"
FAILFS=$TOP/build/helpers/failfs
if [ -x "$FAILFS" ]; then
	FF=$SCRATCH/ff
	M5=$SCRATCH/m5
	mkdir "$FF" "$M5"
	src=$SCRATCH/img/dyn1m.vhdx
	# qemu appends blocks: the file's last byte is payload, never metadata.
	if "$FAILFS" --eio-at $(( $(stat -c %s "$src") - 1 )) "$src" "$FF"; then
		_mounts+=("$FF")
		"$HVRESYNC" mount -f "$FF/disk" "$M5" 2>"$SCRATCH/ff.log" &
		fpid=$!
		_mounts+=("$M5")
		if wait_mounted "$M5"; then
			timeout 60 dd if="$M5/disk" of=/dev/null bs=1M 2>"$SCRATCH/dd.err"
			rc=$?
			check "reading the view fails (dd exit $rc, not a timeout)" \
				test $rc -ne 0 -a $rc -ne 124
			check "the failure is EIO" \
				grep -q "Input/output error" "$SCRATCH/dd.err"
			timeout 60 dd if="$M5/disk" of=/dev/null bs=1M 2>/dev/null
			check "reading again fails again" test $? -ne 0
			check "the view still answers" \
				bash -c "timeout 10 stat '$M5/disk' >/dev/null"
			check "one log line names the image and EIO" \
				bash -c "[ \$(grep -c '$FF/disk' '$SCRATCH/ff.log') -eq 1 ] &&
					grep -q 'EIO' '$SCRATCH/ff.log'"
			kill -TERM $fpid
			wait $fpid
			check "no mount left after SIGTERM" wait_gone "$M5"
		else
			fail "-f mount over failfs did not come up: $(cat "$SCRATCH/ff.log")"
			kill $fpid 2>/dev/null
		fi
		sed 's/^/    log: /' "$SCRATCH/ff.log"
		fusermount3 -u "$FF" || fail "fusermount3 -u failfs"
	else
		fail "failfs did not mount"
	fi
else
	echo "SKIP: $FAILFS not built; the EIO-from-disk case is not tested"
fi

finish
