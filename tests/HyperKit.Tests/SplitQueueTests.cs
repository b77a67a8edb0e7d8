using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Tests;

public sealed class SplitQueueTests : IDisposable
{
    private readonly GuestMemory _memory = new(0x20000);
    private readonly SplitQueue _queue;
    private readonly QueueDriver _driver;
    private readonly DescriptorSegment[] _segments = new DescriptorSegment[SplitQueue.MaxSize];

    public SplitQueueTests()
    {
        _queue = new SplitQueue(_memory, 16);
        _driver = new QueueDriver(_memory, 16);
        _driver.Configure(_queue);
    }

    public void Dispose() => _memory.Dispose();

    private bool Pop(out ushort head, out int count) =>
        _queue.TryPop(_segments, out head, out count, out _, out _);

    [Fact]
    public void PopsAWellFormedChainInOrder()
    {
        ushort head = _driver.Post((0x8000, 16, false), (0x9000, 100, true), (0x9100, 1, true));
        Assert.True(_queue.TryPop(_segments, out ushort got, out int count, out long readable, out long writable));
        Assert.Equal(head, got);
        Assert.Equal(3, count);
        Assert.Equal(16, readable);
        Assert.Equal(101, writable);
        Assert.Equal(new DescriptorSegment(0x9000, 100, true), _segments[1]);
        Assert.False(Pop(out _, out _));
        _queue.PushUsed(got, 42);
        Assert.Equal(1, _driver.UsedIdx);
        Assert.Equal((head, 42u), (checked((ushort)_driver.UsedEntry(0).Id), _driver.UsedEntry(0).Len));
    }

    [Fact]
    public void IndicesWrapAroundTheRing()
    {
        for (int i = 0; i < 40; i++)
        {
            _driver.Post((0x8000, 8, true));
            Assert.True(Pop(out ushort head, out _));
            _queue.PushUsed(head, 8);
        }
        Assert.Equal(40, _driver.UsedIdx);
        Assert.Equal(QueueError.None, _queue.Broken);
    }

    [Fact]
    public void ALoopingChainIsCutAtQueueSizeAndReturnedEmpty()
    {
        // 0 -> 1 -> 0 -> ... forever.
        _driver.WriteDescriptor(0, 0x8000, 8, 1, 1);
        _driver.WriteDescriptor(1, 0x8100, 8, 1, 0);
        _driver.Publish(0);
        Assert.False(Pop(out _, out _));
        Assert.Equal(1, _queue.BadChains);
        Assert.Equal(QueueError.ChainTooLong, _queue.LastChainError);
        Assert.Equal(1, _driver.UsedIdx);
        Assert.Equal(0u, _driver.UsedEntry(0).Len);
        Assert.Equal(QueueError.None, _queue.Broken);
    }

    [Fact]
    public void ASelfLoopIsCaughtToo()
    {
        _driver.WriteDescriptor(3, 0x8000, 8, 1, 3);
        _driver.Publish(3);
        Assert.False(Pop(out _, out _));
        Assert.Equal(QueueError.ChainTooLong, _queue.LastChainError);
    }

    [Fact]
    public void AChainLongerThanTheCallerBufferIsRefused()
    {
        for (ushort i = 0; i < 16; i++)
        {
            _driver.WriteDescriptor(i, 0x8000, 1, (ushort)(i < 15 ? 1 : 0), (ushort)(i + 1));
        }
        _driver.Publish(0);
        Assert.False(_queue.TryPop(new DescriptorSegment[4], out _, out _, out _, out _));
        Assert.Equal(QueueError.ChainTooLong, _queue.LastChainError);
    }

    [Theory]
    [InlineData(0x1FFFFUL, 2u)]
    [InlineData(0x20000UL, 1u)]
    [InlineData(ulong.MaxValue, 16u)]
    [InlineData(0x100UL, uint.MaxValue)]
    public void BuffersOutsideMemoryAreRefused(ulong address, uint length)
    {
        _driver.Post((0x8000, 16, false), (address, length, true));
        Assert.False(Pop(out _, out _));
        Assert.Equal(QueueError.BufferOutsideMemory, _queue.LastChainError);
        Assert.Equal(1, _driver.UsedIdx);
    }

    [Fact]
    public void NextIndexOutsideTheTableIsRefused()
    {
        _driver.WriteDescriptor(0, 0x8000, 8, 1, 16);
        _driver.Publish(0);
        Assert.False(Pop(out _, out _));
        Assert.Equal(QueueError.NextOutOfRange, _queue.LastChainError);
    }

    [Fact]
    public void AHeadOutsideTheTableBreaksTheQueue()
    {
        _driver.Publish(200);
        Assert.False(Pop(out _, out _));
        Assert.Equal(QueueError.HeadOutOfRange, _queue.Broken);
        _driver.Post((0x8000, 8, true));
        Assert.False(Pop(out _, out _)); // stays stopped until reset
    }

    [Fact]
    public void AnAvailIndexJumpBreaksTheQueue()
    {
        _driver.SetAvailIdx(17);
        Assert.False(Pop(out _, out _));
        Assert.Equal(QueueError.AvailIndexJump, _queue.Broken);
        _queue.Reset();
        Assert.Equal(QueueError.None, _queue.Broken);
    }

    /// <summary>
    /// A used ring laid over the available ring (or the table) breaks the queue before anything is popped: the device's
    /// used-ring writes would rewrite avail.idx and its ring, and such a ring kept a vhost-user backend popping forever
    /// (fuzz reproducer tests/Kit.Fuzz/regressions/vhost-user-session/used-ring-over-avail-ring).
    /// </summary>
    [Theory]
    [InlineData(0)] // exactly on the available ring
    [InlineData(-2)] // used.ring[0] over avail.idx
    [InlineData(-0x1000 + 8)] // over the descriptor table (0x1000 below the available ring here)
    public void OverlappingUsedRingBreaksTheQueue(int usedOffsetFromAvail)
    {
        _driver.Post((0x8000, 8, true));
        _queue.UsedRing = (ulong)((long)_queue.AvailRing + usedOffsetFromAvail);
        Assert.False(Pop(out _, out _));
        Assert.Equal(QueueError.RingsOverlap, _queue.Broken);
    }

    [Fact]
    public void IndirectDescriptorsAreRefusedBecauseNotOffered()
    {
        _driver.WriteDescriptor(0, 0x8000, 32, 4, 0);
        _driver.Publish(0);
        Assert.False(Pop(out _, out _));
        Assert.Equal(QueueError.IndirectNotNegotiated, _queue.LastChainError);
    }

    [Fact]
    public void ReadableAfterWritableIsRefused()
    {
        _driver.Post((0x8000, 8, true), (0x9000, 8, false));
        Assert.False(Pop(out _, out _));
        Assert.Equal(QueueError.ReadableAfterWritable, _queue.LastChainError);
    }

    [Fact]
    public void RingsOutsideMemoryBreakTheQueue()
    {
        _queue.Enabled = false;
        _queue.UsedRing = 0x1FFF0;
        _queue.Enabled = true;
        Assert.False(_queue.RingsValid);
        Assert.False(Pop(out _, out _));
        Assert.Equal(QueueError.RingOutsideMemory, _queue.Broken);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(32)]
    public void InvalidSizesAreNeverUsed(ushort size)
    {
        _queue.Size = size;
        Assert.False(_queue.RingsValid);
        Assert.False(Pop(out _, out _));
    }

    [Fact]
    public void GoodChainsAfterABadOneStillFlow()
    {
        _driver.WriteDescriptor(0, 0x8000, 8, 1, 0); // loop
        _driver.Publish(0);
        _driver.WriteDescriptor(1, 0x8000, 8, 2, 0);
        _driver.Publish(1);
        Assert.True(Pop(out ushort head, out _));
        Assert.Equal(1, head);
    }

    [Fact]
    public void NoInterruptFlagIsHonoured()
    {
        Assert.True(_queue.ShouldInterrupt());
        _driver.SetNoInterrupt(true);
        Assert.False(_queue.ShouldInterrupt());
    }

    [Fact]
    public void RandomDescriptorTablesNeverThrowOrEscape()
    {
        var random = new Random(1234);
        byte[] junk = new byte[16 * 16 + 64];
        for (int round = 0; round < 2000; round++)
        {
            random.NextBytes(junk);
            _memory.TryWrite(_driver.Desc, junk.AsSpan(0, 256));
            _queue.Reset();
            _driver.Configure(_queue);
            _memory.TryWrite(_driver.Avail, junk.AsSpan(256, 36));
            _memory.TryWriteU16(_driver.Used + 2, 0);
            int guard = 0;
            while (_queue.TryPop(_segments, out ushort head, out int count, out _, out _) && guard++ < 100)
            {
                Assert.True(head < 16);
                for (int i = 0; i < count; i++)
                {
                    Assert.True(_memory.Contains(_segments[i].Address, _segments[i].Length));
                }
                _queue.PushUsed(head, 0);
            }
            Assert.True(guard <= 16);
        }
    }

    // ---- VIRTIO_F_EVENT_IDX (virtio 1.2, 2.7.7, 2.7.10) ----

    private void SetUsedEvent(ushort value) => _memory.TryWriteU16(_driver.Avail + 4 + 2UL * _driver.Size, value);

    private ushort AvailEvent
    {
        get
        {
            _memory.TryReadU16(_driver.Used + 4 + 8UL * _driver.Size, out ushort v);
            return v;
        }
    }

    [Theory]
    [InlineData(0, 1, 0, true)]       // the first entry after the event
    [InlineData(5, 10, 0, true)]      // event inside [old, new)
    [InlineData(10, 10, 0, false)]    // event not reached yet
    [InlineData(3, 10, 5, false)]     // event already passed before old
    [InlineData(65535, 2, 65534, true)] // wraps around 2^16
    [InlineData(7, 7, 7, false)]      // nothing new
    public void NeedEventIsVringNeedEvent(int eventIdx, int newIdx, int oldIdx, bool expected) =>
        Assert.Equal(expected, SplitQueue.NeedEvent((ushort)eventIdx, (ushort)newIdx, (ushort)oldIdx));

    [Fact]
    public void WithEventIdxTheDriverGetsOneInterruptPerCrossingOfUsedEvent()
    {
        _queue.EventIdx = true;
        for (int i = 0; i < 8; i++)
        {
            _driver.Post((0x8000, 8, true));
        }
        // The first decision always interrupts (nothing was signalled yet).
        Assert.True(Pop(out ushort head, out _));
        _queue.PushUsed(head, 8);
        Assert.True(_queue.ShouldInterrupt());
        // The driver (in NAPI) asks to hear only when entry 4 is used: used.idx must go past 4.
        SetUsedEvent(4);
        int interrupts = 0;
        for (int i = 1; i < 8; i++)
        {
            Assert.True(Pop(out head, out _));
            _queue.PushUsed(head, 8);
            if (_queue.ShouldInterrupt())
            {
                interrupts++;
                Assert.Equal(5, _driver.UsedIdx); // used.idx moved from 4 to 5: entry 4 is used
            }
        }
        Assert.Equal(1, interrupts);
    }

    [Fact]
    public void WithEventIdxABatchPublishedAtOnceInterruptsOnce()
    {
        _queue.EventIdx = true;
        SetUsedEvent(0);
        for (int i = 0; i < 6; i++)
        {
            _driver.Post((0x8000, 8, true));
            Assert.True(Pop(out ushort head, out _));
            _queue.PushUsedDeferred(head, 8);
        }
        _queue.PublishUsed();
        Assert.True(_queue.ShouldInterrupt());
        Assert.False(_queue.ShouldInterrupt()); // nothing new since
    }

    [Fact]
    public void WithEventIdxTheNoInterruptFlagIsIgnored()
    {
        _queue.EventIdx = true;
        _driver.SetNoInterrupt(true);
        _driver.Post((0x8000, 8, true));
        Assert.True(Pop(out ushort head, out _));
        _queue.PushUsed(head, 8);
        Assert.True(_queue.ShouldInterrupt());
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(0x7FFF)]
    [InlineData(0x8000)]
    [InlineData(0xFFFF)]
    public void HostileUsedEventNeverBreaksTheQueue(int usedEvent)
    {
        _queue.EventIdx = true;
        SetUsedEvent((ushort)usedEvent);
        int interrupts = 0;
        for (int i = 0; i < 100; i++)
        {
            _driver.Post((0x8000, 8, true));
            Assert.True(Pop(out ushort head, out _));
            _queue.PushUsed(head, 8);
            interrupts += _queue.ShouldInterrupt() ? 1 : 0;
        }
        Assert.Equal(QueueError.None, _queue.Broken);
        Assert.Equal(100, _driver.UsedIdx);
        // One for the first decision, plus at most one crossing of a fixed event in 100 entries.
        Assert.InRange(interrupts, 1, 2);
    }

    [Fact]
    public void WhenIdleTheQueueAsksForTheNextKickAtAvailEvent()
    {
        _queue.EventIdx = true;
        _driver.Post((0x8000, 8, true));
        _driver.Post((0x8000, 8, true));
        Assert.True(Pop(out _, out _));
        Assert.True(Pop(out _, out _));
        Assert.False(Pop(out _, out _));
        // avail_event = 2: the driver must kick when it makes entry 2 available, and may skip kicks until we idle.
        Assert.Equal(2, AvailEvent);
        Assert.True(SplitQueue.NeedEvent(AvailEvent, 3, 2));
        _driver.Post((0x8000, 8, true));
        _driver.Post((0x8000, 8, true));
        Assert.True(Pop(out _, out _));
        Assert.Equal(2, AvailEvent); // not rewritten while busy: kicks stay suppressed
        Assert.True(Pop(out _, out _));
        Assert.False(Pop(out _, out _));
        Assert.Equal(4, AvailEvent);
    }

    [Fact]
    public void WithoutEventIdxAvailEventIsNeverWritten()
    {
        _memory.TryWriteU16(_driver.Used + 4 + 8UL * _driver.Size, 0xBEEF);
        _driver.Post((0x8000, 8, true));
        Assert.True(Pop(out _, out _));
        Assert.False(Pop(out _, out _));
        Assert.Equal(0xBEEF, AvailEvent);
    }

    [Fact]
    public void ResetForgetsEventIdxState()
    {
        _queue.EventIdx = true;
        _driver.Post((0x8000, 8, true));
        Assert.True(Pop(out ushort head, out _));
        _queue.PushUsed(head, 8);
        Assert.True(_queue.ShouldInterrupt());
        _queue.Reset();
        Assert.False(_queue.EventIdx);
    }
}
