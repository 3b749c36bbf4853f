# tests/lib.sh - shared helpers for the integration scripts (source it).
# Each script exits 0 on pass, 1 on fail, 77 on skip.
set -u
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HVRESYNC=${HVRESYNC:-$TOP/build/hvresync}
SAMPLES=${SAMPLES:-$TOP/../shared/samples}
SCRATCH=$(mktemp -d /tmp/hvresync-test.XXXXXX)
_mounts=()
_fails=0

cleanup() {
	local m
	for m in "${_mounts[@]:-}"; do
		[ -n "$m" ] && mountpoint -q "$m" 2>/dev/null &&
			{ fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }
	done
	rm -rf "$SCRATCH"
}
trap cleanup EXIT

say() { echo "== $*"; }
fail() { echo "FAIL: $*"; _fails=$((_fails + 1)); }
ok() { echo "ok: $*"; }
skip() { echo "SKIP: $*"; exit 77; }
finish() { [ "$_fails" -eq 0 ] && { echo "all ok"; exit 0; }; echo "$_fails failure(s)"; exit 1; }

# check DESC CMD...: run CMD, count a failure when it exits non-zero.
check() { local d=$1; shift; if "$@"; then ok "$d"; else fail "$d"; fi; }

need_samples() {
	[ -d "$SAMPLES" ] || skip "../shared/samples not found (Windows-made samples are not part of the project)"
}

# unpack_sample NAME: decompress a sample into $SCRATCH, print its path.
unpack_sample() {
	local f=$SAMPLES/$1 out
	case "$1" in
	*.bz2) out=$SCRATCH/${1%.bz2}; bzip2 -dc "$f" >"$out" ;;
	*.gz) out=$SCRATCH/${1%.gz}; gzip -dc "$f" >"$out" ;;
	*.zip) out=$SCRATCH/$(unzip -Z1 "$f" | head -n1); unzip -p "$f" >"$out" ;;
	*) out=$SCRATCH/$1; cp "$f" "$out" ;;
	esac
	echo "$out"
}

# mount_view MOUNTPOINT IMAGE...: mount raw views, remember for cleanup.
mount_view() {
	local mnt=$1; shift
	mkdir -p "$mnt"
	"$HVRESYNC" mount "$@" "$mnt" || return 1
	_mounts+=("$mnt")
}

# --- helpers for CLI error checks (t-samples, t-diffchain, t-damage) ---

# cli_run CMD...: run CMD under a 20 s timeout; stdout and stderr land in
# $SCRATCH/cli.out and $SCRATCH/cli.err, the exit status in $CLI_RC
# (124 = hung, >= 128 = killed by a signal, i.e. crashed).
cli_run() {
	timeout -k 5 20 "$@" >"$SCRATCH/cli.out" 2>"$SCRATCH/cli.err"
	CLI_RC=$?
}

# expect_error DESC NEEDLE... -- CMD...: CMD must exit 2 with exactly one
# line on stderr that contains every NEEDLE (fixed strings).
expect_error() {
	local desc=$1 needles=() n lines bad=""
	shift
	while [ $# -gt 0 ] && [ "$1" != "--" ]; do needles+=("$1"); shift; done
	shift
	cli_run "$@"
	lines=$(wc -l <"$SCRATCH/cli.err")
	[ "$CLI_RC" -eq 2 ] || bad="exit $CLI_RC, want 2"
	[ -z "$bad" ] && [ "$lines" -ne 1 ] && bad="$lines stderr lines, want 1"
	for n in "${needles[@]}"; do
		[ -z "$bad" ] && ! grep -qF -- "$n" "$SCRATCH/cli.err" &&
			bad="stderr does not name '$n'"
	done
	if [ -n "$bad" ]; then
		fail "$desc: $bad"
		sed 's/^/    stderr: /' "$SCRATCH/cli.err" | head -n 5
		return 1
	fi
	ok "$desc: $(head -n 1 "$SCRATCH/cli.err" | cut -c 1-200)"
}

# sha FILE: sha256 of FILE.
sha() { sha256sum "$1" | cut -d' ' -f1; }
