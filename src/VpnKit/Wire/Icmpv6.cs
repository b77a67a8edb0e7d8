using System.Buffers.Binary;
using System.Text;

namespace Kit.VpnKit.Wire;

/// <summary>ICMPv6 message types the gateway handles (RFC 4443 §2.1, RFC 4861 §4).</summary>
internal static class Icmpv6Type
{
    public const byte DestinationUnreachable = 1;
    public const byte PacketTooBig = 2;
    public const byte TimeExceeded = 3;
    public const byte ParameterProblem = 4;
    public const byte EchoRequest = 128;
    public const byte EchoReply = 129;
    public const byte RouterSolicitation = 133;
    public const byte RouterAdvertisement = 134;
    public const byte NeighborSolicitation = 135;
    public const byte NeighborAdvertisement = 136;
    public const byte Redirect = 137;
}

/// <summary>An ICMPv6 message view (RFC 4443 §2.1): type, code, checksum over the IPv6 pseudo-header, body.</summary>
internal readonly ref struct Icmpv6Message
{
    public const int HeaderLength = 4;
    private readonly ReadOnlySpan<byte> _b;

    private Icmpv6Message(ReadOnlySpan<byte> b) => _b = b;

    public static bool TryParse(ReadOnlySpan<byte> p, out Icmpv6Message result)
    {
        result = new Icmpv6Message(p);
        return p.Length >= HeaderLength;
    }

    public byte Type => _b[0];
    public byte Code => _b[1];
    public ReadOnlySpan<byte> Bytes => _b;

    /// <summary>RFC 4443 §2.3: the checksum covers the pseudo-header (RFC 8200 §8.1) and the whole message.</summary>
    public bool ChecksumValid(UInt128 source, UInt128 destination)
        => Checksum.Finish(Checksum.Add(Checksum.PseudoHeader6(source, destination, Ipv6ExtensionChain.Icmpv6, _b.Length), _b)) == 0;

    /// <summary>Echo identifier and sequence (RFC 4443 §4.1); the message must be at least 8 bytes.</summary>
    public ushort EchoIdentifier => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(4));
    public ushort EchoSequence => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(6));

    /// <summary>Fills in the checksum of a message written in place (its checksum field is overwritten).</summary>
    public static void WriteChecksum(Span<byte> message, UInt128 source, UInt128 destination)
    {
        message[2] = 0;
        message[3] = 0;
        ushort sum = Checksum.Finish(Checksum.Add(Checksum.PseudoHeader6(source, destination, Ipv6ExtensionChain.Icmpv6, message.Length), message));
        BinaryPrimitives.WriteUInt16BigEndian(message.Slice(2), sum);
    }
}

/// <summary>Neighbor Discovery option types (RFC 4861 §4.6, RFC 8106 §5).</summary>
internal static class NdpOption
{
    public const byte SourceLinkLayerAddress = 1;
    public const byte TargetLinkLayerAddress = 2;
    public const byte PrefixInformation = 3;
    public const byte Mtu = 5;
    public const byte RecursiveDnsServer = 25;
    public const byte DnsSearchList = 31;
}

/// <summary>
/// Neighbor Discovery (RFC 4861): views of the four messages the gateway takes part in, their options, and writers for
/// what it sends (Router Advertisement, Neighbor Advertisement, Neighbor Solicitation). Offsets are from the start of
/// the ICMPv6 message.
/// </summary>
internal static class Ndp
{
    /// <summary>Where options start in each message (RFC 4861 §4.1-4.4).</summary>
    public static int OptionsOffset(byte type) => type switch
    {
        Icmpv6Type.RouterSolicitation => 8,
        Icmpv6Type.RouterAdvertisement => 16,
        Icmpv6Type.NeighborSolicitation or Icmpv6Type.NeighborAdvertisement => 24,
        _ => -1,
    };

    /// <summary>
    /// RFC 4861 §6.1.1, §7.1.1: hop limit 255 (so the message cannot have been forwarded), code 0, long enough, and
    /// every option of non-zero length that fits. Invalid messages are dropped silently.
    /// </summary>
    public static bool IsValid(ReadOnlySpan<byte> icmp, byte hopLimit)
    {
        int at = icmp.Length >= 1 ? OptionsOffset(icmp[0]) : -1;
        if (at < 0 || hopLimit != 255 || icmp.Length < at || icmp[1] != 0)
        {
            return false;
        }
        var options = new NdpOptionReader(icmp.Slice(at));
        while (options.TryNext(out _, out _))
        {
        }
        return !options.Malformed;
    }

    /// <summary>The target address of a Neighbor Solicitation or Advertisement.</summary>
    public static UInt128 Target(ReadOnlySpan<byte> icmp) => Ip6.Read(icmp.Slice(8));

    /// <summary>The link-layer address option of <paramref name="type"/> in a message's options, if present and Ethernet-sized.</summary>
    public static bool TryGetLinkLayerAddress(ReadOnlySpan<byte> icmp, byte type, out MacAddress mac)
    {
        mac = MacAddress.Zero;
        var options = new NdpOptionReader(icmp.Slice(OptionsOffset(icmp[0])));
        while (options.TryNext(out byte t, out ReadOnlySpan<byte> body))
        {
            if (t == type && body.Length >= 6)
            {
                mac = MacAddress.Read(body);
                return true;
            }
        }
        return false;
    }

    /// <summary>Router Advertisement header (RFC 4861 §4.2), 16 bytes; options follow. Returns the length written.</summary>
    public static int WriteRouterAdvertisement(Span<byte> m, byte curHopLimit, bool managed, bool other, ushort routerLifetime)
    {
        m.Slice(0, 16).Clear();
        m[0] = Icmpv6Type.RouterAdvertisement;
        m[4] = curHopLimit;
        m[5] = (byte)((managed ? 0x80 : 0) | (other ? 0x40 : 0));
        BinaryPrimitives.WriteUInt16BigEndian(m.Slice(6), routerLifetime);
        return 16;
    }

    /// <summary>Neighbor Advertisement (RFC 4861 §4.4) with a Target Link-Layer Address option: 32 bytes.</summary>
    public static int WriteNeighborAdvertisement(Span<byte> m, UInt128 target, MacAddress mac, bool router, bool solicited, bool @override)
    {
        m.Slice(0, 24).Clear();
        m[0] = Icmpv6Type.NeighborAdvertisement;
        m[4] = (byte)((router ? 0x80 : 0) | (solicited ? 0x40 : 0) | (@override ? 0x20 : 0));
        Ip6.Write(m.Slice(8), target);
        return 24 + WriteLinkLayerOption(m.Slice(24), NdpOption.TargetLinkLayerAddress, mac);
    }

    /// <summary>Neighbor Solicitation (RFC 4861 §4.3) with a Source Link-Layer Address option: 32 bytes.</summary>
    public static int WriteNeighborSolicitation(Span<byte> m, UInt128 target, MacAddress mac)
    {
        m.Slice(0, 24).Clear();
        m[0] = Icmpv6Type.NeighborSolicitation;
        Ip6.Write(m.Slice(8), target);
        return 24 + WriteLinkLayerOption(m.Slice(24), NdpOption.SourceLinkLayerAddress, mac);
    }

    public static int WriteLinkLayerOption(Span<byte> o, byte type, MacAddress mac)
    {
        o[0] = type;
        o[1] = 1;
        mac.Write(o.Slice(2));
        return 8;
    }

    public static int WriteMtuOption(Span<byte> o, uint mtu)
    {
        o.Slice(0, 8).Clear();
        o[0] = NdpOption.Mtu;
        o[1] = 1;
        BinaryPrimitives.WriteUInt32BigEndian(o.Slice(4), mtu);
        return 8;
    }

    /// <summary>Prefix Information (RFC 4861 §4.6.2): on-link and autonomous (SLAAC) flags, lifetimes in seconds.</summary>
    public static int WritePrefixOption(Span<byte> o, UInt128 prefix, byte prefixLength, bool onLink, bool autonomous, uint validLifetime, uint preferredLifetime)
    {
        o.Slice(0, 32).Clear();
        o[0] = NdpOption.PrefixInformation;
        o[1] = 4;
        o[2] = prefixLength;
        o[3] = (byte)((onLink ? 0x80 : 0) | (autonomous ? 0x40 : 0));
        BinaryPrimitives.WriteUInt32BigEndian(o.Slice(4), validLifetime);
        BinaryPrimitives.WriteUInt32BigEndian(o.Slice(8), preferredLifetime);
        Ip6.Write(o.Slice(16), prefix);
        return 32;
    }

    /// <summary>Recursive DNS Server option (RFC 8106 §5.1).</summary>
    public static int WriteRdnssOption(Span<byte> o, uint lifetime, ReadOnlySpan<UInt128> servers)
    {
        int length = 8 + (16 * servers.Length);
        o.Slice(0, 8).Clear();
        o[0] = NdpOption.RecursiveDnsServer;
        o[1] = (byte)(length / 8);
        BinaryPrimitives.WriteUInt32BigEndian(o.Slice(4), lifetime);
        for (int i = 0; i < servers.Length; i++)
        {
            Ip6.Write(o.Slice(8 + (16 * i)), servers[i]);
        }
        return length;
    }

    /// <summary>DNS Search List option (RFC 8106 §5.2): names in DNS wire format, zero-padded to 8 bytes.</summary>
    public static int WriteDnsslOption(Span<byte> o, uint lifetime, IReadOnlyList<string> domains)
    {
        int at = 8;
        foreach (string d in domains)
        {
            at += DnsName.Write(o.Slice(at), d);
        }
        int length = (at + 7) & ~7;
        o.Slice(at, length - at).Clear();
        o.Slice(0, 8).Clear();
        o[0] = NdpOption.DnsSearchList;
        o[1] = (byte)(length / 8);
        BinaryPrimitives.WriteUInt32BigEndian(o.Slice(4), lifetime);
        return length;
    }
}

/// <summary>
/// Walks Neighbor Discovery options (RFC 4861 §4.6): type, length in 8-byte units, body. A zero length or an option past
/// the end stops the walk and marks the message malformed (§4.6: such a message is discarded).
/// </summary>
internal ref struct NdpOptionReader(ReadOnlySpan<byte> options)
{
    private readonly ReadOnlySpan<byte> _o = options;
    private int _at;

    public bool Malformed { get; private set; }

    /// <summary>The next option's type and its bytes after the type and length.</summary>
    public bool TryNext(out byte type, out ReadOnlySpan<byte> body)
    {
        type = 0;
        body = default;
        if (Malformed || _at + 2 > _o.Length)
        {
            Malformed |= _at != _o.Length;
            return false;
        }
        int length = _o[_at + 1] * 8;
        if (length == 0 || _at + length > _o.Length)
        {
            Malformed = true;
            return false;
        }
        type = _o[_at];
        body = _o.Slice(_at + 2, length - 2);
        _at += length;
        return true;
    }
}

/// <summary>DNS names in wire format (RFC 1035 §3.1), uncompressed, for the options that carry them.</summary>
internal static class DnsName
{
    /// <summary>Writes <paramref name="name"/> as labels and a zero byte; returns the length.</summary>
    public static int Write(Span<byte> b, string name)
    {
        int at = 0;
        foreach (string label in name.TrimEnd('.').Split('.', StringSplitOptions.RemoveEmptyEntries))
        {
            int n = Encoding.ASCII.GetBytes(label, b.Slice(at + 1));
            b[at] = (byte)n;
            at += 1 + n;
        }
        b[at++] = 0;
        return at;
    }

    /// <summary>The wire length of <paramref name="name"/>.</summary>
    public static int Length(string name)
    {
        int n = 1;
        foreach (string label in name.TrimEnd('.').Split('.', StringSplitOptions.RemoveEmptyEntries))
        {
            n += 1 + label.Length;
        }
        return n;
    }
}
