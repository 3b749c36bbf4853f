#!/bin/bash
# t-agent-parallel.sh - parallel-disks (issue 14): a job works on a VM's
# disks side by side.  Two agents on loopback (pre-shared key); the
# primary runs with --bwlimit so a copy session lasts long enough to be
# seen.  The recovery agent's log (session start/end lines, in order)
# shows what ran at once: with parallel-disks = 3 the three copy sessions
# of a 3-disk VM are open together, with 1 every session of the job runs
# alone in today's order; the disks end identical (qemu-img compare),
# PercentComplete never goes back and the byte counters add up.  A disk
# whose copy fails on the recovery side fails the job naming it (32768, as
# one disk at a time), the disk still copying is stopped and held where it
# got to, nothing keeps running, and the next job resumes; a cancel stops
# every disk; a bad value is refused at start naming file, line and key.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

S=$SCRATCH
cd "$S" || exit 1
M=$((1 << 20))

# sessions VM FROM [KIND]: the recovery agent's sessions of VM's exports
# logged after line FROM of r.log.  With KIND (check, copy, merge): "N MAX",
# how many there were and the most open at once.  Without: each session's
# start and end in log order, "+KIND:DISK" and "-DISK".  Sessions that
# never ended are named on stderr ("open: ...").
sessions() {
	python3 - "$S/r.log" "$1" "$2" "${3:-}" <<'EOF'
import re, sys
log, vm, start, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
st = re.compile(r"session (\d+): .*?session start \(.*?\): export %s:(\S+) \(.*\): (\w+)" % re.escape(vm))
en = re.compile(r"session (\d+): .*?session end: export %s:(\S+?):" % re.escape(vm))
opened, order, n, most = {}, [], 0, 0
for line in open(log).read().splitlines()[start:]:
    m = st.search(line)
    if m:
        opened[m.group(1)] = (m.group(3), m.group(2))
        order.append("+%s:%s" % (m.group(3), m.group(2)))
        if m.group(3) == kind:
            n += 1
            most = max(most, sum(1 for k, _ in opened.values() if k == kind))
        continue
    m = en.search(line)
    if m and m.group(1) in opened:
        del opened[m.group(1)]
        order.append("-" + m.group(2))
for k, d in opened.values():
    print("open: %s session of %s" % (k, d), file=sys.stderr)
print("%d %d" % (n, most) if kind else " ".join(order))
EOF
}

# percent_log NAME JOB SECONDS: poll PercentComplete until the job is
# final; fails unless it never went down and the job Completed at 100.
percent_log() {
	PYTHONPATH="$TOP/tests/helpers" python3 - "$(sock "$1")" "$2" "$3" <<'EOF'
import sys, time
import control
path, job, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
seen, end = [], time.monotonic() + secs
while time.monotonic() < end:
    j = control.call(path, {"Method": "GetJob", "Job": job}, 10)["Instance"]
    if not seen or seen[-1] != j["PercentComplete"]:
        seen.append(j["PercentComplete"])
    if j["JobState"] in (7, 8, 9, 10, 32768):
        break
    time.sleep(0.05)
print("    PercentComplete: %s, JobState %s" % (seen, j["JobState"]))
sys.exit(0 if seen == sorted(seen) and seen[-1] == 100 and j["JobState"] == 7 else 1)
EOF
}

# threads NAME: how many threads agent NAME has now.
threads() { ls "/proc/${AGENT_PID[$1]}/task" | wc -l; }

# settle NAME WANT: wait up to 10 s until agent NAME has at most WANT
# threads: every thread of a job (its disks' workers, their sessions'
# readers) is gone.
settle() {
	local i
	for i in $(seq 200); do
		[ "$(threads "$1")" -le "$2" ] && return 0
		sleep 0.05
	done
	echo "    agent $1 has $(threads "$1") threads, $2 before the job"
	return 1
}

# ---------------------------------------------------------------------------
say "a bad parallel-disks is refused at start, naming file, line and key"
printf '[agent]\nlisten = 127.0.0.1:1\nparallel-disks = 0\n' >bad0.conf
printf '[agent]\nlisten = 127.0.0.1:1\n\n[vm x]\nrole = replica\nparallel-disks = 65\n' >bad65.conf
printf '[agent]\nparallel-disks = abc\n' >badabc.conf
expect_error "parallel-disks = 0" "bad0.conf:3:" "parallel-disks" "'0'" "1 to 64" -- \
	"$HVRESYNC" agent -f --config bad0.conf
expect_error "parallel-disks = 65 in a [vm]" "bad65.conf:6:" "parallel-disks" "'65'" -- \
	"$HVRESYNC" agent -f --config bad65.conf
expect_error "parallel-disks = abc" "badabc.conf:2:" "parallel-disks" "'abc'" -- \
	"$HVRESYNC" agent -f --config badabc.conf

# ---------------------------------------------------------------------------
say "setup: a key, two agents, VMs of three disks"
mkdir -p p r
for d in p r; do
	for n in pa pb pc sa sb sc; do
		"$HVRESYNC" create $d/$n.vhdx 64M >/dev/null || fail "create $d/$n"
	done
	"$HVRESYNC" create $d/fa.vhdx 64M >/dev/null &&
		"$HVRESYNC" create $d/fb.vhdx 32M >/dev/null &&
		"$HVRESYNC" create $d/fc.vhdx 16M >/dev/null || fail "create $d/f*"
done
# at 8 MB/s: 2 s for each of pa, pb and pc, 1 s for each of sa, sb, sc
for n in pa pb pc; do
	fill p/$n.vhdx 0 16M
done
for n in sa sb sc; do
	fill p/$n.vhdx 0 8M
done
# 7 s for fa, 3 s for fb: fc starts 3 s into the copy phase, while fa
# is still copying
fill p/fa.vhdx 0 56M
fill p/fb.vhdx 0 24M
fill p/fc.vhdx 0 2M
"$HVRESYNC" keygen psk >/dev/null || fail "keygen"
PP=$(free_port)
RP=$(free_port)
vm() { # NAME DIR DISK...: a [vm] section, primary when DIR is p
	local name=$1 dir=$2 d
	shift 2
	printf '\n[vm %s]\n' "$name"
	if [ "$dir" = p ]; then
		printf 'role = primary\nreplica = 127.0.0.1:%s\n' "$RP"
	else
		printf 'role = replica\n'
	fi
	for d in "$@"; do printf 'disk = %s/%s/%s.vhdx\n' "$S" "$dir" "$d"; done
}
for d in p r; do
	{
		agent_section $d "$([ $d = p ] && echo "$PP" || echo "$RP")"
		# a failure ends the job at once (the default retries for minutes)
		echo "retries = 0"
		echo "parallel-disks = 3"
		vm par $d pa pb pc
		vm seq $d sa sb sc
		[ $d = p ] && echo "parallel-disks = 1"
		vm fl $d fa fb fc
		[ $d = p ] && echo "parallel-disks = 2"
	} >$d.conf
done
start_agent r || { fail "recovery agent"; finish; }
start_agent p --bwlimit 8M || { fail "primary agent"; finish; }
IDLE=$(threads p)

# ---------------------------------------------------------------------------
say "parallel-disks = 3: the three disks are copied at once"
L=$(wc -l <r.log)
expect_rv "resync par" 4096 p par
J=$JOB
check "PercentComplete only grows, to 100, and the job Completed" percent_log p "$J" 90
check "the primary logs the width" grep -q "job $J (VM par): up to 3 of its 3 disks at once" p.log
read -r N MOST < <(sessions par "$L" copy)
check "3 copy sessions, all 3 open at once on the recovery agent (saw $N, at most $MOST)" \
	test "$N $MOST" = "3 3"
for n in pa pb pc; do
	check "$n.vhdx identical (qemu-img compare)" same p/$n.vhdx r/$n.vhdx
done
check "BytesCompared and BytesDifferent add up over the disks" python3 - \
	"$(hv p job show "$J" --json)" <<EOF
import json, sys
j = json.loads(sys.argv[1])["Instance"]
print("    BytesCompared %d, BytesDifferent %d" % (j["BytesCompared"], j["BytesDifferent"]))
assert j["BytesCompared"] == 3 * 64 * $M, j["BytesCompared"]
assert j["BytesDifferent"] == 3 * 16 * $M, j["BytesDifferent"]
assert [d["Merged"] for d in j["Disks"]] == [True] * 3
EOF
check "the job's threads are gone" settle p "$IDLE"

# ---------------------------------------------------------------------------
say "parallel-disks = 1 (the VM's own over [agent]'s 3): one disk after the other"
L=$(wc -l <r.log)
hv p resync seq --wait >seq.out 2>seq.err
check "resync seq --wait Completed" test $? -eq 0
read -r N MOST < <(sessions seq "$L" copy)
check "3 copy sessions, never two at once (saw $N, at most $MOST)" test "$N $MOST" = "3 1"
ORDER=$(sessions seq "$L")
want="+check:sa.vhdx -sa.vhdx +check:sb.vhdx -sb.vhdx +check:sc.vhdx -sc.vhdx"
want="$want +copy:sa.vhdx -sa.vhdx +copy:sb.vhdx -sb.vhdx +copy:sc.vhdx -sc.vhdx"
want="$want +merge:sa.vhdx -sa.vhdx +merge:sb.vhdx -sb.vhdx +merge:sc.vhdx -sc.vhdx"
check "every session alone, in today's order: check, copy, merge, disk by disk" \
	test "$ORDER" = "$want"
[ "$ORDER" = "$want" ] || echo "    got: $ORDER"
for n in sa sb sc; do
	check "$n.vhdx identical (qemu-img compare)" same p/$n.vhdx r/$n.vhdx
done

# ---------------------------------------------------------------------------
say "parallel-disks = 2: a disk that fails stops the one still copying"
# fa and fb copy first; fc passes its check, but its copy cannot make the
# differencing child next to r/fc.vhdx (a directory is in the way); it
# starts when fb is done, while fa is still copying
mkdir r/fc.vhdx.hvresync.avhdx
L=$(wc -l <r.log)
expect_rv "resync fl" 4096 p fl
J=$JOB
wait_job p "$J" 60 7 8 9 10 32768 || fail "the job ends"
ES=$(jobf p "$J" ErrorSummaryDescription)
ED=$(jobf p "$J" ErrorDescription)
check "JobState 10, ErrorCode 32768 (failed)" \
	test "$(jobf p "$J" JobState) $(jobf p "$J" ErrorCode)" = "10 32768"
check "the summary names the disk and the phase ($ES)" \
	grep -qF "failed in the comparison and copy of disk fc.vhdx" <<<"$ES"
check "the description is fc.vhdx's error ($ED)" \
	grep -qF "export fl:fc.vhdx: cannot remove $S/r/fc.vhdx.hvresync.avhdx" <<<"$ED"
check "it is not reported as a cancel" \
	bash -c "! grep -qi 'cancel' <<<\"\$1\"" _ "$ES $ED"
check "fb.vhdx was sent whole" \
	grep -q "session end: export fl:fb.vhdx: held (complete, not merged)" r.log
check "fa.vhdx's copy was stopped before it was complete" python3 - r.log "$L" <<'EOF'
import re, sys
lines = open(sys.argv[1]).read().splitlines()[int(sys.argv[2]):]
ends = [l for l in lines if re.search(r"session end: export fl:fa\.vhdx:", l)]
print("    " + (ends[-1].split("session end: ")[-1] if ends else "no end of fa.vhdx's session"))
assert len(ends) == 2 and "held (complete" not in ends[-1], ends  # check, copy
EOF
sessions fl "$L" copy >fl.copy 2>fl.open
check "no session of the job is left open on the recovery agent" \
	test ! -s fl.open
check "the primary's job threads are gone" settle p "$IDLE"
check "the recovery agent holds fa.vhdx (partial) and fb.vhdx (complete)" python3 - \
	"$(hv r vm show fl --json)" <<'EOF'
import json, sys
h = {c["Disk"]: c["Complete"] for c in json.loads(sys.argv[1])["Instance"]["HeldCopies"]}
print("    HeldCopies: %s" % h)
assert h.get("fb.vhdx") is True and h.get("fa.vhdx") is False, h
EOF
mkdir r/sc.vhdx.hvresync.avhdx
hv p resync seq --wait >seqf.out 2>/dev/null
JS=$(sed -n 's/^Job: //p' seqf.out)
check "the same failure one disk at a time (seq, sc.vhdx) gets the same ErrorCode" \
	test "$(jobf p "$JS" JobState) $(jobf p "$JS" ErrorCode)" = "10 $(jobf p "$J" ErrorCode)"
rmdir r/sc.vhdx.hvresync.avhdx
rmdir r/fc.vhdx.hvresync.avhdx
hv p resync fl --wait >fl.out 2>fl.err
check "the next resync Completes ($(tail -n1 fl.err))" test $? -eq 0
J2=$(sed -n 's/^Job: //p' fl.out)
SENT=$(jobf p "$J2" BytesSent)
check "  ... resuming what was held: sent $SENT bytes, less than the 82 MiB that differed" \
	test "${SENT:-999999999999}" -lt $((82 * M))
for n in fa fb fc; do
	check "$n.vhdx identical (qemu-img compare)" same p/$n.vhdx r/$n.vhdx
done

# ---------------------------------------------------------------------------
say "a cancel stops every disk that is copying"
# at 2 MB/s each copy would take 16 s: the cancel comes long before
stop_agent p
start_agent p --bwlimit 2M || { fail "primary agent"; finish; }
IDLE=$(threads p)
for n in pa pb pc; do
	fill p/$n.vhdx 16M 32M
done
L=$(wc -l <r.log)
expect_rv "resync par" 4096 p par
J=$JOB
wait_percent p "$J" 10 60 || fail "the job makes progress"
hv p job cancel "$J" >/dev/null || fail "job cancel"
wait_job p "$J" 60 7 8 9 10 32768 || fail "the job ends"
check "the job is Terminated (8)" test "$(jobf p "$J" JobState)" = 8
read -r N MOST < <(sessions par "$L" copy 2>par.open)
check "its 3 copy sessions had been open at once (saw $N, at most $MOST)" \
	test "$N $MOST" = "3 3"
check "none is left open on the recovery agent" test ! -s par.open
check "no copy was completed after the cancel" \
	bash -c "! tail -n +$((L + 1)) r.log | grep -q 'export par:.*held (complete'"
check "the partial copies were discarded" test \
	"$(hv r vm show par --json | py 'len(d["Instance"]["HeldCopies"])')" = 0
check "the primary's job threads are gone" settle p "$IDLE"

stop_agent p
stop_agent r
finish
