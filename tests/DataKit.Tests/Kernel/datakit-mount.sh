#!/bin/sh
# Guest side of the Linux-kernel mount test (issue 4), for the default guest (guest/build.sh) booted with
# QEMU `-netdev user` (QemuNetwork.User()): the host runs `kit data serve --listen-9p tcp://127.0.0.1:$PORT`,
# which the guest reaches as 10.0.2.2:$PORT. Pack this file as /kit/run (the script is too long for kit.cmd=:
# x86 command lines stop at 2048 bytes) and pass kit.dkport=PORT kit.dkversion=9p2000.L (or 9p2000.u) on the
# kernel command line. Prints DATAKIT-OK and exits 0 when every step passed; the host then checks
# `git log master` (two commits: "My commit", "second") and `git fsck --strict` on the store.
# Validated by hand on 2026-11-27 with the harness guest (6.1.0-56-amd64) in both dialects (about 8 s per boot):
#   qemu-system-x86_64 -accel tcg -cpu max -m 512 -nographic -no-reboot -kernel vmlinuz -initrd initrd+run.gz \
#     -append "console=ttyS0 quiet panic=-1 kit.dkport=5656 kit.dkversion=9p2000.L" \
#     -netdev user,id=n0 -device virtio-net-pci,netdev=n0
set -e
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) echo "${w#*=}"; return 0 ;; esac; done; return 1; }
port=$(arg kit.dkport || echo 5640)
version=$(arg kit.dkversion || echo 9p2000.L)
modprobe 9pnet_fd
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
mkdir -p /mnt
mount -t 9p -o "trans=tcp,port=$port,version=$version,cache=none" 10.0.2.2 /mnt
fail() { echo "DATAKIT-FAIL: $*"; exit 1; }

[ "$(ls /mnt | tr '\n' ' ')" = "branch commits debug remotes snapshots trees " ] || fail "root listing: $(ls /mnt)"
mkdir /mnt/branch/master
T=/mnt/branch/master/transactions/t
mkdir $T
mkdir $T/rw/src
echo "all: build" > $T/rw/src/Makefile
printf '#!/bin/sh\necho hi\n' > $T/rw/run.sh
chmod +x $T/rw/run.sh
ln -s run.sh $T/rw/link
echo "My commit" > $T/msg
echo commit > $T/ctl
[ ! -e $T ] || fail "transaction still open after commit"
head=$(cat /mnt/branch/master/head)
[ ${#head} -eq 40 ] || fail "head '$head'"
[ "$(cat /mnt/branch/master/ro/src/Makefile)" = "all: build" ] || fail "ro/src/Makefile"
[ -x /mnt/branch/master/ro/run.sh ] || fail "exec bit lost"
[ "$(readlink /mnt/branch/master/ro/link)" = run.sh ] || fail "symlink lost"
[ "$(cat /mnt/snapshots/$head/msg)" = "My commit" ] || fail "snapshot msg"

# Block on tree.live while another transaction commits; the new root line must arrive.
cat /mnt/branch/master/watch/tree.live > /tmp/live &
watcher=$!
sleep 1
T2=/mnt/branch/master/transactions/t2
mkdir $T2
echo more > $T2/rw/more
echo second > $T2/msg
echo commit > $T2/ctl
for i in 1 2 3 4 5 6 7 8 9 10; do [ "$(wc -l < /tmp/live)" -ge 2 ] && break; sleep 1; done
kill $watcher
[ "$(wc -l < /tmp/live)" -ge 2 ] || fail "tree.live did not fire: $(cat /tmp/live)"
cat /tmp/live

# Errors come back as errnos.
if mkdir /mnt/branch/master/transactions/t2/ctl 2>/dev/null; then fail "mkdir over a file"; fi
if cat /mnt/snapshots/0000000000000000000000000000000000000000/msg 2>/dev/null; then fail "unknown snapshot"; fi
umount /mnt
echo DATAKIT-OK
