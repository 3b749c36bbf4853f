#!/bin/bash
# t-agent-extended.sh - extended replication with three agents on
# loopback: primary -> recovery (JobType 107), then the recovery agent's
# replica VM -> the extended replica (JobType 121), each checked with
# qemu-img compare; Resynchronize on the end of the chain is 32770, and on
# the recovery agent while its disks are receiving from the primary 32774.
# The third agent runs role = extended-replica (ReplicationMode 4), with
# no fallback to role = replica: an hvresync without that role is a SKIP.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

S=$SCRATCH
cd "$S" || exit 1

say "setup: three agents (plain TCP on loopback)"
mkdir -p p r e
for d in p r e; do
	"$HVRESYNC" create $d/os.vhdx 48M >/dev/null &&
		"$HVRESYNC" create $d/data.vhdx 16M >/dev/null || fail "hvresync create in $d"
done
fill p/os.vhdx 0 4M
fill p/os.vhdx 30M 2M
fill p/data.vhdx 1M 1M
fill e/os.vhdx 10M 1M # the extended replica has diverged on its own
PP=$(free_port)
RP=$(free_port)
EP=$(free_port)
conf() { # NAME PORT ROLE [REPLICA_PORT]
	cat <<EOF
[agent]
listen = 127.0.0.1:$2
control = $S/run/$1.sock
state-dir = $S/$1-state
insecure = true

[vm demo]
role = $3
${4:+replica = 127.0.0.1:$4}
disk = $S/$1/os.vhdx
disk = $S/$1/data.vhdx
EOF
}
conf p "$PP" primary "$RP" >p.conf
conf r "$RP" replica "$EP" >r.conf
conf e "$EP" extended-replica >e.conf
# The extended replica is role = extended-replica, never a stand-in: vm
# list loads the configuration before it looks for the socket, and an
# hvresync that does not know the role cannot run this test (SKIP, 77).
timeout 10 "$HVRESYNC" vm list --config e.conf >/dev/null 2>e.err
grep -q "role: expected .*not 'extended-replica'" e.err &&
	skip "$HVRESYNC does not know role = extended-replica: $(head -n1 e.err)"
conf e "$EP" extended-replica "$PP" >e-bad.conf
expect_error "an extended-replica that names a replica is refused (the role is its own, not replica)" \
	"e-bad.conf:" "extended replica" "cannot name a replica" -- \
	"$HVRESYNC" agent -f --config e-bad.conf
start_agent e || { fail "extended replica agent"; finish; }
start_agent r || { fail "recovery agent"; finish; }
start_agent p || { fail "primary agent"; finish; }
check "ReplicationMode: primary 1, replica 2, extended replica 4" test \
	"$(vmf p demo ReplicationMode) $(vmf r demo ReplicationMode) $(vmf e demo ReplicationMode)" = \
	"1 2 4"
check "the extended replica's agent shows Role extended-replica" \
	test "$(vmf e demo Role)" = extended-replica
check "  ... and exports its disks to receive" grep -q 'VM demo: exporting .*/e/os.vhdx as demo:os.vhdx' e.log

say "primary -> recovery (107), then recovery -> extended replica (121)"
hv p resync demo --wait >p.out 2>p.err
check "the primary's resync Completed ($(tail -n1 p.err))" test $? -eq 0
J=$(sed -n 's/^Job: //p' p.out)
check "  ... as JobType 107" test "$(jobf p "$J" JobType)" = 107
check "recovery os.vhdx identical to the primary's" same p/os.vhdx r/os.vhdx
check "recovery data.vhdx identical to the primary's" same p/data.vhdx r/data.vhdx
check "the extended replica still differs" bash -c "! qemu-img compare -q r/os.vhdx e/os.vhdx"
check "  ... and nothing has reached its agent yet" bash -c "! grep -q 'session start' e.log"

hv r resync demo --wait >r.out 2>r.err
check "the recovery agent's resync of its replica VM Completed ($(tail -n1 r.err))" test $? -eq 0
J=$(sed -n 's/^Job: //p' r.out)
check "  ... as JobType 121 (Resynchronizing extended replication)" \
	test "$(jobf r "$J" JobType)" = 121
check "  ... sent to the extended replica's agent" test "$(jobf r "$J" Peer)" = "127.0.0.1:$EP"
check "  ... as the recovery agent's log says" \
	grep -q "job $J (VM demo, JobType 121) running: .* to 127.0.0.1:$EP\$" r.log
check "the extended replica's agent received os.vhdx and data.vhdx and merged them" python3 - e.log <<'EOF'
import re, sys
log = open(sys.argv[1]).read()
for d in ("os.vhdx", "data.vhdx"):
    got = [int(n) for n in re.findall(r"session end: export demo:%s: held \(complete, not merged\):"
                                      r".* received (\d+)," % re.escape(d), log)]
    assert got and sum(got) > 0, (d, got)
    assert re.search(r"session end: export demo:%s: merged:" % re.escape(d), log), d
EOF
check "extended os.vhdx identical to the recovery's" same r/os.vhdx e/os.vhdx
check "extended data.vhdx identical to the recovery's" same r/data.vhdx e/data.vhdx
check "  ... and so to the primary's" same p/os.vhdx e/os.vhdx
check "the recovery VM is 3 Replicating after its 121 job" test "$(vmf r demo ReplicationState)" = 3
expect_rv "Resynchronize on the extended replica (end of the chain)" 32770 e demo

say "the recovery agent's replica VM is busy while its primary sends to it"
stop_agent p
start_agent p --bwlimit 4M || fail "primary with --bwlimit"
fill p/os.vhdx 8M 24M
expect_rv "primary resync (slow)" 4096 p demo
JP=$JOB
wait_percent p "$JP" 10 20 || fail "the primary's job makes progress"
check "while receiving, the replica VM shows 10 Resynchronizing" \
	test "$(vmf r demo ReplicationState)" = 10
expect_rv "Resynchronize (121) while the disks receive from the primary" 32774 r demo
wait_job p "$JP" 60 7 8 9 10 || fail "the primary's job finishes"
check "the primary's slow job Completed" test "$(jobf p "$JP" JobState)" = 7
check "recovery os.vhdx identical again" same p/os.vhdx r/os.vhdx
hv r resync demo --wait >/dev/null 2>r.err
check "then the 121 job runs and Completes ($(tail -n1 r.err))" test $? -eq 0
check "extended os.vhdx identical at the end" same p/os.vhdx e/os.vhdx

say "the primary cannot send into a replica disk while the replica's own 121 job reads it"
stop_agent r
start_agent r --bwlimit 4M || fail "recovery agent with --bwlimit"
fill r/os.vhdx 8M 38M # make the 121 job long: the extended replica differs again
cp r/os.vhdx r-before.vhdx
expect_rv "the replica VM's resync (121, slow)" 4096 r demo
JR=$JOB
wait_percent r "$JR" 10 20 || fail "the 121 job makes progress"
# the primary changes a block the 121 job has not read yet; without the
# hold it would land on the recovery disk under the 121 job's reads
fill p/os.vhdx 44M 1M # allocated on the recovery disk, read late by the 121 job
expect_rv "primary resync while the replica's 121 job runs" 4096 p demo
JP=$JOB
wait_job r "$JR" 120 7 8 9 10 || fail "the 121 job finishes"
check "the 121 job Completed" test "$(jobf r "$JR" JobState)" = 7
check "  ... and sent the recovery disk as it was when it started (the primary waited)" \
	same r-before.vhdx e/os.vhdx
wait_job p "$JP" 90 7 8 9 10 || fail "the primary's job finishes"
check "the primary's job Completed after the hold was released" test "$(jobf p "$JP" JobState)" = 7
check "recovery os.vhdx identical to the primary's" same p/os.vhdx r/os.vhdx
stop_agent p
stop_agent r
stop_agent e
finish
