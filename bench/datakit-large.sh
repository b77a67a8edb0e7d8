#!/usr/bin/env bash
# DataKit large-blob reads (issue 16, "Blobs stream"), side by side in one run: a 64 MiB blob written by plain git,
# read with diodcat (msize 1 MiB) from `kit data serve`, against diod serving the same bytes from a directory and
# against `git cat-file blob`; then the same blob repacked (git repack -a -d: a pack entry stored whole) read through
# kit and through `git cat-file blob`. Cold = a freshly started server after `echo 3 > /proc/sys/vm/drop_caches` (root);
# warm = the next read from the same server. Loopback only. Usage: [RT=1] bench/datakit-large.sh [ROUNDS]
#
# diod answers Tversion with msize 64 KiB whatever the client asks (its Rversion, seen with strace), so its column is
# 1,024 Treads of 64 KiB while kit's default column is 64 Treads of 1 MiB. diodcat sends one Tread at a time and writes
# each reply whole into the 64 KiB pipe to cmp, so a 1 MiB reply stalls it until cmp has eaten most of it: the column
# "kit 64K" reads kit with -m 65536, the same Treads diod serves. RT=1 runs servers and clients at SCHED_FIFO priority
# 10 (chrt), which shields them from other work on a shared machine (say so when you quote such numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-artifacts/kit/kit}
ROUNDS=${1:-3}
KPORT=15650
DPORT=15651
PPORT=15652
W=$(mktemp -d /tmp/kit-bench-large.XXXXXX)
KPID=""
DPID=""
PPID_=""
stop() { for p in $KPID $DPID $PPID_; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; KPID=""; DPID=""; PPID_=""; }
cleanup() { stop; rm -rf "$W"; }
trap cleanup EXIT
[ -x "$KIT" ] || { echo "build first: ./kit --version" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "cold reads need root (drop_caches)" >&2; exit 1; }
now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
RUN=()
[ "${RT:-0}" = 1 ] && RUN=(chrt -f 10)

echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# scheduling: ${RUN[*]:-default (CFS)}"
echo "# versions: diod $(dpkg-query -W -f='${Version}' diod 2>/dev/null), $(git --version), kit $("$KIT" --version)"

mkdir -p "$W/export"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$W/export/big"
git init -q --bare "$W/store"
BLOB=$(git --git-dir="$W/store" hash-object -w "$W/export/big")
TREE=$(printf '100644 blob %s\tbig\n' "$BLOB" | git --git-dir="$W/store" mktree)
COMMIT=$(GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@l GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@l git --git-dir="$W/store" commit-tree "$TREE" -m big)
git --git-dir="$W/store" update-ref refs/heads/master "$COMMIT"
# cmp's reference is a copy of its own: were it the file diod serves, a cold diod read would fill the page cache for
# cmp (64 MiB from disk in all) while every other column reads its source and the reference (128 MiB). Before
# 2026-12-08 it was, and diod's cold column was flattered.
cp --reflink=never "$W/export/big" "$W/ref"
cp -a "$W/store" "$W/packed"
git --git-dir="$W/packed" repack -a -d -q
[ -z "$(find "$W/packed/objects" -path '*/pack' -prune -o -type f -print | grep -v info/)" ] || { echo "packed store still has loose objects" >&2; exit 1; }

start_kit() { "${RUN[@]}" "$KIT" data serve --git "$W/store" --listen-9p "tcp://127.0.0.1:$KPORT" >"$W/kit.log" 2>&1 & KPID=$!; wait_port $KPORT; }
start_packed() { "${RUN[@]}" "$KIT" data serve --git "$W/packed" --listen-9p "tcp://127.0.0.1:$PPORT" >"$W/kitp.log" 2>&1 & PPID_=$!; wait_port $PPORT; }
start_diod() { "${RUN[@]}" diod -f -n -l "127.0.0.1:$DPORT" -e "$W/export" >"$W/diod.log" 2>&1 & DPID=$!; wait_port $DPORT; }
restart_kit() { kill "$KPID"; wait "$KPID" 2>/dev/null || true; start_kit; }
check() { "${RUN[@]}" cmp - "$W/ref"; }
read_kit() { "${RUN[@]}" diodcat -s 127.0.0.1:$KPORT -a / -m 1048576 branch/master/ro/big | check; }
read_kit64() { "${RUN[@]}" diodcat -s 127.0.0.1:$KPORT -a / -m 65536 branch/master/ro/big | check; }
read_diod() { "${RUN[@]}" diodcat -s 127.0.0.1:$DPORT -a "$W/export" -m 1048576 big | check; }
read_git() { "${RUN[@]}" git --git-dir="$W/store" cat-file blob "$BLOB" | check; }
read_packed() { "${RUN[@]}" diodcat -s 127.0.0.1:$PPORT -a / -m 1048576 branch/master/ro/big | check; }
read_gitp() { "${RUN[@]}" git --git-dir="$W/packed" cat-file blob "$BLOB" | check; }

COLS='%-6s %-5s %10s %10s %10s %14s %12s %14s\n'
printf "$COLS" round mode "kit (ms)" "kit 64K" "diod (ms)" "git cat-file" "kit packed" "git packed"
for r in $(seq "$ROUNDS"); do
  # Cold: each server freshly started, the page cache dropped just before its one read. cmp reads the reference
  # file (its own copy) too, so every column pays the same for it.
  stop; start_kit; cold; t=$(now); read_kit; k=$(ms "$t")
  restart_kit; cold; t=$(now); read_kit64; k64=$(ms "$t")
  start_diod; cold; t=$(now); read_diod; d=$(ms "$t")
  cold; t=$(now); read_git; g=$(ms "$t")
  start_packed; cold; t=$(now); read_packed; kp=$(ms "$t")
  cold; t=$(now); read_gitp; gp=$(ms "$t")
  printf "$COLS" "$r" cold "$k" "$k64" "$d" "$g" "$kp" "$gp"
  # Warm: the same servers again, everything in the page cache.
  t=$(now); read_kit; k=$(ms "$t")
  t=$(now); read_kit64; k64=$(ms "$t")
  t=$(now); read_diod; d=$(ms "$t")
  t=$(now); read_git; g=$(ms "$t")
  t=$(now); read_packed; kp=$(ms "$t")
  t=$(now); read_gitp; gp=$(ms "$t")
  printf "$COLS" "$r" warm "$k" "$k64" "$d" "$g" "$kp" "$gp"
  echo "# kit peak RSS after round $r: $(grep VmHWM /proc/$KPID/status | awk '{print $2, $3}') (packed: $(grep VmHWM /proc/$PPID_/status | awk '{print $2, $3}'))"
done
