using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Hypervisor;
using Kit.HyperKit.Kvm;
using Kit.HyperKit.Vm;
using Kit.Linux;

namespace Kit.HyperKit.Tests;

/// <summary>
/// A whole <see cref="Machine"/> built and run on a fake hypervisor: what the builder asks of the VM and its vCPUs,
/// and a run that ends through a device. This is the seam a second backend would plug into; no /dev/kvm needed.
/// </summary>
public sealed class MachineSeamTests
{
    private sealed class FakeHypervisor : IHypervisor
    {
        public FakeVm Vm { get; } = new();

        public bool Disposed { get; private set; }

        public string Name => "FAKE";

        public bool HasTscDeadlineTimer => true;

        public CpuidEntry[] GetSupportedCpuid() =>
        [
            new() { Function = 0, Eax = 1, Ebx = 0x6874_7541, Edx = 0x6974_6E65, Ecx = 0x444D_4163 },
            new() { Function = 1, Ebx = 0x0000_0800 },
        ];

        public IHypervisorVm CreateVm() => Vm;

        public void Dispose() => Disposed = true;
    }

    private sealed class FakeVm : IHypervisorVm
    {
        private readonly List<FdHandle> _handles = [];

        public List<string> Calls { get; } = [];

        public List<FakeVcpu> Vcpus { get; } = [];

        public bool Disposed { get; private set; }

        public void SetMemoryRegion(uint slot, ulong gpa, ulong size, nint hostAddress, bool readOnly = false) =>
            Calls.Add($"memory {slot} 0x{gpa:x} 0x{size:x}");

        public void SetTssAddress(ulong address) => Calls.Add($"tss 0x{address:x}");

        public void SetIdentityMapAddress(ulong address) => Calls.Add($"identity 0x{address:x}");

        public void CreateIrqchip() => Calls.Add("irqchip");

        public void CreatePit() => Calls.Add("pit");

        public void SetIrqLine(uint gsi, bool level) => Calls.Add($"irq {gsi} {level}");

        public bool SignalMsi(ulong address, uint data) => true;

        public EventFd CreateEventFd()
        {
            // A real eventfd: the machine's notify thread polls it.
            FdHandle handle = FdHandle.FromResult(Sys.EventFd(0, Sys.EFD_CLOEXEC | Sys.EFD_NONBLOCK), "eventfd");
            _handles.Add(handle);
            return new EventFd(handle);
        }

        public void RegisterIoEvent(EventFd eventFd, ulong address, uint length, bool pio) =>
            Calls.Add($"ioevent 0x{address:x} {length} {(pio ? "pio" : "mmio")}");

        public void RegisterIrqfd(EventFd eventFd, uint gsi) => Calls.Add($"irqfd {gsi}");

        public IQueuedWrites? EnableCoalescedPio(IVcpu vcpu, ushort port, uint size)
        {
            Calls.Add($"coalesced 0x{port:x} {size} vcpu{vcpu.Id}");
            return null;
        }

        public IVcpu CreateVcpu(int id)
        {
            Calls.Add($"vcpu {id}");
            var vcpu = new FakeVcpu(id);
            Vcpus.Add(vcpu);
            return vcpu;
        }

        public void Dispose()
        {
            foreach (FdHandle handle in _handles)
            {
                handle.Dispose();
            }
            Disposed = true;
        }
    }

    private sealed class FakeVcpu(int id) : IVcpu
    {
        private readonly ManualResetEventSlim _kicked = new();
        private readonly byte[] _exitData = new byte[1];

        public int Id => id;

        public CpuidEntry[] Cpuid { get; private set; } = [];

        public int Msrs { get; private set; }

        public X86FpuState Fpu { get; private set; }

        public bool LapicSet { get; private set; }

        public X86Registers Registers { get; private set; }

        public X86SpecialRegisters SpecialRegisters { get; private set; }

        /// <summary>The one exit this vCPU makes: a write of this byte to this port; then it waits for a kick.</summary>
        public (ushort Port, byte Value)? Exit { get; set; }

        public VmExit Run()
        {
            if (Exit is { } exit)
            {
                Exit = null;
                _exitData[0] = exit.Value;
                return VmExit.IoOut(exit.Port, _exitData, 1);
            }
            _kicked.Wait(TimeSpan.FromSeconds(10));
            return VmExit.Interrupted();
        }

        public void BindCurrentThread()
        {
        }

        public void Kick() => _kicked.Set();

        public void ClearKick() => _kicked.Reset();

        public void SetCpuid(ReadOnlySpan<CpuidEntry> entries) => Cpuid = entries.ToArray();

        public int SetMsrs(ReadOnlySpan<(uint Index, ulong Value)> msrs) => Msrs = msrs.Length;

        public X86Registers GetRegisters() => Registers;

        public void SetRegisters(in X86Registers registers) => Registers = registers;

        public X86SpecialRegisters GetSpecialRegisters() => SpecialRegisters;

        public void SetSpecialRegisters(in X86SpecialRegisters registers) => SpecialRegisters = registers;

        public void SetFpu(in X86FpuState fpu) => Fpu = fpu;

        public void GetLapic(Span<byte> state) => state.Clear();

        public void SetLapic(ReadOnlySpan<byte> state) => LapicSet = true;

        public string DescribeState() => "fake";

        public void Dispose() => _kicked.Dispose();
    }

    [Fact]
    public void TheBuilderSetsUpTheVmItsDevicesAndEachVcpu()
    {
        var hypervisor = new FakeHypervisor();
        var options = new MachineOptions { MemoryBytes = 64UL << 20, Cpus = 2, Rng = true };

        using (var machine = new Machine(options, () => hypervisor))
        {
            uint bar = machine.VirtioDevices[0].BarAddress(0);
            Assert.Equal(
            [
                "tss 0xfffbd000", "identity 0xfffbc000", "irqchip", "pit", "memory 0 0x0 0x4000000",
                "ioevent 0x80 1 pio",
                $"ioevent 0x{bar + VirtioPciDevice.NotifyOffset:x} 2 mmio", // virtio-rng's one queue
                "vcpu 0", "vcpu 1",
                "coalesced 0xcf8 4 vcpu0",
            ], hypervisor.Vm.Calls);
            Assert.Equal(64UL << 20, machine.Memory.Size);
            foreach (FakeVcpu vcpu in hypervisor.Vm.Vcpus)
            {
                CpuidEntry leaf1 = Array.Find(vcpu.Cpuid, e => e.Function == 1);
                Assert.Equal((uint)vcpu.Id, leaf1.Ebx >> 24);          // APIC id
                Assert.NotEqual(0u, leaf1.Ecx & (1u << 24));            // TSC deadline, as the hypervisor offers it
                Assert.Equal(new X86FpuState(0x37F, 0x1F80), vcpu.Fpu);
                Assert.True(vcpu.Msrs > 0);
                Assert.True(vcpu.LapicSet);
            }
        }
        Assert.True(hypervisor.Vm.Disposed);
        Assert.True(hypervisor.Disposed);
    }

    [Fact]
    public void ARunEndsWhenAVcpuWritesTheDebugExitPortAndKicksTheOthers()
    {
        var hypervisor = new FakeHypervisor();
        using var machine = new Machine(new MachineOptions { MemoryBytes = 16UL << 20, Cpus = 2, Rng = false, DebugExitPort = true },
            () => hypervisor);
        machine.LoadProgram32([0xF4], 0x1000, 0x2000);
        hypervisor.Vm.Vcpus[0].Exit = (PortLayout.DebugExit, 42);

        MachineExit exit = machine.Run(TimeSpan.FromSeconds(30));

        Assert.Equal(MachineExitKind.DebugExit, exit.Kind);
        Assert.Equal(42, exit.DebugCode);
        FakeVcpu boot = hypervisor.Vm.Vcpus[0];
        Assert.Equal(0x1000UL, boot.Registers.Rip);
        Assert.Equal(0x2000UL, boot.Registers.Rsp);
        Assert.Equal(0x08, boot.SpecialRegisters.Cs.Selector);
    }

    [Fact]
    public void OptionsAreCheckedBeforeTheHypervisorIsOpened()
    {
        var e = Assert.Throws<MachineConfigurationException>(() =>
            new Machine(new MachineOptions { Cpus = 0 }, () => throw new InvalidOperationException("opened")));
        Assert.Contains("vCPU count", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AFailedBuildDisposesWhatItBuilt()
    {
        var hypervisor = new FakeHypervisor();
        var options = new MachineOptions { MemoryBytes = 16UL << 20 };
        options.Disks.Add(new DiskOptions("/nonexistent/kit-disk.img"));

        var e = Assert.Throws<MachineConfigurationException>(() => new Machine(options, () => hypervisor));

        Assert.Contains("cannot open disk", e.Message, StringComparison.Ordinal);
        Assert.True(hypervisor.Vm.Disposed);
        Assert.True(hypervisor.Disposed);
    }
}
