#!/bin/bash
# t-tls.sh - the protocol transport for real over loopback, with the
# tests/helpers/tlsping echo program: TLS 1.3 PSK with the right and a
# wrong key, mismatched modes, key file rules, `hvresync keygen`, X.509
# with CAs made here by openssl, loopback-only --insecure, and a server
# that drops a malformed frame's connection but keeps serving.
. "$(dirname "$0")/lib.sh"

TLSPING=${TLSPING:-$TOP/build/helpers/tlsping}
[ -x "$HVRESYNC" ] || { echo "FAIL: $HVRESYNC not built (make all)"; exit 1; }
[ -x "$TLSPING" ] || { echo "FAIL: $TLSPING not built (make all)"; exit 1; }
for t in openssl python3 timeout; do
	command -v "$t" >/dev/null || { echo "FAIL: $t missing (tools/install-deps)"; exit 1; }
done
cd "$SCRATCH" || exit 1

SRV_PID=
# start_server ADDR ARGS...: run a tlsping server in the background (at
# most 60 s); sets SRV_PID and PORT (read from its "listening" line).
start_server() {
	local addr=$1 i
	shift
	rm -f srv.out srv.err
	timeout -k 5 60 "$TLSPING" server "$addr" "$@" >srv.out 2>srv.err &
	SRV_PID=$!
	PORT=
	for i in $(seq 100); do
		PORT=$(sed -n 's/^listening .*:\([0-9]*\)$/\1/p' srv.out 2>/dev/null)
		[ -n "$PORT" ] && return 0
		kill -0 "$SRV_PID" 2>/dev/null || break
		sleep 0.05
	done
	echo "    server did not start: $(cat srv.err)"
	return 1
}

# stop_server: wait for the server (started with --max) and set SRV_RC.
stop_server() {
	wait "$SRV_PID"
	SRV_RC=$?
	SRV_PID=
}

# client ARGS...: run a tlsping client (at most 30 s), output in cli.*.
client() {
	timeout -k 5 30 "$TLSPING" client "$@" >cli.out 2>cli.err
	CLI_RC=$?
}

# expect_fail DESC RC FILE NEEDLE: RC must be 2 (not a hang or crash) and
# FILE must contain NEEDLE.
expect_fail() {
	local d=$1 rc=$2 f=$3 needle=$4
	if [ "$rc" -ne 2 ]; then
		fail "$d: exit $rc, want 2"
		sed 's/^/    | /' "$f"
	elif ! grep -qF -- "$needle" "$f"; then
		fail "$d: no '$needle' in: $(cat "$f")"
	else
		ok "$d: $(grep -F -- "$needle" "$f" | head -n 1)"
	fi
}

# ---------------------------------------------------------------------------
say "hvresync keygen"
"$HVRESYNC" keygen k1 && "$HVRESYNC" keygen k2
check "keygen makes mode 0600" test "$(stat -c %a k1)" = 600
check "keygen writes 64 hex digits and a newline" \
	python3 -c 'import re,sys; d=open(sys.argv[1],"rb").read(); sys.exit(not re.fullmatch(rb"[0-9a-f]{64}\n", d))' k1
check "two keys differ" test "$(cat k1)" != "$(cat k2)"
cp k1 k1.saved
expect_error "keygen refuses to overwrite" "k1" "exists" -- "$HVRESYNC" keygen k1
check "refused keygen left the key alone" cmp -s k1 k1.saved
(umask 0; "$HVRESYNC" keygen k3)
check "keygen gives 0600 under umask 0" test "$(stat -c %a k3)" = 600

say "PSK: the right key"
start_server 127.0.0.1:0 --psk-file k1 --max 1 || fail "server start"
client "127.0.0.1:$PORT" --psk-file k1 --frames 300 --size 1048576
stop_server
if [ "$CLI_RC" -eq 0 ] && [ "$SRV_RC" -eq 0 ] && grep -q "pre-shared key" cli.out; then
	ok "300 frames of every type echoed over TLS 1.3 PSK: $(cat cli.out)"
else
	fail "PSK echo: client exit $CLI_RC, server exit $SRV_RC: $(cat cli.err srv.err)"
fi
check "the server used TLS_AES_256_GCM_SHA384" grep -qF "TLS_AES_256_GCM_SHA384), pre-shared key" srv.err

say "PSK: the right key over IPv6 loopback"
if start_server '[::1]:0' --psk-file k1 --max 1 2>/dev/null; then
	client "[::1]:$PORT" --psk-file k1 --frames 30
	stop_server
	check "echo over [::1]" test "$CLI_RC" -eq 0 -a "$SRV_RC" -eq 0
else
	echo "SKIP: no IPv6 loopback here (case skipped, the rest goes on)"
fi

say "PSK: a wrong key"
start_server 127.0.0.1:0 --psk-file k1 --max 1
client "127.0.0.1:$PORT" --psk-file k2 --frames 3
stop_server
expect_fail "client with a wrong key" "$CLI_RC" cli.err "authentication failed"
expect_fail "server facing a wrong key" "$SRV_RC" srv.err "authentication failed"
check "client error is one line" test "$(wc -l <cli.err)" -eq 1

say "mismatched modes fail cleanly"
start_server 127.0.0.1:0 --psk-file k1 --max 1
client "127.0.0.1:$PORT" --insecure --frames 3
stop_server
expect_fail "plain-TCP client against a PSK server" "$CLI_RC" cli.err "peer 127.0.0.1:$PORT"
expect_fail "PSK server facing a plain-TCP client" "$SRV_RC" srv.err "TLS"

start_server 127.0.0.1:0 --insecure --max 1
client "127.0.0.1:$PORT" --psk-file k1 --frames 3
stop_server
expect_fail "PSK client against a plain-TCP server" "$CLI_RC" cli.err "TLS handshake failed"
expect_fail "plain-TCP server facing a TLS client" "$SRV_RC" srv.err "malformed frame"

say "key files are checked before anything connects"
cp k1 loose && chmod 644 loose
client 127.0.0.1:9 --psk-file loose
expect_fail "mode 0644 key refused" "$CLI_RC" cli.err "key file loose is readable by group or others (mode 0644): run chmod 600 loose"
printf '%s\n' "$(head -c 62 k1)" >short && chmod 600 short
client 127.0.0.1:9 --psk-file short
expect_fail "62 hex digits refused" "$CLI_RC" cli.err "key file short"
{ head -c 64 k1; printf '0\n'; } >long && chmod 600 long
client 127.0.0.1:9 --psk-file long
expect_fail "65 hex digits refused" "$CLI_RC" cli.err "key file long"
{ head -c 63 k1; printf 'g\n'; } >nonhex && chmod 600 nonhex
client 127.0.0.1:9 --psk-file nonhex
expect_fail "non-hex digit refused" "$CLI_RC" cli.err "key file nonhex"
{ cat k1; echo; } >twolines && chmod 600 twolines
client 127.0.0.1:9 --psk-file twolines
expect_fail "a second line refused" "$CLI_RC" cli.err "key file twolines"
head -c 64 k1 >nonl && chmod 600 nonl
start_server 127.0.0.1:0 --psk-file nonl --max 1
client "127.0.0.1:$PORT" --psk-file k1 --frames 3
stop_server
check "a key without the final newline is the same key" test "$CLI_RC" -eq 0 -a "$SRV_RC" -eq 0
client 127.0.0.1:9 --psk-file missing
expect_fail "missing key file" "$CLI_RC" cli.err "key file missing"
check "no key material in the messages" sh -c "! grep -qF '$(head -c 16 k1)' cli.err srv.err"

say "X.509: CAs and certificates made by openssl"
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
mkcert server ca && mkcert client ca && mkcert intruder other-ca ||
	fail "openssl: make certificates"
start_server 127.0.0.1:0 --cert server.crt --key server.key --ca ca.crt --max 1
client "127.0.0.1:$PORT" --cert client.crt --key client.key --ca ca.crt --frames 50
stop_server
if [ "$CLI_RC" -eq 0 ] && [ "$SRV_RC" -eq 0 ]; then
	ok "X.509 both ways: $(cat cli.out)"
else
	fail "X.509: client exit $CLI_RC, server exit $SRV_RC: $(cat cli.err srv.err)"
fi
check "the server saw the client's certificate" grep -q "CN=client" srv.err

start_server 127.0.0.1:0 --cert server.crt --key server.key --ca ca.crt --max 1
client "127.0.0.1:$PORT" --cert intruder.crt --key intruder.key --ca ca.crt --frames 3
stop_server
expect_fail "client certificate from another CA: server" "$SRV_RC" srv.err "authentication failed"
expect_fail "client certificate from another CA: client" "$CLI_RC" cli.err "authentication failed"

start_server 127.0.0.1:0 --cert server.crt --key server.key --ca ca.crt --max 1
client "127.0.0.1:$PORT" --cert intruder.crt --key intruder.key --ca other-ca.crt --frames 3
stop_server
expect_fail "server certificate from a CA the client does not trust" "$CLI_RC" cli.err "authentication failed"

start_server 127.0.0.1:0 --cert server.crt --key server.key --ca ca.crt --max 1
client "127.0.0.1:$PORT" --psk-file k1 --frames 3
stop_server
expect_fail "PSK client against an X.509 server" "$CLI_RC" cli.err "authentication failed"
expect_fail "X.509 server facing a PSK client" "$SRV_RC" srv.err "peer 127.0.0.1:"

start_server 127.0.0.1:0 --psk-file k1 --max 1
client "127.0.0.1:$PORT" --cert client.crt --key client.key --ca ca.crt --frames 3
stop_server
expect_fail "X.509 client against a PSK server" "$CLI_RC" cli.err "peer 127.0.0.1:$PORT"
expect_fail "PSK server facing an X.509 client" "$SRV_RC" srv.err "authentication failed"

client 127.0.0.1:9 --cert client.crt --key server.key --ca ca.crt
expect_fail "key that does not match the certificate" "$CLI_RC" cli.err "does not match"

say "--insecure is for loopback only"
start_server 127.0.0.1:0 --insecure --max 1
client "127.0.0.1:$PORT" --insecure --frames 100
stop_server
check "plain TCP on 127.0.0.1 works" test "$CLI_RC" -eq 0 -a "$SRV_RC" -eq 0
timeout 10 "$TLSPING" server ":0" --insecure >srv.out 2>srv.err
expect_fail "--insecure on every address refused" $? srv.err "loopback"
nonlo=$( (hostname -I 2>/dev/null | tr ' ' '\n'; ip -o addr show 2>/dev/null |
	awk '{print $4}' | cut -d/ -f1) | grep -vE '^(127\.|::1$|fe80:|$)' | head -n 1)
if [ -n "$nonlo" ]; then
	case "$nonlo" in *:*) nonlo="[$nonlo]" ;; esac
	timeout 10 "$TLSPING" server "$nonlo:0" --insecure >srv.out 2>srv.err
	expect_fail "--insecure on $nonlo refused" $? srv.err "loopback"
	timeout 10 "$TLSPING" client "$nonlo:9" --insecure >cli.out 2>cli.err
	expect_fail "--insecure client to $nonlo refused" $? cli.err "loopback"
else
	echo "SKIP: this machine has no non-loopback address (case skipped)"
fi

say "a malformed frame closes that connection only"
start_server 127.0.0.1:0 --insecure --max 6
# Each case: raw bytes to send; the server must close the connection
# (EOF or reset) within 5 s without echoing anything.
python3 - "$PORT" <<'EOF'
import socket, struct, sys, time
port = int(sys.argv[1])

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF

def frame(t, payload, flags=0, magic=0x5248, length=None, crc=None):
    return struct.pack("<HBBII", magic, t, flags,
                       len(payload) if length is None else length,
                       crc32c(payload) if crc is None else crc) + payload

hashes_bad = struct.pack("<QI", 0, 3) + b"\x01" * 17 * 2   # count 3, 2 entries
cases = [
    ("bad magic", frame(5, bytes(12), magic=0x1234)),
    ("unknown type", frame(77, b"")),
    ("HASHES count disagrees with length", frame(4, hashes_bad)),
    ("bad CRC", frame(5, bytes(12), crc=0xdeadbeef)),
    # 4 GiB announced: must be refused from the header alone
    ("DATA longer than its limit", frame(8, b"", length=0xFFFFFFF0)),
]
bad = 0
for name, data in cases:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(data)
    t0 = time.time()
    try:
        got = s.recv(100)
    except ConnectionResetError:
        got = b""
    except socket.timeout:
        got = None
    s.close()
    if got == b"":
        print(f"ok: {name}: connection closed after {time.time() - t0:.2f} s")
    else:
        print(f"FAIL: {name}: server answered {got!r} instead of closing")
        bad += 1
sys.exit(bad)
EOF
py_rc=$?
[ $py_rc -eq 0 ] || fail "$py_rc malformed frame(s) not refused"
client "127.0.0.1:$PORT" --insecure --frames 20
stop_server
check "the server still serves the next client" test "$CLI_RC" -eq 0
check "server reports bad magic" grep -q "malformed frame: bad magic 0x1234" srv.err
check "server reports the unknown type" grep -q "malformed frame: unknown type 77" srv.err
check "server reports the HASHES length mismatch" grep -q "malformed frame: HASHES of 46 bytes with 3 entries" srv.err
check "server reports the CRC mismatch" grep -q "CRC-32C" srv.err
check "server reports the oversized frame" grep -q "DATA of 4294967280 bytes, the limit is" srv.err
check "every complaint names the peer" sh -c '! grep "malformed" srv.err | grep -vq "peer 127.0.0.1:"'
sed 's/^/    server: /' srv.err

finish
