#!/bin/bash
# t-push-crash.sh - cancel and crash safety of push/serve.  The server and
# the client are killed with SIGKILL (and the client interrupted with
# SIGINT) in the middle of sessions slowed down with --bwlimit: until a
# push completes, the recovery VHDX keeps its sha256 and qemu-img finds
# it clean; the next push resumes where the dropped one stopped and sends
# no more than what was still missing plus one flow-control window.  Also:
# a second push to a busy export is refused, --restart starts over, and
# the hold / merge / discard steps a VM resync uses.
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }
command -v qemu-img >/dev/null || skip "qemu-img not installed"

S=$SCRATCH
STATE=$S/state
SERVER_PID=
trap 'stop_server; cleanup' EXIT

. "$(dirname "$0")/helpers/serve.sh"

# push_bg NAME SRC ARGS...: start a push in the background (PUSH_PID is
# hvresync itself, for the signals; the test kills it within seconds).
push_bg() {
	local name=$1 src=$2
	shift 2
	"$HVRESYNC" push --json --psk-file "$S/key" "$@" \
		"$src" "127.0.0.1:$PORT/$name" >"$S/$name.json" 2>"$S/$name.err" &
	PUSH_PID=$!
}

between() {
	if [ "$2" -ge "$3" ] && [ "$2" -le "$4" ]; then
		ok "$1: $2 in [$3, $4]"
	else
		fail "$1: $2 not in [$3, $4]"
	fi
}

# untouched DESC: R.vhdx has its first sha256 and is clean.
untouched() {
	if [ "$(sha R.vhdx)" = "$SHA_R" ]; then
		ok "$1: R.vhdx unchanged (sha256)"
	else
		fail "$1: R.vhdx changed"
	fi
	if qemu-img check -q -f vhdx R.vhdx >"$S/chk.out" 2>&1; then
		ok "$1: R.vhdx clean (qemu-img check)"
	else
		fail "$1: qemu-img check: $(head -c 300 "$S/chk.out")"
	fi
}

# received_in_log: bytes the last session end line says it received.
received_in_log() {
	grep 'session end' "$S/serve.log" | tail -n1 |
		sed -n 's/.*received \([0-9]*\).*/\1/p'
}

# started: how many sessions the server has started so far.
started() { grep -c 'session start' "$S/serve.log"; }

# wait_started N: until more than N sessions have started (slow machines).
wait_started() {
	local i
	for i in $(seq 200); do
		[ "$(started)" -gt "$1" ] && return 0
		sleep 0.1
	done
	fail "no session started within 20 s"
	return 1
}

# wait_progress SECS: until the server has recorded progress.
wait_progress() {
	local i
	for i in $(seq $(($1 * 10))); do
		ls "$STATE"/*.state >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

M=$((1 << 20))
W=$((4 * M))		# the server's window (--window)
cd "$S" || exit 2
make_key "$S/key" || { fail "cannot make a key"; finish; }
# The primary: 64 MiB of random data; the recovery disk: empty, so every
# byte differs (C bytes).
python3 -c '
import random, sys
r = random.Random(5)
with open("P.raw", "wb") as f:
    for i in range(64):
        f.write(r.getrandbits(8 << 20).to_bytes(1 << 20, "little"))
'
C=$((64 * M))
qemu-img create -q -f vhdx -o block_size=1M R.vhdx 64M
qemu-io -f vhdx -c "write -P 0x33 60M 1M" R.vhdx >/dev/null
SHA_R=$(sha R.vhdx)
cp R.vhdx H.vhdx
cp R.vhdx Q.vhdx
SERVE=(--psk-file "$S/key" --window "$W" --export "R=$S/R.vhdx"
       --export "H=$S/H.vhdx" --export "Q=$S/Q.vhdx")
start_server "$S/serve.log" "${SERVE[@]}" || finish
RATE=16M

# ===========================================================================
say "the client killed (SIGKILL) in the middle of a push"
# ===========================================================================
n=$(started)
push_bg R P.raw --bwlimit $RATE
wait_started "$n" || finish
sleep 1.2
wait_progress 10 || fail "no progress recorded after 10 s"
sleep 0.5
kill -KILL "$PUSH_PID"
wait "$PUSH_PID" 2>/dev/null
for i in $(seq 50); do
	grep -q 'session end' "$S/serve.log" && break
	sleep 0.1
done
S1=$(received_in_log)
[ -n "$S1" ] && ok "the server ended the session: received $S1 bytes" ||
	fail "no session end line: $(tail -n 2 "$S/serve.log")"
untouched "after the client was killed"
[ -e R.vhdx.hvresync.avhdx ] && ok "the child is kept for resume" ||
	fail "the child is gone"
grep -q "image is unchanged; the child is kept" "$S/serve.log" &&
	ok "the server says the image is unchanged" ||
	fail "no 'image is unchanged' in the log"

# ===========================================================================
say "the server killed (SIGKILL) in the middle of the resumed push"
# ===========================================================================
n=$(started)
push_bg R P.raw --bwlimit $RATE
wait_started "$n" || finish
sleep 1.5
kill_server
wait "$PUSH_PID"
rc=$?
[ $rc -eq 2 ] && ok "the client exits 2: $(head -n1 "$S/R.err")" ||
	fail "the client exit $rc, want 2"
RES1=$(jget R.json resume_offset)
S2=$(jget R.json bytes_sent)
[ "$RES1" -gt 0 ] && ok "it had resumed at $RES1" ||
	fail "the second push did not resume (resume_offset $RES1)"
untouched "after the server was killed"

# ===========================================================================
say "the next push completes, sending only what is missing"
# ===========================================================================
start_server "$S/serve.log" "${SERVE[@]}" || finish
push R P.raw
S3=$(jget R.json bytes_sent)
if [ "$PUSH_RC" -eq 0 ]; then
	ok "push exit 0, resumed at $(jget R.json resume_offset)"
else
	fail "push exit $PUSH_RC: $(head -n2 "$S/R.err")"
fi
echo "sent: $S1 (client killed), $S2 (server killed), $S3 (completed) of $C"
# What was still missing, plus what the killed server lost: data it had
# received but not yet made durable (at most half a window: it records
# progress every half window written) and frames still in the connection
# (at most a window: the primary cannot run further ahead of the credit).
# On an unloaded machine the second part is nearly nothing.
between "bytes_sent of the completing run" "$S3" $((C - S1 - S2)) \
	$((C - S1 - S2 + W + W / 2))
qemu-img compare -q -f raw -F vhdx P.raw R.vhdx && ok "identical now" ||
	fail "R.vhdx differs from P.raw"
qemu-img check -q -f vhdx R.vhdx && ok "clean" || fail "qemu-img check"
[ ! -e R.vhdx.hvresync.avhdx ] && ! ls "$STATE"/R.state >/dev/null 2>&1 &&
	ok "child and progress record removed" || fail "leftovers"

# ===========================================================================
say "the server killed early in a session (before the first record)"
# ===========================================================================
SHA_R=$(sha Q.vhdx)
untouched() {
	if [ "$(sha Q.vhdx)" = "$SHA_R" ]; then
		ok "$1: Q.vhdx unchanged (sha256)"
	else
		fail "$1: Q.vhdx changed"
	fi
	if qemu-img check -q -f vhdx Q.vhdx >"$S/chk.out" 2>&1; then
		ok "$1: Q.vhdx clean (qemu-img check)"
	else
		fail "$1: qemu-img check: $(head -c 300 "$S/chk.out")"
	fi
}
n=$(started)
push_bg Q P.raw --bwlimit $RATE
wait_started "$n" || finish
sleep 0.2
kill_server
wait "$PUSH_PID"
T1=$(jget Q.json bytes_sent)
untouched "after an early server kill"

# ===========================================================================
say "SIGINT on the client cancels cleanly"
# ===========================================================================
start_server "$S/serve.log" "${SERVE[@]}" || finish
n=$(started)
push_bg Q P.raw --bwlimit $RATE
wait_started "$n" || finish
sleep 1
kill -INT "$PUSH_PID"
wait "$PUSH_PID"
rc=$?
[ $rc -eq 2 ] && grep -q cancelled "$S/Q.err" &&
	ok "push exits 2: $(head -n1 "$S/Q.err")" ||
	fail "SIGINT: exit $rc: $(head -n1 "$S/Q.err")"
T2=$(jget Q.json bytes_sent)
untouched "after SIGINT"

# ===========================================================================
say "a second push to a busy export is refused"
# ===========================================================================
n=$(started)
push_bg Q P.raw --bwlimit $RATE
first=$PUSH_PID
wait_started "$n"
sleep 0.3
timeout 30 "$HVRESYNC" push --psk-file "$S/key" P.raw \
	"127.0.0.1:$PORT/Q" >/dev/null 2>"$S/busy.err"
rc=$?
[ $rc -eq 2 ] && grep -q busy "$S/busy.err" &&
	ok "busy: exit 2: $(head -n1 "$S/busy.err")" ||
	fail "busy: exit $rc: $(head -n1 "$S/busy.err")"
kill -INT "$first"
wait "$first"
T3=$(jget Q.json bytes_sent)
untouched "after the busy refusal"
push Q P.raw
T4=$(jget Q.json bytes_sent)
[ "$PUSH_RC" -eq 0 ] && ok "Q completes" || fail "Q: exit $PUSH_RC"
echo "sent: $T1 (server killed), $T2 (SIGINT), $T3 (SIGINT), $T4 (completed) of $C"
between "the runs together sent the change once, plus one server kill's loss" \
	$((T1 + T2 + T3 + T4)) "$C" $((C + W + W / 2))
qemu-img compare -q -f raw -F vhdx P.raw Q.vhdx && ok "Q identical now" ||
	fail "Q.vhdx differs from P.raw"

# ===========================================================================
say "--restart throws away a partial push"
# ===========================================================================
cp H.vhdx H0.vhdx
n=$(started)
push_bg H P.raw --bwlimit $RATE
wait_started "$n" || finish
sleep 1.5
kill -KILL "$PUSH_PID"
wait "$PUSH_PID" 2>/dev/null
sleep 0.5
push H P.raw --restart --check
[ "$PUSH_RC" -eq 2 ] && ok "--restart with --check is refused" ||
	fail "--restart --check: exit $PUSH_RC"
push H P.raw --restart
[ "$PUSH_RC" -eq 0 ] && [ "$(jget H.json resume_offset)" -eq 0 ] &&
	[ "$(jget H.json bytes_sent)" -eq "$C" ] &&
	ok "--restart: resume_offset 0, sent all $C bytes again" ||
	fail "--restart: exit $PUSH_RC, resume $(jget H.json resume_offset), sent $(jget H.json bytes_sent)"
qemu-img compare -q -f raw -F vhdx P.raw H.vhdx && ok "identical" ||
	fail "H.vhdx differs"

# ===========================================================================
say "hold, then discard; hold, then merge"
# ===========================================================================
cp H0.vhdx H.vhdx
SHA_H=$(sha H.vhdx)
push H P.raw --hold
[ "$PUSH_RC" -eq 0 ] && [ "$(sha H.vhdx)" = "$SHA_H" ] &&
	[ -e H.vhdx.hvresync.avhdx ] &&
	ok "--hold: exit 0, image unchanged, child kept" ||
	fail "--hold: exit $PUSH_RC: $(head -n1 "$S/H.err")"
timeout 30 "$HVRESYNC" push --psk-file "$S/key" --discard \
	"127.0.0.1:$PORT/H" >/dev/null 2>"$S/d.err"
rc=$?
[ $rc -eq 0 ] && [ "$(sha H.vhdx)" = "$SHA_H" ] &&
	[ ! -e H.vhdx.hvresync.avhdx ] && ! ls "$STATE"/H.state >/dev/null 2>&1 &&
	ok "--discard: image unchanged, child and record gone" ||
	fail "--discard: exit $rc: $(head -n1 "$S/d.err")"
push H P.raw --hold
# A copy held complete: the next push resumes at the end, sends nothing.
push H P.raw --hold
[ "$PUSH_RC" -eq 0 ] && [ "$(jget H.json resume_offset)" -eq "$C" ] &&
	[ "$(jget H.json bytes_sent)" -eq 0 ] && [ "$(sha H.vhdx)" = "$SHA_H" ] &&
	ok "a second --hold resumes at the end and sends nothing" ||
	fail "second --hold: exit $PUSH_RC, resume $(jget H.json resume_offset), sent $(jget H.json bytes_sent)"
timeout 30 "$HVRESYNC" push --psk-file "$S/key" --merge \
	"127.0.0.1:$PORT/H" >/dev/null 2>"$S/m.err"
rc=$?
[ $rc -eq 0 ] && [ ! -e H.vhdx.hvresync.avhdx ] &&
	qemu-img compare -q -f raw -F vhdx P.raw H.vhdx &&
	qemu-img check -q -f vhdx H.vhdx &&
	ok "--hold then --merge: identical and clean" ||
	fail "--merge: exit $rc: $(head -n1 "$S/m.err")"
timeout 30 "$HVRESYNC" push --psk-file "$S/key" --merge \
	"127.0.0.1:$PORT/H" >/dev/null 2>"$S/m.err"
[ $? -eq 0 ] && ok "--merge with nothing held is a no-op" ||
	fail "--merge again: $(head -n1 "$S/m.err")"
# An incomplete copy is never merged.
cp H0.vhdx H.vhdx
n=$(started)
push_bg H P.raw --hold --restart --bwlimit $RATE
wait_started "$n" || finish
sleep 1.2
kill -KILL "$PUSH_PID"
wait "$PUSH_PID" 2>/dev/null
sleep 0.5
SHA_H=$(sha H.vhdx)
timeout 30 "$HVRESYNC" push --psk-file "$S/key" --merge \
	"127.0.0.1:$PORT/H" >/dev/null 2>"$S/m.err"
rc=$?
[ $rc -eq 2 ] && grep -q incomplete "$S/m.err" && [ "$(sha H.vhdx)" = "$SHA_H" ] &&
	ok "--merge of an incomplete copy refused: $(head -n1 "$S/m.err")" ||
	fail "--merge of an incomplete copy: exit $rc: $(head -n1 "$S/m.err")"

stop_server
finish
