#!/bin/bash
# t-authz.sh - per-VM authorization (issue 15) with real agents on
# loopback.  Pre-shared keys: one recovery agent serves VMs a and b, each
# with its own key, and c without one; two primaries each resync their
# own VM; a primary holding a's key that asks for b's disks, and a push
# with the agent key, are refused ("not authorized for VM b", job
# ErrorCode 32769, push exit 2) and b's recovery image stays byte-
# identical (sha256); the recovery log names each refusal with the peer's
# address and identity; c still takes the agent key and the start-up line
# names it.  X.509: two client certificates of one CA, `allow` naming
# the first only for x: the second is refused for x and accepted for y,
# whose `allow` names it; a `*.` pattern matches one label (a DNS SAN
# here), not two.  `vm show` says how each VM is authorized, no secrets.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/helpers/agent.sh"

command -v openssl >/dev/null || skip "openssl not installed"
S=$SCRATCH
cd "$S" || exit 1

# ---------------------------------------------------------------------------
say "setup: disks, an agent key and one key per VM"
mkdir -p p1 p2 r
for v in a b c; do
	"$HVRESYNC" create r/$v.vhdx 8M >/dev/null || fail "create r/$v.vhdx"
done
"$HVRESYNC" create p1/a.vhdx 8M >/dev/null && "$HVRESYNC" create p1/b.vhdx 8M >/dev/null &&
	"$HVRESYNC" create p2/b.vhdx 8M >/dev/null && "$HVRESYNC" create p2/c.vhdx 8M >/dev/null ||
	fail "create primary disks"
fill p1/a.vhdx 1M 1M
fill p1/b.vhdx 2M 1M # what a's primary would write over b: must never land
fill p2/b.vhdx 3M 1M
fill p2/c.vhdx 4M 1M
for k in psk ka kb; do "$HVRESYNC" keygen $k >/dev/null || fail "keygen $k"; done
RP=$(free_port) P1=$(free_port) P2=$(free_port)

{ agent_section r "$RP"; cat <<EOF
retries = 0

[vm a]
role = replica
psk-file = $S/ka
disk = $S/r/a.vhdx

[vm b]
role = replica
psk-file = $S/kb
disk = $S/r/b.vhdx

[vm c]
role = replica
disk = $S/r/c.vhdx
EOF
} >r.conf
# p1 holds a's key, and (misconfigured or compromised) uses it for b too
{ agent_section p1 "$P1"; cat <<EOF
retries = 0

[vm a]
role = primary
replica = 127.0.0.1:$RP
psk-file = $S/ka
disk = $S/p1/a.vhdx

[vm b]
role = primary
replica = 127.0.0.1:$RP
psk-file = $S/ka
disk = $S/p1/b.vhdx
EOF
} >p1.conf
{ agent_section p2 "$P2"; cat <<EOF
retries = 0

[vm b]
role = primary
replica = 127.0.0.1:$RP
psk-file = $S/kb
disk = $S/p2/b.vhdx

[vm c]
role = primary
replica = 127.0.0.1:$RP
disk = $S/p2/c.vhdx
EOF
} >p2.conf
start_agent r || { fail "recovery agent"; finish; }
start_agent p1 || { fail "primary agent p1"; finish; }
start_agent p2 || { fail "primary agent p2"; finish; }

check "the start-up line names the VM any authenticated peer may write (c)" \
	grep -q 'VMs any authenticated peer may write (.*): c$' r.log

# resync_end AGENT VM: start a resync, wait for its end; $JOB, $STATE,
# $CODE and $DESC say how it ended.
resync_end() {
	rv "$1" "$2"
	STATE= CODE= DESC=
	[ "$RV" = 4096 ] || { fail "resync $2 on $1: ReturnValue $RV"; return; }
	wait_job "$1" "$JOB" 60 7 8 9 10 || fail "job $JOB of $1 did not end"
	STATE=$(jobf "$1" "$JOB" JobState)
	CODE=$(jobf "$1" "$JOB" ErrorCode)
	DESC=$(jobf "$1" "$JOB" ErrorDescription)
}

# ---------------------------------------------------------------------------
say "pre-shared keys: each primary resyncs its own VM"
resync_end p1 a
check "VM a with a's key: Completed (JobState $STATE)" test "$STATE" = 7
check "a's disk identical" same p1/a.vhdx r/a.vhdx
check "r logs who wrote a: the key of VM a" \
	grep -q 'session start (TLS 1.3 ([^)]*), pre-shared key: the key of VM a' r.log

# ---------------------------------------------------------------------------
say "a's key asking for VM b: refused, nothing written"
B_SHA=$(sha r/b.vhdx)
resync_end p1 b
check "job ends with ErrorCode 32769 (got $CODE)" test "$CODE" = 32769
check "ErrorDescription says 'not authorized for VM b' ($DESC)" \
	grep -q 'not authorized for VM b' <<<"$DESC"
check "b's recovery image is unchanged (sha256)" test "$(sha r/b.vhdx)" = "$B_SHA"
check "no child was made next to b's image" test ! -e r/b.vhdx.hvresync.avhdx
check "the recovery log names the refusal, the peer's address and key" \
	grep -q 'peer 127.0.0.1:[0-9]* (the key of VM a (key id [0-9a-f]*...)): not authorized for VM b' r.log
check "the refused session never started on b" \
	bash -c "! grep -q 'session start.*export b:' r.log"
check "no retries for a refusal" test "$(jobf p1 "$JOB" Retries)" = 0

say "the agent key asking for VM b (push): exit 2, nothing written"
"$HVRESYNC" push --psk-file psk p1/b.vhdx "127.0.0.1:$RP/b:b.vhdx" >push.out 2>push.err
PRC=$?
check "push exits 2 (got $PRC)" test "$PRC" = 2
check "push says 'not authorized for VM b'" grep -q 'not authorized for VM b' push.err
check "b's recovery image still unchanged (sha256)" test "$(sha r/b.vhdx)" = "$B_SHA"
check "the recovery log names the agent key" \
	grep -q '(the agent key): not authorized for VM b' r.log

say "b's own key: Completed, identical"
resync_end p2 b
check "VM b with b's key: Completed (JobState $STATE, $DESC)" test "$STATE" = 7
check "b's disk identical to p2's" same p2/b.vhdx r/b.vhdx

say "push --vm-psk-file: a VM's own key from the command line"
"$HVRESYNC" push --vm-psk-file kb p2/b.vhdx "127.0.0.1:$RP/b:b.vhdx" >push.out 2>push.err
check "b's key for VM b: push exits 0 ($(head -c 150 push.err))" test $? = 0
B_SHA2=$(sha r/b.vhdx)
"$HVRESYNC" push --vm-psk-file ka p1/b.vhdx "127.0.0.1:$RP/b:b.vhdx" >push.out 2>push.err
PRC=$?
check "a's key for VM b: push exits 2 (got $PRC)" test "$PRC" = 2
check "push says 'not authorized for VM b'" grep -q 'not authorized for VM b' push.err
check "b's recovery image unchanged (sha256)" test "$(sha r/b.vhdx)" = "$B_SHA2"
"$HVRESYNC" push --psk-file psk --vm-psk-file kb p2/b.vhdx "127.0.0.1:$RP/b:b.vhdx" >/dev/null 2>push.err
PRC=$?
check "--psk-file with --vm-psk-file: exit 2 (got $PRC), one line" \
	test "$PRC" = 2 -a "$(wc -l <push.err)" = 1

say "a VM without per-VM settings still takes the agent key"
resync_end p2 c
check "VM c with the agent key: Completed (JobState $STATE, $DESC)" test "$STATE" = 7
check "c's disk identical" same p2/c.vhdx r/c.vhdx

say "vm show: how each VM's peers are authorized, no secrets"
hv r vm show a >show-a.out 2>&1
hv r vm show c >show-c.out 2>&1
hv p1 vm show b >show-p1b.out 2>&1
check "a: own key file" grep -q "^Authorization  *own key file $S/ka\$" show-a.out
check "c: the agent key" grep -q "^Authorization  *agent key $S/psk\$" show-c.out
check "a primary VM: which key its sessions use" \
	grep -q "^Authorization  *sessions use its own key file $S/ka\$" show-p1b.out
AUTH=$(hv r vm show a --json | py 'd["Authorization"]["Kind"], d["Authorization"]["KeyFile"]')
check "GetVM's Authorization (JSON): $AUTH" test "$AUTH" = "own-key $S/ka"
for k in psk ka kb; do
	check "no key material of $k in vm show or the logs" \
		bash -c "! grep -qiF '$(head -c 24 $k)' show-*.out r.log p1.log p2.log push.err"
done

say "a per-VM key file others can read stops the agent at start"
cp r.conf r2.conf
sed -i "s|^listen = .*|listen = 127.0.0.1:$(free_port)|; s|/run/r.sock|/run/r2.sock|; s|/r-state|/r2-state|" r2.conf
cp kb kb-loose && chmod 644 kb-loose && sed -i "s|$S/kb\$|$S/kb-loose|" r2.conf
timeout 20 "$HVRESYNC" agent -f --config r2.conf >r2.out 2>&1
R2RC=$?
check "exit non-zero, naming the key file ($(grep kb-loose r2.out | head -c 160))" \
	bash -c "[ $R2RC != 0 ] && grep -q 'key file .*kb-loose is readable by group or others' r2.out && ! grep -q 'agent ready' r2.out"
stop_agent p1
stop_agent p2
stop_agent r

# ---------------------------------------------------------------------------
say "X.509: two client certificates of one CA, allow patterns per VM"
cert() { # cert NAME CN [SAN]: key + certificate signed by ca
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null &&
		printf '%s\n' "${3:+subjectAltName=$3}" >"$1.ext" &&
		openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key \
			-CAcreateserial -out "$1.crt" -days 2 -extfile "$1.ext" 2>/dev/null
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout ca.key -out ca.crt -subj "/CN=test-ca" -days 2 2>/dev/null || fail "make ca"
cert srv recovery.test && cert c1 primary-1.test && cert c2 primary-2.test &&
	cert w1 other-name "DNS:h1.hv.test" && cert w2 x.h1.hv.test ||
	fail "openssl: make certificates"
for v in x y z; do
	"$HVRESYNC" create r/$v.vhdx 8M >/dev/null || fail "create r/$v.vhdx"
	"$HVRESYNC" create p2/$v.vhdx 8M >/dev/null || fail "create p2/$v.vhdx"
done
fill p2/x.vhdx 1M 1M
fill p2/y.vhdx 2M 1M
fill p2/z.vhdx 3M 1M
RX=$(free_port) PX=$(free_port)
cat >rx.conf <<EOF
[agent]
listen = 127.0.0.1:$RX
control = $S/run/rx.sock
state-dir = $S/rx-state
cert-file = $S/srv.crt
key-file = $S/srv.key
ca-file = $S/ca.crt
retries = 0

[vm x]
role = replica
allow = primary-1.test
disk = $S/r/x.vhdx

[vm y]
role = replica
allow = primary-2.test
disk = $S/r/y.vhdx

[vm z]
role = replica
allow = *.hv.test
disk = $S/r/z.vhdx
EOF
# the primary holding the second certificate
cat >px.conf <<EOF
[agent]
listen = 127.0.0.1:$PX
control = $S/run/px.sock
state-dir = $S/px-state
cert-file = $S/c2.crt
key-file = $S/c2.key
ca-file = $S/ca.crt
retries = 0

[vm x]
role = primary
replica = 127.0.0.1:$RX
disk = $S/p2/x.vhdx

[vm y]
role = primary
replica = 127.0.0.1:$RX
disk = $S/p2/y.vhdx
EOF
start_agent rx || { fail "recovery agent rx"; finish; }
start_agent px || { fail "primary agent px"; finish; }
check "no VM is open to any certificate: no start-up line" \
	bash -c "! grep -q 'VMs any authenticated peer may write' rx.log"

X_SHA=$(sha r/x.vhdx)
resync_end px x
check "primary-2.test asking for x (allow primary-1.test): ErrorCode 32769 (got $CODE)" \
	test "$CODE" = 32769
check "ErrorDescription says 'not authorized for VM x' ($DESC)" \
	grep -q 'not authorized for VM x' <<<"$DESC"
check "x's recovery image is unchanged (sha256)" test "$(sha r/x.vhdx)" = "$X_SHA"
check "rx logs the refusal with the certificate's name" \
	grep -q 'peer 127.0.0.1:[0-9]* (certificate .*CN *= *primary-2.test.*): not authorized for VM x' rx.log
resync_end px y
check "primary-2.test for y (allow primary-2.test): Completed (JobState $STATE, $DESC)" \
	test "$STATE" = 7
check "y's disk identical" same p2/y.vhdx r/y.vhdx
"$HVRESYNC" push --cert c1.crt --key c1.key --ca ca.crt p2/x.vhdx \
	"127.0.0.1:$RX/x:x.vhdx" >push.out 2>push.err
check "primary-1.test for x: push exits 0 ($(head -c 150 push.err))" test $? = 0
check "x's disk identical" same p2/x.vhdx r/x.vhdx

say "X.509: a *. pattern matches one label only"
Z_SHA=$(sha r/z.vhdx)
"$HVRESYNC" push --cert w2.crt --key w2.key --ca ca.crt p2/z.vhdx \
	"127.0.0.1:$RX/z:z.vhdx" >push.out 2>push.err
PRC=$?
check "x.h1.hv.test for *.hv.test: push exits 2 (got $PRC)" test "$PRC" = 2
check "push says 'not authorized for VM z'" grep -q 'not authorized for VM z' push.err
check "z's recovery image is unchanged (sha256)" test "$(sha r/z.vhdx)" = "$Z_SHA"
"$HVRESYNC" push --cert w1.crt --key w1.key --ca ca.crt p2/z.vhdx \
	"127.0.0.1:$RX/z:z.vhdx" >push.out 2>push.err
check "DNS SAN h1.hv.test for *.hv.test: push exits 0 ($(head -c 150 push.err))" test $? = 0
check "z's disk identical" same p2/z.vhdx r/z.vhdx

hv rx vm show x >show-x.out 2>&1
check "vm show x: certificates matching: primary-1.test" \
	grep -q '^Authorization  *certificates matching: primary-1.test$' show-x.out

say "a setting of the wrong kind is refused at start"
sed "s|^allow = \*.hv.test|psk-file = $S/kb|; s|/run/rx.sock|/run/rx3.sock|; s|/rx-state|/rx3-state|" rx.conf >rx3.conf
timeout 20 "$HVRESYNC" agent -f --config rx3.conf >rx3.out 2>&1
check "psk-file in a certificate agent: exit non-zero, with why ($(head -c 160 rx3.out))" \
	grep -q 'does not use pre-shared keys' rx3.out
stop_agent px
stop_agent rx
finish
