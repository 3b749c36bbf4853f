# tests/vm/00-env.sh - the guest is what the other checks assume: Debian
# 12's 6.1 kernel, hvresync starts (all its libraries are there), the
# kernel interfaces exist, and every test image has its expected sha256.

case $(uname -r) in
6.1.*) ok "kernel $(uname -r)" ;;
*) fail "kernel $(uname -r), want Debian 12's 6.1" ;;
esac
expect_rc 0 "hvresync --help runs (its libraries are all in the guest)" \
	$HVRESYNC --help
for f in /dev/mapper/control /dev/loop-control /dev/fuse; do
	check "$f exists" test -c "$f"
done
for n in dyn.vhdx fixed.vhdx base.vhdx diff.avhdx dirty.vhdx; do
	if [ -f "$IMG/$n" ] && expected "$n" >/dev/null; then
		ok "$n with its expected sha256"
	else
		fail "$n or its expected sha256 missing"
	fi
done
