#!/usr/bin/env bash
# DataKit side by side with diod, in one run on one machine (results go to docs/benchmarks.md by hand).
#  1. 64 MiB read with diodcat: DataKit's branch/master/ro/big vs diod exporting the same bytes (msize 64 KiB and 1 MiB)
#  2. bench/datakit-bench: transactions/s vs the git CLI, commit-to-tree.live latency,
#     walk+getattr ops/s vs diod (same client), commit time in a 100,000-file tree
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/datakit-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

dotnet build "$root/src/Kit" -c Release -v q -nologo >/dev/null
dotnet build "$root/bench/datakit-bench" -c Release -v q -nologo >/dev/null
kit="$root/artifacts/bin/Kit/release/kit"
bench="$root/artifacts/bin/datakit-bench/release/datakit-bench"

# The same 64 MiB of random bytes: a plain file for diod, a commit on master for DataKit.
mkdir -p "$work/diod-export" "$work/store"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$work/diod-export/big"
echo hi > "$work/diod-export/f1"
git -C "$work/store" init -q
blob=$(git -C "$work/store" hash-object -w "$work/diod-export/big")
tree=$(printf '100644 blob %s\tbig\n' "$blob" | git -C "$work/store" mktree)
commit=$(GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@x GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@x git -C "$work/store" commit-tree "$tree" -m big)
git -C "$work/store" update-ref refs/heads/master "$commit"

dk_port=5741; diod_port=5742
"$kit" data serve --git "$work/store" --listen-9p "tcp://127.0.0.1:$dk_port" 2>/dev/null & pids+=($!)
diod -f -n -l "127.0.0.1:$diod_port" -e "$work/diod-export" 2>/dev/null & pids+=($!)
sleep 2

best() { # best of 5 wall-clock seconds for a command
  local b=999
  for _ in 1 2 3 4 5; do
    local s e t
    s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc -l)
    if (( $(echo "$t < $b" | bc -l) )); then b=$t; fi
  done
  echo "$b"
}
for m in 65536 1048576; do
  dk=$(best diodcat -m $m -s 127.0.0.1:$dk_port -a / branch/master/ro/big)
  di=$(best diodcat -m $m -s 127.0.0.1:$diod_port -a "$work/diod-export" big)
  printf 'diodcat 64 MiB msize %7d: DataKit ro/ %6.0f MB/s   diod %6.0f MB/s\n' $m "$(echo "64 * 1.048576 / $dk" | bc -l)" "$(echo "64 * 1.048576 / $di" | bc -l)"
done
cmp <(diodcat -m 1048576 -s 127.0.0.1:$dk_port -a / branch/master/ro/big) "$work/diod-export/big" && echo "content identical"

"$bench" "$work" "$diod_port"
