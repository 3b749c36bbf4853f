#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# checks.py - small byte and JSON assertions for the integration scripts.
# Each subcommand exits 0 when the assertion holds, 1 (with one line saying
# what differs) when it does not, 2 on usage or I/O errors.
#
#   checks.py fill FILE START END BYTE     every byte of [START, END) is BYTE
#   checks.py hex FILE OFF HEX             bytes at OFF are HEX ("33c08ed0")
#   checks.py cmp A B [START END]          same bytes (in big reads), reports
#                                          the first differing offset
#   checks.py scmp A B                    sampled cmp for large files: the
#                                          first 64 MiB, 1 MiB every 32 MiB
#   checks.py size FILE N                  file size is N
#   checks.py json FILE KEY=VALUE...       inspect --json facts; KEY may be
#                                          a.b.c, VALUE is JSON (or a bare
#                                          word compared as a string)
#   checks.py states FILE S=N...           block_states: N blocks in state S
#                                          (S a number or a state name)
#
# Sizes take K/M/G suffixes and sums (4G-8M).

import json
import os
import re
import sys

CHUNK = 1 << 20


def num(s):
    """A number with K/M/G suffixes, or a sum of them: 4G-8M, 2M+512."""
    total = 0
    for sign, term in re.findall(r"([+-]?)([^+-]+)", s.strip()):
        term = term.strip()
        mult = 1
        for suf, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
            if term.upper().endswith(suf) and not term.lower().startswith("0x"):
                mult, term = m, term[:-1]
        v = int(term, 0) * mult
        total += -v if sign == "-" else v
    return total


def bad(msg):
    print(msg)
    sys.exit(1)


def pread_all(fd, n, off, buf):
    """Read N bytes at OFF into the reused bytearray BUF (fresh 4 MiB
    objects per read cost more in page faults than the reads), retrying
    short reads.  Returns BUF itself when full, else a copy of what was
    read: bytearrays compare with memcmp, memoryviews element-wise."""
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = os.preadv(fd, [mv[got:n]], off + got)
        if k <= 0:
            break
        got += k
    mv.release()
    return buf if got == len(buf) else buf[:got]


def cmd_fill(path, start, end, byte):
    start, end, byte = num(start), num(end), num(byte)
    want = bytes([byte]) * CHUNK
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(CHUNK)
    pos = start
    while pos < end:
        n = min(CHUNK, end - pos)
        got = pread_all(fd, n, pos, buf)
        if len(got) != n:
            bad("%s: short read at %#x" % (path, pos + len(got)))
        if got != want[:n]:
            i = next(k for k in range(n) if got[k] != byte)
            bad("%s: byte at %#x is %#04x, want %#04x"
                % (path, pos + i, got[i], byte))
        pos += n


def cmd_hex(path, off, hexstr):
    want = bytes.fromhex(hexstr)
    with open(path, "rb") as f:
        f.seek(num(off))
        got = f.read(len(want))
    if got != want:
        bad("%s: at %#x: %s, want %s" % (path, num(off), got.hex(), hexstr))


def cmd_cmp(a, b, start=None, end=None):
    sa, sb = os.path.getsize(a), os.path.getsize(b)
    if start is None:
        if sa != sb:
            bad("sizes differ: %s %d, %s %d" % (a, sa, b, sb))
        start, end = 0, sa
    else:
        start, end = num(start), num(end)
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    ba, bb = bytearray(CHUNK), bytearray(CHUNK)
    pos = start
    while pos < end:
        n = min(CHUNK, end - pos)
        x, y = pread_all(fa, n, pos, ba), pread_all(fb, n, pos, bb)
        if x != y:
            m = min(len(x), len(y))
            i = next((k for k in range(m) if x[k] != y[k]), m)
            bad("differ at %#x (%s vs %s)"
                % (pos + i, x[i:i + 8].hex(), y[i:i + 8].hex()))
        pos += n


def cmd_scmp(a, b):
    """Sampled cmp for large views: sizes, the first 64 MiB, then 1 MiB
    every 32 MiB and the last MiB."""
    sa, sb = os.path.getsize(a), os.path.getsize(b)
    if sa != sb:
        bad("sizes differ: %s %d, %s %d" % (a, sa, b, sb))
    ranges = [(0, min(sa, 64 << 20))]
    ranges += [(o, min(sa, o + (1 << 20)))
               for o in range(64 << 20, sa, 32 << 20)]
    ranges.append((max(0, sa - (1 << 20)), sa))
    for lo, hi in ranges:
        cmd_cmp(a, b, str(lo), str(hi))


def cmd_size(path, n):
    s = os.path.getsize(path)
    if s != num(n):
        bad("%s: size %d, want %d" % (path, s, num(n)))


def lookup(doc, key):
    cur = doc
    for part in key.split("."):
        if isinstance(cur, list):
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise KeyError(key)
    return cur


def cmd_json(path, *pairs):
    with open(path) as f:
        doc = json.load(f)
    for p in pairs:
        key, _, val = p.partition("=")
        try:
            want = json.loads(val)
        except ValueError:
            want = val
        try:
            got = lookup(doc, key)
        except (KeyError, IndexError, ValueError):
            bad("%s: no key %s" % (path, key))
        if got != want:
            bad("%s: %s is %s, want %s" % (path, key, json.dumps(got),
                                           json.dumps(want)))


STATE_NAMES = {0: "not_present", 1: "undefined", 2: "zero", 3: "unmapped",
               5: "unmapped_v1", 6: "fully_present", 7: "partially_present"}


def norm_state(k):
    k = str(k).strip().lower().replace("-", "_").replace(" ", "_")
    if k.isdigit():
        return int(k)
    k = k.replace("payload_block_", "")
    for n, name in STATE_NAMES.items():
        if k == name or k == name.replace("_", ""):
            return n
    return k


def cmd_states(path, *pairs):
    """block_states may be a list indexed by state or an object keyed by
    state number or name; zero counts may be left out."""
    with open(path) as f:
        doc = json.load(f)
    bs = doc.get("block_states")
    counts = {}
    if isinstance(bs, list):
        for i, v in enumerate(bs):
            counts[i] = v
    elif isinstance(bs, dict):
        for k, v in bs.items():
            counts[norm_state(k)] = v
    else:
        bad("%s: block_states missing or not a list/object" % path)
    for p in pairs:
        k, _, v = p.partition("=")
        got = counts.get(norm_state(k), 0)
        if got != int(v):
            bad("%s: %s blocks in state %s, want %s (block_states %s)"
                % (path, got, k, v, json.dumps(bs)))


def main():
    if len(sys.argv) < 2:
        print(__doc__ or "usage: checks.py CMD ARGS", file=sys.stderr)
        return 2
    cmds = {"fill": cmd_fill, "hex": cmd_hex, "cmp": cmd_cmp,
            "scmp": cmd_scmp,
            "size": cmd_size, "json": cmd_json, "states": cmd_states}
    fn = cmds.get(sys.argv[1])
    if fn is None:
        print("checks.py: unknown command %s" % sys.argv[1], file=sys.stderr)
        return 2
    try:
        fn(*sys.argv[2:])
    except (OSError, TypeError, ValueError) as e:
        print("checks.py %s: %s" % (sys.argv[1], e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
