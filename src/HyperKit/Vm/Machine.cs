using Kit.HyperKit.Boot;
using Kit.HyperKit.Devices;
using Kit.HyperKit.Devices.Pci;
using Kit.HyperKit.Devices.Serial;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Hypervisor;
using Kit.HyperKit.Kvm;
using Kit.HyperKit.Memory;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.HyperKit.Vm;

/// <summary>
/// A virtual x86-64 PC: guest RAM, in-kernel PIC/IOAPIC/LAPIC and PIT, COM1, an ACPI PM block, an i8042 stub for
/// reset, PCI bus 0 with virtio-pci devices, and one dedicated OS thread per vCPU (<see cref="VcpuRunner"/>).
/// <see cref="MachineBuilder"/> builds it through the hypervisor seam (<see cref="IHypervisor"/>; KVM here); this class
/// owns its lifecycle: load, run, stop, dispose. Devices see guest memory, buses and interrupt sinks only.
/// </summary>
public sealed class Machine : IDisposable, IVcpuHost
{
    private readonly MachineOptions _options;
    private readonly MachineParts _parts;
    private readonly ManualResetEventSlim _stopped = new();
    private MachineExit? _exit;
    private volatile bool _stopping;
    private ExitStatistics[]? _stats;

    /// <summary>Builds the machine on this host's KVM.</summary>
    public Machine(MachineOptions options)
        : this(options, KvmSystem.Open)
    {
    }

    /// <summary>Builds the machine on the hypervisor <paramref name="openHypervisor"/> opens (after the options are checked).</summary>
    internal Machine(MachineOptions options, Func<IHypervisor> openHypervisor)
    {
        _options = options;
        try
        {
            _parts = new MachineBuilder(options, RequestStop).Build(openHypervisor);
        }
        catch
        {
            _stopped.Dispose();
            throw;
        }
    }

    public GuestMemory Memory => _parts.Memory;

    public PortBus Ports => _parts.Ports;

    public MmioBus Mmio => _parts.Mmio;

    public PciBus Pci => _parts.Pci;

    public Serial8250 Serial => _parts.Serial;

    public List<VirtioPciDevice> VirtioDevices => _parts.VirtioDevices;

    bool IVcpuHost.Stopping => _stopping;

    /// <summary>
    /// Loads a kernel (+ initrd) for the 64-bit boot protocol (<see cref="LinuxLoader"/>) and points vCPU 0 at its
    /// entry in long mode, boot_params in RSI.
    /// </summary>
    public void LoadLinux(string kernelPath, string? initrdPath, string cmdline, ILogger? logger = null)
    {
        ulong entry = new LinuxLoader(Memory, logger ?? NullLogger.Instance).Load(kernelPath, initrdPath, cmdline, _parts.Vcpus.Length);
        X86Cpu.WriteLongModeTables(Memory);
        X86Cpu.EnterLongMode(_parts.Vcpus[0], entry, MemoryLayout.ZeroPageAddress);
    }

    /// <summary>Loads a freestanding flat binary and starts vCPU 0 on it in 32-bit protected mode.</summary>
    public void LoadProgram32(ReadOnlySpan<byte> code, ulong address, ulong stack)
    {
        if (!Memory.TryWrite(address, code))
        {
            throw new MachineConfigurationException("program does not fit in guest memory");
        }
        X86Cpu.EnterProtectedMode32(_parts.Vcpus[0], address, stack);
    }

    /// <summary>Runs all vCPUs until the guest stops the machine, a vCPU fails, or the timeout passes.</summary>
    public MachineExit Run(TimeSpan? timeout = null)
    {
        IVcpu[] vcpus = _parts.Vcpus;
        var threads = new Thread[vcpus.Length];
        if (ExitStatistics.Requested)
        {
            ExitStatistics.MarkVcpusStarting();
            _stats = new ExitStatistics[vcpus.Length];
            for (int i = 0; i < _stats.Length; i++)
            {
                _stats[i] = new ExitStatistics();
            }
        }
        for (int i = 0; i < vcpus.Length; i++)
        {
            var runner = new VcpuRunner(i, vcpus[i], _parts.Hypervisor.Name, Ports, Mmio, this, _parts.QueuedWrites, _stats?[i]);
            threads[i] = new Thread(runner.Run) { IsBackground = true, Name = $"vcpu{i}" };
            threads[i].Start();
        }
        var notify = new Thread(NotifyLoop) { IsBackground = true, Name = "virtio-notify" };
        notify.Start();
        Thread? input = null;
        if (_options.ConsoleInput is not null)
        {
            input = new Thread(() => PumpInput(_options.ConsoleInput)) { IsBackground = true, Name = "console-in" };
            input.Start();
        }
        if (!_stopped.Wait(timeout ?? Timeout.InfiniteTimeSpan))
        {
            RequestStop(new MachineExit(MachineExitKind.Timeout, $"the guest was stopped after {timeout!.Value.TotalSeconds:0} s"));
        }
        foreach (Thread t in threads)
        {
            t.Join();
        }
        notify.Join();
        if (_stats is not null)
        {
            ExitStatistics.Report(Console.Error, _stats, _parts.Hypervisor.Name);
            foreach (VirtioPciDevice device in VirtioDevices)
            {
                device.WriteStatistics(Console.Error);
            }
        }
        return _exit!;
    }

    /// <summary>Stops the machine with a reason (first reason wins); kicks every vCPU out of the guest.</summary>
    public void RequestStop(MachineExit exit)
    {
        if (Interlocked.CompareExchange(ref _exit, exit, null) != null)
        {
            return;
        }
        _stopping = true;
        // During construction (a device stopping the machine before it is built) there is nothing to kick yet.
        if (_parts is not null)
        {
            foreach (IVcpu vcpu in _parts.Vcpus)
            {
                vcpu?.Kick();
            }
            _parts.WakeNotifier?.Signal();
        }
        _stopped.Set();
    }

    /// <summary>The virtio-notify thread: runs each device's queue when the guest rings its doorbell.</summary>
    private void NotifyLoop()
    {
        List<(EventFd Fd, VirtioPciDevice Device, int Queue)> notifiers = _parts.Notifiers;
        var fds = new EventFd[notifiers.Count + 1];
        fds[0] = _parts.WakeNotifier!;
        for (int i = 0; i < notifiers.Count; i++)
        {
            fds[i + 1] = notifiers[i].Fd;
        }
        try
        {
            while (!_stopping)
            {
                ulong ready = EventFd.Wait(fds, 1000);
                for (int i = 1; i < fds.Length; i++)
                {
                    if ((ready & (1UL << i)) != 0 && fds[i].Drain() != 0)
                    {
                        notifiers[i - 1].Device.Notify(notifiers[i - 1].Queue);
                    }
                }
            }
        }
        catch (Exception e) when (e is HypervisorException or InvalidOperationException or IOException)
        {
            RequestStop(new MachineExit(MachineExitKind.Error, $"virtio notify thread: {e.Message}"));
        }
    }

    private void PumpInput(Stream input)
    {
        byte[] buffer = new byte[256];
        try
        {
            while (!_stopping)
            {
                int n = input.Read(buffer);
                if (n <= 0)
                {
                    return;
                }
                int done = 0;
                while (done < n && !_stopping)
                {
                    done += Serial.Receive(buffer.AsSpan(done, n - done));
                    if (done < n)
                    {
                        Thread.Sleep(2); // the guest drains its 16-byte FIFO on interrupt
                    }
                }
            }
        }
        catch (IOException)
        {
        }
    }

    public void Dispose()
    {
        _parts.Dispose();
        _stopped.Dispose();
    }
}

/// <summary>
/// Passes console bytes through and watches whole lines for Linux's panic banner: "Kernel panic - not syncing" marks a
/// panic; the closing "---[ end Kernel panic" line stops the machine (so panic=0 kernels do not hang the VMM).
/// </summary>
public sealed class PanicWatcher(Action<ReadOnlySpan<byte>> output, Action onPanicEnd)
{
    private readonly byte[] _line = new byte[256];
    private int _length;

    public bool PanicSeen { get; private set; }

    public void Write(ReadOnlySpan<byte> data)
    {
        output(data);
        foreach (byte b in data)
        {
            if (b == '\n')
            {
                ReadOnlySpan<byte> line = _line.AsSpan(0, _length);
                if (line.IndexOf("Kernel panic - not syncing"u8) >= 0)
                {
                    if (line.IndexOf("---[ end"u8) >= 0)
                    {
                        PanicSeen = true;
                        onPanicEnd();
                    }
                    PanicSeen = true;
                }
                _length = 0;
            }
            else if (_length < _line.Length)
            {
                _line[_length++] = b;
            }
        }
    }
}
