#!/usr/bin/env bash
# NAT66 speed (issue 18, "Speed"): iperf3 over IPv6 against IPv4 through kit net run, in one run. The client in the
# namespace reaches an iperf3 server on the host's loopback through the host alias: 192.168.65.2 -> 127.0.0.1 and
# fd00:6b69:7400::2 -> ::1. One stream, MTU 1500 and 65520, both directions. Beside it, the peer the issue names:
# slirp4netns --enable-ipv6, whose host alias 10.0.2.2 / fd00::2 reaches the host's 127.0.0.1 / ::1 the same way.
# Root only; traffic goes only to the host's loopback and to the namespaces the bench creates.
# Usage: [KIT=path] bench/vpnkit-iperf6.sh [SECONDS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
KIT=${KIT:-artifacts/kit/kit}
PY=${PY:-python3}
PORT4=15211
PORT6=15212
PIDS=()
OUT=$(mktemp -d)
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT
[ -x "$KIT" ] || { echo "build first: ./kit --version" >&2; exit 1; }

iperf3 -s -B 127.0.0.1 -p $PORT4 >/dev/null 2>&1 & PIDS+=($!)
iperf3 -s -B ::1 -p $PORT6 >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5

gbps() {
  $PY -c 'import json,sys
d=json.load(sys.stdin)
print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9) if "end" in d and "sum_received" in d["end"] else "ERR:"+d.get("error","?"))'
}
# Waits (bounded) for SLAAC to finish before an IPv6 client starts.
SLAAC='for i in $(seq 1 100); do ip -6 addr show dev eth0 scope global | grep -q fd00:6b69:7400: && ! ip -6 addr show dev eth0 | grep -q tentative && break; sleep 0.1; done'

# slirp4netns: a namespace held by `sleep`, slirp4netns attached to its pid, IPv6 on (its RA gives fd00::/64).
slirp_start() { # MTU
  unshare -n sleep 3600 & SLIRP_NSPID=$!; PIDS+=($SLIRP_NSPID)
  # slirp4netns must attach to the new namespace, never to ours: wait until unshare has switched.
  for _ in $(seq 50); do
    [ "$(readlink /proc/$SLIRP_NSPID/ns/net 2>/dev/null)" != "$(readlink /proc/$$/ns/net)" ] && break; sleep 0.05
  done
  slirp4netns --configure --enable-ipv6 --mtu="$1" "$SLIRP_NSPID" tap0 >"$OUT/slirp.log" 2>&1 & SLIRP_PID=$!; PIDS+=($SLIRP_PID)
  for _ in $(seq 100); do
    nsenter -t "$SLIRP_NSPID" -n ip -6 addr show dev tap0 scope global 2>/dev/null | grep -q 'fd00::' &&
      ! nsenter -t "$SLIRP_NSPID" -n ip -6 addr show dev tap0 | grep -q tentative && return 0
    sleep 0.1
  done
  echo "slirp4netns did not configure IPv6 on tap0" >&2; cat "$OUT/slirp.log" >&2; return 1
}
slirp_stop() { kill "$SLIRP_PID" "$SLIRP_NSPID" 2>/dev/null || true; wait "$SLIRP_PID" "$SLIRP_NSPID" 2>/dev/null || true; }
slirp_exec() { nsenter -t "$SLIRP_NSPID" -n "$@"; }

echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# versions: $(slirp4netns --version | head -1); $(iperf3 --version | head -1 | cut -d' ' -f1-2); kit $("$KIT" --version)"
echo
echo "## iperf3 through kit net run, IPv4 vs IPv6 (NAT66), and slirp4netns --enable-ipv6, one stream, ${SECS} s, Gbit/s"
echo "| MTU | direction | kit IPv4 (192.168.65.2 -> 127.0.0.1) | kit IPv6 (fd00:6b69:7400::2 -> ::1) | kit IPv6 / IPv4 | slirp4netns IPv6 (fd00::2 -> ::1) | kit / slirp4netns, IPv6 |"
echo "|---|---|---|---|---|---|---|"
for mtu in 1500 65520; do
  for dir in "" "-R"; do
    v4=$("$KIT" net run --mtu "$mtu" -- iperf3 -4 -c 192.168.65.2 -p $PORT4 -t "$SECS" -J $dir 2>/dev/null | gbps || echo ERR)
    v6=$("$KIT" net run --mtu "$mtu" -- sh -c "$SLAAC; iperf3 -6 -c fd00:6b69:7400::2 -p $PORT6 -t $SECS -J $dir" 2>/dev/null | gbps || echo ERR)
    slirp_start "$mtu"; s6=$(slirp_exec iperf3 -6 -c fd00::2 -p $PORT6 -t "$SECS" -J $dir 2>/dev/null | gbps || echo ERR); slirp_stop
    ratio=$($PY -c "
try: print('%.2f' % (float('$v6')/float('$v4')))
except Exception: print('-')")
    vs=$($PY -c "
try: print('%.2fx' % (float('$v6')/float('$s6')))
except Exception: print('-')")
    d="guest->host"; [ "$dir" = "-R" ] && d="host->guest"
    echo "| $mtu | $d | $v4 | $v6 | $ratio | $s6 | $vs |"
  done
done
echo
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
