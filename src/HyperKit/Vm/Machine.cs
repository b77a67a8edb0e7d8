using System.Text;
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
using Kit.HyperKit.Kvm;
using Kit.HyperKit.Memory;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.HyperKit.Vm;

/// <summary>A disk to attach as virtio-blk.</summary>
public sealed record DiskOptions(string Path, bool ReadOnly = false);

/// <summary>
/// A virtio-9p share: the guest mounts <paramref name="Tag"/>. <paramref name="Target"/> is a host directory served by
/// the built-in server, or tcp://HOST:PORT / unix:PATH of a 9P server to relay to. <paramref name="Trusted"/> applies the
/// guest's ownership and set-id bits to a host directory (docs/security.md, "Host shares").
/// </summary>
public sealed record ShareOptions(string Tag, string Target, bool ReadOnly = false, bool Trusted = false)
{
    public bool IsServer => Target.StartsWith("tcp://", StringComparison.Ordinal) || Target.StartsWith("unix:", StringComparison.Ordinal);
}

/// <summary>What to build: memory, vCPUs, console, devices.</summary>
public sealed class MachineOptions
{
    /// <summary>Guest RAM; at most 3 GiB (everything lives below the 32-bit MMIO gap).</summary>
    public ulong MemoryBytes { get; set; } = 512UL << 20;

    public int Cpus { get; set; } = 1;

    /// <summary>Receives every byte the guest writes to COM1.</summary>
    public Action<ReadOnlySpan<byte>> ConsoleOutput { get; set; } = _ => { };

    /// <summary>Bytes typed into COM1 (for example standard input); null for none.</summary>
    public Stream? ConsoleInput { get; set; }

    public List<DiskOptions> Disks { get; } = [];

    public bool Rng { get; set; } = true;

    /// <summary>virtio-net backend (VPNKit, VMN3T, TAP), or null for no network device. The machine disposes it.</summary>
    public INetBackend? Net { get; set; }

    /// <summary>The guest's MAC when the backend does not assign one; null picks a random locally administered one.</summary>
    public byte[]? NetMac { get; set; }

    /// <summary>virtio-9p shares: a host directory or a relay to a 9P server each.</summary>
    public List<ShareOptions> Shares { get; } = [];

    /// <summary>virtio-vsock host socket (Firecracker's CONNECT/OK protocol; guest connections go to PATH_PORT); null for none.</summary>
    public string? VsockPath { get; set; }

    /// <summary>The guest's vsock CID (3 unless set; 0-2 are reserved).</summary>
    public ulong VsockCid { get; set; } = 3;

    /// <summary>Adds the test exit port at 0x501 (freestanding programs end the run through it).</summary>
    public bool DebugExitPort { get; set; }
}

/// <summary>Raised for configuration problems the user can fix (bad kernel image, too little memory, ...).</summary>
public sealed class MachineConfigurationException(string message) : Exception(message);

/// <summary>
/// A virtual x86-64 PC on KVM: guest RAM, in-kernel PIC/IOAPIC/LAPIC and PIT, COM1, an ACPI PM block, an i8042 stub
/// for reset, PCI bus 0 with virtio-pci devices, and one dedicated OS thread per vCPU running KVM_RUN. Devices see
/// guest memory, buses and interrupt sinks only.
/// </summary>
public sealed class Machine : IDisposable
{
    public const ulong MaxMemory = 0xC000_0000;
    public const ulong KernelAddress = 0x10_0000, ZeroPageAddress = 0x7000, CmdlineAddress = 0x2_0000,
        AcpiAddress = 0xE_0000, AcpiSize = 0x1_0000;
    public const ushort Com1 = 0x3F8, DebugExitPortNumber = 0x501;

    private readonly MachineOptions _options;
    private readonly KvmSystem _kvm;
    private readonly KvmVm _vm;
    private readonly KvmVcpu[] _vcpus;
    private readonly int[] _tids;
    private readonly List<IDisposable> _owned = [];
    private readonly ManualResetEventSlim _stopped = new();
    private readonly PanicWatcher _panicWatcher;
    private readonly List<(EventFd Fd, VirtioPciDevice Device, int Queue)> _notifiers = [];
    private readonly EventFd? _wakeNotifier;
    private MachineExit? _exit;
    private volatile bool _stopping;
    private ExitStatistics[]? _stats;
    private readonly KvmCoalescedRing? _coalesced;
    private readonly Lock _coalescedLock = new();

    public Machine(MachineOptions options)
    {
        _options = options;
        if (options.MemoryBytes < (16UL << 20) || options.MemoryBytes > MaxMemory || options.MemoryBytes % 4096 != 0)
        {
            throw new MachineConfigurationException($"memory must be between 16 MiB and 3 GiB in whole pages (got {options.MemoryBytes} bytes)");
        }
        if (options.Cpus < 1 || options.Cpus > 64)
        {
            throw new MachineConfigurationException($"vCPU count must be 1 to 64 (got {options.Cpus})");
        }
        _kvm = KvmSystem.Open();
        try
        {
            _vm = _kvm.CreateVm();
            _vm.SetTssAddress();
            _vm.SetIdentityMapAddress(KvmVm.TssAddress - 0x1000);
            _vm.CreateIrqchip();
            _vm.CreatePit2();
            Memory = new GuestMemory(options.MemoryBytes);
            _vm.SetMemoryRegion(0, 0, options.MemoryBytes, Memory.HostAddress);

            _panicWatcher = new PanicWatcher(options.ConsoleOutput, () => RequestStop(new MachineExit(MachineExitKind.Panic, "the guest kernel panicked")));
            Serial = new Serial8250(Com1, _panicWatcher.Write, new KvmIrqLine(_vm, 4));
            Ports.Register(Com1, 8, Serial);
            var pm = new AcpiPmDevice(AcpiTables.Pm1aEventPort, AcpiTables.Pm1aControlPort, OnPower);
            Ports.Register(AcpiTables.Pm1aEventPort, 4, pm);
            Ports.Register(AcpiTables.Pm1aControlPort, 2, pm);
            var i8042 = new I8042Device(OnPower);
            Ports.Register(0x60, 1, i8042);
            Ports.Register(0x64, 1, i8042);
            Ports.Register(PciBus.ConfigAddressPort, 8, Pci);
            Pci.ResetRequested += () => OnPower(PowerEvent.Reset);
            if (options.DebugExitPort)
            {
                Ports.Register(DebugExitPortNumber, 1, new DebugExitDevice(code =>
                    RequestStop(new MachineExit(MachineExitKind.DebugExit, $"debug exit {code}", code))));
            }
            // Port 0x80 is the POST/io_delay port Linux writes to for short delays; an ioeventfd completes those writes
            // in the kernel so they cost no exit to this process.
            _vm.AssignIoeventfd(_vm.CreateEventFd(), 0x80, 1, pio: true);
            Mmio.AttachPci(Pci);

            _wakeNotifier = _vm.CreateEventFd();
            var msi = new KvmMsiSink(_vm);
            if (options.Rng)
            {
                AddVirtio(new VirtioRng(), msi);
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
                _owned.Add(backend);
                AddVirtio(new VirtioBlock(backend, Path.GetFileName(disk.Path)), msi);
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
                _owned.Add(device);
                AddVirtio(device, msi);
            }

            if (options.Net is not null)
            {
                var net = new VirtioNet(options.Net, options.NetMac ?? NetMacs.Random());
                _owned.Add(net);
                AddVirtio(net, msi);
            }
            if (options.VsockPath is not null)
            {
                AddVsock(options.VsockPath, options.VsockCid, msi);
            }

            KvmCpuidEntry2[] supported = _kvm.GetSupportedCpuid();
            bool tscDeadline = _kvm.CheckExtension(KvmCap.TscDeadlineTimer) > 0;
            _vcpus = new KvmVcpu[options.Cpus];
            _tids = new int[options.Cpus];
            for (int i = 0; i < options.Cpus; i++)
            {
                KvmVcpu vcpu = _vm.CreateVcpu(i);
                _vcpus[i] = vcpu;
                vcpu.SetCpuid(X86Cpu.CpuidFor(supported, i, options.Cpus, tscDeadline));
                X86Cpu.SetBootMsrs(vcpu);
                X86Cpu.SetFpu(vcpu);
                X86Cpu.SetLint(vcpu);
            }
            // Configuration mechanism #1 costs two exits per PCI config access: the address write to 0xCF8, then the
            // data access at 0xCFC. The address write has no effect until the data access, so KVM may queue it
            // (coalesced PIO, as QEMU does for its i440FX/Q35 0xCF8) and the data access's exit replays it first. This
            // halves the exits of the kernel's early bus scans (measured: ~8,400 config reads before /init). The
            // zone also covers the reset control register 0xCF9; its writes are replayed at the next exit.
            // KIT_VM_COALESCED_PIO=0 turns it off, for A/B measurements.
            if (Environment.GetEnvironmentVariable("KIT_VM_COALESCED_PIO") != "0")
            {
                _coalesced = _vm.EnableCoalescedPio(_vcpus[0], PciBus.ConfigAddressPort, 4);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public GuestMemory Memory { get; } = null!;

    public PortBus Ports { get; } = new();

    public MmioBus Mmio { get; } = new();

    public PciBus Pci { get; } = new();

    public Serial8250 Serial { get; } = null!;

    public List<VirtioPciDevice> VirtioDevices { get; } = [];

    private void AddVirtio(VirtioDevice device, IMsiSink msi)
    {
        uint bar = Pci.AllocateBar(VirtioPciDevice.BarLength);
        var function = new VirtioPciDevice(device, Memory, msi, bar);
        Pci.Add(function);
        VirtioDevices.Add(function);
        // Queue doorbells go to ioeventfds: KVM completes the guest's 16-bit notify write in the kernel and the
        // device runs on the notify thread, so a kick costs no round trip through this process's vCPU thread.
        // A guest that moves the BAR still works: the new address reaches BarWrite through an ordinary MMIO exit.
        for (int q = 0; q < device.QueueCount && _notifiers.Count < 63; q++)
        {
            EventFd fd = _vm.CreateEventFd();
            _vm.AssignIoeventfd(fd, bar + VirtioPciDevice.NotifyOffset + VirtioPciDevice.NotifyMultiplier * (uint)q, 2, pio: false);
            _notifiers.Add((fd, function, q));
        }
    }

    private void AddVsock(string path, ulong cid, IMsiSink msi)
    {
        if (cid <= 2 || cid >= 0xFFFF_FFFF)
        {
            throw new MachineConfigurationException($"vsock guest CID must be 3 to 4294967294 (got {cid})");
        }
        var host = new UnixVsockHost(path);
        var vsock = new VirtioVsock(cid, host);
        AddVirtio(vsock, msi);
        try
        {
            host.Start(vsock);
        }
        catch (IOException e)
        {
            throw new MachineConfigurationException($"vsock: {e.Message}");
        }
        _owned.Add(host);
    }

    private void NotifyLoop()
    {
        var fds = new EventFd[_notifiers.Count + 1];
        fds[0] = _wakeNotifier!;
        for (int i = 0; i < _notifiers.Count; i++)
        {
            fds[i + 1] = _notifiers[i].Fd;
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
                        _notifiers[i - 1].Device.Notify(_notifiers[i - 1].Queue);
                    }
                }
            }
        }
        catch (Exception e) when (e is KvmException or InvalidOperationException or IOException)
        {
            RequestStop(new MachineExit(MachineExitKind.Error, $"virtio notify thread: {e.Message}"));
        }
    }

    private void OnPower(PowerEvent e)
    {
        if (e == PowerEvent.PowerOff)
        {
            RequestStop(new MachineExit(MachineExitKind.PowerOff, "the guest powered off"));
        }
        else if (_panicWatcher.PanicSeen)
        {
            RequestStop(new MachineExit(MachineExitKind.Panic, "the guest kernel panicked and reset the machine"));
        }
        else
        {
            RequestStop(new MachineExit(MachineExitKind.Reset, "the guest reset the machine"));
        }
    }

    /// <summary>
    /// Loads a kernel (+ initrd) for the 64-bit boot protocol and points vCPU 0 at its entry. A bare vmlinux ELF is
    /// loaded as it is (as Firecracker does). A bzImage whose payload is XZ is decompressed on the host once (cached,
    /// <see cref="KernelCache"/>) and its vmlinux booted, so the guest skips its own decompressor (seconds in a
    /// nested guest); anything else, or KIT_VM_KERNEL_CACHE=0, boots the bzImage and the guest decompresses.
    /// </summary>
    public void LoadLinux(string kernelPath, string? initrdPath, string cmdline, ILogger? logger = null)
    {
        logger ??= NullLogger.Instance;
        KernelElf? elf = null;
        byte[]? elfBytes = null;
        Microsoft.Win32.SafeHandles.SafeFileHandle? elfFile = null;
        byte[] setupHeader;
        ulong needed;
        ulong entry = KernelAddress + 0x200; // a bzImage's startup_64 is 0x200 bytes into the protected-mode kernel
        BzImage? image = null;
        try
        {
            byte[] file;
            if (KernelElf.IsElfFile(kernelPath))
            {
                // A bare vmlinux (as Firecracker boots): no setup header to copy, so boot_params gets a synthetic one.
                elfFile = File.OpenHandle(kernelPath);
                if (!KernelElf.TryRead(elfFile, out elf, out string elfReason))
                {
                    throw new MachineConfigurationException($"{kernelPath}: {elfReason}");
                }
                setupHeader = SetupHeaderFields.Synthetic();
            }
            else
            {
                file = ReadFile(kernelPath, "kernel");
                if (!BzImage.TryParse(file, out image, out string reason))
                {
                    throw new MachineConfigurationException($"{kernelPath}: {reason}");
                }
                setupHeader = image!.SetupHeader.ToArray();
                if (Environment.GetEnvironmentVariable("KIT_VM_KERNEL_CACHE") != "0")
                {
                    (elf, elfFile, elfBytes) = KernelLoader.Decompressed(image, KernelCache.DefaultDirectory(), logger);
                }
                else
                {
                    BootLog.BzImagePath(logger, "KIT_VM_KERNEL_CACHE=0");
                }
            }
            if (elf is not null)
            {
                if (!elf.TryCheckLayout(KernelAddress, Memory.Size, out string layoutReason))
                {
                    if (image is null)
                    {
                        throw new MachineConfigurationException($"{kernelPath}: {layoutReason}");
                    }
                    // The decompressed kernel can not go where it wants here; the bzImage's own decompressor may cope.
                    BootLog.BzImagePath(logger, $"decompressed kernel not loadable: {layoutReason}");
                    elf = null;
                }
            }
            if (elf is not null)
            {
                (needed, entry) = LoadVmlinux(elf, elfFile, elfBytes, setupHeader, initrdPath, cmdline, logger);
            }
            else
            {
                needed = LoadBzImage(image!);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new MachineConfigurationException($"cannot read kernel {kernelPath}: {e.Message}");
        }
        finally
        {
            elfFile?.Dispose();
        }

        WriteCmdline(cmdline, setupHeader);
        (ulong initrdAddress, ulong initrdSize) = initrdPath is null ? (0UL, 0UL) : LoadInitrd(initrdPath, setupHeader, needed);

        ulong rsdp = AcpiTables.Build(Memory.GetSpan(AcpiAddress, (int)AcpiSize), AcpiAddress, _vcpus.Length);
        E820Entry[] e820 =
        [
            new(0, 0x9_FC00, E820Entry.Ram),
            new(0x9_FC00, 0x10_0000 - 0x9_FC00, E820Entry.Reserved),
            new(0x10_0000, Memory.Size - 0x10_0000, E820Entry.Ram),
        ];
        BootParams.Build(Memory.GetSpan(ZeroPageAddress, BootParams.Size), setupHeader, CmdlineAddress, initrdAddress, initrdSize, e820, rsdp);
        X86Cpu.WriteLongModeTables(Memory);
        // 64-bit entry: startup_64, the vmlinux's e_entry (moved by the KASLR physical delta) or the bzImage's (its
        // decompressor's), 0x200 bytes into the protected-mode kernel.
        X86Cpu.EnterLongMode(_vcpus[0], entry, ZeroPageAddress);
    }

    /// <summary>
    /// Places a vmlinux: randomized as the bzImage's decompressor would do it (KASLR, docs/hyperkit-boot.md) when its
    /// file carries a relocation table, clear of the initrd that goes at the top of RAM; else where it was linked.
    /// Returns the end of the kernel and its entry (startup_64).
    /// </summary>
    private (ulong Needed, ulong Entry) LoadVmlinux(KernelElf elf, Microsoft.Win32.SafeHandles.SafeFileHandle? file, byte[]? bytes,
        byte[] setupHeader, string? initrdPath, string cmdline, ILogger logger)
    {
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        KernelPlacement? placement = KernelLoader.PlanKaslr(elf, file, bytes, cmdline,
            SetupHeaderFields.KernelAlignment(setupHeader), KernelLimitBelowInitrd(initrdPath, setupHeader), out byte[] relocs, out string kaslrReason);
        TimeSpan planning = System.Diagnostics.Stopwatch.GetElapsedTime(started);
        ulong physicalDelta = placement?.PhysicalDelta ?? 0;
        if (bytes is not null)
        {
            KernelLoader.Load(elf, bytes, Memory, physicalDelta);
        }
        else
        {
            KernelLoader.Load(elf, file!, Memory, physicalDelta);
        }
        if (placement is { } p)
        {
            started = System.Diagnostics.Stopwatch.GetTimestamp();
            ulong imageBase = KernelRelocator.LoadPhysicalAddress;
            KernelRelocator.Apply(relocs, elf.Segments, Memory.GetSpan(imageBase + physicalDelta, checked((int)(elf.End - imageBase))),
                imageBase, p.VirtualDelta);
            SetupHeaderFields.SetKaslrFlag(setupHeader);
            BootLog.Kaslr(logger, p.PhysicalBase, KernelRelocator.StartKernelMap + p.VirtualBase, planning.TotalMilliseconds,
                System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }
        else
        {
            BootLog.NoKaslr(logger, kaslrReason);
        }
        return (elf.End + physicalDelta, elf.Entry + physicalDelta);
    }

    /// <summary>Places a bzImage's protected-mode kernel at 1 MiB for the guest to decompress; returns how far up
    /// the decompressor will reach.</summary>
    private ulong LoadBzImage(BzImage image)
    {
        ulong kernelEnd = KernelAddress + Math.Max((ulong)image.ProtectedModeKernel.Length, image.InitSize);
        // The decompressor relocates to 16 MiB (LOAD_PHYSICAL_ADDR) and needs init_size bytes there.
        ulong needed = Math.Max(kernelEnd, (16UL << 20) + image.InitSize);
        if (needed > Memory.Size)
        {
            throw new MachineConfigurationException($"the kernel needs at least {(needed >> 20) + 1} MiB of guest memory");
        }
        image.ProtectedModeKernel.CopyTo(Memory.GetSpan(KernelAddress, image.ProtectedModeKernel.Length));
        return needed;
    }

    private void WriteCmdline(string cmdline, ReadOnlySpan<byte> setupHeader)
    {
        byte[] cmd = Encoding.ASCII.GetBytes(cmdline);
        uint cmdlineSize = SetupHeaderFields.CmdlineSize(setupHeader);
        if (cmd.Length >= cmdlineSize || cmd.Length >= 0x1_0000)
        {
            throw new MachineConfigurationException($"kernel command line is {cmd.Length} bytes; this kernel accepts {cmdlineSize - 1}");
        }
        Span<byte> cmdSpan = Memory.GetSpan(CmdlineAddress, cmd.Length + 1);
        cmd.CopyTo(cmdSpan);
        cmdSpan[^1] = 0;
    }

    /// <summary>
    /// Reads the initrd straight into guest RAM (a managed copy would stay resident and add its size to the VMM's peak
    /// RSS), page-aligned at the top of RAM below initrd_addr_max and clear of the kernel's last byte
    /// (<paramref name="kernelEnd"/>).
    /// </summary>
    private (ulong Address, ulong Size) LoadInitrd(string initrdPath, ReadOnlySpan<byte> setupHeader, ulong kernelEnd)
    {
        try
        {
            using Microsoft.Win32.SafeHandles.SafeFileHandle handle = File.OpenHandle(initrdPath);
            long length = RandomAccess.GetLength(handle);
            ulong size = (ulong)length;
            if (length > int.MaxValue || InitrdAddress(size, setupHeader) is not { } address || address < kernelEnd)
            {
                throw new MachineConfigurationException($"kernel and initrd ({size >> 20} MiB) do not fit in {Memory.Size >> 20} MiB of guest memory");
            }
            BootFile.ReadExactly(handle, Memory.GetSpan(address, (int)length), 0);
            return (address, size);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new MachineConfigurationException($"cannot read initrd {initrdPath}: {e.Message}");
        }
    }

    /// <summary>Where an initrd of <paramref name="size"/> bytes goes: page-aligned at the top of RAM below
    /// initrd_addr_max (Documentation/arch/x86/boot.rst); null when it is larger than that.</summary>
    private ulong? InitrdAddress(ulong size, ReadOnlySpan<byte> setupHeader)
    {
        ulong top = Math.Min(Memory.Size, (ulong)SetupHeaderFields.InitrdAddrMax(setupHeader) + 1);
        return size <= top ? (top - size) & ~0xFFFUL : null;
    }

    /// <summary>Where a randomized kernel must end: below the page the initrd will start at (it goes at the top of
    /// RAM under initrd_addr_max), or the end of RAM without one. 0 (no room: no KASLR) when the initrd can not be
    /// measured; loading it reports why.</summary>
    private ulong KernelLimitBelowInitrd(string? initrdPath, ReadOnlySpan<byte> setupHeader)
    {
        if (initrdPath is null)
        {
            return Memory.Size;
        }
        try
        {
            return InitrdAddress((ulong)new FileInfo(initrdPath).Length, setupHeader) ?? 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
    }

    /// <summary>Loads a freestanding flat binary and starts vCPU 0 on it in 32-bit protected mode.</summary>
    public void LoadProgram32(ReadOnlySpan<byte> code, ulong address, ulong stack)
    {
        if (!Memory.TryWrite(address, code))
        {
            throw new MachineConfigurationException("program does not fit in guest memory");
        }
        X86Cpu.EnterProtectedMode32(_vcpus[0], address, stack);
    }

    private static byte[] ReadFile(string path, string what)
    {
        try
        {
            return File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new MachineConfigurationException($"cannot read {what} {path}: {e.Message}");
        }
    }

    /// <summary>Runs all vCPUs until the guest stops the machine, a vCPU fails, or the timeout passes.</summary>
    public MachineExit Run(TimeSpan? timeout = null)
    {
        var threads = new Thread[_vcpus.Length];
        if (ExitStatistics.Requested)
        {
            ExitStatistics.MarkVcpusStarting();
            _stats = new ExitStatistics[_vcpus.Length];
            for (int i = 0; i < _stats.Length; i++)
            {
                _stats[i] = new ExitStatistics();
            }
        }
        _ = VcpuSignal.Number; // install the kick handler before any vCPU can need it
        for (int i = 0; i < _vcpus.Length; i++)
        {
            int index = i;
            threads[i] = new Thread(() => VcpuLoop(index)) { IsBackground = true, Name = $"vcpu{i}" };
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
            ExitStatistics.Report(Console.Error, _stats);
            foreach (VirtioPciDevice device in VirtioDevices)
            {
                device.WriteStatistics(Console.Error);
            }
        }
        return _exit!;
    }

    /// <summary>Stops the machine with a reason (first reason wins); kicks every vCPU out of KVM_RUN.</summary>
    public void RequestStop(MachineExit exit)
    {
        if (Interlocked.CompareExchange(ref _exit, exit, null) != null)
        {
            return;
        }
        _stopping = true;
        for (int i = 0; i < _vcpus.Length; i++)
        {
            _vcpus[i]?.RequestImmediateExit(true);
            VcpuSignal.Kick(Volatile.Read(ref _tids[i]));
        }
        _wakeNotifier?.Signal();
        _stopped.Set();
    }

    private void VcpuLoop(int index)
    {
        KvmVcpu vcpu = _vcpus[index];
        ExitStatistics? stats = _stats?[index];
        Volatile.Write(ref _tids[index], LibC.GetTid());
        try
        {
            while (!_stopping)
            {
                stats?.EnterGuest();
                bool exited = vcpu.Run();
                stats?.LeaveGuest(vcpu, exited);
                if (!exited)
                {
                    if (_stopping)
                    {
                        break;
                    }
                    vcpu.RequestImmediateExit(false);
                    continue;
                }
                HandleExit(index, vcpu);
            }
        }
        catch (Exception e) when (e is KvmException or InvalidOperationException or ArgumentException)
        {
            RequestStop(new MachineExit(MachineExitKind.Error, $"vCPU {index}: {e.Message}"));
        }
    }

    /// <summary>Replays writes KVM queued in the coalesced ring, oldest first, before an exit is handled.</summary>
    private void ReplayCoalesced()
    {
        // The entry stays in the ring until it has been applied, so a vCPU that sees a non-empty ring waits here for
        // another vCPU's replay to finish instead of handling its exit against stale state.
        lock (_coalescedLock)
        {
            Span<byte> data = stackalloc byte[8];
            while (_coalesced!.TryPeek(out ulong address, out bool pio, data, out int length))
            {
                if (pio)
                {
                    Ports.Write((ushort)address, data[..length]);
                }
                else
                {
                    Mmio.Write(address, data[..length]);
                }
                _coalesced.Advance();
            }
        }
    }

    private void HandleExit(int index, KvmVcpu vcpu)
    {
        if (_coalesced is not null && !_coalesced.IsEmpty)
        {
            ReplayCoalesced();
        }
        switch (vcpu.ExitReason)
        {
            case KvmExitReason.Io:
            {
                Span<byte> data = vcpu.IoData;
                int size = vcpu.IoSize;
                ushort port = vcpu.IoPort;
                bool isOut = vcpu.IoIsOut;
                for (int i = 0; i + size <= data.Length; i += size)
                {
                    if (isOut)
                    {
                        Ports.Write(port, data.Slice(i, size));
                    }
                    else
                    {
                        Ports.Read(port, data.Slice(i, size));
                    }
                }
                break;
            }
            case KvmExitReason.Mmio:
                if (vcpu.MmioIsWrite)
                {
                    Mmio.Write(vcpu.MmioAddress, vcpu.MmioData);
                }
                else
                {
                    Mmio.Read(vcpu.MmioAddress, vcpu.MmioData);
                }
                break;
            case KvmExitReason.Intr:
                break;
            case KvmExitReason.Hlt:
                RequestStop(new MachineExit(MachineExitKind.Error, $"vCPU {index} halted outside the in-kernel LAPIC ({Describe(vcpu)})"));
                break;
            case KvmExitReason.Shutdown:
                RequestStop(new MachineExit(MachineExitKind.TripleFault, $"vCPU {index} triple-faulted ({Describe(vcpu)})"));
                break;
            case KvmExitReason.SystemEvent:
                RequestStop(vcpu.SystemEventType switch
                {
                    1 => new MachineExit(MachineExitKind.PowerOff, "the guest powered off"),
                    2 => new MachineExit(MachineExitKind.Reset, "the guest reset the machine"),
                    3 => new MachineExit(MachineExitKind.Panic, "KVM reported a guest crash"),
                    uint t => new MachineExit(MachineExitKind.Error, $"KVM system event {t} on vCPU {index}"),
                });
                break;
            case KvmExitReason.InternalError:
                RequestStop(new MachineExit(MachineExitKind.Error,
                    $"KVM internal error on vCPU {index}: suberror {vcpu.InternalSuberror} (1 = emulation failure) data [{vcpu.InternalErrorData()}] ({Describe(vcpu)})"));
                break;
            case KvmExitReason.FailEntry:
                RequestStop(new MachineExit(MachineExitKind.Error,
                    $"KVM could not enter vCPU {index}: hardware reason 0x{vcpu.FailEntryReason:x} ({Describe(vcpu)})"));
                break;
            default:
                RequestStop(new MachineExit(MachineExitKind.Error, $"unhandled KVM exit {(uint)vcpu.ExitReason} ({vcpu.ExitReason}) on vCPU {index} ({Describe(vcpu)})"));
                break;
        }
    }

    /// <summary>A one-line register summary for diagnostics.</summary>
    private static string Describe(KvmVcpu vcpu)
    {
        try
        {
            KvmRegs r = vcpu.GetRegs();
            KvmSregs s = vcpu.GetSregs();
            return $"rip=0x{r.Rip:x} rsp=0x{r.Rsp:x} rflags=0x{r.Rflags:x} cr0=0x{s.Cr0:x} cr3=0x{s.Cr3:x} cr4=0x{s.Cr4:x} efer=0x{s.Efer:x} cs=0x{s.Cs.Selector:x}";
        }
        catch (KvmException e)
        {
            return $"registers unavailable: {e.Message}";
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
        if (_vcpus is not null)
        {
            foreach (KvmVcpu v in _vcpus)
            {
                v?.Dispose();
            }
        }
        _vm?.Dispose();
        // Device backends first: host-side I/O threads (vsock) must be stopped before guest memory is unmapped.
        foreach (IDisposable d in _owned)
        {
            d.Dispose();
        }
        Memory?.Dispose();
        _kvm?.Dispose();
        _stopped.Dispose();
    }

    private sealed class KvmIrqLine(KvmVm vm, uint gsi) : IInterruptLine
    {
        public void SetLevel(bool high) => vm.SetIrqLine(gsi, high);
    }

    private sealed class KvmMsiSink(KvmVm vm) : IMsiSink
    {
        public void Signal(ulong address, uint data) => vm.SignalMsi(address, data);
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
