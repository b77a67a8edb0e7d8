using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Kit.HyperKit.Kvm;
using Kit.HyperKit.Vm;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit vm run`: boots a Linux bzImage (+ initrd) under HyperKit on /dev/kvm with the console on stdio. The exit code
/// says how the guest ended: 0 power-off, 1 VMM error, 2 reset, 3 triple fault, 4 kernel panic (MachineExitKind).
/// </summary>
internal static class VmCommand
{
    public const string DefaultCmdline = "console=ttyS0 reboot=k panic=-1";

    public static Command Create()
    {
        var kernel = new Option<FileInfo>("--kernel") { Description = "Linux bzImage to boot (64-bit boot protocol).", Required = true };
        var initrd = new Option<FileInfo?>("--initrd") { Description = "Initial ramdisk (cpio, optionally compressed)." };
        var cmdline = new Option<string>("--cmdline")
        {
            Description = $"Kernel command line (default: \"{DefaultCmdline}\").",
            DefaultValueFactory = _ => DefaultCmdline,
        };
        var memory = new Option<string>("--memory", "-m")
        {
            Description = "Guest RAM with a K/M/G suffix (plain numbers are MiB), at most 3G.",
            DefaultValueFactory = _ => "512M",
        };
        var cpus = new Option<int>("--cpus", "-c") { Description = "Number of vCPUs.", DefaultValueFactory = _ => 1 };
        var disks = new Option<string[]>("--disk")
        {
            Description = "Raw disk image as virtio-blk, in order /dev/vda, /dev/vdb...; append \",ro\" for read-only.",
            AllowMultipleArgumentsPerToken = false,
        };
        var noRng = new Option<bool>("--no-rng") { Description = "Do not attach a virtio-rng device." };
        var consoleLog = new Option<FileInfo?>("--console-log")
        {
            Description = "Also write the serial console to FILE (truncated first), as hyperkit's com1 log= does.",
        };
        var vsock = new Option<string?>("--vsock")
        {
            Description = "virtio-vsock on Unix sockets, Firecracker's protocol: host clients connect to PATH and send \"CONNECT <port>\\n\"; guest connections to CID 2 port P go to PATH_P. Guest CID 3 unless \",cid=N\" is appended.",
        };
        var run = new Command("run", "Boot a Linux kernel with the console on stdio; the exit code says how the guest ended (0 power-off, 1 VMM error, 2 reset, 3 triple fault, 4 panic).")
        {
            kernel, initrd, cmdline, memory, cpus, disks, noRng, consoleLog,
            vsock,
        };
        run.SetAction(parse => Run(
            parse.GetValue(kernel)!,
            parse.GetValue(initrd),
            parse.GetValue(cmdline) ?? DefaultCmdline,
            parse.GetValue(memory) ?? "512M",
            parse.GetValue(cpus),
            parse.GetValue(disks) ?? [],
            !parse.GetValue(noRng),
            parse.GetValue(consoleLog),
            parse.GetValue(vsock)));
        return new Command("vm", "Lightweight Linux VMs on /dev/kvm (HyperKit).") { run };
    }

    /// <summary>Parses 512M / 1G / 65536K / 512 (MiB) into bytes.</summary>
    public static bool TryParseSize(string text, out ulong bytes)
    {
        bytes = 0;
        text = text.Trim();
        if (text.Length == 0)
        {
            return false;
        }
        ulong unit = 1UL << 20;
        char last = char.ToUpperInvariant(text[^1]);
        if (last is 'K' or 'M' or 'G')
        {
            unit = last switch { 'K' => 1UL << 10, 'M' => 1UL << 20, _ => 1UL << 30 };
            text = text[..^1];
        }
        if (!ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out ulong value) || value > (1UL << 40) / unit)
        {
            return false;
        }
        bytes = value * unit;
        return true;
    }

    /// <summary>Parses <c>PATH</c> or <c>PATH,cid=N</c> (N from 3 to 2^32-2; 0-2 are reserved, -1 is "any").</summary>
    public static bool TryParseVsock(string text, out string path, out ulong cid)
    {
        path = text;
        cid = 3;
        int comma = text.LastIndexOf(",cid=", StringComparison.Ordinal);
        if (comma >= 0)
        {
            path = text[..comma];
            if (!ulong.TryParse(text.AsSpan(comma + 5), NumberStyles.None, CultureInfo.InvariantCulture, out cid))
            {
                return false;
            }
        }
        return path.Length > 0 && cid > 2 && cid < 0xFFFF_FFFF;
    }

    private static int Run(FileInfo kernel, FileInfo? initrd, string cmdline, string memoryText, int cpus, string[] disks, bool rng, FileInfo? consoleLog, string? vsock)
    {
        if (!TryParseSize(memoryText, out ulong memory))
        {
            throw new CliException($"--memory: cannot parse \"{memoryText}\" (use e.g. 512M or 1G)");
        }
        string vsockPath = "";
        ulong vsockCid = 3;
        if (vsock is not null && !TryParseVsock(vsock, out vsockPath, out vsockCid))
        {
            throw new CliException($"--vsock: cannot parse \"{vsock}\" (use PATH or PATH,cid=N with N from 3 to 4294967294)");
        }
        switch (KvmSystem.Probe())
        {
            case KvmAvailability.Missing:
                throw new CliException("/dev/kvm is missing: this host offers no KVM (run kit vm inside a KVM-capable machine or VM)");
            case KvmAvailability.Pvm:
                throw new CliException("/dev/kvm here is PVM (kvm_pvm, no vmx/svm): a stock Linux guest would be emulated instruction by instruction and take hours to boot; refusing to start");
        }
        var options = new MachineOptions
        {
            MemoryBytes = memory,
            Cpus = cpus,
            Rng = rng,
            ConsoleInput = Console.IsInputRedirected ? null : Console.OpenStandardInput(),
        };
        Stream stdout = Console.OpenStandardOutput();
        using FileStream? log = consoleLog?.Create();
        options.ConsoleOutput = log is null
            ? bytes => stdout.Write(bytes)
            : bytes =>
            {
                stdout.Write(bytes);
                log.Write(bytes);
            };
        foreach (string disk in disks)
        {
            bool readOnly = disk.EndsWith(",ro", StringComparison.Ordinal);
            options.Disks.Add(new DiskOptions(readOnly ? disk[..^3] : disk, readOnly));
        }
        if (vsock is not null)
        {
            options.VsockPath = vsockPath;
            options.VsockCid = vsockCid;
        }
        MachineExit exit;
        var clock = Stopwatch.StartNew();
        try
        {
            using var machine = new Machine(options);
            machine.LoadLinux(kernel.FullName, initrd?.FullName, cmdline);
            exit = machine.Run();
        }
        catch (MachineConfigurationException e)
        {
            throw new CliException(e.Message);
        }
        catch (KvmException e)
        {
            throw new CliException(e.Message);
        }
        stdout.Flush();
        log?.Flush();
        if (exit.Kind != MachineExitKind.PowerOff)
        {
            Console.Error.WriteLine($"kit: vm: {exit.Message} (exit code {exit.ExitCode}, after {clock.Elapsed.TotalSeconds:0.0} s)");
        }
        return exit.ExitCode;
    }
}
