#!/usr/bin/env bash
# Where a traced boot went: the printk timestamp (seconds of guest uptime) at which each phase of the kernel's boot
# began, one column per console log. The logs come from `KIT_TRACE=1 bench/hyperkit-boot.sh` (L2 prints its dmesg
# after the uptime line); docs/hyperkit-boot.md explains the phases.
# Usage: bench/boot-phases.sh LOG...   (e.g. artifacts/bench-hyperkit/{kit,qemu}-2-*.log)
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: bench/boot-phases.sh LOG..." >&2; exit 2; }
markers=(
  "Linux version"                        # the kernel's clock starts
  "AGP: No AGP bridge found"             # first: the early K8 GART scan of family 0Fh CPUs is over
  "Memory: "                             # memory init
  "tsc: Detected"                        # TSC frequency known
  "Calibrating delay loop"
  "smp: Bringing up secondary CPUs"
  "smp: Brought up"
  "devtmpfs: initialized"
  "PCI: Using configuration type 1"
  "clocksource: Switched to clocksource"
  "Trying to unpack rootfs image"
  "Freeing initrd memory"
  "sched_clock: Marking stable"
  "Freeing unused kernel image"
  "Run /init as init process"
)
printf '| phase |'; for f in "$@"; do printf ' %s |' "$(basename "$f" .log)"; done; echo
printf '|---|'; for _ in "$@"; do printf -- '---|'; done; echo
for m in "${markers[@]}"; do
  printf "| %s |" "$m"
  for f in "$@"; do
    t=$(tr -d '\r' < "$f" | grep -a -m1 -e "$m" | grep -o '^\[ *[0-9.]*\]' | tr -d '[] ' || true)
    printf ' %s |' "${t:--}"
  done
  echo
done
printf '| uptime at /init |'
for f in "$@"; do printf ' %s |' "$(grep -ao 'uptime-at-run=[0-9.]*' "$f" | head -1 | cut -d= -f2)"; done; echo
printf '| initcalls, summed (s) |'
for f in "$@"; do
  printf ' %s |' "$(grep -ao 'initcalls-summed-usecs=[0-9]*' "$f" | head -1 | awk -F= '{printf "%.2f", $2 / 1e6}')"
done
echo
