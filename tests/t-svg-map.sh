#!/bin/bash
# t-svg-map.sh - the picture of a disk (issue 13): `verify --map`,
# `push --map` and `job show --map` write an SVG that xmllint accepts and
# rsvg-convert renders; the rendered PNG's pixels are read back at every
# cell and checked against the class the disks' own bytes give that cell
# (qemu-img convert to raw, compared here in Python): differing, identical
# or zero on both sides.  Also a 4 TiB sparse disk and a 1 MiB one (cell
# count and file size bounded), a job's map after the agent restarted,
# and --map in the wrong place.
. "$(dirname "$0")/lib.sh"

[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built"; finish; }
for t in qemu-img qemu-io python3; do
	command -v $t >/dev/null || skip "$t not installed (tools/install-deps)"
done
command -v xmllint >/dev/null || skip "xmllint not installed (libxml2-utils)"
command -v rsvg-convert >/dev/null || skip "rsvg-convert not installed (librsvg2-bin)"

S=$SCRATCH
cd "$S" || exit 1
M=$((1 << 20))

# write IMG OFF LEN FILE: LEN bytes of FILE at OFF of a VHDX (qemu-io).
write() {
	qemu-io -f vhdx -c "write -q -s $4 $2 $3" "$1" >/dev/null ||
		fail "qemu-io write to $1"
}
rnd() { head -c "$2" /dev/urandom >"$1"; }

# cells.py SVG PNG PANEL raw BLOCK RAW_A RAW_B [PIECE]
# cells.py SVG PNG PANEL spec SIZE DEFAULT OFF:LEN:CLASS...
# For panel PANEL (from 0) of the picture, the class every cell must
# show, against the colour of the PNG pixel at the cell's centre: "raw"
# works it out from the raw bytes compared in BLOCK-byte pieces (what the
# tool compared: verify's block; with PIECE, as push does, a block that
# differs is looked at again in PIECE-byte pieces), "spec" takes a
# SIZE-byte disk of class DEFAULT with the extents given (for a disk too
# large to read here).  A cell is the worst class of what it touches.
# Prints a summary line; exits 1 after the first few mismatches.
cat >"$S/cells.py" <<'EOF'
import re, struct, sys, zlib
import xml.etree.ElementTree as ET

svg, png, panel, mode = sys.argv[1:5]
panel = int(panel)
COLORS = {"diff": (0xe8, 0x41, 0x2c), "same": (0x4e, 0x79, 0xa7),
          "zero": (0xd9, 0xd9, 0xd9), "none": (0xff, 0xff, 0xff)}
RANK = {"none": 0, "zero": 1, "same": 2, "diff": 3}


def read_png(path):
    """Width, height and rows of RGB(A) pixels of an 8-bit PNG."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit("not a PNG")
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    if depth != 8 or ctype not in (2, 6):
        sys.exit("PNG colour type %d depth %d not handled" % (ctype, depth))
    bpp = 4 if ctype == 6 else 3
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], None
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        up = prev or bytearray(stride)
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = up[i], up[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa_, pb_, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa_ <= pb_ and pa_ <= pc else b if pb_ <= pc else c
                line[i] = (line[i] + pr) & 255
            elif f != 0:
                sys.exit("PNG filter %d" % f)
        rows.append(line)
        prev = line
    return w, h, bpp, rows


def colour_class(px):
    for k, c in COLORS.items():
        if all(abs(px[i] - c[i]) <= 6 for i in range(3)):
            return k
    return "other %02x%02x%02x" % tuple(px[:3])


grids = [g for g in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}g")
         if g.get("class") == "grid"]
g = grids[panel]
cell, ncells, cols = (int(g.get(k)) for k in ("data-cell-bytes", "data-cells",
                                              "data-columns"))
gx, gy, cpx = (int(g.get(k)) for k in ("data-x", "data-y", "data-cell-px"))
w, h, bpp, rows = read_png(png)

want = ["none"] * ncells


def mark(off, n, k):
    for c in range(off // cell, (off + n - 1) // cell + 1):
        if RANK[k] > RANK[want[c]]:
            want[c] = k


if mode == "raw":
    block, pa, pb = int(sys.argv[5]), sys.argv[6], sys.argv[7]
    piece = int(sys.argv[8]) if len(sys.argv) > 8 else block

    def kind(a, b):
        if a != b:
            return "diff"
        return "zero" if a.count(0) == len(a) else "same"

    with open(pa, "rb") as fa, open(pb, "rb") as fb:
        off = 0
        while True:
            a, b = fa.read(block), fb.read(block)
            if not a:
                break
            if a == b:
                mark(off, len(a), kind(a, b))
            else:
                for i in range(0, len(a), piece):
                    mark(off + i, len(a[i:i + piece]),
                         kind(a[i:i + piece], b[i:i + piece]))
            off += len(a)
        size = off
else:
    size, default = int(sys.argv[5]), sys.argv[6]
    for c in range(ncells):
        want[c] = default
    for e in sys.argv[7:]:
        o, n, k = e.split(":")
        mark(int(o), int(n), k)
if (size + cell - 1) // cell != ncells:
    sys.exit("the picture has %d cells of %d bytes for a %d-byte disk" %
             (ncells, cell, size))
bad, seen = 0, {}
for c in range(ncells):
    x = gx + (c % cols) * cpx + cpx // 2
    y = gy + (c // cols) * cpx + cpx // 2
    got = colour_class(rows[y][x * bpp:x * bpp + 3])
    seen[got] = seen.get(got, 0) + 1
    if got != want[c]:
        bad += 1
        if bad <= 5:
            print("    cell %d (offset %d): shows %s, want %s" %
                  (c, c * cell, got, want[c]))
print("%d cells of %d bytes, %s%s" % (ncells, cell,
      ", ".join("%s %d" % kv for kv in sorted(seen.items())),
      "" if not bad else ", %d wrong" % bad))
sys.exit(1 if bad else 0)
EOF

# render SVG PNG: xmllint accepts it and rsvg-convert makes a PNG of the
# size the SVG says.
render() {
	xmllint --noout "$1" 2>"$1.xmllint" || {
		fail "xmllint rejects $1: $(head -n 3 "$1.xmllint")"
		return 1
	}
	rsvg-convert "$1" -o "$2" 2>"$1.rsvg" || {
		fail "rsvg-convert cannot render $1: $(head -n 3 "$1.rsvg")"
		return 1
	}
	ok "$1: well-formed XML, rendered to $2 ($(stat -c %s "$1") bytes of SVG)"
}

# cells DESC SVG PNG PANEL BLOCK A B: the PNG's cells against the bytes.
cells() {
	local d=$1 out
	shift
	if out=$(python3 "$S/cells.py" "$@"); then
		ok "$d: $(tail -n 1 <<<"$out")"
	else
		fail "$d"
		echo "$out" | head -n 8
	fi
}

raw_of() { qemu-img convert -O raw "$1" "$2" || fail "qemu-img convert $1"; }

# ---------------------------------------------------------------------------
say "verify --map: a 64 MiB pair with known differences"
"$HVRESYNC" create a.vhdx 64M >/dev/null && "$HVRESYNC" create b.vhdx 64M >/dev/null ||
	fail "hvresync create"
rnd base 8M
write a.vhdx 0 8M base
write b.vhdx 0 8M base
rnd d1 256K
write b.vhdx $((3 * M + 256 * 1024)) 256K d1 # inside the shared data
rnd d2 4K
write b.vhdx $((40 * M)) 4K d2 # where A has nothing
write a.vhdx $((50 * M)) 4K d2 # the same data on both sides, far away
write b.vhdx $((50 * M)) 4K d2
head -c 64K /dev/zero >z64
write a.vhdx $((60 * M)) 64K z64 # allocated zeros on one side
raw_of a.vhdx a.raw
raw_of b.vhdx b.raw
"$HVRESYNC" verify --map v.svg a.vhdx b.vhdx >v.out 2>v.err
RC=$?
check "verify --map exits 1 (the disks differ)" test "$RC" = 1
check "verify still prints its extents" grep -q "^differ offset=$((3 * M + 256 * 1024)) length=262144" v.out
if render v.svg v.png; then
	cells "verify --map, every cell against the bytes (64 KiB blocks)" \
		v.svg v.png 0 raw 65536 a.raw b.raw
	check "the SVG names both disks and the size" \
		grep -q 'a.vhdx vs b.vhdx: 64 MiB (67108864 bytes)' v.svg
	check "the SVG has the legend" grep -q 'unallocated or zero on both sides' v.svg
	check "the totals: 5 differing blocks of 64 KiB" \
		grep -q 'differing: 320 KiB (327680 bytes)' v.svg
	check "the axis shows offsets in human units" grep -q '>8 MiB<' v.svg
fi
# identical disks: a picture without a differing cell, exit 0
"$HVRESYNC" verify --map same.svg a.vhdx a.vhdx >/dev/null 2>&1
check "verify --map of identical disks exits 0" test $? = 0
render same.svg same.png && cells "identical disks: no differing cell" \
	same.svg same.png 0 raw 65536 a.raw a.raw
# an unwritable map is an error naming the file, after the report
expect_error "verify --map into a missing folder" "$S/nowhere/x.svg" "cannot write" -- \
	"$HVRESYNC" verify --map "$S/nowhere/x.svg" a.vhdx b.vhdx

# ---------------------------------------------------------------------------
say "a 4 TiB sparse disk and a 1 MiB one"
"$HVRESYNC" create big-a.vhdx 4T >/dev/null && "$HVRESYNC" create big-b.vhdx 4T >/dev/null ||
	fail "hvresync create 4T"
rnd r1 1M
rnd r2 1M
write big-a.vhdx $((1 << 40)) 1M r1
write big-b.vhdx $((1 << 40)) 1M r1
write big-b.vhdx $((3 << 40)) 1M r2
timeout 120 "$HVRESYNC" verify --map big.svg big-a.vhdx big-b.vhdx >/dev/null 2>big.err
check "verify --map of a 4 TiB pair exits 1" test $? = 1
if render big.svg big.png; then
	cells "4 TiB: 1 MiB identical at 1 TiB, 1 MiB differing at 3 TiB" \
		big.svg big.png 0 spec $((4 << 40)) zero \
		$((1 << 40)):$M:same $((3 << 40)):$M:diff
	check "4 TiB: at most 4096 cells" grep -q 'data-cells="4096"' big.svg
	check "4 TiB: the SVG stays under 64 KiB" test "$(stat -c %s big.svg)" -lt 65536
	check "4 TiB: the size in the title" grep -q '4 TiB (4398046511104 bytes)' big.svg
fi
"$HVRESYNC" create tiny-a.vhdx 1M >/dev/null && "$HVRESYNC" create tiny-b.vhdx 1M >/dev/null ||
	fail "hvresync create 1M"
rnd t1 4K
write tiny-b.vhdx $((512 * 1024)) 4K t1
"$HVRESYNC" verify --block-size 4K --map tiny.svg tiny-a.vhdx tiny-b.vhdx >/dev/null 2>&1
check "verify --map of a 1 MiB pair exits 1" test $? = 1
if render tiny.svg tiny.png; then
	raw_of tiny-a.vhdx tiny-a.raw
	raw_of tiny-b.vhdx tiny-b.raw
	cells "1 MiB: one 4 KiB cell differs" tiny.svg tiny.png 0 raw 4096 \
		tiny-a.raw tiny-b.raw
	check "1 MiB: 256 cells of 4 KiB" grep -q '256 cells of 4 KiB' tiny.svg
fi

# ---------------------------------------------------------------------------
say "push --map: what was sent, to hvresync serve"
STATE=$S/serve-state
mkdir -p "$STATE"
. "$TOP/tests/helpers/serve.sh"
make_key "$S/key"
cp a.vhdx r.vhdx # the recovery disk starts as A; B is pushed onto it
if start_server "$S/serve.log" --psk-file "$S/key" --export "R=$S/r.vhdx"; then
	push R b.vhdx --map p.svg
	check "push --map exits 0" test "$PUSH_RC" = 0
	if render p.svg p.png; then
		# push compares 64 KiB blocks, then the 4 KiB pieces of
		# those that differ: a cell is differing when one of its
		# pieces was sent
		cells "push --map, every cell against the bytes (4 KiB pieces sent)" \
			p.svg p.png 0 raw 65536 b.raw a.raw 4096
		SENT=$(sed -n 's/.*differing (sent): [^(]*(\([0-9]*\) bytes).*/\1/p' p.svg)
		check "push --map: the picture's differing total ($SENT) is push's bytes_different" \
			test "$SENT" = "$(jget "$S/R.json" bytes_different)"
	fi
	push R b.vhdx --map p2.svg
	check "a second push --map exits 0" test "$PUSH_RC" = 0
	render p2.svg p2.png && cells "a second push sends nothing: no differing cell" \
		p2.svg p2.png 0 raw 65536 b.raw b.raw
	expect_error "push --map with --check" "--map" -- \
		"$HVRESYNC" push --check --map x.svg --psk-file "$S/key" b.vhdx "127.0.0.1:$PORT/R"
	stop_server
fi

# ---------------------------------------------------------------------------
say "job show --map: an agent's job, also after the agent restarted"
. "$TOP/tests/helpers/agent.sh"
mkdir -p jp jr
cp b.vhdx jp/os.vhdx
cp a.vhdx jr/os.vhdx
"$HVRESYNC" create jp/data.vhdx 32M >/dev/null && "$HVRESYNC" create jr/data.vhdx 32M >/dev/null ||
	fail "hvresync create 32M"
rnd dd 2M
write jp/data.vhdx $((4 * M)) 2M dd
raw_of jr/data.vhdx jr-data.raw
raw_of jp/data.vhdx jp-data.raw
cp "$S/key" "$S/psk"
PP=$(free_port)
RP=$(free_port)
{ agent_section p "$PP"; cat <<EOF
retries = 0

[vm demo]
role = primary
replica = 127.0.0.1:$RP
disk = $S/jp/os.vhdx
disk = $S/jp/data.vhdx
EOF
} >p.conf
{ agent_section r "$RP"; cat <<EOF

[vm demo]
role = replica
disk = $S/jr/os.vhdx
disk = $S/jr/data.vhdx
EOF
} >r.conf
if start_agent r && start_agent p; then
	expect_rv "resync demo" 4096 p demo
	if [ -n "$JOB" ] && wait_job p "$JOB" 90 7; then
		hv p job show --map j.svg "$JOB" >show.out 2>show.err
		check "job show --map exits 0" test $? = 0
		check "job show still prints the job" grep -q "^JobState  *7 (Completed)" show.out
		check "job show keeps the map's extents out of its text" \
			bash -c "! grep -q 'Map=' show.out"
		check "the job's JSON has each disk's differing extents" test \
			"$(hv p job show "$JOB" --json | py "[x['Map']['Differing'] != '' for x in d['Instance']['Disks']]")" = "[True, True]"
		if render j.svg j.png; then
			cells "job show --map, os.vhdx" j.svg j.png 0 raw 65536 \
				b.raw a.raw 4096
			cells "job show --map, data.vhdx" j.svg j.png 1 raw 65536 \
				jp-data.raw jr-data.raw 4096
			check "the picture names the job" grep -q "hvresync job $JOB, VM demo: Completed" j.svg
		fi
		stop_agent p
		if start_agent p; then
			hv p job show --map j2.svg "$JOB" >/dev/null 2>show2.err
			check "job show --map after the agent restarted exits 0" test $? = 0
			check "the map survived the restart: the same SVG" cmp -s j.svg j2.svg
		else
			fail "primary agent did not restart"
		fi
	else
		fail "the job did not complete: $(hv p job show "$JOB" 2>&1 | grep -i error | head -n 3)"
	fi
	expect_error "--map with job list" "--map" -- \
		"$HVRESYNC" job list --map x.svg --control "$(sock p)"
else
	fail "agents did not start"
fi

finish
