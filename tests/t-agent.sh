#!/bin/bash
# t-agent.sh - `hvresync agent`, `resync`, `job` and `vm` for real: a
# primary and a recovery agent on loopback (TLS with a pre-shared key),
# each with its own state dir and control socket.  A VM of two
# replication-enabled disks and one excluded disk is resynchronized and
# checked with qemu-img compare (excluded replica untouched, by sha256);
# every Resynchronize return value comes from a real request; then
# scheduled jobs (also across a restart), two clients at once, a failed
# job, --wait timeouts, cancel, suspend and resume, SIGKILL mid-job and
# resume, finished-job expiry, auto-resync, sd_notify, daemon mode and
# start-up errors.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

[ "$(id -u)" = 0 ] || skip "needs root (useradd, runuser, chown)"
for t in runuser useradd userdel groupadd groupdel usermod; do
	command -v "$t" >/dev/null || skip "$t not installed"
done
S=$SCRATCH
cd "$S" || exit 1
chmod 711 "$S" # the unprivileged test user must reach run/
chmod 755 "$S/run"

TUSER=hvtestuser
TGROUP=hvtestgrp
MADE_USER= MADE_GROUP=
t_agent_cleanup() {
	[ -n "$MADE_USER" ] && userdel "$TUSER" 2>/dev/null
	[ -n "$MADE_GROUP" ] && groupdel "$TGROUP" 2>/dev/null
	agent_cleanup
}
trap t_agent_cleanup EXIT
id "$TUSER" >/dev/null 2>&1 && skip "user $TUSER exists already (left over?)"
getent group "$TGROUP" >/dev/null && skip "group $TGROUP exists already (left over?)"
groupadd "$TGROUP" && MADE_GROUP=1
useradd -M -N -g nogroup "$TUSER" 2>/dev/null || useradd -M "$TUSER"
id "$TUSER" >/dev/null 2>&1 && MADE_USER=1

# ---------------------------------------------------------------------------
say "setup: disks, a pre-shared key, two agents"
mkdir -p p r adir.vhdx
for d in p r; do
	"$HVRESYNC" create $d/os.vhdx 64M >/dev/null &&
		"$HVRESYNC" create $d/data.vhdx 32M >/dev/null &&
		"$HVRESYNC" create $d/swap.vhdx 16M >/dev/null &&
		"$HVRESYNC" create $d/n.vhdx 8M >/dev/null || fail "hvresync create in $d"
done
fill p/os.vhdx 0 8M
fill p/os.vhdx 40M 1M
fill p/data.vhdx 4M 2M
fill p/swap.vhdx 0 1M
fill r/swap.vhdx 0 1M
fill p/n.vhdx 1M 1M
SWAP_SHA=$(sha r/swap.vhdx)
"$HVRESYNC" keygen psk >/dev/null || fail "keygen"
PP=$(free_port)
RP=$(free_port)
# auto-resync windows around now and well away from it (local time)
read -r WIN_NOW WIN_LATER < <(python3 -c '
import time
m = time.localtime().tm_hour * 60 + time.localtime().tm_min
f = lambda a: "%02d:%02d" % (a % 1440 // 60, a % 60)
print(f(m - 120) + "-" + f(m + 120), f(m + 180) + "-" + f(m + 240))')

cat >p.conf <<EOF
[agent]
# a refused peer fails the job at once (the default retries for minutes)
retries = 0
listen = 127.0.0.1:$PP
control = $S/run/p.sock
state-dir = $S/p-state
psk-file = $S/psk
admin-group = $TGROUP

[vm demo]
id = 0b5e1f3c-6a57-4d0e-9d43-0c1a3e5f7a21
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/os.vhdx
disk = $S/p/data.vhdx
exclude = $S/p/swap.vhdx

[vm ghost]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/missing.vhdx

[vm empty]
role = primary
replica = 127.0.0.1:$RP

[vm dirdisk]
role = primary
replica = 127.0.0.1:$RP
disk = $S/adir.vhdx

[vm nightly]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/n.vhdx
auto-resync = $WIN_NOW

[vm offpeak]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/n.vhdx
auto-resync = $WIN_LATER
EOF
cat >r.conf <<EOF
[agent]
# a refused peer fails the job at once (the default retries for minutes)
retries = 0
listen = 127.0.0.1:$RP
control = $S/run/r.sock
state-dir = $S/r-state
psk-file = $S/psk
admin-group = $TGROUP

[vm demo]
role = replica
disk = $S/r/os.vhdx
disk = $S/r/data.vhdx
exclude = $S/r/swap.vhdx

[vm nightly]
role = replica
disk = $S/r/n.vhdx
EOF
start_agent r || { fail "recovery agent"; finish; }
start_agent p || { fail "primary agent"; finish; }
check "control socket is mode 0660, group $TGROUP" \
	test "$(stat -c '%a %G' run/p.sock)" = "660 $TGROUP"
check "log lines carry journald priorities" grep -q '^<6>agent ready' p.log
check "the excluded disk is not exported" \
	bash -c "! grep -q 'swap.vhdx' r.log"
check "the recovery agent exports demo:os.vhdx" grep -q 'export demo:os.vhdx' r.log
check "a new VM is 1 Ready for replication" test "$(vmf p demo ReplicationState)" = 1
check "ReplicationMode: primary 1" test "$(vmf p demo ReplicationMode)" = 1
check "ReplicationMode: replica 2" test "$(vmf r demo ReplicationMode)" = 2

# ---------------------------------------------------------------------------
say "a VM resync over TLS (PSK): Completed, disks identical, excluded disk untouched"
hv p resync demo --wait >wait.out 2>wait.err
RC=$?
check "resync --wait exits 0" test "$RC" -eq 0
check "it prints ReturnValue 4096 with its name" \
	grep -q '^ReturnValue: 4096 (Method parameters checked, job started)$' wait.out
J1=$(sed -n 's/^Job: //p' wait.out)
check "it prints the job's InstanceID" test -n "$J1"
check "os.vhdx identical (qemu-img compare)" same p/os.vhdx r/os.vhdx
check "data.vhdx identical (qemu-img compare)" same p/data.vhdx r/data.vhdx
check "the excluded disk's replica is untouched (sha256)" test "$(sha r/swap.vhdx)" = "$SWAP_SHA"
check "the excluded disks still differ" bash -c "! qemu-img compare -q p/swap.vhdx r/swap.vhdx"
check "no differencing child is left on the recovery side" \
	bash -c "! ls r/*.hvresync.avhdx 2>/dev/null | grep -q ."
hv p job show "$J1" --json >job.json
check "the job's properties (Msvm_ConcreteJob names, CIM formats)" python3 - job.json "$J1" <<'EOF'
import json, re, sys
d = json.load(open(sys.argv[1]))
j = d["Instance"]
assert d["ReturnValue"] == 0, d
assert j["InstanceID"] == sys.argv[2]
assert j["JobType"] == 107 and j["JobState"] == 7, j
assert j["PercentComplete"] == 100 and j["ErrorCode"] == 0, j
assert j["Cancellable"] is False
dt = re.compile(r"^\d{14}\.\d{6}[+-]\d{3}$")
iv = re.compile(r"^\d{14}\.\d{6}:000$")
for k in ("TimeSubmitted", "StartTime", "TimeOfLastStateChange"):
    assert dt.match(j[k]), (k, j[k])
assert j["ScheduledStartTime"] is None
assert iv.match(j["ElapsedTime"]) and iv.match(j["TimeBeforeRemoval"])
assert "00000000000500.000000:000" >= j["TimeBeforeRemoval"] > "00000000000400.000000:000"
assert j["ElementName"] == "demo"
assert j["BytesCompared"] == (64 + 32) << 20, j["BytesCompared"]
# what differed: 8 MiB + 1 MiB of os.vhdx and 2 MiB of data.vhdx
assert j["BytesDifferent"] == 11 << 20, j["BytesDifferent"]
assert 0 < j["BytesSent"] <= (11 << 20) + (1 << 20), j["BytesSent"]
assert [x["Merged"] for x in j["Disks"]] == [True, True]
EOF
check "VM after success: ReplicationState 3, health 1, LastJob" test \
	"$(vmf p demo ReplicationState) $(vmf p demo ReplicationHealth) $(vmf p demo LastJob)" = "3 1 $J1"
in_job_list() { hv p job list | grep -q "^$1 .* 7 Completed"; }
check "the job is in 'job list'" in_job_list "$J1"
check "the VM is found by its id too" \
	test "$(vmf p '{0B5E1F3C-6A57-4D0E-9D43-0C1A3E5F7A21}' ElementName)" = demo

# ---------------------------------------------------------------------------
say "Resynchronize return values, each from a real request"
expect_rv "unknown VM" 32773 p nosuchvm
expect_rv "malformed StartTime" 32773 p demo --start-time tomorrow
expect_rv "StartTime in the past" 32773 p demo --start-time 2001-01-01T00:00:00Z
expect_rv "StartTime more than 7 days ahead" 32773 p demo \
	--start-time "$(date -u -d '+8 days' +%Y%m%d%H%M%S.000000+000)"
expect_rv "a replication-enabled disk is missing" 32779 p ghost
expect_rv "a VM with no replication-enabled disks" 32775 p empty
check "RequestReplicationStateChange: failover in progress (12)" \
	bash -c "timeout 30 '$HVRESYNC' vm set-state demo 12 --control '$S/run/p.sock' | grep -q '^ReturnValue: 0 '"
expect_rv "failover in progress" 32775 p demo
check "ReplicationState 12 is shown" test "$(vmf p demo ReplicationState)" = 12
hv p vm set-state demo 3 >/dev/null || fail "set-state back to 3"
expect_rv "a replica VM without an extended replica" 32770 r demo
expect_rv "a disk that is a directory (other failure)" 32768 p dirdisk
OUT=$(timeout 30 "$HVRESYNC" resync demo --json --control "$S/run/nothing.sock" 2>none.err)
RC=$?
check "no agent on the socket: 32777, exit 2 ($(cat none.err))" \
	test "$(echo "$OUT" | py 'd["ReturnValue"]') $RC $(wc -l <none.err)" = "32777 2 1"
expect_rv "a scheduled resync" 4096 p demo --start-time "$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)"
JS=$JOB
hv p resync demo --json >json.out --start-time "$(date -d '+2 hours' '+%Y-%m-%d %H:%M')" 2>/dev/null
check "--json prints exactly {\"ReturnValue\": N, \"Job\": ...}" \
	grep -qx '{"ReturnValue": 32774, "Job": null}' json.out
expect_rv "a resync already scheduled for the VM" 32774 p demo
check "the scheduled job is New with its ScheduledStartTime" \
	test "$(jobf p "$JS" JobState) $(jobf p "$JS" ScheduledStartTime | cut -c1-2)" = "2 20"
check "VM with a scheduled resync: 9 waiting to start" test "$(vmf p demo ReplicationState)" = 9
hv p job cancel "$JS" >cancel.out 2>&1
check "cancelling a scheduled job: ReturnValue 0, Terminated" \
	test "$(head -c 14 cancel.out) $(jobf p "$JS" JobState)" = "ReturnValue: 0 8"
check "a cancel of a finished job is 4097" bash -c \
	"timeout 30 '$HVRESYNC' job cancel $JS --control '$S/run/p.sock' 2>/dev/null | grep -q '^ReturnValue: 4097 '"

# wrong JSON types need a hand-made request
R=$(raw p '{"Method": "Resynchronize", "ComputerSystem": 5}')
check "ComputerSystem of the wrong type: 32776 ($R)" \
	test "$(echo "$R" | py 'd["ReturnValue"]')" = 32776
R=$(raw p '{"Method": "Resynchronize", "ComputerSystem": "demo", "StartTime": 20261124}')
check "StartTime of the wrong type: 32776" test "$(echo "$R" | py 'd["ReturnValue"]')" = 32776
R=$(raw p '{"Method": "RequestStateChange", "Job": "'"$JS"'", "RequestedState": "4"}')
check "RequestedState of the wrong type: 32776" test "$(echo "$R" | py 'd["ReturnValue"]')" = 32776
R=$(raw p '{"Method": "Resynchronize", "ComputerSystem": "demo", "Sources": {"os.vhdx": 1}}')
check "a Sources path of the wrong type: 32776" test "$(echo "$R" | py 'd["ReturnValue"]')" = 32776
R=$(raw p '{"Method": "Resynchronize", "ComputerSystem": "demo"')
check "a malformed request: 32773, the agent goes on" \
	test "$(echo "$R" | py 'd["ReturnValue"]') $(vmf p demo ElementName)" = "32773 demo"
R=$(raw p '{"Method": "Reformat"}')
check "an unknown method: 32770" test "$(echo "$R" | py 'd["ReturnValue"]')" = 32770

# 32769: the test user is neither root nor in the admin group
asuser() { timeout -k 5 30 runuser -u "$TUSER" -- "$HVRESYNC" "$@"; }
OUT=$(asuser resync demo --json --control "$S/run/p.sock" 2>asuser.err)
check "non-admin (socket permissions): 32769 ($(head -c 120 asuser.err))" \
	test "$(echo "$OUT" | py 'd["ReturnValue"]')" = 32769
chmod 666 run/p.sock
OUT=$(asuser resync demo --json --control "$S/run/p.sock" 2>asuser.err)
check "non-admin past a loosened socket (SO_PEERCRED): 32769 ($(head -c 120 asuser.err))" \
	test "$(echo "$OUT" | py 'd["ReturnValue"]')" = 32769
check "  ... and the agent logs the refusal" grep -q "refused uid $(id -u $TUSER)" p.log
OUT=$(asuser vm list --json --control "$S/run/p.sock" 2>/dev/null)
check "non-admin cannot even list VMs" test "$(echo "$OUT" | py 'd["ReturnValue"]')" = 32769
chmod 660 run/p.sock
usermod -a -G "$TGROUP" "$TUSER"
OUT=$(asuser vm show demo --json --control "$S/run/p.sock" 2>asuser.err)
check "a member of admin-group (supplementary group) is let in" \
	test "$(echo "$OUT" | py 'd["ReturnValue"]')" = 0

# 32778 (out of memory): real allocation failures inside the agent, from
# an LD_PRELOAD calloc() that, once the flag file appears, lets as many
# calls through as the file has bytes (N) and fails every later one.
# Swept from N = 0 up, a scheduled Resynchronize fails at each allocation
# in turn (the control connection, its thread, the request, the job and
# its record): every one must answer 32778, leave no job behind and the
# agent answering, until the first N with room enough gives 4096.  Where
# the shim cannot work, the sub-check says SKIP and the script goes on.
stop_agent p
cat >nomem.c <<'EOF'
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
extern void *__libc_calloc(size_t n, size_t size);
void *calloc(size_t n, size_t size)
{
	static const char *flag;
	static unsigned long long gen;
	static long seen;
	struct stat st;

	if (!flag)
		flag = getenv("NOMEM_FLAG");
	if (flag && stat(flag, &st) == 0) {
		/* a new flag file (size, inode, mtime) starts the count again */
		unsigned long long g = (unsigned long long)st.st_size << 48 ^
				       (unsigned long long)st.st_ino << 20 ^
				       (unsigned long long)st.st_mtim.tv_nsec;

		if (__atomic_exchange_n(&gen, g, __ATOMIC_SEQ_CST) != g)
			__atomic_store_n(&seen, 0, __ATOMIC_SEQ_CST);
		if (__atomic_fetch_add(&seen, 1, __ATOMIC_SEQ_CST) >= st.st_size) {
			errno = ENOMEM;
			return NULL;
		}
	}
	return __libc_calloc(n, size);
}
EOF
cat >nomem-probe.c <<'EOF'
#include <stdlib.h>
int main(void) { return calloc(1, 16) != NULL; } /* 0: the shim failed it */
EOF
NOMEM_SKIP=
if ! command -v cc >/dev/null; then
	NOMEM_SKIP="no C compiler for the calloc shim"
elif ! cc -shared -fPIC -O1 -o nomem.so nomem.c 2>nomem.err ||
	! cc -O1 -o nomem-probe nomem-probe.c 2>>nomem.err; then
	NOMEM_SKIP="the calloc shim does not build: $(head -n1 nomem.err)"
elif ! ldd "$HVRESYNC" 2>/dev/null | grep -q 'libc\.so'; then
	NOMEM_SKIP="$HVRESYNC is not linked against a shared libc: LD_PRELOAD cannot reach its calloc()"
elif ldd "$HVRESYNC" 2>/dev/null | grep -q libasan; then
	NOMEM_SKIP="$HVRESYNC is built with ASan, which owns calloc()"
elif ! { : >nomem.flag && LD_PRELOAD=$S/nomem.so NOMEM_FLAG=$S/nomem.flag ./nomem-probe 2>nomem.err; }; then
	NOMEM_SKIP="the calloc shim does not take effect under LD_PRELOAD: $(head -n1 nomem.err)"
fi
rm -f nomem.flag
if [ -n "$NOMEM_SKIP" ]; then
	echo "SKIP: 32778 (out of memory) not exercised: $NOMEM_SKIP"
elif LD_PRELOAD=$S/nomem.so NOMEM_FLAG=$S/nomem.flag start_agent p; then
	LATER=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
	njobs() { hv p job list --vm demo --json | py 'len(d["Jobs"])'; }
	NJ0=$(njobs)
	LOG0=$(wc -l <p.log)
	NOMEM_BAD= NOMEM_N= NOMEM_WHY=()
	for n in $(seq 0 40); do
		rm -f nomem.flag
		head -c "$n" /dev/zero >nomem.flag
		rv p demo --start-time "$LATER"
		rm -f nomem.flag
		[ "$RV" = 4096 ] && { NOMEM_N=$n; break; }
		if [ "$RV" != 32778 ]; then
			NOMEM_BAD="N=$n: ReturnValue $RV, want 32778 ($(head -c 150 rv.err))"
			break
		fi
		NOMEM_WHY+=("$n: $(sed -n 's/.*(Out of memory): //p' rv.err | cut -c1-40)")
		if [ "$(vmf p demo ElementName)" != demo ] || [ "$(njobs)" != "$NJ0" ]; then
			NOMEM_BAD="N=$n: after 32778 the agent does not answer or a job was left behind"
			break
		fi
	done
	check "allocation failures answer 32778, $NOMEM_N of them before the request fits${NOMEM_BAD:+: $NOMEM_BAD}" \
		test -z "$NOMEM_BAD" -a "${NOMEM_N:-0}" -ge 1
	printf '    %s\n' "${NOMEM_WHY[@]}"
	REFUSED=$(tail -n +$((LOG0 + 1)) p.log | grep -c 'Resynchronize refused with 32778: ')
	check "  ... $REFUSED of them in Resynchronize itself (its log says so), the rest before it (N=0: the control connection)" \
		test "$REFUSED" -ge 1 -a "$REFUSED" -lt "${#NOMEM_WHY[@]}"
	check "  ... the refused requests left no job, the one that fits left one" \
		test "$(njobs)" = "$((NJ0 + 1))"
	[ "$RV" = 4096 ] && { hv p job cancel "$JOB" >/dev/null || fail "cancel the job that fit"; }
	stop_agent p
else
	fail "agent under nomem.so"
fi

# ---------------------------------------------------------------------------
say "two clients at once: exactly one 4096"
start_agent p || fail "primary restart"
LATER=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
for round in 1 2 3; do
	python3 - "$S/run/p.sock" "$LATER" >race.out <<'EOF'
import json, socket, sys, threading
path, start = sys.argv[1], sys.argv[2]
barrier = threading.Barrier(8)
out = []
def one():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    req = json.dumps({"Method": "Resynchronize", "ComputerSystem": "demo",
                      "StartTime": start}).encode() + b"\n"
    barrier.wait()
    s.sendall(req)
    buf = b""
    while not buf.endswith(b"\n"):
        buf += s.recv(4096)
    out.append(json.loads(buf))
ts = [threading.Thread(target=one) for _ in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
print(" ".join(sorted(str(r["ReturnValue"]) for r in out)))
print([r["Job"] for r in out if r["ReturnValue"] == 4096][0])
EOF
	check "round $round, 8 clients: $(head -n1 race.out)" \
		test "$(head -n1 race.out)" = "32774 32774 32774 32774 32774 32774 32774 4096"
	hv p job cancel "$(sed -n 2p race.out)" >/dev/null || fail "cancel the race's job"
done
hv p resync demo --start-time "$LATER" --json >c1.out 2>/dev/null &
C1=$!
hv p resync demo --start-time "$LATER" --json >c2.out 2>/dev/null &
C2=$!
wait $C1
wait $C2
check "two CLI clients: one 4096, one 32774" test \
	"$( (py 'd["ReturnValue"]' <c1.out; py 'd["ReturnValue"]' <c2.out) | sort | tr '\n' ' ')" = "32774 4096 "
check "--json of an accepted request: {\"ReturnValue\": 4096, \"Job\": \"ID\"}" \
	grep -qxE '\{"ReturnValue": 4096, "Job": "[0-9A-F-]{36}"\}' c1.out c2.out
hv p job cancel "$(cat c1.out c2.out | sed -n 's/.*"Job": "\([^"]*\)".*/\1/p')" >/dev/null ||
	fail "cancel the CLI race's job"

# ---------------------------------------------------------------------------
say "a job that cannot reach the recovery agent ends in Exception"
stop_agent r
hv p resync demo --wait >down.out 2>down.err
RC=$?
JD=$(sed -n 's/^Job: //p' down.out)
check "resync --wait exits non-zero when the job fails" test "$RC" -ne 0
check "JobState 10, ErrorCode 32777 ($(jobf p "$JD" ErrorDescription))" \
	test "$(jobf p "$JD" JobState) $(jobf p "$JD" ErrorCode)" = "10 32777"
check "the VM needs a resync: ReplicationState 9, health 3 (critical)" \
	test "$(vmf p demo ReplicationState) $(vmf p demo ReplicationHealth)" = "9 3"
start_agent r || fail "recovery agent restart"

# ---------------------------------------------------------------------------
say "a scheduled job starts at its time, also across an agent restart"
fill p/data.vhdx 10M 1M
AT=$(date -u -d '+6 seconds' +%Y%m%d%H%M%S.000000+000)
expect_rv "resync at $AT (CIM datetime)" 4096 p demo --start-time "$AT"
JT=$JOB
check "it is New and ScheduledStartTime is the time asked for" python3 - \
	"$(hv p job show "$JT" --json)" "$AT" <<'EOF'
import json, sys, datetime as dt
j = json.loads(sys.argv[1])["Instance"]
def t(s):
    off = int(s[21:25])
    return dt.datetime.strptime(s[:14], "%Y%m%d%H%M%S").replace(
        tzinfo=dt.timezone(dt.timedelta(minutes=off)))
assert j["JobState"] == 2, j["JobState"]
assert t(j["ScheduledStartTime"]) == t(sys.argv[2]), (j["ScheduledStartTime"], sys.argv[2])
assert j["StartTime"] is None
EOF
stop_agent p
check "the agent stops on SIGTERM with status 0" test "$AGENT_RC" -eq 0
start_agent p || fail "primary restart"
check "after the restart the job is still New" test "$(jobf p "$JT" JobState)" = 2
wait_job p "$JT" 30 7 8 9 10
check "it ran and Completed" test "$(jobf p "$JT" JobState)" = 7
check "StartTime is at, not before, ScheduledStartTime" python3 - \
	"$(hv p job show "$JT" --json)" <<'EOF'
import json, sys, datetime as dt
j = json.loads(sys.argv[1])["Instance"]
def t(s):
    off = int(s[21:25])
    return dt.datetime.strptime(s[:21], "%Y%m%d%H%M%S.%f").replace(
        tzinfo=dt.timezone(dt.timedelta(minutes=off)))
d = (t(j["StartTime"]) - t(j["ScheduledStartTime"])).total_seconds()
assert 0 <= d < 3, d
EOF
check "data.vhdx identical after the scheduled job" same p/data.vhdx r/data.vhdx

# ---------------------------------------------------------------------------
say "slow jobs (--bwlimit 8M): --wait timeout, cancel, suspend and resume, SIGKILL"
stop_agent p
start_agent p --bwlimit 8M || fail "primary with --bwlimit"
fill p/os.vhdx 16M 40M
R_OS=$(sha r/os.vhdx)
OUT=$(hv p resync demo --wait --timeout 1 --json 2>tmo.err)
RC=$?
JC=$(echo "$OUT" | py 'd["Job"]')
check "--wait --timeout 1 on a slow job: 32772, exit 2" \
	test "$(echo "$OUT" | py 'd["ReturnValue"]') $RC" = "32772 2"
check "  ... the job goes on (Running)" test "$(jobf p "$JC" JobState)" = 4
wait_percent p "$JC" 20 20 || fail "the slow job makes progress"
hv p job cancel "$JC" >cancel.out 2>&1
check "cancel a running job: 4096 ($(head -n1 cancel.out))" grep -q '^ReturnValue: 4096 ' cancel.out
wait_job p "$JC" 30 8 || fail "cancelled job reaches Terminated"
check "the job is Terminated (8)" test "$(jobf p "$JC" JobState)" = 8
check "the recovery image is untouched after cancel (sha256)" test "$(sha r/os.vhdx)" = "$R_OS"
check "the recovery side's partial copy was discarded" test ! -e r/os.vhdx.hvresync.avhdx
check "the VM is left 9 (resynchronization required)" test "$(vmf p demo ReplicationState)" = 9

expect_rv "resync for suspend and resume" 4096 p demo
JR=$JOB
wait_percent p "$JR" 30 20 || fail "progress before suspend"
hv p job suspend "$JR" --wait >susp.out 2>&1
check "suspend --wait: 0 once Suspended ($(head -n1 susp.out))" grep -q '^ReturnValue: 0 ' susp.out
check "the job is Suspended (5)" test "$(jobf p "$JR" JobState)" = 5
check "the VM is 11 (resynchronization suspended)" test "$(vmf p demo ReplicationState)" = 11
B1=$(jobf p "$JR" BytesCompared)
P1=$(jobf p "$JR" PercentComplete)
sleep 1.5
B2=$(jobf p "$JR" BytesCompared)
check "nothing moves while suspended ($B1, then $B2 bytes compared)" test "$B2" = "$B1"
check "the recovery image is untouched while suspended" test "$(sha r/os.vhdx)" = "$R_OS"
check "suspend of a suspended job: 0" \
	bash -c "timeout 30 '$HVRESYNC' job suspend $JR --control '$S/run/p.sock' | grep -q '^ReturnValue: 0 '"
LINES=$(wc -l <r.log)
hv p job resume "$JR" >res.out 2>&1
check "resume: 4096 ($(head -n1 res.out))" grep -q '^ReturnValue: 4096 ' res.out
wait_job p "$JR" 60 7 8 9 10 || fail "resumed job finishes"
check "the resumed job Completed" test "$(jobf p "$JR" JobState)" = 7
check "os.vhdx identical after suspend and resume" same p/os.vhdx r/os.vhdx
check "the recovery side resumed where it stopped (was at $P1 %, resumed at $(hv p job show "$JR" --json | py 'd["Instance"]["Disks"][0]["ResumeOffset"]'))" \
	test "$(hv p job show "$JR" --json | py 'd["Instance"]["Disks"][0]["ResumeOffset"] > 0')" = True
check "  ... as the recovery agent's log says" \
	grep -qE "export demo:os\.vhdx: .*(starts at|from) [1-9][0-9]* of" <(tail -n +"$LINES" r.log)
check "the resumed job did not compare everything twice" python3 -c "
import sys; b = int('$(jobf p "$JR" BytesCompared)')
sys.exit(not (96 << 20) <= b < (96 << 20) + (24 << 20))"

fill p/os.vhdx 8M 48M
expect_rv "resync to be killed" 4096 p demo
JK=$JOB
wait_percent p "$JK" 35 20 || fail "progress before SIGKILL"
kill_agent p
check "the job record survives SIGKILL as Running" python3 -c "
import json; j = json.load(open('$S/p-state/jobs/$JK.json'))
assert j['JobState'] == 4 and j['Phase'] == 'send', j"
LINES=$(wc -l <r.log)
start_agent p --bwlimit 8M || fail "primary restart after SIGKILL"
check "after the restart the job runs again" test "$(jobf p "$JK" JobState)" -le 4
wait_job p "$JK" 60 7 8 9 10 || fail "restarted job finishes"
check "the job resumed after SIGKILL Completed" test "$(jobf p "$JK" JobState)" = 7
check "os.vhdx identical after SIGKILL and resume" same p/os.vhdx r/os.vhdx
check "the recovery side resumed where the killed session stopped ($(hv p job show "$JK" --json | py 'd["Instance"]["Disks"][0]["ResumeOffset"]'))" \
	test "$(hv p job show "$JK" --json | py 'd["Instance"]["Disks"][0]["ResumeOffset"] > 0')" = True
check "  ... as the recovery agent's log says" \
	grep -qE "export demo:os\.vhdx: .*(starts at|from) [1-9][0-9]* of" <(tail -n +"$LINES" r.log)

# ---------------------------------------------------------------------------
say "finished jobs expire (--job-retention 3); auto-resync inside its window"
stop_agent p
start_agent p --job-retention 3 || fail "primary with --job-retention"
hv p vm set-state offpeak 9 >/dev/null
hv p vm set-state nightly 9 >/dev/null
for i in $(seq 50); do
	JN=$(hv p job list --vm nightly --json | py '[j["InstanceID"] for j in d["Jobs"]][0] if d["Jobs"] else ""')
	[ -n "$JN" ] && break
	sleep 0.1
done
check "a VM in state 9 inside its window gets a job at once ($JN)" test -n "$JN"
check "  ... marked AutoResynchronize" test "$(jobf p "$JN" AutoResynchronize)" = True
# The job's final record is in the agent's log: with a 3 s retention the
# job itself may be gone before a loaded machine gets to ask for it.
for i in $(seq 300); do
	grep -q "job $JN [A-Z][a-z]*: {" p.log && break
	sleep 0.1
done
check "auto job finishes: Completed ($(grep -o "job $JN [A-Z][a-z]*: " p.log | head -n 1))" \
	grep -q "job $JN Completed: {\"InstanceID\":\"$JN\"" p.log
check "  ... and the VM is 3 again" test "$(vmf p nightly ReplicationState)" = 3
check "  ... n.vhdx identical" same p/n.vhdx r/n.vhdx
check "a VM in state 9 outside its window gets no job" \
	test "$(hv p job list --vm offpeak --json | py 'len(d["Jobs"])') $(vmf p offpeak ReplicationState)" = "0 9"
sleep 4
R=$(raw p '{"Method": "GetJob", "Job": "'"$JN"'"}')
check "3 s after it finished the job is gone (32773)" \
	test "$(echo "$R" | py 'd["ReturnValue"]')" = 32773
check "  ... and kept in the log" bash -c \
	"grep -q 'job $JN Completed: {\"InstanceID\":\"$JN\"' p.log && grep -q 'job $JN .* removed' p.log"
check "  ... and its record is gone from the state dir" test ! -e "p-state/jobs/$JN.json"

# ---------------------------------------------------------------------------
say "sd_notify, daemon mode, start-up errors"
stop_agent p
python3 - "$S/notify.sock" >notify.out <<'EOF' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(20)
try:
    while True:
        m = s.recv(4096).decode()
        print(m.replace("\n", " | "), flush=True)
        if "READY=1" in m:
            break
except socket.timeout:
    pass
EOF
NPID=$!
for i in $(seq 50); do [ -S notify.sock ] && break; sleep 0.05; done
NOTIFY_SOCKET=$S/notify.sock timeout -k 5 30 "$HVRESYNC" agent --config p.conf 2>daemon.err
RC=$?
wait $NPID
check "without -f the agent detaches once ready (exit $RC)" test "$RC" -eq 0
check "sd_notify READY=1 ($(tr '\n' ' ' <notify.out | head -c 120))" grep -q 'READY=1' notify.out
check "sd_notify STATUS=" grep -q 'STATUS=' notify.out
DPID=$(cat p-state/agent.lock)
AGENT_PID[pd]=$DPID
check "the detached agent answers; agent.lock names it ($DPID)" \
	test "$(vmf p demo ElementName)" = demo -a -d "/proc/$DPID"
out=$("$HVRESYNC" agent -f --config p.conf 2>&1)
check "a second agent on the same state dir is refused: $out" \
	bash -c "[[ '$out' == *'another agent uses this state directory'* ]]"
kill -TERM "$DPID"
for i in $(seq 200); do [ -d "/proc/$DPID" ] || break; sleep 0.05; done
check "the detached agent stops on SIGTERM" test ! -d "/proc/$DPID"
unset "AGENT_PID[pd]"
check "  ... and removes its control socket" test ! -e run/p.sock

sed 's/^role = primary$/role = boss/' p.conf >bad.conf
expect_error "a config error names file and line" "bad.conf:" "role" -- \
	"$HVRESYNC" agent -f --config bad.conf
sed "s#^state-dir = .*#state-dir = $S/other-state#; s#^listen = .*#listen = 127.0.0.1:$(free_port)#; s#run/p.sock#run/r.sock#" \
	p.conf >dup.conf
expect_error "a second agent on the same control socket is refused" "r.sock" "already listening" -- \
	"$HVRESYNC" agent -f --config dup.conf
check "no agent crashed (no sanitizer or signal lines in the logs)" \
	bash -c "! grep -qiE 'sanitizer|segmentation|core dumped' p.log r.log"
stop_agent r
check "the recovery agent stops on SIGTERM with status 0" test "$AGENT_RC" -eq 0
finish
