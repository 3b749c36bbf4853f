#!/bin/bash
# t-dm.sh - the device-mapper view: `hvresync dm-table` must describe the
# virtual disk exactly.  A small interpreter of the `linear` and `zero`
# lines reads the image file through the table, and the bytes must equal
# `qemu-img convert -O raw` for qemu-made fixed and dynamic images and for
# the clean Windows-made samples.  Images the table cannot describe
# (differencing, dirty log, missing file) are refused with one line and
# exit 2; `map` and `unmap` are checked against this kernel's reality,
# and their udev options parse (the udev waits themselves are checked in
# the real-kernel guest: tests/vm/30-dm-udev-norules.sh).
. "$(dirname "$0")/lib.sh"

command -v qemu-img >/dev/null || skip "qemu-img not installed"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built"; finish; }

_loops=()
dm_cleanup() {
	local l
	if [ -n "${DM_NAME:-}" ] && [ -e "/dev/mapper/$DM_NAME" ]; then
		"$HVRESYNC" unmap "$DM_NAME" >/dev/null 2>&1 ||
			dmsetup remove "$DM_NAME" 2>/dev/null
	fi
	for l in "${_loops[@]:-}"; do
		[ -n "$l" ] && losetup -d "$l" 2>/dev/null
	done
	cleanup
}
trap dm_cleanup EXIT

# The table interpreter: applies each line to DEV, writes OUT (sparse) and
# checks the lines tile [0, SIZE) with no gap, overlap or stray syntax.
cat >"$SCRATCH/dmread.py" <<'EOF'
import os, sys
table, dev, out, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pos = 0
def die(msg):
    sys.exit("dmread: " + msg)
with open(dev, "rb") as d, open(out, "wb") as o:
    devsize = d.seek(0, 2)
    o.truncate(size)
    for n, line in enumerate(open(table).read().splitlines(), 1):
        f = line.split()
        if len(f) < 3 or not f[0].isdigit() or not f[1].isdigit():
            die("line %d malformed: %r" % (n, line))
        start, length = int(f[0]), int(f[1])
        if start != pos:
            die("line %d starts at %d, previous ended at %d" % (n, start, pos))
        if length <= 0:
            die("line %d has length %d" % (n, length))
        if f[2] == "zero":
            if len(f) != 3:
                die("line %d: zero takes no arguments" % n)
        elif f[2] == "linear":
            if len(f) != 5 or f[3] != dev or not f[4].isdigit():
                die("line %d: want 'linear %s OFFSET': %r" % (n, dev, line))
            src, left = int(f[4]) * 512, length * 512
            if src + left > devsize:
                die("line %d reads past the device end (%d > %d)"
                    % (n, src + left, devsize))
            d.seek(src)
            o.seek(start * 512)
            while left:
                buf = d.read(min(left, 8 << 20))
                if not buf:
                    die("line %d: short read" % n)
                o.write(buf)
                left -= len(buf)
        else:
            die("line %d: unknown target %r" % (n, f[2]))
        pos += length
if pos * 512 != size:
    die("table covers %d bytes, the disk has %d" % (pos * 512, size))
EOF

vsize() { qemu-img info --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }

# table_check DESC IMAGE DEV WANT SIZE [auto]: the table read over DEV
# equals the raw file WANT.  With "auto" dm-table picks the device itself;
# otherwise it gets --device DEV.
table_check() {
	local desc=$1 img=$2 dev=$3 want=$4 size=$5 auto=${6:-}
	local tab=$SCRATCH/table got=$SCRATCH/got.raw
	if [ -n "$auto" ]; then
		cli_run "$HVRESYNC" dm-table "$img"
	else
		cli_run "$HVRESYNC" dm-table --device "$dev" "$img"
	fi
	cp "$SCRATCH/cli.out" "$tab"
	if [ "$CLI_RC" -ne 0 ]; then
		fail "$desc: dm-table exit $CLI_RC: $(head -n1 "$SCRATCH/cli.err")"
	elif [ -s "$SCRATCH/cli.err" ]; then
		fail "$desc: dm-table wrote to stderr: $(head -n1 "$SCRATCH/cli.err")"
	elif ! python3 "$SCRATCH/dmread.py" "$tab" "$dev" "$got" "$size"; then
		fail "$desc: table is not well formed"
	elif ! cmp -s "$want" "$got"; then
		fail "$desc: bytes through the table differ from the oracle's: $(cmp "$want" "$got" 2>&1 | head -n1)"
	else
		ok "$desc: $(wc -l <"$tab") table lines, $size bytes equal the oracle's"
	fi
	rm -f "$got"
}

# table_matches DESC IMAGE [DEV]: the table read over DEV equals
# `qemu-img convert -O raw`.  Without DEV the table is read over the image
# file itself (passed as --device); with DEV, dm-table must find DEV alone.
table_matches() {
	local desc=$1 img=$2 size raw=$SCRATCH/want.raw
	size=$(vsize "$img") || { fail "$desc: qemu-img cannot read it"; return; }
	qemu-img convert -O raw "$img" "$raw" ||
		{ fail "$desc: qemu-img convert failed"; return; }
	if [ $# -ge 3 ]; then
		table_check "$desc" "$img" "$3" "$raw" "$size" auto
	else
		table_check "$desc" "$img" "$img" "$raw" "$size"
	fi
	rm -f "$raw"
}

# random_writes IMAGE SIZE SEED N: N qemu-io writes of random patterns at
# random sector offsets (some crossing block boundaries), one zero write,
# and a write touching the last sector.
random_writes() {
	local img=$1 size=$2 n=$4 i off len cmds=()
	RANDOM=$3
	for ((i = 0; i < n; i++)); do
		off=$(( (RANDOM * 32768 + RANDOM) % (size / 512) * 512 ))
		len=$(( (RANDOM % 6144 + 1) * 512 ))
		[ $((off + len)) -gt "$size" ] && len=$((size - off))
		cmds+=(-c "write -P $((RANDOM % 255 + 1)) $off $len")
	done
	off=$(( (RANDOM * 32768 + RANDOM) % (size / 512) * 512 ))
	len=$(( size - off < 1048576 ? size - off : 1048576 ))
	cmds+=(-c "write -z $off $len")
	cmds+=(-c "write -P 0x5a $((size - 512)) 512")
	qemu-io -f vhdx "${cmds[@]}" "$img" >/dev/null
}

say "qemu-made images"
# subformat block-size virtual-size writes
while read -r sub bs size n; do
	img=$SCRATCH/q-$sub-$bs-$size.vhdx
	qemu-img create -q -f vhdx -o subformat=$sub,block_size=$bs "$img" "$size" ||
		{ fail "qemu-img create $sub $bs $size"; continue; }
	[ "$n" -gt 0 ] && random_writes "$img" "$size" "$size" "$n"
	table_matches "$sub, $bs blocks, $size bytes, $n writes" "$img"
	rm -f "$img"
done <<'EOF'
dynamic 1M 10485760 0
dynamic 1M 10485760 12
dynamic 8M 38799872 15
dynamic 32M 104859136 20
fixed 1M 9437696 10
fixed 2M 12582912 0
fixed 16M 41944064 8
EOF

if [ -f "$TOP/tests/helpers/mkvhdx.py" ]; then
	# qemu cannot open 4096-byte logical sectors; the oracle is the
	# manifest of mkvhdx.py's writes applied to a zero file.
	say "4096-byte logical sectors (tests/helpers/mkvhdx.py)"
	img=$SCRATCH/lss4k.vhdx
	want=$SCRATCH/lss4k.raw
	python3 "$TOP/tests/helpers/mkvhdx.py" base --out "$img" --size 16M \
		--block-size 2M --lss 4096 --write 0:64K:0xa5 \
		--write 3M:1M:p7 --zero-block 5 --write 12M:8K:0x3c \
		--write 15M:1M:p9 --manifest "$SCRATCH/lss4k.json" &&
		truncate -s 16M "$want" &&
		python3 "$TOP/tests/helpers/mkvhdx.py" apply "$want" "$SCRATCH/lss4k.json"
	table_check "mkvhdx base, 4096-byte sectors, 2M blocks" "$img" "$img" \
		"$want" $((16 << 20))
	rm -f "$img" "$want"
fi

say "Windows-made samples"
if [ -d "$SAMPLES" ]; then
	for s in qemu-iotest-dynamic-1G.vhdx.bz2 qemu-test-disk2vhd.vhdx.bz2 \
		coreos-config2_base.vhdx.bz2 dissect-fixed.vhdx.gz \
		dissect-dynamic.vhdx.gz; do
		[ -f "$SAMPLES/$s" ] || { fail "sample $s missing"; continue; }
		img=$(unpack_sample "$s")
		table_matches "sample $s" "$img"
		rm -f "$img"
	done

	img=$(unpack_sample dissect-differencing.avhdx.gz)
	expect_error "differencing sample refused" "$img" differencing -- \
		"$HVRESYNC" dm-table --device /dev/null "$img"
	rm -f "$img"

	img=$(unpack_sample qemu-iotest-dirtylog-10G-4M.vhdx.bz2)
	expect_error "dirty-log sample (qemu) refused" "$img" "inspect --replay" -- \
		"$HVRESYNC" dm-table --device /dev/null "$img"
	rm -f "$img"

	# The refusal says to replay the log first; doing so must make the
	# image mappable, with the replayed bytes.
	img=$(unpack_sample discutils-vhdx-log-replay.zip)
	expect_error "dirty-log sample (Windows) refused" "$img" "inspect --replay" -- \
		"$HVRESYNC" dm-table --device /dev/null "$img"
	if "$HVRESYNC" inspect --replay "$img" >/dev/null 2>"$SCRATCH/replay.err"; then
		table_matches "Windows dirty-log sample after 'inspect --replay'" "$img"
	else
		fail "inspect --replay failed: $(head -n1 "$SCRATCH/replay.err")"
	fi
	rm -f "$img"
else
	echo "SKIP: ../shared/samples not found (sample cases not run)"
fi

say "refusals"
base=$SCRATCH/base.vhdx
qemu-img create -q -f vhdx -o subformat=dynamic,block_size=1M "$base" 8M
qemu-io -f vhdx -c "write -P 0x77 0 2M" "$base" >/dev/null
if [ -f "$TOP/tests/helpers/mkvhdx.py" ]; then
	python3 "$TOP/tests/helpers/mkvhdx.py" child --parent "$base" \
		--out "$SCRATCH/child.avhdx" --write 4K:4K:0xa5 --full-block 3:0x11
	expect_error "differencing child refused" child.avhdx differencing -- \
		"$HVRESYNC" dm-table --device /dev/null "$SCRATCH/child.avhdx"
	# Without its parent the refusal must still be about the format.
	mv "$base" "$SCRATCH/base-moved.vhdx"
	expect_error "differencing child without its parent refused" \
		child.avhdx differencing -- \
		"$HVRESYNC" dm-table --device /dev/null "$SCRATCH/child.avhdx"
	mv "$SCRATCH/base-moved.vhdx" "$base"
fi
expect_error "nonexistent image" "$SCRATCH/nope.vhdx" -- \
	"$HVRESYNC" dm-table --device /dev/null "$SCRATCH/nope.vhdx"
expect_error "not a VHDX" "$SCRATCH/table" -- \
	"$HVRESYNC" dm-table --device /dev/null "$SCRATCH/table"
expect_error "no IMAGE" usage -- "$HVRESYNC" dm-table
expect_error "two IMAGEs" usage -- "$HVRESYNC" dm-table "$base" "$base"
expect_error "--device without a value" usage -- "$HVRESYNC" dm-table "$base" --device
expect_error "--device with a space" "--device" -- \
	"$HVRESYNC" dm-table --device "/dev/a b" "$base"

say "default device"
# Without --device and without a loop device the table names the file
# and one note says how to get a device.
cli_run "$HVRESYNC" dm-table "$base"
if [ "$CLI_RC" -eq 0 ] && [ "$(wc -l <"$SCRATCH/cli.err")" -eq 1 ] &&
	grep -q "losetup -r -f --show" "$SCRATCH/cli.err" &&
	grep -q " linear $base " "$SCRATCH/cli.out"; then
	ok "no loop device: table names the file, one note on stderr"
else
	fail "no loop device: exit $CLI_RC, stderr '$(head -n1 "$SCRATCH/cli.err")'"
fi
# With a read-only loop device over the image, dm-table finds it; the
# table read through that loop device gives qemu's bytes.
if [ -e /dev/loop-control ] && loop=$(losetup -r -f --show "$base" 2>/dev/null); then
	_loops+=("$loop")
	cli_run "$HVRESYNC" dm-table "$base"
	if grep -q " linear $loop " "$SCRATCH/cli.out"; then
		ok "dm-table finds $loop over the image"
		table_matches "table read through $loop" "$base" "$loop"
	else
		fail "dm-table did not name $loop: $(head -n1 "$SCRATCH/cli.out")"
	fi
	losetup -d "$loop"
	_loops=()
else
	echo "SKIP: no usable loop devices; default-device case not run"
fi

say "map and unmap"
# no_loop FILE...: no loop device is backed by any FILE (counting all loop
# devices would count other programs' too)
no_loop() {
	local f
	for f in "$@"; do
		[ -e "$f" ] && [ -n "$(losetup -j "$f" 2>/dev/null)" ] && return 1
	done
	return 0
}
if [ ! -e /dev/mapper/control ] && ! grep -q " device-mapper$" /proc/misc; then
	expect_error "map without device-mapper" "device-mapper" -- \
		"$HVRESYNC" map "$base" hvresync-t-dm
	expect_error "unmap without device-mapper" "device-mapper" -- \
		"$HVRESYNC" unmap hvresync-t-dm-unknown
	check "map left no loop device behind" \
		no_loop "$base" "$SCRATCH/child.avhdx"
else
	DM_NAME=hvresync-t-dm-$$
	raw=$SCRATCH/base.raw
	qemu-img convert -O raw "$base" "$raw"
	cli_run "$HVRESYNC" map "$base" "$DM_NAME"
	if [ "$CLI_RC" -ne 0 ]; then
		fail "map: exit $CLI_RC: $(head -n1 "$SCRATCH/cli.err")"
	else
		udevadm settle 2>/dev/null
		check "map prints /dev/mapper/$DM_NAME" \
			grep -qx "/dev/mapper/$DM_NAME" "$SCRATCH/cli.out"
		check "mapped device reads as qemu-img convert" \
			cmp -s "$raw" "/dev/mapper/$DM_NAME"
		check "mapped device is read-only" \
			test "$(blockdev --getro "/dev/mapper/$DM_NAME")" = 1
		expect_error "map of a name in use" "$DM_NAME" -- \
			"$HVRESYNC" map "$base" "$DM_NAME"
		cli_run "$HVRESYNC" unmap "$DM_NAME"
		check "unmap exits 0" test "$CLI_RC" -eq 0
		udevadm settle 2>/dev/null
		check "unmap removed the device" test ! -e "/dev/mapper/$DM_NAME"
		check "unmap detached the loop device" \
			no_loop "$base" "$SCRATCH/child.avhdx"
	fi
	if [ -f "$SCRATCH/child.avhdx" ]; then
		expect_error "map of a differencing child" differencing -- \
			"$HVRESYNC" map "$SCRATCH/child.avhdx" "$DM_NAME"
		check "refused map left no loop device behind" \
			no_loop "$base" "$SCRATCH/child.avhdx"
	fi
	expect_error "unmap of an unknown name" hvresync-t-dm-unknown -- \
		"$HVRESYNC" unmap hvresync-t-dm-unknown
fi
expect_error "map with a bad name" "not a usable device name" -- \
	"$HVRESYNC" map "$base" "bad/name"
expect_error "map without NAME" usage -- "$HVRESYNC" map "$base"
expect_error "unmap without NAME" usage -- "$HVRESYNC" unmap

say "map and unmap: udev options"
for bad in 0 -1 abc 1.5 3601 ""; do
	expect_error "map --udev-timeout '$bad' refused" "--udev-timeout '$bad'" -- \
		"$HVRESYNC" map --udev-timeout "$bad" "$base" hvresync-t-dm-opt
	expect_error "unmap --udev-timeout '$bad' refused" "--udev-timeout '$bad'" -- \
		"$HVRESYNC" unmap --udev-timeout "$bad" hvresync-t-dm-opt
done
expect_error "map --udev-timeout without a value" "missing value" usage -- \
	"$HVRESYNC" map "$base" hvresync-t-dm-opt --udev-timeout
expect_error "map with an unknown option" "unknown option" "--udevsync" -- \
	"$HVRESYNC" map --udevsync "$base" hvresync-t-dm-opt
expect_error "unmap with an unknown option" "unknown option" -- \
	"$HVRESYNC" unmap -x hvresync-t-dm-opt
for cmd in map unmap; do
	cli_run "$HVRESYNC" $cmd --help
	check "$cmd --help names --noudevsync and --udev-timeout" bash -c \
		"test $CLI_RC -eq 0 && grep -q -- '--noudevsync' '$SCRATCH/cli.out' && grep -q -- '--udev-timeout S' '$SCRATCH/cli.out'"
done
if [ ! -e /dev/mapper/control ] && ! grep -q " device-mapper$" /proc/misc; then
	# The options are taken (the refusal is the kernel's, not usage).
	expect_error "map --noudevsync --udev-timeout 5 parses; no device-mapper" \
		"device-mapper" -- \
		"$HVRESYNC" map --noudevsync --udev-timeout 5 "$base" hvresync-t-dm-opt
	expect_error "unmap --udev-timeout 5 --noudevsync parses; no device-mapper" \
		"device-mapper" -- \
		"$HVRESYNC" unmap --udev-timeout 5 --noudevsync hvresync-t-dm-opt
	check "no loop device left behind" \
		no_loop "$base" "$SCRATCH/child.avhdx"
else
	echo "SKIP (part): this kernel has device-mapper; the guest checks (tests/vm/30-*) cover the udev options"
fi
finish
