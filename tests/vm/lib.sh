# tests/vm/lib.sh - helpers for the guest checks tests/vm/NN-name.sh, which
# run under busybox ash inside the Debian 12 kernel tools/vm/run boots (no
# bash, python or qemu-img there).  The guest init sources this before each
# check; a check just calls what is below.
#
# Each check starts with: loop, fuse, dm-mod and dm-zero loaded; the
# kernel's module helper /sbin/modprobe (busybox) in place; no udev
# running; no device-mapper device, loop device or FUSE mount.  Whatever
# it leaves is taken down after it.  A check that exits non-zero, or runs
# longer than VM_CHECK_TIMEOUT (150 s), counts as one more failure.
#
# Variables:
#   $CHECK     the check's name (10-dm-map)
#   $T         a fresh, empty scratch dir on tmpfs (RAM; no O_DIRECT on 6.1)
#   $D         a fresh, empty scratch dir on the ext4 disk that holds $IMG
#              (O_DIRECT works; put copies of big images here)
#   $IMG       the test images (read them; copy before writing: later checks
#              use the same files).  Made on the host by tools/vm/mkimages:
#                dyn.vhdx     dynamic, 32 MiB, 2 MiB blocks, stored out of
#                             order in the file; blocks never written, one
#                             allocated and written with zeros, one written
#                             as zeros by qemu-io (write -z), partial ones
#                fixed.vhdx   fixed, 16 MiB, some data
#                base.vhdx    dynamic, 16 MiB, 1 MiB blocks: the parent of
#                diff.avhdx   a differencing child (tests/helpers/mkvhdx.py;
#                             its expected sha256 is the base's bytes with
#                             the child's writes applied)
#                dirty.vhdx   dynamic, 16 MiB, its log dirty (LogGuid set: a
#                             writer killed after a flush); expected = the
#                             content after qemu's log replay
#              plus what tests/vm/NN-name.prep made for the checks run.
#   $HVRESYNC  hvresync (on PATH); $HELPERS: build/helpers (vhdx-io, ...)
#
# Functions:
#   ok DESC / fail DESC      a TAP-like line `ok N - DESC` / `not ok N - DESC`
#   check DESC CMD...        ok when CMD exits 0, else fail (and return 1)
#   expect_rc WANT DESC CMD...
#                            run CMD (stdout in $T/out, stderr in $T/err);
#                            ok when it exits WANT, else fail and show stderr
#   one_line FILE            true when FILE has exactly one line
#   refusal DESC CMD...      CMD must exit 2 with exactly one line on stderr
#   sha_of FILE_OR_DEV       sha256 (hex) of all its bytes
#   expected NAME            sha256 of image NAME's raw content (qemu-img
#                            convert -O raw on the host)
#   udev_start [--no-dm-rules]
#                            start systemd-udevd (Debian 12's) with the
#                            device-mapper rules, or with them masked, and
#                            wait until it has settled
#   udev_stop                stop it and remove its /run/udev state, so
#                            libdevmapper sees no udev again
#   dm_leftovers             the number of device-mapper devices
#   loop_leftovers           the number of attached loop devices
#   elapsed CMD...           run CMD, put its wall time (s, 0.01 s steps)
#                            in $ELAPSED; returns CMD's status
#   note TEXT                a `# TEXT` comment line on the console
#   serve_start LOG ARGS...  hvresync serve --listen 127.0.0.1:0 ARGS in the
#                            background, its output in LOG; SPID its pid,
#                            PORT the port it says it listens on; returns
#                            1 (PORT empty) when it says none within 10 s

VM=${VM:-/run/vm}

_count() {
	local n
	n=$(($(cat "$VM/n") + 1))
	echo $n >"$VM/n"
	echo $n
}

# with VM_TRACE=1 on the host, each line ends in the guest's uptime
_at() { [ -f /vm/trace ] && echo " @$(cut -d' ' -f1 /proc/uptime)"; }

ok() {
	echo "ok $(_count) - $CHECK: $*$(_at)"
	echo "$CHECK: $*" >>"$VM/pass"
}

fail() {
	echo "not ok $(_count) - $CHECK: $*$(_at)"
	echo "$CHECK: $*" >>"$VM/fail"
}

note() { echo "# $*"; }

check() {
	local d=$1
	shift
	if "$@"; then
		ok "$d"
	else
		fail "$d"
		return 1
	fi
}

one_line() {
	local n
	n=$(wc -l <"$1")
	if [ "$n" -eq 1 ]; then
		[ -z "$(tail -c 1 "$1")" ] # nothing after the newline
	else
		[ "$n" -eq 0 ] && [ -s "$1" ] # one line, no newline
	fi
}

_show_err() { sed -n '1,5s/^/#     stderr: /p' "$T/err"; }

expect_rc() {
	local want=$1 d=$2 rc
	shift 2
	"$@" >"$T/out" 2>"$T/err"
	rc=$?
	if [ "$rc" -eq "$want" ]; then
		ok "$d"
		return 0
	fi
	fail "$d: exit $rc, want $want"
	_show_err
	return 1
}

refusal() {
	local d=$1 rc
	shift
	"$@" >"$T/out" 2>"$T/err"
	rc=$?
	if [ "$rc" -eq 2 ] && one_line "$T/err"; then
		ok "$d: $(head -c 160 "$T/err")"
		return 0
	fi
	fail "$d: exit $rc (want 2), $(wc -l <"$T/err") stderr lines (want 1)"
	_show_err
	return 1
}

# 1 MiB reads: a --rw view is direct_io, so every read is a FUSE round trip
# (busybox sha256sum alone reads 4 KiB at a time)
sha_of() { dd if="$1" bs=1M 2>/dev/null | sha256sum | cut -d' ' -f1; }

expected() {
	awk -v n="$1" '$2 == n {print $1; found = 1} END {exit !found}' "$IMG/SHA256SUMS"
}

dm_leftovers() { ls /sys/block 2>/dev/null | grep -c '^dm-'; }

loop_leftovers() { losetup -a 2>/dev/null | grep -c .; }

_uptime() { cut -d' ' -f1 /proc/uptime; }

elapsed() {
	local t0 rc
	t0=$(_uptime)
	"$@"
	rc=$?
	ELAPSED=$(awk -v a="$t0" -v b="$(_uptime)" 'BEGIN {printf "%.2f", b - a}')
	return $rc
}

serve_start() {
	local log=$1 i=0
	shift
	hvresync serve --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
	SPID=$!
	PORT=
	while [ -z "$PORT" ] && [ $i -lt 100 ]; do
		PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log")
		[ -n "$PORT" ] || sleep 0.1
		i=$((i + 1))
	done
	[ -n "$PORT" ]
}

udev_start() {
	local r i
	rm -f /etc/udev/rules.d/*
	if [ "${1:-}" = --no-dm-rules ]; then
		# a file named like a rule in /etc/udev/rules.d, linked to
		# /dev/null, masks that rule
		for r in /usr/lib/udev/rules.d/*dm*.rules; do
			ln -s /dev/null "/etc/udev/rules.d/${r##*/}"
		done
	fi
	/usr/lib/systemd-udevd --daemon >/dev/null 2>&1 || return 1
	i=0
	while [ ! -S /run/udev/control ] && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	pidof systemd-udevd >"$VM/udev.pid" || return 1
	udevadm trigger --action=add >/dev/null 2>&1
	udevadm settle --timeout=60
}

udev_stop() {
	local i
	udevadm control --exit >/dev/null 2>&1
	i=0
	while pidof systemd-udevd >/dev/null && [ $i -lt 50 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	kill -KILL $(pidof systemd-udevd) 2>/dev/null
	rm -rf /run/udev /etc/udev/rules.d/*
	rm -f "$VM/udev.pid"
}
