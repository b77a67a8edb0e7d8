using System.Buffers.Binary;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.NineP.Server;

/// <summary>One 9P request in, one R-message out, over some backend; the transport (a stream connection, a virtio queue) is not its business.</summary>
public interface INinePDispatcher : IAsyncDisposable
{
    /// <summary>The negotiated msize (before Tversion, the ceiling): a reply buffer of this many bytes always suffices.</summary>
    uint MessageSize { get; }

    /// <summary>
    /// Answers one whole frame (size[4] type[1] tag[2] body, as cut by the transport) into <paramref name="reply"/>.
    /// Returns the reply's length, 0 when the frame cannot be answered (too short to carry a tag), or
    /// <see cref="NinePDispatcher.Violation"/> when the peer broke the protocol (a malformed body of a known message,
    /// an R-message): a stream loses its connection, other transports answer EINVAL.
    /// </summary>
    ValueTask<int> HandleAsync(ReadOnlyMemory<byte> frame, Memory<byte> reply, CancellationToken ct);
}

/// <summary>Constants of <see cref="NinePDispatcher{TFid}"/>.</summary>
public static class NinePDispatcher
{
    /// <summary>What <see cref="INinePDispatcher.HandleAsync"/> returns for a protocol violation.</summary>
    public const int Violation = -1;

    /// <summary>Writes an error reply: Rlerror errno[4] for 9P2000.L, else Rerror ename[s] (+ errno[4] for .u).</summary>
    public static int WriteError(Span<byte> reply, Dialect dialect, ushort tag, uint errno, string message)
    {
        Fcall error = dialect == Dialect.Linux
            ? new Fcall { Type = MessageType.Rlerror, Tag = tag, Errno = errno }
            : new Fcall { Type = MessageType.Rerror, Tag = tag, Ename = message.Length > 0 ? message : $"errno {errno}", Errno = errno };
        int n = FcallCodec.Encode(error, dialect, reply);
        return n > 0 ? n : 0;
    }
}

/// <summary>
/// The one 9P server logic, for every backend and dialect: Tversion (<see cref="VersionNegotiation"/>), the fid table
/// (<see cref="FidTable{T}"/>), the name checks (<see cref="NameRules"/>), and each message mapped onto one
/// <see cref="INinePBackend{TFid}"/> operation, 9P2000 and 9P2000.u ones included. Requests of one dispatcher may run
/// concurrently (the fid table is safe for it); the backend says whether its operations may.
///
/// A backend whose operations complete synchronously makes <see cref="HandleAsync"/> complete synchronously too (no
/// await in here ever waits on anything else), which is what lets the virtio-9p device call it inline.
/// </summary>
public sealed class NinePDispatcher<TFid> : INinePDispatcher
    where TFid : class
{
    private readonly INinePBackend<TFid> _backend;
    private readonly FidTable<TFid> _fids;
    private readonly uint _maxMessageSize, _minMessageSize;
    private readonly ILogger _logger;
    private Dialect _dialect;
    private uint _msize;
    private bool _versioned;

    public NinePDispatcher(INinePBackend<TFid> backend, uint maxMessageSize, uint minMessageSize, int maxFids, ILogger? logger = null)
    {
        _backend = backend;
        _fids = new FidTable<TFid>(maxFids);
        _maxMessageSize = maxMessageSize;
        _minMessageSize = minMessageSize;
        _msize = maxMessageSize;
        _logger = logger ?? NullLogger.Instance;
        // Until Tversion, errors take the shape of the only dialect a .L-only backend speaks, else plain 9P2000's.
        _dialect = backend.LinuxOnly ? Dialect.Linux : Dialect.Legacy;
    }

    public uint MessageSize => _msize;

    public int FidCount => _fids.Count;

    /// <summary>Told of every exception turned into EIO: a bug of ours, not the client's (the fuzz harness's findings).</summary>
    public Action<Exception>? InternalError { get; set; }

    /// <summary>The most a reply's data may hold: msize less the Rread/Rreaddir header, within the buffer given.</summary>
    private int IoRoom(uint count, Memory<byte> reply) =>
        (int)Math.Min(Math.Min(count, _msize - P9.IoHeaderSize), (uint)Math.Max(0, reply.Length - P9.IoHeaderSize));

    private uint Iounit => _msize - P9.IoHeaderSize - 13;

    public async ValueTask<int> HandleAsync(ReadOnlyMemory<byte> frame, Memory<byte> reply, CancellationToken ct)
    {
        if (!FcallCodec.TryReadHeader(frame.Span, out uint size, out MessageType type, out ushort tag))
        {
            return 0;
        }
        if (size != frame.Length || ((byte)type & 1) != 0)
        {
            // Not a T-message as framed: an R-message sent to the server, or a size field that lies.
            return NinePDispatcher.Violation;
        }
        try
        {
            if (type != MessageType.Tversion && !_versioned)
            {
                throw new VfsException(Errno.EPROTO, "Tversion must come first");
            }
            // Bulk data is parsed in place: header[7] fid[4] offset[8] count[4] (+ data for Twrite), no copy.
            switch (type)
            {
                case MessageType.Tread:
                case MessageType.Treaddir:
                case MessageType.Twrite:
                    return await InOutAsync(frame, reply, type, tag, ct).ConfigureAwait(false);
            }
            if (!FcallCodec.TryDecode(frame.Span, _dialect, out Fcall t, out string reason))
            {
                if (FcallCodec.IsKnown(type))
                {
                    Log.ProtocolViolation(_logger, reason);
                    return NinePDispatcher.Violation;
                }
                throw new VfsException(Errno.EOPNOTSUPP, "Operation not supported");
            }
            Fcall r = await ExecuteAsync(t, ct).ConfigureAwait(false);
            int n = FcallCodec.Encode(r, _dialect, reply.Span);
            return n > 0 ? n : NinePDispatcher.WriteError(reply.Span, _dialect, tag, Errno.EMSGSIZE, "Reply too large for msize");
        }
        catch (VfsException e)
        {
            return NinePDispatcher.WriteError(reply.Span, _dialect, tag, e.Errno, e.Message);
        }
        catch (OperationCanceledException)
        {
            return NinePDispatcher.WriteError(reply.Span, _dialect, tag, Errno.ECANCELED, "Interrupted");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A bug here must cost one request, not the connection or the share: the client gets EIO.
            Log.HandlerFailed(_logger, e, type.ToString());
            InternalError?.Invoke(e);
            return NinePDispatcher.WriteError(reply.Span, _dialect, tag, Errno.EIO, "Input/output error");
        }
    }

    private async ValueTask<int> InOutAsync(ReadOnlyMemory<byte> frame, Memory<byte> reply, MessageType type, ushort tag, CancellationToken ct)
    {
        const int Header = 23;
        ReadOnlySpan<byte> f = frame.Span;
        uint count = f.Length >= Header ? BinaryPrimitives.ReadUInt32LittleEndian(f[19..]) : 0;
        if (f.Length < Header || (type == MessageType.Twrite ? count != f.Length - Header : f.Length != Header))
        {
            Log.ProtocolViolation(_logger, $"{type} of {f.Length} bytes");
            return NinePDispatcher.Violation;
        }
        TFid fid = _fids.Get(BinaryPrimitives.ReadUInt32LittleEndian(f[7..]));
        ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(f[11..]);
        if (!_backend.IsOpen(fid))
        {
            throw new VfsException(Errno.EBADF, type == MessageType.Twrite ? "Can't write to unopened fid" : "Can't read from unopened fid");
        }
        int n;
        switch (type)
        {
            case MessageType.Twrite:
                n = await _backend.WriteAsync(fid, offset, frame[Header..], ct).ConfigureAwait(false);
                BinaryPrimitives.WriteUInt32LittleEndian(reply.Span, 11);
                reply.Span[4] = (byte)MessageType.Rwrite;
                BinaryPrimitives.WriteUInt16LittleEndian(reply.Span[5..], tag);
                BinaryPrimitives.WriteUInt32LittleEndian(reply.Span[7..], (uint)n);
                return 11;
            case MessageType.Tread:
                n = await _backend.ReadAsync(fid, offset, reply.Slice(P9.IoHeaderSize, IoRoom(count, reply)), _dialect, ct).ConfigureAwait(false);
                break;
            default:
                n = await _backend.ReadDirAsync(fid, offset, reply.Slice(P9.IoHeaderSize, IoRoom(count, reply)), ct).ConfigureAwait(false);
                break;
        }
        // Rread / Rreaddir: size[4] type[1] tag[2] count[4] data[count], the data already in place.
        Span<byte> r = reply.Span;
        BinaryPrimitives.WriteUInt32LittleEndian(r, (uint)(P9.IoHeaderSize + n));
        r[4] = (byte)(type + 1);
        BinaryPrimitives.WriteUInt16LittleEndian(r[5..], tag);
        BinaryPrimitives.WriteUInt32LittleEndian(r[7..], (uint)n);
        return P9.IoHeaderSize + n;
    }

    private static Fcall Ok(MessageType type, Fcall t) => new() { Type = type, Tag = t.Tag };

    private static Fcall WithQid(MessageType type, Fcall t, Qid qid) => new() { Type = type, Tag = t.Tag, Qid = qid };

    private string EntryName(string name) =>
        (NameRules.EntryError(name) ?? (_backend.TextNames ? NameRules.TextError(name) : null)) is { } e ? throw e : name;

    private TFid Fid(uint fid) => _fids.Get(fid);

    private async ValueTask<Fcall> ExecuteAsync(Fcall t, CancellationToken ct)
    {
        switch (t.Type)
        {
            case MessageType.Tversion:
                return Version(t);
            case MessageType.Tauth:
                // No authentication: diod's libnpclient reads ENOENT as "not required", as Linux does any error.
                throw new VfsException(Errno.ENOENT, "Authentication not required");
            case MessageType.Tflush:
                // flush(5): the transport answers Tflush only once the old request's reply was sent or dropped.
                return Ok(MessageType.Rflush, t);
            case MessageType.Tattach:
            {
                _fids.EnsureFree(t.Fid);
                (TFid root, Qid qid) = await _backend.AttachAsync(t.Uname, t.Aname, ct).ConfigureAwait(false);
                Add(t.Fid, root);
                return WithQid(MessageType.Rattach, t, qid);
            }
            case MessageType.Twalk:
                return await WalkAsync(t, ct).ConfigureAwait(false);
            case MessageType.Tclunk:
                _backend.Clunk(_fids.Remove(t.Fid));
                return Ok(MessageType.Rclunk, t);
            case MessageType.Tremove:
            {
                // remove(5): the fid is clunked even if the remove fails.
                TFid f = _fids.Remove(t.Fid);
                try
                {
                    await _backend.RemoveAsync(f, ct).ConfigureAwait(false);
                }
                finally
                {
                    _backend.Clunk(f);
                }
                return Ok(MessageType.Rremove, t);
            }
            case MessageType.Tlopen:
                return new Fcall { Type = MessageType.Rlopen, Tag = t.Tag, Qid = await OpenAsync(t.Fid, t.Flags, ct).ConfigureAwait(false), Iounit = Iounit };
            case MessageType.Tlcreate:
                return await CreateAsync(t, MessageType.Rlcreate, t.Flags, P9.SIfReg | (t.LMode & 0xFFF), "", ct).ConfigureAwait(false);
            case MessageType.Tgetattr:
                return new Fcall { Type = MessageType.Rgetattr, Tag = t.Tag, Attr = await _backend.GetAttrAsync(Fid(t.Fid), ct).ConfigureAwait(false) };
            case MessageType.Tsetattr:
                await _backend.SetAttrAsync(Fid(t.Fid), t.SetAttr ?? new LSetAttr(), ct).ConfigureAwait(false);
                return Ok(MessageType.Rsetattr, t);
            case MessageType.Tmkdir:
                return WithQid(MessageType.Rmkdir, t, await _backend.MkdirAsync(Fid(t.DFid), EntryName(t.Name), t.LMode, ct).ConfigureAwait(false));
            case MessageType.Tsymlink:
                if (t.Name2.Length == 0 || t.Name2.Contains('\0', StringComparison.Ordinal))
                {
                    throw new VfsException(Errno.EINVAL, "Invalid symlink target");
                }
                return WithQid(MessageType.Rsymlink, t, await _backend.SymlinkAsync(Fid(t.Fid), EntryName(t.Name), t.Name2, ct).ConfigureAwait(false));
            case MessageType.Tmknod:
                return WithQid(MessageType.Rmknod, t, await _backend.MknodAsync(Fid(t.DFid), EntryName(t.Name), t.LMode, ct).ConfigureAwait(false));
            case MessageType.Tlink:
                await _backend.LinkAsync(Fid(t.DFid), Fid(t.Fid), EntryName(t.Name), ct).ConfigureAwait(false);
                return Ok(MessageType.Rlink, t);
            case MessageType.Treadlink:
                return new Fcall { Type = MessageType.Rreadlink, Tag = t.Tag, Name2 = await _backend.ReadLinkAsync(Fid(t.Fid), ct).ConfigureAwait(false) };
            case MessageType.Trename:
                await _backend.RenameAsync(Fid(t.Fid), Fid(t.DFid), EntryName(t.Name), ct).ConfigureAwait(false);
                return Ok(MessageType.Rrename, t);
            case MessageType.Trenameat:
                await _backend.RenameAtAsync(Fid(t.Fid), EntryName(t.Name), Fid(t.DFid), EntryName(t.Name2), ct).ConfigureAwait(false);
                return Ok(MessageType.Rrenameat, t);
            case MessageType.Tunlinkat:
                await _backend.UnlinkAtAsync(Fid(t.Fid), EntryName(t.Name), t.Flags, ct).ConfigureAwait(false);
                return Ok(MessageType.Runlinkat, t);
            case MessageType.Tstatfs:
                return new Fcall { Type = MessageType.Rstatfs, Tag = t.Tag, StatFs = await _backend.StatFsAsync(Fid(t.Fid), ct).ConfigureAwait(false) };
            case MessageType.Tfsync:
                await _backend.FsyncAsync(Fid(t.Fid), t.Flags != 0, ct).ConfigureAwait(false);
                return Ok(MessageType.Rfsync, t);
            case MessageType.Tlock:
                // Advisory locks are kept by the client kernel's own view only; the lock is granted.
                Fid(t.Fid);
                return new Fcall { Type = MessageType.Rlock, Tag = t.Tag, LockStatus = 0 };
            case MessageType.Tgetlock:
                // F_UNLCK: nothing holds a lock here.
                Fid(t.Fid);
                return new Fcall
                {
                    Type = MessageType.Rgetlock, Tag = t.Tag, LockType = 2, LockStart = t.LockStart, LockLength = t.LockLength,
                    ProcId = t.ProcId, ClientId = t.ClientId,
                };
            case MessageType.Txattrwalk:
            case MessageType.Txattrcreate:
                // No extended attributes; Linux treats EOPNOTSUPP as "none".
                throw new VfsException(Errno.EOPNOTSUPP, "Operation not supported");
        }
        if (_backend.LinuxOnly)
        {
            // 9P2000/.u messages (Topen, Tcreate, Tstat, Twstat) do not exist in .L.
            throw new VfsException(Errno.EOPNOTSUPP, "Operation not supported");
        }
        switch (t.Type)
        {
            case MessageType.Topen:
                return new Fcall { Type = MessageType.Ropen, Tag = t.Tag, Qid = await OpenAsync(t.Fid, LinuxFlags(t.Mode), ct).ConfigureAwait(false), Iounit = Iounit };
            case MessageType.Tcreate:
            {
                // 9P2000: DMDIR makes a directory; 9P2000.u: DMSYMLINK a symlink to the extension. Hard links, devices,
                // pipes and sockets become plain files (as the original DataKit).
                uint type = (t.Perm & P9.DmDir) != 0 ? P9.SIfDir : (t.Perm & P9.DmSymlink) != 0 && _dialect == Dialect.Unix ? P9.SIfLnk : P9.SIfReg;
                if (type == P9.SIfLnk && t.Extension.Length == 0)
                {
                    throw new VfsException(Errno.EINVAL, "Missing target for symlink!");
                }
                return await CreateAsync(t, MessageType.Rcreate, LinuxFlags(t.Mode), type | (t.Perm & 0x1FF), t.Extension, ct).ConfigureAwait(false);
            }
            case MessageType.Tstat:
                return new Fcall { Type = MessageType.Rstat, Tag = t.Tag, Stat = await _backend.StatAsync(Fid(t.Fid), _dialect, ct).ConfigureAwait(false) };
            case MessageType.Twstat:
            {
                Stat s = t.Stat ?? Stat.DontTouch;
                if (s.Name.Length > 0)
                {
                    EntryName(s.Name);
                }
                await _backend.WstatAsync(Fid(t.Fid), s, _dialect, ct).ConfigureAwait(false);
                return Ok(MessageType.Rwstat, t);
            }
            default:
                throw new VfsException(Errno.EOPNOTSUPP, "Operation not supported");
        }
    }

    /// <summary>open(5) modes as Linux open flags: OREAD/OEXEC read, OWRITE, ORDWR, OTRUNC (ORCLOSE is not kept).</summary>
    private static uint LinuxFlags(byte mode) =>
        (uint)((mode & 3) switch { P9.OWRITE => P9.LOWronly, P9.ORDWR => P9.LORdwr, _ => 0u }) | ((mode & P9.OTRUNC) != 0 ? P9.LOTrunc : 0);

    private Fcall Version(Fcall t)
    {
        // version(5): a Tversion aborts the session: every fid is clunked.
        ClunkAll();
        Negotiated n = VersionNegotiation.Negotiate(t.Version, t.Msize, _maxMessageSize, _minMessageSize, _backend.LinuxOnly);
        _versioned = n.Accepted;
        if (n.Accepted)
        {
            _msize = n.Msize;
            _dialect = n.Dialect;
            Log.Negotiated(_logger, n.Version, _msize);
        }
        return new Fcall { Type = MessageType.Rversion, Tag = t.Tag, Msize = n.Msize, Version = n.Version };
    }

    private void Add(uint fid, TFid state)
    {
        try
        {
            _fids.Add(fid, state);
        }
        catch
        {
            _backend.Clunk(state);
            throw;
        }
    }

    private async ValueTask<Fcall> WalkAsync(Fcall t, CancellationToken ct)
    {
        TFid from = Fid(t.Fid);
        // walk(5) forbids walking an open fid, but diod's clients walk from an opened directory to a new fid, which
        // is harmless (diod allows it); only re-pointing an open fid in place is refused.
        if (t.NewFid == t.Fid && _backend.IsOpen(from))
        {
            throw new VfsException(Errno.EBADF, "Can't walk from an open fid");
        }
        if (t.NewFid != t.Fid)
        {
            _fids.EnsureFree(t.NewFid);
        }
        var qids = new Qid[t.Wnames.Length];
        TFid node = _backend.Clone(from);
        for (int i = 0; i < t.Wnames.Length; i++)
        {
            string name = t.Wnames[i];
            VfsException? failure = NameRules.WalkError(name) ?? (_backend.TextNames ? NameRules.TextError(name) : null)
                ?? (_backend.IsDirectory(node) ? null : new VfsException(Errno.ENOTDIR, "Can't walk from a file"));
            if (failure is null)
            {
                TFid? next;
                try
                {
                    (next, qids[i]) = await _backend.WalkAsync(node, name, ct).ConfigureAwait(false);
                }
                catch
                {
                    _backend.Clunk(node);
                    throw;
                }
                if (next is null)
                {
                    failure = VfsErrors.NotFound();
                }
                else
                {
                    node = next;
                }
            }
            if (failure is not null)
            {
                // walk(5): an error on the first name is an error reply; a later name that cannot be walked (no such
                // entry, not a directory, not a valid name) ends the walk with the qids that succeeded, newfid not
                // affected. A backend's own failure (EACCES, EMFILE, a DataKit "invalid-hash") is always the client's
                // to see, as the original DataKit answered it.
                _backend.Clunk(node);
                if (i == 0)
                {
                    throw failure;
                }
                return new Fcall { Type = MessageType.Rwalk, Tag = t.Tag, Wqids = qids[..i] };
            }
        }
        if (t.NewFid == t.Fid)
        {
            _fids.Replace(t.Fid, node);
            _backend.Clunk(from);
        }
        else
        {
            Add(t.NewFid, node);
        }
        return new Fcall { Type = MessageType.Rwalk, Tag = t.Tag, Wqids = qids };
    }

    private async ValueTask<Qid> OpenAsync(uint fid, uint flags, CancellationToken ct)
    {
        TFid f = Fid(fid);
        if (_backend.IsOpen(f))
        {
            throw new VfsException(Errno.EBADF, "Already open");
        }
        return await _backend.OpenAsync(f, flags, ct).ConfigureAwait(false);
    }

    private async ValueTask<Fcall> CreateAsync(Fcall t, MessageType replyType, uint flags, uint mode, string target, CancellationToken ct)
    {
        TFid dir = Fid(t.Fid);
        if (_backend.IsOpen(dir))
        {
            throw new VfsException(Errno.EBADF, "Can't create in an opened fid");
        }
        (TFid created, Qid qid) = await _backend.CreateAsync(dir, EntryName(t.Name), flags, mode, target, ct).ConfigureAwait(false);
        if (!ReferenceEquals(created, dir))
        {
            _fids.Replace(t.Fid, created);
            _backend.Clunk(dir);
        }
        return new Fcall { Type = replyType, Tag = t.Tag, Qid = qid, Iounit = Iounit };
    }

    private void ClunkAll()
    {
        foreach (TFid f in _fids.RemoveAll())
        {
            _backend.Clunk(f);
        }
    }

    public async ValueTask DisposeAsync()
    {
        ClunkAll();
        await _backend.DisposeAsync().ConfigureAwait(false);
    }
}
