#!/bin/bash
# t-recovery-space.sh - a recovery disk on a filesystem that is nearly
# full (a small ext4 made in a file and loop-mounted here).  (a) Room for
# the copy but not for the merge: the push's merge is refused before it
# writes anything (the image keeps its sha256, the held child stays), with
# one message giving what the merge needs and what is free, in human units
# and in bytes, and those figures agree with the data pushed and with df;
# once space is freed, `push --merge` finishes and the disks are
# identical.  (b) Refused merges, three in a row, do not grow the image.
# (c) A writer that runs out of space part way (vhdx-io filling the
# filesystem) leaves an unreferenced tail; the next write reuses that
# space and gives the rest back, so the file does not grow by it.
# (d) The same refusal through the agents: the job ends with ErrorCode
# 32768 and the recovery side's figures, the VM stays 9 (resynchronization
# required); with space freed the next resync makes the disks identical.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"
IO=${VHDX_IO:-$TOP/build/helpers/vhdx-io}
for b in "$HVRESYNC" "$IO"; do
	[ -x "$b" ] || { fail "$b not built (make -j2 all)"; finish; }
done
command -v qemu-img >/dev/null || skip "qemu-img not installed"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 not installed (e2fsprogs)"
[ "$(id -u)" -eq 0 ] || skip "needs root to loop-mount a small filesystem"

S=$SCRATCH
STATE=$S/state
MNT=$S/mnt
SERVER_PID=
MiB=$((1024 * 1024))
space_cleanup() {
	local n
	stop_server
	for n in "${!AGENT_PID[@]}"; do
		kill -9 "${AGENT_PID[$n]}" 2>/dev/null
	done
	wait 2>/dev/null
	mountpoint -q "$MNT" && umount "$MNT"
	cleanup
}
trap space_cleanup EXIT

. "$(dirname "$0")/helpers/serve.sh"

mkdir -p "$MNT" "$STATE"
truncate -s 400M "$S/fs.img"
mkfs.ext4 -q -F -m 0 "$S/fs.img" >/dev/null 2>&1 ||
	skip "mkfs.ext4 cannot make a filesystem in a file here"
mount -o loop "$S/fs.img" "$MNT" 2>"$S/mount.err" ||
	skip "mount -o loop is not possible here: $(head -n1 "$S/mount.err")"

avail() { df -B1 --output=avail "$MNT" | tail -n1 | tr -d ' '; }
fsize() { stat -c %s "$1"; }

# fill_to BYTES: a filler file that leaves BYTES free on $MNT.
fill_to() {
	local a
	rm -f "$MNT/filler"
	sync
	a=$(avail)
	[ "$a" -gt "$1" ] || { fail "only $a bytes free, want $1"; finish; }
	fallocate -l $((a - $1)) "$MNT/filler" || { fail "fallocate filler"; finish; }
	sync
}

# ===========================================================================
say "(a) room for the copy, not for the merge"
# ===========================================================================
R=$MNT/R.vhdx
CHILD=$R.hvresync.avhdx
"$HVRESYNC" create "$R" 200M || { fail "create $R"; finish; }
qemu-io -f vhdx -c 'write -P 0x11 0 4M' -c 'write -P 0x12 150M 2M' "$R" \
	>/dev/null || { fail "qemu-io write into $R"; finish; }
qemu-img convert -f vhdx -O raw "$R" "$S/P.raw"
# 120 MiB of new data on the primary, in two runs
dd if=/dev/urandom of="$S/P.raw" bs=1M seek=20 count=100 conv=notrunc status=none
dd if=/dev/urandom of="$S/P.raw" bs=1M seek=170 count=20 conv=notrunc status=none
DATA=$((120 * MiB))

make_key "$S/key"
start_server "$S/serve.log" --psk-file "$S/key" --export "R=$R" || finish

# The child takes about 120 MiB and a few of metadata; the merge would
# take as much again.  190 MiB free: the copy fits, the merge does not.
fill_to $((190 * MiB))
SHA_R=$(sha "$R")
SIZE_R=$(fsize "$R")
push R "$S/P.raw"
MSG=$(grep -m1 'merge needs' "$S/R.err")
if [ "$PUSH_RC" -ne 0 ] && [ -n "$MSG" ]; then
	ok "push: the merge refused, exit $PUSH_RC: $MSG"
else
	fail "push: exit $PUSH_RC, no 'merge needs' line: $(head -n3 "$S/R.err")"
fi
[ "$(sha "$R")" = "$SHA_R" ] && ok "image unchanged (sha256)" ||
	fail "image changed by a refused merge"
[ -e "$CHILD" ] && ok "held child kept" || fail "held child gone"
[ ! -e "$CHILD.merging" ] && ok "no merge marker written" ||
	fail "a merge marker was written"
qemu-img check -q -f vhdx "$R" >"$S/chk.out" 2>&1 && ok "image clean (qemu-img check)" ||
	fail "qemu-img check: $(head -c 300 "$S/chk.out")"

# The figures: "needs H (N bytes) but the filesystem has H (F bytes) free",
# naming the image.
NEED=$(sed -n 's/.*needs [0-9.]* [KMGT]*i*B* *(\([0-9]*\) bytes).*/\1/p' <<<"$MSG")
FREE=$(sed -n 's/.*has [0-9.]* [KMGT]*i*B* *(\([0-9]*\) bytes) free.*/\1/p' <<<"$MSG")
if [ -n "$NEED" ] && [ -n "$FREE" ]; then
	ok "message gives both figures in bytes: need $NEED, free $FREE"
	grep -qE 'needs [0-9.]+ MiB \(' <<<"$MSG" &&
		grep -qE 'has [0-9.]+ MiB \(' <<<"$MSG" &&
		ok "and in human units" || fail "no human units: $MSG"
	[ "$NEED" -gt "$FREE" ] && ok "need > free" || fail "need $NEED <= free $FREE"
	# what was pushed, and not much more (log, metadata, margin)
	[ "$NEED" -ge "$DATA" ] && [ "$NEED" -le $((DATA + 8 * MiB)) ] &&
		ok "need $NEED is the $DATA bytes pushed plus overhead" ||
		fail "need $NEED is not about the $DATA bytes pushed"
	a=$(avail)
	d=$((FREE > a ? FREE - a : a - FREE))
	[ "$d" -le $((4 * MiB)) ] && ok "free $FREE agrees with df ($a)" ||
		fail "free $FREE, df says $a"
else
	fail "figures not found in: $MSG"
fi
grep -qF "$R" <<<"$MSG" && ok "message names $R" || fail "message does not name $R"

# ===========================================================================
say "(b) refused merges do not grow the image"
# ===========================================================================
SIZE_C=$(fsize "$CHILD")
for i in 1 2 3; do
	timeout 60 "$HVRESYNC" push --psk-file "$S/key" --merge \
		"127.0.0.1:$PORT/R" >/dev/null 2>"$S/m$i.err"
	rc=$?
	if [ $rc -ne 0 ] && grep -q 'merge needs' "$S/m$i.err"; then
		ok "--merge $i refused, exit $rc"
	else
		fail "--merge $i: exit $rc: $(head -n2 "$S/m$i.err")"
	fi
done
[ "$(fsize "$R")" -eq "$SIZE_R" ] && [ "$(sha "$R")" = "$SHA_R" ] &&
	ok "image still $SIZE_R bytes, same sha256" ||
	fail "image $(fsize "$R") bytes (was $SIZE_R) or changed"
[ "$(fsize "$CHILD")" -eq "$SIZE_C" ] && ok "child still $SIZE_C bytes" ||
	fail "child grew from $SIZE_C to $(fsize "$CHILD")"

say "space freed: the merge completes"
rm -f "$MNT/filler"
timeout 60 "$HVRESYNC" push --psk-file "$S/key" --merge \
	"127.0.0.1:$PORT/R" >/dev/null 2>"$S/m.err"
rc=$?
[ $rc -eq 0 ] && ok "--merge: exit 0" || fail "--merge: exit $rc: $(head -n2 "$S/m.err")"
qemu-img compare -q -f raw -F vhdx "$S/P.raw" "$R" && ok "identical (qemu-img compare)" ||
	fail "R.vhdx differs from the primary"
qemu-img check -q -f vhdx "$R" >"$S/chk.out" 2>&1 && ok "clean (qemu-img check)" ||
	fail "qemu-img check: $(head -c 300 "$S/chk.out")"
[ ! -e "$CHILD" ] && [ ! -e "$CHILD.merging" ] && ok "child and marker gone" ||
	fail "child or marker left"
stop_server

# ===========================================================================
say "(c) a writer that ran out of space: its tail is reused"
# ===========================================================================
W=$MNT/W.vhdx
"$IO" create "$W" 256M bs=1M >/dev/null || { fail "vhdx-io create"; finish; }
"$IO" "$W" w:0:8M:0x21 f >/dev/null || { fail "vhdx-io first write"; finish; }
GOOD=$(fsize "$W")
# rawsha IMAGE: sha256 of what the VHDX reads as.
rawsha() { rm -f "$S/w.raw"; qemu-img convert -f vhdx -O raw "$1" "$S/w.raw" && sha "$S/w.raw"; }
SHA_W=$(rawsha "$W")
fill_to $((40 * MiB))
"$IO" "$W" w:64M:100M:0x22 f >"$S/io.out" 2>"$S/io.err"
rc=$?
GREW=$(fsize "$W")
if [ $rc -ne 0 ] && grep -qi 'space' "$S/io.err"; then
	ok "a 100 MiB write into 40 MiB fails: $(tail -n1 "$S/io.err")"
else
	fail "the write did not fail for space: exit $rc: $(tail -n1 "$S/io.err")"
fi
[ "$GREW" -gt "$GOOD" ] && ok "it left a tail: $GOOD -> $GREW bytes" ||
	fail "no tail left ($GOOD -> $GREW): nothing to test"
[ "$(rawsha "$W")" = "$SHA_W" ] &&
	ok "the image reads as before the failed write" ||
	fail "the failed write changed what the image reads"
rm -f "$MNT/filler"
"$IO" "$W" w:200M:1M:0x23 f >/dev/null || fail "vhdx-io write after freeing space"
[ "$(fsize "$W")" -eq $((GOOD + MiB)) ] &&
	ok "the next 1 MiB block took the tail's place: $(fsize "$W") bytes" ||
	fail "file is $(fsize "$W") bytes, want $((GOOD + MiB)) (was $GREW after the failure)"
qemu-img check -q -f vhdx "$W" >"$S/chk.out" 2>&1 && ok "clean (qemu-img check)" ||
	fail "qemu-img check: $(head -c 300 "$S/chk.out")"
qemu-io -f vhdx -c 'read -P 0x21 0 8M' -c 'read -P 0 8M 192M' \
	-c 'read -P 0x23 200M 1M' -c 'read -P 0 201M 55M' "$W" >"$S/qio.out" 2>&1 &&
	! grep -q 'Pattern verification failed' "$S/qio.out" &&
	ok "reads what was written, zeros elsewhere" ||
	fail "qemu-io reads: $(grep -m1 -i 'fail' "$S/qio.out")"

# ===========================================================================
say "(d) through the agents"
# ===========================================================================
rm -f "$R" "$W" # room for this part
mkdir -p "$S/p"
D=$MNT/D.vhdx
"$HVRESYNC" create "$S/p/D.vhdx" 200M >/dev/null &&
	"$HVRESYNC" create "$D" 200M >/dev/null || { fail "create D.vhdx"; finish; }
qemu-io -f vhdx -c 'write -P 0x41 8M 120M' "$S/p/D.vhdx" >/dev/null ||
	{ fail "qemu-io into p/D.vhdx"; finish; }
PP=$(free_port)
RP=$(free_port)
printf '%s\n' "[agent]" "retries = 0" "listen = 127.0.0.1:$PP" \
	"control = $(sock p)" "state-dir = $S/p-state" "psk-file = $S/key" "" \
	"[vm space]" "role = primary" "replica = 127.0.0.1:$RP" \
	"disk = $S/p/D.vhdx" >"$S/p.conf"
printf '%s\n' "[agent]" "listen = 127.0.0.1:$RP" "control = $(sock r)" \
	"state-dir = $S/r-state" "psk-file = $S/key" "" \
	"[vm space]" "role = replica" "disk = $D" >"$S/r.conf"
start_agent r || { fail "recovery agent"; finish; }
start_agent p || { fail "primary agent"; finish; }
fill_to $((190 * MiB))
SHA_D=$(sha "$D")
hv p resync space --wait >"$S/rs.out" 2>"$S/rs.err"
rc=$?
J=$(sed -n 's/^Job: //p' "$S/rs.out")
[ $rc -ne 0 ] && ok "resync --wait exits $rc" || fail "resync --wait exits 0"
EC=$(jobf p "$J" ErrorCode)
ED=$(jobf p "$J" ErrorDescription)
[ "$EC" = 32768 ] && grep -q 'merge needs .* bytes.* free' <<<"$ED" &&
	ok "job ErrorCode 32768: $ED" ||
	fail "job '$J': ErrorCode '$EC', ErrorDescription '$ED'"
[ "$(vmf p space ReplicationState)" = 9 ] &&
	ok "the VM is 9 (resynchronization required)" ||
	fail "ReplicationState $(vmf p space ReplicationState), want 9"
[ "$(sha "$D")" = "$SHA_D" ] && ok "recovery disk unchanged (sha256)" ||
	fail "recovery disk changed by the refused merge"
rm -f "$MNT/filler"
hv p resync space --wait >"$S/rs.out" 2>"$S/rs.err" &&
	ok "with space freed, the next resync completes" ||
	fail "resync after freeing space: $(tail -n2 "$S/rs.err")"
qemu-img compare -q "$S/p/D.vhdx" "$D" && ok "identical (qemu-img compare)" ||
	fail "D.vhdx differs from the primary"
stop_agent p
stop_agent r

finish
