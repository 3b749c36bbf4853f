#!/bin/bash
# t-fuzz-build.sh - `make fuzz` builds the libFuzzer targets, the frame
# decoder's without OpenSSL, and each target runs its seed-less start and
# a short bounded run without a crash.
. "$(dirname "$0")/lib.sh"

command -v clang >/dev/null || skip "clang not installed (tools/install-deps installs it)"
B=$SCRATCH/build
if ! make -C "$TOP" -s B="$B" fuzz >"$SCRATCH/make.log" 2>&1; then
	cat "$SCRATCH/make.log"
	fail "make fuzz"
	finish
fi
ok "make fuzz builds"
for t in "$B"/fuzz/*; do
	name=${t##*/}
	if ldd "$t" | grep -qE 'libssl|libcrypto'; then
		fail "$name links OpenSSL"
	else
		ok "$name links without OpenSSL"
	fi
	mkdir -p "$SCRATCH/corpus-$name"
	if timeout 120 "$t" -runs=200000 -max_len=4096 "$SCRATCH/corpus-$name" \
		>"$SCRATCH/$name.log" 2>&1; then
		ok "$name: 200000 inputs without a crash"
	else
		tail -n 20 "$SCRATCH/$name.log"
		fail "$name crashed or timed out"
	fi
done
finish
