using System.Buffers.Binary;
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

    /// <summary>
    /// Largest TCP payload per emitted segment when the link segments the family (IPv4's total length, and so the
    /// smaller, bounds both: 16 bits less the IPv4 and largest TCP headers); 0 = the MSS.
    /// </summary>
    public int MaxSegment(bool ipv4) => Offloads(ipv4) ? 65535 - 20 - 60 : 0;

    private bool Offloads(bool ipv4) => _o.SegmentationOffload.HasFlag(ipv4 ? TcpOffload.Ipv4 : TcpOffload.Ipv6);

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
        bool admissible = src != 0 && dst != _o.Broadcast && (dst >> 28) < 0xE && (dst == _o.GatewayIp || dst == _o.HostIp || !_o.InSubnet(dst));
        HandleSegment(srcMac, IpAddr.V4(src), IpAddr.V4(dst), seg, admissible);
    }

    /// <summary>
    /// One checked segment of either family: to its socket, or a SYN that may open a flow to
    /// <paramref name="admissible"/> destinations, or a RST (RFC 9293 §3.10.7.1).
    /// </summary>
    private void HandleSegment(MacAddress srcMac, IpAddr src, IpAddr dst, TcpSegment seg, bool admissible)
    {
        var key = new FlowKey(src, seg.SourcePort, dst, seg.DestinationPort);
        if (_tcp.TryGetValue(key, out TcpSocket? c))
        {
            if (!Lost(c, seg.Flags))
            {
                c.Process(seg, _now);
            }
            return;
        }
        TcpFlags f = seg.Flags;
        if ((f & TcpFlags.Rst) != 0)
        {
            return;
        }
        if ((f & (TcpFlags.Syn | TcpFlags.Ack | TcpFlags.Fin)) == TcpFlags.Syn && seg.SourcePort != 0 && seg.DestinationPort != 0 && admissible)
        {
            Accept(srcMac, key, src, dst, seg);
            return;
        }
        Counters.TcpNoConnection++;
        ResetFor(srcMac, src, dst, seg);
    }

    /// <summary>RFC 9293 §3.10.7.1: a segment for no connection gets a RST that the sender will accept.</summary>
    private void ResetFor(MacAddress mac, IpAddr src, IpAddr dst, TcpSegment seg)
    {
        if (!src.IsV4 && !TakeErrorToken())
        {
            return; // IPv6 RSTs share the ICMPv6 error budget (a guest cannot make the gateway answer at line rate).
        }
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

    private void Accept(MacAddress mac, FlowKey key, IpAddr src, IpAddr dst, TcpSegment seg)
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
        ulong x = Mix((ulong)key.Guest ^ (ulong)(key.Guest >> 64) ^ _o.IsnSecret);
        x = Mix(x + (ulong)key.Remote + (ulong)(key.Remote >> 64) + key.Ports);
        return (uint)x + (uint)(_now * 250);
    }

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>
    /// Opens a connection to a guest (port publishing). The SYN goes out now, or once the guest answers ARP (or, over
    /// IPv6, a Neighbor Solicitation). Returns null if the table is full or no source port is free.
    /// </summary>
    public TcpSocket? OpenToGuest(uint guestIp, ushort guestPort, uint sourceIp, long now) =>
        OpenToGuest(IpAddr.V4(guestIp), guestPort, IpAddr.V4(sourceIp), now);

    /// <inheritdoc cref="OpenToGuest(uint, ushort, uint, long)"/>
    public TcpSocket? OpenToGuest(IpAddr guestIp, ushort guestPort, IpAddr sourceIp, long now)
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
            if (!((ITcpSocketHost)this).TryResolve(guestIp, out MacAddress mac) && !guestIp.IsV4)
            {
                _guest6.TryGetMac(guestIp.Value, out mac); // known from its DAD only: it has sent nothing from it yet
            }
            TcpSocket c = TcpSocket.Connect(this, key, mac, guestIp, guestPort, sourceIp, port, InitialSequence(key), _o.TcpBufferSize, now);
            _tcp[key] = c;
            c.SendFirstSyn(now);
            return c;
        }
        return null;
    }

    /// <summary>
    /// Where a published port opens to, and from where (docs/vpnkit.md, "Port publishing"): the first guest's IPv4
    /// address from the host alias 192.168.65.2, or, for a port published on the host's [::1]
    /// (<paramref name="preferIpv6"/>), the first guest's IPv6 address (<see cref="GuestAddresses6.TryGetPreferred"/>)
    /// from the host alias's IPv6 address. Until the gateway has seen an IPv6 address of that guest (or with IPv6 off)
    /// the IPv4 pair is used, so the publish works as it did before IPv6.
    /// </summary>
    public (IpAddr Guest, IpAddr Source) PublishTarget(bool preferIpv6)
    {
        if (preferIpv6 && _o.Ipv6 && FirstGuestMac() is MacAddress mac && _guest6.TryGetPreferred(mac, out UInt128 guest6))
        {
            return (IpAddr.V6(guest6), IpAddr.V6(_host6));
        }
        return (IpAddr.V4(_o.FirstGuestIp), IpAddr.V4(_o.HostIp));
    }

    /// <summary>
    /// The MAC of the guest that publishes reach: the holder of the first guest address (ARP, else its DHCP lease), else
    /// the only guest with IPv6 addresses (a namespace configured statically may not have spoken IPv4 yet).
    /// </summary>
    private MacAddress? FirstGuestMac()
    {
        if (_arp.TryGetValue(_o.FirstGuestIp, out MacAddress mac) || _leasedIps.TryGetValue(_o.FirstGuestIp, out mac) || _guest6.TryGetOnlyGuest(out mac))
        {
            return mac;
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

    bool ITcpSocketHost.TryResolve(IpAddr guestIp, out MacAddress mac)
    {
        if (guestIp.IsV4)
        {
            return _arp.TryGetValue(guestIp.Ipv4, out mac);
        }
        bool known = _neighbours.TryGetValue(guestIp.Value, out Neighbour n);
        mac = n.Mac;
        return known;
    }

    void ITcpSocketHost.RequestAddress(IpAddr guestIp)
    {
        if (guestIp.IsV4)
        {
            SendArpRequest(guestIp.Ipv4);
        }
        else
        {
            SendNeighborSolicitation(guestIp.Value);
        }
    }

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

    void ITcpSocketHost.SendBareSegment(TcpSocket s, uint seq, uint ack, TcpFlags flags)
    {
        if (!Lost(s, flags))
        {
            EmitControl(s.GuestMac, s.RemoteIp, s.RemotePort, s.GuestIp, s.GuestPort, seq, ack, flags, 0);
        }
    }

    /// <summary>
    /// loss_pct's one hook (<see cref="ISegmentLoss"/>): whether the socket's segment, the guest's on dispatch or the
    /// socket's own on transmit, is lost here. A RST is never lost: nothing would repeat it.
    /// </summary>
    private static bool Lost(TcpSocket s, TcpFlags flags) => s.Loss is { } loss && (flags & TcpFlags.Rst) == 0 && loss.Lose();

    /// <summary>
    /// Writes a socket's segment (Ethernet, the IP header of its family, TCP with its options and payload) and sends it.
    /// Segments of a family the link offloads may leave large with a partial checksum for the link to finish; the
    /// others leave finished and at most one MSS.
    /// </summary>
    void ITcpSocketHost.Transmit(TcpSocket s, in TcpHeaderFields h, int sendOffset, int length)
    {
        if (Lost(s, h.Flags))
        {
            return;
        }
        int tcpAt = EthernetFrame.HeaderLength + (s.GuestIp.IsV4 ? Ipv4Packet.MinHeaderLength : Ipv6Packet.HeaderLength);
        Span<byte> f = _tx;
        int optLen = h.HasOptions ? h.Options.Write(f.Slice(tcpAt + TcpSegment.MinHeaderLength)) : 0;
        optLen += h.Sack.Write(f.Slice(tcpAt + TcpSegment.MinHeaderLength + optLen));
        int hl = TcpSegment.HeaderLengthFor(optLen);
        if (length > 0)
        {
            s.CopySendBytes(sendOffset, f.Slice(tcpAt + hl, length));
        }
        int frame = WriteTcpHeaders(f, s.GuestMac, s.RemoteIp, s.RemotePort, s.GuestIp, s.GuestPort, h.Sequence, h.Acknowledgment, h.Flags, h.Window, hl, length);
        EmitTcp(f.Slice(0, frame), s.GuestIp.IsV4, length > s.SendMss ? s.SendMss : 0);
    }

    /// <summary>
    /// Writes the TCP header (its options and payload already in place after it), then the IP header of the
    /// addresses' family and the Ethernet header; returns the frame's length.
    /// </summary>
    private int WriteTcpHeaders(Span<byte> f, MacAddress mac, IpAddr src, ushort srcPort, IpAddr dst, ushort dstPort, uint seq, uint ack, TcpFlags flags,
        ushort window, int headerLength, int payloadLength)
    {
        int tcpLength = headerLength + payloadLength;
        if (src.IsV4)
        {
            const int tcpAt = EthernetFrame.HeaderLength + Ipv4Packet.MinHeaderLength;
            TcpSegment.Write(f.Slice(tcpAt, tcpLength), headerLength, srcPort, dstPort, seq, ack, flags, window, src.Ipv4, dst.Ipv4, Offloads(ipv4: true));
            WriteIpAndEthernet(f, mac, src.Ipv4, dst.Ipv4, IpProtocol.Tcp, Ipv4Packet.MinHeaderLength + tcpLength);
            return tcpAt + tcpLength;
        }
        Span<byte> t = f.Slice(Ip6At, tcpLength);
        // The IPv4 checksum Write would compute is skipped (partial) and the IPv6 one written over it: one pass over the
        // data, or with offload the folded IPv6 pseudo-header sum (RFC 8200 §8.1) alone, for the link to finish.
        TcpSegment.Write(t, headerLength, srcPort, dstPort, seq, ack, flags, window, 0, 0, partialChecksum: true);
        ushort sum = Offloads(ipv4: false)
            ? (ushort)~Checksum.Finish(Checksum.PseudoHeader6(src.Value, dst.Value, IpProtocol.Tcp, tcpLength))
            : Checksum6(t, 16, src.Value, dst.Value, IpProtocol.Tcp);
        BinaryPrimitives.WriteUInt16BigEndian(t.Slice(16), sum);
        WriteIpv6AndEthernet(f, mac, src.Value, dst.Value, IpProtocol.Tcp, 64, tcpLength);
        return Ip6At + tcpLength;
    }

    private void EmitTcp(ReadOnlySpan<byte> frame, bool v4, int segmentSize)
    {
        if (Offloads(v4))
        {
            Counters.FramesOut++;
            _sink.SendOffloaded(frame, segmentSize);
        }
        else
        {
            Emit(frame);
        }
    }

    private void EmitControl(MacAddress mac, IpAddr src, ushort srcPort, IpAddr dst, ushort dstPort, uint seq, uint ack, TcpFlags flags, ushort window)
    {
        int frame = WriteTcpHeaders(_tx, mac, src, srcPort, dst, dstPort, seq, ack, flags, window, TcpSegment.MinHeaderLength, 0);
        EmitTcp(_tx.AsSpan(0, frame), src.IsV4, 0);
    }
}
