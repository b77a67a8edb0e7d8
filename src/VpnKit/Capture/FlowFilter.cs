using System.Buffers.Binary;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Capture;

/// <summary>
/// Which frames a live capture keeps: a 5-tuple over IPv4 (RFC 791 §3.1) whose parts may each be left open, matched in
/// both directions, so one filter takes a flow's requests and its answers. A predicate over whole frames at the switch,
/// where <c>--pcap</c> captures, so another kind of filter (one rule's frames) plugs in beside it.
/// </summary>
/// <param name="Protocol">The IP protocol number (6 TCP, 17 UDP, 1 ICMP), or null for any.</param>
/// <param name="AddressA">One end's IPv4 address (host order, as <see cref="Ipv4Packet.Source"/>), or null for any.</param>
/// <param name="PortA">That end's port, or null for any (ports are only looked at for TCP and UDP).</param>
public sealed record FlowFilter(byte? Protocol, uint? AddressA, ushort? PortA, uint? AddressB, ushort? PortB)
{
    /// <summary>Whether <paramref name="frame"/> (Ethernet II) belongs to the flow; anything that does not parse does not.</summary>
    public bool Matches(ReadOnlySpan<byte> frame)
    {
        if (!EthernetFrame.TryParse(frame, out EthernetFrame eth) || eth.EtherType != EtherType.Ipv4
            || Ipv4Packet.TryParse(eth.Payload, out Ipv4Packet ip, verifyChecksum: false) != Ipv4Error.None)
        {
            return false;
        }
        if (Protocol is byte p && ip.Protocol != p)
        {
            return false;
        }
        int sourcePort = -1, destinationPort = -1;
        // Ports sit in the first four bytes of a TCP (RFC 9293 §3.1) or UDP (RFC 768) header, which only the first
        // fragment carries; a later fragment matches only a filter that names no port.
        if (ip.Protocol is IpProtocol.Tcp or IpProtocol.Udp && ip.FragmentOffset == 0 && ip.Payload.Length >= 4)
        {
            sourcePort = BinaryPrimitives.ReadUInt16BigEndian(ip.Payload);
            destinationPort = BinaryPrimitives.ReadUInt16BigEndian(ip.Payload.Slice(2));
        }
        return (End(AddressA, PortA, ip.Source, sourcePort) && End(AddressB, PortB, ip.Destination, destinationPort))
            || (End(AddressB, PortB, ip.Source, sourcePort) && End(AddressA, PortA, ip.Destination, destinationPort));
    }

    private static bool End(uint? address, ushort? port, uint actualAddress, int actualPort) =>
        (address is not uint a || a == actualAddress) && (port is not ushort p || p == actualPort);

    /// <summary>
    /// A filter from the inspector's words (protocol <c>tcp</c>, <c>udp</c> or <c>icmp</c>, dotted IPv4 addresses, ports
    /// 1-65535), each part optional; null and a one-line <paramref name="error"/> for anything else.
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
        uint? a = Address(addressA, ref error), b = Address(addressB, ref error);
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

    private static uint? Address(string? text, ref string? error)
    {
        if (text is null)
        {
            return null;
        }
        if (Ip4.TryParse(text, out uint v))
        {
            return v;
        }
        error ??= $"not an IPv4 address: '{text}'";
        return null;
    }
}
