using System.Buffers.Binary;

namespace Kit.VpnKit.Wire;

/// <summary>EtherType values we act on (IEEE 802.3 / IANA).</summary>
internal static class EtherType
{
    public const ushort Ipv4 = 0x0800;
    public const ushort Arp = 0x0806;
    public const ushort Ipv6 = 0x86DD;
}

/// <summary>An Ethernet II frame (no FCS, no 802.1Q tag handling: tagged frames show their TPID as the type).</summary>
internal readonly ref struct EthernetFrame
{
    public const int HeaderLength = 14;
    private readonly ReadOnlySpan<byte> _b;

    private EthernetFrame(ReadOnlySpan<byte> b) => _b = b;

    public static bool TryParse(ReadOnlySpan<byte> frame, out EthernetFrame result)
    {
        result = new EthernetFrame(frame);
        return frame.Length >= HeaderLength;
    }

    public MacAddress Destination => MacAddress.Read(_b);
    public MacAddress Source => MacAddress.Read(_b.Slice(6));
    public ushort EtherType => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(12));
    public ReadOnlySpan<byte> Payload => _b.Slice(HeaderLength);

    public static void Write(Span<byte> b, MacAddress destination, MacAddress source, ushort etherType)
    {
        destination.Write(b);
        source.Write(b.Slice(6));
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(12), etherType);
    }
}
