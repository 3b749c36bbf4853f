#!/bin/bash
# t-diffchain.sh - differencing chains: a qemu-made base with children
# written by tests/helpers/mkvhdx.py (sector-granular writes, PARTIALLY and
# FULLY_PRESENT blocks, ZERO blocks over parent data, different block sizes
# per layer, two sector-bitmap chunks, 4096-byte sectors).  The expected
# bytes of every layer are qemu-img's raw of the base with the children's
# writes applied in python; libvhdi is asked too when it can read the
# chain.  Then the parent-finding rules: parent_linkage checked (and
# ignorable), relative_path in another directory, absolute_win32_path
# mapped onto the child's own directory, missing parents and loops refused
# with one error line.
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }

CHK="python3 $TOP/tests/helpers/checks.py"
MK="python3 $TOP/tests/helpers/mkvhdx.py"
S=$SCRATCH
export HELPERS=$TOP/tests/helpers

# err_matches DESC REGEX: the last cli_run's stderr matches REGEX (-Ei).
err_matches() {
	if grep -Eiq -- "$2" "$S/cli.err"; then ok "$1"; else
		fail "$1: stderr does not match /$2/: $(head -n1 "$S/cli.err")"
	fi
}

# view_equals DESC MNT NAME EXPECTED: the view MNT/NAME equals EXPECTED.
view_equals() {
	check "$1" $CHK cmp "$2/$3" "$4"
}

# mount_or_fail DESC MNT IMAGE...: mount, remember for cleanup.
mount_or_fail() {
	local desc=$1 mnt=$2; shift 2
	mkdir -p "$mnt"
	cli_run "$HVRESYNC" mount "$@" "$mnt"
	if [ "$CLI_RC" -ne 0 ]; then
		fail "$desc: mount exit $CLI_RC: $(head -n1 "$S/cli.err")"
		return 1
	fi
	_mounts+=("$mnt")
}

umount_view() {
	cli_run "$HVRESYNC" umount "$1"
	[ "$CLI_RC" -eq 0 ] && ! mountpoint -q "$1" ||
		fail "umount $1: exit $CLI_RC: $(head -n1 "$S/cli.err")"
}

# =====================================================================
say "chain of depth 3 over a qemu-made base"
# =====================================================================
mkdir -p "$S/chain"
cd "$S/chain" || exit 2
qemu-img create -q -f vhdx -o block_size=8M base.vhdx 64M
qemu-io -f vhdx \
	-c 'write -P 0x11 0 20M' \
	-c 'write -P 0x22 30M 3M' \
	-c 'write -P 0x33 41M 1536' \
	-c 'write -P 0x44 63M 1M' base.vhdx >/dev/null
qemu-img convert -f vhdx -O raw base.vhdx base.raw

# child1, 1 MiB blocks: sector writes across block edges, a ZERO block over
# parent data, a full block, a write into a ZERO block, the last sector.
$MK child --parent base.vhdx --out c1.avhdx --block-size 1M --seed 11 \
	--write 512:1024:p1 \
	--write 1M:4K:0xc1 \
	--zero-block 2 \
	--write 2M+4K:512:0xc2 \
	--full-block 31:p2 \
	--write 33M-1K:2K:p3 \
	--write 41M+512:512:0xc3 \
	--write 64M-512:512:0xc4 \
	--manifest c1.json || fail "mkvhdx child1"
# child2, 2 MiB blocks: overlaps child1's sectors, zeroes child1's full
# block, a partial write over the parent's 0x22 run, a full block.
$MK child --parent c1.avhdx --out c2.avhdx --block-size 2M --seed 12 \
	--write 0:512:0xd1 \
	--write 1M+2K:8K:p4 \
	--zero-block 15 \
	--write 31M+512:512:0xd2 \
	--write 32M+3K:1K:p5 \
	--full-block 20:p6 \
	--manifest c2.json || fail "mkvhdx child2"
# child3, 32 MiB blocks over 2 MiB ones.
$MK child --parent c2.avhdx --out c3.avhdx --block-size 32M --seed 13 \
	--write 1M+2K:512:0xe1 \
	--write 40M:1M:p7 \
	--zero-block 0 --write 512:512:0xe2 \
	--manifest c3.json || fail "mkvhdx child3"

cp --sparse=always base.raw e1.raw && $MK apply e1.raw c1.json
cp --sparse=always e1.raw e2.raw && $MK apply e2.raw c2.json
cp --sparse=always e2.raw e3.raw && $MK apply e3.raw c3.json
# Second derivation from the files themselves (checks the helper).
cp --sparse=always base.raw o3.raw
for c in c1 c2 c3; do $MK overlay $c.avhdx o3.raw; done
check "helper: overlay of the written files equals the applied writes" \
	$CHK cmp o3.raw e3.raw

sum_before=()
for f in base.vhdx c1.avhdx c2.avhdx c3.avhdx; do sum_before+=("$(sha $f)"); done
if mount_or_fail "chain" "$S/mchain" base.vhdx c1.avhdx c2.avhdx c3.avhdx; then
	view_equals "base view equals qemu-img convert" "$S/mchain" base base.raw
	view_equals "depth-1 view (c1) equals base + c1 writes" "$S/mchain" c1 e1.raw
	view_equals "depth-2 view (c2) equals base + c1 + c2 writes" "$S/mchain" c2 e2.raw
	view_equals "depth-3 view (c3) equals base + c1 + c2 + c3 writes" "$S/mchain" c3 e3.raw
	umount_view "$S/mchain"
fi
i=0
for f in base.vhdx c1.avhdx c2.avhdx c3.avhdx; do
	[ "$(sha $f)" = "${sum_before[$i]}" ] || fail "$f changed by the mount"
	i=$((i + 1))
done

# libvhdi as a third reader, when it can read differencing VHDX payload.
mkdir -p "$S/vhdi"
if vhdimount c3.avhdx "$S/vhdi" >/dev/null 2>&1; then
	_mounts+=("$S/vhdi")
	if $CHK cmp "$S/vhdi/vhdi1" e3.raw >/dev/null; then
		ok "vhdimount (libvhdi) reads the chain like the python expectation"
	elif $CHK cmp "$S/vhdi/vhdi1" base.raw >/dev/null; then
		echo "note: libvhdi $(vhdimount -V 2>/dev/null | head -n1 | awk '{print $2}')" \
			"shows only the base's bytes for a differencing chain (it" \
			"does the same for Windows-made children): it cannot read" \
			"differencing payload; relying on the python expectation"
	else
		echo "note: vhdimount's view of the chain differs from both the" \
			"expectation and the base ($($CHK cmp "$S/vhdi/vhdi1" e3.raw));" \
			"relying on the python expectation"
	fi
	fusermount3 -u "$S/vhdi"
else
	echo "note: vhdimount cannot open the chain; relying on the python expectation"
fi

# inspect --json reports the nested chain.
cli_run "$HVRESYNC" inspect --json c3.avhdx
if [ "$CLI_RC" -eq 0 ]; then
	cp "$S/cli.out" c3.json.out
	check "inspect: c3 differencing, nested parents c2, c1, base" \
		$CHK json c3.json.out type=differencing virtual_size=67108864 \
		block_size=33554432 parent.type=differencing \
		parent.block_size=2097152 parent.parent.type=differencing \
		parent.parent.block_size=1048576 parent.parent.parent.type=dynamic \
		parent.parent.parent.block_size=8388608 \
		parent.parent.parent.parent=null
else
	fail "inspect --json c3.avhdx: exit $CLI_RC: $(head -n1 "$S/cli.err")"
fi
# Block states as our python parser reads them from each child's BAT.
for c in c1 c2 c3; do
	want=$(python3 - $c.avhdx <<'EOF'
import collections, os, sys
sys.path.insert(0, os.environ["HELPERS"])
import vhdxlib as V
v = V.Vhdx(sys.argv[1])
c = collections.Counter(v.bat[v.payload_index(j)] & 7
                        for j in range(v.payload_blocks))
print(" ".join("%d=%d" % kv for kv in sorted(c.items())))
EOF
)
	cli_run "$HVRESYNC" inspect --json $c.avhdx
	if [ "$CLI_RC" -eq 0 ]; then
		check "inspect: $c block states $want" $CHK states "$S/cli.out" $want
	else
		fail "inspect --json $c.avhdx: exit $CLI_RC: $(head -n1 "$S/cli.err")"
	fi
done

# =====================================================================
say "parent_linkage"
# =====================================================================
$MK child --parent base.vhdx --out bad.avhdx --block-size 1M --seed 21 \
	--wrong-linkage --write 0:4K:0xbb --manifest bad.json
cp --sparse=always base.raw ebad.raw && $MK apply ebad.raw bad.json
expect_error "wrong parent_linkage: inspect refused" bad.avhdx -- \
	"$HVRESYNC" inspect --json bad.avhdx &&
	err_matches "wrong parent_linkage: message names the linkage" \
		'linkage|DataWriteGuid'
mkdir -p "$S/mbad"
expect_error "wrong parent_linkage: mount refused" bad.avhdx -- \
	"$HVRESYNC" mount bad.avhdx "$S/mbad"
mountpoint -q "$S/mbad" && { _mounts+=("$S/mbad"); fail "refused mount left a mount"; }
if mount_or_fail "--ignore-parent-linkage" "$S/mbad" \
	--ignore-parent-linkage bad.avhdx; then
	view_equals "--ignore-parent-linkage: view equals base + writes" \
		"$S/mbad" bad ebad.raw
	umount_view "$S/mbad"
fi
cli_run "$HVRESYNC" inspect --json bad.avhdx
[ "$CLI_RC" -eq 2 ] || fail "inspect of a wrong linkage exit $CLI_RC"

# The linkage is the parent's *current* header's DataWriteGuid: c1's two
# headers carry different DataWriteGuids, and c2 links to the current one
# (header 2).  A child of c1 made to link to header 1's GUID is refused.
old=$($MK info c1.avhdx | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(d["headers"][1 - d["current_header"]]["data_write_guid"])')
$MK child --parent c1.avhdx --out stale.avhdx --seed 22 --linkage "$old" \
	--write 0:512:0x55
expect_error "linkage to the parent's non-current header refused" stale.avhdx \
	-- "$HVRESYNC" inspect --json stale.avhdx

# =====================================================================
say "finding the parent"
# =====================================================================
mkdir -p "$S/tree/base" "$S/tree/vm" "$S/tree/other"
cp --sparse=always base.vhdx "$S/tree/base/p.vhdx"
cd "$S/tree/vm" || exit 2
# relative_path into a sibling directory, Windows separators.
$MK child --parent ../base/p.vhdx --out rel.avhdx --seed 31 \
	--relative-path '..\base\p.vhdx' --absolute-path 'E:\nowhere\q.vhdx' \
	--write 3M:4K:0x31 --manifest rel.json
cp --sparse=always "$S/chain/base.raw" erel.raw && $MK apply erel.raw rel.json
if mount_or_fail "relative_path ..\\base\\p.vhdx" "$S/mrel" rel.avhdx; then
	view_equals "relative_path ..\\base\\p.vhdx: view correct" "$S/mrel" rel erel.raw
	umount_view "$S/mrel"
fi
# absolute_win32_path only: only its file name counts, looked up next to
# the child.
cp --sparse=always "$S/chain/base.vhdx" p2.vhdx
$MK child --parent p2.vhdx --out abs.avhdx --seed 32 --no-relative-path \
	--absolute-path 'D:\Hyper-V\Disks\p2.vhdx' --write 5M:1M:0x32 \
	--manifest abs.json
cp --sparse=always "$S/chain/base.raw" eabs.raw && $MK apply eabs.raw abs.json
if mount_or_fail "absolute_win32_path only" "$S/mabs" abs.avhdx; then
	view_equals "absolute_win32_path D:\\Hyper-V\\Disks\\p2.vhdx found as ./p2.vhdx" \
		"$S/mabs" abs eabs.raw
	umount_view "$S/mabs"
fi
# Run from another directory: lookups are relative to the child, not cwd.
cd "$S/tree/other" || exit 2
cli_run "$HVRESYNC" inspect --json ../vm/rel.avhdx
[ "$CLI_RC" -eq 0 ] && ok "parent found relative to the child, not the cwd" ||
	fail "inspect ../vm/rel.avhdx from another cwd: exit $CLI_RC: $(head -n1 "$S/cli.err")"
cd "$S/tree/vm" || exit 2

# Missing parents.
mv "$S/tree/base/p.vhdx" "$S/tree/base/p.moved"
expect_error "missing parent (relative_path): inspect refused" rel.avhdx -- \
	"$HVRESYNC" inspect --json rel.avhdx &&
	err_matches "missing parent: message names the relative_path" 'base[\\/]p\.vhdx'
mkdir -p "$S/mmiss"
expect_error "missing parent (relative_path): mount refused" rel.avhdx -- \
	"$HVRESYNC" mount rel.avhdx "$S/mmiss" &&
	err_matches "missing parent (mount): message names the relative_path" 'base[\\/]p\.vhdx'
mountpoint -q "$S/mmiss" && { _mounts+=("$S/mmiss"); fail "refused mount left a mount"; }
mv "$S/tree/base/p.moved" "$S/tree/base/p.vhdx"
mv p2.vhdx p2.moved
expect_error "missing parent (absolute_win32_path): refused, names p2.vhdx" \
	abs.avhdx p2.vhdx -- "$HVRESYNC" inspect --json abs.avhdx
mv p2.moved p2.vhdx
# A parent that is in the locator but not a VHDX.
printf 'not a vhdx' >junk.vhdx
$MK child --parent p2.vhdx --out junkparent.avhdx --seed 33 \
	--relative-path '.\junk.vhdx' --no-absolute-path --write 0:512:1
expect_error "parent that is not a VHDX refused" junk.vhdx -- \
	"$HVRESYNC" inspect --json junkparent.avhdx

# A child whose logical sector size differs from its parent's.
$MK child --parent p2.vhdx --out lss.avhdx --seed 37 --lss 4096 \
	--write 0:4K:1
expect_error "logical sector size differs from the parent's: refused" \
	lss.avhdx -- "$HVRESYNC" inspect --json lss.avhdx &&
	err_matches "sector size mismatch: message says so" 'sector'

# Loops must be refused, not followed forever.
$MK child --parent p2.vhdx --out self.avhdx --seed 34 --write 0:512:1 \
	--manifest self.json
g=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data_write_guid"])' self.json)
$MK child --parent p2.vhdx --out self.avhdx --seed 34 --write 0:512:1 \
	--linkage "$g" --relative-path '.\self.avhdx' --no-absolute-path
expect_error "a child that is its own parent is refused" self.avhdx -- \
	"$HVRESYNC" inspect --json self.avhdx &&
	err_matches "self-parent: message says the chain loops" \
		'loop|cycle|itself|too (deep|long)|depth'
mkdir -p "$S/mself"
expect_error "a child that is its own parent: mount refused" self.avhdx -- \
	"$HVRESYNC" mount self.avhdx "$S/mself"
mountpoint -q "$S/mself" && { _mounts+=("$S/mself"); fail "refused mount left a mount"; }
# a -> b -> a
$MK child --parent p2.vhdx --out la.avhdx --seed 35 --write 0:512:1 --manifest la.json
$MK child --parent la.avhdx --out lb.avhdx --seed 36 --write 0:512:2 --manifest lb.json
gb=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data_write_guid"])' lb.json)
$MK child --parent p2.vhdx --out la.avhdx --seed 35 --write 0:512:1 \
	--linkage "$gb" --relative-path '.\lb.avhdx' --no-absolute-path
expect_error "a two-file parent loop is refused" -- \
	"$HVRESYNC" inspect --json la.avhdx &&
	err_matches "parent loop: message names a file of the loop" 'la\.avhdx|lb\.avhdx' &&
	err_matches "parent loop: message says the chain loops" \
		'loop|cycle|itself|too (deep|long)|depth'

# =====================================================================
say "two sector-bitmap chunks (5 GiB, 1 MiB blocks: chunk ratio 4096)"
# =====================================================================
mkdir -p "$S/big"
cd "$S/big" || exit 2
qemu-img create -q -f vhdx -o block_size=1M big.vhdx 5G
qemu-io -f vhdx -c 'write -P 0x61 4095M 2M' -c 'write -P 0x62 0 1M' \
	-c 'write -P 0x63 5119M 1M' big.vhdx >/dev/null
$MK child --parent big.vhdx --out bigc.avhdx --seed 41 \
	--write 512:512:0x71 \
	--write 4G-1K:2K:p8 \
	--write 4G+1M+512:1536:0x72 \
	--full-block 4100:p9 \
	--zero-block 4095 \
	--write 5G-512:512:0x73 \
	--manifest bigc.json
qemu-img convert -f vhdx -O raw big.vhdx ebig.raw
$MK apply ebig.raw bigc.json
nbm=$($MK info bigc.avhdx | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(d["chunk_ratio"], d["bat_entries"])')
echo "bigc: chunk ratio and BAT entries: $nbm"
if mount_or_fail "5 GiB chain" "$S/mbig" bigc.avhdx; then
	v=$S/mbig/bigc
	check "5 GiB: size" $CHK size "$v" 5G
	for r in "0 8M" "4G-8M 4G+8M" "4100M 4101M" "5G-8M 5G"; do
		set -- $r
		check "5 GiB: [$1, $2) equals the expectation" $CHK cmp "$v" ebig.raw "$1" "$2"
	done
	umount_view "$S/mbig"
fi

# =====================================================================
say "4096-byte logical sectors (base written by mkvhdx, read by libvhdi)"
# =====================================================================
mkdir -p "$S/k4"
cd "$S/k4" || exit 2
$MK base --out b4.vhdx --size 48M --block-size 2M --lss 4096 --seed 51 \
	--write 0:8K:0x81 --full-block 3:p10 --write 20M:4K:0x82 \
	--manifest b4.json
truncate -s 48M eb4.raw && $MK apply eb4.raw b4.json
mkdir -p "$S/vhdi4"
if vhdimount b4.vhdx "$S/vhdi4" >/dev/null 2>&1; then
	_mounts+=("$S/vhdi4")
	check "4K base: libvhdi agrees with the helper's expectation" \
		$CHK cmp "$S/vhdi4/vhdi1" eb4.raw
	fusermount3 -u "$S/vhdi4"
fi
$MK child --parent b4.vhdx --out c4.avhdx --block-size 1M --seed 52 \
	--write 4K:4K:0x91 --write 6M-4K:8K:p11 --zero-block 3 \
	--write 47M:4K:0x92 --manifest c4.json
cp eb4.raw ec4.raw && $MK apply ec4.raw c4.json
if mount_or_fail "4K chain" "$S/m4" b4.vhdx c4.avhdx; then
	view_equals "4K base view" "$S/m4" b4 eb4.raw
	view_equals "4K child view" "$S/m4" c4 ec4.raw
	umount_view "$S/m4"
fi
cli_run "$HVRESYNC" inspect --json c4.avhdx
[ "$CLI_RC" -eq 0 ] && check "4K child: inspect sector sizes" \
	$CHK json "$S/cli.out" logical_sector_size=4096 type=differencing \
	parent.logical_sector_size=4096

finish
