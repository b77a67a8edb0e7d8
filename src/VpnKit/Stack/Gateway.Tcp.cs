using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>
/// TCP at the gateway, as smoltcp's <c>iface/interface/tcp.rs</c> is to its sockets: the table of
/// <see cref="TcpSocket"/>s, dispatch of each guest segment to its socket, admission of new flows (the table and
/// connects-in-flight bounds), the RST for segments that belong to no connection (RFC 9293 §3.10.7.1), and the wire
/// format of what sockets send. Everything a connection does (RFC 9293's state machine, windows, retransmission,
/// timers) is the socket's.
/// </summary>
internal sealed partial class Gateway : ITcpSocketHost
{
    private readonly Dictionary<FlowKey, TcpSocket> _tcp = [];
    private readonly List<TcpSocket> _due = [];
    private int _pending;
    private long _nextDeadline = long.MaxValue;
    private ushort _nextEphemeral = 49152;

    /// <summary>Largest TCP payload per emitted segment with offload (IPv4 total length is 16 bits); 0 = the MSS.</summary>
    public int MaxSegment => _o.SegmentationOffload ? 65535 - 20 - 60 : 0;

    public int TcpConnectionCount => _tcp.Count;
    public int PendingConnects => _pending;

    /// <summary>When <see cref="OnTimer"/> next has work (absolute ms), or long.MaxValue.</summary>
    public long NextDeadline => _nextDeadline;

    int ITcpSocketHost.Mss => _o.Mss;
    GatewayCounters ITcpSocketHost.Counters => Counters;
    IFlowHandler ITcpSocketHost.Flows => _flows;

    private void HandleTcp(MacAddress srcMac, Ipv4Packet ip)
    {
        if (!TcpSegment.TryParse(ip.Payload, out TcpSegment seg))
        {
            Counters.Malformed++;
            return;
        }
        uint src = ip.Source;
        uint dst = ip.Destination;
        if (!_trusted && !seg.ChecksumValid(src, dst))
        {
            Counters.BadChecksum++;
            return;
        }
        var key = new FlowKey(src, seg.SourcePort, dst, seg.DestinationPort);
        if (_tcp.TryGetValue(key, out TcpSocket? c))
        {
            c.Process(seg, _now);
            return;
        }
        TcpFlags f = seg.Flags;
        if ((f & TcpFlags.Rst) != 0)
        {
            return;
        }
        if ((f & (TcpFlags.Syn | TcpFlags.Ack | TcpFlags.Fin)) == TcpFlags.Syn && seg.SourcePort != 0 && seg.DestinationPort != 0
            && src != 0 && dst != _o.Broadcast && (dst >> 28) < 0xE && (dst == _o.GatewayIp || dst == _o.HostIp || !_o.InSubnet(dst)))
        {
            Accept(srcMac, key, src, dst, seg);
            return;
        }
        Counters.TcpNoConnection++;
        ResetFor(srcMac, src, dst, seg);
    }

    /// <summary>RFC 9293 §3.10.7.1: a segment for no connection gets a RST that the sender will accept.</summary>
    private void ResetFor(MacAddress mac, uint src, uint dst, TcpSegment seg)
    {
        if ((seg.Flags & TcpFlags.Ack) != 0)
        {
            EmitControl(mac, dst, seg.DestinationPort, src, seg.SourcePort, seg.Acknowledgment, 0, TcpFlags.Rst, 0);
        }
        else
        {
            uint segLen = (uint)seg.Payload.Length + ((seg.Flags & TcpFlags.Syn) != 0 ? 1u : 0) + ((seg.Flags & TcpFlags.Fin) != 0 ? 1u : 0);
            EmitControl(mac, dst, seg.DestinationPort, src, seg.SourcePort, 0, seg.Sequence + segLen, TcpFlags.Rst | TcpFlags.Ack, 0);
        }
    }

    private void Accept(MacAddress mac, FlowKey key, uint src, uint dst, TcpSegment seg)
    {
        if (_tcp.Count >= _o.MaxTcpConnections)
        {
            Counters.TcpTableFull++;
            ResetFor(mac, src, dst, seg);
            return;
        }
        if (_pending >= _o.MaxPendingConnects)
        {
            Counters.TcpPendingFull++;
            return; // The guest retransmits its SYN; new host connects start as old ones finish.
        }
        TcpSocket c = TcpSocket.Listen(this, key, mac, src, dst, seg, InitialSequence(key), _o.TcpBufferSize);
        c.ConnectPending = true;
        _pending++;
        _tcp[key] = c;
        _flows.TcpConnectRequested(c);
    }

    /// <summary>RFC 6528: a keyed hash of the 4-tuple plus a 4 µs clock.</summary>
    private uint InitialSequence(FlowKey key)
    {
        ulong x = key.A ^ _o.IsnSecret;
        x = Mix(x + key.B);
        return (uint)x + (uint)(_now * 250);
    }

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>
    /// Opens a connection to a guest (port publishing). The SYN goes out now, or once the guest answers ARP.
    /// Returns null if the table is full or no source port is free.
    /// </summary>
    public TcpSocket? OpenToGuest(uint guestIp, ushort guestPort, uint sourceIp, long now)
    {
        _now = now;
        if (_tcp.Count >= _o.MaxTcpConnections)
        {
            return null;
        }
        for (int tries = 0; tries < 16384; tries++)
        {
            ushort port = _nextEphemeral;
            _nextEphemeral = _nextEphemeral == 65535 ? (ushort)49152 : (ushort)(_nextEphemeral + 1);
            var key = new FlowKey(guestIp, guestPort, sourceIp, port);
            if (_tcp.ContainsKey(key))
            {
                continue;
            }
            _arp.TryGetValue(guestIp, out MacAddress mac);
            TcpSocket c = TcpSocket.Connect(this, key, mac, guestIp, guestPort, sourceIp, port, InitialSequence(key), _o.TcpBufferSize, now);
            _tcp[key] = c;
            c.SendFirstSyn(now);
            return c;
        }
        return null;
    }

    /// <summary>
    /// Runs every socket timer that is due (delayed ACKs, retransmissions, zero-window probes, TIME-WAIT expiry) and
    /// the unsolicited Router Advertisements.
    /// </summary>
    public void OnTimer(long now)
    {
        _now = now;
        if (now < _nextDeadline)
        {
            return;
        }
        long next = long.MaxValue;
        _due.Clear();
        foreach (TcpSocket c in _tcp.Values)
        {
            if (c.HasTimers)
            {
                _due.Add(c);
            }
        }
        foreach (TcpSocket c in _due)
        {
            if (c.Removed)
            {
                continue;
            }
            if (c.NextDeadline <= now)
            {
                c.OnTimer(now);
            }
            if (!c.Removed)
            {
                next = Math.Min(next, c.NextDeadline);
            }
        }
        _due.Clear();
        _nextDeadline = Math.Min(next, OnIpv6Timer(now));
    }

    // ---- ITcpSocketHost: what sockets ask of the gateway ----

    void ITcpSocketHost.WakeAt(long deadline)
    {
        if (deadline < _nextDeadline)
        {
            _nextDeadline = deadline;
        }
    }

    bool ITcpSocketHost.TryResolve(uint guestIp, out MacAddress mac) => _arp.TryGetValue(guestIp, out mac);

    void ITcpSocketHost.RequestAddress(uint guestIp) => SendArpRequest(guestIp);

    void ITcpSocketHost.ConnectFinished(TcpSocket socket)
    {
        if (socket.ConnectPending)
        {
            socket.ConnectPending = false;
            _pending--;
        }
    }

    void ITcpSocketHost.Detach(TcpSocket socket)
    {
        ((ITcpSocketHost)this).ConnectFinished(socket);
        _tcp.Remove(socket.Key);
    }

    void ITcpSocketHost.SendBareSegment(TcpSocket s, uint seq, uint ack, TcpFlags flags) =>
        EmitControl(s.GuestMac, s.RemoteIp, s.RemotePort, s.GuestIp, s.GuestPort, seq, ack, flags, 0);

    /// <summary>Writes a socket's segment (Ethernet, IPv4, TCP with its options and payload) and sends it.</summary>
    void ITcpSocketHost.Transmit(TcpSocket s, in TcpHeaderFields h, int sendOffset, int length)
    {
        const int tcpAt = EthernetFrame.HeaderLength + Ipv4Packet.MinHeaderLength;
        Span<byte> f = _tx;
        int optLen = h.HasOptions ? h.Options.Write(f.Slice(tcpAt + TcpSegment.MinHeaderLength)) : 0;
        int hl = TcpSegment.HeaderLengthFor(optLen);
        if (length > 0)
        {
            s.CopySendBytes(sendOffset, f.Slice(tcpAt + hl, length));
        }
        TcpSegment.Write(f.Slice(tcpAt, hl + length), hl, s.RemotePort, s.GuestPort, h.Sequence, h.Acknowledgment, h.Flags, h.Window, s.RemoteIp, s.GuestIp,
            _o.SegmentationOffload);
        int ipLen = Ipv4Packet.MinHeaderLength + hl + length;
        WriteIpAndEthernet(f, s.GuestMac, s.RemoteIp, s.GuestIp, IpProtocol.Tcp, ipLen);
        EmitTcp(f.Slice(0, EthernetFrame.HeaderLength + ipLen), length > s.SendMss ? s.SendMss : 0);
    }

    private void EmitTcp(ReadOnlySpan<byte> frame, int segmentSize)
    {
        if (_o.SegmentationOffload)
        {
            Counters.FramesOut++;
            _sink.SendOffloaded(frame, segmentSize);
        }
        else
        {
            Emit(frame);
        }
    }

    private void EmitControl(MacAddress mac, uint src, ushort srcPort, uint dst, ushort dstPort, uint seq, uint ack, TcpFlags flags, ushort window)
    {
        const int tcpAt = EthernetFrame.HeaderLength + Ipv4Packet.MinHeaderLength;
        Span<byte> f = _tx;
        TcpSegment.Write(f.Slice(tcpAt, TcpSegment.MinHeaderLength), TcpSegment.MinHeaderLength, srcPort, dstPort, seq, ack, flags, window, src, dst, _o.SegmentationOffload);
        int ipLen = Ipv4Packet.MinHeaderLength + TcpSegment.MinHeaderLength;
        WriteIpAndEthernet(f, mac, src, dst, IpProtocol.Tcp, ipLen);
        EmitTcp(f.Slice(0, EthernetFrame.HeaderLength + ipLen), 0);
    }
}
