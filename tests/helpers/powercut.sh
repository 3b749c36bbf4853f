# tests/helpers/powercut.sh - shell helpers around the power-cut file
# system (tests/helpers/powercut.c, built as $(B)/helpers/powercut): mount
# it, cut the power, unmount, read its report, and pick the cut points of
# a crash matrix.  Source it after tests/lib.sh; uses $POWERCUT, else
# $TOP/build/helpers/powercut.

POWERCUT=${POWERCUT:-$TOP/build/helpers/powercut}
PC_PID=
PC_REPORT=
declare -A _pc_pid=() _pc_report=() _pc_freeze=()

# pc_mount BACKING MNT [powercut options...]: mounts powercut over BACKING
# at MNT and returns once it serves; registers MNT for cleanup.  Sets
# PC_PID and PC_REPORT (a fresh report file in $SCRATCH unless --report).
pc_mount() {
	local backing=$1 mnt=$2 report="" freeze="" a i prev=""
	shift 2
	for a in "$@"; do
		[ "$prev" = --report ] && report=$a
		[ "$a" = --freeze ] && freeze=1
		prev=$a
	done
	mkdir -p "$mnt"
	if [ -z "$report" ]; then
		report=$(mktemp "$SCRATCH/powercut-report.XXXXXX")
		set -- --report "$report" "$@"
	fi
	rm -f "$report"
	# -f: the pid is the server's own, for pc_cut and pc_umount.
	"$POWERCUT" -f "$@" "$backing" "$mnt" &
	PC_PID=$!
	disown "$PC_PID" 2>/dev/null
	PC_REPORT=$report
	_mounts+=("$mnt")
	for i in $(seq 300); do
		if mountpoint -q "$mnt" && grep -q '^state ' "$report" 2>/dev/null; then
			_pc_pid[$mnt]=$PC_PID
			_pc_report[$mnt]=$PC_REPORT
			_pc_freeze[$mnt]=$freeze
			return 0
		fi
		kill -0 "$PC_PID" 2>/dev/null || break
		sleep 0.05
	done
	echo "powercut did not mount $backing at $mnt" >&2
	kill -KILL "$PC_PID" 2>/dev/null
	return 1
}

# _pc_mounted MNT: true while a powercut is mounted at MNT (/proc/mounts,
# since a stat below a cut mount fails).
_pc_mounted() {
	local m
	m=$(realpath -m "$1")
	awk -v m="$m" '$2 == m && $3 == "fuse.powercut" { f = 1 } END { exit !f }' /proc/mounts
}

# At exit, before lib.sh's cleanup: unmount what is still mounted and stop
# the servers, so no powercut outlives its test.
_pc_cleanup() {
	local m
	for m in "${!_pc_pid[@]}"; do
		pc_umount "$m" >/dev/null 2>&1 || kill -KILL "${_pc_pid[$m]}" 2>/dev/null
	done
}
trap '_pc_cleanup; cleanup' EXIT

# _pc_of MNT: sets _p and _r to the pid and report of MNT's powercut.
_pc_of() {
	_p=${_pc_pid[$1]:-$PC_PID}
	_r=${_pc_report[$1]:-$PC_REPORT}
}

# pc_cut_done [REPORT]: true when the power has been cut (`cut K`).
pc_cut_done() {
	local r=${1:-$PC_REPORT}
	grep -Eq '^cut [0-9]+$' "$r" 2>/dev/null
}

# pc_cut MNT: cuts the power now unless already cut, and waits until the
# backing folder holds the durable state (the report says `cut K`).
pc_cut() {
	local _p _r i
	_pc_of "$1"
	pc_cut_done "$_r" && return 0
	kill -USR1 "$_p" 2>/dev/null || { echo "powercut $_p is gone" >&2; return 1; }
	for i in $(seq 600); do
		pc_cut_done "$_r" && return 0
		sleep 0.05
	done
	echo "powercut $_p did not report the cut" >&2
	return 1
}

# _pc_wait PID TENTHS: true once PID has ended, within TENTHS/10 s.
_pc_wait() {
	local i
	for i in $(seq "$2"); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	! kill -0 "$1" 2>/dev/null
}

# pc_umount MNT: unmounts (lazily when busy) and waits for powercut to end.
# A powercut frozen by its cut (--freeze) holds requests until it is told
# to end: it is detached at once (a plain unmount would wait on it or find
# it busy), gets a moment to end by itself (it does once nothing uses the
# mount), then SIGTERM (it answers what it holds with EIO and ends), and
# SIGKILL as the last resort, so that no powercut outlives its test.
# Fails when a powercut needed more than its way of ending.
pc_umount() {
	local _p _r frozen="" rc=0
	_pc_of "$1"
	[ -n "${_pc_freeze[$1]:-}" ] && pc_cut_done "$_r" && frozen=1
	if _pc_mounted "$1"; then
		if [ -n "$frozen" ]; then
			fusermount3 -uz "$1" 2>/dev/null || umount -l "$1" 2>/dev/null
		else
			fusermount3 -u "$1" 2>/dev/null || fusermount3 -uz "$1" 2>/dev/null ||
				umount -l "$1" 2>/dev/null
		fi
	fi
	if [ -n "$frozen" ]; then
		_pc_wait "$_p" 10 || { kill -TERM "$_p" 2>/dev/null; _pc_wait "$_p" 100; } ||
			{ echo "frozen powercut $_p did not end on SIGTERM" >&2; rc=1; }
	elif ! _pc_wait "$_p" 300; then
		echo "powercut $_p did not end after unmounting $1" >&2
		rc=1
		kill -TERM "$_p" 2>/dev/null
		_pc_wait "$_p" 50
	fi
	if kill -0 "$_p" 2>/dev/null; then
		kill -KILL "$_p" 2>/dev/null
		_pc_wait "$_p" 50
	fi
	unset "_pc_pid[$1]" "_pc_report[$1]" "_pc_freeze[$1]"
	return $rc
}

# pc_barriers [REPORT]: the number of barriers the run passed.
pc_barriers() {
	sed -n 's/^barriers //p' "${1:-$PC_REPORT}"
}

# _pc_spread N COUNT: COUNT points spread evenly over 1..N+1, both ends
# included, one per line, without repeats.
_pc_spread() {
	awk -v n="$1" -v c="$2" 'BEGIN {
		last = n + 1
		if (c < 2 || last <= c) { for (k = 1; k <= last; k++) print k; exit }
		prev = 0
		for (i = 0; i < c; i++) {
			k = 1 + int(i * n / (c - 1) + 0.5)
			if (k != prev) print k
			prev = k
		}
	}'
}

# pc_points N: the cut points to try for a run of N barriers (see the
# interface in powercut.c's users: short form by default, POWERCUT_FULL=1
# for every point up to POWERCUT_MAX).
pc_points() {
	local n=$1
	if [ "${POWERCUT_FULL:-0}" = 1 ]; then
		_pc_spread "$n" "${POWERCUT_MAX:-200}"
	else
		_pc_spread "$n" "${POWERCUT_SHORT:-8}"
	fi
}

# pc_summary K D: the matrix's last line; a failure when D > 0.
pc_summary() {
	local k=${1:-$PC_K} d=${2:-$PC_D}
	echo "powercut: $k crash states, $d damaged"
	[ "$d" -gt 0 ] && fail "$d of $k crash states damaged"
	return 0
}

# pc_matrix LABEL N BACKING MNT RESTORE RUN STOP CHECK: the crash matrix
# loop.  For each point k of `pc_points N` and each mode (plain, then torn
# with seed k): eval RESTORE; pc_mount BACKING MNT --cut-at k [--torn k];
# eval RUN; cut the power if the run ended first; eval STOP (kill what
# used the mount and unmount it); eval CHECK, true for a crash state
# that is not damaged, which may set STATE (what it saw) and BAD (what is
# wrong).  Counts the states in PC_K and the damaged ones in PC_D (for
# pc_summary) and prints one line per state, LABEL first.
PC_K=0
PC_D=0
pc_matrix() {
	local label=$1 n=$2 backing=$3 mnt=$4 restore=$5 run=$6 stop=$7
	local check=$8 k mode opts
	for k in $(pc_points "$n"); do
		for mode in plain torn; do
			eval "$restore"
			opts=(--cut-at "$k")
			[ $mode = torn ] && opts+=(--torn "$k")
			if ! pc_mount "$backing" "$mnt" "${opts[@]}"; then
				fail "${label}k=$k $mode: pc_mount"
				continue
			fi
			eval "$run"
			pc_cut_done || pc_cut "$mnt"
			eval "$stop"
			PC_K=$((PC_K + 1))
			STATE= BAD=
			if eval "$check"; then
				echo "${label}k=$k/$n $mode: ok ($STATE)"
			else
				PC_D=$((PC_D + 1))
				echo "${label}k=$k/$n $mode: DAMAGED ($STATE): $BAD"
			fi
		done
	done
}
