using System.Buffers.Binary;

namespace Kit.VpnKit.Wire;

/// <summary>A UDP datagram (RFC 768). The length field bounds the payload; a zero checksum means "not computed".</summary>
internal readonly ref struct UdpDatagram
{
    public const int HeaderLength = 8;
    private readonly ReadOnlySpan<byte> _b;

    private UdpDatagram(ReadOnlySpan<byte> b) => _b = b;

    public static bool TryParse(ReadOnlySpan<byte> p, out UdpDatagram result)
    {
        result = default;
        if (p.Length < HeaderLength)
        {
            return false;
        }
        int length = BinaryPrimitives.ReadUInt16BigEndian(p.Slice(4));
        if (length < HeaderLength || length > p.Length)
        {
            return false;
        }
        result = new UdpDatagram(p.Slice(0, length));
        return true;
    }

    public ushort SourcePort => BinaryPrimitives.ReadUInt16BigEndian(_b);
    public ushort DestinationPort => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(2));
    public int Length => _b.Length;
    public ushort Checksum => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(6));
    public ReadOnlySpan<byte> Payload => _b.Slice(HeaderLength);

    /// <summary>RFC 768: a transmitted zero means the sender computed none; otherwise the pseudo-header sum must be zero.</summary>
    public bool ChecksumValid(uint source, uint destination)
        => Checksum == 0 || Wire.Checksum.Finish(Wire.Checksum.Add(Wire.Checksum.PseudoHeader(source, destination, IpProtocol.Udp, _b.Length), _b)) == 0;

    /// <summary>Writes the header over a datagram whose payload is already in place, then its checksum.</summary>
    public static void Write(Span<byte> datagram, ushort sourcePort, ushort destinationPort, uint source, uint destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(datagram, sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(datagram.Slice(2), destinationPort);
        BinaryPrimitives.WriteUInt16BigEndian(datagram.Slice(4), (ushort)datagram.Length);
        datagram[6] = 0;
        datagram[7] = 0;
        ushort sum = Wire.Checksum.Finish(Wire.Checksum.Add(Wire.Checksum.PseudoHeader(source, destination, IpProtocol.Udp, datagram.Length), datagram));
        // RFC 768: a computed zero is sent as all ones.
        BinaryPrimitives.WriteUInt16BigEndian(datagram.Slice(6), sum == 0 ? (ushort)0xFFFF : sum);
    }
}
