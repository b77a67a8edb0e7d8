using System.Buffers.Binary;

namespace Kit.VpnKit.Wire;

/// <summary>An ICMPv4 message (RFC 792). Echo request/reply carry identifier and sequence in the rest-of-header.</summary>
internal readonly ref struct IcmpPacket
{
    public const int HeaderLength = 8;
    public const byte TypeEchoReply = 0;
    public const byte TypeDestinationUnreachable = 3;
    public const byte TypeEchoRequest = 8;
    private readonly ReadOnlySpan<byte> _b;

    private IcmpPacket(ReadOnlySpan<byte> b) => _b = b;

    public static bool TryParse(ReadOnlySpan<byte> p, out IcmpPacket result)
    {
        result = new IcmpPacket(p);
        return p.Length >= HeaderLength;
    }

    public byte Type => _b[0];
    public byte Code => _b[1];
    public ushort Checksum => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(2));
    public ushort Identifier => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(4));
    public ushort Sequence => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(6));
    public ReadOnlySpan<byte> Payload => _b.Slice(HeaderLength);
    public bool ChecksumValid => Wire.Checksum.Compute(_b) == 0;

    /// <summary>Writes a destination unreachable header (RFC 792); the caller has already placed the quoted packet after it.</summary>
    public static void WriteUnreachable(Span<byte> message, byte code)
    {
        message[0] = TypeDestinationUnreachable;
        message[1] = code;
        message.Slice(2, 6).Clear(); // checksum, then the unused word
        BinaryPrimitives.WriteUInt16BigEndian(message.Slice(2), Wire.Checksum.Compute(message));
    }

    /// <summary>Writes an echo header; the caller has already placed the payload after it.</summary>
    public static void WriteEcho(Span<byte> message, byte type, ushort id, ushort seq)
    {
        message[0] = type;
        message[1] = 0;
        message[2] = 0;
        message[3] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(message.Slice(4), id);
        BinaryPrimitives.WriteUInt16BigEndian(message.Slice(6), seq);
        BinaryPrimitives.WriteUInt16BigEndian(message.Slice(2), Wire.Checksum.Compute(message));
    }
}
