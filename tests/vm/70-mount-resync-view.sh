# tests/vm/70-mount-resync-view.sh - `hvresync mount-and-resync --view`
# on a real device-mapper: a primary and a recovery agent on 127.0.0.1
# (TLS, pre-shared key), VM "plain" (dyn.vhdx, fixed.vhdx: both mappable)
# and VM "mixed" (dyn.vhdx and the differencing diff.avhdx); VM "slow"
# (slow.vhdx: 24 MiB of random bytes, and fixed.vhdx) for the jobs that
# are killed, cancelled and timed out.  Checked:
#   --view dm    the job reads /dev/mapper/hvresync-VM-DISK (the agent's
#                job says so), the recovery copies end with the primary's
#                bytes (sha256 against qemu-img convert's, taken on the host)
#   --view dm    on a VM with a differencing disk: refused in one line
#   --view auto  dm for the plain disk, FUSE for the chain, said per disk
#   --view fuse  as before, no dm device made
# and after every run no /dev/mapper/hvresync-* node, no dm device, no loop
# device and no mount is left: also after --timeout, SIGTERM and SIGKILL of
# mount-and-resync mid-job (its keeper takes the views down while the
# agent still reads them, and the job fails instead of reading on), and
# when the keeper was killed too, the next run removes the stale views and
# completes.
. /vm/dm.inc

S=$D
RUN=$T/mr
PP=47101
RP=47102
mkdir -p "$S/p" "$S/r/plain" "$S/r/mixed" "$S/r/slow" "$T/run"
cp "$IMG/dyn.vhdx" "$IMG/fixed.vhdx" "$IMG/base.vhdx" "$IMG/diff.avhdx" \
	"$IMG/slow.vhdx" "$S/p/"
$HVRESYNC keygen "$S/psk" >/dev/null 2>&1 || fail "keygen"

cat >"$S/p.conf" <<EOF
[agent]
retries = 0
listen = 127.0.0.1:$PP
control = $T/run/p.sock
state-dir = $S/p-state
psk-file = $S/psk

[vm plain]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/dyn.vhdx
disk = $S/p/fixed.vhdx

[vm mixed]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/dyn.vhdx
disk = $S/p/diff.avhdx

[vm slow]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/slow.vhdx
disk = $S/p/fixed.vhdx
EOF
cat >"$S/r.conf" <<EOF
[agent]
retries = 0
listen = 127.0.0.1:$RP
control = $T/run/r.sock
state-dir = $S/r-state
psk-file = $S/psk

[vm plain]
role = replica
disk = $S/r/plain/dyn.vhdx
disk = $S/r/plain/fixed.vhdx

[vm mixed]
role = replica
disk = $S/r/mixed/dyn.vhdx
disk = $S/r/mixed/diff.avhdx

[vm slow]
role = replica
disk = $S/r/slow/slow.vhdx
disk = $S/r/slow/fixed.vhdx
EOF

# start_agent p|r [ARGS]: the agent in the background, up when its control
# socket answers.
start_agent() {
	local n=$1
	shift
	$HVRESYNC agent -f --config "$S/$n.conf" "$@" 2>>"$T/$n.log" &
	eval "PID_$n=$!"
	if wait_until 60 sh -c "$HVRESYNC vm list --control $T/run/$n.sock >/dev/null 2>&1"; then
		return 0
	fi
	note "agent $n did not come up: $(tail -n 3 "$T/$n.log")"
	return 1
}

stop_agent() {
	local pid
	eval "pid=\$PID_$1"
	kill -TERM "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
}

# fresh VM: empty recovery disks, all zeros: unlike every primary.
fresh() {
	rm -f "$S/r/$1"/*
	case $1 in
	plain)
		$HVRESYNC create "$S/r/plain/dyn.vhdx" 32M >/dev/null &&
			$HVRESYNC create "$S/r/plain/fixed.vhdx" 16M >/dev/null
		;;
	mixed)
		$HVRESYNC create "$S/r/mixed/dyn.vhdx" 32M >/dev/null &&
			$HVRESYNC create "$S/r/mixed/diff.avhdx" 16M >/dev/null
		;;
	slow)
		$HVRESYNC create "$S/r/slow/slow.vhdx" 32M >/dev/null &&
			$HVRESYNC create "$S/r/slow/fixed.vhdx" 16M >/dev/null
		;;
	esac || fail "cannot create the recovery disks of $1"
}

# mr VM ARGS...: mount-and-resync; MR_RC, $T/mr.out, $T/mr.err.
mr() {
	local vm=$1
	shift
	timeout -s KILL 200 $HVRESYNC mount-and-resync "$vm" --config "$S/p.conf" \
		--run-dir "$RUN" --recovery-config "$S/r.conf" "$@" \
		>"$T/mr.out" 2>"$T/mr.err"
	MR_RC=$?
}

show_mr() { sed -n '1,12s/^/#     | /p' "$T/mr.err"; }

expect_mr() {
	if [ "$MR_RC" -eq "$1" ]; then
		ok "$2"
	else
		fail "$2: exit $MR_RC, want $1"
		show_mr
	fi
}

# same VM DISK: the recovery copy's raw bytes are the primary's.
same() {
	local got want
	want=$(expected "$2")
	got=$(vhdx-cat "$S/r/$1/$2" 2>/dev/null | sha256sum | cut -d' ' -f1)
	if [ "$got" = "$want" ]; then
		ok "$1: recovery $2 has the primary's bytes (sha256 = qemu-img convert's)"
	else
		fail "$1: recovery $2 sha256 $got, want $want"
	fi
}

job_state_is() {
	$HVRESYNC job show "$1" --json --control "$T/run/p.sock" 2>/dev/null |
		grep -Eq "\"JobState\": $2([^0-9]|\$)"
}

# job_digest JOB: the job's state, bytes and each disk's resume decision on
# one line.
job_digest() {
	$HVRESYNC job show "$1" --control "$T/run/p.sock" 2>&1 |
		grep -E 'JobState|Bytes|Resume|ErrorDescription|Percent' |
		sed 's/^ *//' | tr '\n' ';'
}

# views_open: how many of our views something holds open.
views_open() {
	dmsetup info -c --noheadings --separator ' ' -o name,open 2>/dev/null |
		awk '$1 ~ /^hvresync-/ && $2 > 0' | grep -c .
}
some_open() { [ "$(views_open)" -gt 0 ]; }

mapper_ours() { ls /dev/mapper 2>/dev/null | grep -c '^hvresync-'; }
mounts_under() { grep -c " $RUN[/ ]" /proc/self/mountinfo; }
clean() {
	[ "$(mapper_ours)" -eq 0 ] && [ "$(dm_leftovers)" -eq 0 ] &&
		[ "$(loop_leftovers)" -eq 0 ] && [ "$(mounts_under)" -eq 0 ]
}

# no_leftovers DESC: nothing of a run is left (a few seconds for the
# kernel's autoclear of loop devices).
no_leftovers() {
	if wait_until 10 clean; then
		ok "$1: no /dev/mapper/hvresync-*, dm device, loop device or mount left"
	else
		fail "$1: left: $(mapper_ours) hvresync nodes, $(dm_leftovers) dm, $(loop_leftovers) loop, $(mounts_under) mounts"
		dmsetup ls 2>&1 | sed -n '1,5s/^/#     /p'
	fi
}

# the recovery agent serves the disks that exist when it starts
fresh plain
fresh mixed
fresh slow
start_agent r || {
	fail "recovery agent"
	exit 0
}
start_agent p || {
	fail "primary agent"
	exit 0
}

# --- --view dm
mr plain --view dm --json
expect_mr 0 "--view dm: exit 0"
check "--view dm: dyn.vhdx said to be a dm view" \
	grep -q "^hvresync: plain: disk dyn.vhdx: dm view /dev/mapper/hvresync-plain-dyn (kernel)$" "$T/mr.err"
check "--view dm: fixed.vhdx said to be a dm view" \
	grep -q "^hvresync: plain: disk fixed.vhdx: dm view /dev/mapper/hvresync-plain-fixed (kernel)$" "$T/mr.err"
check "--view dm: --json says ViewKind dm for both disks" \
	test "$(grep -c '"ViewKind": "dm"' "$T/mr.out")" -eq 2
if grep -q '"Path": "/dev/mapper/hvresync-plain-dyn"' "$T/mr.out" &&
	grep -q '"Path": "/dev/mapper/hvresync-plain-fixed"' "$T/mr.out"; then
	ok "--view dm: the agent's job read /dev/mapper/hvresync-plain-{dyn,fixed}"
else
	fail "--view dm: the agent's job did not read the dm views"
	grep '"Path"' "$T/mr.out" | sed -n '1,6s/^/#     /p'
fi
check "--view dm: nothing was mounted under RUN-DIR" \
	sh -c "! grep -q 'mounted under' '$T/mr.err'"
same plain dyn.vhdx
same plain fixed.vhdx
no_leftovers "after --view dm"
check "RUN-DIR is empty" test -z "$(ls -A "$RUN" 2>/dev/null)"

# --- --view dm refused: a differencing disk cannot be mapped
mr mixed --view dm
expect_mr 2 "--view dm with a differencing disk: exit 2"
if one_line "$T/mr.err" &&
	grep -q 'mount-and-resync mixed: --view dm: .*diff.avhdx: a differencing disk needs its parent chain' "$T/mr.err"; then
	ok "--view dm refused in one line naming the disk and why: $(head -c 200 "$T/mr.err")"
else
	fail "--view dm refusal: $(wc -l <"$T/mr.err") stderr lines (want 1) or no reason"
	show_mr
fi
check "--view dm refused: no job started" sh -c "! grep -q '^Job: ' '$T/mr.out'"
no_leftovers "after the refused --view dm"
check "RUN-DIR is empty after the refusal" test -z "$(ls -A "$RUN" 2>/dev/null)"

# --- --view auto: dm for the plain disk, FUSE for the chain
mr mixed --view auto
expect_mr 0 "--view auto: exit 0"
check "--view auto: dyn.vhdx through dm, said so" \
	grep -q "^hvresync: mixed: disk dyn.vhdx: dm view /dev/mapper/hvresync-mixed-dyn (kernel)$" "$T/mr.err"
check "--view auto: diff.avhdx through FUSE, saying why" \
	grep -q "^hvresync: mixed: disk diff.avhdx: FUSE view (a differencing disk needs its parent chain, which device-mapper cannot merge)$" "$T/mr.err"
check "--view auto: one FUSE view mounted" grep -q "mixed: 1 view mounted under $RUN/mixed" "$T/mr.err"
same mixed dyn.vhdx
same mixed diff.avhdx
no_leftovers "after --view auto"

# --- --view fuse: no dm at all
fresh mixed
mr mixed --view fuse --json
expect_mr 0 "--view fuse: exit 0"
check "--view fuse: no dm view said, none in --json" \
	sh -c "! grep -q 'dm view' '$T/mr.err' && ! grep -q '\"ViewKind\": \"dm\"' '$T/mr.out'"
check "--view fuse: the job read the FUSE files" \
	grep -q "\"Path\": \"$RUN/mixed/dyn.vhdx\"" "$T/mr.out"
same mixed dyn.vhdx
same mixed diff.avhdx
no_leftovers "after --view fuse"

# --- SIGKILL mid-job: a slow job to kill into.  VM slow's slow.vhdx holds
# 24 MiB of random bytes (the .prep): the agent compresses what it sends,
# so only those keep a job under --bwlimit busy for long (about 48 s at
# 512 KiB/s), however fast the views read.
stop_agent p
start_agent p --bwlimit 512K || fail "primary agent with --bwlimit"
fresh slow

# bg: mount-and-resync --view dm in the background until its job has run
# a moment; BG its pid, BJ its job.
bg() {
	$HVRESYNC mount-and-resync slow --config "$S/p.conf" --run-dir "$RUN" \
		--view dm >"$T/bg.out" 2>"$T/bg.err" &
	BG=$!
	BJ=
	if wait_until 60 grep -q '^Job: ' "$T/bg.out"; then
		BJ=$(sed -n 's/^Job: //p' "$T/bg.out")
		# mid-job: the agent reads a view
		wait_until 30 some_open && kill -0 $BG && return 0
	fi
	sed -n '1,12s/^/#     bg: /p' "$T/bg.out" "$T/bg.err"
	return 1
}

cancel_bg_job() {
	[ -n "$BJ" ] || return 0
	$HVRESYNC job cancel "$BJ" --wait --control "$T/run/p.sock" >/dev/null 2>&1
	wait_until 30 job_state_is "$BJ" '(7|8|9|10)'
}


diag() {
	note "diagnostics: $(dmsetup info -c 2>&1 | tr '\n' '|')"
	note "loops: $(losetup -a 2>&1 | tr '\n' '|')"
	$HVRESYNC job show "$BJ" --control "$T/run/p.sock" 2>&1 |
		grep -E 'JobState|Phase|ErrorDescription' | sed 's/^/#     /'
	sed -n '1,6s/^/#     bg: /p' "$T/bg.err"
}

# SIGKILL of the command alone: its keeper takes the views down though the
# agent's job still reads them
if bg; then
	check "mid-job: both dm views exist" test "$(mapper_ours)" -eq 2
	check "mid-job: the agent's job holds a view open" some_open
	kill -KILL $BG
	wait $BG 2>/dev/null
	# the open view now fails every read: the job ends on its own with
	# an error instead of reading an image nobody locks
	if wait_until 40 job_state_is "$BJ" 10; then
		ok "SIGKILL mid-job: the job reading the views failed on its own (JobState 10)"
	else
		fail "SIGKILL mid-job: the job did not fail"
		diag
	fi
	if wait_until 40 clean; then
		ok "SIGKILL of mount-and-resync mid-job: its keeper left no node, dm device, loop device or mount"
	else
		fail "SIGKILL mid-job: left $(mapper_ours) hvresync nodes, $(dm_leftovers) dm, $(loop_leftovers) loop"
		diag
	fi
	cancel_bg_job
else
	fail "the slow --view dm job did not get going: $(head -n 3 "$T/bg.err")"
	kill -KILL $BG 2>/dev/null
fi

# the keeper dies too (both SIGKILLed): the views stay for the next run
if bg; then
	check "the run after a SIGKILL started clean (nothing stale)" \
		sh -c "! grep -q 'left behind' '$T/bg.err'"
	keeper=$(awk -v pp=$BG '$4 == pp {print $1}' /proc/[0-9]*/stat 2>/dev/null)
	check "mid-job: mount-and-resync has its keeper child" test -n "$keeper"
	kill -KILL $keeper $BG
	wait $BG 2>/dev/null
	sleep 1
	check "keeper and command SIGKILLed: the views are left (nobody to remove them)" \
		test "$(mapper_ours)" -eq 2
	cancel_bg_job
else
	fail "the second slow --view dm job did not get going: $(head -n 3 "$T/bg.err")"
	kill -KILL $BG 2>/dev/null
fi

# --timeout and SIGTERM: the command cancels the job, then removes the views.
# Fresh recovery disks first: the jobs cancelled above may have sent
# everything already, and a job with nothing to send beats any timeout.
# The recovery agent restarts around it, so no session of a cancelled job
# still holds the files being replaced.
stop_agent r
fresh slow
start_agent r || fail "recovery agent restart"
mr slow --view dm --timeout 1
# a job that beat the clock says what it did (in the failure's own line:
# the summary of failures is what a CI log keeps)
if [ "$MR_RC" -ne 2 ]; then
	fail "--view dm --timeout 1: exit $MR_RC, want 2 ($(job_digest "$(sed -n 's/^Job: //p' "$T/mr.out")"))"
	show_mr
else
	ok "--view dm --timeout 1: exit 2"
fi
check "that run first removed the views left behind, saying so" \
	grep -q "^hvresync: slow: removing dm view /dev/mapper/hvresync-slow-slow left behind by an earlier run" "$T/mr.err"
check "--timeout 1: it says the job did not finish in time" \
	grep -q "did not finish within 1 s" "$T/mr.err"
no_leftovers "after --timeout with dm views"
if bg; then
	kill -TERM $BG
	wait $BG
	rc=$?
	if [ $rc -eq 2 ] && grep -q "stopped by SIGTERM" "$T/bg.err"; then
		ok "SIGTERM mid-job: exit 2, saying so"
	else
		fail "SIGTERM mid-job: exit $rc, want 2 and 'stopped by SIGTERM'"
		diag
	fi
	wait_until 30 job_state_is "$BJ" '(7|8|9|10)'
	if job_state_is "$BJ" 8; then
		ok "SIGTERM mid-job: the job was cancelled first (8 Terminated)"
	else
		fail "SIGTERM mid-job: the job was not cancelled (8 Terminated)"
		diag
		sed -n '1,12s/^/#     bg: /p' "$T/bg.err"
	fi
	no_leftovers "after SIGTERM with dm views"
	cancel_bg_job
else
	fail "the slow --view dm job did not get going: $(head -n 3 "$T/bg.err")"
	kill -KILL $BG 2>/dev/null
fi

# --- after all that, a run at full speed completes
stop_agent p
start_agent p || fail "primary agent restart"
mr slow --view dm
expect_mr 0 "the run after the SIGKILLs and cancels: exit 0"
check "it found nothing left behind" sh -c "! grep -q 'left behind' '$T/mr.err'"
same slow slow.vhdx
same slow fixed.vhdx
no_leftovers "at the end"

stop_agent p
stop_agent r
