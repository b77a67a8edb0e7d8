#!/usr/bin/env bash
# DataKit's RSS under the soak's commit loop, split into its parts (issue 12, docs/soak.md): starts `kit data serve` on
# a fresh store, drives it with datakit-rss (one file of 64 replaced per transaction, a new connection every 50
# commits), and every 15 s splits the server's RSS by mapping (smaps-split.py: GC heap, malloc, stacks, files).
# With the JIT-ted kit (KIT=artifacts/bin/Kit/release/kit) it also records dotnet-counters' GC figures when
# dotnet-counters is on PATH (dotnet tool install --tool-path DIR dotnet-counters --version 10.0.750501).
# Loopback only. Usage: bench/datakit-rss/run.sh SECONDS PAUSE_MS OUTDIR [VAR=VALUE ... for the server]
# Build first: ./kit --version; dotnet build bench/datakit-rss -c Release
set -u
cd "$(dirname "$0")/../.."
secs=$1; pause=$2; out=$3; shift 3
kit=${KIT:-artifacts/kit/kit}
mkdir -p "$out"; rm -rf "$out/store"
port=$((47000 + RANDOM % 900))
env "$@" "$kit" data serve --git "$out/store" --listen-9p "tcp://127.0.0.1:$port" > "$out/server.log" 2>&1 &
pid=$!
sleep 3
cpid=""
if command -v dotnet-counters >/dev/null && [ "$kit" != artifacts/kit/kit ]; then
  dotnet-counters collect -p $pid --refresh-interval 10 --format csv -o "$out/counters.csv" --counters System.Runtime > /dev/null 2>&1 &
  cpid=$!
fi
( while kill -0 $pid 2>/dev/null; do
    echo "$(date -u +%T) $(python3 bench/datakit-rss/smaps-split.py $pid 2>/dev/null) threads=$(ls /proc/$pid/task | wc -l) fds=$(ls /proc/$pid/fd | wc -l)"
    sleep 15
  done ) > "$out/smaps.log" &
artifacts/bin/datakit-rss/release/datakit-rss "$secs" 30 "$pause" $port $pid "$out/store" > "$out/loop.log" 2>&1
[ -n "$cpid" ] && kill -INT $cpid
sleep 2
kill $pid
cat "$out/loop.log" "$out/smaps.log"
