#!/bin/bash
# t-realkernel.sh - the guest test: boots Debian 12's own kernel (6.1, the
# one admins run; this machine runs a newer one without device-mapper)
# under qemu's software emulation and runs tests/vm/*.sh in it with
# tools/vm/run: `hvresync map`/`unmap` on a real device-mapper with and
# without udev, verify with io_uring (also --direct) on files, FUSE views
# and dm views, read-only and --rw views, and a serve/push resync over
# loopback.  SKIP when the kernel package cannot be downloaded or qemu is
# missing; FAIL when the guest's end marker is missing (it hung or
# crashed) or any guest check failed.  `make check-vm` runs it alone.
TOP=$(cd "$(dirname "$0")/.." && pwd)
HVRESYNC=${HVRESYNC:-$TOP/build/hvresync}
B=$(cd "$(dirname "$HVRESYNC")" && pwd)
[ -x "$B/hvresync" ] || { echo "FAIL: $B/hvresync not built"; exit 1; }
command -v qemu-system-x86_64 >/dev/null ||
	{ echo "SKIP: qemu-system-x86_64 not installed (tools/install-deps installs qemu-system-x86)"; exit 77; }
exec "$TOP/tools/vm/run" -B "$B"
