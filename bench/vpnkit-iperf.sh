#!/usr/bin/env bash
# VPNKit speed, side by side in one run (issue 3, "Speed"): kit net run vs slirp4netns vs pasta.
# iperf3 client in a namespace -> iperf3 server on the host's 127.0.0.1 through each tool's host-loopback
# mapping, one stream, MTU 1500 and 65520, both directions; then request/response round trips, connection
# setup rate and RSS with 1,000 idle connections. The single entry point for VPNKit's speed figures (issue 3).
# Root only. Traffic goes only to 127.0.0.1 and to the
# namespaces this script creates. Usage: [RR_ROUNDS=N] [KIT=path] [PASST_SRC=dir] bench/vpnkit-iperf.sh [SECONDS]
# (default 5 s; RR_ROUNDS, default 3: alternating request/response and connection-setup rounds; one 3 s sample moves
# a lot on a loaded machine.) ONLY=rr|conn|rss|iperf runs one part.
# Two pastas: Debian's (2023) from PATH, and a current one built from a passt git checkout (PASST_SRC, e.g. a clone of
# the AkihiroSuda/passt-mirror repository) into $HOME/.cache/kit-bench/passt-<commit>, or an already built binary
# (PASTA_NEW=path). Without either, or if the build fails, its column says why it was skipped.
# KIT_B=path adds a second kit to the request/response and connection-setup rounds (a before/after in one run).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
KIT=${KIT:-artifacts/kit/kit}
PY=${PY:-python3}
TB=bench/tcpbench.py
IPERF_PORT=15201
TB_PORT=15202
OUT=$(mktemp -d /tmp/kit-bench-net.XXXXXX)
PIDS=()
NS=kbench-pasta-$$
ulimit -n 8192

# pasta_new_build: prints the path of a current pasta (PASTA_NEW, or built once per commit from PASST_SRC), or nothing.
pasta_new_build() {
  if [ -n "${PASTA_NEW:-}" ]; then [ -x "$PASTA_NEW" ] && echo "$PASTA_NEW"; return 0; fi
  [ -n "${PASST_SRC:-}" ] || return 0
  local rev cache dir tmp
  rev=$(git -C "$PASST_SRC" rev-parse --short=12 HEAD 2>/dev/null) || return 0
  cache=$HOME/.cache/kit-bench; dir=$cache/passt-$rev
  if [ ! -x "$dir/pasta" ]; then
    mkdir -p -m 0700 "$cache"
    # Built in a fresh directory and moved into place whole: a failed or concurrent build leaves no half binary.
    tmp=$(mktemp -d "$cache/build.XXXXXX")
    if git clone -q "$PASST_SRC" "$tmp/src" && make -C "$tmp/src" -j"$(nproc)" passt pasta >"$tmp/make.log" 2>&1 \
      && [ ! -e "$dir" ]; then
      mv "$tmp/src" "$dir" && rm -rf "$tmp"
    else
      echo "pasta (current): build failed or $dir is in the way; see $tmp/make.log" >&2
    fi
  fi
  [ -x "$dir/pasta" ] && echo "$dir/pasta"
  return 0
}
PASTA_NEW_BIN=$(pasta_new_build)

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT

[ -x "$KIT" ] || { echo "build first: dotnet publish src/Kit/Kit.csproj -c Release -o artifacts/kit" >&2; exit 1; }

iperf3 -s -B 127.0.0.1 -p $IPERF_PORT >/dev/null 2>&1 & PIDS+=($!)
$PY $TB server $TB_PORT & PIDS+=($!)
sleep 0.5

gbps() { # iperf3 -J on stdin -> Gbit/s received
  $PY -c 'import json,sys
d=json.load(sys.stdin)
print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9) if "end" in d and "sum_received" in d["end"] else "ERR:"+d.get("error","?"))'
}

# --- tool launchers: each runs "$@" in a namespace whose host-loopback alias is $TARGET ---------------
# slirp4netns: a namespace held by `sleep`, slirp4netns attached to its pid.
slirp_start() { # MTU
  unshare -n sleep 3600 & SLIRP_NSPID=$!; PIDS+=($SLIRP_NSPID)
  # slirp4netns must attach to the new namespace, never to ours: wait until unshare has switched.
  for _ in $(seq 50); do
    [ "$(readlink /proc/$SLIRP_NSPID/ns/net 2>/dev/null)" != "$(readlink /proc/$$/ns/net)" ] && break; sleep 0.05
  done
  slirp4netns --configure --mtu="$1" "$SLIRP_NSPID" tap0 >"$OUT/slirp.log" 2>&1 & SLIRP_PID=$!; PIDS+=($SLIRP_PID)
  for _ in $(seq 50); do nsenter -t "$SLIRP_NSPID" -n ip -4 addr show tap0 2>/dev/null | grep inet >/dev/null && return 0; sleep 0.1; done
  echo "slirp4netns did not configure tap0" >&2; cat "$OUT/slirp.log" >&2; return 1
}
slirp_stop() { kill "$SLIRP_PID" "$SLIRP_NSPID" 2>/dev/null || true; wait "$SLIRP_PID" "$SLIRP_NSPID" 2>/dev/null || true; }
slirp_exec() { nsenter -t "$SLIRP_NSPID" -n "$@"; }

pasta_start() { # MTU [BINARY]
  ip netns add "$NS"
  "${2:-pasta}" -f --config-net -m "$1" --runas 0 --netns "$NS" --netns-only >"$OUT/pasta.log" 2>&1 & PASTA_PID=$!; PIDS+=($PASTA_PID)
  PASTA_GW=
  for _ in $(seq 50); do
    PASTA_GW=$(ip netns exec "$NS" ip -4 route show default 2>/dev/null | awk '/default/ {print $3; exit}')
    [ -n "$PASTA_GW" ] && return 0; sleep 0.1
  done
  echo "pasta did not configure the namespace" >&2; cat "$OUT/pasta.log" >&2; return 1
}
pasta_stop() { kill "$PASTA_PID" 2>/dev/null || true; wait "$PASTA_PID" 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; }
pasta_exec() { ip netns exec "$NS" "$@"; }

kit_exec() { # MTU CMD...
  local mtu=$1; shift
  "$KIT" net run --mtu "$mtu" -- "$@"
}

echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# versions: $(slirp4netns --version | head -1); pasta $(dpkg-query -W -f='${Version}' passt 2>/dev/null); $(iperf3 --version | head -1 | cut -d' ' -f1-2)"
echo "# kit: $KIT $("$KIT" --version)${KIT_B:+; KIT_B: $KIT_B $("$KIT_B" --version)}"
if [ -n "$PASTA_NEW_BIN" ]; then echo "# current pasta: $PASTA_NEW_BIN ($("$PASTA_NEW_BIN" --version 2>/dev/null | head -1))"
else echo "# current pasta: skipped (set PASST_SRC to a passt git checkout, or PASTA_NEW to a built pasta)"; fi
echo

part() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }

if part iperf; then
echo "## iperf3, one stream, ${SECS} s, Gbit/s (guest->host = client sends; host->guest = -R)"
echo "| MTU | direction | kit net run | slirp4netns | pasta | kit / slirp4netns |"
echo "|---|---|---|---|---|---|"
for mtu in 1500 65520; do
  for dir in "" "-R"; do
    args=(iperf3 -c TARGET -p $IPERF_PORT -t "$SECS" -J $dir)
    k=$(kit_exec "$mtu" "${args[@]/TARGET/192.168.65.2}" 2>"$OUT/kit-iperf.err" | gbps || echo ERR)
    slirp_start "$mtu"; s=$(slirp_exec "${args[@]/TARGET/10.0.2.2}" 2>/dev/null | gbps || echo ERR); slirp_stop
    pasta_start "$mtu"; p=$(pasta_exec "${args[@]/TARGET/$PASTA_GW}" 2>/dev/null | gbps || echo ERR); pasta_stop
    ratio=$($PY -c "import sys
try: print('%.2fx' % (float('$k')/float('$s')))
except Exception: print('-')")
    d="guest->host"; [ "$dir" = "-R" ] && d="host->guest"
    echo "| $mtu | $d | $k | $s | $p | $ratio |"
  done
done
echo

fi

# Request/response and connection setup: every tool in turn, ROUNDS times, each from a fresh start (so the first
# connection of a round is a cold one). tcpbench prints "VALUE LABEL" pairs; tb_rows prints the medians.
ROUNDS=${RR_ROUNDS:-3}
TOOLS="kit"; [ -n "${KIT_B:-}" ] && TOOLS="$TOOLS kit-b"; TOOLS="$TOOLS slirp pasta"; [ -n "$PASTA_NEW_BIN" ] && TOOLS="$TOOLS pasta-new"
tb_round() { # MODE: one round of every tool, appended to $OUT/MODE-TOOL
  local t
  for t in $TOOLS; do
    case $t in
      kit) kit_exec 1500 $PY $TB "$1" 192.168.65.2 $TB_PORT 3 ppid 2>>"$OUT/kit-$1.err" || true ;;
      kit-b) KIT=$KIT_B kit_exec 1500 $PY $TB "$1" 192.168.65.2 $TB_PORT 3 ppid 2>>"$OUT/kit-$1.err" || true ;;
      slirp) slirp_start 1500; slirp_exec $PY $TB "$1" 10.0.2.2 $TB_PORT 3 "$SLIRP_PID" || true; slirp_stop ;;
      pasta) pasta_start 1500; pasta_exec $PY $TB "$1" "$PASTA_GW" $TB_PORT 3 "$PASTA_PID" || true; pasta_stop ;;
      pasta-new) pasta_start 1500 "$PASTA_NEW_BIN"; pasta_exec $PY $TB "$1" "$PASTA_GW" $TB_PORT 3 "$PASTA_PID" || true; pasta_stop ;;
    esac >>"$OUT/$1-$t"
  done
}
tb_rows() { # MODE RATE-LABEL CPU-LABEL SWITCH-LABEL [EXTRA-LABEL]: a table row per tool, medians of the rounds
  local t
  for t in $TOOLS; do
    $PY -c '
import statistics, sys
names = {"kit": "kit net run", "kit-b": "kit net run (KIT_B)", "slirp": "slirp4netns", "pasta": "pasta (Debian 2023)", "pasta-new": "pasta (current, source)"}
rows = []
for line in open(sys.argv[1]):
    w = line.split()
    if w and w[0].replace(".", "").isdigit():
        rows.append({w[i + 1]: float(w[i]) for i in range(0, len(w) - 1, 2)})
labels = sys.argv[3:]
def med(l):
    v = [r[l] for r in rows if l in r]
    return statistics.median(v) if v else float("nan")
each = " / ".join("%.0f" % r.get(labels[0], 0) for r in rows) or "ERR"
cells = ["%.0f" % med(labels[0]), "%.1f" % med(labels[1]), "%.2f" % med(labels[2])] + ["%.1f" % med(l) for l in labels[3:]]
print("| %s | %s | %s |" % (names[sys.argv[2]], each, " | ".join(cells)))' "$OUT/$1-$t" "$t" "${@:2}"
  done
}
for t in $TOOLS; do : >"$OUT/rr-$t"; : >"$OUT/conn-$t"; done

if part rr; then
echo "## request/response (bench/tcpbench.py rr: 64-byte request/response on one connection, TCP_NODELAY), MTU 1500, 3 s, $ROUNDS alternating rounds"
echo "Median of the rounds; gateway CPU and context switches per round trip are the gateway process's (all threads)."
echo "| tool | round trips/s (each round) | median round trips/s | gateway CPU us per round trip | gateway context switches per round trip |"
echo "|---|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do tb_round rr; done
tb_rows rr round_trips_per_s gw_cpu_us_per_rt gw_switches_per_rt
echo

fi

if part conn; then
echo "## connection setup (bench/tcpbench.py conn: connect, 1-byte echo, close), MTU 1500, 3 s, $ROUNDS alternating rounds"
echo "Median of the rounds; gateway CPU and context switches per connection are the gateway process's (all threads);"
echo "cold = the first connection after the gateway started (connect to echo), ms."
echo "| tool | connections/s (each round) | median connections/s | gateway CPU us per connection | gateway context switches per connection | cold first connection, ms |"
echo "|---|---|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do tb_round conn; done
tb_rows conn connections_per_s gw_cpu_us_per_conn gw_switches_per_conn first_conn_ms
echo

fi

if part rss; then
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
wait_file() { for _ in $(seq 600); do [ -s "$1" ] && return 0; sleep 0.1; done; return 1; }
N=1000
echo "## RSS with $N idle connections (VmRSS of the gateway process, KiB)"
echo "| tool | RSS, 0 connections | RSS, $N connections | KiB per connection |"
echo "|---|---|---|---|"
rm -f "$OUT/ready" "$OUT/ready.0"
"$KIT" net run --mtu 1500 -- $PY $TB hold 192.168.65.2 $TB_PORT $N 4 "$OUT/ready" 2>"$OUT/kit-hold.err" & KITP=$!; PIDS+=($KITP)
if wait_file "$OUT/ready.0"; then sleep 2; r0=$(rss_kib $KITP); else r0=ERR; fi
if wait_file "$OUT/ready"; then sleep 1; r1=$(rss_kib $KITP); else r1=ERR; fi
wait $KITP 2>/dev/null || true
per=$($PY -c "
try: print('%.1f' % (($r1-$r0)/$N))
except Exception: print('-')")
echo "| kit net run | $r0 | $r1 | $per |"
rm -f "$OUT/ready" "$OUT/ready.0"
slirp_start 1500
slirp_exec $PY $TB hold 10.0.2.2 $TB_PORT $N 4 "$OUT/ready" & HP=$!; PIDS+=($HP)
if wait_file "$OUT/ready.0"; then sleep 2; r0=$(rss_kib $SLIRP_PID); else r0=ERR; fi
if wait_file "$OUT/ready"; then sleep 1; r1=$(rss_kib $SLIRP_PID); else r1=ERR; fi
wait $HP 2>/dev/null || true
slirp_stop
per=$($PY -c "
try: print('%.1f' % (($r1-$r0)/$N))
except Exception: print('-')")
echo "| slirp4netns | $r0 | $r1 | $per |"
echo
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
