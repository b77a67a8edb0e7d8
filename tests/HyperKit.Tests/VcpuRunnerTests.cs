using Kit.HyperKit.Devices;
using Kit.HyperKit.Hypervisor;
using Kit.HyperKit.Vm;

namespace Kit.HyperKit.Tests;

/// <summary>
/// The vCPU run loop over the hypervisor seam, driven by a scripted <see cref="IVcpu"/>: each <see cref="VmExit"/> kind
/// reaches the right bus or becomes the right <see cref="MachineExit"/>, queued writes are replayed first, and kicks
/// and hypervisor failures end the loop as the machine expects. No /dev/kvm needed.
/// </summary>
public sealed class VcpuRunnerTests
{
    /// <summary>A vCPU whose runs return the scripted exits in order; past the script it asks the host to stop.</summary>
    private sealed class ScriptedVcpu(FakeHost host, params Func<VmExit>[] script) : IVcpu
    {
        private int _next;

        public int Id => 0;

        public int Kicks { get; private set; }

        public int KicksCleared { get; private set; }

        public bool Bound { get; private set; }

        public VmExit Run()
        {
            if (_next < script.Length)
            {
                return script[_next++]();
            }
            host.RequestStop(new MachineExit(MachineExitKind.PowerOff, "script done"));
            return VmExit.Interrupted();
        }

        public void BindCurrentThread() => Bound = true;

        public void Kick() => Kicks++;

        public void ClearKick() => KicksCleared++;

        public string DescribeState() => "rip=0x1234";

        public void SetCpuid(ReadOnlySpan<CpuidEntry> entries) => throw new NotSupportedException();

        public int SetMsrs(ReadOnlySpan<(uint Index, ulong Value)> msrs) => throw new NotSupportedException();

        public X86Registers GetRegisters() => throw new NotSupportedException();

        public void SetRegisters(in X86Registers registers) => throw new NotSupportedException();

        public X86SpecialRegisters GetSpecialRegisters() => throw new NotSupportedException();

        public void SetSpecialRegisters(in X86SpecialRegisters registers) => throw new NotSupportedException();

        public void SetFpu(in X86FpuState fpu) => throw new NotSupportedException();

        public void GetLapic(Span<byte> state) => throw new NotSupportedException();

        public void SetLapic(ReadOnlySpan<byte> state) => throw new NotSupportedException();

        public void Dispose()
        {
        }
    }

    private sealed class FakeHost : IVcpuHost
    {
        public bool Stopping { get; set; }

        public List<MachineExit> Stops { get; } = [];

        public void RequestStop(MachineExit exit)
        {
            Stops.Add(exit);
            Stopping = true;
        }
    }

    /// <summary>Records every access as "R port len" / "W port bytes"; reads answer 0xA0, 0xA1, ...</summary>
    private sealed class RecordingDevice(List<string> log) : IPortDevice, IMmioDevice
    {
        private byte _next = 0xA0;

        public void Read(ushort port, Span<byte> data) => Read((ulong)port, data);

        public void Write(ushort port, ReadOnlySpan<byte> data) => Write((ulong)port, data);

        public void Read(ulong offset, Span<byte> data)
        {
            log.Add($"R {offset:x} {data.Length}");
            data.Fill(_next++);
        }

        public void Write(ulong offset, ReadOnlySpan<byte> data) => log.Add($"W {offset:x} {Convert.ToHexString(data)}");
    }

    private sealed class FakeQueue : IQueuedWrites
    {
        public Queue<(ulong Address, bool Pio, byte[] Data)> Writes { get; } = new();

        public bool IsEmpty => Writes.Count == 0;

        public bool TryPeek(out ulong address, out bool pio, Span<byte> data, out int length)
        {
            if (!Writes.TryPeek(out var w))
            {
                (address, pio, length) = (0, false, 0);
                return false;
            }
            (address, pio, length) = (w.Address, w.Pio, w.Data.Length);
            w.Data.CopyTo(data);
            return true;
        }

        public void Advance() => Writes.Dequeue();
    }

    private readonly List<string> _log = [];
    private readonly PortBus _ports = new();
    private readonly MmioBus _mmio = new();
    private readonly FakeHost _host = new();

    public VcpuRunnerTests()
    {
        var device = new RecordingDevice(_log);
        _ports.Register(0x3F8, 8, device);
        _ports.Register(0xCF8, 8, device);
        _mmio.Register(0xD000_0000, 0x1000, device);
    }

    private MachineExit RunScript(params Func<VmExit>[] script)
    {
        var vcpu = new ScriptedVcpu(_host, script);
        new VcpuRunner(0, vcpu, "FAKE", _ports, _mmio, _host).Run();
        Assert.True(vcpu.Bound);
        return Assert.Single(_host.Stops);
    }

    [Fact]
    public void PortWritesAndReadsReachThePortBus()
    {
        byte[] outData = [0x41];
        byte[] inData = new byte[2];
        var runner = new VcpuRunner(0, new ScriptedVcpu(_host), "FAKE", _ports, _mmio, _host);

        runner.Handle(VmExit.IoOut(0x3F8, outData, 1));
        runner.Handle(VmExit.IoIn(0x3FD, inData, 2));

        Assert.Equal(["W 3f8 41", "R 3fd 2"], _log);
        Assert.Equal([0xA0, 0xA0], inData); // the read was answered in the exit's own buffer
        Assert.Empty(_host.Stops);
    }

    [Fact]
    public void AStringInstructionIsOneAccessPerElement()
    {
        byte[] outData = [1, 2, 3, 4, 5, 6];
        byte[] inData = new byte[4];
        var runner = new VcpuRunner(0, new ScriptedVcpu(_host), "FAKE", _ports, _mmio, _host);

        runner.Handle(VmExit.IoOut(0x3F8, outData, 2));
        runner.Handle(VmExit.IoIn(0x3F8, inData, 1));

        Assert.Equal(["W 3f8 0102", "W 3f8 0304", "W 3f8 0506", "R 3f8 1", "R 3f8 1", "R 3f8 1", "R 3f8 1"], _log);
        Assert.Equal([0xA0, 0xA1, 0xA2, 0xA3], inData);
    }

    [Fact]
    public void MmioAccessesReachTheMmioBus()
    {
        byte[] write = [0xEF, 0xBE, 0xAD, 0xDE];
        byte[] read = new byte[8];
        var runner = new VcpuRunner(0, new ScriptedVcpu(_host), "FAKE", _ports, _mmio, _host);

        runner.Handle(VmExit.MmioWrite(0xD000_0010, write));
        runner.Handle(VmExit.MmioRead(0xD000_0018, read));

        Assert.Equal(["W 10 EFBEADDE", "R 18 8"], _log);
        Assert.All(read, b => Assert.Equal(0xA0, b));
    }

    [Fact]
    public void QueuedWritesAreReplayedInOrderBeforeTheExit()
    {
        var queue = new FakeQueue();
        queue.Writes.Enqueue((0xCF8, true, [0x00, 0x08, 0x00, 0x80]));
        queue.Writes.Enqueue((0xD000_0020, false, [0x07]));
        var runner = new VcpuRunner(0, new ScriptedVcpu(_host), "FAKE", _ports, _mmio, _host, new QueuedWriteReplay(queue, _ports, _mmio));
        byte[] data = new byte[4];

        runner.Handle(VmExit.IoIn(0xCFC, data, 4));

        Assert.Equal(["W cf8 00080080", "W 20 07", "R cfc 4"], _log);
        Assert.True(queue.IsEmpty);
    }

    [Fact]
    public void IgnoredExitsChangeNothing()
    {
        new VcpuRunner(0, new ScriptedVcpu(_host), "FAKE", _ports, _mmio, _host).Handle(VmExit.Ignore());

        Assert.Empty(_log);
        Assert.Empty(_host.Stops);
    }

    [Fact]
    public void AKickThatIsNotAStopIsClearedAndTheLoopGoesOn()
    {
        var vcpu = new ScriptedVcpu(_host, VmExit.Interrupted, () => VmExit.IoOut(0x3F8, new byte[] { 0x42 }, 1));

        new VcpuRunner(0, vcpu, "FAKE", _ports, _mmio, _host).Run();

        Assert.Equal(1, vcpu.KicksCleared);
        Assert.Equal(["W 3f8 42"], _log);
        Assert.Equal(MachineExitKind.PowerOff, Assert.Single(_host.Stops).Kind); // the script's end
    }

    [Fact]
    public void AKickDuringAStopEndsTheLoopWithoutClearingIt()
    {
        var vcpu = new ScriptedVcpu(_host, () =>
        {
            _host.Stopping = true;
            return VmExit.Interrupted();
        });

        new VcpuRunner(0, vcpu, "FAKE", _ports, _mmio, _host).Run();

        Assert.Equal(0, vcpu.KicksCleared);
        Assert.Empty(_host.Stops);
    }

    [Fact]
    public void AHypervisorFailureStopsTheMachineWithAnError()
    {
        MachineExit exit = RunScript(() => throw new HypervisorException("FAKE_RUN failed: Bad address"));

        Assert.Equal(MachineExitKind.Error, exit.Kind);
        Assert.Equal("vCPU 0: FAKE_RUN failed: Bad address", exit.Message);
    }

    [Theory]
    [InlineData(SystemEventKind.PowerOff, 1, MachineExitKind.PowerOff, "the guest powered off")]
    [InlineData(SystemEventKind.Reset, 2, MachineExitKind.Reset, "the guest reset the machine")]
    [InlineData(SystemEventKind.Crash, 3, MachineExitKind.Panic, "FAKE reported a guest crash")]
    [InlineData(SystemEventKind.Other, 9, MachineExitKind.Error, "FAKE system event 9 on vCPU 0")]
    public void SystemEventsBecomeMachineExits(SystemEventKind kind, ulong code, MachineExitKind expected, string message)
    {
        MachineExit exit = RunScript(() => VmExit.PlatformEvent(kind, code));

        Assert.Equal(expected, exit.Kind);
        Assert.Equal(message, exit.Message);
    }

    [Fact]
    public void ATripleFaultNamesTheVcpuAndItsState()
    {
        MachineExit exit = RunScript(VmExit.Shutdown);

        Assert.Equal(MachineExitKind.TripleFault, exit.Kind);
        Assert.Equal("vCPU 0 triple-faulted (rip=0x1234)", exit.Message);
        Assert.Equal(3, exit.ExitCode);
    }

    [Fact]
    public void FailuresToRunTheGuestAreErrorsWithTheirDetails()
    {
        Assert.Equal("vCPU 0 halted outside the in-kernel LAPIC (rip=0x1234)", RunScript(VmExit.Hlt).Message);
        _host.Stops.Clear();
        _host.Stopping = false;
        Assert.Equal("FAKE internal error on vCPU 0: suberror 1 (1 = emulation failure) data [0x1 0x2] (rip=0x1234)",
            RunScript(() => VmExit.InternalError(1, "0x1 0x2")).Message);
        _host.Stops.Clear();
        _host.Stopping = false;
        Assert.Equal("FAKE could not enter vCPU 0: hardware reason 0x80000021 (rip=0x1234)",
            RunScript(() => VmExit.FailEntry(0x8000_0021)).Message);
        _host.Stops.Clear();
        _host.Stopping = false;
        MachineExit unknown = RunScript(() => VmExit.Unknown(4, "Debug"));
        Assert.Equal(MachineExitKind.Error, unknown.Kind);
        Assert.Equal("unhandled FAKE exit 4 (Debug) on vCPU 0 (rip=0x1234)", unknown.Message);
    }
}
