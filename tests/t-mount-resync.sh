#!/bin/bash
# t-mount-resync.sh - `hvresync mount-and-resync VM`, what the systemd timer
# runs, against a primary and a recovery agent on loopback (TLS, PSK).  The
# primary's disks are partitioned (GPT with vfat + ext4, MBR with ext4: made
# with sfdisk and mkfs on raw files, converted with qemu-img); the recovery
# copies start with another layout.  Checked: the job reads the FUSE views,
# the disks end identical (qemu-img compare), the recovery disks show the
# primary's table and filesystem UUIDs (sfdisk and blkid -p on a qemu-img
# raw conversion), the excluded disk's replica is untouched (sha256), the
# blkid check really compares (a decoy recovery disk fails it), an old
# view on the mountpoint is cleared (a foreign mount is not), and no mount
# is left behind after success, failure, --timeout, SIGTERM, SIGINT, SIGHUP
# or even SIGKILL.  --view: on a kernel without device-mapper (this build
# machine) `dm` is refused in one line with nothing left, `auto` (the
# default) falls back to FUSE and says so per disk, `fuse` is as ever and
# a bad value is refused; dm views themselves are checked in the
# real-kernel guest (tests/vm/70-mount-resync-view.sh).
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

[ "$(id -u)" = 0 ] || skip "needs root (FUSE mounts the agent reads)"
[ -e /dev/fuse ] || skip "/dev/fuse missing"
for t in sfdisk blkid mkfs.ext4 mkfs.vfat; do
	command -v "$t" >/dev/null || skip "$t not installed (tools/install-deps)"
done
S=$SCRATCH
cd "$S" || exit 1
RUN=$S/mr

# mounts_under DIR: how many mounts sit at or below DIR.
mounts_under() {
	awk -v d="$1" '$5 == d || index($5, d "/") == 1' /proc/self/mountinfo | wc -l
}

# no_leftovers DESC: nothing mounted under $RUN, and no directory or lock
# file of ours left in it.
no_leftovers() {
	local n left
	n=$(mounts_under "$RUN")
	left=$(ls -A "$RUN" 2>/dev/null)
	if [ "$n" -eq 0 ] && [ -z "$left" ]; then
		ok "$1: no mount left, $RUN empty"
	else
		fail "$1: $n mount(s) left under $RUN; left: $left"
		grep " $RUN" /proc/self/mountinfo | sed 's/^/    /'
		# do not let one failure cascade into the next cases
		for m in $(awk -v d="$RUN" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo); do
			umount -l "$m"
		done
		rm -rf "${RUN:?}"/*
	fi
}

# mr VM ARGS...: run mount-and-resync on p.conf; MR_RC is its exit status,
# mr.out / mr.err its output.
mr() {
	local vm=$1
	shift
	timeout -k 5 120 "$HVRESYNC" mount-and-resync "$vm" --config "$S/p.conf" \
		--run-dir "$RUN" "$@" >mr.out 2>mr.err
	MR_RC=$?
}

show_mr() { sed 's/^/    | /' mr.out mr.err | head -n 30; }

# expect_rc WANT DESC: MR_RC must be WANT; shows the run's output if not.
expect_rc() {
	if [ "$MR_RC" -eq "$1" ]; then
		ok "$2"
	else
		fail "$2: exit status $MR_RC, want $1"
		show_mr
	fi
}

# place FSIMG RAW START_SECTOR
place() { dd if="$1" of="$2" bs=512 seek="$3" conv=notrunc,sparse status=none; }

# ---------------------------------------------------------------------------
say "setup: partitioned primary disks, recovery copies with another layout"
mkdir -p p r decoy
# primary os: GPT, EFI vfat + Linux ext4
truncate -s 64M p-os.raw
sfdisk -q p-os.raw <<'EOF' || fail "sfdisk (GPT)"
label: gpt
start=2048, size=32768, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"
start=34816, size=49152, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
EOF
mkfs.vfat -n HVREFI -C g1.img 16384 >/dev/null
mkfs.ext4 -q -F -L hvr-root g2.img 24M >/dev/null 2>&1
place g1.img p-os.raw 2048
place g2.img p-os.raw 34816
OS_PTUUID=$(sfdisk --json p-os.raw | py 'd["partitiontable"]["id"].lower()')
OS_UUID1=$(blkid -p -s UUID -o value g1.img)
OS_UUID2=$(blkid -p -s UUID -o value g2.img)
qemu-img convert -f raw -O vhdx -o subformat=dynamic p-os.raw p/os.vhdx
# primary data: MBR, one ext4
truncate -s 32M p-data.raw
sfdisk -q p-data.raw <<'EOF' || fail "sfdisk (MBR)"
label: dos
label-id: 0x5eed1e55
start=2048, size=32768, type=83
EOF
mkfs.ext4 -q -F -L hvr-data d1.img 16M >/dev/null 2>&1
place d1.img p-data.raw 2048
DATA_UUID1=$(blkid -p -s UUID -o value d1.img)
qemu-img convert -f raw -O vhdx -o subformat=dynamic p-data.raw p/data.vhdx
# recovery os: an older layout, one ext4 over most of the disk
truncate -s 64M r-os.raw
sfdisk -q r-os.raw <<'EOF' || fail "sfdisk (recovery GPT)"
label: gpt
start=2048, size=98304, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="old"
EOF
mkfs.ext4 -q -F -L old-root r1.img 48M >/dev/null 2>&1
place r1.img r-os.raw 2048
qemu-img convert -f raw -O vhdx -o subformat=dynamic r-os.raw r/os.vhdx
"$HVRESYNC" create r/data.vhdx 32M >/dev/null || fail "create r/data.vhdx"
for d in p r; do
	"$HVRESYNC" create $d/swap.vhdx 16M >/dev/null || fail "create $d/swap.vhdx"
	fill $d/swap.vhdx 0 1M
done
# the decoy: what the recovery disks looked like before any resync
cp r/os.vhdx decoy/os.vhdx
cp r/data.vhdx decoy/data.vhdx
rm -f ./*.raw ./*.img
SWAP_SHA=$(sha r/swap.vhdx)
"$HVRESYNC" keygen psk >/dev/null || fail "keygen"
PP=$(free_port)
RP=$(free_port)
cat >p.conf <<EOF
[agent]
# a refused peer fails the job at once (the default retries for minutes)
retries = 0
listen = 127.0.0.1:$PP
control = $S/run/p.sock
state-dir = $S/p-state
psk-file = $S/psk

[vm demo]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/os.vhdx
disk = $S/p/data.vhdx
exclude = $S/p/swap.vhdx

[vm ghost]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/os.vhdx
disk = $S/p/missing.vhdx

[vm empty]
role = primary
replica = 127.0.0.1:$RP
EOF
cat >r.conf <<EOF
[agent]
# a refused peer fails the job at once (the default retries for minutes)
retries = 0
listen = 127.0.0.1:$RP
control = $S/run/r.sock
state-dir = $S/r-state
psk-file = $S/psk

[vm demo]
role = replica
disk = $S/r/os.vhdx
disk = $S/r/data.vhdx
exclude = $S/r/swap.vhdx
EOF
sed "s#$S/r/#$S/decoy/#" r.conf >decoy.conf
start_agent r || { fail "recovery agent"; finish; }
start_agent p || { fail "primary agent"; finish; }
check "the recovery disks start different" \
	bash -c "! qemu-img compare -q p/os.vhdx r/os.vhdx && ! qemu-img compare -q p/data.vhdx r/data.vhdx"

# ---------------------------------------------------------------------------
say "success: resync from the views, disks identical, blkid check passes"
mr demo --recovery-config "$S/r.conf"
expect_rc 0 "exit status 0"
check "ReturnValue 4096 and the job are printed" \
	grep -q '^ReturnValue: 4096 (Method parameters checked, job started)$' mr.out
J1=$(sed -n 's/^Job: //p' mr.out)
check "the job ended 7 Completed" grep -q '^JobState: 7 (Completed)$' mr.out
check "it said where the views were mounted" grep -q "views mounted under $RUN/demo" mr.err
check "plain progress lines for the journal (not a terminal)" \
	grep -q "job $J1 .*%: .* compared" mr.err
check "os.vhdx identical (qemu-img compare)" same p/os.vhdx r/os.vhdx
check "data.vhdx identical (qemu-img compare)" same p/data.vhdx r/data.vhdx
check "the excluded disk's replica is untouched (sha256)" test "$(sha r/swap.vhdx)" = "$SWAP_SHA"
check "blkid os.vhdx: match, naming the GPT and both UUIDs" \
	grep -q "^blkid os.vhdx: match: gpt table $OS_PTUUID, 2 partitions, 1: vfat UUID=$OS_UUID1, 2: ext4 UUID=$OS_UUID2; the same on $S/r/os.vhdx$" mr.out
check "blkid data.vhdx: match, naming the MBR and the ext4 UUID" \
	grep -q "^blkid data.vhdx: match: dos table 5eed1e55, 1 partition, 1: ext4 UUID=$DATA_UUID1; the same on $S/r/data.vhdx$" mr.out
no_leftovers "after success"
check "the job read the views (its disks' Path)" test \
	"$(hv p job show "$J1" --json | py '" ".join(x["Path"] for x in d["Instance"]["Disks"])')" = \
	"$RUN/demo/os.vhdx $RUN/demo/data.vhdx"
# independent oracle: the recovery disk's raw bytes, read by qemu-img,
# through sfdisk and blkid -p
qemu-img convert -f vhdx -O raw r/os.vhdx r-os.raw
check "sfdisk: the recovery os disk has the primary's GPT id" \
	test "$(sfdisk --json r-os.raw | py 'd["partitiontable"]["id"].lower()')" = "$OS_PTUUID"
check "blkid -p: the recovery os disk's ext4 has the primary's UUID" \
	test "$(blkid -p -O $((34816 * 512)) -s UUID -o value r-os.raw)" = "$OS_UUID2"
rm -f r-os.raw

say "--json, a run with nothing to send (and --metrics-file)"
mr demo --recovery-config "$S/r.conf" --json --metrics-file "$S/mr.prom"
expect_rc 0 "exit status 0"
check "one JSON object: job Completed, checks match, unmounted" python3 - mr.out "$RUN" "$OS_PTUUID" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
run, ptuuid = sys.argv[2], sys.argv[3]
assert d["ReturnValue"] == 4096, d["ReturnValue"]
assert d["Instance"]["InstanceID"] == d["Job"]
assert d["Instance"]["JobState"] == 7 and d["Instance"]["BytesDifferent"] == 0, d["Instance"]
assert d["Unmounted"] is True and d["ExitStatus"] == 0 and d["Error"] is None, d
assert d["MountPoint"] == run + "/demo"
assert [x["Check"] for x in d["Disks"]] == ["match", "match"], d["Disks"]
os_ = d["Disks"][0]
assert os_["Name"] == "os.vhdx" and os_["View"] == run + "/demo/os.vhdx"
for side in ("Primary", "RecoveryProbe"):
    assert os_[side]["PTTYPE"] == "gpt" and os_[side]["PTUUID"] == ptuuid, os_[side]
    assert [p["TYPE"] for p in os_[side]["Partitions"]] == ["vfat", "ext4"]
EOF
no_leftovers "after --json"
check "--metrics-file: the run's result, its bytes those of the job" python3 - mr.out "$S/mr.prom" <<'EOF'
import json, re, sys
d = json.load(open(sys.argv[1]))
m = {}
for l in open(sys.argv[2]):
    if l.startswith("#"):
        continue
    name, labels, v = re.match(r'^(\w+)(\{.*\})? (\S+)$', l.strip()).groups()
    m[name] = (labels or "", float(v))
assert m["hvresync_last_run_success"][1] == 1, m
assert m["hvresync_last_run_exit_code"][1] == 0, m
assert 'command="mount-and-resync"' in m["hvresync_last_run_success"][0]
assert 'vm="demo"' in m["hvresync_last_run_success"][0]
assert m["hvresync_last_run_compared_bytes"][1] == d["Instance"]["BytesCompared"] > 0, m
assert m["hvresync_last_run_sent_bytes"][1] == d["Instance"]["BytesSent"], m
EOF

say "the check compares: a recovery disk with another layout fails it (exit 1)"
mr demo --recovery-config "$S/decoy.conf"
expect_rc 1 "exit status 1"
check "blkid os.vhdx: differ, naming the table" \
	grep -q "^blkid os.vhdx: differ: $S/decoy/os.vhdx differs from its primary: partition table: gpt $OS_PTUUID on the primary, gpt .* on the recovery disk$" mr.out
check "blkid data.vhdx: differ (no table on the decoy)" \
	grep -q "^blkid data.vhdx: differ: .*partition table: dos 5eed1e55 on the primary, none" mr.out
no_leftovers "after a failed check"

say "without --recovery-config the recovery side is skipped, in one line"
mr demo
expect_rc 0 "exit status 0"
check "it says the recovery check was skipped and why" \
	grep -q "blkid check of the recovery disks skipped: the recovery disks are on 127.0.0.1:$RP" mr.err
check "the primary views were still probed" \
	grep -q "^blkid os.vhdx: skipped: gpt table $OS_PTUUID" mr.out
no_leftovers "after a skipped check"

say "a view left on RUN/VM by a run that died is removed first; others' mounts are not"
mkdir -p "$RUN/demo"
"$HVRESYNC" mount p/data.vhdx "$RUN/demo" || fail "hvresync mount (the old view)"
mr demo
expect_rc 0 "exit status 0 over an old view"
check "it said it removed the old view" grep -q "removing a view left behind" mr.err
no_leftovers "after removing an old view"
mkdir -p "$RUN/demo"
if mount -t tmpfs hvr-test "$RUN/demo" 2>/dev/null; then
	mr demo
	expect_rc 2 "a tmpfs on RUN/VM: exit 2"
	check "it names the tmpfs and leaves it" bash -c \
		"grep -q 'a tmpfs filesystem is mounted there' mr.err && mountpoint -q '$RUN/demo'"
	umount "$RUN/demo"
	rmdir "$RUN/demo"
	no_leftovers "after refusing to touch a tmpfs"
else
	echo "SKIP (part): cannot mount a tmpfs here"
	rmdir "$RUN/demo"
fi

# ---------------------------------------------------------------------------
say "--view"
have_dm=0
{ [ -e /dev/mapper/control ] || grep -q " device-mapper$" /proc/misc; } && have_dm=1
mr demo --view bogus
expect_rc 2 "--view bogus: exit 2"
check "--view bogus: one line naming the value" bash -c \
	"test \$(wc -l <mr.err) -eq 1 && grep -q \"^hvresync: --view: 'bogus' is not auto, fuse or dm\$\" mr.err"
mr demo --udev-timeout 0
check "--udev-timeout 0: exit 2, one line" bash -c \
	"test $MR_RC -eq 2 && test \$(wc -l <mr.err) -eq 1 && grep -q -- \"--udev-timeout: '0'\" mr.err"
no_leftovers "after bad --view and --udev-timeout values"
if [ "$have_dm" = 0 ]; then
	mr demo --view dm --noudevsync --udev-timeout 5
	expect_rc 2 "--view dm without device-mapper: exit 2"
	check "--view dm: one stderr line saying the kernel has no device-mapper" bash -c \
		"test \$(wc -l <mr.err) -eq 1 && grep -q '^hvresync: mount-and-resync demo: --view dm: .*this kernel has no device-mapper' mr.err"
	check "--view dm: no job was started" bash -c "! grep -q '^Job: ' mr.out"
	no_leftovers "after --view dm was refused"
	for v in auto ""; do
		if [ -n "$v" ]; then mr demo --view $v --json; else mr demo --json; fi
		d="--view ${v:-(default)}"
		expect_rc 0 "$d without device-mapper: exit 0 through FUSE"
		check "$d: each disk says FUSE view and why" bash -c \
			"grep -q '^hvresync: demo: disk os.vhdx: FUSE view (this kernel has no device-mapper' mr.err && grep -q '^hvresync: demo: disk data.vhdx: FUSE view (this kernel has no device-mapper' mr.err"
		check "$d: --json says ViewKind fuse and the FUSE path per disk" python3 - mr.out "$RUN" <<'EOF2'
import json, sys
d = json.load(open(sys.argv[1]))
run = sys.argv[2]
assert d["ExitStatus"] == 0, d
for x in d["Disks"]:
    assert x["ViewKind"] == "fuse", x
    assert x["View"] == run + "/demo/" + x["Name"], x
    assert "device-mapper" in x["ViewWhy"], x
EOF2
		no_leftovers "after $d"
	done
else
	echo "SKIP (part): this kernel has device-mapper; --view dm and auto are checked in the guest (tests/vm/70-*)"
fi
mr demo --view fuse
expect_rc 0 "--view fuse: exit 0"
check "--view fuse: no per-disk view lines, the views mounted under RUN/demo" bash -c \
	"! grep -q ': FUSE view (' mr.err && ! grep -q ': dm view ' mr.err && grep -q 'views mounted under $RUN/demo' mr.err"
no_leftovers "after --view fuse"

# ---------------------------------------------------------------------------
say "failures: non-zero exit, nothing left mounted"
stop_agent r
mr demo --recovery-config "$S/r.conf"
expect_rc 2 "recovery agent down: exit 2"
check "recovery agent down: the job ended 10 Exception, ErrorCode 32777" \
	bash -c "grep -q '^JobState: 10 (Exception)$' mr.out && grep -q '^ErrorCode: 32777 ' mr.out"
check "recovery agent down: one last error line" \
	bash -c "tail -n 1 mr.err | grep -q '^hvresync: mount-and-resync demo: job .* ended Exception'"
no_leftovers "after the recovery agent was down"
start_agent r || fail "recovery agent restart"

mr ghost
expect_rc 2 "a disk missing: exit 2"
check "a disk missing: ReturnValue 32779" grep -q '^ReturnValue: 32779 ' mr.out
check "a disk missing: the error names it" grep -q "p/missing.vhdx: No such file" mr.err
no_leftovers "after a missing disk"

mr nosuchvm
expect_rc 2 "an unknown VM: exit 2"
check "an unknown VM: ReturnValue 32773" grep -q '^ReturnValue: 32773 ' mr.out
mr empty
expect_rc 2 "a VM without disks: exit 2"
check "a VM without disks: the agent's ReturnValue 32775" grep -q '^ReturnValue: 32775 ' mr.out
no_leftovers "after refused requests"

mr demo --config /nonexistent.conf
check "an unreadable --config: exit 2" test "$MR_RC" -eq 2
check "the primary agent's socket unreachable: 32777" bash -c "
	sed 's#^control = .*#control = $S/run/nobody.sock#' p.conf >nobody.conf
	timeout 60 '$HVRESYNC' mount-and-resync demo --config nobody.conf --run-dir '$RUN' >mr.out 2>mr.err
	test \$? -eq 2 && grep -q '^ReturnValue: 32777 ' mr.out"
no_leftovers "after an unreachable agent"

# ---------------------------------------------------------------------------
say "a slow job (--bwlimit 4M): --timeout, signals, a second run at once"
stop_agent p
start_agent p --bwlimit 4M || fail "primary with --bwlimit"
fill p/data.vhdx 4M 16M
R_OS=$(sha r/os.vhdx)
R_DATA=$(sha r/data.vhdx)

mr demo --timeout 1 --json
expect_rc 2 "--timeout 1: exit 2"
check "--timeout 1: ReturnValue 32772, job cancelled (8 Terminated), unmounted" python3 - mr.out <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["ReturnValue"] == 32772, d["ReturnValue"]
assert d["Instance"]["JobState"] == 8, d["Instance"]["JobState"]
assert d["Unmounted"] is True and d["ExitStatus"] == 2, d
EOF
no_leftovers "after --timeout"

# start_bg: mount-and-resync in the background; waits until its job runs
# and has sent something.  BG is its pid, BJ its job.
start_bg() {
	local i
	"$HVRESYNC" mount-and-resync demo --config "$S/p.conf" --run-dir "$RUN" \
		>bg.out 2>bg.err &
	BG=$!
	BJ=
	for i in $(seq 200); do
		BJ=$(sed -n 's/^Job: //p' bg.out)
		[ -n "$BJ" ] && break
		sleep 0.05
	done
	[ -n "$BJ" ] && wait_percent p "$BJ" 2 20
}

# stop_bg SIGNAL: send it, the run must end within 30 s; BG_RC.
stop_bg() {
	local i
	kill -"$1" "$BG"
	for i in $(seq 600); do
		kill -0 "$BG" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$BG" 2>/dev/null; then
		fail "still running 30 s after SIG$1"
		kill -9 "$BG"
	fi
	wait "$BG"
	BG_RC=$?
}

for sig in TERM INT HUP; do
	start_bg || fail "SIG$sig: the slow job did not get going"
	check "SIG$sig: mid-job, the views are mounted" test "$(mounts_under "$RUN")" -eq 1
	if [ $sig = TERM ]; then
		mr demo
		check "a second run meanwhile: exit 2, 'another ... is running'" \
			bash -c "test $MR_RC -eq 2 && grep -q 'another mount-and-resync of VM demo is running' mr.err"
		check "the second run left the first one's views alone" \
			test "$(mounts_under "$RUN")" -eq 1
	fi
	stop_bg $sig
	if [ "$BG_RC" -eq 2 ] && grep -q "stopped by SIG$sig" bg.err; then
		ok "SIG$sig: exit 2, saying so"
	else
		fail "SIG$sig: exit $BG_RC, want 2 and 'stopped by SIG$sig'"
		sed 's/^/    | /' bg.out bg.err
	fi
	check "SIG$sig: the job was cancelled (8 Terminated)" test "$(jobf p "$BJ" JobState)" = 8
	no_leftovers "after SIG$sig"
done
check "the cancelled jobs left the recovery images untouched (sha256)" \
	test "$(sha r/os.vhdx) $(sha r/data.vhdx)" = "$R_OS $R_DATA"

say "SIGKILL: the view's server follows its parent and unmounts"
start_bg || fail "SIGKILL: the slow job did not get going"
kill -9 "$BG"
wait "$BG" 2>/dev/null
for i in $(seq 200); do
	[ "$(mounts_under "$RUN")" -eq 0 ] && break
	sleep 0.05
done
check "SIGKILL: no mount left within 10 s" test "$(mounts_under "$RUN")" -eq 0
hv p job cancel "$BJ" --wait >/dev/null 2>&1
wait_job p "$BJ" 30 7 8 9 10 || fail "the orphaned job did not end"
rm -rf "${RUN:?}"/* # a SIGKILL leaves the empty directory and lock file

say "after all that, a run completes and the disks are identical"
stop_agent p
start_agent p || fail "primary restart"
mr demo --recovery-config "$S/r.conf"
expect_rc 0 "exit status 0"
check "data.vhdx identical (qemu-img compare)" same p/data.vhdx r/data.vhdx
check "os.vhdx identical (qemu-img compare)" same p/os.vhdx r/os.vhdx
check "the excluded disk's replica is still untouched" test "$(sha r/swap.vhdx)" = "$SWAP_SHA"
no_leftovers "at the end"

stop_agent p
stop_agent r
finish
