#!/bin/bash
# t-serve-hostile.sh - hostile connections cannot starve peers (issue 10,
# item 5), against `hvresync serve` with a pre-shared key on loopback:
#   (a) 200 idle TCP connections, never a TLS byte, held open for
#       ATTACK_SECONDS (60) from 25 loopback addresses (127.0.0.2-26),
#       reopened as the server drops them: pushes started early and late
#       in the attack complete with the disks identical; no idle
#       connection lives past the 10 s handshake limit; the server logs a
#       bounded number of lines about them, with a summary that counts them;
#   (b) 16 sessions held busy by slow pushes (--bwlimit), all 16 started
#       at once from one address: a 17th push is told "busy: 16 sessions"
#       (exit 2, at once), and succeeds once the 16 are gone;
#   (c) one idle connection, no other load: dropped after about 10 s.
# ATTACK_SECONDS=20 makes (a) shorter for a quick run.
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }
command -v python3 >/dev/null || skip "python3 not installed"

S=$SCRATCH
STATE=$S/state
SERVER_PID=
ATTACK_SECONDS=${ATTACK_SECONDS:-60}
BG_PIDS=()
hostile_cleanup() {
	local p
	for p in "${BG_PIDS[@]:-}"; do
		[ -n "$p" ] && kill -TERM "$p" 2>/dev/null
	done
	stop_server
	cleanup
}
trap hostile_cleanup EXIT
. "$(dirname "$0")/helpers/serve.sh"
cd "$S" || exit 1

python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.2", 0))' \
	2>/dev/null || skip "cannot bind 127.0.0.2 (loopback is not 127/8 here)"

# idle.py SECONDS N PORT OUT: hold N TCP connections to 127.0.0.1:PORT,
# from 127.0.0.(2 + i % 25), sending nothing; one the server closes is
# reopened a second later.  Writes "ready" to OUT.ready once all N are
# open, and at the end OUT as JSON: connects, closed by the server, and
# the longest time the server kept one open.
cat >idle.py <<'EOF'
import json, selectors, socket, sys, time
secs, n, port, out = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sel = selectors.DefaultSelector()
st = {"connects": 0, "failed_connects": 0, "closed_by_server": 0,
      "longest": 0.0, "open_at_end": 0}
reopen = []  # (when, slot)

def open_one(slot):
    s = socket.socket()
    s.bind(("127.0.0.%d" % (2 + slot % 25), 0))
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        st["failed_connects"] += 1
        s.close()
        reopen.append((time.monotonic() + 1, slot))
        return
    st["connects"] += 1
    sel.register(s, selectors.EVENT_READ, (slot, time.monotonic()))

for i in range(n):
    open_one(i)
open(out + ".ready", "w").write("ready\n")
end = time.monotonic() + secs
while time.monotonic() < end:
    for key, _ in sel.select(timeout=0.2):
        slot, t0 = key.data
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b""
        if data:
            continue  # a server would never say anything: keep holding
        life = time.monotonic() - t0
        st["closed_by_server"] += 1
        st["longest"] = max(st["longest"], life)
        sel.unregister(key.fileobj)
        key.fileobj.close()
        reopen.append((time.monotonic() + 1, slot))
    now = time.monotonic()
    due = [r for r in reopen if r[0] <= now]
    reopen = [r for r in reopen if r[0] > now]
    for _, slot in due:
        open_one(slot)
now = time.monotonic()
for key in list(sel.get_map().values()):
    st["open_at_end"] += 1
    st["longest"] = max(st["longest"], now - key.data[1])
    key.fileobj.close()
json.dump(st, open(out, "w"))
EOF

# one_idle PORT OUT: one idle connection from 127.0.0.99; OUT gets the
# seconds until the server closed it (or "held" after 30 s).
one_idle() {
	python3 - "$1" "$2" <<'EOF' &
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.99", 0))
s.settimeout(30)
t0 = time.monotonic()
s.connect(("127.0.0.1", int(sys.argv[1])))
try:
    while s.recv(4096):
        pass
    r = "%.2f" % (time.monotonic() - t0)
except socket.timeout:
    r = "held"
except OSError:
    r = "%.2f" % (time.monotonic() - t0)
open(sys.argv[2], "w").write(r + "\n")
EOF
	BG_PIDS+=($!)
}

# pushed DESC NAME: the push to export NAME exited 0 and the export now
# holds the source.
pushed() {
	if [ "$PUSH_RC" -eq 0 ] && cmp -s src.raw "e$2.raw"; then
		ok "$1"
	else
		fail "$1: exit $PUSH_RC, $(tail -n 1 "$S/$2.err")"
	fi
}

# log_since N: the server's log from line N on.
log_since() { tail -n +"$1" serve.log; }

# ---------------------------------------------------------------------------
say "setup: a key, a 16 MiB source, 19 raw exports, the server"
make_key "$S/key"
head -c $((16 << 20)) /dev/urandom >src.raw
exports=()
for e in a b $(seq 17); do
	truncate -s 16M "e$e.raw"
	exports+=(--export "$e=$S/e$e.raw")
done
start_server serve.log --psk-file "$S/key" "${exports[@]}" || finish

# ---------------------------------------------------------------------------
say "(a) 200 idle connections for $ATTACK_SECONDS s; pushes during them"
mark=$(($(wc -l <serve.log) + 1))
t0=$(date +%s)
python3 idle.py "$ATTACK_SECONDS" 200 "$PORT" "$S/idle.json" &
IDLE_PID=$!
BG_PIDS+=($IDLE_PID)
for i in $(seq 100); do [ -e idle.json.ready ] && break; sleep 0.1; done
[ -e idle.json.ready ] || fail "the 200 idle connections did not open"
sleep 2
push a src.raw
pushed "(a) a push 2 s into the attack completes, identical" a
wait_s=$((ATTACK_SECONDS - 12 - ($(date +%s) - t0)))
[ "$wait_s" -gt 0 ] && sleep "$wait_s"
push b src.raw
pushed "(a) a push $(($(date +%s) - t0)) s into the attack completes, identical" b
wait "$IDLE_PID"
idle_rc=$?
log_since "$mark" >attack.log
py() { python3 -c "import json; d = json.load(open('$S/idle.json')); print($1)"; }
if [ "$idle_rc" -ne 0 ] || [ ! -s idle.json ]; then
	fail "(a) the idle connections script failed (exit $idle_rc)"
else
	echo "   idle connections: $(cat idle.json)"
	[ "$(py 'd["connects"]')" -ge 200 ] &&
		ok "(a) $(py 'd["connects"]') idle connections made" ||
		fail "(a) only $(py 'd["connects"]') idle connections made"
	longest=$(py '"%.1f" % d["longest"]')
	python3 -c "import sys; sys.exit(not $longest <= 13)" &&
		ok "(a) no idle connection kept past the handshake limit (longest $longest s)" ||
		fail "(a) an idle connection was kept $longest s (limit 10 s)"
	[ "$(py 'd["closed_by_server"]')" -ge 200 ] &&
		ok "(a) the server closed $(py 'd["closed_by_server"]') of them" ||
		fail "(a) the server closed only $(py 'd["closed_by_server"]')"
fi
# One line per refused connection would be thousands; allow five a 10 s
# period, plus the summary, plus the pushes' own lines.
warn=$(grep -c 'warning:' attack.log)
limit=$(((ATTACK_SECONDS / 10 + 2) * 6 + 10))
[ "$warn" -le "$limit" ] &&
	ok "(a) $warn warning lines in the server log during the attack (at most $limit)" ||
	fail "(a) $warn warning lines in the server log during the attack (want at most $limit)"
summed=$(sed -n 's/.*warning: \([0-9]*\) connections refused or dropped in the last.*/\1/p' attack.log |
	awk '{ n += $1 } END { print n + 0 }')
[ "$summed" -ge 100 ] &&
	ok "(a) the summary lines count $summed refused or dropped connections" ||
	fail "(a) the summary lines count $summed refused or dropped connections (want >= 100): $(grep -m1 'refused or dropped' attack.log)"
kill -0 "$SERVER_PID" 2>/dev/null && ok "(a) the server is still running" ||
	fail "(a) the server died"

# ---------------------------------------------------------------------------
say "(b) 16 busy sessions: a 17th is told busy"
mark=$(($(wc -l <serve.log) + 1))
one_idle "$PORT" "$S/one.idle"
slow=()
for i in $(seq 16); do
	timeout -k 5 100 "$HVRESYNC" push --psk-file "$S/key" --bwlimit 256K \
		src.raw "127.0.0.1:$PORT/$i" >"slow$i.out" 2>&1 &
	slow+=($!)
	BG_PIDS+=($!)
done
for t in $(seq 300); do
	n=$(log_since "$mark" | grep -c 'session start')
	[ "$n" -ge 16 ] && break
	sleep 0.1
done
[ "$n" -ge 16 ] && ok "(b) 16 pushes started at once from one address all got a session" ||
	fail "(b) $n of 16 pushes got a session: $(cat slow*.out | grep -m1 hvresync)"
start=$(date +%s.%N)
push 17 src.raw
took=$(python3 -c "import time; print('%.1f' % (time.time() - $start))")
if [ "$PUSH_RC" -eq 2 ] && grep -q 'busy: 16 sessions' "$S/17.err"; then
	ok "(b) the 17th push is told busy in $took s: $(cat "$S/17.err")"
else
	fail "(b) the 17th push: exit $PUSH_RC, $(cat "$S/17.err")"
fi
mark_b=$mark
for p in "${slow[@]}"; do kill -TERM "$p" 2>/dev/null; done
for p in "${slow[@]}"; do wait "$p" 2>/dev/null; done
for t in $(seq 100); do
	n=$(log_since "$mark" | grep -c 'session end')
	[ "$n" -ge 16 ] && break
	sleep 0.1
done
push 17 src.raw
pushed "(b) once the 16 are gone the 17th push completes, identical" 17

# ---------------------------------------------------------------------------
say "(c) one idle connection is dropped after the 10 s handshake limit"
for t in $(seq 200); do [ -s one.idle ] && break; sleep 0.1; done
life=$(cat one.idle 2>/dev/null)
if [ -n "$life" ] && [ "$life" != held ] &&
	python3 -c "import sys; sys.exit(not 9.5 <= $life <= 13)"; then
	ok "(c) the idle connection was closed after $life s"
else
	fail "(c) the idle connection: ${life:-no result} (want about 10 s)"
fi

# Refusals are logged in full up to five per 10 s, then summed up; the
# last summary comes when the server stops.
stop_server
log_since "$mark_b" >end.log
grep -q 'busy: 16 sessions\|[0-9] told busy' end.log &&
	ok "(b) the server logs the refusal" ||
	fail "(b) the server does not log the refusal"
grep -q '127.0.0.99.*timed out\|[0-9] no handshake and HELLO within' end.log &&
	ok "(c) the server says why it closed the idle connection" ||
	fail "(c) no log line about 127.0.0.99: $(grep -m2 warning end.log)"
finish
