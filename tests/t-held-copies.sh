#!/bin/bash
# t-held-copies.sh - partial copies are visible and removable (issue 10,
# item 2): the recovery image lives on a small loop-mounted ext4 (160 MiB)
# and the primary's disk differs by 256 MiB, so the copy itself does not
# fit.  Two real agents on loopback:
#   - the job ends in Exception with the recovery side's "No space left"
#     message, and `vm show` on the recovery agent lists the held copy
#     (Disk, Path, Bytes on disk, Since, Complete false);
#   - `job cancel` of the failed job answers 0 (not 4097) and frees the
#     space (df before and after), and the copy is no longer listed;
#   - a second failed job's copy is dropped by `vm discard` on the
#     recovery agent, which refuses with 32774 while a session of the VM
#     runs (the send is slowed with --bwlimit so the test can ask).
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

S=$SCRATCH
cd "$S" || exit 1
[ "$(id -u)" = 0 ] || skip "needs root for a loop mount"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 not installed"

SMALL=$S/small
MOUNTED=
held_cleanup() {
	local n
	for n in "${!AGENT_PID[@]}"; do
		kill -9 "${AGENT_PID[$n]}" 2>/dev/null
	done
	wait 2>/dev/null
	[ -n "$MOUNTED" ] && umount "$SMALL" 2>/dev/null
	cleanup
}
trap held_cleanup EXIT

say "setup: a 160 MiB ext4 for the recovery image, 256 MiB of changes"
truncate -s 160M small.img
mkfs.ext4 -q -F -m 0 small.img >/dev/null 2>&1 || skip "mkfs.ext4 on a file failed"
mkdir -p "$SMALL" p
mount -o loop small.img "$SMALL" 2>mount.err ||
	skip "cannot loop-mount an ext4 here: $(head -n 1 mount.err)"
MOUNTED=1
"$HVRESYNC" create p/data.vhdx 512M >/dev/null || fail "create p"
"$HVRESYNC" create "$SMALL/data.vhdx" 512M >/dev/null || fail "create r"
if command -v openssl >/dev/null; then
	openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:$$-$RANDOM" \
		</dev/zero 2>/dev/null | head -c $((256 << 20)) >chg.raw
else
	head -c $((256 << 20)) /dev/urandom >chg.raw
fi
qemu-io -f vhdx -c "write -q -s $S/chg.raw 0 $((256 << 20))" p/data.vhdx >/dev/null ||
	fail "qemu-io write"
rm -f chg.raw
"$HVRESYNC" keygen psk >/dev/null || fail "keygen"
PP=$(free_port)
RP=$(free_port)
{
	agent_section p "$PP"
	cat <<EOF
retries = 1
retry-interval = 1

[vm hc]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p/data.vhdx
EOF
} >p.conf
{
	agent_section r "$RP"
	cat <<EOF

[vm hc]
role = replica
disk = $SMALL/data.vhdx
EOF
} >r.conf
start_agent r || { fail "recovery agent"; finish; }
start_agent p || { fail "primary agent"; finish; }
CHILD=$SMALL/data.vhdx.hvresync.avhdx

# free_kib: what df says is available on the small filesystem.
free_kib() { df -Pk "$SMALL" | awk 'NR == 2 { print $4 }'; }

# held FIELD: a member of the recovery VM's first held copy, or "none".
held() {
	hv r vm show hc --json 2>/dev/null |
		py "d['Instance']['HeldCopies'][0]['$1'] if d['Instance']['HeldCopies'] else 'none'"
}

# ---------------------------------------------------------------------------
say "the copy does not fit: a clear error, and the held copy is listed"
FREE0=$(free_kib)
expect_rv "resync hc" 4096 p hc
J1=$JOB
wait_job p "$J1" 120 7 8 9 10 32768 || fail "the job did not finish"
check "the job ended in Exception (JobState $(jobf p "$J1" JobState))" \
	test "$(jobf p "$J1" JobState)" = 10
DESC=$(jobf p "$J1" ErrorDescription)
check "  ... its ErrorDescription gives the recovery side's reason ($DESC)" \
	grep -qi "no space left" <<<"$DESC"
check "  ... and names the export" grep -q "hc:data.vhdx" <<<"$DESC"
check "the held child is there" test -e "$CHILD"
hv r vm show hc --json >vm1.json || fail "vm show hc"
BYTES=$(py 'd["Instance"]["HeldCopies"][0]["Bytes"]' <vm1.json 2>/dev/null)
ON_DISK=$(($(stat -c %b "$CHILD") * $(stat -c %B "$CHILD")))
check "vm show lists the held copy of data.vhdx" \
	test "$(py 'd["Instance"]["HeldCopies"][0]["Disk"]' <vm1.json 2>/dev/null)" = data.vhdx
check "  ... at $CHILD" \
	test "$(py 'd["Instance"]["HeldCopies"][0]["Path"]' <vm1.json 2>/dev/null)" = "$CHILD"
check "  ... with its bytes on disk ($BYTES, stat says $ON_DISK)" \
	test "${BYTES:-0}" = "$ON_DISK" -a "${BYTES:-0}" -gt $((64 << 20))
check "  ... since a CIM datetime ($(py 'd["Instance"]["HeldCopies"][0]["Since"]' <vm1.json 2>/dev/null))" \
	grep -qE '^[0-9]{14}\.[0-9]{6}[+-][0-9]{3}$' <<<"$(py 'd["Instance"]["HeldCopies"][0]["Since"]' <vm1.json 2>/dev/null)"
check "  ... not complete, no merge pending" \
	test "$(py '(d["Instance"]["HeldCopies"][0]["Complete"], d["Instance"]["HeldCopies"][0]["MergePending"])' <vm1.json 2>/dev/null)" = "(False, False)"
hv r vm show hc >vm1.txt 2>&1
check "the text form shows HeldCopies too" grep -q "HeldCopies.*" vm1.txt

# ---------------------------------------------------------------------------
say "job cancel of the failed job discards the copy"
FULL=$(free_kib)
hv p job cancel "$J1" --json >cancel.out 2>cancel.err
check "job cancel answers 0 ($(cat cancel.out) $(head -c 200 cancel.err))" \
	test "$(py 'd["ReturnValue"]' <cancel.out 2>/dev/null)" = 0
FREED=$(free_kib)
echo "    free on the small filesystem: $FREE0 KiB at the start, $FULL KiB with the copy, $FREED KiB after the cancel"
# the filesystem was full, so df cannot show all of the copy's bytes
# coming back; it shows the free space of the start again
check "the space came back (df: $FULL -> $FREED KiB, $FREE0 at the start; the copy had $((BYTES / 1024)) KiB)" \
	test "$FREED" -ge $((FREE0 - 1024)) -a "$FREED" -ge $((FULL + (64 << 10)))
check "the child is gone" test ! -e "$CHILD"
check "vm show lists no held copy" test "$(held Disk)" = none
check "the job stays Exception" test "$(jobf p "$J1" JobState)" = 10
check "  ... and says its copies were discarded" \
	bash -c "grep -q 'copies were discarded' <<<\"\$1\"" _ "$(jobf p "$J1" ErrorDescription)"
hv p job cancel "$J1" --json >cancel2.out 2>/dev/null
check "a second cancel of it is harmless (ReturnValue $(py 'd["ReturnValue"]' <cancel2.out 2>/dev/null))" \
	test "$(py 'd["ReturnValue"]' <cancel2.out 2>/dev/null)" = 0

# ---------------------------------------------------------------------------
say "vm discard on the recovery agent: refused during a session, then frees"
stop_agent p
start_agent p --bwlimit 40M || { fail "primary agent restart"; finish; }
expect_rv "resync hc (slowed to 40 MB/s)" 4096 p hc
J2=$JOB
wait_percent p "$J2" 5 60 || fail "the slowed job made no progress"
hv r vm discard hc --json >busy.out 2>busy.err
check "vm discard while the session runs: 32774 ($(head -c 200 busy.err))" \
	test "$(py 'd["ReturnValue"]' <busy.out 2>/dev/null)" = 32774
wait_job p "$J2" 120 7 8 9 10 32768 || fail "the second job did not finish"
check "the second job ended in Exception too" test "$(jobf p "$J2" JobState)" = 10
check "its copy is held" test "$(held Disk)" = data.vhdx
FULL=$(free_kib)
BYTES=$(held Bytes)
hv r vm discard hc >disc.out 2>disc.err
check "vm discard answers 0 ($(head -n 3 disc.out | tr '\n' ' ') $(head -c 200 disc.err))" \
	grep -q "ReturnValue: 0" disc.out
check "  ... and says it discarded data.vhdx" grep -q "discarded the held copy of data.vhdx" disc.out
FREED=$(free_kib)
check "the space came back (df: $FULL -> $FREED KiB, $FREE0 at the start; the copy had $((BYTES / 1024)) KiB)" \
	test "$FREED" -ge $((FREE0 - 1024)) -a "$FREED" -ge $((FULL + (64 << 10)))
check "the child is gone" test ! -e "$CHILD"
check "the progress record says the copy was discarded" \
	bash -c "grep -qx 'discarded 1' '$S'/r-state/serve/*.state"
timeout 60 "$HVRESYNC" push --psk-file psk --merge "127.0.0.1:$RP/hc:data.vhdx" \
	>merge.out 2>merge.err
MRC=$?
check "a MERGE after vm discard fails, it does not answer merged (exit $MRC: $(head -c 200 merge.err))" \
	bash -c "[ $MRC -ne 0 ] && grep -q 'discarded on the recovery side' merge.err"
check "vm show lists no held copy" test "$(held Disk)" = none
hv r vm discard hc --json >again.out 2>/dev/null
check "vm discard with nothing held answers 0" \
	test "$(py 'd["ReturnValue"]' <again.out 2>/dev/null)" = 0
hv p vm discard hc --json >prim.out 2>/dev/null
check "vm discard on the primary agent: 32770 (the copies are on the recovery side)" \
	test "$(py 'd["ReturnValue"]' <prim.out 2>/dev/null)" = 32770
check "no agent crashed (no sanitizer or signal lines in the logs)" \
	bash -c "! grep -qiE 'sanitizer|segmentation|core dumped' p.log r.log"
finish
