using System.Buffers.Binary;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Devices.Virtio.Vsock;

/// <summary>
/// What the vsock device asks of the host side (the muxer owning the Unix sockets). Every call is made while the
/// device holds its lock: implementations only record or signal, never block and never call back into the device
/// synchronously.
/// </summary>
public interface IVsockHost
{
    /// <summary>The guest wants host port <see cref="VsockConnection.LocalPort"/>: connect, then call <see cref="VirtioVsock.HostConnected"/>.</summary>
    void Connect(VsockConnection connection);

    /// <summary>The guest accepted a host-initiated connection (RESPONSE): start moving bytes.</summary>
    void Established(VsockConnection connection);

    /// <summary>Something changed (data, credit, shutdown): look at the connection again.</summary>
    void Wake(VsockConnection connection);

    /// <summary>The connection is gone (RST either way or device reset): close its host socket.</summary>
    void Close(VsockConnection connection);
}

/// <summary>
/// virtio-vsock (virtio 1.2, section 5.10): device ID 19, queues rx (0), tx (1) and event (2), configuration
/// {guest_cid u64}. Only stream sockets are offered (no feature bits beyond VERSION_1, so STREAM is implied). The
/// device terminates every guest connection itself: the host side is always CID 2 and the per-connection state lives
/// in <see cref="VsockConnection"/>; host sockets are the <see cref="IVsockHost"/>'s business.
/// <para>Everything the guest puts on the tx queue is hostile: short headers, lengths beyond the chain or beyond
/// 64 KiB, wrong CIDs, unknown types and ops are counted and dropped or answered with RST; packets for ports with no
/// connection get RST (5.10.6.4); the number of connections is bounded.</para>
/// <para>Locking: the transport calls <see cref="Process"/> under its lock; host-side events arrive on other threads.
/// Connection state is guarded by this device's own lock (always taken after the transport's, never before), and
/// RX buffers are only ever filled by <see cref="Process"/> for queue 0, reached through
/// <see cref="VirtioDevice.ProcessQueue"/> so that used-ring writes and interrupts have one path.</para>
/// </summary>
public sealed class VirtioVsock : VirtioDevice
{
    public const int RxQueue = 0, TxQueue = 1, EventQueue = 2;
    public const int DefaultMaxConnections = 256;
    public const int DefaultBufAlloc = 256 * 1024;
    public const int ToGuestBuffer = 128 * 1024;
    private const int MaxPendingResets = 128;
    /// <summary>Host-initiated connections get local ports from here up, as Firecracker does (2^30).</summary>
    public const uint FirstHostPort = 1u << 30;

    private readonly Lock _sync = new();
    private readonly IVsockHost _host;
    private readonly Func<long> _clock;
    private readonly Dictionary<(uint Local, uint Peer), VsockConnection> _connections = [];
    private readonly Queue<VsockConnection> _ready = new();
    private readonly Queue<VsockHeader> _resets = new();
    private readonly DescriptorSegment[] _segments = new DescriptorSegment[SplitQueue.MaxSize];
    private readonly byte[] _payload = new byte[Vsock.MaxPayload];
    private readonly byte[] _header = new byte[VsockHeader.Size];
    private uint _nextHostPort = FirstHostPort;
    private bool _stopped;

    public VirtioVsock(ulong guestCid, IVsockHost host, int maxConnections = DefaultMaxConnections, int bufAlloc = DefaultBufAlloc, Func<long>? clock = null)
    {
        if (guestCid <= Vsock.HostCid || guestCid >= 0xFFFF_FFFF)
        {
            throw new ArgumentOutOfRangeException(nameof(guestCid), "a guest CID must be 3 to 2^32-2");
        }
        GuestCid = guestCid;
        _host = host;
        MaxConnections = maxConnections;
        BufAlloc = bufAlloc;
        _clock = clock ?? (() => Environment.TickCount64);
    }

    public ulong GuestCid { get; }

    public int MaxConnections { get; }

    public int BufAlloc { get; }

    public override ushort DeviceType => 19;

    public override ulong DeviceFeatures => VirtioFeatures.Version1;

    public override int QueueCount => 3;

    /// <summary>TX packets refused as malformed (short header, lying or oversized len).</summary>
    public long MalformedPackets { get; private set; }

    /// <summary>TX packets dropped without reply (wrong source CID, RST for nothing, reset queue full).</summary>
    public long DroppedPackets { get; private set; }

    public long ResetsSent { get; private set; }

    /// <summary>Connections refused because <see cref="MaxConnections"/> were open.</summary>
    public long RefusedConnections { get; private set; }

    /// <summary>RX buffers too small for a header, returned unused.</summary>
    public long BadRxBuffers { get; private set; }

    public int ConnectionCount
    {
        get
        {
            lock (_sync)
            {
                return _connections.Count;
            }
        }
    }

    public override void ReadConfig(int offset, Span<byte> data)
    {
        // struct virtio_vsock_config { le64 guest_cid; } (5.10.4)
        Span<byte> image = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(image, GuestCid);
        ReadImage(image, offset, data);
    }

    public override void Reset()
    {
        base.Reset();
        lock (_sync)
        {
            foreach (VsockConnection c in _connections.Values)
            {
                c.MarkClosed();
                _host.Close(c);
            }
            _connections.Clear();
            _ready.Clear();
            _resets.Clear();
        }
    }

    /// <summary>
    /// Detaches the device from guest memory for good (the machine is going away): once this returns no queue is
    /// touched again, whatever host threads still call in.
    /// </summary>
    public void Stop()
    {
        lock (_sync)
        {
            _stopped = true;
            _connections.Clear();
            _ready.Clear();
            _resets.Clear();
        }
    }

    public override bool Process(int index, SplitQueue queue, GuestMemory memory) => index switch
    {
        RxQueue => FillRx(queue, memory),
        TxQueue => DrainTx(queue, memory),
        // The event queue only carries TRANSPORT_RESET (after a snapshot restore); we keep the guest's buffers.
        _ => false,
    };

    // ---- host side entry points (any thread) -----------------------------------------------------------------------

    /// <summary>
    /// A host client asked for guest port <paramref name="guestPort"/>: allocates a local port and queues a REQUEST.
    /// Returns null when too many connections are open.
    /// </summary>
    public VsockConnection? OpenFromHost(uint guestPort, object? hostState, ReadOnlySpan<byte> earlyData = default)
    {
        VsockConnection? connection;
        lock (_sync)
        {
            if (_connections.Count >= MaxConnections)
            {
                RefusedConnections++;
                return null;
            }
            uint local = _nextHostPort;
            int guard = 0;
            while (InUseLocally(local) && guard++ < 4096)
            {
                local = NextHostPort(local);
            }
            _nextHostPort = NextHostPort(local);
            connection = new VsockConnection(local, guestPort, hostInitiated: true, BufAlloc, ToGuestBuffer, _clock()) { Host = hostState };
            connection.AddEarlyHostData(earlyData);
            _connections.Add((local, guestPort), connection);
            Schedule(connection);
        }
        ProcessQueue(RxQueue);
        return connection;
    }

    /// <summary>The host socket for a guest-initiated connection is connected (<paramref name="hostState"/>) or failed (null).</summary>
    /// <returns>False if the connection vanished meanwhile (the caller then closes its socket).</returns>
    public bool HostConnected(VsockConnection connection, object? hostState)
    {
        lock (_sync)
        {
            if (!IsOpen(connection))
            {
                return false;
            }
            connection.Host = hostState;
            connection.OnHostConnected(hostState is not null);
            Schedule(connection);
        }
        ProcessQueue(RxQueue);
        return hostState is not null;
    }

    /// <summary>The segment of the connection's to-guest buffer the host socket may be read into now (empty: wait).</summary>
    public Memory<byte> HostReadBuffer(VsockConnection connection, out bool finished)
    {
        lock (_sync)
        {
            finished = !IsOpen(connection) || connection.HostReadFinished;
            int allowance = finished ? 0 : connection.HostReadAllowance;
            Memory<byte> segment = connection.ToGuest.WritableMemory;
            return segment[..Math.Min(allowance, segment.Length)];
        }
    }

    /// <summary>The host socket delivered <paramref name="count"/> bytes into the segment from <see cref="HostReadBuffer"/>; 0 is EOF.</summary>
    public void HostReceived(VsockConnection connection, int count)
    {
        lock (_sync)
        {
            if (!IsOpen(connection))
            {
                return;
            }
            if (count > 0)
            {
                connection.OnHostData(count);
            }
            else
            {
                connection.OnHostEof();
            }
            Schedule(connection);
        }
        ProcessQueue(RxQueue);
    }

    /// <summary>What to write to the host socket next; <paramref name="shutdownWrite"/> once nothing more will come.</summary>
    public ReadOnlyMemory<byte> HostWriteData(VsockConnection connection, out bool shutdownWrite, out bool finished)
    {
        lock (_sync)
        {
            finished = !IsOpen(connection) || connection.HostWriteFinished;
            shutdownWrite = !finished && connection.HostWriteShutdownDue;
            return finished || connection.State != VsockConnectionState.Established ? ReadOnlyMemory<byte>.Empty : connection.ToHost.ReadableMemory;
        }
    }

    public void HostWritten(VsockConnection connection, int count)
    {
        lock (_sync)
        {
            if (!IsOpen(connection))
            {
                return;
            }
            connection.OnHostWritten(count);
            Schedule(connection);
        }
        ProcessQueue(RxQueue);
    }

    public void HostWriteShut(VsockConnection connection)
    {
        lock (_sync)
        {
            if (!IsOpen(connection))
            {
                return;
            }
            connection.OnHostWriteShut();
            Schedule(connection);
        }
        ProcessQueue(RxQueue);
    }

    /// <summary>The host socket failed (reset, broken pipe): reset the guest's end.</summary>
    public void HostFailed(VsockConnection connection)
    {
        lock (_sync)
        {
            if (!IsOpen(connection))
            {
                return;
            }
            connection.Abort();
            Schedule(connection);
        }
        ProcessQueue(RxQueue);
    }

    /// <summary>Applies connect and close timeouts; the host side calls it periodically.</summary>
    public void Tick()
    {
        bool any = false;
        lock (_sync)
        {
            long now = _clock();
            foreach (VsockConnection c in _connections.Values)
            {
                c.Tick(now);
                if (c.HasPacket && !c.Scheduled)
                {
                    Schedule(c);
                    any = true;
                }
            }
        }
        if (any)
        {
            ProcessQueue(RxQueue);
        }
    }

    // ---- queues ------------------------------------------------------------------------------------------------------

    private bool FillRx(SplitQueue queue, GuestMemory memory)
    {
        bool used = false;
        List<VsockConnection>? closed = null;
        lock (_sync)
        {
            if (_stopped)
            {
                return false;
            }
            long now = _clock();
            while (true)
            {
                while (_ready.Count > 0 && !_ready.Peek().HasPacket)
                {
                    _ready.Dequeue().Scheduled = false;
                }
                if (_resets.Count == 0 && _ready.Count == 0)
                {
                    break;
                }
                if (!queue.TryPop(_segments, out ushort head, out int count, out _, out long writable))
                {
                    break; // the guest kicks the rx queue when it adds buffers
                }
                used = true;
                var cursor = new ChainCursor(_segments.AsSpan(0, count), memory);
                if (writable < VsockHeader.Size)
                {
                    BadRxBuffers++;
                    queue.PushUsed(head, 0);
                    continue;
                }
                VsockHeader header;
                int payloadLength = 0;
                if (_resets.Count > 0)
                {
                    header = _resets.Dequeue();
                }
                else
                {
                    VsockConnection c = _ready.Dequeue();
                    int room = (int)Math.Min(writable - VsockHeader.Size, _payload.Length);
                    if (!c.TryTakePacket(GuestCid, now, _payload.AsSpan(0, room), out header, out payloadLength))
                    {
                        // Only data was due and this buffer holds none: give it back empty, try the next.
                        BadRxBuffers++;
                        queue.PushUsed(head, 0);
                        _ready.Enqueue(c);
                        continue;
                    }
                    if (header.Op == VsockOp.Rst)
                    {
                        ResetsSent++;
                    }
                    if (c.State == VsockConnectionState.Closed)
                    {
                        c.Scheduled = false;
                        _connections.Remove((c.LocalPort, c.PeerPort));
                        (closed ??= []).Add(c);
                    }
                    else if (c.HasPacket)
                    {
                        _ready.Enqueue(c); // round robin between connections
                    }
                    else
                    {
                        c.Scheduled = false;
                    }
                    if (payloadLength > 0)
                    {
                        _host.Wake(c); // room in its to-guest buffer: the host socket may be read again
                    }
                }
                header.Write(_header);
                cursor.Write(_header);
                cursor.Write(_payload.AsSpan(0, payloadLength));
                queue.PushUsed(head, cursor.Written);
            }
            if (closed is not null)
            {
                foreach (VsockConnection c in closed)
                {
                    _host.Close(c);
                }
            }
        }
        return used;
    }

    private bool DrainTx(SplitQueue queue, GuestMemory memory)
    {
        bool used = false;
        bool rxDue = false;
        lock (_sync)
        {
            if (_stopped)
            {
                return false;
            }
            while (queue.TryPop(_segments, out ushort head, out int count, out long readable, out _))
            {
                used = true;
                var cursor = new ChainCursor(_segments.AsSpan(0, count), memory);
                rxDue |= HandleTx(ref cursor, readable);
                queue.PushUsed(head, 0);
            }
        }
        if (rxDue)
        {
            ProcessQueue(RxQueue);
        }
        return used;
    }

    /// <summary>One packet from the guest. Returns true if something may now be due on the rx queue.</summary>
    private bool HandleTx(ref ChainCursor cursor, long readable)
    {
        if (readable < VsockHeader.Size)
        {
            MalformedPackets++;
            return false;
        }
        cursor.Read(_header);
        VsockHeader.TryRead(_header, out VsockHeader h);
        if (h.SrcCid != GuestCid)
        {
            // Spoofed source: a reply would go nowhere sensible.
            DroppedPackets++;
            return false;
        }
        _connections.TryGetValue((h.DstPort, h.SrcPort), out VsockConnection? connection);
        bool lying = h.Len > Vsock.MaxPayload || h.Len > readable - VsockHeader.Size;
        if (lying || h.Type != Vsock.TypeStream || h.DstCid != Vsock.HostCid)
        {
            if (lying)
            {
                MalformedPackets++;
            }
            if (connection is not null)
            {
                connection.Abort();
                Schedule(connection);
                return true;
            }
            return QueueReset(h);
        }
        ReadOnlySpan<byte> payload = [];
        if (h.Op == VsockOp.Rw && h.Len > 0)
        {
            Span<byte> buffer = _payload.AsSpan(0, (int)h.Len);
            cursor.Read(buffer);
            payload = buffer;
        }
        if (connection is null)
        {
            return h.Op == VsockOp.Request ? OpenFromGuest(h) : QueueReset(h);
        }
        VsockConnectionState before = connection.State;
        connection.OnGuestPacket(h, payload);
        if (connection.State == VsockConnectionState.Closed)
        {
            // The guest reset it: nothing more to tell the guest, close the host side.
            _connections.Remove((connection.LocalPort, connection.PeerPort));
            _host.Close(connection);
            return false;
        }
        if (before == VsockConnectionState.GuestConnecting && connection.State == VsockConnectionState.Established)
        {
            _host.Established(connection);
        }
        _host.Wake(connection);
        Schedule(connection);
        return connection.HasPacket;
    }

    private bool OpenFromGuest(in VsockHeader h)
    {
        if (_connections.Count >= MaxConnections)
        {
            RefusedConnections++;
            return QueueReset(h);
        }
        var connection = new VsockConnection(h.DstPort, h.SrcPort, hostInitiated: false, BufAlloc, ToGuestBuffer, _clock());
        connection.OnPeerCredit(h.BufAlloc, h.FwdCnt);
        _connections.Add((h.DstPort, h.SrcPort), connection);
        _host.Connect(connection);
        return false;
    }

    /// <summary>Answers a packet that belongs to no connection with RST (never a RST with a RST).</summary>
    private bool QueueReset(in VsockHeader h)
    {
        if (h.Op == VsockOp.Rst)
        {
            DroppedPackets++;
            return false;
        }
        if (_resets.Count >= MaxPendingResets)
        {
            DroppedPackets++;
            return false;
        }
        _resets.Enqueue(new VsockHeader(Vsock.HostCid, GuestCid, h.DstPort, h.SrcPort, 0, Vsock.TypeStream, VsockOp.Rst, 0, 0, 0));
        ResetsSent++;
        return true;
    }

    private void Schedule(VsockConnection connection)
    {
        if (!connection.Scheduled && connection.HasPacket)
        {
            connection.Scheduled = true;
            _ready.Enqueue(connection);
        }
    }

    private bool IsOpen(VsockConnection connection) =>
        connection.State != VsockConnectionState.Closed
        && _connections.TryGetValue((connection.LocalPort, connection.PeerPort), out VsockConnection? c) && ReferenceEquals(c, connection);

    private bool InUseLocally(uint port)
    {
        foreach ((uint local, _) in _connections.Keys)
        {
            if (local == port)
            {
                return true;
            }
        }
        return false;
    }

    private static uint NextHostPort(uint port) => port == uint.MaxValue - 1 ? FirstHostPort : port + 1;
}
