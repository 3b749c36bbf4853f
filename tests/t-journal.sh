#!/bin/bash
# t-journal.sh - structured journal records (issue 13): when the agent's
# stderr is the journal (JOURNAL_STREAM names it, as systemd sets it), it
# logs through sd_journal_sendv() with HVRESYNC_VM, HVRESYNC_JOB,
# HVRESYNC_DISK and the stable MESSAGE_IDs of hvresync(8) for a job
# started, completed, failed and cancelled.  The test runs in its own
# mount namespace with a tmpfs on /run/systemd/journal and a listener in
# journald's place (tests/helpers/journal_listener.py) that records the
# native-protocol datagrams.  Without JOURNAL_STREAM the "<N>" stderr
# lines of before are unchanged.
if [ -z "${T_JOURNAL_NS:-}" ]; then
	[ "$(id -u)" = 0 ] || { echo "SKIP: needs root (unshare -m, mount)"; exit 77; }
	command -v unshare >/dev/null || { echo "SKIP: unshare not installed"; exit 77; }
	T_JOURNAL_NS=1 exec unshare -m --propagation private bash "$0" "$@"
fi
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

S=$SCRATCH
cd "$S" || exit 1

MSGID_STARTED=994fce546c594bcebb71f94c4e67cdf6
MSGID_COMPLETED=01e28b0f89ff419380752a70339d952b
MSGID_FAILED=2b7a1e629f134237b2ed0490ad2d4d0e
MSGID_CANCELLED=757b4723a5b649ee9bc2159877dea0ca

say "a private /run/systemd/journal with a listener in journald's place"
if [ -d /run/systemd/journal ]; then
	mount -t tmpfs tmpfs /run/systemd/journal || skip "cannot mount a tmpfs on /run/systemd/journal"
else
	mkdir -p /run/systemd 2>/dev/null
	mount -t tmpfs tmpfs /run/systemd || skip "cannot mount a tmpfs on /run/systemd"
	mkdir -p /run/systemd/journal
fi
python3 "$TOP/tests/helpers/journal_listener.py" /run/systemd/journal/socket "$S/journal.jsonl" \
	2>"$S/listener.err" &
LISTENER=$!
for i in $(seq 100); do [ -e "$S/journal.jsonl.ready" ] && break; sleep 0.05; done
[ -e "$S/journal.jsonl.ready" ] || { fail "the listener did not start: $(cat listener.err)"; finish; }
trap 'kill $LISTENER 2>/dev/null; agent_cleanup' EXIT

mkdir -p p r
for d in p r; do
	"$HVRESYNC" create $d/os.vhdx 16M >/dev/null &&
		"$HVRESYNC" create $d/data.vhdx 8M >/dev/null || fail "create in $d"
done
fill p/os.vhdx 0 2M
"$HVRESYNC" keygen psk >/dev/null || fail keygen
PP=$(free_port)
RP=$(free_port)
DEAD=$(free_port)
{ agent_section p "$PP"; cat <<EOF
retries = 0

[vm good]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/os.vhdx
disk = $S/p/data.vhdx

[vm bad]
role = primary
replica = 127.0.0.1:$DEAD
disk = $S/p/os.vhdx
disk = $S/p/data.vhdx
EOF
} >p.conf
{ agent_section r "$RP"; cat <<EOF

[vm good]
role = replica
disk = $S/r/os.vhdx
disk = $S/r/data.vhdx
EOF
} >r.conf

# The recovery agent without JOURNAL_STREAM: "<N>" lines on stderr, as before.
start_agent r || { fail "recovery agent"; finish; }
# The primary's stderr is "the journal's stream": JOURNAL_STREAM names its
# device and inode, as systemd's StandardOutput=journal does.
: >p.log
JOURNAL_STREAM=$(stat -c '%d:%i' p.log) start_agent p || { fail "primary agent"; finish; }

# rec PY-EXPR: evaluate over the recorded records; r is a list of dicts
# KEY -> [values].
rec() {
	python3 - "$S/journal.jsonl" "$1" <<'EOF'
import json, sys
r = []
for l in open(sys.argv[1]):
    d = {}
    for k, v in json.loads(l):
        d.setdefault(k, []).append(v)
    r.append(d)
def one(msgid, job):
    m = [x for x in r if x.get("MESSAGE_ID") == [msgid] and x.get("HVRESYNC_JOB") == [job]]
    assert len(m) == 1, (msgid, job, len(m))
    return m[0]
res = eval(sys.argv[2])
if res is not True:
    print("    got:", res)
    sys.exit(1)
EOF
}
# wait_rec SECONDS PY-EXPR
wait_rec() {
	local i
	for i in $(seq $(($1 * 10))); do
		rec "$2" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	rec "$2"
	return 1
}

say "the agent's records go to the journal socket"
check "agent ready went to the journal, PRIORITY=6, SYSLOG_IDENTIFIER=hvresync" \
	wait_rec 5 'any(x.get("MESSAGE", [""])[0].startswith("agent ready") and x["PRIORITY"] == ["6"] and x["SYSLOG_IDENTIFIER"] == ["hvresync"] for x in r)'
check "... and not to stderr" bash -c "! grep -q 'agent ready' p.log"
check "no record the listener could not read" rec 'not any("_LISTENER_ERROR" in x for x in r)'

say "a completed job"
expect_rv "resync good" 4096 p good
JG=$JOB
wait_job p "$JG" 60 7 8 9 10 32768
check "it Completed" test "$(jobf p "$JG" JobState)" = 7
check "started: MESSAGE_ID, HVRESYNC_VM, HVRESYNC_JOB, a HVRESYNC_DISK per disk" \
	wait_rec 5 "(lambda x: x['HVRESYNC_VM'] == ['good'] and x['HVRESYNC_DISK'] == ['os.vhdx', 'data.vhdx'] and x['PRIORITY'] == ['6'] and ' running: ' in x['MESSAGE'][0] or x)(one('$MSGID_STARTED', '$JG'))"
check "completed: its fields, PRIORITY=6, the job's JSON in MESSAGE" \
	wait_rec 5 "(lambda x: x['HVRESYNC_VM'] == ['good'] and x['HVRESYNC_DISK'] == ['os.vhdx', 'data.vhdx'] and x['PRIORITY'] == ['6'] and x['MESSAGE'][0].startswith('job $JG Completed: {\"InstanceID\":\"$JG\"') or x)(one('$MSGID_COMPLETED', '$JG'))"

say "a failed job"
expect_rv "resync bad (its replica does not listen)" 4096 p bad
JB=$JOB
wait_job p "$JB" 60 7 8 9 10 32768
check "it ended in Exception" test "$(jobf p "$JB" JobState)" = 10
# both disks fail alike; with parallel-disks either may be first, and
# the record names the one the job's summary names
FD=$(jobf p "$JB" ErrorSummaryDescription | sed -n 's/.* of disk \([^ ]*\.vhdx\)\.$/\1/p')
check "the job's summary names a disk ($FD)" test -n "$FD"
check "failed: MESSAGE_ID, HVRESYNC_VM=bad, the disk that failed alone, PRIORITY=3" \
	wait_rec 5 "(lambda x: x['HVRESYNC_VM'] == ['bad'] and x['HVRESYNC_DISK'] == ['$FD'] and x['PRIORITY'] == ['3'] and x['MESSAGE'][0].startswith('job $JB Exception: {') or x)(one('$MSGID_FAILED', '$JB'))"
check "the failed job has no completed record" \
	rec "not any(x.get('MESSAGE_ID') == ['$MSGID_COMPLETED'] and x.get('HVRESYNC_JOB') == ['$JB'] for x in r)"

say "a cancelled job"
AT=$(date -u -d '+1 hour' +%Y%m%d%H%M%S.000000+000)
expect_rv "resync good at $AT" 4096 p good --start-time "$AT"
JC=$JOB
hv p job cancel "$JC" >/dev/null 2>&1
check "it is Terminated" test "$(jobf p "$JC" JobState)" = 8
check "cancelled: MESSAGE_ID and fields" \
	wait_rec 5 "(lambda x: x['HVRESYNC_VM'] == ['good'] and x['HVRESYNC_DISK'] == ['os.vhdx', 'data.vhdx'] or x)(one('$MSGID_CANCELLED', '$JC'))"
check "journalctl MESSAGE_ID=$MSGID_FAILED would find exactly the failed job" \
	rec "[x['HVRESYNC_JOB'] for x in r if x.get('MESSAGE_ID') == ['$MSGID_FAILED']] == [['$JB']]"

say "without JOURNAL_STREAM: the \"<N>\" stderr lines of before"
check "the recovery agent's stderr: '<6>agent ready: ...'" grep -q '^<6>agent ready: 1 VM(s) from ' r.log
check "... '<6>serving peers on ...'" grep -q '^<6>serving peers on 127.0.0.1:' r.log
check "... no record of the recovery agent reached the journal" \
	rec "not any('r.conf' in x.get('MESSAGE', [''])[0] for x in r)"
stop_agent p
: >p2.log
"$HVRESYNC" agent -f --config p.conf 2>p2.log &
AGENT_PID[p]=$!
for i in $(seq 100); do grep -q 'agent ready' p2.log && break; sleep 0.05; done
stop_agent p
check "an agent whose JOURNAL_STREAM is unset logs '<6>agent ready' to stderr" grep -q '^<6>agent ready: ' p2.log
check "... and its last words '<6>agent stopped'" grep -q '^<6>agent stopped$' p2.log
finish
