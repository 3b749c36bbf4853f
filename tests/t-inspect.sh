#!/bin/bash
# t-inspect.sh - `hvresync inspect`: geometry and type against qemu-img and
# vhdiinfo, block states against qemu-io's writes, partitions against sfdisk
# (fdisk -b 4096 for a 4Kn disk), filesystems against blkid -p on the
# filesystem images themselves, dirty-log handling and the parent chain on
# the Windows samples, and the error contract (exit 2, one line on stderr).
. "$(dirname "$0")/lib.sh"

[ -x "$HVRESYNC" ] || { echo "FAIL: $HVRESYNC not built (make all)"; exit 1; }
for t in qemu-img qemu-io vhdiinfo sfdisk blkid mkfs.ext4 mkfs.vfat python3; do
	command -v "$t" >/dev/null || { echo "FAIL: $t missing (tools/install-deps)"; exit 1; }
done

# pycheck DESC FILE... <<'EOF' python EOF: run the python snippet with the
# files in sys.argv[1:]; it exits non-zero (printing why) on a mismatch.
pycheck() {
	local d=$1; shift
	if python3 - "$@"; then ok "$d"; else fail "$d"; fi
}

# inspect_json OUT ARGS...: run `inspect --json`, keep stdout in OUT; fails
# the test when it does not exit 0 or the output is not one JSON object.
inspect_json() {
	local out=$1; shift
	if ! "$HVRESYNC" inspect --json "$@" >"$out" 2>"$out.err"; then
		fail "inspect --json $* exited non-zero: $(cat "$out.err")"
		return 1
	fi
	python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert isinstance(d, dict)' "$out" ||
		{ fail "inspect --json $* printed no JSON object"; return 1; }
}

# bad_input DESC ARGS...: inspect must exit 2 with nothing on stdout and
# exactly one line on stderr.
bad_input() {
	local d=$1; shift
	local rc
	"$HVRESYNC" inspect "$@" >"$SCRATCH/bad.out" 2>"$SCRATCH/bad.err"
	rc=$?
	if [ $rc -ne 2 ]; then
		fail "$d: exit $rc, expected 2"
	elif [ "$(wc -l <"$SCRATCH/bad.err")" -ne 1 ]; then
		fail "$d: stderr is not one line: $(cat "$SCRATCH/bad.err")"
	elif [ -s "$SCRATCH/bad.out" ]; then
		fail "$d: wrote to stdout"
	else
		ok "$d: $(cat "$SCRATCH/bad.err")"
	fi
}

# ---------------------------------------------------------------------------
say "images made by qemu-img: geometry against qemu-img info and vhdiinfo"
for spec in "dynamic 1M 64M" "dynamic 8M 1G" "dynamic 32M 3G" \
	    "dynamic 256M 10G" "fixed 1M 24M" "fixed 32M 40M"; do
	read -r sub bsize vsize <<<"$spec"
	img=$SCRATCH/q-$sub-$bsize.vhdx
	qemu-img create -q -f vhdx -o "subformat=$sub,block_size=$bsize" "$img" "$vsize" ||
		{ fail "qemu-img create $spec"; continue; }
	qemu-img info --output=json "$img" >"$img.qemu"
	vhdiinfo "$img" >"$img.vhdi"
	sum_before=$(sha256sum <"$img")
	inspect_json "$img.json" "$img" || continue
	pycheck "$spec: size, block size, sectors, type, states" \
		"$img.json" "$img.qemu" "$img.vhdi" "$sub" <<'EOF'
import json, re, sys
j = json.load(open(sys.argv[1])); q = json.load(open(sys.argv[2]))
vhdi = open(sys.argv[3]).read(); want_type = sys.argv[4]
errs = []
def eq(what, got, want):
    if got != want:
        errs.append(f"{what}: got {got!r}, want {want!r}")
eq("virtual_size", j["virtual_size"], q["virtual-size"])
eq("block_size", j["block_size"], q["cluster-size"])
eq("logical_sector_size", j["logical_sector_size"],
   int(re.search(r"Bytes per sector\s*:\s*(\d+)", vhdi).group(1)))
eq("type", j["type"], want_type)
eq("vhdiinfo disk type", re.search(r"Disk type\s*:\s*(\w+)", vhdi).group(1).lower(), want_type)
eq("physical_sector_size in {512,4096}", j["physical_sector_size"] in (512, 4096), True)
eq("log_dirty", j["log_dirty"], False)
eq("parent", j["parent"], None)
eq("partitions", j["partitions"], [])
eq("partition_table", j["partition_table"], None)
blocks = -(-q["virtual-size"] // q["cluster-size"])
st = j["block_states"]
for k in ("not_present", "undefined", "zero", "unmapped",
          "fully_present", "partially_present"):
    if k not in st:
        errs.append(f"block_states lacks {k}")
eq("sum of block_states", sum(st.values()), blocks)
for k in ("path", "file_size", "creator", "headers", "regions", "metadata",
          "parent_locator", "filesystem"):
    if k not in j:
        errs.append(f"missing key {k}")
print("\n".join(errs) if errs else "all match"); sys.exit(1 if errs else 0)
EOF
	check "$spec: inspect leaves the file unchanged" \
		test "$sum_before" = "$(sha256sum <"$img")"
	if "$HVRESYNC" inspect "$img" >"$img.txt" 2>&1 &&
	   grep -q "virtual size .*$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["virtual-size"])' "$img.qemu") bytes" "$img.txt" &&
	   grep -qi "type .*$sub" "$img.txt"; then
		ok "$spec: text output shows size and type"
	else
		fail "$spec: text output: $(head -n 3 "$img.txt")"
	fi
	rm -f "$img"
done

say "block states after qemu-io writes"
img=$SCRATCH/written.vhdx
qemu-img create -q -f vhdx -o subformat=dynamic,block_size=8M "$img" 256M
size0=$(stat -c %s "$img")
# Writes at [0,1M), [100M,112M), [250M,250M+4K): with 8 MiB blocks they touch
# blocks 0, 12, 13 and 31; qemu appends one block to the file for each.
qemu-io -f vhdx -c "write -P 0x5a 0 1M" -c "write -P 0x11 100M 12M" \
	-c "write -P 0x22 250M 4K" "$img" >/dev/null
size1=$(stat -c %s "$img")
if inspect_json "$img.json" "$img"; then
	pycheck "fully_present counts the blocks qemu-io wrote" \
		"$img.json" "$size0" "$size1" <<'EOF2'
import json, sys
j = json.load(open(sys.argv[1])); grown = int(sys.argv[3]) - int(sys.argv[2])
M = 1 << 20; bs = j["block_size"]
written = [(0, M), (100 * M, 12 * M), (250 * M, 4096)]
blocks = {b for off, ln in written for b in range(off // bs, (off + ln - 1) // bs + 1)}
got = j["block_states"]["fully_present"]
print(f"fully_present {got}; blocks written {sorted(blocks)}; file grew {grown // bs} blocks")
sys.exit(0 if got == len(blocks) == grown // bs else 1)
EOF2
fi
rm -f "$img"

# ---------------------------------------------------------------------------
# Partitioned disks: the filesystems are made in files of their own (no loop
# device, no privileges), copied into the raw disk at the partition offsets,
# and the raw disk is converted to VHDX.  sfdisk reads the table of the raw
# file and blkid -p the filesystem files: both independent of our code.

# place FSIMG RAW START_SECTOR
place() { dd if="$1" of="$2" bs=512 seek="$3" conv=notrunc,sparse status=none; }

# fsinfo FILE [OFFSET]: TYPE=, LABEL= and UUID= lines as blkid -p sees them.
fsinfo() {
	local k
	for k in TYPE LABEL UUID; do
		printf '%s=%s\n' "$k" "$(blkid -p ${2:+-O "$2"} -s "$k" -o value "$1" 2>/dev/null)"
	done
}

# compare_disk DESC VHDX RAW FSMAP: FSMAP lines are "PARTNO FSIMG".
compare_disk() {
	local d=$1 vhdx=$2 raw=$3 fsmap=$4 n f k v missing=""
	sfdisk --json "$raw" >"$raw.sfdisk" || { fail "$d: sfdisk --json"; return; }
	while read -r n f; do
		fsinfo "$f" >"$raw.fs$n"
	done <"$fsmap"
	inspect_json "$vhdx.json" "$vhdx" || return
	pycheck "$d: table, starts, sizes, types match sfdisk; filesystems match blkid -p" \
		"$vhdx.json" "$raw.sfdisk" "$raw.fs" <<'EOF2'
import json, os, re, sys
j = json.load(open(sys.argv[1]))
pt = json.load(open(sys.argv[2]))["partitiontable"]
def fsinfo(path):
    if not os.path.exists(path):
        return None
    return {k: v or None for k, v in (l.rstrip("\n").split("=", 1) for l in open(path))}
errs = []
sect = pt.get("sectorsize", 512)
tab = j["partition_table"]
if not tab or tab["type"] != pt["label"]:
    errs.append(f"partition_table {tab}, sfdisk label {pt['label']}")
elif (tab["id"] or "").lower().removeprefix("0x") != pt["id"].lower().removeprefix("0x"):
    errs.append(f"table id {tab['id']} vs sfdisk {pt['id']}")
ours = {p["number"]: p for p in j["partitions"]}
if len(ours) != len(pt["partitions"]):
    errs.append(f"{len(ours)} partitions, sfdisk has {len(pt['partitions'])}")
for sp in pt["partitions"]:
    n = int(re.search(r"(\d+)$", sp["node"]).group(1))
    p = ours.get(n)
    if not p:
        errs.append(f"partition {n} missing"); continue
    if p["start"] != sp["start"] * sect or p["size"] != sp["size"] * sect:
        errs.append(f"p{n}: start/size {p['start']}/{p['size']}, sfdisk {sp['start']*sect}/{sp['size']*sect}")
    if pt["label"] == "dos":
        if not p["type"].startswith("0x") or int(p["type"], 16) != int(sp["type"], 16):
            errs.append(f"p{n}: type {p['type']}, sfdisk {sp['type']}")
    else:
        if p["type"].lower() != sp["type"].lower():
            errs.append(f"p{n}: type {p['type']}, sfdisk {sp['type']}")
        if p.get("part_uuid", "").lower() != sp["uuid"].lower():
            errs.append(f"p{n}: partuuid {p.get('part_uuid')}, sfdisk {sp['uuid']}")
        if p.get("name", "") != sp.get("name", ""):
            errs.append(f"p{n}: name {p.get('name')!r}, sfdisk {sp.get('name')!r}")
    want = fsinfo(f"{sys.argv[3]}{n}")
    if want:
        for ours_k, theirs_k in (("fs_type", "TYPE"), ("label", "LABEL"), ("uuid", "UUID")):
            if p.get(ours_k) != want[theirs_k]:
                errs.append(f"p{n}: {ours_k} {p.get(ours_k)!r}, blkid -p {want[theirs_k]!r}")
    elif p.get("fs_type"):
        errs.append(f"p{n}: reports {p['fs_type']} where there is none")
if j["filesystem"] is not None:
    errs.append(f"whole-disk filesystem {j['filesystem']} on a partitioned disk")
print("\n".join(errs) if errs else f"{len(ours)} partitions match")
sys.exit(1 if errs else 0)
EOF2
	"$HVRESYNC" inspect "$vhdx" >"$vhdx.txt" 2>&1
	while read -r n f; do
		while IFS='=' read -r k v; do
			[ -n "$v" ] && ! grep -qF -- "$v" "$vhdx.txt" && missing="$missing p$n:$k=$v"
		done <"$raw.fs$n"
	done <"$fsmap"
	grep -q "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["partitiontable"]["label"])' "$raw.sfdisk")" "$vhdx.txt" ||
		missing="$missing table-type"
	if [ -z "$missing" ]; then ok "$d: text output names them"; else fail "$d: text output lacks$missing"; fi
}

say "MBR disk: primary ext4 and vfat, logical ext4 and vfat deep in an extended partition"
raw=$SCRATCH/mbr.raw
truncate -s 512M "$raw"
sfdisk -q "$raw" <<'EOF' || fail "sfdisk (MBR)"
label: dos
label-id: 0x1234abcd
start=2048, size=40960, type=83
start=43008, size=61440, type=c
start=104448, type=5
start=614400, size=40960, type=83
start=757760, size=290816, type=b
EOF
mkfs.ext4 -q -F -L hvr-root "$SCRATCH/p1.img" 20M >/dev/null
mkfs.vfat -n HVRBOOT -C "$SCRATCH/p2.img" $((61440 / 2)) >/dev/null
mkfs.ext4 -q -F -L hvr-logical "$SCRATCH/p5.img" 20M >/dev/null
# The last partition ends at the end of the disk: its tail window is the
# disk's tail window.
mkfs.vfat -F 32 -n HVRLAST -C "$SCRATCH/p6.img" $((290816 / 2)) >/dev/null
place "$SCRATCH/p1.img" "$raw" 2048
place "$SCRATCH/p2.img" "$raw" 43008
place "$SCRATCH/p5.img" "$raw" 614400
place "$SCRATCH/p6.img" "$raw" 757760
printf '1 %s\n2 %s\n5 %s\n6 %s\n' "$SCRATCH/p1.img" "$SCRATCH/p2.img" \
	"$SCRATCH/p5.img" "$SCRATCH/p6.img" >"$SCRATCH/mbr.fs"
qemu-img convert -f raw -O vhdx -o subformat=dynamic "$raw" "$SCRATCH/mbr.vhdx"
compare_disk "MBR" "$SCRATCH/mbr.vhdx" "$raw" "$SCRATCH/mbr.fs"
rm -f "$raw" "$SCRATCH"/p?.img "$SCRATCH/mbr.vhdx"

say "GPT disk: EFI vfat, Linux ext4, Microsoft basic data (NTFS when mkntfs exists)"
raw=$SCRATCH/gpt.raw
truncate -s 300M "$raw"
sfdisk -q "$raw" <<'EOF' || fail "sfdisk (GPT)"
label: gpt
label-id: 5C3F7A1E-2B4D-4E6F-9A8B-1C2D3E4F5A6B
start=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0, name="EFI system partition"
start=67584, size=262144, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=11111111-2222-4333-8444-555555555555, name="hvr data"
start=329728, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="Basic data partition"
EOF
mkfs.vfat -n HVREFI -C "$SCRATCH/g1.img" $((65536 / 2)) >/dev/null
mkfs.ext4 -q -F -L "hvr data fs" "$SCRATCH/g2.img" 128M >/dev/null
place "$SCRATCH/g1.img" "$raw" 2048
place "$SCRATCH/g2.img" "$raw" 67584
printf '1 %s\n2 %s\n' "$SCRATCH/g1.img" "$SCRATCH/g2.img" >"$SCRATCH/gpt.fs"
if command -v mkntfs >/dev/null; then
	# Partition 3 runs to the last usable sector, next to the backup GPT.
	size=$(sfdisk --json "$raw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][2]["size"])')
	truncate -s $((size * 512)) "$SCRATCH/g3.img"
	mkntfs -q -F -Q -L "Windows Data" "$SCRATCH/g3.img" >/dev/null 2>&1
	place "$SCRATCH/g3.img" "$raw" 329728
	printf '3 %s\n' "$SCRATCH/g3.img" >>"$SCRATCH/gpt.fs"
else
	echo "SKIP (part): mkntfs missing (package ntfs-3g), GPT partition 3 left empty"
fi
qemu-img convert -f raw -O vhdx -o subformat=dynamic,block_size=1M "$raw" "$SCRATCH/gpt.vhdx"
compare_disk "GPT" "$SCRATCH/gpt.vhdx" "$raw" "$SCRATCH/gpt.fs"
rm -f "$raw" "$SCRATCH"/g?.img "$SCRATCH/gpt.vhdx"

say "4096-byte logical sectors: GPT at byte 4096, counted in 4 KiB sectors"
# qemu-img cannot make 4Kn VHDX; tests/helpers/mkvhdx.py writes a fixed one
# and tells where each block lives in the file; the disk's raw bytes (a GPT
# laid out by fdisk -b 4096, an ext4 made in its own file) go there.
mkvhdx=$TOP/tests/helpers/mkvhdx.py
if [ -f "$mkvhdx" ] && command -v fdisk >/dev/null; then
	raw=$SCRATCH/4k.raw img=$SCRATCH/4k.vhdx
	truncate -s 64M "$raw"
	printf 'g\nn\n1\n256\n+16M\nn\n2\n\n\nw\n' | fdisk -b 4096 "$raw" >/dev/null 2>&1
	fdisk -b 4096 -l -o Device,Start,Sectors,Type-UUID,UUID "$raw" >"$raw.fdisk"
	mkfs.ext4 -q -F -b 4096 -L four-k "$SCRATCH/4k-p1.img" 16M >/dev/null
	place "$SCRATCH/4k-p1.img" "$raw" $((256 * 8))
	fsinfo "$SCRATCH/4k-p1.img" >"$raw.fs1"
	if python3 "$mkvhdx" base --out "$img" --size 64M --block-size 1M \
		--lss 4096 --pss 4096 --fixed &&
	   python3 "$mkvhdx" info "$img" >"$img.info" &&
	   python3 - "$raw" "$img" "$img.info" <<'EOF'
import json, sys
raw, img, info = open(sys.argv[1], "rb"), open(sys.argv[2], "r+b"), json.load(open(sys.argv[3]))
bs = info["block_size"]
for b in info["payload"]:
    raw.seek(b["block"] * bs); img.seek(b["file_offset"]); img.write(raw.read(bs))
EOF
	then
		inspect_json "$img.json" "$img" &&
		pycheck "4Kn: partitions match fdisk -b 4096, ext4 matches blkid -p" \
			"$img.json" "$raw.fdisk" "$raw.fs1" "$raw" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
want = []
for line in open(sys.argv[2]):
    f = line.split()
    if f and f[0].startswith(sys.argv[4]):
        want.append((int(f[1]) * 4096, int(f[2]) * 4096, f[3].lower(), f[4].lower()))
got = [(p["start"], p["size"], p["type"].lower(), p.get("part_uuid", "").lower()) for p in j["partitions"]]
fs = {k: v or None for k, v in (l.rstrip("\n").split("=", 1) for l in open(sys.argv[3]))}
p1 = j["partitions"][0] if j["partitions"] else {}
gotfs = (p1.get("fs_type"), p1.get("label"), p1.get("uuid"))
wantfs = (fs["TYPE"], fs["LABEL"], fs["UUID"])
print(f"sectors {j['logical_sector_size']}\nours  {got} {gotfs}\nwant  {want} {wantfs}")
sys.exit(0 if j["logical_sector_size"] == 4096 and got == want and len(want) == 2
         and gotfs == wantfs else 1)
EOF
	else
		fail "4Kn: could not build the image with $mkvhdx"
	fi
	rm -f "$raw" "$img" "$SCRATCH/4k-p1.img"
else
	echo "SKIP (part): tests/helpers/mkvhdx.py or fdisk missing, no 4Kn check"
fi

say "filesystem on the whole disk, no partition table"
raw=$SCRATCH/whole.raw
mkfs.ext4 -q -F -L hvr-whole "$raw" 48M >/dev/null
fsinfo "$raw" >"$raw.blkid"
qemu-img convert -f raw -O vhdx -o subformat=fixed "$raw" "$SCRATCH/whole.vhdx"
if inspect_json "$SCRATCH/whole.json" "$SCRATCH/whole.vhdx"; then
	pycheck "whole-disk ext4: partitions [], table null, fs matches blkid -p" \
		"$SCRATCH/whole.json" "$raw.blkid" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
b = {k: v or None for k, v in (l.rstrip("\n").split("=", 1) for l in open(sys.argv[2]))}
f = j["filesystem"] or {}
got = (j["partitions"], j["partition_table"], f.get("fs_type"), f.get("label"), f.get("uuid"))
want = ([], None, b["TYPE"], b["LABEL"], b["UUID"])
print(f"got {got}, want {want}")
sys.exit(0 if got == want else 1)
EOF
fi
rm -f "$raw" "$SCRATCH/whole.vhdx"

# ---------------------------------------------------------------------------
say "bad input"
bad_input "nonexistent file" "$SCRATCH/does-not-exist.vhdx"
head -c 2M /dev/zero >"$SCRATCH/zeros.bin"
bad_input "2 MiB of zeros" "$SCRATCH/zeros.bin"
head -c 100 /dev/urandom >"$SCRATCH/short.bin"
bad_input "100 random bytes" "$SCRATCH/short.bin"
bad_input "a directory" "$SCRATCH"
bad_input "unknown option" --frobnicate "$SCRATCH/zeros.bin"
bad_input "unknown short option" -x "$SCRATCH/zeros.bin"
bad_input "no IMAGE" --json
bad_input "two IMAGEs" "$SCRATCH/zeros.bin" "$SCRATCH/zeros.bin"
check "--help exits 0" "$HVRESYNC" inspect --help

# ---------------------------------------------------------------------------
if [ ! -d "$SAMPLES" ]; then
	echo "SKIP: ../shared/samples not found (the Windows-made sample checks did not run)"
	finish
fi

say "Windows-made samples: geometry"
# NAME TYPE VIRTUAL_SIZE BLOCK_SIZE LOGICAL PHYSICAL, from samples/README.md
while read -r name type vsize bsize lss pss; do
	img=$(unpack_sample "$name")
	inspect_json "$img.json" "$img" || continue
	pycheck "$name: $type, $vsize bytes, $bsize blocks, $lss/$pss" \
		"$img.json" "$type" "$vsize" "$bsize" "$lss" "$pss" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
got = [j["type"], j["virtual_size"], j["block_size"], j["logical_sector_size"], j["physical_sector_size"]]
want = [sys.argv[2]] + [int(x) if x != "-" else got[i + 1] for i, x in enumerate(sys.argv[3:])]
print(f"got {got}, want {want}")
sys.exit(0 if got == want else 1)
EOF
	if [ "$type" != fixed ] && qemu-img info --output=json "$img" >"$img.qemu" 2>/dev/null; then
		pycheck "$name: qemu-img info agrees" "$img.json" "$img.qemu" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1])); q = json.load(open(sys.argv[2]))
sys.exit(0 if (j["virtual_size"], j["block_size"]) == (q["virtual-size"], q["cluster-size"]) else 1)
EOF
	fi
	rm -f "$img"
done <<'EOF'
qemu-test-disk2vhd.vhdx.bz2 dynamic 268435456 2097152 - -
qemu-iotest-dynamic-1G.vhdx.bz2 dynamic 1073741824 33554432 512 4096
dissect-fixed.vhdx.gz fixed 10485760 2097152 - -
dissect-dynamic.vhdx.gz dynamic 10485760 33554432 - -
coreos-config2_base.vhdx.bz2 dynamic 104857600 33554432 - -
EOF

say "Windows-made NTFS and FAT32 volumes against blkid -p on qemu's raw conversion"
for name in dissect-fixed.vhdx.gz coreos-config2_base.vhdx.bz2; do
	img=$(unpack_sample "$name")
	qemu-img convert -O raw "$img" "$img.raw"
	start=$(sfdisk --json "$img.raw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][0]["start"])')
	fsinfo "$img.raw" $((start * 512)) >"$img.blkid"
	if inspect_json "$img.json" "$img"; then
		pycheck "$name: first partition's filesystem matches blkid -p" \
			"$img.json" "$img.blkid" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
b = {k: v or None for k, v in (l.rstrip("\n").split("=", 1) for l in open(sys.argv[2]))}
p = j["partitions"][0]
got = (p.get("fs_type"), p.get("label"), p.get("uuid"))
want = (b["TYPE"], b["LABEL"], b["UUID"])
print(f"got {got}, want {want}")
sys.exit(0 if got == want and want[0] else 1)
EOF
	fi
	rm -f "$img" "$img.raw"
done

say "dirty log (discutils-vhdx-log-replay): replay in memory, file untouched"
img=$(unpack_sample discutils-vhdx-log-replay.zip)
sum_before=$(sha256sum <"$img")
# Independent view of the replayed disk: qemu replays the log on a copy.
cp "$img" "$SCRATCH/qemu-replayed.vhdx"
qemu-img check -q -r all "$SCRATCH/qemu-replayed.vhdx" >/dev/null 2>&1
qemu-img convert -O raw "$SCRATCH/qemu-replayed.vhdx" "$SCRATCH/replayed.raw"
sfdisk --json "$SCRATCH/replayed.raw" >"$SCRATCH/replayed.sfdisk"
rm -f "$SCRATCH/qemu-replayed.vhdx" "$SCRATCH/replayed.raw"
if inspect_json "$SCRATCH/dirty.json" "$img"; then
	pycheck "log_dirty, in-memory replay, partitions as DiscUtils and qemu see them" \
		"$SCRATCH/dirty.json" "$SCRATCH/replayed.sfdisk" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
pt = json.load(open(sys.argv[2]))["partitiontable"]
got = [(p["start"], p["size"], p["type"]) for p in j["partitions"]]
readme = [(2048 * 512, 204800 * 512, "0x83"), (206848 * 512, 409600 * 512, "0x83")]
qemu = [(p["start"] * 512, p["size"] * 512, "0x" + p["type"]) for p in pt["partitions"]]
print(f"log_dirty {j['log_dirty']} state {j['log_state']}\nours {got}\nREADME {readme}\nqemu {qemu}")
sys.exit(0 if j["log_dirty"] is True and j["log_state"] == "replayed_in_memory"
         and got == readme == qemu else 1)
EOF
fi
check "inspect without --replay leaves the dirty file unchanged" \
	test "$sum_before" = "$(sha256sum <"$img")"
"$HVRESYNC" inspect "$img" >"$SCRATCH/dirty.txt" 2>&1
if grep -qi "dirty" "$SCRATCH/dirty.txt" && grep -q "0x83" "$SCRATCH/dirty.txt"; then
	ok "text output says the log is dirty and shows the 0x83 partitions"
else
	fail "text output: $(grep -i -m2 'log\|0x83' "$SCRATCH/dirty.txt")"
fi

say "dirty log: --replay writes it (on a copy), then the file is clean"
if inspect_json "$SCRATCH/replay.json" --replay "$img"; then
	pycheck "--replay reports the replay on disk" "$SCRATCH/replay.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
print(j["log_state"], j["log_entries_replayed"])
sys.exit(0 if j["log_state"] == "replayed_on_disk" and len(j["partitions"]) == 2 else 1)
EOF
fi
check "--replay changed the file" test "$sum_before" != "$(sha256sum <"$img")"
if inspect_json "$SCRATCH/clean.json" "$img"; then
	pycheck "second inspect: log clean, same partitions" \
		"$SCRATCH/clean.json" "$SCRATCH/dirty.json" <<'EOF'
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
print(a["log_dirty"], a["log_state"])
sys.exit(0 if a["log_dirty"] is False and a["log_state"] == "clean"
         and a["partitions"] == b["partitions"] else 1)
EOF
fi
check "qemu-img check is happy with the replayed file" qemu-img check -q "$img"
rm -f "$img"

say "differencing sample without its parent"
img=$(unpack_sample dissect-differencing.avhdx.gz)
# vhdiinfo shows the parent's file name; the error must name it.
parent=$(vhdiinfo "$img" | sed -n 's/.*Parent filename[[:space:]]*: //p' | sed 's/.*\\//')
for flags in "" "--ignore-parent-linkage" "--json"; do
	# shellcheck disable=SC2086
	bad_input "differencing, parent missing ${flags:-(no flags)}" $flags "$img"
	if [ -n "$parent" ] && grep -qF "$parent" "$SCRATCH/bad.err"; then
		ok "the message names the parent '$parent'"
	else
		fail "the message does not name '$parent': $(cat "$SCRATCH/bad.err")"
	fi
done

say "differencing sample over a stand-in parent (--ignore-parent-linkage)"
# The real parent is not public: put an empty 8 GiB dynamic disk where the
# locator's relative_path points.  Its DataWriteGuid cannot match the
# linkage, so a plain open must refuse it and --ignore-parent-linkage
# accept it.
qemu-img create -q -f vhdx "$(dirname "$img")/$parent" 8G
bad_input "stand-in parent refused without --ignore-parent-linkage" "$img"
vhdiinfo "$img" >"$img.vhdi"
if inspect_json "$img.json" --ignore-parent-linkage "$img"; then
	pycheck "parent chain, locator and states against vhdiinfo and the README" \
		"$img.json" "$img.vhdi" "$parent" <<'EOF'
import json, re, sys
j = json.load(open(sys.argv[1])); vhdi = open(sys.argv[2]).read()
errs = []
def eq(what, got, want):
    if got != want:
        errs.append(f"{what}: got {got!r}, want {want!r}")
p = j["parent"] or {}
eq("type", j["type"], "differencing")
eq("parent.path basename", (p.get("path") or "").rsplit("/", 1)[-1], sys.argv[3])
eq("parent.type", p.get("type"), "dynamic")
eq("parent.virtual_size", p.get("virtual_size"), 8 << 30)
eq("parent.parent", p.get("parent", "absent"), None)
loc = j["parent_locator"] or {}
eq("absolute_win32_path", loc.get("absolute_win32_path"),
   re.search(r"Parent filename\s*:\s*(.*)", vhdi).group(1).strip())
eq("parent_linkage", (loc.get("parent_linkage") or "").strip("{}").lower(),
   re.search(r"Parent identifier\s*:\s*(\S+)", vhdi).group(1).lower())
eq("partially_present", j["block_states"].get("partially_present"), 32)
eq("sector_bitmap_blocks_present", j["sector_bitmap_blocks_present"], 2)
print("\n".join(errs) if errs else "parent and locator match")
sys.exit(1 if errs else 0)
EOF
	"$HVRESYNC" inspect --ignore-parent-linkage "$img" >"$img.txt" 2>&1
	if grep -qF "$parent" "$img.txt" && grep -q "relative_path" "$img.txt"; then
		ok "text output shows the locator and the parent chain"
	else
		fail "text output lacks the parent: $(grep -A3 -i parent "$img.txt")"
	fi
fi
rm -f "$img" "$(dirname "$img")/$parent"

finish
