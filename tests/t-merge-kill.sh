#!/bin/bash
# t-merge-kill.sh - interrupted merges are finished first (issue 10, item
# 3): two real agents on loopback, a primary VM of one 384 MiB disk and
# its replica.  Each round writes 256 MiB of new random data on the
# primary, resyncs, and kills the recovery agent with SIGKILL at one point
# of its merge (5 points spread over the merge time a first, uncut round
# measured: 5 to 35 %, aimed at a shorter merge after a kill that came
# too late: merges of the same size vary twofold), then restarts it at once.  Each time:
#   - the restarted agent finishes the merge before it serves peers (its
#     log says so before "serving peers on"), and GetVM shows the disk
#     Critical with MergePending while it does, when the test catches it;
#   - the primary's job, whose MERGE session the kill cut, retries it and
#     Completes (not Exception), and the disks are identical.
# A second replica VM has a pending merge that cannot finish (its child is
# not a VHDX): the agent still starts and serves, GetVM shows that VM
# ReplicationHealth 3 with the reason, its image is untouched, and
# `vm discard` refuses to drop a copy whose merge has begun.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

S=$SCRATCH
cd "$S" || exit 1
[ "$(df -Pk "$S" | awk 'NR == 2 { print $4 }')" -ge $((3 << 20)) ] ||
	skip "less than 3 GiB free in $S"

MIB=$((1 << 20))
SIZE=$((384 * MIB))
CHANGE=$((256 * MIB))

# random FILE BYTES: bytes that do not compress, quickly.
random() {
	if command -v openssl >/dev/null; then
		openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:$$-$RANDOM-$2" \
			</dev/zero 2>/dev/null | head -c "$2" >"$1"
	else
		head -c "$2" /dev/urandom >"$1"
	fi
}

# change ROUND: 256 MiB of new random data on the primary, at an offset
# that moves with the round.
change() {
	local off=$((($1 * 32 * MIB) % (SIZE - CHANGE)))
	random chg.raw "$CHANGE"
	qemu-io -f vhdx -c "write -q -s $S/chg.raw $off $CHANGE" p/data.vhdx >/dev/null ||
		fail "qemu-io write on the primary"
	rm -f chg.raw
}

say "setup: a 384 MiB disk, its replica, a stuck replica, two agents"
mkdir -p p r s
"$HVRESYNC" create p/data.vhdx 384M >/dev/null || fail "create p"
"$HVRESYNC" create r/data.vhdx 384M >/dev/null || fail "create r"
# the stuck VM: an image, a "child" that is no VHDX, and the marker of a
# merge into that image: the merge cannot finish
"$HVRESYNC" create s/os.vhdx 64M >/dev/null || fail "create s"
head -c 65536 /dev/urandom >s/os.vhdx.hvresync.avhdx
realpath s/os.vhdx >s/os.vhdx.hvresync.avhdx.merging
STUCK_SUM=$(sha256sum <s/os.vhdx)
"$HVRESYNC" keygen psk >/dev/null || fail "keygen"
PP=$(free_port)
RP=$(free_port)
{
	agent_section p "$PP"
	cat <<EOF
retries = 3
retry-interval = 1

[vm mk]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/data.vhdx
EOF
} >p.conf
{
	agent_section r "$RP"
	cat <<EOF

[vm mk]
role = replica
disk = $S/r/data.vhdx

[vm stuck]
role = replica
disk = $S/s/os.vhdx
EOF
} >r.conf
start_agent r || { fail "recovery agent"; finish; }
start_agent p || { fail "primary agent"; finish; }
MARKER=$S/r/data.vhdx.hvresync.avhdx.merging

# ---------------------------------------------------------------------------
say "a merge that cannot finish: the agent serves anyway, the VM is Critical"
hv r vm show stuck --json >stuck.json 2>stuck.err || fail "vm show stuck: $(cat stuck.err)"
check "GetVM stuck: ReplicationHealth 3 (Critical)" \
	test "$(py 'd["Instance"]["ReplicationHealth"]' <stuck.json)" = 3
check "  ... its disk says MergePending" \
	test "$(py 'd["Instance"]["Disks"][0]["MergePending"]' <stuck.json)" = True
NOTE=$(py 'd["Instance"]["Disks"][0]["MergeNote"]' <stuck.json)
check "  ... and why the merge cannot finish ($NOTE)" \
	grep -q "cannot finish" <<<"$NOTE"
check "  ... the held copy is listed with MergePending" \
	test "$(py '[c["MergePending"] for c in d["Instance"]["HeldCopies"]]' <stuck.json)" = "[True]"
check "the log names the merge that cannot finish, before serving peers" \
	bash -c "grep -n 'stuck: disk os.vhdx: merge pending' r.log | head -n1 | cut -d: -f1 |
		{ read -r a; b=\$(grep -n 'serving peers on' r.log | head -n1 | cut -d: -f1); [ -n \"\$a\" ] && [ -n \"\$b\" ] && [ \"\$a\" -lt \"\$b\" ]; }"
check "the stuck image is untouched" test "$(sha256sum <s/os.vhdx)" = "$STUCK_SUM"
hv r vm discard stuck >disc.out 2>disc.err
check "vm discard does not drop a copy whose merge has begun (exit $?: $(head -c 200 disc.err))" \
	test -e s/os.vhdx.hvresync.avhdx -a -e s/os.vhdx.hvresync.avhdx.merging
check "  ... and the VM stays Critical" test "$(vmf r stuck ReplicationHealth)" = 3

# ---------------------------------------------------------------------------
say "uncut rounds: how long a merge takes"
# the first fills the recovery image; the second, like the rounds after
# it, overwrites blocks the image has, which merges faster: it is timed
change 0
expect_rv "resync mk" 4096 p mk
wait_job p "$JOB" 120 7 8 9 10 32768 || fail "the first uncut job did not finish"
check "the first uncut job Completed" test "$(jobf p "$JOB" JobState)" = 7
change 6
python3 - "$MARKER" 120 >merge-time.out <<'EOF' &
import os, sys, time
marker, secs = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + secs
while not os.path.exists(marker) and time.monotonic() < end:
    time.sleep(0.002)
t0 = time.monotonic()
while os.path.exists(marker) and time.monotonic() < end:
    time.sleep(0.002)
print("%.3f" % (time.monotonic() - t0))
EOF
MPID=$!
expect_rv "resync mk" 4096 p mk
wait "$MPID"
MERGE_S=$(cat merge-time.out)
wait_job p "$JOB" 120 7 8 9 10 32768 || fail "the uncut job did not finish"
check "the uncut job Completed" test "$(jobf p "$JOB" JobState)" = 7
check "  ... identical" same p/data.vhdx r/data.vhdx
echo "    the merge took $MERGE_S s"

# ---------------------------------------------------------------------------
CUTS=0
for k in ${ROUNDS:-1 2 3 4 5}; do
	say "round $k: SIGKILL at $(((15 * k - 5) / 2)) % of the merge"
	change "$k"
	DELAY=$(python3 -c "print($MERGE_S * (15 * $k - 5) / 200.0)")
	# started before the resync (a loaded machine starts programs
	# slowly): wait for the marker, then the delay, then SIGKILL; report
	# whether the marker was still there right after the kill
	python3 - "$MARKER" "$DELAY" "${AGENT_PID[r]}" >kill.out <<'EOF' &
import os, signal, sys, time
marker, delay, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
end = time.monotonic() + 120
while not os.path.exists(marker) and time.monotonic() < end:
    time.sleep(0.002)
if not os.path.exists(marker):
    print("no-merge")
    sys.exit(0)
sys.stderr.write("    the merge began %.1f s after the resync\n" % (time.monotonic() - end + 120))
time.sleep(delay)
os.kill(pid, signal.SIGKILL)
time.sleep(0.05)
print("cut" if os.path.exists(marker) else "after")
EOF
	KPID=$!
	expect_rv "resync mk" 4096 p mk
	J=$JOB
	wait "$KPID"
	WHAT=$(cat kill.out)
	kill_agent r
	LINES=$(wc -l <r.log)
	if [ "$WHAT" = cut ]; then
		CUTS=$((CUTS + 1))
		ok "the recovery agent was killed mid-merge (marker there)"
	else
		echo "    the kill came $WHAT (the merge had already finished or never began)"
		# merges vary from round to round (what the page cache holds):
		# the later points aim at a shorter merge
		[ "$WHAT" = after ] && MERGE_S=$(python3 -c "print($MERGE_S * 0.6)")
	fi
	start_agent r || { fail "recovery agent restart"; break; }
	# right after the start, while the merge may still be finished
	hv r vm show mk --json >vm.json 2>/dev/null
	if [ "$WHAT" = cut ] && ! tail -n +"$LINES" r.log | grep -q 'serving peers on'; then
		check "GetVM during the merge: Critical (3), MergePending" \
			test "$(py '(d["Instance"]["ReplicationHealth"], d["Instance"]["Disks"][0]["MergePending"])' <vm.json)" = "(3, True)"
	fi
	wait_job p "$J" 120 7 8 9 10 32768 || fail "round $k: the job did not finish"
	STATE=$(jobf p "$J" JobState)
	check "round $k: the job Completed (JobState $STATE: $(jobf p "$J" ErrorDescription))" \
		test "$STATE" = 7
	check "round $k: the disks are identical (qemu-img compare)" same p/data.vhdx r/data.vhdx
	check "round $k: no merge marker is left" test ! -e "$MARKER"
	if [ "$WHAT" = cut ]; then
		tail -n +"$LINES" r.log >round.log
		FIN=$(grep -n 'the interrupted merge finished' round.log | head -n1 | cut -d: -f1)
		SRV=$(grep -n 'serving peers on' round.log | head -n1 | cut -d: -f1)
		check "round $k: the restarted agent finished the merge before serving (lines ${FIN:-none} < ${SRV:-none})" \
			test -n "$FIN" -a -n "$SRV" -a "${FIN:-0}" -lt "${SRV:-0}"
		check "round $k: the job retried the cut merge ($(jobf p "$J" Retries) retries)" \
			test "$(jobf p "$J" Retries)" -ge 1
		check "round $k: the recovery VM is Ok again" test "$(vmf r mk ReplicationHealth)" = 1
	fi
done
check "at least 4 of the 5 kills cut a merge under way ($CUTS)" test "$CUTS" -ge 4
check "no agent crashed (no sanitizer or signal lines in the logs)" \
	bash -c "! grep -qiE 'sanitizer|segmentation|core dumped' p.log r.log"
[ "$_fails" -gt 0 ] && [ -n "${KEEP_LOGS:-}" ] && cp p.log r.log "$KEEP_LOGS"/
finish
