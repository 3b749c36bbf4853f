#!/bin/bash
# t-verify.sh - `hvresync verify` against ground truth computed here: the
# disks' bytes come from `qemu-img convert -O raw` (or are written by this
# script), and a small Python oracle compares them block by block to get
# the differing extents at the chosen block size.  Covers qemu-made VHDX
# pairs with different block sizes, VHDX against raw, raw against raw, a
# differencing child, a dirty-log sample against its replayed copy, the
# Windows-made samples, FUSE views, block devices, one changed byte in the
# awkward places, --json, --hash sha256, bad options, geometry mismatches
# and I/O faults (EIO, short reads, EINTR/EAGAIN) through failfs.
. "$(dirname "$0")/lib.sh"

[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built"; finish; }
command -v qemu-img >/dev/null || skip "qemu-img not installed (qemu-utils)"
command -v qemu-io >/dev/null || skip "qemu-io not installed (qemu-utils)"
command -v python3 >/dev/null || skip "python3 not installed"

S=$SCRATCH
MKVHDX=$TOP/tests/helpers/mkvhdx.py
FAILFS=${FAILFS:-$TOP/build/helpers/failfs}
_loops=()
trap 'for l in "${_loops[@]:-}"; do [ -n "$l" ] && losetup -d "$l" 2>/dev/null; done; cleanup' EXIT

# oracle.py BS RAW_A RAW_B JSON RC: compare the two raw files block by
# block (the last block may be short), merge the differing blocks into
# extents, and check verify's JSON output and exit status against that.
cat >"$S/oracle.py" <<'EOF'
import json, os, sys

bs = int(sys.argv[1])
pa, pb, pj, rc = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
size = os.path.getsize(pa)
if os.path.getsize(pb) != size:
    sys.exit("oracle: the raw files differ in size")
want = []


def next_data(f, off):
    try:
        return os.lseek(f.fileno(), off, os.SEEK_DATA)
    except OSError:
        return size


with open(pa, "rb") as fa, open(pb, "rb") as fb:
    off = 0
    step = max(bs, 1 << 20)
    while off < size:
        # Holes in both files read as zeros on both sides: skip them.
        nd = min(next_data(fa, off), next_data(fb, off))
        if nd - off >= step:
            off += (nd - off) // step * step
            continue
        fa.seek(off)
        fb.seek(off)
        a, b = fa.read(step), fb.read(step)
        if a != b:
            for i in range(0, len(a), bs):
                if a[i:i + bs] != b[i:i + bs]:
                    o, n = off + i, min(bs, size - off - i)
                    if want and want[-1][0] + want[-1][1] == o:
                        want[-1][1] += n
                    else:
                        want.append([o, n])
        off += len(a)
errs = []
try:
    got = json.load(open(pj))
except Exception as e:
    sys.exit("output is not JSON: %s" % e)
for k, t in (("identical", bool), ("block_size", int),
             ("bytes_compared", int), ("bytes_skipped", int),
             ("bytes_different", int), ("extents", list)):
    if not isinstance(got.get(k), t) or (t is int and isinstance(got.get(k), bool)):
        errs.append("key %s missing or not %s" % (k, t.__name__))
if errs:
    sys.exit("; ".join(errs))
ext = [[e.get("offset"), e.get("length")] for e in got["extents"]]
if ext != want:
    errs.append("extents %s, want %s" % (ext[:6], want[:6]))
diff = sum(n for _, n in want)
if got["identical"] != (not want):
    errs.append("identical=%s" % got["identical"])
if got["bytes_different"] != diff:
    errs.append("bytes_different %d, want %d" % (got["bytes_different"], diff))
if got["block_size"] != bs:
    errs.append("block_size %d, want %d" % (got["block_size"], bs))
if got["bytes_compared"] + got["bytes_skipped"] != size:
    errs.append("compared %d + skipped %d != size %d" %
                (got["bytes_compared"], got["bytes_skipped"], size))
if rc != (1 if want else 0):
    errs.append("exit %d, want %d" % (rc, 1 if want else 0))
if errs:
    sys.exit("; ".join(errs))
print("%d extent(s), %d bytes different, %d skipped" %
      (len(want), diff, got["bytes_skipped"]))
EOF

# vcheck DESC BS A B RAW_A RAW_B [VERIFY OPTIONS...]: run verify --json on
# A and B and check it against the oracle on their raw bytes.
vcheck() {
	local desc=$1 bs=$2 a=$3 b=$4 ra=$5 rb=$6 rc out
	shift 6
	timeout -k 5 120 "$HVRESYNC" verify --json --block-size "$bs" "$@" \
		"$a" "$b" >"$S/v.json" 2>"$S/v.err"
	rc=$?
	if [ $rc -ge 2 ]; then
		fail "$desc: exit $rc: $(head -c 300 "$S/v.err")"
		return 1
	fi
	if out=$(python3 "$S/oracle.py" "$bs" "$ra" "$rb" "$S/v.json" $rc 2>&1); then
		ok "$desc: $out"
	else
		fail "$desc: $out"
		return 1
	fi
}

# vexpect DESC "OFF:LEN ..." VERIFY ARGS...: verify --json must report
# exactly these extents (computed by the caller with shell arithmetic);
# an empty list means identical (exit 0).
vexpect() {
	local desc=$1 want=$2 rc got
	shift 2
	timeout -k 5 120 "$HVRESYNC" verify --json "$@" >"$S/v.json" 2>"$S/v.err"
	rc=$?
	got=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(" ".join("%d:%d" % (e["offset"], e["length"]) for e in d["extents"]))
' "$S/v.json" 2>/dev/null)
	want=$(echo $want)
	if [ $rc -ne "$([ -n "$want" ] && echo 1 || echo 0)" ]; then
		fail "$desc: exit $rc ($(head -c 200 "$S/v.err"))"
	elif [ "$got" != "$want" ]; then
		fail "$desc: extents '$got', want '$want'"
	else
		ok "$desc: ${got:-identical}"
	fi
}

to_raw() { qemu-img convert -f vhdx -O raw "$1" "$2"; }

# --- a qemu-made pair with different block sizes --------------------------
say "qemu-made VHDX pair: 1M vs 32M blocks, size not a multiple of 64K"
SIZE=$((64 * 1024 * 1024 + 4608))
qemu-img create -q -f vhdx -o block_size=1M "$S/a.vhdx" $SIZE
qemu-img create -q -f vhdx -o block_size=32M "$S/b.vhdx" $SIZE
# The same random writes on both, then a few on one side only.
python3 - "$SIZE" >"$S/common.cmds" <<'EOF'
import random, sys
size = int(sys.argv[1])
r = random.Random(1234)
for i in range(40):
    off = r.randrange(0, size // 512) * 512
    n = min(r.choice([512, 4096, 65536, 300000 // 512 * 512, 1 << 20]), size - off)
    print("write -P 0x%02x %d %d" % (r.randrange(1, 256), off, n))
print("write -z %d %d" % (20 << 20, 2 << 20))
EOF
qio_cmds() { local args=() l; while read -r l; do args+=(-c "$l"); done <"$1"; qemu-io -f vhdx "${args[@]}" "$2" >/dev/null; }
qio_cmds "$S/common.cmds" "$S/a.vhdx"
qio_cmds "$S/common.cmds" "$S/b.vhdx"
cat >"$S/aonly.cmds" <<EOF
write -P 0x00 $((40 << 20)) $((1 << 20))
write -P 0x33 $((50 << 20)) 4096
EOF
cat >"$S/bonly.cmds" <<EOF
write -P 0x5a 0 512
write -P 0x5b $((33 << 20)) $((3 << 20))
write -z $((8 << 20)) $((1 << 20))
write -P 0x5c $((SIZE - 512)) 512
write -P 0x5d $((3 << 20 + 65536 - 512)) 1024
EOF
qio_cmds "$S/aonly.cmds" "$S/a.vhdx"
qio_cmds "$S/bonly.cmds" "$S/b.vhdx"
to_raw "$S/a.vhdx" "$S/a.raw"
to_raw "$S/b.vhdx" "$S/b.raw"
for bs in 4K 64K 1M 4M; do
	case $bs in
	*K) n=$(( ${bs%K} << 10 )) ;;
	*M) n=$(( ${bs%M} << 20 )) ;;
	esac
	vcheck "vhdx vs vhdx, --block-size $bs" $n "$S/a.vhdx" "$S/b.vhdx" \
		"$S/a.raw" "$S/b.raw"
done
vcheck "vhdx vs raw" 65536 "$S/a.vhdx" "$S/b.raw" "$S/a.raw" "$S/b.raw"
vcheck "raw vs vhdx" 65536 "$S/a.raw" "$S/b.vhdx" "$S/a.raw" "$S/b.raw"
vcheck "raw vs raw (sparse)" 65536 "$S/a.raw" "$S/b.raw" "$S/a.raw" "$S/b.raw"
vcheck "vhdx vs itself" 65536 "$S/a.vhdx" "$S/a.vhdx" "$S/a.raw" "$S/a.raw"
vcheck "vhdx vs its own raw" 4096 "$S/b.vhdx" "$S/b.raw" "$S/b.raw" "$S/b.raw"
vcheck "--hash sha256 gives the same extents" 65536 "$S/a.vhdx" "$S/b.vhdx" \
	"$S/a.raw" "$S/b.raw" --hash sha256
vcheck "--queue-depth 1 --threads 1" 65536 "$S/a.vhdx" "$S/b.vhdx" \
	"$S/a.raw" "$S/b.raw" --queue-depth 1 --threads 1
vcheck "--direct" 4096 "$S/a.raw" "$S/b.vhdx" "$S/a.raw" "$S/b.raw" --direct
# Allocated zeros on A at [40M, 41M) against nothing on B: equal.
python3 - "$S/v.json" <<'EOF' && ok "zeros written on one side equal unallocated on the other" || fail "allocated zeros vs unallocated reported as different"
import json, sys
d = json.load(open(sys.argv[1]))
bad = [e for e in d["extents"] if e["offset"] < (41 << 20) and e["offset"] + e["length"] > (40 << 20)]
sys.exit(1 if bad else 0)
EOF

# Plain-text output: extents and the summary lines.
timeout -k 5 60 "$HVRESYNC" verify "$S/a.vhdx" "$S/b.vhdx" >"$S/text.out" 2>"$S/text.err"
rc=$?
if [ $rc -eq 1 ] && grep -q '^differ offset=0 length=65536 ' "$S/text.out" &&
	grep -q '^bytes compared: ' "$S/text.out" && grep -q '^bytes skipped: ' "$S/text.out" &&
	grep -q '^bytes different: ' "$S/text.out" && grep -q ' s (.*/s)$' "$S/text.out" &&
	[ "$(tail -n 1 "$S/text.out")" = differ ] && [ ! -s "$S/text.err" ]; then
	ok "text output: extents, summary with throughput, exit 1"
else
	fail "text output (exit $rc)"; sed 's/^/    /' "$S/text.out" "$S/text.err" | head -20
fi
"$HVRESYNC" verify "$S/a.vhdx" "$S/a.raw" >"$S/text.out" 2>&1
rc=$?
if [ $rc -eq 0 ] && [ "$(tail -n 1 "$S/text.out")" = identical ] && ! grep -q '^differ' "$S/text.out"; then
	ok "identical disks: exit 0, 'identical'"
else
	fail "identical disks: exit $rc"; head -5 "$S/text.out"
fi
# Nothing on stderr when it is not a terminal (no progress bar).
"$HVRESYNC" verify --json "$S/a.vhdx" "$S/a.raw" >/dev/null 2>"$S/text.err"
check "no progress bar when stderr is not a terminal" test ! -s "$S/text.err"

# --- skipping --------------------------------------------------------------
say "unallocated on both sides is skipped, not read"
qemu-img create -q -f vhdx "$S/big1.vhdx" 8G
qemu-img create -q -f vhdx "$S/big2.vhdx" 8G
qemu-io -f vhdx -c "write -P 0x11 $((5 << 30)) 65536" "$S/big1.vhdx" >/dev/null
qemu-io -f vhdx -c "write -P 0x11 $((5 << 30)) 65536" "$S/big2.vhdx" >/dev/null
# What qemu allocated for the write (a whole VHDX block, zero-filled), as
# mkvhdx.py reads it from the BAT: only that may be read and compared.
alloc=$(python3 "$MKVHDX" info "$S/big1.vhdx" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(sum(d["block_size"] for p in d["payload"] if p["state"] in (6, 7)))')
timeout -k 5 60 "$HVRESYNC" verify --json "$S/big1.vhdx" "$S/big2.vhdx" >"$S/v.json" 2>"$S/v.err"
rc=$?
python3 - "$S/v.json" $rc "$alloc" <<'EOF' && ok "8 GiB disks with one block allocated ($alloc bytes): identical, only that block compared and read, the rest skipped" || fail "skipping: $(tr -d '\n' <"$S/v.json" | head -c 400)"
import json, sys
d = json.load(open(sys.argv[1]))
alloc = int(sys.argv[3])
assert int(sys.argv[2]) == 0
assert 65536 <= alloc <= 256 << 20
assert d["identical"] is True and d["extents"] == []
assert d["bytes_compared"] == alloc, d["bytes_compared"]
assert d["bytes_skipped"] == (8 << 30) - alloc
assert d["bytes_read_a"] == alloc and d["bytes_read_b"] == alloc
EOF

# --- one changed byte -------------------------------------------------------
say "a single changed byte is found with the right extent"
RSIZE=$((5 * 1024 * 1024 + 1000))
python3 - "$S/r.raw" $RSIZE <<'EOF'
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
with open(path, "wb") as f:
    f.truncate(size)
    for off in range(0, size, 1 << 20):
        if off == 1 << 20:
            continue  # [1M, 2M) stays a hole
        f.seek(off)
        f.write(r.randbytes(min(1 << 20, size - off)))
EOF
# poke FILE OFF BYTE: overwrite one byte in place.
poke() { printf "$(printf '\\%03o' "$3")" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
# onebyte DESC OFF BYTE BS "WANT": copy r.raw, change one byte, verify.
onebyte() {
	cp --sparse=always "$S/r.raw" "$S/r2.raw"
	poke "$S/r2.raw" "$2" "$3"
	vexpect "$1" "$5" --block-size "$4" "$S/r.raw" "$S/r2.raw"
}
last=$(( (RSIZE - 1) / 65536 * 65536 ))
onebyte "first byte" 0 0xfe 64K "0:65536"
onebyte "last byte (short last block)" $((RSIZE - 1)) 0xfe 64K "$last:$((RSIZE - last))"
onebyte "last byte, 4K blocks" $((RSIZE - 1)) 0xfe 4K "$(( (RSIZE - 1) / 4096 * 4096 )):$((RSIZE - (RSIZE - 1) / 4096 * 4096))"
onebyte "first byte of block 1" 65536 0xfe 64K "65536:65536"
onebyte "last byte of block 0" 65535 0xfe 64K "0:65536"
onebyte "inside a block that is a hole on the other side" $(( (1 << 20) + 70000 )) 0x01 64K "$(( (1 << 20) + 65536 )):65536"
onebyte "a zero written into a hole changes nothing" $(( (1 << 20) + 70000 )) 0x00 64K ""
onebyte "4M blocks clip at the end" $((RSIZE - 1)) 0xfe 4M "4194304:$((RSIZE - 4194304))"
# Both sides hold the hole; the other side's byte lands in A.
cp --sparse=always "$S/r.raw" "$S/r2.raw"
poke "$S/r2.raw" $(( (2 << 20) - 1 )) 0x80
vexpect "last byte before data, hole on the other side (reversed)" "$(( (2 << 20) - 65536 )):65536" "$S/r2.raw" "$S/r.raw"
# The same through a VHDX: qemu-io changes the disk's last byte.
cp "$S/a.vhdx" "$S/a2.vhdx"
qemu-io -f vhdx -c "write -P 0x42 $((SIZE - 1)) 1" "$S/a2.vhdx" >/dev/null
vexpect "VHDX: last byte of the disk" "$(( (SIZE - 1) / 65536 * 65536 )):$(( SIZE - (SIZE - 1) / 65536 * 65536 ))" "$S/a.vhdx" "$S/a2.vhdx"

# --- differencing child ----------------------------------------------------
say "differencing child (mkvhdx.py, sector-granular writes)"
if python3 "$MKVHDX" child --parent "$S/a.vhdx" --out "$S/c.avhdx" --block-size 1M \
	--write 512:1024:0x77 --write 3M+4K:8K:p3 --full-block 9:0x66 --zero-block 10 \
	--write 63M:1M:p4 >/dev/null 2>"$S/mk.err"; then
	cp --sparse=always "$S/a.raw" "$S/c.raw"
	python3 "$MKVHDX" overlay "$S/c.avhdx" "$S/c.raw"
	vcheck "child vs its expected bytes" 4096 "$S/c.avhdx" "$S/c.raw" "$S/c.raw" "$S/c.raw"
	vcheck "child vs parent, 4K blocks" 4096 "$S/c.avhdx" "$S/a.vhdx" "$S/c.raw" "$S/a.raw"
	vcheck "child vs parent, 1M blocks" $((1 << 20)) "$S/c.avhdx" "$S/a.vhdx" "$S/c.raw" "$S/a.raw"
else
	fail "mkvhdx.py child: $(head -c 300 "$S/mk.err")"
fi

# --- FUSE views and block devices -------------------------------------------
say "FUSE raw views"
if [ -c /dev/fuse ] && mount_view "$S/view" "$S/a.vhdx" "$S/b.vhdx" 2>"$S/m.err"; then
	vcheck "view vs view" 65536 "$S/view/a" "$S/view/b" "$S/a.raw" "$S/b.raw"
	vcheck "view vs vhdx" 4096 "$S/view/a" "$S/b.vhdx" "$S/a.raw" "$S/b.raw"
	"$HVRESYNC" umount "$S/view" 2>/dev/null || fusermount3 -u "$S/view"
else
	fail "hvresync mount: $(head -c 300 "$S/m.err")"
fi

say "block devices"
loop=$(losetup -f --show -r "$S/b.raw" 2>/dev/null)
if [ -n "$loop" ] && [ -b "$loop" ]; then
	_loops+=("$loop")
	vcheck "block device vs vhdx" 65536 "$loop" "$S/a.vhdx" "$S/b.raw" "$S/a.raw"
	head -c $((4 << 20)) /dev/urandom >"$S/4k.raw"
	loop4k=$(losetup -f --show -r -b 4096 "$S/4k.raw" 2>/dev/null)
	if [ -n "$loop4k" ]; then
		_loops+=("$loop4k")
		expect_error "block device with 4096-byte sectors vs a raw file" \
			"$loop4k" "$S/4k.raw" "4096" "512" -- \
			"$HVRESYNC" verify "$loop4k" "$S/4k.raw"
	fi
else
	echo "SKIP: block devices: losetup cannot set up a loop device here"
fi

# --- samples ----------------------------------------------------------------
say "dirty log and Windows-made samples"
if [ -d "$SAMPLES" ]; then
	d=$(unpack_sample qemu-iotest-dirtylog-10G-4M.vhdx.bz2)
	cp "$d" "$S/replayed.vhdx"
	qemu-img check -q -r all "$S/replayed.vhdx" >/dev/null 2>&1
	vexpect "dirty-log sample vs its copy replayed by qemu-img check -r all" "" "$d" "$S/replayed.vhdx"
	to_raw "$S/replayed.vhdx" "$S/replayed.raw"
	vcheck "dirty-log sample vs qemu's raw of the replayed copy" 65536 "$d" \
		"$S/replayed.raw" "$S/replayed.raw" "$S/replayed.raw"
	rm -f "$d" "$S/replayed.vhdx" "$S/replayed.raw"
	for f in qemu-iotest-dynamic-1G.vhdx.bz2 qemu-test-disk2vhd.vhdx.bz2 \
		coreos-config2_base.vhdx.bz2 discutils-vhdx-log-replay.zip \
		dissect-fixed.vhdx.gz dissect-dynamic.vhdx.gz; do
		[ -f "$SAMPLES/$f" ] || { fail "$f missing from $SAMPLES"; continue; }
		img=$(unpack_sample "$f")
		vexpect "$f against itself" "" "$img" "$img"
		# qemu replays a dirty log only on a read-write open: give
		# it a replayed copy to convert.
		cp "$img" "$S/copy.vhdx"
		qemu-img check -q -r all "$S/copy.vhdx" >/dev/null 2>&1
		if to_raw "$S/copy.vhdx" "$S/sample.raw" 2>/dev/null; then
			vcheck "$f against qemu-img's raw" 65536 "$img" "$S/sample.raw" \
				"$S/sample.raw" "$S/sample.raw"
		else
			fail "$f: qemu-img convert failed"
		fi
		rm -f "$img" "$S/copy.vhdx" "$S/sample.raw"
	done
	img=$(unpack_sample dissect-differencing.avhdx.gz)
	expect_error "differencing sample without its parent" "$img" "parent" -- \
		"$HVRESYNC" verify "$img" "$img"
	rm -f "$img"
else
	echo "SKIP: ../shared/samples not found (the Windows-made samples are not part of the project)"
fi

# --- errors -----------------------------------------------------------------
say "geometry, options and missing files"
head -c $((64 << 20)) /dev/zero >"$S/small.raw"
expect_error "virtual sizes differ" "$SIZE" "$((64 << 20))" "small.raw" -- \
	"$HVRESYNC" verify "$S/a.vhdx" "$S/small.raw"
if python3 "$MKVHDX" base --out "$S/lss4k.vhdx" --size 64M --lss 4096 >/dev/null 2>&1; then
	expect_error "logical sector sizes differ (4096 vs 512)" "4096" "512" "lss4k.vhdx" -- \
		"$HVRESYNC" verify "$S/lss4k.vhdx" "$S/small.raw"
else
	fail "mkvhdx.py base --lss 4096 failed"
fi
for bad in 3000 2K 8M 0 abc 64Q -4K; do
	expect_error "--block-size $bad" "--block-size" -- \
		"$HVRESYNC" verify --block-size "$bad" "$S/a.raw" "$S/b.raw"
done
expect_error "--hash md5" "--hash" "md5" -- "$HVRESYNC" verify --hash md5 "$S/a.raw" "$S/b.raw"
expect_error "missing file" "$S/nonexistent" -- "$HVRESYNC" verify "$S/a.raw" "$S/nonexistent"
expect_error "a directory" "$S" -- "$HVRESYNC" verify "$S" "$S/a.raw"
cli_run "$HVRESYNC" verify "$S/a.raw"
check "one operand: exit 2" test "$CLI_RC" -eq 2
cli_run "$HVRESYNC" verify --bogus "$S/a.raw" "$S/b.raw"
check "unknown option: exit 2" test "$CLI_RC" -eq 2
cp "$S/a.vhdx" "$S/trunc.vhdx"
truncate -s 2M "$S/trunc.vhdx"
cli_run "$HVRESYNC" verify "$S/trunc.vhdx" "$S/a.raw"
if [ "$CLI_RC" -eq 2 ] && grep -q "trunc.vhdx" "$SCRATCH/cli.err"; then
	ok "truncated VHDX: exit 2: $(head -c 200 "$SCRATCH/cli.err")"
else
	fail "truncated VHDX: exit $CLI_RC: $(head -c 200 "$SCRATCH/cli.err")"
fi

# --- I/O faults through failfs ----------------------------------------------
say "I/O faults (failfs)"
if [ ! -x "$FAILFS" ]; then
	fail "$FAILFS not built"
elif [ ! -c /dev/fuse ]; then
	echo "SKIP: I/O faults: /dev/fuse missing"
else
	M=$S/ff
	mkdir -p "$M"
	_mounts+=("$M")
	# ff SOURCE OPTS...: serve SOURCE as $M/disk with faults.
	ff() { local src=$1; shift; "$FAILFS" "$@" "$src" "$M" && mountpoint -q "$M"; }
	ffu() { fusermount3 -u "$M"; }
	cp --sparse=always "$S/r.raw" "$S/r2.raw"
	poke "$S/r2.raw" 3000000 0x55

	if ff "$S/r.raw"; then
		vexpect "through failfs, no faults" "" "$M/disk" "$S/r.raw"
		ffu
	fi
	if ff "$S/r.raw" --short; then
		vexpect "short reads" "" "$M/disk" "$S/r.raw"
		vexpect "short reads, one changed byte" "$(( 3000000 / 65536 * 65536 )):65536" "$M/disk" "$S/r2.raw"
		ffu
	fi
	if ff "$S/r.raw" --eintr --eagain --max-read 65536; then
		vexpect "EINTR and EAGAIN on every other request" "" "$M/disk" "$S/r.raw"
		ffu
	fi
	if ff "$S/r.raw" --eio-at 3M; then
		start=$SECONDS
		expect_error "EIO in the middle of a raw disk" "$M/disk" "offset" \
			"Input/output error" -- "$HVRESYNC" verify "$M/disk" "$S/r.raw"
		off=$(sed -n 's/.*offset \([0-9]*\).*/\1/p' "$SCRATCH/cli.err")
		if [ -n "$off" ] && [ "$off" -le $((3 << 20)) ] && [ "$off" -gt $(( (3 << 20) - (4 << 20) )) ]; then
			ok "the error names the offset of the failed read ($off)"
		else
			fail "offset in the message: '$off'"
		fi
		check "it fails quickly (no hang)" test $((SECONDS - start)) -lt 20
		cli_run "$HVRESYNC" verify --json "$M/disk" "$S/r.raw"
		if [ "$CLI_RC" -eq 2 ] && python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert "Input/output error" in d["error"] and isinstance(d["extents"], list)
' "$SCRATCH/cli.out" 2>/dev/null; then
			ok "--json on a read error: exit 2, a complete document with \"error\""
		else
			fail "--json on a read error: exit $CLI_RC, $(head -c 200 "$SCRATCH/cli.out")"
		fi
		ffu
	fi
	# A VHDX served through failfs, failing inside a payload block.
	# (mkvhdx.py reads the BAT itself, independently of hvresync.)
	host=$(python3 "$MKVHDX" info "$S/a.vhdx" | python3 -c '
import json, sys
m = [p for p in json.load(sys.stdin)["payload"] if p["state"] == 6]
print(m[len(m) // 2]["file_offset"] + 4096)')
	if [ -n "$host" ] && ff "$S/a.vhdx" --eio-at "$host"; then
		expect_error "EIO inside a VHDX payload block" "$M/disk" "offset" \
			"Input/output error" -- "$HVRESYNC" verify "$M/disk" "$S/a.raw"
		ffu
	fi
fi

finish
