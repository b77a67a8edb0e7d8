using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Capture;

/// <summary>
/// Which frames a live capture keeps: a 5-tuple over IPv4 (RFC 791 §3.1) or IPv6 (RFC 8200 §3, the upper layer found
/// past any extension headers) whose parts may each be left open, matched in both directions, so one filter takes a
/// flow's requests and its answers. A predicate over whole frames at the switch, where <c>--pcap</c> captures, so
/// another kind of filter (one rule's frames) plugs in beside it.
/// </summary>
public sealed class FlowFilter
{
    private readonly byte? _protocol;
    private readonly IpAddr? _addressA, _addressB;
    private readonly ushort? _portA, _portB;

    /// <param name="protocol">The IP protocol number (6 TCP, 17 UDP, 1 ICMP, which also takes ICMPv6), or null for any.</param>
    /// <param name="addressA">One end's address, or null for any.</param>
    /// <param name="portA">That end's port, or null for any (ports are only looked at for TCP and UDP).</param>
    internal FlowFilter(byte? protocol, IpAddr? addressA, ushort? portA, IpAddr? addressB, ushort? portB)
    {
        (_protocol, _addressA, _portA, _addressB, _portB) = (protocol, addressA, portA, addressB, portB);
    }

    /// <summary>Whether <paramref name="frame"/> (Ethernet II) belongs to the flow; anything that does not parse does not.</summary>
    public bool Matches(ReadOnlySpan<byte> frame)
    {
        if (!EthernetFrame.TryParse(frame, out EthernetFrame eth) || !TryReadFlow(eth, out byte protocol, out IpAddr source, out IpAddr destination, out ReadOnlySpan<byte> upper))
        {
            return false;
        }
        if (_protocol is byte p && protocol != p)
        {
            return false;
        }
        int sourcePort = -1, destinationPort = -1;
        // Ports sit in the first four bytes of a TCP (RFC 9293 §3.1) or UDP (RFC 768) header, which only the first
        // fragment carries (upper is empty for a later one); a later fragment matches only a filter that names no port.
        if (protocol is IpProtocol.Tcp or IpProtocol.Udp && upper.Length >= 4)
        {
            sourcePort = BinaryPrimitives.ReadUInt16BigEndian(upper);
            destinationPort = BinaryPrimitives.ReadUInt16BigEndian(upper.Slice(2));
        }
        return (End(_addressA, _portA, source, sourcePort) && End(_addressB, _portB, destination, destinationPort))
            || (End(_addressB, _portB, source, sourcePort) && End(_addressA, _portA, destination, destinationPort));
    }

    /// <summary>The protocol (ICMPv6 as ICMP), the addresses, and the upper-layer bytes (empty past the first fragment).</summary>
    internal static bool TryReadFlow(EthernetFrame eth, out byte protocol, out IpAddr source, out IpAddr destination, out ReadOnlySpan<byte> upper)
    {
        (protocol, source, destination) = (0, default, default);
        upper = default;
        if (eth.EtherType == EtherType.Ipv4)
        {
            if (Ipv4Packet.TryParse(eth.Payload, out Ipv4Packet ip, verifyChecksum: false) != Ipv4Error.None)
            {
                return false;
            }
            (protocol, source, destination) = (ip.Protocol, IpAddr.V4(ip.Source), IpAddr.V4(ip.Destination));
            upper = ip.FragmentOffset == 0 ? ip.Payload : default;
            return true;
        }
        if (eth.EtherType == EtherType.Ipv6
            && Ipv6Packet.TryParse(eth.Payload, out Ipv6Packet ip6) == Ipv6Error.None
            && Ipv6ExtensionChain.TryFindUpperLayer(ip6.Payload, ip6.NextHeader, out protocol, out int offset, out Ipv6Fragment? fragment) == Ipv6Error.None)
        {
            protocol = protocol == Ipv6ExtensionChain.Icmpv6 ? IpProtocol.Icmp : protocol;
            (source, destination) = (IpAddr.V6(ip6.Source), IpAddr.V6(ip6.Destination));
            upper = fragment is { Offset: not 0 } ? default : ip6.Payload.Slice(offset);
            return true;
        }
        return false;
    }

    private static bool End(IpAddr? address, ushort? port, IpAddr actualAddress, int actualPort) =>
        (address is not IpAddr a || a == actualAddress) && (port is not ushort p || p == actualPort);

    /// <summary>
    /// A filter from the inspector's words (protocol <c>tcp</c>, <c>udp</c> or <c>icmp</c>, dotted IPv4 or textual IPv6
    /// addresses, ports 1-65535), each part optional; null and a one-line <paramref name="error"/> for anything else.
    /// </summary>
    public static FlowFilter? Create(string? proto, string? addressA, int? portA, string? addressB, int? portB, out string? error)
    {
        error = null;
        byte? protocol = proto switch
        {
            null => null,
            "tcp" => IpProtocol.Tcp,
            "udp" => IpProtocol.Udp,
            "icmp" => IpProtocol.Icmp,
            _ => 0,
        };
        IpAddr? a = Address(addressA, ref error), b = Address(addressB, ref error);
        if (protocol == 0)
        {
            error = $"proto must be tcp, udp or icmp, got '{proto}'";
        }
        else if (portA is < 1 or > 65535 || portB is < 1 or > 65535)
        {
            error ??= "ports must be 1-65535";
        }
        return error is null ? new FlowFilter(protocol, a, (ushort?)portA, b, (ushort?)portB) : null;
    }

    private static IpAddr? Address(string? text, ref string? error)
    {
        if (text is null)
        {
            return null;
        }
        // Dotted quads by the strict IPv4 parser (IPAddress.Parse would take "1" as 0.0.0.1); anything with a colon as
        // IPv6, without a zone (no flow the gateway carries has one).
        if (Ip4.TryParse(text, out uint v))
        {
            return IpAddr.V4(v);
        }
        if (text.Contains(':', StringComparison.Ordinal) && !text.Contains('%', StringComparison.Ordinal)
            && IPAddress.TryParse(text, out IPAddress? v6) && v6.AddressFamily == AddressFamily.InterNetworkV6)
        {
            return IpAddr.From(v6);
        }
        error ??= $"not an IPv4 or IPv6 address: '{text}'";
        return null;
    }
}
