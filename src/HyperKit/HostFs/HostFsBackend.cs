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
/// A host directory as a 9P2000.L backend (<see cref="INinePBackend{TFid}"/>): every operation is a few system calls
/// on local files and completes synchronously, so the dispatcher over it does too (the virtio-9p device calls it
/// inline). Not safe for concurrent calls: its callers run one request at a time (<see cref="HostFsSession"/> under
/// its lock; a stream connection answers a synchronous request before it reads the next).
///
/// Confinement: every fid holds an O_PATH descriptor; a walk opens one name at a time relative to its directory with
/// O_NOFOLLOW, names containing '/' are refused, and ".." is the directory's real parent now, refused unless it is
/// inside the export (and the root's ".." is the root). A symlink is therefore never followed by the server: the
/// guest's kernel reads it and walks the target itself, inside the export. No path string is kept: Tremove and
/// Trename act on the fid's parent descriptor and name only while they still name the fid's own inode. Opening for
/// I/O goes through /proc/self/fd/N of the O_PATH descriptor, so the file opened is exactly the one walked to, even
/// if names are swapped meanwhile, and only regular files and directories are ever opened (a device node, FIFO or
/// socket never is). An untrusted guest's ownership and set-id bits are not applied (docs/security.md). Names reach
/// the host as the bytes the guest sent (<see cref="NineString"/>). Errors are the host's own errno values (Linux).
/// </summary>
internal sealed class HostFsBackend : INinePBackend<HostFid>
{
    private const uint EBUSY = 16, ELOOP = 40, ESTALE = 116;

    /// <summary>".." steps looked at to decide that a directory is inside the export (PATH_MAX / 2 levels).</summary>
    private const int MaxDepth = 2048;

    /// <summary>Mode bits an untrusted guest may set: permissions and the sticky bit, not S_ISUID/S_ISGID (07777 &amp; ~06000).</summary>
    private const uint UntrustedModeBits = 0x3FF;
    private readonly HostFsOptions _options;
    private readonly byte[] _statx = new byte[HostAttr.StatxSize];
    private readonly DescriptorBudget _budget;

    /// <summary>Every fid state alive (in the fid table or mid-walk): a rename by this session updates those it moved.</summary>
    private readonly HashSet<HostFid> _live = [];
    private int _rootFd = -1;
    private uint _rootDevMajor, _rootDevMinor;
    private ulong _rootIno;

    public HostFsBackend(HostFsOptions options)
    {
        _options = options;
        _budget = new DescriptorBudget(options.MaxDescriptors);
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

    public bool LinuxOnly => true;

    /// <summary>Host names are bytes: any name the shared rules allow reaches the host as sent.</summary>
    public bool TextNames => false;

    /// <summary>Host descriptors the fids hold now (counted against <see cref="HostFsOptions.MaxDescriptors"/>).</summary>
    internal int DescriptorCount => _budget.Count;

    private static VfsException Fail(uint errno) => new(errno, "");

    private static VfsException LastError() => Fail((uint)HostCalls.Errno);

    private void CheckWritable()
    {
        if (_options.ReadOnly)
        {
            throw Fail(Errno.EROFS);
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

    private HostFid Track(HostFid f)
    {
        _live.Add(f);
        return f;
    }

    public ValueTask<(HostFid Root, Qid Qid)> AttachAsync(string uname, string aname, CancellationToken ct)
    {
        // The aname names the export itself ("" or "/" or anything else: there is one tree).
        Reserve(1);
        int fd = Dup(_rootFd);
        HostFid root = Track(new HostFid(Adopt(fd), null, null, HostCalls.S_IFDIR, _budget));
        return new((root, QidOf(Stat(fd))));
    }

    public HostFid Clone(HostFid fid) => Track(new HostFid(fid.Node.AddRef(), fid.Parent?.AddRef(), fid.Name, fid.Type, _budget));

    public bool IsDirectory(HostFid fid) => fid.IsDirectory;

    public ValueTask<(HostFid? Next, Qid Qid)> WalkAsync(HostFid from, string name, CancellationToken ct)
    {
        // The walk moves references along: a new descriptor only for each name opened, the directory it was opened
        // from becoming the child's parent (for Tremove/Trename) without one.
        HostHandle next;
        HostHandle? nextParent = null;
        string? nextEntry = null;
        if (name == "..")
        {
            // walk(5): ".." of the root is the root. A directory reached by ".." has no name the session knows, so
            // Tremove/Trename on it fail (ESTALE) rather than guess one.
            if (IsRoot(Stat(from.PathFd)))
            {
                next = from.Node.AddRef();
            }
            else
            {
                Reserve(1);
                next = Adopt(OpenParent(from.PathFd));
            }
        }
        else
        {
            Reserve(1);
            int fd = HostCalls.OpenAt(from.PathFd, name, HostCalls.O_PATH | HostCalls.O_NOFOLLOW | HostCalls.O_CLOEXEC, 0);
            if (fd < 0)
            {
                return HostCalls.Errno == (int)Errno.ENOENT ? new((null, default)) : throw LastError();
            }
            next = Adopt(fd);
            nextParent = from.Node.AddRef();
            nextEntry = name;
        }
        HostAttr a;
        try
        {
            a = Stat(next.Fd);
        }
        catch
        {
            nextParent?.Release();
            next.Release();
            throw;
        }
        HostFid child = Track(new HostFid(next, nextParent, nextEntry, a.Type, _budget));
        Clunk(from);
        return new((child, QidOf(a)));
    }

    public void Clunk(HostFid fid)
    {
        _live.Remove(fid);
        fid.Close();
    }

    public bool IsOpen(HostFid fid) => fid.IsOpen;

    public ValueTask<int> ReadAsync(HostFid f, ulong offset, Memory<byte> into, Dialect dialect, CancellationToken ct)
    {
        if (f.IsDirectory)
        {
            throw Fail(Errno.EISDIR);
        }
        if (offset > long.MaxValue)
        {
            throw Fail(Errno.EINVAL);
        }
        Span<byte> data = into.Span;
        nint n = data.Length == 0 ? 0 : HostCalls.PRead(f.OpenFd, ref data[0], (nuint)data.Length, (long)offset);
        return n < 0 ? throw LastError() : new ValueTask<int>((int)n);
    }

    public ValueTask<int> WriteAsync(HostFid f, ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        if (!f.OpenForWrite)
        {
            throw Fail(_options.ReadOnly ? Errno.EROFS : Errno.EBADF);
        }
        if (offset > long.MaxValue)
        {
            throw Fail(Errno.EINVAL);
        }
        ReadOnlySpan<byte> bytes = data.Span;
        nint n = bytes.Length == 0 ? 0 : HostCalls.PWrite(f.OpenFd, ref MemoryMarshal.GetReference(bytes), (nuint)bytes.Length, (long)offset);
        return n < 0 ? throw LastError() : new ValueTask<int>((int)n);
    }

    private static HostFid Directory(HostFid dir) => dir.IsDirectory ? dir : throw Fail(Errno.ENOTDIR);

    public ValueTask<LAttr> GetAttrAsync(HostFid f, CancellationToken ct)
    {
        HostAttr a = Stat(f.PathFd);
        return new ValueTask<LAttr>(new LAttr
            {
                Valid = P9.GetattrBasic, Qid = QidOf(a), Mode = a.Mode, Uid = a.Uid, Gid = a.Gid, NLink = a.NLink,
                RDev = a.Rdev, Size = a.Size, BlkSize = a.BlkSize, Blocks = a.Blocks,
                AtimeSec = (ulong)a.AtimeSec, AtimeNsec = a.AtimeNsec, MtimeSec = (ulong)a.MtimeSec, MtimeNsec = a.MtimeNsec,
                CtimeSec = (ulong)a.CtimeSec, CtimeNsec = a.CtimeNsec,
            });
    }

    public ValueTask SetAttrAsync(HostFid f, LSetAttr s, CancellationToken ct)
    {
        const uint AtimeSet = 0x80, MtimeSet = 0x100;
        if ((s.Valid & (P9.AttrMode | P9.AttrUid | P9.AttrGid | P9.AttrSize | P9.AttrAtime | P9.AttrMtime)) == 0)
        {
            return ValueTask.CompletedTask; // ctime only: the host updates it by itself
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
        return ValueTask.CompletedTask;
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

    public ValueTask<Qid> OpenAsync(HostFid f, uint flags, CancellationToken ct)
    {
        HostAttr a = Stat(f.PathFd);
        int hostFlags;
        switch (a.Type)
        {
            case HostCalls.S_IFDIR:
                hostFlags = HostCalls.O_RDONLY | HostCalls.O_DIRECTORY;
                break;
            case HostCalls.S_IFREG:
                hostFlags = OpenFlags(flags);
                break;
            case HostCalls.S_IFLNK:
                throw Fail(ELOOP);
            default:
                // Never hand the guest a host device, FIFO or socket: opening one acts on the host (a tape rewinds, a
                // FIFO's writer wakes), and pread/pwrite cannot use a FIFO anyway (ESPIPE).
                throw Fail(Errno.EPERM);
        }
        Reserve(1);
        int fd = OpenNode(f.PathFd, hostFlags, a.Type);
        f.SetOpen(fd, (hostFlags & HostCalls.O_ACCMODE) != HostCalls.O_RDONLY);
        return new ValueTask<Qid>(QidOf(a));
    }

    public ValueTask<(HostFid Fid, Qid Qid)> CreateAsync(HostFid dir, string name, uint flags, uint mode, string symlinkTarget, CancellationToken ct)
    {
        CheckWritable();
        if (!dir.IsDirectory)
        {
            throw Fail(Errno.ENOTDIR);
        }
        bool exclusive = (flags & HostCalls.O_EXCL) != 0;
        int hostFlags = OpenFlags(flags);
        Reserve(2);
        int fd = -1, pathFd = -1;
        for (int attempt = 0; fd < 0; attempt++)
        {
            // Create only what does not exist yet: O_EXCL with O_CREAT also never follows a symlink at the name (open(2)).
            fd = HostCalls.OpenAt(dir.PathFd, name, hostFlags | HostCalls.O_CREAT | HostCalls.O_EXCL | HostCalls.O_NOFOLLOW
                | HostCalls.O_CLOEXEC | HostCalls.O_NONBLOCK | HostCalls.O_NOCTTY, ModeBits(mode));
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
                fd = OpenNode(pathFd, hostFlags, HostCalls.S_IFREG);
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
        dir.SetOpen(fd, (hostFlags & HostCalls.O_ACCMODE) != HostCalls.O_RDONLY);
        return new ValueTask<(HostFid, Qid)>((dir, QidOf(a)));
    }

    public ValueTask<Qid> MkdirAsync(HostFid dir, string name, uint mode, CancellationToken ct) =>
        new(MakeNode(dir, name, HostCalls.S_IFDIR | (mode & 0xFFF), ""));

    public ValueTask<Qid> SymlinkAsync(HostFid dir, string name, string target, CancellationToken ct) =>
        new(MakeNode(dir, name, HostCalls.S_IFLNK, target));

    public ValueTask<Qid> MknodAsync(HostFid dir, string name, uint mode, CancellationToken ct) => new(MakeNode(dir, name, mode, ""));

    private Qid MakeNode(HostFid dir, string name, uint mode, string target)
    {
        // The gid these messages (and Tlcreate) carry is not applied, trusted or not: a new node belongs to the user kit
        // runs as, with the group the host gives it (the directory's if set-gid, else kit's).
        Directory(dir);
        CheckWritable();
        uint type = mode & HostCalls.S_IFMT;
        int rc;
        switch (type)
        {
            case HostCalls.S_IFDIR:
                rc = HostCalls.MkdirAt(dir.PathFd, name, ModeBits(mode));
                break;
            case HostCalls.S_IFLNK:
                // The target is stored, never followed by this server; an absolute target stays inside the guest's view.
                rc = HostCalls.SymlinkAt(target, dir.PathFd, name);
                break;
            default:
                if (type is not (HostCalls.S_IFIFO or HostCalls.S_IFSOCK or HostCalls.S_IFREG))
                {
                    throw Fail(Errno.EPERM); // no device nodes on the host
                }
                rc = HostCalls.MknodAt(dir.PathFd, name, type | ModeBits(mode), 0);
                break;
        }
        if (rc != 0)
        {
            throw LastError();
        }
        return QidOf(StatAt(dir.PathFd, name));
    }

    public ValueTask<string> ReadLinkAsync(HostFid f, CancellationToken ct)
    {
        Span<byte> buffer = stackalloc byte[4096];
        nint n = HostCalls.ReadlinkAt(f.PathFd, "", ref buffer[0], (nuint)buffer.Length);
        if (n < 0)
        {
            throw LastError();
        }
        return new ValueTask<string>(NineString.Decode(buffer[..(int)n]));
    }

    public ValueTask LinkAsync(HostFid dir, HostFid target, string name, CancellationToken ct)
    {
        Directory(dir);
        CheckWritable();
        if (target.IsDirectory)
        {
            throw Fail(Errno.EPERM);
        }
        if (HostCalls.LinkAt(target.PathFd, "", dir.PathFd, name, HostCalls.AT_EMPTY_PATH) == 0)
        {
            return ValueTask.CompletedTask;
        }
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc link reaches the same inode (not for symlinks, which
        // the /proc link would follow).
        if (target.Type == HostCalls.S_IFLNK
            || HostCalls.LinkAt(HostCalls.AT_FDCWD, HostCalls.ProcFd(target.PathFd), dir.PathFd, name, HostCalls.AT_SYMLINK_FOLLOW) != 0)
        {
            throw LastError();
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask UnlinkAtAsync(HostFid dir, string name, uint flags, CancellationToken ct)
    {
        Directory(dir);
        CheckWritable();
        if (HostCalls.UnlinkAt(dir.PathFd, name, (int)(flags & P9.AtRemoveDir)) != 0)
        {
            throw LastError();
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask RenameAtAsync(HostFid from, string oldName, HostFid to, string newName, CancellationToken ct)
    {
        Directory(from);
        Directory(to);
        CheckWritable();
        if (HostCalls.RenameAt(from.PathFd, oldName, to.PathFd, newName) != 0)
        {
            throw LastError();
        }
        FollowRename(from.Node, oldName, to.Node, newName);
        return ValueTask.CompletedTask;
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
        foreach (HostFid g in _live)
        {
            if (g.Name == oldName && g.Parent is { } p && (p == from || (StatFd(p.Fd, out HostAttr pa) == 0 && SameNode(pa, fromAttr))))
            {
                g.MoveTo(to, newName);
            }
        }
    }

    public ValueTask RenameAsync(HostFid f, HostFid to, string newName, CancellationToken ct)
    {
        Directory(to);
        CheckWritable();
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
        return ValueTask.CompletedTask;
    }

    public ValueTask RemoveAsync(HostFid f, CancellationToken ct)
    {
        CheckWritable();
        (HostHandle parent, string name) = Entry(f);
        if (HostCalls.UnlinkAt(parent.Fd, name, f.IsDirectory ? HostCalls.AT_REMOVEDIR : 0) != 0)
        {
            throw LastError();
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask<LStatFs> StatFsAsync(HostFid f, CancellationToken ct)
    {
        // struct statfs (x86-64): type, bsize, blocks, bfree, bavail, files, ffree, fsid[2 x s32], namelen, ...
        Span<byte> s = stackalloc byte[120];
        if (HostCalls.FStatFs(f.PathFd, ref s[0]) != 0)
        {
            throw LastError();
        }
        return new ValueTask<LStatFs>(new LStatFs
            {
                Type = (uint)BinaryPrimitives.ReadUInt64LittleEndian(s), BSize = (uint)BinaryPrimitives.ReadUInt64LittleEndian(s[8..]),
                Blocks = BinaryPrimitives.ReadUInt64LittleEndian(s[16..]), BFree = BinaryPrimitives.ReadUInt64LittleEndian(s[24..]),
                BAvail = BinaryPrimitives.ReadUInt64LittleEndian(s[32..]), Files = BinaryPrimitives.ReadUInt64LittleEndian(s[40..]),
                FFree = BinaryPrimitives.ReadUInt64LittleEndian(s[48..]), FsId = BinaryPrimitives.ReadUInt64LittleEndian(s[56..]),
                NameLen = (uint)BinaryPrimitives.ReadUInt64LittleEndian(s[64..]),
            });
    }

    public ValueTask FsyncAsync(HostFid f, bool dataOnly, CancellationToken ct)
    {
        if (f.IsOpen && (dataOnly ? HostCalls.FDataSync(f.OpenFd) : HostCalls.FSync(f.OpenFd)) != 0)
        {
            throw LastError();
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask<int> ReadDirAsync(HostFid f, ulong offset, Memory<byte> into, CancellationToken ct)
    {
        if (!f.IsDirectory)
        {
            throw Fail(Errno.EBADF);
        }
        // The offset is the host's own d_off cookie of the last entry returned (0 = from the start): seek there and
        // read on, so a directory changing between calls neither repeats nor skips entries (as getdents does).
        if (HostCalls.LSeek(f.OpenFd, (long)offset, HostCalls.SEEK_SET) < 0)
        {
            throw LastError();
        }
        int max = into.Length;
        Span<byte> output = into.Span;
        byte[] dents = System.Buffers.ArrayPool<byte>.Shared.Rent(Math.Max(max, 512));
        try
        {
            int got = HostCalls.GetDents64(f.OpenFd, dents.AsSpan(0, Math.Max(max, 512)));
            if (got < 0)
            {
                throw LastError();
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
            return new ValueTask<int>(written);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(dents);
        }
    }

    public ValueTask DisposeAsync()
    {
        foreach (HostFid f in _live)
        {
            f.Close();
        }
        _live.Clear();
        if (_rootFd >= 0)
        {
            HostCalls.Close(_rootFd);
            _rootFd = -1;
        }
        return ValueTask.CompletedTask;
    }
}
