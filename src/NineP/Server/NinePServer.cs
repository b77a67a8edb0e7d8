using System.Net;
using System.Net.Sockets;
using Kit.Linux;
using Kit.NineP.Vfs;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.NineP.Server;

/// <summary>
/// Accepts 9P connections on TCP or Unix sockets and serves each with a fresh <see cref="IFileSystemSession"/>
/// (DataKit's per-connection root). Connections are independent; one failing never affects another.
/// </summary>
public sealed class NinePServer : IAsyncDisposable
{
    private readonly Func<IFileSystemSession> _sessionFactory;
    private readonly NinePServerOptions _options;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _listeners = [];
    private readonly List<Task> _acceptLoops = [];
    private readonly List<UnixSocketFile.Binding> _socketFiles = [];
    private readonly HashSet<Task> _connections = [];
    private readonly Lock _gate = new();

    public NinePServer(Func<IFileSystemSession> sessionFactory, NinePServerOptions? options = null, ILogger? logger = null)
    {
        _sessionFactory = sessionFactory;
        _options = options ?? new NinePServerOptions();
        _logger = logger ?? NullLogger.Instance;
    }

    /// <summary>Where each listener is bound (a TCP port of 0 becomes the real port).</summary>
    public IReadOnlyList<EndPoint> EndPoints
    {
        get
        {
            lock (_gate)
            {
                return _listeners.Select(l => l.LocalEndPoint!).ToArray();
            }
        }
    }

    public int ConnectionCount
    {
        get
        {
            lock (_gate)
            {
                return _connections.Count;
            }
        }
    }

    /// <summary>
    /// Binds and starts accepting. Throws SocketException when the address is taken, and IOException when a Unix path
    /// holds a live socket or anything that is not a socket.
    /// </summary>
    public EndPoint Listen(ListenAddress address)
    {
        Socket socket;
        if (address.EndPoint is UnixDomainSocketEndPoint unix)
        {
            // Only a stale socket is replaced; any other file at the path is refused (IOException).
            socket = UnixSocketFile.Bind(unix.ToString(), SocketType.Stream, out UnixSocketFile.Binding binding);
            lock (_gate)
            {
                _socketFiles.Add(binding);
            }
        }
        else
        {
            socket = address.CreateSocket();
        }
        try
        {
            if (!address.IsUnix)
            {
                // SO_REUSEADDR only: a restarted server rebinds a port with connections in TIME_WAIT, but a port another
                // server listens on stays taken (.NET's ReuseAddress would add SO_REUSEPORT and share it).
                ReuseAddress.Enable(socket);
                socket.Bind(address.EndPoint);
            }
            socket.Listen(128);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        lock (_gate)
        {
            _listeners.Add(socket);
            _acceptLoops.Add(Task.Run(() => AcceptLoopAsync(socket)));
        }
        Log.Listening(_logger, address.IsUnix ? address.Text : socket.LocalEndPoint!.ToString()!);
        return socket.LocalEndPoint!;
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException)
            {
                continue;
            }
            if (client.AddressFamily != AddressFamily.Unix)
            {
                client.NoDelay = true;
            }
            lock (_gate)
            {
                if (_connections.Count >= _options.MaxConnections)
                {
                    Log.TooManyConnections(_logger);
                    client.Dispose();
                    continue;
                }
                Task task = ServeAsync(client);
                _connections.Add(task);
                _ = task.ContinueWith(t =>
                {
                    lock (_gate)
                    {
                        _connections.Remove(t);
                    }
                }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            }
        }
    }

    /// <summary>Serves one already-connected stream (tests use this with in-memory pipes).</summary>
    public async Task ServeStreamAsync(Stream stream, CancellationToken ct = default)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, _stop.Token);
        await new NinePConnection(stream, _sessionFactory(), _options, _logger).RunAsync(linked.Token).ConfigureAwait(false);
    }

    private async Task ServeAsync(Socket client)
    {
        await Task.Yield();
        Log.Accepted(_logger, client.RemoteEndPoint?.ToString() ?? "unix");
        var stream = new NetworkStream(client, ownsSocket: true);
        await new NinePConnection(stream, _sessionFactory(), _options, _logger).RunAsync(_stop.Token).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        Task[] tasks;
        lock (_gate)
        {
            foreach (Socket l in _listeners)
            {
                l.Dispose();
            }
            foreach (UnixSocketFile.Binding b in _socketFiles)
            {
                b.Dispose();
            }
            tasks = [.. _acceptLoops, .. _connections];
        }
        try
        {
            await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(15)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        _stop.Dispose();
    }
}
