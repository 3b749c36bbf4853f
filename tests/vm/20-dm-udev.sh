# tests/vm/20-dm-udev.sh - the same map/unmap promises as 10-dm-map with
# Debian 12's systemd-udevd running with dmsetup's rules, as on a normal
# host: udev makes the /dev/mapper nodes and libdevmapper waits for it.
# The map must not sit out a udev wait, and the udev links
# (/dev/disk/by-id/dm-name-NAME) must come and go with the device.
. /vm/dm.inc

if ! udev_start; then
	fail "systemd-udevd did not start"
	exit 0
fi
ok "systemd-udevd running (pid $(cat "$VM/udev.pid"))"

# (fixed.vhdx's single linear table adds nothing udev-specific)
map_and_compare dyn.vhdx hvr-dyn
refusals_common

if elapsed hv map "$IMG/dyn.vhdx" hvr-link >"$T/out" 2>"$T/err"; then
	# a healthy udev answers at once: anything near the udev wait limit
	# means the map waited for a cookie nobody completed
	check "map with udev took ${ELAPSED} s (< 10 s)" \
		awk -v t="$ELAPSED" 'BEGIN {exit !(t < 10)}'
	udevadm settle --timeout=30
	check "udev made /dev/disk/by-id/dm-name-hvr-link" \
		test -L /dev/disk/by-id/dm-name-hvr-link
	check "it points to the mapped device" \
		test "$(sha_of /dev/disk/by-id/dm-name-hvr-link)" = "$(expected dyn.vhdx)"
	if elapsed hv unmap hvr-link >"$T/out" 2>"$T/err"; then
		check "unmap with udev took ${ELAPSED} s (< 10 s)" \
			awk -v t="$ELAPSED" 'BEGIN {exit !(t < 10)}'
	else
		fail "unmap hvr-link: $(head -n 1 "$T/err")"
	fi
	udevadm settle --timeout=30
	check "the udev link is gone after unmap" \
		test ! -e /dev/disk/by-id/dm-name-hvr-link
	check "no /dev/mapper/hvr-link after unmap" test ! -e /dev/mapper/hvr-link
else
	fail "map with udev: $(head -n 1 "$T/err")"
fi
udev_stop
check "udev stopped" test ! -e /run/udev/control
