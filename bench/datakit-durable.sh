#!/usr/bin/env bash
# Commits per second, durable and not (issue 16 item 2), side by side in one run:
#   kit full   `kit data serve --durability full` (the default): N transactions over 9P (bench/datakit_ops.py txn:
#              mkdir transactions/T, create rw/<file>, write "commit" to ctl), each acknowledged only once its
#              objects and ref are fsync'd
#   kit none   the same with --durability none
#   git fsync  the git CLI doing the same commits with -c core.fsync=all -c core.fsyncMethod=fsync: per commit
#              hash-object -w (the file), mktree (root tree = the previous tree plus the file), commit-tree,
#              update-ref: plumbing, no work tree, as plain git writes a store without checkout
#   git        the same git commands without fsync (the issue's anchor)
# Stores live in a private directory under /tmp (same disk as the repository here). Listens on 127.0.0.1 only.
# Usage: bench/datakit-durable.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-artifacts/kit/kit}
PY=${PY:-python3}
N=${1:-200}
PORT=${PORT:-15660}
W=$(mktemp -d /tmp/kit-bench-durable.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
[ -x "$KIT" ] || { echo "build first: ./kit --version" >&2; exit 1; }
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost
echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC'), kit $(git rev-parse --short HEAD), $N commits each"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# store file system: $(df -T "$W" | awk 'NR==2 {print $2" on "$1}'); $(git --version)"

kit_run() { # durability port -> sets RESULT to "txn_per_s X commit_median_ms Y commit_p90_ms Z"
  "$KIT" data serve --git "$W/kit-$1" --durability "$1" --listen-9p "tcp://127.0.0.1:$2" >"$W/kit-$1.log" 2>&1 & local p=$!; PIDS+=($p)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && break; sleep 0.1; done
  # A branch without a commit lives only in its session: the first commit makes master for the measured connection.
  $PY -c "import sys; sys.path.insert(0, 'bench'); from p9l import Client; c = Client(sys.argv[1], ''); c.mkdir('branch', 'master'); \
c.mkdir('branch/master/transactions', 'init'); c.create('branch/master/transactions/init/rw', 'init', b'init\n'); \
c.write_file('branch/master/transactions/init/ctl', b'commit'); c.close()" "127.0.0.1:$2"
  RESULT=$($PY bench/datakit_ops.py txn "127.0.0.1:$2" master "$N" "")
  kill "$p"; wait "$p" 2>/dev/null || true
  git -C "$W/kit-$1" fsck --strict >/dev/null 2>&1 || echo "# WARNING: git fsck --strict failed on the kit-$1 store" >&2
}

git_run() { # label extra-config... -> commits/s
  local repo="$W/git-$1"; shift
  git init -q --bare "$repo"
  local tree parent="" t0 t1 blob commit
  tree=$(git -C "$repo" "$@" mktree </dev/null)
  t0=$(date +%s.%N)
  for i in $(seq 1 "$N"); do
    blob=$(printf 'value %d\n' "$i" | git -C "$repo" "$@" hash-object -w --stdin)
    # the previous root tree plus the new file, as a DataKit transaction's commit has it
    tree=$( { git -C "$repo" ls-tree "$tree"; printf '100644 blob %s\tbench-t%d\n' "$blob" "$i"; } | git -C "$repo" "$@" mktree)
    commit=$(git -C "$repo" "$@" commit-tree "$tree" ${parent:+-p "$parent"} -m "commit $i")
    git -C "$repo" "$@" update-ref refs/heads/master "$commit" ${parent:+"$parent"}
    parent=$commit
  done
  t1=$(date +%s.%N)
  $PY -c "import sys; print('%.1f' % (int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2]))))" "$N" "$t0" "$t1"
}

echo "| run | commits/s | commit write median (ms) | commit write p90 (ms) |"
echo "|---|---|---|---|"
kit_run full "$PORT"; read -r _ kf _ kfm _ kfp <<<"$RESULT"
echo "| kit data serve --durability full (9P transaction: mkdir, create, ctl commit) | $kf | $kfm | $kfp |"
kit_run none "$((PORT + 1))"; read -r _ kn _ knm _ knp <<<"$RESULT"
echo "| kit data serve --durability none | $kn | $knm | $knp |"
gf=$(git_run fsync -c core.fsync=all -c core.fsyncMethod=fsync)
echo "| git CLI, core.fsync=all, fsyncMethod=fsync (hash-object, ls-tree+mktree, commit-tree, update-ref) | $gf | | |"
gn=$(git_run plain)
echo "| git CLI, no fsync (same commands) | $gn | | |"
