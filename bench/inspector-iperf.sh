#!/usr/bin/env bash
# The inspector's cost (issue 17, "Speed"): iperf3 through `kit net run` with the inspector off, with flows and DNS
# recorded (--ui ... --ui-http=false) and with HTTP/TLS recognition on too (--ui ...), side by side in one run.
# The goal: flows+DNS on >= 90% of off. iperf3 client in the namespace -> iperf3 server on the host's 127.0.0.1
# (via 192.168.65.2), one stream. Root only; traffic goes only to 127.0.0.1 and the namespaces kit creates; the
# inspector listens on 127.0.0.1. Usage: [KIT=path] [ROUNDS=N] bench/inspector-iperf.sh [SECONDS]   (default 5 s, 2 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${ROUNDS:-2}
KIT=${KIT:-artifacts/kit/kit}
IPERF_PORT=15211
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
[ -x "$KIT" ] || { echo "build first: ./kit --version" >&2; exit 1; }
iperf3 -s -B 127.0.0.1 -p $IPERF_PORT >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5

gbps() {
  python3 -c 'import json,sys
d=json.load(sys.stdin)
print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9) if "end" in d and "sum_received" in d["end"] else "ERR")'
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { python3 -c 'import sys,statistics
v=[float(x) for x in sys.argv[1:] if x!="ERR"]
print("%.2f" % statistics.median(v) if v else "ERR")' "$@"; }

run() { # MODE MTU DIR
  local ui=()
  case $1 in
    flows) ui=(--ui "tcp://127.0.0.1:$(free_port)" --ui-http=false) ;;
    http) ui=(--ui "tcp://127.0.0.1:$(free_port)") ;;
  esac
  "$KIT" net run --mtu "$2" "${ui[@]}" -- iperf3 -c 192.168.65.2 -p $IPERF_PORT -t "$SECS" -J $3 2>/dev/null | gbps || echo ERR
}

echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# command: bench/inspector-iperf.sh $SECS (ROUNDS=$ROUNDS, median of the rounds; the modes alternate within a round)"
echo
echo "| MTU | direction | inspector off | flows+DNS | flows+DNS+HTTP | flows+DNS / off | +HTTP / off |"
echo "|---|---|---|---|---|---|---|"
for mtu in 1500 65520; do
  for dir in "" "-R"; do
    off=(); flows=(); http=()
    for _ in $(seq "$ROUNDS"); do
      off+=("$(run off "$mtu" "$dir")"); flows+=("$(run flows "$mtu" "$dir")"); http+=("$(run http "$mtu" "$dir")")
    done
    o=$(median "${off[@]}"); f=$(median "${flows[@]}"); h=$(median "${http[@]}")
    ratio() { python3 -c "
try: print('%.0f%%' % (100*float('$1')/float('$2')))
except Exception: print('-')"; }
    d="guest->host"; [ "$dir" = "-R" ] && d="host->guest"
    echo "| $mtu | $d | $o | $f | $h | $(ratio "$f" "$o") | $(ratio "$h" "$o") |"
  done
done
