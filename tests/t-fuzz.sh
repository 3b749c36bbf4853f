#!/bin/bash
# t-fuzz.sh - the libFuzzer targets (tools/fuzz/README.md): `make fuzz`
# builds them and their seed corpora, the frame decoder's without OpenSSL;
# every input kept in tests/fuzz-regress/NAME/ (a crash found once, since
# fixed) runs clean; then tools/fuzz/run gives each target FUZZ_SECONDS
# (default 60, as CI runs them) from its seeds, one after the other, and
# any crash, leak or timeout fails the test.
#
# Builds into FUZZ_BUILD (default the tree's build/, where `make check` has
# already built the binary the seeds are made with).
. "$(dirname "$0")/lib.sh"

command -v clang >/dev/null || skip "clang not installed (tools/install-deps installs it)"
B=${FUZZ_BUILD:-$TOP/build}
SECS=${FUZZ_SECONDS:-60}
TARGETS="frame vhdx json config"

say "make fuzz"
if ! make -C "$TOP" -s B="$B" fuzz >"$SCRATCH/make.log" 2>&1; then
	tail -n 30 "$SCRATCH/make.log"
	fail "make fuzz"
	finish
fi
ok "make fuzz builds the targets and seeds"
for t in $TARGETS; do
	n=$(find "$B/fuzz/seeds-$t" -type f 2>/dev/null | wc -l)
	if [ "$n" -gt 0 ]; then
		ok "$t: $n seeds"
	else
		fail "$t: no seeds in $B/fuzz/seeds-$t"
	fi
done
if ldd "$B/fuzz/fuzz_frame" | grep -qE 'libssl|libcrypto'; then
	fail "fuzz_frame links OpenSSL"
else
	ok "fuzz_frame links without OpenSSL"
fi

say "kept regression inputs"
for t in $TARGETS; do
	dir=$TOP/tests/fuzz-regress/$t
	[ -d "$dir" ] || continue
	for f in "$dir"/*; do
		[ -f "$f" ] || continue
		# Given files, libFuzzer runs each once; any finding aborts.
		if timeout 60 "$B/fuzz/fuzz_$t" "$f" >"$SCRATCH/replay.log" 2>&1; then
			ok "$t: ${f##*/} runs clean"
		else
			grep -m3 -E 'ERROR|SUMMARY|^[A-Za-z].*(differs|refused|abort)' \
				"$SCRATCH/replay.log"
			fail "$t: ${f##*/} fails again"
		fi
	done
done

say "tools/fuzz/run $SECS"
if FUZZ_CORPUS=$SCRATCH FUZZ_LOGS=$SCRATCH/logs FUZZ_TARGETS=$TARGETS \
	B=$B "$TOP/tools/fuzz/run" "$SECS" | tee "$SCRATCH/run.out"; then
	ok "every target ran $SECS s without a finding"
else
	fail "a fuzz target found something (inputs: $B/fuzz/findings-*)"
fi
for t in $TARGETS; do
	grep -q "^$t: [0-9][0-9]* execs in" "$SCRATCH/run.out" ||
		fail "$t: no execs line"
	grep -q "^$t: 0 execs" "$SCRATCH/run.out" && fail "$t ran no input"
done
finish
