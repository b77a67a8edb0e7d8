using System.Buffers.Binary;
using System.Text;

namespace Kit.VpnKit.Inspect;

/// <summary>
/// Reads the server name (RFC 6066 §3) and ALPN protocols (RFC 7301 §3.1) from a TLS ClientHello (RFC 8446 §4.1.2),
/// given the first bytes of the guest's stream: TLS records (§5.1) whose handshake fragments are joined. Every length is
/// checked against what holds it; garbage yields <see cref="Result.Malformed"/> with a reason, never an exception.
/// </summary>
internal static class TlsClientHello
{
    public enum Result
    {
        NeedMore,
        Done,
        Malformed,
    }

    /// <summary>A ClientHello larger than this is not looked at (real ones are a few hundred bytes, with PQ key shares ~2 KiB).</summary>
    public const int MaxHello = 16 * 1024;

    public static Result Parse(ReadOnlySpan<byte> stream, out string? sni, out string? alpn, out string? error)
    {
        sni = null;
        alpn = null;
        error = null;
        byte[] joined = new byte[Math.Min(stream.Length, MaxHello + 4)];
        int have = 0;
        int i = 0;
        int need = -1; // the handshake message's length once its header is in
        while (true)
        {
            if (need >= 0 && have >= need + 4)
            {
                break;
            }
            if (i + 5 > stream.Length)
            {
                return Result.NeedMore;
            }
            // TLSPlaintext: type(1) legacy_record_version(2) length(2) fragment.
            if (stream[i] != 0x16 || stream[i + 1] != 3)
            {
                error = "not a handshake record";
                return Result.Malformed;
            }
            int len = BinaryPrimitives.ReadUInt16BigEndian(stream.Slice(i + 3));
            if (len == 0 || len > 16384)
            {
                error = "record length " + len;
                return Result.Malformed;
            }
            if (i + 5 + len > stream.Length)
            {
                return Result.NeedMore;
            }
            ReadOnlySpan<byte> fragment = stream.Slice(i + 5, len);
            int take = Math.Min(fragment.Length, joined.Length - have);
            fragment[..take].CopyTo(joined.AsSpan(have));
            have += take;
            i += 5 + len;
            if (need < 0 && have >= 4)
            {
                if (joined[0] != 1)
                {
                    error = "handshake type " + joined[0] + ", not a ClientHello";
                    return Result.Malformed;
                }
                need = (joined[1] << 16) | (joined[2] << 8) | joined[3];
                if (need > MaxHello)
                {
                    error = "ClientHello of " + need + " bytes";
                    return Result.Malformed;
                }
            }
            if (take < fragment.Length && (need < 0 || have < need + 4))
            {
                error = "ClientHello larger than " + MaxHello + " bytes";
                return Result.Malformed;
            }
        }
        return ParseBody(joined.AsSpan(4, need), out sni, out alpn, out error) ? Result.Done : Result.Malformed;
    }

    private static bool ParseBody(ReadOnlySpan<byte> b, out string? sni, out string? alpn, out string? error)
    {
        sni = null;
        alpn = null;
        error = null;
        int i = 2 + 32; // legacy_version, random
        if (!Skip(b, ref i, 1) || !Skip(b, ref i, 2) || !Skip(b, ref i, 1))
        {
            error = "truncated before the extensions";
            return false;
        }
        if (i == b.Length)
        {
            return true; // No extensions (allowed before TLS 1.3).
        }
        if (i + 2 > b.Length)
        {
            error = "truncated extensions length";
            return false;
        }
        int end = i + 2 + BinaryPrimitives.ReadUInt16BigEndian(b.Slice(i));
        i += 2;
        if (end > b.Length)
        {
            error = "extensions overrun the ClientHello";
            return false;
        }
        while (i < end)
        {
            if (i + 4 > end)
            {
                error = "truncated extension header";
                return false;
            }
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(b.Slice(i));
            int len = BinaryPrimitives.ReadUInt16BigEndian(b.Slice(i + 2));
            i += 4;
            if (i + len > end)
            {
                error = "extension " + type + " overruns the extensions";
                return false;
            }
            ReadOnlySpan<byte> data = b.Slice(i, len);
            i += len;
            if (type == 0 && sni is null)
            {
                sni = ServerName(data);
            }
            else if (type == 16 && alpn is null)
            {
                alpn = Protocols(data);
            }
        }
        return true;
    }

    /// <summary>Skips a vector with a length prefix of <paramref name="prefix"/> bytes.</summary>
    private static bool Skip(ReadOnlySpan<byte> b, ref int i, int prefix)
    {
        if (i + prefix > b.Length)
        {
            return false;
        }
        int len = prefix == 1 ? b[i] : BinaryPrimitives.ReadUInt16BigEndian(b.Slice(i));
        i += prefix + len;
        return i <= b.Length;
    }

    /// <summary>ServerNameList: the first host_name (type 0), if it is a printable name.</summary>
    private static string? ServerName(ReadOnlySpan<byte> d)
    {
        if (d.Length < 2)
        {
            return null;
        }
        int end = Math.Min(d.Length, 2 + BinaryPrimitives.ReadUInt16BigEndian(d));
        int i = 2;
        while (i + 3 <= end)
        {
            byte nameType = d[i];
            int len = BinaryPrimitives.ReadUInt16BigEndian(d.Slice(i + 1));
            i += 3;
            if (i + len > end)
            {
                return null;
            }
            if (nameType == 0)
            {
                return Printable(d.Slice(i, len));
            }
            i += len;
        }
        return null;
    }

    /// <summary>ProtocolNameList as "h2,http/1.1".</summary>
    private static string? Protocols(ReadOnlySpan<byte> d)
    {
        if (d.Length < 2)
        {
            return null;
        }
        int end = Math.Min(d.Length, 2 + BinaryPrimitives.ReadUInt16BigEndian(d));
        var s = new StringBuilder();
        for (int i = 2; i < end && s.Length < 256;)
        {
            int len = d[i++];
            if (len == 0 || i + len > end)
            {
                break;
            }
            string? p = Printable(d.Slice(i, len));
            if (p is not null)
            {
                s.Append(s.Length == 0 ? "" : ",").Append(p);
            }
            i += len;
        }
        return s.Length == 0 ? null : s.ToString();
    }

    private static string? Printable(ReadOnlySpan<byte> b)
    {
        if (b.IsEmpty || b.Length > 255)
        {
            return null;
        }
        foreach (byte c in b)
        {
            if (c is < 0x21 or > 0x7E)
            {
                return null;
            }
        }
        return Encoding.ASCII.GetString(b);
    }
}
