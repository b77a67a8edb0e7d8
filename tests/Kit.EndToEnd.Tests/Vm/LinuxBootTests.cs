using System.Text.RegularExpressions;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Vm;

/// <summary>
/// Issue 5's proof that HyperKit boots real Linux: inside the nested runner's L1 (where /dev/kvm has SVM),
/// `kit vm run` boots the stock Debian kernel with the default guest initramfs and 2 vCPUs. The guest sees both CPUs,
/// reads /dev/hwrng, writes a file on an ext4 virtio-blk image and powers off; the host then checks the image with
/// e2fsck and debugfs. In the same L1 a second guest panics, and the VMM must say so with exit code 4.
/// The kernel boots as kit boots it by default: its XZ payload decompressed on the host (the first boot fills the
/// cache, the panic boot reads it); two more short boots cover the other kernel paths: the bzImage as it is
/// (KIT_VM_KERNEL_CACHE=0, the guest decompresses) and the cached vmlinux ELF given directly as --kernel.
/// </summary>
[Trait("Tier", "Real")]
public sealed class LinuxBootTests(ITestOutputHelper output)
{
    private const string GuestScript = """
        echo "cpus=$(grep -c ^processor /proc/cpuinfo)"
        echo "hwrng=$(head -c 64 /dev/hwrng | wc -c)"
        cat /sys/class/misc/hw_random/rng_current 2>/dev/null | sed 's/^/rng_current=/'
        mkdir -p /mnt/disk
        mount -t ext4 /dev/vda /mnt/disk || exit 10
        echo hello-from-guest > /mnt/disk/hello
        umount /mnt/disk || exit 11
        exit 0
        """;

    [Fact]
    public async Task Kit_vm_run_boots_Debian_with_two_cpus_rng_and_an_ext4_disk_then_reports_a_panic()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        // Inside L1 the host's / is read-only: everything the nested VMM writes lives in the read-write share.
        string work = Path.Combine(RepoPaths.Root, "artifacts", "test-work", $"vm-boot-{Environment.ProcessId}");
        Directory.CreateDirectory(work);
        try
        {
            string disk = Path.Combine(work, "disk.img");
            ProcessRunner.Run("truncate", ["-s", "64M", disk]).EnsureSuccess();
            ProcessRunner.Run("mkfs.ext4", ["-q", "-F", disk]).EnsureSuccess();
            string bootInitrd = Path.Combine(work, "boot.initrd");
            string panicInitrd = Path.Combine(work, "panic.initrd");
            await image.WriteInitrdAsync(bootInitrd, GuestScript, cancellationToken: cancel);
            await image.WriteInitrdAsync(panicInitrd, "echo c > /proc/sysrq-trigger; sleep 30", cancellationToken: cancel);
            string plainInitrd = Path.Combine(work, "plain.initrd");
            // /init runs as root (CAP_SYSLOG), so with kptr_restrict 0 /proc/kallsyms shows where _text really is.
            await image.WriteInitrdAsync(plainInitrd, """
                echo 0 > /proc/sys/kernel/kptr_restrict
                echo "kernel-path-ok cpus=$(grep -c ^processor /proc/cpuinfo) text=$(grep ' _text$' /proc/kallsyms | cut -d' ' -f1) uptime=$(cut -d' ' -f1 /proc/uptime)"
                exit 0
                """, cancellationToken: cancel);
            // L1's own tmpfs (fresh per L1, so the first boot is a cold one), not the 9p results share.
            const string cache = "/tmp/kit-cache";

            string kit = KitCli.ExecutablePath;
            string Run(string initrd, string console, string extra, string? kernel = null, string cmdline = "") => Text.ShellJoin(
                [kit, "vm", "run", "--kernel", kernel ?? image.Kernel, "--initrd", initrd, "--memory", "512M",
                 "--cmdline", "console=ttyS0 reboot=k panic=-1 no_timer_check" + cmdline, .. extra.Split(' ', StringSplitOptions.RemoveEmptyEntries)])
                + $" >{console} 2>&1";
            string command = $"""
                export XDG_CACHE_HOME={cache}
                {Run(bootInitrd, work + "/boot.console", $"--cpus 2 --disk {disk} --console-log {work}/boot.log")}
                echo "boot-exit=$?"
                echo "cached=$(ls {cache}/kit/vmlinux)"
                {Run(panicInitrd, work + "/panic.console", "--cpus 1")}
                echo "panic-exit=$?"
                KIT_VM_KERNEL_CACHE=0 {Run(plainInitrd, work + "/bzimage.console", "--cpus 1")}
                echo "bzimage-exit=$?"
                cp {cache}/kit/vmlinux/*.elf /tmp/vmlinux.elf
                {Run(plainInitrd, work + "/elf.console", "--cpus 1", "/tmp/vmlinux.elf")}
                echo "elf-exit=$?"
                t=$(date +%s%N); KIT_DEBUG=1 {Run(plainInitrd, work + "/kaslr1.console", "--cpus 1")}
                echo "kaslr1-exit=$? wall-ms=$(( ($(date +%s%N) - t) / 1000000 ))"
                t=$(date +%s%N); KIT_DEBUG=1 {Run(plainInitrd, work + "/kaslr2.console", "--cpus 1")}
                echo "kaslr2-exit=$? wall-ms=$(( ($(date +%s%N) - t) / 1000000 ))"
                t=$(date +%s%N); KIT_DEBUG=1 {Run(plainInitrd, work + "/nokaslr.console", "--cpus 1", cmdline: " nokaslr")}
                echo "nokaslr-exit=$? wall-ms=$(( ($(date +%s%N) - t) / 1000000 ))"
                """;
            var options = new NestedOptions { ResultsDirectory = work, Timeout = TimeSpan.FromMinutes(15) };

            GuestResult l1 = await NestedRunner.RunAsync(command, options, cancel);

            string boot = ReadIfExists(Path.Combine(work, "boot.console"));
            string panic = ReadIfExists(Path.Combine(work, "panic.console"));
            output.WriteLine($"L1 boot {l1.BootTime.TotalSeconds:F1} s, total {l1.Elapsed.TotalSeconds:F1} s\n{l1.Output}");
            output.WriteLine($"--- guest console (boot) ---\n{Text.Tail(boot, 6000)}\n--- guest console (panic) ---\n{Text.Tail(panic, 3000)}");

            Assert.True(l1.Output.Contains("boot-exit=0", StringComparison.Ordinal), $"kit vm run did not exit 0\n{l1.Output}\n{Text.Tail(boot, 6000)}");
            Assert.Contains("KIT-GUEST-EXIT 0", boot, StringComparison.Ordinal);
            Assert.Contains("cpus=2", boot, StringComparison.Ordinal);
            Assert.Contains("hwrng=64", boot, StringComparison.Ordinal);
            // --console-log keeps a copy of the console in a file (stdout above is the same stream).
            Assert.Contains("KIT-GUEST-EXIT 0", ReadIfExists(Path.Combine(work, "boot.log")), StringComparison.Ordinal);

            ProcessRunner.Run("e2fsck", ["-n", "-f", disk]).EnsureSuccess();
            string hello = ProcessRunner.Run("debugfs", ["-R", "cat /hello", disk]).EnsureSuccess().StandardOutput;
            Assert.Contains("hello-from-guest", hello, StringComparison.Ordinal);

            Assert.True(l1.Output.Contains("panic-exit=4", StringComparison.Ordinal), $"a panicking guest must make kit vm run exit 4\n{l1.Output}\n{Text.Tail(panic, 3000)}");
            Assert.Contains("panic", panic, StringComparison.OrdinalIgnoreCase);

            // The first boot decompressed the kernel and cached it (one file, named by the bzImage's hash).
            Assert.Matches(@"cached=[0-9a-f]{32}\.elf\s", l1.Output);
            string bzimage = ReadIfExists(Path.Combine(work, "bzimage.console"));
            Assert.True(l1.Output.Contains("bzimage-exit=0", StringComparison.Ordinal), $"KIT_VM_KERNEL_CACHE=0 boot failed\n{l1.Output}\n{Text.Tail(bzimage, 3000)}");
            Assert.Contains("kernel-path-ok cpus=1", bzimage, StringComparison.Ordinal);
            string elf = ReadIfExists(Path.Combine(work, "elf.console"));
            Assert.True(l1.Output.Contains("elf-exit=0", StringComparison.Ordinal), $"booting the vmlinux ELF directly failed\n{l1.Output}\n{Text.Tail(elf, 3000)}");
            Assert.Contains("kernel-path-ok cpus=1", elf, StringComparison.Ordinal);

            // KASLR on the cached-vmlinux path: kit relocates the kernel on the host and logs where it put it; the guest
            // runs exactly there (_text is the logged virtual base), the two boots chose different places, and
            // nokaslr keeps the linked base.
            (string Text, string Log) Boot(string name)
            {
                string console = ReadIfExists(Path.Combine(work, name + ".console"));
                Assert.True(l1.Output.Contains($"{name}-exit=0 ", StringComparison.Ordinal), $"{name} boot failed\n{l1.Output}\n{Text.Tail(console, 3000)}");
                Match m = Regex.Match(console, "kernel-path-ok cpus=1 text=([0-9a-f]{16})");
                Assert.True(m.Success, $"{name}: no _text address\n{Text.Tail(console, 3000)}");
                string log = Regex.Match(console, "(KASLR:|no KASLR)[^\n]*").Value;
                output.WriteLine($"{name}: _text={m.Groups[1].Value} {Regex.Match(console, "uptime=[0-9.]+").Value} {Regex.Match(l1.Output, name + "-exit=0 wall-ms=[0-9]+").Value} {log}");
                return (m.Groups[1].Value, log);
            }
            (string Text, string Log)[] randomized = [Boot("kaslr1"), Boot("kaslr2")];
            foreach ((string text, string log) in randomized)
            {
                Match placed = Regex.Match(log, "KASLR: kernel at physical 0x([0-9A-F]+), virtual base 0x([0-9A-F]+)");
                Assert.True(placed.Success, $"no KASLR placement logged: '{log}'");
                Assert.Equal(placed.Groups[2].Value.ToLowerInvariant(), text);
            }
            Assert.NotEqual(Regex.Replace(randomized[0].Log, @" \(table.*", ""), Regex.Replace(randomized[1].Log, @" \(table.*", ""));
            (string fixedText, string fixedLog) = Boot("nokaslr");
            Assert.Equal("ffffffff81000000", fixedText);
            Assert.Contains("nokaslr on the command line", fixedLog, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static string ReadIfExists(string path) => File.Exists(path) ? File.ReadAllText(path) : "(no console file)";
}
