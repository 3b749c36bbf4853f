# tests/helpers/relay.sh - the flaky link of the agent tests: start and stop
# tests/helpers/relay.c (built as $(B)/helpers/relay) on port $LP in front
# of an agent, with its byte counts in $S/relay.stats.  Source it after
# tests/lib.sh; needs $RELAY, $LP and $S, and runs in $S.

# start_relay TARGET_PORT [ARGS...]: the relay on $LP forwarding to
# 127.0.0.1:TARGET_PORT (ARGS: --cut-after B1,B2,...); sets RELAY_PID.
start_relay() {
	local target=$1 i
	shift
	rm -f relay.stats relay.out
	"$RELAY" "$LP" "127.0.0.1:$target" --stats "$S/relay.stats" "$@" \
		>relay.out 2>>relay.log &
	RELAY_PID=$!
	for i in $(seq 200); do
		grep -q '^listening ' relay.out 2>/dev/null && return 0
		kill -0 "$RELAY_PID" 2>/dev/null || break
		sleep 0.05
	done
	fail "relay did not come up: $(tail -n 1 relay.log)"
	return 1
}

# stop_relay: SIGTERM (it writes its final stats), must exit 0.
stop_relay() {
	kill -TERM "$RELAY_PID" 2>/dev/null
	wait "$RELAY_PID"
	local rc=$?
	RELAY_PID=
	[ "$rc" -eq 0 ] || fail "relay exited $rc after SIGTERM"
}

# stat_of NAME: one number from relay.stats (bytes, cuts, connections).
stat_of() { sed -n "s/^$1 //p" relay.stats; }
