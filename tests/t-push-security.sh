#!/bin/bash
# t-push-security.sh - what push and serve refuse: a wrong key ("authentication
# failed", exit 2), no key, a key file others can read, a client
# certificate from another CA, export names that
# are unknown or look like paths, a geometry mismatch, plain TCP away from
# loopback.  Nothing is written in any of these cases (the export's sha256
# stays, no child, no progress record).  Then malformed frames written by
# python over --insecure loopback (bad magic, oversized lengths, bad CRC,
# wrong version, names with '/', writes outside the blocks in flight, a
# frame cut short): the server logs each, drops that connection, and still
# serves the next push.
. "$(dirname "$0")/lib.sh"
[ -x "$HVRESYNC" ] || { fail "$HVRESYNC not built (make -j2 all)"; finish; }
command -v qemu-img >/dev/null || skip "qemu-img not installed"

S=$SCRATCH
STATE=$S/state
SERVER_PID=
trap 'stop_server; cleanup' EXIT

. "$(dirname "$0")/helpers/serve.sh"

# untouched DESC: R.vhdx kept its sha256, has no child and no record.
untouched() {
	local bad=
	[ "$(sha R.vhdx)" = "$SHA_R" ] || bad="$bad sha256 changed"
	[ -e R.vhdx.hvresync.avhdx ] && bad="$bad child created"
	ls "$STATE" 2>/dev/null | grep -q . && bad="$bad state: $(ls "$STATE")"
	if [ -n "$bad" ]; then fail "$1: written to:$bad"; else
		ok "$1: nothing written"
	fi
}

alive() {
	if kill -0 "$SERVER_PID" 2>/dev/null; then ok "$1: server still up"
	else fail "$1: server died"; fi
}

M=$((1 << 20))
cd "$S" || exit 2
make_key key || { fail "cannot make a key"; finish; }
make_key other
cp key loose
chmod 644 loose
python3 -c '
import random
r = random.Random(9)
open("P.raw", "wb").write(r.getrandbits(8 << 24).to_bytes(16 << 20, "little"))'
qemu-img create -q -f vhdx R.vhdx 16M
qemu-io -f vhdx -c "write -P 0x61 1M 2M" R.vhdx >/dev/null
SHA_R=$(sha R.vhdx)
qemu-img create -q -f vhdx Small.vhdx 8M
# qemu cannot make (or read) 4096-byte logical sectors: our own create.
"$HVRESYNC" create --sector-size 4096 S4k.vhdx 16M >/dev/null ||
	fail "hvresync create --sector-size 4096"
start_server serve.log --psk-file key --export "R=$S/R.vhdx" \
	--export "Small=$S/Small.vhdx" --export "S4k=$S/S4k.vhdx" || finish

# ===========================================================================
say "keys"
# ===========================================================================
expect_error "wrong key" "authentication failed" -- \
	"$HVRESYNC" push --psk-file other P.raw "127.0.0.1:$PORT/R"
sleep 0.3
grep -q "authentication failed" serve.log &&
	ok "the server logs the failed authentication" ||
	fail "the server log does not say authentication failed"
untouched "wrong key"
expect_error "no key at all" "psk-file" -- \
	"$HVRESYNC" push P.raw "127.0.0.1:$PORT/R"
expect_error "a key file others can read" "loose" -- \
	"$HVRESYNC" push --psk-file loose P.raw "127.0.0.1:$PORT/R"
expect_error "a missing key file" "nosuchkey" -- \
	"$HVRESYNC" push --psk-file nosuchkey P.raw "127.0.0.1:$PORT/R"
expect_error "serve without a key" "psk-file" -- \
	"$HVRESYNC" serve --listen 127.0.0.1:0 --state-dir "$S/st2" \
	--export "R=$S/R.vhdx"
expect_error "serve with a loose key" "loose" -- \
	"$HVRESYNC" serve --listen 127.0.0.1:0 --state-dir "$S/st2" \
	--psk-file loose --export "R=$S/R.vhdx"
expect_error "serve --insecure away from loopback" "loopback" -- \
	"$HVRESYNC" serve --listen 0.0.0.0:0 --state-dir "$S/st2" --insecure \
	--export "R=$S/R.vhdx"
expect_error "plain TCP against a TLS server" "" -- \
	"$HVRESYNC" push --insecure P.raw "127.0.0.1:$PORT/R"
untouched "keys"

# ===========================================================================
say "export names"
# ===========================================================================
expect_error "unknown export" "unknown export" -- \
	"$HVRESYNC" push --psk-file key P.raw "127.0.0.1:$PORT/nosuch"
expect_error "unknown export '...'" "unknown export" -- \
	"$HVRESYNC" push --psk-file key P.raw "127.0.0.1:$PORT/..."
expect_error "export '..'" "export name" -- \
	"$HVRESYNC" push --psk-file key P.raw "127.0.0.1:$PORT/.."
expect_error "export '../x'" "export name" -- \
	"$HVRESYNC" push --psk-file key P.raw "127.0.0.1:$PORT/../x"
expect_error "export '/etc/passwd'" "export name" -- \
	"$HVRESYNC" push --psk-file key P.raw "127.0.0.1:$PORT//etc/passwd"
expect_error "the image's own path as the name" "export name" -- \
	"$HVRESYNC" push --psk-file key P.raw "127.0.0.1:$PORT/$S/R.vhdx"
expect_error "serve --export with a '/' in the name" "export name" -- \
	"$HVRESYNC" serve --listen 127.0.0.1:0 --state-dir "$S/st2" \
	--psk-file key --export "a/b=$S/R.vhdx"
untouched "export names"
[ -e /etc/passwd.hvresync.avhdx ] && fail "a child next to /etc/passwd"

# ===========================================================================
say "geometry"
# ===========================================================================
expect_error "a smaller export" "geometry mismatch" -- \
	"$HVRESYNC" push --psk-file key P.raw "127.0.0.1:$PORT/Small"
[ ! -e Small.vhdx.hvresync.avhdx ] && ok "no child for Small" ||
	fail "a child was made for Small"
expect_error "4096-byte sectors there, 512 here" "geometry mismatch" -- \
	"$HVRESYNC" push --psk-file key P.raw "127.0.0.1:$PORT/S4k"
[ ! -e S4k.vhdx.hvresync.avhdx ] && ok "no child for S4k" ||
	fail "a child was made for S4k"
untouched "geometry"
stop_server

# ===========================================================================
say "X.509 instead of a pre-shared key"
# ===========================================================================
mkcert() { # mkcert NAME CA: key + certificate signed by CA
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null &&
	openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" \
		-CAcreateserial -out "$1.crt" -days 2 2>/dev/null
}
for ca in ca other-ca; do
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout $ca.key -out $ca.crt -subj "/CN=$ca" -days 2 2>/dev/null ||
		fail "openssl: make $ca"
done
chmod 600 ./*.key
mkcert server ca && mkcert client ca && mkcert intruder other-ca ||
	fail "openssl: make certificates"
cp R.vhdx X.vhdx
start_server serve-x509.log --cert server.crt --key server.key --ca ca.crt \
	--export "X=$S/X.vhdx" || finish
expect_error "a client certificate from another CA" "authentication failed" -- \
	"$HVRESYNC" push --cert intruder.crt --key intruder.key --ca ca.crt \
	P.raw "127.0.0.1:$PORT/X"
[ "$(sha X.vhdx)" = "$SHA_R" ] && [ ! -e X.vhdx.hvresync.avhdx ] &&
	ok "intruder: nothing written" || fail "intruder: X.vhdx written"
cli_run "$HVRESYNC" push --cert client.crt --key client.key --ca ca.crt \
	P.raw "127.0.0.1:$PORT/X"
[ "$CLI_RC" -eq 0 ] && qemu-img compare -q -f raw -F vhdx P.raw X.vhdx &&
	ok "a push with a certificate of the right CA: identical" ||
	fail "X.509 push: exit $CLI_RC: $(head -n1 "$S/cli.err")"
grep -q "CN=client" serve-x509.log &&
	ok "the server logs the client's certificate" ||
	fail "no CN=client in the server log"
stop_server

# ===========================================================================
say "malformed frames (python over --insecure loopback)"
# ===========================================================================
start_server serve2.log --insecure --export "R=$S/R.vhdx" || finish
cat >frames.py <<'EOF'
import socket, struct, sys, time

def crc32c(data, crc=0xFFFFFFFF):
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

def frame(t, payload, flags=0, length=None, crc=None):
    n = len(payload) if length is None else length
    c = crc32c(payload) if crc is None else crc
    return struct.pack('<HBBII', 0x5248, t, flags, n, c) + payload

def hello(name, version=1, size=16 << 20, bs=65536, sector=512, flags=0):
    nb = name.encode()
    return struct.pack('<IIIB3x16sQIH', version, flags, bs, 0, bytes(16),
                       size, sector, len(nb)) + nb

def talk(data, read=True, wait=3.0):
    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
    s.settimeout(wait)
    got = b''
    try:
        s.sendall(data)
        while read:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            got += b
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    return got

def frames(reply):
    """Frame types in REPLY, ERROR with its code: ['WELCOME', 'ERROR 6']."""
    out = []
    while len(reply) >= 12:
        magic, t, fl, n, c = struct.unpack('<HBBII', reply[:12])
        body = reply[12:12 + n]
        name = {2: 'WELCOME', 3: 'ERROR', 4: 'HASHES', 7: 'SUBHASHES',
                11: 'FINISHED'}.get(t, 'type %d' % t)
        if t == 3 and len(body) >= 4:
            name += ' %d' % struct.unpack('<I', body[:4])[0]
        out.append(name)
        reply = reply[12 + n:]
    return out

def verdict(reply):
    """Refused: closed with no WELCOME, or an ERROR frame came."""
    f = frames(reply)
    refused = 'WELCOME' not in f or any(x.startswith('ERROR') for x in f)
    print('%s: %s' % ('refused' if refused else 'accepted',
                      ' '.join(f) if f else 'closed'))
    sys.exit(0 if refused else 1)

def error_code(reply):
    f = [x for x in frames(reply) if x.startswith('ERROR')]
    return int(f[0].split()[1]) if f else None

case = sys.argv[2]
if case == 'garbage':
    r = talk(b'GET / HTTP/1.0\r\n\r\n' + b'x' * 100)
elif case == 'huge':
    # A DATA header claiming 4 GiB before HELLO: no allocation, closed.
    r = talk(struct.pack('<HBBII', 0x5248, 8, 0, 0xFFFFFFFF, 0))
elif case == 'oversized-hello':
    r = talk(frame(1, b'\0' * 400))
elif case == 'bad-crc':
    r = talk(frame(1, hello('R'), crc=1))
elif case == 'unknown-type':
    r = talk(frame(42, b''))
elif case == 'unknown-flags':
    r = talk(frame(1, hello('R'), flags=0x80))
elif case == 'version':
    r = talk(frame(1, hello('R', version=7)))
    print(' '.join(frames(r)))
    sys.exit(0 if error_code(r) == 4 else 1)
elif case in ('dotdot', 'abs'):
    name = '../x' if case == 'dotdot' else '/etc/passwd'
    r = talk(frame(1, hello(name)))
elif case == 'inner-length':
    h = bytearray(hello('R'))
    h[44] = 200           # name_len larger than what follows
    r = talk(frame(1, bytes(h)))
elif case == 'data-first':
    r = talk(frame(8, struct.pack('<QI', 0, 4096) + b'\1' * 4096))
elif case == 'data-outside':
    # A real session, then DATA far beyond the blocks in flight.
    p = frame(1, hello('R')) 
    p += frame(8, struct.pack('<QI', 15 << 20, 4096) + b'\1' * 4096)
    r = talk(p)
elif case == 'zero-outside':
    p = frame(1, hello('R'))
    p += frame(9, struct.pack('<QQ', 0, 1 << 40))
    r = talk(p)
elif case == 'bad-zstd':
    p = frame(1, hello('R'))
    p += frame(8, struct.pack('<QI', 0, 4096) + b'not zstd at all', flags=1)
    r = talk(p)
elif case == 'cut':
    # HELLO, then half a CREDIT frame and the connection goes away.
    p = frame(1, hello('R')) + frame(5, struct.pack('<IQ', 1, 0))[:15]
    r = talk(p, read=False)
elif case == 'done-early':
    r = talk(frame(1, hello('R')) + frame(10, b''))
else:
    sys.exit(2)
verdict(r)
EOF
for c in garbage huge oversized-hello bad-crc unknown-type unknown-flags \
	 dotdot abs inner-length data-first data-outside zero-outside bad-zstd \
	 cut done-early; do
	out=$(timeout 20 python3 frames.py "$PORT" $c 2>&1)
	case $? in
	0) ok "$c: $out" ;;
	1) fail "$c: $out" ;;
	*) fail "$c: the python client failed: $out" ;;
	esac
	alive "$c"
done
out=$(timeout 20 python3 frames.py "$PORT" version 2>&1) &&
	ok "another version: ERROR 4 ($out)" || fail "version: $out"
sleep 0.5
m=$(grep -c "malformed frame" serve2.log)
[ "$m" -ge 10 ] && ok "the server logged $m malformed frames" ||
	fail "only $m malformed-frame lines in the log"
grep -m3 "malformed frame" serve2.log | sed 's/^/    log: /'
[ -e /etc/passwd.hvresync.avhdx ] && fail "a child next to /etc/passwd"

# The sessions that got as far as the export may have left a child for
# resume, never a change to the image itself.
[ "$(sha R.vhdx)" = "$SHA_R" ] && ok "R.vhdx unchanged (sha256)" ||
	fail "R.vhdx changed"
qemu-img check -q -f vhdx R.vhdx && ok "R.vhdx clean" || fail "qemu-img check"

# The server keeps serving: a real push now completes.
timeout 60 "$HVRESYNC" push --insecure --json P.raw "127.0.0.1:$PORT/R" \
	>push.json 2>push.err
rc=$?
[ $rc -eq 0 ] && ok "a push after all that: exit 0" ||
	fail "push after the malformed frames: exit $rc: $(head -n2 push.err)"
qemu-img compare -q -f raw -F vhdx P.raw R.vhdx && ok "identical" ||
	fail "R.vhdx differs from P.raw"
alive "at the end"
stop_server
finish
