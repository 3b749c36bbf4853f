#!/bin/bash
# t-systemd.sh - the systemd units in tools/systemd/: what they run,
# `systemd-analyze verify` on them (with @BINDIR@ pointing at the built
# binary, and our man pages on MANPATH for Documentation=), the timer's
# time inside the off-peak window, and `make install` putting them, with
# @BINDIR@ replaced, under SYSTEMDDIR.
. "$(dirname "$0")/lib.sh"

U=$TOP/tools/systemd
[ -x "$HVRESYNC" ] || { echo "FAIL: $HVRESYNC not built (make all)"; exit 1; }
for f in hvresync-agent.service hvresync-resync@.service hvresync-resync@.timer; do
	[ -f "$U/$f" ] || { echo "FAIL: $U/$f missing"; exit 1; }
done

# key UNIT KEY: the value of KEY= in UNIT (the last one wins, as in systemd).
key() { sed -n "s/^$2=//p" "$U/$1" | tail -n 1; }

# ---------------------------------------------------------------------------
say "what the units say"
check "agent: Type=notify" test "$(key hvresync-agent.service Type)" = notify
check "agent: ExecStart runs 'hvresync agent -f' on the default config" test \
	"$(key hvresync-agent.service ExecStart)" = \
	"@BINDIR@/hvresync agent -f --config /etc/hvresync/hvresync.conf"
check "agent: enabled into multi-user.target" \
	test "$(key hvresync-agent.service WantedBy)" = multi-user.target
check "resync@: a oneshot" test "$(key hvresync-resync@.service Type)" = oneshot
check "resync@: ExecStart is mount-and-resync of the instance" bash -c \
	"sed -n 's/^ExecStart=//p' '$U/hvresync-resync@.service' |
	 grep -q '^@BINDIR@/hvresync mount-and-resync \"%I\" --config /etc/hvresync/hvresync.conf'"
check "resync@: Requires= and After= the agent" test \
	"$(key hvresync-resync@.service Requires) $(key hvresync-resync@.service After)" = \
	"hvresync-agent.service hvresync-agent.service"
check "resync@: no start timeout (a resync may take hours)" \
	test "$(key hvresync-resync@.service TimeoutStartSec)" = infinity
check "resync@: SIGTERM to the command only (it cancels, then unmounts)" \
	test "$(key hvresync-resync@.service KillMode)" = mixed
check "timer: Persistent=true" test "$(key hvresync-resync@.timer Persistent)" = true
check "timer: enabled into timers.target" \
	test "$(key hvresync-resync@.timer WantedBy)" = timers.target
check "every ExecStart names @BINDIR@ (make install fills it in)" bash -c \
	"! grep -h '^ExecStart=' '$U'/*.service | grep -v '^ExecStart=@BINDIR@/hvresync '"
check "the binary takes the options the units give it" bash -c "
	'$HVRESYNC' agent --help >/dev/null &&
	'$HVRESYNC' mount-and-resync --help | grep -q -- '--config FILE'"

# ---------------------------------------------------------------------------
say "systemd-analyze verify"
if ! command -v systemd-analyze >/dev/null; then
	echo "SKIP (part): systemd-analyze not installed (package systemd)"
else
	V=$SCRATCH/units
	mkdir -p "$V" "$SCRATCH/man/man8" "$SCRATCH/man/man5"
	for f in "$U"/*.service "$U"/*.timer; do
		sed "s|@BINDIR@|$TOP/build|g" "$f" >"$V/${f##*/}"
	done
	cp "$TOP/docs/man/hvresync.8" "$SCRATCH/man/man8/"
	cp "$TOP/docs/man/hvresync.conf.5" "$SCRATCH/man/man5/"
	MANOPT=--man=yes
	if ! command -v man >/dev/null; then
		echo "SKIP (part): man not installed: Documentation= is not checked"
		MANOPT=--man=no
	fi
	# verify: exit 0 and not one warning (it exits 0 on "ignoring" lines)
	verify() {
		(cd "$V" && MANPATH=$SCRATCH/man timeout 60 systemd-analyze verify \
			"$MANOPT" "$@") >"$SCRATCH/verify.out" 2>&1 &&
			[ ! -s "$SCRATCH/verify.out" ]
	}
	for u in hvresync-agent.service hvresync-resync@demo.service \
		 hvresync-resync@demo.timer 'hvresync-resync@web\x2d01.timer'; do
		if verify "./$u"; then
			ok "systemd-analyze verify $u: clean"
		else
			fail "systemd-analyze verify $u"
			sed 's/^/    | /' "$SCRATCH/verify.out"
		fi
	done
	# the check has teeth: a unit whose binary is missing does not pass
	sed "s|$TOP/build/hvresync|$SCRATCH/nonexistent/hvresync|" \
		"$V/hvresync-agent.service" >"$V/hvresync-broken.service"
	check "a unit with a missing binary fails verify (the check works)" \
		bash -c "! (cd '$V' && systemd-analyze verify --man=no ./hvresync-broken.service >/dev/null 2>&1)"

	say "the timer fires inside the off-peak window (18:30-06:00)"
	OC=$(key hvresync-resync@.timer OnCalendar)
	DELAY=$(key hvresync-resync@.timer RandomizedDelaySec)
	NEXT=$(systemd-analyze calendar "$OC" 2>/dev/null | sed -n 's/^ *Next elapse: //p')
	DUS=$(systemd-analyze timespan "${DELAY:-0}" 2>/dev/null | sed -n 's/^ *μs: //p')
	check "OnCalendar=$OC parses (next: ${NEXT:-none})" test -n "$NEXT"
	check "RandomizedDelaySec=$DELAY parses" test -n "$DUS"
	check "the whole spread [$OC, +$DELAY] lies in 18:30-06:00" python3 - "$NEXT" "${DUS:-0}" <<'EOF'
import re, sys
hh, mm, ss = map(int, re.search(r"(\d\d):(\d\d):(\d\d)", sys.argv[1]).groups())
start = hh * 3600 + mm * 60 + ss
end = start + int(sys.argv[2]) // 1000000
win_start, win_end = 18 * 3600 + 30 * 60, 24 * 3600 + 6 * 3600
if start < 6 * 3600:                      # after midnight: shift a day
    start, end = start + 86400, end + 86400
assert win_start <= start and end <= win_end, (start, end)
EOF
fi

# ---------------------------------------------------------------------------
say "make install puts the units in SYSTEMDDIR with @BINDIR@ filled in"
D=$SCRATCH/root
# -o all: install what is built, never rebuild (others may be building)
if make -s -C "$TOP" -o all install DESTDIR="$D" PREFIX=/usr \
	>"$SCRATCH/install.out" 2>&1; then
	ok "make install DESTDIR=... PREFIX=/usr"
else
	fail "make install DESTDIR=... PREFIX=/usr"
	sed 's/^/    | /' "$SCRATCH/install.out" | tail -n 5
fi
SD=$D/usr/lib/systemd/system
for f in hvresync-agent.service hvresync-resync@.service hvresync-resync@.timer; do
	check "$f installed, mode 0644" test "$(stat -c %a "$SD/$f" 2>/dev/null)" = 644
done
check "installed ExecStart lines name /usr/bin/hvresync" bash -c "
	grep -q '^ExecStart=/usr/bin/hvresync agent -f ' '$SD/hvresync-agent.service' &&
	grep -q '^ExecStart=/usr/bin/hvresync mount-and-resync ' '$SD/hvresync-resync@.service'"
check "no @BINDIR@ left in the installed units" bash -c "! grep -q '@BINDIR@' '$SD'/*"
check "the man pages are installed" \
	test -f "$D/usr/share/man/man8/hvresync.8" -a -f "$D/usr/share/man/man5/hvresync.conf.5"
check "the binary is installed" test -x "$D/usr/bin/hvresync"

finish
