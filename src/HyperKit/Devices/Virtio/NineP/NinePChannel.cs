using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net.Sockets;
using Kit.HyperKit.HostFs;
using Kit.NineP.Server;

namespace Kit.HyperKit.Devices.Virtio.NineP;

/// <summary>Where the device's 9P replies go: called on the channel's own thread.</summary>
public interface INinePReplySink
{
    /// <summary>One whole R-message (size[4] type[1] tag[2] body); the span is only valid during the call.</summary>
    void OnReply(ReadOnlySpan<byte> message);

    /// <summary>The backend is gone (connection closed, refused or broke the protocol); no reply will follow.</summary>
    void OnClosed(string reason);
}

/// <summary>
/// A 9P backend for the virtio-9p relay: takes whole T-messages and delivers whole R-messages, in any order.
/// <see cref="TrySend"/> never blocks (the device calls it under the transport lock); the device bounds what is in
/// flight by the queue size.
/// </summary>
public abstract class NinePChannel : IDisposable
{
    /// <summary>Starts the channel (connects, starts its threads).</summary>
    public abstract void Start(INinePReplySink sink);

    /// <summary>Queues one T-message; the channel owns <paramref name="rented"/> (from ArrayPool) from here on.</summary>
    public abstract bool TrySend(byte[] rented, int length);

    public abstract void Dispose();
}

/// <summary>Creates a fresh channel per driver session (after a device reset or a remount of a dead backend).</summary>
public delegate NinePChannel NinePChannelFactory();

/// <summary>
/// A backend that answers each request at once on the caller's thread (the built-in host-directory server): the
/// device completes the chain in the same <c>Process</c> call that popped it, as virtio-blk does with its file I/O,
/// with no thread hand-off (each one costs dearly under nested virtualization).
/// </summary>
public interface IInlineNinePChannel
{
    /// <summary>Handles one T-message; returns the R-message (valid until the next call) or an empty span.</summary>
    ReadOnlySpan<byte> Handle(ReadOnlyMemory<byte> request);
}

/// <summary>
/// A 9P server reached over a byte stream: TCP (kit data serve, diod) or a Unix socket. Two dedicated threads (never
/// the thread pool, which can be slow to wake under nested virtualization): one writes queued T-messages, one reads
/// R-messages and hands them to the sink. An R-message whose size is below the header or above the limit ends the
/// connection (a lying server cannot make the VMM allocate more than the limit).
/// </summary>
public sealed class StreamNinePChannel(Func<Socket> connect, int maxMessage) : NinePChannel
{
    private readonly BlockingCollection<(byte[] Buffer, int Length)> _outgoing = [];
    private volatile INinePReplySink? _sink;
    private volatile Socket? _socket;
    private int _closed;

    /// <summary>tcp://HOST:PORT or unix:PATH, as <see cref="ListenAddress.TryParseServer"/> reads them.</summary>
    public static StreamNinePChannel ForAddress(string address, int maxMessage) => new(Connector(address), maxMessage);

    /// <summary>
    /// Parses a server address once (ArgumentException if it is not one) into what opens a new connection to it;
    /// each mount gets a fresh channel over the same connector. The parser is NineP's, shared with
    /// <c>kit data serve --listen-9p</c>, so both sides of a share spell addresses alike.
    /// </summary>
    public static Func<Socket> Connector(string address)
    {
        if (!ListenAddress.TryParseServer(address, out ListenAddress? server, out string error))
        {
            throw new ArgumentException($"not a 9P server address: {error}");
        }
        return () => Connect(server!);
    }

    private static Socket Connect(ListenAddress server)
    {
        Socket socket = server.CreateSocket();
        try
        {
            // A DnsEndPoint is looked up here, at each connect.
            socket.Connect(server.EndPoint);
            if (!server.IsUnix)
            {
                socket.NoDelay = true;
            }
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public override void Start(INinePReplySink sink)
    {
        _sink = sink;
        new Thread(Run) { IsBackground = true, Name = "9p-relay-read" }.Start();
    }

    public override bool TrySend(byte[] rented, int length)
    {
        if (Volatile.Read(ref _closed) != 0 || !_outgoing.TryAdd((rented, length)))
        {
            ArrayPool<byte>.Shared.Return(rented);
            return false;
        }
        return true;
    }

    private void Run()
    {
        string reason;
        try
        {
            Socket socket = connect();
            _socket = socket;
            if (Volatile.Read(ref _closed) != 0)
            {
                socket.Dispose();
                return;
            }
            new Thread(() => WriteLoop(socket)) { IsBackground = true, Name = "9p-relay-write" }.Start();
            reason = ReadLoop(socket);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or InvalidOperationException)
        {
            reason = e.Message;
        }
        Close(reason);
    }

    private void WriteLoop(Socket socket)
    {
        try
        {
            foreach ((byte[] buffer, int length) in _outgoing.GetConsumingEnumerable())
            {
                try
                {
                    int sent = 0;
                    while (sent < length)
                    {
                        sent += socket.Send(buffer.AsSpan(sent, length - sent));
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException)
        {
            // The read loop sees the same failure (the socket is shut down here) and reports it.
            Close(e.Message);
        }
    }

    private string ReadLoop(Socket socket)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(8192);
        try
        {
            while (true)
            {
                if (!ReadExactly(socket, buffer.AsSpan(0, 4)))
                {
                    return "the 9P server closed the connection";
                }
                uint size = BinaryPrimitives.ReadUInt32LittleEndian(buffer);
                if (size < 7 || size > maxMessage)
                {
                    return $"the 9P server sent a frame of {size} bytes";
                }
                if (buffer.Length < size)
                {
                    byte[] bigger = ArrayPool<byte>.Shared.Rent((int)size);
                    buffer.AsSpan(0, 4).CopyTo(bigger);
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = bigger;
                }
                if (!ReadExactly(socket, buffer.AsSpan(4, (int)size - 4)))
                {
                    return "the 9P server closed the connection in the middle of a message";
                }
                _sink?.OnReply(buffer.AsSpan(0, (int)size));
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static bool ReadExactly(Socket socket, Span<byte> buffer)
    {
        while (!buffer.IsEmpty)
        {
            int n = socket.Receive(buffer);
            if (n == 0)
            {
                return false;
            }
            buffer = buffer[n..];
        }
        return true;
    }

    private void Close(string reason)
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return;
        }
        _outgoing.CompleteAdding();
        while (_outgoing.TryTake(out (byte[] Buffer, int Length) item))
        {
            ArrayPool<byte>.Shared.Return(item.Buffer);
        }
        try
        {
            // Unblocks the other loop's Send/Receive.
            _socket?.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        _socket?.Dispose();
        _sink?.OnClosed(reason);
    }

    public override void Dispose()
    {
        // Detach first: the device disposes channels from inside Process (under the transport lock), and a sink call
        // from here would re-enter it on the same thread.
        _sink = null;
        Close("disposed");
    }
}

/// <summary>
/// The built-in server for a host directory (<see cref="HostFsSession"/>, NineP's dispatcher over the host backend),
/// in process and inline: every request completes synchronously on the device's thread, never waiting on a task.
/// </summary>
public sealed class HostFsNinePChannel(HostFsOptions options) : NinePChannel, IInlineNinePChannel
{
    private HostFsSession? _session;
    private byte[] _reply = [];

    public override void Start(INinePReplySink sink)
    {
        try
        {
            _session = new HostFsSession(options);
        }
        catch (IOException e)
        {
            // The directory vanished since start-up: every request fails (EIO) instead of the VMM.
            Error = e.Message;
        }
    }

    /// <summary>Why the export could not be opened, if it could not.</summary>
    public string? Error { get; private set; }

    public ReadOnlySpan<byte> Handle(ReadOnlyMemory<byte> request)
    {
        if (_session is null)
        {
            return [];
        }
        if (_reply.Length < _session.MessageSize)
        {
            _reply = new byte[Math.Max(_session.MessageSize, 8192)];
        }
        int n = _session.Handle(request, _reply);
        return _reply.AsSpan(0, n);
    }

    public override bool TrySend(byte[] rented, int length)
    {
        ArrayPool<byte>.Shared.Return(rented);
        return false;
    }

    public override void Dispose() => _session?.Dispose();
}
