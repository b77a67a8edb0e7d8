using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Devices.Virtio;

/// <summary>One buffer of a descriptor chain, already checked to lie inside guest memory.</summary>
public readonly record struct DescriptorSegment(ulong Address, uint Length, bool DeviceWritable);

/// <summary>Why a chain or queue was refused; the device counts these and never trusts the guest further.</summary>
public enum QueueError
{
    None,
    /// <summary>avail.idx moved by more than the queue size: the driver is broken (virtio 1.2, 2.7.13).</summary>
    AvailIndexJump,
    /// <summary>A ring address does not lie in guest memory.</summary>
    RingOutsideMemory,
    /// <summary>
    /// The used ring overlaps the descriptor table or the available ring (the driver allocates three separate areas,
    /// virtio 1.2, 2.7): the device's own used-ring writes would then rewrite what it reads, and a ring could make it
    /// pop forever (found by the vhost-user-session fuzz target).
    /// </summary>
    RingsOverlap,
    HeadOutOfRange,
    NextOutOfRange,
    /// <summary>A chain longer than the queue size: it must contain a loop.</summary>
    ChainTooLong,
    BufferOutsideMemory,
    /// <summary>Indirect descriptors were not negotiated (we do not offer VIRTIO_F_INDIRECT_DESC).</summary>
    IndirectNotNegotiated,
    /// <summary>A readable descriptor after a writable one (virtio 1.2, 2.7.4.2).</summary>
    ReadableAfterWritable,
    TooLarge,
}

/// <summary>
/// The device side of a split virtqueue (virtio 1.2, section 2.7): a descriptor table of N 16-byte entries
/// {addr u64, len u32, flags u16, next u16}, the driver ("available") ring {flags, idx, ring[N]}, and the device
/// ("used") ring {flags, idx, ring[N] of {id u32, len u32}}. Everything in guest memory is hostile: every address is
/// bounds-checked, chains are limited to N descriptors (so a loop ends), indices are reduced modulo N, and a broken
/// driver stops this queue (<see cref="Broken"/>) instead of the VMM.
/// </summary>
public sealed class SplitQueue
{
    public const ushort MaxSize = 256;
    private const ushort DescNext = 1, DescWrite = 2, DescIndirect = 4;
    private const ushort AvailNoInterrupt = 1;

    /// <summary>Upper bound on the bytes one chain may describe; overlapping descriptors could otherwise inflate it.</summary>
    public const long MaxChainBytes = 1L << 30;

    private readonly GuestMemory _memory;
    private ushort _lastAvail;
    private ushort _usedIdx;
    // VIRTIO_F_EVENT_IDX (virtio 1.2, 2.7.10): used.idx at the last interrupt decision, and whether there was one.
    private ushort _signalledUsed;
    private bool _signalledValid;

    public SplitQueue(GuestMemory memory, ushort maxSize = MaxSize)
    {
        _memory = memory;
        MaxQueueSize = maxSize;
        Size = maxSize;
    }

    public ushort MaxQueueSize { get; }

    /// <summary>Queue size N chosen by the driver (power of two, at most <see cref="MaxQueueSize"/>).</summary>
    public ushort Size { get; set; }

    public ulong DescTable { get; set; }

    public ulong AvailRing { get; set; }

    public ulong UsedRing { get; set; }

    public bool Enabled { get; set; }

    public ushort MsixVector { get; set; } = 0xFFFF;

    /// <summary>
    /// VIRTIO_F_EVENT_IDX was negotiated (set by the transport at FEATURES_OK): the driver's used_event (after the
    /// avail ring) says when it wants an interrupt, and this queue writes avail_event (after the used ring) to say
    /// when it wants a kick, instead of the avail.flags NO_INTERRUPT hint (virtio 1.2, 2.7.7 and 2.7.10).
    /// </summary>
    public bool EventIdx { get; set; }

    // Diagnostics, counted since the VM started (a driver reset keeps them: the guest resets its devices as it powers
    // off, before the KIT_VM_STATS report is written).

    /// <summary>Times this queue went idle and asked for the next kick through avail_event.</summary>
    public long KickRequests { get; private set; }

    /// <summary>Used entries published.</summary>
    public long UsedEntries { get; private set; }

    /// <summary>Interrupt decisions that wanted an interrupt, and those the driver's suppression skipped.</summary>
    public long InterruptsWanted { get; private set; }

    public long InterruptsSkipped { get; private set; }

    /// <summary>Set once the driver broke the protocol; the queue then processes nothing until reset.</summary>
    public QueueError Broken { get; private set; }

    /// <summary>Chains refused one by one (returned with length 0) because of a bad descriptor.</summary>
    public long BadChains { get; private set; }

    public QueueError LastChainError { get; private set; }

    /// <summary>
    /// The next available-ring index the device will read, and the next used index it will write. Read and set by
    /// out-of-process transports (vhost-user SET_VRING_BASE / GET_VRING_BASE) that stop and restart a ring.
    /// </summary>
    public ushort NextAvail
    {
        get => _lastAvail;
        set => _lastAvail = value;
    }

    /// <inheritdoc cref="NextAvail"/>
    public ushort NextUsed
    {
        get => _usedIdx;
        set
        {
            _usedIdx = value;
            _signalledValid = false;
        }
    }

    public void Reset()
    {
        Size = MaxQueueSize;
        DescTable = AvailRing = UsedRing = 0;
        Enabled = false;
        MsixVector = 0xFFFF;
        Broken = QueueError.None;
        _lastAvail = _usedIdx = _signalledUsed = 0;
        _signalledValid = false;
        EventIdx = false;
        BadChains = 0;
        LastChainError = QueueError.None;
    }

    private bool ValidSize => Size != 0 && Size <= MaxQueueSize && (Size & (Size - 1)) == 0;

    /// <summary>
    /// True when the rings fit in guest memory and the used ring, the only one the device writes, overlaps neither of
    /// the others (checked when the driver enables the queue and per access).
    /// </summary>
    public bool RingsValid => RingProblem == QueueError.None;

    private QueueError RingProblem =>
        !ValidSize
        || !_memory.Contains(DescTable, 16UL * Size)
        || !_memory.Contains(AvailRing, 6UL + 2UL * Size)
        || !_memory.Contains(UsedRing, 6UL + 8UL * Size)
            ? QueueError.RingOutsideMemory
            : Overlap(UsedRing, 6UL + 8UL * Size, DescTable, 16UL * Size) || Overlap(UsedRing, 6UL + 8UL * Size, AvailRing, 6UL + 2UL * Size)
                ? QueueError.RingsOverlap
                : QueueError.None;

    // Both ranges lie in guest memory (checked first), so neither end wraps.
    private static bool Overlap(ulong a, ulong aLength, ulong b, ulong bLength) => a < b + bLength && b < a + aLength;

    private void Break(QueueError error) => Broken = error;

    /// <summary>
    /// Takes the next available chain into <paramref name="segments"/> (capacity at least Size). Returns false when
    /// there is nothing to do or the queue is broken. A chain with a bad descriptor is consumed and completed with
    /// length 0 here (so the driver gets its buffer back), counted, and the next chain is tried.
    /// </summary>
    public bool TryPop(Span<DescriptorSegment> segments, out ushort head, out int count, out long readableBytes, out long writableBytes)
    {
        head = 0;
        count = 0;
        readableBytes = writableBytes = 0;
        while (true)
        {
            if (!Enabled || Broken != QueueError.None)
            {
                return false;
            }
            if (!RingsValid)
            {
                Break(RingProblem);
                return false;
            }
            _memory.TryReadU16(AvailRing + 2, out ushort availIdx);
            Interlocked.MemoryBarrier(); // read ring entries only after idx (acquire)
            ushort pending = (ushort)(availIdx - _lastAvail);
            if (pending == 0 && EventIdx)
            {
                // Going idle: ask for a kick when the driver makes entry _lastAvail available (avail_event), then look
                // again, since the driver may have added it after our read and before seeing avail_event (2.7.10).
                _memory.TryWriteU16(UsedRing + 4 + 8UL * Size, _lastAvail);
                KickRequests++;
                Interlocked.MemoryBarrier();
                _memory.TryReadU16(AvailRing + 2, out availIdx);
                Interlocked.MemoryBarrier();
                pending = (ushort)(availIdx - _lastAvail);
            }
            if (pending == 0)
            {
                return false;
            }
            if (pending > Size)
            {
                Break(QueueError.AvailIndexJump);
                return false;
            }
            _memory.TryReadU16(AvailRing + 4 + 2UL * (ushort)(_lastAvail % Size), out head);
            _lastAvail++;
            QueueError error = WalkChain(head, segments, out count, out readableBytes, out writableBytes);
            if (error == QueueError.None)
            {
                return true;
            }
            BadChains++;
            LastChainError = error;
            if (head < Size)
            {
                PushUsed(head, 0);
            }
            else
            {
                // A head outside the table cannot even be returned: the ring is corrupt.
                Break(error);
                return false;
            }
        }
    }

    private QueueError WalkChain(ushort head, Span<DescriptorSegment> segments, out int count, out long readable, out long writable)
    {
        count = 0;
        readable = writable = 0;
        if (head >= Size)
        {
            return QueueError.HeadOutOfRange;
        }
        ushort index = head;
        bool sawWritable = false;
        while (true)
        {
            if (count >= Size || count >= segments.Length)
            {
                return QueueError.ChainTooLong;
            }
            ulong entry = DescTable + 16UL * index;
            _memory.TryReadU64(entry, out ulong addr);
            _memory.TryReadU32(entry + 8, out uint len);
            _memory.TryReadU16(entry + 12, out ushort flags);
            _memory.TryReadU16(entry + 14, out ushort next);
            if ((flags & DescIndirect) != 0)
            {
                return QueueError.IndirectNotNegotiated;
            }
            if (!_memory.Contains(addr, len))
            {
                return QueueError.BufferOutsideMemory;
            }
            bool isWritable = (flags & DescWrite) != 0;
            if (!isWritable && sawWritable)
            {
                return QueueError.ReadableAfterWritable;
            }
            sawWritable |= isWritable;
            segments[count++] = new DescriptorSegment(addr, len, isWritable);
            if (isWritable)
            {
                writable += len;
            }
            else
            {
                readable += len;
            }
            if (readable + writable > MaxChainBytes)
            {
                return QueueError.TooLarge;
            }
            if ((flags & DescNext) == 0)
            {
                return QueueError.None;
            }
            if (next >= Size)
            {
                return QueueError.NextOutOfRange;
            }
            index = next;
        }
    }

    /// <summary>Returns a chain to the driver with the number of bytes the device wrote into it.</summary>
    public void PushUsed(ushort head, uint writtenBytes)
    {
        PushUsedDeferred(head, writtenBytes);
        PublishUsed();
    }

    /// <summary>
    /// Writes a used entry without publishing used.idx, so that several entries become visible at once (a
    /// virtio-net frame spread over mergeable buffers must appear whole: virtio 1.2, 5.1.6.4.2).
    /// </summary>
    public void PushUsedDeferred(ushort head, uint writtenBytes)
    {
        if (!RingsValid)
        {
            Break(RingProblem);
            return;
        }
        ulong slot = UsedRing + 4 + 8UL * (ushort)(_usedIdx % Size);
        _memory.TryWriteU32(slot, head);
        _memory.TryWriteU32(slot + 4, writtenBytes);
        _usedIdx++;
        UsedEntries++;
    }

    /// <summary>Publishes used.idx after the entries written by <see cref="PushUsedDeferred"/>.</summary>
    public void PublishUsed()
    {
        if (!RingsValid)
        {
            Break(RingProblem);
            return;
        }
        Interlocked.MemoryBarrier(); // the entries must be visible before the index (release)
        _memory.TryWriteU16(UsedRing + 2, _usedIdx);
    }

    /// <summary>
    /// Whether the driver wants an interrupt for the used entries published since the last call. With EVENT_IDX: only
    /// when used.idx crossed the driver's used_event since the last decision (vring_need_event, 2.7.10); without: unless
    /// avail.flags has NO_INTERRUPT (2.7.7). Any used_event value is just a number to compare: a hostile one can only
    /// cost the driver its own interrupts.
    /// </summary>
    public bool ShouldInterrupt()
    {
        bool wanted = DriverWantsInterrupt();
        if (wanted)
        {
            InterruptsWanted++;
        }
        else
        {
            InterruptsSkipped++;
        }
        return wanted;
    }

    private bool DriverWantsInterrupt()
    {
        Interlocked.MemoryBarrier(); // used.idx is visible before we read what the driver asked for
        if (!EventIdx)
        {
            return !_memory.TryReadU16(AvailRing, out ushort flags) || (flags & AvailNoInterrupt) == 0;
        }
        ushort old = _signalledUsed;
        bool valid = _signalledValid;
        _signalledUsed = _usedIdx;
        _signalledValid = true;
        if (!valid || !_memory.TryReadU16(AvailRing + 4 + 2UL * Size, out ushort usedEvent))
        {
            return true;
        }
        return NeedEvent(usedEvent, _usedIdx, old);
    }

    /// <summary>
    /// vring_need_event: true when <paramref name="eventIdx"/> lies in [old, new) modulo 2^16, i.e. the index crossed
    /// the point the other side asked to hear about.
    /// </summary>
    public static bool NeedEvent(ushort eventIdx, ushort newIdx, ushort oldIdx) =>
        (ushort)(newIdx - eventIdx - 1) < (ushort)(newIdx - oldIdx);
}
