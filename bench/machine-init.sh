#!/usr/bin/env bash
# bench/machine-init.sh [ROUNDS]: the machine's init, measured (issue 15: "do not wait for a full systemd boot if a
# lighter init is faster; measure both"). The same Debian 12 image, kernel, initramfs, devices and agent, booted under
# `kit vm run --accel tcg` two ways, alternating in one run:
#   busybox: what kit machines use (busybox init runs /etc/kit/rc, then respawns the agent);
#   systemd: the image with systemd-sysv, /sbin/init -> systemd, /etc/kit/rc as a oneshot unit and the agent as a
#            service after it (the units are written into a copy of the disk with debugfs; nothing else differs).
# Per boot it records, from the start of `kit vm run`: KIT-MACHINE-READY on the console (rc finished) and the agent's
# first answer over vsock (CONNECT 1024, Hello), which is what `kit up` waits for. Needs root (image builds, debugfs).
# Traffic: none beyond the guests' own loopback vsock socket; no network device at all.
set -euo pipefail
rounds=${1:-3}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kit="$repo/artifacts/kit/kit"
agent="$repo/artifacts/kit/kit-agent"
[[ -x "$kit" && -x "$agent" ]] || { echo "bench/machine-init.sh: build kit first (./kit --version)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$tmp"' EXIT
now_us() { date +%s%6N; }

echo "bench/machine-init.sh: $(date -u +%FT%TZ), $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
build() { # build VARIANT-NAME EXTRA-PACKAGES -> prints image= kernel= initrd= lines into $tmp/NAME.out
  bash "$repo/guest/image.sh" --agent "$agent" ${2:+--extra-packages "$2"} >"$tmp/$1.out" 2>>"$tmp/build.log" || { tail -20 "$tmp/build.log"; exit 1; }
}
build busybox ""
build systemd "systemd-sysv"
val() { sed -n "s/^$2=//p" "$tmp/$1.out" | tail -n1; }
kernel=$(val busybox kernel); initrd=$(val busybox initrd)

# The systemd disk (/sbin is a link to usr/sbin, and debugfs does not follow links): systemd as PID 1, rc and the agent as units (rc's output on the console, as under busybox init).
cp --sparse=always "$(val systemd image)" "$tmp/systemd.base"
cat >"$tmp/kit-rc.service" <<'UNIT'
[Unit]
Description=Kit machine bring-up (/etc/kit/rc)
DefaultDependencies=no
After=local-fs.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c '/etc/kit/rc >/dev/console 2>&1'
[Install]
WantedBy=multi-user.target
UNIT
cat >"$tmp/kit-agent.service" <<'UNIT'
[Unit]
Description=Kit guest agent
After=kit-rc.service
Wants=kit-rc.service
[Service]
ExecStart=/etc/kit/agent
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
debugfs -w "$tmp/systemd.base" >/dev/null 2>&1 <<CMDS
rm /usr/sbin/init
symlink /usr/sbin/init /lib/systemd/systemd
write $tmp/kit-rc.service /etc/systemd/system/kit-rc.service
write $tmp/kit-agent.service /etc/systemd/system/kit-agent.service
mkdir /etc/systemd/system/multi-user.target.wants
symlink /etc/systemd/system/multi-user.target.wants/kit-rc.service /etc/systemd/system/kit-rc.service
symlink /etc/systemd/system/multi-user.target.wants/kit-agent.service /etc/systemd/system/kit-agent.service
CMDS
[[ "$(debugfs -R 'stat /usr/sbin/init' "$tmp/systemd.base" 2>/dev/null | grep -c 'Fast link dest: "/lib/systemd/systemd"')" == 1 ]] ||
  { echo "bench/machine-init.sh: debugfs did not make /sbin/init systemd" >&2; exit 1; }

# The agent's first Hello through the VMM's vsock socket: CONNECT 1024, then a Hello frame (u32 LE length, type 1).
cat >"$tmp/hello.py" <<'PY'
import json, socket, struct, sys, time
path, deadline = sys.argv[1], time.time() + float(sys.argv[2])
hello = json.dumps({"version": 1}).encode()
while time.time() < deadline:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(path)
        s.sendall(b"CONNECT 1024\n")
        line = b""
        while not line.endswith(b"\n"):
            b = s.recv(1)
            if not b:
                raise OSError("refused")
            line += b
        s.sendall(struct.pack("<I", len(hello) + 1) + b"\x01" + hello)
        head = s.recv(5)
        if len(head) == 5 and head[4] == 1:
            sys.exit(0)
    except OSError:
        pass
    finally:
        s.close()
    time.sleep(0.05)
sys.exit(1)
PY

boot() { # boot NAME DISK -> "ready_s agent_s"
  local name=$1 disk=$tmp/$1.img console=$tmp/$1.console vs=$tmp/$1.vsock t0 pid ready= agent=
  cp --sparse=always "$2" "$disk"
  rm -f "$console" "$vs"
  t0=$(now_us)
  "$kit" vm run --accel tcg --kernel "$kernel" --initrd "$initrd" --cpus 2 --memory 2G --disk "$disk" --net none \
    --vsock "$vs" --cmdline "console=ttyS0 reboot=k panic=-1 quiet no_timer_check kit.root=/dev/vda kit.hostname=$name" \
    </dev/null >"$console" 2>&1 &
  pid=$!
  until [[ -S "$vs" ]]; do sleep 0.02; done
  python3 "$tmp/hello.py" "$vs" 180 || { echo "no agent from $name: $(tail -5 "$console")" >&2; kill "$pid"; exit 1; }
  agent=$(( $(now_us) - t0 ))
  # READY's time is the guest's own uptime, which rc prints with it ("kit: ready X s after the kernel started").
  ready=$(sed -n 's/.*ready \([0-9.]*\) s after the kernel started.*/\1/p' "$console" | head -n1)
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  printf '%s %s\n' "${ready:-?}" "$(awk -v us="$agent" 'BEGIN { printf "%.2f", us / 1e6 }')"
}
stats() { sort -n | awk '{ v[NR] = $1 } END { printf "%.2f / %.2f / %.2f", v[1], v[int((NR + 1) / 2)], v[NR] }'; }

: >"$tmp/busybox.times"; : >"$tmp/systemd.times"
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then order=(busybox systemd); else order=(systemd busybox); fi
  for v in "${order[@]}"; do
    if [[ $v == busybox ]]; then base=$(val busybox image); else base=$tmp/systemd.base; fi
    line=$(boot "$v" "$base")
    echo "  round $r $v: READY at ${line% *} s guest uptime, agent answered ${line#* } s after kit vm run started"
    echo "$line" >>"$tmp/$v.times"
  done
done
echo
echo "| init (min / median / max, $rounds boots each) | READY, guest uptime | agent's first answer, from kit vm run |"
echo "|---|---|---|"
for v in busybox systemd; do
  echo "| $v | $(cut -d' ' -f1 "$tmp/$v.times" | stats) s | $(cut -d' ' -f2 "$tmp/$v.times" | stats) s |"
done
