using System.Buffers.Binary;

namespace Kit.VpnKit.Wire;

/// <summary>
/// A DNS message header and its first question (RFC 1035 §4.1). The forwarder passes messages through unchanged;
/// it only needs the id, the question (for built-in names and the cache key) and the answers' TTLs.
/// </summary>
internal readonly ref struct DnsMessage
{
    public const int HeaderLength = 12;
    private readonly ReadOnlySpan<byte> _b;

    private DnsMessage(ReadOnlySpan<byte> b) => _b = b;

    public static bool TryParse(ReadOnlySpan<byte> p, out DnsMessage result)
    {
        result = new DnsMessage(p);
        return p.Length >= HeaderLength;
    }

    public ushort Id => BinaryPrimitives.ReadUInt16BigEndian(_b);
    public ushort Flags => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(2));
    public bool IsResponse => (_b[2] & 0x80) != 0;
    public int Opcode => (_b[2] >> 3) & 0xF;
    public int ResponseCode => _b[3] & 0xF;
    public ushort QuestionCount => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(4));
    public ushort AnswerCount => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(6));
    public ushort AuthorityCount => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(8));
    public ushort AdditionalCount => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(10));
    public ReadOnlySpan<byte> Bytes => _b;

    /// <summary>
    /// Reads the first question: the name as wire labels (uncompressed in queries), its type and class.
    /// <paramref name="end"/> is the offset just past the question.
    /// </summary>
    public bool TryReadQuestion(out ReadOnlySpan<byte> name, out ushort type, out ushort @class, out int end)
    {
        name = default;
        type = 0;
        @class = 0;
        end = 0;
        if (QuestionCount < 1)
        {
            return false;
        }
        int i = HeaderLength;
        if (!SkipName(_b, ref i, allowPointer: false))
        {
            return false;
        }
        if (i + 4 > _b.Length)
        {
            return false;
        }
        name = _b.Slice(HeaderLength, i - HeaderLength);
        type = BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(i));
        @class = BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(i + 2));
        end = i + 4;
        return true;
    }

    /// <summary>
    /// The smallest TTL among answer, authority and additional records (OPT pseudo-records excluded), or false if the
    /// records cannot be walked. Used to bound how long a cached answer lives (RFC 1035 §3.2.1, RFC 2308 §5).
    /// </summary>
    public bool TryGetMinimumTtl(out uint ttl)
    {
        ttl = uint.MaxValue;
        int i = HeaderLength;
        for (int q = 0; q < QuestionCount; q++)
        {
            if (!SkipName(_b, ref i, allowPointer: true) || i + 4 > _b.Length)
            {
                return false;
            }
            i += 4;
        }
        int records = AnswerCount + AuthorityCount + AdditionalCount;
        for (int r = 0; r < records; r++)
        {
            if (!SkipName(_b, ref i, allowPointer: true) || i + 10 > _b.Length)
            {
                return false;
            }
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(i));
            uint recordTtl = BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(i + 4));
            int rdlen = BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(i + 8));
            i += 10 + rdlen;
            if (i > _b.Length)
            {
                return false;
            }
            if (type != 41)
            {
                ttl = Math.Min(ttl, recordTtl);
            }
        }
        return true;
    }

    /// <summary>Skips a domain name: labels up to 63 bytes, a terminating zero, or a compression pointer.</summary>
    private static bool SkipName(ReadOnlySpan<byte> b, ref int i, bool allowPointer)
    {
        int total = 0;
        while (i < b.Length)
        {
            byte len = b[i];
            if (len == 0)
            {
                i++;
                return true;
            }
            if ((len & 0xC0) == 0xC0)
            {
                if (!allowPointer || i + 1 >= b.Length)
                {
                    return false;
                }
                i += 2;
                return true;
            }
            if ((len & 0xC0) != 0)
            {
                return false;
            }
            total += len + 1;
            if (total > 255)
            {
                return false;
            }
            i += 1 + len;
        }
        return false;
    }

    /// <summary>Compares wire-format labels with a dotted name, ASCII case-insensitively (RFC 4343).</summary>
    public static bool NameEquals(ReadOnlySpan<byte> wireName, string dotted)
    {
        int i = 0;
        int j = 0;
        while (i < wireName.Length)
        {
            int len = wireName[i++];
            if (len == 0)
            {
                return j == dotted.Length || (j == dotted.Length - 1 && dotted[j] == '.');
            }
            if (j > 0)
            {
                if (j >= dotted.Length || dotted[j] != '.')
                {
                    return false;
                }
                j++;
            }
            if (i + len > wireName.Length || j + len > dotted.Length)
            {
                return false;
            }
            for (int k = 0; k < len; k++)
            {
                if (ToLower(wireName[i + k]) != ToLower((byte)dotted[j + k]))
                {
                    return false;
                }
            }
            i += len;
            j += len;
        }
        return false;
    }

    /// <summary>
    /// Wire-format labels as a dotted lower-case name without the trailing dot; false for a name no host name can equal
    /// (a label holding a dot or a byte outside printable ASCII), which is then never answered locally.
    /// </summary>
    public static bool TryGetDottedName(ReadOnlySpan<byte> wireName, out string dotted)
    {
        dotted = "";
        Span<char> chars = stackalloc char[255];
        int j = 0;
        int i = 0;
        while (i < wireName.Length)
        {
            int len = wireName[i++];
            if (len == 0)
            {
                dotted = new string(chars[..j]);
                return true;
            }
            if (i + len > wireName.Length || j + len + 1 > chars.Length)
            {
                return false;
            }
            if (j > 0)
            {
                chars[j++] = '.';
            }
            foreach (byte b in wireName.Slice(i, len))
            {
                if (b is <= 0x20 or >= 0x7F or (byte)'.')
                {
                    return false;
                }
                chars[j++] = (char)ToLower(b);
            }
            i += len;
        }
        return false;
    }

    private static byte ToLower(byte c) => c is >= (byte)'A' and <= (byte)'Z' ? (byte)(c | 0x20) : c;
}
