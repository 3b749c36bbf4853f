#!/bin/bash
# t-damage.sh - damaged VHDX files: every structure broken in turn
# (tests/helpers/damage.py: file identifier, headers, region tables,
# metadata table and items, unknown required items, BAT entries, sector
# bitmaps, truncation, seeded random flips).  `hvresync inspect` must either
# refuse the file (exit 2, exactly one stderr line naming it) or open it;
# when it opens it, the raw view must show the undamaged bytes (or fail
# reads with an I/O error where data is gone, never return wrong bytes).
# It must never crash or hang, and the damaged file must stay unchanged.
#
# Inputs: a qemu-made image and a mkvhdx.py differencing child (always),
# plus samples from ../shared/samples when present.
# DAMAGE_CASES=SUBSTRING runs only the cases whose name contains it.
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }

CHK="python3 $TOP/tests/helpers/checks.py"
MK="python3 $TOP/tests/helpers/mkvhdx.py"
DMG="python3 $TOP/tests/helpers/damage.py"
S=$SCRATCH
ONLY=${DAMAGE_CASES:-}

# view_ok VIEW REF: the sizes are equal and every 1 MiB piece of VIEW reads
# equal to REF or fails with EIO.
view_ok() {
	timeout -k 5 120 python3 - "$1" "$2" <<'EOF'
import errno, os, sys
view, ref = sys.argv[1], sys.argv[2]
vs, rs = os.path.getsize(view), os.path.getsize(ref)
if vs != rs:
    print("view size %d, undamaged %d" % (vs, rs)); sys.exit(1)
fv, fr = os.open(view, os.O_RDONLY), os.open(ref, os.O_RDONLY)
eio = 0
for off in range(0, vs, 1 << 20):
    want = os.pread(fr, 1 << 20, off)
    try:
        got = os.pread(fv, 1 << 20, off)
    except OSError as e:
        if e.errno != errno.EIO:
            print("read at %#x: %s" % (off, e)); sys.exit(1)
        eio += 1
        continue
    if got != want:
        i = next((k for k in range(min(len(got), len(want)))
                  if got[k] != want[k]), min(len(got), len(want)))
        print("wrong bytes at %#x" % (off + i)); sys.exit(1)
if eio:
    print("(%d MiB failed with EIO)" % eio)
EOF
}

# run_case DIR FILE REF CASE: damage a copy of DIR/pristine.EXT as DIR/FILE.
# Views over 256 MiB are compared by sampling (damage that misleads the
# reader shows everywhere, and the 1 GiB dirty-log sample is opened often).
run_case() {
	local dir=$1 file=$2 ref=$3 case=$4 work cls before mnt msg tag
	work=$dir/$file
	cp --sparse=always "$dir/pristine.${file##*.}" "$work"
	cls=$($DMG apply "$case" "$work") || { fail "$case: damage.py failed"; return; }
	before=$(sha "$work")
	tag="$(basename "$dir")/$case [$cls]"
	CMP=cmp CMPNOTE=""
	[ "$(stat -c %s "$ref")" -gt $((256 << 20)) ] && CMP=scmp CMPNOTE=" (sampled)"
	cli_run "$HVRESYNC" inspect --json "$work"
	if [ "$CLI_RC" -eq 124 ] || [ "$CLI_RC" -ge 128 ]; then
		fail "$tag: inspect crashed or hung (exit $CLI_RC)"
		cp "$work" "$S/../failed-$(basename "$dir")-$case.${file##*.}" 2>/dev/null &&
			echo "    kept as /tmp/failed-$(basename "$dir")-$case.${file##*.}"
	elif [ "$CLI_RC" -eq 2 ]; then
		if [ "$(wc -l <"$S/cli.err")" -ne 1 ] ||
			! grep -qF "$file" "$S/cli.err"; then
			fail "$tag: exit 2 but stderr is not one line naming $file:"
			sed 's/^/    stderr: /' "$S/cli.err" | head -n 5
		elif [ "$cls" = R ]; then
			fail "$tag: refused although a valid copy remains: $(cat "$S/cli.err")"
		else
			ok "$tag: refused: $(cut -c 1-150 "$S/cli.err")"
		fi
	elif [ "$CLI_RC" -eq 0 ]; then
		if [ "$cls" = F ]; then
			fail "$tag: inspect accepted a file it must refuse"
		else
			mnt=$S/m-$(basename "$dir")-$case
			mkdir -p "$mnt"
			cli_run "$HVRESYNC" mount "$work" "$mnt"
			if [ "$CLI_RC" -ne 0 ]; then
				if [ "$cls" = R ] || [ "$CLI_RC" -ne 2 ] ||
					[ "$(wc -l <"$S/cli.err")" -ne 1 ]; then
					fail "$tag: inspect opened it, mount exit $CLI_RC: $(head -n1 "$S/cli.err")"
				else
					ok "$tag: inspect opened it, mount refused it: $(head -n1 "$S/cli.err")"
				fi
			else
				_mounts+=("$mnt")
				local view=$mnt/${file%.*}
				if [ "$cls" = X ]; then
					if msg=$(view_ok "$view" "$ref"); then
						ok "$tag: opened, no wrong bytes $msg"
					else
						fail "$tag: opened, but $msg"
					fi
				elif msg=$(timeout -k 5 120 $CHK $CMP "$view" "$ref"); then
					ok "$tag: opened, view equals the undamaged file$CMPNOTE"
				else
					fail "$tag: opened, view differs from the undamaged file: $msg"
				fi
				"$HVRESYNC" umount "$mnt" >/dev/null 2>&1 ||
					fusermount3 -u "$mnt" 2>/dev/null
			fi
		fi
	else
		fail "$tag: inspect exit $CLI_RC (want 0 or 2): $(head -n1 "$S/cli.err")"
	fi
	[ "$(sha "$work")" = "$before" ] || fail "$tag: the damaged file was modified"
	rm -f "$work"
}

# damage_all DIR FILE REF [FLIPS [SKIP_ERE]]: every case that applies to
# DIR/pristine.EXT, with at most FLIPS (default 8) random-flip rounds and
# without the cases matching SKIP_ERE.
damage_all() {
	local dir=$1 file=$2 ref=$3 flips=${4:-8} skipre=${5:-^$} c
	say "damaging $(basename "$dir") ($file)"
	for c in $($DMG list "$dir/pristine.${file##*.}"); do
		[ -n "$ONLY" ] && [[ $c != *$ONLY* ]] && continue
		[[ $c == flips-* ]] && [ "${c#flips-}" -gt "$flips" ] && continue
		[[ $c =~ $skipre ]] && continue
		run_case "$dir" "$file" "$ref" "$c"
	done
}

# --- a qemu-made dynamic image (always available) ------------------------
mkdir -p "$S/qemu"
qemu-img create -q -f vhdx -o block_size=1M "$S/qemu/pristine.vhdx" 24M
qemu-io -f vhdx -c 'write -P 0x5a 0 3M' -c 'write -P 0xa5 10M 1M' \
	-c 'write -z 12M 1M' -c 'write -P 0x3c 23M 1M' \
	"$S/qemu/pristine.vhdx" >/dev/null
qemu-img convert -f vhdx -O raw "$S/qemu/pristine.vhdx" "$S/qemu/ref.raw"
damage_all "$S/qemu" dmg.vhdx "$S/qemu/ref.raw"

# --- a differencing child (parent next to it, found by relative_path) ----
mkdir -p "$S/diff"
qemu-img create -q -f vhdx -o block_size=2M "$S/diff/parent.vhdx" 16M
qemu-io -f vhdx -c 'write -P 0x11 0 16M' "$S/diff/parent.vhdx" >/dev/null
$MK child --parent "$S/diff/parent.vhdx" --out "$S/diff/pristine.avhdx" \
	--block-size 1M --seed 7 --write 4K:4K:0x22 --write 3M+512:512:p1 \
	--full-block 5:0x33 --zero-block 9 --manifest "$S/diff/c.json"
qemu-img convert -f vhdx -O raw "$S/diff/parent.vhdx" "$S/diff/ref.raw"
$MK apply "$S/diff/ref.raw" "$S/diff/c.json"
damage_all "$S/diff" dmg.avhdx "$S/diff/ref.raw"

# --- samples --------------------------------------------------------------
if [ -d "$SAMPLES" ]; then
	for spec in coreos-config2_base.vhdx.bz2:plain \
		dissect-fixed.vhdx.gz:plain \
		discutils-vhdx-log-replay.zip:dirty; do
		s=${spec%%:*}
		[ -f "$SAMPLES/$s" ] || { echo "SKIP: sample $s not found"; continue; }
		d=$S/${s%%.*}
		mkdir -p "$d"
		f=$(SCRATCH=$d unpack_sample "$s")
		mv "$f" "$d/pristine.vhdx"
		if [ "${spec##*:}" = dirty ]; then
			# the reference is qemu's view after its own log replay
			cp "$d/pristine.vhdx" "$d/replayed.vhdx"
			qemu-img check -q -r all -f vhdx "$d/replayed.vhdx" >/dev/null 2>&1
			qemu-img convert -f vhdx -O raw "$d/replayed.vhdx" "$d/ref.raw"
			rm -f "$d/replayed.vhdx"
		else
			qemu-img convert -f vhdx -O raw "$d/pristine.vhdx" "$d/ref.raw"
		fi
		# Random flips and the header-content cases run on the generated
		# images only: sample views are larger and every case the reader
		# opens is read in full, so samples get the creator-specific ones.
		damage_all "$d" dmg.vhdx "$d/ref.raw" 0 '^(h[12]-(version|logoff)|rt1-sig)$'

		rm -rf "$d"
	done
else
	echo "SKIP: ../shared/samples not found; damaging only generated images"
fi
finish
