using System.Buffers.Binary;

namespace Kit.VpnKit.Wire;

/// <summary>An ARP packet for IPv4 over Ethernet (RFC 826): htype 1, ptype 0x0800, hlen 6, plen 4.</summary>
internal readonly ref struct ArpPacket
{
    public const int Length = 28;
    public const ushort OpRequest = 1;
    public const ushort OpReply = 2;
    private readonly ReadOnlySpan<byte> _b;

    private ArpPacket(ReadOnlySpan<byte> b) => _b = b;

    /// <summary>Accepts only the Ethernet/IPv4 form; anything else is not ours to answer.</summary>
    public static bool TryParse(ReadOnlySpan<byte> p, out ArpPacket result)
    {
        result = new ArpPacket(p);
        return p.Length >= Length
            && BinaryPrimitives.ReadUInt16BigEndian(p) == 1
            && BinaryPrimitives.ReadUInt16BigEndian(p.Slice(2)) == EtherType.Ipv4
            && p[4] == 6 && p[5] == 4;
    }

    public ushort Operation => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(6));
    public MacAddress SenderMac => MacAddress.Read(_b.Slice(8));
    public uint SenderIp => BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(14));
    public MacAddress TargetMac => MacAddress.Read(_b.Slice(18));
    public uint TargetIp => BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(24));

    public static void Write(Span<byte> b, ushort op, MacAddress senderMac, uint senderIp, MacAddress targetMac, uint targetIp)
    {
        BinaryPrimitives.WriteUInt16BigEndian(b, 1);
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(2), EtherType.Ipv4);
        b[4] = 6;
        b[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(6), op);
        senderMac.Write(b.Slice(8));
        BinaryPrimitives.WriteUInt32BigEndian(b.Slice(14), senderIp);
        targetMac.Write(b.Slice(18));
        BinaryPrimitives.WriteUInt32BigEndian(b.Slice(24), targetIp);
    }
}
