# tools/bench/vm/90-views-push.sh - guest benchmark (run by
# tools/bench/dm-views through tools/vm/run): on Debian 12's kernel, the
# compare-and-send phase of a push (`push --hold`, what mount-and-resync
# runs) of the 64 MiB pair (written whole) and of the sparse pair (256
# MiB, 32 MiB of it written) from the image file, from a FUSE raw view
# (`hvresync mount`) and from a device-mapper view (`hvresync map`), the
# images in the page cache and the views' own caches empty (as a view is
# when mount-and-resync has just made it), both ends in the guest over
# TLS on loopback.  Prints a `timing:` line per pair, medians of 5, for
# tools/bench/dm-views; each push is
# also checked (exit 0, the copy complete), so a figure is never of a
# failed run.  Guest time under qemu TCG: compare the figures with each
# other, not with a real host.
. /vm/dm.inc

expect_rc 0 "keygen" hv keygen "$T/key" || exit 0
mkdir -p "$T/state" "$T/fv"

SPID=
serve_stop() {
	[ -n "$SPID" ] || return 0
	kill -TERM "$SPID" 2>/dev/null
	wait "$SPID" 2>/dev/null
	SPID=
}

# serve_fresh: a new recovery copy of $R, no held child or record, a new
# serve
serve_fresh() {
	serve_stop
	rm -rf "$T/state"/* "$D"/rec.vhdx*
	cp "$R" "$D/rec.vhdx"
	serve_start "$T/serve.log" --state-dir "$T/state" --psk-file "$T/key" \
		--export rec="$D/rec.vhdx"
}

# hold KIND SRC: one timed push --hold of SRC, images warm; appends the
# time to the list of KIND
hold() {
	local kind=$1 src=$2
	if ! serve_fresh; then
		fail "$kind: serve did not start: $(tail -n 2 "$T/serve.log")"
		return 1
	fi
	# warm as mount-and-resync finds it: the images in the page cache,
	# a view just made (its own caches empty)
	sync && echo 3 >/proc/sys/vm/drop_caches
	cat "$P" "$D/rec.vhdx" >/dev/null
	if elapsed hv push --hold --psk-file "$T/key" "$src" "127.0.0.1:$PORT/rec" \
		>"$T/out" 2>"$T/err" && grep -q "held (complete" "$T/serve.log"; then
		eval "L_$kind=\"\${L_$kind:-} $ELAPSED\""
		return 0
	fi
	fail "$kind: push --hold from $src"
	_show_err
	return 1
}

median() { echo "$@" | tr ' ' '\n' | grep . | sort -n | sed -n 3p; }

# pair NAME: five rounds of the three sources on $P and $R; L_* the times
pair() {
	local name=$1
	L_file= L_fuse= L_dm= FV= DM=
	if expect_rc 0 "$name: mount the primary (FUSE view)" hv mount "$P" "$T/fv"; then
		FV=$T/fv/$(basename "$P" .vhdx)
	fi
	if expect_rc 0 "$name: map the primary (dm view)" hv map "$P" hvr-bench-p; then
		DM=/dev/mapper/hvr-bench-p
	fi
	for i in 1 2 3 4 5; do
		hold file "$P"
		[ -n "$FV" ] && hold fuse "$FV"
		[ -n "$DM" ] && hold dm "$DM"
	done
	serve_stop
	[ -n "$FV" ] && hv umount "$T/fv"
	[ -n "$DM" ] && hv unmap hvr-bench-p
	check "$name: five timed pushes from each of file, FUSE view and dm view" \
		test "$(echo ${L_file:-} | wc -w)$(echo ${L_fuse:-} | wc -w)$(echo ${L_dm:-} | wc -w)" = 555
}

figures() {
	echo "medians of 5: file $(median ${L_file:-}) s, FUSE view $(median ${L_fuse:-}) s, dm view $(median ${L_dm:-}) s (all: file${L_file:-}, FUSE${L_fuse:-}, dm${L_dm:-})"
}

P=$IMG/bench-p.vhdx R=$IMG/bench-r.vhdx
pair full
echo "timing: push --hold 64 MiB 1% (images warm, views fresh) $(figures)"
P=$IMG/bench-sp.vhdx R=$IMG/bench-sr.vhdx
pair sparse
echo "timing: sparse push --hold 256 MiB, 32 MiB written, 1% of it changed (images warm, views fresh) $(figures)"
true
