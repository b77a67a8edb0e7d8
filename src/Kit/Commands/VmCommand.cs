using System.CommandLine;
using System.Globalization;
using Kit.Cli.Vm;
using Kit.HyperKit.Devices.Virtio.Net;
using Kit.HyperKit.Vm;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit vm run`: boots a Linux bzImage (+ initrd) under HyperKit on /dev/kvm, or on QEMU's software CPU with Kit's
/// devices over vhost-user (--accel), with the console on stdio. The exit code
/// says how the guest ended: 0 power-off, 1 VMM error, 2 reset, 3 triple fault, 4 kernel panic (MachineExitKind).
/// This file only parses the command line into a <see cref="VmSpec"/>; <see cref="VmLauncher"/> runs it.
/// </summary>
internal static class VmCommand
{
    public const string DefaultCmdline = "console=ttyS0 reboot=k panic=-1";

    public static Command Create()
    {
        var kernel = new Option<FileInfo>("--kernel") { HelpName = "FILE", Description = "Linux bzImage to boot (64-bit boot protocol).", Required = true };
        var initrd = new Option<FileInfo?>("--initrd") { HelpName = "FILE", Description = "Initial ramdisk (cpio, optionally compressed)." };
        var cmdline = new Option<string>("--cmdline")
        {
            HelpName = "TEXT",
            Description = "Kernel command line.",
            DefaultValueFactory = _ => DefaultCmdline,
        };
        var memory = new Option<string>("--memory", "-m")
        {
            HelpName = "SIZE",
            Description = "Guest RAM with a K/M/G suffix (plain numbers are MiB), at most 3G.",
            DefaultValueFactory = _ => "512M",
        };
        var cpus = new Option<int>("--cpus", "-c") { HelpName = "N", Description = "Number of vCPUs.", DefaultValueFactory = _ => 1 };
        var disks = new Option<string[]>("--disk")
        {
            HelpName = "FILE[,ro]",
            Description = "Raw disk image as virtio-blk, in order /dev/vda, /dev/vdb...; append \",ro\" for read-only.",
            AllowMultipleArgumentsPerToken = false,
        };
        var noRng = new Option<bool>("--no-rng") { Description = "Do not attach a virtio-rng device." };
        var consoleLog = new Option<FileInfo?>("--console-log")
        {
            HelpName = "FILE",
            Description = "Also write the serial console to FILE (truncated first), as hyperkit's com1 log= does.",
        };
        var net = new Option<string>("--net")
        {
            HelpName = "none|vpnkit|vmnet:PATH|tap:NAME",
            Description = "virtio-net backend: none, vpnkit (in-process VPNKit: 192.168.65.0/24, host at 192.168.65.2), vmnet:PATH (a VMN3T server such as kit net serve --vmnet or vpnkit), tap:NAME.",
            DefaultValueFactory = _ => "none",
        };
        var mac = new Option<string?>("--mac") { HelpName = "MAC", Description = "Guest MAC address xx:xx:xx:xx:xx:xx (default: random; a VMN3T server assigns its own)." };
        var netMtu = new Option<int>("--mtu") { HelpName = "BYTES", Description = "Link MTU for --net vpnkit and tap (576-65520).", DefaultValueFactory = _ => 1500 };
        var dnsUpstream = new Option<string[]>("--dns-upstream") { HelpName = "IP:PORT", Description = "--net vpnkit: DNS upstream IP:PORT (repeatable; default: the host's resolv.conf)." };
        var publish = new Option<string[]>("--publish") { HelpName = "[HOST:]HOSTPORT:GUESTPORT", Description = "--net vpnkit: forward host 127.0.0.1:HOSTPORT (or HOST, a loopback address: [::1]) to the guest's GUESTPORT ([HOST:]HOSTPORT:GUESTPORT[/udp], repeatable)." };
        var pcap = new Option<FileInfo?>("--pcap") { HelpName = "FILE", Description = "--net vpnkit: write every frame to FILE (libpcap format)." };
        var shares = new Option<string[]>("--share")
        {
            HelpName = "TAG=DIR[,ro][,trusted]",
            Description = "virtio-9p share TAG=DIR (add \",ro\" for read-only, \",trusted\" to apply the guest's chown and setuid/setgid bits: docs/security.md) or TAG=tcp://HOST:PORT / TAG=unix:PATH to relay to a 9P server; the guest mounts it with mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt.",
            AllowMultipleArgumentsPerToken = false,
        };
        var vsock = new Option<string?>("--vsock")
        {
            HelpName = "PATH[,cid=N]",
            Description = "virtio-vsock on Unix sockets, Firecracker's protocol: host clients connect to PATH and send \"CONNECT <port>\\n\"; guest connections to CID 2 port P go to PATH_P. Guest CID 3 unless \",cid=N\" is appended.",
        };
        var accel = new Option<string>("--accel") { HelpName = "auto|kvm|tcg", Description = Accelerators.OptionHelp, DefaultValueFactory = _ => "auto" };
        var policy = new GatewayPolicyOptions();
        var run = new Command("run", "Boot a Linux kernel with the console on stdio; the exit code says how the guest ended (0 power-off, 1 VMM error, 2 reset, 3 triple fault, 4 panic).")
        {
            kernel, initrd, cmdline, memory, cpus, disks, noRng, consoleLog, net, mac, netMtu, dnsUpstream, publish, pcap, shares, vsock, accel,
        };
        foreach (Option o in policy.All)
        {
            run.Options.Add(o); // --net vpnkit only
        }
        run.SetAction(parse =>
        {
            // Every flag and file is checked before anything starts and before the host is (the accelerator's probe,
            // QEMU): all problems are reported at once, one line each, so a wrong command line is fixed in one go.
            var problems = new List<string>();
            T? Check<T>(Func<T> read)
            {
                try
                {
                    return read();
                }
                catch (CliException e)
                {
                    problems.Add(e.Message);
                    return default;
                }
            }

            FileInfo kernelFile = parse.GetValue(kernel)!;
            problems.AddRange(FileProblem("--kernel", kernelFile.ToString()));
            FileInfo? initrdFile = parse.GetValue(initrd);
            if (initrdFile is not null)
            {
                problems.AddRange(FileProblem("--initrd", initrdFile.ToString()));
            }
            string memoryText = parse.GetValue(memory) ?? "512M";
            if (!TryParseSize(memoryText, out ulong memoryBytes))
            {
                problems.Add($"--memory: cannot parse \"{memoryText}\" (use e.g. 512M or 1G)");
            }
            else if (memoryBytes < MinMemory || memoryBytes > MemoryLayout.MaxMemory || memoryBytes % 4096 != 0)
            {
                problems.Add($"--memory: {memoryText} is out of range (16M to 3G, whole 4K pages)");
            }
            int cpuCount = parse.GetValue(cpus);
            if (cpuCount is < 1 or > MaxCpus)
            {
                problems.Add($"--cpus must be 1 to {MaxCpus}, got {cpuCount}");
            }
            string netText = parse.GetValue(net) ?? "none";
            if (NetProblem(netText) is string netProblem)
            {
                problems.Add(netProblem);
            }
            FileInfo? consoleLogFile = parse.GetValue(consoleLog);
            if (consoleLogFile?.Directory is { Exists: false } logDir)
            {
                problems.Add($"--console-log {consoleLogFile}: directory {logDir.FullName} does not exist");
            }
            byte[]? macBytes = Check(() => ParseMac(parse.GetValue(mac)));
            GatewaySettings? gateway = Check(() => policy.Apply(GatewaySettings.Parse(parse.GetValue(netMtu), parse.GetValue(dnsUpstream), parse.GetValue(publish), parse.GetValue(pcap)), parse));
            Accelerator accelerator = Check(() => Accelerators.Parse(parse.GetValue(accel)));
            var diskList = new List<DiskOptions>();
            foreach (string disk in parse.GetValue(disks) ?? [])
            {
                bool readOnly = disk.EndsWith(",ro", StringComparison.Ordinal);
                string diskPath = readOnly ? disk[..^3] : disk;
                problems.AddRange(FileProblem("--disk", diskPath));
                diskList.Add(new DiskOptions(diskPath, readOnly));
            }
            var shareList = new List<ShareOptions>();
            foreach (string share in parse.GetValue(shares) ?? [])
            {
                if (Check(() => ParseShare(share)) is ShareOptions parsed)
                {
                    bool relay = parsed.Target.StartsWith("tcp://", StringComparison.Ordinal) || parsed.Target.StartsWith("unix:", StringComparison.Ordinal);
                    if (!relay && !Directory.Exists(parsed.Target))
                    {
                        problems.Add($"--share {share}: {parsed.Target} is not a directory");
                    }
                    shareList.Add(parsed);
                }
            }
            string? vsockPath = null;
            ulong vsockCid = 3;
            if (parse.GetValue(vsock) is { } vsockText && !TryParseVsock(vsockText, out vsockPath, out vsockCid))
            {
                problems.Add($"--vsock: cannot parse \"{vsockText}\" (use PATH or PATH,cid=N with N from 3 to 4294967294)");
            }
            if (problems.Count > 0)
            {
                throw CliException.Many(problems);
            }

            var spec = new VmSpec
            {
                Kernel = kernelFile,
                Initrd = initrdFile,
                Cmdline = parse.GetValue(cmdline) ?? DefaultCmdline,
                MemoryBytes = memoryBytes,
                Cpus = cpuCount,
                Rng = !parse.GetValue(noRng),
                ConsoleLog = consoleLogFile,
                Net = netText,
                Mac = macBytes,
                NetOptions = gateway!,
                Accel = accelerator,
                VsockPath = vsockPath,
                VsockCid = vsockCid,
            };
            spec.Disks.AddRange(diskList);
            spec.Shares.AddRange(shareList);
            return VmLauncher.Run(spec);
        });
        return new Command("vm", "Lightweight Linux VMs: HyperKit on /dev/kvm, or QEMU's software CPU with Kit's devices where there is no KVM.") { run };
    }

    // HyperKit's limits (MachineBuilder): checked here too so that a bad value is reported with the others, before
    // the accelerator is chosen.
    private const ulong MinMemory = 16UL << 20;
    private const int MaxCpus = 64;

    /// <summary>Why <paramref name="path"/>, given to <paramref name="option"/>, is not a file kit can read, or nothing.</summary>
    private static IEnumerable<string> FileProblem(string option, string path)
    {
        if (Directory.Exists(path))
        {
            yield return $"{option} {path}: is a directory, not a file";
        }
        else if (!File.Exists(path))
        {
            yield return $"{option} {path}: no such file";
        }
    }

    /// <summary>The syntax of --net (VmNetwork connects or opens it later, once everything is checked).</summary>
    private static string? NetProblem(string spec) => spec switch
    {
        "none" or "vpnkit" => null,
        _ when spec.StartsWith("vmnet:", StringComparison.Ordinal) && spec.Length > 6 => null,
        // IFNAMSIZ is 16 with the NUL.
        _ when spec.StartsWith("tap:", StringComparison.Ordinal) && spec.Length is > 4 and <= 4 + 15 => null,
        _ => $"--net wants none, vpnkit, vmnet:PATH or tap:NAME (NAME up to 15 bytes), got '{spec}'",
    };

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

    /// <summary>Parses <c>TAG=DIR[,ro][,trusted]</c> (options in either order), <c>TAG=tcp://HOST:PORT</c> or <c>TAG=unix:PATH</c>.</summary>
    public static ShareOptions ParseShare(string text)
    {
        int eq = text.IndexOf('=', StringComparison.Ordinal);
        if (eq <= 0 || eq == text.Length - 1)
        {
            throw new CliException($"--share: expected TAG=DIR or TAG=tcp://HOST:PORT, got \"{text}\"");
        }
        string tag = text[..eq];
        string target = text[(eq + 1)..];
        bool readOnly = false, trusted = false;
        while (true)
        {
            if (!readOnly && target.EndsWith(",ro", StringComparison.Ordinal))
            {
                readOnly = true;
                target = target[..^",ro".Length];
            }
            else if (!trusted && target.EndsWith(",trusted", StringComparison.Ordinal))
            {
                trusted = true;
                target = target[..^",trusted".Length];
            }
            else
            {
                break;
            }
        }
        if (tag.Length > 31 || !tag.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.'))
        {
            throw new CliException($"--share: tag \"{tag}\" must be 1-31 letters, digits, '_', '-' or '.'");
        }
        return new ShareOptions(tag, target, readOnly, trusted);
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

    private static byte[]? ParseMac(string? text)
    {
        if (text is null)
        {
            return null;
        }
        return NetMacs.TryParse(text, out byte[] mac)
            ? mac
            : throw new CliException($"--mac: cannot parse \"{text}\" (use xx:xx:xx:xx:xx:xx, unicast)");
    }
}
