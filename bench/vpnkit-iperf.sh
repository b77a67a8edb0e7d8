#!/usr/bin/env bash
# Side-by-side iperf3 throughput: a client in a network namespace -> an iperf3 server on the host's 127.0.0.1,
# through `kit net run`, slirp4netns and pasta (commands as in docs: testing-here.md section 4).
# One stream, DURATION seconds per cell, MTU 1500 and 65520, both directions (-R = host -> namespace).
# Usage: bench/vpnkit-iperf.sh [DURATION]   (root; needs iperf3, slirp4netns, passt)
set -euo pipefail
DURATION=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=$ROOT/artifacts/bin/Kit/release/kit
PORT=5399
[ -x "$KIT" ] || dotnet build "$ROOT/src/Kit" -c Release >/dev/null

server() {
  iperf3 -s -1 -B 127.0.0.1 -p $PORT >/dev/null 2>&1 &
  SERVER=$!
  sleep 0.3
}

gbits() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))'; }

run_kit() { # mtu dir
  server
  "$KIT" net run --mtu "$1" -- iperf3 -c 192.168.65.2 -p $PORT -t "$DURATION" -J $2 | gbits
  wait $SERVER 2>/dev/null || true
}

run_slirp() {
  server
  unshare -n sleep 600 &
  local ns=$!
  sleep 0.2
  slirp4netns --configure --mtu="$1" $ns tap0 >/dev/null 2>&1 &
  local sl=$!
  sleep 0.5
  nsenter -t $ns -n iperf3 -c 10.0.2.2 -p $PORT -t "$DURATION" -J $2 | gbits
  kill $sl $ns 2>/dev/null || true
  wait $SERVER 2>/dev/null || true
}

run_pasta() {
  server
  local name=kitbench$$
  ip netns add $name
  local pidfile=/tmp/kitbench-pasta-$$.pid
  pasta --config-net -m "$1" --runas 0 --netns $name --netns-only --pid $pidfile >/dev/null 2>&1
  sleep 0.5
  local gw
  gw=$(ip -n $name route show default | awk '{print $3; exit}')
  ip netns exec $name iperf3 -c "$gw" -p $PORT -t "$DURATION" -J $2 | gbits || echo "n/a"
  kill "$(cat $pidfile)" 2>/dev/null || true
  rm -f $pidfile
  ip netns del $name
  wait $SERVER 2>/dev/null || true
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -r), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "| path | MTU | ns -> host (Gbit/s) | host -> ns (Gbit/s) |"
echo "|---|---|---|---|"
for mtu in 1500 65520; do
  for tool in kit slirp pasta; do
    up=$(run_$tool $mtu "")
    down=$(run_$tool $mtu "-R")
    case $tool in
      kit) label="kit net run";;
      slirp) label="slirp4netns $(slirp4netns --version | head -1 | awk '{print $3}')";;
      pasta) label="pasta";;
    esac
    echo "| $label | $mtu | $up | $down |"
  done
done
