using System.Net;
using System.Net.Sockets;

namespace Kit.NineP.Server;

/// <summary>
/// A 9P endpoint: <c>tcp://HOST:PORT</c> (port defaults to 5640, as the original), <c>unix:PATH</c>, or the original's
/// <c>file:///PATH</c> spelling of a Unix socket.
/// </summary>
public sealed record ListenAddress(EndPoint EndPoint, string Text)
{
    public const int DefaultPort = 5640;

    public bool IsUnix => EndPoint is UnixDomainSocketEndPoint;

    public static bool TryParse(string text, out ListenAddress? address, out string error)
    {
        address = null;
        error = "";
        if (text.StartsWith("unix:", StringComparison.Ordinal) || text.StartsWith("file://", StringComparison.Ordinal))
        {
            string path = text.StartsWith("unix:", StringComparison.Ordinal) ? text["unix:".Length..] : text["file://".Length..];
            if (path.StartsWith("//", StringComparison.Ordinal))
            {
                path = path[1..];
            }
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
        if (colon >= 0 && !(rest.StartsWith('[') && rest.EndsWith(']')))
        {
            host = rest[..colon];
            if (!int.TryParse(rest[(colon + 1)..], out port) || port is < 0 or > 65535)
            {
                error = $"bad port in '{text}'";
                return false;
            }
        }
        host = host.Trim('[', ']');
        if (host is "" or "localhost")
        {
            host = "127.0.0.1";
        }
        if (!IPAddress.TryParse(host, out IPAddress? ip))
        {
            error = $"'{host}' is not an IP address (use 127.0.0.1 or ::1)";
            return false;
        }
        address = new ListenAddress(new IPEndPoint(ip, port), $"tcp://{(ip.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{ip}]" : ip.ToString())}:{port}");
        return true;
    }

    public Socket CreateSocket() => IsUnix
        ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
        : new Socket(EndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);

    public override string ToString() => Text;
}
