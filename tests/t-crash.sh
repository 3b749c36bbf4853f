#!/bin/bash
# t-crash.sh - the writer survives being killed (SIGKILL) at any point.
#
# A writer (build/helpers/vhdx-io) runs a list of writes of distinct byte
# values, each followed by a flush, and is killed: by strace at its N-th
# pwrite64 (before it runs; N over every pwrite of the run or an even
# sample, so every step of a commit is hit: header with a new LogGuid, log
# entry, BAT and bitmap sectors in place, data) or, for a few runs, after a
# random delay.  SIGKILL keeps what reached the page cache, so this tests
# the process dying, not the power going.  Then:
#   - `hvresync inspect` opens the image (replaying a dirty log in memory);
#   - our reader's bytes are "old or new" (writer_model.py crashcheck):
#     writes flushed before the kill read new; the write being flushed or
#     written reads, per 512-byte unit, the committed or the new value; a
#     finished-but-unflushed write is all old or all new inside each block
#     (its allocation or bitmap bits are one log entry);
#   - `hvresync inspect --replay` on a copy replays on disk, after which
#     the log is clean, qemu-img check is clean and qemu-img convert (or
#     libvhdi for a differencing child) reads the same bytes as the
#     in-memory replay;
#   - `qemu-img check -r all` on another copy (qemu's own log replay) finds
#     nothing to repair but the log, and reads the same bytes again;
#   - a writable open of the killed file replays on disk and takes a new
#     write.
# Runs: a dynamic image, a differencing child over a qemu-made parent, a
# run long enough to wrap the 1 MiB log, and timed kills of random writes.
. "$(dirname "$0")/lib.sh"
IO=${VHDX_IO:-$TOP/build/helpers/vhdx-io}
CAT=${VHDX_CAT:-$TOP/build/helpers/vhdx-cat}
export VHDX_CAT=$CAT # for writer_model.py's "cat" reader
for b in "$HVRESYNC" "$IO" "$CAT"; do
	[ -x "$b" ] || { fail "$b not built (make -j2 all)"; finish; }
done
# the interpreter itself, not a version manager's shim: it runs ~100 times
PY=$(python3 -c 'import sys; print(sys.executable)')
M="$PY $TOP/tests/helpers/writer_model.py"
S=$SCRATCH
MiB=$((1024 * 1024))
STRACE=$(command -v strace || true)
[ -n "$STRACE" ] || echo "note: strace not installed: only timed kills (install strace)"
RANDOM=4711 # reproducible kill points and delays

# jtop KEY: a top-level scalar of the pretty-printed JSON in $S/cli.out.
jtop() { sed -n "s/^  \"$1\": \(.*\),\$/\1/p" "$S/cli.out"; }

# qread IMAGE OUT: qemu-img check (clean, read-only), then convert to raw.
qread() {
	timeout -s KILL 30 qemu-img check -q -f vhdx "$1" >"$S/q.out" 2>&1 &&
		timeout -s KILL 30 qemu-img convert -f vhdx -O raw "$1" "$2" >>"$S/q.out" 2>&1
}

# count_pwrites TEMPLATE OP...: pwrite64 calls of an uninterrupted run.
count_pwrites() {
	local t=$1 c
	shift
	c=$(dirname "$t")/count.vhdx
	cp --sparse=always "$t" "$c"
	"$STRACE" -o "$S/trace" -e trace=pwrite64 "$IO" "$c" "$@" >/dev/null 2>&1
	rm -f "$c"
	grep -c '^pwrite64' "$S/trace"
}

# kill_points P COUNT: every point up to P if P <= COUNT, else COUNT
# points spread evenly over 1..P (both ends included).
kill_points() {
	local p=$1 n=$2 i
	if [ "$p" -le "$n" ]; then seq 1 "$p"; return; fi
	for ((i = 0; i < n; i++)); do echo $((1 + i * (p - 1) / (n - 1))); done
}

# crash_one NAME TEMPLATE BASE_RAW BS ORACLE SPEC OP...
#   ORACLE: qemu (non-differencing) or vhdi (differencing child)
#   SPEC: pw:N (killed at the N-th pwrite64) or t:SECONDS (after a delay)
crash_one() {
	local name=$1 tmpl=$2 base=$3 bs=$4 oracle=$5 spec=$6 dir k r q bad="" pid
	local d entries dirty fixed extra
	shift 6
	dir=$(dirname "$tmpl")
	k=$dir/k.vhdx r=$dir/r.vhdx q=$dir/q.vhdx
	rm -f "$k" "$r" "$q"
	cp --sparse=always "$tmpl" "$k"
	case $spec in
	pw:*)
		(timeout -s KILL 60 "$STRACE" -o /dev/null -e trace=pwrite64 \
			-e inject=pwrite64:signal=KILL:when=${spec#pw:} \
			"$IO" "$k" "$@" >"$S/done" 2>"$S/io.err"; :) 2>/dev/null
		;;
	t:*)
		"$IO" "$k" "$@" >"$S/done" 2>"$S/io.err" &
		pid=$!
		sleep "${spec#t:}"
		kill -KILL $pid 2>/dev/null
		wait $pid 2>/dev/null
		;;
	esac
	d=$(grep -c '^done' "$S/done")

	# 1. it opens; what state the log was left in
	cli_run "$HVRESYNC" inspect --json "$k"
	if [ "$CLI_RC" -ne 0 ]; then
		fail "$name $spec: inspect exit $CLI_RC: $(head -n1 "$S/cli.err")"
		return
	fi
	dirty=$(jtop log_dirty)
	entries=$(jtop log_entries_replayed)

	# 2. old or new, through our in-memory replay
	if ! "$CAT" "$k" >"$S/mem.raw" 2>"$S/cat.err"; then
		fail "$name $spec: vhdx-cat: $(head -n1 "$S/cat.err")"
		return
	fi
	$M crashcheck "$S/mem.raw" --base "$base" --done "$S/done" --block-size "$bs" \
		"$@" >"$S/verdict" || bad="$bad; $(grep FAIL "$S/verdict" | head -n 3)"

	# 3. replay on disk, then every reader agrees with the in-memory replay
	cp --sparse=always "$k" "$r"
	cli_run "$HVRESYNC" inspect --replay --json "$r"
	if [ "$CLI_RC" -ne 0 ]; then
		bad="$bad; inspect --replay exit $CLI_RC: $(head -n1 "$S/cli.err")"
	else
		cli_run "$HVRESYNC" inspect --json "$r"
		[ "$(jtop log_dirty)" = false ] ||
			bad="$bad; log still dirty after --replay"
		"$CAT" "$r" >"$S/disk.raw" && cmp -s "$S/disk.raw" "$S/mem.raw" ||
			bad="$bad; on-disk replay reads differently from the in-memory one"
		if [ "$oracle" = qemu ]; then
			qread "$r" "$S/o.raw" && cmp -s "$S/o.raw" "$S/mem.raw" ||
				bad="$bad; qemu after --replay: $(head -n1 "$S/q.out") $(cmp "$S/o.raw" "$S/mem.raw" 2>&1)"
		else
			$M read vhdi "$r" "$S/o.raw" >"$S/o.out" &&
				cmp -s "$S/o.raw" "$S/mem.raw" ||
				bad="$bad; vhdimount after --replay: $(head -n1 "$S/o.out") $(cmp "$S/o.raw" "$S/mem.raw" 2>&1)"
		fi
	fi

	# 4. qemu replays the log itself: nothing to repair but the log
	if [ "$oracle" = qemu ]; then
		cp --sparse=always "$k" "$q"
		timeout -s KILL 30 qemu-img check -r all -f vhdx "$q" >"$S/qc.out" 2>&1 ||
			bad="$bad; qemu-img check -r all exit $?: $(tr '\n' ' ' <"$S/qc.out")"
		fixed=$(sed -n 's/^ *\([0-9]*\) corruptions.*/\1/p' "$S/qc.out")
		[ "${fixed:-0}" -le $((entries > 0 ? 1 : 0)) ] ||
			bad="$bad; qemu repaired $fixed corruptions (log entries: $entries)"
		qread "$q" "$S/o.raw" && cmp -s "$S/o.raw" "$S/mem.raw" ||
			bad="$bad; qemu's own replay reads differently: $(head -n1 "$S/q.out") $(cmp "$S/o.raw" "$S/mem.raw" 2>&1)"
	fi

	# 5. the killed file opens for writing (replaying on disk) and takes
	# a write; checked on every third kill point to save time
	if [ $((RANDOM % 3)) -eq 0 ]; then
		extra="w:$((bs / 2 + 512)):4096:0xee"
		if "$IO" "$k" "$extra" >/dev/null 2>"$S/io2.err"; then
			$M expect "$S/m2.raw" --base "$S/mem.raw" "$extra"
			if [ "$oracle" = qemu ]; then
				qread "$k" "$S/o.raw" && cmp -s "$S/o.raw" "$S/m2.raw" ||
					bad="$bad; a write after the crash reads wrong (qemu): $(head -n1 "$S/q.out")"
			else
				"$CAT" "$k" >"$S/o.raw" && cmp -s "$S/o.raw" "$S/m2.raw" ||
					bad="$bad; a write after the crash reads wrong (vhdx-cat)"
			fi
		else
			bad="$bad; writable open after the crash: $(head -n1 "$S/io2.err")"
		fi
	fi
	rm -f "$k" "$r" "$q" "$S/o.raw" "$S/m2.raw"
	if [ -n "$bad" ]; then
		fail "$name $spec (done=$d, log dirty=$dirty, entries=$entries)${bad}"
	else
		ok "$name $spec: done=$d, log dirty=$dirty, entries=$entries; $(sed 's/^ok: [^(]*//' "$S/verdict")"
	fi
}

# =====================================================================
say "the old-or-new checker catches what it must"
# =====================================================================
# ops 0-3 committed; op 4 (0x12 over block 2's first 8 KiB) finished
# (5 "done" lines: its flush was running) or running (4 lines)
C=("w:0:$MiB:0x10" f "w:$MiB:$MiB:0x11" f "w:$((2 * MiB)):8192:0x12" f)
printf 'done %s\n' 2 3 4 5 6 >"$S/d5"
printf 'done %s\n' 2 3 4 5 >"$S/d4"
$M expect "$S/old.raw" --size $((4 * MiB)) "${C[@]:0:4}"
$M expect "$S/new.raw" --size $((4 * MiB)) "${C[@]}"
$M expect "$S/lost.raw" --size $((4 * MiB)) "${C[@]:0:2}"
cp "$S/old.raw" "$S/torn.raw"
printf '\x12%.0s' $(seq 4096) | dd of="$S/torn.raw" bs=4096 seek=512 conv=notrunc status=none
cp "$S/new.raw" "$S/alien.raw"
printf '\x77%.0s' $(seq 512) | dd of="$S/alien.raw" bs=512 seek=4100 conv=notrunc status=none
# cc NAME RAW DONE WANT: the checker's verdict on RAW is WANT (0 or 1)
cc() {
	$M crashcheck "$S/$2" --size $((4 * MiB)) --done "$S/$3" --block-size $MiB \
		"${C[@]}" >"$S/cc.out"
	if [ $? -eq "$4" ]; then ok "checker: $1"; else
		fail "checker: $1: $(cat "$S/cc.out")"
	fi
}
cc "old state accepted" old.raw d5 0
cc "new state accepted" new.raw d5 0
cc "a lost committed write refused" lost.raw d5 1
cc "a finished write torn inside a block refused" torn.raw d5 1
cc "a running write torn at a sector accepted" torn.raw d4 0
cc "a value nobody wrote refused" alien.raw d5 1
rm -f "$S"/*.raw

# =====================================================================
say "dynamic image, 1 MiB blocks: killed at every pwrite"
# =====================================================================
mkdir -p "$S/dyn"
T=$S/dyn/tmpl.vhdx
"$HVRESYNC" create --block-size 1M "$T" 24M
"$IO" "$T" w:0:$((6 * MiB)):0x01 >/dev/null
$M expect "$S/dyn/base.raw" --size $((24 * MiB)) w:0:$((6 * MiB)):0x01
OPS=(w:$((MiB + 512)):4096:0x10 f # into an allocated block
	w:$((7 * MiB)):8192:0x11 f # a new block
	w:$((9 * MiB - 4096)):8192:0x12 f # two new blocks
	"z:$((2 * MiB)):$MiB" f # a whole block becomes ZERO
	"w:$((12 * MiB)):$MiB:0x13" f # a whole new block
	w:$((2 * MiB + 4096)):512:0x14 f # into the ZERO block
	w:$((3 * MiB)):$((3 * MiB)):0x15 f # three allocated blocks
	z:$((12 * MiB + 512)):1024 f # zeros inside a block
	w:$((18 * MiB)):$((4 * MiB)):0x16 # four new blocks, not flushed
	w:$((23 * MiB + 512)):512:0x17 f # and one more, then flushed
	z:$((18 * MiB)):$((2 * MiB)) f # two whole blocks ZERO
	r:99:12:$((256 * 1024)) f) # random writes
if [ -n "$STRACE" ]; then
	P=$(count_pwrites "$T" "${OPS[@]}")
	echo "an uninterrupted run makes $P pwrite64 calls"
	for n in $(kill_points "$P" 24) $((P + 1)); do
		crash_one dynamic "$T" "$S/dyn/base.raw" $MiB qemu pw:$n "${OPS[@]}"
	done
fi
rm -rf "$S/dyn"

# =====================================================================
say "4096-byte sectors (writes widened by read-modify-write; libvhdi)"
# =====================================================================
mkdir -p "$S/s4k"
T=$S/s4k/tmpl.vhdx
"$HVRESYNC" create --block-size 1M --sector-size 4096 "$T" 8M
"$IO" "$T" w:0:$((3 * MiB)):0x01 >/dev/null
$M expect "$S/s4k/base.raw" --size $((8 * MiB)) w:0:$((3 * MiB)):0x01
OPS=("w:$((MiB + 512)):1024:0x30" f # inside one sector, allocated block
	"w:$((4 * MiB - 512)):1024:0x31" f # two new blocks, partial sectors
	"z:$((2 * MiB)):$MiB" f # ZERO
	"w:$((2 * MiB + 1536)):512:0x32" f # into the ZERO block
	"r:3:8:$((64 * 1024))" f)
if [ -n "$STRACE" ]; then
	P=$(count_pwrites "$T" "${OPS[@]}")
	echo "an uninterrupted run makes $P pwrite64 calls"
	for n in $(kill_points "$P" 12) $((P + 1)); do
		crash_one 4k "$T" "$S/s4k/base.raw" $MiB vhdi pw:$n "${OPS[@]}"
	done
fi
rm -rf "$S/s4k"

# =====================================================================
say "differencing child over a qemu-made parent"
# =====================================================================
mkdir -p "$S/diff"
qemu-img create -q -f vhdx -o block_size=4M "$S/diff/base.vhdx" 16M
qemu-io -f vhdx -c 'write -P 0xb1 0 10M' -c 'write -P 0xb2 13M 3M' \
	"$S/diff/base.vhdx" >/dev/null
qemu-img convert -f vhdx -O raw "$S/diff/base.vhdx" "$S/diff/base.raw"
T=$S/diff/tmpl.vhdx
"$HVRESYNC" create --parent "$S/diff/base.vhdx" "$T"
# a first write, so that the sector bitmap exists (see t-writer.sh on
# libvhdi and missing bitmaps)
"$IO" "$T" w:0:512:0x01 >/dev/null
$M expect "$S/diff/pre.raw" --base "$S/diff/base.raw" w:0:512:0x01
OPS=(w:1024:1536:0x20 f # sectors in a partially present block
	w:$((4 * MiB + 3584)):1024:0x21 f # partial write, new block
	w:$((6 * MiB - 512)):1024:0x22 f # across two new blocks
	w:$((8 * MiB)):$((2 * MiB)):0x23 f # a whole block
	z:$((10 * MiB + 512)):4096 f # zeros over parent data
	w:$((14 * MiB + 512)):512:0x24 w:$((12 * MiB + 4096)):512:0x25 f
	w:$((8 * MiB + 4096)):4096:0x26 f # into the full block
	r:7:10:$((512 * 1024)) f)
if [ -n "$STRACE" ]; then
	P=$(count_pwrites "$T" "${OPS[@]}")
	echo "an uninterrupted run makes $P pwrite64 calls"
	for n in $(kill_points "$P" 20) $((P + 1)); do
		crash_one child "$T" "$S/diff/pre.raw" $((2 * MiB)) vhdi pw:$n "${OPS[@]}"
	done
fi
rm -rf "$S/diff"

# =====================================================================
say "a run long enough to wrap the 1 MiB log, killed around the wrap"
# =====================================================================
mkdir -p "$S/wrap"
T=$S/wrap/tmpl.vhdx
"$HVRESYNC" create --block-size 1M "$T" 8M
$M expect "$S/wrap/base.raw" --size $((8 * MiB))
# each flush commits one BAT change: a write allocates a block that the
# next zeroing turns back into ZERO (the file grows by a block each time)
OPS=()
for ((i = 0; i < 150; i++)); do
	j=$((i / 2 % 8))
	if [ $((i % 2)) -eq 0 ]; then
		OPS+=("w:$((j * MiB + (i % 7) * 4096)):4096:$((i / 2 + 16))" f)
	else
		OPS+=("z:$((j * MiB)):$MiB" f)
	fi
done
if [ -n "$STRACE" ]; then
	cp --sparse=always "$T" "$S/wrap/c.vhdx"
	"$STRACE" -o "$S/trace" -e trace=pwrite64 "$IO" "$S/wrap/c.vhdx" "${OPS[@]}" >/dev/null
	rm -f "$S/wrap/c.vhdx"
	# the first log entry written back at the log's start (1 MiB)
	w=$(grep '^pwrite64' "$S/trace" | grep -n ', 1048576) = ' | sed -n 2p | cut -d: -f1)
	if [ -z "$w" ]; then
		fail "150 commits did not wrap the log (no second entry at its start)"
	else
		echo "the log wraps at pwrite64 number $w"
		for n in $((w - 1)) $w $((w + 1)) $((w + 2)) $((w + 4)); do
			crash_one wrap "$T" "$S/wrap/base.raw" $MiB qemu pw:$n "${OPS[@]}"
		done
	fi
fi
rm -rf "$S/wrap"

# =====================================================================
say "timed kills of random writes (dynamic, 2 MiB blocks)"
# =====================================================================
mkdir -p "$S/timed"
T=$S/timed/tmpl.vhdx
"$HVRESYNC" create --block-size 2M "$T" 32M
"$IO" "$T" r:5:20:$((2 * MiB)) >/dev/null
$M expect "$S/timed/base.raw" --size $((32 * MiB)) r:5:20:$((2 * MiB))
OPS=(r:11:120:$((512 * 1024)) f r:12:120:$((512 * 1024)) f
	r:13:120:$((1024 * 1024)) r:14:50:4096 f r:15:100:$((512 * 1024)) f)
for i in 1 2 3 4 5; do
	delay=0.0$((RANDOM % 9 + 1))$((RANDOM % 10))
	crash_one timed "$T" "$S/timed/base.raw" $((2 * MiB)) qemu t:$delay "${OPS[@]}"
done
rm -rf "$S/timed"

finish
