using System.Globalization;
using System.Net.Sockets;

namespace Kit.Agent;

/// <summary>Parses <c>--listen</c> and opens the listening socket.</summary>
internal static class Listen
{
    private const int Backlog = 64;

    /// <summary><c>vsock:PORT</c> or <c>unix:PATH</c>.</summary>
    public static Socket Open(string spec)
    {
        if (spec.StartsWith("vsock:", StringComparison.Ordinal))
        {
            if (!uint.TryParse(spec.AsSpan(6), NumberStyles.None, CultureInfo.InvariantCulture, out uint port))
            {
                throw new ArgumentException($"bad vsock port in {spec}");
            }
            var socket = new Socket(VsockEndPoint.Vsock, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                socket.Bind(new VsockEndPoint(VsockEndPoint.AnyCid, port));
                socket.Listen(Backlog);
                return socket;
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
        if (spec.StartsWith("unix:", StringComparison.Ordinal) && spec.Length > 5)
        {
            // Nothing at the path is removed first (that would let a mistyped path delete a file): bind fails instead.
            string path = spec[5..];
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                socket.Bind(new UnixDomainSocketEndPoint(path));
                socket.Listen(Backlog);
                return socket;
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
        throw new ArgumentException($"--listen takes vsock:PORT or unix:PATH, not {spec}");
    }
}
