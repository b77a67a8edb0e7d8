#!/usr/bin/env bash
# Repeated, alternating request/response samples (kit vs slirp4netns, and kit with .NET runtime knobs), because
# one 3-second sample moves by 5x on a loaded 2-core machine. Root only; traffic to 127.0.0.1 and own namespaces.
# Usage: bench/vpnkit-rr-ab.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
KIT=${KIT:-artifacts/kit/kit}
TB=bench/tcpbench.py
PORT=15212
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
python3 $TB server $PORT & PIDS+=($!)
sleep 0.5
slirp() {
  unshare -n sleep 600 & local ns=$!; PIDS+=($ns)
  for _ in $(seq 50); do [ "$(readlink /proc/$ns/ns/net)" != "$(readlink /proc/$$/ns/net)" ] && break; sleep 0.05; done
  slirp4netns --configure --mtu=1500 "$ns" tap0 >/dev/null 2>&1 & local s=$!; PIDS+=($s)
  for _ in $(seq 50); do nsenter -t "$ns" -n ip -4 addr show tap0 2>/dev/null | grep inet >/dev/null && break; sleep 0.1; done
  nsenter -t "$ns" -n python3 $TB rr 10.0.2.2 $PORT 3 | awk '{print $1}'
  kill "$s" "$ns"; wait "$s" "$ns" 2>/dev/null || true
}
echo "| round | kit | kit, DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 | kit, DOTNET_TieredPGO=0 DOTNET_TC_QuickJitForLoops=0 | slirp4netns | load |"
echo "|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  a=$("$KIT" net run -- python3 $TB rr 192.168.65.2 $PORT 3 | awk '{print $1}')
  b=$(DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 "$KIT" net run -- python3 $TB rr 192.168.65.2 $PORT 3 | awk '{print $1}')
  c=$(DOTNET_TieredPGO=0 DOTNET_TC_QuickJitForLoops=0 "$KIT" net run -- python3 $TB rr 192.168.65.2 $PORT 3 | awk '{print $1}')
  s=$(slirp)
  echo "| $r | $a | $b | $c | $s | $(cut -d' ' -f1 /proc/loadavg) |"
done
