# SPDX-License-Identifier: MIT
# writer_model.py - the independent model behind t-writer, t-crash and
# t-merge: it applies vhdx-io's commands (w:OFF:LEN:BYTE, z:OFF:LEN,
# r:SEED:COUNT:MAXLEN, f) to a bytearray, decides which bytes an image
# killed part way through such a command list may hold, and reads block
# states straight from the file with vhdxlib (no code shared with vhdx/).
#
#   writer_model.py expect OUT (--size N | --base RAW) OP...
#   writer_model.py cmp A B                 first differing ranges, exit 1
#   writer_model.py crashcheck RAW (--size N | --base RAW) --done FILE
#                   --block-size BS OP...   old-or-new verdict, exit 1
#   writer_model.py states IMAGE            "j STATE OFFSET" per block
#   writer_model.py alloc IMAGE             allocation layout rules
#   writer_model.py guids IMAGE             current header's three GUIDs
#   writer_model.py read ORACLE IMAGE OUT   the virtual disk as ORACLE reads
#                   it: qemu (qemu-img check, then convert), vhdi
#                   (vhdimount, the top layer) or cat ($VHDX_CAT, else
#                   build/helpers/vhdx-cat)
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdxlib  # noqa: E402

UNIT = 512
MASK = (1 << 64) - 1
STATE = {0: "not_present", 1: "undefined", 2: "zero", 3: "unmapped",
         5: "unmapped_v1", 6: "fully_present", 7: "partially_present"}


def num(s):
    """A number as vhdx-io's num() reads it: C integer, then K/M/G."""
    s = s.strip()
    suffix = {"k": 10, "m": 20, "g": 30}.get(s[-1:].lower())
    if suffix:
        s = s[:-1]
    v = int(s, 0) if not (len(s) > 1 and s[0] == "0" and s[1] in "0123456789") \
        else int(s, 8)
    return v << suffix if suffix else v


def xorshift(seed):
    seed ^= (seed << 13) & MASK
    seed ^= seed >> 7
    seed ^= (seed << 17) & MASK
    return seed


def expand(op, size):
    """The primitive writes (off, len, byte) of one command, in order."""
    if op == "f" or op == "hang":
        return []
    kind, rest = op[0], op[2:].split(":")
    if kind == "w":
        return [(num(rest[0]), num(rest[1]), num(rest[2]) & 0xFF)]
    if kind == "z":
        return [(num(rest[0]), num(rest[1]), 0)]
    if kind == "r":
        # tests/helpers/vhdx-io.c: xorshift64 (13, 7, 17); the offset from
        # the first step, the length from the second, byte k % 255 + 1.
        seed, count, maxlen = num(rest[0]), num(rest[1]), num(rest[2])
        sectors = size // 512
        out = []
        for k in range(count):
            seed = xorshift(seed)
            off = (seed % sectors) * 512
            seed = xorshift(seed)
            length = (seed % (maxlen // 512) + 1) * 512
            length = min(length, size - off)
            out.append((off, length, k % 255 + 1))
        return out
    raise SystemExit("writer_model: unknown command %r" % op)


def apply(buf, prims):
    for off, length, byte in prims:
        if off + length > len(buf):
            raise SystemExit("writer_model: write %d+%d past the end %d"
                             % (off, length, len(buf)))
        buf[off:off + length] = bytes([byte]) * length


def start(args):
    """Parse --size N / --base RAW from ARGS; returns (buffer, rest)."""
    buf, rest, i = None, [], 0
    while i < len(args):
        if args[i] == "--size":
            buf = bytearray(num(args[i + 1]))
            i += 2
        elif args[i] == "--base":
            with open(args[i + 1], "rb") as f:
                buf = bytearray(f.read())
            i += 2
        else:
            rest.append(args[i])
            i += 1
    if buf is None:
        raise SystemExit("writer_model: --size or --base needed")
    return buf, rest


def cmd_expect(out, *args):
    buf, ops = start(list(args))
    for op in ops:
        apply(buf, expand(op, len(buf)))
    with open(out, "wb") as f:
        f.write(buf)
    return 0


def ranges(bad):
    """Collapse a sorted list of unit numbers into (first, last) runs."""
    out = []
    for u in bad:
        if out and out[-1][1] == u - 1:
            out[-1][1] = u
        else:
            out.append([u, u])
    return out


def cmd_cmp(a, b):
    with open(a, "rb") as f:
        x = f.read()
    with open(b, "rb") as f:
        y = f.read()
    if x == y:
        return 0
    if len(x) != len(y):
        print("size differs: %s %d, %s %d" % (a, len(x), b, len(y)))
    n = min(len(x), len(y))
    bad = [u for u in range(0, (n + UNIT - 1) // UNIT)
           if x[u * UNIT:(u + 1) * UNIT] != y[u * UNIT:(u + 1) * UNIT]]
    for first, last in ranges(bad)[:8]:
        o = first * UNIT
        print("differ at %d..%d (%d bytes): %s has %s, %s has %s"
              % (o, (last + 1) * UNIT, (last + 1 - first) * UNIT, a,
                 x[o:o + 8].hex(), b, y[o:o + 8].hex()))
    return 1


def cmd_crashcheck(raw, *args):
    """
    The image was killed while running OPS; FILE holds the "done" lines it
    printed, so ops[:done] completed and ops[done] (if any) was running.
    Writes before the last completed "f" are committed and must read new.
    Writes after it (finished but not flushed, or running) are uncertain.
    Granularity: every 512-byte unit holds the committed value or the
    value of one uncertain write covering it.  A unit is the smallest
    logical sector, the unit every write here is aligned to, and a part of
    one page, so neither the kernel (page copies) nor the library (whole
    sectors, read-modify-write) can mix two values inside it.
    Stronger, for the one write finished but not yet flushed: inside each
    payload block it is all old or all new, because a block's allocation
    or its sector-bitmap bits reach the file in one log entry and a write
    into an allocated block is complete when vhdx_pwrite returns.
    """
    args = list(args)
    done_file = args[args.index("--done") + 1]
    bs = num(args[args.index("--block-size") + 1])
    for opt in ("--done", "--block-size"):
        i = args.index(opt)
        del args[i:i + 2]
    base, ops = start(args)
    size = len(base)
    with open(done_file) as f:
        done = sum(1 for line in f if line.startswith("done "))
    last_f = -1
    for i in range(done):
        if ops[i] == "f":
            last_f = i
    committed = bytearray(base)
    for i in range(last_f + 1):
        apply(committed, expand(ops[i], size))
    uncertain = []  # (op index, off, len, byte)
    for i in range(last_f + 1, min(done + 1, len(ops))):
        for p in expand(ops[i], size):
            if p[0] % UNIT or p[1] % UNIT:
                raise SystemExit("writer_model: crashcheck wants 512-aligned writes")
            uncertain.append((i,) + p)
    with open(raw, "rb") as f:
        got = f.read()
    if len(got) != size:
        print("FAIL: %s is %d bytes, want %d" % (raw, len(got), size))
        return 1
    # allowed values per unit, from the uncertain writes covering it
    allowed = {}
    for i, off, length, byte in uncertain:
        for u in range(off // UNIT, (off + length) // UNIT):
            allowed.setdefault(u, set()).add(bytes([byte]) * UNIT)
    bad = []
    nunits = size // UNIT
    cu = memoryview(committed)
    gu = memoryview(got)
    # fast path: compare big stretches with no uncertain unit at once
    u = 0
    while u < nunits:
        if u in allowed:
            g = bytes(gu[u * UNIT:(u + 1) * UNIT])
            if g != bytes(cu[u * UNIT:(u + 1) * UNIT]) and g not in allowed[u]:
                bad.append(u)
            u += 1
            continue
        v = u
        while v < nunits and v not in allowed and v - u < 2048:
            v += 1
        if gu[u * UNIT:v * UNIT] != cu[u * UNIT:v * UNIT]:
            bad.extend(w for w in range(u, v)
                       if gu[w * UNIT:(w + 1) * UNIT] != cu[w * UNIT:(w + 1) * UNIT])
        u = v
    status = 0
    desc = "done=%d last_f=%d uncertain_ops=%s" % (
        done, last_f, sorted(set(x[0] for x in uncertain)))
    for first, last in ranges(bad)[:6]:
        o = first * UNIT
        print("FAIL: %s: bytes %d..%d hold %s, neither committed %s nor an "
              "uncertain write (%s)" % (raw, o, (last + 1) * UNIT,
                                        got[o:o + 4].hex(), committed[o:o + 4].hex(), desc))
        status = 1
    # block atomicity of the write that finished but was not flushed
    fin = [x for x in uncertain if x[0] < done]
    if len(fin) == 1 and len(set(x[0] for x in uncertain)) == 1:
        _, off, length, byte = fin[0]
        new = bytes([byte]) * UNIT
        blocks = {}
        for u in range(off // UNIT, (off + length) // UNIT):
            if bytes(cu[u * UNIT:(u + 1) * UNIT]) == new:
                continue  # old and new agree: says nothing
            blocks.setdefault(u * UNIT // bs, set()).add(
                bytes(gu[u * UNIT:(u + 1) * UNIT]) == new)
        for j, kinds in sorted(blocks.items()):
            if len(kinds) > 1:
                print("FAIL: %s: block %d holds part old, part new of "
                      "finished write %s (%s)" % (raw, j, ops[fin[0][0]], desc))
                status = 1
    if status == 0:
        print("ok: %s old-or-new (%s)" % (os.path.basename(raw), desc))
    return status


def cmd_states(path):
    v = vhdxlib.Vhdx(path)
    for j in range(v.payload_blocks):
        e = v.bat[v.payload_index(j)]
        print(j, STATE.get(e & 7, str(e & 7)), (e >> 20) << 20)
    return 0


def cmd_alloc(path):
    """
    Every allocated payload block and sector bitmap starts on a 1 MiB
    boundary past the fixed structures, lies inside the file and overlaps
    nothing else; prints the counts.
    """
    v = vhdxlib.Vhdx(path)
    spans = [(0, 1 << 20, "header section"),
             (v.header["log_offset"], v.header["log_length"], "log"),
             (v.bat_region["file_offset"], v.bat_region["length"], "BAT"),
             (v.metadata_region["file_offset"], v.metadata_region["length"],
              "metadata")]
    status = 0
    for j in range(v.payload_blocks):
        e = v.bat[v.payload_index(j)]
        if e & 7 in (6, 7):
            spans.append(((e >> 20) << 20, v.block_size, "block %d" % j))
    if v.has_parent:
        for c in range(-(-v.payload_blocks // v.chunk_ratio)):
            e = v.bat[v.bitmap_index(c)]
            if e & 7 == 6:
                spans.append(((e >> 20) << 20, 1 << 20, "bitmap %d" % c))
    spans.sort()
    for i, (off, length, name) in enumerate(spans):
        if off % (1 << 20):
            print("FAIL: %s at %d is not 1 MiB aligned" % (name, off))
            status = 1
        if off + length > v.file_size:
            print("FAIL: %s at %d+%d ends past the file (%d)"
                  % (name, off, length, v.file_size))
            status = 1
        if i and spans[i - 1][0] + spans[i - 1][1] > off:
            print("FAIL: %s at %d overlaps %s" % (name, off, spans[i - 1][2]))
            status = 1
    if status == 0:
        print("ok: %d allocations aligned, inside the file, disjoint"
              % (len(spans) - 4))
    return status


def cmd_guids(path):
    v = vhdxlib.Vhdx(path)
    h = v.header
    print(h["file_write_guid"], h["data_write_guid"], h["log_guid"])
    return 0


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=120, **kw)


def cmd_read(oracle, image, out):
    if oracle == "qemu":
        r = run(["qemu-img", "check", "-f", "vhdx", image])
        if r.returncode != 0:
            print("FAIL: qemu-img check %s: exit %d: %s" % (
                image, r.returncode, r.stdout.decode(errors="replace").strip()))
            return 1
        r = run(["qemu-img", "convert", "-f", "vhdx", "-O", "raw", image, out])
    elif oracle == "vhdi":
        mnt = tempfile.mkdtemp(prefix="vhdimnt.")
        try:
            r = run(["vhdimount", "-X", "allow_root", image, mnt])
            if r.returncode == 0:
                layers = sorted((f for f in os.listdir(mnt) if f.startswith("vhdi")),
                                key=lambda f: int(f[4:]))
                if not layers:
                    print("FAIL: vhdimount %s shows no layer" % image)
                    return 1
                shutil.copyfile(os.path.join(mnt, layers[-1]), out)
        finally:
            subprocess.run(["fusermount3", "-u", mnt], stderr=subprocess.DEVNULL)
            os.rmdir(mnt)
    elif oracle == "cat":
        top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        cat = os.environ.get("VHDX_CAT") or os.path.join(top, "build/helpers/vhdx-cat")
        with open(out, "wb") as f:
            r = subprocess.run([cat, image],
                               stdout=f, stderr=subprocess.PIPE, timeout=120)
        r.stdout = r.stderr
    else:
        raise SystemExit("writer_model: unknown oracle %s" % oracle)
    if r.returncode != 0:
        print("FAIL: %s cannot read %s: exit %d: %s" % (
            oracle, image, r.returncode, r.stdout.decode(errors="replace").strip()))
        return 1
    return 0


def main():
    if len(sys.argv) < 3:
        print(__doc__ or "see the top of writer_model.py", file=sys.stderr)
        return 2
    fn = {"expect": cmd_expect, "cmp": cmd_cmp, "crashcheck": cmd_crashcheck,
          "states": cmd_states, "alloc": cmd_alloc, "guids": cmd_guids, "read": cmd_read}
    cmd = sys.argv[1]
    if cmd not in fn:
        print("writer_model: unknown command %s" % cmd, file=sys.stderr)
        return 2
    return fn[cmd](*sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
