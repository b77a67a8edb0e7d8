#!/usr/bin/env bash
# bench/machine.sh [ROUNDS]: issue 15's speed comparison, kit machines against "the standard path" (QEMU booting the
# same Debian image with openssh-server, reached with ssh), measured side by side in one run under --accel tcg.
#
#   1. time to first command: `kit up NAME` + the first `kit exec NAME -- true`, against QEMU start -> first `ssh true`
#      (warm: image cached, machine/disk exists and is stopped; one cold row each: a new disk from the cached image)
#   2. latency: `kit exec NAME -- true` against `ssh HOST true` over an open ControlMaster connection (N=LAT_N, 20),
#      both guests up at the same time, samples interleaved
#   3. memory: VmRSS of kit's machine daemon and of its QEMU, and of the ssh peer's QEMU, both guests idle
#
# ROUNDS (default 3) warm rounds each, alternating kit and the peer (which goes first alternates too). Needs root (the
# image build), qemu-system-x86_64, ssh, ssh-keygen and the kit built by ./kit (artifacts/kit/kit). Machines live in a
# private XDG_DATA_HOME/XDG_RUNTIME_DIR under a temp dir; the image cache (~/.local/share/kit/images) is shared. Traffic
# goes only to loopback and the two guests: kit's DNS upstream is 127.0.0.1:9 and the peer's slirp runs with
# restrict=on (DHCP and the host forward only; its DNS at 10.0.2.3 is not reachable). Everything is bounded and the
# temp dir, guests and daemons it started are removed on exit. Results: docs/benchmarks.md ("Kit machines against ssh").
set -euo pipefail

rounds=${1:-3}
lat_n=${LAT_N:-20}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "usage: bench/machine.sh [ROUNDS]" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kit=${KIT:-$repo/artifacts/kit/kit}
die() { echo "bench/machine.sh: $*" >&2; exit 1; }
[[ -x "$kit" ]] || die "no $kit (build it: ./kit --version)"
[[ "$(id -u)" -eq 0 ]] || die "needs root (the machine image build)"
for t in qemu-system-x86_64 ssh ssh-keygen python3 base64 timeout; do command -v "$t" >/dev/null || die "missing $t"; done

tmp=$(mktemp -d /tmp/kit-bench-machine.XXXXXX)
chmod 700 "$tmp"
export XDG_DATA_HOME=$tmp/data XDG_RUNTIME_DIR=$tmp/run
mkdir -m 700 "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR" "$tmp/ssh"
log=$tmp/bench.log
peer_pid= kit_names=()
ctl=$tmp/ssh/ctl

cleanup() {
  set +e
  [[ -S "$ctl" ]] && ssh -o ControlPath="$ctl" -O exit peer >/dev/null 2>&1
  if [[ -n "$peer_pid" ]] && kill -0 "$peer_pid" 2>/dev/null; then kill "$peer_pid"; wait "$peer_pid" 2>/dev/null; fi
  for n in "${kit_names[@]}"; do
    local pid
    pid=$(cat "$XDG_RUNTIME_DIR/kit/$n/pid" 2>/dev/null)
    timeout 60 "$kit" down "$n" --force >/dev/null 2>&1
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; sleep 1; kill -9 "$pid" 2>/dev/null; fi
  done
  if [[ -n "${KEEP:-}" ]]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e6 }'; }
stats() { # stats UNIT VALUES...: "min / median / max"
  local unit=$1; shift
  printf '%s\n' "$@" | sort -g | awk -v u="$unit" '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    d = (u == "ms") ? 1 : (u == "MiB") ? 0 : 2
    printf "%.*f / %.*f / %.*f %s", d, v[1], d, m, d, v[NR], u }'
}
rss() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
rss_detail() { awk '/^(VmRSS|RssAnon|RssFile|RssShmem):/ { printf "%s %.0f MiB  ", $1, $2 / 1024 }' "/proc/$1/status"; }

echo "bench/machine.sh: $(date -u +%FT%TZ), $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  $("$kit" --version 2>&1 | head -n1), $(qemu-system-x86_64 --version | head -n1), $(ssh -V 2>&1)"
echo "  temp dir $tmp; $rounds warm rounds; latency N=$lat_n"

# --- Setup (not timed): images, the peer's disk, keys --------------------------------------------------------------
t0=$(now_us)
"$kit" image build >"$tmp/image-base.out" 2>>"$log" || die "kit image build failed (log: $log)"
base_secs=$(secs "$t0" "$(now_us)")
base_image=$(sed -n 's/^image=//p' "$tmp/image-base.out" | tail -n1)
t0=$(now_us)
bash "$repo/guest/image.sh" --extra-packages "openssh-server" >"$tmp/image-ssh.out" 2>>"$log" || die "the openssh-server image failed (log: $log)"
ssh_secs=$(secs "$t0" "$(now_us)")
ssh_image=$(sed -n 's/^image=//p' "$tmp/image-ssh.out" | tail -n1)
kernel=$(sed -n 's/^kernel=//p' "$tmp/image-ssh.out" | tail -n1)
initrd=$(sed -n 's/^initrd=//p' "$tmp/image-ssh.out" | tail -n1)
[[ -f "$base_image" && -f "$ssh_image" && -f "$kernel" && -f "$initrd" ]] || die "image paths missing"
echo "  base image: $base_image (kit image build: $base_secs s)"
echo "  ssh image:  $ssh_image (guest/image.sh --extra-packages openssh-server: $ssh_secs s), kernel $kernel"

ssh-keygen -q -t ed25519 -N '' -f "$tmp/ssh/id" -C kit-bench
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# kit.cmd (run by /etc/kit/rc after KIT-MACHINE-READY): the key, then sshd; no name resolution anywhere (UseDNS no).
peer_script="mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh && echo '$(cat "$tmp/ssh/id.pub")' >/root/.ssh/authorized_keys \
&& chmod 600 /root/.ssh/authorized_keys && ssh-keygen -A && /usr/sbin/sshd -o UseDNS=no -o PermitRootLogin=prohibit-password"
peer_cmd=$(printf '%s\n' "$peer_script" | base64 -w0)
# Kit's own command line (MachineDaemon: VmCommand.DefaultCmdline, quiet, kit.root, kit.hostname), minus kit.datakit.
peer_cmdline="console=ttyS0 reboot=k panic=-1 quiet kit.root=/dev/vda kit.hostname=peer kit.cmd=$peer_cmd"
ssh_opts=(-i "$tmp/ssh/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=1
  -o LogLevel=ERROR -p "$port")
ssh_ctl=(-o ControlMaster=auto -o ControlPath="$ctl" -o ControlPersist=60)
peer_disk=$tmp/peer.img

# The same machine as kit's under tcg (QemuCommandLine): 2 vCPUs, 2 GiB, virtio-blk, virtio-rng, virtio-net; QEMU's
# user-mode network instead of VPNKit, no vsock, no 9P DataKit mount, plain RAM instead of a shared memfd.
peer_start() {
  qemu-system-x86_64 -nodefaults -no-user-config -display none -accel tcg -cpu max -smp 2 -m 2048M -no-reboot \
    -machine pc -kernel "$kernel" -initrd "$initrd" -append "$peer_cmdline" -serial "file:$tmp/peer-console.log" \
    -object rng-random,id=rng,filename=/dev/urandom -device virtio-rng-pci,rng=rng \
    -drive "file=$peer_disk,format=raw,if=none,id=disk0" -device virtio-blk-pci,drive=disk0 \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
    </dev/null >>"$tmp/peer-qemu.log" 2>&1 &
  peer_pid=$!
}
peer_wait_ssh() { # until `ssh true` succeeds (120 s bound)
  local deadline=$((SECONDS + 120))
  until ssh -n "${ssh_opts[@]}" "$@" root@127.0.0.1 true 2>/dev/null; do
    kill -0 "$peer_pid" 2>/dev/null || die "the peer's QEMU ended (console: $(tail -n 5 "$tmp/peer-console.log" 2>/dev/null))"
    [[ $SECONDS -lt $deadline ]] || die "no ssh to the peer in 120 s (console: $(tail -n 5 "$tmp/peer-console.log"))"
    sleep 0.05
  done
}
peer_stop() { # poweroff through its init, then wait (60 s bound) for QEMU to end
  [[ -S "$ctl" ]] && ssh -o ControlPath="$ctl" -O exit peer >/dev/null 2>&1 || true
  timeout 10 ssh -n "${ssh_opts[@]}" root@127.0.0.1 poweroff >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 60))
  while kill -0 "$peer_pid" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do sleep 0.2; done
  kill "$peer_pid" 2>/dev/null || true
  wait "$peer_pid" 2>/dev/null || true
  peer_pid=
}
peer_first() { # sets peer_t: QEMU start -> first successful ssh true, seconds (not in a subshell: peer_pid)
  local t0; t0=$(now_us)
  peer_start
  peer_wait_ssh
  peer_t=$(secs "$t0" "$(now_us)")
}

kit_up_exec() { # NAME [kit up flags]: kit up + first kit exec true, seconds
  local name=$1 t0; shift
  t0=$(now_us)
  if ! timeout 300 "$kit" up "$name" "$@" >>"$log" 2>&1; then
    tail -n 5 "$log" "$XDG_DATA_HOME/kit/machines/$name/machine.log" >&2
    die "kit up $name failed"
  fi
  timeout 60 "$kit" exec "$name" -- true </dev/null || die "kit exec $name -- true failed"
  secs "$t0" "$(now_us)"
}
# The guest's own share: /etc/kit/rc's "kit: ready X s after the kernel started" (uptime at KIT-MACHINE-READY).
ready_at() { sed -n 's/.*kit: ready \([0-9.]*\) s after the kernel started.*/\1/p' "$1" 2>/dev/null | tail -n1; }
kit_ready() { ready_at "$XDG_DATA_HOME/kit/machines/bench/machine.log"; }
peer_ready() { ready_at "$tmp/peer-console.log"; }
kit_down() { timeout 90 "$kit" down "$1" >>"$log" 2>&1 || die "kit down $1 failed"; }

# --- 1. Time to first command ---------------------------------------------------------------------------------------
echo "cold: a new machine / a new copy of the image (the image itself cached)"
kit_names+=(bench)
kit_cold=$(kit_up_exec bench --accel tcg --cpus 2 --memory 2G --dns-upstream 127.0.0.1:9)
echo "  kit  cold $kit_cold s (guest READY at $(kit_ready) s uptime)"
kit_down bench
t0=$(now_us)
cp --reflink=auto --sparse=always "$ssh_image" "$peer_disk"
peer_start
peer_wait_ssh
peer_cold=$(secs "$t0" "$(now_us)")
echo "  ssh  cold $peer_cold s (including the copy of the image; guest READY at $(peer_ready) s uptime)"
peer_stop

kit_warm=() peer_warm=() kit_rdy=() peer_rdy=()
for ((i = 1; i <= rounds; i++)); do
  for who in $( ((i % 2)) && echo "kit peer" || echo "peer kit"); do
    if [[ $who == kit ]]; then
      t=$(kit_up_exec bench); r=$(kit_ready); kit_warm+=("$t"); kit_rdy+=("$r")
      echo "  round $i kit  warm $t s (guest READY at $r s uptime)"; kit_down bench
    else
      peer_first; r=$(peer_ready); peer_warm+=("$peer_t"); peer_rdy+=("$r")
      echo "  round $i ssh  warm $peer_t s (guest READY at $r s uptime)"; peer_stop
    fi
  done
done

# --- 2 and 3. Both up and idle: memory, then interleaved latency ----------------------------------------------------
echo "latency and memory: both guests up at the same time"
kit_up_exec bench >/dev/null
peer_start
peer_wait_ssh "${ssh_ctl[@]}"
sleep 10
daemon=$(cat "$XDG_RUNTIME_DIR/kit/bench/pid")
kit_qemu=$(pgrep -P "$daemon" -x qemu-system-x86 || pgrep -P "$daemon" | head -n1)
[[ -n "$kit_qemu" ]] || die "no QEMU under kit's daemon $daemon"
mem_daemon=() mem_kit_qemu=() mem_peer_qemu=()
for s in 1 2 3; do
  mem_daemon+=("$(rss "$daemon")"); mem_kit_qemu+=("$(rss "$kit_qemu")"); mem_peer_qemu+=("$(rss "$peer_pid")")
  sleep 2
done
echo "  kit daemon (pid $daemon): $(rss_detail "$daemon")" >>"$log"
echo "  kit QEMU (pid $kit_qemu): $(rss_detail "$kit_qemu")" >>"$log"
echo "  ssh QEMU (pid $peer_pid): $(rss_detail "$peer_pid")" >>"$log"
lat_kit=() lat_ssh=()
for ((i = 1; i <= lat_n; i++)); do
  t0=$(now_us); "$kit" exec bench -- true </dev/null || die "kit exec failed"; t1=$(now_us)
  ssh -n "${ssh_opts[@]}" "${ssh_ctl[@]}" root@127.0.0.1 true || die "ssh true failed"; t2=$(now_us)
  lat_kit+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) / 1000 }')")
  lat_ssh+=("$(awk -v a="$t1" -v b="$t2" 'BEGIN { print (b - a) / 1000 }')")
done
peer_stop
kit_down bench

# --- Results --------------------------------------------------------------------------------------------------------
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
kw=$(median "${kit_warm[@]}") pw=$(median "${peer_warm[@]}")
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| measured (min / median / max) | kit | QEMU + openssh-server (ssh) | kit / ssh (medians) |"
echo "|---|---|---|---|"
echo "| time to first command, warm (image cached, machine stopped; ${rounds} rounds each) | $(stats s "${kit_warm[@]}") | $(stats s "${peer_warm[@]}") | $(awk -v a="$kw" -v b="$pw" 'BEGIN { printf "%.2f", a / b }') |"
echo "| of which the guest's boot: uptime at KIT-MACHINE-READY, warm rounds | $(stats s "${kit_rdy[@]}") | $(stats s "${peer_rdy[@]}") | |"
echo "| time to first command, cold (new disk from the cached image; 1 run each) | $kit_cold s | $peer_cold s | $(awk -v a="$kit_cold" -v b="$peer_cold" 'BEGIN { printf "%.2f", a / b }') |"
echo "| \`true\` round trip (kit exec / ssh over ControlMaster; N=$lat_n, interleaved, both up) | $(stats ms "${lat_kit[@]}") | $(stats ms "${lat_ssh[@]}") | $(awk -v a="$(median "${lat_kit[@]}")" -v b="$(median "${lat_ssh[@]}")" 'BEGIN { printf "%.2f", a / b }') |"
echo "| host RSS, kit's machine daemon (idle machine; guest RAM excluded) | $(stats MiB "${mem_daemon[@]}") | — | |"
echo "| host RSS, QEMU (holds the 2 GiB guest's touched RAM under tcg) | $(stats MiB "${mem_kit_qemu[@]}") | $(stats MiB "${mem_peer_qemu[@]}") | |"
echo
grep -E '^  (kit daemon|kit QEMU|ssh QEMU)' "$log"
