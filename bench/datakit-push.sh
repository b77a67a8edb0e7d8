#!/usr/bin/env bash
# DataKit push latency (issue 16, "Speed"): from a commit's ctl write returning to the ref being on the remote, with
# remotes/NAME/push-branches (auto-push), and the explicit remotes/NAME/push command, against a bare repository on disk
# and against git daemon serving one; side by side in the same run with the anchor, the git CLI pushing one new commit
# from a plain repository to the same remote (`git push`, wall time). N commits per row, median and p90.
# Everything listens on 127.0.0.1 only; all files live in a private mktemp directory, removed at exit.
# Usage: bench/datakit-push.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-artifacts/kit/kit}
PY=${PY:-python3}
N=${1:-50}
W=$(mktemp -d /tmp/kit-bench-push.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
[ -x "$KIT" ] || { echo "build first: ./kit --version (publishes artifacts/kit/kit)" >&2; exit 1; }
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC'), kit $(git rev-parse --short HEAD), git $(git --version | cut -d' ' -f3)"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

mkdir -p "$W/served"
for r in disk daemon peer-disk peer-daemon; do git init -q --bare -b master "$W/served/$r.git"; done
GPORT=$(free_port)
git daemon --reuseaddr --listen=127.0.0.1 --port="$GPORT" --base-path="$W/served" --export-all --enable=receive-pack \
  "$W/served" >"$W/daemon.log" 2>&1 & PIDS+=($!)
KPORT=$(free_port)
"$KIT" data serve --git "$W/store" --listen-9p "tcp://127.0.0.1:$KPORT" --allow-remote "$W/served/" \
  --allow-remote "git://127.0.0.1:$GPORT/" >"$W/kit.log" 2>&1 & PIDS+=($!)
wait_port "$GPORT" && wait_port "$KPORT" || { cat "$W"/*.log >&2; exit 1; }

# The anchor: one new commit in a plain repository, then `git push` of it, timed around the push alone.
peer() { # url reffile -> "median_ms .. p90_ms .."
  local url=$1 repo="$W/peer-$RANDOM"
  git init -q -b master "$repo"
  $PY - "$repo" "$url" "$N" <<'PY'
import statistics, subprocess, sys, time
repo, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
g = lambda *a: subprocess.run(["git", "-C", repo, *a], check=True, capture_output=True, text=True).stdout.strip()
lat = []
parent = None
for i in range(n + 1):
    blob = subprocess.run(["git", "-C", repo, "hash-object", "-w", "--stdin"], input=f"peer {i}\n", check=True,
                          capture_output=True, text=True).stdout.strip()
    tree = subprocess.run(["git", "-C", repo, "mktree"], input=f"100644 blob {blob}\tpush-{i % 4}\n", check=True,
                          capture_output=True, text=True).stdout.strip()
    c = g("commit-tree", tree, "-m", f"peer {i}", *(["-p", parent] if parent else []))
    g("update-ref", "refs/heads/master", c)
    parent = c
    t0 = time.perf_counter()
    g("push", "-q", url, "master:master")
    if i > 0:
        lat.append(time.perf_counter() - t0)
lat.sort()
print(f"median_ms {statistics.median(lat) * 1e3:.1f} p90_ms {lat[int(len(lat) * 0.9)] * 1e3:.1f} min_ms {lat[0] * 1e3:.1f} n {len(lat)}")
PY
}

row() { printf '| %-44s | %s |\n' "$1" "$2"; }
echo
echo "| push of one commit, N=$N (warm: one untimed round first) | result |"
echo "|---|---|"
row "DataKit auto-push, bare repo on disk" "$($PY bench/datakit_push.py auto "127.0.0.1:$KPORT" disk "$W/served/disk.git" "$W/served/disk.git/refs/heads/master" "$N")"
row "DataKit auto-push, git daemon" "$($PY bench/datakit_push.py auto "127.0.0.1:$KPORT" daemon "git://127.0.0.1:$GPORT/daemon.git" "$W/served/daemon.git/refs/heads/master" "$N")"
row "DataKit push command, bare repo on disk" "$($PY bench/datakit_push.py cmd "127.0.0.1:$KPORT" disk2 "$W/served/disk.git" "$W/served/disk.git/refs/heads/master" "$N")"
row "DataKit push command, git daemon" "$($PY bench/datakit_push.py cmd "127.0.0.1:$KPORT" daemon2 "git://127.0.0.1:$GPORT/daemon.git" "$W/served/daemon.git/refs/heads/master" "$N")"
row "git push (anchor), bare repo on disk" "$(peer "$W/served/peer-disk.git")"
row "git push (anchor), git daemon" "$(peer "git://127.0.0.1:$GPORT/peer-daemon.git")"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
