#!/usr/bin/env bash
# HyperKit virtio-net speed (issue 6, "Speed"): guest->host iperf3 (one stream, -t SECONDS) from the default Debian
# guest to an iperf3 server on L1's 127.0.0.1, side by side in one nested L1 (a QEMU TCG guest with -cpu max and
# kvm_amd, the host's / shared read-only: testing-here.md section 2):
#   kit-vpnkit   kit vm run --net vpnkit                 (in-process VPNKit, csum/TSO offload; target 192.168.65.2)
#   kit-vpnkit-nooffload   the same with KIT_NET_NO_OFFLOAD=1 (no csum/TSO: MTU-sized frames both ways)
#   kit-vmnet    kit vm run --net vmnet:SOCK             (VMN3T to kit net serve --vmnet in another process)
#   qemu-user    qemu -enable-kvm -netdev user           (libslirp; target 10.0.2.2)
#   qemu-stream  qemu -enable-kvm -netdev stream         (to kit net serve --qemu; target 192.168.65.2)
# Each guest then runs the reverse direction (-R) too. Root only; touches no network beyond L1's loopback.
# Usage: bench/hyperkit-net.sh [SECONDS] [REPEATS]   (default 10 s, 1 repeat; repeats interleave the paths)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/nested-l1.sh
root=$(pwd)
secs=${1:-10}
reps=${2:-1}
./kit --help >/dev/null   # builds artifacts/kit/kit when missing or older than the sources
eval "$(bash guest/build.sh | grep -E '^(kernel|initrd)=')"
work="$root/artifacts/bench-hyperkit-net"
rm -rf "$work"; mkdir -p "$work/extra/kit"

# The L2 guest: the default initramfs plus a /kit/run that takes a lease and runs iperf3 against kit.target=.
cat > "$work/extra/kit/run" <<GUEST
#!/bin/sh
target=\$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^kit.target=//p')
ip link set eth0 up
udhcpc -i eth0 -n -q -t 10 -T 3 >/dev/null 2>&1 || { echo "bench-error=no-lease"; exit 1; }
for dir in up down; do
  flag=; [ \$dir = down ] && flag=-R
  timeout $((secs * 3 + 60)) iperf3 -c "\$target" -p 15201 -t $secs -f m \$flag > /tmp/iperf 2>&1
  echo "bench-\$dir rc=\$? \$(grep -E 'receiver' /tmp/iperf | awk '{for(i=1;i<=NF;i++) if (\$i ~ /bits\\/sec/) print \$(i-1), \$i}')"
done
exit 0
GUEST
chmod +x "$work/extra/kit/run"
(cd "$work/extra" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$work/extra.gz"
cat "$initrd" "$work/extra.gz" > "$work/l2.initrd"

kit="$root/artifacts/kit/kit"
cat > "$work/inner.sh" <<INNER
export DOTNET_ROOT=$(dirname "$(readlink -f "$(command -v dotnet)")") PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
cd /tmp
iperf3 -s -B 127.0.0.1 -p 15201 >/dev/null 2>&1 &
$kit net serve --vmnet unix:/tmp/vmnet.sock --qemu unix:/tmp/qemu.sock --dns-upstream 127.0.0.1:9 > /tmp/serve.log 2>&1 &
for i in \$(seq 100); do [ -S /tmp/qemu.sock ] && break; sleep 0.2; done
cl="console=ttyS0 reboot=k panic=-1 no_timer_check quiet"
qemu() { timeout 600 qemu-system-x86_64 -enable-kvm -cpu host -m 512 -smp 1 -nodefaults -no-user-config -display none -serial stdio \
  -monitor none -kernel $kernel -initrd $work/l2.initrd -no-reboot "\$@"; }
kitvm() { timeout 600 $kit vm run --kernel $kernel --initrd $work/l2.initrd --memory 512M "\$@"; }
# Consoles go to L1's tmpfs (a write to the 9p results share is a round trip to the host), copied once a guest ends;
# each VMM is bounded (timeout 600) so a guest that hangs leaves its console and the rest of the run goes on.
run() {
  case \$1 in
    kit-vpnkit) kitvm --net vpnkit --dns-upstream 127.0.0.1:9 --cmdline "\$cl kit.target=192.168.65.2" ;;
    kit-vpnkit-nooffload) KIT_NET_NO_OFFLOAD=1 kitvm --net vpnkit --dns-upstream 127.0.0.1:9 --cmdline "\$cl kit.target=192.168.65.2" ;;
    kit-vmnet) kitvm --net vmnet:/tmp/vmnet.sock --cmdline "\$cl kit.target=192.168.65.2" ;;
    qemu-stream) qemu -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/qemu.sock -device virtio-net-pci,netdev=n0 \
      -append "\$cl kit.target=192.168.65.2" ;;
    qemu-user) qemu -netdev user,id=n0,restrict=off -device virtio-net-pci,netdev=n0 -append "\$cl kit.target=10.0.2.2" ;;
  esac > /tmp/\$1-\$2.log 2>&1
  cp /tmp/\$1-\$2.log $work/
  grep -a '^bench-' /tmp/\$1-\$2.log | tr -d '\r' | sed "s/^/path=\$1 rep=\$2 /"
}
# Interleaved, the order reversed every other repeat, so no path always runs first or last.
order="kit-vpnkit qemu-user kit-vpnkit-nooffload qemu-stream kit-vmnet"
for rep in \$(seq $reps); do
  list=\$order; [ \$((rep % 2)) = 0 ] && list=\$(echo \$order | tr ' ' '\n' | tac | tr '\n' ' ')
  for p in \$list; do run \$p \$rep; done
done
INNER

echo "L1 boots; five L2 guests per repeat each boot (20-40 s) and run iperf3 twice for $secs s ..." >&2
nested_l1 "$kernel" "$initrd" "$work" $((600 + reps * 1200)) "sh $work/inner.sh" || true
echo "| path | repeat | guest->host (Mbit/s) | host->guest (-R, Mbit/s) |"
echo "|---|---|---|---|"
grep -a '^path=' "$work/l1.log" | tr -d '\r' | awk '{
  split($1, p, "="); split($2, r, "="); dir = ($3 == "bench-up") ? "up" : "down"
  v[p[2], r[2], dir] = ($4 == "rc=0") ? $5 : "failed (" $4 ")"; seen[p[2], r[2]] = 1; if (r[2] > max) max = r[2]
} END { n = split("kit-vpnkit kit-vpnkit-nooffload kit-vmnet qemu-user qemu-stream", order, " ");
  for (i = 1; i <= n; i++) for (k = 1; k <= max; k++) if ((order[i], k) in seen)
    printf "| %s | %d | %s | %s |\n", order[i], k, v[order[i], k, "up"], v[order[i], k, "down"] }'
