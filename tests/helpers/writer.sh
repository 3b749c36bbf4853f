# tests/helpers/writer.sh - shared steps of the writer and merge tests
# (source after tests/lib.sh; uses $M, the model command, $IO and $S).

# verify DESC ORACLE IMAGE EXPECTED: ORACLE (qemu, vhdi, cat) reads IMAGE
# as EXPECTED; qemu also runs `qemu-img check` first.
verify() {
	local out=$S/read.raw
	rm -f "$out"
	if $M read "$2" "$3" "$out" && $M cmp "$out" "$4"; then
		ok "$1: $2 reads the model"
	else
		fail "$1: $2 does not read the model"
	fi
	rm -f "$out"
}

# io ARGS...: run vhdx-io, count a failure with its last error line.
io() {
	if ! "$IO" "$@" >"$S/io.out" 2>"$S/io.err"; then
		fail "vhdx-io $*: $(tail -n1 "$S/io.err")"
		return 1
	fi
}
