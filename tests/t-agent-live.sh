#!/bin/bash
# t-agent-live.sh - agent jobs of VMs that keep writing their disks (issue
# 9 items 2 and 3), a primary and a recovery agent on loopback, the
# primary slowed (--bwlimit) so that qemu-io writes while a job runs:
#  - on XFS (reflink=1, made in a file, loop-mounted): the job reads a
#    clone made when it started, so writes behind and ahead of the reader
#    do not reach the recovery disk, which equals the copy the test saved
#    at job start; Snapshot reflink, Passes 1, the clone gone after it;
#    the next job brings the writes over.  A recovery agent that stops
#    mid-job (SIGKILL) and comes back: the job retries and Completes.  One that
#    stays away: Exception, the clone kept, and the next job takes it
#    over and resumes (the recovery disk is still the first job's moment).
#    A stale clone of an unknown owner is removed when the agent starts.
#  - on the scratch filesystem (ext4: no reflink, so snapshot = auto
#    reads the live file): writes during the first pass only -> a second
#    pass, Completed, identical; writes that never stop -> JobState 32768
#    (Completed with warnings) saying why, the VM still needs a resync,
#    and the disks do differ.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

[ "$(id -u)" = 0 ] || skip "needs root (mount -o loop)"
S=$SCRATCH
X=$S/xfs
WRITER=
t_cleanup() {
	rm -f "$S/writing"
	[ -n "$WRITER" ] && wait "$WRITER" 2>/dev/null
	local n
	for n in "${!AGENT_PID[@]}"; do
		kill -9 "${AGENT_PID[$n]}" 2>/dev/null
	done
	wait 2>/dev/null
	[ -n "${KEEP_LOGS:-}" ] && cp "$S"/*.log "$KEEP_LOGS"/ 2>/dev/null
	mountpoint -q "$X" 2>/dev/null && umount "$X"
	cleanup
}
trap t_cleanup EXIT
cd "$S" || exit 1
M=$((1 << 20))
SIZE=64M

HAVE_XFS=
mkdir -p "$X" r l
if command -v mkfs.xfs >/dev/null && truncate -s 1G xfs.img &&
	mkfs.xfs -q -m reflink=1 xfs.img >/dev/null 2>&1 &&
	mount -o loop xfs.img "$X" 2>/dev/null; then
	HAVE_XFS=1
else
	echo "SKIP (part): no XFS with reflink here (mkfs.xfs or mount -o loop failed): the snapshot part is not run"
fi

# mkdisk PATH: a 64 MiB dynamic VHDX of random data.
mkdisk() {
	head -c $((64 * M)) /dev/urandom >"$S/rnd.raw"
	qemu-img convert -q -f raw -O vhdx -o subformat=dynamic "$S/rnd.raw" "$1"
	rm -f "$S/rnd.raw"
}
# write1 VHDX OFFSET: 1 MiB of new random data at OFFSET.
write1() { fill "$1" "$2" 1M; }
clones() { ls -A "$1" 2>/dev/null | grep '^\.hvresync-snap\.' || true; }
# wait_clone DIR: until a clone appears in DIR (10 s).
wait_clone() {
	local i
	for i in $(seq 50); do
		[ -n "$(clones "$1")" ] && return 0
		sleep 0.05
	done
	return 1
}
# disk0 ID KEY: a member of the job's first disk.
disk0() {
	hv p job show "$1" --json 2>/dev/null | py "d['Instance']['Disks'][0]['$2']" 2>/dev/null
}

"$HVRESYNC" keygen psk >/dev/null || fail "keygen"
PP=$(free_port)
RP=$(free_port)
[ -n "$HAVE_XFS" ] && mkdisk "$X/s.vhdx"
mkdisk l/l.vhdx
qemu-img create -q -f vhdx r/s.vhdx $SIZE
qemu-img create -q -f vhdx r/l.vhdx $SIZE

{
	agent_section p "$PP"
	cat <<EOF
retry-interval = 1

[vm snapvm]
role = primary
replica = 127.0.0.1:$RP
disk = $X/s.vhdx
snapshot = reflink
retries = 2

[vm livevm]
role = primary
replica = 127.0.0.1:$RP
disk = $S/l/l.vhdx
max-passes = 3
EOF
} >p.conf
{
	agent_section r "$RP"
	cat <<EOF

[vm snapvm]
role = replica
disk = $S/r/s.vhdx

[vm livevm]
role = replica
disk = $S/r/l.vhdx
EOF
} >r.conf
start_agent r || { fail "recovery agent"; finish; }
start_agent p --bwlimit 16M || { fail "primary agent"; finish; }

# ---------------------------------------------------------------------------
if [ -n "$HAVE_XFS" ]; then
	say "XFS: a job reads its snapshot while the VM writes behind and ahead of it"
	cp --reflink=never "$X/s.vhdx" saved.vhdx
	rv p snapvm
	J=$JOB
	check "the job starts (4096)" test "$RV" = 4096
	check "its clone appears next to the disk" wait_clone "$X"
	CLONE=$(clones "$X")
	check "the clone is named after the job ($CLONE)" \
		test "$CLONE" = ".hvresync-snap.$J.s.vhdx"
	poll_job p "$J" 30 BytesCompared ge $((12 * M)) || fail "the job did not get going"
	write1 "$X/s.vhdx" 0          # behind the reader
	write1 "$X/s.vhdx" $((60 * M)) # ahead of it
	wait_job p "$J" 60 7 8 9 10 32768 || fail "the job did not finish"
	check "the job Completed" test "$(jobf p "$J" JobState)" = 7
	check "Snapshot reflink, Passes 1" \
		test "$(disk0 "$J" Snapshot) $(disk0 "$J" Passes)" = "reflink 1"
	check "SnapshotTime is a CIM datetime" \
		bash -c "[[ '$(disk0 "$J" SnapshotTime)' =~ ^[0-9]{14}\.[0-9]{6}[+-][0-9]{3}$ ]]"
	check "the recovery disk equals the copy saved at job start" same saved.vhdx r/s.vhdx
	qemu-img compare -q "$X/s.vhdx" r/s.vhdx
	check "... and not the primary with the later writes" test $? = 1
	check "the clone is gone after the job" test -z "$(clones "$X")"
	check "the VM is Replicating (3)" test "$(vmf p snapvm ReplicationState)" = 3
	hv p job show "$J" >show.txt
	check "'job show' has Snapshot and Passes per disk" \
		grep -q 'Snapshot=reflink.*Passes=1' show.txt
	check "'job show' leaves out the clone's path" bash -c "! grep -q 'Clone=' show.txt"

	rv p snapvm
	wait_job p "$JOB" 60 7 8 9 10 32768 || fail "the second job did not finish"
	check "the next job Completes and brings the later writes over" \
		test "$(jobf p "$JOB" JobState)" = 7
	check "  ... the disks are identical now" same "$X/s.vhdx" r/s.vhdx

	say "XFS: the recovery agent stops mid-job and comes back: retries"
	write1 "$X/s.vhdx" $((8 * M))
	head -c $((60 * M)) /dev/urandom >"$S/rnd"
	qemu-io -f vhdx -c "write -q -s $S/rnd $((2 * M)) $((60 * M))" "$X/s.vhdx" >/dev/null
	cp --reflink=never "$X/s.vhdx" saved.vhdx
	rv p snapvm
	J=$JOB
	# the recovery side records its progress every 4 MiB it writes
	# (protocol.md): past 8 MiB a record exists when it dies
	poll_job p "$J" 30 BytesSent ge $((8 * M)) || fail "the job did not get going"
	kill_agent r
	poll_job p "$J" 20 Retries ge 1 || fail "no retry counted"
	check "while it waits the job is Running (4)" test "$(jobf p "$J" JobState)" = 4
	jobf p "$J" ErrorDescription >desc.txt
	check "ErrorDescription says which retry and why ($(cut -c 1-120 desc.txt))" \
		grep -q 'retry [0-9] of 2 in [0-9]* s after: ' desc.txt
	start_agent r || fail "recovery agent restart"
	wait_job p "$J" 90 7 8 9 10 32768 || fail "the job did not finish"
	check "the job Completed across the outage" test "$(jobf p "$J" JobState)" = 7
	check "Retries counted ($(jobf p "$J" Retries))" test "$(jobf p "$J" Retries)" -ge 1
	check "Completed clears ErrorDescription" test "$(jobf p "$J" ErrorDescription)" = None
	check "the recovery disk equals the copy saved at job start" same saved.vhdx r/s.vhdx

	say "XFS: the recovery agent stays away: Exception, clone kept, the next job takes it over"
	head -c $((60 * M)) /dev/urandom >"$S/rnd"
	qemu-io -f vhdx -c "write -q -s $S/rnd $((2 * M)) $((60 * M))" "$X/s.vhdx" >/dev/null
	cp --reflink=never "$X/s.vhdx" saved.vhdx
	rv p snapvm
	J=$JOB
	# the recovery side records its progress every 4 MiB it writes
	# (protocol.md): past 8 MiB a record exists when it dies
	poll_job p "$J" 30 BytesSent ge $((8 * M)) || fail "the job did not get going"
	kill_agent r
	wait_job p "$J" 60 7 8 9 10 32768 || fail "the job did not give up"
	check "after 2 retries the job ends Exception (10)" \
		test "$(jobf p "$J" JobState) $(jobf p "$J" Retries)" = "10 2"
	jobf p "$J" ErrorDescription >desc.txt
	check "ErrorDescription says the snapshot is kept ($(cut -c 1-150 desc.txt))" \
		grep -q 'snapshots are kept' desc.txt
	check "the clone is still there" test "$(clones "$X")" = ".hvresync-snap.$J.s.vhdx"
	write1 "$X/s.vhdx" $((63 * M)) # after the snapshot: must not arrive
	start_agent r || fail "recovery agent restart"
	rv p snapvm
	J2=$JOB
	wait_job p "$J2" 60 7 8 9 10 32768 || fail "the new job did not finish"
	check "the new job Completed" test "$(jobf p "$J2" JobState)" = 7
	check "it says it resumed from the kept snapshot ($(disk0 "$J2" Resume))" \
		bash -c "[[ '$(disk0 "$J2" Resume)' == 'resumed from the snapshot job $J kept' ]]"
	check "it sent less than all that changed ($(jobf p "$J2" BytesSent) bytes)" \
		test "$(jobf p "$J2" BytesSent)" -lt $((60 * M))
	check "the recovery disk equals the first job's moment" same saved.vhdx r/s.vhdx
	check "no clone is left" test -z "$(clones "$X")"

	say "XFS: a stale clone of an unknown owner is removed when the agent starts"
	: >"$X/.hvresync-snap.DEADBEEF-0000-4000-8000-000000000000.s.vhdx"
	stop_agent p
	start_agent p --bwlimit 16M || fail "primary restart"
	check "the stale clone is gone" test -z "$(clones "$X")"
	check "the agent logs it" grep -q 'removed 1 stale snapshot' p.log
	check "the disk itself is untouched" test -f "$X/s.vhdx"
fi

# ---------------------------------------------------------------------------
say "no reflink (the scratch filesystem): writes during the first pass only"
rv p livevm
J=$JOB
check "the job starts (4096)" test "$RV" = 4096
poll_job p "$J" 30 BytesCompared ge $((12 * M)) || fail "the job did not get going"
write1 l/l.vhdx 0
write1 l/l.vhdx $((60 * M))
wait_job p "$J" 90 7 8 9 10 32768 || fail "the job did not finish"
check "the job Completed" test "$(jobf p "$J" JobState)" = 7
check "Snapshot none, Passes 2" \
	test "$(disk0 "$J" Snapshot) $(disk0 "$J" Passes)" = "none 2"
check "SnapshotNote says why auto read the live file ($(disk0 "$J" SnapshotNote))" \
	test -n "$(disk0 "$J" SnapshotNote)"
check "the disks are identical" same l/l.vhdx r/l.vhdx
check "the log names the change and the next pass" \
	grep -q "l.vhdx changed during pass 1 (.*); pass 2" p.log

say "no reflink: writes that never stop"
# one qemu-io writing 64 KiB every 20 ms, as a VM would, again and again
CMDS=()
for i in $(seq 50); do
	CMDS+=(-c "write -q -P $((i % 256)) $(((RANDOM % 1000) * 64 * 1024)) 64k" -c "sleep 20")
done
: >writing
(while [ -e writing ]; do qemu-io -f vhdx "${CMDS[@]}" l/l.vhdx; done) >/dev/null 2>&1 &
WRITER=$!
rv p livevm
J=$JOB
wait_job p "$J" 100 7 8 9 10 32768 || fail "the job did not finish"
rm -f writing
wait "$WRITER" 2>/dev/null # its last qemu-io ends within a second
WRITER=
check "JobState 32768 (Completed with warnings)" test "$(jobf p "$J" JobState)" = 32768
check "Passes 3 (max-passes)" test "$(disk0 "$J" Passes)" = 3
jobf p "$J" ErrorDescription >desc.txt
check "ErrorDescription: the source changed, the copy is a mixture, how to avoid it ($(cut -c 1-120 desc.txt))" \
	bash -c "grep -q 'source changed' desc.txt && grep -q 'mixture of moments' desc.txt && grep -q 'reflink' desc.txt && grep -q 'LVM snapshot' desc.txt"
check "the VM still needs a resynchronization (9)" test "$(vmf p livevm ReplicationState)" = 9
qemu-img compare -q l/l.vhdx r/l.vhdx
check "the disks do differ (qemu-img compare: 1; nothing called them identical)" test $? = 1
hv p resync livevm --wait >wait.out 2>wait.err
check "resync --wait of a quiet VM Completes again" test "$?" = 0
check "  ... identical" same l/l.vhdx r/l.vhdx
check "  ... and the VM is Replicating (3)" test "$(vmf p livevm ReplicationState)" = 3

stop_agent p
stop_agent r
finish
