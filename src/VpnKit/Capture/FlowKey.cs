using System.Buffers.Binary;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Capture;

/// <summary>
/// A flow as the NAT decides it, oriented as the frame that carried it: the protocol (ICMPv6 as ICMP, as
/// <see cref="FlowFilter"/> has it), the source end and the destination end. An echo has no ports, so its identifier
/// (RFC 792; RFC 4443 §4.1) stands for both, which keeps a request and its reply one flow.
/// </summary>
internal readonly record struct FlowKey(byte Protocol, IpAddr Source, ushort SourcePort, IpAddr Destination, ushort DestinationPort)
{
    private const byte TcpSyn = 0x02, TcpAck = 0x10;
    private const byte EchoRequest4 = 8, EchoReply4 = 0, EchoRequest6 = 128, EchoReply6 = 129;

    /// <summary>The same flow seen the other way (an answer to it).</summary>
    public FlowKey Reversed => new(Protocol, Destination, DestinationPort, Source, SourcePort);

    /// <summary>
    /// The flow <paramref name="frame"/> (Ethernet II) belongs to, and whether it is one that makes the NAT decide
    /// (<paramref name="opening"/>): a TCP SYN without ACK (RFC 9293 §3.5), any UDP datagram, an echo request. An ICMP
    /// error (destination unreachable, time exceeded, parameter problem, ...) belongs to the flow of the packet it quotes
    /// (RFC 792; RFC 4443 §2.4 c), oriented as that packet was, so the gateway's "administratively prohibited" for a
    /// rejected datagram is the datagram's flow. False for anything without ports (ARP, a non-first fragment, other ICMP).
    /// </summary>
    public static bool TryRead(ReadOnlySpan<byte> frame, out FlowKey key, out bool opening)
    {
        key = default;
        opening = false;
        if (!EthernetFrame.TryParse(frame, out EthernetFrame eth)
            || !FlowFilter.TryReadFlow(eth, out byte protocol, out IpAddr source, out IpAddr destination, out ReadOnlySpan<byte> upper))
        {
            return false;
        }
        switch (protocol)
        {
            case IpProtocol.Tcp when upper.Length >= 14:
                byte flags = upper[13];
                opening = (flags & (TcpSyn | TcpAck)) == TcpSyn;
                key = new FlowKey(protocol, source, Port(upper, 0), destination, Port(upper, 2));
                return true;
            case IpProtocol.Udp when upper.Length >= 4:
                opening = true;
                key = new FlowKey(protocol, source, Port(upper, 0), destination, Port(upper, 2));
                return true;
            case IpProtocol.Icmp when upper.Length >= 8:
                return source.IsV4 ? TryReadIcmp4(upper, source, destination, out key, out opening) : TryReadIcmp6(upper, source, destination, out key, out opening);
            default:
                return false;
        }
    }

    private static ushort Port(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt16BigEndian(b.Slice(at));

    /// <summary>RFC 792: echo (type 8) and echo reply (0) by identifier; errors 3, 4, 5, 11, 12 by the datagram they quote.</summary>
    private static bool TryReadIcmp4(ReadOnlySpan<byte> icmp, IpAddr source, IpAddr destination, out FlowKey key, out bool opening)
    {
        (key, opening) = (default, false);
        switch (icmp[0])
        {
            case EchoRequest4 or EchoReply4:
                opening = icmp[0] == EchoRequest4;
                ushort id = Port(icmp, 4);
                key = new FlowKey(IpProtocol.Icmp, source, id, destination, id);
                return true;
            case 3 or 4 or 5 or 11 or 12:
                return TryReadQuoted4(icmp.Slice(8), out key);
            default:
                return false;
        }
    }

    /// <summary>RFC 4443: echo request (128) and reply (129) by identifier; errors 1-4 by the packet they quote.</summary>
    private static bool TryReadIcmp6(ReadOnlySpan<byte> icmp, IpAddr source, IpAddr destination, out FlowKey key, out bool opening)
    {
        (key, opening) = (default, false);
        switch (icmp[0])
        {
            case EchoRequest6 or EchoReply6:
                opening = icmp[0] == EchoRequest6;
                ushort id = Port(icmp, 4);
                key = new FlowKey(IpProtocol.Icmp, source, id, destination, id);
                return true;
            case 1 or 2 or 3 or 4:
                return TryReadQuoted6(icmp.Slice(8), out key);
            default:
                return false;
        }
    }

    /// <summary>
    /// The quoted IPv4 header and at least the first 64 bits of its data (RFC 792), read field by field: the quote is
    /// cut short of the total length its header claims, so it is not parsed as a whole packet.
    /// </summary>
    private static bool TryReadQuoted4(ReadOnlySpan<byte> q, out FlowKey key)
    {
        key = default;
        if (q.Length < 20 || q[0] >> 4 != 4)
        {
            return false;
        }
        int headerLength = (q[0] & 0x0F) * 4;
        if (headerLength < 20 || q.Length < headerLength + 8)
        {
            return false;
        }
        IpAddr source = IpAddr.V4(BinaryPrimitives.ReadUInt32BigEndian(q.Slice(12)));
        IpAddr destination = IpAddr.V4(BinaryPrimitives.ReadUInt32BigEndian(q.Slice(16)));
        return TryQuotedUpper(q[9], source, destination, q.Slice(headerLength), EchoRequest4, out key);
    }

    /// <summary>The quoted IPv6 packet (RFC 4443 §3.1: as much of it as fits), its upper layer found past extension headers.</summary>
    private static bool TryReadQuoted6(ReadOnlySpan<byte> q, out FlowKey key)
    {
        key = default;
        if (q.Length < 48 || q[0] >> 4 != 6
            || Ipv6ExtensionChain.TryFindUpperLayer(q.Slice(40), q[6], out byte protocol, out int offset, out Ipv6Fragment? fragment) != Ipv6Error.None
            || fragment is { Offset: not 0 } || q.Length < 40 + offset + 8)
        {
            return false;
        }
        IpAddr source = IpAddr.V6(BinaryPrimitives.ReadUInt128BigEndian(q.Slice(8)));
        IpAddr destination = IpAddr.V6(BinaryPrimitives.ReadUInt128BigEndian(q.Slice(24)));
        protocol = protocol == Ipv6ExtensionChain.Icmpv6 ? IpProtocol.Icmp : protocol;
        return TryQuotedUpper(protocol, source, destination, q.Slice(40 + offset), EchoRequest6, out key);
    }

    private static bool TryQuotedUpper(byte protocol, IpAddr source, IpAddr destination, ReadOnlySpan<byte> upper, byte echoRequest, out FlowKey key)
    {
        key = default;
        if (protocol is IpProtocol.Tcp or IpProtocol.Udp)
        {
            key = new FlowKey(protocol, source, Port(upper, 0), destination, Port(upper, 2));
            return true;
        }
        if (protocol == IpProtocol.Icmp && upper[0] == echoRequest)
        {
            ushort id = Port(upper, 4);
            key = new FlowKey(protocol, source, id, destination, id);
            return true;
        }
        return false;
    }
}
