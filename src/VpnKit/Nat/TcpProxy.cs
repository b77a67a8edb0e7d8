using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Stack;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Nat;

/// <summary>
/// Carries one terminated guest TCP connection to a host socket, both ways, with back-pressure: guest bytes are
/// read from the engine only as fast as the host socket takes them (the engine's window shrinks meanwhile), and host
/// bytes are read from the socket only as fast as the engine's bounded send buffer drains.
/// Guest FIN becomes shutdown(SHUT_WR) and host EOF becomes FIN (half-close); a reset on either side resets the other.
/// </summary>
internal sealed partial class TcpProxy
{
    private const int ChunkSize = 64 * 1024;
    private readonly EngineGate _gate;
    private readonly TcpConnection _c;
    private readonly Socket _socket;
    private readonly ILogger _log;
    private readonly Signal _readable = new();
    private readonly Signal _writable = new();
    private readonly Action<TcpProxy> _onDone;
    private int _pumpsLeft = 2;
    private int _disposed;

    public TcpProxy(EngineGate gate, TcpConnection connection, Socket socket, ILogger log, Action<TcpProxy> onDone)
    {
        _gate = gate;
        _c = connection;
        _socket = socket;
        _log = log;
        _onDone = onDone;
        connection.Tag = this;
    }

    public TcpConnection Connection => _c;

    /// <summary>Outbound (guest-initiated): connect the host socket first; the guest sees SYN-ACK only on success.</summary>
    public async Task ConnectAsync(EndPoint target, TimeSpan timeout)
    {
        bool ok;
        try
        {
            using var cts = new CancellationTokenSource(timeout);
            await _socket.ConnectAsync(target, cts.Token).ConfigureAwait(false);
            _socket.NoDelay = true;
            ok = true;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            LogConnectFailed(_log, target, e.Message);
            ok = false;
        }
        bool started;
        lock (_gate.Sync)
        {
            started = _gate.Engine.CompleteConnect(_c, ok, EngineGate.Now);
        }
        if (!started)
        {
            DisposeSocket();
            _onDone(this);
            return;
        }
        StartPumps();
    }

    /// <summary>Inbound (published port): the engine reached ESTABLISHED with the guest.</summary>
    public void StartPumps()
    {
        _ = GuestToHostAsync();
        _ = HostToGuestAsync();
    }

    public void OnReadable() => _readable.Set();

    public void OnWritable() => _writable.Set();

    // Wake-ups recorded under the engine lock and delivered after it is released (see NatHost.RunWakeups), so the
    // pump's continuation can run inline on the link thread without a thread-pool hop.
    internal bool WakeQueued;
    internal bool WakeReadable;
    internal bool WakeWritable;

    internal void Wake(bool readable, bool writable)
    {
        if (readable)
        {
            _readable.Set(inline: true);
        }
        if (writable)
        {
            _writable.Set(inline: true);
        }
    }

    /// <summary>The engine reset the connection: drop the host socket (with RST via linger 0).</summary>
    public void OnReset()
    {
        try
        {
            _socket.LingerState = new LingerOption(true, 0);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        DisposeSocket();
        _readable.Set();
        _writable.Set();
    }

    private async Task GuestToHostAsync()
    {
        // Buffers are rented only while bytes are moving, so an idle connection holds none (RSS per idle flow).
        byte[]? buffer = null;
        try
        {
            while (true)
            {
                int n;
                bool eof;
                lock (_gate.Sync)
                {
                    if (_c.IsReset)
                    {
                        return;
                    }
                    if (_c.Readable > 0)
                    {
                        buffer ??= ArrayPool<byte>.Shared.Rent(ChunkSize);
                        n = _gate.Engine.TcpRead(_c, buffer, EngineGate.Now);
                    }
                    else
                    {
                        n = 0;
                    }
                    eof = n == 0 && _c.GuestFinished;
                }
                if (n > 0)
                {
                    int sent = 0;
                    while (sent < n)
                    {
                        sent += await _socket.SendAsync(buffer.AsMemory(sent, n - sent), SocketFlags.None).ConfigureAwait(false);
                    }
                    continue;
                }
                if (eof)
                {
                    _socket.Shutdown(SocketShutdown.Send);
                    return;
                }
                if (buffer is not null)
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = null;
                }
                await _readable.WaitAsync().ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Abort();
        }
        finally
        {
            if (buffer is not null)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
            PumpDone();
        }
    }

    private async Task HostToGuestAsync()
    {
        byte[]? buffer = null;
        try
        {
            bool drained = true;
            while (true)
            {
                // After a short read the socket is (almost surely) empty: wait for readiness without asking the kernel
                // first (no FIONREAD per round trip); after a full chunk, read on at once.
                if (drained)
                {
                    // A zero-byte receive waits for data without pinning a buffer to an idle connection.
                    if (buffer is not null)
                    {
                        ArrayPool<byte>.Shared.Return(buffer);
                        buffer = null;
                    }
                    await _socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None).ConfigureAwait(false);
                }
                buffer ??= ArrayPool<byte>.Shared.Rent(ChunkSize);
                int n = await _socket.ReceiveAsync(buffer.AsMemory(0, ChunkSize), SocketFlags.None).ConfigureAwait(false);
                drained = n < ChunkSize;
                // A full read with more already queued in the socket: the engine may hold a short last segment for
                // the next read (which returns at once), so bulk data leaves in full segments.
                bool more = !drained && _socket.Available > 0;
                if (n == 0)
                {
                    lock (_gate.Sync)
                    {
                        _gate.Engine.TcpShutdown(_c, EngineGate.Now);
                    }
                    return;
                }
                int off = 0;
                while (off < n)
                {
                    bool writable;
                    lock (_gate.Sync)
                    {
                        off += _gate.Engine.TcpWrite(_c, buffer.AsSpan(off, n - off), EngineGate.Now, more);
                        writable = _c.CanWrite;
                    }
                    if (!writable)
                    {
                        return;
                    }
                    if (off < n)
                    {
                        await _writable.WaitAsync().ConfigureAwait(false);
                    }
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Abort();
        }
        finally
        {
            if (buffer is not null)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
            PumpDone();
        }
    }

    /// <summary>The host socket failed: reset the guest side.</summary>
    private void Abort()
    {
        lock (_gate.Sync)
        {
            _gate.Engine.TcpAbort(_c, EngineGate.Now);
        }
        DisposeSocket();
        _readable.Set();
        _writable.Set();
    }

    private void PumpDone()
    {
        if (Interlocked.Decrement(ref _pumpsLeft) == 0)
        {
            DisposeSocket();
            _onDone(this);
        }
    }

    private void DisposeSocket()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _socket.Dispose();
        }
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "host connect to {Target} failed: {Reason}")]
    private static partial void LogConnectFailed(ILogger log, EndPoint target, string reason);
}
