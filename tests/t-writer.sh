#!/bin/bash
# t-writer.sh - the VHDX writer and `hvresync create`: images made by
# `hvresync create` and written through vhdx_pwrite/vhdx_write_zeroes
# (build/helpers/vhdx-io) must pass `qemu-img check` and read back, through
# qemu-img convert or libvhdi's vhdimount, exactly as a python model that
# applies the same writes to a bytearray (tests/helpers/writer_model.py).
# Covers fixed and dynamic images with 1, 2 and 32 MiB blocks, 4096-byte
# sectors (libvhdi only: qemu does not open those), sizes that end inside
# a block, whole-block zeroing (ZERO state, no growth), partial writes
# into unallocated blocks, differencing children over a qemu-made parent
# (parent locator and linkage as vhdiinfo sees them), the header GUIDs a
# writer must renew, and create's error handling.
. "$(dirname "$0")/lib.sh"
IO=${VHDX_IO:-$TOP/build/helpers/vhdx-io}
CAT=${VHDX_CAT:-$TOP/build/helpers/vhdx-cat}
export VHDX_CAT=$CAT # for writer_model.py's "cat" reader
for b in "$HVRESYNC" "$IO" "$CAT"; do
	[ -x "$b" ] || { fail "$b not built (make -j2 all)"; finish; }
done
M="python3 $TOP/tests/helpers/writer_model.py"
S=$SCRATCH
MiB=$((1024 * 1024))

. "$(dirname "$0")/helpers/writer.sh"

# jget FILE KEY.PATH: a value from a JSON file.
jget() {
	python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    d = d[int(k)] if k.isdigit() else d[k]
print(d)' "$1" "$2"
}

fsize() { stat -c %s "$1"; }

# std_ops SIZE BS LSS: a write list for any image: sector-aligned and
# unaligned writes, a block-crossing write, a whole block, partial zeroing
# inside written data, seeded random writes, and the last sector.
std_ops() {
	local size=$1 bs=$2 lss=$3
	echo "r:12345:40:$((3 * MiB))" f \
		"w:0:$((2 * lss)):0x11" \
		"w:$((bs - 1024)):$((8 * lss)):0x22" \
		"w:$bs:$bs:0x33" \
		"w:$((bs + 100)):1000:0x44" \
		"z:$((bs + 4 * lss)):$((2 * lss))" \
		"w:$((size - bs / 2 - 700)):1500:0x55" \
		"w:$((size - lss)):$lss:0x66"
}

# =====================================================================
say "dynamic images: 1, 2 and 32 MiB blocks, size ending inside a block"
# =====================================================================
for bs in 1 2 32; do
	img=$S/dyn$bs.vhdx
	size=$((77 * MiB + 1536))
	if ! "$HVRESYNC" create --block-size ${bs}M "$img" $size 2>"$S/err"; then
		fail "create --block-size ${bs}M: $(cat "$S/err")"
		continue
	fi
	verify "fresh dynamic ${bs}M" qemu "$img" <(head -c $size /dev/zero)
	ops=$(std_ops $size $((bs * MiB)) 512)
	# shellcheck disable=SC2086
	io "$img" $ops || continue
	# shellcheck disable=SC2086
	$M expect "$S/model.raw" --size $size $ops
	verify "dynamic ${bs}M after writes" qemu "$img" "$S/model.raw"
	verify "dynamic ${bs}M after writes" vhdi "$img" "$S/model.raw"
	verify "dynamic ${bs}M after writes" cat "$img" "$S/model.raw"
	check "dynamic ${bs}M: allocations 1 MiB aligned and disjoint" $M alloc "$img"
	rm -f "$img" "$S/model.raw"
done

# =====================================================================
say "fixed images: 1 and 32 MiB blocks"
# =====================================================================
for bs in 1 32; do
	img=$S/fix$bs.vhdx
	size=$((72 * MiB + 512))
	if ! "$HVRESYNC" create --fixed --block-size ${bs}M "$img" $size 2>"$S/err"; then
		fail "create --fixed --block-size ${bs}M: $(cat "$S/err")"
		continue
	fi
	before=$(fsize "$img")
	blocks=$(((size + bs * MiB - 1) / (bs * MiB)))
	n=$($M states "$img" | grep -c fully_present)
	[ "$n" -eq $blocks ] && ok "fixed ${bs}M: all $blocks blocks fully present" ||
		fail "fixed ${bs}M: $n of $blocks blocks fully present"
	ops="$(std_ops $size $((bs * MiB)) 512) z:0:$((bs * MiB))"
	# shellcheck disable=SC2086
	io "$img" $ops || continue
	# shellcheck disable=SC2086
	$M expect "$S/model.raw" --size $size $ops
	verify "fixed ${bs}M after writes" qemu "$img" "$S/model.raw"
	verify "fixed ${bs}M after writes" vhdi "$img" "$S/model.raw"
	[ "$(fsize "$img")" -eq "$before" ] && ok "fixed ${bs}M: file did not grow" ||
		fail "fixed ${bs}M: file grew from $before to $(fsize "$img")"
	n=$($M states "$img" | grep -c fully_present)
	[ "$n" -eq $blocks ] &&
		ok "fixed ${bs}M: a zeroed whole block stays allocated" ||
		fail "fixed ${bs}M: only $n of $blocks blocks still fully present"
	rm -f "$img" "$S/model.raw"
done

# =====================================================================
say "4096-byte logical sectors (libvhdi is the oracle)"
# =====================================================================
for kind in dynamic fixed; do
	img=$S/s4k-$kind.vhdx
	size=$((20 * MiB + 3 * 4096))
	opt=""
	[ $kind = fixed ] && opt=--fixed
	# shellcheck disable=SC2086
	if ! "$HVRESYNC" create $opt --block-size 1M --sector-size 4096 "$img" $size \
		2>"$S/err"; then
		fail "create --sector-size 4096 ($kind): $(cat "$S/err")"
		continue
	fi
	if vhdiinfo "$img" 2>&1 | grep -Eq 'Bytes per sector[[:space:]]*: 4096'; then
		ok "4k $kind: vhdiinfo sees 4096-byte sectors"
	else
		fail "4k $kind: vhdiinfo does not see 4096-byte sectors"
	fi
	# 4096-aligned writes, plus 512-aligned and unaligned ones that the
	# writer has to widen to whole 4096-byte sectors
	ops="$(std_ops $size $MiB 4096) w:$((5 * MiB + 512)):512:0x77 w:$((7 * MiB + 5000)):100:0x78"
	# shellcheck disable=SC2086
	io "$img" $ops || continue
	# shellcheck disable=SC2086
	$M expect "$S/model.raw" --size $size $ops
	verify "4k $kind after writes" vhdi "$img" "$S/model.raw"
	verify "4k $kind after writes" cat "$img" "$S/model.raw"
	check "4k $kind: allocations 1 MiB aligned and disjoint" $M alloc "$img"
	rm -f "$img" "$S/model.raw"
done

# =====================================================================
say "6 GiB sparse dynamic: BAT entries around the sector-bitmap slots"
# =====================================================================
# With 32 MiB blocks every 128th BAT entry is a sector-bitmap slot: blocks
# 127, 128 and 129 sit on both sides of the first one.  qemu-io checks
# byte patterns by range (the disk is too big for a model in memory).
img=$S/big.vhdx
G=$((1024 * MiB))
"$HVRESYNC" create "$img" 6G
io "$img" w:$((127 * 32 * MiB)):4096:0x11 w:$((128 * 32 * MiB - 512)):1024:0x12 \
	w:$((129 * 32 * MiB + 5)):100:0x13 w:$((5 * G)):$((32 * MiB)):0x14 \
	w:$((6 * G - 512)):512:0x15
check "6 GiB image passes qemu-img check" qemu-img check -q -f vhdx "$img"
qemu-io -r -f vhdx \
	-c "read -P 0x11 $((127 * 32 * MiB)) 4096" \
	-c "read -P 0 $((127 * 32 * MiB + 4096)) $((32 * MiB - 4096 - 512))" \
	-c "read -P 0x12 $((128 * 32 * MiB - 512)) 1024" \
	-c "read -P 0 $((128 * 32 * MiB + 512)) $((32 * MiB - 512))" \
	-c "read -P 0 $((129 * 32 * MiB)) 5" \
	-c "read -P 0x13 $((129 * 32 * MiB + 5)) 100" \
	-c "read -P 0 $((129 * 32 * MiB + 105)) 4096" \
	-c "read -P 0x14 $((5 * G)) $((32 * MiB))" \
	-c "read -P 0 $((6 * G - 4096)) $((4096 - 512))" \
	-c "read -P 0x15 $((6 * G - 512)) 512" "$img" >"$S/qio.out" 2>&1
if grep -qiE 'fail|error' "$S/qio.out"; then
	fail "qemu-io pattern checks: $(grep -iE 'fail|error' "$S/qio.out" | head -n 3 | tr '\n' ' ')"
else
	ok "qemu-io reads every written range and the zeros around them"
fi
n=$($M states "$img" | grep -c fully_present)
[ "$n" -eq 5 ] && ok "5 blocks allocated" || fail "$n blocks allocated, want 5"
rm -f "$img"

# =====================================================================
say "whole-block zeroing becomes ZERO; partial writes into empty blocks"
# =====================================================================
img=$S/zero.vhdx
size=$((16 * MiB))
"$HVRESYNC" create --block-size 1M "$img" $size
io "$img" w:0:$((8 * MiB)):0x5a
ops1="w:0:$((8 * MiB)):0x5a"
before=$(fsize "$img")
# two whole blocks by write_zeroes, one by writing a block of zero bytes,
# a partial zero inside block 6, a whole empty block zeroed (stays empty)
ops2="z:$MiB:$((2 * MiB)) w:$((4 * MiB)):$MiB:0 z:$((6 * MiB + 512)):4096 z:$((12 * MiB)):$MiB"
# shellcheck disable=SC2086
io "$img" $ops2
# shellcheck disable=SC2086
$M expect "$S/model.raw" --size $size $ops1 $ops2
verify "zeroed blocks" qemu "$img" "$S/model.raw"
[ "$(fsize "$img")" -eq "$before" ] && ok "zeroing did not grow the file" ||
	fail "zeroing grew the file from $before to $(fsize "$img")"
"$HVRESYNC" inspect --json "$img" >"$S/i.json"
n=$(jget "$S/i.json" block_states.zero)
[ "$n" = 3 ] && ok "inspect --json: 3 blocks in ZERO state" ||
	fail "inspect --json: $n blocks in ZERO state, want 3 (blocks 1, 2, 4)"
$M states "$img" >"$S/states"
for j in 1 2 4; do
	grep -q "^$j zero " "$S/states" && ok "block $j is ZERO (own BAT parse)" ||
		fail "block $j is not ZERO: $(grep "^$j " "$S/states")"
done
grep -q "^6 fully_present " "$S/states" && ok "partially zeroed block 6 stays allocated" ||
	fail "block 6: $(grep "^6 " "$S/states")"
grep -Eq "^12 (not_present|zero) " "$S/states" && ok "zeroing an empty block allocates nothing" ||
	fail "block 12: $(grep "^12 " "$S/states")"

# partial writes into a ZERO block and into never-written blocks: zeros
# around them, each costs exactly one new 1 MiB block at the end
ops3="w:$((MiB + 4096)):512:0x77 w:$((10 * MiB + 1000)):3000:0x88 w:$((13 * MiB - 512)):1024:0x99"
# shellcheck disable=SC2086
io "$img" $ops3
# shellcheck disable=SC2086
$M expect "$S/model.raw" --size $size $ops1 $ops2 $ops3
verify "partial writes into empty blocks" qemu "$img" "$S/model.raw"
verify "partial writes into empty blocks" vhdi "$img" "$S/model.raw"
grow=$(($(fsize "$img") - before))
[ $grow -eq $((4 * MiB)) ] && ok "4 new blocks grew the file by 4 MiB" ||
	fail "4 new blocks grew the file by $grow bytes, want $((4 * MiB))"
check "zero image: allocations aligned and disjoint" $M alloc "$img"

# =====================================================================
say "header GUIDs: renewed by a write, LogGuid zero after a clean close"
# =====================================================================
img=$S/guid.vhdx
"$HVRESYNC" create --block-size 2M "$img" 8M
read -r fw0 dw0 lg0 < <($M guids "$img")
"$CAT" "$img" >/dev/null
read -r fw1 dw1 _ < <($M guids "$img")
[ "$fw0 $dw0" = "$fw1 $dw1" ] && ok "a read-only open changes no GUID" ||
	fail "a read-only open changed the GUIDs"
io "$img" f
read -r fw1 dw1 _ < <($M guids "$img")
[ "$fw0 $dw0" = "$fw1 $dw1" ] && ok "a writable open without writes changes no GUID" ||
	fail "a writable open without writes changed the GUIDs"
io "$img" w:4096:4096:1 f w:3M:512:2
read -r fw1 dw1 lg1 < <($M guids "$img")
[ "$fw1" != "$fw0" ] && ok "FileWriteGuid renewed" || fail "FileWriteGuid unchanged"
[ "$dw1" != "$dw0" ] && ok "DataWriteGuid renewed" || fail "DataWriteGuid unchanged"
[ "$lg1" = 00000000-0000-0000-0000-000000000000 ] &&
	ok "LogGuid zero after a clean close" || fail "LogGuid $lg1 after a clean close"
"$HVRESYNC" inspect --json "$img" >"$S/i.json"
c=$(($(jget "$S/i.json" current_header) - 1))
[ "$(jget "$S/i.json" headers.$c.file_write_guid)" = "$fw1" ] &&
	[ "$(jget "$S/i.json" headers.$c.data_write_guid)" = "$dw1" ] &&
	[ "$(jget "$S/i.json" headers.$c.log_guid)" = "$lg1" ] &&
	[ "$(jget "$S/i.json" log_dirty)" = False ] &&
	ok "inspect --json shows the same current header, log clean" ||
	fail "inspect --json headers disagree with the file"
[ "$dw0" != "$lg0" ] || fail "(impossible) DataWriteGuid equals LogGuid"

# =====================================================================
say "differencing child over a qemu-made parent"
# =====================================================================
mkdir -p "$S/diff" && cd "$S/diff" || exit 2
qemu-img create -q -f vhdx -o block_size=8M base.vhdx 48M
qemu-io -f vhdx -c 'write -P 0xb1 0 20M' -c 'write -P 0xb2 24M 8M' \
	-c 'write -P 0xb3 40M 1M' base.vhdx >/dev/null
qemu-img convert -f vhdx -O raw base.vhdx base.raw
base_sha=$(sha base.vhdx)
if "$HVRESYNC" create --parent base.vhdx child.vhdx 2>"$S/err"; then
	ok "create --parent"
else
	fail "create --parent: $(cat "$S/err")"
fi
vhdiinfo child.vhdx >"$S/vi.child" 2>&1
vhdiinfo base.vhdx >"$S/vi.base" 2>&1
grep -Eq 'Disk type[[:space:]]*: Differential' "$S/vi.child" &&
	ok "vhdiinfo: child is differential" || fail "vhdiinfo: child not differential"
pid=$(sed -n 's/.*Parent identifier[[:space:]]*: //p' "$S/vi.child")
bid=$(sed -n 's/^[[:space:]]*Identifier[[:space:]]*: //p' "$S/vi.base")
dw=$($M guids base.vhdx | cut -d' ' -f2)
[ -n "$pid" ] && [ "$pid" = "$bid" ] && [ "${pid^^}" = "$dw" ] &&
	ok "linkage: child's parent identifier $pid is the parent's DataWriteGuid" ||
	fail "linkage: child says '$pid', vhdiinfo parent '$bid', parent header $dw"
grep -Eq 'Parent filename[[:space:]]*: .*\\base\.vhdx$' "$S/vi.child" &&
	ok "vhdiinfo shows the parent locator's path: $(sed -n 's/.*Parent filename[[:space:]]*: //p' "$S/vi.child")" ||
	fail "vhdiinfo shows no parent path ending in \\base.vhdx"
"$HVRESYNC" inspect --json child.vhdx >"$S/i.json"
[ "$(jget "$S/i.json" parent_locator.relative_path)" = '.\base.vhdx' ] &&
	ok "relative_path is .\\base.vhdx" ||
	fail "relative_path is '$(jget "$S/i.json" parent_locator.relative_path)'"
[ "$(jget "$S/i.json" block_size)" = $((2 * MiB)) ] && ok "child defaults to 2 MiB blocks" ||
	fail "child block size $(jget "$S/i.json" block_size)"
# (not vhdimount: libvhdi 20210425 takes the sector bitmap of a chunk whose
# bitmap block is NOT_PRESENT from file offset 0, so it misreads any child
# before its first write)
verify "fresh child reads as its parent" cat child.vhdx base.raw

# partial-sector and partial-block writes (read-modify-write over parent
# data), a whole block, zeros over parent data (part of a block),
# block-crossing writes, random writes
ops="r:777:30:$((2 * MiB)) f w:1000:100:0xc1 w:$((MiB + 512)):4096:0xc2 \
w:$((4 * MiB)):$((2 * MiB)):0xc3 z:$((12 * MiB + 512)):1024 \
w:$((26 * MiB - 2048)):8192:0xc4 w:$((48 * MiB - 512)):512:0xc5"
# shellcheck disable=SC2086
io child.vhdx $ops
# shellcheck disable=SC2086
$M expect "$S/model.raw" --base base.raw $ops
verify "child after writes" vhdi child.vhdx "$S/model.raw"
verify "child after writes" cat child.vhdx "$S/model.raw"
$M states child.vhdx >"$S/states"
grep -q "^2 fully_present " "$S/states" && ok "whole-block write is FULLY_PRESENT" ||
	fail "child block 2: $(grep "^2 " "$S/states")"
grep -q "^0 partially_present " "$S/states" && ok "partial write is PARTIALLY_PRESENT" ||
	fail "child block 0: $(grep "^0 " "$S/states")"

# a whole block of zeros over parent data must be ZERO in the child and
# read as zeros.  Only our reader is asked: libvhdi 20210425 reads a ZERO
# block of a child as file data at offset 0 (t-merge.sh checks the same
# bytes with qemu after merging them into the parent).
ops2="z:$((8 * MiB)):$((2 * MiB)) w:$((14 * MiB)):$((2 * MiB)):0"
# shellcheck disable=SC2086
io child.vhdx $ops2
# shellcheck disable=SC2086
$M expect "$S/model.raw" --base base.raw $ops $ops2
verify "child with ZERO blocks" cat child.vhdx "$S/model.raw"
verify "parent under the child" qemu base.vhdx base.raw
[ "$(sha base.vhdx)" = "$base_sha" ] && ok "parent file untouched" ||
	fail "writing the child changed the parent file"
$M states child.vhdx >"$S/states"
grep -q "^4 zero " "$S/states" && grep -q "^7 zero " "$S/states" &&
	ok "whole-block zeros over parent data are ZERO in the child" ||
	fail "child blocks 4, 7: $(grep -E "^(4|7) " "$S/states" | tr '\n' ' ')"
check "child: allocations aligned and disjoint" $M alloc child.vhdx

# the parent is written after the child was made: the linkage breaks
io base.vhdx w:0:512:0xee
cli_run "$HVRESYNC" inspect child.vhdx
[ "$CLI_RC" -eq 2 ] && [ "$(wc -l <"$S/cli.err")" -eq 1 ] &&
	ok "child of a modified parent refused: $(cat "$S/cli.err")" ||
	fail "child of a modified parent: exit $CLI_RC, $(wc -l <"$S/cli.err") lines"
cd "$S" || exit 2
rm -rf "$S/diff"

say "differencing child of a 4096-sector parent, 1 MiB blocks"
mkdir -p "$S/diff4k" && cd "$S/diff4k" || exit 2
"$HVRESYNC" create --sector-size 4096 --block-size 4M p.vhdx 24M
io p.vhdx w:0:$((10 * MiB)):0xa1 w:$((16 * MiB)):4096:0xa2
$M expect p.raw --size $((24 * MiB)) w:0:$((10 * MiB)):0xa1 w:$((16 * MiB)):4096:0xa2
verify "4k parent" vhdi p.vhdx p.raw
if "$HVRESYNC" create --parent p.vhdx --block-size 1M c.vhdx 2>"$S/err"; then
	"$HVRESYNC" inspect --json c.vhdx >"$S/i.json"
	[ "$(jget "$S/i.json" logical_sector_size)" = 4096 ] &&
		ok "child takes the parent's 4096-byte sectors" ||
		fail "child sector size $(jget "$S/i.json" logical_sector_size)"
	ops="w:512:512:0xd1 w:$((3 * MiB + 100)):5000:0xd2 z:$((5 * MiB)):$MiB \
w:$((9 * MiB)):$((2 * MiB)):0xd3 z:$((16 * MiB)):4096 r:99:20:$MiB"
	# shellcheck disable=SC2086
	io c.vhdx $ops
	# shellcheck disable=SC2086
	$M expect c.raw --base p.raw $ops
	verify "4k child after writes" vhdi c.vhdx c.raw
	verify "4k child after writes" cat c.vhdx c.raw
else
	fail "create --parent (4k parent): $(cat "$S/err")"
fi
cd "$S" || exit 2
rm -rf "$S/diff4k"

say "create --parent: the relative path from the child's directory"
mkdir -p "$S/rel/ab" "$S/rel/abc dé" "$S/rel/other"
"$HVRESYNC" create --block-size 1M "$S/rel/abc dé/bäse ü.vhdx" 8M
io "$S/rel/abc dé/bäse ü.vhdx" w:0:$MiB:0x71
$M expect "$S/rel/p.raw" --size $((8 * MiB)) w:0:$MiB:0x71
# relative arguments, resolved against a third directory
(cd "$S/rel/other" && "$HVRESYNC" create --parent "../abc dé/bäse ü.vhdx" ../ab/c.vhdx) ||
	fail "create --parent with relative paths"
"$HVRESYNC" inspect --json "$S/rel/ab/c.vhdx" >"$S/i.json"
rp=$(jget "$S/i.json" parent_locator.relative_path)
[ "$rp" = '..\abc dé\bäse ü.vhdx' ] && ok "relative_path $rp" ||
	fail "relative_path '$rp', want '..\\abc dé\\bäse ü.vhdx'"
vhdiinfo "$S/rel/ab/c.vhdx" | grep -q 'Parent filename.*\\abc dé\\bäse ü\.vhdx$' &&
	ok "vhdiinfo decodes the non-ASCII parent path" ||
	fail "vhdiinfo: $(vhdiinfo "$S/rel/ab/c.vhdx" | grep -i 'parent filename')"
(cd / && verify "child found its parent from another directory" cat \
	"$S/rel/ab/c.vhdx" "$S/rel/p.raw")
rm -rf "$S/rel"

# =====================================================================
say "hvresync create: what qemu and libvhdi see; errors"
# =====================================================================
"$HVRESYNC" create "$S/def.vhdx" 3G
qemu-img info --output=json "$S/def.vhdx" >"$S/qi.json"
[ "$(jget "$S/qi.json" virtual-size)" = $((3 * 1024 * MiB)) ] &&
	[ "$(jget "$S/qi.json" cluster-size)" = $((32 * MiB)) ] &&
	ok "qemu-img info: 3 GiB, 32 MiB blocks by default" ||
	fail "qemu-img info: $(tr -d '\n' <"$S/qi.json")"
check "default image passes qemu-img check" qemu-img check -q -f vhdx "$S/def.vhdx"
vhdiinfo "$S/def.vhdx" | grep -Eq 'Disk type[[:space:]]*: Dynamic' &&
	ok "vhdiinfo: dynamic" || fail "vhdiinfo does not see a dynamic disk"
"$HVRESYNC" create --fixed --block-size 1M "$S/fx.vhdx" 5M
vhdiinfo "$S/fx.vhdx" | grep -Eq 'Disk type[[:space:]]*: Fixed' &&
	ok "vhdiinfo: fixed" || fail "vhdiinfo does not see a fixed disk"
check "fixed image passes qemu-img check" qemu-img check -q -f vhdx "$S/fx.vhdx"

sum=$(sha "$S/fx.vhdx")
expect_error "create over an existing file" "$S/fx.vhdx" -- \
	"$HVRESYNC" create "$S/fx.vhdx" 5M
[ "$(sha "$S/fx.vhdx")" = "$sum" ] && ok "existing file untouched" ||
	fail "create changed an existing file"
expect_error "block size not a power of two" "$S/e1.vhdx" -- \
	"$HVRESYNC" create --block-size 3M "$S/e1.vhdx" 8M
expect_error "block size above 256 MiB" "$S/e2.vhdx" -- \
	"$HVRESYNC" create --block-size 512M "$S/e2.vhdx" 8M
expect_error "sector size 1024" "1024" -- \
	"$HVRESYNC" create --sector-size 1024 "$S/e3.vhdx" 8M
expect_error "size not a multiple of the sector" "$S/e4.vhdx" -- \
	"$HVRESYNC" create "$S/e4.vhdx" 1000
expect_error "size not a multiple of a 4096 sector" "$S/e5.vhdx" -- \
	"$HVRESYNC" create --sector-size 4096 "$S/e5.vhdx" $((MiB + 512))
expect_error "size zero" "$S/e6.vhdx" -- "$HVRESYNC" create "$S/e6.vhdx" 0
expect_error "size not a number" "12Q" -- "$HVRESYNC" create "$S/e7.vhdx" 12Q
expect_error "missing parent" "nothere.vhdx" -- \
	"$HVRESYNC" create --parent "$S/nothere.vhdx" "$S/e8.vhdx"
head -c $MiB /dev/zero >"$S/junk.bin"
expect_error "parent not a VHDX" "junk.bin" -- \
	"$HVRESYNC" create --parent "$S/junk.bin" "$S/e9.vhdx"
expect_error "--parent with --fixed" "parent" -- \
	"$HVRESYNC" create --parent "$S/fx.vhdx" --fixed "$S/e10.vhdx"
expect_error "directory missing" "$S/nodir/e11.vhdx" -- \
	"$HVRESYNC" create "$S/nodir/e11.vhdx" 8M
left=$(cd "$S" && echo e[0-9]*.vhdx | grep -v '\*')
[ -z "$left" ] && ok "failed creates leave no file" || fail "left behind: $left"

finish
