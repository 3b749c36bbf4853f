# tests/helpers/serve.sh - starting and stopping `hvresync serve` for the
# push tests, and pushing to it (source it after tests/lib.sh; uses
# $HVRESYNC, $STATE and $S, sets PORT and SERVER_PID).

# make_key FILE: a pre-shared key file, by keygen when it works.
make_key() {
	"$HVRESYNC" keygen "$1" >/dev/null 2>&1 && [ -s "$1" ] && return 0
	rm -f "$1"
	python3 -c 'import os; print(os.urandom(32).hex())' >"$1"
	chmod 600 "$1"
}

# try_start_server SECS LOG ARGS...: serve on a free loopback port and set
# PORT; false, with nothing counted as failed, when it does not listen
# within SECS (a test that cuts the power under serve expects that).  LOG
# is appended to, so a restarted server's port is read from its own lines.
try_start_server() {
	local secs=$1 log=$2 i skip
	shift 2
	skip=$(cat "$log" 2>/dev/null | wc -l)
	"$HVRESYNC" serve --listen 127.0.0.1:0 --state-dir "$STATE" "$@" \
		>>"$log" 2>&1 &
	SERVER_PID=$!
	for i in $(seq $((secs * 10))); do
		PORT=$(tail -n +$((skip + 1)) "$log" |
		       sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p')
		[ -n "$PORT" ] && return 0
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.1
	done
	return 1
}

# start_server LOG ARGS...: the same within 10 s, a failure if not.
start_server() {
	try_start_server 10 "$@" && return 0
	fail "server did not start: $(tail -n 3 "$1")"
	return 1
}

stop_server() {
	[ -n "$SERVER_PID" ] || return 0
	kill -TERM "$SERVER_PID" 2>/dev/null
	timeout 20 tail --pid="$SERVER_PID" -f /dev/null 2>/dev/null ||
		kill -KILL "$SERVER_PID" 2>/dev/null
	wait "$SERVER_PID" 2>/dev/null
	SERVER_PID=
}

kill_server() {
	kill -KILL "$SERVER_PID" 2>/dev/null
	wait "$SERVER_PID" 2>/dev/null
	SERVER_PID=
}

# jget FILE KEY: a member of the JSON object in FILE.
jget() {
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# push NAME SRC ARGS...: push SRC to export NAME of the server at $PORT
# with the key $S/key; JSON in $S/NAME.json, stderr in $S/NAME.err, exit
# status in PUSH_RC.
push() {
	local name=$1 src=$2
	shift 2
	timeout -k 5 120 "$HVRESYNC" push --json --psk-file "$S/key" "$@" \
		"$src" "127.0.0.1:$PORT/$name" >"$S/$name.json" 2>"$S/$name.err"
	PUSH_RC=$?
}
