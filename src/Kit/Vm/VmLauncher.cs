using System.Diagnostics;
using Kit.Cli.Commands;
using Kit.HyperKit.Kvm;
using Kit.HyperKit.Vm;
using Microsoft.Extensions.Logging;

namespace Kit.Cli.Vm;

/// <summary>Everything `kit vm run` (or `kit up`) asks of one VM, parsed and checked.</summary>
internal sealed class VmSpec
{
    public required FileInfo Kernel { get; init; }

    public FileInfo? Initrd { get; init; }

    public string Cmdline { get; init; } = VmCommand.DefaultCmdline;

    public ulong MemoryBytes { get; init; } = 512UL << 20;

    public int Cpus { get; init; } = 1;

    public bool Rng { get; init; } = true;

    public List<DiskOptions> Disks { get; } = [];

    /// <summary>Also copy the serial console into this file.</summary>
    public FileInfo? ConsoleLog { get; init; }

    /// <summary>none, vpnkit, vmnet:PATH or tap:NAME (see <see cref="VmNetwork"/>).</summary>
    public string Net { get; init; } = "none";

    public byte[]? Mac { get; init; }

    /// <summary>Settings of the in-process VPNKit (--net vpnkit): MTU, DNS upstreams, publishes, pcap.</summary>
    public GatewaySettings NetOptions { get; init; } = GatewaySettings.Default;

    public List<ShareOptions> Shares { get; } = [];

    public string? VsockPath { get; set; }

    public ulong VsockCid { get; set; } = 3;
}

/// <summary>Boots a <see cref="VmSpec"/> with the console on stdio and returns the exit code that says how it ended.</summary>
internal static class VmLauncher
{
    public static int Run(VmSpec spec)
    {
        RequireKvm();
        var options = new MachineOptions
        {
            MemoryBytes = spec.MemoryBytes,
            Cpus = spec.Cpus,
            Rng = spec.Rng,
            ConsoleInput = Console.IsInputRedirected ? null : Console.OpenStandardInput(),
            VsockPath = spec.VsockPath,
            VsockCid = spec.VsockCid,
            NetMac = spec.Mac,
        };
        options.Disks.AddRange(spec.Disks);
        options.Shares.AddRange(spec.Shares);
        Stream stdout = Console.OpenStandardOutput();
        using FileStream? log = spec.ConsoleLog?.Create();
        options.ConsoleOutput = log is null
            ? bytes => stdout.Write(bytes)
            : bytes =>
            {
                stdout.Write(bytes);
                log.Write(bytes);
            };
        MachineExit exit;
        var clock = Stopwatch.StartNew();
        using VmNetwork network = VmNetwork.Create(spec.Net, spec.NetOptions);
        options.Net = network.Backend;
        try
        {
            using var machine = new Machine(options);
            // The loader says which kernel path it took (cached vmlinux, fresh decompression, bzImage) at debug level;
            // the console logger starts a thread, so it exists only when asked for.
            using ILoggerFactory? logs = Environment.GetEnvironmentVariable("KIT_DEBUG") is { Length: > 0 } ? NetCommand.Logs() : null;
            machine.LoadLinux(spec.Kernel.FullName, spec.Initrd?.FullName, spec.Cmdline, logs?.CreateLogger("hyperkit"));
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

    /// <summary>Stops with one clear line when this host cannot run a Linux guest (no /dev/kvm, or PVM).</summary>
    public static void RequireKvm()
    {
        switch (KvmSystem.Probe())
        {
            case KvmAvailability.Missing:
                throw new CliException("/dev/kvm is missing: this host offers no KVM (run kit vm inside a KVM-capable machine or VM)");
            case KvmAvailability.Pvm:
                throw new CliException("/dev/kvm here is PVM (kvm_pvm, no vmx/svm): a stock Linux guest would be emulated instruction by instruction and take hours to boot; refusing to start");
        }
    }
}
