#!/usr/bin/env bash
# DataKit speed, side by side in one run (issue 4, "Speed"): kit data serve vs diod (9P reads) and vs the git CLI
# (commits). Everything listens on 127.0.0.1 only. Usage: bench/datakit-p9l.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-artifacts/kit/kit}
PY=${PY:-python3}
OPS=bench/datakit_ops.py
KPORT=15640
DPORT=15641
W=$(mktemp -d /tmp/kit-bench-dk.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  cp "$W/kit.log" /tmp/kit-bench-datakit-kit.log 2>/dev/null || true  # kept for post-mortems
  rm -rf "$W"
}
trap cleanup EXIT
[ -x "$KIT" ] || { echo "build first: dotnet publish src/Kit/Kit.csproj -c Release -o artifacts/kit" >&2; exit 1; }
now() { date +%s.%N; }
ms_since() { $PY -c "import sys; print('%.0f' % ((float(sys.argv[2]) - float(sys.argv[1])) * 1000))" "$1" "$(now)"; }
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost

echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# versions: diod $(dpkg-query -W -f='${Version}' diod 2>/dev/null), $(git --version)"
echo

# --- the data: one directory served by diod, the same files committed to master of the store kit serves -------
SMALLN=1000
mkdir -p "$W/export/small"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$W/export/big"
$PY - "$W/export/small" $SMALLN <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(b"small file %05d\n" % i * 4)
PY
git -c init.defaultBranch=master init -q "$W/store"
cp -r "$W/export/big" "$W/export/small" "$W/store/"
git -C "$W/store" add -A && git -C "$W/store" commit -q -m "bench data"
# Trees of 100 and 100,000 files for the commit-time test, built with git fast-import (one shared blob).
$PY - <<'PY' | git -C "$W/store" fast-import --quiet
import sys
w = sys.stdout.write
w("blob\nmark :1\ndata 6\nhello\n")
for ref, dirs, files in (("tree100", 10, 10), ("tree100k", 100, 1000)):
    msg = f"{dirs * files} files"
    w(f"commit refs/heads/{ref}\ncommitter bench <bench@localhost> 1700000000 +0000\ndata {len(msg)}\n{msg}\n")
    for d in range(dirs):
        for f in range(files):
            w(f"M 100644 :1 d{d:03d}/sub/f{f:05d}\n")
    for f in range(10):  # a narrow directory: same depth and width in both trees, only the rest of the tree differs
        w(f"M 100644 :1 n000/sub/f{f:05d}\n")
    w("\n")
PY
git -C "$W/store" reset -q --hard master
rm -rf "$W/store/big" "$W/store/small"  # kit serves from the object store; keep the page cache fair

"$KIT" data serve --git "$W/store" --listen-9p "tcp://127.0.0.1:$KPORT" >"$W/kit.log" 2>&1 & KITP=$!; PIDS+=($KITP)
diod -f -n -l "127.0.0.1:$DPORT" -e "$W/export" >"$W/diod.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$KPORT) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$DPORT) 2>/dev/null && break; sleep 0.1
done
KS="-s 127.0.0.1:$KPORT -a /"
DS="-s 127.0.0.1:$DPORT -a $W/export"

# --- (a) 64 MiB sequential read with diodcat ----------------------------------------------------------------
echo "## (a) 64 MiB file, diodcat, MiB/s (best of 3; msize = diodcat's default 65536, and 1 MiB)"
echo "| msize | kit data serve (branch/master/ro/big) | diod (export/big) | kit / diod |"
echo "|---|---|---|---|"
read_rate() { # server-args file msize -> MiB/s (best of 3), checks the byte count
  local best=0 t bytes ms rate
  for _ in 1 2 3; do
    t=$(now); bytes=$(diodcat $1 -m "$3" "$2" | wc -c); ms=$(ms_since "$t")
    [ "$bytes" = $((64 * 1024 * 1024)) ] || { echo "ERR($bytes bytes)"; return; }
    rate=$($PY -c "print('%.0f' % (64 / ($ms / 1000)))")
    [ "$rate" -gt "$best" ] && best=$rate
  done
  echo "$best"
}
for msize in 65536 1048576; do
  k=$(read_rate "$KS" branch/master/ro/big $msize); d=$(read_rate "$DS" big $msize)
  echo "| $msize | $k | $d | $($PY -c "print('%.2f' % ($k / $d))" 2>/dev/null || echo -) |"
done
echo

# --- (b) small files -----------------------------------------------------------------------------------------
echo "## (b) $SMALLN small files (64 bytes each), ops/s"
echo "diodcat: one session catting all $SMALLN files (walk+open+read+clunk per file), minus a one-file session;"
echo "p9l: bench/p9l.py (python 9P2000.L, one connection), read = walk+lopen+read+clunk, stat = walk+getattr+clunk."
echo
echo "| client / op | kit data serve | diod | kit / diod |"
echo "|---|---|---|---|"
cat_rate() { # server-args dir -> files/s
  local files=() i t ms1 msn
  for i in $(seq 0 $((SMALLN - 1))); do printf -v f '%s/f%05d' "$2" "$i"; files+=("$f"); done
  t=$(now); diodcat $1 "${files[0]}" >/dev/null; ms1=$(ms_since "$t")
  t=$(now); diodcat $1 "${files[@]}" >/dev/null; msn=$(ms_since "$t")
  $PY -c "print('%.0f' % (($SMALLN - 1) / max(1e-3, ($msn - $ms1) / 1000)))"
}
k=$(cat_rate "$KS" branch/master/ro/small); d=$(cat_rate "$DS" small)
echo "| diodcat read | $k | $d | $($PY -c "print('%.2f' % ($k / $d))") |"
kk=$($PY $OPS small 127.0.0.1:$KPORT "" branch/master/ro/small $SMALLN || echo "reads_per_s ERR stats_per_s ERR")
dd=$($PY $OPS small 127.0.0.1:$DPORT "$W/export" small $SMALLN || echo "reads_per_s ERR stats_per_s ERR")
kr=$(echo "$kk" | awk '{print $2}'); ks=$(echo "$kk" | awk '{print $4}')
dr=$(echo "$dd" | awk '{print $2}'); ds=$(echo "$dd" | awk '{print $4}')
echo "| p9l read | $kr | $dr | $($PY -c "print('%.2f' % ($kr / $dr))" 2>/dev/null || echo -) |"
echo "| p9l stat | $ks | $ds | $($PY -c "print('%.2f' % ($ks / $ds))" 2>/dev/null || echo -) |"
echo

# --- (c) transactions per second ---------------------------------------------------------------------------
TXN=200
GITN=50  # git forks 2-5 processes per commit; 50 is enough for a rate
echo "## (c) transactions/s: write one new file and commit ($TXN times over 9P, $GITN times with git)"
echo "| path | transactions/s | commit step median |"
echo "|---|---|---|"
r=$($PY $OPS txn 127.0.0.1:$KPORT master $TXN "")
echo "| kit data serve over 9P (p9l: mkdir transactions/T, create rw/F, write commit to ctl) | $(echo "$r" | awk '{print $2}') | $(echo "$r" | awk '{print $4}') ms |"
git -c init.defaultBranch=master clone -q "$W/store" "$W/gitwt"
t=$(now)
for i in $(seq 1 $GITN); do
  echo "value $i" > "$W/gitwt/bench-git-$i"
  git -C "$W/gitwt" add "bench-git-$i"
  git -C "$W/gitwt" commit -q -m "bench $i"
done
ms=$(ms_since "$t")
echo "| git CLI in a worktree (\`git add F && git commit -q -m M\`) | $($PY -c "print('%.1f' % ($GITN / ($ms / 1000)))") | - |"
t=$(now)
for i in $(seq 1 $GITN); do
  b=$(echo "value $i" | git -C "$W/store" hash-object -w --stdin)
  git -C "$W/store" --work-tree=/nonexistent update-index --add --cacheinfo "100644,$b,plumb-$i"
  tr=$(git -C "$W/store" write-tree)
  c=$(git -C "$W/store" commit-tree "$tr" -p refs/heads/plumb -m "p $i" 2>/dev/null || git -C "$W/store" commit-tree "$tr" -m "p $i")
  git -C "$W/store" update-ref refs/heads/plumb "$c"
done
ms=$(ms_since "$t")
echo "| git plumbing (hash-object, update-index, write-tree, commit-tree, update-ref) | $($PY -c "print('%.1f' % ($GITN / ($ms / 1000)))") | - |"
echo

# --- (d) commit-to-tree.live latency -----------------------------------------------------------------------
echo "## (d) commit to tree.live wake-up (p9l, 100 commits on master, watcher on branch/master/watch/tree.live)"
r=$($PY $OPS latency 127.0.0.1:$KPORT master 100)
echo "| median | p90 | min |"
echo "|---|---|---|"
echo "| $(echo "$r" | awk '{print $2}') ms | $(echo "$r" | awk '{print $4}') ms | $(echo "$r" | awk '{print $6}') ms |"
echo

# --- (e) commit time vs tree size --------------------------------------------------------------------------
echo "## (e) commit time vs tree size (p9l, 50 transactions each adding one file)"
echo "n000/sub holds 10 files in both trees; d000/sub holds 10 files in tree100 and 1,000 in tree100k (root: 11 vs 101 entries)."
echo
echo "| branch | files in tree | new file at | transactions/s | commit step median | p90 |"
echo "|---|---|---|---|---|---|"
for spec in "tree100 110" "tree100k 100010"; do
  set -- $spec
  for sub in "" "n000/sub" "d000/sub"; do
    r=$($PY $OPS txn 127.0.0.1:$KPORT "$1" 50 "$sub")
    echo "| $1 | $2 | /${sub:+$sub/}F | $(echo "$r" | awk '{print $2}') | $(echo "$r" | awk '{print $4}') ms | $(echo "$r" | awk '{print $6}') ms |"
  done
done
echo
echo "# kit RSS at the end: $(awk '/^VmRSS/ {print $2, $3}' /proc/$KITP/status)"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
