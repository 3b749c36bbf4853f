# SPDX-License-Identifier: MIT
# vhdxlib.py - a small, independent VHDX (MS-VHDX) reader/writer toolkit for
# the integration tests: CRC-32C, GUIDs, parsing of the header area,
# metadata and BAT, and helpers to patch structures with valid checksums.
#
# It shares no code with the C library on purpose: the tests use it as a
# second opinion, so it follows the specification, not our implementation.

import struct
import uuid

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

HEADER_OFF = (64 * KiB, 128 * KiB)
REGION_OFF = (192 * KiB, 256 * KiB)
HEADER_SIZE = 4 * KiB
REGION_SIZE = 64 * KiB

BAT_GUID = "2DC27766-F623-4200-9D64-115E9BFD4A08"
METADATA_GUID = "8B7CA206-4790-4B9A-B8FE-575F050F886E"
MD_FILE_PARAMS = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
MD_VDISK_SIZE = "2FA54224-CD1B-4876-B211-5DBED83BF4B8"
MD_PAGE83 = "BECA12AB-B2E6-4523-93EF-C309E000C746"
MD_LSS = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F"
MD_PSS = "CDA348C7-445D-4471-9CC9-E9885251C556"
MD_PARENT_LOCATOR = "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"
LOCATOR_TYPE = "B04AEFB7-D19E-4A81-B789-25B8E9445913"

MD_NAMES = {
    MD_FILE_PARAMS: "file_parameters",
    MD_VDISK_SIZE: "virtual_disk_size",
    MD_PAGE83: "page83",
    MD_LSS: "logical_sector_size",
    MD_PSS: "physical_sector_size",
    MD_PARENT_LOCATOR: "parent_locator",
}

# Payload block states.
NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED = 0, 1, 2, 3
FULLY_PRESENT, PARTIALLY_PRESENT = 6, 7
SB_PRESENT = 6

# --- CRC-32C (Castagnoli), reflected polynomial 0x82F63B78 ---------------

def _crc_table():
    tab = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        tab.append(c)
    return tab

_CRC_TAB = _crc_table()


def _gf2_times(mat, vec):
    s = 0
    i = 0
    while vec:
        if vec & 1:
            s ^= mat[i]
        vec >>= 1
        i += 1
    return s


def _gf2_square(mat):
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def _zero_byte_operators():
    """Operators that advance the CRC register over 2^k zero bytes."""
    op = [0x82F63B78] + [1 << (n - 1) for n in range(1, 32)]  # one bit
    for _ in range(3):
        op = _gf2_square(op)                                  # one byte
    ops = []
    for _ in range(40):
        ops.append(op)
        op = _gf2_square(op)
    return ops

_ZERO_OPS = None


def crc32c(data, crc=0):
    """CRC-32C.  Trailing zeros (most of a 64 KiB region table) are skipped
    with the GF(2) operator for runs of zero bytes instead of byte by byte."""
    global _ZERO_OPS
    data = bytes(data)
    body = data.rstrip(b"\0")
    zeros = len(data) - len(body)
    c = crc ^ 0xFFFFFFFF
    tab = _CRC_TAB
    for b in body:
        c = tab[(c ^ b) & 0xFF] ^ (c >> 8)
    if zeros:
        if _ZERO_OPS is None:
            _ZERO_OPS = _zero_byte_operators()
        k = 0
        while zeros:
            if zeros & 1:
                c = _gf2_times(_ZERO_OPS[k], c)
            zeros >>= 1
            k += 1
    return c ^ 0xFFFFFFFF


def checksummed(buf, field_off=4):
    """Return buf with the u32 checksum at field_off recomputed."""
    b = bytearray(buf)
    b[field_off:field_off + 4] = b"\0\0\0\0"
    struct.pack_into("<I", b, field_off, crc32c(b))
    return bytes(b)


def checksum_ok(buf, field_off=4):
    want = struct.unpack_from("<I", buf, field_off)[0]
    b = bytearray(buf)
    b[field_off:field_off + 4] = b"\0\0\0\0"
    return crc32c(b) == want

# --- GUIDs: u32, u16, u16 little-endian, then 8 bytes as they are --------

def guid_bytes(s):
    return uuid.UUID(s.strip("{}")).bytes_le


def guid_str(b):
    return str(uuid.UUID(bytes_le=bytes(b))).upper()

# --- Parsing -------------------------------------------------------------

class VhdxError(Exception):
    pass


def parse_header(buf):
    sig = buf[0:4]
    seq, = struct.unpack_from("<Q", buf, 8)
    lv, ver, loglen, logoff = struct.unpack_from("<HHIQ", buf, 64)
    return {
        "valid": sig == b"head" and checksum_ok(buf[:HEADER_SIZE]),
        "sequence": seq,
        "file_write_guid": guid_str(buf[16:32]),
        "data_write_guid": guid_str(buf[32:48]),
        "log_guid": guid_str(buf[48:64]),
        "log_version": lv,
        "version": ver,
        "log_length": loglen,
        "log_offset": logoff,
    }


def parse_region_table(buf):
    if buf[0:4] != b"regi" or not checksum_ok(buf[:REGION_SIZE]):
        return None
    count, = struct.unpack_from("<I", buf, 8)
    if count > 2047:
        return None
    ents = []
    for i in range(count):
        o = 16 + 32 * i
        off, length, flags = struct.unpack_from("<QII", buf, o + 16)
        ents.append({"guid": guid_str(buf[o:o + 16]), "file_offset": off,
                     "length": length, "required": bool(flags & 1),
                     "entry_offset": o})
    return ents


class Vhdx:
    """Parse the structures of a VHDX file (no log replay)."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data_head = f.read(1 * MiB)
            f.seek(0, 2)
            self.file_size = f.tell()
        h = self.data_head
        if h[0:8] != b"vhdxfile":
            raise VhdxError("no vhdxfile signature")
        self.headers = [parse_header(h[o:o + HEADER_SIZE]) for o in HEADER_OFF]
        valid = [i for i in (0, 1) if self.headers[i]["valid"]]
        if not valid:
            raise VhdxError("no valid header")
        self.current = max(valid, key=lambda i: self.headers[i]["sequence"])
        self.header = self.headers[self.current]
        self.region_tables = [parse_region_table(h[o:o + REGION_SIZE])
                              for o in REGION_OFF]
        rt = self.region_tables[0] or self.region_tables[1]
        if rt is None:
            raise VhdxError("no valid region table")
        self.regions = rt
        self.bat_region = self.metadata_region = None
        for r in rt:
            if r["guid"] == BAT_GUID:
                self.bat_region = r
            elif r["guid"] == METADATA_GUID:
                self.metadata_region = r
        if not self.bat_region or not self.metadata_region:
            raise VhdxError("BAT or metadata region missing")
        self._parse_metadata()
        self._parse_bat()

    def _read(self, off, length):
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(length)

    def _parse_metadata(self):
        mr = self.metadata_region
        tab = self._read(mr["file_offset"], 64 * KiB)
        if tab[0:8] != b"metadata":
            raise VhdxError("bad metadata signature")
        count, = struct.unpack_from("<H", tab, 10)
        self.metadata = {}
        self.metadata_entries = []
        for i in range(count):
            o = 32 + 32 * i
            gid = guid_str(tab[o:o + 16])
            off, length, flags = struct.unpack_from("<III", tab, o + 16)
            ent = {"guid": gid, "offset": off, "length": length,
                   "flags": flags, "entry_offset": o,
                   "file_offset": mr["file_offset"] + off,
                   "name": MD_NAMES.get(gid, "unknown")}
            self.metadata_entries.append(ent)
            self.metadata[gid] = ent
        val = lambda g: self._read(self.metadata[g]["file_offset"],
                                   self.metadata[g]["length"])
        self.block_size, fpflags = struct.unpack("<II", val(MD_FILE_PARAMS)[:8])
        self.leave_allocated = bool(fpflags & 1)
        self.has_parent = bool(fpflags & 2)
        self.virtual_size, = struct.unpack("<Q", val(MD_VDISK_SIZE)[:8])
        self.logical_sector_size, = struct.unpack("<I", val(MD_LSS)[:4])
        self.physical_sector_size, = struct.unpack("<I", val(MD_PSS)[:4])
        self.locator = None
        if MD_PARENT_LOCATOR in self.metadata:
            self.locator = parse_locator(val(MD_PARENT_LOCATOR))

    def _parse_bat(self):
        bs, lss = self.block_size, self.logical_sector_size
        self.chunk_ratio = (1 << 23) * lss // bs
        self.payload_blocks = -(-self.virtual_size // bs)
        n, cr = self.payload_blocks, self.chunk_ratio
        if self.has_parent:
            self.bat_entries = -(-n // cr) * (cr + 1)
        else:
            self.bat_entries = n + (n - 1) // cr
        raw = self._read(self.bat_region["file_offset"], self.bat_entries * 8)
        self.bat = list(struct.unpack("<%dQ" % (len(raw) // 8), raw))

    def payload_index(self, j):
        return j + j // self.chunk_ratio

    def bitmap_index(self, c):
        return c * (self.chunk_ratio + 1) + self.chunk_ratio

    def describe(self):
        return {
            "path": self.path,
            "file_size": self.file_size,
            "current_header": self.current,
            "headers": self.headers,
            "regions": self.regions,
            "metadata_entries": self.metadata_entries,
            "metadata_table_offset": self.metadata_region["file_offset"],
            "bat_offset": self.bat_region["file_offset"],
            "block_size": self.block_size,
            "virtual_size": self.virtual_size,
            "logical_sector_size": self.logical_sector_size,
            "physical_sector_size": self.physical_sector_size,
            "has_parent": self.has_parent,
            "chunk_ratio": self.chunk_ratio,
            "payload_blocks": self.payload_blocks,
            "bat_entries": self.bat_entries,
            "locator": self.locator,
            "payload": [{"block": j, "state": self.bat[self.payload_index(j)] & 7,
                         "file_offset": (self.bat[self.payload_index(j)] >> 20) << 20}
                        for j in range(self.payload_blocks)
                        if self.bat[self.payload_index(j)] & 7],
        }


def parse_locator(buf):
    if guid_str(buf[0:16]) != LOCATOR_TYPE:
        raise VhdxError("unknown parent locator type")
    count, = struct.unpack_from("<H", buf, 18)
    kv = {}
    for i in range(count):
        ko, vo, kl, vl = struct.unpack_from("<IIHH", buf, 20 + 12 * i)
        k = buf[ko:ko + kl].decode("utf-16-le")
        kv[k] = buf[vo:vo + vl].decode("utf-16-le")
    return kv


def build_locator(pairs):
    """pairs: list of (key, value) strings -> parent locator bytes."""
    hdr = bytearray(guid_bytes(LOCATOR_TYPE))
    hdr += struct.pack("<HH", 0, len(pairs))
    table = bytearray()
    strings = bytearray()
    base = 20 + 12 * len(pairs)
    for k, v in pairs:
        kb, vb = k.encode("utf-16-le"), v.encode("utf-16-le")
        ko = base + len(strings)
        strings += kb
        vo = base + len(strings)
        strings += vb
        table += struct.pack("<IIHH", ko, vo, len(kb), len(vb))
    return bytes(hdr + table + strings)

# --- Patch helpers (used by the damage tests) ----------------------------

def patch(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def read(path, off, length):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(length)


def refresh_region_checksum(path, which):
    off = REGION_OFF[which]
    patch(path, off, checksummed(read(path, off, REGION_SIZE)))


def refresh_header_checksum(path, which):
    off = HEADER_OFF[which]
    patch(path, off, checksummed(read(path, off, HEADER_SIZE)))


def overlay(path, raw):
    """Write onto RAW (which already holds the parent's bytes, or zeros)
    what image PATH supplies itself: FULLY_PRESENT blocks, the sectors of
    PARTIALLY_PRESENT blocks whose bitmap bit is set, and zeros for ZERO
    blocks.  Reads the file as it is (no log replay)."""
    v = Vhdx(path)
    bs, lss, cr = v.block_size, v.logical_sector_size, v.chunk_ratio
    spb = bs // lss
    with open(path, "rb") as f, open(raw, "r+b") as out:
        for j in range(v.payload_blocks):
            e = v.bat[v.payload_index(j)]
            st, foff = e & 7, (e >> 20) << 20
            voff = j * bs
            n = min(bs, v.virtual_size - voff)
            if st == NOT_PRESENT:
                continue
            if st in (ZERO, UNDEFINED, UNMAPPED, 5):
                if v.has_parent and st != ZERO:
                    raise VhdxError("block %d: state %d in a differencing "
                                    "disk is not modelled" % (j, st))
                out.seek(voff)
                out.write(bytes(n))
                continue
            f.seek(foff)
            data = f.read(n)
            if len(data) != n:
                raise VhdxError("block %d: payload past end of file" % j)
            if st == FULLY_PRESENT:
                out.seek(voff)
                out.write(data)
            elif st == PARTIALLY_PRESENT and v.has_parent:
                sb = v.bat[v.bitmap_index(j // cr)]
                if sb & 7 != SB_PRESENT:
                    raise VhdxError("block %d: no sector bitmap" % j)
                f.seek(((sb >> 20) << 20) + (j % cr) * spb // 8)
                bm = f.read(spb // 8)
                for s in range(n // lss):
                    if bm[s >> 3] >> (s & 7) & 1:
                        out.seek(voff + s * lss)
                        out.write(data[s * lss:(s + 1) * lss])
            else:
                raise VhdxError("block %d: unknown state %d" % (j, st))
