#!/bin/bash
# t-merge.sh - `hvresync merge CHILD`: the child's sectors, partial
# sectors, whole blocks and ZERO blocks land in the parent, which then
# reads (qemu-img convert after a clean qemu-img check, or libvhdi) exactly
# as a python model of parent + child writes; CHILD and CHILD.merging are
# gone.  A merge killed (SIGKILL) part way - by strace at chosen syscalls
# (pwrite64 of the copy and of the commit, the marker's rename, each
# unlink) and after short delays while copying 256 MiB - completes when run
# again.  Also: a fixed parent, 4096-byte sectors, a chain of depth 2
# merged top first, a child with a dirty log, and the refusals (not a
# differencing disk, missing file, missing or changed parent) with one
# error line and nothing touched.
. "$(dirname "$0")/lib.sh"
IO=${VHDX_IO:-$TOP/build/helpers/vhdx-io}
CAT=${VHDX_CAT:-$TOP/build/helpers/vhdx-cat}
export VHDX_CAT=$CAT # for writer_model.py's "cat" reader
for b in "$HVRESYNC" "$IO" "$CAT"; do
	[ -x "$b" ] || { fail "$b not built (make -j2 all)"; finish; }
done
PY=$(python3 -c 'import sys; print(sys.executable)')
M="$PY $TOP/tests/helpers/writer_model.py"
S=$SCRATCH
MiB=$((1024 * 1024))
STRACE=$(command -v strace || true)
[ -n "$STRACE" ] || echo "note: strace not installed: only timed kills (install strace)"

. "$(dirname "$0")/helpers/writer.sh"

# merged DESC DIR CHILD: CHILD and its marker files are gone from DIR.
merged() {
	local left
	left=$(cd "$2" && ls -d "$3" "$3".merging* 2>/dev/null)
	[ -z "$left" ] && ok "$1: child and marker gone" || fail "$1: left behind: $left"
}

# qemu_base DIR SIZE: a qemu-made dynamic parent with 8 MiB blocks and
# some data, DIR/base.vhdx, and its bytes in DIR/base.raw.
qemu_base() {
	mkdir -p "$1"
	qemu-img create -q -f vhdx -o block_size=8M "$1/base.vhdx" "$2"
	qemu-io -f vhdx -c 'write -P 0xb1 0 20M' -c 'write -P 0xb2 24M 8M' \
		-c 'write -P 0xb3 40M 1M' "$1/base.vhdx" >/dev/null
	qemu-img convert -f vhdx -O raw "$1/base.vhdx" "$1/base.raw"
}

# The child's writes: partial sectors and blocks over parent data, a
# whole block, ZERO over parent data (whole child block and part of one),
# writes across block edges, into never-written parent space, the last
# sector, random writes.
COPS="r:4242:30:$((2 * MiB)) w:1000:100:0xc1 w:$((MiB + 512)):4096:0xc2 \
w:$((4 * MiB)):$((2 * MiB)):0xc3 z:$((8 * MiB)):$((2 * MiB)) \
z:$((12 * MiB + 512)):1024 w:$((26 * MiB - 2048)):8192:0xc4 \
w:$((34 * MiB + 512)):$((3 * MiB)):0xc5 w:$((48 * MiB - 512)):512:0xc6"

# =====================================================================
say "merge a child into a qemu-made dynamic parent"
# =====================================================================
D=$S/m1
qemu_base "$D" 48M
"$HVRESYNC" create --parent "$D/base.vhdx" "$D/child.vhdx"
# shellcheck disable=SC2086
io "$D/child.vhdx" $COPS
# shellcheck disable=SC2086
$M expect "$D/model.raw" --base "$D/base.raw" $COPS
verify "child before merging" cat "$D/child.vhdx" "$D/model.raw"
cli_run "$HVRESYNC" merge "$D/child.vhdx"
if [ "$CLI_RC" -eq 0 ] && [ ! -s "$S/cli.err" ]; then
	ok "merge exit 0, quiet"
else
	fail "merge exit $CLI_RC: $(head -n2 "$S/cli.err")"
fi
verify "parent after merge" qemu "$D/base.vhdx" "$D/model.raw"
verify "parent after merge" vhdi "$D/base.vhdx" "$D/model.raw"
merged "merge" "$D" child.vhdx
cli_run "$HVRESYNC" inspect --json "$D/base.vhdx"
grep -q '"log_dirty": false' "$S/cli.out" && ok "parent's log clean after merge" ||
	fail "parent's log not clean after merge"
rm -rf "$D"

# =====================================================================
say "merge into a fixed parent; 4096-byte sectors"
# =====================================================================
D=$S/m2
mkdir -p "$D"
"$HVRESYNC" create --fixed --block-size 1M "$D/p.vhdx" 48M
io "$D/p.vhdx" w:0:$((30 * MiB)):0xa1
$M expect "$D/p.raw" --size $((48 * MiB)) w:0:$((30 * MiB)):0xa1
size0=$(stat -c %s "$D/p.vhdx")
"$HVRESYNC" create --parent "$D/p.vhdx" --block-size 4M "$D/c.vhdx"
# shellcheck disable=SC2086
io "$D/c.vhdx" $COPS
# shellcheck disable=SC2086
$M expect "$D/model.raw" --base "$D/p.raw" $COPS
cli_run "$HVRESYNC" merge "$D/c.vhdx"
[ "$CLI_RC" -eq 0 ] || fail "merge into fixed: exit $CLI_RC: $(head -n1 "$S/cli.err")"
verify "fixed parent after merge" qemu "$D/p.vhdx" "$D/model.raw"
[ "$(stat -c %s "$D/p.vhdx")" -eq "$size0" ] && ok "fixed parent did not grow" ||
	fail "fixed parent grew from $size0 to $(stat -c %s "$D/p.vhdx")"
merged "fixed" "$D" c.vhdx

"$HVRESYNC" create --sector-size 4096 --block-size 2M "$D/p4.vhdx" 48M
io "$D/p4.vhdx" w:0:$((30 * MiB)):0xa1
"$HVRESYNC" create --parent "$D/p4.vhdx" "$D/c4.vhdx"
# shellcheck disable=SC2086
io "$D/c4.vhdx" $COPS
cli_run "$HVRESYNC" merge "$D/c4.vhdx"
[ "$CLI_RC" -eq 0 ] || fail "merge with 4096-byte sectors: exit $CLI_RC: $(head -n1 "$S/cli.err")"
# the 4096-byte sectors widen every partial write: same model bytes
verify "4096-sector parent after merge" vhdi "$D/p4.vhdx" "$D/model.raw"
merged "4096-sector" "$D" c4.vhdx
rm -rf "$D"

# =====================================================================
say "a chain of depth 2: merge the top, then the middle"
# =====================================================================
D=$S/m3
qemu_base "$D" 48M
"$HVRESYNC" create --parent "$D/base.vhdx" --block-size 1M "$D/c1.vhdx"
# shellcheck disable=SC2086
io "$D/c1.vhdx" $COPS
# shellcheck disable=SC2086
$M expect "$D/m1.raw" --base "$D/base.raw" $COPS
"$HVRESYNC" create --parent "$D/c1.vhdx" --block-size 4M "$D/c2.vhdx"
# over c1's data: zeros (a whole c2 block over c1's full block), a
# partial sector, c1's ZERO block rewritten, random writes
OPS2="z:$((4 * MiB)):$((4 * MiB)) w:$((MiB + 700)):10:0xd1 \
w:$((8 * MiB + 4096)):512:0xd2 r:99:20:$MiB w:$((40 * MiB)):$((4 * MiB)):0xd3"
# shellcheck disable=SC2086
io "$D/c2.vhdx" $OPS2
# shellcheck disable=SC2086
$M expect "$D/m2.raw" --base "$D/m1.raw" $OPS2
verify "chain before merging" cat "$D/c2.vhdx" "$D/m2.raw"
base_sha=$(sha "$D/base.vhdx")
cli_run "$HVRESYNC" merge "$D/c2.vhdx"
[ "$CLI_RC" -eq 0 ] || fail "merge c2 into c1: exit $CLI_RC: $(head -n1 "$S/cli.err")"
merged "top of the chain" "$D" c2.vhdx
# c1 keeps its own link to the base: it opens without --ignore-parent-linkage
verify "c1 after merging c2" cat "$D/c1.vhdx" "$D/m2.raw"
[ "$(sha "$D/base.vhdx")" = "$base_sha" ] && ok "base untouched by merging c2" ||
	fail "merging c2 changed the base"
cli_run "$HVRESYNC" merge "$D/c1.vhdx"
[ "$CLI_RC" -eq 0 ] || fail "merge c1 into base: exit $CLI_RC: $(head -n1 "$S/cli.err")"
verify "base after merging the chain" qemu "$D/base.vhdx" "$D/m2.raw"
merged "middle of the chain" "$D" c1.vhdx
rm -rf "$D"

# =====================================================================
say "a 10 GiB child over three sector-bitmap chunks (4 GiB each)"
# =====================================================================
# Too big for a model in memory: qemu-io checks the parent's byte
# patterns range by range after the merge.
D=$S/m8
mkdir -p "$D"
G=$((1024 * MiB))
"$HVRESYNC" create --block-size 2M "$D/p.vhdx" 10G
io "$D/p.vhdx" w:$((4 * G - MiB)):$((4 * MiB)):0xa1 w:$((8 * G)):$((2 * MiB)):0xa2
"$HVRESYNC" create --parent "$D/p.vhdx" "$D/c.vhdx"
io "$D/c.vhdx" w:$((4 * G - 512)):1024:0xc1 w:$((4 * G + MiB + 3)):10:0xc2 \
	z:$((8 * G)):$((2 * MiB)) w:$((9 * G)):$((3 * MiB)):0xc3 w:$((10 * G - 512)):512:0xc4
"$HVRESYNC" inspect --json "$D/c.vhdx" >"$S/i.json"
grep -q '"sector_bitmap_blocks_present": 3' "$S/i.json" &&
	ok "three sector bitmaps allocated" ||
	fail "sector bitmaps: $(grep sector_bitmap_blocks_present "$S/i.json")"
cli_run "$HVRESYNC" merge "$D/c.vhdx"
[ "$CLI_RC" -eq 0 ] || fail "merge: exit $CLI_RC: $(head -n1 "$S/cli.err")"
check "10 GiB parent passes qemu-img check" qemu-img check -q -f vhdx "$D/p.vhdx"
qemu-io -r -f vhdx \
	-c "read -P 0xa1 $((4 * G - MiB)) $((MiB - 512))" \
	-c "read -P 0xc1 $((4 * G - 512)) 1024" \
	-c "read -P 0xa1 $((4 * G + 512)) $((MiB + 3 - 512))" \
	-c "read -P 0xc2 $((4 * G + MiB + 3)) 10" \
	-c "read -P 0xa1 $((4 * G + MiB + 13)) $((2 * MiB - 13))" \
	-c "read -P 0 $((8 * G)) $((2 * MiB))" \
	-c "read -P 0 $((8 * G + 2 * MiB)) 4096" \
	-c "read -P 0xc3 $((9 * G)) $((3 * MiB))" \
	-c "read -P 0 $((9 * G + 3 * MiB)) 4096" \
	-c "read -P 0xc4 $((10 * G - 512)) 512" "$D/p.vhdx" >"$S/qio.out" 2>&1
if grep -qiE 'fail|error' "$S/qio.out"; then
	fail "qemu-io pattern checks: $(grep -iE 'fail|error' "$S/qio.out" | head -n 3 | tr '\n' ' ')"
else
	ok "qemu-io reads every merged range and what lies around it"
fi
merged "10 GiB child" "$D" c.vhdx
rm -rf "$D"

# =====================================================================
say "a child killed while writing (dirty log) merges what it committed"
# =====================================================================
if [ -n "$STRACE" ]; then
	D=$S/m4
	qemu_base "$D" 48M
	"$HVRESYNC" create --parent "$D/base.vhdx" "$D/c.vhdx"
	# killed at the 8th pwrite: right after the second commit's log
	# entry, before its sectors are written in place
	(timeout -s KILL 60 "$STRACE" -o /dev/null -e trace=pwrite64 \
		-e inject=pwrite64:signal=KILL:when=8 "$IO" "$D/c.vhdx" \
		w:$((3 * MiB)):4096:0xe1 f w:$((9 * MiB + 512)):1024:0xe2 f \
		w:$((20 * MiB)):512:0xe3 f >/dev/null 2>&1; :) 2>/dev/null
	"$HVRESYNC" inspect --json "$D/c.vhdx" >"$S/i.json" 2>/dev/null
	grep -q '"log_dirty": true' "$S/i.json" && ok "the child's log is dirty" ||
		fail "the child's log is not dirty: the kill point missed the commit"
	"$CAT" "$D/c.vhdx" >"$D/want.raw"
	cli_run "$HVRESYNC" merge "$D/c.vhdx"
	[ "$CLI_RC" -eq 0 ] || fail "merge of a dirty child: exit $CLI_RC: $(head -n1 "$S/cli.err")"
	verify "parent after merging a dirty child" qemu "$D/base.vhdx" "$D/want.raw"
	cmp -s "$D/want.raw" "$D/base.raw" && fail "(the kill left nothing to merge)"
	rm -rf "$D"
fi

# =====================================================================
say "interrupted merges complete when run again"
# =====================================================================
D=$S/m5
qemu_base "$D" 48M
"$HVRESYNC" create --parent "$D/base.vhdx" "$D/tmpl.vhdx"
# shellcheck disable=SC2086
io "$D/tmpl.vhdx" $COPS
# shellcheck disable=SC2086
$M expect "$D/model.raw" --base "$D/base.raw" $COPS
cp --sparse=always "$D/base.vhdx" "$D/base.orig"

# interrupted DESC SYSCALL N: kill `hvresync merge` at its N-th SYSCALL,
# then merge again; the parent must read the model.
interrupted() {
	local desc=$1 sc=$2 n=$3 rc
	cp --sparse=always "$D/base.orig" "$D/base.vhdx"
	cp --sparse=always "$D/tmpl.vhdx" "$D/c.vhdx"
	rm -f "$D"/c.vhdx.merging*
	(timeout -s KILL 60 "$STRACE" -o /dev/null -e trace="$sc" \
		-e inject="$sc":signal=KILL:when="$n" "$HVRESYNC" merge "$D/c.vhdx" \
		>/dev/null 2>&1; echo $? >"$S/rc") 2>/dev/null
	rc=$(cat "$S/rc")
	[ "$rc" -eq 137 ] || echo "note: $desc: not killed (exit $rc)"
	cli_run "$HVRESYNC" merge "$D/c.vhdx"
	if [ "$CLI_RC" -ne 0 ]; then
		fail "$desc: merge again: exit $CLI_RC: $(head -n1 "$S/cli.err")"
		return
	fi
	verify "$desc, merged again" qemu "$D/base.vhdx" "$D/model.raw"
	merged "$desc" "$D" c.vhdx
}

if [ -n "$STRACE" ]; then
	cp --sparse=always "$D/base.orig" "$D/base.vhdx"
	cp --sparse=always "$D/tmpl.vhdx" "$D/c.vhdx"
	"$STRACE" -f -o "$S/trace" -e trace=pwrite64 "$HVRESYNC" merge "$D/c.vhdx"
	P=$(grep -c 'pwrite64(' "$S/trace")
	echo "an uninterrupted merge makes $P pwrite64 calls"
	for n in 1 2 $((P / 4)) $((P / 2)) $((P * 3 / 4)) $((P - 4)) $((P - 3)) \
		$((P - 2)) $((P - 1)) $P; do
		interrupted "killed at pwrite64 $n of $P" pwrite64 $n
	done
	interrupted "killed writing the marker" write 1
	interrupted "killed at the marker's rename" rename 1
	interrupted "killed before removing the child" unlink 1
	interrupted "killed before removing the marker" unlink 2
fi
rm -rf "$D"

say "timed kills while merging 256 MiB"
D=$S/m6
mkdir -p "$D"
qemu-img create -q -f vhdx -o block_size=8M "$D/base.vhdx" 320M
qemu-io -f vhdx -c 'write -P 0xb1 0 100M' "$D/base.vhdx" >/dev/null
"$HVRESYNC" create --parent "$D/base.vhdx" "$D/tmpl.vhdx"
BIG="w:$((32 * MiB)):$((256 * MiB)):0x5b w:$((MiB + 512)):4096:0x5c z:$((300 * MiB)):$((4 * MiB))"
# shellcheck disable=SC2086
io "$D/tmpl.vhdx" $BIG
qemu-img convert -f vhdx -O raw "$D/base.vhdx" "$D/base.raw"
# shellcheck disable=SC2086
$M expect "$D/model.raw" --base "$D/base.raw" $BIG
rm -f "$D/base.raw"
cp --sparse=always "$D/base.vhdx" "$D/base.orig"
# how long an uninterrupted merge takes here, in milliseconds
cp --sparse=always "$D/tmpl.vhdx" "$D/c.vhdx"
t0=$(date +%s%N)
"$HVRESYNC" merge "$D/c.vhdx"
ms=$((($(date +%s%N) - t0) / 1000000))
echo "an uninterrupted merge of 256 MiB takes ${ms} ms"
for pct in 20 55 85; do
	delay=$(printf '%d.%03d' $((ms * pct / 100000)) $((ms * pct / 100 % 1000)))
	cp --sparse=always "$D/base.orig" "$D/base.vhdx"
	cp --sparse=always "$D/tmpl.vhdx" "$D/c.vhdx"
	"$HVRESYNC" merge "$D/c.vhdx" 2>/dev/null &
	pid=$!
	sleep "$delay"
	kill -KILL $pid 2>/dev/null && killed=yes || killed="no, it had finished"
	wait $pid 2>/dev/null
	state=$(cd "$D" && ls c.vhdx c.vhdx.merging 2>/dev/null | tr '\n' ' ')
	desc="killed after ${delay}s (killed: $killed; left: ${state:-nothing})"
	if [ -e "$D/c.vhdx" ] || [ -e "$D/c.vhdx.merging" ]; then
		cli_run "$HVRESYNC" merge "$D/c.vhdx"
		if [ "$CLI_RC" -ne 0 ]; then
			fail "$desc: merge again: exit $CLI_RC: $(head -n1 "$S/cli.err")"
			continue
		fi
	fi
	verify "$desc, merged again" qemu "$D/base.vhdx" "$D/model.raw"
	merged "killed after ${delay}s" "$D" c.vhdx
done
rm -rf "$D"

# =====================================================================
say "refusals: one line, exit 2, nothing touched"
# =====================================================================
D=$S/m7
qemu_base "$D" 48M
sum=$(sha "$D/base.vhdx")
expect_error "merge of a non-differencing image" "base.vhdx" -- \
	"$HVRESYNC" merge "$D/base.vhdx"
[ "$(sha "$D/base.vhdx")" = "$sum" ] && ok "non-differencing image untouched" ||
	fail "merge changed a non-differencing image"
left=$(cd "$D" && echo ./*merging* | grep -v '\*')
[ -z "$left" ] && ok "no marker written" || fail "marker left: $left"
expect_error "merge of a missing file" "nothere.vhdx" -- \
	"$HVRESYNC" merge "$D/nothere.vhdx"
expect_error "merge with no argument" "usage" -- "$HVRESYNC" merge

"$HVRESYNC" create --parent "$D/base.vhdx" "$D/c.vhdx"
io "$D/c.vhdx" w:0:4096:0x42
csum=$(sha "$D/c.vhdx")
mv "$D/base.vhdx" "$D/moved.vhdx"
expect_error "merge with the parent missing" "c.vhdx" -- "$HVRESYNC" merge "$D/c.vhdx"
[ "$(sha "$D/c.vhdx")" = "$csum" ] && ok "child untouched" || fail "child changed"
[ ! -e "$D/c.vhdx.merging" ] && ok "no marker left" || fail "marker left behind"
mv "$D/moved.vhdx" "$D/base.vhdx"

io "$D/base.vhdx" w:$((47 * MiB)):512:0x43 # the parent changes: linkage breaks
psum=$(sha "$D/base.vhdx")
expect_error "merge into a changed parent" "parent_linkage" -- \
	"$HVRESYNC" merge "$D/c.vhdx"
[ "$(sha "$D/base.vhdx")" = "$psum" ] && [ "$(sha "$D/c.vhdx")" = "$csum" ] &&
	[ ! -e "$D/c.vhdx.merging" ] && ok "parent, child untouched, no marker" ||
	fail "a refused merge touched something"
qemu-img convert -f vhdx -O raw "$D/base.vhdx" "$D/b.raw"
$M expect "$D/want.raw" --base "$D/b.raw" w:0:4096:0x42
cli_run "$HVRESYNC" merge --ignore-parent-linkage "$D/c.vhdx"
[ "$CLI_RC" -eq 0 ] && ok "--ignore-parent-linkage merges anyway" ||
	fail "--ignore-parent-linkage: exit $CLI_RC: $(head -n1 "$S/cli.err")"
verify "parent after a forced merge" qemu "$D/base.vhdx" "$D/want.raw"
rm -rf "$D"

finish
