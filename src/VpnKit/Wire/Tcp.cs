using System.Buffers.Binary;

namespace Kit.VpnKit.Wire;

/// <summary>TCP control bits (RFC 9293 §3.1).</summary>
[Flags]
internal enum TcpFlags : byte
{
    None = 0,
    Fin = 0x01,
    Syn = 0x02,
    Rst = 0x04,
    Psh = 0x08,
    Ack = 0x10,
    Urg = 0x20,
}

/// <summary>The options the gateway understands (RFC 9293 §3.2, RFC 7323, RFC 2018). Absent values are zero/false.</summary>
internal struct TcpOptions
{
    public ushort Mss;
    /// <summary>Window scale shift, or -1 when the option was absent.</summary>
    public sbyte WindowScale;
    public bool SackPermitted;
    public bool HasTimestamps;
    public uint TsValue;
    public uint TsEcho;

    public static TcpOptions None => new() { WindowScale = -1 };

    /// <summary>Reads the options the gateway understands; the walk is <see cref="TcpOptionReader"/>'s.</summary>
    public static TcpOptions Parse(ReadOnlySpan<byte> o)
    {
        TcpOptions r = None;
        var reader = new TcpOptionReader(o);
        while (reader.Next(out byte kind, out ReadOnlySpan<byte> v))
        {
            switch (kind)
            {
                case 2 when v.Length == 2:
                    r.Mss = BinaryPrimitives.ReadUInt16BigEndian(v);
                    break;
                case 3 when v.Length == 1:
                    // RFC 7323 §2.3: a shift above 14 is treated as 14.
                    r.WindowScale = (sbyte)Math.Min(v[0], (byte)14);
                    break;
                case 4 when v.Length == 0:
                    r.SackPermitted = true;
                    break;
                case 8 when v.Length == 8:
                    r.HasTimestamps = true;
                    r.TsValue = BinaryPrimitives.ReadUInt32BigEndian(v);
                    r.TsEcho = BinaryPrimitives.ReadUInt32BigEndian(v.Slice(4));
                    break;
            }
        }
        return r;
    }

    /// <summary>Writes the options padded to a multiple of 4; returns the byte count.</summary>
    public readonly int Write(Span<byte> b)
    {
        int i = 0;
        if (Mss != 0)
        {
            b[i] = 2;
            b[i + 1] = 4;
            BinaryPrimitives.WriteUInt16BigEndian(b.Slice(i + 2), Mss);
            i += 4;
        }
        if (SackPermitted)
        {
            b[i] = 1;
            b[i + 1] = 1;
            b[i + 2] = 4;
            b[i + 3] = 2;
            i += 4;
        }
        if (HasTimestamps)
        {
            b[i] = 1;
            b[i + 1] = 1;
            b[i + 2] = 8;
            b[i + 3] = 10;
            BinaryPrimitives.WriteUInt32BigEndian(b.Slice(i + 4), TsValue);
            BinaryPrimitives.WriteUInt32BigEndian(b.Slice(i + 8), TsEcho);
            i += 12;
        }
        if (WindowScale >= 0)
        {
            b[i] = 1;
            b[i + 1] = 3;
            b[i + 2] = 3;
            b[i + 3] = (byte)WindowScale;
            i += 4;
        }
        return i;
    }

    /// <summary>The most bytes <see cref="Write"/> can produce.</summary>
    public const int MaxLength = 24;
}

/// <summary>A TCP segment view (RFC 9293 §3.1). Data Offset bounds the options; the IP length bounds the payload.</summary>
internal readonly ref struct TcpSegment
{
    public const int MinHeaderLength = 20;
    private readonly ReadOnlySpan<byte> _b;

    private TcpSegment(ReadOnlySpan<byte> b) => _b = b;

    public static bool TryParse(ReadOnlySpan<byte> p, out TcpSegment result)
    {
        result = default;
        if (p.Length < MinHeaderLength)
        {
            return false;
        }
        int off = (p[12] >> 4) * 4;
        if (off < MinHeaderLength || off > p.Length)
        {
            return false;
        }
        result = new TcpSegment(p);
        return true;
    }

    public ushort SourcePort => BinaryPrimitives.ReadUInt16BigEndian(_b);
    public ushort DestinationPort => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(2));
    public uint Sequence => BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(4));
    public uint Acknowledgment => BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(8));
    public int HeaderLength => (_b[12] >> 4) * 4;
    public TcpFlags Flags => (TcpFlags)(_b[13] & 0x3F);
    public ushort Window => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(14));
    public ushort Checksum => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(16));
    public ReadOnlySpan<byte> OptionBytes => _b.Slice(MinHeaderLength, HeaderLength - MinHeaderLength);
    public TcpOptions Options => TcpOptions.Parse(OptionBytes);
    public ReadOnlySpan<byte> Payload => _b.Slice(HeaderLength);
    public int Length => _b.Length;

    public bool ChecksumValid(uint source, uint destination)
        => Wire.Checksum.Finish(Wire.Checksum.Add(Wire.Checksum.PseudoHeader(source, destination, IpProtocol.Tcp, _b.Length), _b)) == 0;

    /// <summary>
    /// Writes a header (with <paramref name="options"/>) at the start of <paramref name="segment"/>, whose payload
    /// the caller has already placed at <see cref="HeaderLengthFor"/>; then the checksum over the whole segment.
    /// </summary>
    public static void Write(Span<byte> segment, int headerLength, ushort sourcePort, ushort destinationPort, uint seq, uint ack,
        TcpFlags flags, ushort window, uint source, uint destination, bool partialChecksum = false)
    {
        BinaryPrimitives.WriteUInt16BigEndian(segment, sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(segment.Slice(2), destinationPort);
        BinaryPrimitives.WriteUInt32BigEndian(segment.Slice(4), seq);
        BinaryPrimitives.WriteUInt32BigEndian(segment.Slice(8), ack);
        segment[12] = (byte)((headerLength / 4) << 4);
        segment[13] = (byte)flags;
        BinaryPrimitives.WriteUInt16BigEndian(segment.Slice(14), window);
        segment[16] = 0;
        segment[17] = 0;
        segment[18] = 0;
        segment[19] = 0;
        ulong pseudo = Wire.Checksum.PseudoHeader(source, destination, IpProtocol.Tcp, segment.Length);
        // With checksum offload (virtio-net VIRTIO_NET_HDR_F_NEEDS_CSUM) the field holds the folded pseudo-header
        // sum, uncomplemented; the device sums from the TCP header on and stores the result.
        ushort sum = partialChecksum
            ? (ushort)~Wire.Checksum.Finish(pseudo)
            : Wire.Checksum.Finish(Wire.Checksum.Add(pseudo, segment));
        BinaryPrimitives.WriteUInt16BigEndian(segment.Slice(16), sum);
    }

    public static int HeaderLengthFor(int optionLength) => MinHeaderLength + ((optionLength + 3) & ~3);
}

/// <summary>
/// Walks a TCP option list (RFC 9293 §3.2): each option's kind and value, NOPs skipped. The end-of-list option or a
/// malformed entry (a length below 2 or past the end) ends the walk: what was read before stays valid, as RFC 9293
/// §3.2 asks receivers to be robust to option garbage.
/// </summary>
internal ref struct TcpOptionReader(ReadOnlySpan<byte> options)
{
    private readonly ReadOnlySpan<byte> _o = options;
    private int _i;

    public bool Next(out byte kind, out ReadOnlySpan<byte> value)
    {
        value = default;
        while (_i < _o.Length && _o[_i] == 1)
        {
            _i++; // No-operation.
        }
        kind = _i < _o.Length ? _o[_i] : (byte)0;
        if (kind == 0 || _i + 1 >= _o.Length)
        {
            _i = _o.Length;
            return false; // End of option list, or nothing left.
        }
        int len = _o[_i + 1];
        if (len < 2 || _i + len > _o.Length)
        {
            _i = _o.Length;
            return false;
        }
        value = _o.Slice(_i + 2, len - 2);
        _i += len;
        return true;
    }
}
