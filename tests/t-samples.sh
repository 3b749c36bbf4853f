#!/bin/bash
# t-samples.sh - the Windows-, Disk2vhd- and qemu-made samples in
# ../shared/samples read through a real FUSE mount of `hvresync mount`:
# byte-identical to qemu-img's raw conversion (after qemu's own log replay
# for the two dirty-log samples), the facts samples/README.md states, media
# sizes as vhdiinfo reports them, bytes as vhdimount shows them, files
# unchanged by a read-only mount, and the parentless differencing sample
# refused with one error line naming the parent it looked for.
. "$(dirname "$0")/lib.sh"
need_samples
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }

CHK="python3 $TOP/tests/helpers/checks.py"
MK="python3 $TOP/tests/helpers/mkvhdx.py"
PARENT_NAME='Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx'

# key -> sample file name
declare -A SAMPLE=(
	[dyn1g]=qemu-iotest-dynamic-1G.vhdx.bz2
	[dirty10g]=qemu-iotest-dirtylog-10G-4M.vhdx.bz2
	[d2v]=qemu-test-disk2vhd.vhdx.bz2
	[coreos]=coreos-config2_base.vhdx.bz2
	[discutils]=discutils-vhdx-log-replay.zip
	[fixed]=dissect-fixed.vhdx.gz
	[dynamic]=dissect-dynamic.vhdx.gz
	[diff]=dissect-differencing.avhdx.gz
)
ORDER="dyn1g dirty10g d2v coreos discutils fixed dynamic diff"
DIRTY=" dirty10g discutils "
declare -A IMG NAME REF SHA VSIZE

say "unpacking samples into $SCRATCH"
mkdir -p "$SCRATCH/img"
for k in $ORDER; do
	if [ ! -f "$SAMPLES/${SAMPLE[$k]}" ]; then
		echo "SKIP: sample ${SAMPLE[$k]} not found in $SAMPLES"
		continue
	fi
	f=$(SCRATCH=$SCRATCH/img unpack_sample "${SAMPLE[$k]}") || {
		fail "cannot unpack ${SAMPLE[$k]}"; continue; }
	IMG[$k]=$f
	n=${f##*/}; n=${n%.vhdx}; n=${n%.avhdx}
	NAME[$k]=$n
	SHA[$k]=$(sha "$f")
done
have() { [ -n "${IMG[$1]:-}" ]; }

# --- reference raw images from qemu-img ---------------------------------
say "reference images from qemu-img"
mkdir -p "$SCRATCH/ref"
for k in $ORDER; do
	have "$k" && [ "$k" != diff ] || continue
	src=${IMG[$k]}
	if [[ $DIRTY == *" $k "* ]]; then
		# qemu replays a dirty log only on a read-write open: do it on a copy.
		cp --sparse=always "$src" "$SCRATCH/ref/$k.replayed.vhdx"
		src=$SCRATCH/ref/$k.replayed.vhdx
		qemu-img check -q -r all -f vhdx "$src" >/dev/null 2>&1
	fi
	if qemu-img convert -f vhdx -O raw "$src" "$SCRATCH/ref/$k.raw"; then
		REF[$k]=$SCRATCH/ref/$k.raw
	else
		fail "$k: qemu-img convert failed; no reference"
	fi
done

# --- vhdiinfo: media sizes for all eight ---------------------------------
for k in $ORDER; do
	have "$k" || continue
	VSIZE[$k]=$(vhdiinfo "${IMG[$k]}" 2>/dev/null |
		sed -n 's/.*Media size.*(\([0-9]*\) bytes).*/\1/p')
	[ -n "${VSIZE[$k]}" ] || fail "$k: vhdiinfo shows no media size"
done

# --- inspect --json -------------------------------------------------------
say "inspect --json"
# Expected block-state counts come from our independent python parser of
# the file, or of qemu's replayed copy for the dirty-log samples.
states_of() {
	python3 - "$1" <<'EOF'
import sys, collections
sys.path.insert(0, __import__("os").environ["HELPERS"])
import vhdxlib as V
v = V.Vhdx(sys.argv[1])
c = collections.Counter(v.bat[v.payload_index(j)] & 7
                        for j in range(v.payload_blocks))
print(" ".join("%d=%d" % kv for kv in sorted(c.items())))
EOF
}
export HELPERS=$TOP/tests/helpers
inspect_ok() {
	local k=$1; shift
	cli_run "$HVRESYNC" inspect --json "${IMG[$k]}"
	if [ "$CLI_RC" -ne 0 ]; then
		fail "$k: inspect --json exit $CLI_RC: $(head -n1 "$SCRATCH/cli.err")"
		return
	fi
	cp "$SCRATCH/cli.out" "$SCRATCH/$k.json"
	check "$k: inspect facts $*" $CHK json "$SCRATCH/$k.json" \
		"virtual_size=${VSIZE[$k]:-0}" "$@"
	local src=${IMG[$k]}
	[[ $DIRTY == *" $k "* ]] && src=$SCRATCH/ref/$k.replayed.vhdx
	[ -f "$src" ] &&
		check "$k: inspect block_states match the file's BAT" \
			$CHK states "$SCRATCH/$k.json" $(states_of "$src")
}
have dyn1g && inspect_ok dyn1g block_size=33554432 logical_sector_size=512 \
	physical_sector_size=4096 type=dynamic log_dirty=false parent=null
have dirty10g && inspect_ok dirty10g virtual_size=10737418240 \
	block_size=1048576 logical_sector_size=512 physical_sector_size=512 \
	type=dynamic log_dirty=true parent=null
have d2v && inspect_ok d2v virtual_size=268435456 block_size=2097152 \
	logical_sector_size=512 physical_sector_size=512 type=dynamic \
	log_dirty=false parent=null
have coreos && inspect_ok coreos virtual_size=104857600 \
	block_size=33554432 type=dynamic log_dirty=false parent=null
have discutils && inspect_ok discutils virtual_size=1073741824 \
	block_size=33554432 logical_sector_size=512 physical_sector_size=4096 \
	type=dynamic log_dirty=true parent=null
have fixed && inspect_ok fixed virtual_size=10485760 block_size=2097152 \
	type=fixed log_dirty=false parent=null
have dynamic && inspect_ok dynamic virtual_size=10485760 \
	block_size=33554432 type=dynamic log_dirty=false parent=null
if have discutils && [ -f "$SCRATCH/discutils.json" ]; then
	# README: after replay BAT[0] is present and BAT[3], [9], [31] are ZERO.
	check "discutils: replayed BAT has 1 present and 3 zero blocks" \
		$CHK states "$SCRATCH/discutils.json" 6=1 2=3 0=28
	check "discutils: inspect lists the two MBR partitions" python3 - \
		"$SCRATCH/discutils.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1])).get("partitions") or []
want = [(2048, 204800), (206848, 409600)]
got = [(x.get("start"), x.get("size")) for x in p]
ok = got == want or got == [(a * 512, b * 512) for a, b in want]
types = [str(x.get("type", "")).lower() for x in p]
ok = ok and all("83" in t or t in ("131", "linux") for t in types)
if not ok:
    print("partitions:", json.dumps(p))
sys.exit(0 if ok else 1)
EOF
fi

# --- one read-only mount of every readable sample -----------------------
say "mount"
MNT=$SCRATCH/mnt
imgs=()
for k in $ORDER; do have "$k" && [ "$k" != diff ] && imgs+=("${IMG[$k]}"); done
mounted=0
if [ ${#imgs[@]} -gt 0 ]; then
	mkdir -p "$MNT"
	if cli_run "$HVRESYNC" mount "${imgs[@]}" "$MNT" && [ "$CLI_RC" -eq 0 ]; then
		_mounts+=("$MNT")
		mounted=1
		ok "mount of ${#imgs[@]} samples"
	else
		fail "mount of ${#imgs[@]} samples: exit $CLI_RC: $(head -n1 "$SCRATCH/cli.err")"
	fi
fi

view_checks() {
	local k=$1 v=$MNT/${NAME[$1]}
	if [ ! -f "$v" ]; then
		fail "$k: $v missing in the mount"
		return
	fi
	[ -n "${VSIZE[$k]:-}" ] &&
		check "$k: view size equals vhdiinfo's media size (${VSIZE[$k]})" \
			$CHK size "$v" "${VSIZE[$k]}"
	local how=""
	[[ $DIRTY == *" $k "* ]] && how=" (after qemu's log replay on a copy)"
	[ -n "${REF[$k]:-}" ] &&
		check "$k: view equals qemu-img convert$how" \
			$CHK cmp "$v" "${REF[$k]}"
}
if [ $mounted -eq 1 ]; then
	for k in $ORDER; do have "$k" && [ "$k" != diff ] && view_checks "$k"; done
	v=$MNT/${NAME[dyn1g]:-x}
	if have dyn1g; then
		check "dyn1g: 0xa5 in [0, 33M)" $CHK fill "$v" 0 33M 0xa5
		check "dyn1g: 0x96 in [33M, 66M)" $CHK fill "$v" 33M 66M 0x96
		check "dyn1g: zeros in [66M, 1G)" $CHK fill "$v" 66M 1G 0
	fi
	v=$MNT/${NAME[dirty10g]:-x}
	if have dirty10g; then
		check "dirty10g: 0xa5 in [0, 18M) after replay" $CHK fill "$v" 0 18M 0xa5
		check "dirty10g: [17M, 18M) is 0xa5 (set only by the log)" \
			$CHK fill "$v" 17M 18M 0xa5
		check "dirty10g: zeros in [18M, 64M)" $CHK fill "$v" 18M 64M 0
	fi
	v=$MNT/${NAME[d2v]:-x}
	have d2v && check "d2v: view is 256 MiB" $CHK size "$v" 256M
	v=$MNT/${NAME[discutils]:-x}
	if have discutils; then
		sfdisk --json "$v" >"$SCRATCH/sfdisk.json" 2>"$SCRATCH/sfdisk.err"
		check "discutils: sfdisk sees partitions 2048+204800 and 206848+409600, type 83" \
			$CHK json "$SCRATCH/sfdisk.json" \
			partitiontable.label=dos \
			partitiontable.partitions.0.start=2048 \
			partitiontable.partitions.0.size=204800 \
			'partitiontable.partitions.0.type="83"' \
			partitiontable.partitions.1.start=206848 \
			partitiontable.partitions.1.size=409600 \
			'partitiontable.partitions.1.type="83"'
	fi
	for k in fixed dynamic; do
		have "$k" || continue
		v=$MNT/${NAME[$k]}
		check "$k: sector 0 starts 33 c0 8e d0" $CHK hex "$v" 0 33c08ed0
		check "$k: sector 0 ends 55 aa" $CHK hex "$v" 510 55aa
		check "$k: 512 bytes of 0xff at 0x200000" \
			$CHK fill "$v" 0x200000 0x200200 0xff
	done

	cli_run "$HVRESYNC" umount "$MNT"
	if [ "$CLI_RC" -eq 0 ] && ! mountpoint -q "$MNT"; then
		ok "umount"
	else
		fail "umount: exit $CLI_RC, $(head -n1 "$SCRATCH/cli.err")"
	fi
fi

# --- vhdimount (libvhdi) agrees on the clean non-differencing samples ----
say "vhdimount cross-check"
for k in dyn1g d2v coreos fixed dynamic; do
	have "$k" || continue
	m=$SCRATCH/vhdi-$k
	mkdir -p "$m"
	if ! vhdimount "${IMG[$k]}" "$m" >/dev/null 2>&1; then
		echo "note: vhdimount cannot read $k"
		continue
	fi
	_mounts+=("$m")
	if [ -n "${REF[$k]:-}" ]; then
		# Our view was compared with qemu's; libvhdi must agree with both.
		check "$k: vhdimount's bytes equal qemu-img's (and so ours)" \
			$CHK cmp "$m/vhdi1" "${REF[$k]}"
	fi
	fusermount3 -u "$m"
done
if have dirty10g; then
	# libvhdi never replays: it must show the stale pre-replay state.
	m=$SCRATCH/vhdi-dirty10g
	mkdir -p "$m"
	if vhdimount "${IMG[dirty10g]}" "$m" >/dev/null 2>&1; then
		_mounts+=("$m")
		check "dirty10g: vhdimount (no replay) reads zeros in [17M, 18M)" \
			$CHK fill "$m/vhdi1" 17M 18M 0
		fusermount3 -u "$m"
	fi
fi

# --- files unchanged by inspect and the read-only mount ------------------
for k in $ORDER; do
	have "$k" || continue
	[ "$(sha "${IMG[$k]}")" = "${SHA[$k]}" ] &&
		ok "$k: file unchanged (sha256)" ||
		fail "$k: file changed by a read-only inspect/mount"
done

# --- the differencing sample --------------------------------------------
if have diff; then
	say "differencing sample"
	d=${IMG[diff]}
	expect_error "diff: inspect without parent" "${d##*/}" "$PARENT_NAME" \
		-- "$HVRESYNC" inspect --json "$d"
	mkdir -p "$SCRATCH/mdiff"
	expect_error "diff: mount without parent" "${d##*/}" "$PARENT_NAME" \
		-- "$HVRESYNC" mount "$d" "$SCRATCH/mdiff"
	if mountpoint -q "$SCRATCH/mdiff"; then
		_mounts+=("$SCRATCH/mdiff")
		fail "diff: failed mount left $SCRATCH/mdiff mounted"
	fi

	# Give it an empty 8 GiB parent whose DataWriteGuid is the child's
	# parent_linkage: the view must then be exactly what the child holds
	# (its present sectors, per the sector bitmaps) over zeros, as our
	# independent python reader computes it.
	p=$SCRATCH/img/$PARENT_NAME
	qemu-img create -q -f vhdx "$p" 8G
	python3 - "$p" "$d" <<'EOF'
import os, sys
sys.path.insert(0, os.environ["HELPERS"])
import vhdxlib as V
parent, child = sys.argv[1], sys.argv[2]
link = V.Vhdx(child).locator["parent_linkage"]
for i in (0, 1):
    V.patch(parent, V.HEADER_OFF[i] + 32, V.guid_bytes(link))
    V.refresh_header_checksum(parent, i)
EOF
	exp=$SCRATCH/ref/diff.raw
	truncate -s 8G "$exp"
	$MK overlay "$d" "$exp"
	cli_run "$HVRESYNC" inspect --json "$d"
	if [ "$CLI_RC" -eq 0 ]; then
		cp "$SCRATCH/cli.out" "$SCRATCH/diff.json"
		check "diff: inspect with parent: facts and vhdiinfo's media size" \
			$CHK json "$SCRATCH/diff.json" "virtual_size=${VSIZE[diff]:-0}" \
			type=differencing block_size=2097152 parent.virtual_size=8589934592
		check "diff: block_states match the file's BAT" \
			$CHK states "$SCRATCH/diff.json" $(states_of "$d")
	else
		fail "diff: inspect with a matching parent: exit $CLI_RC: $(head -n1 "$SCRATCH/cli.err")"
	fi
	m=$SCRATCH/mdiff
	if cli_run "$HVRESYNC" mount "$d" "$m" && [ "$CLI_RC" -eq 0 ]; then
		_mounts+=("$m")
		check "diff: view over an empty parent equals the python overlay" \
			$CHK cmp "$m/${NAME[diff]}" "$exp"
		"$HVRESYNC" umount "$m" || fail "diff: umount"
	else
		fail "diff: mount with a matching parent: exit $CLI_RC: $(head -n1 "$SCRATCH/cli.err")"
	fi
	[ "$(sha "$d")" = "${SHA[diff]}" ] && ok "diff: file unchanged (sha256)" ||
		fail "diff: file changed by inspect/mount"
fi
finish
