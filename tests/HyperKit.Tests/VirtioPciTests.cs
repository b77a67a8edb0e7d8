using Kit.HyperKit.Devices;
using Kit.HyperKit.Devices.Pci;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Rng;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Tests;

public sealed class VirtioPciTests : IDisposable
{
    private readonly GuestMemory _memory = new(0x40000);
    private readonly PciBus _bus = new();
    private readonly MmioBus _mmio = new();
    private readonly RecordingMsi _msi = new();
    private readonly VirtioRng _rng = new();
    private readonly VirtioPciDevice _device;
    private readonly VirtioPciDriver _driver;
    private readonly QueueDriver _queue;

    public VirtioPciTests()
    {
        _mmio.AttachPci(_bus);
        _device = new VirtioPciDevice(_rng, _memory, _msi, _bus.AllocateBar(VirtioPciDevice.BarLength));
        int slot = _bus.Add(_device);
        _driver = new VirtioPciDriver(_bus, _mmio, slot);
        _queue = new QueueDriver(_memory, 8);
    }

    public void Dispose() => _memory.Dispose();

    private void BringUp()
    {
        Assert.True(_driver.Negotiate(VirtioFeatures.Version1));
        _driver.WriteMmio16(_driver.Common + 16, 0); // config vector 0
        _driver.SetupQueue(0, _queue, 1);
        _driver.ProgramVector(0, 0xFEE0_0000, 0x41);
        _driver.ProgramVector(1, 0xFEE0_1000, 0x42);
        _driver.EnableMsix();
        _driver.DriverOk();
    }

    [Fact]
    public void CapabilitiesDescribeTheBarLayout()
    {
        Assert.Equal(_driver.Bar + VirtioPciDevice.CommonOffset, _driver.Common);
        Assert.Equal(_driver.Bar + VirtioPciDevice.NotifyOffset, _driver.Notify);
        Assert.Equal(_driver.Bar + VirtioPciDevice.IsrOffset, _driver.Isr);
        Assert.Equal(_driver.Bar + VirtioPciDevice.DeviceCfgOffset, _driver.DeviceCfg);
        Assert.Equal(_driver.Bar + VirtioPciDevice.MsixTableOffset, _driver.MsixTable);
        Assert.Equal(VirtioPciDevice.NotifyMultiplier, _driver.NotifyMultiplier);
        // MSI-X table size field = vectors - 1 (config + one queue).
        Assert.Equal(1, _driver.Pci.Read8(_driver.Slot, _driver.MsixCap + 2) & 0x7FF);
        Assert.Equal(1, _driver.ReadMmio16(_driver.Common + 18)); // num_queues
        Assert.Equal(8, _driver.ReadMmio16(_driver.Common + 24) >> 5); // queue_size max 256
    }

    [Fact]
    public void FeatureNegotiationRequiresVersion1AndASubset()
    {
        // Every device gets the transport's EVENT_IDX on top of its own features.
        Assert.Equal(VirtioFeatures.Version1 | VirtioFeatures.EventIdx, _driver.DeviceFeatures());
        Assert.False(_driver.Negotiate(0)); // legacy driver refused
        Assert.False(_driver.Negotiate(VirtioFeatures.Version1 | (1UL << 28))); // not offered
        Assert.True(_driver.Negotiate(VirtioFeatures.Version1));
        Assert.Equal(VirtioFeatures.Version1, _rng.DriverFeatures);
    }

    [Fact]
    public void RngFillsBuffersAndSignalsTheQueueVector()
    {
        BringUp();
        ushort head = _queue.Post((0x10000, 64, true));
        _driver.Kick(0);
        Assert.Equal(1, _queue.UsedIdx);
        Assert.Equal((head, 64u), ((ushort)_queue.UsedEntry(0).Id, _queue.UsedEntry(0).Len));
        Assert.True(_memory.TryGetSpan(0x10000, 64, out Span<byte> data));
        Assert.Contains(data.ToArray(), b => b != 0);
        Assert.Equal([(0xFEE0_1000UL, 0x42u)], _msi.Messages);
        Assert.Equal(1, _driver.ReadMmio8(_driver.Isr)); // queue interrupt, cleared by the read
        Assert.Equal(0, _driver.ReadMmio8(_driver.Isr));
    }

    [Fact]
    public void RngRequestsAreCapped()
    {
        BringUp();
        _queue.Post((0x0, 0x30000, true));
        _driver.Kick(0);
        Assert.Equal((uint)VirtioRng.MaxRequestBytes, _queue.UsedEntry(0).Len);
    }

    [Fact]
    public void KicksBeforeDriverOkDoNothing()
    {
        Assert.True(_driver.Negotiate(VirtioFeatures.Version1));
        _driver.SetupQueue(0, _queue, 1);
        _queue.Post((0x10000, 16, true));
        _driver.Kick(0);
        Assert.Equal(0, _queue.UsedIdx);
    }

    [Fact]
    public void MaskedVectorsArePendingUntilUnmasked()
    {
        BringUp();
        _driver.ProgramVector(1, 0xFEE0_1000, 0x42, masked: true);
        _queue.Post((0x10000, 8, true));
        _driver.Kick(0);
        Assert.Empty(_msi.Messages);
        Assert.Equal(2u, _driver.ReadMmio32(_driver.Bar + VirtioPciDevice.MsixPbaOffset)); // vector 1 pending
        _driver.ProgramVector(1, 0xFEE0_1000, 0x42, masked: false);
        Assert.Single(_msi.Messages);
        Assert.Equal(0u, _driver.ReadMmio32(_driver.Bar + VirtioPciDevice.MsixPbaOffset));
    }

    [Fact]
    public void FunctionMaskHoldsAllVectors()
    {
        BringUp();
        _driver.EnableMsix(enable: true, functionMask: true);
        _queue.Post((0x10000, 8, true));
        _driver.Kick(0);
        Assert.Empty(_msi.Messages);
        _driver.EnableMsix(enable: true, functionMask: false);
        Assert.Single(_msi.Messages);
    }

    [Fact]
    public void EventIdxIsPerQueueAfterNegotiationOnly()
    {
        BringUp();
        Assert.False(_device.Queue(0).EventIdx);
        Assert.True(_driver.Negotiate(VirtioFeatures.Version1 | VirtioFeatures.EventIdx));
        Assert.True(_device.Queue(0).EventIdx);
        Assert.Equal(VirtioFeatures.Version1 | VirtioFeatures.EventIdx, _rng.DriverFeatures);
    }

    [Fact]
    public void EventIdxSuppressesInterruptsUntilUsedEventIsCrossed()
    {
        Assert.True(_driver.Negotiate(VirtioFeatures.Version1 | VirtioFeatures.EventIdx));
        _driver.WriteMmio16(_driver.Common + 16, 0);
        _driver.SetupQueue(0, _queue, 1);
        _driver.ProgramVector(0, 0xFEE0_0000, 0x41);
        _driver.ProgramVector(1, 0xFEE0_1000, 0x42);
        _driver.EnableMsix();
        _driver.DriverOk();
        ulong usedEvent = _queue.Avail + 4 + 2UL * _queue.Size;
        ulong availEvent = _queue.Used + 4 + 8UL * _queue.Size;
        _queue.Post((0x10000, 8, true));
        _driver.Kick(0);
        Assert.Single(_msi.Messages); // first completion always signals
        _memory.TryReadU16(availEvent, out ushort ae);
        Assert.Equal(1, ae); // idle: kick me when entry 1 is available
        // The driver wants to hear only after entry 3 is used.
        _memory.TryWriteU16(usedEvent, 3);
        for (int i = 0; i < 3; i++)
        {
            _queue.Post((0x10000, 8, true));
            _driver.Kick(0);
        }
        Assert.Equal(4, _queue.UsedIdx);
        Assert.Equal(2, _msi.Messages.Count); // one more, when used.idx went 3 -> 4
        var stats = new StringWriter();
        _device.WriteStatistics(stats);
        Assert.Contains("queue 0: 4 used, 2 interrupts, 2 suppressed by the driver", stats.ToString());
        Assert.Contains("(event idx offered)", stats.ToString());
    }

    [Fact]
    public void NoInterruptSuppressesTheMessage()
    {
        BringUp();
        _queue.SetNoInterrupt(true);
        _queue.Post((0x10000, 8, true));
        _driver.Kick(0);
        Assert.Equal(1, _queue.UsedIdx);
        Assert.Empty(_msi.Messages);
    }

    [Fact]
    public void OutOfRangeVectorsReadBackAsNoVector()
    {
        _driver.WriteMmio16(_driver.Common + 16, 7);
        Assert.Equal(0xFFFF, _driver.ReadMmio16(_driver.Common + 16));
        _driver.WriteMmio16(_driver.Common + 22, 0);
        _driver.WriteMmio16(_driver.Common + 26, 99);
        Assert.Equal(0xFFFF, _driver.ReadMmio16(_driver.Common + 26));
    }

    [Fact]
    public void ABrokenQueueSetsNeedsResetAndTellsTheDriver()
    {
        BringUp();
        _queue.SetAvailIdx(100); // impossible jump
        _driver.Kick(0);
        Assert.NotEqual(0, _driver.Status & VirtioStatus.NeedsReset);
        Assert.Equal([(0xFEE0_0000UL, 0x41u)], _msi.Messages); // config-change vector
        // Further kicks are ignored, then a reset brings the device back.
        _driver.Kick(0);
        _driver.Status = 0;
        Assert.Equal(0, _driver.Status);
        Assert.Equal(QueueError.None, _device.Queue(0).Broken);
    }

    [Fact]
    public void QueueLayoutIsFrozenWhileEnabled()
    {
        BringUp();
        _driver.WriteMmio16(_driver.Common + 22, 0);
        _driver.WriteMmio32(_driver.Common + 32, 0xDEAD0000);
        Assert.Equal((uint)_queue.Desc, _driver.ReadMmio32(_driver.Common + 32));
    }

    [Fact]
    public void SelectingAMissingQueueIsHarmless()
    {
        _driver.WriteMmio16(_driver.Common + 22, 5);
        Assert.Equal(0, _driver.ReadMmio16(_driver.Common + 24));
        _driver.WriteMmio16(_driver.Common + 28, 1);
        _driver.WriteMmio16(_driver.Notify + 20, 5);
        Assert.Equal(5, _driver.ReadMmio16(_driver.Common + 22));
    }

    [Fact]
    public void RandomBarTrafficNeverThrows()
    {
        BringUp();
        var random = new Random(99);
        byte[] data = new byte[8];
        for (int i = 0; i < 20000; i++)
        {
            random.NextBytes(data);
            ulong address = _driver.Bar + (ulong)random.Next((int)VirtioPciDevice.BarLength);
            int size = 1 << random.Next(4);
            if (random.Next(2) == 0)
            {
                _mmio.Write(address, data.AsSpan(0, size));
            }
            else
            {
                _mmio.Read(address, data.AsSpan(0, size));
            }
        }
        Assert.True(true);
    }
}
