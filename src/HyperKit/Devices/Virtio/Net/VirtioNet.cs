using System.Buffers.Binary;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Devices.Virtio.Net;

/// <summary>
/// virtio-net (virtio 1.2, section 5.1): receive queue 0 and transmit queue 1, a 12-byte virtio_net_hdr_v1 in front
/// of every frame, mergeable receive buffers (a 64 KiB segment spreads over several guest buffers and appears at once),
/// and, when the backend allows, checksum and TCPv4 segmentation offload both ways so that a super-segment crosses as
/// one descriptor chain. Everything from the guest is hostile: bad headers, short or oversized frames are dropped and
/// counted; the VMM goes on.
/// Threads: Process runs under the transport's lock (driver kicks, or <see cref="VirtioDevice.ProcessQueue"/> from a
/// backend thread). Guest frames are gathered straight into the transmit ring the backend reads; host frames wait in a
/// bounded receive ring until the guest has buffers.
/// </summary>
public sealed class VirtioNet : VirtioDevice, IDisposable
{
    public const int RxQueue = 0, TxQueue = 1;
    public const ulong FeatureCsum = 1UL << 0, FeatureGuestCsum = 1UL << 1, FeatureMtu = 1UL << 3, FeatureMac = 1UL << 5,
        FeatureGuestTso4 = 1UL << 7, FeatureHostTso4 = 1UL << 11, FeatureMrgRxbuf = 1UL << 15, FeatureStatus = 1UL << 16;
    public const int RingBytes = 2 << 20;
    private const int MaxStashedSegments = 1024;

    private readonly INetBackend _backend;
    private readonly FrameRing _tx = new(RingBytes);
    private readonly FrameRing _rx = new(RingBytes);
    private readonly Lock _rxProducer = new();
    private readonly byte[] _mac = new byte[6];
    private readonly DescriptorSegment[] _segments = new DescriptorSegment[SplitQueue.MaxSize];
    // Receive chains taken from the ring but not yet used: a frame needing several mergeable buffers waits here
    // until enough arrive, so nothing is ever "un-popped".
    private readonly (ushort Head, int Start, int Count, long Writable)[] _stash = new (ushort, int, int, long)[SplitQueue.MaxSize];
    private readonly DescriptorSegment[] _stashSegments = new DescriptorSegment[MaxStashedSegments];
    private int _stashCount, _stashSegmentCount;
    private long _stashWritable;
    // A transmit chain popped while the ring was full: sent first next time.
    private bool _txHeld;
    private ushort _txHeldHead;
    private int _txHeldCount;
    private long _txHeldReadable;
    private readonly DescriptorSegment[] _txHeldSegments = new DescriptorSegment[SplitQueue.MaxSize];
    private volatile bool _linkUp = true;
    private volatile bool _rxStuck;
    private static readonly TimeSpan RxBackpressureWait = TimeSpan.FromSeconds(1);

    public VirtioNet(INetBackend backend, ReadOnlySpan<byte> mac)
    {
        _backend = backend;
        Info = backend.Info;
        (Info.Mac is { Length: 6 } assigned ? assigned : mac)[..6].CopyTo(_mac);
        _tx.SpaceAvailable = () => ProcessQueue(TxQueue);
        Port = new NetPort(this, _tx);
        backend.Attach(Port);
    }

    public NetBackendInfo Info { get; }

    public NetPort Port { get; }

    public ReadOnlySpan<byte> Mac => _mac;

    public override ushort DeviceType => 1;

    public override int QueueCount => 2;

    public override ulong DeviceFeatures =>
        VirtioFeatures.Version1 | FeatureMac | FeatureStatus | FeatureMrgRxbuf
        | (Info.Mtu > 0 ? FeatureMtu : 0)
        | (Info.Offload ? FeatureCsum | FeatureGuestCsum | FeatureHostTso4 | FeatureGuestTso4 : 0);

    private bool Negotiated(ulong feature) => (DriverFeatures & feature) != 0;

    // Counters (read by tests and diagnostics; written under the transport lock or the producer lock).
    public long FramesTransmitted { get; private set; }
    public long FramesReceived { get; private set; }
    public long TxDropped { get; private set; }
    public NetHeaderError LastTxError { get; private set; }
    public long RxDropped { get; private set; }
    public long RxNoBuffers { get; private set; }
    /// <summary>Times the transmit ring was full and a chain waited for the backend.</summary>
    public long TxRingFull { get; private set; }
    /// <summary>Times a backend thread waited for room in the receive ring (the guest was behind).</summary>
    public long RxBackpressureWaits { get; private set; }

    public override string Statistics =>
        $"tx {FramesTransmitted} frames ({TxDropped} dropped, last error {LastTxError}, {TxRingFull} ring-full waits), "
        + $"rx {FramesReceived} frames ({RxDropped} dropped, {RxNoBuffers} waits for guest buffers, {RxBackpressureWaits} backpressure waits)";

    internal void SetLinkUp(bool up) => _linkUp = up;

    public override void ReadConfig(int offset, Span<byte> data)
    {
        // struct virtio_net_config (5.1.4): mac[6], status le16, max_virtqueue_pairs le16, mtu le16.
        Span<byte> image = stackalloc byte[12];
        image.Clear();
        _mac.CopyTo(image);
        BinaryPrimitives.WriteUInt16LittleEndian(image[6..], _linkUp ? (ushort)1 : (ushort)0); // VIRTIO_NET_S_LINK_UP
        BinaryPrimitives.WriteUInt16LittleEndian(image[8..], 1);
        BinaryPrimitives.WriteUInt16LittleEndian(image[10..], (ushort)Math.Clamp(Info.Mtu, 0, 65535));
        ReadImage(image, offset, data);
    }

    public override void Reset()
    {
        base.Reset();
        _stashCount = _stashSegmentCount = 0;
        _stashWritable = 0;
        _txHeld = false;
        // Frames in flight belong to the old driver instance; the backend's reader may hold one record, which it
        // releases on its own.
        _rx.Clear();
    }

    public override bool Process(int index, SplitQueue queue, GuestMemory memory) => index switch
    {
        RxQueue => ProcessReceive(queue, memory),
        TxQueue => ProcessTransmit(queue, memory),
        _ => false,
    };

    // ---- guest to host ----

    private bool ProcessTransmit(SplitQueue queue, GuestMemory memory)
    {
        bool used = false;
        while (true)
        {
            ushort head;
            int count;
            long readable;
            Span<DescriptorSegment> segments;
            if (_txHeld)
            {
                head = _txHeldHead;
                count = _txHeldCount;
                readable = _txHeldReadable;
                segments = _txHeldSegments;
                _txHeld = false;
            }
            else if (queue.TryPop(_segments, out head, out count, out readable, out _))
            {
                segments = _segments;
            }
            else
            {
                break;
            }
            long frameLength = readable - VirtioNetHeader.Size;
            if (frameLength < 14 || frameLength > VirtioNetHeader.MaxFrame)
            {
                DropTx(frameLength < 14 ? NetHeaderError.TooShort : NetHeaderError.TooLong);
                queue.PushUsed(head, 0);
                used = true;
                continue;
            }
            Span<byte> record = _tx.Reserve((int)readable);
            if (record.IsEmpty)
            {
                // The backend is behind: keep this chain and stop; the ring calls ProcessQueue when it drains.
                TxRingFull++;
                _txHeld = true;
                _txHeldHead = head;
                _txHeldCount = count;
                _txHeldReadable = readable;
                segments[..count].CopyTo(_txHeldSegments);
                break;
            }
            var cursor = new ChainCursor(segments[..count], memory);
            cursor.Read(record);
            VirtioNetHeader header = VirtioNetHeader.Read(record);
            NetHeaderError error = header.Validate((int)frameLength, Negotiated(FeatureCsum), Negotiated(FeatureHostTso4));
            if (error != NetHeaderError.None)
            {
                _tx.Abandon();
                DropTx(error);
            }
            else
            {
                _tx.Commit((int)readable);
                FramesTransmitted++;
            }
            queue.PushUsed(head, 0);
            used = true;
        }
        return used;
    }

    private void DropTx(NetHeaderError error)
    {
        TxDropped++;
        LastTxError = error;
    }

    // ---- host to guest ----

    internal bool Deliver(in VirtioNetHeader header, ReadOnlySpan<byte> frame)
    {
        if (frame.Length < 14 || frame.Length > VirtioNetHeader.MaxFrame)
        {
            lock (_rxProducer)
            {
                RxDropped++;
            }
            return false;
        }
        bool queued;
        lock (_rxProducer)
        {
            Span<byte> record = _rx.Reserve(VirtioNetHeader.Size + frame.Length);
            // A full ring means the guest is slower than the backend: make the backend wait (as a full socket
            // would) rather than drop, since a drop costs a TCP sender a retransmission timeout. A guest that stops
            // taking frames altogether (no driver, stopped queue) costs one bounded wait, then drops until it
            // takes frames again.
            if (record.IsEmpty && !_rxStuck)
            {
                RxBackpressureWaits++;
                if (_rx.WaitForSpace(VirtioNetHeader.Size + frame.Length, RxBackpressureWait))
                {
                    record = _rx.Reserve(VirtioNetHeader.Size + frame.Length);
                }
                else
                {
                    _rxStuck = true;
                }
            }
            queued = !record.IsEmpty;
            if (queued)
            {
                header.Write(record);
                frame.CopyTo(record[VirtioNetHeader.Size..]);
                _rx.Commit(record.Length);
            }
            else
            {
                RxDropped++;
            }
        }
        if (queued)
        {
            ProcessQueue(RxQueue);
        }
        return queued;
    }

    private bool ProcessReceive(SplitQueue queue, GuestMemory memory)
    {
        bool used = false;
        bool mergeable = Negotiated(FeatureMrgRxbuf);
        while (_rx.TryPeek(out Span<byte> record))
        {
            if (!PrepareForGuest(record))
            {
                _rx.Release();
                RxDropped++;
                continue;
            }
            int need = record.Length;
            if (!FillStash(queue, need, mergeable))
            {
                bool hopeless = mergeable
                    ? _stashCount >= queue.Size || _stashSegmentCount >= MaxStashedSegments
                    : _stashCount > 0;
                if (hopeless)
                {
                    // Every buffer the driver can post (or the one it gave) would not hold this frame: drop the frame.
                    _rx.Release();
                    RxDropped++;
                    continue;
                }
                RxNoBuffers++;
                break;
            }
            WriteToGuest(queue, memory, record, mergeable);
            _rx.Release();
            FramesReceived++;
            used = true;
            _rxStuck = false;
        }
        return used;
    }

    /// <summary>Pops chains until the stash can hold <paramref name="need"/> bytes (one chain when not mergeable).</summary>
    private bool FillStash(SplitQueue queue, int need, bool mergeable)
    {
        while (true)
        {
            if (mergeable ? _stashWritable >= need : _stashCount > 0 && _stash[0].Writable >= need)
            {
                return true;
            }
            if (!mergeable && _stashCount > 0)
            {
                return false; // the one buffer is too small for this frame
            }
            if (_stashCount >= _stash.Length || _stashSegmentCount >= MaxStashedSegments)
            {
                return false;
            }
            if (!queue.TryPop(_segments, out ushort head, out int count, out _, out long writable))
            {
                return false;
            }
            int keep = 0;
            for (int i = 0; i < count && _stashSegmentCount + keep < MaxStashedSegments; i++)
            {
                if (_segments[i].DeviceWritable)
                {
                    _stashSegments[_stashSegmentCount + keep++] = _segments[i];
                }
            }
            long usable = 0;
            for (int i = 0; i < keep; i++)
            {
                usable += _stashSegments[_stashSegmentCount + i].Length;
            }
            if (usable < VirtioNetHeader.Size)
            {
                // A receive buffer that cannot even hold the header (5.1.6.3.1 requires room for it): give it back empty.
                queue.PushUsed(head, 0);
                RxDropped++;
                continue;
            }
            _stash[_stashCount++] = (head, _stashSegmentCount, keep, usable);
            _stashSegmentCount += keep;
            _stashWritable += usable;
        }
    }

    /// <summary>Finishes what the guest did not negotiate: checksums without GUEST_CSUM; refuses GSO without GUEST_TSO4.</summary>
    private bool PrepareForGuest(Span<byte> record)
    {
        VirtioNetHeader h = VirtioNetHeader.Read(record);
        Span<byte> frame = record[VirtioNetHeader.Size..];
        if (h.GsoType != VirtioNetHeader.GsoNone && !(h.GsoType == VirtioNetHeader.GsoTcpV4 && Negotiated(FeatureGuestTso4)))
        {
            return false;
        }
        if (h.NeedsChecksum && !Negotiated(FeatureGuestCsum))
        {
            if (!NetChecksum.Complete(frame, h.CsumStart, h.CsumOffset))
            {
                return false;
            }
            h.Flags = (byte)(h.Flags & ~VirtioNetHeader.FlagNeedsCsum);
        }
        h.NumBuffers = 1;
        h.Write(record);
        return true;
    }

    private void WriteToGuest(SplitQueue queue, GuestMemory memory, Span<byte> record, bool mergeable)
    {
        int offset = 0;
        int chains = 0;
        // Count the buffers first: num_buffers lives in the header, which goes into the first one.
        long room = 0;
        while (room < record.Length)
        {
            room += _stash[chains++].Writable;
        }
        if (mergeable)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(record[10..], (ushort)chains);
        }
        for (int c = 0; c < chains; c++)
        {
            (ushort head, int start, int count, long writable) = _stash[c];
            var cursor = new ChainCursor(_stashSegments.AsSpan(start, count), memory);
            int n = (int)Math.Min(writable, record.Length - offset);
            cursor.Write(record.Slice(offset, n));
            offset += n;
            queue.PushUsedDeferred(head, cursor.Written);
        }
        queue.PublishUsed();
        // Shift the rest of the stash down (it holds at most a queue's worth of entries).
        int removedSegments = chains == _stashCount ? _stashSegmentCount : _stash[chains].Start;
        for (int c = chains; c < _stashCount; c++)
        {
            (ushort h, int s, int n, long w) = _stash[c];
            _stash[c - chains] = (h, s - removedSegments, n, w);
        }
        _stashSegments.AsSpan(removedSegments, _stashSegmentCount - removedSegments).CopyTo(_stashSegments);
        _stashCount -= chains;
        _stashSegmentCount -= removedSegments;
        _stashWritable = 0;
        for (int c = 0; c < _stashCount; c++)
        {
            _stashWritable += _stash[c].Writable;
        }
    }

    public void Dispose()
    {
        _tx.Close();
        _rx.Close();
        _backend.Dispose();
    }
}
