using System.Buffers.Binary;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Net;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Tests;

/// <summary>A backend that only records: tests read the transmit ring and call Deliver themselves.</summary>
internal sealed class FakeNetBackend(bool offload) : INetBackend
{
    public NetBackendInfo Info { get; } = new(offload, 1500);

    public NetPort? Port { get; private set; }

    public bool Disposed { get; private set; }

    public void Attach(NetPort port) => Port = port;

    public void Dispose() => Disposed = true;

    /// <summary>Takes every transmitted record out of the ring.</summary>
    public List<byte[]> Drain()
    {
        var list = new List<byte[]>();
        while (Port!.Transmitted.TryPeek(out Span<byte> record))
        {
            list.Add(record.ToArray());
            Port.Transmitted.Release();
        }
        return list;
    }
}

public sealed class VirtioNetTests : IDisposable
{
    private const ulong RxBuffers = 0x10_0000, TxBuffers = 0x20_0000;
    private static readonly byte[] Mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    private readonly GuestMemory _memory = new(4 << 20);
    private readonly SplitQueue _rx, _tx;
    private readonly QueueDriver _rxDriver, _txDriver;

    public VirtioNetTests()
    {
        _rx = new SplitQueue(_memory, 256);
        _tx = new SplitQueue(_memory, 256);
        _rxDriver = new QueueDriver(_memory, 256, 0x1000, 0x2000, 0x3000);
        _txDriver = new QueueDriver(_memory, 256, 0x5000, 0x6000, 0x7000);
        _rxDriver.Configure(_rx);
        _txDriver.Configure(_tx);
    }

    public void Dispose() => _memory.Dispose();

    private static (VirtioNet Net, FakeNetBackend Backend) Create(bool offload, ulong driverFeatures)
    {
        var backend = new FakeNetBackend(offload);
        var net = new VirtioNet(backend, Mac);
        Assert.Equal(0UL, driverFeatures & ~net.DeviceFeatures);
        net.DriverFeatures = driverFeatures;
        return (net, backend);
    }

    private static byte[] Frame(int length, byte seed)
    {
        byte[] f = new byte[length];
        for (int i = 0; i < f.Length; i++)
        {
            f[i] = (byte)(seed + i * 13);
        }
        return f;
    }

    /// <summary>Posts header+frame for transmit, the header in its own descriptor as Linux does.</summary>
    private void PostTx(VirtioNetHeader header, byte[] frame, ulong at = TxBuffers)
    {
        header.Write(_memory.GetSpan(at, VirtioNetHeader.Size));
        _memory.TryWrite(at + 64, frame);
        _txDriver.Post((at, VirtioNetHeader.Size, false), (at + 64, (uint)frame.Length, false));
    }

    [Fact]
    public void Offers_features_by_backend_and_reports_mac_and_link_in_config()
    {
        (VirtioNet plain, _) = Create(false, VirtioFeatures.Version1);
        (VirtioNet offload, _) = Create(true, VirtioFeatures.Version1);
        Assert.Equal(0UL, plain.DeviceFeatures & (VirtioNet.FeatureCsum | VirtioNet.FeatureHostTso4 | VirtioNet.FeatureGuestTso4));
        Assert.NotEqual(0UL, plain.DeviceFeatures & VirtioNet.FeatureMrgRxbuf);
        ulong offloads = VirtioNet.FeatureCsum | VirtioNet.FeatureGuestCsum | VirtioNet.FeatureHostTso4 | VirtioNet.FeatureGuestTso4;
        Assert.Equal(offloads, offload.DeviceFeatures & offloads);
        Span<byte> config = stackalloc byte[12];
        plain.ReadConfig(0, config);
        Assert.Equal(Mac, config[..6].ToArray());
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(config[6..]));   // LINK_UP
        Assert.Equal(1500, BinaryPrimitives.ReadUInt16LittleEndian(config[10..])); // mtu
    }

    [Fact]
    public void Transmit_gathers_header_and_frame_into_one_record()
    {
        (VirtioNet net, FakeNetBackend backend) = Create(false, VirtioFeatures.Version1 | VirtioNet.FeatureMrgRxbuf);
        byte[] frame = Frame(1514, 1);
        PostTx(default, frame);
        Assert.True(net.Process(VirtioNet.TxQueue, _tx, _memory));
        List<byte[]> records = backend.Drain();
        Assert.Single(records);
        Assert.Equal(frame, records[0].AsSpan(VirtioNetHeader.Size).ToArray());
        Assert.Equal(1, _txDriver.UsedIdx);
        Assert.Equal(1, net.FramesTransmitted);
    }

    [Fact]
    public void Hostile_transmit_headers_and_sizes_are_dropped_and_counted_and_the_queue_goes_on()
    {
        (VirtioNet net, FakeNetBackend backend) = Create(true, VirtioFeatures.Version1 | VirtioNet.FeatureCsum | VirtioNet.FeatureHostTso4);
        byte[] frame = Frame(200, 7);
        // 1. a chain shorter than the header plus an Ethernet header
        _memory.GetSpan(TxBuffers, 16).Clear();
        _txDriver.Post((TxBuffers, 16, false));
        // 2. an unknown GSO type
        PostTx(new VirtioNetHeader { Flags = 1, GsoType = 0x33, GsoSize = 100, CsumStart = 34, CsumOffset = 16 }, frame, TxBuffers + 0x1000);
        // 3. a checksum position past the end of the frame
        PostTx(new VirtioNetHeader { Flags = 1, CsumStart = 190, CsumOffset = 16 }, frame, TxBuffers + 0x2000);
        // 4. TSO without NEEDS_CSUM, and with gso_size 0
        PostTx(new VirtioNetHeader { GsoType = VirtioNetHeader.GsoTcpV4, GsoSize = 1448 }, frame, TxBuffers + 0x3000);
        PostTx(new VirtioNetHeader { Flags = 1, GsoType = VirtioNetHeader.GsoTcpV4, CsumStart = 34, CsumOffset = 16 }, frame, TxBuffers + 0x4000);
        // 5. undefined flag bits
        PostTx(new VirtioNetHeader { Flags = 0x80 }, frame, TxBuffers + 0x5000);
        // 6. a frame larger than 65550 bytes (spread over two descriptors)
        new VirtioNetHeader().Write(_memory.GetSpan(TxBuffers + 0x10000, VirtioNetHeader.Size));
        _txDriver.Post((TxBuffers + 0x10000, VirtioNetHeader.Size, false), (TxBuffers + 0x20000, 40000, false), (TxBuffers + 0x40000, 30000, false));
        // 7. finally a good one
        PostTx(new VirtioNetHeader { Flags = 1, CsumStart = 34, CsumOffset = 16 }, frame, TxBuffers + 0x6000);

        Assert.True(net.Process(VirtioNet.TxQueue, _tx, _memory));
        Assert.Equal(8, _txDriver.UsedIdx); // every chain went back to the driver
        Assert.Equal(7, net.TxDropped);
        List<byte[]> records = backend.Drain();
        Assert.Single(records);
        Assert.Equal(frame, records[0].AsSpan(VirtioNetHeader.Size).ToArray());
        Assert.Equal(QueueError.None, _tx.Broken);
    }

    [Fact]
    public void Checksum_offload_from_the_guest_is_refused_when_not_negotiated()
    {
        (VirtioNet net, FakeNetBackend backend) = Create(true, VirtioFeatures.Version1);
        PostTx(new VirtioNetHeader { Flags = 1, CsumStart = 34, CsumOffset = 16 }, Frame(100, 3));
        net.Process(VirtioNet.TxQueue, _tx, _memory);
        Assert.Empty(backend.Drain());
        Assert.Equal(NetHeaderError.BadFlags, net.LastTxError);
    }

    [Fact]
    public void A_64k_segment_spans_mergeable_buffers_and_appears_at_once()
    {
        ulong features = VirtioFeatures.Version1 | VirtioNet.FeatureMrgRxbuf | VirtioNet.FeatureGuestCsum | VirtioNet.FeatureGuestTso4;
        (VirtioNet net, FakeNetBackend backend) = Create(true, features);
        for (int i = 0; i < 40; i++)
        {
            _rxDriver.Post((RxBuffers + (ulong)i * 4096, 4096, true));
        }
        byte[] frame = Frame(65000, 9);
        var header = new VirtioNetHeader { Flags = 1, GsoType = VirtioNetHeader.GsoTcpV4, GsoSize = 1448, HdrLen = 66, CsumStart = 34, CsumOffset = 16 };
        Assert.True(backend.Port!.Deliver(header, frame));
        Assert.True(net.Process(VirtioNet.RxQueue, _rx, _memory));

        int buffers = (65000 + VirtioNetHeader.Size + 4095) / 4096; // 16
        Assert.Equal(buffers, _rxDriver.UsedIdx);
        VirtioNetHeader seen = VirtioNetHeader.Read(_memory.GetSpan(RxBuffers, VirtioNetHeader.Size));
        Assert.Equal(buffers, seen.NumBuffers);
        Assert.Equal(VirtioNetHeader.GsoTcpV4, seen.GsoType);
        Assert.Equal(1448, seen.GsoSize);
        byte[] got = new byte[VirtioNetHeader.Size + frame.Length];
        int at = 0;
        for (int i = 0; i < buffers; i++)
        {
            (uint id, uint len) = _rxDriver.UsedEntry(i);
            Assert.Equal((uint)i, id);
            _memory.GetSpan(RxBuffers + id * 4096UL, (int)len).CopyTo(got.AsSpan(at));
            at += (int)len;
        }
        Assert.Equal(got.Length, at);
        Assert.Equal(frame, got.AsSpan(VirtioNetHeader.Size).ToArray());
        Assert.Equal(1, net.FramesReceived);
    }

    [Fact]
    public void A_frame_waits_for_buffers_then_arrives_when_the_driver_posts_enough()
    {
        (VirtioNet net, FakeNetBackend backend) = Create(false, VirtioFeatures.Version1 | VirtioNet.FeatureMrgRxbuf);
        byte[] frame = Frame(3000, 5);
        backend.Port!.Deliver(frame);
        Assert.False(net.Process(VirtioNet.RxQueue, _rx, _memory)); // no buffers at all
        _rxDriver.Post((RxBuffers, 1536, true));
        Assert.False(net.Process(VirtioNet.RxQueue, _rx, _memory)); // one is not enough: it is kept, not used
        Assert.Equal(0, _rxDriver.UsedIdx);
        _rxDriver.Post((RxBuffers + 0x1000, 1536, true));
        Assert.True(net.Process(VirtioNet.RxQueue, _rx, _memory));
        Assert.Equal(2, _rxDriver.UsedIdx);
        Assert.Equal((0u, 1536u), _rxDriver.UsedEntry(0));
        Assert.Equal(3000u + VirtioNetHeader.Size - 1536u, _rxDriver.UsedEntry(1).Len);
        Assert.Equal(frame.AsSpan(0, 1536 - VirtioNetHeader.Size).ToArray(), _memory.GetSpan(RxBuffers + VirtioNetHeader.Size, 1536 - VirtioNetHeader.Size).ToArray());
    }

    [Fact]
    public void Partial_checksums_are_finished_for_a_guest_without_guest_csum()
    {
        (VirtioNet net, FakeNetBackend backend) = Create(true, VirtioFeatures.Version1 | VirtioNet.FeatureMrgRxbuf);
        // Ethernet + 20-byte IPv4 + 8-byte UDP + payload; the "pseudo-header" sum placed in the field is 0x1234.
        byte[] frame = Frame(100, 1);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(34 + 6), 0x1234);
        _rxDriver.Post((RxBuffers, 2048, true));
        backend.Port!.Deliver(new VirtioNetHeader { Flags = 1, CsumStart = 34, CsumOffset = 6 }, frame);
        net.Process(VirtioNet.RxQueue, _rx, _memory);
        Span<byte> got = _memory.GetSpan(RxBuffers, VirtioNetHeader.Size + frame.Length);
        Assert.Equal(0, got[0]); // NEEDS_CSUM cleared
        // A receiver adds the pseudo-header sum (what the field held) to the sum over [csum_start, end): all ones.
        Assert.Equal(0xFFFF, NetChecksum.Fold(NetChecksum.Sum(got[(VirtioNetHeader.Size + 34)..], 0x1234)));
    }

    [Fact]
    public void Oversized_and_runt_host_frames_are_refused_and_gso_without_guest_tso_is_dropped()
    {
        (VirtioNet net, FakeNetBackend backend) = Create(true, VirtioFeatures.Version1 | VirtioNet.FeatureMrgRxbuf | VirtioNet.FeatureGuestCsum);
        Assert.False(backend.Port!.Deliver(new byte[VirtioNetHeader.MaxFrame + 1]));
        Assert.False(backend.Port.Deliver(new byte[10]));
        _rxDriver.Post((RxBuffers, 4096, true));
        backend.Port.Deliver(new VirtioNetHeader { Flags = 1, GsoType = VirtioNetHeader.GsoTcpV4, GsoSize = 1448, CsumStart = 34, CsumOffset = 16 }, Frame(3000, 1));
        backend.Port.Deliver(Frame(60, 2));
        Assert.True(net.Process(VirtioNet.RxQueue, _rx, _memory));
        Assert.Equal(1, _rxDriver.UsedIdx);
        Assert.Equal(60u + VirtioNetHeader.Size, _rxDriver.UsedEntry(0).Len);
        Assert.Equal(3, net.RxDropped);
    }

    [Fact]
    public void A_full_transmit_ring_holds_the_chain_until_the_backend_drains_it()
    {
        (VirtioNet net, FakeNetBackend backend) = Create(false, VirtioFeatures.Version1);
        int kicks = 0;
        net.ProcessQueue = q =>
        {
            kicks++;
            net.Process(q, _tx, _memory);
        };
        byte[] frame = Frame(60000, 4);
        const int Frames = VirtioNet.RingBytes / 60000 + 5;
        _memory.TryWrite(TxBuffers + 64, frame);
        for (int i = 0; i < Frames; i++)
        {
            new VirtioNetHeader().Write(_memory.GetSpan(TxBuffers, VirtioNetHeader.Size));
            _txDriver.Post((TxBuffers, VirtioNetHeader.Size, false), (TxBuffers + 64, (uint)frame.Length, false));
        }
        net.Process(VirtioNet.TxQueue, _tx, _memory);
        long first = net.FramesTransmitted;
        Assert.True(first < Frames); // they do not all fit in the ring
        int drained = 0;
        for (int round = 0; round < 10 && drained < Frames; round++)
        {
            drained += backend.Drain().Count; // releasing space kicks the queue again
        }
        Assert.True(kicks > 0);
        Assert.Equal(Frames, net.FramesTransmitted);
        Assert.Equal(Frames, drained);
        Assert.Equal(Frames, _txDriver.UsedIdx);
    }
}
