#!/usr/bin/env bash
# The policy's cost (issue 17, items 3-4): iperf3 through `kit net run` with no policy and with a policy of N allow
# rules (N-1 that do not match, on other networks, ports and names, then one that does), side by side in one run.
# Rules are checked once per new flow, so the goal is no measurable difference. iperf3 client in the namespace ->
# iperf3 server on the host's 127.0.0.1 (via 192.168.65.2), one stream, MTU 1500. Root only; traffic goes only to
# 127.0.0.1 and the namespaces kit creates. Usage: [KIT=path] [ROUNDS=N] [RULES=N] bench/policy-iperf.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${ROUNDS:-3}
RULES=${RULES:-100}
KIT=${KIT:-artifacts/kit/kit}
IPERF_PORT=15212
PIDS=()
TMP=$(mktemp -d)
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
[ -x "$KIT" ] || { echo "build first: ./kit --version" >&2; exit 1; }
iperf3 -s -B 127.0.0.1 -p $IPERF_PORT >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5

python3 - "$RULES" "$IPERF_PORT" > "$TMP/policy.json" <<'PY'
import json, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
rules = [{"name": "r%d" % i, "match": {"cidr": "10.%d.%d.0/24" % (i // 256, i % 256), "ports": "1-1000", "dns": "*.z%d.test" % i}, "action": "allow"} for i in range(n - 1)]
rules.append({"name": "iperf", "match": {"cidr": "192.168.65.2/32", "port": port, "proto": "tcp"}, "action": "allow"})
print(json.dumps({"rules": rules}))
PY

gbps() {
  python3 -c 'import json,sys
d=json.load(sys.stdin)
print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9) if "end" in d and "sum_received" in d["end"] else "ERR")'
}
median() { python3 -c 'import sys,statistics
v=[float(x) for x in sys.argv[1:] if x!="ERR"]
print("%.2f" % statistics.median(v) if v else "ERR")' "$@"; }
run() { # POLICY? DIR
  local p=()
  [ "$1" = yes ] && p=(--policy "$TMP/policy.json")
  "$KIT" net run "${p[@]}" -- iperf3 -c 192.168.65.2 -p $IPERF_PORT -t "$SECS" -J $2 2>/dev/null | gbps || echo ERR
}

echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# command: bench/policy-iperf.sh $SECS (ROUNDS=$ROUNDS RULES=$RULES, median of the rounds; the modes alternate within a round)"
echo
echo "| direction | no policy (Gbit/s) | $RULES allow rules (Gbit/s) | rules / none |"
echo "|---|---|---|---|"
for dir in "" "-R"; do
  off=(); on=()
  for _ in $(seq "$ROUNDS"); do
    off+=("$(run no "$dir")"); on+=("$(run yes "$dir")")
  done
  o=$(median "${off[@]}"); r=$(median "${on[@]}")
  ratio=$(python3 -c "
try: print('%.0f%%' % (100*float('$r')/float('$o')))
except Exception: print('-')")
  d="guest->host"; [ "$dir" = "-R" ] && d="host->guest"
  echo "| $d | $o | $r | $ratio |"
done
