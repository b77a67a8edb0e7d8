using System.Buffers.Binary;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>
/// The pure gateway engine: frames in, frames out, flows handed to the NAT. No sockets, threads or clock:
/// every entry point takes the current time in milliseconds, and <see cref="NextDeadline"/> says when
/// <see cref="OnTimer"/> must be called. Not thread-safe; the driver serialises all calls.
/// Hot paths reuse one transmit buffer and allocate nothing per packet.
/// </summary>
internal sealed partial class Gateway
{
    private readonly GatewayOptions _o;
    private readonly IFrameSink _sink;
    private readonly IFlowHandler _flows;
    private readonly byte[] _tx;
    private readonly Dictionary<uint, MacAddress> _arp = [];
    private readonly Ipv4Reassembly _reassembly = new();
    private readonly Ipv6Reassembly _reassembly6 = new();
    private readonly GuestAddresses6 _guest6;

    /// <summary>Fragmented datagrams given up (timed out, evicted, inconsistent).</summary>
    internal long ReassemblyDropped => _reassembly.Dropped + _reassembly6.Dropped;
    private ushort _ipId;
    private long _now;
    private bool _trusted;
    private int _link;

    public Gateway(GatewayOptions options, IFrameSink sink, IFlowHandler flows)
    {
        _o = options;
        _sink = sink;
        _flows = flows;
        _tx = new byte[EthernetFrame.HeaderLength + (options.SegmentationOffload != TcpOffload.None ? 65535 : Math.Max(options.Mtu, 576)) + 64];
        _dhcpReply = new byte[576];
        _guest6 = new GuestAddresses6(options.Ipv6Prefix);
        InitIpv6();
    }

    public GatewayOptions Options => _o;
    public GatewayCounters Counters { get; } = new();

    /// <summary>
    /// Handles one Ethernet frame from a guest. <paramref name="checksumsTrusted"/>: the link vouches for the frame
    /// (a local kernel's partial checksums with offload), so checksums are not verified. <paramref name="link"/>: which
    /// link the frame came from (the switch's id), so that DHCP leases can be capped per link.
    /// </summary>
    public void Receive(ReadOnlySpan<byte> frame, long now, bool checksumsTrusted = false, int link = 0)
    {
        _now = now;
        _trusted = checksumsTrusted;
        _link = link;
        Counters.FramesIn++;
        if (!EthernetFrame.TryParse(frame, out EthernetFrame eth))
        {
            Counters.Malformed++;
            return;
        }
        MacAddress dst = eth.Destination;
        if (dst != _o.GatewayMac && !dst.IsMulticast)
        {
            Counters.NotForUs++;
            return;
        }
        switch (eth.EtherType)
        {
            case EtherType.Arp:
                HandleArp(eth.Source, eth.Payload);
                break;
            case EtherType.Ipv4:
                HandleIpv4(eth.Source, dst, eth.Payload);
                break;
            case EtherType.Ipv6:
                HandleIpv6(eth.Source, eth.Payload);
                break;
            default:
                Counters.NotForUs++;
                break;
        }
    }

    private void HandleArp(MacAddress srcMac, ReadOnlySpan<byte> p)
    {
        if (!ArpPacket.TryParse(p, out ArpPacket arp))
        {
            Counters.Malformed++;
            return;
        }
        uint sender = arp.SenderIp;
        Learn(sender, arp.SenderMac);
        if (arp.Operation != ArpPacket.OpRequest)
        {
            return;
        }
        uint target = arp.TargetIp;
        // RFC 826: answer for the addresses the gateway owns: itself and the host alias.
        if (target != _o.GatewayIp && target != _o.HostIp)
        {
            return;
        }
        Span<byte> f = _tx.AsSpan(0, EthernetFrame.HeaderLength + ArpPacket.Length);
        EthernetFrame.Write(f, arp.SenderMac, _o.GatewayMac, EtherType.Arp);
        ArpPacket.Write(f.Slice(EthernetFrame.HeaderLength), ArpPacket.OpReply, _o.GatewayMac, target, arp.SenderMac, sender);
        Counters.ArpReplies++;
        Emit(f);
    }

    /// <summary>Learns guest addresses (only inside the subnet, so the table is bounded by the subnet size).</summary>
    private void Learn(uint ip, MacAddress mac)
    {
        if (ip != 0 && ip != _o.GatewayIp && ip != _o.HostIp && ip != _o.Broadcast && _o.InSubnet(ip) && !mac.IsMulticast)
        {
            _arp[ip] = mac;
            NoteAddressInUse(ip, mac);
        }
    }

    private void HandleIpv4(MacAddress srcMac, MacAddress dstMac, ReadOnlySpan<byte> p)
    {
        Ipv4Error err = Ipv4Packet.TryParse(p, out Ipv4Packet ip, verifyChecksum: !_trusted);
        if (err != Ipv4Error.None)
        {
            if (err == Ipv4Error.BadChecksum)
            {
                Counters.BadChecksum++;
            }
            else
            {
                Counters.Malformed++;
            }
            return;
        }
        if (ip.IsFragment)
        {
            // Reassembled (bounded, see Ipv4Reassembly), then handled as one datagram. Its transport checksum was
            // computed by the guest over the whole datagram (no offload across fragments), so it is always verified.
            Counters.Fragments++;
            if (!_reassembly.Add(ip, _now, out ReadOnlySpan<byte> whole))
            {
                return;
            }
            Counters.Reassembled++;
            bool trusted = _trusted;
            _trusted = false;
            HandleIpv4(srcMac, dstMac, whole);
            _trusted = trusted;
            return;
        }
        uint src = ip.Source;
        Learn(src, srcMac);
        switch (ip.Protocol)
        {
            case IpProtocol.Udp:
                HandleUdp(srcMac, ip);
                break;
            case IpProtocol.Tcp:
                if (!dstMac.IsMulticast)
                {
                    HandleTcp(srcMac, ip);
                }
                break;
            case IpProtocol.Icmp:
                if (!dstMac.IsMulticast)
                {
                    HandleIcmp(srcMac, ip);
                }
                break;
            default:
                Counters.NotForUs++;
                break;
        }
    }

    private void HandleIcmp(MacAddress srcMac, Ipv4Packet ip)
    {
        if (!IcmpPacket.TryParse(ip.Payload, out IcmpPacket icmp) || (!_trusted && !icmp.ChecksumValid))
        {
            Counters.Malformed++;
            return;
        }
        if (icmp.Type != IcmpPacket.TypeEchoRequest)
        {
            return;
        }
        uint dst = ip.Destination;
        if (dst == _o.GatewayIp || dst == _o.HostIp)
        {
            // RFC 1122 §3.2.2.6: the reply carries the request's identifier, sequence and data.
            SendIcmpEchoReply(dst, ip.Source, icmp.Identifier, icmp.Sequence, icmp.Payload);
            return;
        }
        if (_o.InSubnet(dst))
        {
            return;
        }
        if (_flows.IcmpEchoRequested(ip.Source, dst, icmp.Identifier, icmp.Sequence, icmp.Payload) == FlowVerdict.Rejected)
        {
            SendProhibited(srcMac, ip);
        }
    }

    /// <summary>
    /// Destination unreachable, communication administratively prohibited (RFC 792, code 13 from RFC 1812 §5.2.7.1),
    /// from the gateway, quoting the guest's packet as far as a 576-byte message allows (RFC 1812 §4.3.2.3): the guest's
    /// kernel finds the socket from the quoted headers and fails it (Linux: EHOSTUNREACH). Rate-limited with the other
    /// errors the gateway sends.
    /// </summary>
    private void SendProhibited(MacAddress mac, Ipv4Packet ip)
    {
        const byte AdministrativelyProhibited = 13;
        if (!TakeErrorToken())
        {
            return;
        }
        int quoted = Math.Min(ip.Bytes.Length, 576 - Ipv4Packet.MinHeaderLength - IcmpPacket.HeaderLength);
        int ipLen = Ipv4Packet.MinHeaderLength + IcmpPacket.HeaderLength + quoted;
        Span<byte> f = _tx.AsSpan(0, EthernetFrame.HeaderLength + ipLen);
        Span<byte> msg = f.Slice(EthernetFrame.HeaderLength + Ipv4Packet.MinHeaderLength);
        ip.Bytes.Slice(0, quoted).CopyTo(msg.Slice(IcmpPacket.HeaderLength));
        IcmpPacket.WriteUnreachable(msg, AdministrativelyProhibited);
        WriteIpAndEthernet(f, mac, _o.GatewayIp, ip.Source, IpProtocol.Icmp, ipLen);
        Counters.Prohibited++;
        Emit(f);
    }

    /// <summary>
    /// Destination unreachable, port unreachable (RFC 792 code 3), from <c>flow.RemoteIp</c>: the host refused a datagram the
    /// guest sent on this flow (its socket got ECONNREFUSED), and UDP passes that up (RFC 1122 §4.1.3.3), so a connected
    /// socket in the guest fails at once. The quote is rebuilt from the flow's 4-tuple and <paramref name="payload"/> (what the
    /// host's kernel gave back of the refused datagram): the guest's kernel finds its socket by the quoted addresses and
    /// ports (RFC 792: "Internet Header + 64 bits of Data"), and a 576-byte message bounds the rest (RFC 1812 §4.3.2.3).
    /// Rate-limited with the other errors the gateway sends; false when not sent (no token, guest unknown).
    /// </summary>
    public bool SendPortUnreachable(in UdpFlow flow, ReadOnlySpan<byte> payload, long now)
    {
        const byte PortUnreachable = 3;
        const int HeadersLength = Ipv4Packet.MinHeaderLength + UdpDatagram.HeaderLength;
        _now = now;
        if (!_arp.TryGetValue(flow.GuestIp, out MacAddress mac) || !TakeErrorToken())
        {
            return false;
        }
        int body = Math.Min(payload.Length, 576 - Ipv4Packet.MinHeaderLength - IcmpPacket.HeaderLength - HeadersLength);
        int ipLen = Ipv4Packet.MinHeaderLength + IcmpPacket.HeaderLength + HeadersLength + body;
        Span<byte> f = _tx.AsSpan(0, EthernetFrame.HeaderLength + ipLen);
        Span<byte> msg = f.Slice(EthernetFrame.HeaderLength + Ipv4Packet.MinHeaderLength);
        Span<byte> quote = msg.Slice(IcmpPacket.HeaderLength, HeadersLength + body);
        payload.Slice(0, body).CopyTo(quote.Slice(HeadersLength));
        UdpDatagram.Write(quote.Slice(Ipv4Packet.MinHeaderLength), flow.GuestPort, flow.RemotePort, flow.GuestIp, flow.RemoteIp);
        Ipv4Packet.Write(quote, quote.Length, 0, 64, IpProtocol.Udp, flow.GuestIp, flow.RemoteIp);
        IcmpPacket.WriteUnreachable(msg, PortUnreachable);
        WriteIpAndEthernet(f, mac, flow.RemoteIp, flow.GuestIp, IpProtocol.Icmp, ipLen);
        Counters.PortUnreachable++;
        Emit(f);
        return true;
    }

    /// <summary>Sends an echo reply that appears to come from <paramref name="from"/>.</summary>
    public void SendIcmpEchoReply(uint from, uint guestIp, ushort id, ushort seq, ReadOnlySpan<byte> payload)
    {
        int ipLen = Ipv4Packet.MinHeaderLength + IcmpPacket.HeaderLength + payload.Length;
        if (ipLen > _o.Mtu || !_arp.TryGetValue(guestIp, out MacAddress mac))
        {
            return;
        }
        Span<byte> f = _tx.AsSpan(0, EthernetFrame.HeaderLength + ipLen);
        Span<byte> msg = f.Slice(EthernetFrame.HeaderLength + Ipv4Packet.MinHeaderLength);
        payload.CopyTo(msg.Slice(IcmpPacket.HeaderLength));
        IcmpPacket.WriteEcho(msg, IcmpPacket.TypeEchoReply, id, seq);
        WriteIpAndEthernet(f, mac, from, guestIp, IpProtocol.Icmp, ipLen);
        Emit(f);
    }

    private void HandleUdp(MacAddress srcMac, Ipv4Packet ip)
    {
        if (!UdpDatagram.TryParse(ip.Payload, out UdpDatagram udp))
        {
            Counters.Malformed++;
            return;
        }
        if (!_trusted && !udp.ChecksumValid(ip.Source, ip.Destination))
        {
            Counters.BadChecksum++;
            return;
        }
        uint dst = ip.Destination;
        if (udp.DestinationPort == 67 && (dst == _o.GatewayIp || dst == uint.MaxValue || dst == _o.Broadcast))
        {
            HandleDhcp(srcMac, udp.Payload);
            return;
        }
        if (dst == uint.MaxValue || dst == _o.Broadcast || (dst >> 28) == 0xE)
        {
            return; // Broadcast and multicast are not forwarded (vpnkit does the same).
        }
        if (ip.Source == 0)
        {
            return;
        }
        if (_flows.UdpReceived(new UdpFlow(ip.Source, udp.SourcePort, dst, udp.DestinationPort), udp.Payload) == FlowVerdict.Rejected)
        {
            SendProhibited(srcMac, ip);
        }
    }

    /// <summary>Sends a datagram to a guest from <c>flow.RemoteIp:RemotePort</c>. Returns false if it cannot go out.</summary>
    public bool SendUdp(in UdpFlow flow, ReadOnlySpan<byte> payload, long now)
    {
        _now = now;
        int ipLen = Ipv4Packet.MinHeaderLength + UdpDatagram.HeaderLength + payload.Length;
        if (ipLen > _o.Mtu)
        {
            Counters.UdpTooLarge++;
            return false;
        }
        if (!_arp.TryGetValue(flow.GuestIp, out MacAddress mac))
        {
            // A guest that has not spoken yet (a published UDP port): ask for it; this datagram is lost, as on a
            // real network while ARP resolves, and the sender's retry gets through.
            if (_o.InSubnet(flow.GuestIp))
            {
                SendArpRequest(flow.GuestIp);
            }
            return false;
        }
        SendUdpTo(mac, flow.RemoteIp, flow.RemotePort, flow.GuestIp, flow.GuestPort, payload);
        return true;
    }

    private void SendUdpTo(MacAddress mac, uint srcIp, ushort srcPort, uint dstIp, ushort dstPort, ReadOnlySpan<byte> payload)
    {
        int ipLen = Ipv4Packet.MinHeaderLength + UdpDatagram.HeaderLength + payload.Length;
        Span<byte> f = _tx.AsSpan(0, EthernetFrame.HeaderLength + ipLen);
        Span<byte> dgram = f.Slice(EthernetFrame.HeaderLength + Ipv4Packet.MinHeaderLength);
        if (!payload.Overlaps(_tx))
        {
            payload.CopyTo(dgram.Slice(UdpDatagram.HeaderLength));
        }
        UdpDatagram.Write(dgram, srcPort, dstPort, srcIp, dstIp);
        WriteIpAndEthernet(f, mac, srcIp, dstIp, IpProtocol.Udp, ipLen);
        Emit(f);
    }

    private void WriteIpAndEthernet(Span<byte> f, MacAddress dstMac, uint src, uint dst, byte protocol, int ipLen)
    {
        EthernetFrame.Write(f, dstMac, _o.GatewayMac, EtherType.Ipv4);
        Ipv4Packet.Write(f.Slice(EthernetFrame.HeaderLength), ipLen, _ipId++, 64, protocol, src, dst);
    }

    private void Emit(ReadOnlySpan<byte> frame)
    {
        Counters.FramesOut++;
        _sink.Send(frame);
    }

    /// <summary>Asks who has <paramref name="ip"/> (used before opening an inbound connection to a guest not yet seen).</summary>
    private void SendArpRequest(uint ip)
    {
        Span<byte> f = _tx.AsSpan(0, EthernetFrame.HeaderLength + ArpPacket.Length);
        EthernetFrame.Write(f, MacAddress.Broadcast, _o.GatewayMac, EtherType.Arp);
        ArpPacket.Write(f.Slice(EthernetFrame.HeaderLength), ArpPacket.OpRequest, _o.GatewayMac, _o.GatewayIp, MacAddress.Zero, ip);
        Emit(f);
    }

    /// <summary>Whether a guest address has been seen (its MAC is known).</summary>
    public bool KnowsGuest(uint ip) => _arp.ContainsKey(ip);

    private static void WriteBE32(Span<byte> b, uint v) => BinaryPrimitives.WriteUInt32BigEndian(b, v);
}
