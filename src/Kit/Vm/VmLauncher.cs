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

    /// <summary>--accel: Kit's VMM on KVM, QEMU's software CPU, or whichever this host can run.</summary>
    public Accelerator Accel { get; init; } = Accelerator.Auto;

    /// <summary>Set by a supervisor that needs to power the VM down or end it from outside.</summary>
    public MachineControl? Control { get; init; }
}

/// <summary>
/// Boots a <see cref="VmSpec"/> with the console on stdio and returns the exit code that says how it ended. The
/// accelerator is the one fork in the road: the console sink, the network backend and the exit report are shared, and
/// <see cref="RunKvm"/> (Kit's VMM) or <see cref="QemuRunner"/> (QEMU's software CPU with Kit's devices over
/// vhost-user) runs the guest.
/// </summary>
internal static class VmLauncher
{
    /// <param name="network">A network the caller made (and disposes), to reach its VPNKit; else one from spec.Net.</param>
    public static int Run(VmSpec spec, VmNetwork? network = null)
    {
        Accelerator accel = Accelerators.Resolve(spec.Accel);
        Stream stdout = Console.OpenStandardOutput();
        using FileStream? log = spec.ConsoleLog?.Create();
        Action<ReadOnlySpan<byte>> console = log is null
            ? bytes => stdout.Write(bytes)
            : bytes =>
            {
                stdout.Write(bytes);
                log.Write(bytes);
            };
        // The loader says which kernel path it took and vhost-user logs its sessions at debug level; the console logger
        // starts a thread, so it exists only when asked for.
        using ILoggerFactory? logs = KitLogging.Level <= LogLevel.Debug ? KitLogging.CreateFactory() : null;
        var clock = Stopwatch.StartNew();
        MachineExit exit;
        using (VmNetwork? owned = network is null ? VmNetwork.Create(spec.Net, spec.NetOptions) : null)
        {
            VmNetwork net = network ?? owned!;
            exit = accel == Accelerator.Kvm ? RunKvm(spec, console, net, logs) : QemuRunner.Run(spec, console, net.Backend, logs);
        }
        stdout.Flush();
        log?.Flush();
        if (exit.Kind != MachineExitKind.PowerOff)
        {
            Console.Error.WriteLine($"kit: vm: {exit.Message} (exit code {exit.ExitCode}, after {clock.Elapsed.TotalSeconds:0.0} s)");
        }
        return exit.ExitCode;
    }

    private static MachineExit RunKvm(VmSpec spec, Action<ReadOnlySpan<byte>> console, VmNetwork network, ILoggerFactory? logs)
    {
        var options = new MachineOptions
        {
            MemoryBytes = spec.MemoryBytes,
            Cpus = spec.Cpus,
            Rng = spec.Rng,
            ConsoleInput = Console.IsInputRedirected ? null : Console.OpenStandardInput(),
            ConsoleOutput = console,
            VsockPath = spec.VsockPath,
            VsockCid = spec.VsockCid,
            NetMac = spec.Mac,
            Net = network.Backend,
        };
        options.Disks.AddRange(spec.Disks);
        options.Shares.AddRange(spec.Shares);
        try
        {
            using var machine = new Machine(options);
            machine.LoadLinux(spec.Kernel.FullName, spec.Initrd?.FullName, spec.Cmdline, logs?.CreateLogger("hyperkit"));
            spec.Control?.Bind(null, () => machine.RequestStop(new MachineExit(MachineExitKind.Error, "stopped from the host")));
            return machine.Run();
        }
        catch (MachineConfigurationException e)
        {
            throw new CliException(e.Message);
        }
        catch (KvmException e)
        {
            throw new CliException(e.Message);
        }
    }
}
