#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# mkvhdx.py - writes VHDX test images directly from the MS-VHDX layout:
# differencing children of an existing VHDX (sector-granular writes,
# PARTIALLY_PRESENT blocks with sector bitmaps, FULLY_PRESENT and ZERO
# blocks, parent locators good and bad) and plain dynamic/fixed bases (for
# geometries qemu-img cannot make, e.g. 4096-byte logical sectors).
#
# It is independent of hvresync's C code.  Each run can write a manifest of
# its writes; `apply` replays manifests onto a raw file so a test gets the
# expected bytes of a chain without asking the reader under test.
#
# Usage:
#   mkvhdx.py child --parent P.vhdx --out C.avhdx [--block-size 1M]
#       [--write OFF:LEN:DATA]... [--zero-block N]... [--full-block N:DATA]...
#       [--wrong-linkage | --linkage GUID] [--relative-path 'WIN\PATH']
#       [--no-relative-path] [--absolute-path 'C:\X\p.vhdx']
#       [--no-absolute-path] [--volume-path STR] [--current-header 1|2]
#       [--manifest M.json] [--seed N] [--lss N] [--bitmap-for-full]
#   mkvhdx.py base --out B.vhdx --size 64M [--block-size 1M] [--lss 4096]
#       [--pss 4096] [--fixed] [--write ...] [--zero-block N] [--full-block]
#   mkvhdx.py apply RAW MANIFEST...   (apply manifests in order, in place)
#   mkvhdx.py info FILE               (structure as JSON)
#   mkvhdx.py pattern SEED OFF LEN    (write pattern bytes to stdout)
#   mkvhdx.py overlay IMAGE RAW       (write what IMAGE itself holds onto
#                                      RAW, which holds the parent's bytes)
#
# OFF and LEN take K/M/G suffixes and sums (2M+4K, 4G-1K) and must be
# sector multiples.  DATA is a byte value (0xa5, 165) or pSEED: a pattern in
# which each 512-byte piece holds (SEED, its virtual offset) so misplaced
# sectors are visible.  --lss/--pss on `child` override the parent's sector
# sizes (to make a mismatched child).

import argparse
import json
import ntpath
import os
import random
import re
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdxlib as V  # noqa: E402

MiB = V.MiB


def parse_size(s):
    """A size with K/M/G/T suffixes, or a sum of them: 2M+4K, 4G-1K."""
    total = 0
    for sign, term in re.findall(r"([+-]?)([^+-]+)", s.strip()):
        term = term.strip()
        mult = 1
        for suf, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30),
                       ("T", 1 << 40)):
            if term.upper().endswith(suf):
                mult, term = m, term[:-1]
                break
        v = int(term, 0) * mult
        total += -v if sign == "-" else v
    return total


def pattern(seed, off, length):
    """Bytes for virtual range [off, off+len): each 512-byte-aligned piece
    holds its own seed and offset, repeated."""
    out = bytearray()
    pos = off
    end = off + length
    while pos < end:
        base = pos - pos % 512
        piece = struct.pack("<QQ", seed, base) * 32
        lo = pos - base
        hi = min(512, end - base)
        out += piece[lo:hi]
        pos = base + hi
    return bytes(out)


def data_bytes(spec, off, length):
    if spec.startswith("p"):
        return pattern(int(spec[1:], 0), off, length)
    b = int(spec, 0)
    if not 0 <= b <= 255:
        raise ValueError("byte out of range: %s" % spec)
    return bytes([b]) * length


def braced(g):
    return "{" + g.lower() + "}"

# --- The model: what each payload block of the new file holds ------------

class Model:
    def __init__(self, vsize, bs, lss, garbage_seed):
        self.vsize, self.bs, self.lss = vsize, bs, lss
        self.blocks = {}  # j -> ["zero"] or ["data", bytearray, set(sectors)]
        self.garbage = random.Random(garbage_seed)
        self.ops = []

    def _block_len(self, j):
        return min(self.bs, self.vsize - j * self.bs)

    def _data_block(self, j):
        st = self.blocks.get(j)
        if st is None:
            # Sectors not written stay the parent's: fill the payload with
            # garbage so a reader that ignores the bitmap gets caught.
            g = bytes([self.garbage.randrange(1, 256)]) * 16
            st = ["data", bytearray(g * (self.bs // 16)), set()]
        elif st[0] == "zero":
            # Writing into a ZERO block: the rest must still read as zero.
            st = ["data", bytearray(self.bs),
                  set(range(self._block_len(j) // self.lss))]
        self.blocks[j] = st
        return st

    def write(self, off, length, spec):
        if off % self.lss or length % self.lss or length <= 0:
            raise ValueError("write %d:%d not sector aligned" % (off, length))
        if off + length > self.vsize:
            raise ValueError("write past the virtual size")
        self.ops.append({"op": "write", "off": off, "len": length,
                         "data": spec})
        data = data_bytes(spec, off, length)
        pos = off
        while pos < off + length:
            j = pos // self.bs
            boff = pos - j * self.bs
            n = min(self.bs - boff, off + length - pos)
            st = self._data_block(j)
            st[1][boff:boff + n] = data[pos - off:pos - off + n]
            st[2].update(range(boff // self.lss, (boff + n) // self.lss))
            pos += n

    def zero_block(self, j):
        self._check_block(j)
        self.ops.append({"op": "zero", "off": j * self.bs,
                         "len": self._block_len(j)})
        self.blocks[j] = ["zero"]

    def full_block(self, j, spec):
        self._check_block(j)
        n = self._block_len(j)
        self.ops.append({"op": "write", "off": j * self.bs, "len": n,
                         "data": spec})
        buf = bytearray(self.bs)
        buf[:n] = data_bytes(spec, j * self.bs, n)
        self.blocks[j] = ["data", buf, set(range(n // self.lss))]

    def _check_block(self, j):
        if not 0 <= j < -(-self.vsize // self.bs):
            raise ValueError("block %d out of range" % j)

    def state(self, j):
        st = self.blocks.get(j)
        if st is None:
            return V.NOT_PRESENT
        if st[0] == "zero":
            return V.ZERO
        full = len(st[2]) >= self._block_len(j) // self.lss
        return V.FULLY_PRESENT if full else V.PARTIALLY_PRESENT

# --- Writing a file ------------------------------------------------------

def build_headers(rng, current, data_write_guid=None):
    """Two headers; CURRENT (1 or 2) gets the greater sequence number.  The
    other one carries older GUIDs, as after a real update."""
    seq = rng.randrange(1, 1 << 40)
    guids = {}
    out = []
    for i in (1, 2):
        is_cur = i == current
        fw = V.guid_bytes(str(_uuid(rng)))
        dw = V.guid_bytes(data_write_guid) if (is_cur and data_write_guid) \
            else V.guid_bytes(str(_uuid(rng)))
        h = bytearray(V.HEADER_SIZE)
        h[0:4] = b"head"
        struct.pack_into("<Q", h, 8, seq + (1 if is_cur else 0))
        h[16:32] = fw
        h[32:48] = dw
        struct.pack_into("<HHIQ", h, 64, 0, 1, 1 * MiB, 1 * MiB)
        out.append(V.checksummed(h))
        if is_cur:
            guids = {"file_write_guid": V.guid_str(fw),
                     "data_write_guid": V.guid_str(dw)}
    return out, guids


def _uuid(rng):
    import uuid
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def build_region_table(bat_off, bat_len, md_off, md_len):
    t = bytearray(V.REGION_SIZE)
    t[0:4] = b"regi"
    struct.pack_into("<I", t, 8, 2)
    ents = [(V.BAT_GUID, bat_off, bat_len), (V.METADATA_GUID, md_off, md_len)]
    for i, (g, off, ln) in enumerate(ents):
        o = 16 + 32 * i
        t[o:o + 16] = V.guid_bytes(g)
        struct.pack_into("<QII", t, o + 16, off, ln, 1)
    return V.checksummed(t)


def build_metadata(items):
    """items: list of (guid, value bytes, flags) -> 1 MiB metadata region."""
    reg = bytearray(1 * MiB)
    reg[0:8] = b"metadata"
    struct.pack_into("<H", reg, 10, len(items))
    pos = 64 * V.KiB
    for i, (g, val, flags) in enumerate(items):
        o = 32 + 32 * i
        reg[o:o + 16] = V.guid_bytes(g)
        struct.pack_into("<III", reg, o + 16, pos, len(val), flags)
        reg[pos:pos + len(val)] = val
        pos += (len(val) + 7) // 8 * 8
    return bytes(reg)


def write_image(out, model, has_parent, pss, rng, current_header,
                locator=None, fixed=False, bitmap_for_full=False):
    bs, lss, vsize = model.bs, model.lss, model.vsize
    cr = (1 << 23) * lss // bs
    n = -(-vsize // bs)
    if has_parent:
        nent = -(-n // cr) * (cr + 1)
    else:
        nent = n + (n - 1) // cr
    bat_len = -(-nent * 8 // MiB) * MiB
    md_off, bat_off = 2 * MiB, 3 * MiB
    next_off = bat_off + bat_len

    fp_flags = (2 if has_parent else 0) | (1 if fixed else 0)
    items = [
        (V.MD_FILE_PARAMS, struct.pack("<II", bs, fp_flags), 4),
        (V.MD_VDISK_SIZE, struct.pack("<Q", vsize), 6),
        (V.MD_LSS, struct.pack("<I", lss), 6),
        (V.MD_PSS, struct.pack("<I", pss), 6),
        (V.MD_PAGE83, V.guid_bytes(str(_uuid(rng))), 6),
    ]
    if locator is not None:
        items.append((V.MD_PARENT_LOCATOR, locator, 4))

    headers, guids = build_headers(rng, current_header)
    bat = [0] * nent
    blocks_out = []  # (file offset, bytes)

    if fixed:
        for j in range(n):
            if model.state(j) == V.NOT_PRESENT:
                model.blocks[j] = ["data", bytearray(bs),
                                   set(range(model._block_len(j) // lss))]
    # Allocate from the highest block down so file order differs from
    # virtual order.
    bitmaps = {}
    for j in sorted(model.blocks, reverse=True):
        st = model.state(j)
        idx = j + j // cr
        if st == V.ZERO:
            bat[idx] = V.ZERO
            continue
        data = model.blocks[j][1]
        bat[idx] = next_off | st
        blocks_out.append((next_off, bytes(data)))
        next_off += bs
        sectors = model.blocks[j][2]
        if st == V.PARTIALLY_PRESENT or (bitmap_for_full and has_parent):
            c = j // cr
            bm = bitmaps.setdefault(c, bytearray(MiB))
            first = (j % cr) * (bs // lss)
            for s in sectors:
                bit = first + s
                bm[bit >> 3] |= 1 << (bit & 7)
    for c in sorted(bitmaps):
        bat[c * (cr + 1) + cr] = next_off | V.SB_PRESENT
        blocks_out.append((next_off, bytes(bitmaps[c])))
        next_off += MiB

    fid = bytearray(64 * V.KiB)
    fid[0:8] = b"vhdxfile"
    creator = "hvresync tests/helpers/mkvhdx.py".encode("utf-16-le")
    fid[8:8 + len(creator)] = creator
    rt = build_region_table(bat_off, bat_len, md_off, MiB)
    with open(out, "wb") as f:
        f.write(fid)
        f.seek(V.HEADER_OFF[0])
        f.write(headers[0])
        f.seek(V.HEADER_OFF[1])
        f.write(headers[1])
        for o in V.REGION_OFF:
            f.seek(o)
            f.write(rt)
        f.seek(md_off)
        f.write(build_metadata(items))
        f.seek(bat_off)
        f.write(struct.pack("<%dQ" % nent, *bat))
        for off, data in blocks_out:
            f.seek(off)
            f.write(data)
        f.truncate(max(next_off, bat_off + bat_len))
    return guids


def relative_win_path(parent, child_out):
    rel = os.path.relpath(os.path.abspath(parent),
                          os.path.dirname(os.path.abspath(child_out)))
    rel = rel.replace("/", "\\")
    if not rel.startswith(".."):
        rel = ".\\" + rel
    return rel


def add_ops(model, args):
    # Apply in command-line order: argparse keeps each list separately, so
    # the caller's order is recovered from sys.argv positions.
    for kind, val in getattr(args, "ordered", None) or []:
        if kind == "write":
            off, length, spec = val.split(":")
            model.write(parse_size(off), parse_size(length), spec)
        elif kind == "zero":
            model.zero_block(int(val, 0))
        elif kind == "full":
            j, spec = val.split(":")
            model.full_block(int(j, 0), spec)


class Ordered(argparse.Action):
    def __call__(self, parser, ns, values, option_string=None):
        if getattr(ns, "ordered", None) is None:
            ns.ordered = []
        ns.ordered.append((self.dest, values))


def common_args(p):
    p.add_argument("--out", required=True)
    p.add_argument("--block-size", default=None)
    p.add_argument("--write", dest="write", action=Ordered, default=None)
    p.add_argument("--zero-block", dest="zero", action=Ordered, default=None)
    p.add_argument("--full-block", dest="full", action=Ordered, default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--current-header", type=int, choices=(1, 2), default=2)
    p.add_argument("--manifest")
    p.add_argument("--bitmap-for-full", action="store_true",
                   help="also set sector-bitmap bits of FULLY_PRESENT blocks")


def cmd_child(args):
    parent = V.Vhdx(args.parent)
    bs = parse_size(args.block_size) if args.block_size else parent.block_size
    vsize = parse_size(args.virtual_size) if args.virtual_size \
        else parent.virtual_size
    lss = args.lss or parent.logical_sector_size
    pss = args.pss or parent.physical_sector_size
    rng = random.Random(args.seed)
    model = Model(vsize, bs, lss, args.seed)
    add_ops(model, args)

    if args.linkage:
        linkage = braced(args.linkage.strip("{}"))
    elif args.wrong_linkage:
        linkage = braced(str(_uuid(rng)).upper())
    else:
        linkage = braced(parent.header["data_write_guid"])
    base = ntpath.basename(args.parent) if "\\" in args.parent \
        else os.path.basename(args.parent)
    pairs = [("parent_linkage", linkage)]
    if args.linkage2:
        pairs.append(("parent_linkage2", braced(args.linkage2.strip("{}"))))
    if not args.no_relative_path:
        pairs.append(("relative_path", args.relative_path or
                      relative_win_path(args.parent, args.out)))
    if args.volume_path:
        pairs.append(("volume_path", args.volume_path))
    if not args.no_absolute_path:
        pairs.append(("absolute_win32_path", args.absolute_path or
                      "C:\\Hyper-V\\Virtual Hard Disks\\" + base))
    guids = write_image(args.out, model, True, pss, rng, args.current_header,
                        locator=V.build_locator(pairs),
                        bitmap_for_full=args.bitmap_for_full)
    finish(args, model, guids, {"locator": dict(pairs)})


def cmd_base(args):
    bs = parse_size(args.block_size or "1M")
    vsize = parse_size(args.size)
    rng = random.Random(args.seed)
    model = Model(vsize, bs, args.lss, args.seed)
    add_ops(model, args)
    if any(model.state(j) == V.PARTIALLY_PRESENT for j in model.blocks):
        # A non-differencing disk has no sector bitmaps: pad partial blocks
        # to full ones (zeros where nothing was written).
        for j, st in model.blocks.items():
            if st[0] == "data":
                buf = bytearray(bs)
                for s in st[2]:
                    o = s * args.lss
                    buf[o:o + args.lss] = st[1][o:o + args.lss]
                st[1] = buf
                st[2] = set(range(model._block_len(j) // args.lss))
    guids = write_image(args.out, model, False, args.pss or args.lss, rng,
                        args.current_header, fixed=args.fixed)
    finish(args, model, guids, {})


def finish(args, model, guids, extra):
    if args.manifest:
        m = {"virtual_size": model.vsize, "block_size": model.bs,
             "ops": model.ops}
        m.update(guids)
        m.update(extra)
        with open(args.manifest, "w") as f:
            json.dump(m, f, indent=1)


def cmd_apply(args):
    with open(args.raw, "r+b") as f:
        for mpath in args.manifests:
            with open(mpath) as mf:
                m = json.load(mf)
            for op in m["ops"]:
                f.seek(op["off"])
                if op["op"] == "zero":
                    f.write(bytes(op["len"]))
                else:
                    f.write(data_bytes(op["data"], op["off"], op["len"]))


def cmd_info(args):
    json.dump(V.Vhdx(args.file).describe(), sys.stdout, indent=1)
    print()


def cmd_overlay(args):
    V.overlay(args.image, args.raw)


def cmd_pattern(args):
    sys.stdout.buffer.write(pattern(int(args.seed, 0), parse_size(args.off),
                                    parse_size(args.len)))


def main():
    ap = argparse.ArgumentParser(description="write VHDX test images")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child")
    common_args(c)
    c.add_argument("--parent", required=True)
    c.add_argument("--virtual-size")
    c.add_argument("--linkage")
    c.add_argument("--wrong-linkage", action="store_true")
    c.add_argument("--linkage2")
    c.add_argument("--relative-path")
    c.add_argument("--no-relative-path", action="store_true")
    c.add_argument("--absolute-path")
    c.add_argument("--no-absolute-path", action="store_true")
    c.add_argument("--volume-path")
    c.add_argument("--lss", type=int, choices=(512, 4096),
                   help="logical sector size (default: the parent's)")
    c.add_argument("--pss", type=int, choices=(512, 4096))
    b = sub.add_parser("base")
    common_args(b)
    b.add_argument("--size", required=True)
    b.add_argument("--lss", type=int, choices=(512, 4096), default=512)
    b.add_argument("--pss", type=int, choices=(512, 4096))
    b.add_argument("--fixed", action="store_true")
    a = sub.add_parser("apply")
    a.add_argument("raw")
    a.add_argument("manifests", nargs="+")
    i = sub.add_parser("info")
    i.add_argument("file")
    o = sub.add_parser("overlay")
    o.add_argument("image")
    o.add_argument("raw")
    p = sub.add_parser("pattern")
    p.add_argument("seed")
    p.add_argument("off")
    p.add_argument("len")
    args = ap.parse_args()
    try:
        {"child": cmd_child, "base": cmd_base, "apply": cmd_apply,
         "info": cmd_info, "pattern": cmd_pattern,
         "overlay": cmd_overlay}[args.cmd](args)
    except (ValueError, V.VhdxError, OSError) as e:
        print("mkvhdx.py: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
