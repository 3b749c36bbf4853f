#!/bin/bash
# t-push-source-change.sh - `hvresync push` of a primary that qemu-io
# writes while the push reads it, on a filesystem without reflink (so the
# live file is read, watched, in passes; issue 9 item 2):
#   (a) writes during the first pass only: a second pass sends what still
#       differs, "passes": 2, exit 0, "identical", and qemu-img compare
#       agrees; the same with --hold (HELLO REPASS), then --merge;
#   (b) a writer that never stops: exit 3, "result": "source-changed",
#       one line on stderr saying so, "passes" = --max-passes;
#   (c) after every push: never "identical" while qemu-img compare says
#       the disks differ;
#   (d) --snapshot reflink here: exit 2 with one line naming the file;
#   (e) the server killed during a held repass (HOLD|REPASS) leaves a
#       record that is not complete, and the next --hold push compares
#       again rather than claim the earlier pass's "complete".
#   (f) a raw primary cut short (truncated) while the push waits to send
#       its differing blocks: exit 2, one line naming the file, the
#       recovery image unchanged and clean, and a push of the restored
#       primary then makes it identical.
#   (g) a raw recovery export cut short during the session (another
#       program ignoring the image locks): the push fails (exit 2) with
#       the recovery side's one line naming the export, the server lives.
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }
command -v qemu-img >/dev/null || skip "qemu-img not installed"
command -v qemu-io >/dev/null || skip "qemu-io not installed"

S=$SCRATCH
STATE=$S/state
SERVER_PID=
WRITER_PID=
LOOPMNT=
t_cleanup() {
	stop_writer
	stop_server
	[ -n "$LOOPMNT" ] && umount "$LOOPMNT" 2>/dev/null
	cleanup
}
trap t_cleanup EXIT

. "$(dirname "$0")/helpers/serve.sh"
M=$((1 << 20))

# The primary must live where FICLONE cannot work, else auto would read a
# clone and never watch: /tmp if it is tmpfs or ext4, else an ext4 made
# in a file and loop-mounted.
P=$S/primary
mkdir -p "$P" "$S/recovery"
case $(stat -f -c %T "$S") in
tmpfs | ext2/ext3) ;;
*)
	[ "$(id -u)" -eq 0 ] || skip "$S is $(stat -f -c %T "$S") and not root to loop-mount an ext4"
	truncate -s 700M "$S/ext4.img" && mkfs.ext4 -q -F "$S/ext4.img" &&
		mount -o loop "$S/ext4.img" "$P" ||
		skip "cannot loop-mount an ext4 for the primary"
	LOOPMNT=$P
	;;
esac
say "primary on $(stat -f -c %T "$P"), recovery in $S/recovery"

stop_writer() {
	[ -n "$WRITER_PID" ] || return 0
	touch "$S/writer.stop"
	timeout 20 tail --pid="$WRITER_PID" -f /dev/null 2>/dev/null ||
		kill -KILL "$WRITER_PID" 2>/dev/null
	wait "$WRITER_PID" 2>/dev/null
	WRITER_PID=
}

# writer FILE COUNT: COUNT writes of 1 MiB (0 = until writer.stop), near
# the start and the end of the disk in turn, a new pattern each time.
writer() {
	local f=$1 count=$2 i=0 off pat
	while [ ! -e "$S/writer.stop" ]; do
		i=$((i + 1))
		pat=$(((i * 37) % 250 + 1))
		if [ $((i % 2)) -eq 1 ]; then off=$((2 * M)); else off=$((250 * M)); fi
		qemu-io -f vhdx -c "write -P $pat $off 1M" "$f" >/dev/null 2>&1 ||
			echo "write $i failed" >>"$S/writer.log"
		echo "$i" >"$S/writer.count"
		[ "$count" -gt 0 ] && [ "$i" -ge "$count" ] && break
		if [ "$count" -gt 0 ]; then sleep 0.3; else sleep 0.05; fi
	done
}

start_writer() {
	rm -f "$S/writer.stop" "$S/writer.count" "$S/writer.log"
	writer "$@" &
	WRITER_PID=$!
}

# push_bg NAME SRC ARGS...: a push in the background (JSON and stderr as
# push() keeps them, exit status by wait_push); PUSH_PID is hvresync
# itself, so that a signal reaches it.
push_bg() {
	local name=$1 src=$2
	shift 2
	"$HVRESYNC" push --json --psk-file "$S/key" "$@" \
		"$src" "127.0.0.1:$PORT/$name" >"$S/$name.json" 2>"$S/$name.err" &
	PUSH_PID=$!
}
wait_push() {
	timeout 120 tail --pid="$PUSH_PID" -f /dev/null 2>/dev/null ||
		{ kill -KILL "$PUSH_PID"; fail "the push took over 120 s"; }
	wait "$PUSH_PID"
	PUSH_RC=$?
}

started() { grep -c 'session start' "$S/serve.log"; }
wait_started() {
	local i
	for i in $(seq 200); do
		[ "$(started)" -gt "$1" ] && return 0
		sleep 0.1
	done
	fail "no session started within 20 s"
	return 1
}

# cut_mid_push CASE NAME SRC FILE: push SRC to export NAME slowly and,
# a second into the session, truncate FILE (either side's disk) to
# nothing; the push must fail with exit 2.
cut_mid_push() {
	local n
	n=$(started)
	# 512 blocks of one differing 4 KiB each at 256 KiB/s: 8 s of sending
	push_bg "$2" "$3" --bwlimit 256K
	wait_started "$n" && sleep 1
	truncate -s 0 "$4"
	wait_push
	[ "$PUSH_RC" -eq 2 ] && ok "($1) exit 2" || fail "($1) exit $PUSH_RC (want 2)"
}

# jq_ NAME KEY: a member of NAME's JSON ("" when absent).
jq_() { jget "$S/$1.json" "$2" 2>/dev/null; }

# honest DESC NAME REC: (c) the push's word agrees with qemu-img compare.
honest() {
	local res same=no
	res=$(jq_ "$2" result)
	qemu-img compare -q -f vhdx -F vhdx "$P/p.vhdx" "$3" 2>/dev/null && same=yes
	if [ "$res" = identical ] && [ $same = no ]; then
		fail "$1: push says identical but qemu-img compare says they differ"
	else
		ok "$1: result '$res', qemu-img compare identical: $same"
	fi
}

make_key "$S/key" || { fail "cannot make a key"; finish; }
# A 256 MiB primary full of random data; the recovery disks start empty,
# so the first pass sends it all (slowed by --bwlimit to seconds).
head -c $((256 * M)) /dev/urandom >"$S/p.raw"
qemu-img convert -q -f raw -O vhdx -o subformat=dynamic "$S/p.raw" "$P/p.vhdx"
head -c $((64 * M)) /dev/urandom >"$S/p.raw"
qemu-img convert -q -f raw -O vhdx -o subformat=dynamic "$S/p.raw" "$P/e.vhdx"
qemu-img create -q -f vhdx "$S/recovery/E.vhdx" 64M
rm -f "$S/p.raw"
for r in A H B; do
	qemu-img create -q -f vhdx "$S/recovery/$r.vhdx" 256M
done
# (f): a raw primary of 32 MiB whose recovery copy differs in one 4 KiB
# sector of every 64 KiB block, so every block waits for its sub-hashes.
python3 - "$S/t.raw" "$S/t-rec.raw" <<'EOF2'
import os, random, sys
r = random.Random(6)
d = bytearray(os.urandom(32 << 20))
open(sys.argv[1], 'wb').write(d)
for b in range(0, len(d), 65536):
    o = b + r.randrange(16) * 4096
    d[o:o + 4096] = os.urandom(4096)
open(sys.argv[2], 'wb').write(d)
EOF2
qemu-img convert -q -f raw -O vhdx "$S/t-rec.raw" "$S/recovery/T.vhdx"
cp "$S/t-rec.raw" "$S/recovery/G.raw"
SERVE=(--psk-file "$S/key" --export "A=$S/recovery/A.vhdx"
       --export "H=$S/recovery/H.vhdx" --export "B=$S/recovery/B.vhdx"
       --export "E=$S/recovery/E.vhdx" --export "T=$S/recovery/T.vhdx"
       --export "G=$S/recovery/G.raw")
start_server "$S/serve.log" "${SERVE[@]}" || finish
RATE=64M # 256 MiB of data: about 4 s for the first pass

# ===========================================================================
say "(a) writes during the first pass only: two passes, identical"
# ===========================================================================
n=$(started)
push_bg A "$P/p.vhdx" --bwlimit $RATE
wait_started "$n"
sleep 0.5
start_writer "$P/p.vhdx" 4
wait "$WRITER_PID"
WRITER_PID=
wait_push
[ -s "$S/writer.log" ] && fail "qemu-io could not write: $(head -n 2 "$S/writer.log")"
[ "$PUSH_RC" -eq 0 ] && ok "exit 0" || fail "exit $PUSH_RC: $(head -n 3 "$S/A.err")"
[ "$(jq_ A result)" = identical ] && ok "result identical" ||
	fail "result '$(jq_ A result)'"
[ "$(jq_ A passes)" = 2 ] && ok "passes 2" || fail "passes '$(jq_ A passes)'"
[ "$(jq_ A snapshot)" = none ] && ok "snapshot none" ||
	fail "snapshot '$(jq_ A snapshot)'"
[ "$(jq_ A snapshot_time)" = None ] && ok "snapshot_time null" ||
	fail "snapshot_time '$(jq_ A snapshot_time)'"
grep -q "p.vhdx changed during pass 1 (.*); comparing again (pass 2 of 3)" \
	"$S/A.err" && ok "stderr says pass 2 of 3 follows" ||
	fail "no 'changed during pass 1' line: $(head -n 3 "$S/A.err")"
[ "$(grep -c . "$S/A.err")" -eq 1 ] && ok "one line on stderr" ||
	fail "stderr: $(cat "$S/A.err")"
honest "(a)" A "$S/recovery/A.vhdx"
qemu-img compare -q -f vhdx -F vhdx "$P/p.vhdx" "$S/recovery/A.vhdx" &&
	ok "(a) recovery equals the primary" ||
	fail "(a) qemu-img compare: the recovery disk differs"
ls "$STATE" | grep -q . && fail "a progress record is left: $(ls "$STATE")" ||
	ok "no progress record left"

# ===========================================================================
say "(a) the same with --hold: the second pass is HOLD|REPASS, then --merge"
# ===========================================================================
n=$(started)
push_bg H "$P/p.vhdx" --hold --bwlimit $RATE
wait_started "$n"
sleep 0.5
start_writer "$P/p.vhdx" 4
wait "$WRITER_PID"
WRITER_PID=
wait_push
[ "$PUSH_RC" -eq 0 ] && ok "--hold: exit 0" ||
	fail "--hold: exit $PUSH_RC: $(head -n 3 "$S/H.err")"
[ "$(jq_ H result)" = held ] && ok "--hold: result held" ||
	fail "--hold: result '$(jq_ H result)'"
[ "$(jq_ H passes)" = 2 ] && ok "--hold: passes 2" ||
	fail "--hold: passes '$(jq_ H passes)'"
grep -q "copy (hold, another pass from 0)" "$S/serve.log" &&
	ok "the server saw a REPASS session" ||
	fail "no REPASS session in the server log"
grep 'session end: export H' "$S/serve.log" | tail -n1 | grep -q "from 0 of" &&
	ok "the repass compared from 0" ||
	fail "the repass did not start at 0: $(grep 'session end: export H' "$S/serve.log" | tail -n1)"
grep -q "complete 1" "$STATE"/H.state 2>/dev/null && ok "the held copy is recorded complete" ||
	fail "the held copy is not recorded complete"
timeout 60 "$HVRESYNC" push --json --psk-file "$S/key" --merge \
	"127.0.0.1:$PORT/H" >"$S/Hm.json" 2>"$S/Hm.err" &&
	ok "--merge: exit 0" || fail "--merge: $(cat "$S/Hm.err")"
qemu-img compare -q -f vhdx -F vhdx "$P/p.vhdx" "$S/recovery/H.vhdx" &&
	ok "(a, hold) recovery equals the primary after the merge" ||
	fail "(a, hold) qemu-img compare: the recovery disk differs"

# ===========================================================================
say "(b) a writer that never stops: exit 3, source-changed"
# ===========================================================================
n=$(started)
start_writer "$P/p.vhdx" 0
push_bg B "$P/p.vhdx" --bwlimit $RATE --max-passes 2
wait_push
stop_writer
[ "$PUSH_RC" -eq 3 ] && ok "exit 3" || fail "exit $PUSH_RC: $(head -n 3 "$S/B.err")"
[ "$(jq_ B result)" = source-changed ] && ok "result source-changed" ||
	fail "result '$(jq_ B result)'"
[ "$(jq_ B passes)" = 2 ] && ok "passes 2 (--max-passes 2)" ||
	fail "passes '$(jq_ B passes)'"
[ -n "$(jq_ B source_change)" ] && ok "source_change: $(jq_ B source_change)" ||
	fail "no source_change in the JSON"
for k in bytes_compared bytes_sent wire_bytes seconds resume_offset; do
	[ -n "$(jq_ B $k)" ] || fail "--json lacks $k"
done
grep -q "changed during every one of the 2 passes.*mixture of moments.*--snapshot reflink" \
	"$S/B.err" && ok "stderr says the copy is a mixture and how to avoid it" ||
	fail "no 'every one of the 2 passes' line: $(cat "$S/B.err")"
[ "$(grep -c 'every one of' "$S/B.err")" -eq 1 ] && ok "that is one line" ||
	fail "'every one of' $(grep -c 'every one of' "$S/B.err") times"
honest "(b)" B "$S/recovery/B.vhdx"
[ "$(cat "$S/writer.count")" -ge 2 ] && ok "the writer wrote $(cat "$S/writer.count") times" ||
	fail "the writer wrote $(cat "$S/writer.count" 2>/dev/null) times"

# Once the writer has stopped, a push makes it identical in one pass.
push B "$P/p.vhdx"
[ "$PUSH_RC" -eq 0 ] && [ "$(jq_ B passes)" = 1 ] &&
	[ "$(jq_ B result)" = identical ] &&
	ok "after the writer stopped: one pass, identical" ||
	fail "after the writer stopped: exit $PUSH_RC, passes $(jq_ B passes), result $(jq_ B result)"
honest "(b, quiet)" B "$S/recovery/B.vhdx"
qemu-img compare -q -f vhdx -F vhdx "$P/p.vhdx" "$S/recovery/B.vhdx" &&
	ok "(b, quiet) recovery equals the primary" ||
	fail "(b, quiet) qemu-img compare: the recovery disk differs"

# ===========================================================================
say "(e) the server killed during a held repass: not complete, resumes"
# ===========================================================================
# 64 MiB, sent at 16 MiB/s: pass 1 takes about 4 s; 24 MiB written behind
# its reader make pass 2 (HOLD|REPASS) send for about 1.5 s.  The server
# is killed 0.4 s into pass 2, before it would have recorded progress on
# its own: only the record rewritten at the repass's start can keep the
# earlier pass's "complete" from being believed.
n=$(started)
push_bg E "$P/e.vhdx" --hold --bwlimit 16M
wait_started "$n"
sleep 2
qemu-io -f vhdx -c "write -P 0x77 0 24M" "$P/e.vhdx" >/dev/null 2>&1 ||
	fail "qemu-io could not write e.vhdx"
for i in $(seq 300); do
	grep -q "comparing again (pass 2" "$S/E.err" && break
	kill -0 "$PUSH_PID" 2>/dev/null || break
	sleep 0.05
done
sleep 0.4
if kill -0 "$PUSH_PID" 2>/dev/null; then
	kill_server
	wait_push
	[ "$PUSH_RC" -eq 2 ] && ok "the push failed with the server (exit 2)" ||
		fail "the push: exit $PUSH_RC"
	grep -q "copy (hold, another pass from 0)" "$S/serve.log" &&
		ok "pass 2 was a REPASS" || fail "no REPASS session in the log"
	grep -q "^complete 0" "$STATE/E.state" 2>/dev/null &&
		ok "the record says not complete ($(grep done_through "$STATE/E.state"))" ||
		fail "the record after the killed repass: $(cat "$STATE/E.state" 2>&1)"
	start_server "$S/serve.log" "${SERVE[@]}" || finish
	push E "$P/e.vhdx" --hold
	[ "$PUSH_RC" -eq 0 ] && [ "$(jq_ E result)" = held ] &&
		ok "the next --hold push: exit 0, held" ||
		fail "the next --hold push: exit $PUSH_RC: $(head -n 2 "$S/E.err")"
	[ "$(jq_ E resume_offset)" -lt $((64 * M)) ] &&
		ok "it compared from $(jq_ E resume_offset), not from the end" ||
		fail "it took the earlier pass's 'complete': resumed at $(jq_ E resume_offset)"
	timeout 60 "$HVRESYNC" push --psk-file "$S/key" --merge \
		"127.0.0.1:$PORT/E" >/dev/null 2>"$S/Em.err" ||
		fail "--merge: $(cat "$S/Em.err")"
	qemu-img compare -q -f vhdx -F vhdx "$P/e.vhdx" "$S/recovery/E.vhdx" &&
		ok "(e) recovery equals the primary after the merge" ||
		fail "(e) qemu-img compare: the recovery disk differs"
else
	wait_push
	fail "the push ended before pass 2 could be cut (exit $PUSH_RC, passes $(jq_ E passes))"
fi

# ===========================================================================
say "(f) a raw primary truncated during the push: a clear error, nothing lost"
# ===========================================================================
cp "$S/t.raw" "$P/t.raw"
cut_mid_push f T "$P/t.raw" "$P/t.raw"
if [ "$(grep -c . "$S/T.err")" -ge 1 ] && grep -q "$P/t.raw" "$S/T.err" &&
	grep -qi "shortened\|size changed\|ended" "$S/T.err"; then
	ok "(f) stderr names the file and says it was cut: $(tail -n 1 "$S/T.err")"
else
	fail "(f) stderr: $(cat "$S/T.err")"
fi
[ "$(jq_ T result)" = error ] && ok "(f) JSON result: error" ||
	fail "(f) JSON result: $(jq_ T result)"
qemu-img compare -q -f vhdx -F raw "$S/recovery/T.vhdx" "$S/t-rec.raw" &&
	ok "(f) the recovery image is unchanged" ||
	fail "(f) the recovery image changed although the push failed"
qemu-img check -q -f vhdx "$S/recovery/T.vhdx" 2>/dev/null &&
	ok "(f) the recovery image is clean (qemu-img check)" ||
	fail "(f) qemu-img check: $(qemu-img check -f vhdx "$S/recovery/T.vhdx" 2>&1 | head -n 3)"
cp "$S/t.raw" "$P/t.raw"
push T "$P/t.raw"
if [ "$PUSH_RC" -eq 0 ] && [ "$(jq_ T result)" = identical ] &&
	qemu-img compare -q -f raw -F vhdx "$P/t.raw" "$S/recovery/T.vhdx"; then
	ok "(f) a push of the restored primary: identical, and qemu-img compare agrees"
else
	fail "(f) the push after the restore: exit $PUSH_RC, result $(jq_ T result), $(head -n 2 "$S/T.err")"
fi

# ===========================================================================
say "(g) a raw recovery export truncated during the session"
# ===========================================================================
cut_mid_push g G "$S/t.raw" "$S/recovery/G.raw"
if grep -q "export G" "$S/G.err" && grep -qi "shortened\|ended" "$S/G.err"; then
	ok "(g) stderr names the export and says it was cut: $(tail -n 1 "$S/G.err")"
else
	fail "(g) stderr: $(cat "$S/G.err")"
fi
if kill -0 "$SERVER_PID" 2>/dev/null; then
	push B "$P/p.vhdx"
	[ "$PUSH_RC" -eq 0 ] && ok "(g) the server still serves (a push to B: exit 0)" ||
		fail "(g) a push to B after it: exit $PUSH_RC, $(head -n 2 "$S/B.err")"
else
	fail "(g) the server died"
fi

# ===========================================================================
say "(d) --snapshot reflink where the filesystem cannot clone"
# ===========================================================================
expect_error "--snapshot reflink on $(stat -f -c %T "$P")" "$P/p.vhdx" -- \
	"$HVRESYNC" push --psk-file "$S/key" --snapshot reflink "$P/p.vhdx" \
	"127.0.0.1:$PORT/B"
expect_error "--max-passes 0" "--max-passes" -- \
	"$HVRESYNC" push --psk-file "$S/key" --max-passes 0 "$P/p.vhdx" \
	"127.0.0.1:$PORT/B"
expect_error "--snapshot sometimes" "--snapshot" -- \
	"$HVRESYNC" push --psk-file "$S/key" --snapshot sometimes "$P/p.vhdx" \
	"127.0.0.1:$PORT/B"
# auto falls back quietly: nothing extra on stderr, the reason in --json.
push B "$P/p.vhdx"
[ "$PUSH_RC" -eq 0 ] && [ ! -s "$S/B.err" ] &&
	ok "auto on $(stat -f -c %T "$P"): exit 0, nothing on stderr" ||
	fail "auto: exit $PUSH_RC, stderr: $(cat "$S/B.err")"
[ -n "$(jq_ B snapshot_fallback)" ] && ok "snapshot_fallback: $(jq_ B snapshot_fallback)" ||
	fail "no snapshot_fallback in the JSON"
ls -A "$P" | grep -q '^\.hvresync-snap\.' && fail "a clone is left in $P" ||
	ok "no clone left next to the primary"

finish
