using System.Buffers.Binary;

namespace Kit.VpnKit.Wire;

/// <summary>IP protocol numbers (IANA) the gateway handles.</summary>
internal static class IpProtocol
{
    public const byte Icmp = 1;
    public const byte Tcp = 6;
    public const byte Udp = 17;
}

/// <summary>Why an IPv4 packet was not accepted; each reason is a counter, never an exception.</summary>
internal enum Ipv4Error
{
    None,
    TooShort,
    NotVersion4,
    BadHeaderLength,
    BadTotalLength,
    BadChecksum,
}

/// <summary>
/// An IPv4 header view (RFC 791 §3.1). Options are skipped by honouring IHL; the payload ends at Total Length,
/// so Ethernet padding after short packets is excluded.
/// </summary>
internal readonly ref struct Ipv4Packet
{
    public const int MinHeaderLength = 20;
    private readonly ReadOnlySpan<byte> _b;

    private Ipv4Packet(ReadOnlySpan<byte> b) => _b = b;

    public static Ipv4Error TryParse(ReadOnlySpan<byte> p, out Ipv4Packet result, bool verifyChecksum = true)
    {
        result = default;
        if (p.Length < MinHeaderLength)
        {
            return Ipv4Error.TooShort;
        }
        if ((p[0] >> 4) != 4)
        {
            return Ipv4Error.NotVersion4;
        }
        int ihl = (p[0] & 0xF) * 4;
        if (ihl < MinHeaderLength || ihl > p.Length)
        {
            return Ipv4Error.BadHeaderLength;
        }
        int total = BinaryPrimitives.ReadUInt16BigEndian(p.Slice(2));
        if (total < ihl || total > p.Length)
        {
            return Ipv4Error.BadTotalLength;
        }
        if (verifyChecksum && Checksum.Compute(p.Slice(0, ihl)) != 0)
        {
            return Ipv4Error.BadChecksum;
        }
        result = new Ipv4Packet(p.Slice(0, total));
        return Ipv4Error.None;
    }

    public int HeaderLength => (_b[0] & 0xF) * 4;
    public byte Tos => _b[1];
    public int TotalLength => _b.Length;
    public ushort Identification => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(4));
    public bool DontFragment => (_b[6] & 0x40) != 0;
    public bool MoreFragments => (_b[6] & 0x20) != 0;
    public int FragmentOffset => (BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(6)) & 0x1FFF) * 8;
    /// <summary>A fragment is any packet with MF set or a non-zero offset (RFC 791 §2.3).</summary>
    public bool IsFragment => MoreFragments || FragmentOffset != 0;
    public byte Ttl => _b[8];
    public byte Protocol => _b[9];
    public ushort HeaderChecksum => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(10));
    public uint Source => BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(12));
    public uint Destination => BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(16));
    public ReadOnlySpan<byte> Options => _b.Slice(MinHeaderLength, HeaderLength - MinHeaderLength);
    public ReadOnlySpan<byte> Payload => _b.Slice(HeaderLength);
    public ReadOnlySpan<byte> Bytes => _b;

    /// <summary>Writes a 20-byte header (no options) with its checksum. DF is set: the gateway never fragments.</summary>
    public static void Write(Span<byte> b, int totalLength, ushort id, byte ttl, byte protocol, uint source, uint destination)
    {
        b[0] = 0x45;
        b[1] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(2), (ushort)totalLength);
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(4), id);
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(6), 0x4000);
        b[8] = ttl;
        b[9] = protocol;
        b[10] = 0;
        b[11] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(b.Slice(12), source);
        BinaryPrimitives.WriteUInt32BigEndian(b.Slice(16), destination);
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(10), Checksum.Compute(b.Slice(0, MinHeaderLength)));
    }
}
