using System.Net.Sockets;
using System.Reflection;
using Kit.Agent.Protocol;

namespace Kit.Agent;

/// <summary>
/// One host connection: Hello both ways, then the one request that decides what the connection is. A peer that breaks
/// the protocol gets an Error frame with the reason and loses this connection; nothing it sends can end the agent.
/// </summary>
internal static class Connection
{
    // A host that connects and then says nothing is not allowed to hold a connection for ever.
    private static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(30);

    public static string ProcNet { get; set; } = "/proc/net";

    public static async Task HandleAsync(Socket socket, long id, CancellationToken ct)
    {
        string outcome;
        await using (var stream = new SocketStream(socket))
        using (var reader = new FrameReader(stream))
        {
            var writer = new FrameWriter(stream);
            try
            {
                outcome = await ServeAsync(socket, reader, writer, ct).ConfigureAwait(false);
            }
            catch (AgentProtocolException e)
            {
                outcome = $"protocol error: {e.Message}";
                await TrySendErrorAsync(writer, e.Message).ConfigureAwait(false);
                await CloseGracefullyAsync(socket).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                outcome = "handshake timed out";
                await TrySendErrorAsync(writer, "timed out waiting for Hello and a request").ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
                outcome = $"connection lost: {e.Message}";
            }
            catch (Exception e)
            {
                // A bug of ours: this connection ends, the agent keeps serving.
                outcome = $"internal error: {e}";
                await TrySendErrorAsync(writer, $"internal error: {e.Message}").ConfigureAwait(false);
            }
        }
        Log.Line($"connection {id}: {outcome}");
    }

    private static async Task<string> ServeAsync(Socket socket, FrameReader reader, FrameWriter writer, CancellationToken ct)
    {
        Frame request;
        using (var handshake = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            handshake.CancelAfter(HandshakeTimeout);
            Frame? hello = await reader.ReadAsync(handshake.Token).ConfigureAwait(false);
            if (hello is null)
            {
                return "closed before Hello";
            }
            if (hello.Value.Type != FrameType.Hello)
            {
                throw new AgentProtocolException($"expected Hello first, got {hello.Value.Type}");
            }
            HelloMessage theirs = Messages.Decode(hello.Value, AgentJsonContext.Default.HelloMessage);
            if (theirs.Version != AgentProtocolVersion.Current)
            {
                throw new AgentProtocolException(
                    $"protocol version {theirs.Version} is not supported; this agent speaks version {AgentProtocolVersion.Current}");
            }
            await writer.WriteJsonAsync(FrameType.Hello, Identity(), AgentJsonContext.Default.HelloMessage, handshake.Token)
                .ConfigureAwait(false);
            Frame? next = await reader.ReadAsync(handshake.Token).ConfigureAwait(false);
            if (next is null)
            {
                return "closed after Hello";
            }
            request = next.Value;
        }
        switch (request.Type)
        {
            case FrameType.Exec:
                return await ExecHandler.RunAsync(request, reader, writer, ct).ConfigureAwait(false);
            case FrameType.WatchPorts:
                return await PortWatcher.RunAsync(reader, writer, ProcNet, ct).ConfigureAwait(false);
            case FrameType.ForwardUnix:
                return await UnixForwarder.RunAsync(request, socket, writer, ct).ConfigureAwait(false);
            case FrameType.Shutdown:
                await writer.WriteAsync(FrameType.Ok, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
                socket.Shutdown(SocketShutdown.Both);
                PowerOff.Start("Shutdown request from the host");
                return "shutdown";
            default:
                throw new AgentProtocolException(
                    $"expected a request (Exec, WatchPorts, ForwardUnix or Shutdown), got {request.Type}");
        }
    }

    private static HelloMessage Identity() => new(AgentProtocolVersion.Current)
    {
        AgentVersion = typeof(Connection).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0",
        Hostname = Environment.MachineName,
        Kernel = KernelRelease(),
    };

    private static string KernelRelease()
    {
        try
        {
            return File.ReadAllText("/proc/sys/kernel/osrelease").Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "unknown";
        }
    }

    /// <summary>
    /// Half-closes and discards what the peer still sends (bounded in bytes and time) before the close: closing a
    /// socket with unread input resets the connection, and the peer would see a reset instead of the Error and EOF.
    /// </summary>
    private static async Task CloseGracefullyAsync(Socket socket)
    {
        try
        {
            socket.Shutdown(SocketShutdown.Send);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            byte[] sink = new byte[16 * 1024];
            for (int total = 0; total < Frames.MaxFrame;)
            {
                int n = await socket.ReceiveAsync(sink, SocketFlags.None, timeout.Token).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }
                total += n;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
        {
        }
    }

    private static async Task TrySendErrorAsync(FrameWriter writer, string message)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await writer.WriteJsonAsync(FrameType.Error, new ErrorMessage(message), AgentJsonContext.Default.ErrorMessage, timeout.Token)
                .ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
        }
    }
}
