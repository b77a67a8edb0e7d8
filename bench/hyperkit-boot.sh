#!/usr/bin/env bash
# HyperKit speed (issue 5, "Speed"): boot-to-/init time and peak RSS of `kit vm run` against
# `qemu-system-x86_64 -enable-kvm`, same kernel and initramfs, side by side in one nested L1 (a QEMU TCG guest with
# `-cpu max` and kvm_amd, the host's / shared read-only: testing-here.md section 2). Root only; touches no network.
# Usage: bench/hyperkit-boot.sh [REPEATS]   (default 2; each repeat boots 1 and 2 vCPUs with each VMM)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
reps=${1:-2}
./kit --help >/dev/null   # builds artifacts/kit/kit when missing or older than the sources
eval "$(bash guest/build.sh | grep -E '^(kernel|initrd)=')"
work="$root/artifacts/bench-hyperkit"
rm -rf "$work"; mkdir -p "$work/extra/kit"

# The L2 guest: the default initramfs plus a /kit/run that prints the uptime at which /init reached it.
printf '#!/bin/sh\necho "uptime-at-run=$(cut -d" " -f1 /proc/uptime)"\nexit 0\n' > "$work/extra/kit/run"
chmod +x "$work/extra/kit/run"
(cd "$work/extra" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$work/extra.gz"
cat "$initrd" "$work/extra.gz" > "$work/l2.initrd"

# The script L1 runs (chrooted into the host's /): each VMM boots L2 to /init and powers off; peak RSS is VmHWM.
cat > "$work/inner.sh" <<INNER
export DOTNET_ROOT=$(dirname "$(readlink -f "$(command -v dotnet)")") PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
cd /tmp
cl="console=ttyS0 reboot=k panic=-1 no_timer_check quiet"
ms() { echo \$(( \$(date +%s%N) / 1000000 )); }
measure() {
  out=\$1; shift
  s=\$(ms); "\$@" > "\$out" 2>&1 & p=\$!; hwm=0
  while kill -0 \$p 2>/dev/null; do
    h=\$(awk '/^VmHWM:/ {print \$2}' /proc/\$p/status 2>/dev/null || true); [ -n "\$h" ] && [ "\$h" -gt "\$hwm" ] && hwm=\$h
    [ "\$(awk '/^State:/ {print \$2}' /proc/\$p/status 2>/dev/null)" = Z ] && break
    sleep 0.2
  done
  wait \$p; rc=\$?; e=\$(ms)
  echo "rc=\$rc wall_ms=\$((e-s)) peak_rss_kib=\$hwm \$(grep -o 'uptime-at-run=[0-9.]*' "\$out")"
}
for rep in \$(seq $reps); do for cpus in 1 2; do
  echo "vmm=kit cpus=\$cpus rep=\$rep \$(measure $work/kit-\$cpus-\$rep.log $root/artifacts/kit/kit vm run --kernel $kernel --initrd $work/l2.initrd --memory 512M --cpus \$cpus --cmdline "\$cl")"
  echo "vmm=qemu cpus=\$cpus rep=\$rep \$(measure $work/qemu-\$cpus-\$rep.log qemu-system-x86_64 -enable-kvm -cpu host -m 512 -smp \$cpus -nodefaults -no-user-config -display none -serial stdio -monitor none -kernel $kernel -initrd $work/l2.initrd -append "\$cl" -no-reboot)"
done; done
INNER

cmd=$(printf 'sh %s' "$work/inner.sh" | base64 -w0)
echo "L1 boots; each L2 boot takes 20-40 s ..." >&2
timeout 1800 qemu-system-x86_64 -accel tcg -cpu max -m 3072 -smp 1 -nodefaults -nographic -no-reboot -monitor none \
  -serial stdio -kernel "$kernel" -initrd "$initrd" \
  -append "console=ttyS0 quiet panic=-1 no_timer_check kit.nested=1 kit.results=$work kit.cmd=$cmd" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$work,mount_tag=results,security_model=none,multidevs=remap" > "$work/l1.log" 2>&1
echo "| VMM | vCPUs | repeat | exit | guest uptime at /init (s) | wall, start to power-off (s) | peak RSS (MiB) |"
echo "|---|---|---|---|---|---|---|"
grep -a '^vmm=' "$work/l1.log" | tr -d '\r' | awk '{
  for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  printf "| %s | %s | %s | %s | %s | %.1f | %.0f |\n", v["vmm"], v["cpus"], v["rep"], v["rc"], v["uptime-at-run"], v["wall_ms"] / 1000, v["peak_rss_kib"] / 1024
}'
