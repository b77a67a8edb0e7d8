#!/usr/bin/env bash
# Builds the root filesystem of a Kit machine (`kit up`, `kit image build`): Debian 12 (minbase, from the mirror apt is
# configured with) on an ext4 image, booted by the default guest's kernel and initramfs (guest/build.sh) with
# kit.root=/dev/vda. No systemd: PID 1 is busybox init, /etc/kit/rc brings the machine up, init respawns kit-agent.
#
#   guest/image.sh [--agent PATH] [--docker] [--extra-packages "PKG..."] [--kernel VMLINUZ --initrd INITRD]
#
# --agent  the guest agent (NativeAOT kit-agent), installed as /usr/local/bin/kit-agent (0755). Without it the image
#          has no agent and init keeps an idle placeholder in its place.
# --docker add Debian's docker.io (with iptables); kit.docker=1 on the command line starts dockerd.
# --extra-packages "PKG..."  more Debian packages (space-separated; part of the cache key). bench/machine.sh uses it for
#          an openssh-server image to compare with.
# --kernel/--initrd  the default guest (`kit guest build`); without them guest/build.sh beside this script is run.
#
# The result is cached under ${KIT_IMAGE_CACHE:-$HOME/.local/share/kit/images}/<variant>-<kernel version>-<key>/
# where key hashes this script, the agent binary, the variant and the kernel version: a new agent or script makes a new
# image, never a reuse of an old one. The image directory also keeps copies of the kernel and initramfs it is booted
# with (boot-<hash>/), so a later rebuild of the guest cache does not change what a machine boots. The last three
# output lines are always
#   image=<ext4 image>   kernel=<vmlinuz>   initrd=<initrd.gz>
# Lines on stderr starting "step: " and "progress: BYTES TOTAL" are for the CLI (kit image build draws them).
# Needs root (mmdebstrap --mode=root; the ext4 image must record files as owned by root, not by the builder).
#
# Kernel command line understood by the machine (/etc/kit/rc):
#   kit.hostname=NAME           hostname (default "kit")
#   kit.datakit=virtio          mount 9p tag "datakit" at /datakit
#   kit.datakit=tcp:PORT        mount the 9P server at 192.168.65.2:PORT (VPNKit's host address) at /datakit
#   kit.mounts=BASE64           newline-separated "SOURCE GUESTPATH ro|rw", SOURCE tag:TAG (virtio-9p) or tcp:PORT
#   kit.docker=1                start dockerd on unix:///run/docker.sock (image built with --docker)
#   kit.cmd=BASE64              a sh script run after KIT-MACHINE-READY (tests; output on the console)
#   kit.console=1               a root shell on ttyS0 (debugging: kit vm run with the console on a terminal)
# Console markers: KIT-MACHINE-BOOT <count>, KIT-MACHINE-NET <address/prefix>, KIT-MACHINE-READY.
set -euo pipefail

die() { echo "guest/image.sh: $*" >&2; exit 1; }

agent= docker=0 kernel= initrd= extra=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --agent) [[ $# -ge 2 ]] || die "--agent needs a path"; agent=$2; shift 2 ;;
    --docker) docker=1; shift ;;
    --extra-packages) [[ $# -ge 2 ]] || die "--extra-packages needs a list"; extra=$2; shift 2 ;;
    --kernel) [[ $# -ge 2 ]] || die "--kernel needs a path"; kernel=$2; shift 2 ;;
    --initrd) [[ $# -ge 2 ]] || die "--initrd needs a path"; initrd=$2; shift 2 ;;
    *) die "unknown argument '$1' (usage: image.sh [--agent PATH] [--docker] [--extra-packages \"PKG...\"] [--kernel VMLINUZ --initrd INITRD])" ;;
  esac
done
if [[ -n "$agent" ]]; then
  [[ -f "$agent" ]] || die "--agent $agent: no such file"
  agent=$(realpath "$agent")
fi

[[ "$(id -u)" -eq 0 ]] || die "building a machine image needs root: mmdebstrap --mode=root and an ext4 image whose files \
belong to root (unprivileged --mode=unshare would record the builder's subordinate uids in the image; not supported)"
for tool in mmdebstrap mkfs.ext4 apt-get apt-config dpkg-deb depmod sha256sum flock realpath od cpio gzip; do
  command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool' (apt-get install mmdebstrap e2fsprogs kmod)"
done

self_file=${BASH_SOURCE[0]:-}
# Without --kernel: the default guest from guest/build.sh beside this file (a checkout; the CLI always passes them).
if [[ -z "$kernel" ]]; then
  [[ -n "$self_file" && -f "$(dirname "$self_file")/build.sh" ]] || die "--kernel and --initrd are needed (no guest/build.sh beside this script)"
  built=$(bash "$(dirname "$self_file")/build.sh") || die "guest/build.sh failed"
  kernel=$(sed -n 's/^kernel=//p' <<<"$built" | tail -n1)
  initrd=$(sed -n 's/^initrd=//p' <<<"$built" | tail -n1)
fi
[[ -f "$kernel" && -f "$initrd" ]] || die "kernel $kernel or initrd $initrd missing"

# The kernel release from the bzImage itself (boot protocol: the 16-bit field at 0x20E points at the version string,
# minus 0x200), so the image's /lib/modules matches the kernel that boots it whatever directory it came from.
off=$(od -An -tu2 -j $((0x20E)) -N2 "$kernel" | tr -d ' ')
kver=$(dd if="$kernel" bs=1 skip=$((off + 0x200)) count=128 status=none | tr '\0' '\n' | head -n1 | cut -d' ' -f1)
[[ "$kver" =~ ^[0-9]+\.[0-9]+[-.a-z0-9+_]*$ ]] || die "cannot read the kernel version from $kernel"

home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
# A private directory under the user's home, never a shared one such as /tmp (another user could plant an image).
[[ -n "${KIT_IMAGE_CACHE:-}" || -n "$home" ]] || die "no home directory: set HOME or KIT_IMAGE_CACHE"
cache_root=${KIT_IMAGE_CACHE:-$home/.local/share/kit/images}
(umask 077 && mkdir -p "$cache_root")
chmod 700 "$cache_root"
cache_root=$(cd "$cache_root" && pwd -P)

suite=${KIT_IMAGE_SUITE:-bookworm}
variant=base
packages=(busybox-static python3 procps iproute2 ca-certificates util-linux kmod e2fsprogs netbase)
if [[ $docker == 1 ]]; then
  variant=docker
  packages+=(docker.io iptables)
fi
read -r -a extra_packages <<<"$extra"
for p in "${extra_packages[@]}"; do
  [[ "$p" =~ ^[a-z0-9][a-z0-9+.-]+$ ]] || die "--extra-packages: '$p' is not a Debian package name"
done
packages+=("${extra_packages[@]}")
kpkg="linux-image-$kver"

# `kit image build` hands this script to bash -c (no file): its text is then BASH_EXECUTION_STRING.
self_hash=$( { if [[ -n "$self_file" ]]; then cat "$self_file"; else printf '%s' "$BASH_EXECUTION_STRING"; fi; } | sha256sum | cut -c1-64)
agent_hash=none
[[ -z "$agent" ]] || agent_hash=$(sha256sum "$agent" | cut -c1-64)
key=$(printf '%s\n' "$self_hash" "$agent_hash" "$variant" "$kver" "$suite" ${extra:+"extra=${extra_packages[*]}"} | sha256sum | cut -c1-16)
out="$cache_root/$variant-$kver-$key"

work=
boot_tmp=$(mktemp -d "$cache_root/.boot-XXXXXX")
cleanup() {
  [[ ! -d "$boot_tmp" ]] || rm -rf "$boot_tmp"
  [[ -n "$work" ]] || return 0
  # mmdebstrap leaves nothing mounted on success; after a failure it may, and rm must not reach through a mount.
  if grep -q " $work/" /proc/mounts 2>/dev/null; then
    echo "guest/image.sh: mounts left under $work; not removing it" >&2
    return 0
  fi
  rm -rf "$work"
}
trap cleanup EXIT
cp "$kernel" "$boot_tmp/vmlinuz"
cp "$initrd" "$boot_tmp/initrd.gz"
# Checked on the copy, which nobody else replaces (grep -c reads to the end: no SIGPIPE under pipefail). Exit code 3
# tells the CLI to rebuild the default guest and try once more.
if [[ $(gzip -dc "$boot_tmp/initrd.gz" | cpio -i --quiet --to-stdout init 2>/dev/null | grep -c 'kit\.root') -eq 0 ]]; then
  echo "guest/image.sh: the initramfs $initrd has no kit.root= support (built by another guest/build.sh; run kit guest build)" >&2
  exit 3
fi
boot_hash=$(cat "$boot_tmp/vmlinuz" "$boot_tmp/initrd.gz" | sha256sum | cut -c1-16)

# The image keeps its own copy of the kernel and initramfs, taken now and checked, under a name that hashes them: the
# guest cache is rebuilt in place whenever build.sh changes (or another checkout with another build.sh runs it), and a
# machine must not boot with an initramfs that cannot mount its root. Published beside the image by renaming.
pin_boot_files() {
  local dir="$out/boot-$boot_hash"
  if [[ ! -f "$dir/initrd.gz" ]]; then
    chmod 755 "$boot_tmp"
    mv -T "$boot_tmp" "$dir" 2>/dev/null || true # else another run published the same files first
  fi
  kernel="$dir/vmlinuz"
  initrd="$dir/initrd.gz"
}
print_result() {
  pin_boot_files
  echo "image=$out/rootfs.ext4"
  echo "kernel=$kernel"
  echo "initrd=$initrd"
}
is_cached() { [[ -f "$out/rootfs.ext4" && "$(cat "$out/stamp" 2>/dev/null)" == "$key" ]]; }

if is_cached; then
  print_result
  exit 0
fi

# One builder at a time per cache (several `kit up` may ask at once).
exec 9>"$cache_root/.lock"
flock 9
if is_cached; then
  print_result
  exit 0
fi

started=$SECONDS
work=$(mktemp -d "$cache_root/.build-XXXXXX")

# Sources: the host's Debian sources (the mirror apt is configured with), else deb.debian.org; KIT_IMAGE_MIRROR wins.
mirrors=()
if [[ -n "${KIT_IMAGE_MIRROR:-}" ]]; then
  mirrors=("$KIT_IMAGE_MIRROR")
else
  [[ -f /etc/apt/sources.list ]] && grep -qE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list && mirrors+=(/etc/apt/sources.list)
  [[ -f /etc/apt/sources.list.d/debian.sources ]] && mirrors+=(/etc/apt/sources.list.d/debian.sources)
  [[ ${#mirrors[@]} -gt 0 ]] || mirrors=(http://deb.debian.org/debian)
fi
aptopts=(--aptopt='APT::Install-Recommends "false"')
proxy=
eval "$(apt-config shell proxy Acquire::http::Proxy)"
[[ -z "$proxy" ]] || aptopts+=(--aptopt="Acquire::http::Proxy \"$proxy\"")

# 1. Say what is downloaded, how much and from where, before starting. The same set mmdebstrap resolves: the
# Essential packages, apt, and the list above, without recommends, against an empty dpkg status (host's apt lists).
eval "$(apt-config shell lists_dir Dir::State::Lists/d)"
essential=$(/usr/lib/apt/apt-helper cat-file "${lists_dir:-/var/lib/apt/lists/}"*_Packages* 2>/dev/null \
  | awk '/^Package:/ { p = $2 } /^Essential: yes/ { print p }' | sort -u || true)
total=0 count=0
if uris=$(apt-get install --print-uris -qq -o Dir::State::Status=/dev/null -o APT::Install-Recommends=false \
    $essential apt "${packages[@]}" "$kpkg" 2>/dev/null); then
  read -r count total < <(awk '/^'"'"'/ { n++; s += $3 } END { print n + 0, s + 0 }' <<<"$uris")
fi
hosts=$(printf '%s\n' "${mirrors[@]}" | xargs -r grep -hv '^[[:space:]]*#' 2>/dev/null | grep -o 'https\?://[^/ ]*'  | sed 's|.*://||' | sort -u | paste -sd, - || true)
[[ -n "$hosts" ]] || hosts=$(printf '%s\n' "${mirrors[@]}" | sed -n 's|^[a-z]*://\([^/]*\).*|\1|p' | paste -sd, -)
echo "step: downloading about $count Debian packages ($((total / 1048576)) MiB) from ${hosts:-the apt mirror} for a $suite $variant image: ${packages[*]} and $kpkg's modules" >&2

# 2. The kernel's modules: the package of the kernel that boots the image.
echo "step: downloading $kpkg (modules for /lib/modules/$kver)" >&2
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg" >&2) || die "apt-get download $kpkg failed"
kdeb=$(ls "$work/$kpkg"_*.deb | head -n1)
done_bytes=$(stat -c %s "$kdeb")

# 3. The root filesystem. "progress:" lines follow apt's download cache inside the new root (approximate: mmdebstrap
# downloads in two rounds and empties the cache between them, so the high-water mark plus what was seen before).
root="$work/root"
mkdir "$root"
log="$work/mmdebstrap.log"
echo "step: installing Debian $suite (mmdebstrap --variant=minbase)" >&2
TMPDIR="$work" mmdebstrap --mode=root --variant=minbase --format=directory "${aptopts[@]}" \
  --include="$(IFS=,; echo "${packages[*]}")" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt=force-unsafe-io \
  "$suite" "$root" "${mirrors[@]}" >"$log" 2>&1 &
pid=$!
seen=0 last=0
while kill -0 "$pid" 2>/dev/null; do
  now=$(du -sb "$root/var/cache/apt/archives" 2>/dev/null | cut -f1 || echo 0)
  now=${now:-0}
  if [[ $now -lt $last ]]; then seen=$((seen + last)); fi
  last=$now
  cur=$((done_bytes + seen + now))
  [[ $total -eq 0 || $cur -le $total ]] || cur=$total
  echo "progress: $cur $total" >&2
  sleep 0.5
done
if ! wait "$pid"; then
  tail -n 30 "$log" >&2
  die "mmdebstrap failed (the lines above are the end of its log)"
fi

# 4. Modules, trimmed of hardware a VM never has (graphics, sound, media, wireless, bluetooth, InfiniBand, staging,
# industrial I/O, physical Ethernet and USB); what stays includes everything docker asks for (overlay, bridge, veth, br_netfilter, nf_*, xt_*).
echo "step: installing the modules of $kver" >&2
mkdir "$work/kernel"
dpkg-deb -x "$kdeb" "$work/kernel"
rm -f "$kdeb"
kmods="$work/kernel/lib/modules/$kver"
[[ -d "$kmods/kernel" ]] || die "$kpkg has no lib/modules/$kver"
for d in sound drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging drivers/iio \
  drivers/comedi drivers/bluetooth drivers/isdn drivers/net/ethernet drivers/usb net/bluetooth net/mac80211 \
  net/wireless; do
  rm -rf "${kmods:?}/kernel/$d"
done
mkdir -p "$root/lib/modules"
mv "$kmods" "$root/lib/modules/$kver"
depmod -b "$root" "$kver"

# 5. The lighter init.
echo "step: configuring the machine (busybox init, /etc/kit/rc)" >&2
bb_link() { # bb_link PATH: PATH -> busybox unless the packages provide it
  [[ -e "$root$1" || -L "$root$1" ]] || ln -s /bin/busybox "$root$1"
}
[[ -x "$root/bin/busybox" ]] || die "busybox-static did not install /bin/busybox"
rm -f "$root/sbin/init"
ln -s /bin/busybox "$root/sbin/init"
for a in /sbin/poweroff /sbin/reboot /sbin/halt; do bb_link "$a"; done
mkdir -p "$root/etc/kit" "$root/etc/udhcpc" "$root/etc/acpi/PWRF" "$root/usr/local/bin" "$root/var/lib/kit" \
  "$root/datakit" "$root/root"
chmod 700 "$root/root"
if [[ -n "$agent" ]]; then
  install -m 0755 "$agent" "$root/usr/local/bin/kit-agent"
fi
echo "$key" >"$root/etc/kit/image"

cat >"$root/etc/inittab" <<'EOF'
# Kit machine (guest/image.sh): busybox init. rc runs to completion before anything is respawned.
::sysinit:/etc/kit/rc
::respawn:/etc/kit/agent
# A root shell on the serial console, for debugging (the console belongs to whoever runs the VM).
ttyS0::respawn:/etc/kit/console
::ctrlaltdel:/sbin/poweroff
::shutdown:/etc/kit/shutdown
EOF

cat >"$root/etc/kit/agent" <<'EOF'
#!/bin/sh
# init respawns this: the guest agent, its output appended to /var/log/kit-agent.log. Without an agent in the
# image or the initramfs, it waits for one (init would otherwise restart a missing program every second).
exec >>/var/log/kit-agent.log 2>&1
# busybox init passes only a minimal environment.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
cd /
# The agent the booting kit put in the initramfs (/run/kit/kit-agent) comes first: it speaks that kit's protocol.
# Without either, wait for one (a test may move the agent aside for a while): a check a second costs nothing.
while :; do
  for agent in /run/kit/kit-agent /usr/local/bin/kit-agent; do
    [ -x "$agent" ] && break 2
  done
  sleep 1
done
# A crash loop costs a second per round, not a busy CPU.
[ -e /run/kit/agent-started ] && sleep 1
mkdir -p /run/kit && : >/run/kit/agent-started
echo "kit-agent: starting $agent ($(date -u +%FT%TZ))"
exec "$agent"
EOF

cat >"$root/etc/kit/console" <<'EOF'
#!/bin/sh
# A login shell on ttyS0 (init made it the controlling terminal), only with kit.console=1 on the kernel command line:
# a machine's console usually has no one on the other end (kit's daemon reads it into the log), and a shell there
# that sees end of input would be respawned without end. Idle otherwise.
grep -qw kit.console=1 /proc/cmdline || exec sleep 2147483647
[ -c /dev/ttyS0 ] || exec sleep 2147483647
export HOME=/root TERM=${TERM:-vt100}
cd /root
exec /bin/sh -l
EOF

cat >"$root/etc/kit/shutdown" <<'EOF'
#!/bin/sh
# init runs this on poweroff/reboot before it kills what is left: stop the services so the disk unmounts clean.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "kit: stopping"
for p in /run/docker.pid /run/udhcpc.eth0.pid /run/acpid.pid; do
  [ -f "$p" ] && kill -TERM "$(cat "$p")" 2>/dev/null
done
# dockerd stops its containers first; give it a little while.
n=0
while [ -f /run/docker.pid ] && kill -0 "$(cat /run/docker.pid)" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
killall5 -15
sleep 1
killall5 -9
sync
swapoff -a 2>/dev/null
# -r: what cannot be unmounted is remounted read-only (the root).
umount -a -r 2>/dev/null
mount -o remount,ro / 2>/dev/null
sync
EOF

cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
# busybox acpid: the ACPI power button (kit down) is a clean poweroff through init.
exec /sbin/poweroff
EOF

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
    # Written in place: /etc/resolv.conf may be bind-mounted into containers.
    {
      [ -n "$domain" ] && echo "search $domain"
      for d in $dns; do echo "nameserver $d"; done
    } >/etc/resolv.conf.kit && cat /etc/resolv.conf.kit >/etc/resolv.conf && rm -f /etc/resolv.conf.kit
    ;;
  leasefail|nak)
    ;;
esac
exit 0
EOF

cat >"$root/etc/kit/rc" <<'EOF'
#!/bin/sh
# Kit machine bring-up (guest/image.sh), run once by busybox init before it starts the agent.
# Parameters from the kernel command line: kit.hostname, kit.datakit, kit.mounts, kit.docker, kit.cmd.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
say() { echo "kit: $*"; }

# The initramfs moved /dev /proc /sys /run here already; mount what is missing (booted some other way).
mnt() { # mnt TYPE WHERE [OPTIONS]
  mountpoint -q "$2" && return 0
  mkdir -p "$2"
  mount -t "$1" ${3:+-o "$3"} "$1" "$2" || say "cannot mount $1 on $2"
}
mnt proc /proc
mnt sysfs /sys
mnt devtmpfs /dev
mnt devpts /dev/pts gid=5,mode=620,ptmxmode=666
# The initramfs mounted it with defaults: anyone may open /dev/ptmx (containers, ssh-like agents need ptys).
mount -o remount,gid=5,mode=620,ptmxmode=666 /dev/pts 2>/dev/null
mnt tmpfs /dev/shm mode=1777,nosuid,nodev
mnt tmpfs /run mode=755,nosuid,nodev
mnt tmpfs /tmp mode=1777,nosuid,nodev
mnt cgroup2 /sys/fs/cgroup nsdelegate
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
mount -o remount,rw / || say "cannot remount / read-write"
mkdir -p /run/kit /var/log /var/lib/kit
ln -sfn /proc/self/fd /dev/fd 2>/dev/null

arg() { # value of kernel command line parameter $1
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1="*) echo "${w#*=}"; return 0 ;; esac
  done
  return 1
}

# Persistent state: the boot count shows a test (and a user) that the disk keeps what the last boot wrote.
count=$(cat /var/lib/kit/boot-count 2>/dev/null || echo 0)
case "$count" in ''|*[!0-9]*) count=0 ;; esac
count=$((count + 1))
echo "$count" >/var/lib/kit/boot-count.new && mv -f /var/lib/kit/boot-count.new /var/lib/kit/boot-count
echo "KIT-MACHINE-BOOT $count"

name=$(arg kit.hostname) || name=kit
case "$name" in ''|*[!A-Za-z0-9-]*) say "kit.hostname=$name is not a host name; using kit"; name=kit ;; esac
echo "$name" >/etc/hostname
hostname "$name"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" >/etc/hosts

# Drivers: most were loaded by the initramfs; the rest come from this root's /lib/modules (kmod's modprobe).
# evdev: /dev/input/event* for acpid (without it the power button reaches no one).
for m in virtio_net virtio_blk virtio_console virtio-rng vmw_vsock_virtio_transport 9pnet_virtio 9pnet_fd 9p button evdev; do
  modprobe -q "$m" 2>/dev/null
done

# The ACPI power button (kit down) -> /etc/acpi/PWRF/00000080 -> poweroff.
n=0
while [ ! -e /dev/input/event0 ] && [ $n -lt 20 ]; do sleep 0.1; n=$((n + 1)); done
busybox acpid -c /etc/acpi -l /var/log/acpid.log -p /run/acpid.pid 2>/dev/null || say "acpid did not start"

# Network: DHCP from VPNKit on eth0. udhcpc waits for the first lease (up to ~20 s), then stays in the background
# to renew it; without a lease it goes to the background anyway and keeps trying.
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  busybox udhcpc -i eth0 -s /etc/udhcpc/default.script -p /run/udhcpc.eth0.pid -t 10 -T 2 -b -S >/dev/null 2>&1
  echo "KIT-MACHINE-NET $(ip -4 -o addr show dev eth0 | awk '{ print $4 }' | head -n1)"
else
  say "no eth0"
fi

mount9p() { # mount9p SOURCE GUESTPATH ro|rw
  opts="version=9p2000.L,msize=262144,$3"
  mkdir -p "$2"
  case "$1" in
    tag:*) mount -t 9p -o "trans=virtio,$opts" "${1#tag:}" "$2" ;;
    tcp:*) mount -t 9p -o "trans=tcp,port=${1#tcp:},$opts" 192.168.65.2 "$2" ;;
    *) say "mount source $1: expected tag:TAG or tcp:PORT"; return 1 ;;
  esac || say "cannot mount $1 on $2"
}
if datakit=$(arg kit.datakit); then
  case "$datakit" in
    virtio) mount9p tag:datakit /datakit rw ;;
    tcp:*) mount9p "$datakit" /datakit rw ;;
    *) say "kit.datakit=$datakit: expected virtio or tcp:PORT" ;;
  esac
fi
if mounts=$(arg kit.mounts); then
  if list=$(echo "$mounts" | base64 -d 2>/dev/null); then
    echo "$list" | while read -r src path mode; do
      [ -n "$src" ] || continue
      case "$path" in /*) ;; *) say "kit.mounts: $path is not absolute"; continue ;; esac
      case "$mode" in ro|rw) ;; *) mode=rw ;; esac
      mount9p "$src" "$path" "$mode"
    done
  else
    say "kit.mounts is not base64"
  fi
fi

if [ "$(arg kit.docker)" = 1 ]; then
  if command -v dockerd >/dev/null; then
    # dockerd starts and supervises its own containerd.
    setsid dockerd --host unix:///run/docker.sock --pidfile /run/docker.pid >>/var/log/dockerd.log 2>&1 </dev/null &
    say "dockerd started (log: /var/log/dockerd.log)"
  else
    say "kit.docker=1 but this image has no dockerd (build it with --docker)"
  fi
fi

say "ready $(cut -d' ' -f1 /proc/uptime) s after the kernel started"
echo KIT-MACHINE-READY
if cmd=$(arg kit.cmd); then
  if echo "$cmd" | base64 -d >/run/kit/cmd 2>/dev/null; then
    (sh /run/kit/cmd </dev/null >/dev/console 2>&1 &)
  else
    say "kit.cmd is not base64"
  fi
fi
exit 0
EOF
chmod 755 "$root/etc/kit/rc" "$root/etc/kit/agent" "$root/etc/kit/console" "$root/etc/kit/shutdown" \
  "$root/etc/acpi/PWRF/00000080" "$root/etc/udhcpc/default.script"
: >"$root/etc/resolv.conf"
printf '# Kit machine: / is mounted by the initramfs (kit.root=); the rest by /etc/kit/rc.\n' >"$root/etc/fstab"
echo kit >"$root/etc/hostname"

# 6. The ext4 image: the tree plus a quarter and 256 MiB of slack, as a sparse file (no loop mount). Machines get
# their own copy (MachineDisk) and grow it; resize2fs adds inodes in proportion, so the count here is for this size.
echo "step: writing the ext4 image" >&2
apparent=$(du -sb --apparent-size "$root" | cut -f1)
files=$(find "$root" -xdev | wc -l)
size_mib=$(( (apparent * 5 / 4) / 1048576 + 256 ))
mkdir "$work/out"
img="$work/out/rootfs.ext4"
truncate -s "${size_mib}M" "$img"
mkfs.ext4 -q -F -L kit-root -N $((files * 2 + 65536)) -d "$root" "$img" >&2 || die "mkfs.ext4 -d failed"
echo "$key" >"$work/out/stamp"
{
  echo "suite=$suite variant=$variant kernel=$kver agent=$agent_hash"
  echo "packages=${packages[*]}"
} >"$work/out/info"
chmod 755 "$work/out"
# Publish by renaming the finished directory: a reader sees a whole image or none.
# An incomplete directory of the same name (its stamp was checked above) goes into the work directory, deleted below.
[[ ! -e "$out" ]] || mv "$out" "$work/stale"
mv "$work/out" "$out"
echo "guest/image.sh: built $variant image for $kver in $((SECONDS - started)) s ($(du -h "$out/rootfs.ext4" | cut -f1) on disk, ${size_mib} MiB apparent)" >&2
print_result
