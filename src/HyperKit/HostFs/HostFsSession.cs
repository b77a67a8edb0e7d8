using Kit.NineP.Protocol;
using Kit.NineP.Server;

namespace Kit.HyperKit.HostFs;

/// <summary>
/// One 9P2000.L session over a host directory, answered synchronously on the caller's thread: NineP's one
/// dispatcher (<see cref="NinePDispatcher{TFid}"/>) over a <see cref="HostFsBackend"/>, whose operations never wait,
/// so every request completes inside <see cref="Handle(ReadOnlyMemory{byte}, Memory{byte})"/> (the virtio-9p device
/// calls it inline, as virtio-blk does its file I/O). Requests run one at a time under a lock (they are short system
/// calls on local files), which also makes Tflush trivial: the flushed request has always been answered already.
/// </summary>
public sealed class HostFsSession : IDisposable
{
    private readonly HostFsBackend _backend;
    private readonly NinePDispatcher<HostFid> _dispatcher;
    private readonly Lock _gate = new();
    private bool _disposed;

    public HostFsSession(HostFsOptions options)
    {
        _backend = new HostFsBackend(options);
        // The floor is NineP's own; .L only, so 9P2000 and 9P2000.u clients are answered "unknown".
        _dispatcher = new NinePDispatcher<HostFid>(_backend, options.MaxMessageSize, VersionNegotiation.MinMessageSize, options.MaxFids);
    }

    /// <summary>
    /// Told of every exception the session turned into EIO: a bug of ours, not the guest's. The fuzz harness
    /// (tests/Kit.Fuzz) makes these findings; nothing else needs it.
    /// </summary>
    internal Action<Exception>? InternalError
    {
        get => _dispatcher.InternalError;
        set => _dispatcher.InternalError = value;
    }

    /// <summary>The negotiated msize: a reply buffer of this many bytes always suffices.</summary>
    public uint MessageSize => _dispatcher.MessageSize;

    /// <summary>Host descriptors the session's fids hold now (counted against <see cref="HostFsOptions.MaxDescriptors"/>).</summary>
    internal int DescriptorCount
    {
        get
        {
            lock (_gate)
            {
                return _backend.DescriptorCount;
            }
        }
    }

    public int FidCount => _dispatcher.FidCount;

    /// <summary>
    /// Handles one whole T-message (<paramref name="request"/> is exactly one frame as framed by the transport) and
    /// writes the R-message into <paramref name="reply"/> (at least <see cref="MessageSize"/> bytes, or 8 KiB before
    /// Tversion). Returns the reply length, or 0 when the frame is too short to carry a tag (nothing can be answered).
    /// A frame the stream transport would drop the connection for (a malformed message) is answered EINVAL: the
    /// virtio queue has no connection to drop. Never throws on hostile input.
    /// </summary>
    public int Handle(ReadOnlyMemory<byte> request, Memory<byte> reply)
    {
        if (!FcallCodec.TryReadHeader(request.Span, out uint size, out MessageType type, out ushort tag))
        {
            return 0;
        }
        lock (_gate)
        {
            uint errno = _disposed ? Errno.EIO : size != request.Length || !NinePFrameReader.CheckSize(size, Math.Max(MessageSize, 8192), out _) ? Errno.EINVAL : 0;
            if (errno == 0)
            {
                ValueTask<int> pending = _dispatcher.HandleAsync(request, reply, CancellationToken.None);
                // The backend never waits, so neither does the dispatcher: the reply is ready.
                int n = pending.IsCompletedSuccessfully ? pending.Result : NinePDispatcher.Violation;
                if (n != NinePDispatcher.Violation)
                {
                    return n;
                }
                errno = FcallCodec.IsKnown(type) ? Errno.EINVAL : Errno.EOPNOTSUPP;
            }
            return NinePDispatcher.WriteError(reply.Span, Dialect.Linux, tag, errno, "");
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (!_disposed)
            {
                _disposed = true;
                _dispatcher.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }
    }
}
