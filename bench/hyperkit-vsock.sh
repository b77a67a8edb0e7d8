#!/usr/bin/env bash
# HyperKit virtio-vsock throughput (issue 6): one stream each way between a host program (socat on the Unix socket,
# Firecracker's CONNECT protocol) and a guest program (Debian's socat on AF_VSOCK), `kit vm run --vsock` in a nested
# L1 (a QEMU TCG guest with -cpu max and kvm_amd: testing-here.md section 2). Root only; touches no network.
# Usage: bench/hyperkit-vsock.sh [MIB]   (default 64 MiB each way)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/nested-l1.sh
root=$(pwd)
mib=${1:-64}
./kit --help >/dev/null   # builds artifacts/kit/kit when missing or older than the sources
eval "$(bash guest/build.sh | grep -E '^(kernel|initrd)=')"
work="$root/artifacts/bench-vsock"
rm -rf "$work"; mkdir -p "$work/extra/kit/lib" "$work/extra/kit/bin"

# The L2 guest: socat and its libraries (started through the loader), a sink on port 1234, then a source to host port 5000.
cp /usr/bin/socat "$work/extra/kit/lib/socat"
loader=
for lib in $(ldd /usr/bin/socat | grep -o '/[^ ]* (0x' | cut -d' ' -f1); do
  cp -L "$lib" "$work/extra/kit/lib/"
  case "$lib" in */ld-linux*) loader=$(basename "$lib") ;; esac
done
printf '#!/bin/sh\nexec /kit/lib/%s --library-path /kit/lib /kit/lib/socat "$@"\n' "$loader" > "$work/extra/kit/bin/socat"
cat > "$work/extra/kit/run" <<GUEST
#!/bin/sh
export PATH=/kit/bin:\$PATH
socat -u VSOCK-LISTEN:1234 OPEN:/dev/null &
echo VSOCK-LISTENING
wait
# busybox date has no %N: /proc/uptime has centiseconds.
s=\$(cut -d' ' -f1 /proc/uptime)
head -c $((mib << 20)) /dev/zero | socat -u - VSOCK-CONNECT:2:5000
e=\$(cut -d' ' -f1 /proc/uptime)
echo "guest-to-host mib=$mib ms=\$(awk -v s=\$s -v e=\$e 'BEGIN { printf "%d", (e - s) * 1000 }')"
exit 0
GUEST
chmod +x "$work/extra/kit/run" "$work/extra/kit/bin/socat"
(cd "$work/extra" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$work/extra.gz"
cat "$initrd" "$work/extra.gz" > "$work/l2.initrd"

cat > "$work/inner.sh" <<INNER
export DOTNET_ROOT=$(dirname "$(readlink -f "$(command -v dotnet)")") PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
cd /tmp
W=$work
S=/tmp/vsock   # sockets on L1's tmpfs: a socket bound on the 9p share may not be found by connect()
mkdir -p \$S
socat -u UNIX-LISTEN:\$S/v.sock_5000 OPEN:/dev/null &
$root/artifacts/kit/kit vm run --kernel $kernel --initrd \$W/l2.initrd --memory 512M \
  --cmdline "console=ttyS0 reboot=k panic=-1 no_timer_check quiet" --vsock \$S/v.sock > \$W/console 2>&1 &
vm=\$!
until grep -q VSOCK-LISTENING \$W/console 2>/dev/null; do kill -0 \$vm || break; sleep 1; done
sleep 1
s=\$(date +%s%N)
{ printf 'CONNECT 1234\n'; head -c $((mib << 20)) /dev/zero; } | socat -u - UNIX-CONNECT:\$S/v.sock
e=\$(date +%s%N)
echo "host-to-guest mib=$mib ms=\$(( (e - s) / 1000000 ))"
wait \$vm
grep -a guest-to-host \$W/console
INNER

echo "L1 boots, then L2; allow a few minutes ..." >&2
nested_l1 "$kernel" "$initrd" "$work" 1800 "sh $work/inner.sh"
echo "| direction | MiB | seconds | MiB/s |"
echo "|---|---|---|---|"
grep -a -E '^(host-to-guest|guest-to-host) ' "$work/l1.log" | tr -d '\r' | awk '{
  split($2, a, "="); split($3, b, "="); printf "| %s | %s | %.1f | %.1f |\n", $1, a[2], b[2] / 1000, a[2] / (b[2] / 1000)
}'
