#!/usr/bin/env bash
# HyperKit speed (issue 5, "Speed"): boot-to-/init time and peak RSS of `kit vm run` against
# `qemu-system-x86_64 -enable-kvm`, same kernel, initramfs, command line and devices (one virtio-rng, which kit
# attaches by default), side by side in one nested L1 (a QEMU TCG guest with `-cpu max` and kvm_amd, the host's /
# shared read-only: testing-here.md section 2). Root only; touches no network. docs/hyperkit-boot.md explains the
# figures.
# Usage: bench/hyperkit-boot.sh [REPEATS]   (default 3; each repeat boots 1 and 2 vCPUs with each VMM, interleaved)
#   KIT_BASE=DIR   also boots an older published kit (DIR/kit) in the same loop, for before/after figures
#   KIT_CPUS="2"   the vCPU counts to boot (default "1 2")
#   KIT_STATS=1    runs kit with KIT_VM_STATS=1 (exit counts by port; adds a little overhead) and keeps the logs
#   KIT_TRACE=1    adds `initcall_debug log_buf_len=4M` and has L2 print its dmesg after the uptime: the printk
#                  timestamps say where the boot went (bench/boot-phases.sh compares them); the wall figures of a
#                  traced run include printing the log and mean nothing
# Figures: "uptime at /init" is the guest's own clock when /kit/run starts (after /init loaded the virtio modules);
# "wall to /init" is the host's time from starting the VMM process to that line on its console, so it also counts
# the VMM's own start-up, firmware (QEMU's SeaBIOS) and the kernel's decompression; peak RSS is the VMM's
# maxrss from wait4 (GNU time; it covers the VMM, which `timeout` reaps). A boot that has not powered off after
# 300 s is stopped and shows exit 124: QEMU's 2-vCPU L2 sometimes hangs in this L1.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/nested-l1.sh
root=$(pwd)
reps=${1:-3}
./kit --help >/dev/null   # publishes artifacts/kit (NativeAOT) when missing or older than the sources
eval "$(bash guest/build.sh | grep -E '^(kernel|initrd)=')"
work="$root/artifacts/bench-hyperkit"
rm -rf "$work"; mkdir -p "$work/extra/kit"

# The L2 guest: the default initramfs plus a /kit/run that prints the uptime at which /init reached it.
printf '#!/bin/sh\necho "uptime-at-run=$(cut -d" " -f1 /proc/uptime)"\n' > "$work/extra/kit/run"
if [ "${KIT_TRACE:-0}" = 1 ]; then
  # Every byte on the UART is an exit, so print what the phases need, not the whole log: the lines that are not
  # initcall_debug's, the initcalls that took 20 ms or more, their sum, and the interrupt counts per CPU.
  cat >> "$work/extra/kit/run" <<'RUN'
dmesg | awk '/ calling / { next } / returned .* after [0-9]+ usecs/ { s += $(NF-1); if ($(NF-1) < 20000) next } { print } END { printf "initcalls-summed-usecs=%d\n", s }'
cat /proc/interrupts
RUN
fi
printf 'exit 0\n' >> "$work/extra/kit/run"
chmod +x "$work/extra/kit/run"
(cd "$work/extra" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$work/extra.gz"
cat "$initrd" "$work/extra.gz" > "$work/l2.initrd"

# kit boots the kernel's decompressed vmlinux from its cache (docs/hyperkit-boot.md, "Booting the decompressed
# kernel"); kit-cold, which runs just before it, empties that cache first, so it decompresses on the host and refills it.
vmms="kit-cold kit qemu"
[ -n "${KIT_BASE:-}" ] && vmms="kit-base $vmms"
stats=""
[ "${KIT_STATS:-0}" = 1 ] && stats="KIT_VM_STATS=1"
trace=""
[ "${KIT_TRACE:-0}" = 1 ] && trace=" initcall_debug log_buf_len=4M"
command -v /usr/bin/time >/dev/null || { echo "bench/hyperkit-boot.sh: needs GNU time (apt-get install time)" >&2; exit 1; }

# The script L1 runs (chrooted into the host's /): each VMM boots L2 to /init and powers off.
# Console output goes to L1's tmpfs (a file on the 9p results share would make every console byte a 9p write).
cat > "$work/boot.sh" <<BOOT
# boot.sh VMM CPUS: execs the VMM (GNU time then reports the VMM's own maxrss, not a shell's)
cl="console=ttyS0 reboot=k panic=-1 no_timer_check quiet$trace"
kit() { exec env $stats "\$1" vm run --kernel $kernel --initrd $work/l2.initrd --memory 512M --cpus \$2 --cmdline "\$cl"; }
case \$1 in
  kit) kit $root/artifacts/kit/kit \$2 ;;
  kit-cold) rm -rf "\$HOME/.cache/kit/vmlinux"; kit $root/artifacts/kit/kit \$2 ;;
  kit-base) kit ${KIT_BASE:-/nonexistent}/kit \$2 ;;
  qemu) exec qemu-system-x86_64 -enable-kvm -cpu host -m 512 -smp \$2 -nodefaults -no-user-config -display none -serial stdio \
          -monitor none -device virtio-rng-pci -kernel $kernel -initrd $work/l2.initrd -append "\$cl" -no-reboot ;;
esac
BOOT
cat > "$work/inner.sh" <<INNER
export DOTNET_ROOT=$(dirname "$(readlink -f "$(command -v dotnet)")") PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
cd /tmp
ms() { echo \$(( \$(date +%s%N) / 1000000 )); }
# Copies the console, stamping the marker line with the host's clock when it arrives. It wakes only per console
# line (a handful with quiet), so unlike polling it takes next to no CPU from L1's only CPU.
stamp() {
  while IFS= read -r line; do
    case "\$line" in *uptime-at-run=*) echo "init_ms=\$(ms) \$line" ;; *) echo "\$line" ;; esac
  done
}
measure() { # out vmm cpus
  rm -f /tmp/console /tmp/rss; mkfifo /tmp/console
  stamp < /tmp/console > "\$1" & r=\$!
  s=\$(ms); /usr/bin/time -f %M -o /tmp/rss timeout -k 10 300 sh $work/boot.sh \$2 \$3 < /dev/null > /tmp/console 2>&1; rc=\$?; e=\$(ms)
  wait \$r
  i=\$(grep -ao 'init_ms=[0-9]*' "\$1" | head -1 | cut -d= -f2)
  echo "rc=\$rc wall_ms=\$((e-s)) init_wall_ms=\$(( \${i:-0} > 0 ? \${i:-0} - s : 0 )) peak_rss_kib=\$(tail -1 /tmp/rss) \$(grep -ao 'uptime-at-run=[0-9.]*' "\$1" | head -1)"
}
for rep in \$(seq $reps); do for cpus in ${KIT_CPUS:-1 2}; do for vmm in $vmms; do
  echo "vmm=\$vmm cpus=\$cpus rep=\$rep \$(measure /tmp/\$vmm-\$cpus-\$rep.log \$vmm \$cpus)"
  cp /tmp/\$vmm-\$cpus-\$rep.log $work/
done; done; done
INNER

echo "L1 boots; each L2 boot takes 20-40 s ..." >&2
nested_l1 "$kernel" "$initrd" "$work" 3600 "sh $work/inner.sh" || true
echo "| VMM | vCPUs | repeat | exit | guest uptime at /init (s) | wall to /init (s) | wall, start to power-off (s) | peak RSS (MiB) |"
echo "|---|---|---|---|---|---|---|---|"
grep -a '^vmm=' "$work/l1.log" | tr -d '\r' | awk '{
  for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  printf "| %s | %s | %s | %s | %s | %.1f | %.1f | %.0f |\n", v["vmm"], v["cpus"], v["rep"], v["rc"], v["uptime-at-run"], v["init_wall_ms"] / 1000, v["wall_ms"] / 1000, v["peak_rss_kib"] / 1024
}'
echo
echo "Medians:"
echo "| VMM | vCPUs | runs | uptime at /init (s) | wall to /init (s) | wall (s) | peak RSS (MiB) |"
echo "|---|---|---|---|---|---|---|"
grep -a '^vmm=' "$work/l1.log" | tr -d '\r' | awk '{
  for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  print v["vmm"], v["cpus"], v["uptime-at-run"], v["wall_ms"] / 1000, v["peak_rss_kib"] / 1024, v["init_wall_ms"] / 1000
}' | sort -k1,1 -k2,2n | awk '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { k = $1 " " $2; n[k]++; up[k] = up[k] " " $3; wall[k] = wall[k] " " $4; rss[k] = rss[k] " " $5; iw[k] = iw[k] " " $6; if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
  END { for (i = 1; i <= m; i++) { k = order[i]; split(k, kk, " ")
    printf "| %s | %s | %d | %.2f | %.1f | %.1f | %.0f |\n", kk[1], kk[2], n[k], median(up[k]), median(iw[k]), median(wall[k]), median(rss[k]) } }'
