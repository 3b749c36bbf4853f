# tests/vm/30-dm-udev-norules.sh - map and unmap when systemd-udevd runs
# WITHOUT dmsetup's udev rules (55-dm.rules, 95-dm-notify.rules masked), the
# host where libdevmapper's own wait never ends: nobody completes the
# cookie.  `map --udev-timeout 5` must come back within the limit with one
# line, exit 2 and nothing left (no node, no dm device, no loop device, no
# udev semaphore); `--noudevsync` must work without udev's help; an
# unmap that udev does not confirm still takes everything down; and a
# kernel without the dm-zero target gets the modprobe hint, udev or not.
. /vm/dm.inc

# sems: the number of SysV semaphores with a libdevmapper cookie's key
# (DM_COOKIE_MAGIC 0x0D4D in the high 16 bits).
sems() {
	awk 'NR > 1 && $1 >= 223150080 && $1 <= 223215615' /proc/sysvipc/sem 2>/dev/null |
		grep -c .
}

# nothing_left WHAT: no node, no dm device, no loop device, no semaphore.
nothing_left() {
	check "$1: no /dev/mapper/hvr-nr node" test ! -e /dev/mapper/hvr-nr
	check "$1: no device-mapper device (dmsetup ls)" \
		sh -c '! dmsetup ls 2>/dev/null | grep -q "^hvr-nr"'
	check "$1: no dm-N in /sys/block" test "$(dm_leftovers)" -eq 0
	check "$1: no loop device" wait_until 5 no_loops_beyond 0
	check "$1: no libdevmapper cookie semaphore" test "$(sems)" -eq 0
}

check "the kernel lists SysV semaphores (/proc/sysvipc/sem)" test -r /proc/sysvipc/sem

if ! udev_start --no-dm-rules; then
	fail "systemd-udevd (without dmsetup's rules) did not start"
	exit 0
fi
ok "systemd-udevd running without dmsetup's rules (pid $(cat "$VM/udev.pid"))"

# --- map: bounded wait, one line, nothing left
elapsed hv map --udev-timeout 5 "$IMG/dyn.vhdx" hvr-nr >"$T/out" 2>"$T/err"
rc=$?
if [ $rc -eq 2 ] && one_line "$T/err"; then
	ok "map --udev-timeout 5: exit 2, one line: $(head -c 200 "$T/err")"
else
	fail "map --udev-timeout 5: exit $rc (want 2), $(wc -l <"$T/err") stderr lines (want 1)"
	_show_err
fi
check "map came back after the limit, not long after (${ELAPSED} s, want 5 to 20)" \
	awk -v t="$ELAPSED" 'BEGIN {exit !(t >= 5 && t < 20)}'
check "the line names the device and the limit" \
	grep -q "hvr-nr: udev did not confirm /dev/mapper/hvr-nr within 5 s" "$T/err"
check "the line names dmsetup's rules and --noudevsync" \
	sh -c "grep -q '55-dm.rules' '$T/err' && grep -q '95-dm-notify.rules' '$T/err' && grep -q -- '--noudevsync' '$T/err'"
check "map printed no device on stdout" test ! -s "$T/out"
nothing_left "after the udev timeout"

# --- --noudevsync: libdevmapper makes and removes the node itself
if elapsed hv map --noudevsync "$IMG/dyn.vhdx" hvr-nr >"$T/out" 2>"$T/err"; then
	ok "map --noudevsync: exit 0 in ${ELAPSED} s"
	check "map --noudevsync took < 5 s" awk -v t="$ELAPSED" 'BEGIN {exit !(t < 5)}'
	check "map --noudevsync: /dev/mapper/hvr-nr is a block device" \
		test -b /dev/mapper/hvr-nr
	check "map --noudevsync: the device reads as qemu-img convert's bytes" \
		test "$(sha_of /dev/mapper/hvr-nr)" = "$(expected dyn.vhdx)"
	expect_rc 0 "unmap --noudevsync" hv unmap --noudevsync hvr-nr
	nothing_left "after unmap --noudevsync"
else
	fail "map --noudevsync: exit $?"
	_show_err
fi

# --- unmap that udev does not confirm: the device goes all the same
if hv map --noudevsync "$IMG/fixed.vhdx" hvr-nr >"$T/out" 2>"$T/err"; then
	elapsed hv unmap --udev-timeout 5 hvr-nr >"$T/out" 2>"$T/err"
	rc=$?
	if [ $rc -eq 2 ] && one_line "$T/err" &&
		grep -q "udev did not confirm /dev/mapper/hvr-nr within 5 s" "$T/err"; then
		ok "unmap --udev-timeout 5: exit 2, one line naming the timeout"
	else
		fail "unmap --udev-timeout 5: exit $rc (want 2), $(wc -l <"$T/err") lines"
		_show_err
	fi
	check "unmap came back within 20 s (${ELAPSED} s)" \
		awk -v t="$ELAPSED" 'BEGIN {exit !(t < 20)}'
	nothing_left "after an unconfirmed unmap"
else
	fail "map --noudevsync fixed.vhdx: $(head -n 1 "$T/err")"
fi

# --- no dm-zero, nothing to load it: the hint, not only "ioctl failed"
echo /bin/false >/proc/sys/kernel/modprobe
if rmmod dm_zero; then
	refusal "map of a dynamic image without dm-zero (udev, no rules)" \
		hv map --udev-timeout 5 "$IMG/dyn.vhdx" hvr-nr
	check "the hint names the target and the module" \
		grep -q "the kernel has no device-mapper 'zero' target: load it with 'modprobe dm-zero'" "$T/err"
	nothing_left "after the missing target"
else
	fail "cannot unload dm_zero: $(lsmod | grep '^dm')"
fi
echo /sbin/modprobe >/proc/sys/kernel/modprobe
modprobe dm_zero
check "dm-zero loaded again" grep -q '^dm_zero ' /proc/modules

udev_stop
check "udev stopped" test ! -e /run/udev/control
