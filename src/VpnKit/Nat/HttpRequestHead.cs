using System.Globalization;
using System.Text;

namespace Kit.VpnKit.Nat;

/// <summary>
/// One HTTP/1.x request head (RFC 9112 §2-§6), parsed whole so the gateway can send it on rewritten: to an upstream
/// proxy in absolute form with <c>Proxy-Authorization</c> added, or to an origin in origin form. Field values are
/// kept byte for byte (Latin-1 round-trips every byte). Parsing never throws: bad input gives a reason, and the caller
/// answers 400 or closes. Request smuggling is refused, not repaired: a request with both Content-Length and
/// Transfer-Encoding, differing Content-Lengths or a Transfer-Encoding that does not end in chunked (§6.1, §6.3).
/// </summary>
internal sealed class HttpRequestHead
{
    private readonly List<(string Name, string Value)> _fields = [];

    private HttpRequestHead(string method, string target, string version)
    {
        Method = method;
        Target = target;
        Version = version;
    }

    public string Method { get; }
    public string Target { get; }
    public string Version { get; }
    public string? Host { get; private set; }

    /// <summary>The body's length by Content-Length; -1 when there is none (or the body is chunked).</summary>
    public long ContentLength { get; private set; } = -1;

    public bool Chunked { get; private set; }

    public bool IsConnect => Method == "CONNECT";

    /// <summary>Parses a head that ends with its empty line; false with a reason when it is not a valid request head.</summary>
    public static bool TryParse(ReadOnlySpan<byte> head, out HttpRequestHead request, out string reason)
    {
        request = null!;
        string text = Encoding.Latin1.GetString(head);
        // §2.2: a bare LF is accepted as a line terminator; a CR anywhere else is not.
        string[] lines = text.Replace("\r\n", "\n", StringComparison.Ordinal).Split('\n');
        int first = 0;
        while (first < lines.Length && lines[first].Length == 0)
        {
            first++; // §2.2: empty lines before the request line are ignored.
        }
        string[] parts = first < lines.Length ? lines[first].Split(' ') : [];
        if (parts.Length != 3 || !IsToken(parts[0]) || parts[1].Length == 0 || HasControl(parts[1]) || !IsVersion(parts[2]))
        {
            reason = "malformed request line";
            return false;
        }
        var r = new HttpRequestHead(parts[0], parts[1], parts[2]);
        bool transferEncoding = false;
        for (int i = first + 1; i < lines.Length && lines[i].Length > 0; i++)
        {
            string line = lines[i];
            int colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon <= 0 || !IsToken(line[..colon]))
            {
                reason = line[0] is ' ' or '\t' ? "obsolete line folding" : "a header line without a field name";
                return false;
            }
            string name = line[..colon];
            string value = line[(colon + 1)..].Trim(' ', '\t');
            if (HasControl(value))
            {
                reason = $"a control character in {name}";
                return false;
            }
            if (name.Equals("Host", StringComparison.OrdinalIgnoreCase))
            {
                if (r.Host is not null)
                {
                    reason = "more than one Host"; // RFC 9112 §3.2: 400.
                    return false;
                }
                r.Host = value;
            }
            else if (name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
            {
                foreach (string v in value.Split(','))
                {
                    if (!long.TryParse(v.Trim(' ', '\t'), NumberStyles.None, CultureInfo.InvariantCulture, out long n) || n > (1L << 50) || (r.ContentLength >= 0 && n != r.ContentLength))
                    {
                        reason = "invalid Content-Length";
                        return false;
                    }
                    r.ContentLength = n;
                }
            }
            else if (name.Equals("Transfer-Encoding", StringComparison.OrdinalIgnoreCase))
            {
                transferEncoding = true;
                r.Chunked = value[(value.LastIndexOf(',') + 1)..].Trim(' ', '\t').Equals("chunked", StringComparison.OrdinalIgnoreCase);
            }
            r._fields.Add((name, value));
        }
        if (transferEncoding && (!r.Chunked || r.ContentLength >= 0))
        {
            reason = r.Chunked ? "both Content-Length and Transfer-Encoding" : "Transfer-Encoding without chunked";
            return false;
        }
        request = r;
        reason = "";
        return true;
    }

    /// <summary>
    /// The absolute-form target's authority and path (RFC 9112 §3.2.2): <c>http://host[:port]/path</c> gives host, port
    /// (80 by default) and <c>/path</c>. False for other forms and schemes.
    /// </summary>
    public bool TryGetAbsolute(out string host, out int port, out string path)
    {
        host = "";
        port = 80;
        path = "/";
        const string Scheme = "http://";
        if (!Target.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }
        string rest = Target[Scheme.Length..];
        int slash = rest.IndexOfAny(['/', '?']);
        string authority = slash < 0 ? rest : rest[..slash];
        path = slash < 0 ? "/" : rest[slash] == '?' ? "/" + rest[slash..] : rest[slash..];
        return !authority.Contains('@', StringComparison.Ordinal) && TrySplitAuthority(authority, 80, out host, out port);
    }

    /// <summary><c>host[:port]</c> (RFC 9110 §4.2.1, IPv6 in brackets) with <paramref name="defaultPort"/> when absent.</summary>
    public static bool TrySplitAuthority(string authority, int defaultPort, out string host, out int port)
    {
        port = defaultPort;
        int colon = authority.LastIndexOf(':');
        if (colon >= 0 && !authority.EndsWith(']'))
        {
            host = authority[..colon];
            if (!int.TryParse(authority[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out port) || port is < 1 or > 65535)
            {
                return false;
            }
        }
        else
        {
            host = authority;
        }
        host = host.TrimStart('[').TrimEnd(']').ToLowerInvariant();
        return host.Length is > 0 and <= 253 && !HasControl(host) && host.IndexOfAny([' ', '/', '@', '\\']) < 0;
    }

    /// <summary>
    /// The head as it goes on: request line with <paramref name="target"/>, the fields in order, <c>Host</c> added when
    /// absent, and the empty line. A <c>Proxy-Authorization</c> the guest sent is replaced when
    /// <paramref name="authorization"/> is given (the gateway's credentials are the ones used) and dropped when
    /// <paramref name="toOrigin"/> (it was meant for a proxy, RFC 9110 §11.7.2).
    /// </summary>
    public byte[] Write(string target, string? authorization, bool toOrigin, string? hostIfAbsent = null)
    {
        var b = new StringBuilder(256);
        b.Append(Method).Append(' ').Append(target).Append(' ').Append(Version).Append("\r\n");
        if (Host is null && hostIfAbsent is not null)
        {
            b.Append("Host: ").Append(hostIfAbsent).Append("\r\n");
        }
        foreach ((string name, string value) in _fields)
        {
            if ((authorization is null && !toOrigin) || !name.Equals("Proxy-Authorization", StringComparison.OrdinalIgnoreCase))
            {
                b.Append(name).Append(": ").Append(value).Append("\r\n");
            }
        }
        if (authorization is not null)
        {
            b.Append("Proxy-Authorization: ").Append(authorization).Append("\r\n");
        }
        b.Append("\r\n");
        return Encoding.Latin1.GetBytes(b.ToString());
    }

    private static bool IsVersion(string v) => v.Length == 8 && v.StartsWith("HTTP/1.", StringComparison.Ordinal) && char.IsAsciiDigit(v[7]);

    private static bool IsToken(string t) => Kit.VpnKit.Inspect.HttpParser.IsToken(Encoding.Latin1.GetBytes(t));

    private static bool HasControl(string s)
    {
        foreach (char c in s)
        {
            if (c is < ' ' and not '\t' or '\x7f')
            {
                return true;
            }
        }
        return false;
    }
}
