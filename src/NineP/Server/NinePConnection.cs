using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using Microsoft.Extensions.Logging;

namespace Kit.NineP.Server;

/// <summary>
/// Serves one 9P connection. Frames are read in order by one loop; each request then runs as its own task so a
/// blocked stream read never stalls the others (the Linux client pipelines many tags). Replies go out under a write
/// lock. Tflush cancels the old request and is answered only after the old reply was sent or dropped (flush(5)).
/// </summary>
public sealed class NinePConnection
{
    private readonly Stream _stream;
    private readonly IFileSystemSession _session;
    private readonly NinePServerOptions _options;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly SemaphoreSlim _slots;
    private readonly FidTable<FidState> _fids;
    private readonly ConcurrentDictionary<ushort, Inflight> _inflight = new();
    private readonly CancellationTokenSource _closing = new();
    private Dialect _dialect = Dialect.Legacy;
    private uint _msize;
    private bool _versioned;

    public NinePConnection(Stream stream, IFileSystemSession session, NinePServerOptions options, ILogger logger)
    {
        _stream = stream;
        _session = session;
        _options = options;
        _logger = logger;
        _msize = options.MaxMessageSize;
        _slots = new SemaphoreSlim(options.MaxInflightPerConnection, options.MaxInflightPerConnection);
        _fids = new FidTable<FidState>(options.MaxFidsPerConnection);
    }

    /// <summary>A request between decode and reply. <c>Cts</c> exists only for requests that may wait (see <see cref="MayWait"/>).</summary>
    private sealed class Inflight(CancellationTokenSource? cts)
    {
        public CancellationTokenSource? Cts { get; } = cts;
        public Task Task { get; set; } = Task.CompletedTask;
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
                FrameStatus status = await frames.ReadAsync(_versioned ? _msize : _options.MaxMessageSize, _closing.Token).ConfigureAwait(false);
                if (status != FrameStatus.Frame)
                {
                    reason = frames.Reason;
                    if (status == FrameStatus.BadSize)
                    {
                        Log.ProtocolViolation(_logger, reason);
                    }
                    break;
                }
                // The frame is decoded (and its data copied) before DispatchAsync first awaits, so the reader's buffer
                // may be reused for the next frame.
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
        Task[] pending = _inflight.Values.Select(i => i.Task).ToArray();
        try
        {
            await Task.WhenAll(pending).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        ClunkAll();
        try
        {
            await _session.DisposeAsync().ConfigureAwait(false);
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

    private void ClunkAll()
    {
        foreach (FidState state in _fids.RemoveAll())
        {
            state.Close();
        }
    }

    /// <summary>Decodes and starts one request; false means the peer broke the protocol and loses the connection.</summary>
    private async ValueTask<bool> DispatchAsync(ReadOnlyMemory<byte> frame)
    {
        if (!FcallCodec.TryDecode(frame.Span, _dialect, out Fcall request, out string reason))
        {
            // A well-framed T-message of a type we do not know gets an error; anything else is a violation.
            if (FcallCodec.TryReadHeader(frame.Span, out _, out MessageType type, out ushort tag)
                && !FcallCodec.IsKnown(type) && ((byte)type & 1) == 0 && !_inflight.ContainsKey(tag))
            {
                await SendAsync(ErrorReply(tag, Errno.ENOSYS, "Function not implemented"), null).ConfigureAwait(false);
                return true;
            }
            Log.ProtocolViolation(_logger, reason);
            return false;
        }
        if (((byte)request.Type & 1) != 0)
        {
            Log.ProtocolViolation(_logger, $"R-message {request.Type} sent to the server");
            return false;
        }
        if (request.Type == MessageType.Tversion)
        {
            // Handled inline: it changes how every later frame decodes.
            await SendAsync(Version(request), null).ConfigureAwait(false);
            return true;
        }
        if (!_versioned)
        {
            await SendAsync(ErrorReply(request.Tag, Errno.EPROTO, "Tversion must come first"), null).ConfigureAwait(false);
            return true;
        }
        bool isFlush = request.Type == MessageType.Tflush;
        if (!isFlush)
        {
            await _slots.WaitAsync(_closing.Token).ConfigureAwait(false);
        }
        var inflight = new Inflight(MayWait(request.Type) ? CancellationTokenSource.CreateLinkedTokenSource(_closing.Token) : null);
        if (!_inflight.TryAdd(request.Tag, inflight))
        {
            inflight.Cts?.Dispose();
            if (!isFlush)
            {
                _slots.Release();
            }
            Log.ProtocolViolation(_logger, $"tag {request.Tag} already in flight");
            return false;
        }
        // Run the handler inline until it first awaits something incomplete: most requests (walk, getattr, clunk,
        // a read of a stored file) finish synchronously and are answered without a thread-pool hop, in order. A
        // request that waits (a read of a .live stream) returns its pending task here at its first real await, so
        // the loop goes on reading and a later Tflush can cancel it. Handlers must therefore never block a thread.
        inflight.Task = HandleAsync(request, inflight, isFlush);
        return true;
    }

    /// <summary>
    /// Requests whose handler may wait for an outside event (a stream read for the next change, a write to a pipe)
    /// and so must be cancellable by Tflush (flush(5)). Others finish on their own; a Tflush of one waits for its
    /// reply, which is what flush(5) requires anyway, and they skip allocating a CancellationTokenSource.
    /// </summary>
    private static bool MayWait(MessageType type) => type is MessageType.Tread or MessageType.Twrite or MessageType.Treaddir
        or MessageType.Topen or MessageType.Tlopen;

    private async Task HandleAsync(Fcall request, Inflight inflight, bool isFlush)
    {
        try
        {
            Reply reply;
            try
            {
                reply = await ExecuteAsync(request, inflight.Cts?.Token ?? _closing.Token).ConfigureAwait(false);
            }
            catch (VfsException e)
            {
                reply = ErrorReply(request.Tag, e.Errno, e.Message);
            }
            catch (OperationCanceledException)
            {
                reply = ErrorReply(request.Tag, Errno.ECANCELED, "Interrupted");
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Log.HandlerFailed(_logger, e, request.Type.ToString());
                reply = ErrorReply(request.Tag, Errno.EIO, "Input/output error");
            }
            await SendAsync(reply, inflight, request.Tag).ConfigureAwait(false);
        }
        finally
        {
            _inflight.TryRemove(new KeyValuePair<ushort, Inflight>(request.Tag, inflight));
            inflight.Cts?.Dispose();
            if (!isFlush)
            {
                _slots.Release();
            }
        }
    }

    private readonly struct Reply
    {
        public Reply(Fcall call) => Call = call;

        public Reply(byte[] raw, int length)
        {
            Raw = raw;
            RawLength = length;
        }

        public Fcall? Call { get; }
        public byte[]? Raw { get; }
        public int RawLength { get; }
    }

    private async ValueTask SendAsync(Reply reply, Inflight? inflight, ushort tag = P9.NoTag)
    {
        byte[]? rented = null;
        try
        {
            byte[] buffer;
            int length;
            if (reply.Raw is not null)
            {
                rented = reply.Raw;
                buffer = reply.Raw;
                length = reply.RawLength;
            }
            else
            {
                rented = ArrayPool<byte>.Shared.Rent((int)Math.Max(_msize, 8192));
                buffer = rented;
                length = FcallCodec.Encode(reply.Call!, _dialect, buffer);
                if (length < 0)
                {
                    length = FcallCodec.Encode(ErrorCall(reply.Call!.Tag, Errno.EMSGSIZE, "Reply too large for msize"), _dialect, buffer);
                }
            }
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
                await _stream.WriteAsync(buffer.AsMemory(0, length), CancellationToken.None).ConfigureAwait(false);
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
        finally
        {
            if (rented is not null)
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }
    }

    private Fcall ErrorCall(ushort tag, uint errno, string message) => _dialect == Dialect.Linux
        ? new Fcall { Type = MessageType.Rlerror, Tag = tag, Errno = errno }
        : new Fcall { Type = MessageType.Rerror, Tag = tag, Ename = message, Errno = errno };

    private Reply ErrorReply(ushort tag, uint errno, string message) => new(ErrorCall(tag, errno, message));

    private static Reply Ok(MessageType type, ushort tag) => new(new Fcall { Type = type, Tag = tag });

    private Reply Version(Fcall t)
    {
        // version(5): a Tversion aborts everything and clunks every fid.
        ClunkAll();
        Negotiated n = VersionNegotiation.Negotiate(t.Version, t.Msize, _options.MaxMessageSize, _options.MinMessageSize, linuxOnly: false);
        if (n.Accepted)
        {
            _msize = n.Msize;
            _dialect = n.Dialect;
            _versioned = true;
            Log.Negotiated(_logger, n.Version, _msize);
        }
        return new Reply(new Fcall { Type = MessageType.Rversion, Tag = t.Tag, Msize = n.Msize, Version = n.Version });
    }

    private async ValueTask<Reply> ExecuteAsync(Fcall t, CancellationToken ct)
    {
        switch (t.Type)
        {
            case MessageType.Tflush:
                return await FlushAsync(t).ConfigureAwait(false);
            case MessageType.Tauth:
                // No authentication. diod's libnpclient reads ENOENT (or 0) as "auth not required".
                return ErrorReply(t.Tag, Errno.ENOENT, "Authentication not required");
            case MessageType.Tattach:
                return await AttachAsync(t, ct).ConfigureAwait(false);
            case MessageType.Twalk:
                return await WalkAsync(t, ct).ConfigureAwait(false);
            case MessageType.Topen:
                return await OpenAsync(t, (t.Mode & 3) is P9.OWRITE or P9.ORDWR, (t.Mode & P9.OTRUNC) != 0, MessageType.Ropen, ct).ConfigureAwait(false);
            case MessageType.Tlopen:
                return await OpenAsync(t, (t.Flags & 3) is P9.LOWronly or P9.LORdwr, (t.Flags & P9.LOTrunc) != 0, MessageType.Rlopen, ct).ConfigureAwait(false);
            case MessageType.Tcreate:
                return await CreateAsync(t, ct).ConfigureAwait(false);
            case MessageType.Tlcreate:
                return await LCreateAsync(t, ct).ConfigureAwait(false);
            case MessageType.Tread:
                return await ReadAsync(t, ct).ConfigureAwait(false);
            case MessageType.Treaddir:
                return await ReadDirAsync(t, ct).ConfigureAwait(false);
            case MessageType.Twrite:
                return await WriteAsync(t, ct).ConfigureAwait(false);
            case MessageType.Tclunk:
                _fids.Remove(t.Fid).Close();
                return Ok(MessageType.Rclunk, t.Tag);
            case MessageType.Tremove:
                return await RemoveAsync(t, ct).ConfigureAwait(false);
            case MessageType.Tstat:
            {
                FidState f = GetFid(t.Fid);
                Stat stat = await BuildStatAsync(f.Node, ct).ConfigureAwait(false);
                return new Reply(new Fcall { Type = MessageType.Rstat, Tag = t.Tag, Stat = stat });
            }
            case MessageType.Twstat:
                return await WstatAsync(t, ct).ConfigureAwait(false);
            case MessageType.Tstatfs:
                GetFid(t.Fid);
                return new Reply(new Fcall
                {
                    Type = MessageType.Rstatfs, Tag = t.Tag,
                    StatFs = new LStatFs { Type = 0x01021997, BSize = 4096, Blocks = 1 << 20, BFree = 1 << 19, BAvail = 1 << 19, Files = 1 << 20, FFree = 1 << 19, NameLen = 255 },
                });
            case MessageType.Tsymlink:
            {
                IDirectory dir = GetDirectory(GetFid(t.Fid));
                INode node = await dir.CreateSymlinkAsync(CheckName(t.Name), t.Name2, ct).ConfigureAwait(false);
                return new Reply(new Fcall { Type = MessageType.Rsymlink, Tag = t.Tag, Qid = QidOf(node) });
            }
            case MessageType.Tmkdir:
            {
                IDirectory dir = GetDirectory(GetFid(t.DFid));
                INode node = await dir.CreateDirectoryAsync(CheckName(t.Name), ct).ConfigureAwait(false);
                return new Reply(new Fcall { Type = MessageType.Rmkdir, Tag = t.Tag, Qid = QidOf(node) });
            }
            case MessageType.Tmknod:
            case MessageType.Tlink:
                return ErrorReply(t.Tag, Errno.EPERM, "Operation not permitted");
            case MessageType.Treadlink:
            {
                FidState f = GetFid(t.Fid);
                if (f.Node is not IFile file || f.Node.Kind != NodeKind.Symlink)
                {
                    throw new VfsException(Errno.EINVAL, "Not a symlink");
                }
                string target = await file.ReadLinkAsync(ct).ConfigureAwait(false);
                return new Reply(new Fcall { Type = MessageType.Rreadlink, Tag = t.Tag, Name2 = target });
            }
            case MessageType.Tgetattr:
            {
                FidState f = GetFid(t.Fid);
                return new Reply(new Fcall { Type = MessageType.Rgetattr, Tag = t.Tag, Attr = await BuildAttrAsync(f.Node, ct).ConfigureAwait(false) });
            }
            case MessageType.Tsetattr:
                return await SetAttrAsync(t, ct).ConfigureAwait(false);
            case MessageType.Trename:
            {
                FidState f = GetFid(t.Fid);
                FidState target = GetFid(t.DFid);
                await RenameAsync(f, target, f.Node.Name, t.Name, ct).ConfigureAwait(false);
                return Ok(MessageType.Rrename, t.Tag);
            }
            case MessageType.Trenameat:
            {
                FidState from = GetFid(t.Fid);
                FidState to = GetFid(t.DFid);
                if (from.Node.Path != to.Node.Path)
                {
                    throw new VfsException(Errno.EXDEV, "Cross-directory rename is not supported");
                }
                await GetDirectory(from).RenameAsync(CheckName(t.Name), CheckName(t.Name2), ct).ConfigureAwait(false);
                return Ok(MessageType.Rrenameat, t.Tag);
            }
            case MessageType.Tunlinkat:
                await GetDirectory(GetFid(t.Fid)).RemoveAsync(CheckName(t.Name), ct).ConfigureAwait(false);
                return Ok(MessageType.Runlinkat, t.Tag);
            case MessageType.Txattrwalk:
            case MessageType.Txattrcreate:
                // No extended attributes; Linux treats EOPNOTSUPP as "none".
                return ErrorReply(t.Tag, Errno.EOPNOTSUPP, "Operation not supported");
            case MessageType.Tfsync:
                GetFid(t.Fid);
                return Ok(MessageType.Rfsync, t.Tag);
            case MessageType.Tlock:
                GetFid(t.Fid);
                return new Reply(new Fcall { Type = MessageType.Rlock, Tag = t.Tag, LockStatus = 0 });
            case MessageType.Tgetlock:
                GetFid(t.Fid);
                // F_UNLCK: nothing holds a lock; locks are advisory and not tracked.
                return new Reply(new Fcall { Type = MessageType.Rgetlock, Tag = t.Tag, LockType = 2, LockStart = t.LockStart, LockLength = t.LockLength, ProcId = t.ProcId, ClientId = t.ClientId });
            default:
                return ErrorReply(t.Tag, Errno.ENOSYS, "Function not implemented");
        }
    }

    private async ValueTask<Reply> FlushAsync(Fcall t)
    {
        if (t.OldTag != t.Tag && _inflight.TryGetValue(t.OldTag, out Inflight? old))
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
        return Ok(MessageType.Rflush, t.Tag);
    }

    private FidState GetFid(uint fid) => _fids.Get(fid);

    private static IDirectory GetDirectory(FidState f) =>
        f.Node as IDirectory ?? throw new VfsException(Errno.ENOTDIR, $"\"{f.Node.Name}\" is not a directory");

    /// <summary>The shared entry-name rules, and text only: the DataKit tree keeps names as (UTF-8) git entry names.</summary>
    private static string CheckName(string name) =>
        (NameRules.EntryError(name) ?? NameRules.TextError(name)) is { } e ? throw e : name;

    private async ValueTask<Reply> AttachAsync(Fcall t, CancellationToken ct)
    {
        _fids.EnsureFree(t.Fid);
        IDirectory root = await _session.AttachAsync(t.Uname, t.Aname, ct).ConfigureAwait(false);
        _fids.Add(t.Fid, new FidState(root, null));
        return new Reply(new Fcall { Type = MessageType.Rattach, Tag = t.Tag, Qid = QidOf(root) });
    }

    private async ValueTask<Reply> WalkAsync(Fcall t, CancellationToken ct)
    {
        FidState start = GetFid(t.Fid);
        // walk(5) forbids walking an open fid, but diod's clients walk from an opened directory to stat its
        // entries, and diod allows it; only re-pointing an open fid in place is refused.
        if (start.IsOpen && t.NewFid == t.Fid)
        {
            throw new VfsException(Errno.EBADF, "Can't walk from an open fid");
        }
        if (t.NewFid != t.Fid)
        {
            _fids.EnsureFree(t.NewFid);
        }
        INode node = start.Node;
        Ancestry? parents = start.Parents;
        var qids = new Qid[t.Wnames.Length];
        for (int i = 0; i < t.Wnames.Length; i++)
        {
            string name = t.Wnames[i];
            VfsException? failure = NameRules.WalkError(name) ?? NameRules.TextError(name)
                ?? (node is IDirectory ? null : new VfsException(Errno.ENOTDIR, "Can't walk from a file"));
            if (failure is null && name == "..")
            {
                // walk(5): ".." of the root is the root.
                if (parents is not null)
                {
                    node = parents.Directory;
                    parents = parents.Parent;
                }
            }
            else if (failure is null)
            {
                var dir = (IDirectory)node;
                INode? child = await dir.LookupAsync(name, ct).ConfigureAwait(false);
                if (child is null)
                {
                    failure = VfsErrors.NotFound();
                }
                else
                {
                    parents = new Ancestry(dir, parents);
                    node = child;
                }
            }
            if (failure is not null)
            {
                // walk(5): an error on the first name is an Rerror; later, a partial Rwalk.
                if (i == 0)
                {
                    throw failure;
                }
                return new Reply(new Fcall { Type = MessageType.Rwalk, Tag = t.Tag, Wqids = qids[..i] });
            }
            qids[i] = QidOf(node);
        }
        var state = new FidState(node, parents);
        if (t.NewFid == t.Fid)
        {
            _fids.Replace(t.Fid, state);
        }
        else
        {
            _fids.Add(t.NewFid, state);
        }
        return new Reply(new Fcall { Type = MessageType.Rwalk, Tag = t.Tag, Wqids = qids });
    }

    private async ValueTask<Reply> OpenAsync(Fcall t, bool write, bool truncate, MessageType replyType, CancellationToken ct)
    {
        FidState f = GetFid(t.Fid);
        if (f.IsOpen)
        {
            throw new VfsException(Errno.EBADF, "Already open");
        }
        if (f.Node is IDirectory)
        {
            if (write)
            {
                throw VfsErrors.IsDirectory();
            }
            f.OpenDirectory();
        }
        else if (f.Node is IFile file)
        {
            if (truncate && write)
            {
                await file.TruncateAsync(0, ct).ConfigureAwait(false);
            }
            IOpenFile open = await file.OpenAsync(write, ct).ConfigureAwait(false);
            f.OpenFile(open, write);
        }
        return new Reply(new Fcall { Type = replyType, Tag = t.Tag, Qid = QidOf(f.Node), Iounit = _msize - P9.IoHeaderSize - 13 });
    }

    private async ValueTask<Reply> CreateAsync(Fcall t, CancellationToken ct)
    {
        FidState f = GetFid(t.Fid);
        if (f.IsOpen)
        {
            throw new VfsException(Errno.EBADF, "Can't create in an opened fid");
        }
        IDirectory dir = GetDirectory(f);
        string name = CheckName(t.Name);
        INode node;
        if ((t.Perm & P9.DmDir) != 0)
        {
            node = await dir.CreateDirectoryAsync(name, ct).ConfigureAwait(false);
        }
        else if ((t.Perm & P9.DmSymlink) != 0 && _dialect == Dialect.Unix)
        {
            if (t.Extension.Length == 0)
            {
                throw new VfsException(Errno.EINVAL, "Missing target for symlink!");
            }
            node = await dir.CreateSymlinkAsync(name, t.Extension, ct).ConfigureAwait(false);
        }
        else
        {
            // Hard links, devices, pipes and sockets are not kept: they become plain files (as the original).
            node = await dir.CreateFileAsync(name, (t.Perm & 0x40) != 0, ct).ConfigureAwait(false);
        }
        await BecomeOpenedChildAsync(t.Fid, f, dir, node, (t.Mode & 3) is P9.OWRITE or P9.ORDWR, ct).ConfigureAwait(false);
        return new Reply(new Fcall { Type = MessageType.Rcreate, Tag = t.Tag, Qid = QidOf(node), Iounit = _msize - P9.IoHeaderSize - 13 });
    }

    private async ValueTask<Reply> LCreateAsync(Fcall t, CancellationToken ct)
    {
        FidState f = GetFid(t.Fid);
        if (f.IsOpen)
        {
            throw new VfsException(Errno.EBADF, "Can't create in an opened fid");
        }
        IDirectory dir = GetDirectory(f);
        string name = CheckName(t.Name);
        if ((t.Flags & P9.LOExcl) != 0 && await dir.LookupAsync(name, ct).ConfigureAwait(false) is not null)
        {
            throw new VfsException(Errno.EEXIST, "File exists");
        }
        INode node = await dir.CreateFileAsync(name, (t.LMode & 0x40) != 0, ct).ConfigureAwait(false);
        await BecomeOpenedChildAsync(t.Fid, f, dir, node, (t.Flags & 3) is P9.LOWronly or P9.LORdwr, ct).ConfigureAwait(false);
        return new Reply(new Fcall { Type = MessageType.Rlcreate, Tag = t.Tag, Qid = QidOf(node), Iounit = _msize - P9.IoHeaderSize - 13 });
    }

    private async ValueTask BecomeOpenedChildAsync(uint fid, FidState f, IDirectory dir, INode node, bool write, CancellationToken ct)
    {
        var child = new FidState(node, new Ancestry(dir, f.Parents));
        if (node is IDirectory)
        {
            child.OpenDirectory();
        }
        else if (node is IFile file && node.Kind == NodeKind.File)
        {
            child.OpenFile(await file.OpenAsync(write, ct).ConfigureAwait(false), write);
        }
        else
        {
            child.MarkOpen();
        }
        _fids.Replace(fid, child);
    }

    private async ValueTask<Reply> ReadAsync(Fcall t, CancellationToken ct)
    {
        FidState f = GetFid(t.Fid);
        if (!f.IsOpen)
        {
            throw new VfsException(Errno.EBADF, "Can't read from unopened fid");
        }
        int count = (int)Math.Min(t.Count, _msize - P9.IoHeaderSize);
        byte[] frame = ArrayPool<byte>.Shared.Rent(P9.IoHeaderSize + count);
        int n;
        try
        {
            if (f.Node is IDirectory dir)
            {
                n = await f.Directory!.ReadStatsAsync(dir, t.Offset, frame.AsMemory(P9.IoHeaderSize, count), this, ct).ConfigureAwait(false);
            }
            else
            {
                IOpenFile open = f.File ?? throw new VfsException(Errno.EBADF, "Can't read from this fid");
                n = await open.ReadAsync(t.Offset, frame.AsMemory(P9.IoHeaderSize, count), ct).ConfigureAwait(false);
            }
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(frame);
            throw;
        }
        WriteIoHeader(frame, MessageType.Rread, t.Tag, n);
        return new Reply(frame, P9.IoHeaderSize + n);
    }

    private async ValueTask<Reply> ReadDirAsync(Fcall t, CancellationToken ct)
    {
        FidState f = GetFid(t.Fid);
        if (!f.IsOpen || f.Directory is null || f.Node is not IDirectory dir)
        {
            throw new VfsException(Errno.EBADF, "Can't readdir this fid");
        }
        int count = (int)Math.Min(t.Count, _msize - P9.IoHeaderSize);
        byte[] frame = ArrayPool<byte>.Shared.Rent(P9.IoHeaderSize + count);
        int n;
        try
        {
            n = await f.Directory.ReadEntriesAsync(dir, t.Offset, frame.AsMemory(P9.IoHeaderSize, count), ct).ConfigureAwait(false);
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(frame);
            throw;
        }
        WriteIoHeader(frame, MessageType.Rreaddir, t.Tag, n);
        return new Reply(frame, P9.IoHeaderSize + n);
    }

    private static void WriteIoHeader(byte[] frame, MessageType type, ushort tag, int count)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(frame, (uint)(P9.IoHeaderSize + count));
        frame[4] = (byte)type;
        BinaryPrimitives.WriteUInt16LittleEndian(frame.AsSpan(5), tag);
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(7), (uint)count);
    }

    private async ValueTask<Reply> WriteAsync(Fcall t, CancellationToken ct)
    {
        FidState f = GetFid(t.Fid);
        if (!f.IsOpen)
        {
            throw new VfsException(Errno.EBADF, "Can't write to unopened fid");
        }
        if (f.Node is IDirectory)
        {
            throw new VfsException(Errno.EISDIR, "Can't write to directories");
        }
        if (f.File is null || !f.Writable)
        {
            throw new VfsException(Errno.EBADF, "File not open for writing");
        }
        int n = await f.File.WriteAsync(t.Offset, t.Data, ct).ConfigureAwait(false);
        return new Reply(new Fcall { Type = MessageType.Rwrite, Tag = t.Tag, Count = (uint)n });
    }

    private async ValueTask<Reply> RemoveAsync(Fcall t, CancellationToken ct)
    {
        // remove(5): the fid is clunked even if the remove fails.
        FidState f = _fids.Remove(t.Fid);
        f.Close();
        if (f.Parents is null)
        {
            throw new VfsException(Errno.EPERM, "Can't remove the root");
        }
        await f.Parents.Directory.RemoveAsync(f.Node.Name, ct).ConfigureAwait(false);
        return Ok(MessageType.Rremove, t.Tag);
    }

    private async ValueTask RenameAsync(FidState f, FidState targetDir, string oldName, string newName, CancellationToken ct)
    {
        if (f.Parents is null)
        {
            throw new VfsException(Errno.EPERM, "Can't rename /");
        }
        if (targetDir.Node.Path != f.Parents.Directory.Path)
        {
            throw new VfsException(Errno.EXDEV, "Cross-directory rename is not supported");
        }
        await f.Parents.Directory.RenameAsync(oldName, CheckName(newName), ct).ConfigureAwait(false);
        INode? renamed = await f.Parents.Directory.LookupAsync(newName, ct).ConfigureAwait(false);
        if (renamed is not null)
        {
            f.Node = renamed;
        }
    }

    private async ValueTask<Reply> WstatAsync(Fcall t, CancellationToken ct)
    {
        FidState f = GetFid(t.Fid);
        Stat s = t.Stat ?? Stat.DontTouch;
        bool rename = s.Name.Length > 0 && s.Name != f.Node.Name;
        bool truncate = s.Length != ulong.MaxValue;
        bool chmod = s.Mode != uint.MaxValue;
        if (rename)
        {
            FidState parent = f.Parents is null ? f : new FidState(f.Parents.Directory, f.Parents.Parent);
            await RenameAsync(f, parent, f.Node.Name, s.Name, ct).ConfigureAwait(false);
        }
        if (truncate)
        {
            if (f.Node is IFile file)
            {
                await file.TruncateAsync(s.Length, ct).ConfigureAwait(false);
            }
            else if (s.Length != 0)
            {
                throw new VfsException(Errno.EISDIR, "Can't set length of a directory");
            }
        }
        if (chmod && f.Node is IFile chFile)
        {
            if ((s.Mode & P9.DmSymlink) != 0)
            {
                if (s.Extension.Length == 0)
                {
                    throw new VfsException(Errno.EINVAL, "Missing target for symlink!");
                }
                await chFile.MakeSymlinkAsync(s.Extension, ct).ConfigureAwait(false);
            }
            else
            {
                await chFile.SetExecutableAsync((s.Mode & 0x40) != 0, ct).ConfigureAwait(false);
            }
        }
        // chmod on a directory, mtime/atime/gid changes: accepted and ignored (Linux sends mtime on touch).
        return Ok(MessageType.Rwstat, t.Tag);
    }

    private async ValueTask<Reply> SetAttrAsync(Fcall t, CancellationToken ct)
    {
        FidState f = GetFid(t.Fid);
        LSetAttr a = t.SetAttr ?? new LSetAttr();
        if ((a.Valid & P9.AttrSize) != 0)
        {
            if (f.Node is IFile file)
            {
                await file.TruncateAsync(a.Size, ct).ConfigureAwait(false);
            }
            else
            {
                throw new VfsException(Errno.EISDIR, "Can't set length of a directory");
            }
        }
        if ((a.Valid & P9.AttrMode) != 0 && f.Node is IFile chFile && f.Node.Kind == NodeKind.File)
        {
            await chFile.SetExecutableAsync((a.Mode & 0x40) != 0, ct).ConfigureAwait(false);
        }
        return Ok(MessageType.Rsetattr, t.Tag);
    }

    internal static Qid QidOf(INode node) => new(
        node.Kind switch { NodeKind.Directory => P9.QtDir, NodeKind.Symlink => P9.QtSymlink, _ => P9.QtFile },
        0,
        node.Path);

    internal async ValueTask<Stat> BuildStatAsync(INode node, CancellationToken ct)
    {
        NodeInfo info = await node.GetInfoAsync(ct).ConfigureAwait(false);
        uint mode;
        string extension = "";
        switch (node.Kind)
        {
            case NodeKind.Directory:
                mode = P9.DmDir | 0x1FD; // rwxrwxr-x
                break;
            case NodeKind.Symlink:
                mode = P9.DmSymlink | 0x1FD;
                if (_dialect != Dialect.Legacy && node is IFile link)
                {
                    extension = await link.ReadLinkAsync(ct).ConfigureAwait(false);
                }
                break;
            default:
                mode = info.Executable ? 0x1FDu : 0x1B4u; // rwxrwxr-x or rw-rw-r--
                break;
        }
        return new Stat
        {
            Qid = QidOf(node), Mode = mode, Length = node.Kind == NodeKind.Directory ? 0 : info.Length, Name = node.Name,
            Uid = "root", Gid = "root", Muid = "none", Extension = extension,
        };
    }

    private static async ValueTask<LAttr> BuildAttrAsync(INode node, CancellationToken ct)
    {
        NodeInfo info = await node.GetInfoAsync(ct).ConfigureAwait(false);
        uint mode = node.Kind switch
        {
            NodeKind.Directory => P9.SIfDir | 0x1FD,
            NodeKind.Symlink => P9.SIfLnk | 0x1FF,
            _ => P9.SIfReg | (info.Executable ? 0x1FDu : 0x1B4u),
        };
        ulong size = node.Kind == NodeKind.Directory ? 0 : info.Length;
        return new LAttr
        {
            Valid = P9.GetattrBasic, Qid = QidOf(node), Mode = mode, NLink = node.Kind == NodeKind.Directory ? 2UL : 1UL,
            Size = size, BlkSize = 4096, Blocks = (size + 511) / 512,
        };
    }

    /// <summary>The chain of directories walked through, so ".." and remove/rename know the parent.</summary>
    internal sealed record Ancestry(IDirectory Directory, Ancestry? Parent);

    /// <summary>What one fid points at and, once opened, its open file or directory cursor.</summary>
    internal sealed class FidState(INode node, Ancestry? parents)
    {
        private int _closed;

        public INode Node { get; set; } = node;
        public Ancestry? Parents { get; } = parents;
        public bool IsOpen { get; private set; }
        public bool Writable { get; private set; }
        public IOpenFile? File { get; private set; }
        public DirectoryCursor? Directory { get; private set; }

        public void OpenDirectory()
        {
            Directory = new DirectoryCursor();
            IsOpen = true;
        }

        public void OpenFile(IOpenFile file, bool writable)
        {
            File = file;
            Writable = writable;
            IsOpen = true;
        }

        public void MarkOpen() => IsOpen = true;

        public void Close()
        {
            if (Interlocked.Exchange(ref _closed, 1) == 0)
            {
                File?.Close();
            }
        }
    }

    /// <summary>
    /// A snapshot of a directory's entries taken at offset 0, read out as stat records (9P2000/.u) or dirents (.L).
    /// Offset 0 always restarts (fixing the original, which could not rewind).
    /// </summary>
    internal sealed class DirectoryCursor
    {
        private IReadOnlyList<INode> _entries = [];
        private int _index;
        private ulong _offset;

        public async ValueTask<int> ReadStatsAsync(IDirectory dir, ulong offset, Memory<byte> buffer, NinePConnection connection, CancellationToken ct)
        {
            if (offset == 0)
            {
                _entries = await dir.ListAsync(ct).ConfigureAwait(false);
                _index = 0;
                _offset = 0;
            }
            else if (offset != _offset)
            {
                throw new VfsException(Errno.ESPIPE, "Can't seek in a directory");
            }
            int written = 0;
            while (_index < _entries.Count)
            {
                Stat stat = await connection.BuildStatAsync(_entries[_index], ct).ConfigureAwait(false);
                int size = StatCodec.SizeOf(stat, connection._dialect);
                if (written + size > buffer.Length)
                {
                    break;
                }
                var w = new WireWriter(buffer.Span[written..]);
                StatCodec.Write(ref w, stat, connection._dialect);
                written += w.Position;
                _index++;
            }
            _offset += (ulong)written;
            return written;
        }

        public async ValueTask<int> ReadEntriesAsync(IDirectory dir, ulong offset, Memory<byte> buffer, CancellationToken ct)
        {
            // Treaddir offsets are cookies: entry index + 1 of the last entry returned.
            if (offset == 0 || _entries.Count == 0)
            {
                _entries = await dir.ListAsync(ct).ConfigureAwait(false);
            }
            int index = (int)Math.Min(offset, (ulong)_entries.Count);
            int written = 0;
            while (index < _entries.Count)
            {
                INode node = _entries[index];
                byte type = node.Kind switch { NodeKind.Directory => 4, NodeKind.Symlink => 10, _ => 8 };
                var entry = new DirEntry(QidOf(node), (ulong)index + 1, type, node.Name);
                int size = DirEntryCodec.SizeOf(entry);
                if (written + size > buffer.Length)
                {
                    break;
                }
                var w = new WireWriter(buffer.Span[written..]);
                DirEntryCodec.Write(ref w, entry);
                written += w.Position;
                index++;
            }
            return written;
        }
    }
}
