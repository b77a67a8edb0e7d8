using Kit.NineP.Protocol;
using Kit.NineP.Vfs;

namespace Kit.NineP.Server;

/// <summary>
/// What a 9P server serves: the file operations of 9P2000.L, on the backend's own per-fid state
/// <typeparamref name="TFid"/>. <see cref="NinePDispatcher{TFid}"/> does everything else once for every backend:
/// framing, Tversion, the fid table, tags, the name checks, and mapping 9P2000 and 9P2000.u messages onto these
/// operations. Errors are <see cref="VfsException"/>s (errno and, for 9P2000/.u clients, text).
///
/// A backend may complete every call synchronously (the host directory does, so the virtio-9p device can call the
/// dispatcher inline on its own thread); one that waits (a DataKit stream) is cancelled through the token (Tflush).
/// Names reaching a backend have passed <see cref="NameRules"/>.
/// </summary>
public interface INinePBackend<TFid> : IAsyncDisposable
    where TFid : class
{
    /// <summary>The backend speaks only 9P2000.L (the other dialects are answered "unknown" in Rversion).</summary>
    bool LinuxOnly { get; }

    /// <summary>Names are stored as text: a name that is not UTF-8 is refused (EINVAL) before it gets here.</summary>
    bool TextNames { get; }

    /// <summary>Tattach: the root for <paramref name="aname"/>.</summary>
    ValueTask<(TFid Root, Qid Qid)> AttachAsync(string uname, string aname, CancellationToken ct);

    /// <summary>A second state for the same node (a Twalk of no names, or the start of a walk).</summary>
    TFid Clone(TFid fid);

    /// <summary>
    /// One Twalk step from directory <paramref name="from"/> to <paramref name="name"/>, ".." included (the root's
    /// ".." is the root, walk(5)). On success the backend has released <paramref name="from"/>; otherwise it is left
    /// as it was. Null means there is no such name (the walk ends there: ENOENT, or a partial Rwalk after the first
    /// name); an exception is an error the client sees whatever the position.
    /// </summary>
    ValueTask<(TFid? Next, Qid Qid)> WalkAsync(TFid from, string name, CancellationToken ct);

    bool IsDirectory(TFid fid);

    /// <summary>Releases a fid's state (Tclunk, Tremove, Tversion, end of connection); never throws.</summary>
    void Clunk(TFid fid);

    bool IsOpen(TFid fid);

    /// <summary>Tlopen (Topen mapped onto Linux open flags).</summary>
    ValueTask<Qid> OpenAsync(TFid fid, uint flags, CancellationToken ct);

    /// <summary>
    /// Tlcreate, or Tcreate mapped: creates <paramref name="name"/> in directory <paramref name="dir"/> and opens it;
    /// returns the state the fid stands for from now on (tcreate: the new file). <paramref name="mode"/> holds the
    /// Linux file type (S_IFREG, or for 9P2000/.u S_IFDIR or S_IFLNK with <paramref name="symlinkTarget"/>).
    /// </summary>
    ValueTask<(TFid Fid, Qid Qid)> CreateAsync(TFid dir, string name, uint flags, uint mode, string symlinkTarget, CancellationToken ct);

    /// <summary>Tread of an open fid into <paramref name="into"/>; a directory reads as 9P2000/.u stat records.</summary>
    ValueTask<int> ReadAsync(TFid fid, ulong offset, Memory<byte> into, Dialect dialect, CancellationToken ct);

    ValueTask<int> WriteAsync(TFid fid, ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct);

    /// <summary>Treaddir of an open directory: dirents (qid[13] offset[8] type[1] name[s]) into <paramref name="into"/>.</summary>
    ValueTask<int> ReadDirAsync(TFid fid, ulong offset, Memory<byte> into, CancellationToken ct);

    ValueTask<LAttr> GetAttrAsync(TFid fid, CancellationToken ct);

    ValueTask SetAttrAsync(TFid fid, LSetAttr attr, CancellationToken ct);

    ValueTask<Qid> MkdirAsync(TFid dir, string name, uint mode, CancellationToken ct);

    ValueTask<Qid> SymlinkAsync(TFid dir, string name, string target, CancellationToken ct);

    ValueTask<Qid> MknodAsync(TFid dir, string name, uint mode, CancellationToken ct) => throw VfsErrors.NotPermitted();

    ValueTask LinkAsync(TFid dir, TFid target, string name, CancellationToken ct) => throw VfsErrors.NotPermitted();

    ValueTask<string> ReadLinkAsync(TFid fid, CancellationToken ct);

    /// <summary>Trename: <paramref name="fid"/>'s entry moves to <paramref name="newName"/> in <paramref name="dir"/>.</summary>
    ValueTask RenameAsync(TFid fid, TFid dir, string newName, CancellationToken ct);

    ValueTask RenameAtAsync(TFid oldDir, string oldName, TFid newDir, string newName, CancellationToken ct);

    ValueTask UnlinkAtAsync(TFid dir, string name, uint flags, CancellationToken ct);

    /// <summary>Tremove: removes the fid's own entry (the dispatcher clunks the fid afterwards, whatever happens).</summary>
    ValueTask RemoveAsync(TFid fid, CancellationToken ct);

    ValueTask<LStatFs> StatFsAsync(TFid fid, CancellationToken ct);

    ValueTask FsyncAsync(TFid fid, bool dataOnly, CancellationToken ct);

    /// <summary>9P2000/.u Tstat (only for backends that are not <see cref="LinuxOnly"/>).</summary>
    ValueTask<Stat> StatAsync(TFid fid, Dialect dialect, CancellationToken ct) => throw new VfsException(Errno.EOPNOTSUPP, "Operation not supported");

    /// <summary>9P2000/.u Twstat (only for backends that are not <see cref="LinuxOnly"/>); a new name was checked.</summary>
    ValueTask WstatAsync(TFid fid, Stat stat, Dialect dialect, CancellationToken ct) => throw new VfsException(Errno.EOPNOTSUPP, "Operation not supported");
}
