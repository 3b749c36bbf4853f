#!/bin/bash
# t-metrics.sh - the agent's Prometheus metrics file (metrics-file = in
# [agent], issue 13): after a completed job, a failed job and during a
# running one it passes `promtool check metrics` and its values match
# `job show --json` and `vm show --json`; a reader polling the file in a
# loop never sees a partial file (atomic rename); the last successful
# resync survives an agent restart; the counters of failed jobs and of
# refused control callers count.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

command -v promtool >/dev/null || skip "promtool not installed (Debian package prometheus)"
[ "$(id -u)" = 0 ] || skip "needs root (runuser for a refused caller)"
S=$SCRATCH
cd "$S" || exit 1
M=$S/prom/hvresync.prom
mkdir -p p r prom pushprom

say "setup: two agents, the primary with a metrics file"
for d in p r; do
	"$HVRESYNC" create $d/os.vhdx 48M >/dev/null &&
		"$HVRESYNC" create $d/data.vhdx 16M >/dev/null || fail "create in $d"
done
fill p/os.vhdx 0 4M
fill p/data.vhdx 1M 1M
"$HVRESYNC" keygen psk >/dev/null || fail keygen
PP=$(free_port)
RP=$(free_port)
DEAD=$(free_port) # nobody listens there: the job to it fails
{ agent_section p "$PP"; cat <<EOF
retries = 0
metrics-file = $M

[vm good]
role = primary
replica = 127.0.0.1:$RP
; one disk at a time, so exactly one session is out while it runs
parallel-disks = 1
disk = $S/p/os.vhdx
disk = $S/p/data.vhdx

[vm bad]
role = primary
replica = 127.0.0.1:$DEAD
disk = $S/p/data.vhdx

[vm idle]
role = primary
replica = 127.0.0.1:$RP
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
start_agent r || { fail "recovery agent"; finish; }
start_agent p || { fail "primary agent"; finish; }

# The atomicity reader: polls the file as fast as it can until told to
# stop; every read must be a whole file (starts with the first family,
# has the last one, ends in a newline, every line well-formed).
python3 - "$M" "$S/reader.stop" >reader.out 2>&1 <<'EOF' &
import os, re, sys, time
path, stop = sys.argv[1:3]
line = re.compile(r'^(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*|[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEIinfNa]+)$')
reads = bad = 0
# a short pause between reads: the machine is shared; and a reader whose
# test went away (its folder is gone) stops
while not os.path.exists(stop) and os.path.isdir(os.path.dirname(stop)):
    time.sleep(0.002)
    try:
        with open(path) as f:
            t = f.read()
    except FileNotFoundError:
        continue
    reads += 1
    ok = (t.startswith("# HELP hvresync_agent_start_time_seconds ") and
          "# TYPE hvresync_job_disk_compared_bytes gauge\n" in t and
          t.endswith("\n") and all(line.match(l) for l in t.splitlines()))
    if not ok:
        bad += 1
        if bad < 3:
            print("partial read:", repr(t[-200:]))
print("reads", reads, "bad", bad)
EOF
READER=$!
trap 'kill $READER 2>/dev/null; agent_cleanup' EXIT

# metric FAMILY LABEL-MATCH: the value of the one sample of FAMILY whose
# labels contain LABEL-MATCH (e.g. 'vm="good"'), or "" when none.
metric() {
	awk -v fam="$1" -v want="${2:-}" '
		/^#/ { next }
		{
			name = $1; labels = ""
			i = index($1, "{")
			if (i) { name = substr($1, 1, i - 1); labels = substr($1, i) }
			if (name == fam && index(labels, want)) { print $NF; exit }
		}' "$M"
}
# wait_metric SECONDS FAMILY LABEL-MATCH VALUE: until the file shows it.
wait_metric() {
	local end=$((SECONDS + $1))
	while [ "$SECONDS" -le "$end" ]; do
		[ -f "$M" ] && [ "$(metric "$2" "$3")" = "$4" ] && return 0
		sleep 0.1
	done
	echo "    $2{$3} is '$(metric "$2" "$3")' after $1 s, want $4"
	return 1
}
promcheck() {
	if promtool check metrics <"$M" >promtool.out 2>&1; then
		ok "$1: promtool check metrics has no complaint"
	else
		fail "$1: promtool check metrics complains"
		sed 's/^/    | /' promtool.out | head -n 10
	fi
}

# ---------------------------------------------------------------------------
say "the file appears at start, mode 0644"
wait_metric 10 hvresync_vm_replication_state 'vm="idle"' 1 ||
	fail "the file shows VM idle as 1 (Ready for replication)"
check "mode 0644 (node_exporter runs as another user)" test "$(stat -c %a "$M")" = 644
promcheck "at start"

# ---------------------------------------------------------------------------
say "a completed job"
expect_rv "resync good" 4096 p good
JG=$JOB
wait_job p "$JG" 60 7 8 9 10 32768
check "the job Completed" test "$(jobf p "$JG" JobState)" = 7
wait_metric 10 hvresync_vm_last_job_state 'vm="good"' 7 ||
	fail "the file shows good's last job Completed"
promcheck "after a completed job"
hv p job show "$JG" --json >jg.json
hv p vm show good --json >vg.json
cp "$M" m-completed.prom
check "last success figures match job show and vm show" python3 - jg.json vg.json m-completed.prom <<'EOF'
import json, re, sys, datetime as dt
j = json.load(open(sys.argv[1]))["Instance"]
v = json.load(open(sys.argv[2]))["Instance"]
m = {}
for l in open(sys.argv[3]):
    g = re.match(r'^(\w+)\{([^}]*)\} (\S+)$', l.strip())
    if g and 'vm="good"' in g.group(2):
        m[g.group(1)] = float(g.group(3))
def cim(s):
    off = int(s[21:25])
    return dt.datetime.strptime(s[:21], "%Y%m%d%H%M%S.%f").replace(
        tzinfo=dt.timezone(dt.timedelta(minutes=off))).timestamp()
def iv(s):
    return int(s[:8]) * 86400 + int(s[8:10]) * 3600 + int(s[10:12]) * 60 + float(s[12:21])
assert j["BytesCompared"] == (48 + 16) << 20, j["BytesCompared"]
assert j["BytesDifferent"] > 0 and j["BytesSent"] > 0, j
for k, f in (("BytesCompared", "compared"), ("BytesDifferent", "different"), ("BytesSent", "sent")):
    assert m["hvresync_vm_last_success_%s_bytes" % f] == j[k], (f, m, j[k])
    assert v["LastSuccessfulResync" + k] == j[k], (k, v)
assert abs(m["hvresync_vm_last_success_duration_seconds"] - iv(j["ElapsedTime"])) < 0.01, (m, j["ElapsedTime"])
assert abs(v["LastSuccessfulResyncSeconds"] - iv(j["ElapsedTime"])) < 0.01
assert abs(m["hvresync_vm_last_success_time_seconds"] - cim(j["TimeFinished"])) < 1.0, (m, j["TimeFinished"])
assert abs(cim(v["LastSuccessfulResync"]) - cim(j["TimeFinished"])) < 1.0
assert m["hvresync_vm_replication_state"] == v["ReplicationState"] == 3
assert m["hvresync_vm_replication_health"] == v["ReplicationHealth"] == 1
assert m["hvresync_vm_replication_mode"] == v["ReplicationMode"] == 1
assert "hvresync_job_state" not in m, "a finished job is no running job"
EOF
check "labels: vm, role, peer" grep -q "^hvresync_vm_replication_state{vm=\"good\",role=\"primary\",peer=\"127.0.0.1:$RP\"} 3$" "$M"
check "jobs completed counter is 1" test "$(metric hvresync_jobs_completed_total)" = 1

# ---------------------------------------------------------------------------
say "a failed job, and a VM left in resynchronization required"
expect_rv "resync bad (its replica does not listen)" 4096 p bad
JB=$JOB
wait_job p "$JB" 60 7 8 9 10 32768
check "the job ended in Exception" test "$(jobf p "$JB" JobState)" = 10
wait_metric 10 hvresync_jobs_failed_total '' 1 || fail "hvresync_jobs_failed_total is 1"
wait_metric 10 hvresync_vm_last_job_state 'vm="bad"' 10 ||
	fail "the file shows bad's last job Exception"
promcheck "after a failed job"
check "bad: ReplicationState 9, health 3, as vm show says" test \
	"$(metric hvresync_vm_replication_state 'vm="bad"') $(metric hvresync_vm_replication_health 'vm="bad"')" = \
	"$(vmf p bad ReplicationState) $(vmf p bad ReplicationHealth)"
check "  ... which is 9 3" test "$(vmf p bad ReplicationState) $(vmf p bad ReplicationHealth)" = "9 3"
check "bad never succeeded: no last-success sample" \
	test -z "$(metric hvresync_vm_last_success_time_seconds 'vm="bad"')"

say "a refused peer and a refused control caller count"
"$HVRESYNC" keygen wrongkey >/dev/null || fail "keygen wrongkey"
"$HVRESYNC" push --psk-file wrongkey p/data.vhdx "127.0.0.1:$PP/good:data.vhdx" \
	>/dev/null 2>push.err
check "a push with the wrong key to the primary's listener fails (exit 2)" test $? = 2
# past a loosened socket, so that SO_PEERCRED is what refuses nobody
chmod 711 "$S"
chmod 755 "$S/run"
chmod 666 "$(sock p)"
timeout -k 5 30 runuser -u nobody -- "$HVRESYNC" vm list --control "$(sock p)" >/dev/null 2>&1
wait_metric 10 hvresync_refused_connections_total 'listener="control"' 1 ||
	fail "refused control connections counted"
check "the refused peer is counted (listener=\"peer\")" \
	test "$(metric hvresync_refused_connections_total 'listener="peer"')" = 1

# ---------------------------------------------------------------------------
say "a running job (slow: --bwlimit 512K, 80 s if nobody cancelled it)"
stop_agent p
start_agent p --bwlimit 512K || fail "primary with --bwlimit"
fill p/os.vhdx 4M 40M
expect_rv "resync good again" 4096 p good
JS=$JOB
# Progress shows while the data of the pending blocks goes out: 16 MiB
# of them take 32 s at 512K/s, and the job once stood at 1 % that long.
# 4 MiB are unchanged, so 8 % is some of the changed data sent.
wait_percent p "$JS" 8 15 || fail "the slow job's percent moves while it sends"
wait_metric 15 hvresync_job_state 'vm="good"' 4 || fail "the file shows the running job"
# the file written when it started says nothing compared; within 10 s it
# shows progress (the check phase alone already moves the ratio)
END=$((SECONDS + 15))
while [ "$(metric hvresync_job_compared_bytes 'vm="good"')" = 0 ] && [ $SECONDS -le $END ]; do
	sleep 0.2
done
W1=$(metric hvresync_metrics_write_time_seconds)
cp "$M" m-running.prom
promcheck "during a running job"
hv p job show "$JS" --json >js.json
check "the running job's figures are not ahead of job show" python3 - js.json m-running.prom <<'EOF'
import json, re, sys
j = json.load(open(sys.argv[1]))["Instance"]
m = {}
for l in open(sys.argv[2]):
    g = re.match(r'^(\w+)\{([^}]*)\} (\S+)$', l.strip())
    if g and 'vm="good"' in g.group(2) and 'disk=' not in g.group(2):
        m[g.group(1)] = float(g.group(3))
assert m["hvresync_job_state"] == 4
r = m["hvresync_job_complete_ratio"]
assert 0 < r < 1 and round(r * 100, 6) <= j["PercentComplete"], (r, j["PercentComplete"])
assert 0 < m["hvresync_job_compared_bytes"] <= j["BytesCompared"], (m, j["BytesCompared"])
assert m["hvresync_job_sent_bytes"] <= j["BytesSent"]
assert m["hvresync_vm_replication_state"] == 10 and m["hvresync_vm_replication_health"] == 2
EOF
check "one session out" grep -q '^hvresync_peer_sessions{direction="out"} 1$' m-running.prom
# the file is rewritten at least every 10 s while the job runs: watch
# its write time change for 25 s
check "rewritten at least every 10 s while the job runs" python3 - "$M" <<'EOF'
import re, sys, time
def wt():
    for l in open(sys.argv[1]):
        if l.startswith("hvresync_metrics_write_time_seconds "):
            return float(l.split()[1])
seen = [wt()]
end = time.monotonic() + 25
while time.monotonic() < end:
    t = wt()
    if t != seen[-1]:
        seen.append(t)
    time.sleep(0.1)
gaps = [b - a for a, b in zip(seen, seen[1:])]
print("    %d rewrites, gaps (s):" % len(gaps), " ".join("%.1f" % g for g in gaps))
assert len(gaps) >= 2 and max(gaps) <= 11, gaps
EOF
check "the job still runs" test "$(jobf p "$JS" JobState)" = 4
hv p job cancel "$JS" >/dev/null 2>&1
wait_job p "$JS" 30 8 || fail "cancel the slow job"
wait_metric 10 hvresync_jobs_cancelled_total '' 1 || fail "cancelled counter is 1"
check "no running job left in the file" test -z "$(metric hvresync_job_state 'vm="good"')"

# ---------------------------------------------------------------------------
say "the last successful resync survives a restart"
stop_agent p
start_agent p || fail "primary restart"
check "vm show still has the figures of job $JG" python3 - jg.json "$(hv p vm show good --json)" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["Instance"]
v = json.loads(sys.argv[2])["Instance"]
for k in ("BytesCompared", "BytesDifferent", "BytesSent"):
    assert v["LastSuccessfulResync" + k] == j[k], (k, v, j[k])
EOF
wait_metric 10 hvresync_jobs_failed_total '' 0 || fail "counters start from 0 again"
check "the file shows the last success again" test \
	"$(metric hvresync_vm_last_success_compared_bytes 'vm="good"')" = "$(py 'd["Instance"]["BytesCompared"]' <jg.json)"
promcheck "after the restart"

say "push --metrics-file: one push's outcome"
fill p/data.vhdx 5M 1M
"$HVRESYNC" push --json --psk-file psk --metrics-file "$S/pushprom/push.prom" \
	p/data.vhdx "127.0.0.1:$RP/good:data.vhdx" >push.json 2>push.err
check "push exits 0 ($(head -c 200 push.err))" test $? = 0
if promtool check metrics <pushprom/push.prom >promtool.out 2>&1; then
	ok "push: promtool check metrics has no complaint"
else
	fail "push: promtool check metrics complains"
	sed 's/^/    | /' promtool.out | head -n 10
fi
check "push.prom's sent bytes are push's bytes_sent" python3 - push.json pushprom/push.prom <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
sent = [l for l in open(sys.argv[2]) if l.startswith("hvresync_") and "sent_bytes" in l]
assert sent, "no sent_bytes sample"
assert any(float(l.split()[-1]) == j["bytes_sent"] for l in sent), (sent, j["bytes_sent"])
assert j["bytes_sent"] > 0
EOF
"$HVRESYNC" push --psk-file psk --metrics-file "$S/pushprom/push.prom" \
	p/data.vhdx "127.0.0.1:$DEAD/good:data.vhdx" >/dev/null 2>push.err
check "a failed push exits 2" test $? = 2
check "and its metrics file says it failed" python3 - pushprom/push.prom <<'EOF'
import sys
ok = [l for l in open(sys.argv[1]) if not l.startswith("#") and "success" in l.split("{")[0] and "time" not in l]
assert ok and all(float(l.split()[-1]) == 0 for l in ok), ok
EOF

touch "$S/reader.stop"
wait "$READER"
check "the polling reader never saw a partial file ($(tail -n1 reader.out))" \
	python3 -c "import sys; r, b = open('reader.out').read().split()[-3::2]; sys.exit(not (int(r) > 50 and int(b) == 0))"
check "no temporary file is left" bash -c "! ls -A prom | grep -v '^hvresync.prom$' | grep -q ."
finish
