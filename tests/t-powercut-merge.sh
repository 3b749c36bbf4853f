#!/bin/bash
# t-powercut-merge.sh - the crash matrix of `hvresync merge` (issue 11,
# item 2): a qemu-made dynamic parent and an hvresync-made differencing
# child (scattered 4 KiB sectors, whole child blocks, blocks over parent
# data and over never-written space, a whole zeroed block and zeroed
# ranges over parent data) live on the power-cut file system
# (tests/helpers/powercut.c); `hvresync merge CHILD` runs and the power is
# cut at its k-th durability barrier (fsync, fdatasync, folder fsync), in
# plain and torn mode.  What hvresync(8) documents must then hold on what
# was durable:
#   - the parent alone opens (`hvresync inspect`); a copy replayed by
#     hvresync (`inspect --replay`) passes a plain `qemu-img check` and
#     reads (qemu-img convert) as hvresync reads the original, and as
#     another copy that qemu replayed (`qemu-img check -r all`, `qemu-img
#     compare`); each of its 4 KiB sectors holds the parent's old content
#     or the merged content (the writer's promise holds for a half-merged
#     parent, which nothing may use until the merge is finished);
#   - the child is still there without a marker: parent and child are
#     byte for byte as before (the child read the expected disk then);
#   - the child is gone: the parent alone holds the merged disk;
#   - the merge exited 0 before the cut: child and marker are gone and the
#     parent alone holds the merged disk;
#   - running `hvresync merge CHILD` again (when the child or its marker is
#     there; on a bind mount of the backing folder at the power-cut
#     mount's path, which the marker names the parent by) exits 0,
#     leaves no child or marker, and the parent passes
#     `qemu-img check` and reads (qemu-img convert) exactly the expected
#     disk.
# First, a small matrix of `hvresync create --parent` on the same file
# system: an image a cut leaves opens and reads as its parent, and one
# whose create exited 0 is there.
# The expected disk is worked out independently: qemu-img convert of the
# parent before the merge with the child's writes applied by python
# (tests/helpers/writer_model.py); qemu cannot read a differencing VHDX.
# POWERCUT_FULL=1 cuts at every barrier (tools/crash/run); the short form
# at ${POWERCUT_SHORT:-8} points per mode.
. "$(dirname "$0")/lib.sh"
[ -f "$TOP/tests/helpers/powercut.sh" ] ||
	{ fail "tests/helpers/powercut.sh is missing"; finish; }
. "$TOP/tests/helpers/powercut.sh"

IO=${VHDX_IO:-$(dirname "$HVRESYNC")/helpers/vhdx-io}
CAT=${VHDX_CAT:-$(dirname "$HVRESYNC")/helpers/vhdx-cat}
PCBIN=${POWERCUT:-$TOP/build/helpers/powercut}
for t in qemu-img qemu-io fusermount3 python3; do
	command -v "$t" >/dev/null || skip "$t not installed"
done
[ -c /dev/fuse ] || skip "/dev/fuse not available"
[ "$(id -u)" -eq 0 ] || skip "needs root (FUSE mounts, a bind mount)"
for b in "$HVRESYNC" "$IO" "$CAT" "$PCBIN"; do
	[ -x "$b" ] || { fail "$b not built (make -j2 all)"; finish; }
done

S=$SCRATCH
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in tests/helpers
T="timeout -s KILL"
M="python3 $TOP/tests/helpers/writer_model.py"
PRISTINE=$S/pristine # the folder as it is before each run
BACK=$S/back         # the power-cut file system's backing folder
MNT=$S/mnt           # where it is mounted; the merge marker names it
mkdir -p "$PRISTINE" "$BACK" "$MNT"

# sectors.py RAW OLD NEW: every 4 KiB sector of RAW equals OLD's or NEW's;
# prints the first few that do not and exits 1.
cat >"$S/sectors.py" <<'EOF'
import sys
raw, old, new = (open(p, "rb").read() for p in sys.argv[1:4])
if len(raw) != len(new) or len(old) != len(new):
    print("sizes differ: %d, old %d, new %d" % (len(raw), len(old), len(new)))
    sys.exit(1)
if raw == new or raw == old:
    sys.exit(0)
r, o, w = memoryview(raw), memoryview(old), memoryview(new)
bad = [i // 4096 for i in range(0, len(raw), 4096)
       if r[i:i + 4096] != o[i:i + 4096] and r[i:i + 4096] != w[i:i + 4096]]
if bad:
    print("%d of %d sectors neither old nor new, first at %s" %
          (len(bad), len(raw) // 4096,
           ", ".join("%#x" % (b * 4096) for b in bad[:6])))
    sys.exit(1)
EOF

# --- the chain --------------------------------------------------------------
# Parent: 24 MiB, 2 MiB blocks, data in the first 10 MiB and at 16-18 MiB.
# Child: 1 MiB blocks (half a parent block each), written with vhdx-io.
qemu-img create -q -f vhdx -o block_size=2M "$PRISTINE/base.vhdx" 24M
qemu-io -f vhdx -c 'write -P 0xb1 0 10M' -c 'write -P 0xb2 16M 2M' \
	"$PRISTINE/base.vhdx" >/dev/null || { fail "qemu-io on the parent"; finish; }
qemu-img convert -f vhdx -O raw "$PRISTINE/base.vhdx" "$S/old.raw"
"$HVRESYNC" create --parent "$PRISTINE/base.vhdx" --block-size 1M \
	"$PRISTINE/child.vhdx" || { fail "create the child"; finish; }
# scattered 4 KiB sectors (seeded, some over parent data, some over holes),
# two whole child blocks (over data, over never-written space), 8 KiB
# across a block edge, a whole zeroed child block and zeroed ranges over
# parent data, and a sector at the very end
OPS=$(python3 - <<'EOF'
import random
r = random.Random(1111)
ops = set()
while len(ops) < 40:
    ops.add(r.randrange(0, 24 * 256) * 4096)
out = ["w:%d:4096:%#x" % (o, 0x40 + i % 0x40) for i, o in enumerate(sorted(ops))]
M = 1 << 20
out += ["w:%d:%d:0xc1" % (3 * M, M), "w:%d:%d:0xc2" % (20 * M, M),
        "w:%d:8192:0xc3" % (12 * M - 4096), "z:%d:%d" % (6 * M, M),
        "z:%d:%d" % (M + 8192, 64 * 1024), "z:%d:12288" % (16 * M + 4096),
        "w:%d:4096:0xc4" % (24 * M - 4096)]
print(" ".join(out))
EOF
)
# shellcheck disable=SC2086
"$IO" "$PRISTINE/child.vhdx" $OPS >/dev/null || { fail "vhdx-io on the child"; finish; }
# shellcheck disable=SC2086
$M expect "$S/new.raw" --base "$S/old.raw" $OPS
"$CAT" "$PRISTINE/child.vhdx" >"$S/chain.raw" 2>"$S/cat.err"
if ! cmp -s "$S/chain.raw" "$S/new.raw"; then
	fail "setup: hvresync reads the chain unlike the model: $($M cmp "$S/chain.raw" "$S/new.raw" | head -n 2)"
	finish
fi
cmp -s "$S/old.raw" "$S/new.raw" && { fail "setup: the child changes nothing"; finish; }
PSUM=$(sha "$PRISTINE/base.vhdx")
CSUM=$(sha "$PRISTINE/child.vhdx")

# restore: the backing folder as it was before the merge.
restore() {
	rm -rf "$BACK"
	mkdir -p "$BACK"
	cp -a --sparse=always "$PRISTINE/." "$BACK/"
}

# merge_on DIR: `hvresync merge` on DIR/child.vhdx; its exit status in RC.
merge_on() {
	$T 60 "$HVRESYNC" merge "$1/child.vhdx" >"$S/merge.out" 2>"$S/merge.err"
	RC=$?
}

# bind_back: BACK at MNT (the marker names the parent by its path there).
bind_back() {
	mount --bind "$BACK" "$MNT" && _mounts+=("$MNT")
}

# leftovers: child files still in BACK.
leftovers() { (cd "$BACK" && ls -d child.vhdx* 2>/dev/null | tr '\n' ' '); }

BAD=""
# bad WHAT: one failed check of the current crash state.
bad() { BAD="$BAD${BAD:+; }$1"; }

# qemu_read IMAGE OUT: qemu-img check is clean, then convert to OUT.
qemu_read() {
	$T 60 qemu-img check -f vhdx "$1" >"$S/qc.out" 2>&1 &&
		grep -q "No errors were found" "$S/qc.out" &&
		$T 60 qemu-img convert -t unsafe -f vhdx -O raw "$1" "$2"
}

# check_state RC: every check of what BACK holds after a cut (or a clean
# run); failures collect in BAD.
check_state() {
	local rc=$1 child=no marker=no p=$BACK/base.vhdx
	BAD=""
	[ -e "$BACK/child.vhdx" ] && child=yes
	[ -e "$BACK/child.vhdx.merging" ] && marker=yes
	STATE="child $child, marker $marker, merge exit $rc"
	# the parent alone, as the cut left it
	$T 60 "$HVRESYNC" inspect --json "$p" >"$S/i.json" 2>"$S/i.err" ||
		bad "hvresync inspect of the parent: $(head -n1 "$S/i.err")"
	# ... replayed by hvresync (on a copy: the next merge must see the
	# original), checked and read by qemu, and replayed by qemu
	cp --sparse=always "$p" "$S/copy.vhdx"
	cp --sparse=always "$p" "$S/qcopy.vhdx"
	if ! $T 60 "$HVRESYNC" inspect --replay "$S/copy.vhdx" >/dev/null 2>"$S/i.err"; then
		bad "hvresync inspect --replay of a copy of the parent: $(head -n1 "$S/i.err")"
	elif ! qemu_read "$S/copy.vhdx" "$S/p.raw"; then
		bad "the parent alone: qemu-img: $(grep -v '^$' "$S/qc.out" | head -n2 | tr '\n' ' ')"
	else
		# (python only for a mix: it starts slowly on a loaded machine)
		if cmp -s "$S/p.raw" "$S/new.raw"; then
			STATE="$STATE, parent new"
		elif cmp -s "$S/p.raw" "$S/old.raw"; then
			STATE="$STATE, parent old"
		else
			STATE="$STATE, parent old and new"
			python3 "$S/sectors.py" "$S/p.raw" "$S/old.raw" "$S/new.raw" >"$S/sec.out" ||
				bad "the parent alone: $(cat "$S/sec.out")"
		fi
		if ! "$CAT" "$p" >"$S/h.raw" 2>/dev/null || ! cmp -s "$S/h.raw" "$S/p.raw"; then
			bad "hvresync reads the parent differently before and after its replay"
		fi
		if ! $T 60 qemu-img check -q -r all -f vhdx "$S/qcopy.vhdx" >"$S/qr.out" 2>&1; then
			bad "qemu-img check -r all of a copy of the parent: $(head -n2 "$S/qr.out" | tr '\n' ' ')"
		elif ! $T 60 qemu-img compare -q -f vhdx -F vhdx "$S/qcopy.vhdx" "$S/copy.vhdx"; then
			bad "qemu's replay and hvresync's give different parents"
		fi
		if [ $child = no ] && ! cmp -s "$S/p.raw" "$S/new.raw"; then
			bad "the child is gone but the parent is not the merged disk"
		fi
	fi
	if [ "$rc" -eq 0 ] && [ $child$marker != nono ]; then
		bad "merge exited 0 but left $(leftovers)"
	fi
	if [ $child = yes ] && [ $marker = no ]; then
		[ "$(sha "$p")" = "$PSUM" ] ||
			bad "no marker, yet the parent changed"
		[ "$(sha "$BACK/child.vhdx")" = "$CSUM" ] ||
			bad "no marker, yet the child changed"
	fi
	# what the product does next: merge again while anything is left
	if [ $child$marker != nono ]; then
		if bind_back; then
			merge_on "$MNT"
			[ "$RC" -eq 0 ] ||
				bad "merge again: exit $RC: $(head -n1 "$S/merge.err")"
			umount "$MNT" || umount -l "$MNT"
		else
			bad "cannot bind-mount the backing folder"
		fi
	fi
	[ -z "$(leftovers)" ] || bad "left behind after the merge: $(leftovers)"
	if ! qemu_read "$p" "$S/f.raw"; then
		bad "the merged parent: qemu-img: $(grep -v '^$' "$S/qc.out" | head -n2 | tr '\n' ' ')"
	elif ! cmp -s "$S/f.raw" "$S/new.raw"; then
		bad "the merged parent is not the expected disk: $($M cmp "$S/f.raw" "$S/new.raw" | head -n1)"
	fi
	rm -f "$S/copy.vhdx" "$S/qcopy.vhdx" "$S/p.raw" "$S/h.raw" "$S/f.raw"
	[ -z "$BAD" ]
}


# --- creating a child -------------------------------------------------------------
# The merge's child is made by `hvresync create --parent`: after a cut at
# any of its barriers the new image is either absent or opens with its
# parent and reads as the parent (nothing written to it yet); when create
# exited 0 before the cut it is there.
create_on() {
	$T 60 "$HVRESYNC" create --parent "$1/base.vhdx" --block-size 1M \
		"$1/new.vhdx" >"$S/create.out" 2>&1
	RC=$?
}

check_create() {
	BAD=""
	if [ -e "$BACK/new.vhdx" ]; then
		STATE="image there, create exit $1"
		if ! "$CAT" "$BACK/new.vhdx" >"$S/c.raw" 2>"$S/cat.err"; then
			bad "the new image does not open: $(head -n1 "$S/cat.err")"
		elif ! cmp -s "$S/c.raw" "$S/old.raw"; then
			bad "the new image does not read as its parent"
		fi
	else
		STATE="no image, create exit $1"
		[ "$1" -ne 0 ] || bad "create exited 0, yet its image is gone"
	fi
	rm -f "$S/c.raw"
	[ -z "$BAD" ]
}

say "creating a child on the power-cut file system"
restore
pc_mount "$BACK" "$MNT" || { fail "pc_mount"; finish; }
create_on "$MNT"
pc_umount "$MNT"
NC=$(pc_barriers)
[ "$RC" -eq 0 ] || { fail "uncut create: exit $RC: $(head -n1 "$S/create.out")"; finish; }
check_create "$RC" || fail "uncut create: $BAD"
pc_matrix "create " "$NC" "$BACK" "$MNT" restore 'create_on "$MNT"' \
	'pc_umount "$MNT"' 'check_create "$RC"'

# --- a run without a cut: its barriers, and the oracle itself -------------------
say "an uncut merge on the power-cut file system"
restore
pc_mount "$BACK" "$MNT" || { fail "pc_mount"; finish; }
t0=$SECONDS
merge_on "$MNT"
pc_umount "$MNT"
N=$(pc_barriers)
[ "$RC" -eq 0 ] || { fail "uncut merge: exit $RC: $(head -n1 "$S/merge.err")"; finish; }
if check_state "$RC"; then
	ok "uncut merge ($N barriers, $((SECONDS - t0)) s): the parent is the expected disk"
else
	fail "uncut merge: $BAD"
	finish
fi
[ "${N:-0}" -gt 0 ] 2>/dev/null || { fail "no barriers counted ($N)"; finish; }

# --- the matrix -----------------------------------------------------------------
say "power cuts at the barriers of the merge (N=$N)"
pc_matrix "" "$N" "$BACK" "$MNT" restore 'merge_on "$MNT"' \
	'pc_umount "$MNT"' 'check_state "$RC"'
pc_summary
finish
