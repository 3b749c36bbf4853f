# SPDX-License-Identifier: MIT
# tools/bench/lib.sh - what the benchmark scripts share: timing, medians,
# ratios, the page-cache switch, random data, and the servers they push to.
# Source it after setting BENCH (the script's name, for messages) and
# entering the work folder.

HVRESYNC=${HVRESYNC:-$TOP/build/hvresync}

die() { echo "$BENCH: $*" >&2; exit 2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" -v p="${3:-2}" 'BEGIN { printf "%.*f", p, a / b }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

# median N...: the middle value (the mean of the two middle ones).
median() {
	printf '%s\n' "$@" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2];
		      else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# can_drop_caches: whether cold-cache runs are possible here (root, and a
# kernel that lets this namespace drop the page cache).
can_drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; }

# cache_prep MODE FILE...: before a timed run, empty the page cache (cold)
# or make sure FILEs are in it (warm).
cache_prep() {
	local mode=$1
	shift
	if [ "$mode" = cold ]; then
		sync
		echo 3 >/proc/sys/vm/drop_caches
	else
		cat "$@" >/dev/null
	fi
}

# settle: wait (at most 5 s) until the disk under $WORK has done no I/O
# for 200 ms, so that a timed run does not pay for the tail of the one
# before it (writeback, the recovery side giving back a merged child's
# blocks in the background).
settle() {
	local src dev s0 s1 i
	src=$(findmnt -no SOURCE --target "$WORK" 2>/dev/null) || return 0
	dev=$(basename "$(readlink -f "$src")")
	[ -r "/sys/class/block/$dev/stat" ] || return 0
	s0=$(cat "/sys/class/block/$dev/stat")
	for i in $(seq 25); do
		sleep 0.2
		s1=$(cat "/sys/class/block/$dev/stat")
		[ "$s0" = "$s1" ] && return 0
		s0=$s1
	done
}

# timed OUTVAR SETUP MODE CACHEFILES -- CMD...: run SETUP (untimed; may be
# :), prepare the cache, time CMD once; OUTVAR gets the seconds.  CMD's
# exit status must be 0 or, for compare tools, 1 ("they differ").
timed() {
	local __out=$1 setup=$2 mode=$3 t0 rc
	shift 3
	local files=()
	while [ "$1" != -- ]; do files+=("$1"); shift; done
	shift
	$setup || die "setup for '$*' failed"
	cache_prep "$mode" "${files[@]}"
	settle
	t0=$(now)
	"$@" >/dev/null 2>>"$WORK/bench.err"
	rc=$?
	[ $rc -le 1 ] || die "'$*' exited $rc: $(tail -n 2 "$WORK/bench.err")"
	printf -v "$__out" '%s' "$(secs "$t0" "$(now)")"
}

# runs OUTVAR N SETUP MODE CACHEFILES -- CMD...: the median of N timed runs.
runs() {
	local __o=$1 n=$2 i t all=()
	shift 2
	for i in $(seq "$n"); do
		timed t "$@"
		all+=("$t")
	done
	printf -v "$__o" '%s' "$(median "${all[@]}")"
}

# random_raw FILE BYTES: pseudo-random data that never repeats a block
# (AES-CTR of zeros, fast).
random_raw() {
	openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
		-iv 00000000000000000000000000000000 </dev/zero 2>/dev/null |
		head -c "$2" >"$1"
}

# scatter_sectors FILE PERCENT SEED [timed]: overwrite PERCENT% of FILE's
# 4 KiB sectors with new random data; prints the bytes changed.  With
# "timed", the same sectors in ascending order and then fdatasync, as a
# merge writes them, and prints the seconds that took: what the disk
# costs for those writes from a program that does nothing else.
scatter_sectors() {
	python3 - "$1" "$2" "$3" "${4:-}" <<'PY'
import os, random, sys, time
r = random.Random(int(sys.argv[3]))
fd = os.open(sys.argv[1], os.O_WRONLY)
n = os.fstat(fd).st_size // 4096
sel = r.sample(range(n), int(n * float(sys.argv[2]) / 100))
if sys.argv[4] == "timed":
    buf = os.urandom(4096)
    t0 = time.monotonic()
    for s in sorted(sel):
        os.pwrite(fd, buf, s * 4096)
    os.fdatasync(fd)
    print("%.3f" % (time.monotonic() - t0))
else:
    for s in sel:
        os.pwrite(fd, os.urandom(4096), s * 4096)
    print(len(sel) * 4096)
os.close(fd)
PY
}

# free_port: a free TCP port on loopback.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# serve_start EXPORT...: hvresync serve on loopback with key $WORK/key;
# sets SERVE_PORT and SERVE_PID.
serve_start() {
	local e args=() i
	[ -s "$WORK/key" ] || "$HVRESYNC" keygen "$WORK/key" >/dev/null 2>&1 ||
		die "hvresync keygen failed"
	for e in "$@"; do args+=(--export "$e"); done
	"$HVRESYNC" serve --listen 127.0.0.1:0 --psk-file "$WORK/key" \
		--state-dir "$WORK/state" "${args[@]}" >"$WORK/serve.log" 2>&1 &
	SERVE_PID=$!
	for i in $(seq 100); do
		SERVE_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/serve.log")
		[ -n "$SERVE_PORT" ] && return 0
		sleep 0.1
	done
	die "serve did not start: $(tail -n 3 "$WORK/serve.log")"
}

# rsyncd_start: an rsync daemon on loopback serving $WORK as module
# "bench" (plain TCP, no ssh); sets RSYNC_PORT and RSYNCD_PID.
rsyncd_start() {
	RSYNC_PORT=$(free_port)
	cat >"$WORK/rsyncd.conf" <<EOC
pid file = $WORK/rsyncd.pid
use chroot = false
[bench]
	path = $WORK
	read only = false
	uid = root
	gid = root
EOC
	rsync --daemon --no-detach --address=127.0.0.1 --port="$RSYNC_PORT" \
		--config="$WORK/rsyncd.conf" 2>"$WORK/rsyncd.err" &
	RSYNCD_PID=$!
	sleep 0.5
}

# bench_stop: stop what serve_start and rsyncd_start started.
bench_stop() {
	local p
	for p in ${SERVE_PID:-} ${RSYNCD_PID:-}; do
		kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	SERVE_PID= RSYNCD_PID=
}
