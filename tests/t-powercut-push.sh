#!/bin/bash
# SPDX-License-Identifier: MIT
# t-powercut-push.sh - the push crash matrix (issue 11, item 2): the
# recovery side's images and its --state-dir live on the power-cut file
# system (tests/helpers/powercut.c), and the power is cut at barrier k of a
# run that pushes a divergent disk three ways: a default push (send, then
# merge into the recovery image), a --hold push (the complete copy kept as
# a child) and the --merge of that held copy.  The source differs from the
# recovery image by scattered 4 KiB sectors, whole blocks allocated on one
# side only, and zeros where the recovery image holds data (whole blocks
# and runs inside a block).
#
# After each cut, on what was durable (a fresh power-cut mount without a
# cut, at the same path, so that every path the product recorded still
# names the same file):
#  - `hvresync serve` restarts, finishes any interrupted merge before it
#    listens (no CHILD.merging left) and does not hang;
#  - each recovery image opens (`hvresync inspect`), `qemu-img check` is
#    clean, and every 4 KiB sector of it (qemu-img convert) holds its old
#    or its new content (python, sector by sector);
#  - a push, hold or merge that exited 0 before the cut is on disk: the
#    image equals the source (qemu-img compare), or the held copy merges;
#  - the progress record claims nothing that is not durable: a held child
#    called complete holds the whole source, a done_through holds the
#    source below it (the child read by vhdxlib.py, not by hvresync), a
#    record saying "merging" means the merge finished at restart;
#  - a new push (no --restart) completes, the images are then identical to
#    the source (qemu-img compare) and nothing is left behind.
# Plain mode, then torn mode (seed k).  POWERCUT_FULL=1 tries every
# barrier (tools/crash/run); the default is POWERCUT_SHORT points;
# POWERCUT_POINTS="K..." tries those points only and POWERCUT_MODES
# "plain" or "torn" that mode only (to replay a damaged state).
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }
command -v qemu-img >/dev/null || skip "qemu-img not installed"
command -v python3 >/dev/null || skip "python3 not installed"
command -v fusermount3 >/dev/null || skip "fusermount3 not installed"
[ "$(id -u)" -eq 0 ] || skip "needs root (FUSE mounts)"
[ -e /dev/fuse ] || skip "no /dev/fuse"
[ -f "$TOP/tests/helpers/powercut.sh" ] ||
	{ fail "tests/helpers/powercut.sh is missing"; finish; }
. "$TOP/tests/helpers/powercut.sh"
[ -x "$POWERCUT" ] || { fail "$POWERCUT not built (make -j2 all)"; finish; }

S=$SCRATCH
BACK=$S/back		# the backing folder of the power-cut mount
PRISTINE=$S/pristine	# what BACK holds before each run
MNT=$S/mnt
IMG=$MNT/images		# the recovery images (exports)
STATE=$MNT/lib/serve	# serve's --state-dir: made by serve itself
SERVER_PID=
# the server first: it holds files on the mount
trap 'kill_server; _pc_cleanup; cleanup' EXIT
. "$TOP/tests/helpers/serve.sh"

M=$((1 << 20))
SIZE=$((16 * M))
EXPORTS=(R H)		# R: default push; H: --hold, then --merge

# ---------------------------------------------------------------------------
# The oracle (python, independent of hvresync: raw files from qemu-img,
# VHDX structures from tests/helpers/vhdxlib.py).
cat >"$S/oracle.py" <<'EOF'
import os, random, shutil, sys
sys.path.insert(0, sys.argv[1])
SEC = 4096
M = 1 << 20

def gen(old, new, size, seed):
    """OLD: blocks 0-9 and 12-13 of random data (1 MiB blocks), the rest
    zero.  NEW: OLD with 64 scattered 4 KiB sectors changed in blocks 0-9,
    blocks 10-11 new (unallocated in OLD), blocks 12-13 zeroed, 16 sectors
    zeroed here and there and a 256 KiB zero run inside block 7."""
    r = random.Random(seed)
    o = bytearray(size)
    for j in list(range(10)) + [12, 13]:
        o[j * M:(j + 1) * M] = r.randbytes(M)
    n = bytearray(o)
    for s in r.sample(range(10 * M // SEC), 64):
        n[s * SEC:(s + 1) * SEC] = r.randbytes(SEC)
    for j in (10, 11):
        n[j * M:(j + 1) * M] = r.randbytes(M)
    for j in (12, 13):
        n[j * M:(j + 1) * M] = bytes(M)
    for s in r.sample(range(10 * M // SEC), 16):
        n[s * SEC:(s + 1) * SEC] = bytes(SEC)
    n[7 * M + 256 * 1024:7 * M + 512 * 1024] = bytes(256 * 1024)
    open(old, "wb").write(o)
    open(new, "wb").write(n)
    print(sum(o[i:i + SEC] != n[i:i + SEC] for i in range(0, size, SEC)))

def sectors(out, old, new):
    """Every 4 KiB sector of OUT is the one of OLD or of NEW (1 MiB at a
    time, sector by sector only where a MiB is neither whole)."""
    a, o, n = (open(p, "rb").read() for p in (out, old, new))
    if len(a) != len(o):
        print("size %d, want %d" % (len(a), len(o)))
        return 1
    bad, cnt = [], {"old": 0, "new": 0}
    for c in range(0, len(o), M):
        if a[c:c + M] == n[c:c + M]:
            cnt["new"] += sum(o[i:i + SEC] != n[i:i + SEC]
                              for i in range(c, c + M, SEC))
            continue
        for i in range(c, min(c + M, len(o)), SEC):
            s = a[i:i + SEC]
            if s == n[i:i + SEC]:
                cnt["new"] += s != o[i:i + SEC]
            elif s == o[i:i + SEC]:
                cnt["old"] += 1
            else:
                bad.append(i)
    if bad:
        print("%d sectors neither old nor new, first at %s" %
              (len(bad), ", ".join("%#x" % b for b in bad[:4])))
        return 1
    print("%d old, %d new" % (cnt["old"], cnt["new"]))
    return 0

def claim(child, base, new, done, tmp):
    """CHILD over BASE (raw) holds NEW below DONE; exit 3 when CHILD has
    a log to replay first (the current header has a LogGuid)."""
    import vhdxlib
    done = int(done)
    if vhdxlib.Vhdx(child).header["log_guid"] != "00000000-0000-0000-0000-000000000000":
        return 3
    shutil.copyfile(base, tmp)
    vhdxlib.overlay(child, tmp)
    with open(tmp, "rb") as f:
        a = f.read(done)
    with open(new, "rb") as f:
        n = f.read(done)
    if a == n:
        return 0
    bad = [i for i in range(0, done, SEC) if a[i:i + SEC] != n[i:i + SEC]]
    print("%d sectors below %d do not hold the source, first at %s" %
          (len(bad), done, ", ".join("%#x" % b for b in bad[:4])))
    return 1

cmd, args = sys.argv[2], sys.argv[3:]
if cmd == "gen":
    gen(args[0], args[1], int(args[2]), int(args[3]))
    rc = 0
else:
    rc = {"sectors": sectors, "claim": claim}[cmd](*args)
sys.exit(rc)
EOF
oracle() { python3 "$S/oracle.py" "$TOP/tests/helpers" "$@"; }

# ---------------------------------------------------------------------------
# The disks: P.vhdx the source (new), the recovery images start as O.raw.
cd "$S" || exit 2
make_key "$S/key" || { fail "cannot make a key"; finish; }
NDIFF=$(oracle gen O.raw P.raw "$SIZE" 11) || { fail "cannot make the disks"; finish; }
echo "$NDIFF of $((SIZE / 4096)) sectors differ"
qemu-img convert -q -f raw -O vhdx -o subformat=dynamic,block_size=1M \
	P.raw P.vhdx || { fail "qemu-img convert P"; finish; }
mkdir -p "$PRISTINE/images" "$PRISTINE/lib" "$MNT"
for x in "${EXPORTS[@]}"; do
	qemu-img convert -q -f raw -O vhdx -o subformat=dynamic,block_size=1M \
		O.raw "$PRISTINE/images/$x.vhdx" || { fail "convert $x"; finish; }
done

# ---------------------------------------------------------------------------
# serve and push

# serve_up LOG [SECS]: serve the exports on $MNT; false (no failure
# counted) when it does not listen within SECS (default 30): on a cut mount
# that is expected.
serve_up() {
	try_start_server "${2:-30}" "$1" --psk-file "$S/key" --window 1M \
		--export "R=$IMG/R.vhdx" --export "H=$IMG/H.vhdx"
}

# px NAME ARGS...: a push of P.vhdx (or a --merge) to export NAME; exit
# status in PX_RC, JSON in $S/px.json, stderr in $S/px.err.
px() {
	local name=$1
	shift
	timeout -k 5 60 "$HVRESYNC" push --json --psk-file "$S/key" "$@" \
		"127.0.0.1:$PORT/$name" >"$S/px.json" 2>"$S/px.err"
	PX_RC=$?
}

# work: what the matrix cuts.  Records each step's exit status in
# $S/rc.STEP (written only after the step returned, so a status on file
# means it was known before the cut).  Stops once the power is out.
work() {
	rm -f "$S"/rc.*
	: >"$S/work.log"
	serve_up "$S/work.log" || return 0
	px R P.vhdx
	echo "$PX_RC" >"$S/rc.R"
	pc_cut_done && return 0
	px H P.vhdx --hold
	echo "$PX_RC" >"$S/rc.Hhold"
	pc_cut_done && return 0
	[ "$PX_RC" -eq 0 ] || return 0
	px H --merge
	echo "$PX_RC" >"$S/rc.Hmerge"
}

step_ok() { [ "$(cat "$S/rc.$1" 2>/dev/null)" = 0 ]; }

# ---------------------------------------------------------------------------
# the checks of one crash state; each failure is one line in $S/bad

bad() { echo "$*" | tr '\n' ' ' >>"$S/bad"; echo >>"$S/bad"; }

# raw_of IMAGE OUT: the virtual disk as qemu reads it.
raw_of() {
	qemu-img convert -q -f vhdx -O raw "$1" "$2" 2>"$S/conv.err" || {
		bad "$(basename "$1"): qemu-img convert: $(head -c 200 "$S/conv.err")"
		return 1
	}
}

# check_claims X: what the progress record of X says must be on disk.
check_claims() {
	local x=$1 img=$IMG/$1.vhdx child=$IMG/$1.vhdx.hvresync.avhdx rec
	local done complete merging discarded rc log=
	[ -e "$STATE/$x.state" ] || return 0
	rec() { sed -n "s/^$1 //p" "$STATE/$x.state"; }
	done=$(rec done_through)
	complete=$(rec complete)
	merging=$(rec merging)
	discarded=$(rec discarded)
	[ -n "$done" ] || { bad "$x: record $x.state is not whole"; return 1; }
	if [ "$merging" = 1 ] && [ ! -e "$child" ]; then
		# the merge finished: the image is the source
		cmp -s "$S/$x.now.raw" P.raw ||
			bad "$x: record says merging, child gone, image is not the source"
		return 0
	fi
	[ "$discarded" = 1 ] && return 0
	[ "$done" -eq 0 ] && [ "$complete" != 1 ] && return 0
	if [ ! -e "$child" ]; then
		bad "$x: record claims done_through $done complete $complete, no child"
		return 1
	fi
	[ "$complete" = 1 ] && done=$SIZE
	oracle claim "$child" "$S/$x.now.raw" P.raw "$done" "$S/claim.raw" \
		>"$S/claim.out" 2>&1
	rc=$?
	if [ $rc -eq 3 ]; then
		# its log must be replayed first: on copies (the parent next
		# to it, as its locator's relative path says), by hvresync;
		# the data is then read and compared by vhdxlib.py
		rm -rf "$S/replay"
		mkdir "$S/replay"
		cp "$img" "$S/replay/$x.vhdx"
		cp "$child" "$S/replay/child.vhdx"
		"$HVRESYNC" inspect --replay "$S/replay/child.vhdx" >/dev/null \
			2>"$S/rep.err" || {
			bad "$x: replaying the child's log: $(head -c 300 "$S/rep.err")"
			return 1
		}
		oracle claim "$S/replay/child.vhdx" "$S/$x.now.raw" P.raw "$done" \
			"$S/claim.raw" >"$S/claim.out" 2>&1
		rc=$?
		log=" after its log was replayed"
	fi
	if [ $rc -eq 0 ]; then
		SECT="$SECT $x: record holds ($done$([ "$complete" = 1 ] && echo ", complete")$log);"
	else
		bad "$x: record claims $done (complete $complete)$log: $(head -c 300 "$S/claim.out")"
	fi
}

# check_image X: opens, clean, each sector old or new, what exited 0 holds.
check_image() {
	local x=$1 img=$IMG/$1.vhdx out
	"$HVRESYNC" inspect "$img" >/dev/null 2>"$S/insp.err" ||
		bad "$x: hvresync inspect: $(head -c 200 "$S/insp.err")"
	qemu-img check -q -f vhdx "$img" >"$S/chk.out" 2>&1 ||
		bad "$x: qemu-img check: $(head -c 200 "$S/chk.out")"
	raw_of "$img" "$S/$x.now.raw" || return 1
	# cmp first: most states are wholly old or wholly new
	if cmp -s "$S/$x.now.raw" P.raw; then
		out="0 old, $NDIFF new"
	elif cmp -s "$S/$x.now.raw" O.raw; then
		out="$NDIFF old, 0 new"
	else
		out=$(oracle sectors "$S/$x.now.raw" O.raw P.raw) ||
			bad "$x: $out"
	fi
	SECT="$SECT $x: $out;"
	if { [ "$x" = R ] && step_ok R; } || { [ "$x" = H ] && step_ok Hmerge; }; then
		qemu-img compare -q -f raw -F vhdx P.raw "$img" ||
			bad "$x: the push exited 0 before the cut, the image differs from the source"
	fi
	check_claims "$x"
}

# finish_export X: the next push completes and the disks are identical.
finish_export() {
	local x=$1 img=$IMG/$1.vhdx
	if [ "$x" = H ] && step_ok Hhold && ! step_ok Hmerge; then
		# the held copy was complete when the push exited 0
		px H --merge
		[ "$PX_RC" -eq 0 ] ||
			bad "H: --hold exited 0 before the cut, --merge now fails: $(head -c 200 "$S/px.err")"
	fi
	px "$x" P.vhdx
	[ "$PX_RC" -eq 0 ] ||
		{ bad "$x: the new push: exit $PX_RC: $(head -c 200 "$S/px.err")"; return 1; }
	qemu-img compare -q -f raw -F vhdx P.raw "$img" >/dev/null 2>&1 ||
		bad "$x: after the new push the image differs from the source"
	[ ! -e "$img.hvresync.avhdx" ] && [ ! -e "$STATE/$x.state" ] ||
		bad "$x: child or record left after the new push"
}

# untouched X: the work never pushed to export X (no exit status of its
# first push: H when the cut came in R's push) and X is byte for byte what
# it was, with no child and no record: nothing to check there (a new push
# would only repeat the run without a cut).
untouched() {
	local x=$1 first=$1
	[ "$x" = H ] && first=Hhold
	[ ! -e "$S/rc.$first" ] &&
		cmp -s "$IMG/$x.vhdx" "$PRISTINE/images/$x.vhdx" &&
		[ ! -e "$IMG/$x.vhdx.hvresync.avhdx" ] && [ ! -e "$STATE/$x.state" ]
}

# check_state: on the durable state in $BACK; lines in $S/bad.
check_state() {
	local x t0 todo
	: >"$S/bad"
	SECT=
	pc_mount "$BACK" "$MNT" || { bad "cannot mount the backing folder again"; return; }
	: >"$S/check.log"
	t0=$SECONDS
	if ! serve_up "$S/check.log" 60; then
		bad "serve does not restart: $(tail -n 2 "$S/check.log" | tr '\n' ' ')"
		kill_server
		pc_umount "$MNT"
		return
	fi
	ls "$IMG"/*.merging >/dev/null 2>&1 &&
		bad "serve listens with a merge unfinished: $(ls "$IMG" | tr '\n' ' ')"
	grep -q 'interrupted merge finished' "$S/check.log" &&
		SECT="$SECT merge finished at restart;"
	todo=()
	for x in "${EXPORTS[@]}"; do
		if untouched "$x"; then
			SECT="$SECT $x: untouched;"
			continue
		fi
		todo+=("$x")
		check_image "$x"
	done
	for x in "${todo[@]}"; do
		finish_export "$x"
	done
	stop_server
	pc_umount "$MNT"
}

# one_state K MODE: restore, run the work cut at K, check.  0 when sound.
one_state() {
	local k=$1 mode=$2 opts=(--cut-at "$1") cutinfo
	[ "$mode" = torn ] && opts+=(--torn "$k")
	rm -rf "$BACK"
	cp -a "$PRISTINE" "$BACK"
	pc_mount "$BACK" "$MNT" "${opts[@]}" ||
		{ fail "k=$k $mode: cannot mount"; return 1; }
	work
	pc_cut_done || pc_cut "$MNT"
	kill_server
	cutinfo="cut $(sed -n 's/^cut //p' "$PC_REPORT")"
	pc_umount "$MNT"
	check_state
	if [ -s "$S/bad" ]; then
		echo "k=$k $mode: DAMAGED ($cutinfo; steps $(steps))"
		sed 's/^/    FAIL: /' "$S/bad"
		return 1
	fi
	echo "k=$k $mode: ok ($cutinfo; steps $(steps);${SECT%;})"
	return 0
}

steps() {
	local f out=
	for f in R Hhold Hmerge; do
		[ -e "$S/rc.$f" ] && out="$out$f=$(cat "$S/rc.$f") "
	done
	out=${out% }
	echo "${out:-none}"
}

# ---------------------------------------------------------------------------
say "a run without a cut: count the barriers"
rm -rf "$BACK"
cp -a "$PRISTINE" "$BACK"
pc_mount "$BACK" "$MNT" || { fail "cannot mount the power-cut fs"; finish; }
t0=$SECONDS
work
kill_server
pc_umount "$MNT"
N=$(pc_barriers "$PC_REPORT")
if step_ok R && step_ok Hhold && step_ok Hmerge; then
	ok "the run completes: $N barriers in $((SECONDS - t0)) s ($(steps))"
else
	fail "the run without a cut fails ($(steps)): $(tail -n 3 "$S/work.log")"
	finish
fi
for x in "${EXPORTS[@]}"; do
	qemu-img compare -q -f raw -F vhdx P.raw "$BACK/images/$x.vhdx" ||
		fail "$x differs from the source after a run without a cut"
done

say "cutting at $(echo ${POWERCUT_POINTS:-$(pc_points "$N")} | wc -w) points of $((N + 1)), plain and torn"
K=0
D=0
t0=$SECONDS
for mode in ${POWERCUT_MODES:-plain torn}; do
	km=0
	dm=0
	for k in ${POWERCUT_POINTS:-$(pc_points "$N")}; do
		km=$((km + 1))
		one_state "$k" "$mode" || { dm=$((dm + 1)); fail "k=$k $mode damaged"; }
	done
	echo "$mode: $km crash states, $dm damaged"
	K=$((K + km))
	D=$((D + dm))
done
echo "N=$N barriers; $K crash states in $((SECONDS - t0)) s"
pc_summary "$K" "$D"
finish
