#!/bin/bash
# t-push.sh - `hvresync push` against `hvresync serve` over loopback TLS
# (pre-shared key): qemu-made and Windows-made primaries; recovery images
# that differ in scattered 4 KiB sectors, in whole blocks, in unallocated
# against allocated blocks and by zeros; different VHDX block sizes on the
# two sides; VHDX to raw and raw to VHDX; compression, other compare block
# sizes and SHA-256; a raw disk whose size is not a multiple of 4 KiB; a
# block device (loop) as the recovery disk; three sessions at once.  After each push qemu-img says
# the images are identical and the recovery VHDX is clean, the
# differencing child and the progress record are gone, and the --json
# figures match the change the test made (computed here in python, not
# by hvresync).
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }
command -v qemu-img >/dev/null || skip "qemu-img not installed"

S=$SCRATCH
STATE=$S/state
SERVER_PID=
_loops=()
VIEWS=()
trap 'for v in "${VIEWS[@]:-}"; do [ -n "$v" ] && fusermount3 -u "$v" 2>/dev/null; done; stop_server; for l in "${_loops[@]:-}"; do [ -n "$l" ] && losetup -d "$l"; done; cleanup' EXIT

# ---------------------------------------------------------------------------
# helpers

. "$(dirname "$0")/helpers/serve.sh"

# identical DESC A FMT_A B FMT_B: qemu-img compare says identical.
identical() {
	if qemu-img compare -q -f "$3" -F "$5" "$2" "$4" 2>"$S/cmp.err"; then
		ok "$1: qemu-img compare: identical"
	else
		fail "$1: qemu-img compare: differ $(head -c 300 "$S/cmp.err")"
	fi
}

clean_vhdx() {
	if qemu-img check -q -f vhdx "$2" >"$S/chk.out" 2>&1; then
		ok "$1: qemu-img check: clean"
	else
		fail "$1: qemu-img check: $(head -c 300 "$S/chk.out")"
	fi
}

# leftovers DESC IMAGE NAME: no child, no merge marker, no state record.
no_leftovers() {
	local f bad=
	for f in "$2.hvresync.avhdx" "$2.hvresync.avhdx.merging"; do
		[ -e "$f" ] && bad="$bad $f"
	done
	ls "$STATE" | grep -q . && bad="$bad state:$(ls "$STATE" | tr '\n' ' ')"
	if [ -n "$bad" ]; then fail "$1: left behind:$bad"; else
		ok "$1: no child, marker or progress record left"
	fi
}

# pushed_ok DESC NAME: the push exited 0 and printed the JSON keys.
pushed_ok() {
	local k
	if [ "$PUSH_RC" -ne 0 ]; then
		fail "$1: push exit $PUSH_RC: $(head -n 2 "$S/$2.err")"
		return 1
	fi
	for k in bytes_compared bytes_different bytes_sent wire_bytes seconds; do
		jget "$S/$2.json" $k >/dev/null 2>&1 ||
			{ fail "$1: --json lacks $k"; return 1; }
	done
	ok "$1: push exit 0, JSON has the keys"
}

# between DESC VALUE LOW HIGH
between() {
	if [ "$2" -ge "$3" ] && [ "$2" -le "$4" ]; then
		ok "$1: $2 in [$3, $4]"
	else
		fail "$1: $2 not in [$3, $4]"
	fi
}

# ---------------------------------------------------------------------------
# disk contents, made with python (the oracle for the figures)

cat >"$S/gen.py" <<'EOF'
import os, random, sys

def rnd(r, n):
    return r.getrandbits(8 * n).to_bytes(n, 'little')

def base(out, size, seed, zeros):
    """Random data everywhere but in the [start, end) ranges of zeros."""
    r = random.Random(seed)
    with open(out, 'wb') as f:
        f.truncate(size)
        pos = 0
        for start, end in sorted(zeros) + [(size, size)]:
            while pos < start:
                n = min(1 << 20, start - pos)
                f.seek(pos)
                f.write(rnd(r, n))
                pos += n
            pos = max(pos, end)

def nonzero_pieces(path):
    with open(path, 'rb') as f:
        data = f.read()
    z = bytes(4096)
    return [i for i in range(len(data) // 4096)
            if data[i * 4096:(i + 1) * 4096] != z]

def scatter(src, out, frac, seed):
    """Copy SRC to OUT with FRAC of its non-zero 4 KiB pieces replaced by
    random bytes; print the bytes changed."""
    r = random.Random(seed)
    pieces = nonzero_pieces(src)
    sel = r.sample(pieces, max(1, int(len(pieces) * frac)))
    with open(src, 'rb') as f, open(out, 'wb') as g:
        g.write(f.read())
    with open(out, 'r+b') as g:
        for p in sel:
            g.seek(p * 4096)
            g.write(rnd(r, 4096))
    print(len(sel) * 4096)

def overwrite(src, out, seed, *ranges):
    """Copy SRC to OUT with the OFF:LEN ranges replaced by random bytes."""
    r = random.Random(seed)
    with open(src, 'rb') as f, open(out, 'wb') as g:
        g.write(f.read())
    total = 0
    with open(out, 'r+b') as g:
        for rg in ranges:
            off, n = (int(x, 0) for x in rg.split(':'))
            g.seek(off)
            g.write(rnd(r, n))
            total += n
    print(total)

def nonzero_bytes(path):
    print(len(nonzero_pieces(path)) * 4096)

cmd = sys.argv[1]
if cmd == 'base':
    zs = [tuple(int(x, 0) for x in a.split(':')) for a in sys.argv[5:]]
    base(sys.argv[2], int(sys.argv[3], 0), int(sys.argv[4]), zs)
elif cmd == 'scatter':
    scatter(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
elif cmd == 'overwrite':
    overwrite(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:])
elif cmd == 'nonzero':
    nonzero_bytes(sys.argv[2])
EOF
GEN="python3 $S/gen.py"
M=$((1 << 20))

# ===========================================================================
say "preparing disks"
# ===========================================================================
make_key "$S/key" || { fail "cannot make a key"; finish; }
cd "$S" || exit 2
# The primary: 64 MiB, data except [40M, 48M) (left unallocated in VHDX).
$GEN base P.raw $((64 * M)) 1 $((40 * M)):$((48 * M))
qemu-img convert -q -f raw -O vhdx -o subformat=dynamic,block_size=1M \
	P.raw P.vhdx
SIZE=$((64 * M))

# A: 1% of the 4 KiB sectors changed at random; 8 MiB VHDX blocks.
CH_A=$($GEN scatter P.raw A.raw 0.01 2)
qemu-img convert -q -f raw -O vhdx -o block_size=8M A.raw A.vhdx
# B: whole compare blocks and a whole VHDX block; 32 MiB VHDX blocks.
CH_B=$($GEN overwrite P.raw B.raw 3 $((3 * M)):65536 $((5 * M + 65536)):65536 \
	$((17 * M)):131072 $((33 * M)):$M $((63 * M)):65536)
qemu-img convert -q -f raw -O vhdx -o block_size=32M B.raw B.vhdx
# C: an empty recovery disk with data where the primary has none.
qemu-img create -q -f vhdx C.vhdx 64M
qemu-io -f vhdx -c "write -P 0x5c 41M 4M" C.vhdx >/dev/null
# D: zeros where the primary has data, data where it has zeros.
cp P.vhdx D.vhdx
qemu-io -f vhdx -c "write -z 10M 256k" -c "write -z 20M 1M" \
	-c "write -P 0x5a 41M 128k" D.vhdx >/dev/null
# E: a raw export (VHDX primary to raw); F: raw primary to VHDX.
cp A.raw E.raw
cp A.vhdx F.vhdx
# G: patterned (compressible) primary, empty recovery.
qemu-img create -q -f vhdx -o block_size=2M G-src.vhdx 64M
qemu-io -f vhdx -c "write -P 0x41 0 12M" -c "write -P 0x42 30M 3M" \
	G-src.vhdx >/dev/null
qemu-img create -q -f vhdx -o block_size=16M G.vhdx 64M
# H, I: other compare block sizes and SHA-256 over copies of A.
cp A.vhdx H.vhdx
cp A.vhdx I.vhdx
# J, K: two sessions at once.
cp A.vhdx J.vhdx
cp B.vhdx K.vhdx

# L: raw disks whose size is not a multiple of 4 KiB (short last block
# and sub-block); the recovery side is all zeros but two runs.
python3 - <<'EOF2'
import random
r = random.Random(11)
n = 10 * 1024 * 1024 + 1536
d = bytearray(r.getrandbits(8 * n).to_bytes(n, 'little'))
open('L-src.raw', 'wb').write(d)
d[n - 1000:n - 900] = b'x' * 100      # in the last, short sub-block
d[5000:5100] = b'y' * 100
open('L.raw', 'wb').write(d)
EOF2
CH_L=$((4096 + 1536))
# N, NL: the primary read through FUSE raw views (hvresync mount), as
# mount-and-resync reads it: a view reads in requests of up to 1 MiB, so
# also a disk of 10 MiB + 1536 bytes (a short last request and block).
cp A.vhdx N.vhdx
# O: a read-only loop device over P.raw as the primary (read with O_DIRECT,
# as a dm view made of loop devices is)
cp A.vhdx O.vhdx
qemu-img convert -q -f raw -O vhdx L-src.raw NL-src.vhdx
cp L.raw NL.raw
# M: a block device (loop) as the recovery disk, zeros in part of it.
LOOP=
truncate -s 16M M-file.raw
$GEN base M-src.raw $((16 * M)) 13 $((4 * M)):$((6 * M))
if LOOP=$(losetup -f --show M-file.raw 2>/dev/null); then
	_loops+=("$LOOP")
fi

EXPORTS=()
for x in A B C D F G H I J K; do EXPORTS+=(--export "$x=$S/$x.vhdx"); done
EXPORTS+=(--export "L=$S/L.raw" --export "N=$S/N.vhdx" --export "NL=$S/NL.raw"
	  --export "O=$S/O.vhdx")
[ -n "$LOOP" ] && EXPORTS+=(--export "M=$LOOP")
EXPORTS+=(--export "E=$S/E.raw" --export "vm1:disk0.vhdx=$S/B2.vhdx")
cp B.vhdx B2.vhdx

# Windows-made samples as primaries (and one as a recovery image).
SAMPLES_OK=
if [ -d "$SAMPLES" ]; then
	SAMPLES_OK=1
	W1=$(unpack_sample qemu-iotest-dynamic-1G.vhdx.bz2)
	W2=$(unpack_sample qemu-test-disk2vhd.vhdx.bz2)
	W3=$(unpack_sample coreos-config2_base.vhdx.bz2)
	W4=$(unpack_sample dissect-fixed.vhdx.gz)
	qemu-img create -q -f vhdx -o block_size=1M W1r.vhdx 1G
	qemu-io -f vhdx -c "write -P 0x11 20M 2M" -c "write -P 0x22 500M 1M" \
		W1r.vhdx >/dev/null
	truncate -s 256M W2r.raw
	qemu-img create -q -f vhdx W4r.vhdx 10M
	# A Windows-made image as the recovery side: the writer merges into it.
	cp "$W3" W3r.vhdx
	$GEN base W3src.raw $((100 * M)) 7 $((60 * M)):$((90 * M))
	EXPORTS+=(--export "W1=$S/W1r.vhdx" --export "W2=$S/W2r.raw"
		  --export "W3=$S/W3r.vhdx" --export "W4=$S/W4r.vhdx")
else
	echo "SKIP: ../shared/samples not found (Windows-made samples are not part of the project); those cases are left out"
fi

start_server "$S/serve.log" --psk-file "$S/key" "${EXPORTS[@]}" ||
	{ cat "$S/serve.log"; finish; }
ok "server listening on 127.0.0.1:$PORT"

# ===========================================================================
say "A: 1% of the 4 KiB sectors differ (1 MiB blocks -> 8 MiB blocks)"
# ===========================================================================
push A P.vhdx
if pushed_ok "A" A; then
	identical "A" P.vhdx vhdx A.vhdx vhdx
	clean_vhdx "A" A.vhdx
	no_leftovers "A" A.vhdx
	# Every changed piece is random, so it differs in full.
	between "A: bytes_different vs the $CH_A bytes changed" \
		"$(jget A.json bytes_different)" "$CH_A" "$CH_A"
	between "A: bytes_sent" "$(jget A.json bytes_sent)" "$CH_A" \
		$((CH_A + CH_A / 100 + 4096))
	between "A: bytes_compared covers the disk" \
		"$(jget A.json bytes_compared)" $SIZE $SIZE
	# Hashes (17 bytes per 64 KiB), sub-block hashes of the differing
	# blocks, frame and TLS overhead: 10% of the change plus 0.1% of
	# the disk, plus the handshake.
	between "A: wire_bytes" "$(jget A.json wire_bytes)" "$CH_A" \
		$((CH_A * 11 / 10 + SIZE / 1000 + 16384))
fi

# ===========================================================================
say "B: whole blocks differ (1 MiB blocks -> 32 MiB blocks)"
# ===========================================================================
push B P.vhdx
if pushed_ok "B" B; then
	identical "B" P.vhdx vhdx B.vhdx vhdx
	clean_vhdx "B" B.vhdx
	no_leftovers "B" B.vhdx
	between "B: bytes_different" "$(jget B.json bytes_different)" \
		"$CH_B" "$CH_B"
	between "B: bytes_sent" "$(jget B.json bytes_sent)" "$CH_B" "$CH_B"
fi

# ===========================================================================
say "C: an empty recovery disk (allocated here, unallocated there)"
# ===========================================================================
DATA_P=$($GEN nonzero P.raw)
push C P.vhdx
if pushed_ok "C" C; then
	identical "C" P.vhdx vhdx C.vhdx vhdx
	clean_vhdx "C" C.vhdx
	no_leftovers "C" C.vhdx
	between "C: bytes_sent is the primary's data" \
		"$(jget C.json bytes_sent)" "$DATA_P" "$DATA_P"
	between "C: bytes_zeroed is the recovery's extra data" \
		"$(jget C.json bytes_zeroed)" $((4 * M)) $((4 * M))
fi

# ===========================================================================
say "D: zeros against data, both ways"
# ===========================================================================
push D P.vhdx
if pushed_ok "D" D; then
	identical "D" P.vhdx vhdx D.vhdx vhdx
	clean_vhdx "D" D.vhdx
	no_leftovers "D" D.vhdx
	between "D: bytes_different" "$(jget D.json bytes_different)" \
		$((M + 256 * 1024 + 128 * 1024)) $((M + 256 * 1024 + 128 * 1024))
	between "D: bytes_sent" "$(jget D.json bytes_sent)" \
		$((M + 256 * 1024)) $((M + 256 * 1024))
	between "D: bytes_zeroed" "$(jget D.json bytes_zeroed)" \
		$((128 * 1024)) $((128 * 1024))
fi

# ===========================================================================
say "E: VHDX primary to a raw export; F: raw primary to a VHDX export"
# ===========================================================================
push E P.vhdx
if pushed_ok "E" E; then
	identical "E" P.vhdx vhdx E.raw raw
	no_leftovers "E" E.raw
	between "E: bytes_sent" "$(jget E.json bytes_sent)" "$CH_A" "$CH_A"
fi
grep -q "export E: .*raw file, written in place: not cancel-safe" \
	"$S/serve.log" && ok "E: the server warns that a raw export is not cancel-safe" ||
	fail "E: no cancel-safety warning for the raw export"
push F P.raw
if pushed_ok "F" F; then
	identical "F" P.raw raw F.vhdx vhdx
	clean_vhdx "F" F.vhdx
	no_leftovers "F" F.vhdx
	between "F: bytes_sent" "$(jget F.json bytes_sent)" "$CH_A" "$CH_A"
fi

# ===========================================================================
say "G: --compress, 1 MiB compare blocks (2 MiB -> 16 MiB VHDX blocks)"
# ===========================================================================
push G G-src.vhdx --compress --block-size 1M
if pushed_ok "G" G; then
	identical "G" G-src.vhdx vhdx G.vhdx vhdx
	clean_vhdx "G" G.vhdx
	no_leftovers "G" G.vhdx
	between "G: bytes_data is the primary's data" \
		"$(jget G.json bytes_data)" $((15 * M)) $((15 * M))
	between "G: compressed bytes_sent" "$(jget G.json bytes_sent)" 1 \
		$((15 * M / 50))
	between "G: wire_bytes follow the compressed size" \
		"$(jget G.json wire_bytes)" 1 $((15 * M / 40 + 65536))
fi

# ===========================================================================
say "H: 4 KiB compare blocks; I: SHA-256 and 4 MiB compare blocks"
# ===========================================================================
push H P.vhdx --block-size 4K
if pushed_ok "H" H; then
	identical "H" P.vhdx vhdx H.vhdx vhdx
	clean_vhdx "H" H.vhdx
	no_leftovers "H" H.vhdx
	between "H: bytes_sent" "$(jget H.json bytes_sent)" "$CH_A" "$CH_A"
fi
push I P.vhdx --hash sha256 --block-size 4M
if pushed_ok "I" I; then
	identical "I" P.vhdx vhdx I.vhdx vhdx
	clean_vhdx "I" I.vhdx
	no_leftovers "I" I.vhdx
	between "I: bytes_sent" "$(jget I.json bytes_sent)" "$CH_A" "$CH_A"
fi

# ===========================================================================
say "L: a raw disk of 10 MiB + 1536 bytes; M: a block device"
# ===========================================================================
push L L-src.raw
if pushed_ok "L" L; then
	cmp -s L-src.raw L.raw && ok "L: cmp: identical" || fail "L: differ"
	between "L: bytes_different" "$(jget L.json bytes_different)" \
		"$CH_L" "$CH_L"
	between "L: bytes_sent" "$(jget L.json bytes_sent)" "$CH_L" "$CH_L"
fi
if [ -n "$LOOP" ]; then
	push M M-src.raw --block-size 256K
	if pushed_ok "M ($LOOP)" M; then
		cmp -s M-src.raw "$LOOP" && ok "M: cmp: identical" ||
			fail "M: differ"
		between "M: bytes_sent" "$(jget M.json bytes_sent)" \
			$((14 * M)) $((14 * M))
	fi
else
	echo "SKIP: no loop device (losetup failed): the block device case is left out"
fi

# ===========================================================================
say "N, NL: from FUSE raw views of the primaries"
# ===========================================================================
mkdir -p vP vL
if [ "$(id -u)" -ne 0 ] || ! [ -e /dev/fuse ]; then
	echo "SKIP: not root or no /dev/fuse: the FUSE view cases are left out"
elif ! "$HVRESYNC" mount P.vhdx vP 2>"$S/vP.err" ||
	! VIEWS+=("$S/vP") || ! "$HVRESYNC" mount NL-src.vhdx vL 2>"$S/vL.err"; then
	fail "N: hvresync mount failed: $(cat "$S/vP.err" "$S/vL.err" 2>/dev/null | head -n 2)"
else
	VIEWS+=("$S/vL")
	push N vP/P
	if pushed_ok "N (from the view of P.vhdx)" N; then
		identical "N" P.vhdx vhdx N.vhdx vhdx
		no_leftovers "N" N.vhdx
		between "N: bytes_different" "$(jget N.json bytes_different)" \
			"$CH_A" "$CH_A"
		between "N: bytes_sent" "$(jget N.json bytes_sent)" "$CH_A" \
			$((CH_A + CH_A / 100 + 4096))
	fi
	push NL vL/NL-src
	if pushed_ok "NL (from the view of a 10 MiB + 1536 VHDX)" NL; then
		cmp -s L-src.raw NL.raw && ok "NL: cmp: identical" ||
			fail "NL: differ"
		between "NL: bytes_different" "$(jget NL.json bytes_different)" \
			"$CH_L" "$CH_L"
	fi
fi

# ===========================================================================
say "O: from a loop device over the primary's raw bytes"
# ===========================================================================
if OLOOP=$(losetup -f --show -r P.raw 2>/dev/null); then
	_loops+=("$OLOOP")
	push O "$OLOOP"
	if pushed_ok "O (from $OLOOP)" O; then
		identical "O" P.raw raw O.vhdx vhdx
		no_leftovers "O" O.vhdx
		between "O: bytes_different" "$(jget O.json bytes_different)" \
			"$CH_A" "$CH_A"
	fi
else
	echo "SKIP: no loop device (losetup failed): the loop primary case is left out"
fi

# ===========================================================================
say "J, K and vm1:disk0.vhdx: three sessions at once"
# ===========================================================================
push J P.vhdx &
pj=$!
push K P.vhdx &
pk=$!
push "vm1:disk0.vhdx" P.raw &
pv=$!
wait $pj; rj=$?; wait $pk; rk=$?; wait $pv; rv=$?
# push() ran in subshells: take their exit status from wait.
for x in J K; do
	PUSH_RC=$([ $x = J ] && echo $rj || echo $rk)
	if pushed_ok "$x (concurrent)" $x; then
		identical "$x" P.vhdx vhdx $x.vhdx vhdx
		clean_vhdx "$x" $x.vhdx
	fi
done
PUSH_RC=$rv
pushed_ok "vm1:disk0.vhdx (an export name with ':')" "vm1:disk0.vhdx" &&
	identical "vm1:disk0.vhdx" P.raw raw B2.vhdx vhdx
no_leftovers "J, K, vm1:disk0.vhdx" J.vhdx
grep -c "session end: .*merged" "$S/serve.log" | grep -q . &&
	ok "the server logs one end line per session: $(grep -c 'session end' "$S/serve.log")"

# ===========================================================================
say "an identical disk costs almost nothing"
# ===========================================================================
push A P.vhdx
if pushed_ok "A again" A; then
	between "A again: bytes_sent" "$(jget A.json bytes_sent)" 0 0
	between "A again: wire_bytes <= 0.1% of the disk + handshake" \
		"$(jget A.json wire_bytes)" 1 $((SIZE / 1000 + 16384))
	no_leftovers "A again" A.vhdx
fi

# ===========================================================================
say "Windows-made samples"
# ===========================================================================
if [ -n "$SAMPLES_OK" ]; then
	push W1 "$W1"
	pushed_ok "W1 (Windows Server 2012, 1 GiB, 32 MiB blocks)" W1 &&
		identical "W1" "$W1" vhdx W1r.vhdx vhdx &&
		clean_vhdx "W1" W1r.vhdx
	push W2 "$W2"
	pushed_ok "W2 (Disk2vhd, 256 MiB) to a raw export" W2 &&
		identical "W2" "$W2" vhdx W2r.raw raw
	push W4 "$W4"
	pushed_ok "W4 (Windows 10 fixed) " W4 &&
		identical "W4" "$W4" vhdx W4r.vhdx vhdx &&
		clean_vhdx "W4" W4r.vhdx
	push W3 W3src.raw
	pushed_ok "W3 (into a Windows Server 2012 R2 image)" W3 &&
		identical "W3" W3src.raw raw W3r.vhdx vhdx &&
		clean_vhdx "W3" W3r.vhdx
	no_leftovers "samples" W1r.vhdx
fi

stop_server
grep -q "stopped" "$S/serve.log" && ok "server stopped on SIGTERM" ||
	fail "server did not log its stop"
finish
