using Kit.HyperKit.Boot;
using Kit.HyperKit.Devices;
using Kit.HyperKit.Devices.Pci;
using Kit.HyperKit.Devices.Power;
using Kit.HyperKit.Devices.Serial;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Block;
using Kit.HyperKit.Devices.Virtio.Net;
using Kit.HyperKit.Devices.Virtio.NineP;
using Kit.HyperKit.Devices.Virtio.Rng;
using Kit.HyperKit.Devices.Virtio.Vsock;
using Kit.HyperKit.Hypervisor;
using Kit.HyperKit.Kvm;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Vm;

/// <summary>Everything a built machine owns, in the order it is torn down (<see cref="Dispose"/>).</summary>
internal sealed class MachineParts : IDisposable
{
    public IHypervisor Hypervisor { get; set; } = null!;

    public IHypervisorVm Vm { get; set; } = null!;

    public GuestMemory Memory { get; set; } = null!;

    public PortBus Ports { get; } = new();

    public MmioBus Mmio { get; } = new();

    public PciBus Pci { get; } = new();

    public Serial8250 Serial { get; set; } = null!;

    public PanicWatcher PanicWatcher { get; set; } = null!;

    public List<VirtioPciDevice> VirtioDevices { get; } = [];

    /// <summary>Queue doorbells: each eventfd is signalled by the hypervisor when the guest kicks that queue.</summary>
    public List<(EventFd Fd, VirtioPciDevice Device, int Queue)> Notifiers { get; } = [];

    /// <summary>Wakes the notify thread so it sees a stop.</summary>
    public EventFd? WakeNotifier { get; set; }

    public IVcpu[] Vcpus { get; set; } = [];

    public QueuedWriteReplay? QueuedWrites { get; set; }

    /// <summary>Device backends with host resources (files, sockets, threads).</summary>
    public List<IDisposable> Owned { get; } = [];

    public void Dispose()
    {
        foreach (IVcpu v in Vcpus)
        {
            v?.Dispose();
        }
        Vm?.Dispose();
        // Device backends first: host-side I/O threads (vsock) must be stopped before guest memory is unmapped.
        foreach (IDisposable d in Owned)
        {
            d.Dispose();
        }
        Memory?.Dispose();
        Hypervisor?.Dispose();
    }
}

/// <summary>
/// Builds a machine from <see cref="MachineOptions"/> (Firecracker's builder.rs): checks the options, creates the VM
/// through the hypervisor seam with guest RAM and the in-kernel interrupt controllers and PIT, wires the legacy
/// devices, PCI bus 0 and the virtio-pci devices with their doorbells, and creates the vCPUs with their CPUID, MSRs,
/// FPU and LAPIC state. What it builds stops the machine through <paramref name="stop"/>.
/// </summary>
internal sealed class MachineBuilder(MachineOptions options, Action<MachineExit> stop)
{
    /// <summary>At most 63 queue doorbells: the notify thread waits on 64 eventfds, one of them its wake-up.</summary>
    private const int MaxNotifiers = 63;

    private readonly MachineParts _parts = new();
    private IMsiSink _msi = null!;

    /// <summary>Throws <see cref="MachineConfigurationException"/> for options no machine can be built from.</summary>
    public static void Validate(MachineOptions options)
    {
        if (options.MemoryBytes < (16UL << 20) || options.MemoryBytes > MemoryLayout.MaxMemory || options.MemoryBytes % 4096 != 0)
        {
            throw new MachineConfigurationException($"memory must be between 16 MiB and 3 GiB in whole pages (got {options.MemoryBytes} bytes)");
        }
        if (options.Cpus < 1 || options.Cpus > 64)
        {
            throw new MachineConfigurationException($"vCPU count must be 1 to 64 (got {options.Cpus})");
        }
    }

    /// <summary>Validates, opens the hypervisor and builds; on failure everything built so far is disposed.</summary>
    public MachineParts Build(Func<IHypervisor> openHypervisor)
    {
        Validate(options);
        _parts.Hypervisor = openHypervisor();
        try
        {
            CreateVm();
            AddLegacyDevices();
            AddVirtioDevices();
            CreateVcpus();
            EnableCoalescedConfigAddress();
            return _parts;
        }
        catch
        {
            _parts.Dispose();
            throw;
        }
    }

    private void CreateVm()
    {
        IHypervisorVm vm = _parts.Vm = _parts.Hypervisor.CreateVm();
        vm.SetTssAddress(MemoryLayout.TssAddress);
        vm.SetIdentityMapAddress(MemoryLayout.IdentityMapAddress);
        vm.CreateIrqchip();
        vm.CreatePit();
        _parts.Memory = new GuestMemory(options.MemoryBytes);
        vm.SetMemoryRegion(0, 0, options.MemoryBytes, _parts.Memory.HostAddress);
    }

    private void AddLegacyDevices()
    {
        IHypervisorVm vm = _parts.Vm;
        PortBus ports = _parts.Ports;
        _parts.PanicWatcher = new PanicWatcher(options.ConsoleOutput, () => stop(new MachineExit(MachineExitKind.Panic, "the guest kernel panicked")));
        _parts.Serial = new Serial8250(PortLayout.Com1, _parts.PanicWatcher.Write, new HypervisorIrqLine(vm, 4));
        ports.Register(PortLayout.Com1, 8, _parts.Serial);
        var pm = new AcpiPmDevice(PortLayout.Pm1aEvent, PortLayout.Pm1aControl, OnPower);
        ports.Register(PortLayout.Pm1aEvent, 4, pm);
        ports.Register(PortLayout.Pm1aControl, 2, pm);
        var i8042 = new I8042Device(OnPower);
        ports.Register(PortLayout.I8042Data, 1, i8042);
        ports.Register(PortLayout.I8042Command, 1, i8042);
        ports.Register(PortLayout.PciConfigAddress, 8, _parts.Pci);
        _parts.Pci.ResetRequested += () => OnPower(PowerEvent.Reset);
        if (options.DebugExitPort)
        {
            ports.Register(PortLayout.DebugExit, 1, new DebugExitDevice(code =>
                stop(new MachineExit(MachineExitKind.DebugExit, $"debug exit {code}", code))));
        }
        // Port 0x80 is the POST/io_delay port Linux writes to for short delays; an ioeventfd completes those writes
        // in the kernel so they cost no exit to this process.
        vm.RegisterIoEvent(vm.CreateEventFd(), PortLayout.PostCode, 1, pio: true);
        _parts.Mmio.AttachPci(_parts.Pci);
    }

    private void OnPower(PowerEvent e)
    {
        if (e == PowerEvent.PowerOff)
        {
            stop(new MachineExit(MachineExitKind.PowerOff, "the guest powered off"));
        }
        else if (_parts.PanicWatcher.PanicSeen)
        {
            stop(new MachineExit(MachineExitKind.Panic, "the guest kernel panicked and reset the machine"));
        }
        else
        {
            stop(new MachineExit(MachineExitKind.Reset, "the guest reset the machine"));
        }
    }

    private void AddVirtioDevices()
    {
        _parts.WakeNotifier = _parts.Vm.CreateEventFd();
        _msi = new HypervisorMsiSink(_parts.Vm);
        if (options.Rng)
        {
            AddVirtio(new VirtioRng());
        }
        foreach (DiskOptions disk in options.Disks)
        {
            RawFileBackend backend;
            try
            {
                backend = new RawFileBackend(disk.Path, disk.ReadOnly);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new MachineConfigurationException($"cannot open disk {disk.Path}: {e.Message}");
            }
            _parts.Owned.Add(backend);
            AddVirtio(new VirtioBlock(backend, Path.GetFileName(disk.Path)));
        }
        foreach (ShareOptions share in options.Shares)
        {
            VirtioNineP device;
            try
            {
                device = NinePShares.Create(share.Tag, share.Target, share.ReadOnly, share.Trusted);
            }
            catch (ArgumentException e)
            {
                throw new MachineConfigurationException(e.Message);
            }
            _parts.Owned.Add(device);
            AddVirtio(device);
        }
        if (options.Net is not null)
        {
            var net = new VirtioNet(options.Net, options.NetMac ?? NetMacs.Random());
            _parts.Owned.Add(net);
            AddVirtio(net);
        }
        if (options.VsockPath is not null)
        {
            AddVsock(options.VsockPath, options.VsockCid);
        }
    }

    private void AddVirtio(VirtioDevice device)
    {
        uint bar = _parts.Pci.AllocateBar(VirtioPciDevice.BarLength);
        var function = new VirtioPciDevice(device, _parts.Memory, _msi, bar);
        _parts.Pci.Add(function);
        _parts.VirtioDevices.Add(function);
        // Queue doorbells go to ioeventfds: the hypervisor completes the guest's 16-bit notify write and the device
        // runs on the notify thread, so a kick costs no round trip through this process's vCPU thread.
        // A guest that moves the BAR still works: the new address reaches BarWrite through an ordinary MMIO exit.
        for (int q = 0; q < device.QueueCount && _parts.Notifiers.Count < MaxNotifiers; q++)
        {
            EventFd fd = _parts.Vm.CreateEventFd();
            _parts.Vm.RegisterIoEvent(fd, bar + VirtioPciDevice.NotifyOffset + VirtioPciDevice.NotifyMultiplier * (uint)q, 2, pio: false);
            _parts.Notifiers.Add((fd, function, q));
        }
    }

    private void AddVsock(string path, ulong cid)
    {
        if (cid <= 2 || cid >= 0xFFFF_FFFF)
        {
            throw new MachineConfigurationException($"vsock guest CID must be 3 to 4294967294 (got {cid})");
        }
        var host = new UnixVsockHost(path);
        var vsock = new VirtioVsock(cid, host);
        AddVirtio(vsock);
        try
        {
            host.Start(vsock);
        }
        catch (IOException e)
        {
            throw new MachineConfigurationException($"vsock: {e.Message}");
        }
        _parts.Owned.Add(host);
    }

    private void CreateVcpus()
    {
        CpuidEntry[] supported = _parts.Hypervisor.GetSupportedCpuid();
        bool tscDeadline = _parts.Hypervisor.HasTscDeadlineTimer;
        _parts.Vcpus = new IVcpu[options.Cpus];
        for (int i = 0; i < options.Cpus; i++)
        {
            IVcpu vcpu = _parts.Vm.CreateVcpu(i);
            _parts.Vcpus[i] = vcpu;
            vcpu.SetCpuid(X86Cpu.CpuidFor(supported, i, options.Cpus, tscDeadline));
            X86Cpu.SetBootMsrs(vcpu);
            X86Cpu.SetFpu(vcpu);
            X86Cpu.SetLint(vcpu);
        }
    }

    /// <summary>
    /// Configuration mechanism #1 costs two exits per PCI config access: the address write to 0xCF8, then the data
    /// access at 0xCFC. The address write has no effect until the data access, so the hypervisor may queue it
    /// (coalesced PIO, as QEMU does for its i440FX/Q35 0xCF8) and the data access's exit replays it first. This halves
    /// the exits of the kernel's early bus scans (measured: ~8,400 config reads before /init). The zone also covers
    /// the reset control register 0xCF9; its writes are replayed at the next exit. KIT_VM_COALESCED_PIO=0 turns it
    /// off, for A/B measurements.
    /// </summary>
    private void EnableCoalescedConfigAddress()
    {
        if (Environment.GetEnvironmentVariable("KIT_VM_COALESCED_PIO") != "0"
            && _parts.Vm.EnableCoalescedPio(_parts.Vcpus[0], PortLayout.PciConfigAddress, 4) is { } queue)
        {
            _parts.QueuedWrites = new QueuedWriteReplay(queue, _parts.Ports, _parts.Mmio);
        }
    }

    private sealed class HypervisorIrqLine(IHypervisorVm vm, uint gsi) : IInterruptLine
    {
        public void SetLevel(bool high) => vm.SetIrqLine(gsi, high);
    }

    private sealed class HypervisorMsiSink(IHypervisorVm vm) : IMsiSink
    {
        public void Signal(ulong address, uint data) => vm.SignalMsi(address, data);
    }
}
