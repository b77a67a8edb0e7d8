using System.Net.Sockets;
using System.Text;

namespace Kit.Cli.Machines;

/// <summary>
/// Host-to-guest vsock through the VMM's Unix socket, Firecracker's convention (UnixVsockHost): connect, write
/// <c>CONNECT &lt;port&gt;\n</c>, read <c>OK &lt;host port&gt;\n</c>, and the socket is then the guest connection. A guest
/// that does not listen on the port closes it instead.
/// </summary>
internal static class VsockDial
{
    private const int MaxReply = 64;

    /// <exception cref="IOException">Nobody serves the socket, or the guest refused the port.</exception>
    public static async Task<NetworkStream> ConnectAsync(string socketPath, uint port, CancellationToken ct)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct).ConfigureAwait(false);
            await socket.SendAsync(Encoding.ASCII.GetBytes($"CONNECT {port}\n"), ct).ConfigureAwait(false);
            // Byte by byte up to the newline: whatever follows it is the guest's and stays in the socket.
            byte[] one = new byte[1];
            var reply = new StringBuilder();
            while (true)
            {
                int n = await socket.ReceiveAsync(one, ct).ConfigureAwait(false);
                if (n == 0)
                {
                    throw new IOException($"the guest refused vsock port {port} (nothing listens there yet)");
                }
                if (one[0] == '\n')
                {
                    break;
                }
                if (reply.Length >= MaxReply)
                {
                    throw new IOException("the vsock socket answered CONNECT with an overlong line");
                }
                reply.Append((char)one[0]);
            }
            if (!reply.ToString().StartsWith("OK ", StringComparison.Ordinal))
            {
                throw new IOException($"the vsock socket answered CONNECT with \"{reply}\"");
            }
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new IOException($"cannot reach the machine's vsock socket {socketPath}: {e.Message}", e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
