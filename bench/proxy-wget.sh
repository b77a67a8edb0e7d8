#!/usr/bin/env bash
# The proxy paths' cost (issue 17, item 5): busybox wget of a SIZE_MB file in a `kit net run` namespace from a python
# http.server on the host's 127.0.0.1, side by side in one run: direct (via the host alias 192.168.65.2), through the
# gateway's own proxy (http_proxy=http://192.168.65.1:3128, no upstream: the relay goes direct) and through the gateway's
# proxy with tinyproxy on 127.0.0.1 as the upstream. Root only; traffic goes only to 127.0.0.1 and kit's namespaces.
# Usage: [KIT=path] [SIZE_MB=100] [ROUNDS=3] bench/proxy-wget.sh     prints MB/s per path, median of the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-artifacts/kit/kit}
SIZE_MB=${SIZE_MB:-100}
ROUNDS=${ROUNDS:-3}
[ -x "$KIT" ] || { echo "build first: ./kit --version" >&2; exit 1; }
dir=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
head -c $((SIZE_MB << 20)) /dev/urandom > "$dir/big"
web=$(free_port); proxy=$(free_port)
python3 -m http.server -b 127.0.0.1 -d "$dir" "$web" >/dev/null 2>&1 & PIDS+=($!)
chmod 755 "$dir"
printf 'User nobody\nGroup nogroup\nPort %s\nListen 127.0.0.1\nLogLevel Critical\nMaxClients 8\nAllow 127.0.0.1\n' "$proxy" > "$dir/tinyproxy.conf"
tinyproxy -d -c "$dir/tinyproxy.conf" >/dev/null 2>&1 & PIDS+=($!)
for port in "$web" "$proxy"; do # both listening before the first fetch
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
url="http://host.internal:$web/big"
fetch() { # ENV FLAGS... : seconds for one wget, measured inside the namespace
  local env=$1; shift
  # A DNS upstream on loopback that answers nothing: every name used here is the gateway's own.
  "$KIT" net run --dns-upstream 127.0.0.1:9 "$@" -- sh -c "s=\$(date +%s.%N); $env timeout 120 busybox wget -q -O /dev/null $url && e=\$(date +%s.%N) && echo \"\$s \$e\"" \
    | awk '{ printf "%.3f\n", $2 - $1 }'
}
declare -A all
for r in $(seq "$ROUNDS"); do
  all[direct]+="$(fetch "" ) "
  all[gateway]+="$(fetch "http_proxy=http://192.168.65.1:3128") "
  all[tinyproxy]+="$(fetch "http_proxy=http://192.168.65.1:3128" --http-proxy "http://127.0.0.1:$proxy") "
done
for k in direct gateway tinyproxy; do
  python3 -c 'import statistics,sys
v=[float(x) for x in sys.argv[3:]]
m=statistics.median(v)
print("%-10s %7.1f MB/s  (median of %d: %s s)" % (sys.argv[1], int(sys.argv[2])/m, len(v), " ".join(sys.argv[3:])))' "$k" "$SIZE_MB" ${all[$k]}
done
