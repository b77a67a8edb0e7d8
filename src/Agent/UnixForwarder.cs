using System.Net.Sockets;
using Kit.Agent.Protocol;

namespace Kit.Agent;

/// <summary>
/// Serves ForwardUnix: connects to a Unix socket in the guest (the Docker socket), answers Ok, and from then on the
/// connection is raw bytes both ways. Each direction ends with a half-close of the other side, so request/response
/// protocols that shut down their sending side (HTTP clients of the Docker API do) work.
/// </summary>
internal static class UnixForwarder
{
    private const int BufferSize = 64 * 1024;

    public static async Task<string> RunAsync(Frame request, Socket host, FrameWriter writer, CancellationToken ct)
    {
        ForwardUnixMessage forward = Messages.Decode(request, AgentJsonContext.Default.ForwardUnixMessage);
        if (string.IsNullOrEmpty(forward.Path) || forward.Path.Contains('\0', StringComparison.Ordinal))
        {
            throw new AgentProtocolException("bad ForwardUnix path");
        }
        using var guest = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await guest.ConnectAsync(new UnixDomainSocketEndPoint(forward.Path), ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or ArgumentException)
        {
            await writer.WriteJsonAsync(FrameType.Error, new ErrorMessage($"cannot connect to {forward.Path}: {e.Message}"),
                AgentJsonContext.Default.ErrorMessage, ct).ConfigureAwait(false);
            return $"forward {forward.Path} refused: {e.Message}";
        }
        await writer.WriteAsync(FrameType.Ok, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);

        Task<long> up = CopyAsync(host, guest, ct);
        Task<long> down = CopyAsync(guest, host, ct);
        try
        {
            await Task.WhenAll(up, down).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
        {
            return $"forward {forward.Path}: broken ({e.Message})";
        }
        return $"forward {forward.Path}: {up.Result} bytes in, {down.Result} bytes out";
    }

    /// <summary>Copies until end-of-stream, then half-closes the destination; a failure closes both (the caller's using).</summary>
    private static async Task<long> CopyAsync(Socket from, Socket to, CancellationToken ct)
    {
        byte[] buffer = new byte[BufferSize];
        long total = 0;
        try
        {
            while (true)
            {
                int n = await from.ReceiveAsync(buffer, SocketFlags.None, ct).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }
                int sent = 0;
                while (sent < n)
                {
                    sent += await to.SendAsync(buffer.AsMemory(sent, n - sent), SocketFlags.None, ct).ConfigureAwait(false);
                }
                total += n;
            }
            to.Shutdown(SocketShutdown.Send);
            return total;
        }
        catch
        {
            // Unblock the other direction: its peer will see the connection end rather than hang.
            from.Dispose();
            to.Dispose();
            throw;
        }
    }
}
