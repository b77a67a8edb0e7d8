#!/usr/bin/env bash
# HyperKit virtio-9p throughput (issue 6): a guest mounts a shared directory with trans=virtio and runs dd write/read,
# under `kit vm run --share` (built-in 9P2000.L server), `kit vm run --share TAG=tcp://...` relaying to diod, and
# `qemu-system-x86_64 -enable-kvm -virtfs` (QEMU's server),
# side by side in one nested L1 (QEMU TCG with -cpu max and kvm_amd: testing-here.md section 2). The exported
# directory is on L1's tmpfs for both. Root only; touches no network.
# Usage: bench/hyperkit-9p.sh [MIB]   (default 64 MiB per dd)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/nested-l1.sh
root=$(pwd)
mib=${1:-64}
./kit --help >/dev/null   # builds artifacts/kit/kit when missing or older than the sources
eval "$(bash guest/build.sh | grep -E '^(kernel|initrd)=')"
work="$root/artifacts/bench-9p"
rm -rf "$work"; mkdir -p "$work/extra/kit"

# The L2 guest: mount tag "host" (msize 512000, the Linux virtio maximum), write and read back MIB MiB with dd.
cat > "$work/extra/kit/run" <<GUEST
#!/bin/sh
mkdir -p /mnt/h
aname=\$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^kit.aname=//p')
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000\${aname:+,aname=\$aname} host /mnt/h || exit 20
# busybox dd prints no rate; time with /proc/uptime (centiseconds).
cs() { cut -d' ' -f1 /proc/uptime | tr -d .; }
s=\$(cs); dd if=/dev/zero of=/mnt/h/big bs=1M count=$mib conv=fsync 2>/dev/null; e=\$(cs)
echo "dd-write MiB_per_s=\$(( $mib * 100 / (e - s + 1) ))"
echo 3 > /proc/sys/vm/drop_caches
s=\$(cs); dd if=/mnt/h/big of=/dev/null bs=1M 2>/dev/null; e=\$(cs)
echo "dd-read MiB_per_s=\$(( $mib * 100 / (e - s + 1) ))"
s=\$(cs); for i in \$(seq 200); do echo x > /mnt/h/f\$i; done; e=\$(cs)
echo "small-files create_per_s=\$(( 200 * 100 / (e - s + 1) ))"
s=\$(cs); for i in \$(seq 200); do stat /mnt/h/f\$i >/dev/null; done; e=\$(cs)
echo "small-files stat_per_s=\$(( 200 * 100 / (e - s + 1) ))"
umount /mnt/h
exit 0
GUEST
chmod +x "$work/extra/kit/run"
(cd "$work/extra" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$work/extra.gz"
cat "$initrd" "$work/extra.gz" > "$work/l2.initrd"

cat > "$work/inner.sh" <<INNER
export DOTNET_ROOT=$(dirname "$(readlink -f "$(command -v dotnet)")") PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
cd /tmp
cl="console=ttyS0 reboot=k panic=-1 no_timer_check quiet"
rm -rf /tmp/share; mkdir /tmp/share
$root/artifacts/kit/kit vm run --kernel $kernel --initrd $work/l2.initrd --memory 512M --cmdline "\$cl" --share host=/tmp/share > $work/kit.log 2>&1
echo "vmm=kit rc=\$?"
rm -rf /tmp/share; mkdir /tmp/share
# The relay: the same guest through kit's virtio-9p relay to diod (a C 9P2000.L server) on L1's loopback.
diod -f -n -l 127.0.0.1:5640 -e /tmp/share > $work/diod.log 2>&1 &
d=\$!; sleep 2
$root/artifacts/kit/kit vm run --kernel $kernel --initrd $work/l2.initrd --memory 512M --cmdline "\$cl kit.aname=/tmp/share" --share host=tcp://127.0.0.1:5640 > $work/kit-diod.log 2>&1
echo "vmm=kit-diod rc=\$?"
kill \$d; wait \$d
rm -rf /tmp/share; mkdir /tmp/share
qemu-system-x86_64 -enable-kvm -cpu host -m 512 -nodefaults -no-user-config -display none -serial stdio -monitor none \
  -kernel $kernel -initrd $work/l2.initrd -append "\$cl" -no-reboot \
  -virtfs local,path=/tmp/share,mount_tag=host,security_model=none > $work/qemu.log 2>&1
echo "vmm=qemu rc=\$?"
INNER

echo "L1 boots; each L2 run takes 30-90 s ..." >&2
nested_l1 "$kernel" "$initrd" "$work" 1800 "sh $work/inner.sh" || true
grep -a '^vmm=' "$work/l1.log" | tr -d '\r' || true
for vmm in kit kit-diod qemu; do
  echo "--- $vmm"
  grep -a -E '^(dd-write|dd-read|small-files)' "$work/$vmm.log" | tr -d '\r' || echo "(no result; see $work/$vmm.log)"
done
