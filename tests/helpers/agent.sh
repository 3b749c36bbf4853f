# tests/helpers/agent.sh - helpers for the agent integration tests
# (t-agent*.sh): real `hvresync agent` daemons on loopback, each named by a
# short NAME with NAME.conf, NAME.log, run/NAME.sock and NAME-state/ in
# $SCRATCH.  Source it after tests/lib.sh.

declare -A AGENT_PID=()

for _t in qemu-img qemu-io python3 timeout sha256sum; do
	command -v "$_t" >/dev/null || skip "$_t not installed (tools/install-deps)"
done
[ -x "$HVRESYNC" ] || { echo "FAIL: $HVRESYNC not built (make all)"; exit 1; }
mkdir -p "$SCRATCH/run"

agent_cleanup() {
	local n
	for n in "${!AGENT_PID[@]}"; do
		kill -9 "${AGENT_PID[$n]}" 2>/dev/null
	done
	wait 2>/dev/null
	cleanup
}
trap agent_cleanup EXIT

# free_port: a TCP port nobody listens on right now.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

sock() { echo "$SCRATCH/run/$1.sock"; }

# start_agent NAME [ARGS...]: run `hvresync agent -f` on NAME.conf (extra
# ARGS and the environment pass through) and wait until its control socket
# answers.  Returns 1 (and shows the log) when it does not come up.
start_agent() {
	local n=$1 i
	shift
	"$HVRESYNC" agent -f --config "$SCRATCH/$n.conf" "$@" 2>>"$SCRATCH/$n.log" &
	AGENT_PID[$n]=$!
	for i in $(seq 200); do
		timeout -k 2 5 "$HVRESYNC" vm list --control "$(sock "$n")" >/dev/null 2>&1 &&
			return 0
		kill -0 "${AGENT_PID[$n]}" 2>/dev/null || break
		sleep 0.05
	done
	echo "    agent $n did not come up:"
	tail -n 5 "$SCRATCH/$n.log" | sed 's/^/    | /'
	return 1
}

# stop_agent NAME: SIGTERM, and it must be gone within 20 s (AGENT_RC is
# its exit status).
stop_agent() {
	local n=$1 pid=${AGENT_PID[$1]} i
	kill -TERM "$pid" 2>/dev/null
	for i in $(seq 400); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$pid" 2>/dev/null; then
		fail "agent $n still runs 20 s after SIGTERM"
		kill -9 "$pid"
	fi
	wait "$pid" 2>/dev/null
	AGENT_RC=$?
	unset "AGENT_PID[$n]"
}

# kill_agent NAME: SIGKILL, no goodbye.
kill_agent() {
	kill -9 "${AGENT_PID[$1]}" 2>/dev/null
	wait "${AGENT_PID[$1]}" 2>/dev/null
	unset "AGENT_PID[$1]"
}

# hv NAME ARGS...: the CLI against agent NAME's socket, 60 s at most.
hv() {
	local n=$1
	shift
	timeout -k 5 60 "$HVRESYNC" "$@" --control "$(sock "$n")"
}

# py EXPR: evaluate EXPR with d = the JSON document on stdin.
py() {
	python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"
}

# rv NAME VM [ARGS...]: run `resync VM --json ARGS`; $RV gets the
# ReturnValue, $JOB the job's InstanceID (or "").
rv() {
	local n=$1
	shift
	hv "$n" resync "$@" --json >"$SCRATCH/rv.out" 2>"$SCRATCH/rv.err"
	RV=$(py 'd["ReturnValue"]' <"$SCRATCH/rv.out" 2>/dev/null) || RV=no-json
	JOB=$(py 'd["Job"] or ""' <"$SCRATCH/rv.out" 2>/dev/null)
}

# expect_rv DESC WANT NAME VM [ARGS...]
expect_rv() {
	local d=$1 want=$2
	shift 2
	rv "$@"
	if [ "$RV" = "$want" ]; then
		ok "$d: ReturnValue $RV${JOB:+, job $JOB}$( [ "$want" != 4096 ] && echo " ($(head -c 150 "$SCRATCH/rv.err"))")"
	else
		fail "$d: ReturnValue $RV, want $want"
		sed 's/^/    stderr: /' "$SCRATCH/rv.err" | head -n 3
	fi
}

# jobf NAME ID PROPERTY: one property of a job (GetJob).
jobf() {
	hv "$1" job show "$2" --json 2>/dev/null | py "d['Instance']['$3']" 2>/dev/null
}

# vmf NAME VM PROPERTY: one property of a VM (GetVM).
vmf() {
	hv "$1" vm show "$2" --json 2>/dev/null | py "d['Instance']['$3']" 2>/dev/null
}

# poll_job NAME ID SECONDS PROPERTY OP VALUE...: poll GetJob over the
# socket every 50 ms (no process per poll, so a slow build keeps up) until
# PROPERTY OP VALUE holds for one of the VALUEs (OP: in, ge).
poll_job() {
	PYTHONPATH="$TOP/tests/helpers" python3 - "$(sock "$1")" "$2" "$3" "$4" "$5" "${@:6}" <<'EOF'
import sys, time
import control
path, job, secs, prop, op = sys.argv[1:6]
want = [int(x) for x in sys.argv[6:]]
end = time.monotonic() + float(secs)
v = None
while time.monotonic() < end:
    try:
        v = control.call(path, {"Method": "GetJob", "Job": job}, 10)["Instance"][prop]
        if (op == "in" and v in want) or (op == "ge" and v >= want[0]):
            sys.exit(0)
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(0.05)
print("    job %s: %s is %s after %s s, want %s %s" % (job, prop, v, secs, op, want))
# what the job looked like then: a CI log keeps only failures' output
try:
    i = control.call(path, {"Method": "GetJob", "Job": job}, 10)["Instance"]
    print("    job: state %s phase %s retries %s compared %s sent %s error %r" %
          (i.get("JobState"), i.get("Phase"), i.get("Retries"),
           i.get("BytesCompared"), i.get("BytesSent"), i.get("ErrorDescription")))
    for d in i.get("Disks", []):
        print("      disk %s: size %s compared %s resume %s started %s sent %s passes %s %r" %
              (d.get("Name"), d.get("VirtualSize"), d.get("BytesCompared"),
               d.get("ResumeOffset"), d.get("Started"), d.get("Sent"),
               d.get("Passes"), d.get("Resume")))
except (OSError, ValueError, KeyError) as e:
    print("    job: GetJob failed: %s" % e)
sys.exit(1)
EOF
	local rc=$?
	[ $rc = 0 ] || tail -n 6 "$SCRATCH/$1.log" 2>/dev/null | sed "s/^/    $1.log: /"
	return $rc
}

# wait_job NAME ID SECONDS STATE...: until JobState is one of STATEs.
wait_job() { poll_job "$1" "$2" "$3" JobState in "${@:4}"; }

# wait_percent NAME ID MIN SECONDS: until PercentComplete >= MIN.
wait_percent() { poll_job "$1" "$2" "$4" PercentComplete ge "$3"; }

# raw NAME JSON: send one raw request line, print the reply line.
raw() {
	python3 "$TOP/tests/helpers/control.py" "$(sock "$1")" "$2"
}

# fill VHDX OFFSET LEN: write LEN random bytes at OFFSET (qemu-io).
fill() {
	head -c "$3" /dev/urandom >"$SCRATCH/fill.rnd"
	qemu-io -f vhdx -c "write -q -s $SCRATCH/fill.rnd $2 $3" "$1" >/dev/null ||
		fail "qemu-io write to $1"
	rm -f "$SCRATCH/fill.rnd"
}

# agent_section NAME PORT: the [agent] lines every test agent has (its
# peer port on loopback, control socket, state dir and the shared key);
# a test appends its own keys and VMs:
#   { agent_section p "$PP"; cat <<EOF ... EOF; } >p.conf
agent_section() {
	printf '[agent]\nlisten = 127.0.0.1:%s\ncontrol = %s/run/%s.sock\nstate-dir = %s/%s-state\npsk-file = %s/psk\n' \
		"$2" "$SCRATCH" "$1" "$SCRATCH" "$1" "$SCRATCH"
}

# same A B: qemu-img compare says the guest contents are identical.
same() { qemu-img compare -q "$1" "$2"; }
