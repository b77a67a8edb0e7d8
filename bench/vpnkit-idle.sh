#!/usr/bin/env bash
# Connection setup rate, request/response round trips and RSS per idle connection (1,000 connections),
# namespace -> host loopback, through `kit net run` and slirp4netns, one run side by side. Root.
set -euo pipefail
N=${1:-1000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=$ROOT/artifacts/bin/Kit/release/kit
PORT=5398
python3 "$ROOT/bench/echo_server.py" $PORT & SRV=$!
trap 'kill $SRV 2>/dev/null' EXIT
sleep 0.5
echo "kit net run:  $("$KIT" net run -- sh -c "python3 $ROOT/bench/idle_conns.py 192.168.65.2 $PORT $N \$PPID")"
unshare -n sleep 600 & NS=$!
sleep 0.2
slirp4netns --configure --mtu=1500 $NS tap0 >/dev/null 2>&1 & SL=$!
sleep 0.5
echo "slirp4netns:  $(nsenter -t $NS -n sh -c "python3 $ROOT/bench/idle_conns.py 10.0.2.2 $PORT $N $SL")"
kill $SL $NS 2>/dev/null || true
