using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;
using System.Threading.Channels;
using Kit.HyperKit.HostFs;

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
/// A 9P server reached over a byte stream: TCP (kit data serve, diod) or a Unix socket. One task writes queued
/// T-messages, one reads R-messages; an R-message whose size is below the header or above the limit ends the
/// connection (a lying server cannot make the VMM allocate more than the limit).
/// </summary>
public sealed class StreamNinePChannel(Func<CancellationToken, ValueTask<Stream>> connect, int maxMessage) : NinePChannel
{
    private readonly Channel<(byte[] Buffer, int Length)> _outgoing =
        Channel.CreateUnbounded<(byte[], int)>(new UnboundedChannelOptions { SingleReader = true });
    private readonly CancellationTokenSource _stop = new();
    private volatile INinePReplySink? _sink;
    private int _closed;

    /// <summary>tcp://HOST:PORT or unix:PATH (also unix://PATH).</summary>
    public static StreamNinePChannel ForAddress(string address, int maxMessage)
    {
        if (address.StartsWith("unix:", StringComparison.Ordinal))
        {
            string path = address["unix:".Length..];
            if (path.StartsWith("//", StringComparison.Ordinal))
            {
                path = path[2..];
            }
            return new StreamNinePChannel(async ct =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), ct).ConfigureAwait(false);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
                return new NetworkStream(socket, ownsSocket: true);
            }, maxMessage);
        }
        if (address.StartsWith("tcp://", StringComparison.Ordinal)
            && TryParseHostPort(address["tcp://".Length..], out string host, out int port))
        {
            return new StreamNinePChannel(async ct =>
            {
                var client = new TcpClient { NoDelay = true };
                try
                {
                    await client.ConnectAsync(host, port, ct).ConfigureAwait(false);
                }
                catch
                {
                    client.Dispose();
                    throw;
                }
                return client.GetStream();
            }, maxMessage);
        }
        throw new ArgumentException($"not a 9P server address: {address} (use tcp://HOST:PORT or unix:PATH)");
    }

    public static bool TryParseHostPort(string text, out string host, out int port)
    {
        host = "";
        port = 0;
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(text.AsSpan(colon + 1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out port)
            || port is < 1 or > 65535)
        {
            return false;
        }
        host = text[..colon].Trim('[', ']');
        return host.Length > 0;
    }

    public override void Start(INinePReplySink sink)
    {
        _sink = sink;
        _ = Task.Run(RunAsync);
    }

    public override bool TrySend(byte[] rented, int length)
    {
        if (Volatile.Read(ref _closed) != 0 || !_outgoing.Writer.TryWrite((rented, length)))
        {
            ArrayPool<byte>.Shared.Return(rented);
            return false;
        }
        return true;
    }

    private async Task RunAsync()
    {
        string reason = "closed";
        Stream? stream = null;
        try
        {
            stream = await connect(_stop.Token).ConfigureAwait(false);
            Task writer = WriteLoopAsync(stream);
            reason = await ReadLoopAsync(stream).ConfigureAwait(false);
            _stop.Cancel();
            await writer.ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            reason = e.Message;
        }
        finally
        {
            Close(reason);
            stream?.Dispose();
        }
    }

    private async Task WriteLoopAsync(Stream stream)
    {
        try
        {
            while (await _outgoing.Reader.WaitToReadAsync(_stop.Token).ConfigureAwait(false))
            {
                while (_outgoing.Reader.TryRead(out (byte[] Buffer, int Length) item))
                {
                    try
                    {
                        await stream.WriteAsync(item.Buffer.AsMemory(0, item.Length), _stop.Token).ConfigureAwait(false);
                    }
                    finally
                    {
                        ArrayPool<byte>.Shared.Return(item.Buffer);
                    }
                }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The read loop sees the same failure and reports it.
            _stop.Cancel();
            stream.Dispose();
        }
    }

    private async Task<string> ReadLoopAsync(Stream stream)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(8192);
        try
        {
            while (true)
            {
                try
                {
                    await stream.ReadExactlyAsync(buffer.AsMemory(0, 4), _stop.Token).ConfigureAwait(false);
                }
                catch (EndOfStreamException)
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
                try
                {
                    await stream.ReadExactlyAsync(buffer.AsMemory(4, (int)size - 4), _stop.Token).ConfigureAwait(false);
                }
                catch (EndOfStreamException)
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

    private void Close(string reason)
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return;
        }
        _outgoing.Writer.TryComplete();
        while (_outgoing.Reader.TryRead(out (byte[] Buffer, int Length) item))
        {
            ArrayPool<byte>.Shared.Return(item.Buffer);
        }
        _sink?.OnClosed(reason);
    }

    public override void Dispose()
    {
        // Detach first: the device disposes channels from inside Process (under the transport lock), and a sink call
        // from here would re-enter it on the same thread.
        _sink = null;
        _stop.Cancel();
        Close("disposed");
    }
}

/// <summary>
/// The built-in server for a host directory (<see cref="HostFsSession"/>), in process: one worker runs requests in
/// arrival order and hands each reply straight to the device, with no socket in between.
/// </summary>
public sealed class HostFsNinePChannel(HostFsOptions options) : NinePChannel
{
    private readonly Channel<(byte[] Buffer, int Length)> _requests =
        Channel.CreateUnbounded<(byte[], int)>(new UnboundedChannelOptions { SingleReader = true });
    private INinePReplySink? _sink;
    private int _closed;

    public override void Start(INinePReplySink sink)
    {
        _sink = sink;
        _ = Task.Factory.StartNew(Run, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    public override bool TrySend(byte[] rented, int length)
    {
        if (Volatile.Read(ref _closed) != 0 || !_requests.Writer.TryWrite((rented, length)))
        {
            ArrayPool<byte>.Shared.Return(rented);
            return false;
        }
        return true;
    }

    private void Run()
    {
        HostFsSession session;
        try
        {
            session = new HostFsSession(options);
        }
        catch (IOException e)
        {
            Closed(e.Message);
            return;
        }
        byte[] reply = ArrayPool<byte>.Shared.Rent((int)session.MessageSize);
        try
        {
            // Blocking waits are fine here: this is the channel's own long-running thread.
            while (_requests.Reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
            {
                while (_requests.Reader.TryRead(out (byte[] Buffer, int Length) item))
                {
                    try
                    {
                        if (reply.Length < session.MessageSize)
                        {
                            ArrayPool<byte>.Shared.Return(reply);
                            reply = ArrayPool<byte>.Shared.Rent((int)session.MessageSize);
                        }
                        int n = session.Handle(item.Buffer.AsSpan(0, item.Length), reply);
                        if (n > 0 && Volatile.Read(ref _closed) == 0)
                        {
                            _sink!.OnReply(reply.AsSpan(0, n));
                        }
                    }
                    finally
                    {
                        ArrayPool<byte>.Shared.Return(item.Buffer);
                    }
                }
            }
        }
        finally
        {
            session.Dispose();
            ArrayPool<byte>.Shared.Return(reply);
        }
    }

    private void Closed(string reason)
    {
        if (Interlocked.Exchange(ref _closed, 1) == 0)
        {
            _requests.Writer.TryComplete();
            _sink?.OnClosed(reason);
        }
    }

    public override void Dispose()
    {
        if (Interlocked.Exchange(ref _closed, 1) == 0)
        {
            _requests.Writer.TryComplete();
        }
    }
}
