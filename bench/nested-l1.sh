# Sourced by bench/*.sh (not run): boots one nested L1, a QEMU TCG guest with -cpu max and kvm_amd where /dev/kvm is
# real (testing-here.md section 2), that runs one command and powers off.
#
#   nested_l1 KERNEL INITRD RESULTS_DIR TIMEOUT_SECONDS COMMAND
#
# L1 is the default guest (guest/build.sh) in its kit.nested=1 mode: the host's / read-only at the same paths (a
# chroot), RESULTS_DIR read-write at its own path, fresh tmpfs on /tmp and /run. COMMAND is a shell command line run
# there as root (e.g. "sh $work/inner.sh"). L1's serial console goes to RESULTS_DIR/l1.log. Returns QEMU's status,
# or 124 when TIMEOUT_SECONDS ran out (QEMU is then killed). NESTED_L1_MEMORY_MIB sets L1's memory (default 3072).
#
# Only one L1 per core runs on the machine at a time, whoever starts it: the slot is an exclusive flock on
# /tmp/kit-nested-slot-N.lock, the same files tests/Kit.Testing/NestedRunner.cs locks, held while L1 runs (the kernel
# drops it if this shell dies), so a bench waits for a busy machine instead of slowing every nested run.

nested_l1_take_slot() {
  local i
  while :; do
    for ((i = 0; i < $(nproc); i++)); do
      exec {nested_l1_fd}>"/tmp/kit-nested-slot-$i.lock"
      if flock -n "$nested_l1_fd"; then
        nested_l1_slot=$i
        return 0
      fi
      exec {nested_l1_fd}>&-
    done
    sleep 2
  done
}

nested_l1() {
  local kernel=$1 initrd=$2 results=$3 seconds=$4 command=$5 rc=0
  [[ -f "$kernel" && -f "$initrd" ]] || { echo "nested_l1: no kernel '$kernel' or initrd '$initrd'" >&2; return 2; }
  [[ -d "$results" && "$results" != *[[:space:]]* ]] || { echo "nested_l1: '$results' must be a directory without spaces (kernel command line)" >&2; return 2; }
  local cmd
  cmd=$(printf '%s' "$command" | base64 -w0)
  nested_l1_take_slot
  timeout --kill-after=30 "$seconds" qemu-system-x86_64 -accel tcg -cpu max -m "${NESTED_L1_MEMORY_MIB:-3072}" -smp 1 \
    -nodefaults -nographic -no-reboot -monitor none -serial stdio -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1 no_timer_check kit.nested=1 kit.results=$results kit.cmd=$cmd" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$results,mount_tag=results,security_model=none,multidevs=remap" > "$results/l1.log" 2>&1 || rc=$?
  exec {nested_l1_fd}>&-
  return "$rc"
}
