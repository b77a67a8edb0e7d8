using System.Net.Sockets;
using Kit.HyperKit.Devices.Virtio;
using Kit.Linux;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.HyperKit.VhostUser;

/// <summary>
/// Serves one of Kit's virtio device models to vhost-user frontends (QEMU, cloud-hypervisor, crosvm): the transport
/// role <see cref="VirtioPciDevice"/> plays under Kit's own VMM, with the frontend's memory table instead of guest
/// RAM, eventfds instead of doorbells and MSI-X, and the frontend's feature negotiation instead of the common config.
/// One frontend at a time; a frontend that breaks the protocol or goes away loses its connection, the device is reset,
/// and the next frontend is served (vhost-user.rst, "Reconnect": the backend keeps nothing of the old session).
/// </summary>
public sealed partial class VhostUserBackend : IDisposable
{
    private readonly ILogger _log;
    private readonly Lock _sessionLock = new();
    private VhostUserSession? _session;
    private TaskCompletionSource _disconnected = NewTcs();
    private Socket? _listener;
    private UnixSocketFile.Binding? _socketFile;
    private Thread? _acceptThread;
    private volatile bool _disposed;

    public VhostUserBackend(VirtioDevice device, ILogger? log = null)
    {
        Device = device;
        _log = log ?? NullLogger.Instance;
        // Device-originated work (a frame for the guest, a vsock reply) takes the same path as a kick: the current
        // session's lock, Process, then the call eventfd. With no frontend it is dropped; the device keeps its data.
        device.ProcessQueue = index => CurrentSession?.Kick(index);
    }

    public VirtioDevice Device { get; }

    /// <summary>
    /// Completes when the current frontend's connection ends (or, before any frontend came, the first one's). A new
    /// task is made for the next frontend once this one completes.
    /// </summary>
    public Task Disconnected
    {
        get
        {
            lock (_sessionLock)
            {
                return _disconnected.Task;
            }
        }
    }

    /// <summary>Frontend connections served so far (for tests and diagnostics).</summary>
    public int SessionsServed { get; private set; }

    /// <summary>Why the last connection was dropped, or null if it ended with the frontend hanging up.</summary>
    public string? LastError { get; private set; }

    private VhostUserSession? CurrentSession
    {
        get
        {
            lock (_sessionLock)
            {
                return _session;
            }
        }
    }

    /// <summary>Starts serving an already-connected stream socket on its own thread; returns at once.</summary>
    /// <exception cref="InvalidOperationException">Another frontend is being served.</exception>
    public void Serve(Socket connected)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        VhostUserSession session;
        lock (_sessionLock)
        {
            if (_session is not null)
            {
                throw new InvalidOperationException("a vhost-user frontend is already being served");
            }
            session = new VhostUserSession(Device, connected, _log);
            _session = session;
        }
        var thread = new Thread(() => RunSession(session)) { IsBackground = true, Name = "vhost-user" };
        thread.Start();
    }

    /// <summary>
    /// Binds a Unix stream socket at <paramref name="unixPath"/> (mode 0600) and accepts frontends one at a time on a
    /// thread of its own. A stale socket file (nobody accepting) is replaced; anything else at the path is refused.
    /// </summary>
    /// <exception cref="IOException">The path is in use or is not a socket.</exception>
    public void Listen(string unixPath)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        string path = Path.GetFullPath(unixPath);
        // Only a stale socket is replaced; a live one or any other file is refused (IOException).
        Socket listener = UnixSocketFile.Bind(path, SocketType.Stream, out _socketFile);
        try
        {
            // The socket gives whoever connects the device and, through SET_MEM_TABLE, a way to make us map files:
            // owner only.
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            }
            listener.Listen(4);
        }
        catch (Exception e) when (e is SocketException or IOException or UnauthorizedAccessException)
        {
            listener.Dispose();
            _socketFile.Dispose();
            throw new IOException($"cannot listen on {path}: {e.Message}", e);
        }
        _listener = listener;
        _acceptThread = new Thread(() => AcceptLoop(listener)) { IsBackground = true, Name = "vhost-user accept" };
        _acceptThread.Start();
    }

    private void AcceptLoop(Socket listener)
    {
        while (!_disposed)
        {
            Socket s;
            try
            {
                s = listener.Accept();
            }
            catch (SocketException)
            {
                if (_disposed)
                {
                    return;
                }
                Thread.Sleep(100); // transient (EMFILE and friends): do not spin
                continue;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            VhostUserSession session;
            lock (_sessionLock)
            {
                session = new VhostUserSession(Device, s, _log);
                _session = session;
            }
            RunSession(session); // one frontend at a time: the next waits in the backlog
        }
    }

    private void RunSession(VhostUserSession session)
    {
        SessionsServed++;
        LogConnected(_log, SessionsServed);
        string? error = null;
        try
        {
            error = session.Run();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A bug of ours must not take the process down with the frontend: log it, drop this connection.
            error = $"internal error: {e.Message}";
            LogInternalError(_log, e);
        }
        finally
        {
            session.Dispose();
            TaskCompletionSource done;
            lock (_sessionLock)
            {
                if (ReferenceEquals(_session, session))
                {
                    _session = null;
                }
                done = _disconnected;
                _disconnected = NewTcs();
                LastError = error;
            }
            if (error is null)
            {
                LogDisconnected(_log);
            }
            else
            {
                LogDropped(_log, error);
            }
            done.TrySetResult();
        }
    }

    private static TaskCompletionSource NewTcs() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        Device.ProcessQueue = _ => { };
        _listener?.Dispose();
        CurrentSession?.Abort();
        _acceptThread?.Join(TimeSpan.FromSeconds(5));
        _socketFile?.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "vhost-user: frontend {Count} connected")]
    private static partial void LogConnected(ILogger logger, int count);

    [LoggerMessage(Level = LogLevel.Information, Message = "vhost-user: frontend disconnected; device reset, waiting for the next")]
    private static partial void LogDisconnected(ILogger logger);

    [LoggerMessage(Level = LogLevel.Warning, Message = "vhost-user: dropped the frontend: {Reason}")]
    private static partial void LogDropped(ILogger logger, string reason);

    [LoggerMessage(Level = LogLevel.Error, Message = "vhost-user: internal error serving a frontend")]
    private static partial void LogInternalError(ILogger logger, Exception e);
}
