#!/usr/bin/env bash
# Builds Kit's default guest: the stock Debian kernel (linux-image-amd64) and a small busybox initramfs.
# Everything comes from Debian packages (testing-here.md sections 2 and 3), downloaded with apt from the mirror apt is
# configured with: the kernel, busybox-static, and iperf3 with its libraries (for tests and benchmarks in the guest;
# the host needs none of them). The result is cached under
#   ${KIT_GUEST_CACHE:-$HOME/.cache/kit/guest}/<kernel version>/{vmlinuz,initrd.gz}
# and a second run only prints the paths. The last two lines of output are always
#   kernel=<absolute path>
#   initrd=<absolute path>
#
# The initramfs /init:
#   prints KIT-GUEST-START, runs the guest command, prints KIT-GUEST-EXIT <code>, syncs and powers off.
#   The command comes from /kit/run (a test appends a second gzip'd cpio archive holding it; Linux unpacks
#   concatenated archives in order), else from kit.cmd=<base64 shell script> on the kernel command line,
#   else an interactive shell on the console.
#   kit.nested=1: load kvm_amd, mount the host's / (9p tag "hostroot", read-only) at /host, bind /proc /dev /sys,
#   tmpfs on /host/run and /host/tmp (host directories under them listed in kit.expose=P1,P2 stay visible),
#   optionally mount the 9p tag "results" read-write at /host<kit.results=PATH>,
#   then run the command inside `chroot /host`.
#   kit.root=<block device> (a Kit machine, guest/image.sh): load the disk, filesystem, power-button, network, vsock
#   and 9p drivers, mount the device read-write (kit.rootfstype=, default ext4) at /newroot, move /dev /proc /sys /run
#   into it and switch_root to its /sbin/init. A root that cannot be mounted prints KIT-GUEST-ROOT-ERROR and powers off.
set -euo pipefail

die() { echo "guest/build.sh: $*" >&2; exit 1; }

for tool in apt-cache apt-get dpkg-deb depmod modprobe cpio gzip ldd sha256sum flock; do
  command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool' (apt-get install kmod cpio apt)"
done

home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
# Never a shared directory such as /tmp: another local user could plant a kernel or initramfs there.
[[ -n "${KIT_GUEST_CACHE:-}" || -n "$home" ]] || die "no home directory: set HOME or KIT_GUEST_CACHE"
cache_root=${KIT_GUEST_CACHE:-$home/.cache/kit/guest}
mkdir -p "$cache_root"
cache_root=$(cd "$cache_root" && pwd -P)

# The stamp ties a cached guest to the exact script that built it, so editing /init, the module list or the package
# list rebuilds instead of silently reusing a stale initramfs (the kernel version names the directory).
# `kit guest build` passes this script as bash -c's argument (no file), so its text is then BASH_EXECUTION_STRING.
self_file=${BASH_SOURCE[0]:-}
self_hash=$( { if [[ -n "$self_file" ]]; then cat "$self_file"; else printf '%s' "$BASH_EXECUTION_STRING"; fi; } | sha256sum | cut -c1-16)

# Which real kernel package does linux-image-amd64 point at? (e.g. linux-image-6.1.0-56-amd64)
resolve_kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1
}
# apt-cache parses every package list (seconds when apt keeps no pkgcache.bin), so the answer is remembered
# until a list changes.
resolved="$cache_root/.kernel-package"
eval "$(apt-config shell lists_dir Dir::State::Lists/d)"
kpkg=
if [[ -s "$resolved" && -d "${lists_dir:-}" && -z "$(find "$lists_dir" -maxdepth 1 -type f -newer "$resolved" -print -quit)" ]]; then
  kpkg=$(cat "$resolved")
fi
[[ -n "$kpkg" ]] || kpkg=$(resolve_kernel_package || true)
apt_updated=0
if [[ -z "$kpkg" ]]; then
  echo "guest/build.sh: apt lists missing; running apt-get update" >&2
  apt-get update -qq >&2
  apt_updated=1
  kpkg=$(resolve_kernel_package || true)
fi
[[ -n "$kpkg" ]] || die "cannot resolve the package behind linux-image-amd64 (apt-cache depends)"
kver=${kpkg#linux-image-}
echo "$kpkg" >"$resolved.$$" && mv -f "$resolved.$$" "$resolved"

out="$cache_root/$kver"
print_result() {
  echo "kernel=$out/vmlinuz"
  echo "initrd=$out/initrd.gz"
}
is_cached() { [[ -f "$out/vmlinuz" && -f "$out/initrd.gz" && "$(cat "$out/stamp" 2>/dev/null)" == "$self_hash" ]]; }

if is_cached; then
  print_result
  exit 0
fi

# One builder at a time per cache (parallel test processes may all ask for the guest).
exec 9>"$cache_root/.lock"
flock 9
if is_cached; then
  print_result
  exit 0
fi

started=$SECONDS
work=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. The packages: say what is downloaded and from where, download, unpack; index the kernel's modules.
# Lines starting "step: " are the build's steps (kit guest build shows them as progress).
packages=("$kpkg" busybox-static iperf3 libiperf0 libsctp1 libssl3)
bytes=0
announce() {
  local uris
  uris=$(cd "$work" && apt-get download --print-uris "${packages[@]}" 2>/dev/null) || return 0
  local hosts
  bytes=$(awk '{ s += $3 } END { print s + 0 }' <<<"$uris")
  hosts=$(sed -n "s|^'[a-z]*://\([^/']*\)/.*|\1|p" <<<"$uris" | sort -u | paste -sd, -)
  echo "step: downloading ${#packages[@]} Debian packages ($((bytes / 1048576)) MiB) from ${hosts:-the apt mirror}: ${packages[*]}" >&2
}
announce
# As root, apt drops to the _apt user for downloads, which cannot enter a cache under /root: stay root.
# "progress: BYTES TOTAL" lines every half second while it runs (kit guest build draws them; apt -qq prints none).
download() {
  (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "${packages[@]}" >&2) &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    echo "progress: $(du -sb "$work" | cut -f1) $bytes" >&2
    sleep 0.5
  done
  wait "$pid"
}
if ! download; then
  if [[ $apt_updated == 0 ]]; then
    echo "guest/build.sh: apt-get download failed; running apt-get update once" >&2
    apt-get update -qq >&2
    download || die "apt-get download ${packages[*]} failed"
  else
    die "apt-get download ${packages[*]} failed"
  fi
fi
echo "step: unpacking" >&2
deb=$(ls "$work"/"$kpkg"_*.deb | head -n1)
mkdir "$work/kernel" "$work/pkgs"
dpkg-deb -x "$deb" "$work/kernel"
rm -f "$deb"
for deb in "$work"/*.deb; do
  dpkg-deb -x "$deb" "$work/pkgs"
  rm -f "$deb"
done
depmod -b "$work/kernel" "$kver"
kmods="$work/kernel/lib/modules/$kver"
[[ -f "$work/kernel/boot/vmlinuz-$kver" ]] || die "kernel package has no boot/vmlinuz-$kver"

# 2. The initramfs tree.
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/udhcpc,proc,sys,dev,tmp,run,mnt,host,kit,root,lib/modules/"$kver"}
echo "step: building the initramfs" >&2
busybox="$work/pkgs/bin/busybox"
cp "$busybox" "$root/bin/busybox"
# Applet links; the applet named "busybox" would make a symlink onto itself (ELOOP, "error -40" at exec).
for applet in $("$busybox" --list); do
  [[ "$applet" == busybox ]] && continue
  [[ -e "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
done
# The kernel asks /sbin/modprobe (CONFIG_MODPROBE_PATH) for "fs-ext4", "net-pf-40" and the like on demand.
ln -s ../bin/busybox "$root/sbin/modprobe"

# Modules: the list of testing-here.md section 3 plus KVM for the nested runner; dependencies come from
# modules.dep via modprobe --show-depends (kmod), which also reports built-in modules (nothing to copy then).
modules=(
  virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev
  virtio_net net_failover failover virtio_blk virtio_console virtio-rng
  9pnet 9pnet_virtio 9pnet_fd 9p netfs fscache
  vsock vmw_vsock_virtio_transport vmw_vsock_virtio_transport_common
  ext4 jbd2 mbcache crc16 crc32c_generic
  button
  kvm kvm_amd irqbypass ccp
  tun
)
for m in "${modules[@]}"; do
  deps=$(modprobe -d "$work/kernel" -S "$kver" --show-depends "$m" 2>&1) || die "module $m: $deps"
  while read -r kind path _; do
    [[ "$kind" == insmod ]] || continue
    rel=${path#"$work/kernel"}
    mkdir -p "$root$(dirname "$rel")"
    cp "$path" "$root$rel"
  done <<<"$deps"
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
  [[ -f "$kmods/$f" ]] && cp "$kmods/$f" "$root/lib/modules/$kver/"
done
depmod -b "$root" "$kver"

# iperf3 and the shared libraries it links, at the paths the dynamic loader expects: its own from the packages just
# unpacked, libc and the loader from the host (the same Debian release's; every Debian host has libc6).
cp "$work/pkgs/usr/bin/iperf3" "$root/usr/bin/iperf3"
for lib in $(LD_LIBRARY_PATH="$work/pkgs/usr/lib/x86_64-linux-gnu" ldd "$work/pkgs/usr/bin/iperf3" | grep -o '/[^ ]*'); do
  dest=${lib#"$work/pkgs"}
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$lib" "$root$dest"
done
missing=$(LD_LIBRARY_PATH="$work/pkgs/usr/lib/x86_64-linux-gnu" ldd "$work/pkgs/usr/bin/iperf3" | grep 'not found' || true)
[[ -z "$missing" ]] || die "iperf3 needs libraries that neither the packages nor the host have: $missing"

cat >"$root/etc/udhcpc/default.script" <<'EOF'
#!/bin/sh
# busybox udhcpc hook: applies the lease (address, routes, MTU, DNS) to $interface.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    if [ -n "$router" ]; then
      ip route del default dev "$interface" 2>/dev/null
      for r in $router; do ip route add default via "$r" dev "$interface" && break; done
    fi
    : >/etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    ;;
  leasefail|nak)
    ;;
esac
exit 0
EOF
chmod 755 "$root/etc/udhcpc/default.script"

echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
echo "127.0.0.1 localhost kit-guest" >"$root/etc/hosts"
: >"$root/etc/resolv.conf"

cat >"$root/init" <<'EOF'
#!/bin/sh
# Kit default guest init (guest/build.sh). Markers on the console: KIT-GUEST-START, KIT-GUEST-EXIT <code>.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=linux
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname kit-guest
ip link set lo up

arg() { # value of kernel command line parameter $1
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1="*) echo "${w#*=}"; return 0 ;; esac
  done
  return 1
}

# Devices that are present get their drivers, so a test script finds eth0, vda, hvc0, 9p and vsock ready.
for m in virtio_pci virtio_net virtio_blk virtio_console virtio-rng 9pnet_virtio 9p vmw_vsock_virtio_transport; do
  modprobe -q "$m" 2>/dev/null
done

# A Kit machine: its root filesystem is on a disk (guest/image.sh), this initramfs only gets it mounted. The drivers
# are loaded here rather than by the root's own init so that the devices exist from its first line; 9pnet_fd carries
# the trans=tcp mounts; "button" (a module in Debian's kernel, not in modules.builtin) turns ACPI power-button presses
# into input events for the machine's acpid.
if root=$(arg kit.root); then
  for m in virtio_blk crc32c_generic ext4 button virtio_net vmw_vsock_virtio_transport 9pnet_virtio 9pnet_fd 9p; do
    modprobe -q "$m" 2>/dev/null || echo "kit: modprobe $m failed" >&2
  done
  root_error() {
    echo "KIT-GUEST-ROOT-ERROR kit.root=$root: $*"
    sync
    poweroff -f
    sleep 10
  }
  # The driver probes the disk asynchronously: give the node up to 5 s to appear.
  n=0
  while [ ! -b "$root" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  [ -b "$root" ] || root_error "no such block device"
  fstype=$(arg kit.rootfstype) || fstype=ext4
  mkdir -p /newroot
  # No fsck: the journal recovers an unclean ext4 at mount time, and e2fsck is on the host side (MachineDisk).
  err=$(mount -t "$fstype" -o rw "$root" /newroot 2>&1) || root_error "cannot mount ($fstype): $err"
  [ -e /newroot/sbin/init ] || [ -L /newroot/sbin/init ] || { umount /newroot; root_error "no /sbin/init on it"; }
  # The guest agent of the kit that booted the machine rides in the initramfs (kit appends it as /kit/kit-agent), so it
  # always speaks that kit's protocol whatever the disk was made with; it goes to the new root's /run/kit.
  if [ -f /kit/kit-agent ]; then
    mkdir -p /run/kit && cp /kit/kit-agent /run/kit/kit-agent && chmod 755 /run/kit/kit-agent
  fi
  # The machine's init finds /dev (with pts and shm), /proc, /sys and /run already mounted; /tmp is its own.
  umount /tmp 2>/dev/null
  for d in dev proc sys run; do
    mkdir -p "/newroot/$d"
    mount --move "/$d" "/newroot/$d" || echo "kit: cannot move /$d into the root" >&2
  done
  exec switch_root /newroot /sbin/init
fi

if [ -f /kit/run ]; then
  script=/kit/run
elif cmd=$(arg kit.cmd); then
  echo "$cmd" | base64 -d >/tmp/kit-cmd || echo "kit: bad base64 in kit.cmd" >&2
  script=/tmp/kit-cmd
else
  script=
fi

finish() {
  echo "KIT-GUEST-EXIT $1"
  sync
  poweroff -f
  sleep 10
}

if [ "$(arg kit.nested)" = 1 ]; then
  modprobe kvm_amd || echo "kit: modprobe kvm_amd failed" >&2
  # TAP devices for `kit vm run --net tap:NAME` in L1 (the chroot below has no modules for this kernel).
  modprobe -q tun
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host \
    || { echo "kit: cannot mount 9p tag hostroot"; echo KIT-GUEST-START; finish 125; }
  for d in proc sys dev; do mount --bind /$d /host/$d; done
  mount --bind /dev/pts /host/dev/pts
  mount --bind /dev/shm /host/dev/shm 2>/dev/null
  # Fresh writable /run and /tmp. Host paths under them that the command needs (a checkout in /tmp, say) are
  # listed in kit.expose=PATH[,PATH] and bound back through from the read-only host view.
  mkdir -p /hostview/run /hostview/tmp
  mount --bind /host/run /hostview/run
  mount --bind /host/tmp /hostview/tmp
  mount -t tmpfs tmpfs /host/run
  mount -t tmpfs tmpfs /host/tmp
  if expose=$(arg kit.expose); then
    for p in $(echo "$expose" | tr ',' ' '); do
      case "$p" in
        /tmp/*|/run/*)
          if [ -d "/hostview$p" ]; then
            mkdir -p "/host$p" && mount --bind "/hostview$p" "/host$p"
          else
            echo "kit: kit.expose: $p is not a host directory" >&2
          fi ;;
      esac
    done
  fi
  if results=$(arg kit.results); then
    mkdir -p "/host$results" 2>/dev/null
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "/host$results" \
      || echo "kit: cannot mount 9p tag results at $results" >&2
  fi
  echo KIT-GUEST-START
  if [ -n "$script" ]; then
    cp "$script" /host/tmp/.kit-run
    chroot /host /bin/sh /tmp/.kit-run
    code=$?
  else
    chroot /host /bin/sh -l
    code=$?
  fi
  sync
  umount "/host$results" 2>/dev/null
  finish "$code"
fi

echo KIT-GUEST-START
if [ -n "$script" ]; then
  sh "$script"
  code=$?
else
  setsid cttyhack sh -l
  code=$?
fi
finish "$code"
EOF
chmod 755 "$root/init"

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 >"$work/initrd.gz"

mkdir -p "$out"
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"
rm -f "$out/stamp"
mv -f "$work/vmlinuz" "$out/vmlinuz"
mv -f "$work/initrd.gz" "$out/initrd.gz"
echo "$self_hash" >"$out/stamp"
echo "guest/build.sh: built $kver in $((SECONDS - started)) s ($(du -h "$out/initrd.gz" | cut -f1) initramfs)" >&2
print_result
