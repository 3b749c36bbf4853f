#!/bin/bash
# t-held-copy-damage.sh - a held copy (`push --hold`) that is no longer
# what its record says: (1) the differencing child was removed, (2) the
# recovery image's two headers were overwritten with zeros.  `push --merge`
# must then fail (non-zero exit, one clear error line, never "merged")
# without changing the image, and the next push must start over (resume
# offset 0) and complete: the disks identical, qemu-img check clean, no
# child, marker or progress record left behind.
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }
command -v qemu-img >/dev/null || skip "qemu-img not installed"
command -v qemu-io >/dev/null || skip "qemu-io not installed"

S=$SCRATCH
STATE=$S/state
SERVER_PID=
trap 'stop_server; cleanup' EXIT

. "$(dirname "$0")/helpers/serve.sh"

H=$S/H.vhdx
CHILD=$H.hvresync.avhdx
mkdir -p "$STATE"

# The recovery image: 64 MiB with some data; the primary: the same with
# 24 MiB changed in three places.
"$HVRESYNC" create --block-size 8M "$S/H0.vhdx" 64M || { fail "create"; finish; }
qemu-io -f vhdx -c 'write -P 0x31 0 16M' -c 'write -P 0x32 40M 8M' \
	"$S/H0.vhdx" >/dev/null || { fail "qemu-io"; finish; }
qemu-img convert -f vhdx -O raw "$S/H0.vhdx" "$S/P.raw"
dd if=/dev/urandom of="$S/P.raw" bs=1M seek=4 count=8 conv=notrunc status=none
dd if=/dev/urandom of="$S/P.raw" bs=1M seek=30 count=8 conv=notrunc status=none
dd if=/dev/urandom of="$S/P.raw" bs=1M seek=56 count=8 conv=notrunc status=none

make_key "$S/key"
cp "$S/H0.vhdx" "$H"
start_server "$S/serve.log" --psk-file "$S/key" --export "H=$H" || finish

# hold DESC: a fresh recovery image and a complete held copy of P.raw.
hold() {
	cp "$S/H0.vhdx" "$H"
	push H "$S/P.raw" --hold
	if [ "$PUSH_RC" -eq 0 ] && [ -e "$CHILD" ]; then
		ok "$1: --hold: exit 0, child held"
	else
		fail "$1: --hold: exit $PUSH_RC: $(head -n1 "$S/H.err")"
		finish
	fi
}

# merge_fails DESC SHA: `push --merge` exits non-zero with an error line
# naming the export or its files, never says "merged", and leaves the
# image with sha256 SHA.
merge_fails() {
	local rc
	timeout -k 5 60 "$HVRESYNC" push --psk-file "$S/key" --merge \
		"127.0.0.1:$PORT/H" >"$S/m.out" 2>"$S/m.err"
	rc=$?
	if [ $rc -ne 0 ] && [ $rc -lt 124 ] && [ -s "$S/m.err" ] &&
		! grep -qw merged "$S/m.out"; then
		ok "$1: --merge fails, exit $rc: $(head -n1 "$S/m.err" | cut -c 1-300)"
	else
		fail "$1: --merge: exit $rc, out '$(head -n1 "$S/m.out")', err '$(head -n1 "$S/m.err")'"
	fi
	grep -qE "export H|$H" "$S/m.err" && ok "$1: the error names the export" ||
		fail "$1: the error does not name export H or $H"
	[ "$(sha "$H")" = "$2" ] && ok "$1: image not changed by the attempt" ||
		fail "$1: the failed merge changed the image"
}

# starts_over DESC: a plain push starts from 0 and completes, identical.
starts_over() {
	local f left=
	push H "$S/P.raw"
	if [ "$PUSH_RC" -eq 0 ] && [ "$(jget "$S/H.json" resume_offset)" -eq 0 ]; then
		ok "$1: the next push starts over (resume_offset 0) and exits 0"
	else
		fail "$1: next push: exit $PUSH_RC, resume_offset $(jget "$S/H.json" resume_offset 2>/dev/null): $(head -n1 "$S/H.err")"
	fi
	qemu-img compare -q -f raw -F vhdx "$S/P.raw" "$H" &&
		ok "$1: identical (qemu-img compare)" || fail "$1: H.vhdx differs"
	qemu-img check -q -f vhdx "$H" >"$S/chk.out" 2>&1 &&
		ok "$1: clean (qemu-img check)" ||
		fail "$1: qemu-img check: $(head -c 300 "$S/chk.out")"
	for f in "$CHILD" "$CHILD.merging"; do
		[ -e "$f" ] && left="$left $f"
	done
	ls "$STATE" | grep -q . && left="$left state:$(ls "$STATE" | tr '\n' ' ')"
	[ -z "$left" ] && ok "$1: nothing left behind" || fail "$1: left behind:$left"
}

# ===========================================================================
say "(1) the held child is removed"
# ===========================================================================
hold "child removed"
rm -f "$CHILD"
merge_fails "child removed" "$(sha "$H")"
starts_over "child removed"

# ===========================================================================
say "(2) both headers of the image are zeroed"
# ===========================================================================
hold "headers zeroed"
# header 1 at 64 KiB, header 2 at 128 KiB (MS-VHDX 2.2.2)
dd if=/dev/zero of="$H" bs=64K seek=1 count=2 conv=notrunc status=none
qemu-img info -f vhdx "$H" >/dev/null 2>&1 &&
	fail "headers zeroed: qemu-img still opens the image (damage did not take)"
merge_fails "headers zeroed" "$(sha "$H")"
# a good image again (as from a backup): the copy must not be trusted
cp "$S/H0.vhdx" "$H"
starts_over "headers zeroed"

stop_server
finish
