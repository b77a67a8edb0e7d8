#!/usr/bin/env bash
# The inspector's cost on HTTP (issue 17, "Speed"): HTTP/1.1 request rate through `kit net run` with the inspector
# off, with flows and DNS recorded (--ui ... --ui-http=false) and with HTTP recording on (--ui ...), side by side in
# one run. The goal: HTTP recording on >= 80% of off. Two clients (bench/tcpbench.py): `http`, GETs one at a time on
# one keep-alive connection (the parser's per-exchange cost), and `httpconn`, one GET per connection as wget or curl
# do (adds a flow record and a stream tap per request). The server is tcpbench's canned 200 with a 64-byte body on
# the host's 127.0.0.1, reached via 192.168.65.2. Root only; traffic goes only to 127.0.0.1 and the namespaces kit
# creates; the inspector listens on 127.0.0.1.
# Usage: [KIT=path] [ROUNDS=N] bench/inspector-http.sh [SECONDS]   (default 3 s, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-3}
ROUNDS=${ROUNDS:-3}
KIT=${KIT:-artifacts/kit/kit}
TB=bench/tcpbench.py
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
[ -x "$KIT" ] || { echo "build first: ./kit --version" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
python3 $TB httpserver "$PORT" & PIDS+=($!)
sleep 0.5

median() { python3 -c 'import sys,statistics
v=[float(x) for x in sys.argv[1:] if x!="ERR"]
print("%.0f" % statistics.median(v) if v else "ERR")' "$@"; }

run() { # MODE CLIENT -> "RATE CPU"
  local ui=()
  case $1 in
    flows) ui=(--ui "tcp://127.0.0.1:$(free_port)" --ui-http=false) ;;
    http) ui=(--ui "tcp://127.0.0.1:$(free_port)") ;;
  esac
  "$KIT" net run "${ui[@]}" -- python3 $TB "$2" 192.168.65.2 "$PORT" "$SECS" ppid 2>/dev/null | awk '{print $1, $3}' || echo "ERR ERR"
}

echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# command: bench/inspector-http.sh $SECS (ROUNDS=$ROUNDS, median of the rounds; the modes alternate within a round)"
echo
echo "| client | inspector off: requests/s (gateway CPU us each) | flows+DNS | flows+DNS+HTTP | flows+DNS / off | +HTTP / off |"
echo "|---|---|---|---|---|---|"
for client in http httpconn; do
  declare -A rate=() cpu=()
  for mode in off flows http; do rate[$mode]=""; cpu[$mode]=""; done
  for _ in $(seq "$ROUNDS"); do
    for mode in off flows http; do
      read -r r c < <(run "$mode" "$client")
      rate[$mode]+=" $r"; cpu[$mode]+=" $c"
    done
  done
  o=$(median ${rate[off]}); f=$(median ${rate[flows]}); h=$(median ${rate[http]})
  co=$(median ${cpu[off]}); cf=$(median ${cpu[flows]}); ch=$(median ${cpu[http]})
  ratio() { python3 -c "
try: print('%.0f%%' % (100*float('$1')/float('$2')))
except Exception: print('-')"; }
  name="keep-alive (http)"; [ "$client" = httpconn ] && name="one per connection (httpconn)"
  echo "| $name | $o ($co) | $f ($cf) | $h ($ch) | $(ratio "$f" "$o") | $(ratio "$h" "$o") |"
  echo "  rounds: off${rate[off]}; flows${rate[flows]}; http${rate[http]}" >&2
done
echo
echo "# load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
