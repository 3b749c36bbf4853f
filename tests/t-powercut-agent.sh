#!/bin/bash
# t-powercut-agent.sh - the crash matrix of the agents' records (issue 11,
# item 2): power cuts at the durability barriers of a VM resync, on the
# power-cut file system (tests/helpers/powercut.c, powercut.sh).
#
# Part 1 puts the PRIMARY agent's state dir (job records, VM states) on
# the power-cut mount; part 2 puts the RECOVERY agent's state dir (its
# progress records) and its recovery images there.  The pristine state is
# a first run: no state dir yet.  A VM of two disks that differ from
# their recovery copies (scattered 4 KiB changes, whole new blocks, zeroed
# blocks) is resynchronized; the power is cut at barrier k (plain, then
# torn with seed k), the agent that lost power is SIGKILLed at once, the
# mount goes, and that agent starts again on what was durable (a fresh
# mount of the same folder without a cut, so every path stays the same).
# A crash state is damaged when any of these fails:
#  - the agent starts; a record that does not parse is named in its log;
#  - ListJobs, GetJob and GetVM answer; a job Resynchronize accepted with
#    4096 is still there;
#  - a job that says Completed (7), or a VM that says Replicating (3), has
#    recovery images equal to the sources (qemu-img compare), right after
#    the restart and later; a job seen Completed before the cut ends
#    Completed again;
#  - the job that ran at the cut does not stay Running: it runs again and
#    ends Completed (docs/control-api.md); no VM is left Resynchronizing
#    without a job;
#  - part 2 (the mount is --freeze: the recovery agent hangs from the cut
#    to its SIGKILL, as a machine without power): the primary does not
#    end the job Exception when its peer dies, it retries (the summary
#    counts the states whose job's Retries > 0) and the retry resumes;
#  - part 2, once the recovery agent finished interrupted merges (before
#    the primary comes back): no merge pending, the images are clean
#    (qemu-img check) and every 4 KiB sector holds its old or its new
#    content (raw conversions compared in Python);
#  - the held copies the recovery agent reports exist and open (vhdiinfo,
#    and hvresync inspect with their parent);
#  - a new resync Completes, the disks are identical, nothing stays held.
# Also: a torn job record and an empty VM record (what a rename ordered
# before its data leaves) neither stop the agent nor vanish unlogged.
# Short form (make check): ${POWERCUT_SHORT:-8} points per mode shared by
# the two parts; POWERCUT_FULL=1 (tools/crash/run): every barrier of each
# part, up to POWERCUT_MAX.  Ends with `powercut: K crash states, D damaged`.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

[ "$(id -u)" = 0 ] || skip "needs root (FUSE mounts)"
[ -e /dev/fuse ] || skip "no /dev/fuse"
command -v fusermount3 >/dev/null || skip "fusermount3 not installed"
[ -f "$TOP/tests/helpers/powercut.sh" ] ||
	skip "tests/helpers/powercut.sh not found (the power-cut file system)"
. "$TOP/tests/helpers/powercut.sh"
[ -x "$POWERCUT" ] || { fail "$POWERCUT not built (make all)"; finish; }
HAVE_VHDI=$(command -v vhdiinfo)

S=$SCRATCH
cd "$S" || exit 1
WAIT_S=${POWERCUT_WAIT:-60} # a job's longest run on a loaded machine

# ---------------------------------------------------------------------------
# The oracles and the control-API queries, in one Python process that
# answers one line per request (a Python start costs a second on a loaded
# 2-core machine, and a crash state asks dozens of questions).  It talks
# to the agents' sockets itself: hvresync's own CLI is not the judge.
cat >oracle.py <<'EOF'
import json, os, re, sys, time
from control import call

FINAL = (7, 8, 9, 10, 32768)

def job(sock, jid):
    """The job's instance, None when the agent does not know it."""
    d = call(sock, {"Method": "GetJob", "Job": jid})
    return d["Instance"] if d.get("ReturnValue") == 0 else None

def vm(sock, name):
    return call(sock, {"Method": "GetVM", "ComputerSystem": name})["Instance"]

def cut(report):
    try:
        for line in open(report):
            k, _, v = line.strip().partition(" ")
            if k == "cut" and v != "none":
                return True
    except OSError:
        pass
    return False

def state_of(sock, jid):
    try:
        return job(sock, jid)["JobState"]
    except (OSError, ValueError, KeyError, TypeError):
        return None

def c_until(sock, jid, report, secs):
    """Until the job is final or the power is cut: "final S", "cut S" or
    "timeout S", then "seen7" when it said Completed while the power was
    still on (the power is looked at after the state is read, so a state
    read before the report says `cut` was said before the cut)."""
    end = time.monotonic() + float(secs)
    st, seen7, how = None, False, "timeout"
    while time.monotonic() < end:
        st = state_of(sock, jid)
        if cut(report):
            how = "cut"
            break
        if st == 7:
            seen7 = True
        if st in FINAL:
            how = "final"
            break
        time.sleep(0.02)
    return "%s %s%s" % (how, st, " seen7" if seen7 else "")

def c_wait(sock, jid, secs):
    """Until the job is final: its JobState, or "timeout S"."""
    end = time.monotonic() + float(secs)
    st = None
    while time.monotonic() < end:
        st = state_of(sock, jid)
        if st in FINAL:
            return str(st)
        time.sleep(0.05)
    return "timeout %s" % st

def c_retried(sock, jid, secs):
    """Until the job counts a network retry or is final: "retry N S",
    "final S", "gone" or "timeout S"."""
    end = time.monotonic() + float(secs)
    st = None
    while time.monotonic() < end:
        try:
            j = job(sock, jid)
        except (OSError, ValueError):
            j = {}
        if j is None:
            return "gone"
        st = j.get("JobState")
        if (j.get("Retries") or 0) > 0:
            return "retry %s %s" % (j["Retries"], st)
        if st in FINAL:
            return "final %s" % st
        time.sleep(0.05)
    return "timeout %s" % st

def c_rv(sock, name):
    d = call(sock, {"Method": "Resynchronize", "ComputerSystem": name})
    return "%s %s %s" % (d.get("ReturnValue"), d.get("Job") or "-",
                         d.get("Error", ""))

def c_job(sock, jid, prop):
    j = job(sock, jid)
    return "-" if j is None else str(j.get(prop))

def c_vm(sock, name, prop):
    return str(vm(sock, name).get(prop))

def c_jobstates(sock):
    d = call(sock, {"Method": "ListJobs"})
    return " ".join(str(j["JobState"]) for j in d["Jobs"]) or "-"

def c_held(sock, name):
    return " ".join(h["Path"] for h in vm(sock, name)["HeldCopies"]) or "-"

def c_pending(sock, name):
    """The disks whose merge is still pending, with the agent's note."""
    return "; ".join("%s: %s" % (x["Name"], x["MergeNote"])
                     for x in vm(sock, name)["Disks"] if x["MergePending"]) or "-"

def c_records(state):
    """The job and VM records under STATE that do not parse."""
    bad = []
    for sub, pat in (("jobs", r"^[0-9A-F-]{36}\.json$"), ("vms", r"\.json$")):
        d = os.path.join(state, sub)
        if not os.path.isdir(d):
            continue
        for n in sorted(os.listdir(d)):
            if not re.search(pat, n) or n.startswith("."):
                continue
            try:
                with open(os.path.join(d, n)) as f:
                    if not isinstance(json.load(f), dict):
                        raise ValueError("not an object")
            except (ValueError, UnicodeDecodeError):
                bad.append(n)
    return " ".join(bad) or "-"

def c_sectors(old, new, got):
    """Every 4 KiB sector of GOT equals OLD's or NEW's (raw files)."""
    if os.path.getsize(got) != os.path.getsize(new):
        return "size %d, want %d" % (os.path.getsize(got), os.path.getsize(new))
    n = bad = 0
    first = None
    with open(old, "rb") as a, open(new, "rb") as b, open(got, "rb") as c:
        while True:
            x, y, z = a.read(4096), b.read(4096), c.read(4096)
            if not z:
                break
            if z != x and z != y:
                bad += 1
                if first is None:
                    first = n * 4096
            n += 1
    if bad:
        return "%d of %d sectors hold neither old nor new, the first at %d" % (bad, n, first)
    return "ok"

for line in sys.stdin:
    args = line.split()
    try:
        out = globals()["c_" + args[0]](*args[1:])
    except Exception as e:
        out = "ERR %s: %s" % (type(e).__name__, e)
    print(out.replace("\n", " "), flush=True)
EOF
mkfifo oracle.in oracle.out
PYTHONPATH="$TOP/tests/helpers" python3 -u oracle.py <oracle.in >oracle.out &
exec 7>oracle.in 8<oracle.out
# At exit: the agents go first (they use the mounts), then the oracle
# (it ends once its input does), the mounts, the scratch folder.
pca_cleanup() {
	local n
	for n in "${!AGENT_PID[@]}"; do
		kill -9 "${AGENT_PID[$n]}" 2>/dev/null
	done
	exec 7>&- 8<&-
	wait 2>/dev/null
	_pc_cleanup
	cleanup
}
trap pca_cleanup EXIT
# q ARGS...: one request to the oracle (no spaces inside an argument);
# its one-line answer lands in QA.
q() {
	echo "$*" >&7
	read -r QA <&8
}

# ---------------------------------------------------------------------------
say "setup: a VM of two disks, the recovery copies older than the primary"
mkdir -p p r0 r run
"$HVRESYNC" create --block-size 1M p/os.vhdx 16M >/dev/null &&
	"$HVRESYNC" create --block-size 1M p/data.vhdx 8M >/dev/null ||
	{ fail "hvresync create"; finish; }
fill p/os.vhdx 0 6M
fill p/data.vhdx 1M 3M
cp p/os.vhdx p/data.vhdx r0/
# the divergence: scattered 4 KiB pieces, whole new blocks, zeroed blocks
QIO=()
for o in 12 100 301 555 777 1023 1400; do
	QIO+=(-c "write -q -P $((o % 200 + 17)) $((o * 4096)) 4k")
done
qemu-io -f vhdx "${QIO[@]}" -c "write -q -z 2M 1M" p/os.vhdx >/dev/null ||
	fail "qemu-io os"
fill p/os.vhdx 9M 2M
fill p/os.vhdx 15M 4K
qemu-io -f vhdx -c "write -q -P 0x5a 1052672 4k" -c "write -q -z 3M 1M" \
	-c "write -q -P 0xa5 7M 8k" p/data.vhdx >/dev/null || fail "qemu-io data"
DISKS="os data"
for d in $DISKS; do
	qemu-img convert -O raw r0/$d.vhdx old-$d.raw &&
		qemu-img convert -O raw p/$d.vhdx new-$d.raw || fail "convert $d"
	cmp -s old-$d.raw new-$d.raw && fail "$d.vhdx does not differ"
done
"$HVRESYNC" keygen psk >/dev/null || fail "keygen"
PP=$(free_port)
RP=$(free_port)
B1=$S/b1 M1=$S/m1 B2=$S/b2 M2=$S/m2
mkdir -p "$M1" "$M2"

# conf NAME STATE-DIR ROLE EXTRA DISK-FOLDER: an agent's configuration.
conf() {
	{
		agent_section "$1" "$([ "$1" = p ] && echo "$PP" || echo "$RP")" |
			sed "s#^state-dir = .*#state-dir = $2#"
		printf '%s\n\n[vm demo]\nrole = %s\n' "$4" "$3"
		[ "$3" = primary ] && printf 'replica = 127.0.0.1:%s\n' "$RP"
		for d in $DISKS; do printf 'disk = %s/%s.vhdx\n' "$5" "$d"; done
	} >"$S/$1.conf"
}

# ---------------------------------------------------------------------------
# Small steps shared by both parts.  DAMAGE collects the checks a crash
# state failed.
DAMAGE=()
damage() { DAMAGE+=("$*"); }
PS=$(sock p) RS=$(sock r)

# watch_cut PID: SIGKILL PID the moment the power is cut (a machine
# without power runs nothing more); WATCH_PID is the watcher.
watch_cut() {
	(
		while kill -0 "$1" 2>/dev/null; do
			pc_cut_done && { kill -9 "$1" 2>/dev/null; exit 0; }
			sleep 0.01
		done
	) &
	WATCH_PID=$!
}

# identical DIR: every recovery disk in DIR equals its source.  The
# answer is kept until forget_identical (a job may have written since):
# qemu-img is most of a crash state's time.
IDENT=
identical() {
	local d
	if [ -z "$IDENT" ]; then
		IDENT=yes
		for d in $DISKS; do
			qemu-img compare -q -U "p/$d.vhdx" "$1/$d.vhdx" 2>/dev/null ||
				{ IDENT=no; break; }
		done
	fi
	[ "$IDENT" = yes ]
}
forget_identical() { IDENT=; }

# logged_since NAME LINE NEEDLE: the agent's log has NEEDLE after LINE.
logged_since() { tail -n +"$(($2 + 1))" "$S/$1.log" | grep -qF -- "$3"; }

# bad_records STATE: the records under STATE (the backing folder, before
# the agent starts on it) that do not parse, in BAD_RECS.
bad_records() {
	q records "$1"
	BAD_RECS=$QA
	case $QA in
	ERR*) damage "cannot read the records: $QA"; BAD_RECS=- ;;
	esac
}

# bad_records_logged NAME: every record of BAD_RECS is named in the
# restarted agent's log (it must not be dropped silently).
bad_records_logged() {
	local f
	for f in $BAD_RECS; do
		[ "$f" = - ] && continue
		logged_since "$1" "$LOG0" "$f" ||
			damage "$f does not parse and the restarted agent's log does not name it"
	done
}

# restart NAME MNT BACKING: the agent that lost power starts again on
# what was durable (a fresh mount of the same folder, no cut).
restart() {
	pc_mount "$3" "$2" || { damage "cannot mount $3 again"; return 1; }
	LOG0=$(wc -l <"$S/$1.log")
	start_agent "$1" || { damage "the agent $1 does not start after the cut"; return 1; }
}

# job_state: JOB's JobState on the primary ("-": unknown job).
job_state() { q job "$PS" "$JOB" JobState; ST=$QA; }
job_error() { q job "$PS" "$JOB" ErrorDescription; echo "$QA"; }
vm_state() { q vm "$PS" demo ReplicationState; VS=$QA; }

# after_restart_common DIR: the primary's claims after either agent
# restarted; DIR holds the recovery disks.  Uses RV, JOB, SEEN7 and
# EXC_OK (the job had failed already when its agent stopped).
after_restart_common() {
	local st
	forget_identical
	q jobstates "$PS"
	case $QA in
	ERR*) damage "ListJobs does not answer: $QA" ;;
	*) for st in $QA; do
		[ "$st" = 7 ] && ! identical "$1" &&
			damage "a job says Completed (7) right after the restart but the disks differ"
	done ;;
	esac
	vm_state
	case $VS in
	ERR*) damage "GetVM demo does not answer: $VS" ;;
	3) identical "$1" ||
		damage "the VM says Replicating (3) right after the restart but the disks differ" ;;
	esac
	[ "$RV" = 4096 ] || return 0
	job_state
	case $ST in
	- | ERR*) damage "job $JOB (accepted with 4096 before the cut) is gone: $ST"; return ;;
	2 | 3 | 4 | 5 | 6)
		q wait "$PS" "$JOB" "$WAIT_S"
		forget_identical
		[ "${QA%% *}" = timeout ] &&
			damage "job $JOB (JobState $ST at the restart) did not end within $WAIT_S s"
		job_state
		;;
	esac
	if [ -n "$SEEN7" ] && [ "$ST" != 7 ]; then
		damage "job $JOB said Completed before the cut, JobState $ST after it"
	fi
	if [ "$ST" = 7 ]; then
		identical "$1" || damage "job $JOB ends Completed but the disks differ"
		vm_state
		[ "$VS" = 3 ] || damage "job $JOB Completed but the VM says ReplicationState $VS"
	elif [ "$ST" != 10 ] || [ -z "$EXC_OK" ]; then
		# a job that was still running when its agent stopped runs
		# again and must get through: the recovery side's durable
		# progress is all it needs
		damage "job $JOB ends JobState $ST ($(job_error))"
	fi
	vm_state
	case $VS in
	10 | 11) damage "no job runs but the VM says ReplicationState $VS" ;;
	3) identical "$1" || damage "the VM says Replicating (3) but the disks differ" ;;
	esac
}

# held_copies_open: what the recovery agent reports held exists and opens.
held_copies_open() {
	local p
	q held "$RS" demo
	case $QA in
	ERR*) damage "GetVM on the recovery agent does not answer: $QA"; return ;;
	-) return ;;
	esac
	for p in $QA; do
		[ -f "$p" ] || { damage "held copy $p is reported but not there"; continue; }
		if [ -n "$HAVE_VHDI" ]; then
			vhdiinfo "$p" >/dev/null 2>&1 || damage "held copy $p does not open (vhdiinfo)"
		fi
		"$HVRESYNC" inspect "$p" >/dev/null 2>&1 ||
			damage "held copy $p does not open with its parent (hvresync inspect)"
	done
}

# resync: Resynchronize on the primary; RV and JOB.
resync() {
	q rv "$PS" demo
	RV=${QA%% *}
	JOB=$(cut -d' ' -f2 <<<"$QA")
	RVERR=$(cut -d' ' -f3- <<<"$QA")
}

# new_resync DIR: a new job Completes and the disks are identical.
new_resync() {
	resync
	[ "$RV" = 4096 ] || { damage "a new resync: ReturnValue $RV ($RVERR)"; return; }
	q wait "$PS" "$JOB" "$WAIT_S"
	ST=$QA
	forget_identical
	[ "$ST" = 7 ] || { damage "the new job ends JobState $ST ($(job_error))"; return; }
	identical "$1" || damage "the new job Completed but the disks differ"
	vm_state
	[ "$VS" = 3 ] || damage "after the new job the VM says ReplicationState $VS"
	q held "$RS" demo
	[ "$QA" = - ] || damage "after the new job the recovery side still holds $QA"
}

# stop_all: both agents gone, every mount down.
stop_all() {
	local n
	for n in p r; do
		[ -n "${AGENT_PID[$n]:-}" ] && kill_agent "$n"
	done
	# /proc/mounts, not a stat: a frozen mount would hold it
	_pc_mounted "$M1" && pc_umount "$M1"
	_pc_mounted "$M2" && pc_umount "$M2"
	return 0
}

# cut_opts K MODE LAST: powercut's options for point K (LAST is N+1: the
# script cuts after the work instead).
cut_opts() {
	OPTS=()
	[ "$1" -lt "$3" ] && OPTS+=(--cut-at "$1")
	[ "$2" = torn ] && OPTS+=(--torn "$1")
	return 0
}

# resync_until_cut: Resynchronize, then wait until the job ends or the
# power is cut.  Sets RV, JOB, HOW (final/cut/timeout S) and SEEN7.
resync_until_cut() {
	SEEN7= HOW="no job"
	resync
	[ "$RV" = 4096 ] || { HOW="not accepted: $RVERR"; return 0; }
	q until "$PS" "$JOB" "$PC_REPORT" "$WAIT_S"
	HOW=${QA% seen7}
	[ "$HOW" != "$QA" ] && SEEN7=1
	return 0
}

# points N: the cut points of a part of N barriers.  The short form
# shares its ${POWERCUT_SHORT:-8} points per mode between the two parts
# (at least 1 and N+1 each), to stay well under 2 minutes in make check.
points() {
	local n=$(((${POWERCUT_SHORT:-8} + 1) / 2))
	[ "$n" -lt 2 ] && n=2
	if [ "${POWERCUT_FULL:-0}" = 1 ]; then
		pc_points "$1"
	else
		POWERCUT_SHORT=$n pc_points "$1"
	fi
}

# report K MODE NAME: one line per crash state (NAME: whose log to show).
K_TRIED=0 K_DAMAGED=0
report() {
	K_TRIED=$((K_TRIED + 1))
	if [ ${#DAMAGE[@]} -eq 0 ]; then
		echo "  part $PART k=$1 $2: ok ($WHAT)"
	else
		K_DAMAGED=$((K_DAMAGED + 1))
		echo "  part $PART k=$1 $2: DAMAGED ($WHAT)"
		printf '    - %s\n' "${DAMAGE[@]}"
		tail -n 8 "$S/$3.log" | sed 's/^/    | /'
	fi
	DAMAGE=()
}

# ---------------------------------------------------------------------------
# Part 1: the primary agent's state dir on the power-cut mount.
conf p "$M1/pstate" primary "retries = 5
retry-interval = 1" "$S/p"
cp p.conf p1.conf
conf r "$S/rstate" replica "" "$S/r"
cp r.conf r1.conf

p1_reset() {
	rm -rf "$B1" "$S/rstate"
	mkdir -p "$B1"
	cp r0/*.vhdx r/
	cp p1.conf p.conf
	cp r1.conf r.conf
}

# p1_work: the primary starts on the mount and resynchronizes.
p1_work() {
	RV=none JOB= SEEN7= HOW="agent did not start" WATCH_PID=
	start_agent r || { fail "part 1: the recovery agent does not start"; return 1; }
	start_agent p || return 0 # the cut came while it started
	watch_cut "${AGENT_PID[p]}"
	resync_until_cut
}

p1_state() {
	local k=$1 mode=$2
	EXC_OK=
	p1_reset
	cut_opts "$k" "$mode" "$((N1 + 1))"
	pc_mount "$B1" "$M1" "${OPTS[@]}" || { damage "pc_mount"; return; }
	p1_work
	pc_cut_done || pc_cut "$M1"
	[ -n "${AGENT_PID[p]:-}" ] && kill_agent p
	[ -n "$WATCH_PID" ] && wait "$WATCH_PID" 2>/dev/null
	pc_umount "$M1"
	WHAT="rv $RV, $HOW${SEEN7:+, Completed before the cut}"
	bad_records "$B1/pstate"
	restart p "$M1" "$B1" || return
	bad_records_logged p
	after_restart_common r
	held_copies_open
	new_resync r
}

PART=1
say "part 1: the primary's state dir on the power-cut mount: a run without a cut"
p1_reset
pc_mount "$B1" "$M1" || { fail "pc_mount"; finish; }
p1_work
[ "$HOW" = "final 7" ] || fail "part 1: the job without a cut ends $HOW"
stop_all
N1=$(pc_barriers)
forget_identical
identical r || fail "part 1: the disks differ after the run without a cut"

# A file system that orders a rename before its data (ext4 without
# auto_da_alloc, a disk that lies about its cache) can leave a record torn
# or empty; the records must still never keep the agent from starting,
# nor vanish without a word.
say "part 1: a torn job record and an empty VM record"
JF=$(ls "$B1"/pstate/jobs/*.json 2>/dev/null | head -n 1)
if [ -f "$JF" ] && [ -f "$B1/pstate/vms/demo.json" ]; then
	head -c $(($(stat -c %s "$JF") / 2)) "$JF" >torn.json && cat torn.json >"$JF"
	: >"$B1/pstate/vms/demo.json"
	pc_mount "$B1" "$M1" || fail "pc_mount"
	LOG0=$(wc -l <p.log)
	check "the agent starts on them" start_agent p
	check "  ... its log names the torn job record" logged_since p "$LOG0" "${JF##*/}"
	check "  ... and the empty VM record" logged_since p "$LOG0" "demo.json"
	q vm "$PS" demo ReplicationState
	check "  ... GetVM answers: the VM starts over from 1 ($QA)" test "$QA" = 1
	q jobstates "$PS"
	check "  ... ListJobs answers ($QA)" test "${QA%% *}" != ERR
	stop_all
else
	fail "part 1: the run without a cut left no job or VM record in $B1/pstate"
fi

say "part 1: N = $N1 barriers; cutting at $(points "$N1" | tr '\n' ' ')"
for k in $(points "$N1"); do
	for mode in plain torn; do
		p1_state "$k" "$mode"
		stop_all
		report "$k" "$mode" p
	done
done

# ---------------------------------------------------------------------------
# Part 2: the recovery agent's state dir and images on the power-cut mount.
# The mount is --freeze: after the cut the recovery agent hangs (a machine
# without power answers nothing, least of all an I/O error) until the
# SIGKILL, so the primary sees its peer die, as on a real power loss, and
# retries.  It is then stopped (SIGSTOP) while the recovery side restarts
# and its images are checked, and continued (SIGCONT) for the checks of
# its claims: the job that ran at the cut goes on by the retry, which
# resumes from the recovery side's durable progress.
conf p "$S/pstate" primary "retries = 5
retry-interval = 1" "$S/p"
cp p.conf p2.conf
conf r "$M2/rstate" replica "" "$M2/r"
cp r.conf r2.conf

p2_reset() {
	rm -rf "$B2" "$S/pstate"
	mkdir -p "$B2/r"
	cp r0/*.vhdx "$B2/r/"
	cp p2.conf p.conf
	cp r2.conf r.conf
}

# p2_start_r: start_agent r, watched from its first moment: a cut while
# it starts freezes it, and a frozen agent answers nothing, so it is
# SIGKILLed at once (as in watch_cut) instead of awaited.
p2_start_r() {
	local i
	"$HVRESYNC" agent -f --config "$S/r.conf" 2>>"$S/r.log" &
	AGENT_PID[r]=$!
	watch_cut "${AGENT_PID[r]}"
	for i in $(seq 200); do
		pc_cut_done && return 1
		timeout -k 2 5 "$HVRESYNC" vm list --control "$RS" >/dev/null 2>&1 &&
			return 0
		kill -0 "${AGENT_PID[r]}" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

p2_work() {
	RV=none JOB= SEEN7= HOW="agent did not start" WATCH_PID=
	p2_start_r || return 0 # the cut came while it started
	start_agent p || { fail "part 2: the primary agent does not start"; return 1; }
	resync_until_cut
}

# sectors_old_or_new: the recovery images as the restarted agent
# presents them: clean, each 4 KiB sector old or new.
sectors_old_or_new() {
	local d
	for d in $DISKS; do
		if ! qemu-img check -U -q -f vhdx "$M2/r/$d.vhdx" >chk.out 2>&1; then
			damage "qemu-img check $d.vhdx: $(head -c 200 chk.out | tr '\n' ' ')"
			continue
		fi
		rm -f got.raw
		qemu-img convert -U -O raw "$M2/r/$d.vhdx" got.raw 2>chk.out ||
			{ damage "qemu-img convert $d.vhdx: $(head -c 200 chk.out)"; continue; }
		q sectors "old-$d.raw" "new-$d.raw" got.raw
		[ "$QA" = ok ] || damage "$d.vhdx: $QA"
	done
}

p2_state() {
	local k=$1 mode=$2 i
	p2_reset
	cut_opts "$k" "$mode" "$((N2 + 1))"
	pc_mount "$B2" "$M2" "${OPTS[@]}" --freeze || { damage "pc_mount"; return; }
	p2_work
	pc_cut_done || pc_cut "$M2"
	[ -n "${AGENT_PID[r]:-}" ] && kill_agent r
	[ -n "$WATCH_PID" ] && wait "$WATCH_PID" 2>/dev/null
	# the primary did not lose power: it sees its peer die and retries
	EXC_OK= RETRY=
	if [ "$RV" = 4096 ]; then
		q retried "$PS" "$JOB" 20
		RETRY=$QA
		# a frozen recovery side answers no I/O error: all the primary
		# sees is a dead peer, which it must retry, not fail on
		job_state
		if [ "$ST" = 10 ]; then
			P2_EXC[$mode]=$((${P2_EXC[$mode]:-0} + 1))
			damage "job $JOB ends Exception when its peer dies ($(job_error)): a network failure is retried"
		fi
	fi
	# stopped, not ended: its retries do not back off while the
	# recovery side is down, and nothing reaches the recovery images
	# before they are checked
	[ -n "${AGENT_PID[p]:-}" ] && kill -STOP "${AGENT_PID[p]}"
	pc_umount "$M2" || damage "the frozen powercut did not end as asked"
	WHAT="rv $RV, $HOW${SEEN7:+, Completed before the cut}${RETRY:+, after the cut: $RETRY}"
	bad_records "$B2/rstate"
	restart r "$M2" "$B2" || return
	# interrupted merges are finished before the agent serves peers
	for i in $(seq $((WAIT_S * 10))); do
		logged_since r "$LOG0" "serving peers on" && break
		sleep 0.1
	done
	logged_since r "$LOG0" "serving peers on" ||
		damage "the recovery agent does not serve within $WAIT_S s"
	bad_records_logged r
	q pending "$RS" demo
	[ "$QA" = - ] || damage "a merge is still pending after the restart: $QA"
	sectors_old_or_new
	forget_identical
	[ -n "$SEEN7" ] && ! identical "$M2/r" &&
		damage "job $JOB said Completed before the cut but the recovery disks differ after it"
	held_copies_open
	if [ -z "${AGENT_PID[p]:-}" ]; then
		start_agent p || { damage "the primary does not start again"; return; }
	else
		kill -CONT "${AGENT_PID[p]}"
		kill -0 "${AGENT_PID[p]}" 2>/dev/null ||
			{ damage "the primary is gone"; unset "AGENT_PID[p]"; return; }
	fi
	after_restart_common "$M2/r"
	# the retry shows in the job's Retries (kept in its record)
	if [ "$RV" = 4096 ]; then
		q job "$PS" "$JOB" Retries
		case $QA in
		[1-9]*) P2_RETRIED[$mode]=$((${P2_RETRIED[$mode]:-0} + 1)) ;;
		esac
	fi
	new_resync "$M2/r"
}

PART=2
say "part 2: the recovery agent's state and images on the power-cut mount: a run without a cut"
p2_reset
pc_mount "$B2" "$M2" || { fail "pc_mount"; finish; }
p2_work
[ "$HOW" = "final 7" ] || fail "part 2: the job without a cut ends $HOW"
stop_all
N2=$(pc_barriers)
forget_identical
identical "$B2/r" || fail "part 2: the disks differ after the run without a cut"
say "part 2: N = $N2 barriers; cutting at $(points "$N2" | tr '\n' ' ')"
declare -A P2_STATES=() P2_RETRIED=() P2_EXC=()
for k in $(points "$N2"); do
	for mode in plain torn; do
		p2_state "$k" "$mode"
		P2_STATES[$mode]=$((${P2_STATES[$mode]:-0} + 1))
		stop_all
		report "$k" "$mode" r
	done
done
# How many states the primary came through by its network retry (the
# job's Retries > 0 in GetJob after the recovery side came back), and how
# many jobs failed before it did (Exception: nothing retried).
for mode in plain torn; do
	echo "part 2 $mode: ${P2_STATES[$mode]:-0} crash states, ${P2_RETRIED[$mode]:-0} went through a retry, ${P2_EXC[$mode]:-0} ended Exception before the restart"
done

check "no agent crashed (no sanitizer lines in the logs)" \
	bash -c "! grep -qiE 'sanitizer|segmentation|core dumped' '$S/p.log' '$S/r.log'"
pc_summary "$K_TRIED" "$K_DAMAGED"
finish
