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
# Usage: bench/hyperkit-net.sh [SECONDS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/nested-l1.sh
root=$(pwd)
secs=${1:-10}
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
sleep 1
cl="console=ttyS0 reboot=k panic=-1 no_timer_check quiet"
qemu() { qemu-system-x86_64 -enable-kvm -cpu host -m 512 -smp 1 -nodefaults -no-user-config -display none -serial stdio \
  -monitor none -kernel $kernel -initrd $work/l2.initrd -no-reboot "\$@"; }
report() { grep -a '^bench-' "\$2" | tr -d '\r' | sed "s/^/path=\$1 /"; }

$kit vm run --kernel $kernel --initrd $work/l2.initrd --memory 512M --net vpnkit --dns-upstream 127.0.0.1:9 \
  --cmdline "\$cl kit.target=192.168.65.2" > $work/kit-vpnkit.log 2>&1
report kit-vpnkit $work/kit-vpnkit.log
KIT_NET_NO_OFFLOAD=1 $kit vm run --kernel $kernel --initrd $work/l2.initrd --memory 512M --net vpnkit --dns-upstream 127.0.0.1:9 \
  --cmdline "\$cl kit.target=192.168.65.2" > $work/kit-vpnkit-nooffload.log 2>&1
report kit-vpnkit-nooffload $work/kit-vpnkit-nooffload.log

$kit net serve --vmnet unix:/tmp/vmnet.sock --qemu unix:/tmp/qemu.sock --dns-upstream 127.0.0.1:9 > $work/serve.log 2>&1 &
serve=\$!
for i in \$(seq 100); do [ -S /tmp/qemu.sock ] && break; sleep 0.2; done
$kit vm run --kernel $kernel --initrd $work/l2.initrd --memory 512M --net vmnet:/tmp/vmnet.sock \
  --cmdline "\$cl kit.target=192.168.65.2" > $work/kit-vmnet.log 2>&1
report kit-vmnet $work/kit-vmnet.log
qemu -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/qemu.sock -device virtio-net-pci,netdev=n0 \
  -append "\$cl kit.target=192.168.65.2" > $work/qemu-stream.log 2>&1
report qemu-stream $work/qemu-stream.log
kill \$serve

qemu -netdev user,id=n0,restrict=off -device virtio-net-pci,netdev=n0 -append "\$cl kit.target=10.0.2.2" > $work/qemu-user.log 2>&1
report qemu-user $work/qemu-user.log
INNER

echo "L1 boots; five L2 guests each boot (20-40 s) and run iperf3 twice for $secs s ..." >&2
nested_l1 "$kernel" "$initrd" "$work" 2400 "sh $work/inner.sh" || true
echo "| path | guest->host (Mbit/s) | host->guest (-R, Mbit/s) |"
echo "|---|---|---|"
grep -a '^path=' "$work/l1.log" | tr -d '\r' | awk '{
  split($1, p, "="); dir = ($2 == "bench-up") ? "up" : "down"; v[p[2], dir] = ($3 == "rc=0") ? $4 : "failed (" $3 ")"; seen[p[2]] = 1
} END { n = split("kit-vpnkit kit-vpnkit-nooffload kit-vmnet qemu-user qemu-stream", order, " ");
  for (i = 1; i <= n; i++) if (order[i] in seen) printf "| %s | %s | %s |\n", order[i], v[order[i], "up"], v[order[i], "down"] }'
