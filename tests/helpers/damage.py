#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# damage.py - breaks one VHDX structure in place, for tests/t-damage.sh.
#
#   damage.py list IMAGE         names of the damage cases that apply
#   damage.py apply CASE IMAGE   damage IMAGE in place; prints the class:
#       R   a valid copy remains: the reader must open it and show the
#           undamaged bytes
#       F   the file must be refused (exit 2, one line naming it)
#       X   either refused, or opened with every byte read equal to the
#           undamaged view or failing with an I/O error (never wrong bytes)
#       RF  either refused, or opened showing exactly the undamaged bytes
#
# Checksums are recomputed where the case is about content rather than the
# checksum itself, so the reader's semantic checks are what gets tested.

import os
import random
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdxlib as V  # noqa: E402

KiB, MiB = V.KiB, V.MiB
UNKNOWN_GUID = "5A3C1F2E-9B8D-4E7F-A1B2-C3D4E5F60718"


def flip(path, off, mask=0xFF):
    b = V.read(path, off, 1)
    V.patch(path, off, bytes([b[0] ^ mask]))


def u32(path, off, val):
    V.patch(path, off, struct.pack("<I", val))


def u64(path, off, val):
    V.patch(path, off, struct.pack("<Q", val))


def header_case(v, which, what):
    """Damage header WHICH (0/1).  R when the other one is valid and would
    give the same view (same LogGuid), else RF."""
    off = V.HEADER_OFF[which]
    if what == "sig":
        flip(v.path, off)
    elif what == "csum":
        flip(v.path, off + 4)
    elif what == "guid":
        flip(v.path, off + 35)          # a DataWriteGuid byte
    elif what == "version":             # Version 2, checksum fixed
        V.patch(v.path, off + 66, struct.pack("<H", 2))
        V.refresh_header_checksum(v.path, which)
    elif what == "logoff":              # LogOffset not 1 MiB aligned
        u64(v.path, off + 72, v.headers[which]["log_offset"] + 4096)
        V.refresh_header_checksum(v.path, which)
    other = v.headers[1 - which]
    if what in ("version", "logoff"):
        # Valid checksum, invalid content: using the other header or
        # refusing the file are both sound.
        return "RF"
    if other["valid"] and other["log_guid"] == v.header["log_guid"]:
        return "R"
    return "RF"


def edit_both_region_tables(v, fn):
    for i in (0, 1):
        off = V.REGION_OFF[i]
        t = bytearray(V.read(v.path, off, V.REGION_SIZE))
        fn(t)
        V.patch(v.path, off, V.checksummed(t))


def region_entry_index(v, guid):
    return next(i for i, r in enumerate(v.regions) if r["guid"] == guid)


def add_region(v, required):
    """An extra region of 1 MiB, appended to the file so that it neither
    overlaps anything nor lies past the end."""
    at = -(-v.file_size // MiB) * MiB
    with open(v.path, "r+b") as f:
        f.truncate(at + MiB)

    def fn(t):
        n = struct.unpack_from("<I", t, 8)[0]
        o = 16 + 32 * n
        t[o:o + 16] = V.guid_bytes(UNKNOWN_GUID)
        struct.pack_into("<QII", t, o + 16, at, MiB, 1 if required else 0)
        struct.pack_into("<I", t, 8, n + 1)
    return fn


def metadata_edit(v, fn):
    off = v.metadata_region["file_offset"]
    t = bytearray(V.read(v.path, off, 64 * KiB))
    fn(t)
    V.patch(v.path, off, bytes(t))


def md_value(v, guid, fmt, val):
    V.patch(v.path, v.metadata[guid]["file_offset"], struct.pack(fmt, val))


def add_md_item(v, flags):
    # The value goes in free space after the last item.
    end = max(e["offset"] + e["length"] for e in v.metadata_entries)
    val_off = (end + 63) // 64 * 64

    def fn(t):
        n = struct.unpack_from("<H", t, 10)[0]
        o = 32 + 32 * n
        t[o:o + 16] = V.guid_bytes(UNKNOWN_GUID)
        struct.pack_into("<III", t, o + 16, val_off, 8, flags)
        struct.pack_into("<H", t, 10, n + 1)
    metadata_edit(v, fn)
    V.patch(v.path, v.metadata_region["file_offset"] + val_off, b"\x42" * 8)


def remove_md_item(v, guid):
    e = v.metadata[guid]

    def fn(t):
        n = struct.unpack_from("<H", t, 10)[0]
        o = e["entry_offset"]
        t[o:32 + 32 * n - 32] = t[o + 32:32 + 32 * n]
        t[32 + 32 * (n - 1):32 + 32 * n] = bytes(32)
        struct.pack_into("<H", t, 10, n - 1)
    metadata_edit(v, fn)


def first_block(v, states):
    for j in range(v.payload_blocks):
        if v.bat[v.payload_index(j)] & 7 in states:
            return j
    return None


def set_bat(v, idx, val):
    u64(v.path, v.bat_region["file_offset"] + 8 * idx, val)


def random_flips(v, seed):
    """Flip 1-6 bytes of the first MiB, most of them inside the checksummed
    header and region table fields, so that one or both copies of a
    structure break.  Any outcome must be a refusal or the undamaged view."""
    rng = random.Random(seed)
    hot = []
    for o in V.HEADER_OFF:
        hot.append((o, o + 80))
    for o in V.REGION_OFF:
        hot.append((o, o + 16 + 32 * len(v.regions)))
    for _ in range(rng.randrange(1, 7)):
        if rng.random() < 0.75:
            lo, hi = rng.choice(hot)
            off = rng.randrange(lo, hi)
        else:
            off = rng.randrange(0, MiB)
        flip(v.path, off, rng.randrange(1, 256))
    return "RF"


def cases(v):
    c = ["fileid-sig"]
    for w in (1, 2):
        for what in ("sig", "csum", "guid", "version", "logoff"):
            c.append("h%d-%s" % (w, what))
    c += ["h-both", "rt1-sig", "rt1-entry", "rt2-entry", "rt-both",
          "rt-unknown-required", "rt-unknown-optional", "rt-count-huge",
          "rt-no-bat", "rt-bat-unaligned", "rt-bat-overlaps-metadata",
          "rt-bat-too-small",
          "md-sig", "md-bs-3M", "md-bs-0", "md-bs-512M", "md-lss-1024",
          "md-pss-1000", "md-vsize-unaligned", "md-vsize-huge",
          "md-unknown-required", "md-unknown-optional", "md-no-vsize",
          "md-item-outside", "md-count-huge"]
    if not v.has_parent:
        c.append("md-hasparent")
    if first_block(v, (6, 7)) is not None:
        c += ["bat-past-eof", "bat-into-metadata", "bat-into-header",
              "bat-state-4", "trunc-last-block"]
        if not v.has_parent:
            c.append("bat-partial-nondiff")
    if v.has_parent and first_block(v, (7,)) is not None:
        c += ["sb-past-eof", "sb-not-present", "sb-into-bat"]
    c += ["trunc-0", "trunc-1K", "trunc-300K", "trunc-half"]
    c += ["flips-%d" % i for i in range(1, 13)]
    return c


def apply(case, path):
    v = V.Vhdx(path)
    rt0 = V.REGION_OFF[0]
    if case == "fileid-sig":
        flip(path, 0)
        return "F"
    if case[0] == "h" and case[1] in "12":
        return header_case(v, int(case[1]) - 1, case.split("-", 1)[1])
    if case == "h-both":
        flip(path, V.HEADER_OFF[0])
        flip(path, V.HEADER_OFF[1])
        return "F"
    if case == "rt1-sig":
        flip(path, rt0)
        return "R"
    if case == "rt1-entry":
        flip(path, rt0 + 16 + 20)       # a FileOffset byte
        return "R"
    if case == "rt2-entry":
        flip(path, V.REGION_OFF[1] + 16 + 20)
        return "R"
    if case == "rt-both":
        flip(path, rt0 + 4)
        flip(path, V.REGION_OFF[1] + 4)
        return "F"
    if case == "rt-unknown-required":
        edit_both_region_tables(v, add_region(v, True))
        return "F"
    if case == "rt-unknown-optional":
        edit_both_region_tables(v, add_region(v, False))
        return "R"
    if case == "rt-count-huge":
        edit_both_region_tables(
            v, lambda t: struct.pack_into("<I", t, 8, 2048))
        return "F"
    if case == "rt-no-bat":
        i = region_entry_index(v, V.BAT_GUID)

        def fn(t):
            t[16 + 32 * i:16 + 32 * i + 16] = V.guid_bytes(UNKNOWN_GUID)
            struct.pack_into("<I", t, 16 + 32 * i + 28, 0)
        edit_both_region_tables(v, fn)
        return "F"
    if case in ("rt-bat-unaligned", "rt-bat-overlaps-metadata",
                "rt-bat-too-small"):
        i = region_entry_index(v, V.BAT_GUID)
        o = 16 + 32 * i + 16
        if case == "rt-bat-unaligned":
            new = (v.bat_region["file_offset"] + 4096, None)
        elif case == "rt-bat-overlaps-metadata":
            new = (v.metadata_region["file_offset"], None)
        else:
            need = v.bat_entries * 8
            if need <= 4096:
                # shrink below what the entries need: only a 4 KiB BAT
                # fits small disks, so claim 0 bytes
                new = (None, 0)
            else:
                new = (None, 4096)

        def fn(t):
            if new[0] is not None:
                struct.pack_into("<Q", t, o, new[0])
            if new[1] is not None:
                struct.pack_into("<I", t, o + 8, new[1])
        edit_both_region_tables(v, fn)
        return "F"
    if case == "md-sig":
        flip(path, v.metadata_region["file_offset"])
        return "F"
    if case == "md-bs-3M":
        md_value(v, V.MD_FILE_PARAMS, "<I", 3 * MiB)
        return "F"
    if case == "md-bs-0":
        md_value(v, V.MD_FILE_PARAMS, "<I", 0)
        return "F"
    if case == "md-bs-512M":
        md_value(v, V.MD_FILE_PARAMS, "<I", 512 * MiB)
        return "F"
    if case == "md-lss-1024":
        md_value(v, V.MD_LSS, "<I", 1024)
        return "F"
    if case == "md-pss-1000":
        md_value(v, V.MD_PSS, "<I", 1000)
        return "F"
    if case == "md-vsize-unaligned":
        md_value(v, V.MD_VDISK_SIZE, "<Q", v.virtual_size + 1)
        return "F"
    if case == "md-vsize-huge":
        md_value(v, V.MD_VDISK_SIZE, "<Q", 1 << 62)
        return "F"
    if case == "md-unknown-required":
        add_md_item(v, 4)
        return "F"
    if case == "md-unknown-optional":
        add_md_item(v, 0)
        return "R"
    if case == "md-no-vsize":
        remove_md_item(v, V.MD_VDISK_SIZE)
        return "F"
    if case == "md-item-outside":
        e = v.metadata[V.MD_VDISK_SIZE]
        metadata_edit(v, lambda t: struct.pack_into(
            "<I", t, e["entry_offset"] + 16, v.metadata_region["length"] - 4))
        return "F"
    if case == "md-count-huge":
        metadata_edit(v, lambda t: struct.pack_into("<H", t, 10, 2048))
        return "F"
    if case == "md-hasparent":
        V.patch(path, v.metadata[V.MD_FILE_PARAMS]["file_offset"],
                struct.pack("<II", v.block_size,
                            2 | (1 if v.leave_allocated else 0)))
        return "F"
    if case.startswith("bat-"):
        j = first_block(v, (6, 7))
        idx = v.payload_index(j)
        st = v.bat[idx] & 7
        if case == "bat-past-eof":
            eof = (v.file_size + 64 * MiB) // MiB * MiB
            set_bat(v, idx, eof | st)
        elif case == "bat-into-metadata":
            set_bat(v, idx, v.metadata_region["file_offset"] | st)
        elif case == "bat-into-header":
            set_bat(v, idx, 0 | st)
        elif case == "bat-state-4":
            set_bat(v, idx, (v.bat[idx] & ~7) | 4)
        elif case == "bat-partial-nondiff":
            set_bat(v, idx, (v.bat[idx] & ~7) | 7)
        return "X"
    if case.startswith("sb-"):
        j = first_block(v, (7,))
        idx = v.bitmap_index(j // v.chunk_ratio)
        if case == "sb-past-eof":
            set_bat(v, idx, ((v.file_size + 64 * MiB) // MiB * MiB) | 6)
        elif case == "sb-not-present":
            set_bat(v, idx, 0)
        elif case == "sb-into-bat":
            set_bat(v, idx, v.bat_region["file_offset"] | 6)
        return "X"
    if case.startswith("trunc-"):
        what = case[6:]
        if what == "last-block":
            last = max((v.bat[v.payload_index(j)] >> 20) << 20
                       for j in range(v.payload_blocks)
                       if v.bat[v.payload_index(j)] & 7 in (6, 7))
            size = last + MiB // 2
        else:
            size = {"0": 0, "1K": KiB, "300K": 300 * KiB,
                    "half": v.file_size // 2}[what]
        os.truncate(path, size)
        return "F" if what in ("0", "1K", "300K") else "X"
    if case.startswith("flips-"):
        return random_flips(v, int(case[6:]))
    raise SystemExit("damage.py: unknown case %s" % case)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "list":
        print("\n".join(cases(V.Vhdx(sys.argv[2]))))
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "apply":
        print(apply(sys.argv[2], sys.argv[3]))
        return 0
    print("usage: damage.py list IMAGE | apply CASE IMAGE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
