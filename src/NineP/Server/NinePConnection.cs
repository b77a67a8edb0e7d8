using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using Microsoft.Extensions.Logging;

namespace Kit.NineP.Server;

/// <summary>
/// Serves one 9P connection over a byte stream: the transport around an <see cref="INinePDispatcher"/>. Frames are
/// cut by one loop (<see cref="NinePFrameReader"/>); each request then runs as its own task so a blocked stream read
/// never stalls the others (the Linux client pipelines many tags). Replies go out under a write lock. Tflush cancels
/// the old request and is answered only after the old reply was sent or dropped (flush(5)). A peer that breaks the
/// protocol (a bad frame size, a malformed message, an R-message, a tag already in flight) loses the connection.
/// </summary>
public sealed class NinePConnection
{
    private readonly Stream _stream;
    private readonly INinePDispatcher _dispatcher;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly SemaphoreSlim _slots;
    private readonly ConcurrentDictionary<ushort, Inflight> _inflight = new();
    private readonly CancellationTokenSource _closing = new();

    /// <summary>A connection to a <see cref="IFileSystemSession"/> (DataKit's tree), through a <see cref="VfsBackend"/>.</summary>
    public NinePConnection(Stream stream, IFileSystemSession session, NinePServerOptions options, ILogger logger)
        : this(stream, new NinePDispatcher<VfsBackend.FidState>(new VfsBackend(session), options.MaxMessageSize, options.MinMessageSize, options.MaxFidsPerConnection, logger), options.MaxInflightPerConnection, logger)
    {
    }

    /// <summary>A connection to any dispatcher; it is disposed when the connection ends.</summary>
    public NinePConnection(Stream stream, INinePDispatcher dispatcher, int maxInflight, ILogger logger)
    {
        _stream = stream;
        _dispatcher = dispatcher;
        _logger = logger;
        _slots = new SemaphoreSlim(maxInflight, maxInflight);
    }

    /// <summary>A request between decode and reply. <c>Cts</c> exists only for requests that may wait (see <see cref="MayWait"/>).</summary>
    private sealed class Inflight(CancellationTokenSource? cts)
    {
        public CancellationTokenSource? Cts { get; } = cts;
        public Task<bool> Task { get; set; } = System.Threading.Tasks.Task.FromResult(true);
        public bool Flushed { get; set; }
    }

    public async Task RunAsync(CancellationToken ct)
    {
        using CancellationTokenRegistration reg = ct.Register(() => _closing.Cancel());
        string reason = "end of stream";
        using var frames = new NinePFrameReader(_stream);
        try
        {
            while (!_closing.IsCancellationRequested)
            {
                FrameStatus status = await frames.ReadAsync(_dispatcher.MessageSize, _closing.Token).ConfigureAwait(false);
                if (status != FrameStatus.Frame)
                {
                    reason = frames.Reason;
                    if (status == FrameStatus.BadSize)
                    {
                        Log.ProtocolViolation(_logger, reason);
                    }
                    break;
                }
                if (!await DispatchAsync(frames.Frame).ConfigureAwait(false))
                {
                    reason = "protocol violation";
                    break;
                }
            }
        }
        catch (OperationCanceledException)
        {
            reason = "cancelled";
        }
        catch (IOException e)
        {
            reason = e.Message;
        }
        catch (ObjectDisposedException)
        {
            reason = "disposed";
        }
        finally
        {
            await ShutdownAsync().ConfigureAwait(false);
            Log.Closed(_logger, reason);
        }
    }

    private async Task ShutdownAsync()
    {
        _closing.Cancel();
        Task[] pending = _inflight.Values.Select(i => (Task)i.Task).ToArray();
        try
        {
            await Task.WhenAll(pending).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        try
        {
            await _dispatcher.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Log.HandlerFailed(_logger, e, "session dispose");
        }
        try
        {
            _stream.Dispose();
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Starts one request; false means the peer broke the protocol and loses the connection.</summary>
    private async ValueTask<bool> DispatchAsync(ReadOnlyMemory<byte> frame)
    {
        FcallCodec.TryReadHeader(frame.Span, out _, out MessageType type, out ushort tag);
        if (((byte)type & 1) != 0)
        {
            Log.ProtocolViolation(_logger, $"R-message {type} sent to the server");
            return false;
        }
        if (type == MessageType.Tversion)
        {
            // Answered before the next frame is read: it changes how every later frame decodes.
            return await AnswerAsync(frame, null, tag, CancellationToken.None).ConfigureAwait(false);
        }
        bool isFlush = type == MessageType.Tflush;
        if (!isFlush)
        {
            await _slots.WaitAsync(_closing.Token).ConfigureAwait(false);
        }
        var inflight = new Inflight(MayWait(type) ? CancellationTokenSource.CreateLinkedTokenSource(_closing.Token) : null);
        if (!_inflight.TryAdd(tag, inflight))
        {
            inflight.Cts?.Dispose();
            if (!isFlush)
            {
                _slots.Release();
            }
            Log.ProtocolViolation(_logger, $"tag {tag} already in flight");
            return false;
        }
        // The request keeps its own copy of the frame: the reader's buffer holds the next one while this one waits.
        byte[] copy = ArrayPool<byte>.Shared.Rent(frame.Length);
        frame.CopyTo(copy);
        // Run the handler inline until it first awaits something incomplete: most requests (walk, getattr, clunk,
        // a read of a stored file) finish synchronously and are answered without a thread-pool hop, in order. A
        // request that waits (a read of a .live stream) returns its pending task here at its first real await, so
        // the loop goes on reading and a later Tflush can cancel it. Handlers must therefore never block a thread.
        // Work the handler deferred (AfterReply) runs here, after its reply went out if it answered synchronously,
        // and before the next frame is read.
        Task<bool> task;
        using (AfterReply.Begin())
        {
            task = HandleAsync(copy, frame.Length, tag, isFlush, inflight);
        }
        inflight.Task = task;
        // A malformed message is found before the first await, so a violation is known here.
        return !task.IsCompletedSuccessfully || task.Result;
    }

    /// <summary>
    /// Requests whose handler may wait for an outside event (a stream read for the next change, a write to a pipe)
    /// and so must be cancellable by Tflush (flush(5)). Others finish on their own; a Tflush of one waits for its
    /// reply, which is what flush(5) requires anyway, and they skip allocating a CancellationTokenSource.
    /// </summary>
    private static bool MayWait(MessageType type) => type is MessageType.Tread or MessageType.Twrite or MessageType.Treaddir
        or MessageType.Topen or MessageType.Tlopen;

    private async Task<bool> HandleAsync(byte[] frame, int length, ushort tag, bool isFlush, Inflight inflight)
    {
        try
        {
            if (isFlush && length >= P9.HeaderSize + 2)
            {
                await FlushAsync(BinaryPrimitives.ReadUInt16LittleEndian(frame.AsSpan(P9.HeaderSize)), tag).ConfigureAwait(false);
            }
            return await AnswerAsync(frame.AsMemory(0, length), inflight, tag, inflight.Cts?.Token ?? _closing.Token).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(frame);
            _inflight.TryRemove(new KeyValuePair<ushort, Inflight>(tag, inflight));
            inflight.Cts?.Dispose();
            if (!isFlush)
            {
                _slots.Release();
            }
        }
    }

    /// <summary>Has the dispatcher answer one frame and sends the reply; false (and the connection closing) on a violation.</summary>
    private async Task<bool> AnswerAsync(ReadOnlyMemory<byte> frame, Inflight? inflight, ushort tag, CancellationToken ct)
    {
        byte[] reply = ArrayPool<byte>.Shared.Rent((int)Math.Max(_dispatcher.MessageSize, 8192));
        try
        {
            int n = await _dispatcher.HandleAsync(frame, reply, ct).ConfigureAwait(false);
            if (n == NinePDispatcher.Violation)
            {
                _closing.Cancel();
                return false;
            }
            if (n > 0)
            {
                await SendAsync(reply.AsMemory(0, n), inflight, tag).ConfigureAwait(false);
            }
            return true;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(reply);
        }
    }

    private async ValueTask SendAsync(ReadOnlyMemory<byte> reply, Inflight? inflight, ushort tag)
    {
        await _writeLock.WaitAsync(CancellationToken.None).ConfigureAwait(false);
        try
        {
            // The tag is free again the moment its reply is on the wire: a fast client reuses it at once.
            if (inflight is not null)
            {
                _inflight.TryRemove(new KeyValuePair<ushort, Inflight>(tag, inflight));
            }
            if (inflight is { Flushed: true } || _closing.IsCancellationRequested)
            {
                return;
            }
            await _stream.WriteAsync(reply, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            _closing.Cancel();
        }
        finally
        {
            _writeLock.Release();
        }
    }

    private async ValueTask FlushAsync(ushort oldTag, ushort tag)
    {
        if (oldTag != tag && _inflight.TryGetValue(oldTag, out Inflight? old))
        {
            await _writeLock.WaitAsync(CancellationToken.None).ConfigureAwait(false);
            try
            {
                old.Flushed = true;
            }
            finally
            {
                _writeLock.Release();
            }
            try
            {
                old.Cts?.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
            await old.Task.ConfigureAwait(false);
        }
    }
}
