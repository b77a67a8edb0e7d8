using Kit.HyperKit.Devices;
using Kit.HyperKit.Devices.Pci;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Vsock;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Tests;

/// <summary>Counts MSI messages; safe to signal from host I/O threads.</summary>
internal sealed class CountingMsi : IMsiSink
{
    private int _count;

    public int Count => Volatile.Read(ref _count);

    public void Signal(ulong address, uint data) => Interlocked.Increment(ref _count);
}

/// <summary>Records what the device asked of the host side.</summary>
internal sealed class RecordingVsockHost : IVsockHost
{
    public List<VsockConnection> Connects { get; } = [];

    public List<VsockConnection> Establishes { get; } = [];

    public List<VsockConnection> Closes { get; } = [];

    public int Wakes { get; private set; }

    public void Connect(VsockConnection connection) => Connects.Add(connection);

    public void Established(VsockConnection connection) => Establishes.Add(connection);

    public void Wake(VsockConnection connection) => Wakes++;

    public void Close(VsockConnection connection) => Closes.Add(connection);
}

/// <summary>
/// A scripted virtio-vsock guest driver over fake guest memory and the real virtio-pci transport: it brings the
/// device up with rx/tx/event queues, keeps rx buffers posted (Linux 6.1's shape: a 44-byte header descriptor and a
/// 4 KiB data descriptor), sends packets as header + payload chains, and collects what the device delivers.
/// </summary>
internal sealed class VsockTestGuest : IDisposable
{
    public const ulong Cid = 3;
    private const ushort QueueSize = 64;
    private const int RxBuffers = 32;
    private const ulong RxArea = 0x10000, RxStride = 0x1100, TxArea = 0x80000, TxStride = 0x11000;
    private const int TxSlots = 16;

    private readonly Lock _lock = new();
    private readonly MmioBus _mmio = new();
    private readonly PciBus _bus = new();
    private readonly VirtioPciDriver _driver;
    private readonly QueueDriver _rx, _tx, _event;
    private readonly Dictionary<uint, ulong> _rxByHead = [];
    private int _rxSeen;
    private int _txSlot;

    public VsockTestGuest(IVsockHost host, int maxConnections = VirtioVsock.DefaultMaxConnections, int bufAlloc = VirtioVsock.DefaultBufAlloc, Func<long>? clock = null)
    {
        Memory = new GuestMemory(0x20_0000);
        Device = new VirtioVsock(Cid, host, maxConnections, bufAlloc, clock);
        _mmio.AttachPci(_bus);
        Transport = new VirtioPciDevice(Device, Memory, Msi, _bus.AllocateBar(VirtioPciDevice.BarLength));
        int slot = _bus.Add(Transport);
        _driver = new VirtioPciDriver(_bus, _mmio, slot);
        _rx = new QueueDriver(Memory, QueueSize, 0x1000, 0x2000, 0x3000);
        _tx = new QueueDriver(Memory, QueueSize, 0x4000, 0x5000, 0x6000);
        _event = new QueueDriver(Memory, 8, 0x7000, 0x8000, 0x9000);
    }

    public GuestMemory Memory { get; }

    public VirtioVsock Device { get; }

    public VirtioPciDevice Transport { get; }

    public CountingMsi Msi { get; } = new();

    /// <summary>Packets the device delivered, in order.</summary>
    public List<(VsockHeader Header, byte[] Payload)> Received { get; } = [];

    public void BringUp(bool postRx = true)
    {
        Assert.True(_driver.Negotiate(VirtioFeatures.Version1));
        _driver.SetupQueue(0, _rx, 1);
        _driver.SetupQueue(1, _tx, 2);
        _driver.SetupQueue(2, _event, 3);
        for (int v = 0; v < 4; v++)
        {
            _driver.ProgramVector(v, 0xFEE0_0000, (uint)(0x40 + v));
        }
        _driver.EnableMsix();
        _driver.DriverOk();
        if (postRx)
        {
            PostRx(RxBuffers);
        }
    }

    public ulong ConfigCid()
    {
        ulong lo = _driver.ReadMmio32(_driver.DeviceCfg);
        ulong hi = _driver.ReadMmio32(_driver.DeviceCfg + 4);
        return lo | (hi << 32);
    }

    /// <summary>Posts <paramref name="count"/> rx buffers and kicks the rx queue.</summary>
    public void PostRx(int count)
    {
        lock (_lock)
        {
            for (int i = 0; i < count; i++)
            {
                PostOneRx();
            }
        }
        _driver.Kick(0);
    }

    private void PostOneRx()
    {
        for (int probe = 0; probe < RxBuffers; probe++)
        {
            ulong addr = RxArea + RxStride * (ulong)probe;
            if (!_rxByHead.ContainsValue(addr))
            {
                ushort head = _rx.Post((addr, VsockHeader.Size, true), (addr + VsockHeader.Size, 4096, true));
                _rxByHead[head] = addr;
                return;
            }
        }
    }

    /// <summary>Collects newly used rx buffers into <see cref="Received"/>, reposts them; returns how many arrived.</summary>
    public int Poll()
    {
        int got = 0;
        lock (_lock)
        {
            while (_rxSeen != _rx.UsedIdx)
            {
                (uint id, uint len) = _rx.UsedEntry(_rxSeen);
                _rxSeen = (ushort)(_rxSeen + 1);
                if (!_rxByHead.Remove(id, out ulong addr))
                {
                    throw new InvalidOperationException($"device returned rx head {id} that was not posted");
                }
                Assert.True(len >= VsockHeader.Size, $"rx buffer returned with {len} bytes");
                byte[] raw = Memory.GetSpan(addr, (int)len).ToArray();
                Assert.True(VsockHeader.TryRead(raw, out VsockHeader h));
                Assert.Equal(h.Len + (uint)VsockHeader.Size, len);
                Received.Add((h, raw[VsockHeader.Size..]));
                PostOneRx();
                got++;
            }
        }
        if (got > 0)
        {
            _driver.Kick(0);
        }
        return got;
    }

    /// <summary>Sends one packet from the guest (src = our CID) as a header descriptor plus a payload descriptor.</summary>
    public void Send(VsockOp op, uint srcPort, uint dstPort, ReadOnlySpan<byte> payload = default, uint flags = 0,
        uint bufAlloc = 64 * 1024, uint fwdCnt = 0, ulong dstCid = Vsock.HostCid, ushort type = Vsock.TypeStream, uint? len = null, ulong srcCid = Cid)
    {
        var h = new VsockHeader(srcCid, dstCid, srcPort, dstPort, len ?? (uint)payload.Length, type, op, flags, bufAlloc, fwdCnt);
        byte[] header = new byte[VsockHeader.Size];
        h.Write(header);
        SendRaw(header, payload);
    }

    /// <summary>Posts raw readable bytes (a header, then optionally a payload descriptor) on the tx queue and kicks it.</summary>
    public void SendRaw(ReadOnlySpan<byte> first, ReadOnlySpan<byte> second = default)
    {
        lock (_lock)
        {
            ulong addr = TxArea + TxStride * (ulong)(_txSlot++ % TxSlots);
            Assert.True(Memory.TryWrite(addr, first));
            if (second.Length > 0)
            {
                Assert.True(Memory.TryWrite(addr + 0x100, second));
                _tx.Post((addr, (uint)first.Length, false), (addr + 0x100, (uint)second.Length, false));
            }
            else
            {
                _tx.Post((addr, (uint)first.Length, false));
            }
        }
        _driver.Kick(1);
    }

    public ushort TxUsedIdx => _tx.UsedIdx;

    /// <summary>Polls until <paramref name="condition"/> holds over <see cref="Received"/> or the timeout passes.</summary>
    public void WaitFor(Func<bool> condition, string what, int timeoutMs = 10_000)
    {
        long end = Environment.TickCount64 + timeoutMs;
        while (true)
        {
            Poll();
            if (condition())
            {
                return;
            }
            if (Environment.TickCount64 > end)
            {
                throw new TimeoutException($"timed out waiting for {what}; received: {Describe()}");
            }
            Thread.Sleep(2);
        }
    }

    public string Describe()
    {
        lock (_lock)
        {
            return string.Join(", ", Received.TakeLast(12).Select(p => $"{p.Header.Op}({p.Header.SrcPort}->{p.Header.DstPort} len {p.Header.Len} flags {p.Header.Flags})"));
        }
    }

    public void Dispose() => Memory.Dispose();
}
