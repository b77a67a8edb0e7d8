using Kit.Buffers;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>RFC 9293 §3.3.2 states, plus Connecting: a SYN seen, the host connect still in flight.</summary>
internal enum TcpState
{
    Connecting,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
    Closed,
}

/// <summary>A TCP 4-tuple as the guest sees it, packed into two words for a cheap dictionary key.</summary>
internal readonly struct FlowKey(uint guestIp, ushort guestPort, uint remoteIp, ushort remotePort) : IEquatable<FlowKey>
{
    public readonly ulong A = ((ulong)guestIp << 32) | remoteIp;
    public readonly uint B = ((uint)guestPort << 16) | remotePort;

    public bool Equals(FlowKey other) => A == other.A && B == other.B;
    public override bool Equals(object? obj) => obj is FlowKey k && Equals(k);
    public override int GetHashCode() => HashCode.Combine(A, B);
}

/// <summary>
/// One guest TCP connection terminated by the gateway: the transmission control block of RFC 9293 §3.3.1 and its
/// two bounded buffers. Only the engine mutates it, under the driver's lock; the NAT reads its public properties.
/// </summary>
internal sealed class TcpConnection
{
    internal TcpConnection(FlowKey key, uint guestIp, ushort guestPort, uint remoteIp, ushort remotePort, MacAddress guestMac, int bufferSize)
    {
        Key = key;
        GuestIp = guestIp;
        GuestPort = guestPort;
        RemoteIp = remoteIp;
        RemotePort = remotePort;
        GuestMac = guestMac;
        Send = ByteRing.Pooled(bufferSize);
        Receive = ByteRing.Pooled(bufferSize);
    }

    internal readonly FlowKey Key;
    public uint GuestIp { get; }
    public ushort GuestPort { get; }
    public uint RemoteIp { get; }
    public ushort RemotePort { get; }
    internal MacAddress GuestMac;

    public TcpState State { get; internal set; }
    /// <summary>Set for the NAT's own use (its socket and pumps).</summary>
    public object? Tag { get; set; }

    /// <summary>Host → guest bytes: unacknowledged and not yet sent. Byte 0 has sequence number <see cref="SendBase"/>.</summary>
    internal readonly ByteRing Send;
    /// <summary>Guest → host bytes not yet read by the host. Its free space is the advertised window.</summary>
    internal readonly ByteRing Receive;

    // Send sequence space (RFC 9293 §3.3.1).
    internal uint Iss;
    internal uint SndUna;
    internal uint SndNxt;
    internal uint SendBase;
    internal uint SndWnd;
    internal uint SndWl1;
    internal uint SndWl2;
    internal uint MaxSndWnd;
    internal int SndShift;
    /// <summary>RFC 7323 window scaling is in use (both SYNs carried the option).</summary>
    internal bool Scaling;
    internal int SendMss;
    internal uint Cwnd;
    internal uint Ssthresh = uint.MaxValue;
    internal int DupAcks;
    internal bool FinQueued;
    internal bool FinSent;
    internal uint FinSeq;

    // Receive sequence space.
    internal uint Irs;
    internal uint RcvNxt;
    internal int RcvShift;
    internal uint LastAdvertisedEdge;
    internal uint LastAckSent;
    internal bool AckPending;
    internal int SegmentsSinceAck;
    public bool GuestFinished { get; internal set; }
    public bool IsReset { get; internal set; }
    /// <summary>Removed from the engine's table; only the unread receive buffer remains.</summary>
    public bool Removed { get; internal set; }
    internal bool WantWritable;

    /// <summary>The host side has more bytes ready: a last segment shorter than a full one waits for them.</summary>
    internal bool HoldTail;
    /// <summary>A zero-window probe byte is outstanding.</summary>
    internal bool Probing;

    // Timers (absolute milliseconds on the caller's clock; 0 = not armed).
    internal long RtoDeadline;
    internal long PersistDeadline;
    internal long DelayedAckDeadline;
    internal long TimeWaitDeadline;
    internal int Rto = 1000;
    internal int Backoff;
    internal int Srtt;
    internal int RttVar;
    internal uint RttSeq;
    internal long RttStart;
    internal bool RttTiming;
    internal int Retries;

    /// <summary>Bytes the guest has sent that the host has not read yet.</summary>
    public int Readable => Receive.Count;

    /// <summary>Room for host data right now.</summary>
    public int Writable => FinQueued || IsReset ? 0 : Send.Free;

    /// <summary>
    /// Host data may be queued now. False once the host closed its writing side, or the engine may no longer carry
    /// data for it. In SYN-RECEIVED (the host connect succeeded, the guest's ACK is not in yet) data is queued and
    /// leaves when the handshake completes, so a server that speaks first (a banner) loses nothing.
    /// </summary>
    public bool CanWrite => !FinQueued && !IsReset && !Removed && State is TcpState.Established or TcpState.CloseWait or TcpState.SynReceived;
}
