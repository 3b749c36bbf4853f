#!/bin/bash
# t-failfs.sh - self-test of the fault-injecting FUSE helper
# (tests/helpers/failfs.c): without faults it serves the source's bytes;
# --eio-at fails exactly the reads that touch the offset; --short gives
# short but correct reads; --eintr/--eagain fail every other read once;
# it ends cleanly on fusermount3 -u, and a killed failfs leaves no mount.
. "$(dirname "$0")/lib.sh"

FAILFS=${FAILFS:-$TOP/build/helpers/failfs}
[ -x "$FAILFS" ] || { fail "$FAILFS not built"; finish; }
[ -c /dev/fuse ] || skip "/dev/fuse missing"
command -v fusermount3 >/dev/null || skip "fusermount3 not installed"

SRC=$SCRATCH/src.bin
SIZE=3000123
head -c "$SIZE" /dev/urandom >"$SRC"
MNT=$SCRATCH/mnt
mkdir -p "$MNT"
_mounts+=("$MNT")

# ff_mount OPTS...: mount failfs over $SRC at $MNT (it returns once mounted).
ff_mount() { "$FAILFS" "$@" "$SRC" "$MNT" && mountpoint -q "$MNT"; }
ff_umount() { fusermount3 -u "$MNT"; }

# Raw pread(2) through ctypes: Python's os.pread retries EINTR by itself,
# which would hide what failfs answered.  Prints per OFF:LEN one line,
# "LEN_READ ok|BAD" (bytes compared with the source) or "ERR NAME".
cat >"$SCRATCH/rawread.py" <<'EOF'
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                       ctypes.c_long]
libc.pread.restype = ctypes.c_ssize_t
path, src = sys.argv[1], open(sys.argv[2], "rb").read()
fd = os.open(path, os.O_RDONLY)
for spec in sys.argv[3:]:
    off, n = map(int, spec.split(":"))
    buf = ctypes.create_string_buffer(n)
    r = libc.pread(fd, buf, n, off)
    if r < 0:
        print("ERR", errno.errorcode[ctypes.get_errno()])
    else:
        print(r, "ok" if buf.raw[:r] == src[off:off + r] else "BAD")
EOF
rawread() { python3 "$SCRATCH/rawread.py" "$MNT/disk" "$SRC" "$@" | tr '\n' ' ' | sed 's/ $//'; }

# expect_out DESC WANT CMD...: CMD's stdout (one line) must be WANT.
expect_out() {
	local desc=$1 want=$2 got; shift 2
	got=$("$@" 2>&1)
	if [ "$got" = "$want" ]; then ok "$desc: $got"; else fail "$desc: got '$got', want '$want'"; fi
}

say "no faults"
if ff_mount; then
	check "size is the source's" test "$(stat -c %s "$MNT/disk")" -eq "$SIZE"
	check "cat gives the source's bytes" cmp -s "$SRC" "$MNT/disk"
	check "dd bs=1M gives the source's bytes" \
		cmp -s "$SRC" <(dd if="$MNT/disk" bs=1M status=none)
	check "writing is refused" \
		bash -c "! (echo x >>'$MNT/disk') 2>/dev/null"
	check "fusermount3 -u ends it" ff_umount
	check "the mount is gone" bash -c "! mountpoint -q '$MNT'"
else
	fail "failfs did not mount"
fi

say "--eio-at"
OFF=1000000
if ff_mount --eio-at $OFF --eio-at 2M; then
	blk=$((OFF / 4096))
	check "dd of the 4 KiB block before OFF works" \
		dd if="$MNT/disk" of=/dev/null bs=4096 skip=$((blk - 1)) count=1 status=none
	if dd if="$MNT/disk" of=/dev/null bs=4096 skip=$blk count=1 status=none \
		2>"$SCRATCH/dd.err"; then
		fail "dd of the block holding OFF succeeded"
	else
		check "dd of the block holding OFF says EIO" \
			grep -q "Input/output error" "$SCRATCH/dd.err"
	fi
	# dd from the start stops at the failing block, having copied the
	# blocks before it unchanged.
	dd if="$MNT/disk" of="$SCRATCH/head.bin" bs=4096 status=none 2>/dev/null
	check "sequential dd stops with $((blk * 4096)) good bytes" \
		cmp -s "$SCRATCH/head.bin" <(head -c $((blk * 4096)) "$SRC")
	expect_out "single bytes around OFF" "1 ok ERR EIO 1 ok" \
		rawread $((OFF - 1)):1 $OFF:1 $((OFF + 1)):1
	expect_out "second offset (2M) fails too" "ERR EIO" rawread $((2 << 20)):512
	expect_out "reads elsewhere work" "4096 ok 65536 ok" \
		rawread 0:4096 $((OFF + 4096)):65536
	ff_umount
else
	fail "failfs --eio-at did not mount"
fi

say "--eio-at with --max-read: a split read returns what came before"
if ff_mount --eio-at $OFF --max-read 64K; then
	# Requests of 64 KiB from 0: those before OFF's request succeed.
	expect_out "1 MiB read from 0 is short, up to OFF's request" \
		"$((OFF / 65536 * 65536)) ok" rawread 0:1048576
	expect_out "a read starting in OFF's request fails" "ERR EIO" \
		rawread $((OFF / 65536 * 65536)):131072
	ff_umount
else
	fail "failfs --max-read did not mount"
fi

say "--short"
if ff_mount --short; then
	expect_out "each read returns half, correct bytes" \
		"2048 ok 32768 ok 1 ok 500 ok" \
		rawread 0:4096 4096:65536 7:1 $((SIZE - 1000)):1000
	expect_out "near the end: at most half, never past EOF" "123 ok" \
		rawread $((SIZE - 123)):1000
	check "cat still gets every byte" cmp -s "$SRC" "$MNT/disk"
	check "dd iflag=fullblock still gets every byte" \
		cmp -s "$SRC" <(dd if="$MNT/disk" bs=64K iflag=fullblock status=none)
	got=$(dd if="$MNT/disk" of=/dev/null bs=64K count=1 2>&1 | head -n1)
	if [ "$got" = "0+1 records in" ]; then ok "plain dd sees a partial record"; else fail "dd: '$got'"; fi
	ff_umount
else
	fail "failfs --short did not mount"
fi

say "--eintr, --eagain"
if ff_mount --eintr; then
	expect_out "--eintr fails every other read" \
		"ERR EINTR 4096 ok ERR EINTR 4096 ok" \
		rawread 0:4096 0:4096 8192:4096 8192:4096
	# Callers that retry EINTR (cat and dd do) see all the bytes; those
	# that do not (cmp) fail.
	check "cat retries EINTR and gets every byte" \
		cmp -s "$SRC" <(cat "$MNT/disk")
	check "dd retries EINTR and gets every byte" \
		cmp -s "$SRC" <(dd if="$MNT/disk" bs=64K status=none)
	ff_umount
else
	fail "failfs --eintr did not mount"
fi
if ff_mount --eagain; then
	expect_out "--eagain fails every other read" \
		"ERR EAGAIN 4096 ok ERR EAGAIN 512 ok" \
		rawread 0:4096 0:4096 100:512 100:512
	ff_umount
else
	fail "failfs --eagain did not mount"
fi
if ff_mount --eintr --eagain; then
	expect_out "both alternate, starting with EINTR" \
		"ERR EINTR 512 ok ERR EAGAIN 512 ok ERR EINTR" \
		rawread 0:512 0:512 0:512 0:512 0:512
	ff_umount
else
	fail "failfs --eintr --eagain did not mount"
fi

say "foreground and teardown"
"$FAILFS" -f "$SRC" "$MNT" &
pid=$!
disown "$pid" # no "Killed" notice from the shell
for _ in $(seq 50); do mountpoint -q "$MNT" && break; sleep 0.1; done
check "-f mounts in the foreground" mountpoint -q "$MNT"
check "-f serves the bytes" cmp -s "$SRC" "$MNT/disk"
kill -KILL "$pid" 2>/dev/null
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
for _ in $(seq 50); do grep -q " $MNT fuse.failfs " /proc/mounts || break; sleep 0.1; done
check "a killed failfs leaves no mount (auto_unmount)" \
	bash -c "! grep -q ' $MNT fuse.failfs ' /proc/mounts"
"$FAILFS" -f "$SRC" "$MNT" &
pid=$!
for _ in $(seq 50); do mountpoint -q "$MNT" && break; sleep 0.1; done
ff_umount
wait "$pid"
check "-f exits 0 after fusermount3 -u" test $? -eq 0

say "bad arguments"
cli_run "$FAILFS" "$SCRATCH/nope" "$MNT"
check "missing source: exit 2" test "$CLI_RC" -eq 2
cli_run "$FAILFS" --eio-at x "$SRC" "$MNT"
check "bad --eio-at: exit 2" test "$CLI_RC" -eq 2
cli_run "$FAILFS" "$SRC"
check "no mountpoint: exit 2" test "$CLI_RC" -eq 2
check "nothing left mounted" bash -c "! mountpoint -q '$MNT'"
finish
