using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Kit.NineP.Protocol;
using Kit.NineP.Server;
using Kit.NineP.Vfs;

namespace Kit.HyperKit.HostFs;

/// <summary>Limits and mode of one exported host directory.</summary>
public sealed record HostFsOptions(string Root, bool ReadOnly = false)
{
    /// <summary>Largest msize granted in Rversion (the Linux virtio transport asks for at most ~500 KiB).</summary>
    public uint MaxMessageSize { get; init; } = 1024 * 1024 + 4096;

    /// <summary>Fids one session may hold (bounds memory; fids share descriptors). Beyond it: EMFILE.</summary>
    public int MaxFids { get; init; } = 4096;

    /// <summary>
    /// Host descriptors one session may hold at once (O_PATH nodes and open files). Well below the process limit
    /// (.NET raises RLIMIT_NOFILE to its hard limit, often 4096 to 1M) so one guest cannot starve the VMM's own
    /// sockets, eventfds and disk files, nor the other shares; beyond it a request gets EMFILE and nothing else fails.
    /// </summary>
    public const int DefaultMaxDescriptors = 1024;

    /// <inheritdoc cref="DefaultMaxDescriptors"/>
    public int MaxDescriptors { get; init; } = DefaultMaxDescriptors;

    /// <summary>
    /// A trusted guest's ownership and set-id bits are applied (chown, S_ISUID, S_ISGID); an untrusted guest's are
    /// not (docs/security.md, "Host shares"). Off by default: <c>--share TAG=DIR,trusted</c> turns it on.
    /// </summary>
    public bool Trusted { get; init; }
}

/// <summary>
/// One 9P2000.L session over a host directory: takes one T-message, does the host system calls, writes one R-message.
/// It runs requests one at a time on its caller's thread (they are short system calls on local files), which also
/// makes Tflush trivial: the flushed request has always been answered already.
///
/// Confinement: every fid holds an O_PATH descriptor; a walk opens one name at a time relative to its directory with
/// O_NOFOLLOW, names containing '/' are refused, and ".." is the directory's real parent now, refused unless it is
/// inside the export (and the root's ".." is the root). A symlink is therefore never followed by the server: the
/// guest's kernel reads it and walks the target itself, inside the export. No path string is kept: Tremove and
/// Trename act on the fid's parent descriptor and name only while they still name the fid's own inode. Opening for
/// I/O goes through /proc/self/fd/N of the O_PATH descriptor, so the file opened is exactly the one walked to, even
/// if names are swapped meanwhile, and only regular files and directories are ever opened (a device node, FIFO or
/// socket never is). An untrusted guest's ownership and set-id bits are not applied (docs/security.md). Errors are
/// the host's own errno values (Linux), sent in Rlerror.
/// </summary>
public sealed class HostFsSession : IDisposable
{
    private const uint EBUSY = 16, ELOOP = 40, ESTALE = 116;

    /// <summary>".." steps looked at to decide that a directory is inside the export (PATH_MAX / 2 levels).</summary>
    private const int MaxDepth = 2048;

    /// <summary>Mode bits an untrusted guest may set: permissions and the sticky bit, not S_ISUID/S_ISGID (07777 &amp; ~06000).</summary>
    private const uint UntrustedModeBits = 0x3FF;
    private readonly HostFsOptions _options;
    private readonly FidTable<HostFid> _fids;
    private readonly byte[] _statx = new byte[HostAttr.StatxSize];
    private readonly Lock _gate = new();
    private readonly DescriptorBudget _budget;
    private int _rootFd = -1;
    private uint _rootDevMajor, _rootDevMinor;
    private ulong _rootIno;
    private uint _msize;
    private bool _versioned;
    private bool _disposed;

    public HostFsSession(HostFsOptions options)
    {
        _options = options;
        _budget = new DescriptorBudget(options.MaxDescriptors);
        _fids = new FidTable<HostFid>(options.MaxFids);
        _msize = options.MaxMessageSize;
        string root = Path.GetFullPath(options.Root);
        _rootFd = HostCalls.OpenAt(HostCalls.AT_FDCWD, root, HostCalls.O_PATH | HostCalls.O_DIRECTORY | HostCalls.O_CLOEXEC, 0);
        if (_rootFd < 0)
        {
            throw new IOException($"cannot open shared directory {root}: {Marshal.GetPInvokeErrorMessage(HostCalls.Errno)}");
        }
        if (StatFd(_rootFd, out HostAttr attr) == 0)
        {
            _rootDevMajor = attr.DevMajor;
            _rootDevMinor = attr.DevMinor;
            _rootIno = attr.Ino;
        }
    }

    /// <summary>
    /// Told of every exception <see cref="Handle"/> turned into EIO: a bug of ours, not the guest's. The fuzz harness
    /// (tests/Kit.Fuzz) makes these findings; nothing else needs it.
    /// </summary>
    internal Action<Exception>? InternalError { get; set; }

    /// <summary>The negotiated msize: a reply buffer of this many bytes always suffices.</summary>
    public uint MessageSize => _msize;

    /// <summary>Host descriptors the session's fids hold now (counted against <see cref="HostFsOptions.MaxDescriptors"/>).</summary>
    internal int DescriptorCount
    {
        get
        {
            lock (_gate)
            {
                return _budget.Count;
            }
        }
    }

    public int FidCount => _fids.Count;

    /// <summary>
    /// Handles one whole T-message (<paramref name="request"/> is exactly one frame as framed by the transport) and
    /// writes the R-message into <paramref name="reply"/> (at least <see cref="MessageSize"/> bytes, or 8 KiB before
    /// Tversion). Returns the reply length, or 0 when the frame is too short to carry a tag (nothing can be answered).
    /// Never throws on hostile input.
    /// </summary>
    public int Handle(ReadOnlySpan<byte> request, Span<byte> reply)
    {
        if (!FcallCodec.TryReadHeader(request, out uint size, out MessageType type, out ushort tag))
        {
            return 0;
        }
        lock (_gate)
        {
            if (_disposed)
            {
                return Error(reply, tag, Errno.EIO);
            }
            // The transport framed the message (a virtio chain, a stream reader); the size field must agree with it.
            if (size != request.Length || !NinePFrameReader.CheckSize(size, Math.Max(_msize, 8192), out _))
            {
                return Error(reply, tag, Errno.EINVAL);
            }
            try
            {
                // Hot paths that carry bulk data are parsed in place (no copy of the payload).
                switch (type)
                {
                    case MessageType.Tread:
                        return Read(request, reply, tag);
                    case MessageType.Twrite:
                        return Write(request, reply, tag);
                    case MessageType.Treaddir:
                        return ReadDir(request, reply, tag);
                }
                if (!FcallCodec.TryDecode(request, Dialect.Linux, out Fcall t, out _) || ((byte)t.Type & 1) != 0)
                {
                    return Error(reply, tag, FcallCodec.IsKnown(type) ? Errno.EINVAL : Errno.EOPNOTSUPP);
                }
                if (t.Type != MessageType.Tversion && !_versioned)
                {
                    return Error(reply, tag, Errno.EPROTO);
                }
                Fcall r = Execute(t);
                int n = FcallCodec.Encode(r, Dialect.Linux, reply);
                return n > 0 ? n : Error(reply, tag, Errno.EMSGSIZE);
            }
            catch (VfsException e)
            {
                return Error(reply, tag, e.Errno);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // A bug here must cost one request, not the share: the guest gets EIO.
                InternalError?.Invoke(e);
                return Error(reply, tag, Errno.EIO);
            }
        }
    }

    private static int Error(Span<byte> reply, ushort tag, uint errno)
    {
        if (reply.Length < 11)
        {
            return 0;
        }
        BinaryPrimitives.WriteUInt32LittleEndian(reply, 11);
        reply[4] = (byte)MessageType.Rlerror;
        BinaryPrimitives.WriteUInt16LittleEndian(reply[5..], tag);
        BinaryPrimitives.WriteUInt32LittleEndian(reply[7..], errno);
        return 11;
    }

    /// <summary>A failed request: its errno goes back in Rlerror (.L carries no text).</summary>
    private static VfsException Fail(uint errno) => new(errno, "");

    private static VfsException LastError() => Fail((uint)HostCalls.Errno);

    private void CheckWritable()
    {
        if (_options.ReadOnly)
        {
            throw Fail(Errno.EROFS);
        }
    }

    private Fcall Execute(Fcall t)
    {
        switch (t.Type)
        {
            case MessageType.Tversion:
                return Version(t);
            case MessageType.Tauth:
                // No authentication: diod's libnpclient reads ENOENT as "not required", as Linux does any error.
                throw Fail(Errno.ENOENT);
            case MessageType.Tattach:
                return Attach(t);
            case MessageType.Tflush:
                // Requests run one at a time, so the old one has been answered already (flush(5)).
                return Reply(MessageType.Rflush, t);
            case MessageType.Twalk:
                return Walk(t);
            case MessageType.Tclunk:
                Clunk(t.Fid);
                return Reply(MessageType.Rclunk, t);
            case MessageType.Tgetattr:
                return GetAttr(t);
            case MessageType.Tsetattr:
                SetAttr(t);
                return Reply(MessageType.Rsetattr, t);
            case MessageType.Tlopen:
                return LOpen(t);
            case MessageType.Tlcreate:
                return LCreate(t);
            case MessageType.Tmkdir:
                return MakeNode(t, MessageType.Rmkdir);
            case MessageType.Tsymlink:
                return MakeNode(t, MessageType.Rsymlink);
            case MessageType.Tmknod:
                return MakeNode(t, MessageType.Rmknod);
            case MessageType.Treadlink:
                return ReadLink(t);
            case MessageType.Tlink:
                Link(t);
                return Reply(MessageType.Rlink, t);
            case MessageType.Tunlinkat:
                UnlinkAt(t);
                return Reply(MessageType.Runlinkat, t);
            case MessageType.Trenameat:
                RenameAt(t);
                return Reply(MessageType.Rrenameat, t);
            case MessageType.Trename:
                Rename(t);
                return Reply(MessageType.Rrename, t);
            case MessageType.Tremove:
                Remove(t);
                return Reply(MessageType.Rremove, t);
            case MessageType.Tstatfs:
                return StatFs(t);
            case MessageType.Tfsync:
                Fsync(t);
                return Reply(MessageType.Rfsync, t);
            case MessageType.Tlock:
                // Advisory locks are kept by the guest kernel's own view only; tell it the lock is granted.
                return new Fcall { Type = MessageType.Rlock, Tag = t.Tag, LockStatus = 0 };
            case MessageType.Tgetlock:
                return new Fcall
                {
                    Type = MessageType.Rgetlock, Tag = t.Tag, LockType = 2 /* F_UNLCK */, LockStart = t.LockStart,
                    LockLength = t.LockLength, ProcId = t.ProcId, ClientId = t.ClientId,
                };
            case MessageType.Txattrwalk:
            case MessageType.Txattrcreate:
                // Extended attributes are not exported; Linux treats EOPNOTSUPP as "none".
                throw Fail(Errno.EOPNOTSUPP);
            default:
                // 9P2000/.u messages (Topen, Tcreate, Tstat, Twstat) do not exist in .L.
                throw Fail(Errno.EOPNOTSUPP);
        }
    }

    private static Fcall Reply(MessageType type, Fcall t) => new() { Type = type, Tag = t.Tag };

    private Fcall Version(Fcall t)
    {
        // version(5): a Tversion aborts the session: every fid is clunked.
        ClunkAll();
        Negotiated n = VersionNegotiation.Negotiate(t.Version, t.Msize, _options.MaxMessageSize, VersionNegotiation.MinMessageSize, linuxOnly: true);
        _versioned = n.Accepted;
        if (n.Accepted)
        {
            _msize = n.Msize;
        }
        return new Fcall { Type = MessageType.Rversion, Tag = t.Tag, Msize = n.Msize, Version = n.Version };
    }

    private Fcall Attach(Fcall t)
    {
        // The aname names the export itself ("" or "/" or anything else: there is one tree).
        Reserve(1);
        int fd = Dup(_rootFd);
        AddFid(t.Fid, new HostFid(Adopt(fd), null, null, HostCalls.S_IFDIR, _budget));
        HostAttr a = Stat(fd);
        return new Fcall { Type = MessageType.Rattach, Tag = t.Tag, Qid = QidOf(a) };
    }

    private void AddFid(uint fid, HostFid state)
    {
        try
        {
            _fids.Add(fid, state);
        }
        catch
        {
            state.Close();
            throw;
        }
    }

    /// <summary>EMFILE unless the session may hold <paramref name="n"/> more descriptors (<see cref="HostFsOptions.MaxDescriptors"/>).</summary>
    private void Reserve(int n)
    {
        if (!_budget.CanTake(n))
        {
            throw Fail(Errno.EMFILE);
        }
    }

    /// <summary>A counted handle for a descriptor the session keeps beyond the current request.</summary>
    private HostHandle Adopt(int fd) => new(fd, _budget);

    private HostFid GetFid(uint fid) => _fids.Get(fid);

    private static int Dup(int fd)
    {
        int copy = HostCalls.Fcntl(fd, HostCalls.F_DUPFD_CLOEXEC, 0);
        return copy >= 0 ? copy : throw LastError();
    }

    private int StatFd(int fd, out HostAttr attr)
    {
        int rc = HostCalls.Statx(fd, "", HostCalls.AT_EMPTY_PATH | HostCalls.AT_SYMLINK_NOFOLLOW, HostCalls.STATX_BASIC_STATS, ref _statx[0]);
        attr = rc == 0 ? HostAttr.Parse(_statx) : default;
        return rc;
    }

    private HostAttr Stat(int fd) => StatFd(fd, out HostAttr a) == 0 ? a : throw LastError();

    private HostAttr StatAt(int dirfd, string name)
    {
        if (HostCalls.Statx(dirfd, name, HostCalls.AT_SYMLINK_NOFOLLOW, HostCalls.STATX_BASIC_STATS, ref _statx[0]) != 0)
        {
            throw LastError();
        }
        return HostAttr.Parse(_statx);
    }

    private static bool SameNode(in HostAttr a, in HostAttr b) =>
        a.Ino == b.Ino && a.DevMajor == b.DevMajor && a.DevMinor == b.DevMinor;

    private bool IsRoot(in HostAttr a) => a.Ino == _rootIno && a.DevMajor == _rootDevMajor && a.DevMinor == _rootDevMinor;

    /// <summary>qid.path from the inode number; files on another device under the root get the device mixed in.</summary>
    private ulong QidPath(ulong ino, uint devMajor, uint devMinor) =>
        devMajor == _rootDevMajor && devMinor == _rootDevMinor
            ? ino
            : ino ^ ((((ulong)devMajor * 0x9E3779B1UL) ^ devMinor) << 48);

    private Qid QidOf(in HostAttr a) =>
        new(HostAttr.QidType(a.Type), (uint)a.MtimeSec ^ a.MtimeNsec, QidPath(a.Ino, a.DevMajor, a.DevMinor));

    /// <summary>The shared rules (<see cref="NameRules.CheckEntry"/>); any bytes are a host name, so no text check.</summary>
    private static string CheckName(string name) => NameRules.CheckEntry(name);

    /// <summary>
    /// The directory that holds directory <paramref name="dirFd"/> now (its real "..", so a directory moved since
    /// it was walked reaches its new parent), as an O_PATH descriptor. ENOENT unless that parent is inside the export:
    /// a host process may move a walked directory out of it, and the guest must not follow it there.
    /// </summary>
    private int OpenParent(int dirFd)
    {
        int parent = HostCalls.OpenAt(dirFd, "..", HostCalls.O_PATH | HostCalls.O_DIRECTORY | HostCalls.O_CLOEXEC, 0);
        if (parent < 0)
        {
            throw LastError();
        }
        bool inside;
        try
        {
            inside = IsInsideExport(parent);
        }
        catch
        {
            HostCalls.Close(parent);
            throw;
        }
        if (!inside)
        {
            HostCalls.Close(parent);
            throw Fail(Errno.ENOENT);
        }
        return parent;
    }

    /// <summary>Whether the root is among directory <paramref name="dirFd"/> and its ancestors (".." up to "/",
    /// the directory that is its own parent).</summary>
    private bool IsInsideExport(int dirFd)
    {
        int fd = Dup(dirFd);
        try
        {
            HostAttr a = Stat(fd);
            for (int depth = 0; depth < MaxDepth; depth++)
            {
                if (IsRoot(a))
                {
                    return true;
                }
                int up = HostCalls.OpenAt(fd, "..", HostCalls.O_PATH | HostCalls.O_DIRECTORY | HostCalls.O_CLOEXEC, 0);
                if (up < 0)
                {
                    return false;
                }
                HostCalls.Close(fd);
                fd = up;
                HostAttr parent = Stat(fd);
                if (SameNode(a, parent))
                {
                    return false;
                }
                a = parent;
            }
            return false;
        }
        finally
        {
            HostCalls.Close(fd);
        }
    }

    private Fcall Walk(Fcall t)
    {
        HostFid from = GetFid(t.Fid);
        // walk(5) forbids walking an opened fid; diod (and its clients) walk from an opened directory into a new
        // fid, which is harmless, so only moving an opened fid itself is refused.
        if (from.IsOpen && t.NewFid == t.Fid)
        {
            throw Fail(Errno.EBADF);
        }
        if (t.NewFid != t.Fid)
        {
            _fids.EnsureFree(t.NewFid);
        }
        // The walk moves references along: a new descriptor only for each name opened, the directory it was opened
        // from becoming the child's parent (for Tremove/Trename) without one.
        HostHandle node = from.Node.AddRef();
        HostHandle? parent = from.Parent?.AddRef();
        string? entry = from.Name;
        uint type = from.Type;
        var qids = new Qid[t.Wnames.Length];
        int done = 0;
        try
        {
            for (; done < t.Wnames.Length; done++)
            {
                // The shared walk rules first ("." and empty names, '/', NUL, length), then the host's confinement.
                string name = NameRules.CheckWalk(t.Wnames[done]);
                if (type != HostCalls.S_IFDIR)
                {
                    throw Fail(Errno.ENOTDIR);
                }
                HostHandle next;
                HostHandle? nextParent = null;
                string? nextEntry = null;
                if (name == "..")
                {
                    // walk(5): ".." of the root is the root. A directory reached by ".." has no name the session
                    // knows, so Tremove/Trename on it fail (ESTALE) rather than guess one.
                    if (IsRoot(Stat(node.Fd)))
                    {
                        next = node.AddRef();
                    }
                    else
                    {
                        Reserve(1);
                        next = Adopt(OpenParent(node.Fd));
                    }
                }
                else
                {
                    Reserve(1);
                    int fd = HostCalls.OpenAt(node.Fd, name, HostCalls.O_PATH | HostCalls.O_NOFOLLOW | HostCalls.O_CLOEXEC, 0);
                    if (fd < 0)
                    {
                        throw LastError();
                    }
                    next = Adopt(fd);
                    nextParent = node.AddRef();
                    nextEntry = name;
                }
                parent?.Release();
                node.Release();
                node = next;
                parent = nextParent;
                entry = nextEntry;
                HostAttr a = Stat(node.Fd);
                type = a.Type;
                qids[done] = QidOf(a);
            }
        }
        catch (VfsException) when (done > 0)
        {
            // walk(5): a failure after the first name returns the qids that succeeded; newfid is not affected.
            parent?.Release();
            node.Release();
            return new Fcall { Type = MessageType.Rwalk, Tag = t.Tag, Wqids = qids[..done] };
        }
        catch
        {
            parent?.Release();
            node.Release();
            throw;
        }
        if (t.NewFid == t.Fid)
        {
            from.Retarget(node, parent, entry, type);
        }
        else
        {
            AddFid(t.NewFid, new HostFid(node, parent, entry, type, _budget));
        }
        return new Fcall { Type = MessageType.Rwalk, Tag = t.Tag, Wqids = qids };
    }

    private void Clunk(uint fid)
    {
        _fids.Remove(fid).Close();
    }

    private void ClunkAll()
    {
        foreach (HostFid f in _fids.RemoveAll())
        {
            f.Close();
        }
    }

    private Fcall GetAttr(Fcall t)
    {
        HostFid f = GetFid(t.Fid);
        HostAttr a = Stat(f.PathFd);
        return new Fcall
        {
            Type = MessageType.Rgetattr, Tag = t.Tag,
            Attr = new LAttr
            {
                Valid = P9.GetattrBasic, Qid = QidOf(a), Mode = a.Mode, Uid = a.Uid, Gid = a.Gid, NLink = a.NLink,
                RDev = a.Rdev, Size = a.Size, BlkSize = a.BlkSize, Blocks = a.Blocks,
                AtimeSec = (ulong)a.AtimeSec, AtimeNsec = a.AtimeNsec, MtimeSec = (ulong)a.MtimeSec, MtimeNsec = a.MtimeNsec,
                CtimeSec = (ulong)a.CtimeSec, CtimeNsec = a.CtimeNsec,
            },
        };
    }

    private void SetAttr(Fcall t)
    {
        HostFid f = GetFid(t.Fid);
        LSetAttr s = t.SetAttr!;
        const uint AtimeSet = 0x80, MtimeSet = 0x100;
        if ((s.Valid & (P9.AttrMode | P9.AttrUid | P9.AttrGid | P9.AttrSize | P9.AttrAtime | P9.AttrMtime)) == 0)
        {
            return; // ctime only: the host updates it by itself
        }
        CheckWritable();
        HostAttr a = Stat(f.PathFd);
        string proc = HostCalls.ProcFd(f.PathFd);
        if ((s.Valid & P9.AttrSize) != 0)
        {
            if (!a.IsRegular)
            {
                throw Fail(a.IsDirectory ? Errno.EISDIR : Errno.EINVAL);
            }
            int fd = f.IsOpen && f.OpenForWrite ? f.OpenFd : OpenNode(f.PathFd, HostCalls.O_WRONLY, HostCalls.S_IFREG);
            try
            {
                if (HostCalls.Ftruncate(fd, (long)Math.Min(s.Size, long.MaxValue)) != 0)
                {
                    throw LastError();
                }
            }
            finally
            {
                if (fd != f.OpenFd)
                {
                    HostCalls.Close(fd);
                }
            }
        }
        if ((s.Valid & P9.AttrMode) != 0 && !a.IsSymlink && HostCalls.FchmodAt(HostCalls.AT_FDCWD, proc, ModeBits(s.Mode), 0) != 0)
        {
            throw LastError();
        }
        // An untrusted guest's chown is accepted and not applied (as QEMU's security_model=none does not report a chown
        // it could not make): the file stays the user kit runs as, and Tgetattr says so. Applied as root it would let
        // the guest give host files to any host user (docs/security.md, "Host shares").
        if ((s.Valid & (P9.AttrUid | P9.AttrGid)) != 0 && _options.Trusted)
        {
            uint uid = (s.Valid & P9.AttrUid) != 0 ? s.Uid : uint.MaxValue;
            uint gid = (s.Valid & P9.AttrGid) != 0 ? s.Gid : uint.MaxValue;
            if (HostCalls.FchownAt(f.PathFd, "", uid, gid, HostCalls.AT_EMPTY_PATH | HostCalls.AT_SYMLINK_NOFOLLOW) != 0)
            {
                throw LastError();
            }
        }
        if ((s.Valid & (P9.AttrAtime | P9.AttrMtime)) != 0 && !a.IsSymlink)
        {
            Span<long> times =
            [
                (s.Valid & P9.AttrAtime) == 0 ? 0 : (s.Valid & AtimeSet) != 0 ? (long)s.AtimeSec : 0,
                (s.Valid & P9.AttrAtime) == 0 ? HostCalls.UTIME_OMIT : (s.Valid & AtimeSet) != 0 ? (long)s.AtimeNsec : HostCalls.UTIME_NOW,
                (s.Valid & P9.AttrMtime) == 0 ? 0 : (s.Valid & MtimeSet) != 0 ? (long)s.MtimeSec : 0,
                (s.Valid & P9.AttrMtime) == 0 ? HostCalls.UTIME_OMIT : (s.Valid & MtimeSet) != 0 ? (long)s.MtimeNsec : HostCalls.UTIME_NOW,
            ];
            if (HostCalls.UtimensAt(HostCalls.AT_FDCWD, proc, ref times[0], 0) != 0)
            {
                throw LastError();
            }
        }
    }

    /// <summary>
    /// Mode bits the guest may set on create, mkdir, mknod and chmod: an untrusted guest's S_ISUID and S_ISGID are
    /// dropped, since a set-id file planted in a host directory runs as its host owner (root, when kit runs as root)
    /// for anyone on the host who can reach it. QEMU's security_model=mapped-xattr likewise never puts the guest's
    /// mode on the host file.
    /// </summary>
    private uint ModeBits(uint mode) => mode & (_options.Trusted ? 0xFFFu : UntrustedModeBits);

    /// <summary>
    /// Opens the node of O_PATH descriptor <paramref name="pathFd"/> for I/O through /proc/self/fd (the same inode,
    /// no name lookup), and checks on the new descriptor that it is of <paramref name="type"/>, a regular file or a
    /// directory: every open of this server goes through here, so a device node, FIFO or socket is never handed
    /// to the guest. Callers check the type on the O_PATH descriptor first (an O_PATH open never reaches a driver's
    /// open; O_NONBLOCK and O_NOCTTY are the second line should one get here anyway).
    /// </summary>
    private int OpenNode(int pathFd, int flags, uint type)
    {
        int fd = HostCalls.OpenAt(HostCalls.AT_FDCWD, HostCalls.ProcFd(pathFd), flags | HostCalls.O_CLOEXEC | HostCalls.O_NONBLOCK | HostCalls.O_NOCTTY, 0);
        if (fd < 0)
        {
            throw LastError();
        }
        if (StatFd(fd, out HostAttr a) != 0 || a.Type != type || type is not (HostCalls.S_IFREG or HostCalls.S_IFDIR))
        {
            HostCalls.Close(fd);
            throw Fail(Errno.EPERM);
        }
        return fd;
    }

    /// <summary>Guest open flags reduced to the ones that are safe and meaningful on the host.</summary>
    private int OpenFlags(uint flags)
    {
        int acc = (int)flags & HostCalls.O_ACCMODE;
        bool truncate = (flags & HostCalls.O_TRUNC) != 0;
        if (_options.ReadOnly && (acc != HostCalls.O_RDONLY || truncate))
        {
            throw Fail(Errno.EROFS);
        }
        // O_DIRECT would need aligned buffers; O_APPEND is done by the guest (it sends the offset).
        return acc | (truncate ? HostCalls.O_TRUNC : 0) | ((int)flags & HostCalls.O_SYNC) | ((int)flags & HostCalls.O_DSYNC);
    }

    private Fcall LOpen(Fcall t)
    {
        HostFid f = GetFid(t.Fid);
        if (f.IsOpen)
        {
            throw Fail(Errno.EBADF);
        }
        HostAttr a = Stat(f.PathFd);
        int flags;
        switch (a.Type)
        {
            case HostCalls.S_IFDIR:
                flags = HostCalls.O_RDONLY | HostCalls.O_DIRECTORY;
                break;
            case HostCalls.S_IFREG:
                flags = OpenFlags(t.Flags);
                break;
            case HostCalls.S_IFLNK:
                throw Fail(ELOOP);
            default:
                // Never hand the guest a host device, FIFO or socket: opening one acts on the host (a tape rewinds, a
                // FIFO's writer wakes), and pread/pwrite cannot use a FIFO anyway (ESPIPE).
                throw Fail(Errno.EPERM);
        }
        Reserve(1);
        int fd = OpenNode(f.PathFd, flags, a.Type);
        f.SetOpen(fd, (flags & HostCalls.O_ACCMODE) != HostCalls.O_RDONLY);
        return new Fcall { Type = MessageType.Rlopen, Tag = t.Tag, Qid = QidOf(a), Iounit = 0 };
    }

    private Fcall LCreate(Fcall t)
    {
        HostFid dir = GetFid(t.Fid);
        CheckWritable();
        if (dir.IsOpen || !dir.IsDirectory)
        {
            throw Fail(dir.IsOpen ? Errno.EBADF : Errno.ENOTDIR);
        }
        string name = CheckName(t.Name);
        int flags = OpenFlags(t.Flags);
        bool exclusive = (t.Flags & HostCalls.O_EXCL) != 0;
        Reserve(2);
        int fd = -1, pathFd = -1;
        for (int attempt = 0; fd < 0; attempt++)
        {
            // Create only what does not exist yet: O_EXCL with O_CREAT also never follows a symlink at the name (open(2)).
            fd = HostCalls.OpenAt(dir.PathFd, name, flags | HostCalls.O_CREAT | HostCalls.O_EXCL | HostCalls.O_NOFOLLOW
                | HostCalls.O_CLOEXEC | HostCalls.O_NONBLOCK | HostCalls.O_NOCTTY, ModeBits(t.LMode));
            if (fd >= 0)
            {
                break;
            }
            int errno = HostCalls.Errno;
            if (errno != (int)Errno.EEXIST || exclusive || attempt >= 2)
            {
                throw Fail((uint)errno);
            }
            // The name exists and the guest did not ask for O_EXCL: 9P2000.L's Tlcreate is open(2) with O_CREAT, which
            // opens the existing file. Look at it through O_PATH first (never a driver's open) and open it through that
            // very descriptor only if it is a regular file: a device node, FIFO or socket is refused like Tlopen
            // refuses it, a symlink is ELOOP as O_NOFOLLOW makes it, a directory EISDIR as open(2) says.
            pathFd = HostCalls.OpenAt(dir.PathFd, name, HostCalls.O_PATH | HostCalls.O_NOFOLLOW | HostCalls.O_CLOEXEC, 0);
            if (pathFd < 0)
            {
                if (HostCalls.Errno == (int)Errno.ENOENT)
                {
                    continue; // removed meanwhile: try creating it again
                }
                throw LastError();
            }
            try
            {
                uint type = Stat(pathFd).Type;
                if (type != HostCalls.S_IFREG)
                {
                    throw Fail(type == HostCalls.S_IFDIR ? Errno.EISDIR : type == HostCalls.S_IFLNK ? ELOOP : Errno.EPERM);
                }
                fd = OpenNode(pathFd, flags, HostCalls.S_IFREG);
            }
            catch
            {
                HostCalls.Close(pathFd);
                throw;
            }
        }
        if (pathFd < 0)
        {
            // Created: the O_PATH descriptor of exactly that file, through its descriptor (no second name lookup).
            pathFd = HostCalls.OpenAt(HostCalls.AT_FDCWD, HostCalls.ProcFd(fd), HostCalls.O_PATH | HostCalls.O_CLOEXEC, 0);
            if (pathFd < 0)
            {
                int errno = HostCalls.Errno;
                HostCalls.Close(fd);
                throw Fail((uint)errno);
            }
        }
        HostAttr a;
        if (StatFd(pathFd, out a) != 0)
        {
            int errno = HostCalls.Errno;
            HostCalls.Close(pathFd);
            HostCalls.Close(fd);
            throw Fail((uint)errno);
        }
        // tcreate: the fid now stands for the new, opened file, walked from the directory it stood for.
        dir.Retarget(Adopt(pathFd), dir.Node.AddRef(), name, a.Type);
        dir.SetOpen(fd, (flags & HostCalls.O_ACCMODE) != HostCalls.O_RDONLY);
        return new Fcall { Type = MessageType.Rlcreate, Tag = t.Tag, Qid = QidOf(a), Iounit = 0 };
    }

    private HostFid GetDirectory(uint fid)
    {
        HostFid dir = GetFid(fid);
        return dir.IsDirectory ? dir : throw Fail(Errno.ENOTDIR);
    }

    private Fcall MakeNode(Fcall t, MessageType replyType)
    {
        // The gid these messages (and Tlcreate) carry is not applied, trusted or not: a new node belongs to the user kit
        // runs as, with the group the host gives it (the directory's if set-gid, else kit's).
        HostFid dir = GetDirectory(t.Type == MessageType.Tmknod ? t.DFid : t.Type == MessageType.Tmkdir ? t.DFid : t.Fid);
        CheckWritable();
        string name = CheckName(t.Name);
        int rc;
        switch (t.Type)
        {
            case MessageType.Tmkdir:
                rc = HostCalls.MkdirAt(dir.PathFd, name, ModeBits(t.LMode));
                break;
            case MessageType.Tsymlink:
                // The target is stored, never followed by this server; an absolute target stays inside the guest's view.
                rc = t.Name2.Length == 0 || t.Name2.Contains('\0') ? throw Fail(Errno.EINVAL) : HostCalls.SymlinkAt(t.Name2, dir.PathFd, name);
                break;
            default:
                uint type = t.LMode & HostCalls.S_IFMT;
                if (type is not (HostCalls.S_IFIFO or HostCalls.S_IFSOCK or HostCalls.S_IFREG))
                {
                    throw Fail(Errno.EPERM); // no device nodes on the host
                }
                rc = HostCalls.MknodAt(dir.PathFd, name, type | ModeBits(t.LMode), 0);
                break;
        }
        if (rc != 0)
        {
            throw LastError();
        }
        return new Fcall { Type = replyType, Tag = t.Tag, Qid = QidOf(StatAt(dir.PathFd, name)) };
    }

    private Fcall ReadLink(Fcall t)
    {
        HostFid f = GetFid(t.Fid);
        Span<byte> buffer = stackalloc byte[4096];
        nint n = HostCalls.ReadlinkAt(f.PathFd, "", ref buffer[0], (nuint)buffer.Length);
        if (n < 0)
        {
            throw LastError();
        }
        return new Fcall { Type = MessageType.Rreadlink, Tag = t.Tag, Name2 = NineString.Decode(buffer[..(int)n]) };
    }

    private void Link(Fcall t)
    {
        HostFid dir = GetDirectory(t.DFid);
        HostFid target = GetFid(t.Fid);
        CheckWritable();
        string name = CheckName(t.Name);
        if (target.IsDirectory)
        {
            throw Fail(Errno.EPERM);
        }
        if (HostCalls.LinkAt(target.PathFd, "", dir.PathFd, name, HostCalls.AT_EMPTY_PATH) == 0)
        {
            return;
        }
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc link reaches the same inode (not for symlinks, which
        // the /proc link would follow).
        if (target.Type == HostCalls.S_IFLNK
            || HostCalls.LinkAt(HostCalls.AT_FDCWD, HostCalls.ProcFd(target.PathFd), dir.PathFd, name, HostCalls.AT_SYMLINK_FOLLOW) != 0)
        {
            throw LastError();
        }
    }

    private void UnlinkAt(Fcall t)
    {
        HostFid dir = GetDirectory(t.Fid);
        CheckWritable();
        string name = CheckName(t.Name);
        if (HostCalls.UnlinkAt(dir.PathFd, name, (int)(t.Flags & P9.AtRemoveDir)) != 0)
        {
            throw LastError();
        }
    }

    private void RenameAt(Fcall t)
    {
        HostFid from = GetDirectory(t.Fid);
        HostFid to = GetDirectory(t.DFid);
        CheckWritable();
        string oldName = CheckName(t.Name), newName = CheckName(t.Name2);
        if (HostCalls.RenameAt(from.PathFd, oldName, to.PathFd, newName) != 0)
        {
            throw LastError();
        }
        FollowRename(from.Node, oldName, to.Node, newName);
    }

    /// <summary>
    /// The directory entry a fid's Tremove or Trename acts on: the directory it was walked from (a descriptor, wherever
    /// that directory is now) and its name there, only while that name still means the fid's own inode (dev, ino).
    /// Renamed since (by the host, or by another session), the name may mean another file now: ESTALE, and nothing is
    /// touched. (The check and the unlinkat/renameat are two calls; only a concurrent host-side rename fits between
    /// them, requests of one session run one at a time.)
    /// </summary>
    private (HostHandle Parent, string Name) Entry(HostFid f)
    {
        if (f.Parent is not { } parent || f.Name is not { } name)
        {
            throw Fail(IsRoot(Stat(f.PathFd)) ? EBUSY : ESTALE);
        }
        HostAttr self = Stat(f.PathFd);
        if (!SameNode(self, StatAt(parent.Fd, name)))
        {
            throw Fail(ESTALE);
        }
        return (parent, name);
    }

    /// <summary>
    /// After this session renamed <paramref name="oldName"/> in <paramref name="from"/>, the fids that were walked to
    /// that entry follow it, so the guest's later Tremove or Trename of them acts on the file it means.
    /// </summary>
    private void FollowRename(HostHandle from, string oldName, HostHandle to, string newName)
    {
        if (StatFd(from.Fd, out HostAttr fromAttr) != 0)
        {
            return;
        }
        foreach (HostFid g in _fids.Snapshot())
        {
            if (g.Name == oldName && g.Parent is { } p && (p == from || (StatFd(p.Fd, out HostAttr pa) == 0 && SameNode(pa, fromAttr))))
            {
                g.MoveTo(to, newName);
            }
        }
    }

    private void Rename(Fcall t)
    {
        HostFid f = GetFid(t.Fid);
        HostFid to = GetDirectory(t.DFid);
        CheckWritable();
        string newName = CheckName(t.Name);
        (HostHandle parent, string name) = Entry(f);
        parent.AddRef(); // FollowRename moves f (and others) off it
        try
        {
            if (HostCalls.RenameAt(parent.Fd, name, to.PathFd, newName) != 0)
            {
                throw LastError();
            }
            FollowRename(parent, name, to.Node, newName);
        }
        finally
        {
            parent.Release();
        }
    }

    private void Remove(Fcall t)
    {
        // remove(5): the fid is clunked even when the remove fails.
        HostFid f = _fids.Remove(t.Fid);
        try
        {
            CheckWritable();
            (HostHandle parent, string name) = Entry(f);
            if (HostCalls.UnlinkAt(parent.Fd, name, f.IsDirectory ? HostCalls.AT_REMOVEDIR : 0) != 0)
            {
                throw LastError();
            }
        }
        finally
        {
            f.Close();
        }
    }

    private static Fcall StatFs(Fcall t, HostFid f)
    {
        // struct statfs (x86-64): type, bsize, blocks, bfree, bavail, files, ffree, fsid[2 x s32], namelen, ...
        Span<byte> s = stackalloc byte[120];
        if (HostCalls.FStatFs(f.PathFd, ref s[0]) != 0)
        {
            throw LastError();
        }
        return new Fcall
        {
            Type = MessageType.Rstatfs, Tag = t.Tag,
            StatFs = new LStatFs
            {
                Type = (uint)BinaryPrimitives.ReadUInt64LittleEndian(s), BSize = (uint)BinaryPrimitives.ReadUInt64LittleEndian(s[8..]),
                Blocks = BinaryPrimitives.ReadUInt64LittleEndian(s[16..]), BFree = BinaryPrimitives.ReadUInt64LittleEndian(s[24..]),
                BAvail = BinaryPrimitives.ReadUInt64LittleEndian(s[32..]), Files = BinaryPrimitives.ReadUInt64LittleEndian(s[40..]),
                FFree = BinaryPrimitives.ReadUInt64LittleEndian(s[48..]), FsId = BinaryPrimitives.ReadUInt64LittleEndian(s[56..]),
                NameLen = (uint)BinaryPrimitives.ReadUInt64LittleEndian(s[64..]),
            },
        };
    }

    private Fcall StatFs(Fcall t) => StatFs(t, GetFid(t.Fid));

    private void Fsync(Fcall t)
    {
        HostFid f = GetFid(t.Fid);
        if (f.IsOpen && (t.Flags != 0 ? HostCalls.FDataSync(f.OpenFd) : HostCalls.FSync(f.OpenFd)) != 0)
        {
            throw LastError();
        }
    }

    // Tread/Twrite/Treaddir, parsed in place: header[7] fid[4] offset[8] count[4] (+ data for Twrite).

    /// <summary>Reads fid, offset and count; the frame length must be exactly what the message type says.</summary>
    private bool TryIoHeader(ReadOnlySpan<byte> request, bool write, out HostFid file, out ulong offset)
    {
        file = null!;
        offset = 0;
        if (request.Length < 23)
        {
            return false;
        }
        uint fid = BinaryPrimitives.ReadUInt32LittleEndian(request[7..]);
        offset = BinaryPrimitives.ReadUInt64LittleEndian(request[11..]);
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(request[19..]);
        if (write ? count != request.Length - 23 : request.Length != 23)
        {
            return false;
        }
        file = GetFid(fid);
        return true;
    }

    private static int IoReply(Span<byte> reply, MessageType type, ushort tag, int count)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(reply, (uint)(P9.IoHeaderSize + count));
        reply[4] = (byte)type;
        BinaryPrimitives.WriteUInt16LittleEndian(reply[5..], tag);
        BinaryPrimitives.WriteUInt32LittleEndian(reply[7..], (uint)count);
        return P9.IoHeaderSize + count;
    }

    private int Read(ReadOnlySpan<byte> request, Span<byte> reply, ushort tag)
    {
        if (!_versioned || !TryIoHeader(request, write: false, out HostFid f, out ulong offset))
        {
            return Error(reply, tag, _versioned ? Errno.EINVAL : Errno.EPROTO);
        }
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(request[19..]);
        if (!f.IsOpen)
        {
            return Error(reply, tag, Errno.EBADF);
        }
        if (f.IsDirectory)
        {
            return Error(reply, tag, Errno.EISDIR);
        }
        if (offset > long.MaxValue)
        {
            return Error(reply, tag, Errno.EINVAL);
        }
        int max = (int)Math.Min(Math.Min(count, _msize - P9.IoHeaderSize), (uint)(reply.Length - P9.IoHeaderSize));
        Span<byte> data = reply.Slice(P9.IoHeaderSize, max);
        nint n = max == 0 ? 0 : HostCalls.PRead(f.OpenFd, ref data[0], (nuint)max, (long)offset);
        return n < 0 ? Error(reply, tag, (uint)HostCalls.Errno) : IoReply(reply, MessageType.Rread, tag, (int)n);
    }

    private int Write(ReadOnlySpan<byte> request, Span<byte> reply, ushort tag)
    {
        if (!_versioned || !TryIoHeader(request, write: true, out HostFid f, out ulong offset))
        {
            return Error(reply, tag, _versioned ? Errno.EINVAL : Errno.EPROTO);
        }
        if (!f.IsOpen || !f.OpenForWrite)
        {
            return Error(reply, tag, _options.ReadOnly ? Errno.EROFS : Errno.EBADF);
        }
        if (offset > long.MaxValue)
        {
            return Error(reply, tag, Errno.EINVAL);
        }
        ReadOnlySpan<byte> data = request[23..];
        nint n = data.Length == 0 ? 0 : HostCalls.PWrite(f.OpenFd, ref MemoryMarshal.GetReference(data), (nuint)data.Length, (long)offset);
        if (n < 0)
        {
            return Error(reply, tag, (uint)HostCalls.Errno);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(reply, 11);
        reply[4] = (byte)MessageType.Rwrite;
        BinaryPrimitives.WriteUInt16LittleEndian(reply[5..], tag);
        BinaryPrimitives.WriteUInt32LittleEndian(reply[7..], (uint)n);
        return 11;
    }

    private int ReadDir(ReadOnlySpan<byte> request, Span<byte> reply, ushort tag)
    {
        if (!_versioned || !TryIoHeader(request, write: false, out HostFid f, out ulong offset))
        {
            return Error(reply, tag, _versioned ? Errno.EINVAL : Errno.EPROTO);
        }
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(request[19..]);
        if (!f.IsOpen || !f.IsDirectory)
        {
            return Error(reply, tag, Errno.EBADF);
        }
        // The offset is the host's own d_off cookie of the last entry returned (0 = from the start): seek there and
        // read on, so a directory changing between calls neither repeats nor skips entries (as getdents does).
        if (HostCalls.LSeek(f.OpenFd, (long)offset, HostCalls.SEEK_SET) < 0)
        {
            return Error(reply, tag, (uint)HostCalls.Errno);
        }
        int max = (int)Math.Min(Math.Min(count, _msize - P9.IoHeaderSize), (uint)(reply.Length - P9.IoHeaderSize));
        Span<byte> output = reply.Slice(P9.IoHeaderSize, max);
        byte[] dents = System.Buffers.ArrayPool<byte>.Shared.Rent(Math.Max(max, 512));
        try
        {
            int got = HostCalls.GetDents64(f.OpenFd, dents.AsSpan(0, Math.Max(max, 512)));
            if (got < 0)
            {
                return Error(reply, tag, (uint)HostCalls.Errno);
            }
            int written = 0;
            int pos = 0;
            while (pos + 19 < got)
            {
                ReadOnlySpan<byte> d = dents.AsSpan(pos, got - pos);
                ulong ino = BinaryPrimitives.ReadUInt64LittleEndian(d);
                ulong off = BinaryPrimitives.ReadUInt64LittleEndian(d[8..]);
                ushort reclen = BinaryPrimitives.ReadUInt16LittleEndian(d[16..]);
                byte dtype = d[18];
                if (reclen < 20 || reclen > d.Length)
                {
                    break;
                }
                ReadOnlySpan<byte> name = d[19..reclen];
                int nul = name.IndexOf((byte)0);
                if (nul >= 0)
                {
                    name = name[..nul];
                }
                int size = Qid.Size + 8 + 1 + 2 + name.Length;
                if (written + size > output.Length)
                {
                    break;
                }
                // qid of an entry from d_type and d_ino (a later walk stats it properly).
                byte qtype = dtype switch { 4 => P9.QtDir, 10 => P9.QtSymlink, _ => P9.QtFile };
                Span<byte> e = output[written..];
                e[0] = qtype;
                BinaryPrimitives.WriteUInt32LittleEndian(e[1..], 0);
                BinaryPrimitives.WriteUInt64LittleEndian(e[5..], QidPath(ino, _rootDevMajor, _rootDevMinor));
                BinaryPrimitives.WriteUInt64LittleEndian(e[13..], off);
                e[21] = dtype;
                BinaryPrimitives.WriteUInt16LittleEndian(e[22..], (ushort)name.Length);
                name.CopyTo(e[24..]);
                written += size;
                pos += reclen;
            }
            return IoReply(reply, MessageType.Rreaddir, tag, written);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(dents);
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            ClunkAll();
            if (_rootFd >= 0)
            {
                HostCalls.Close(_rootFd);
                _rootFd = -1;
            }
        }
    }
}
