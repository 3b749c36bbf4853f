# tests/vm/50-views.sh - FUSE views (`hvresync mount`) on Debian 12's
# kernel: read-only views of every kind of image read as the host's oracle
# and refuse writes; a --rw view takes dd writes (into unallocated, zero
# and written blocks, across block ends, the last sector), and after
# umount the image reopens clean and reads back what was written, through a
# new view and through a device-mapper view.
. /vm/dm.inc

mkdir -p "$T/m" "$T/w"
if expect_rc 0 "mount dyn fixed diff dirty read-only" \
	hv mount "$IMG/dyn.vhdx" "$IMG/fixed.vhdx" "$IMG/diff.avhdx" "$IMG/dirty.vhdx" "$T/m"; then
	for n in dyn fixed dirty; do
		check "view $n: sha256 equals qemu-img convert's" \
			test "$(sha_of "$T/m/$n")" = "$(expected $n.vhdx)"
	done
	check "view diff (a differencing child over base.vhdx): sha256 equals the host's" \
		test "$(sha_of "$T/m/diff")" = "$(expected diff.avhdx)"
	if dd if=/dev/zero of="$T/m/dyn" bs=4096 count=1 conv=notrunc 2>/dev/null; then
		fail "a write to a read-only view succeeded"
	else
		ok "a write to a read-only view is refused"
	fi
	# keep the original bytes for the --rw part
	cp "$T/m/dyn" "$T/want.raw"
	expect_rc 0 "umount the read-only views" hv umount "$T/m"
	check "the mount point is no longer a mount" sh -c "! grep -q ' $T/m ' /proc/mounts"
fi
check "dirty.vhdx is still dirty after a read-only view (nothing written)" \
	sh -c "hvresync inspect --json '$IMG/dirty.vhdx' | grep -q '\"log_dirty\": true'"

# --rw: writes of known bytes at known places, applied to want.raw too
cp "$IMG/dyn.vhdx" "$D/rw.vhdx"
dd if=/dev/urandom of="$T/rnd" bs=1M count=3 2>/dev/null
# put OFF COUNT SRC FILE: COUNT 4 KiB pieces of SRC at 4 KiB piece OFF of
# FILE (4 KiB writes: 512-byte ones take minutes through FUSE under TCG)
put() { dd if="$3" of="$4" bs=4096 seek="$1" count="$2" conv=notrunc 2>/dev/null; }
if expect_rc 0 "mount --rw a copy of dyn.vhdx" hv mount --rw "$D/rw.vhdx" "$T/w"; then
	ok=1
	t0=$(_uptime)
	for f in "$T/w/rw" "$T/want.raw"; do
		# 4 KiB in block 0; 3 MiB from 7 MiB + 4 KiB (unallocated and
		# zero blocks, across block ends); 1 MiB of zeros into block
		# 9; the last 4 KiB of the disk
		put 1 1 "$T/rnd" "$f" || ok=0
		put 1793 768 "$T/rnd" "$f" || ok=0
		put 4608 256 /dev/zero "$f" || ok=0
		put 8191 1 "$T/rnd" "$f" || ok=0
	done
	sync
	ELAPSED=$(awk -v a="$t0" -v b="$(_uptime)" 'BEGIN {printf "%.2f", b - a}')
	note "dd into the --rw view took ${ELAPSED} s"
	check "dd writes into the --rw view" test $ok = 1
	check "the view reads back what was written" \
		test "$(sha_of "$T/w/rw")" = "$(sha_of "$T/want.raw")"
	expect_rc 0 "umount the --rw view" hv umount "$T/w"
	hv inspect --json "$D/rw.vhdx" >"$T/insp.json" 2>"$T/err"
	check "the image reopens with a clean log" grep -q '"log_dirty": false' "$T/insp.json"
	expect_rc 0 "verify the image against the expected bytes" \
		hv verify "$D/rw.vhdx" "$T/want.raw"
	if expect_rc 0 "mount the written image again" hv mount "$D/rw.vhdx" "$T/m"; then
		check "a new view reads the written bytes" \
			test "$(sha_of "$T/m/rw")" = "$(sha_of "$T/want.raw")"
		hv umount "$T/m"
	fi
	if expect_rc 0 "map the written image" hv map "$D/rw.vhdx" hvr-rw; then
		check "its device-mapper view reads the written bytes" \
			test "$(sha_of /dev/mapper/hvr-rw)" = "$(sha_of "$T/want.raw")"
		expect_rc 0 "unmap it" hv unmap hvr-rw
	fi
fi
check "no FUSE mount left" sh -c "! grep -q ' fuse' /proc/mounts"
