#!/bin/bash
# t-layering.sh - the layering rule: vhdx/ knows nothing of uring/, fuse/ or
# agent/; uring/ nothing of fuse/ or agent/; fuse/ nothing of agent/.
. "$(dirname "$0")/lib.sh"

# forbid DIR PATTERN...: fail for each #include in DIR naming a PATTERN dir.
forbid() {
	local dir=$1 hits; shift
	local re
	re=$(printf '%s|' "$@")
	re=${re%|}
	hits=$(grep -rnE "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"](\\.\\./)*($re)/" \
		--include='*.c' --include='*.h' "$TOP/$dir" 2>/dev/null)
	if [ -n "$hits" ]; then
		fail "$dir/ includes headers of $*:"
		echo "$hits" | sed "s|$TOP/||; s/^/    /"
	else
		ok "$dir/ does not include $*"
	fi
}

forbid vhdx uring fuse agent
forbid uring fuse agent
forbid fuse agent
finish
