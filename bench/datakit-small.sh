#!/usr/bin/env bash
# DataKit small-file speed only (issue 4, "Speed" (b)), kit data serve vs diod side by side, REPEATS alternating runs
# of bench/datakit_ops.py small (p9l: read = walk+lopen+read+clunk, stat = walk+getattr+clunk, one connection).
# With TXNS=N set, also times N commits into the wide directory and N into the root (D2).
# With KIT_BASE=path/to/older/kit set, that build serves a copy of the same store and is measured in the same loop
# (before/after comparisons on a machine whose load changes by the minute).
# Everything listens on 127.0.0.1 only. Usage: [TXNS=N] bench/datakit-small.sh [REPEATS] [FILES]
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-artifacts/kit/kit}
PY=${PY:-python3}
OPS=bench/datakit_ops.py
REPEATS=${1:-5}
SMALLN=${2:-1000}
KPORT=${KPORT:-15650}
DPORT=${DPORT:-15651}
W=$(mktemp -d /tmp/kit-bench-dksmall.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
[ -x "$KIT" ] || { echo "build first: dotnet publish src/Kit/Kit.csproj -c Release -o artifacts/kit" >&2; exit 1; }
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost
echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC'), kit $(git rev-parse --short HEAD)"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
mkdir -p "$W/export/small"
$PY - "$W/export/small" "$SMALLN" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(b"small file %05d\n" % i * 4)
PY
git -c init.defaultBranch=master init -q "$W/store"
cp -r "$W/export/small" "$W/store/"
git -C "$W/store" add -A && git -C "$W/store" commit -q -m "bench data"
rm -rf "$W/store/small"
"$KIT" data serve --git "$W/store" --listen-9p "tcp://127.0.0.1:$KPORT" >"$W/kit.log" 2>&1 & KITP=$!; PIDS+=($KITP)
if [ -n "${KIT_BASE:-}" ]; then
  cp -r "$W/store" "$W/store-base"
  "$KIT_BASE" data serve --git "$W/store-base" --listen-9p "tcp://127.0.0.1:$((KPORT + 2))" >"$W/kit-base.log" 2>&1 & BASEP=$!; PIDS+=($BASEP)
fi
diod -f -n -l "127.0.0.1:$DPORT" -e "$W/export" >"$W/diod.log" 2>&1 & DIODP=$!; PIDS+=($DIODP)
# server CPU time (user+system, clock ticks) from /proc: less sensitive to the load than wall-clock rates
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu_us_per_op() { # pid ticks-before ops -> microseconds of server CPU per operation
  $PY -c "import os,sys; print('%.0f' % ((int(sys.argv[2]) - int(sys.argv[1])) / os.sysconf('SC_CLK_TCK') * 1e6 / int(sys.argv[3])))" "$2" "$(ticks "$1")" "$3"
}
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$KPORT) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$DPORT) 2>/dev/null \
    && { [ -z "${KIT_BASE:-}" ] || (exec 3<>/dev/tcp/127.0.0.1/$((KPORT + 2))) 2>/dev/null; } && break; sleep 0.1
done
echo "# $SMALLN files of 68 bytes in one directory; ops/s per run (kit and diod alternate)"
echo "# server CPU: microseconds of server user+system CPU per operation over the run's reads and stats together"
echo "| run | kit read | diod read | kit/diod | kit stat | diod stat | kit/diod | kit CPU µs/op | diod CPU µs/op |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in $(seq 1 "$REPEATS"); do
  t0=$(ticks $KITP); k=$($PY $OPS small 127.0.0.1:$KPORT "" branch/master/ro/small "$SMALLN"); kc=$(cpu_us_per_op $KITP "$t0" $((2 * SMALLN)))
  t0=$(ticks $DIODP); d=$($PY $OPS small 127.0.0.1:$DPORT "$W/export" small "$SMALLN"); dc=$(cpu_us_per_op $DIODP "$t0" $((2 * SMALLN)))
  kr=$(echo "$k" | awk '{print $2}'); ks=$(echo "$k" | awk '{print $4}')
  dr=$(echo "$d" | awk '{print $2}'); ds=$(echo "$d" | awk '{print $4}')
  echo "| $r | $kr | $dr | $($PY -c "print('%.2f' % ($kr / $dr))") | $ks | $ds | $($PY -c "print('%.2f' % ($ks / $ds))") | $kc | $dc |"
  if [ -n "${KIT_BASE:-}" ]; then
    t0=$(ticks $BASEP); b=$($PY $OPS small 127.0.0.1:$((KPORT + 2)) "" branch/master/ro/small "$SMALLN"); bc=$(cpu_us_per_op $BASEP "$t0" $((2 * SMALLN)))
    br=$(echo "$b" | awk '{print $2}'); bs=$(echo "$b" | awk '{print $4}')
    echo "| $r (KIT_BASE) | $br | $dr | $($PY -c "print('%.2f' % ($br / $dr))") | $bs | $ds | $($PY -c "print('%.2f' % ($bs / $ds))") | $bc | $dc |"
  fi
done
if [ -n "${TXNS:-}" ]; then  # D2: commits that add one file to the $SMALLN-entry directory and to the root
  echo "# transactions adding one file (p9l: mkdir transactions/T, create rw/DIR/F, write commit to ctl), $TXNS each"
  echo "| run | into | transactions/s | commit step median | p90 |"
  echo "|---|---|---|---|---|"
  for r in $(seq 1 "$REPEATS"); do
    for sub in small ""; do
      t=$($PY $OPS txn 127.0.0.1:$KPORT master "$TXNS" "$sub")
      echo "| $r | /${sub:+$sub/}F | $(echo "$t" | awk '{print $2}') | $(echo "$t" | awk '{print $4}') ms | $(echo "$t" | awk '{print $6}') ms |"
      if [ -n "${KIT_BASE:-}" ]; then
        t=$($PY $OPS txn 127.0.0.1:$((KPORT + 2)) master "$TXNS" "$sub")
        echo "| $r (KIT_BASE) | /${sub:+$sub/}F | $(echo "$t" | awk '{print $2}') | $(echo "$t" | awk '{print $4}') ms | $(echo "$t" | awk '{print $6}') ms |"
      fi
    done
  done
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
