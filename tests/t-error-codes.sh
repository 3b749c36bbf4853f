#!/bin/bash
# t-error-codes.sh - right codes, right messages (issue 10, item 6): two
# real agents on loopback, the primary's replica address pointing at
# tests/helpers/relay in front of the recovery agent, `retries = 0` so a
# network failure ends the job at once.
#   (a) the relay resets the connection mid-send: the job ends in
#       Exception with ErrorCode 32777 (peer unreachable or gone);
#   (b) the recovery image lives on a small tmpfs and fills it mid-send:
#       the recovery side sends ERROR and closes while the primary is busy
#       sending DATA; the job's ErrorDescription carries the recovery
#       side's "No space left on device", not "connection closed", three
#       runs out of three (the race is the point), and `hvresync push`
#       through the relay prints it too;
#   (c) the recovery agent stops (SIGTERM) mid-send, which closes the
#       connection under the session: 32777 too.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"
. "$TOP/tests/helpers/relay.sh"

RELAY=${RELAY:-$(dirname "$HVRESYNC")/helpers/relay}
[ -x "$RELAY" ] || { echo "FAIL: $RELAY not built (make all)"; exit 1; }
S=$SCRATCH
cd "$S" || exit 1

RELAY_PID=
_tmpfs=()
codes_cleanup() {
	local m
	[ -n "$RELAY_PID" ] && kill -TERM "$RELAY_PID" 2>/dev/null
	for n in "${!AGENT_PID[@]}"; do
		kill -9 "${AGENT_PID[$n]}" 2>/dev/null
	done
	wait 2>/dev/null
	for m in "${_tmpfs[@]:-}"; do
		[ -n "$m" ] && umount "$m" 2>/dev/null
	done
	cleanup
}
trap codes_cleanup EXIT


relay_bytes() { sed -n 's/^bytes //p' relay.stats 2>/dev/null; }

# run_job VM: resync VM on the primary and wait until the job is final;
# sets JOB, STATE, CODE and DESC.
run_job() {
	expect_rv "resync $1" 4096 p "$1"
	STATE= CODE= DESC=
	[ -n "$JOB" ] || return 1
	wait_job p "$JOB" 90 7 8 9 10 || return 1
	STATE=$(jobf p "$JOB" JobState)
	CODE=$(jobf p "$JOB" ErrorCode)
	DESC=$(jobf p "$JOB" ErrorDescription)
	echo "    job $JOB: JobState $STATE, ErrorCode $CODE: $DESC"
}

# ---------------------------------------------------------------------------
say "setup: a 64 MiB random disk, empty recovery images, two agents"
MIB=$((1 << 20))
head -c $((64 * MIB)) /dev/urandom >rnd.raw
mkdir -p p r
qemu-img convert -f raw -O vhdx rnd.raw p/base.vhdx || fail "qemu-img convert"
rm -f rnd.raw
# Export names are VM:FILE, so both sides call each disk os.vhdx.
VMS="cut kill full1 full2 full3"
for v in $VMS; do
	mkdir -p "p/$v" "r/$v"
	cp p/base.vhdx "p/$v/os.vhdx"
done
rm -f p/base.vhdx

# (b)'s recovery images, each on its own tmpfs with room for the empty
# image and about a third of the data.
FULL=yes
for v in full1 full2 full3; do
	if ! mount -t tmpfs -o size=24m tmpfs "r/$v" 2>/dev/null; then
		FULL=
		break
	fi
	_tmpfs+=("$S/r/$v")
done
[ -n "$FULL" ] || VMS="cut kill"
for v in $VMS; do
	"$HVRESYNC" create "r/$v/os.vhdx" 64M >/dev/null ||
		fail "hvresync create r/$v/os.vhdx"
done
"$HVRESYNC" keygen psk >/dev/null || fail "keygen"
PP=$(free_port)
RP=$(free_port)
LP=$(free_port)
{
	agent_section p "$PP"
	cat <<EOF
retries = 0
EOF
} >p.conf
{
	agent_section r "$RP"
	cat <<EOF
EOF
} >r.conf
for v in $VMS; do
	printf '\n[vm %s]\nrole = primary\nreplica = 127.0.0.1:%s\ndisk = %s\n' \
		"$v" "$LP" "$S/p/$v/os.vhdx" >>p.conf
	printf '\n[vm %s]\nrole = replica\ndisk = %s\n' "$v" "$S/r/$v/os.vhdx" >>r.conf
done
start_agent r || { fail "recovery agent"; finish; }
start_agent p || { fail "primary agent"; finish; }

# ---------------------------------------------------------------------------
say "(a) the relay resets the connection mid-send"
start_relay "$RP" --cut-after $((8 * MIB))
run_job cut
stop_relay
check "(a) the job ended in Exception (JobState $STATE)" test "$STATE" = 10
check "(a) ... with ErrorCode 32777 (got $CODE)" test "$CODE" = 32777
check "(a) ... and says the connection was reset or closed" \
	grep -qiE 'reset|closed|broken pipe' <<<"$DESC"

# ---------------------------------------------------------------------------
say "(b) the recovery side's filesystem fills mid-send"
if [ -z "$FULL" ]; then
	echo "SKIP: (b) cannot mount a tmpfs here (not root?)"
else
	start_relay "$RP"
	for v in full1 full2 full3; do
		run_job "$v"
		check "(b) $v: the job ended in Exception (JobState $STATE)" test "$STATE" = 10
		check "(b) $v: ErrorDescription has the recovery side's message" \
			grep -q 'No space left on device' <<<"$DESC"
		check "(b) $v: ... not a connection failure (ErrorCode $CODE)" \
			test "$CODE" != 32777
	done
	# `hvresync push` through the relay straight to the recovery agent's
	# export (its copy is held by the failed job: resume it).
	timeout -k 5 60 "$HVRESYNC" push --psk-file psk p/full1/os.vhdx \
		"127.0.0.1:$LP/full1:os.vhdx" >push.out 2>push.err
	rc=$?
	echo "    push: exit $rc: $(cat push.err)"
	check "(b) push through the relay exits 2" test "$rc" = 2
	check "(b) ... and prints the recovery side's message" \
		grep -q 'No space left on device' push.err
	stop_relay
fi

# ---------------------------------------------------------------------------
say "(c) the recovery agent stops (SIGTERM) mid-send: the connection closes"
# A primary limited to 4 MiB/s, so that the stop lands mid-send.
stop_agent p
start_agent p --bwlimit 4M || { fail "primary agent with --bwlimit"; finish; }
start_relay "$RP"
expect_rv "resync kill" 4096 p kill
for i in $(seq 500); do
	b=$(relay_bytes)
	[ "${b:-0}" -ge $((8 * MIB)) ] && break
	sleep 0.02
done
stop_agent r
echo "    recovery agent stopped after ${b:-0} bytes through the relay"
STATE= CODE= DESC=
if [ -n "$JOB" ] && wait_job p "$JOB" 90 7 8 9 10; then
	STATE=$(jobf p "$JOB" JobState)
	CODE=$(jobf p "$JOB" ErrorCode)
	DESC=$(jobf p "$JOB" ErrorDescription)
	echo "    job $JOB: JobState $STATE, ErrorCode $CODE: $DESC"
fi
stop_relay
check "(c) the job ended in Exception (JobState $STATE)" test "$STATE" = 10
check "(c) ... with ErrorCode 32777 (got $CODE)" test "$CODE" = 32777

stop_agent p
finish
