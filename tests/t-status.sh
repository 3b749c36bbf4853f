#!/bin/bash
# t-status.sh - `hvresync status` (issue 13): one screen for the agent with
# one VM whose resync completed, one running a slow job and one left in
# "resynchronization required"; the text screen and `--json` are checked
# against `vm show`/`job show --json`, `--watch` redraws until SIGINT and
# exits 0, and an agent that is not there is exit 2 with one error line.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

S=$SCRATCH
cd "$S" || exit 1
mkdir -p p r

say "setup: a primary (--bwlimit 1M) with three VMs and its recovery agent"
for d in p r; do
	"$HVRESYNC" create $d/done.vhdx 8M >/dev/null &&
		"$HVRESYNC" create $d/busy.vhdx 48M >/dev/null &&
		"$HVRESYNC" create $d/needy.vhdx 8M >/dev/null || fail "create in $d"
done
fill p/done.vhdx 0 512K
fill p/busy.vhdx 4M 40M
"$HVRESYNC" keygen psk >/dev/null || fail keygen
PP=$(free_port)
RP=$(free_port)
{ agent_section p "$PP"; cat <<EOF
retries = 0

[vm done]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/done.vhdx

[vm busy]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/busy.vhdx

[vm needy]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/needy.vhdx
EOF
} >p.conf
{ agent_section r "$RP"; cat <<EOF

[vm done]
role = replica
disk = $S/r/done.vhdx

[vm busy]
role = replica
disk = $S/r/busy.vhdx
EOF
} >r.conf
start_agent r || { fail "recovery agent"; finish; }
start_agent p --bwlimit 1M || { fail "primary agent"; finish; }

expect_rv "resync done" 4096 p done
JD=$JOB
wait_job p "$JD" 60 7 8 9 10 32768
check "done's job Completed" test "$(jobf p "$JD" JobState)" = 7
hv p vm set-state needy 9 >/dev/null || fail "set-state needy 9"
expect_rv "resync busy (40 MiB to send at 1 MiB/s)" 4096 p busy
JB=$JOB
wait_percent p "$JB" 5 30 || fail "the slow job makes progress"
sleep 1 # a rate and an ETA need some history

say "status, the text screen"
hv p status >st.out 2>st.err
RC=$?
check "exit 0, nothing on stderr" test "$RC:$(wc -c <st.err)" = "0:0"
sed 's/^/    | /' st.out
hv p job show "$JD" --json >jd.json
line() { grep -E "^$1 " st.out; }
check "the agent: primary, pid, listening address" \
	grep -qE "^agent: primary, pid ${AGENT_PID[p]}, listening on 127\.0\.0\.1:$PP \(TLS 1\.3, pre-shared key\)$" st.out
check "control socket and start time" \
	grep -qE "^       control $(sock p), up since [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8}$" st.out
check "one active job, peer sessions 0 in, 1 out, 1 completed" \
	grep -qE "^       1 active job\(s\); peer sessions: 0 in, 1 out; since start: 1 completed, 0 failed, 0 cancelled" st.out
check "done: 3 Replicating, Ok, a last resync time, how long, bytes sent" python3 - "$(line done)" jd.json <<'EOF'
import json, re, sys, datetime as dt
l, j = sys.argv[1], json.load(open(sys.argv[2]))["Instance"]
assert re.match(r"^done +3 Replicating +Ok +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +[0-9.]+ (s|min) .* -$", l), l
s = j["TimeFinished"]
local = dt.datetime.strptime(s[:14], "%Y%m%d%H%M%S").replace(
    tzinfo=dt.timezone(dt.timedelta(minutes=int(s[21:25])))).astimezone()
assert local.strftime("%Y-%m-%d %H:%M:%S") in l, (local, l)
sent = j["BytesSent"]
units = ["B", "KiB", "MiB", "GiB"]
v, u = float(sent), 0
while v >= 1024 and u < 3:
    v /= 1024; u += 1
want = ("%d B" % sent) if u == 0 else ("%.1f %s" % (v, units[u]))
assert want in l, (want, l)
EOF
check "needy: 9 Waiting to start resynchronization, Critical, never" \
	grep -qE "^needy +9 Waiting to start resynchronization +Critical +never +- +- +-$" st.out
check "busy: 10 Resynchronizing, Warning" grep -qE "^busy +10 Resynchronizing +Warning +never " st.out
check "the running job: Running, then a bar, percent, ETA and rate" bash -c \
	"grep -A1 -E '^$JB +busy +Running' st.out | tail -n1 | grep -qE '^    \[#*-*\] +[0-9]+%  ETA [0-9.]+ (s|min|h) .*\(.*/s, send phase\)$'"
check "the completed job: Completed, when it ended" grep -qE "^$JD +done +Completed +ended " st.out

say "status --json"
hv p status --json >st.json 2>st.err
RC=$?
check "exit 0" test "$RC" = 0
hv p job show "$JB" --json >jb.json
check "one object: agent, VMs and jobs as GetAgent, ListVMs, ListJobs" python3 - st.json jd.json jb.json "$PP" "${AGENT_PID[p]}" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
jd = json.load(open(sys.argv[2]))["Instance"]
jb = json.load(open(sys.argv[3]))["Instance"]
assert d["ReturnValue"] == 0, d
a = d["Agent"]
assert a["Role"] == "primary" and a["Listen"] == "127.0.0.1:" + sys.argv[4], a
assert a["ProcessID"] == int(sys.argv[5]) and a["ActiveJobs"] == 1, a
assert a["PeerSessionsOut"] == 1 and a["PeerSessionsIn"] == 0, a
assert a["JobsCompleted"] == 1 and a["JobsFailed"] == 0, a
v = {x["ElementName"]: x for x in d["VMs"]}
assert (v["done"]["ReplicationState"], v["done"]["ReplicationHealth"]) == (3, 1), v["done"]
assert (v["needy"]["ReplicationState"], v["needy"]["ReplicationHealth"]) == (9, 3), v["needy"]
assert (v["busy"]["ReplicationState"], v["busy"]["ReplicationHealth"]) == (10, 2), v["busy"]
for k in ("BytesCompared", "BytesDifferent", "BytesSent"):
    assert v["done"]["LastSuccessfulResync" + k] == jd[k], (k, v["done"], jd[k])
assert v["needy"]["LastSuccessfulResync"] is None and v["needy"]["LastSuccessfulResyncBytesSent"] is None
j = {x["InstanceID"]: x for x in d["Jobs"]}
assert j[jd["InstanceID"]]["JobState"] == 7
assert j[jb["InstanceID"]]["JobState"] == 4 and 0 < j[jb["InstanceID"]]["PercentComplete"] <= jb["PercentComplete"]
EOF

say "status --watch"
# straight from this shell, so that SIGINT reaches it (not through hv's
# timeout)
"$HVRESYNC" status --watch --interval 0.3 --control "$(sock p)" >watch.out 2>watch.err &
WP=$!
sleep 2
kill -INT "$WP"
wait "$WP"
RC=$?
N=$(grep -c '^agent: ' watch.out)
check "SIGINT ends it with exit 0" test "$RC" = 0
check "it redrew every 0.3 s ($N frames in 2 s)" test "$N" -ge 3 -a "$N" -le 10
check "no clear-screen codes when stdout is not a terminal" bash -c "! grep -q $'\e' watch.out"
if command -v script >/dev/null; then
	timeout -k 2 10 script -qec "timeout -s INT 2 $HVRESYNC status --watch --control $(sock p)" /dev/null >tty.out 2>&1
	check "on a terminal each frame clears the screen first" grep -q $'\e\[H\e\[2J' tty.out
fi
"$HVRESYNC" status --watch --json --interval 0.3 --control "$(sock p)" >wj.out 2>/dev/null &
WP=$!
sleep 1.5
kill -INT "$WP"
wait "$WP"
check "--watch --json: one JSON object per line" python3 -c "
import json, sys
ls = open('wj.out').read().splitlines()
assert len(ls) >= 2, ls
for l in ls:
    assert json.loads(l)['ReturnValue'] == 0
"

say "no agent"
hv p job cancel "$JB" >/dev/null 2>&1
stop_agent p
expect_error "status without an agent: exit 2, one line naming the socket" "$(sock p)" -- \
	"$HVRESYNC" status --control "$(sock p)"
cli_run "$HVRESYNC" status --json --control "$(sock p)"
check "status --json without an agent: exit 2, ReturnValue 32777" \
	test "$CLI_RC:$(py 'd["ReturnValue"]' <"$SCRATCH/cli.out")" = "2:32777"
finish
