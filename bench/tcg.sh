#!/usr/bin/env bash
# `kit vm run --accel tcg` (QEMU's software CPU, Kit's virtio-net/VPNKit and virtio-vsock over vhost-user) against its
# peers, side by side and interleaved in one run on this host (no nesting: testing-here.md sections 4 and 5). Issue 13, "Speed".
#   net    iperf3 one stream, SECONDS each way (guest->host, then host->guest with -R), from the default guest to an
#          iperf3 server on the host's 127.0.0.1 through each path's host-loopback address:
#            kit-tcg      kit vm run --accel tcg --net vpnkit      (vhost-user, VPNKit in kit's process; 192.168.65.2)
#            qemu-user    qemu -accel tcg -netdev user             (libslirp inside QEMU; 10.0.2.2)
#            qemu-stream  qemu -netdev stream  -> kit net serve --qemu       (192.168.65.2)
#            qemu-vhost   qemu -netdev vhost-user -> kit net serve --vhost-user (192.168.65.2)
#            passt-vhost  qemu -netdev vhost-user -> passt --vhost-user  (--map-host-loopback 192.0.2.1; needs PASST=)
#          plus the CPU seconds of the gateway process (kit, kit net serve, passt) and of QEMU during each transfer
#          (utime+stime from /proc/PID/stat at the guest's start/end markers), per Gbit moved.
#   boot   the guest's uptime when /kit/run starts and the host's wall time from starting the VMM to that console
#          line: kit vm run --accel tcg --net none vs qemu-system-x86_64 -accel tcg, same kernel, initrd, command
#          line, memory, -cpu max and virtio-rng; "cold" right after echo 3 > /proc/sys/vm/drop_caches, then "warm".
#   vsock  MIB MiB each way between a guest socat (AF_VSOCK) and a host socat on kit's Unix socket (--vsock), and the
#          same transfer over TCP through VPNKit in the same guest (to and from socat on the host's 127.0.0.1; the guest
#          connects out both times). Guest->host and TCP times are the guest's clock; vsock host->guest is the host's
#          clock from the first byte sent to the guest's "received" line on the console.
# Every guest: 1 vCPU (QEMU -cpu max, as kit passes), 512 MiB, MTU 1500. Every VMM runs under `timeout`; traffic goes
# only to 127.0.0.1 and the guests started here; the guests never resolve a name, and kit's DNS upstream is a closed
# loopback port (127.0.0.1:9), never the host's resolv.conf. Root only (drop_caches).
# Usage: [PASST=/path/to/passt] [ONLY=net|boot|vsock] [MIB=64] bench/tcg.sh [REPEATS] [SECONDS]   (default 2, 10)
#   KIT_STATS=1  runs kit with KIT_VM_STATS=1 and keeps its stderr (artifacts/bench-tcg/*.log)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
reps=${1:-2}
secs=${2:-10}
mib=${MIB:-64}
passt=${PASST:-}
[ "$(id -u)" = 0 ] || { echo "bench/tcg.sh: run as root (drop_caches)" >&2; exit 1; }
for t in qemu-system-x86_64 iperf3 socat; do command -v $t >/dev/null || { echo "bench/tcg.sh: needs $t" >&2; exit 1; }; done
./kit --help >/dev/null   # publishes artifacts/kit (NativeAOT) when missing or older than the sources
kit="$root/artifacts/kit/kit"
eval "$(bash guest/build.sh | grep -E '^(kernel|initrd)=')"
work="$root/artifacts/bench-tcg"
rm -rf "$work"; mkdir -p "$work/extra/kit/lib" "$work/extra/kit/bin"
S=$(mktemp -d /tmp/kit-bench-tcg.XXXXXX)   # sockets
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$S"; }
trap cleanup EXIT
IPERF_PORT=15201 TCP_SINK=15300 TCP_SRC=15302

# The guest: the default initramfs plus socat (and its libraries, through the loader, as bench/hyperkit-vsock.sh) and
# a /kit/run whose work is chosen by kit.mode= on the command line.
cp /usr/bin/socat "$work/extra/kit/lib/socat"
loader=
for lib in $(ldd /usr/bin/socat | grep -o '/[^ ]* (0x' | cut -d' ' -f1); do
  cp -L "$lib" "$work/extra/kit/lib/"
  case "$lib" in */ld-linux*) loader=$(basename "$lib") ;; esac
done
printf '#!/bin/sh\nexec /kit/lib/%s --library-path /kit/lib /kit/lib/socat "$@"\n' "$loader" > "$work/extra/kit/bin/socat"
cat > "$work/extra/kit/run" <<GUEST
#!/bin/sh
echo "uptime-at-run=\$(cut -d' ' -f1 /proc/uptime)"
export PATH=/kit/bin:\$PATH
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^\$1=//p"; }
mode=\$(arg kit.mode); target=\$(arg kit.target)
[ "\$mode" = boot ] && exit 0
ip link set eth0 up
udhcpc -i eth0 -n -q -t 10 -T 3 >/dev/null 2>&1 || { echo "bench-error=no-lease"; exit 1; }
ms() { awk '{ printf "%d", \$1 * 1000 }' /proc/uptime; }   # busybox date has no %N; /proc/uptime has centiseconds
if [ "\$mode" = net ]; then
  for dir in up down; do
    flag=; [ \$dir = down ] && flag=-R
    echo "bench-go \$dir"
    timeout $((secs * 3 + 60)) iperf3 -c "\$target" -p $IPERF_PORT -t $secs -f m \$flag > /tmp/iperf 2>&1; rc=\$?
    echo "bench-done \$dir rc=\$rc mbps=\$(awk '/receiver/ { for (i = 1; i <= NF; i++) if (\$i ~ /bits\\/sec/) print \$(i-1) }' /tmp/iperf)"
  done
  sleep 2   # the host reads the VMM's CPU ticks at the last marker: the VMM must still be there
  exit 0
fi
# vsock: host->guest and guest->host over AF_VSOCK, then the same over TCP through the network device.
socat -u VSOCK-LISTEN:1234 OPEN:/dev/null & l=\$!
echo "bench-listening vsock"; wait \$l; echo "bench-received vsock"
s=\$(ms); head -c $((mib << 20)) /dev/zero | timeout 120 socat -u - VSOCK-CONNECT:2:5000; rc=\$?; e=\$(ms)
echo "bench-sent vsock rc=\$rc ms=\$((e - s))"
# host->guest over TCP: the guest connects out (through VPNKit's NAT) and the host sends.
# readbytes: socat stops at the last byte instead of waiting for EOF, as VPNKit sometimes never passes on the
# host's FIN that follows the data (see docs/benchmarks.md); no pipe, so the guest does what the vsock sink does.
s=\$(ms); timeout 120 socat -u TCP:192.168.65.2:$TCP_SRC,readbytes=$((mib << 20)) OPEN:/dev/null; rc=\$?; e=\$(ms)
echo "bench-got tcp rc=\$rc ms=\$((e - s))"
s=\$(ms); head -c $((mib << 20)) /dev/zero | timeout 120 socat -u - TCP:192.168.65.2:$TCP_SINK; rc=\$?; e=\$(ms)
echo "bench-sent tcp rc=\$rc ms=\$((e - s))"
exit 0
GUEST
chmod +x "$work/extra/kit/run" "$work/extra/kit/bin/socat"
(cd "$work/extra" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$work/extra.gz"
cat "$initrd" "$work/extra.gz" > "$work/guest.initrd"
gi="$work/guest.initrd"

cl="console=ttyS0 reboot=k panic=-1 no_timer_check quiet"
stats=""; [ "${KIT_STATS:-0}" = 1 ] && stats="KIT_VM_STATS=1"
# The same machine kit builds for QEMU (src/Kit/Vm/QemuCommandLine.cs), minus the vhost-user memfd for plain QEMU.
qemu_base=(qemu-system-x86_64 -nodefaults -no-user-config -display none -accel tcg -cpu max -smp 1 -m 512M -no-reboot
  -kernel "$kernel" -initrd "$gi" -serial stdio -monitor none
  -object rng-random,id=rng,filename=/dev/urandom -device virtio-rng-pci,rng=rng)
memfd=(-object memory-backend-memfd,id=mem,size=512M,share=on -machine pc,memory-backend=mem)

ms() { echo $(( $(date +%s%N) / 1000000 )); }
ticks() { [ -n "$1" ] && awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)

# The long-lived peers: the iperf3 server, a TCP sink for the vsock comparison, two kit net serve (separate processes:
# with a --qemu link beside it, --vhost-user would lose segmentation offload).
iperf3 -s -B 127.0.0.1 -p $IPERF_PORT >/dev/null 2>&1 & PIDS+=($!)
socat -u TCP-LISTEN:$TCP_SINK,bind=127.0.0.1,reuseaddr,fork OPEN:/dev/null & PIDS+=($!)
"$kit" net serve --qemu "unix:$S/stream.sock" --dns-upstream 127.0.0.1:9 > "$work/serve-stream.log" 2>&1 & SERVE_STREAM=$!; PIDS+=($!)
"$kit" net serve --vhost-user "unix:$S/vu.sock" --dns-upstream 127.0.0.1:9 > "$work/serve-vhost.log" 2>&1 & SERVE_VHOST=$!; PIDS+=($!)
for _ in $(seq 100); do [ -S "$S/stream.sock" ] && [ -S "$S/vu.sock" ] && break; sleep 0.1; done

# launch NAME LOG CMD...: runs the VMM under timeout with its console copied to LOG, each line of interest stamped
# with the host's clock (ms since the VMM started) and the CPU ticks of $GW (the gateway) and of QEMU.
launch() {
  local name=$1 log=$2; shift 2
  rm -f "$S/console"; mkfifo "$S/console"
  local s; s=$(ms)
  timeout -k 10 300 "$@" < /dev/null > "$S/console" 2>"$log.err" & local top=$!
  local q=""
  while IFS= read -r line; do
    line=${line%$'\r'}
    case "$line" in
      *uptime-at-run=*|bench-*)
        # QEMU: timeout's child, or kit's child (kit execs it through setpriv).
        if [ -z "$q" ]; then local c; c=$(pgrep -P $top | head -1 || true); q=$c
          case "$name" in kit*) GW=$c; q=$( [ -n "$c" ] && pgrep -P "$c" | head -1 || true) ;; esac; fi
        echo "$line t=$(( $(ms) - s )) gw=$(ticks "${GW:-}") qemu=$(ticks "$q")" ;;
      *) echo "$line" ;;
    esac
  done < "$S/console" > "$log"
  local rc=0; wait $top || rc=$?
  echo "rc=$rc wall=$(( $(ms) - s ))" >> "$log"
}
field() { grep -a -o "$2=[^ ]*" <<<"$1" | head -1 | cut -d= -f2 || true; }

R="$work/results"; : > "$R"
net_run() { # path rep
  local p=$1 rep=$2 log="$work/net-$1-$2.log" target=192.168.65.2 PP=
  GW=
  case $p in
    kit-tcg) launch kit-tcg "$log" env $stats "$kit" vm run --accel tcg --kernel "$kernel" --initrd "$gi" --memory 512M --cpus 1 \
               --net vpnkit --dns-upstream 127.0.0.1:9 --cmdline "$cl kit.mode=net kit.target=$target" ;;
    qemu-user) target=10.0.2.2
      launch qemu "$log" "${qemu_base[@]}" -netdev user,id=n0 -device virtio-net-pci,netdev=n0 -append "$cl kit.mode=net kit.target=$target" ;;
    qemu-stream) GW=$SERVE_STREAM
      launch qemu "$log" "${qemu_base[@]}" -netdev stream,id=n0,server=off,addr.type=unix,addr.path="$S/stream.sock" \
        -device virtio-net-pci,netdev=n0 -append "$cl kit.mode=net kit.target=$target" ;;
    qemu-vhost) GW=$SERVE_VHOST
      launch qemu "$log" "${qemu_base[@]}" "${memfd[@]}" -chardev socket,id=c0,path="$S/vu.sock" -netdev vhost-user,id=n0,chardev=c0 \
        -device virtio-net-pci,netdev=n0,vectors=0 -append "$cl kit.mode=net kit.target=$target" ;;
    passt-vhost) target=192.0.2.1
      rm -f "$S/passt.sock"
      # -1: quit with the one frontend; no DNS given to the guest (-D none: it never resolves).
      timeout -k 5 400 "$passt" -f -1 --vhost-user -s "$S/passt.sock" --map-host-loopback $target -D none -S none \
        > "$work/passt-$rep.log" 2>&1 & PP=$!
      for _ in $(seq 50); do [ -S "$S/passt.sock" ] && break; sleep 0.1; done
      GW=$(pgrep -P $PP | head -1 || true); GW=${GW:-$PP}
      launch qemu "$log" "${qemu_base[@]}" "${memfd[@]}" -chardev socket,id=c0,path="$S/passt.sock" -netdev vhost-user,id=n0,chardev=c0 \
        -device virtio-net-pci,netdev=n0,vectors=0 -append "$cl kit.mode=net kit.target=$target"
      kill $PP 2>/dev/null || true; wait $PP 2>/dev/null || true ;;
  esac
  local go="" l
  while IFS= read -r l; do
    case "$l" in
      uptime-at-run=*) echo "part=netboot path=$p rep=$rep uptime=$(field "$l" uptime-at-run) init_ms=$(field "$l" t)" >> "$R" ;;
      "bench-go "*) go=$l ;;
      "bench-done "*) local d; d=$(awk '{print $2}' <<<"$l")
        echo "part=net path=$p rep=$rep dir=$d $(field "$l" rc | sed 's/^/rc=/') mbps=$(field "$l" mbps) secs=$secs" \
          "gw_ticks=$(( $(field "$l" gw) - $(field "$go" gw) )) qemu_ticks=$(( $(field "$l" qemu) - $(field "$go" qemu) ))" >> "$R" ;;
    esac
  done < "$log"
  grep -a "path=$p rep=$rep " "$R" | grep -v netboot >&2 || echo "net $p rep $rep: no result (see $log)" >&2
}

boot_run() { # vmm temp rep
  local log="$work/boot-$1-$2-$3.log"
  [ "$2" = cold ] && { sync; echo 3 > /proc/sys/vm/drop_caches; }
  case $1 in
    kit-tcg) launch kit-tcg "$log" env $stats "$kit" vm run --accel tcg --kernel "$kernel" --initrd "$gi" --memory 512M --cpus 1 \
               --net none --cmdline "$cl kit.mode=boot" ;;
    qemu) launch qemu "$log" "${qemu_base[@]}" -append "$cl kit.mode=boot" ;;
  esac
  local l; l=$(grep -a '^uptime-at-run=' "$log" | head -1 || true)
  echo "part=boot vmm=$1 temp=$2 rep=$3 uptime=$(field "$l" uptime-at-run) init_ms=$(field "$l" t) $(tail -1 "$log")" | tee -a "$R" >&2
}

wait_line() { # log pattern: up to 240 s
  for _ in $(seq 2400); do grep -aq "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1
}
vsock_run() { # rep
  local log="$work/vsock-$1.log" rep=$1
  rm -f "$S/v.sock" "$S/v.sock_5000"
  socat -u UNIX-LISTEN:"$S/v.sock_5000" OPEN:/dev/null & local sink=$!
  head -c $((mib << 20)) /dev/zero | timeout 400 socat -u - TCP-LISTEN:$TCP_SRC,bind=127.0.0.1,reuseaddr & local src=$!
  ( launch kit-tcg "$log" "$kit" vm run --accel tcg --kernel "$kernel" --initrd "$gi" --memory 512M --cpus 1 --net vpnkit \
      --dns-upstream 127.0.0.1:9 --vsock "$S/v.sock" --cmdline "$cl kit.mode=vsock" ) & local vm=$!
  local s h
  if wait_line "$log" '^bench-listening vsock'; then
    sleep 0.5; s=$(ms)
    { printf 'CONNECT 1234\n'; head -c $((mib << 20)) /dev/zero; } | timeout 120 socat -u - UNIX-CONNECT:"$S/v.sock" || true
    wait_line "$log" '^bench-received vsock' && h=$(( $(ms) - s )) || h=
    echo "part=vsock rep=$rep path=vsock dir=h2g mib=$mib ms=$h" >> "$R"
  fi
  wait $vm || true; kill $sink $src 2>/dev/null || true; wait $sink $src 2>/dev/null || true
  local l
  l=$(grep -a "^bench-got tcp " "$log" | head -1 || true)
  echo "part=vsock rep=$rep path=tcp dir=h2g mib=$mib ms=$(field "$l" ms) rc=$(field "$l" rc)" >> "$R"
  for p in vsock tcp; do
    l=$(grep -a "^bench-sent $p " "$log" | head -1 || true)
    echo "part=vsock rep=$rep path=$p dir=g2h mib=$mib ms=$(field "$l" ms) rc=$(field "$l" rc)" >> "$R"
  done
  grep -a "part=vsock rep=$rep " "$R" >&2
}

part() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }
paths="kit-tcg qemu-user qemu-stream qemu-vhost"
[ -n "$passt" ] && paths="$paths passt-vhost"
start=$(date '+%Y-%m-%d %H:%M %Z')
echo "bench/tcg.sh: $reps repeats, iperf3 ${secs} s, vsock ${mib} MiB; paths: $paths" >&2
for rep in $(seq "$reps"); do
  flip() { if [ $((rep % 2)) = 0 ]; then echo "$@" | tr ' ' '\n' | tac | tr '\n' ' '; else echo "$@"; fi; }
  if part net; then for p in $(flip $paths); do net_run "$p" "$rep"; done; fi
  if part boot; then for v in $(flip kit-tcg qemu); do boot_run "$v" cold "$rep"; boot_run "$v" warm "$rep"; done; fi
  if part vsock; then vsock_run "$rep"; fi
done

# ---- report ----
echo "# bench/tcg.sh $reps $secs (started $start, finished $(date '+%H:%M %Z'))"
echo "# machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(qemu-system-x86_64 --version | head -1); $(iperf3 --version | head -1 | cut -d' ' -f1-2); kit $("$kit" --version)${passt:+; passt $("$passt" --version 2>&1 | head -1)}"
med='function med(list,   n, a, i, j, t) { n = split(list, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
  return n ? (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2) : "-" }
function lo(list,   n, a, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 < m + 0) m = a[i]; return m }
function hi(list,   n, a, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 > m + 0) m = a[i]; return m }
{ delete v; for (i = 1; i <= NF; i++) { k = index($i, "="); v[substr($i, 1, k - 1)] = substr($i, k + 1) } }'
if part net; then
  echo
  echo "## iperf3, one stream, ${secs} s, Mbit/s (median, range over $reps runs); CPU seconds per Gbit moved (median)"
  echo "| path | guest->host | host->guest | gateway CPU s/Gbit up / down | QEMU CPU s/Gbit up / down | up, each run | down, each run |"
  echo "|---|---|---|---|---|---|---|"
  awk "$med"'
    v["part"] == "net" { k = v["path"] SUBSEP v["dir"]; if (!(v["path"] in seen)) { seen[v["path"]] = 1; order[++n] = v["path"] }
      if (v["rc"] != 0 || v["mbps"] == "") { runs[k] = runs[k] " fail"; next }
      g = v["mbps"] * v["secs"] / 1000; r[k] = r[k] " " v["mbps"]; runs[k] = runs[k] " " v["mbps"]
      if (g > 0) { gc[k] = gc[k] " " sprintf("%.2f", v["gw_ticks"] / '"$hz"' / g); qc[k] = qc[k] " " sprintf("%.2f", v["qemu_ticks"] / '"$hz"' / g) } }
    END { for (i = 1; i <= n; i++) { p = order[i]; u = p SUBSEP "up"; d = p SUBSEP "down"
      printf "| %s | %s (%s-%s) | %s (%s-%s) | %s / %s | %s / %s | %s | %s |\n", p, med(r[u]), lo(r[u]), hi(r[u]), med(r[d]), lo(r[d]), hi(r[d]),
        (p == "qemu-user") ? "(in QEMU)" : med(gc[u]), (p == "qemu-user") ? "(in QEMU)" : med(gc[d]), med(qc[u]), med(qc[d]), runs[u], runs[d] } }' "$R"
  echo
  echo "Boot to /init in the network runs (median s, range): guest uptime; wall from VMM start"
  echo "| path | uptime at /init | wall to /init |"
  echo "|---|---|---|"
  awk "$med"'v["part"] == "netboot" { p = v["path"]; if (!(p in seen)) { seen[p] = 1; order[++n] = p }; u[p] = u[p] " " v["uptime"]; w[p] = w[p] " " v["init_ms"] / 1000 }
    END { for (i = 1; i <= n; i++) { p = order[i]; printf "| %s | %s (%s-%s) | %s (%s-%s) |\n", p, med(u[p]), lo(u[p]), hi(u[p]), med(w[p]), lo(w[p]), hi(w[p]) } }' "$R"
fi
if part boot; then
  echo
  echo "## boot to /init, 1 vCPU, 512 MiB (s; median, range over $reps runs)"
  echo "| VMM | cache | guest uptime at /init | wall to /init | wall to power-off | each run (uptime / wall to /init) |"
  echo "|---|---|---|---|---|---|"
  awk "$med"'v["part"] == "boot" { k = v["vmm"] " | " v["temp"]; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
      u[k] = u[k] " " v["uptime"]; w[k] = w[k] " " v["init_ms"] / 1000; o[k] = o[k] " " v["wall"] / 1000; each[k] = each[k] " " v["uptime"] "/" v["init_ms"] / 1000 }
    END { for (i = 1; i <= n; i++) { k = order[i]; printf "| %s | %s (%s-%s) | %s (%s-%s) | %s | %s |\n", k, med(u[k]), lo(u[k]), hi(u[k]), med(w[k]), lo(w[k]), hi(w[k]), med(o[k]), each[k] } }' "$R" | sort
fi
if part vsock; then
  echo
  echo "## ${mib} MiB one stream each way, MB/s (median, range over $reps runs): vsock vs TCP through VPNKit, kit vm run --accel tcg"
  echo "| path | direction | MB/s | each run |"
  echo "|---|---|---|---|"
  awk "$med"'v["part"] == "vsock" { k = v["path"] " | " v["dir"]; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
      if (v["ms"] == "" || v["ms"] == 0 || (v["rc"] != "" && v["rc"] != 0)) { each[k] = each[k] " fail"; next }
      x = sprintf("%.1f", v["mib"] * 1.048576 / (v["ms"] / 1000)); m[k] = m[k] " " x; each[k] = each[k] " " x }
    END { for (i = 1; i <= n; i++) { k = order[i]; printf "| %s | %s (%s-%s) | %s |\n", k, med(m[k]), lo(m[k]), hi(m[k]), each[k] } }' "$R" | sort
fi
echo
echo "Raw results: $R; consoles: $work/*.log"
