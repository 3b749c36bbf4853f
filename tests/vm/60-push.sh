# tests/vm/60-push.sh - a resync over loopback inside the guest: `hvresync
# serve` with a key from `hvresync keygen`, `hvresync push` of dyn.vhdx to
# a recovery copy that differs (changed, extra and missing blocks) and is
# not in the page cache; at the end the recovery image's raw content is
# qemu's bytes of the source, its log is clean and no differencing child
# is left.  Then a second push with nothing to send, and a push from a
# device-mapper view of the source.
. /vm/dm.inc

expect_rc 0 "keygen" hv keygen "$T/key"
check "the key file is mode 0600" test "$(stat -c %a "$T/key")" = 600

REC=$D/rec.vhdx
cp "$IMG/dyn.vhdx" "$REC"
# the recovery copy differs: a changed run, a block the source lacks, and
# zeros over a block the source has
vhdx-io "$REC" w:1M:64K:0x77 w:8M:2M:0x78 z:18M:2M f >/dev/null 2>"$T/err" ||
	fail "vhdx-io on the recovery copy: $(head -n 1 "$T/err")"
check "the recovery copy differs before the push" \
	sh -c "! hvresync verify '$IMG/dyn.vhdx' '$REC' >/dev/null 2>&1"

mkdir -p "$T/state"
if ! serve_start "$T/serve.log" --state-dir "$T/state" --psk-file "$T/key" \
	--export rec="$REC"; then
	fail "serve did not start: $(tail -n 2 "$T/serve.log")"
	exit 0
fi
ok "serve listening on 127.0.0.1:$PORT"

# The recovery copy cold: serve reads it around the page cache, and this
# kernel has no cachestat(), so mincore() tells it what is cached.
sync
echo 3 >/proc/sys/vm/drop_caches
if elapsed hv push --json --psk-file "$T/key" "$IMG/dyn.vhdx" "127.0.0.1:$PORT/rec" >"$T/push.json" 2>"$T/err"; then
	ok "push dyn.vhdx to the recovery copy, its cache dropped (${ELAPSED} s)"
else
	fail "push: exit $?"
	_show_err
fi
if elapsed hv push --json --psk-file "$T/key" "$IMG/dyn.vhdx" "127.0.0.1:$PORT/rec" >"$T/push2.json" 2>"$T/err"; then
	ok "a second push with nothing to send (${ELAPSED} s)"
else
	fail "second push: exit $?"
	_show_err
fi
kill -TERM $SPID
wait $SPID
check "serve exits 0 after SIGTERM" test $? -eq 0

expect_rc 0 "verify: the recovery image equals the source" hv verify "$IMG/dyn.vhdx" "$REC"
mkdir -p "$T/m"
if hv mount "$REC" "$T/m" 2>"$T/err"; then
	check "the recovery image's raw content has the source's sha256 (qemu-img's)" \
		test "$(sha_of "$T/m/rec")" = "$(expected dyn.vhdx)"
	hv umount "$T/m"
else
	fail "mount the recovery image: $(head -n 1 "$T/err")"
fi
hv inspect --json "$REC" >"$T/insp.json" 2>"$T/err"
check "the recovery image's log is clean" grep -q '"log_dirty": false' "$T/insp.json"
check "no differencing child left next to it" test ! -e "$REC.hvresync.avhdx"
check "no progress record left" sh -c "[ -z \"\$(ls '$T/state')\" ]"

# A push whose source is a device-mapper view, to a raw recovery disk
dd if=/dev/zero of="$D/rec.raw" bs=1M count=32 2>/dev/null
if expect_rc 0 "map dyn.vhdx as the source" hv map "$IMG/dyn.vhdx" hvr-src; then
	serve_start "$T/serve2.log" --state-dir "$T/state" --psk-file "$T/key" \
		--export raw="$D/rec.raw"
	expect_rc 0 "push /dev/mapper/hvr-src to a raw recovery disk" \
		hv push --psk-file "$T/key" /dev/mapper/hvr-src "127.0.0.1:$PORT/raw"
	kill -TERM $SPID
	wait $SPID
	check "the raw recovery disk has the source's sha256" \
		test "$(sha_of "$D/rec.raw")" = "$(expected dyn.vhdx)"
	hv unmap hvr-src
fi
true
