using System.Collections.Concurrent;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Kit.Linux;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.HyperKit.Devices.Virtio.Vsock;

/// <summary>
/// The host side of virtio-vsock on Unix sockets, with Firecracker's protocol (its docs/vsock.md):
/// <list type="bullet">
/// <item>host to guest: a client connects to <see cref="Path"/> and writes <c>CONNECT &lt;port&gt;\n</c>; once the guest
/// accepts, it reads <c>OK &lt;host port&gt;\n</c> (the port the guest sees as the source) and the stream follows; if the
/// guest refuses, the socket is closed;</item>
/// <item>guest to host: a guest connection to CID 2 port P is connected to the Unix socket <c>&lt;Path&gt;_P</c>; if
/// nobody listens there the guest gets RST.</item>
/// </list>
/// Each connection has two async pumps (socket to guest, guest to socket) over the connection's bounded buffers;
/// they wait for credit or data instead of buffering more. A 500 ms timer applies connect and close timeouts.
/// </summary>
public sealed partial class UnixVsockHost : IVsockHost, IDisposable
{
    private const int MaxConnectLine = 64;
    private static readonly TimeSpan ConnectLineTimeout = TimeSpan.FromSeconds(5);

    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<Link, byte> _links = new();
    private VirtioVsock? _device;
    private Socket? _listener;
    private UnixSocketFile.Binding? _socketFile;
    private Timer? _timer;

    public UnixVsockHost(string path, ILogger? logger = null)
    {
        Path = System.IO.Path.GetFullPath(path);
        _logger = logger ?? NullLogger.Instance;
    }

    /// <summary>The listening socket host clients connect to; guest connections go to <c>Path_PORT</c>.</summary>
    public string Path { get; }

    private VirtioVsock Device => _device ?? throw new InvalidOperationException("the vsock host is not started");

    /// <summary>Binds the listening socket (replacing a stale socket file) and starts accepting.</summary>
    /// <exception cref="IOException">The path exists and is not a socket, or cannot be bound.</exception>
    public void Start(VirtioVsock device)
    {
        _device = device;
        // Only a stale socket is replaced; a live one or any other file is refused (IOException).
        Socket listener = UnixSocketFile.Bind(Path, SocketType.Stream, out UnixSocketFile.Binding binding);
        _socketFile = binding;
        try
        {
            listener.Listen(64);
        }
        catch (SocketException e)
        {
            listener.Dispose();
            binding.Dispose();
            throw new IOException($"cannot listen on {Path}: {e.Message}", e);
        }
        _listener = listener;
        _ = AcceptLoopAsync(listener);
        _timer = new Timer(_ => device.Tick(), null, 500, 500);
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
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }
            _ = HandleIncomingAsync(client);
        }
    }

    /// <summary>Reads <c>CONNECT &lt;port&gt;\n</c> (bounded, with a timeout) and asks the device for the guest port.</summary>
    private async Task HandleIncomingAsync(Socket client)
    {
        Link link = Track(new Link(client, _stop.Token));
        byte[] buffer = new byte[MaxConnectLine];
        int filled = 0;
        int newline = -1;
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(ConnectLineTimeout);
            while (newline < 0 && filled < buffer.Length)
            {
                int n = await client.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, timeout.Token).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }
                newline = Array.IndexOf(buffer, (byte)'\n', filled, n);
                filled += n;
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
        if (newline < 0 || !TryParseConnect(buffer.AsSpan(0, newline), out uint port))
        {
            LogBadConnect(_logger, Path);
            link.Dispose();
            return;
        }
        VsockConnection? connection = Device.OpenFromHost(port, link, buffer.AsSpan(newline + 1, filled - newline - 1));
        if (connection is null)
        {
            LogTooMany(_logger, port);
            link.Dispose();
        }
    }

    /// <summary>Parses <c>CONNECT &lt;decimal port&gt;</c> (a trailing \r is tolerated).</summary>
    public static bool TryParseConnect(ReadOnlySpan<byte> line, out uint port)
    {
        port = 0;
        if (line.Length > 0 && line[^1] == '\r')
        {
            line = line[..^1];
        }
        ReadOnlySpan<byte> prefix = "CONNECT "u8;
        return line.StartsWith(prefix)
            && uint.TryParse(Encoding.ASCII.GetString(line[prefix.Length..]), NumberStyles.None, CultureInfo.InvariantCulture, out port);
    }

    void IVsockHost.Connect(VsockConnection connection) => _ = ConnectToHostAsync(connection);

    private async Task ConnectToHostAsync(VsockConnection connection)
    {
        string target = $"{Path}_{connection.LocalPort.ToString(CultureInfo.InvariantCulture)}";
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        Link? link = null;
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(target), _stop.Token).ConfigureAwait(false);
            link = Track(new Link(socket, _stop.Token));
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            LogNoListener(_logger, target);
            socket.Dispose();
        }
        if (!Device.HostConnected(connection, link))
        {
            link?.Dispose();
            return;
        }
        Start(connection, link!, okLine: null);
    }

    void IVsockHost.Established(VsockConnection connection)
    {
        if (connection.Host is Link link)
        {
            byte[] ok = Encoding.ASCII.GetBytes($"OK {connection.LocalPort.ToString(CultureInfo.InvariantCulture)}\n");
            Start(connection, link, ok);
        }
    }

    private void Start(VsockConnection connection, Link link, byte[]? okLine)
    {
        _ = Task.Run(() => ToGuestPumpAsync(connection, link));
        _ = Task.Run(() => ToHostPumpAsync(connection, link, okLine));
    }

    void IVsockHost.Wake(VsockConnection connection)
    {
        if (connection.Host is Link link)
        {
            link.Wake();
        }
    }

    void IVsockHost.Close(VsockConnection connection)
    {
        if (connection.Host is Link link)
        {
            // Called under the device's lock: dispose elsewhere so no socket completion runs inside it.
            ThreadPool.UnsafeQueueUserWorkItem(static l => l.Dispose(), link, preferLocal: false);
        }
    }

    /// <summary>Host socket to guest: read only as much as the guest's credit and our buffer allow.</summary>
    private async Task ToGuestPumpAsync(VsockConnection connection, Link link)
    {
        VirtioVsock device = Device;
        try
        {
            while (true)
            {
                Memory<byte> space = device.HostReadBuffer(connection, out bool finished);
                if (finished)
                {
                    return;
                }
                if (space.IsEmpty)
                {
                    await link.ReadWake.WaitAsync(link.Token).ConfigureAwait(false);
                    continue;
                }
                int n = await link.Socket.ReceiveAsync(space, SocketFlags.None, link.Token).ConfigureAwait(false);
                device.HostReceived(connection, n);
                if (n == 0)
                {
                    return;
                }
            }
        }
        catch (SocketException e)
        {
            LogSocketError(_logger, connection.LocalPort, connection.PeerPort, e.SocketErrorCode);
            device.HostFailed(connection);
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    /// <summary>Guest to host socket: the OK line first (host-initiated), then the buffered bytes, then shutdown(SHUT_WR).</summary>
    private async Task ToHostPumpAsync(VsockConnection connection, Link link, byte[]? okLine)
    {
        VirtioVsock device = Device;
        try
        {
            if (okLine is not null)
            {
                await SendAllAsync(link, okLine).ConfigureAwait(false);
            }
            while (true)
            {
                ReadOnlyMemory<byte> data = device.HostWriteData(connection, out bool shutdownWrite, out bool finished);
                if (finished)
                {
                    return;
                }
                if (!data.IsEmpty)
                {
                    int n = await link.Socket.SendAsync(data, SocketFlags.None, link.Token).ConfigureAwait(false);
                    device.HostWritten(connection, n);
                    continue;
                }
                if (shutdownWrite)
                {
                    link.Socket.Shutdown(SocketShutdown.Send);
                    device.HostWriteShut(connection);
                    return;
                }
                await link.WriteWake.WaitAsync(link.Token).ConfigureAwait(false);
            }
        }
        catch (SocketException e)
        {
            LogSocketError(_logger, connection.LocalPort, connection.PeerPort, e.SocketErrorCode);
            device.HostFailed(connection);
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    private Link Track(Link link)
    {
        _links.TryAdd(link, 0);
        link.Disposed = () => _links.TryRemove(link, out _);
        if (_stop.IsCancellationRequested)
        {
            link.Dispose();
        }
        return link;
    }

    private static async Task SendAllAsync(Link link, ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty)
        {
            int n = await link.Socket.SendAsync(data, SocketFlags.None, link.Token).ConfigureAwait(false);
            data = data[n..];
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _device?.Stop();
        _timer?.Dispose();
        _listener?.Dispose();
        foreach (Link link in _links.Keys)
        {
            link.Dispose();
        }
        _socketFile?.Dispose();
    }

    /// <summary>One connection's host socket with the wake-ups of its two pumps.</summary>
    private sealed class Link(Socket socket, CancellationToken stop) : IDisposable
    {
        private readonly CancellationTokenSource _cts = CancellationTokenSource.CreateLinkedTokenSource(stop);
        private int _disposed;

        public Socket Socket { get; } = socket;

        public Action? Disposed { get; set; }

        public CancellationToken Token => _cts.Token;

        // Semaphores rather than events: a wake that lands between a pump's check and its wait is kept, not lost.
        public SemaphoreSlim ReadWake { get; } = new(0, 1);

        public SemaphoreSlim WriteWake { get; } = new(0, 1);

        public void Wake()
        {
            Release(ReadWake);
            Release(WriteWake);
        }

        private static void Release(SemaphoreSlim semaphore)
        {
            try
            {
                if (semaphore.CurrentCount == 0)
                {
                    semaphore.Release();
                }
            }
            catch (SemaphoreFullException)
            {
            }
        }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0)
            {
                return;
            }
            try
            {
                _cts.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
            Socket.Dispose();
            _cts.Dispose();
            Disposed?.Invoke();
        }
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "vsock: a client of {Path} sent no valid CONNECT line")]
    private static partial void LogBadConnect(ILogger logger, string path);

    [LoggerMessage(Level = LogLevel.Warning, Message = "vsock: too many connections; refused a host connection to guest port {Port}")]
    private static partial void LogTooMany(ILogger logger, uint port);

    [LoggerMessage(Level = LogLevel.Debug, Message = "vsock: nobody listens on {Target}; the guest gets RST")]
    private static partial void LogNoListener(ILogger logger, string target);

    [LoggerMessage(Level = LogLevel.Debug, Message = "vsock: host socket of {Local}<->{Peer} failed ({Error}); the guest gets RST")]
    private static partial void LogSocketError(ILogger logger, uint local, uint peer, SocketError error);
}
