using System.Buffers.Binary;

namespace Kit.VpnKit.Wire;

/// <summary>IPv6 addresses as 128-bit integers in host order, read and written in network order (RFC 4291 §2).</summary>
internal static class Ip6
{
    public static UInt128 Read(ReadOnlySpan<byte> b) => BinaryPrimitives.ReadUInt128BigEndian(b);

    public static void Write(Span<byte> b, UInt128 address) => BinaryPrimitives.WriteUInt128BigEndian(b, address);

    public static UInt128 Parse(string text)
    {
        Span<byte> b = stackalloc byte[16];
        // An IPv4 address writes 4 bytes: only a 16-byte address is IPv6.
        return System.Net.IPAddress.TryParse(text, out System.Net.IPAddress? ip) && ip.TryWriteBytes(b, out int n) && n == 16
            ? Read(b)
            : throw new FormatException($"'{text}' is not an IPv6 address");
    }

    public static string Format(UInt128 address)
    {
        Span<byte> b = stackalloc byte[16];
        Write(b, address);
        return new System.Net.IPAddress(b).ToString();
    }

    /// <summary>fe80::/10 (RFC 4291 §2.5.6).</summary>
    public static bool IsLinkLocal(UInt128 a) => (a >> 118) == 0x3FA;

    /// <summary>ff00::/8 (RFC 4291 §2.7).</summary>
    public static bool IsMulticast(UInt128 a) => (a >> 120) == 0xFF;

    public static bool IsUnspecified(UInt128 a) => a == UInt128.Zero;

    /// <summary>The solicited-node multicast address ff02::1:ffXX:XXXX of a unicast address (RFC 4291 §2.7.1).</summary>
    public static UInt128 SolicitedNode(UInt128 a) => (new UInt128(0xFF02_0000_0000_0000UL, 0x0000_0001_FF00_0000UL)) | (a & 0xFF_FFFF);

    /// <summary>
    /// fe80::/64 with the modified EUI-64 interface identifier of <paramref name="mac"/> (RFC 4291 §2.5.1, App. A):
    /// ff:fe in the middle, the universal/local bit inverted.
    /// </summary>
    public static UInt128 LinkLocalFromMac(MacAddress mac)
    {
        ulong m = mac.Value;
        ulong iid = ((m >> 24) << 40) | (0xFFFEUL << 24) | (m & 0xFF_FFFF);
        return new UInt128(0xFE80_0000_0000_0000UL, iid ^ 0x0200_0000_0000_0000UL);
    }

    /// <summary>ff02::1, all nodes on the link (RFC 4291 §2.7.1).</summary>
    public static readonly UInt128 AllNodes = new(0xFF02_0000_0000_0000UL, 1);

    /// <summary>ff02::2, all routers on the link (RFC 4291 §2.7.1).</summary>
    public static readonly UInt128 AllRouters = new(0xFF02_0000_0000_0000UL, 2);

    /// <summary>The Ethernet multicast MAC of an IPv6 multicast address: 33:33 and its low 32 bits (RFC 2464 §7).</summary>
    public static MacAddress MulticastMac(UInt128 a) => new(0x3333_0000_0000UL | (ulong)(uint)a);
}

/// <summary>Why an IPv6 packet was not accepted; each reason is a counter, never an exception.</summary>
internal enum Ipv6Error
{
    None,
    TooShort,
    NotVersion6,
    BadPayloadLength,
    /// <summary>A jumbogram (payload length 0, RFC 2675): links here carry at most 64 KiB, so it is never valid.</summary>
    Jumbogram,
    /// <summary>An extension header runs past the packet, or Hop-by-Hop is not first (RFC 8200 §4.1).</summary>
    BadExtensionHeader,
    /// <summary>More extension headers than <see cref="Ipv6ExtensionChain.MaxHeaders"/>.</summary>
    TooManyExtensionHeaders,
}

/// <summary>
/// An IPv6 fixed header view (RFC 8200 §3). The payload ends at Payload Length, so Ethernet padding is excluded.
/// Extension headers are walked by <see cref="Ipv6ExtensionChain"/>.
/// </summary>
internal readonly ref struct Ipv6Packet
{
    public const int HeaderLength = 40;
    private readonly ReadOnlySpan<byte> _b;

    private Ipv6Packet(ReadOnlySpan<byte> b) => _b = b;

    public static Ipv6Error TryParse(ReadOnlySpan<byte> p, out Ipv6Packet result)
    {
        result = default;
        if (p.Length < HeaderLength)
        {
            return Ipv6Error.TooShort;
        }
        if ((p[0] >> 4) != 6)
        {
            return Ipv6Error.NotVersion6;
        }
        int length = BinaryPrimitives.ReadUInt16BigEndian(p.Slice(4));
        if (length == 0 && p[6] == Ipv6ExtensionChain.HopByHop)
        {
            return Ipv6Error.Jumbogram;
        }
        if (HeaderLength + length > p.Length)
        {
            return Ipv6Error.BadPayloadLength;
        }
        result = new Ipv6Packet(p.Slice(0, HeaderLength + length));
        return Ipv6Error.None;
    }

    public byte TrafficClass => (byte)((BinaryPrimitives.ReadUInt16BigEndian(_b) >> 4) & 0xFF);
    public uint FlowLabel => BinaryPrimitives.ReadUInt32BigEndian(_b) & 0xF_FFFF;
    public int PayloadLength => _b.Length - HeaderLength;
    public byte NextHeader => _b[6];
    public byte HopLimit => _b[7];
    public UInt128 Source => Ip6.Read(_b.Slice(8));
    public UInt128 Destination => Ip6.Read(_b.Slice(24));
    public ReadOnlySpan<byte> Payload => _b.Slice(HeaderLength);
    public ReadOnlySpan<byte> Bytes => _b;

    /// <summary>Writes a 40-byte header (traffic class and flow label 0).</summary>
    public static void Write(Span<byte> b, int payloadLength, byte nextHeader, byte hopLimit, UInt128 source, UInt128 destination)
    {
        BinaryPrimitives.WriteUInt32BigEndian(b, 6u << 28);
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(4), (ushort)payloadLength);
        b[6] = nextHeader;
        b[7] = hopLimit;
        Ip6.Write(b.Slice(8), source);
        Ip6.Write(b.Slice(24), destination);
    }
}

/// <summary>The fragment header's fields (RFC 8200 §4.5).</summary>
internal readonly record struct Ipv6Fragment(uint Identification, int Offset, bool MoreFragments, int HeaderOffset);

/// <summary>
/// Walks an IPv6 packet's extension headers to the upper layer (RFC 8200 §4): Hop-by-Hop (first only), Routing,
/// Fragment and Destination Options are stepped over; anything else is the upper-layer protocol (TCP, UDP, ICMPv6,
/// No Next Header, or one the gateway does not handle). The walk is bounded: a chain of thousands of empty headers
/// costs <see cref="MaxHeaders"/> steps, then is refused.
/// </summary>
internal static class Ipv6ExtensionChain
{
    public const byte HopByHop = 0;
    public const byte Routing = 43;
    public const byte Fragment = 44;
    public const byte DestinationOptions = 60;
    public const byte NoNextHeader = 59;
    public const byte Icmpv6 = 58;

    /// <summary>
    /// RFC 8200 §4.1 has each header at most once (Destination Options twice): eight is more than any valid chain has.
    /// </summary>
    public const int MaxHeaders = 8;

    /// <summary>
    /// Finds the upper-layer header: its protocol number and its offset in <paramref name="payload"/> (the packet's
    /// payload, after the fixed header). <paramref name="fragment"/> is set when a Fragment header was crossed.
    /// </summary>
    public static Ipv6Error TryFindUpperLayer(ReadOnlySpan<byte> payload, byte firstNextHeader, out byte protocol, out int offset, out Ipv6Fragment? fragment)
    {
        protocol = firstNextHeader;
        offset = 0;
        fragment = null;
        for (int count = 0; ; count++)
        {
            switch (protocol)
            {
                case HopByHop when count > 0:
                    return Ipv6Error.BadExtensionHeader;
                case HopByHop:
                case Routing:
                case DestinationOptions:
                case Fragment:
                    break;
                default:
                    return Ipv6Error.None;
            }
            if (count == MaxHeaders)
            {
                return Ipv6Error.TooManyExtensionHeaders;
            }
            if (offset + 8 > payload.Length)
            {
                return Ipv6Error.BadExtensionHeader;
            }
            ReadOnlySpan<byte> h = payload.Slice(offset);
            int length;
            if (protocol == Fragment)
            {
                // Fixed 8 bytes: next header, reserved, offset (13 bits, 8-byte units) | res | M, identification.
                ushort field = BinaryPrimitives.ReadUInt16BigEndian(h.Slice(2));
                fragment = new Ipv6Fragment(BinaryPrimitives.ReadUInt32BigEndian(h.Slice(4)), (field >> 3) * 8, (field & 1) != 0, offset);
                length = 8;
            }
            else
            {
                length = (h[1] + 1) * 8; // Hdr Ext Len: 8-octet units, not counting the first 8 (RFC 8200 §4.3).
            }
            if (offset + length > payload.Length)
            {
                return Ipv6Error.BadExtensionHeader;
            }
            protocol = h[0];
            offset += length;
        }
    }
}
