# tests/vm/40-verify.sh - `hvresync verify` on Debian 12's kernel: io_uring
# is used (not a fallback), plain and --direct reads give the differences
# the host computed from qemu-img's bytes, on the image files, on FUSE
# views (`hvresync mount`) and on device-mapper views (`hvresync map`) of
# the same disks; and how long each way takes (cold page cache), printed as
# `timing: ...` lines (guest time under qemu TCG: compare them with each
# other, not with a real host).
. /vm/dm.inc

A=$IMG/big-a.vhdx
B=$IMG/big-b.vhdx
C=$IMG/big-c.vhdx
: >"$T/none.diff"

# vcheck DESC WANT_RC WANT_DIFF VERIFY_ARGS...: exit status and the
# `differ offset=... length=...` lines must be as expected.
vcheck() {
	local d=$1 want=$2 wdiff=$3 rc
	shift 3
	elapsed hv verify "$@" >"$T/v.out" 2>"$T/err"
	rc=$?
	grep '^differ offset=' "$T/v.out" | sed 's/ (at .*//' >"$T/v.diff"
	if [ $rc -ne "$want" ]; then
		fail "$d: exit $rc, want $want"
		_show_err
	elif ! cmp -s "$T/v.diff" "$wdiff"; then
		fail "$d: differences are not the host's"
		diff "$wdiff" "$T/v.diff" | sed -n '1,8s/^/#     /p'
	else
		ok "$d (${ELAPSED} s)"
		return 0
	fi
	return 1
}

cold() { sync && echo 3 >/proc/sys/vm/drop_caches; }

# verify3 LABEL PAIR X Y: the pair X, Y (paths of a kind) of PAIR (big or
# full) with and without --direct; sets COLD and DIRECT to the
# cold-cache times
verify3() {
	local label=$1 pair=$2 x=$3 y=$4
	cold
	vcheck "$label: verify $pair-a $pair-c (cold cache)" 1 "$IMG/$pair-ac.diff" "$x" "$y"
	COLD=$ELAPSED
	cold
	vcheck "$label: verify --direct $pair-a $pair-c (cold cache)" 1 "$IMG/$pair-ac.diff" --direct "$x" "$y"
	DIRECT=$ELAPSED
}

# files
vcheck "files: verify of the same bytes in another block order" 0 "$T/none.diff" "$A" "$B"
vcheck "files: verify --direct of the same" 0 "$T/none.diff" --direct "$A" "$B"
if hv verify --json "$A" "$C" >"$T/v.json" 2>"$T/err" || [ $? -eq 1 ]; then
	check "files: verify --json says io_uring was used" grep -q '"io_uring": true' "$T/v.json"
else
	fail "verify --json: $(head -n 1 "$T/err")"
fi
refusal "verify of disks of different sizes" hv verify "$IMG/dyn.vhdx" "$IMG/fixed.vhdx"
verify3 files big "$A" "$C"
F_COLD=$COLD F_DIRECT=$DIRECT
verify3 files full "$IMG/full-a.vhdx" "$IMG/full-c.vhdx"
FF_COLD=$COLD FF_DIRECT=$DIRECT

# FUSE views
V_COLD=- V_DIRECT=-
mkdir -p "$T/fv"
cold
if expect_rc 0 "mount big-a big-c (FUSE views)" hv mount "$A" "$C" "$T/fv"; then
	verify3 "FUSE views" big "$T/fv/big-a" "$T/fv/big-c"
	V_COLD=$COLD V_DIRECT=$DIRECT
	expect_rc 0 "umount the FUSE views" hv umount "$T/fv"
fi
FV_COLD=- FV_DIRECT=-
if expect_rc 0 "mount full-a full-c (FUSE views)" hv mount "$IMG/full-a.vhdx" "$IMG/full-c.vhdx" "$T/fv"; then
	verify3 "FUSE views" full "$T/fv/full-a" "$T/fv/full-c"
	FV_COLD=$COLD FV_DIRECT=$DIRECT
	expect_rc 0 "umount the FUSE views" hv umount "$T/fv"
fi

# device-mapper views
M_COLD=- M_DIRECT=-
if expect_rc 0 "map big-a" hv map "$A" hvr-big-a &&
	expect_rc 0 "map big-c" hv map "$C" hvr-big-c; then
	verify3 "dm views" big /dev/mapper/hvr-big-a /dev/mapper/hvr-big-c
	M_COLD=$COLD M_DIRECT=$DIRECT
	# a dm view's holes are its table's zero targets: read no more of
	# it than of the image file (the blocks the image holds)
	if hv verify --json /dev/mapper/hvr-big-a /dev/mapper/hvr-big-c \
		>"$T/vd.json" 2>"$T/err" || [ $? -eq 1 ]; then
		fr=$(sed -n 's/.*"bytes_read_a": \([0-9]*\).*/\1/p' "$T/v.json")
		dr=$(sed -n 's/.*"bytes_read_a": \([0-9]*\).*/\1/p' "$T/vd.json")
		if [ -n "$fr" ] && [ "$fr" = "$dr" ] && [ "$dr" -lt $((128 << 20)) ]; then
			ok "dm views: verify read $dr bytes of big-a's 128 MiB, as from the file (its zero targets skipped)"
		else
			fail "dm views: verify read ${dr:-?} bytes of big-a, the file ${fr:-?}"
		fi
	else
		fail "verify --json of the dm views: $(head -n 1 "$T/err")"
	fi
	# the two kernel paths must show the same bytes
	if hv mount "$B" "$T/fv" 2>"$T/err"; then
		vcheck "dm view of big-a against a FUSE view of big-b (same bytes)" 0 \
			"$T/none.diff" /dev/mapper/hvr-big-a "$T/fv/big-b"
		hv umount "$T/fv"
	else
		fail "mount big-b: $(head -n 1 "$T/err")"
	fi
fi
hv unmap hvr-big-a >/dev/null 2>&1
hv unmap hvr-big-c >/dev/null 2>&1
FM_COLD=- FM_DIRECT=-
if expect_rc 0 "map full-a" hv map "$IMG/full-a.vhdx" hvr-full-a &&
	expect_rc 0 "map full-c" hv map "$IMG/full-c.vhdx" hvr-full-c; then
	verify3 "dm views" full /dev/mapper/hvr-full-a /dev/mapper/hvr-full-c
	FM_COLD=$COLD FM_DIRECT=$DIRECT
fi
hv unmap hvr-full-a >/dev/null 2>&1
hv unmap hvr-full-c >/dev/null 2>&1
check "no dm device or loop device left" \
	test "$(dm_leftovers)" -eq 0 -a "$(loop_leftovers)" -eq 0

echo "timing: verify big pair (128 MiB virtual, 24 MiB written, 3 differences), cold cache: files $F_COLD s, FUSE views $V_COLD s, dm views $M_COLD s"
echo "timing: verify --direct big pair, cold cache: files $F_DIRECT s, FUSE views $V_DIRECT s, dm views $M_DIRECT s"
echo "timing: verify full pair (64 MiB fixed, written whole, 3 differences), cold cache: files $FF_COLD s, FUSE views $FV_COLD s, dm views $FM_COLD s"
echo "timing: verify --direct full pair, cold cache: files $FF_DIRECT s, FUSE views $FV_DIRECT s, dm views $FM_DIRECT s"
true
