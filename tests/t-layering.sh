#!/bin/bash
# t-layering.sh - the layering rule, by #include: vhdx/ knows nothing of
# uring/, fuse/ or agent/; uring/ nothing of fuse/ or agent/; fuse/ nothing
# of agent/; inside agent/, lib <- sync <- daemon <- cli.  The Makefile
# enforces the same rule at link time (one archive per layer).
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
forbid agent/lib uring fuse agent/sync agent/daemon agent/cli
forbid agent/sync fuse agent/daemon agent/cli
forbid agent/daemon agent/cli

# Every agent source lives in one of the four layers.
loose=$(find "$TOP/agent" -maxdepth 1 -type f \( -name '*.c' -o -name '*.h' \) | sed "s|$TOP/||")
if [ -n "$loose" ]; then
	fail "sources in agent/ outside lib/, sync/, daemon/, cli/: $loose"
else
	ok "agent/ holds only lib/, sync/, daemon/ and cli/"
fi
extra=$(find "$TOP/agent" -mindepth 1 -maxdepth 1 -type d ! -name lib ! -name sync ! -name daemon ! -name cli)
[ -z "$extra" ] && ok "agent/ has no fifth layer" || fail "unknown agent/ folders: $extra"
finish
