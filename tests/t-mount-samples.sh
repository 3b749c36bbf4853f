#!/bin/bash
# t-mount-samples.sh - every real sample in ../shared/samples shown by one
# `hvresync mount`: each view byte-identical to `qemu-img convert -O raw`
# (for the two dirty-log samples: qemu's conversion of a copy repaired with
# `qemu-img check -r all`, while the view reads the unrepaired original and
# must leave it untouched), data runs reported by SEEK_DATA/SEEK_HOLE
# inside the file, and the differencing sample, whose parent is not
# included, refused with one line naming the relative_path it looked for.
. "$(dirname "$0")/lib.sh"
need_samples
for t in qemu-img python3 sha256sum fusermount3; do
	command -v "$t" >/dev/null || skip "$t not installed"
done
[ -c /dev/fuse ] || skip "/dev/fuse not available"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }

PLAIN="qemu-iotest-dynamic-1G.vhdx.bz2 qemu-test-disk2vhd.vhdx.bz2
	coreos-config2_base.vhdx.bz2 dissect-fixed.vhdx.gz
	dissect-dynamic.vhdx.gz"
DIRTY="qemu-iotest-dirtylog-10G-4M.vhdx.bz2 discutils-vhdx-log-replay.zip"
DIFF=dissect-differencing.avhdx.gz

mkdir -p "$SCRATCH/img" "$SCRATCH/ref"
imgs=()
declare -A REF
say "unpacking samples and converting them with qemu-img"
for s in $PLAIN $DIRTY; do
	if [ ! -f "$SAMPLES/$s" ]; then
		echo "SKIP: $s not in $SAMPLES"
		continue
	fi
	f=$(SCRATCH=$SCRATCH/img unpack_sample "$s") || { fail "unpack $s"; continue; }
	name=$(basename "$f"); name=${name%.vhdx}
	src=$f
	case " $DIRTY " in *" $s "*)
		# qemu replays a log only when it may write: repair a copy.
		src=$SCRATCH/ref/$name.repaired.vhdx
		cp "$f" "$src"
		qemu-img check -q -r all -f vhdx "$src" >/dev/null 2>&1
		;;
	esac
	qemu-img convert -f vhdx -O raw "$src" "$SCRATCH/ref/$name.raw" ||
		{ fail "qemu-img convert $s"; continue; }
	sha256sum "$f" >"$SCRATCH/ref/$name.sha"
	REF[$name]=$SCRATCH/ref/$name.raw
	imgs+=("$f")
done
[ ${#imgs[@]} -gt 0 ] || skip "no sample could be unpacked"

cat >"$SCRATCH/runs.py" <<'EOF'
# runs.py VIEW: walk SEEK_DATA/SEEK_HOLE; runs must be ordered, inside the
# file, and SEEK_DATA past the last run must give ENXIO.
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
off, runs = 0, 0
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            break
        raise
    h = os.lseek(fd, d, os.SEEK_HOLE)
    if not (off <= d < h <= size):
        sys.exit("bad run: from %d data %d hole %d" % (off, d, h))
    runs, off = runs + 1, h
print("%d data runs" % runs)
EOF

M=$SCRATCH/m
say "mounting ${#imgs[@]} samples in one view"
if ! mount_view "$M" "${imgs[@]}"; then
	fail "hvresync mount of the samples"
	finish
fi
for name in "${!REF[@]}"; do
	check "$name: view == qemu's raw conversion" \
		timeout 300 cmp "$M/$name" "${REF[$name]}"
	check "$name: SEEK_DATA/SEEK_HOLE runs are consistent" \
		timeout 60 python3 "$SCRATCH/runs.py" "$M/$name"
done
check "hvresync umount" "$HVRESYNC" umount "$M"
for _ in $(seq 100); do
	grep -q " $M " /proc/self/mounts || break
	sleep 0.1
done
check "no mount left" bash -c "! grep -q ' $M ' /proc/self/mounts"
for name in "${!REF[@]}"; do
	check "$name: file unchanged by the read-only view (log not replayed on disk)" \
		sha256sum --quiet -c "$SCRATCH/ref/$name.sha"
done

say "differencing sample without its parent"
if [ -f "$SAMPLES/$DIFF" ]; then
	f=$(SCRATCH=$SCRATCH/img unpack_sample "$DIFF")
	# The locator's relative_path, read from the file's UTF-16 strings.
	rel=$(python3 - "$f" <<'EOF'
import re, sys
text = open(sys.argv[1], "rb").read().decode("utf-16-le", "replace")
m = re.search(r"relative_path(.*?\.avhdx)", text)
print(m.group(1) if m else "")
EOF
)
	mkdir -p "$SCRATCH/m2"
	timeout 30 "$HVRESYNC" mount "$f" "$SCRATCH/m2" 2>"$SCRATCH/diff.err"
	rc=$?
	check "exit status 2 (got $rc)" test $rc -eq 2
	check "one error line" test "$(wc -l <"$SCRATCH/diff.err")" -eq 1
	check "the line names relative_path '$rel': $(cat "$SCRATCH/diff.err")" \
		grep -qF -- "$rel" "$SCRATCH/diff.err"
	check "nothing mounted" bash -c "! grep -q ' $SCRATCH/m2 ' /proc/self/mounts"
else
	echo "SKIP: $DIFF not in $SAMPLES"
fi

finish
