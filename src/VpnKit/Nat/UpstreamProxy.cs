using System.Globalization;
using System.Net;
using System.Text;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Nat;

/// <summary>
/// One upstream HTTP proxy (<c>--http-proxy</c> / <c>--https-proxy</c>): where it listens and, when its URL carried
/// <c>user:password</c>, the <c>Proxy-Authorization</c> value (RFC 9110 §11.7.2, the Basic scheme of RFC 7617) the
/// gateway adds for the guest. The credentials never appear in <see cref="ToString"/>, logs or the inspector.
/// </summary>
public sealed class ProxyServer
{
    private ProxyServer(string host, int port, string? authorization)
    {
        Host = host;
        Port = port;
        Authorization = authorization;
    }

    /// <summary>The proxy's host: an IP literal or a name the host's resolver knows.</summary>
    public string Host { get; }

    public int Port { get; }

    /// <summary><c>Basic base64(user:password)</c>, or null when the URL had no credentials.</summary>
    internal string? Authorization { get; }

    /// <summary>Whether it listens on the host's loopback (where 127.0.0.1 means the same host as for the gateway).</summary>
    internal bool OnLoopback => IPAddress.TryParse(Host, out IPAddress? a) ? IPAddress.IsLoopback(a) : Host.Equals("localhost", StringComparison.OrdinalIgnoreCase);

    /// <summary>The URL without its credentials (what logs and errors may show).</summary>
    public override string ToString() => $"http://{(Host.Contains(':', StringComparison.Ordinal) ? $"[{Host}]" : Host)}:{Port}";

    /// <summary>
    /// Reads <c>http://[user:password@]host[:port][/]</c> (port 80 when absent, as curl and RFC 9110 §4.2.1 say). Only
    /// http:// proxies are spoken: an https:// or socks URL is refused with the reason. <paramref name="flag"/> names
    /// the source in the message; the message never repeats the password.
    /// </summary>
    public static ProxyServer Parse(string url, string flag)
    {
        string text = url.Trim();
        if (!text.Contains("://", StringComparison.Ordinal))
        {
            text = "http://" + text; // curl takes a bare host:port as http://.
        }
        int scheme = text.IndexOf("://", StringComparison.Ordinal);
        string s = text[..scheme].ToLowerInvariant();
        if (s != "http")
        {
            throw new FormatException(s is "https" or "socks" or "socks4" or "socks4a" or "socks5" or "socks5h"
                ? $"{flag}: {s}:// proxies are not supported; only http:// proxies are (CONNECT carries TLS through them)"
                : $"{flag}: '{s}' is not a proxy scheme; give http://[user:password@]host[:port]");
        }
        string rest = text[(scheme + 3)..];
        int slash = rest.IndexOfAny(['/', '?', '#']);
        if (slash >= 0)
        {
            if (rest[slash..] != "/")
            {
                throw new FormatException($"{flag}: a proxy URL has no path, query or fragment");
            }
            rest = rest[..slash];
        }
        string? authorization = null;
        int at = rest.LastIndexOf('@');
        if (at >= 0)
        {
            string userinfo = rest[..at];
            rest = rest[(at + 1)..];
            int colon = userinfo.IndexOf(':', StringComparison.Ordinal);
            string user = Uri.UnescapeDataString(colon < 0 ? userinfo : userinfo[..colon]);
            string password = colon < 0 ? "" : Uri.UnescapeDataString(userinfo[(colon + 1)..]);
            if (user.Length == 0 || user.Contains(':', StringComparison.Ordinal) || (user + password).Any(char.IsControl))
            {
                throw new FormatException($"{flag}: the user name in the proxy URL is empty or holds ':' or control characters");
            }
            authorization = "Basic " + Convert.ToBase64String(Encoding.UTF8.GetBytes(user + ":" + password));
        }
        string host;
        string? port = null;
        if (rest.StartsWith('['))
        {
            int close = rest.IndexOf(']', StringComparison.Ordinal);
            host = close > 0 ? rest[1..close] : "";
            string after = close > 0 ? rest[(close + 1)..] : "";
            if (after.Length > 0)
            {
                port = after.StartsWith(':') ? after[1..] : "x";
            }
        }
        else
        {
            int colon = rest.LastIndexOf(':');
            host = colon < 0 ? rest : rest[..colon];
            port = colon < 0 ? null : rest[(colon + 1)..];
        }
        if (host.Length == 0 || !(IPAddress.TryParse(host, out _) || Services.DnsRecord.IsDomainName(host.ToLowerInvariant())))
        {
            throw new FormatException($"{flag}: '{host}' is not a host name or address (want http://[user:password@]host[:port])");
        }
        int p = 80;
        if (port is not null && (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out p) || p is < 1 or > 65535))
        {
            throw new FormatException($"{flag}: '{port}' is not a port (1-65535)");
        }
        return new ProxyServer(host, p, authorization);
    }
}

/// <summary>
/// Which destinations never go through the upstream proxy: curl's <c>NO_PROXY</c> list (comma- or space-separated). An
/// entry is <c>*</c> (everything), a host name that matches itself and every name under it (a leading <c>.</c> or
/// <c>*.</c> means the same), an IP address, or a CIDR block.
/// </summary>
public sealed class NoProxyList
{
    private bool _all;
    private readonly List<string> _suffixes = [];
    private readonly List<(uint Network, uint Mask)> _blocks = [];

    public static NoProxyList Empty { get; } = new();

    public static NoProxyList Parse(string? list, string flag)
    {
        var result = new NoProxyList();
        foreach (string raw in (list ?? "").Split([',', ' ', '\t'], StringSplitOptions.RemoveEmptyEntries))
        {
            string entry = raw.Trim().ToLowerInvariant();
            if (entry == "*")
            {
                result._all = true;
                return result;
            }
            int slash = entry.IndexOf('/', StringComparison.Ordinal);
            if (slash >= 0)
            {
                if (!Ip4.TryParse(entry[..slash], out uint net) || !int.TryParse(entry[(slash + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out int bits) || bits > 32)
                {
                    throw new FormatException($"{flag}: '{raw}' is not an IPv4 CIDR block");
                }
                uint mask = bits == 0 ? 0 : uint.MaxValue << (32 - bits);
                result._blocks.Add((net & mask, mask));
                continue;
            }
            if (Ip4.TryParse(entry, out uint ip))
            {
                result._blocks.Add((ip, uint.MaxValue));
                continue;
            }
            string name = entry.StartsWith("*.", StringComparison.Ordinal) ? entry[2..] : entry.TrimStart('.');
            name = name.TrimEnd('.');
            if (!Services.DnsRecord.IsDomainName(name))
            {
                throw new FormatException($"{flag}: '{raw}' is not a host name, .suffix, IPv4 address or CIDR block");
            }
            result._suffixes.Add(name);
        }
        return result;
    }

    /// <summary>Whether <paramref name="host"/> (a name or an IPv4 literal, without port) is excluded.</summary>
    public bool Matches(string host)
    {
        if (_all)
        {
            return true;
        }
        if (Ip4.TryParse(host, out uint ip))
        {
            return Matches(ip);
        }
        string name = host.TrimEnd('.').ToLowerInvariant();
        foreach (string s in _suffixes)
        {
            if (name == s || (name.Length > s.Length && name.EndsWith(s, StringComparison.Ordinal) && name[^(s.Length + 1)] == '.'))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Whether the address is excluded (by <c>*</c>, an address or a block).</summary>
    public bool Matches(uint ip)
    {
        if (_all)
        {
            return true;
        }
        foreach ((uint network, uint mask) in _blocks)
        {
            if ((ip & mask) == network)
            {
                return true;
            }
        }
        return false;
    }
}

/// <summary>
/// The gateway's upstream proxies (docs/vpnkit.md, "Upstream proxies"): with <see cref="Http"/> set, guest TCP to port 80
/// goes through it as absolute-URI requests; with <see cref="Https"/> set, guest TCP to port 443 goes through it as
/// CONNECT; <see cref="NoProxy"/> names what goes direct. The explicit proxy on 192.168.65.1:3128 uses them too.
/// </summary>
public sealed class UpstreamProxyOptions
{
    public ProxyServer? Http { get; init; }
    public ProxyServer? Https { get; init; }
    public NoProxyList NoProxy { get; init; } = NoProxyList.Empty;

    /// <summary>
    /// From the environment: <c>http_proxy</c>, <c>https_proxy</c> and <c>no_proxy</c>, each in lower case or else
    /// upper case (curl's names).
    /// </summary>
    public static UpstreamProxyOptions FromEnvironment(Func<string, string?> env)
    {
        static string? Get(Func<string, string?> env, string name) => env(name) is { Length: > 0 } v ? v : null;
        string? http = Get(env, "http_proxy") ?? Get(env, "HTTP_PROXY");
        string? https = Get(env, "https_proxy") ?? Get(env, "HTTPS_PROXY");
        string? noProxy = Get(env, "no_proxy") ?? Get(env, "NO_PROXY");
        return new UpstreamProxyOptions
        {
            Http = http is null ? null : ProxyServer.Parse(http, "http_proxy"),
            Https = https is null ? null : ProxyServer.Parse(https, "https_proxy"),
            NoProxy = NoProxyList.Parse(noProxy, "no_proxy"),
        };
    }
}
