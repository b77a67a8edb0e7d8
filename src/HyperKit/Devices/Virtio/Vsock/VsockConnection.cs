using Kit.Buffers;

namespace Kit.HyperKit.Devices.Virtio.Vsock;

public enum VsockConnectionState
{
    /// <summary>The guest sent REQUEST; the host socket is being connected.</summary>
    HostConnecting,
    /// <summary>A host client asked for a guest port; our REQUEST is queued or sent, awaiting RESPONSE or RST.</summary>
    GuestConnecting,
    Established,
    /// <summary>RST sent or received: the connection is gone and its host socket must be closed.</summary>
    Closed,
}

/// <summary>
/// One vsock stream between a host-side port (<see cref="LocalPort"/>) and a guest port (<see cref="PeerPort"/>):
/// the connection state machine with both directions' credit accounting (virtio 1.2, 5.10.6.3). Pure: no I/O, no
/// threads, no clock (time comes in as milliseconds); the owner serializes every call.
/// <para>Guest to host: the guest may send at most <see cref="BufAlloc"/> - (its tx_cnt - our fwd_cnt) bytes, and
/// those land in <see cref="ToHost"/>, whose capacity is exactly <see cref="BufAlloc"/>; a guest that sends more is
/// reset. fwd_cnt advances as the host socket accepts bytes, and a CREDIT_UPDATE goes out when the guest's view of
/// our free space drops below half.</para>
/// <para>Host to guest: bytes wait in <see cref="ToGuest"/> (bounded) and go out as RW packets only while the guest's
/// credit, peer_buf_alloc - (tx_cnt - peer_fwd_cnt), allows; the host socket is read only as far as that credit
/// reaches, so a slow guest back-pressures the host peer.</para>
/// <para>Shutdown is half-close both ways: host EOF becomes SHUTDOWN(SEND) after the buffered bytes; the guest's
/// SHUTDOWN(SEND) becomes shutdown(SHUT_WR) on the host socket after its buffered bytes. When the guest has shut
/// both directions we answer RST (5.10.6.6); when both directions are finished otherwise we send SHUTDOWN(RCV|SEND)
/// and reset the connection ourselves if the guest's RST does not come within <see cref="CloseTimeoutMs"/>.</para>
/// </summary>
public sealed class VsockConnection
{
    public const long ConnectTimeoutMs = 5000, CloseTimeoutMs = 3000;

    private uint _rxCnt;          // bytes received from the guest
    private uint _fwdCnt;         // of those, bytes the host socket accepted
    private uint _lastFwdCntSent; // fwd_cnt in the last packet we sent
    private uint _txCnt;          // bytes sent to the guest
    private uint _peerBufAlloc, _peerFwdCnt;
    private uint _guestShutdown;
    private bool _hostEof, _shutSendSent, _hostWriteShut, _fullShutdownSent;
    private bool _needRequest, _needResponse, _needCreditUpdate, _needRst, _needFullShutdown;
    private long _deadline;

    public VsockConnection(uint localPort, uint peerPort, bool hostInitiated, int bufAlloc, int toGuestCapacity, long nowMs)
    {
        LocalPort = localPort;
        PeerPort = peerPort;
        HostInitiated = hostInitiated;
        BufAlloc = (uint)bufAlloc;
        ToHost = new ByteRing(bufAlloc);
        ToGuest = new ByteRing(toGuestCapacity);
        State = hostInitiated ? VsockConnectionState.GuestConnecting : VsockConnectionState.HostConnecting;
        _needRequest = hostInitiated;
        _deadline = nowMs + ConnectTimeoutMs;
    }

    /// <summary>The host-side vsock port (dst_port of the guest's packets).</summary>
    public uint LocalPort { get; }

    /// <summary>The guest's port (src_port of its packets).</summary>
    public uint PeerPort { get; }

    public bool HostInitiated { get; }

    public VsockConnectionState State { get; private set; }

    /// <summary>Our receive buffer size, advertised as buf_alloc.</summary>
    public uint BufAlloc { get; }

    /// <summary>Guest bytes waiting for the host socket.</summary>
    public ByteRing ToHost { get; }

    /// <summary>Host bytes waiting for guest credit and RX buffers.</summary>
    public ByteRing ToGuest { get; }

    /// <summary>The host side's per-connection state (its socket); opaque here.</summary>
    public object? Host { get; set; }

    /// <summary>Set by the device while the connection sits in its queue of connections with packets to send.</summary>
    internal bool Scheduled { get; set; }

    public long BytesFromGuest => _rxCnt;

    public long BytesToGuest => _txCnt;

    /// <summary>How many more bytes the guest accepts now (never negative, even if the guest reports nonsense).</summary>
    public long PeerCredit => Math.Max(0L, (long)_peerBufAlloc - (uint)(_txCnt - _peerFwdCnt));

    private bool GuestStoppedReceiving => (_guestShutdown & Vsock.ShutdownRecv) != 0;

    private bool GuestStoppedSending => (_guestShutdown & Vsock.ShutdownSend) != 0;

    // ---- host side -------------------------------------------------------------------------------------------------

    /// <summary>How many bytes the host socket may be read for now: buffer room that guest credit can also cover.</summary>
    public int HostReadAllowance
    {
        get
        {
            if (State != VsockConnectionState.Established || _hostEof || GuestStoppedReceiving)
            {
                return 0;
            }
            long room = Math.Min(ToGuest.Free, PeerCredit - ToGuest.Count);
            return (int)Math.Max(0, room);
        }
    }

    /// <summary>True when the host socket will deliver nothing more to the guest (EOF seen, guest not reading, closed).</summary>
    public bool HostReadFinished => State == VsockConnectionState.Closed || _hostEof || GuestStoppedReceiving;

    /// <summary>True once the host socket's write side should be shut: the guest sent SHUTDOWN(SEND) and its bytes are out.</summary>
    public bool HostWriteShutdownDue => State == VsockConnectionState.Established && GuestStoppedSending && ToHost.Count == 0 && !_hostWriteShut;

    public bool HostWriteFinished => State == VsockConnectionState.Closed || _hostWriteShut;

    /// <summary>Bytes from the host socket (the owner already placed them in <see cref="ToGuest"/>'s writable segment).</summary>
    public void OnHostData(int count)
    {
        if (State != VsockConnectionState.Closed)
        {
            ToGuest.Commit(count);
        }
    }

    /// <summary>Bytes a host client sent before the connection was accepted (after its CONNECT line).</summary>
    public void AddEarlyHostData(ReadOnlySpan<byte> data) => ToGuest.Write(data);

    /// <summary>The host peer will send nothing more.</summary>
    public void OnHostEof()
    {
        _hostEof = true;
        CheckFinished();
    }

    /// <summary>The host socket accepted <paramref name="count"/> bytes from the front of <see cref="ToHost"/>.</summary>
    public void OnHostWritten(int count)
    {
        if (State == VsockConnectionState.Closed)
        {
            return;
        }
        count = Math.Min(count, ToHost.Count);
        ToHost.Consume(count);
        _fwdCnt += (uint)count;
        // The guest believes it may still send BufAlloc - (rx_cnt - last fwd_cnt we told it); tell it more before that
        // runs out so it never stalls waiting (Linux 6.1 does not ask with CREDIT_REQUEST).
        uint guestViewFree = BufAlloc - (_rxCnt - _lastFwdCntSent);
        if (_fwdCnt != _lastFwdCntSent && guestViewFree < BufAlloc / 2)
        {
            _needCreditUpdate = true;
        }
        CheckFinished();
    }

    public void OnHostWriteShut()
    {
        _hostWriteShut = true;
        CheckFinished();
    }

    /// <summary>The host socket for a guest-initiated connection is connected (or failed).</summary>
    public void OnHostConnected(bool ok)
    {
        if (State != VsockConnectionState.HostConnecting)
        {
            return;
        }
        if (ok)
        {
            State = VsockConnectionState.Established;
            _needResponse = true;
        }
        else
        {
            _needRst = true;
        }
    }

    /// <summary>The host socket failed or the host side gave up: reset the guest's end.</summary>
    public void Abort()
    {
        if (State != VsockConnectionState.Closed)
        {
            _needRst = true;
        }
    }

    /// <summary>The device reset: the connection is gone without a word to the guest.</summary>
    public void MarkClosed() => State = VsockConnectionState.Closed;

    /// <summary>Credit announced in a packet handled outside <see cref="OnGuestPacket"/> (the REQUEST that opens it).</summary>
    public void OnPeerCredit(uint bufAlloc, uint fwdCnt)
    {
        _peerBufAlloc = bufAlloc;
        _peerFwdCnt = fwdCnt;
    }

    /// <summary>Connect and close timeouts; time in milliseconds on any monotonic clock.</summary>
    public void Tick(long nowMs)
    {
        bool waiting = State is VsockConnectionState.HostConnecting or VsockConnectionState.GuestConnecting || _fullShutdownSent;
        if (waiting && State != VsockConnectionState.Closed && nowMs >= _deadline)
        {
            _needRst = true;
        }
    }

    // ---- guest side ------------------------------------------------------------------------------------------------

    /// <summary>
    /// A packet from the guest for this connection (type and addressing already checked). RW payload comes in
    /// <paramref name="payload"/>. Returns false when the guest broke the protocol; the connection is then reset.
    /// </summary>
    public bool OnGuestPacket(in VsockHeader header, ReadOnlySpan<byte> payload)
    {
        if (State == VsockConnectionState.Closed)
        {
            return true;
        }
        // Every packet carries the sender's credit (5.10.6.3).
        _peerBufAlloc = header.BufAlloc;
        _peerFwdCnt = header.FwdCnt;
        switch (header.Op)
        {
            case VsockOp.Response when State == VsockConnectionState.GuestConnecting:
                State = VsockConnectionState.Established;
                return true;
            case VsockOp.Rst:
                State = VsockConnectionState.Closed;
                return true;
            case VsockOp.Shutdown when State == VsockConnectionState.Established:
                _guestShutdown |= header.Flags & Vsock.ShutdownBoth;
                CheckFinished();
                return true;
            case VsockOp.Rw when State == VsockConnectionState.Established && !GuestStoppedSending:
                if (payload.Length > ToHost.Free)
                {
                    // More than the credit we gave: a broken or hostile driver.
                    _needRst = true;
                    return false;
                }
                ToHost.Write(payload);
                _rxCnt += (uint)payload.Length;
                return true;
            case VsockOp.CreditUpdate:
                return true;
            case VsockOp.CreditRequest:
                _needCreditUpdate = true;
                return true;
            default:
                // REQUEST on an open connection, RESPONSE we did not ask for, data before RESPONSE or after
                // SHUTDOWN(SEND), unknown ops.
                _needRst = true;
                return false;
        }
    }

    /// <summary>True when <see cref="TryTakePacket"/> has something to send.</summary>
    public bool HasPacket =>
        State != VsockConnectionState.Closed
        && (_needRst || _needRequest || _needResponse || _needFullShutdown || _needCreditUpdate || DataSendable || ShutSendDue);

    private bool DataSendable =>
        State == VsockConnectionState.Established && !GuestStoppedReceiving && ToGuest.Count > 0 && PeerCredit > 0 && !_shutSendSent;

    private bool ShutSendDue =>
        State == VsockConnectionState.Established && _hostEof && !_shutSendSent && (ToGuest.Count == 0 || GuestStoppedReceiving);

    /// <summary>
    /// Produces the next packet for the guest (addressed from the host's CID to <paramref name="guestCid"/>), with RW
    /// payload copied into <paramref name="payload"/> (its length is the most the RX buffer takes). False if nothing
    /// fits.
    /// </summary>
    public bool TryTakePacket(ulong guestCid, long nowMs, Span<byte> payload, out VsockHeader header, out int payloadLength)
    {
        payloadLength = 0;
        VsockOp op;
        uint flags = 0;
        if (State == VsockConnectionState.Closed)
        {
            header = default;
            return false;
        }
        if (_needRst)
        {
            op = VsockOp.Rst;
            State = VsockConnectionState.Closed;
        }
        else if (_needRequest)
        {
            op = VsockOp.Request;
            _needRequest = false;
        }
        else if (_needResponse)
        {
            op = VsockOp.Response;
            _needResponse = false;
        }
        else if (DataSendable && payload.Length > 0)
        {
            op = VsockOp.Rw;
            int n = (int)Math.Min(Math.Min(ToGuest.Count, PeerCredit), payload.Length);
            payloadLength = ToGuest.Read(payload[..n]);
            _txCnt += (uint)payloadLength;
        }
        else if (ShutSendDue)
        {
            op = VsockOp.Shutdown;
            flags = Vsock.ShutdownSend;
            _shutSendSent = true;
            CheckFinished();
            if (_needFullShutdown)
            {
                // Both directions finished at once: one SHUTDOWN says it all.
                flags = Vsock.ShutdownBoth;
                MarkFullShutdownSent(nowMs);
            }
        }
        else if (_needFullShutdown)
        {
            op = VsockOp.Shutdown;
            flags = Vsock.ShutdownBoth;
            MarkFullShutdownSent(nowMs);
        }
        else if (_needCreditUpdate)
        {
            op = VsockOp.CreditUpdate;
        }
        else
        {
            header = default;
            return false;
        }
        _needCreditUpdate = false;
        _lastFwdCntSent = _fwdCnt;
        header = new VsockHeader(Vsock.HostCid, guestCid, LocalPort, PeerPort, (uint)payloadLength, Vsock.TypeStream, op, flags, BufAlloc, _fwdCnt);
        return true;
    }

    private void MarkFullShutdownSent(long nowMs)
    {
        _needFullShutdown = false;
        _fullShutdownSent = true;
        _deadline = nowMs + CloseTimeoutMs;
    }

    private void CheckFinished()
    {
        if (State != VsockConnectionState.Established || _needRst)
        {
            return;
        }
        bool guestDirectionDone = GuestStoppedSending && ToHost.Count == 0 && _hostWriteShut;
        if (_guestShutdown == Vsock.ShutdownBoth && guestDirectionDone)
        {
            // The guest closed: answer its full SHUTDOWN with RST once its last bytes reached the host (5.10.6.6).
            _needRst = true;
        }
        else if (guestDirectionDone && _shutSendSent && !_fullShutdownSent)
        {
            _needFullShutdown = true;
        }
    }
}
