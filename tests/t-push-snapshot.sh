#!/bin/bash
# t-push-snapshot.sh - `hvresync push --snapshot reflink` of a primary on
# XFS (reflink=1, made in a file and loop-mounted) that qemu-io writes
# while the push runs (issue 9 item 2): the push reads a clone made when
# it started, so the recovery disk equals the copy saved right before the
# push, not the primary with the later writes (both behind and ahead of
# the reader), in one pass, exit 0; the clone is gone afterwards and the
# next push brings the later writes over.  Also: Ctrl-C removes the
# clone, SIGKILL leaves it and the next push removes it (stale sweep),
# and a clone that a running process owns is left alone.
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }
command -v qemu-img >/dev/null || skip "qemu-img not installed"
command -v qemu-io >/dev/null || skip "qemu-io not installed"
command -v mkfs.xfs >/dev/null || skip "mkfs.xfs not installed (xfsprogs)"
[ "$(id -u)" -eq 0 ] || skip "not root: cannot loop-mount an XFS"

S=$SCRATCH
STATE=$S/state
SERVER_PID=
PUSH_PID=
X=$S/xfs
t_cleanup() {
	[ -n "$PUSH_PID" ] && kill -KILL "$PUSH_PID" 2>/dev/null
	stop_server
	mountpoint -q "$X" 2>/dev/null && umount "$X"
	cleanup
}
trap t_cleanup EXIT

. "$(dirname "$0")/helpers/serve.sh"
M=$((1 << 20))

mkdir -p "$X" "$S/recovery"
truncate -s 1G "$S/xfs.img"
mkfs.xfs -q -m reflink=1 "$S/xfs.img" >/dev/null 2>&1 ||
	skip "mkfs.xfs -m reflink=1 failed"
mount -o loop "$S/xfs.img" "$X" 2>/dev/null || skip "mount -o loop is not allowed here"
say "primary on XFS (reflink) at $X, recovery in $S/recovery"

# push_bg NAME ARGS...: push $X/p.vhdx in the background.
push_bg() {
	local name=$1
	shift
	"$HVRESYNC" push --json --psk-file "$S/key" "$@" \
		"$X/p.vhdx" "127.0.0.1:$PORT/$name" >"$S/$name.json" 2>"$S/$name.err" &
	PUSH_PID=$!
}
wait_push() {
	wait "$PUSH_PID"
	PUSH_RC=$?
	PUSH_PID=
}

clones() { ls -A "$X" | grep '^\.hvresync-snap\.push-' || true; }

# wait_clone: until the push's hidden clone is there (it prints it).
wait_clone() {
	local i c
	for i in $(seq 200); do
		c=$(clones)
		[ -n "$c" ] && { echo "$c"; return 0; }
		kill -0 "$PUSH_PID" 2>/dev/null || break
		sleep 0.05
	done
	return 1
}

same() { qemu-img compare -q -f vhdx -F vhdx "$1" "$2" 2>/dev/null; }
jq_() { jget "$S/$1.json" "$2" 2>/dev/null; }

make_key "$S/key" || { fail "cannot make a key"; finish; }
head -c $((256 * M)) /dev/urandom >"$S/p.raw"
qemu-img convert -q -f raw -O vhdx -o subformat=dynamic "$S/p.raw" "$X/p.vhdx"
rm -f "$S/p.raw"
for r in A K; do
	qemu-img create -q -f vhdx "$S/recovery/$r.vhdx" 256M
done
start_server "$S/serve.log" --psk-file "$S/key" \
	--export "A=$S/recovery/A.vhdx" --export "K=$S/recovery/K.vhdx" || finish
RATE=48M # 256 MiB to send: over 5 s

# ===========================================================================
say "writes behind and ahead of the reader of a reflink snapshot"
# ===========================================================================
cp "$X/p.vhdx" "$S/saved.vhdx"
push_bg A --snapshot reflink --bwlimit $RATE
c=$(wait_clone) && ok "the clone appeared: $c" || fail "no clone appeared"
sleep 1
qemu-io -f vhdx -c "write -P 0x11 1M 1M" -c "write -P 0x22 250M 1M" \
	"$X/p.vhdx" >"$S/qio.out" 2>&1 && ok "qemu-io wrote at 1M and 250M" ||
	fail "qemu-io: $(cat "$S/qio.out")"
kill -0 "$PUSH_PID" 2>/dev/null && ok "the push was still running then" ||
	fail "the push ended before the writes (too fast to test)"
wait_push
[ "$PUSH_RC" -eq 0 ] && ok "exit 0" || fail "exit $PUSH_RC: $(head -n 3 "$S/A.err")"
[ "$(jq_ A result)" = identical ] && ok "result identical" || fail "result '$(jq_ A result)'"
[ "$(jq_ A snapshot)" = reflink ] && ok "snapshot reflink" || fail "snapshot '$(jq_ A snapshot)'"
[ "$(jq_ A passes)" = 1 ] && ok "passes 1" || fail "passes '$(jq_ A passes)'"
t=$(jq_ A snapshot_time)
[[ "$t" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$ ]] &&
	ok "snapshot_time $t" || fail "snapshot_time '$t'"
[ "$(jq_ A source)" = "$X/p.vhdx" ] && ok "source is the user's path" ||
	fail "source '$(jq_ A source)'"
[ ! -s "$S/A.err" ] && ok "nothing on stderr" || fail "stderr: $(cat "$S/A.err")"
same "$S/saved.vhdx" "$S/recovery/A.vhdx" &&
	ok "the recovery disk equals the primary as it was at the start" ||
	fail "the recovery disk differs from the saved copy"
same "$X/p.vhdx" "$S/recovery/A.vhdx" &&
	fail "the recovery disk equals the changed primary (the writes leaked in)" ||
	ok "the recovery disk does not have the later writes"
[ -z "$(clones)" ] && ok "the clone is gone" || fail "left behind: $(clones)"

push A "$X/p.vhdx" --snapshot reflink
[ "$PUSH_RC" -eq 0 ] && ok "second push: exit 0" || fail "second push: exit $PUSH_RC: $(head -n 2 "$S/A.err")"
same "$X/p.vhdx" "$S/recovery/A.vhdx" &&
	ok "the second push brought the later writes over" ||
	fail "after the second push the recovery disk differs from the primary"
b=$(jq_ A bytes_data)
[ -n "$b" ] && [ "$b" -ge $((2 * M)) ] && [ "$b" -le $((4 * M)) ] &&
	ok "it sent $b bytes (the 2 MiB written)" || fail "it sent '$b' bytes"
[ -z "$(clones)" ] && ok "no clone left" || fail "left behind: $(clones)"

# auto on XFS with reflink is reflink.
push A "$X/p.vhdx"
[ "$PUSH_RC" -eq 0 ] && [ "$(jq_ A snapshot)" = reflink ] &&
	ok "--snapshot auto on XFS: reflink" ||
	fail "auto: exit $PUSH_RC, snapshot '$(jq_ A snapshot)'"

# ===========================================================================
say "Ctrl-C: the clone is removed"
# ===========================================================================
push_bg K --snapshot reflink --bwlimit $RATE
c=$(wait_clone) || fail "no clone appeared"
sleep 0.5
kill -INT "$PUSH_PID"
wait_push
[ "$PUSH_RC" -eq 2 ] && ok "SIGINT: exit 2" || fail "SIGINT: exit $PUSH_RC"
grep -q cancelled "$S/K.err" && ok "it says cancelled" || fail "stderr: $(cat "$S/K.err")"
[ -z "$(clones)" ] && ok "the clone is gone after Ctrl-C" || fail "left behind: $(clones)"

# ===========================================================================
say "SIGKILL leaves a clone; the next push removes it"
# ===========================================================================
for i in $(seq 50); do # the server ends the cancelled session
	[ "$(grep -c 'session end: export K' "$S/serve.log")" -ge 1 ] && break
	sleep 0.1
done
push_bg K --snapshot reflink --bwlimit $RATE
dead=$(wait_clone) || fail "no clone appeared"
sleep 0.5
kill -KILL "$PUSH_PID"
wait "$PUSH_PID" 2>/dev/null
PUSH_PID=
[ -n "$(clones)" ] && ok "the killed push left $dead" || fail "no clone left after SIGKILL"
# A clone whose owner still runs is not stale: this shell's PID.
qemu-img create -q -f vhdx "$X/other.vhdx" 16M
cp --reflink=always "$X/other.vhdx" "$X/.hvresync-snap.push-$$.other.vhdx"
for i in $(seq 50); do
	[ "$(grep -c 'session end: export K' "$S/serve.log")" -ge 2 ] && break
	sleep 0.1
done
push K "$X/p.vhdx" --snapshot reflink
[ "$PUSH_RC" -eq 0 ] && ok "the next push: exit 0" ||
	fail "the next push: exit $PUSH_RC: $(head -n 2 "$S/K.err")"
[ ! -e "$X/$dead" ] && ok "the stale clone $dead is gone" || fail "$dead is still there"
grep -q "removed 1 snapshot clone" "$S/K.err" && ok "it said so" ||
	fail "no word of the removal: $(cat "$S/K.err")"
[ -e "$X/.hvresync-snap.push-$$.other.vhdx" ] &&
	ok "the clone of a running process is kept" ||
	fail "the clone of a running process was removed"
rm -f "$X/.hvresync-snap.push-$$.other.vhdx"
same "$X/p.vhdx" "$S/recovery/K.vhdx" && ok "K equals the primary" ||
	fail "K differs from the primary"
[ -z "$(clones)" ] && ok "no clone left" || fail "left behind: $(clones)"

finish
