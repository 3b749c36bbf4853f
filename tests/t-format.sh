#!/bin/bash
# t-format.sh - the C sources are as `make format` leaves them, so that
# running it never rewrites anyone's tree.
. "$(dirname "$0")/lib.sh"

command -v clang-format >/dev/null || skip "clang-format not installed"
cd "$TOP" || exit 2
bad=$(git ls-files '*.c' '*.h' | while read -r f; do
	clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || echo "$f"
done)
if [ -n "$bad" ]; then
	fail "not as clang-format leaves them (run make format): $(echo $bad)"
else
	ok "every C file is clang-format clean ($(clang-format --version | head -n1))"
fi
finish
