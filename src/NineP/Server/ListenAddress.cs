using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Kit.NineP.Server;

/// <summary>
/// A 9P endpoint: <c>tcp://HOST:PORT</c> (port defaults to 5640, as the original), <c>unix:PATH</c>, or the URL
/// spellings <c>unix://PATH</c> and the original's <c>file://PATH</c> (so <c>unix:///run/x.sock</c> and
/// <c>file:///run/x.sock</c> are <c>/run/x.sock</c>). The one parser for every 9P address Kit takes: where DataKit
/// listens (<c>kit data serve --listen-9p</c>, <see cref="TryParse"/>) and which server a virtio-9p share relays to
/// (<c>kit vm run --share TAG=tcp://HOST:PORT</c>, <see cref="TryParseServer"/>).
/// </summary>
public sealed record ListenAddress(EndPoint EndPoint, string Text)
{
    public const int DefaultPort = 5640;

    public bool IsUnix => EndPoint is UnixDomainSocketEndPoint;

    /// <summary>
    /// An address to listen on: the host must be an IP literal (or <c>localhost</c>, which is 127.0.0.1; an empty host
    /// is too), since a name could resolve to a public address; port 0 asks the system for a free port. Never throws.
    /// </summary>
    public static bool TryParse(string text, out ListenAddress? address, out string error) =>
        TryParse(text, forConnect: false, out address, out error);

    /// <summary>
    /// A server to connect to: as <see cref="TryParse"/>, but the host may also be a DNS name (looked up at each
    /// connect, as a server may move) and the port must be 1-65535. Never throws.
    /// </summary>
    public static bool TryParseServer(string text, out ListenAddress? address, out string error) =>
        TryParse(text, forConnect: true, out address, out error);

    private static bool TryParse(string text, bool forConnect, out ListenAddress? address, out string error)
    {
        address = null;
        error = "";
        string? path = UnixPath(text);
        if (path is not null)
        {
            if (path.Length == 0)
            {
                error = $"no socket path in '{text}'";
                return false;
            }
            address = new ListenAddress(new UnixDomainSocketEndPoint(path), $"unix:{path}");
            return true;
        }
        if (!text.StartsWith("tcp://", StringComparison.Ordinal))
        {
            error = $"'{text}' is not tcp://HOST:PORT or unix:PATH";
            return false;
        }
        string rest = text["tcp://".Length..].TrimEnd('/');
        string host = rest;
        int port = DefaultPort;
        int colon = rest.LastIndexOf(':');
        // A colon inside [...] belongs to an IPv6 literal, not to the port.
        if (colon >= 0 && colon > rest.LastIndexOf(']'))
        {
            host = rest[..colon];
            if (!int.TryParse(rest.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out port)
                || port > 65535 || (forConnect && port == 0))
            {
                error = $"bad port in '{text}' (use 1-65535)";
                return false;
            }
        }
        if (host.StartsWith('[') && host.EndsWith(']'))
        {
            host = host[1..^1];
        }
        // To listen, localhost must be one address; to connect, it stays a name so both 127.0.0.1 and ::1 are tried.
        if (host.Length == 0 || (!forConnect && host.Equals("localhost", StringComparison.OrdinalIgnoreCase)))
        {
            host = "127.0.0.1";
        }
        if (IPAddress.TryParse(host, out IPAddress? ip))
        {
            string printed = ip.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{ip}]" : ip.ToString();
            address = new ListenAddress(new IPEndPoint(ip, port), $"tcp://{printed}:{port}");
            return true;
        }
        if (!forConnect)
        {
            error = $"'{host}' is not an IP address (use 127.0.0.1 or ::1)";
            return false;
        }
        if (Uri.CheckHostName(host) != UriHostNameType.Dns)
        {
            error = $"'{host}' is neither an IP address nor a host name";
            return false;
        }
        address = new ListenAddress(new DnsEndPoint(host, port), $"tcp://{host}:{port}");
        return true;
    }

    /// <summary>The socket path of a <c>unix:</c> or <c>file://</c> address (empty if it has none), else null.</summary>
    private static string? UnixPath(string text)
    {
        string rest;
        if (text.StartsWith("unix:", StringComparison.Ordinal))
        {
            rest = text["unix:".Length..];
        }
        else if (text.StartsWith("file://", StringComparison.Ordinal))
        {
            rest = text["file:".Length..];
        }
        else
        {
            return null;
        }
        // "//" is a URL's (empty) authority: unix:///p and file:///p name /p (RFC 8089 section 2 for file:).
        return rest.StartsWith("//", StringComparison.Ordinal) ? rest[2..] : rest;
    }

    /// <summary>A socket for this address (a name resolves when connecting, to IPv4 or IPv6, so it gets a dual-mode socket).</summary>
    public Socket CreateSocket() => EndPoint switch
    {
        UnixDomainSocketEndPoint => new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified),
        DnsEndPoint => new Socket(SocketType.Stream, ProtocolType.Tcp),
        _ => new Socket(EndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp),
    };

    public override string ToString() => Text;
}
