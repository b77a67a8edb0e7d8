using System.Net;
using System.Net.Sockets;

namespace Kit.VpnKit.Services;

/// <summary>
/// A TCP listener on an ephemeral port of the host's 127.0.0.1 that the NAT carries chosen guest connections to (DNS
/// over TCP, the proxy relay), so the engine and its TCP proxy stay unchanged for them. It accepts until disposed,
/// serves at most <c>maxSessions</c> connections at once and resets the rest, and closes each connection when its
/// handler returns. Every local user can connect to it: a handler that must serve only the NAT's sockets checks the peer.
/// </summary>
internal sealed class LoopbackAcceptor : IDisposable
{
    private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
    private readonly Func<Socket, Task> _serve;
    private readonly int _maxSessions;
    private readonly CancellationToken _stopping;
    private int _sessions;

    /// <param name="serve">Serves one connection; it owns its errors (the acceptor only closes the socket after).</param>
    /// <param name="stopping">The owner's stop: it ends the accept loop (the owner disposes the acceptor too).</param>
    public LoopbackAcceptor(int backlog, int maxSessions, Func<Socket, Task> serve, CancellationToken stopping)
    {
        _serve = serve;
        _maxSessions = maxSessions;
        _stopping = stopping;
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(backlog);
        EndPoint = (IPEndPoint)_listener.LocalEndPoint!;
        _ = AcceptLoopAsync();
    }

    /// <summary>Where the NAT connects its host sockets for these guest connections.</summary>
    public IPEndPoint EndPoint { get; }

    private async Task AcceptLoopAsync()
    {
        try
        {
            while (true)
            {
                Socket s = await _listener.AcceptAsync(_stopping).ConfigureAwait(false);
                if (Interlocked.Increment(ref _sessions) > _maxSessions)
                {
                    Interlocked.Decrement(ref _sessions);
                    Reset(s);
                    continue;
                }
                _ = ServeAsync(s);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
        {
        }
    }

    private async Task ServeAsync(Socket s)
    {
        try
        {
            await _serve(s).ConfigureAwait(false);
        }
        finally
        {
            s.Dispose();
            Interlocked.Decrement(ref _sessions);
        }
    }

    /// <summary>Closes with RST (SO_LINGER 0): the guest's connection is reset, not ended.</summary>
    public static void Reset(Socket s)
    {
        try
        {
            s.LingerState = new LingerOption(true, 0);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        s.Dispose();
    }

    public void Dispose() => _listener.Dispose();
}
