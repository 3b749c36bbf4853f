# tests/vm/10-dm-map.sh - `hvresync map`/`unmap` against the real
# device-mapper of Debian 12's kernel, with no udev running (libdevmapper
# makes the /dev/mapper nodes itself): a dynamic VHDX with blocks stored out
# of order and a fixed one read as qemu reads them, their tables equal
# `hvresync dm-table`, unmap leaves nothing, and every refusal (name taken,
# busy, not ours, unknown, unmappable image, device-mapper or dm-zero
# missing) is one line and exit 2 with nothing left behind.
. /vm/dm.inc

map_and_compare dyn.vhdx hvr-dyn
map_and_compare fixed.vhdx hvr-fixed
refusals_common

# Device-mapper missing, as on a host where nothing loads dm_mod: no module
# helper, modules unloaded.
echo /bin/false >/proc/sys/kernel/modprobe
loops=$(loop_leftovers)
if rmmod dm_zero && rmmod dm_mod; then
	refusal "map without device-mapper" hv map "$IMG/dyn.vhdx" hvr-nodm
	refusal "unmap without device-mapper" hv unmap hvr-nodm
	check "map without device-mapper left no loop device" \
		wait_until 5 no_loops_beyond "$loops"
	modprobe dm_mod
	# dm-zero missing: the dynamic image needs zero targets, the fixed
	# one only linear.
	refusal "map of a dynamic image without dm-zero" hv map "$IMG/dyn.vhdx" hvr-nozero
	check "the refused map left no /dev/mapper node" test ! -e /dev/mapper/hvr-nozero
	check "the refused map left no device-mapper device" test "$(dm_leftovers)" -eq 0
	check "the refused map left no loop device" wait_until 5 no_loops_beyond "$loops"
	map_and_compare fixed.vhdx hvr-fixed-nozero
else
	fail "cannot unload dm_zero and dm_mod: $(lsmod | grep '^dm')"
fi
echo /sbin/modprobe >/proc/sys/kernel/modprobe
modprobe dm_zero
true
