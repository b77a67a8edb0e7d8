using System.Text;
using Kit.VpnKit.Inspect;

namespace Kit.VpnKit.Policy;

/// <summary>
/// Reads what sni/host rules need from the guest's first bytes of a TCP stream, before any of them is sent on: a TLS
/// ClientHello's server name (RFC 6066 §3, through the inspector's <see cref="TlsClientHello"/>) or an HTTP/1.x
/// request's Host header (RFC 9112 §3.2). Anything else is known at once to have neither. Bounded: a head that has not
/// said by <see cref="MaxHead"/> bytes has neither.
/// </summary>
public static class FirstBytes
{
    /// <summary>HTTP heads and ClientHellos are well under this (the inspector's own caps are 32 KiB and 16 KiB).</summary>
    public const int MaxHead = 16 * 1024;

    /// <summary>
    /// False: more bytes are needed (and <paramref name="ended"/> is false and fewer than <see cref="MaxHead"/> came).
    /// True: <paramref name="sni"/> and <paramref name="host"/> are what the stream has (null: none).
    /// </summary>
    public static bool TryRead(ReadOnlySpan<byte> head, bool ended, out string? sni, out string? host)
    {
        sni = null;
        host = null;
        if (head.IsEmpty)
        {
            return ended;
        }
        bool capped = ended || head.Length >= MaxHead;
        if (head[0] == 0x16)
        {
            // A TLS handshake record (RFC 8446 §5.1).
            TlsClientHello.Result r = TlsClientHello.Parse(head, out sni, out _, out _);
            return r != TlsClientHello.Result.NeedMore || capped;
        }
        if (!LooksLikeRequestLine(head, out bool undecided))
        {
            return !undecided || capped;
        }
        int end = head.IndexOf("\r\n\r\n"u8);
        if (end < 0)
        {
            return capped;
        }
        host = Host(head[..(end + 2)]);
        return true;
    }

    /// <summary>An upper-case method token and a space (RFC 9110 §9.1); undecided while only capitals have come.</summary>
    private static bool LooksLikeRequestLine(ReadOnlySpan<byte> head, out bool undecided)
    {
        undecided = false;
        for (int i = 0; i < head.Length && i < 16; i++)
        {
            byte b = head[i];
            if (b == (byte)' ')
            {
                return i > 0;
            }
            if (b is < (byte)'A' or > (byte)'Z')
            {
                return false;
            }
        }
        undecided = head.Length < 16;
        return false;
    }

    /// <summary>The Host field's value without its port, lower-cased; null when absent or unreadable.</summary>
    private static string? Host(ReadOnlySpan<byte> head)
    {
        int line = head.IndexOf("\r\n"u8);
        while (line >= 0 && line + 2 < head.Length)
        {
            head = head[(line + 2)..];
            line = head.IndexOf("\r\n"u8);
            ReadOnlySpan<byte> field = line < 0 ? head : head[..line];
            if (field.Length > 5 && Ascii.EqualsIgnoreCase(field[..5], "host:"u8))
            {
                ReadOnlySpan<byte> value = field[5..].Trim((byte)' ').Trim((byte)'\t');
                if (value.IsEmpty || value[0] == (byte)'[')
                {
                    return null; // An IPv6 literal names no host a rule can match.
                }
                int colon = value.IndexOf((byte)':');
                if (colon >= 0)
                {
                    value = value[..colon];
                }
                return Ascii.IsValid(value) ? Encoding.ASCII.GetString(value).ToLowerInvariant() : null;
            }
        }
        return null;
    }
}
