#!/usr/bin/env bash
# Two kit builds side by side in one run (a before/after of a VPNKit change): iperf3 client in a `kit net run`
# namespace -> iperf3 server on the host's 127.0.0.1 (192.168.65.2 in the namespace), one stream, MTU 1500 and 65520,
# both directions, the builds alternating round by round. Then, with LOSS_PCT set (e.g. 10), the time a 1 MiB upload
# and its echo back take under a loss_pct rule (Python on both ends, SHA-256 checked).
# Root only. Traffic goes only to 127.0.0.1 and the namespaces kit creates.
# Usage: KIT_A=path KIT_B=path [ROUNDS=3] [LOSS_PCT=10] bench/vpnkit-ab.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${ROUNDS:-3}
PORT=15211
LPORT=15212
OUT=$(mktemp -d /tmp/kit-bench-ab.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
[ -x "${KIT_A:-}" ] && [ -x "${KIT_B:-}" ] || { echo "KIT_A and KIT_B must be kit executables" >&2; exit 1; }

echo "# $(date -u '+%F %T') UTC; nproc $(nproc); load $(cut -d' ' -f1-3 /proc/loadavg); $(iperf3 --version | head -1 | cut -d' ' -f1-2)"
echo "# A=$KIT_A B=$KIT_B"
iperf3 -s -B 127.0.0.1 -p $PORT >/dev/null 2>&1 &
sleep 0.5
gbps() {
  python3 -c 'import json,sys
d=json.load(sys.stdin)
print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9) if "end" in d and "sum_received" in d["end"] else "ERR")'
}
echo "## iperf3, one stream, ${SECS} s, Gbit/s, rounds alternate A and B"
echo "| MTU | direction | A | B |"
echo "|---|---|---|---|"
for mtu in 1500 65520; do
  for dir in "" -R; do
    a=(); b=()
    for _ in $(seq "$ROUNDS"); do
      a+=("$("$KIT_A" net run --mtu $mtu -- iperf3 -c 192.168.65.2 -p $PORT -t "$SECS" -J $dir 2>/dev/null | gbps)")
      b+=("$("$KIT_B" net run --mtu $mtu -- iperf3 -c 192.168.65.2 -p $PORT -t "$SECS" -J $dir 2>/dev/null | gbps)")
    done
    echo "| $mtu | $([ -z "$dir" ] && echo guest-\>host || echo host-\>guest) | ${a[*]} | ${b[*]} |"
  done
done

[ -n "${LOSS_PCT:-}" ] || exit 0
cat >"$OUT/echo.py" <<'EOF'
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
size = int(sys.argv[2])
while True:
    c, _ = s.accept()
    buf = bytearray()
    try:
        while len(buf) < size:
            d = c.recv(65536)
            if not d:
                break
            buf += d
        c.sendall(buf); c.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # a client that gave up (its timeout) resets
    c.close()
EOF
cat >"$OUT/transfer.py" <<'EOF'
import hashlib, os, socket, sys, time
data = os.urandom(int(sys.argv[2]))
t0 = time.time()
try:
    s = socket.create_connection(("192.168.65.2", int(sys.argv[1])), timeout=120)
    s.sendall(data)
    t1 = time.time()
    h, got = hashlib.sha256(), 0
    while True:
        c = s.recv(65536)
        if not c:
            break
        h.update(c); got += len(c)
    ok = got == len(data) and h.digest() == hashlib.sha256(data).digest()
    print("%.1f+%.1f%s" % (t1 - t0, time.time() - t1, "" if ok else "(BAD)"))
except OSError as e:
    print("stalled(%s after %.0f s)" % (type(e).__name__, time.time() - t0))
EOF
python3 "$OUT/echo.py" $LPORT 1048576 &
sleep 0.5
echo "{\"rules\":[{\"name\":\"lossy\",\"match\":{\"cidr\":\"192.168.65.2/32\",\"port\":$LPORT,\"proto\":\"tcp\"},\"loss_pct\":$LOSS_PCT}]}" >"$OUT/policy.json"
echo "## 1 MiB up, then back down, under loss_pct $LOSS_PCT: seconds up+down (120 s socket timeout), rounds alternate A and B"
a=(); b=()
for _ in $(seq "$ROUNDS"); do
  a+=("$("$KIT_A" net run --policy "$OUT/policy.json" -- python3 "$OUT/transfer.py" $LPORT 1048576 2>/dev/null || echo failed)")
  b+=("$("$KIT_B" net run --policy "$OUT/policy.json" -- python3 "$OUT/transfer.py" $LPORT 1048576 2>/dev/null || echo failed)")
done
echo "| A | ${a[*]} |"
echo "| B | ${b[*]} |"
