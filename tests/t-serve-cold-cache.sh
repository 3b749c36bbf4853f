#!/bin/bash
# t-serve-cold-cache.sh - the recovery side reads its image around a cold
# page cache (what the cache holds through it, the rest with O_DIRECT), so
# a nightly resync does not fill the recovery host's cache with images
# nobody reads: after a push --hold to an image that was not cached, the
# image is still (almost) not cached.  The same push to an image that is
# half in the cache (one session reading both ways) and to one that is all
# in it: after the merge, each time, the recovery image holds the source's
# bytes (qemu-img's sha256 of its raw content).
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }
command -v qemu-img >/dev/null || skip "qemu-img not installed"
command -v fincore >/dev/null || skip "fincore not installed (util-linux)"
trap 'stop_server; cleanup' EXIT

S=$SCRATCH
STATE=$S/state
SERVER_PID=
. "$(dirname "$0")/helpers/serve.sh"
M=$((1 << 20))
SIZE=$((64 * M))

# cached FILE: the bytes of FILE in the page cache.
cached() { fincore -nb "$1" | awk '{ print $1 }'; }
# drop FILE: its clean pages out of the page cache.
drop() {
	python3 - "$1" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)
PY
}

say "a 64 MiB dynamic pair: the recovery copy has 1 % of its 4 KiB sectors changed"
python3 - "$S/p.raw" "$S/r.raw" "$SIZE" <<'PY'
import os, random, sys
r = random.Random(7)
size = int(sys.argv[3])
data = bytearray(r.randbytes(size))
open(sys.argv[1], "wb").write(data)
for s in r.sample(range(size // 4096), size // 4096 // 100):
    data[s * 4096:(s + 1) * 4096] = r.randbytes(4096)
open(sys.argv[2], "wb").write(data)
PY
qemu-img convert -q -f raw -O vhdx -o subformat=dynamic "$S/p.raw" "$S/p.vhdx" &&
	qemu-img convert -q -f raw -O vhdx -o subformat=dynamic "$S/r.raw" "$S/r0.vhdx" ||
	{ fail "qemu-img convert"; finish; }
want=$(sha "$S/p.raw")
rm -f "$S/p.raw" "$S/r.raw"
cp "$S/r0.vhdx" "$S/r.vhdx"
drop "$S/r.vhdx"
[ "$(cached "$S/r.vhdx")" -lt $((SIZE / 10)) ] ||
	skip "the page cache of $S/r.vhdx cannot be dropped on this file system"

mkdir -p "$STATE"
make_key "$S/key"
start_server "$S/serve.log" --psk-file "$S/key" --export r="$S/r.vhdx" ||
	finish

# one MODE: cold, half or warm
round() {
	local mode=$1 size held
	cp "$S/r0.vhdx" "$S/r.vhdx"
	drop "$S/r.vhdx"
	size=$(stat -c %s "$S/r.vhdx")
	case $mode in
	half) dd if="$S/r.vhdx" of=/dev/null bs=1M count=$((size / M / 2)) 2>/dev/null ;;
	warm) cat "$S/r.vhdx" >/dev/null ;;
	esac
	if ! "$HVRESYNC" push --psk-file "$S/key" --hold "$S/p.vhdx" \
		"127.0.0.1:$PORT/r" >"$S/push.out" 2>&1; then
		fail "$mode: push --hold: $(tail -n 1 "$S/push.out")"
		return
	fi
	held=$(cached "$S/r.vhdx")
	if [ "$mode" = cold ]; then
		check "cold: the compare left the recovery image uncached ($held of $size bytes cached)" \
			test "$held" -lt $((size / 10))
	fi
	if ! "$HVRESYNC" push --psk-file "$S/key" --merge "127.0.0.1:$PORT/r" \
		>"$S/merge.out" 2>&1; then
		fail "$mode: push --merge: $(tail -n 1 "$S/merge.out")"
		return
	fi
	qemu-img convert -f vhdx -O raw "$S/r.vhdx" "$S/out.raw" ||
		{ fail "$mode: qemu-img convert of the recovery image"; return; }
	check "$mode: the recovery image holds the source's bytes after the merge" \
		test "$(sha "$S/out.raw")" = "$want"
	rm -f "$S/out.raw"
}

round cold
round half
round warm
finish
