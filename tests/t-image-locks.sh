#!/bin/bash
# t-image-locks.sh - image locks, interoperable with qemu (issue 9): a
# recovery image that qemu-io holds open read-write is refused by an agent
# resync (ErrorCode 32774 naming qemu-io, the image byte-identical), by a
# push, by `hvresync merge` and `mount --rw`; while a session writes a
# recovery image, `qemu-io -c 'write ...'` fails with qemu's lock error
# and `mount --rw` of it is refused; a `mount --rw` view of a recovery
# image refuses a push; and readers do not block: `verify` and `push` read
# a primary that qemu-io holds open read-write, and a raw-file primary is
# read under qemu's shared "consistent read" lock, as a VHDX one is.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"
. "$TOP/tests/helpers/serve.sh"

S=$SCRATCH
STATE=$S/state
SERVER_PID=
QPID=
cd "$S" || exit 1
M=$((1 << 20))

stop_holder() {
	[ -n "$QPID" ] || return 0
	exec 7>&-
	timeout 10 tail --pid="$QPID" -f /dev/null 2>/dev/null || kill -9 "$QPID"
	wait "$QPID" 2>/dev/null
	QPID=
}
t_cleanup() {
	stop_holder
	stop_server
	for m in "$S"/v*; do
		mountpoint -q "$m" 2>/dev/null && "$HVRESYNC" umount "$m"
	done
	agent_cleanup
}
trap t_cleanup EXIT

# hold IMAGE [FORMAT]: qemu-io keeps IMAGE open read-write (it reads its
# commands from a fifo we keep open) until stop_holder; QPID is its pid.
hold() {
	rm -f "$S/q.fifo"
	mkfifo "$S/q.fifo"
	qemu-io -f "${2:-vhdx}" "$1" <"$S/q.fifo" >"$S/q.out" 2>&1 &
	QPID=$!
	exec 7>"$S/q.fifo"
	# qemu holds byte 101 (it has the "write" permission) on the file
	# it has open read-write, whatever the format
	local ino
	ino=$(stat -c %i "$1")
	for _ in $(seq 200); do
		grep -Eq "OFDLCK.*:$ino 10[01] 101$" /proc/locks && return 0
		sleep 0.05
	done
	fail "qemu-io does not hold $1: $(head -c 200 "$S/q.out")"
}

# ---------------------------------------------------------------------------
say "setup: disks, a key, a server, two agents"
make_key "$S/key"
mkdir -p p r
for d in p r; do
	"$HVRESYNC" create $d/data.vhdx 32M >/dev/null || fail "create $d"
done
fill p/data.vhdx 0 4M
fill p/data.vhdx 20M 2M
cp r/data.vhdx R.vhdx
# the slow push's source: 48 MiB of random data, and its recovery image
qemu-img create -q -f vhdx -o block_size=1M P.vhdx 48M
fill P.vhdx 0 48M
"$HVRESYNC" create R2.vhdx 48M >/dev/null || fail "create R2.vhdx"
start_server "$S/serve.log" --psk-file "$S/key" --export "R=$S/R.vhdx" \
	--export "R2=$S/R2.vhdx" || finish

PP=$(free_port)
RP=$(free_port)
cat >p.conf <<EOF
[agent]
listen = 127.0.0.1:$PP
control = $S/run/p.sock
state-dir = $S/p-state
psk-file = $S/key

[vm lk]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/data.vhdx
EOF
cat >r.conf <<EOF
[agent]
listen = 127.0.0.1:$RP
control = $S/run/r.sock
state-dir = $S/r-state
psk-file = $S/key

[vm lk]
role = replica
disk = $S/r/data.vhdx
EOF
start_agent r || { fail "recovery agent"; finish; }
start_agent p || { fail "primary agent"; finish; }

# ---------------------------------------------------------------------------
say "(a) qemu-io holds the recovery image read-write during an agent resync"
SHA=$(sha r/data.vhdx)
hold r/data.vhdx
T0=$(date +%s)
rv p lk
[ "$RV" = 4096 ] || fail "resync: ReturnValue $RV"
wait_job p "$JOB" 60 7 8 9 10 11 32768 || fail "the job did not end"
EC=$(jobf p "$JOB" ErrorCode)
ED=$(jobf p "$JOB" ErrorDescription)
check "the job fails with ErrorCode 32774 ($ED)" test "$EC" = 32774
check "in $(($(date +%s) - T0)) s, not after the busy retries" \
	test $(($(date +%s) - T0)) -lt 20
check "the message names the image and qemu-io with its pid" \
	bash -c "grep -qF 'r/data.vhdx: in use by qemu-io (pid $QPID)' <<<\"\$1\"" _ "$ED"
check "the VM is not Replicating afterwards" \
	test "$(vmf p lk ReplicationState)" != 3
check "the recovery image is byte-identical (sha256)" \
	test "$(sha r/data.vhdx)" = "$SHA"
check "no differencing child was made next to it" \
	bash -c "! ls r/*.hvresync.avhdx 2>/dev/null | grep -q ."

say "... the same image, pushed to and merged: refused too"
hold R.vhdx
SHA=$(sha R.vhdx)
push R p/data.vhdx
check "push: exit 2 naming qemu-io ($(head -n1 R.err))" \
	bash -c "[ $PUSH_RC -eq 2 ] && grep -qF 'in use by qemu-io (pid $QPID)' R.err"
check "the pushed-to image is byte-identical (sha256)" test "$(sha R.vhdx)" = "$SHA"
"$HVRESYNC" create --parent R.vhdx C.avhdx >/dev/null || fail "create --parent"
qemu-io -f vhdx -c "write -P 9 0 64k" C.avhdx >/dev/null 2>&1
expect_error "hvresync merge into a held parent" "R.vhdx" "qemu-io (pid $QPID)" \
	-- "$HVRESYNC" merge C.avhdx
check "merge: nothing written (parent sha256, no marker)" \
	bash -c "[ \"\$(sha256sum R.vhdx | cut -d' ' -f1)\" = $SHA ] && [ ! -e C.avhdx.merging ]"
mkdir -p v1
expect_error "mount --rw of a held image" "R.vhdx" "qemu-io (pid $QPID)" \
	-- "$HVRESYNC" mount --rw R.vhdx v1
stop_holder

say "... released: the resync and the merge go through"
rv p lk
wait_job p "$JOB" 60 7 8 9 10 11 32768 || fail "the job did not end"
check "job Completed" test "$(jobf p "$JOB" JobState)" = 7
check "... disks identical" qemu-img compare -q p/data.vhdx r/data.vhdx
check "hvresync merge" "$HVRESYNC" merge C.avhdx

# ---------------------------------------------------------------------------
say "(b, d) while a session writes a recovery image"
"$HVRESYNC" push --psk-file "$S/key" --bwlimit 8M P.vhdx \
	"127.0.0.1:$PORT/R2" >slow.out 2>slow.err &
SLOW=$!
for _ in $(seq 100); do
	grep -q "export R2.*copy" serve.log && break
	sleep 0.05
done
sleep 0.5
kill -0 "$SLOW" 2>/dev/null || fail "the slow push ended too soon"
qemu-io -f vhdx -c 'write 0 4k' R2.vhdx >qw.out 2>&1
QRC=$?
check "qemu-io write fails with qemu's lock error ($(head -n1 qw.out))" \
	bash -c "[ $QRC -ne 0 ] && grep -q 'Failed to get .*lock' qw.out"
mkdir -p v2
expect_error "mount --rw of the image a session writes" "R2.vhdx" \
	"hvresync (pid $SERVER_PID)" -- "$HVRESYNC" mount --rw R2.vhdx v2
wait "$SLOW"
check "the slow push completes (exit $?)" test $? -eq 0
check "... and the recovery disk is identical" qemu-img compare -q P.vhdx R2.vhdx

# ---------------------------------------------------------------------------
say "(c) a mount --rw view of the recovery image"
mkdir -p v3
"$HVRESYNC" mount --rw R.vhdx v3 || fail "mount --rw R.vhdx"
SHA=$(sha R.vhdx)
push R p/data.vhdx
check "push refused: exit 2, names hvresync ($(head -n1 R.err))" \
	bash -c "[ $PUSH_RC -eq 2 ] && grep -qF 'R.vhdx: in use by another hvresync view or session, hvresync (pid' R.err"
"$HVRESYNC" umount v3 || fail "umount v3"
check "the image is what the view left (sha256)" test "$(sha R.vhdx)" = "$SHA"
push R p/data.vhdx
check "after umount the push goes through" test "$PUSH_RC" -eq 0

# ---------------------------------------------------------------------------
say "(e) readers do not block: qemu-io holds a primary read-write"
fill p/data.vhdx 8M 1M
hold p/data.vhdx
"$HVRESYNC" verify p/data.vhdx R.vhdx >/dev/null 2>verify.err
VRC=$?
check "verify reads it (exit $VRC, want 1: the disks differ)" test "$VRC" = 1
push R p/data.vhdx
check "push reads it (exit $PUSH_RC $(head -n1 R.err))" test "$PUSH_RC" -eq 0
check "... and the recovery disk is identical" \
	qemu-img compare -U -q p/data.vhdx R.vhdx
check "qemu-io still holds it" kill -0 "$QPID"
stop_holder

# ---------------------------------------------------------------------------
say "(f) a raw-file primary: qemu's shared read lock, never in a VM's way"
# locks_on FILE: how many OFD locks on FILE's byte 100 (qemu's "consistent
# read") /proc/locks lists; an OFD lock shows pid -1, so count, not name.
locks_on() {
	grep -c "OFDLCK.*:$(stat -c %i "$1") 100 100\$" /proc/locks
}
qemu-img convert -O raw P.vhdx P.raw || fail "qemu-img convert"
# 16 MiB that R2 (equal to P.vhdx by now) lacks: a push of ~2 s at 8M/s
head -c 16M /dev/urandom | dd of=P.raw bs=1M conv=notrunc status=none
"$HVRESYNC" push --psk-file "$S/key" --bwlimit 8M P.raw \
	"127.0.0.1:$PORT/R2" >raw.out 2>raw.err &
RAW=$!
N=0
for _ in $(seq 100); do
	N=$(locks_on P.raw)
	[ "$N" -ge 1 ] && break
	kill -0 "$RAW" 2>/dev/null || break
	sleep 0.05
done
check "push holds qemu's shared read lock on the raw file while it reads ($N)" \
	test "$N" -ge 1
qemu-io -f raw -c 'write -P 7 40M 64k' P.raw >qw2.out 2>&1
QRC=$?
check "qemu-io writes the raw file meanwhile ($(head -n1 qw2.out))" \
	test "$QRC" -eq 0
wait "$RAW"
RRC=$?
check "the raw push ends (exit $RRC: 0, or 3 when it saw the write)" \
	bash -c "[ $RRC -eq 0 ] || [ $RRC -eq 3 ]"
check "... and the lock is gone with it" test "$(locks_on P.raw)" -eq 0
hold P.raw raw
push R2 P.raw
check "push reads a raw file qemu-io holds read-write (exit $PUSH_RC $(head -n1 R2.err))" \
	test "$PUSH_RC" -eq 0
check "... and the recovery disk is identical" \
	qemu-img compare -U -q -f raw -F vhdx P.raw R2.vhdx
check "qemu-io still holds it" kill -0 "$QPID"
stop_holder

finish
